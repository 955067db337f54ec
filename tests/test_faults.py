"""Issue 12: inputs and faults that real users meet, each built here (PyAV writes every medium).

Data loss first (an output that is an input under another name, a full disk), then odd media (audio the
output container cannot hold, container vs encoder, size changes, streams that start late, damaged packets,
cover art), a camera that repeats timestamps, still images of every mode, and the training/export CLIs.
The end-to-end CLI cases (signals, reconstruct into the photos' folder...) are in test_video.py and
test_reconstruct.py.
"""
from __future__ import annotations

import errno
import io
import os
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from PIL import Image

from capture.stream.clips import make_test_clip, pattern_image, read_frame_number
from capture.stream.reader import VideoError, VideoReader
from capture.stream.writer import VideoWriter, check_encoder, check_not_input, default_codec, muxer_keeps, same_file

ROOT = Path(__file__).resolve().parents[1]


def _copy(src, dst, **kwargs):
    """src -> dst through reader and writer (what capture.video does around the network); returns the writer."""
    with VideoReader(src) as r:
        w = VideoWriter(dst, r.width, r.height, fps=r.fps or 25, time_base=r.time_base,
                        audio_from=src if r.has_audio else None, **kwargs)
        try:
            for f in r:
                w.write_frame(f)
        finally:
            w.close()
    return w


def _times(path, kind="video"):
    with av.open(str(path)) as c:
        s = c.streams.video[0] if kind == "video" else c.streams.audio[0]
        return [float(p.pts * s.time_base) for p in c.demux(s) if p.pts is not None and p.size]


# ------------------------------------------------------------------------------------------------ data loss
def test_output_that_is_the_input_under_another_name_is_refused(tmp_path):
    src = tmp_path / "in.mp4"
    src.write_bytes(b"precious")
    link, sym = tmp_path / "hard.mp4", tmp_path / "sym.mp4"
    os.link(src, link)
    sym.symlink_to(src)
    assert same_file(link, src) and same_file(sym, src) and not same_file(tmp_path / "new.mp4", src)
    for out in (link, sym, src):
        with pytest.raises(VideoError, match="same file under another name"):
            check_not_input(out, [str(src), "astronaut"])
    check_not_input(tmp_path / "new.mp4", [str(src)])  # a new file is fine
    assert src.read_bytes() == b"precious"


def _fill_disk(tmp_path):
    """A folder on a 96 kB tmpfs when this process may mount one (root), else a link to /dev/full."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True)
    if ok.returncode == 0:
        return mnt / "out.mp4", lambda: subprocess.run(["umount", str(mnt)], check=False)
    out = tmp_path / "out.mp4"
    out.symlink_to("/dev/full")  # every write fails with ENOSPC
    return out, lambda: None


def test_disk_full_is_one_line_and_leaves_no_unplayable_file(tmp_path):
    out, cleanup = _fill_disk(tmp_path)
    rng = np.random.default_rng(0)
    try:
        w = VideoWriter(out, 64, 64, fps=25)
        with pytest.raises(VideoError, match="disk full") as err:
            try:
                for i in range(300):  # noise does not compress: 300 frames need far more than 96 kB
                    w.write(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), i)
            finally:
                w.close()
        assert "\n" not in str(err.value) and "removed" in str(err.value)
        assert w.failed is not None
        assert not os.path.lexists(out)
    finally:
        cleanup()


# ------------------------------------------------------------------------------------------------ audio
def _pcm_clip(path, frames=25, rate=44100):
    """Stereo PCM s16le as a camera's AVI/MOV writes it (AVI keeps no channel layout, only a count)."""
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=25)
    v.width = v.height = 64
    v.pix_fmt = "yuv420p"
    a = out.add_stream("pcm_s16le", rate=rate)
    a.layout = "stereo"
    for i in range(frames):
        f = av.VideoFrame.from_ndarray(pattern_image(i, (64, 64)), format="rgb24")
        f.pts = i
        out.mux(v.encode(f))
    out.mux(v.encode(None))
    total = rate * frames // 25
    for s in range(0, total, 1024):
        n = min(1024, total - s)
        wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(s, s + n) / rate)).astype(np.float32)
        af = av.AudioFrame.from_ndarray(np.stack([wave, wave]), format="fltp", layout="stereo")
        af.sample_rate, af.pts, af.time_base = rate, s, Fraction(1, rate)
        out.mux(a.encode(af))
    out.mux(a.encode(None))
    out.close()


