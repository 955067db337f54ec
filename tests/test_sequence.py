"""Image sequences as input: the names VFX tools write, gaps and bad files, linear light, the video command."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from capture.stream.clips import pattern_image, read_frame_number
from capture.stream.reader import VideoError
from capture.stream.sequence import find_sequence, open_video, sequence_of


def _plate(folder, numbers, name="plate.{:04d}.png", size=(64, 48), odd=()):
    """Pattern frames numbered as given (frame k of the list carries the number k), PNG; `odd` numbers are
    written at half the size."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(numbers):
        img = Image.fromarray(pattern_image(k, size))
        if n in odd:
            img = img.resize((size[0] // 2, size[1] // 2), Image.NEAREST)
        img.save(folder / name.format(n))
    return folder


def test_printf_hash_and_folder_name_the_same_sequence(tmp_path):
    _plate(tmp_path / "shot", range(1001, 1011))
    (tmp_path / "shot" / "notes.txt").write_text("not a frame")
    _plate(tmp_path / "shot", range(1, 3), name="thumb_{}.jpg")  # a smaller set beside it is not chosen
    names = [tmp_path / "shot" / "plate.%04d.png", tmp_path / "shot" / "plate.####.png", tmp_path / "shot"]
    found = [find_sequence(str(n)) for n in names]
    assert all(s.frames == found[0].frames for s in found)
    assert found[0].first == 1001 and found[0].last == 1010 and not found[0].missing
    assert found[2].pattern.endswith("plate.%04d.png")
    assert find_sequence(str(tmp_path / "shot" / "plate.1001.png")) is None  # one file is one image
    assert sequence_of(str(tmp_path / "shot" / "plate.1001.png")).frames == found[0].frames
    assert find_sequence("in.mp4") is None and find_sequence("rtsp://cam/stream") is None
    _plate(tmp_path / "loose", [1, 2, 10], name="f_{}.png")
    _plate(tmp_path / "loose", [2], name="f_{:03d}.png")  # f_002.png: the number 2 twice
    assert [n for n, _ in find_sequence(str(tmp_path / "loose")).frames] == [1, 2, 10]
    assert find_sequence(str(tmp_path / "loose" / "f_%d.png")).frames[1][1].endswith("f_2.png")


def test_gaps_keep_their_time_and_bad_or_odd_files_are_counted(tmp_path):
    numbers = [n for n in range(1001, 1021) if n not in (1005, 1011)]
    folder = _plate(tmp_path / "shot", numbers, odd={1015})
    (folder / "plate.1008.png").write_bytes(b"\x89PNG\r\n\x1a\n then nothing")  # a render that died mid-write
    with open_video(str(folder), fps=24) as reader:
        frames = list(reader)
    assert reader.sequence.missing == [1005, 1011]
    kept = [n for n in numbers if n != 1008]
    assert [f.pts for f in frames] == kept  # frame N of the plate's timeline
    assert reader.time_base == Fraction(1, 24) and frames[-1].time == pytest.approx(1020 / 24)
    assert [read_frame_number(f.image) for f in frames if f.pts != 1015] == [
        numbers.index(n) for n in kept if n != 1015]
    assert all(f.image.shape == (48, 64, 3) for f in frames)
    assert reader.skipped_packets == 1 and reader.skipped_files[0].endswith("plate.1008.png")
    assert reader.rescaled == 1 and not reader.truncated and not reader.has_audio


def test_start_duration_and_frame_rate(tmp_path):
    folder = _plate(tmp_path / "shot", range(0, 50))
    with open_video(str(folder / "plate.%04d.png"), start=1.0, duration=0.5, fps=30000 / 1001) as reader:
        frames = list(reader)
    assert reader.fps == pytest.approx(29.97, abs=1e-3)
    assert [f.index for f in frames] == list(range(len(frames)))
    times = [f.time for f in frames]  # the plate starts at frame 0: times are from its first frame
    assert times[0] >= 1.0 - 1e-9 and times[-1] < 1.5 and len(frames) == 15
    with pytest.raises(ValueError, match="--fps is for image sequences"):
        open_video(str(tmp_path / "x.mp4"), fps=24)


def test_linear_exr_is_shown_through_the_srgb_curve(tmp_path):
    srgb = pattern_image(3, (64, 48)).astype(np.float32) / 255
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float32)
    folder = tmp_path / "render"
    folder.mkdir()
    for n in (1, 2):
        out = av.open(str(folder / f"beauty.{n:04d}.exr"), "w", format="image2")
        stream = out.add_stream("exr", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "gbrpf32le"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(linear), format="gbrpf32le")
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        out.close()
    with open_video(str(folder / "beauty.####.exr")) as reader:
        image = next(iter(reader)).image
    assert np.abs(image.astype(int) - np.round(srgb * 255).astype(int)).max() <= 2


def test_names_that_match_nothing_are_one_line(tmp_path):
    with pytest.raises(VideoError, match="no file matches this image sequence pattern"):
        find_sequence(str(tmp_path / "plate.%04d.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="folder without numbered images"):
        find_sequence(str(tmp_path / "empty"))
    folder = tmp_path / "broken"
    folder.mkdir()
    for n in (1, 2):
        (folder / f"f_{n:03d}.png").write_bytes(b"not an image")
    with pytest.raises(VideoError, match=r"no image of the sequence decodes \(2 unreadable"):
        open_video(str(folder))


def test_video_command_reads_a_sequence_with_a_gap(tmp_path, demo_pack_dir):
    from cli_runs import run_main
    from face_clips import SIZE, _astronaut_frame

    folder = tmp_path / "plate"
    folder.mkdir()
    numbers = [1001, 1002, 1003, 1005, 1006, 1007]
    for k, n in enumerate(numbers):
        Image.fromarray(_astronaut_frame(k, SIZE)).save(folder / f"face.{n:04d}.png")
    out = tmp_path / "out.mp4"
    _click_wav(tmp_path / "plate.wav")
    result = run_main("capture.video", folder, "-o", out, "--assets", demo_pack_dir, "--fps", 24, "--no-progress",
                      "--audio", tmp_path / "plate.wav",
                      "--backend", "torch", "--codes", tmp_path / "codes.npz", "--export", tmp_path / "take.usda",
                      "--meshes", tmp_path / "meshes")
    assert result.returncode == 0, result.stderr
    assert "image sequence" in result.stdout and "1 missing: 1004" in result.stdout
    assert "audio: pcm_s16le re-encoded to aac" in result.stdout  # the plate's separate sound
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        times = [float(f.pts * stream.time_base) for f in c.decode(stream)]
    assert times == pytest.approx([(n - 1001) / 24 for n in numbers], abs=1e-3)
    assert np.load(tmp_path / "codes.npz")["face_found"].all()
    np.testing.assert_allclose(np.load(tmp_path / "codes.npz")["time"] * 24, numbers)  # the plate's timeline
    assert sorted(p.name for p in (tmp_path / "meshes").glob("frame_*.obj")) == [
        f"frame_{n:06d}.obj" for n in numbers]
    take = (tmp_path / "take.usda").read_text()
    assert "startTimeCode = 1001" in take and "endTimeCode = 1007" in take
    frames = tmp_path / "frames"
    frames.mkdir()
    again = run_main("capture.video", folder / "face.####.png", "-o", frames / "comp.%04d.jpg", "--assets",
                     demo_pack_dir, "--fps", 24, "--no-progress", "--backend", "torch")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in frames.iterdir()) == [f"comp.{n}.jpg" for n in numbers]  # the plate's numbers
    for out in (folder / "face.1003.png", folder / "face.%04d.png", folder / "face.####.png"):  # its own files
        overwrite = run_main("capture.video", folder, "-o", out, "--assets", demo_pack_dir)
        assert overwrite.returncode == 2 and "would destroy the input" in overwrite.stderr, overwrite.stderr
    assert sorted(p.name for p in folder.iterdir()) == [f"face.{n}.png" for n in numbers]


# ------------------------------------------------------------------------------------------------ written
def test_frames_are_named_by_the_source_frame_they_show(tmp_path):
    from capture.stream.sequence import ImageSequenceWriter

    out = tmp_path / "out"
    out.mkdir()
    w = ImageSequenceWriter(out / "comp.####.png", 64, 48, fps=24, first_number=0)
    for k, pts in enumerate([1001, 1002, 1003, 1005, 1006]):  # a plate without frame 1004
        w.write(pattern_image(k, (64, 48)), pts, Fraction(1, 24))
    w.close()
    assert sorted(p.name for p in out.iterdir()) == [f"comp.{n}.png" for n in (1001, 1002, 1003, 1005, 1006)]
    assert read_frame_number(np.asarray(Image.open(out / "comp.1005.png"))) == 3  # lossless
    vfr = ImageSequenceWriter(out / "v_%03d.jpg", 64, 48, fps=25)
    for k, seconds in enumerate([0.0, 0.04, 0.05, 0.12]):  # 0.05 s rounds to the number 0.04 s took: the next one
        vfr.write(pattern_image(k, (64, 48)), round(seconds * 1000), Fraction(1, 1000))
    assert vfr.numbers == [1, 2, 3, 4] and (out / "v_004.jpg").exists()
    camera = ImageSequenceWriter(out / "rec_%04d.png", 64, 48, fps=25, origin=None)  # a camera's clock
    for k, pts in enumerate([900_000, 900_040, 900_120]):  # ms; the frame at 900.08 s was dropped
        camera.write(pattern_image(k, (64, 48)), pts, Fraction(1, 1000))
    assert camera.numbers == [1, 2, 4]
    assert not list(out.glob(".capture-*"))  # no temporary file left


def test_audio_goes_beside_the_frames_over_the_written_span(tmp_path):
    from capture.stream.clips import make_test_clip
    from capture.stream.sequence import ImageSequenceWriter

    clip = tmp_path / "in.mp4"
    make_test_clip(clip, frames=50, size=(64, 48), fps=25, audio=True)
    w = ImageSequenceWriter(tmp_path / "frame_%04d.png", 64, 48, fps=25, audio_from=clip)
    for k in range(10, 35):  # one second from 0.4 s
        w.write(pattern_image(k, (64, 48)), k, Fraction(1, 25))
    w.close()
    assert w.audio_summary.startswith("written beside as") and w.audio_path.endswith("frame.wav")
    with av.open(w.audio_path) as c:
        stream = c.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(stream)])
        rate = stream.sample_rate
    assert len(samples) == pytest.approx(rate * 1.0, abs=2)
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    assert np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()] == pytest.approx(440, abs=3)  # the clip's tone


