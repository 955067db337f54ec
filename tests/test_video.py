"""capture.video / capture.live end to end on generated clips of a real face (the astronaut photo).

Frames, timestamps and audio of the output are compared with what the clip generator was asked to write.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from cli_runs import run_main
from face_clips import make_face_clip

ROOT = Path(__file__).resolve().parents[1]
def probe(path: Path):
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        pts = [f.pts for f in c.decode(vs)]
        tb = vs.time_base
    audio = None
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            packets = [p for p in c.demux(a) if p.pts is not None]
            end = max(float((p.pts + p.duration) * a.time_base) for p in packets)
            start = min(float(p.pts * a.time_base) for p in packets)
            audio = end - start
    return pts, tb, audio


def run_cli(module, *args, env=None, timeout=300):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=full_env, timeout=timeout)


def assert_one_line_error(result, *needles):
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def pack_dir(demo_pack_dir):
    return demo_pack_dir


def test_video_keeps_frames_timestamps_and_audio(tmp_path, pack_dir):
    from capture import video

    clip = make_face_clip(tmp_path / "in.mp4", 12, audio=True)
    out = tmp_path / "out.mp4"
    codes = tmp_path / "codes.npz"
    rc = video.main([str(clip.path), "-o", str(out), "--assets", str(pack_dir), "--codes", str(codes),
                     "--meshes", str(tmp_path / "meshes"), "--no-progress", "--backend", "torch"])
    assert rc == 0
    pts, tb, audio = probe(out)
    assert len(pts) == 12
    in_pts, in_tb, in_audio = probe(Path(clip.path))
    assert [p * tb for p in pts] == [p * in_tb for p in in_pts]
    assert audio is not None and abs(audio - in_audio) <= 1 / 25
    saved = np.load(codes)
    assert saved["exp"].shape == (12, 50) and saved["face_found"].all()
    np.testing.assert_array_equal(saved["pts"], in_pts)
    assert len(list((tmp_path / "meshes").glob("frame_*.obj"))) == 12


def test_variable_frame_rate_and_face_that_leaves(tmp_path, pack_dir):
    from capture import video

    pts = [0, 40, 70, 130, 160, 220, 240, 300, 340, 400, 430, 480, 520, 560]
    missing = set(range(3, 9))  # the face leaves for 6 frames, then comes back
    clip = make_face_clip(tmp_path / "vfr.mp4", len(pts), audio=False, missing=missing, pts=pts)
    out = tmp_path / "out.mp4"
    codes = tmp_path / "codes.npz"
    rc = video.main([str(clip.path), "-o", str(out), "--assets", str(pack_dir), "--no-progress",
                     "--codes", str(codes), "--hold", "0.07", "--layout", "overlay", "--backend", "torch"])
    assert rc == 0
    out_pts, tb, _ = probe(out)
    in_pts, in_tb, _ = probe(Path(clip.path))
    assert [p * tb for p in out_pts] == [p * in_tb for p in in_pts]
    saved = np.load(codes)
    assert saved["face_found"].tolist() == [i not in missing for i in range(len(pts))]
    assert saved["held"][3]  # 60 ms after the last face: within --hold 0.07 s
    assert np.isnan(saved["exp"][5]).all()  # later: passed through
    assert not np.isnan(saved["exp"][10]).any()  # the face is back


def test_clip_without_any_face(tmp_path, pack_dir):
    from capture import video

    clip = make_face_clip(tmp_path / "noface.mp4", 6, audio=True, missing=set(range(6)))
    out = tmp_path / "out.mp4"
    assert video.main([str(clip.path), "-o", str(out), "--assets", str(pack_dir), "--no-progress",
                       "--backend", "torch"]) == 0
    pts, _, audio = probe(out)
    assert len(pts) == 6 and audio is not None


@pytest.mark.slow
def test_bad_inputs_give_one_line(tmp_path, pack_dir):
    clip = make_face_clip(tmp_path / "in.mkv", 60, audio=True)
    data = Path(clip.path).read_bytes()
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(4096))
    not_an_image = tmp_path / "target.jpg"
    not_an_image.write_text("not an image")

    assert_one_line_error(run_main("capture.video", garbage, "-o", tmp_path / "o1.mp4", "--assets", pack_dir),
                          "garbage.mp4")
    assert_one_line_error(run_main("capture.video", tmp_path / "missing.mp4", "-o", tmp_path / "o2.mp4"),
                          "missing.mp4")
    assert_one_line_error(run_main("capture.video", clip.path, "-o", tmp_path / "no" / "dir" / "o.mp4"),
                          "does not exist")
    assert_one_line_error(run_main("capture.video", clip.path, "-o", tmp_path / "o3.mp4", "--assets", pack_dir,
                                  "--target", not_an_image, "--no-progress"), "target.jpg")
    assert_one_line_error(run_main("capture.video", clip.path, "-o", tmp_path / "o4.mp4", "--assets", pack_dir,
                                  "--target", tmp_path / "nobody.png", "--no-progress"), "nobody.png")
    result = run_main("capture.video", truncated, "-o", tmp_path / "o5.mp4", "--assets", pack_dir, "--no-progress",
                     "--backend", "torch")
    assert_one_line_error(result, "truncated")
    pts, _, _ = probe(tmp_path / "o5.mp4")
    assert 0 < len(pts) < 60  # every frame that decoded, in a playable file


def _interrupt_when_working(cmd, out_file: Path, env=None, sig=signal.SIGINT):
    """Start `cmd`, wait until it has written frames, send `sig`; returns (returncode, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", *map(str, cmd)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=dict(os.environ, **(env or {})))
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not out_file.exists():
        time.sleep(0.2)
    time.sleep(3.0)  # the output exists once the model is ready: let a few frames through
    os.kill(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


@pytest.mark.slow
def test_sigint_leaves_a_playable_partial_video(tmp_path, pack_dir):
    clip = make_face_clip(tmp_path / "long.mp4", 250, audio=True)
    out = tmp_path / "partial.mp4"
    rc, stdout, stderr = _interrupt_when_working(
        ["capture.video", clip.path, "-o", out, "--assets", pack_dir, "--no-progress", "--backend", "torch"], out)
    assert "Traceback" not in stderr, stderr
    assert rc == 130, (stdout, stderr)
    written = int(stdout.split("wrote ")[1].split(" frames")[0])
    pts, _, audio = probe(out)
    assert 0 < len(pts) == written < 250
    assert audio is not None and audio <= len(pts) / 25 + 0.1


@pytest.mark.slow
def test_live_from_file_with_record_and_sigint(tmp_path, pack_dir):
    clip = make_face_clip(tmp_path / "cam.mp4", 750, audio=False)
    out = tmp_path / "live.mp4"
    rc, stdout, stderr = _interrupt_when_working(
        ["capture.live", "--cam", clip.path, "--no-display", "--record", out, "--assets", pack_dir,
         "--backend", "torch"], out)
    assert "Traceback" not in stderr, stderr
    assert rc == 130, (stdout, stderr)
    recorded = int(stdout.split("recorded ")[1].split(" frames")[0])
    pts, _, _ = probe(out)
    assert 0 < len(pts) == recorded
    assert "dropped" in stdout
    assert "latency camera frame -> shown/recorded: median" in stdout and "p95" in stdout


def test_shown_latency_pairs_each_shown_frame_with_its_arrival_and_forgets_dropped_ones():
    from types import SimpleNamespace

    from capture.live import ShownLatency

    latency = ShownLatency()
    frames = latency.stamp(SimpleNamespace(index=i) for i in range(5))
    for _ in range(4):
        next(frames)
    latency.shown(0)
    latency.shown(3)  # 1 and 2 were dropped in the pipeline
    assert len(latency.samples) == 2 and len(latency._arrived) == 0
    next(frames)
    assert latency.so_far(4) >= 0.0
    latency.shown(4)
    median, p95 = latency.percentiles_ms()
    assert len(latency.samples) == 3 and 0 <= median <= p95
    assert "median" in latency.summary() and "no frame" in ShownLatency().summary()


@pytest.mark.slow
@pytest.mark.parametrize("module, sig", [("capture.video", signal.SIGTERM), ("capture.live", signal.SIGHUP)])
def test_sigterm_and_sighup_finalise_a_playable_file_like_ctrl_c(tmp_path, pack_dir, module, sig):
    """kill, a process manager or a closed terminal: every processed frame kept, exit 128 + signal."""
    clip = make_face_clip(tmp_path / "long.mp4", 250 if module == "capture.video" else 750,
                          audio=module == "capture.video")
    out = tmp_path / "stopped.mp4"
    cmd = (["capture.video", clip.path, "-o", out, "--no-progress"] if module == "capture.video" else
           ["capture.live", "--cam", clip.path, "--no-display", "--record", out])
    rc, stdout, stderr = _interrupt_when_working(cmd + ["--assets", pack_dir, "--backend", "torch"], out, sig=sig)
    assert "Traceback" not in stderr, stderr
    assert rc == 128 + sig, (stdout, stderr)
    word = "wrote " if module == "capture.video" else "recorded "
    written = int(stdout.split(word)[1].split(" frames")[0])
    pts, _, audio = probe(out)
    assert 0 < len(pts) == written
    assert signal.Signals(sig).name in stdout
    if module == "capture.video":
        assert audio is not None and audio <= len(pts) / 25 + 0.1
        in_pts, _, _ = probe(Path(clip.path))
        assert pts == in_pts[: len(pts)]


@pytest.mark.slow
def test_output_that_is_a_hard_link_of_an_input_is_refused_by_every_command(tmp_path, pack_dir):
    clip = make_face_clip(tmp_path / "in.mp4", 4, audio=False)
    before = Path(clip.path).read_bytes()
    link = tmp_path / "link.mp4"
    os.link(clip.path, link)
    for cmd in (["capture.video", clip.path, "-o", link, "--assets", pack_dir],
                ["capture.live", "--cam", clip.path, "--no-display", "--record", link, "--assets", pack_dir],
                ["capture.demo", "--source", clip.path, "-o", link]):
        assert_one_line_error(run_main(*cmd), "same file")
    assert Path(clip.path).read_bytes() == before


@pytest.mark.slow
def test_damaged_packet_is_skipped_counted_and_in_the_exit_status(tmp_path, pack_dir):
    from capture import video
    from capture.stream.clips import make_test_clip
    from face_clips import SIZE, _astronaut_frame

    src = tmp_path / "cam.avi"
    make_test_clip(src, frames=10, size=SIZE, fps=25, codec="mjpeg", draw=lambda i, size: _astronaut_frame(i, size))
    with av.open(str(src)) as c:
        pos, size = [(p.pos, p.size) for p in c.demux(video=0) if p.size][4]
    data = bytearray(src.read_bytes())
    data[pos : pos + size] = bytes(size)  # zeroed: no JPEG markers left
    src.write_bytes(bytes(data))
    out = tmp_path / "out.mp4"
    rc = video.main([str(src), "-o", str(out), "--assets", str(pack_dir), "--no-progress", "--backend", "torch"])
    assert rc == 3
    pts, _, _ = probe(out)
    assert len(pts) == 9


@pytest.mark.slow
def test_live_missing_camera_is_one_line(tmp_path):
    assert_one_line_error(run_main("capture.live", "--cam", "7", "--no-display"), "camera 7")


@pytest.mark.slow
def test_smoothing_reduces_jitter_on_a_steady_face(tmp_path, pack_dir):
    """A still face with sensor noise: --smooth must cut the frame-to-frame jitter of E_flame's codes. (The
    landmark source smooths its own points; benchmarks/jitter.py compares the sources.)"""
    from capture import video
    from capture.stream.clips import make_test_clip
    from face_clips import SIZE, _astronaut_frame

    still = _astronaut_frame(0, SIZE).astype(np.int16)
    rng = np.random.default_rng(0)

    def draw(i, size):
        return np.clip(still + rng.integers(-12, 13, still.shape), 0, 255).astype(np.uint8)

    clip = make_test_clip(tmp_path / "steady.mp4", frames=20, size=SIZE, fps=25, draw=draw)
    jitter = {}
    for mode in ("raw", "smooth"):
        codes = tmp_path / f"{mode}.npz"
        args = [str(clip.path), "-o", str(tmp_path / f"{mode}.mp4"), "--assets", str(pack_dir), "--no-progress",
                "--codes", str(codes), "--backend", "torch", "--codes-from", "network"] + (
                    ["--smooth"] if mode == "smooth" else [])
        assert video.main(args) == 0
        saved = np.load(codes)
        series = np.concatenate([saved["exp"], saved["pose"], saved["cam"]], axis=1)[5:]  # after the warm-up
        jitter[mode] = float(np.sqrt((np.diff(series, axis=0) ** 2).mean()))
    print(f"frame-to-frame RMS jitter of exp|pose|cam: raw {jitter['raw']:.4f}, smoothed {jitter['smooth']:.4f}")
    assert jitter["raw"] > 0
    assert jitter["smooth"] < 0.5 * jitter["raw"]