@pytest.mark.parametrize("ext", ["avi", "mov"])
def test_pcm_audio_into_mp4_is_reencoded_and_every_frame_kept(tmp_path, ext):
    src = tmp_path / f"cam.{ext}"
    _pcm_clip(src)
    w = _copy(src, tmp_path / "out.mp4")
    assert w.audio_mode == "aac" and "pcm_s16le re-encoded to aac" in w.audio_summary
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        assert sum(1 for _ in c.decode(video=0)) == 25
    audio = _times(tmp_path / "out.mp4", "audio")
    assert audio[-1] == pytest.approx(1.0, abs=0.05)
    w = _copy(src, tmp_path / "out.mkv")  # Matroska takes PCM: copied
    assert w.audio_mode == "copy" and w.audio_summary == "copied (pcm_s16le)"


# Containers whose FFmpeg codec lists are wrong: MPEG program streams take no AAC (the list says nothing of MP3),
# MPEG-TS takes AAC (the list says no) but keeps PCM and FLAC only as a data stream, Ogg takes no H.264.
@pytest.mark.parametrize("ext, codec, audio, kept", [
    ("mpg", None, "aac", "libmp3lame"),
    ("mpg", None, "libmp3lame", "copy"),
    ("ts", None, "aac", "copy"),
    ("ts", None, "pcm_s16le", "aac"),
    ("ts", None, "flac", "aac"),
    ("ogv", "libvpx", "aac", "libopus"),
])
def test_audio_survives_containers_whose_codec_lists_are_wrong(tmp_path, ext, codec, audio, kept):
    src = tmp_path / "in.mkv"
    make_test_clip(src, frames=25, size=(64, 64), audio=True, audio_codec=audio)
    w = _copy(src, tmp_path / f"out.{ext}", codec=codec)
    assert w.audio_mode == kept, w.audio_summary
    with av.open(str(tmp_path / f"out.{ext}")) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]  # sound, not a data stream
        seconds = sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].sample_rate
    with av.open(str(tmp_path / f"out.{ext}")) as c:
        frames = [read_frame_number(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    assert seconds == pytest.approx(1.0, abs=0.08)
    assert frames == list(range(25))


def test_a_gif_keeps_every_frame_and_its_time_and_says_it_holds_no_sound(tmp_path):
    src = tmp_path / "in.mp4"
    make_test_clip(src, frames=10, size=(64, 64), audio=True)
    w = _copy(src, tmp_path / "out.gif")
    assert w.codec == "gif" and w.audio_summary.startswith("none: a GIF holds no sound")
    with av.open(str(tmp_path / "out.gif")) as c:
        frames = list(c.decode(video=0))
    assert [read_frame_number(f.to_ndarray(format="rgb24")) for f in frames] == list(range(10))
    assert [round(float(f.time), 2) for f in frames] == [round(i / 25, 2) for i in range(10)]  # GIF: 1/100 s


def test_an_encoder_the_container_refuses_after_its_header_is_one_line_before_any_file(tmp_path):
    with pytest.raises(VideoError, match=r"ogv container does not take the libx264 encoder.*fit: .*libvpx") as err:
        check_encoder(tmp_path / "out.ogv")
    assert "\n" not in str(err.value) and not (tmp_path / "out.ogv").exists()
    assert check_encoder(tmp_path / "out.ogv", "libvpx") == "libvpx"
    assert muxer_keeps("mpegts", "libx264", "aac") and not muxer_keeps("webm", "libx264")


def test_a_write_failure_gives_advice_for_its_cause(tmp_path):
    w = VideoWriter(tmp_path / "out.mp4", 64, 64, fps=25)
    try:
        full = w._write_failure(OSError(errno.ENOSPC, "No space left on device"))
        broken = w._write_failure(OSError(errno.EIO, "Input/output error"))
        refused = w._write_failure(av.error.ArgumentError(errno.EINVAL, "Invalid argument"))
    finally:
        w.close()
    assert "disk full" in full and "free some space" in full
    assert "check the drive" in broken and "free some space" not in broken
    assert "mp4 container refused it" in refused and "free some space" not in refused


# ------------------------------------------------------------------------------------------------ encoders
def test_webm_gets_a_fitting_encoder_and_a_wrong_one_is_one_line(tmp_path):
    src = tmp_path / "in.mp4"
    make_test_clip(src, frames=6, size=(64, 64), audio=True)
    assert default_codec("x.webm") == "libvpx-vp9" and default_codec("x.mp4") == "libx264"
    w = _copy(src, tmp_path / "out.webm")
    assert w.audio_mode == "libopus"
    with av.open(str(tmp_path / "out.webm")) as c:
        assert c.streams.video[0].codec_context.name == "vp9"
        assert [read_frame_number(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)] == list(range(6))
    with pytest.raises(VideoError, match="does not take the libx264 encoder.*libvpx-vp9") as err:
        VideoWriter(tmp_path / "bad.webm", 64, 64, codec="libx264")
    assert "\n" not in str(err.value) and not (tmp_path / "bad.webm").exists()


# ------------------------------------------------------------------------------------------------ timing
@pytest.mark.parametrize("ext", ["mp4", "mkv", "mov", "webm"])
def test_stream_that_starts_late_is_not_truncated(tmp_path, ext):
    src = tmp_path / f"late.{ext}"
    pts = [10_000 + 40 * i for i in range(10)]  # first frame at 10 s
    make_test_clip(src, pts=pts, size=(64, 64), codec="libvpx-vp9" if ext == "webm" else "libx264")
    with VideoReader(src) as r:
        frames = list(r)
        assert not r.truncated
    assert [read_frame_number(f.image) for f in frames] == list(range(10))
    assert frames[0].time == pytest.approx(10.0, abs=1e-3)


@pytest.mark.parametrize("ext", ["mp4", "mkv", "mov"])
def test_output_video_pts_equal_input_pts_with_audio(tmp_path, ext):
    src = tmp_path / "in.mp4"
    make_test_clip(src, frames=10, size=(64, 64), audio=True)  # AAC with its priming packet before 0
    out = tmp_path / f"out.{ext}"
    _copy(src, out, origin=0.0)
    assert sorted(_times(out)) == pytest.approx(sorted(_times(src)), abs=1e-3)
    assert sorted(_times(out)) == pytest.approx([i / 25 for i in range(10)], abs=1e-3)
    assert _times(out, "audio")  # the audio is there


# ------------------------------------------------------------------------------------------------ damage
@pytest.mark.parametrize("codec, ext", [("mjpeg", "avi"), ("libx264", "mp4")])
def test_damaged_packet_in_the_middle_is_skipped_and_counted(tmp_path, codec, ext):
    src = tmp_path / f"in.{ext}"
    make_test_clip(src, frames=24, size=(64, 64), codec=codec, options={"g": "1"} if codec == "libx264" else None)
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    data = bytearray(src.read_bytes())
    pos, size = packets[5]
    data[pos : pos + size] = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    bad = tmp_path / f"bad.{ext}"
    bad.write_bytes(bytes(data))
    with VideoReader(bad) as r:
        numbers = [read_frame_number(f.image) for f in r]
    assert r.skipped_packets == 1 and not r.truncated
    assert numbers == [i for i in range(24) if i != 5]


def _h264_part(path, frames, scale, start):
    """96x64 pattern frames, each pixel `scale` x `scale` (so rescaling back gives the pattern again)."""
    out = av.open(str(path), "w", format="h264")
    v = out.add_stream("libx264", rate=25)
    v.width, v.height = 96 * scale, 64 * scale
    v.pix_fmt = "yuv420p"
    for i in range(frames):
        image = pattern_image(start + i, (96, 64)).repeat(scale, 0).repeat(scale, 1)
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        f.pts = i
        out.mux(v.encode(f))
    out.mux(v.encode(None))
    out.close()


def test_size_change_mid_stream_rescales_every_frame_to_the_first_size(tmp_path):
    a, b = tmp_path / "a.h264", tmp_path / "b.h264"
    _h264_part(a, 8, 1, 0)
    _h264_part(b, 8, 2, 8)  # a broadcast switching mode: new SPS, new size
    raw = tmp_path / "both.h264"
    raw.write_bytes(a.read_bytes() + b.read_bytes())
    ts = tmp_path / "both.ts"  # remux into MPEG-TS with timestamps, as a broadcast recording
    with av.open(str(raw)) as src, av.open(str(ts), "w") as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        for i, pkt in enumerate(p for p in src.demux(s_in) if p.size):
            pkt.stream, pkt.time_base = s_out, Fraction(1, 25)
            pkt.pts = pkt.dts = i
            dst.mux(pkt)
    for path in (raw, ts):
        with VideoReader(path) as r:
            frames = list(r)
        assert {f.image.shape for f in frames} == {(64, 96, 3)}
        assert [read_frame_number(f.image) for f in frames] == list(range(16))
        assert r.rescaled == 8
    w = _copy(ts, tmp_path / "out.mp4")
    assert w.frames_written == 16


def test_audio_file_with_cover_art_is_not_a_video(tmp_path):
    song = tmp_path / "song.mp4"
    out = av.open(str(song), "w")
    a = out.add_stream("aac", rate=48000)
    a.layout = "mono"
    pic = out.add_stream("mjpeg")
    pic.width = pic.height = 64
    pic.pix_fmt = "yuvj420p"
    pic.disposition = av.stream.Disposition.attached_pic
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(jpeg, format="JPEG")
    for s in range(0, 48000, 1024):
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate, f.pts = 48000, s
        out.mux(a.encode(f))
        if s == 0:
            pkt = av.Packet(jpeg.getvalue())
            pkt.stream, pkt.pts, pkt.dts, pkt.time_base = pic, 0, 0, Fraction(1, 90000)
            out.mux(pkt)
    out.mux(a.encode(None))
    out.close()
    with pytest.raises(VideoError, match="no video stream.*cover art") as err:
        VideoReader(song)
    assert "corrupt" not in str(err.value) and "truncated" not in str(err.value)


# ------------------------------------------------------------------------------------------------ camera
def test_camera_repeating_a_timestamp_hands_on_strictly_increasing_times():
    from capture.stream.camera import LiveSource
    from capture.stream.filters import OneEuroFilter

    pts = [0, 33_000, 33_000, 66_000, 50_000, 99_000]  # a repeat, then a step back
    frames = []
    for p in pts:
        f = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        f.pts = p
        frames.append(f)
    stream = SimpleNamespace(thread_type=None, average_rate=30, guessed_rate=None, base_rate=None,
                             codec_context=SimpleNamespace(width=16, height=16), time_base=Fraction(1, 1_000_000))
    container = SimpleNamespace(streams=SimpleNamespace(video=[stream]), decode=lambda s: iter(frames),
                                close=lambda: None)
    src = LiveSource("/dev/video9", "v4l2", container=container)
    times = [f.time for f in src]
    assert len(times) == len(pts) and all(b > a for a, b in zip(times, times[1:]))
    smooth = OneEuroFilter()
    for t in times:  # the live default: raised on a repeated timestamp before
        smooth(np.zeros(3), t)


# ------------------------------------------------------------------------------------------------ stills
def _face():
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[::4, ::4])  # 128x128 RGB


def test_images_of_every_mode_read_as_rgb(tmp_path):
    from capture.stills import load_image

    rgb = _face()
    h, w = rgb.shape[:2]
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    # 16-bit grey PNG: full range kept, scaled to 8 bits
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    got = load_image(tmp_path / "g16.png")
    assert got.dtype == np.uint8 and got.shape == (h, w, 3)
    assert np.abs(got[..., 0].astype(int) - grey).max() <= 1
    # CMYK JPEG (no embedded profile): converted, not read as RGBA
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    got = load_image(tmp_path / "cmyk.jpg")
    assert got.shape == (h, w, 3) and np.abs(got.astype(int) - rgb).mean() < 12
    # palette, LA (alpha composited on grey), animated GIF (its first frame)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert np.abs(load_image(tmp_path / "p.png").astype(int) - rgb).mean() < 20
    la = Image.fromarray(grey).convert("LA")
    la.putalpha(Image.fromarray(np.where(np.arange(w)[None, :] < w // 2, 255, 0).astype(np.uint8).repeat(h, 0)))
    la.save(tmp_path / "la.png")
    got = load_image(tmp_path / "la.png")
    assert np.abs(got[:, : w // 2, 0].astype(int) - grey[:, : w // 2]).max() <= 1
    assert (got[:, w // 2 + 1 :] == 128).all()
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert np.abs(load_image(tmp_path / "anim.gif").astype(int) - rgb).mean() < 25
    # EXIF orientation 6 (rotate 90 clockwise to display)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    got = load_image(tmp_path / "rot.jpg")
    assert got.shape == (w, h, 3)
    assert np.abs(got.astype(int) - np.rot90(rgb, k=-1)).mean() < 8


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def test_decompression_bomb_and_garbage_are_one_line(tmp_path):
    from capture.stills import ImageError, load_image

    bomb = tmp_path / "bomb.png"  # 60000 x 60000 declared in a few hundred bytes
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0))
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b""))
    medium = tmp_path / "medium.png"  # above our limit, below Pillow's own bomb check
    medium.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 11000, 11000, 8, 0, 0, 0, 0))
                       + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b""))
    (tmp_path / "garbage.jpg").write_bytes(os.urandom(2000))
    for name, needle in (("bomb.png", "bomb"), ("medium.png", "megapixels"), ("garbage.jpg", "not a readable")):
        with pytest.raises(ImageError, match=needle) as err:
            load_image(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)