def test_what_cannot_be_written_is_said_before_any_work(tmp_path, monkeypatch):
    import sys

    from capture.stream.sequence import check_output

    assert check_output(tmp_path / "f_%04d.png") == "png" and check_output(tmp_path / "f.####.jpg") == "jpeg"
    assert check_output(tmp_path / "f.####.exr", alpha=True) == "exr"
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "OpenEXR", None)  # not installed
        with pytest.raises(VideoError, match="needs the OpenEXR library's Python bindings: pip install openexr"):
            check_output(tmp_path / "f.####.exr")
    with pytest.raises(VideoError, match="written as one of .png"):
        check_output(tmp_path / "f_%04d.webp")
    with pytest.raises(VideoError, match="--codec is for a video"):
        check_output(tmp_path / "f_%04d.png", "libx264")
    assert check_output(tmp_path / "out.mp4") == "libx264"
    assert check_output(tmp_path / "take #3.mp4") == "libx264"  # a video's name may hold '#' or '%d'
    with pytest.raises(VideoError, match=r"one image cannot hold every frame; give a pattern such as .*still_%04d.png"):
        check_output(tmp_path / "still.png")
    assert find_sequence(str(tmp_path / "take #3.mp4")) is None


@pytest.mark.parametrize("suffix", [".png", ".exr"])
def test_a_full_disk_keeps_the_frames_before_it_whole(tmp_path, suffix):
    import subprocess

    from capture.stream.sequence import ImageSequenceWriter

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs a small tmpfs (root)")
    try:
        w = ImageSequenceWriter(small / f"f_%04d{suffix}", 64, 64, fps=25)
        noise = np.random.default_rng(0)
        with pytest.raises(VideoError, match="disk full") as err:
            for k in range(100):  # noise does not compress: ~12 kB a frame
                w.write(noise.integers(0, 256, (64, 64, 3), dtype=np.uint8), k)
        w.close()
        assert "\n" not in str(err.value) and w.failed is not None and 0 < w.frames_written < 100
        written = sorted(small.glob(f"f_*{suffix}"))
        assert len(written) == w.frames_written and not list(small.glob(".capture-*"))
        with open_video(str(small / f"f_%04d{suffix}")) as reader:  # every file there decodes
            assert [f.image.shape for f in reader] == [(64, 64, 3)] * len(written) and not reader.skipped_packets
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_sequence_is_a_live_source_too(tmp_path):
    from capture.stream.camera import open_camera

    _plate(tmp_path / "shot", [10, 11, 13])
    with open_camera(str(tmp_path / "shot"), fps=30, realtime=False) as source:
        times = [f.time for f in source]
    assert source.format_name == "image sequence" and source.ended_reason == "end of the sequence"
    assert times == pytest.approx([10 / 30, 11 / 30, 13 / 30])


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp", ".tga", ".webp", ".dpx"])
def test_every_common_image_format_reads(tmp_path, suffix):
    for k in range(3):
        image = pattern_image(k, (96, 64))
        path = tmp_path / f"f_{k + 1:03d}{suffix}"
        if suffix == ".dpx":  # PIL writes no DPX: FFmpeg's encoder does
            out = av.open(str(path), "w", format="image2")
            stream = out.add_stream("dpx", rate=25)
            stream.width, stream.height, stream.pix_fmt = 96, 64, "rgb24"
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = 0
            out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
            out.close()
        else:
            Image.fromarray(image).save(path, quality=95)
    Image.fromarray(pattern_image(3, (96, 64))).save(tmp_path / f"f_004{suffix}", format="PNG")  # misnamed
    with open_video(str(tmp_path)) as reader:
        numbers = [read_frame_number(f.image) for f in reader]
    assert numbers == [0, 1, 2, 3] and reader.skipped_packets == 0