# ------------------------------------------------------------------------------------------------ train, export
def test_train_check_on_binary_labels_and_missing_config_are_one_line(tmp_path):
    data = tmp_path / "ds"
    data.mkdir()
    (data / "labels.csv").write_bytes(bytes(range(256)) * 4)
    for args, needle in ((["check", str(data)], "not UTF-8 text"),
                         (["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--config",
                           "path/to/missing.toml"], "no such file")):
        r = subprocess.run([sys.executable, "-m", "capture.train", *args], capture_output=True, text=True, cwd=ROOT,
                           timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert needle in r.stderr


def _export_cli():
    import importlib

    return importlib.import_module("capture.export_onnx")


def test_export_into_an_unwritable_folder_is_one_line(tmp_path, capsys):
    cli = _export_cli()
    (tmp_path / "file").write_text("x")
    assert cli.main(["--assets", "demo", "--out", str(tmp_path / "file" / "engines")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create the folder" in err[0]
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(ro)], capture_output=True).returncode:
        ro.chmod(0o555)  # not root: an ordinary read-only folder
        if os.access(ro, os.W_OK):
            pytest.skip("cannot make a read-only folder here")
    try:
        assert cli.main(["--assets", "demo", "--out", str(ro)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not writable" in err[0]
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_export_with_an_opset_the_exporter_cannot_honour_records_the_real_one(tmp_path, monkeypatch, capsys):
    import json

    import onnx

    sys.path.insert(0, str(ROOT / "tests"))
    from test_export import memory_pack

    cli = _export_cli()
    monkeypatch.setattr(cli, "open_pack", lambda assets=None: memory_pack())
    assert cli.main(["--networks", "D_detail", "--out", str(tmp_path), "--opset", "13"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "opset 13" in warnings[0]
    side = json.loads((tmp_path / "D_detail.onnx.json").read_text())
    real = [o.version for o in onnx.load(str(tmp_path / "D_detail.onnx")).opset_import if o.domain in ("", "ai.onnx")]
    assert side["opset"] == real[0] != 13 and side["opset_requested"] == 13