def _click_wav(path, rate=48000, at=0.5):
    """One second of silence with a 5 ms click at `at` seconds, 16-bit mono WAV."""
    samples = np.zeros(rate, np.int16)
    samples[int(at * rate):int(at * rate) + rate // 200] = 20000
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@pytest.mark.parametrize("name", ["out.mp4", "frames/f_%04d.png"])
def test_a_plates_separate_sound_starts_at_its_first_frame(tmp_path, name):
    from capture.stream.sequence import open_writer

    _click_wav(tmp_path / "plate.wav")
    (tmp_path / "frames").mkdir()
    w = open_writer(tmp_path / name, 64, 48, fps=24, time_base=Fraction(1, 24), origin=None, first_number=0,
                    audio_from=tmp_path / "plate.wav", audio_offset=1001 / 24)
    for n in range(1001, 1025):  # one second of plate, frame 1001 at 1001 / 24 s
        w.write(pattern_image(n - 1001, (64, 48)), n, Fraction(1, 24))
    w.close()
    sound = tmp_path / ("out.mp4" if name == "out.mp4" else "frames/f.wav")
    with av.open(str(sound)) as c:
        stream = c.streams.audio[0]
        first = None
        chunks = []
        for frame in c.decode(stream):
            first = float(frame.pts * frame.time_base) if first is None else first
            chunks.append(frame.to_ndarray().reshape(-1))
        rate = stream.sample_rate
    pcm = np.abs(np.concatenate(chunks).astype(np.float64))
    click = first + pcm.argmax() / rate  # on the output's timeline, where frame 1001 is at 0 s
    assert click == pytest.approx(0.5, abs=0.01)


def test_frame_ranges_become_the_seconds_the_reader_trims_to(tmp_path):
    from types import SimpleNamespace

    from capture.cli_common import CliError
    from capture.video import frames_to_seconds

    _plate(tmp_path / "shot", [n for n in range(1001, 1021) if n != 1011])
    sequence = find_sequence(str(tmp_path / "shot"))
    args = SimpleNamespace(input="shot", start=None, duration=None, fps=24)
    for spec, numbers in (("1006-1013", [1006, 1007, 1008, 1009, 1010, 1012, 1013]), ("1019-", [1019, 1020]),
                          ("1012", [1012]), ("990-1002", [1001, 1002])):
        start, duration = frames_to_seconds(spec, sequence, args)
        with open_video(str(tmp_path / "shot"), start=start, duration=duration, fps=24) as reader:
            assert [f.pts for f in reader] == numbers, spec
    for spec, needle in (("1013-1006", "comes before"), ("a-b", "FIRST-LAST"), ("900-950", "starts at frame 1001")):
        with pytest.raises(CliError, match=needle):
            frames_to_seconds(spec, sequence, args)
    with pytest.raises(CliError, match="is a video"):
        frames_to_seconds("1-2", None, args)
