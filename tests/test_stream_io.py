"""Video reader / writer / live source on generated clips.

References are independent of the code under test: the timestamps and pictures the clip generator was
asked for (ClipInfo, pattern_image), FFmpeg's own filters (transpose) for rotation, and PyAV read directly.
"""

from __future__ import annotations

import errno
import os
from fractions import Fraction

import av
import numpy as np
import pytest

from capture.stream import VideoError, VideoReader, VideoWriter, open_camera
from capture.stream.camera import LiveSource, camera_input
from capture.stream.clips import make_test_clip, pattern_image, read_frame_number


def _encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except av.codec.codec.UnknownCodecError:  # a ValueError: not in this build of FFmpeg
        return False


def _read_all(path):
    with VideoReader(path) as r:
        return r, list(r)


def _stream_seconds(path, kind):
    with av.open(str(path)) as c:
        s = getattr(c.streams, kind)[0]
        return float(s.duration * s.time_base), s.codec_context.name


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


# --------------------------------------------------------------------------------------------- reading
def test_h264_aac_roundtrip_keeps_every_frame_pts_and_audio(tmp_path):
    src, out = tmp_path / "src.mp4", tmp_path / "out.mp4"
    clip = make_test_clip(src, frames=50, fps=25, audio=True)
    reader, frames = _read_all(src)
    assert (reader.width, reader.height, reader.fps, reader.frame_count) == (160, 120, 25.0, 50)
    assert reader.has_audio and reader.rotation == 0 and reader.duration == pytest.approx(2.0)
    # Requested times come back exactly (mp4 stores 1/25 s as 512/12800).
    assert [Fraction(f.pts) * f.time_base for f in frames] == [Fraction(p) * clip.time_base for p in clip.pts]
    assert [read_frame_number(f.image) for f in frames] == list(range(50))
    assert min(_psnr(f.image, pattern_image(f.index, clip.size)) for f in frames) > 30

    with VideoWriter(out, reader.width, reader.height, fps=reader.fps, time_base=reader.time_base,
                     audio_from=src) as w:
        for f in frames:
            w.write_frame(f)
    assert w.audio_mode == "copy" and w.frames_written == 50

    r2, frames2 = _read_all(out)
    assert r2.time_base == reader.time_base
    assert [f.pts for f in frames2] == [f.pts for f in frames]
    assert [read_frame_number(f.image) for f in frames2] == list(range(50))
    a_src, codec_src = _stream_seconds(src, "audio")
    a_out, codec_out = _stream_seconds(out, "audio")
    assert codec_out == codec_src == "aac"
    assert abs(a_out - a_src) <= 1 / 25 and abs(a_out - clip.audio_duration) <= 1 / 25
    # Copied, not re-encoded: the packets are byte-identical.
    with av.open(str(src)) as a, av.open(str(out)) as b:
        pa = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size]
        pb = [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size]
    assert pa == pb


def test_variable_frame_rate_keeps_irregular_timestamps(tmp_path):
    src, out = tmp_path / "vfr.mp4", tmp_path / "vfr_out.mp4"
    pts_ms = [0, 33, 70, 100, 180, 200, 290, 300, 301, 400, 520, 560]
    make_test_clip(src, pts=pts_ms, time_base=Fraction(1, 1000), fps=25)
    reader, frames = _read_all(src)
    assert [Fraction(f.pts) * f.time_base for f in frames] == [Fraction(p, 1000) for p in pts_ms]
    with VideoWriter(out, reader.width, reader.height, fps=reader.fps, time_base=reader.time_base) as w:
        for f in frames:
            w.write_frame(f)
    _, frames2 = _read_all(out)
    assert [Fraction(f.pts) * f.time_base for f in frames2] == [Fraction(p, 1000) for p in pts_ms]
    assert [read_frame_number(f.image) for f in frames2] == list(range(len(pts_ms)))


@pytest.mark.parametrize(
    "codec, ext",
    [("libx265", "mp4"), ("libvpx-vp9", "webm"), ("mjpeg", "mkv")],
)
def test_other_codecs_decode_in_order(tmp_path, codec, ext):
    if not _encoder(codec):
        pytest.skip(f"encoder {codec} is not in this PyAV build")
    opts = {"deadline": "realtime", "cpu-used": "8"} if codec == "libvpx-vp9" else None
    path = tmp_path / f"clip.{ext}"
    clip = make_test_clip(path, frames=12, fps=25, codec=codec, options=opts)
    reader, frames = _read_all(path)
    assert len(frames) == 12 and (reader.width, reader.height) == (160, 120)
    assert [read_frame_number(f.image) for f in frames] == list(range(12))
    assert [round(f.time, 6) for f in frames] == [round(t, 6) for t in clip.times]


@pytest.mark.parametrize("rotation, ffmpeg_filter", [(90, "transpose=clock"), (180, "hflip,vflip"),
                                                     (270, "transpose=cclock")])
def test_rotation_metadata_is_applied(tmp_path, rotation, ffmpeg_filter):
    path = tmp_path / f"rot{rotation}.mp4"
    make_test_clip(path, frames=6, size=(160, 96), rotation=rotation)
    reader, frames = _read_all(path)
    assert reader.rotation == rotation and (reader.width, reader.height) == (160, 96)
    assert [read_frame_number(f.image) for f in frames] == list(range(6))
    red = frames[0].image[2:6, 2:6].astype(int).mean(axis=(0, 1))  # marker drawn in the upright top-left
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    # Independent reference: FFmpeg's own filters (what `ffmpeg` autorotate inserts) on the coded picture.
    with av.open(str(path)) as c:
        raw = next(c.decode(video=0))
        assert (raw.rotation + rotation) % 360 == 0  # FFmpeg's matrix angle is counter-clockwise
        graph = av.filter.Graph()
        chain = [graph.add_buffer(template=c.streams.video[0])]
        for part in ffmpeg_filter.split(","):
            name, _, arg = part.partition("=")
            chain.append(graph.add(name, arg or None))
        chain.append(graph.add("buffersink"))
        graph.link_nodes(*chain).configure()
        graph.push(raw)
        ref = graph.pull().to_ndarray(format="rgb24")
    np.testing.assert_array_equal(frames[0].image, ref)


def test_odd_frame_size_is_read_and_padded_on_write(tmp_path):
    src, out = tmp_path / "odd.mp4", tmp_path / "odd_out.mp4"
    make_test_clip(src, frames=5, size=(641, 359))
    reader, frames = _read_all(src)
    assert (reader.width, reader.height) == (641, 359) and frames[0].image.shape == (359, 641, 3)
    with VideoWriter(out, 641, 359, fps=reader.fps, time_base=reader.time_base) as w:
        assert w.coded_size == (642, 360)
        for f in frames:
            w.write_frame(f)
    _, frames2 = _read_all(out)
    assert len(frames2) == 5 and frames2[0].image.shape == (360, 642, 3)
    for a, b in zip(frames, frames2):
        assert _psnr(b.image[:359, :641], a.image) > 30
        # The pad repeats the edge pixels, so no dark line appears.
        assert np.abs(b.image[:359, 641].astype(int) - a.image[:, 640].astype(int)).mean() < 8
    assert [read_frame_number(f.image[:359, :641]) for f in frames2] == list(range(5))


def test_start_and_duration_trim_with_audio_in_sync(tmp_path):
    src, out = tmp_path / "src.mp4", tmp_path / "trim.mp4"
    make_test_clip(src, frames=50, fps=25, audio=True)
    with VideoReader(src, start=0.4, duration=0.8) as r:
        frames = list(r)
        assert r.duration == pytest.approx(0.8) and r.frame_count == 20
    assert [read_frame_number(f.image) for f in frames] == list(range(10, 30))
    assert frames[0].time == pytest.approx(0.4)
    with VideoWriter(out, r.width, r.height, fps=r.fps, time_base=r.time_base, audio_from=src,
                     origin=0.4) as w:
        for f in frames:
            w.write_frame(f)
    _, frames2 = _read_all(out)
    assert [f.time for f in frames2] == pytest.approx([i / 25 for i in range(20)])
    a_out, _ = _stream_seconds(out, "audio")
    assert abs(a_out - 0.8) <= 1 / 25
    with pytest.raises(VideoError, match="no video frames at or after start=5"):
        VideoReader(src, start=5)
    mkv = tmp_path / "src.mkv"  # Matroska seeks in milliseconds
    make_test_clip(mkv, frames=50, fps=25)
    with VideoReader(mkv, start=1.0, duration=0.2) as r:
        assert [read_frame_number(f.image) for f in r] == [25, 26, 27, 28, 29]


def test_audio_reencoded_to_aac_when_container_refuses_codec(tmp_path):
    src, out = tmp_path / "src.mov", tmp_path / "out.mp4"
    make_test_clip(src, frames=25, fps=25, audio=True, audio_codec="pcm_mulaw")
    reader, frames = _read_all(src)
    with VideoWriter(out, reader.width, reader.height, fps=reader.fps, time_base=reader.time_base,
                     audio_from=src) as w:
        for f in frames:
            w.write_frame(f)
    assert w.audio_mode == "aac"
    a_out, codec = _stream_seconds(out, "audio")
    assert codec == "aac" and abs(a_out - 1.0) <= 1 / 25
    with av.open(str(out)) as c:  # the sine survives: 440 Hz peak in the decoded audio
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    spectrum = np.abs(np.fft.rfft(pcm[4096:4096 + 48000 // 2]))
    assert np.argmax(spectrum) * 2 == pytest.approx(440, abs=4)


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("ext, options", [("mkv", None), ("mp4", {"movflags": "+faststart"})])
def test_truncated_file_yields_frames_then_raises(tmp_path, ext, options):
    path = tmp_path / f"full.{ext}"
    make_test_clip(path, frames=50, fps=25, audio=True, container_options=options)
    data = path.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    reader = VideoReader(cut)
    got = []
    with pytest.raises(VideoError, match=r"cut\.%s.*truncated" % ext):
        for f in reader:
            got.append(read_frame_number(f.image))
    # Frames come in order; at the cut, a B-frame whose data is missing may be absent before the last one.
    assert 10 < len(got) < 50 and got[:10] == list(range(10)) and got == sorted(set(got))
    assert reader.truncated


def test_short_mkv_cut_inside_its_only_cluster_is_called_truncated(tmp_path):
    path = tmp_path / "full.mkv"
    make_test_clip(path, frames=12, fps=25)  # one cluster: the cut leaves the header and no whole frame
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 3 // 10])
    expected = r"cut\.mkv: truncated video: no frame decodes but the container declares 0\.480 s"
    with pytest.raises(VideoError, match=expected):
        VideoReader(cut)


def test_mp4_cut_before_its_index_fails_at_open(tmp_path):
    path = tmp_path / "full.mp4"
    make_test_clip(path, frames=20)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(VideoError, match="cut.mp4.*truncated"):
        VideoReader(cut)


def test_bad_inputs_raise_video_error(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match="garbage.mp4: not a readable video"):
        VideoReader(garbage)
    with pytest.raises(VideoError, match="missing.mp4: file not found"):
        VideoReader(tmp_path / "missing.mp4")
    with pytest.raises(VideoError, match="is a directory"):
        VideoReader(tmp_path)
    audio_only = tmp_path / "tone.m4a"
    with av.open(str(audio_only), "w") as c:
        s = c.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4800), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with pytest.raises(VideoError, match=r"tone.m4a: no video stream \(streams found: audio\)"):
        VideoReader(audio_only)


def test_unwritable_output_fails_before_any_work(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        VideoWriter(tmp_path / "no" / "such" / "dir" / "out.mp4", 64, 64)
    with pytest.raises(VideoError, match="is a directory"):
        VideoWriter(tmp_path, 64, 64)
    with pytest.raises(VideoError, match="out.xyz: cannot create output"):
        VideoWriter(tmp_path / "out.xyz", 64, 64)
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(VideoError, match="not writable"):
            VideoWriter(ro / "out.mp4", 64, 64)


def test_writer_rejects_wrong_shape_and_non_increasing_pts(tmp_path):
    with VideoWriter(tmp_path / "o.mp4", 32, 24, fps=25) as w:
        with pytest.raises(ValueError, match=r"expected a \[24, 32, 3\] uint8"):
            w.write(np.zeros((32, 24, 3), np.uint8), 0)
        w.write(np.zeros((24, 32, 3), np.uint8), 5)
        with pytest.raises(VideoError, match="pts 5 <= previous 5"):
            w.write(np.zeros((24, 32, 3), np.uint8), 5)
    _, frames = _read_all(tmp_path / "o.mp4")
    assert len(frames) == 1 and frames[0].time == pytest.approx(5 / 25)


def test_close_is_idempotent_and_partial_output_is_playable(tmp_path):
    out = tmp_path / "partial.mp4"
    w = VideoWriter(out, 160, 120, fps=25)
    for i in range(7):
        w.write(pattern_image(i, (160, 120)), i)
    w.close()
    w.close()
    _, frames = _read_all(out)  # the reader's truncation check passes: the file is complete
    assert [read_frame_number(f.image) for f in frames] == list(range(7))


# --------------------------------------------------------------------------------------------- live
def test_file_as_live_source_is_paced_at_native_rate(tmp_path):
    import time

    path = tmp_path / "live.mp4"
    make_test_clip(path, frames=10, fps=25)
    t = time.monotonic()
    with open_camera(str(path)) as cam:
        got = [read_frame_number(f.image) for f in cam]
    elapsed = time.monotonic() - t
    assert got == list(range(10))
    assert elapsed >= 9 / 25 - 0.01  # frame 9 is due 0.36 s after frame 0
    assert cam.ended_reason == "end of file" and not cam.disconnected


def test_camera_that_disappears_ends_cleanly(tmp_path):
    path = tmp_path / "cam.mp4"
    make_test_clip(path, frames=10, fps=25)
    real = av.open(str(path))

    class Unplugged:  # a device container whose reads fail after 4 frames, as v4l2 does on unplug
        streams = real.streams

        def decode(self, stream):
            for i, frame in enumerate(real.decode(stream)):
                if i == 4:
                    raise av.error.FFmpegError(errno.ENODEV, "No such device")
                yield frame

        def close(self):
            real.close()

    with LiveSource("/dev/video0", "v4l2", container=Unplugged()) as cam:
        got = [read_frame_number(f.image) for f in cam]
    assert got == [0, 1, 2, 3]
    assert cam.disconnected and cam.ended_reason == "camera disconnected: No such device"


def test_camera_spec_maps_to_platform_input():
    assert camera_input(0, "linux") == ("/dev/video0", "v4l2")
    assert camera_input("2", "linux") == ("/dev/video2", "v4l2")
    assert camera_input(1, "darwin") == ("1", "avfoundation")
    assert camera_input("Integrated Camera", "win32") == ("video=Integrated Camera", "dshow")
    with pytest.raises(VideoError, match="dshow"):
        camera_input(0, "win32")


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="v4l2 device paths are Linux-only")
def test_missing_camera_names_the_device_and_input_format():
    with pytest.raises(VideoError, match=r"/dev/video97 does not exist.*v4l2-ctl"):
        open_camera(97)


def test_writer_converts_and_tags_bt709(tmp_path):
    out = tmp_path / "colour.mp4"
    rgb = np.array([200, 50, 30], np.float64)
    with VideoWriter(out, 64, 48, fps=25) as w:
        for i in range(3):
            w.write(np.broadcast_to(rgb.astype(np.uint8), (48, 64, 3)).copy(), i)
    # BT.709 limited range by hand: Y = 16 + 219 * (0.2126 R + 0.7152 G + 0.0722 B) / 255
    y_ref = 16 + 219 * (rgb @ [0.2126, 0.7152, 0.0722]) / 255
    with av.open(str(out)) as c:
        raw = next(c.decode(video=0))
        assert (raw.colorspace, raw.color_range) == (1, 1)  # AVCOL_SPC_BT709, AVCOL_RANGE_MPEG
        y = raw.to_ndarray()[:48].astype(np.float64)  # yuv420p: luma rows first
    assert abs(y.mean() - y_ref) < 1.5
    _, frames = _read_all(out)
    assert np.abs(frames[0].image.astype(np.float64) - rgb).max() <= 4


def test_kept_conversion_context_gives_pyav_per_frame_bytes():
    # The reader and the writer keep one swscale context per stream; PyAV's own calls make one per frame.
    from capture.stream.reader import FrameConverter

    rng = np.random.default_rng(3)
    to_yuv, to_rgb = FrameConverter(dst_colorspace="ITU709", dst_color_range="MPEG"), FrameConverter()
    for _ in range(3):
        rgb = av.VideoFrame.from_ndarray(rng.integers(0, 256, (36, 64, 3), dtype=np.uint8), format="rgb24")
        fresh = rgb.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
        kept = to_yuv.frame(rgb, "yuv420p")
        for a, b in zip(fresh.planes, kept.planes):
            assert bytes(a) == bytes(b)
        assert np.array_equal(to_rgb.rgb(fresh), fresh.to_ndarray(format="rgb24"))


def _planes(frame) -> list[np.ndarray]:
    return [np.frombuffer(p, np.uint8).reshape(p.height, -1)[:, :p.width].astype(np.float64) for p in frame.planes]


@pytest.mark.parametrize("full_range", [False, True])
def test_compiled_rgb_to_yuv420_is_bt709_by_hand_and_swscale_within_levels(full_range):
    """The writer's compiled RGB -> 4:2:0 pass against the definition written out in float64 (BT.709, each 2 x 2
    block's chroma from its mean RGB), and against swscale, which computes the same to a few levels."""
    from capture.stream import yuv
    from capture.stream.reader import FrameConverter

    if yuv.kernel_error():
        pytest.skip(f"no compiled pass here: {yuv.kernel_error()}")
    rng = np.random.default_rng(4)
    ys, xs = np.mgrid[0:64, 0:96] / 20.0
    waves = np.stack([np.sin(xs + k) * np.cos(0.7 * ys - k) for k in range(3)], -1)
    smooth = np.clip(128 + 100 * waves + rng.normal(0, 2, (64, 96, 3)), 0, 255)
    noise = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    for image in (noise, smooth.astype(np.uint8),
                  np.full((8, 8, 3), 255, np.uint8), np.zeros((8, 8, 3), np.uint8)):
        h, w = image.shape[:2]
        fmt = "yuvj420p" if full_range else "yuv420p"
        frame = av.VideoFrame(w, h, fmt)
        yuv.rgb_to_yuv420(image, frame.planes, full_range=full_range)
        y, u, v = _planes(frame)
        rgb = image.astype(np.float64)
        kr, kb = 0.2126, 0.0722
        luma = rgb @ [kr, 1 - kr - kb, kb]
        sy, sc, base = (1.0, 1.0, 0.0) if full_range else (219 / 255, 224 / 255, 16.0)
        mean = (rgb[0::2, 0::2] + rgb[1::2, 0::2] + rgb[0::2, 1::2] + rgb[1::2, 1::2]) / 4
        mean_luma = mean @ [kr, 1 - kr - kb, kb]
        cb = 128 + sc * (mean[..., 2] - mean_luma) / (2 * (1 - kb))
        cr = 128 + sc * (mean[..., 0] - mean_luma) / (2 * (1 - kr))
        for got, want in ((y, base + sy * luma), (u, cb), (v, cr)):
            want = np.clip(want, 0, 255)
            assert np.abs(got - want).max() <= 0.5 + 2e-3  # rounded to nearest (fixed point: ties may go either way)
        if not full_range and image is not noise:
            # swscale's limited range: the same to a few levels on pictures (its chroma filter reaches past the
            # 2 x 2 block, which per-pixel noise shows: up to ~30 levels there)
            ref = FrameConverter(dst_colorspace="ITU709", dst_color_range="MPEG").frame(
                av.VideoFrame.from_ndarray(image, format="rgb24"), "yuv420p")
            for got, theirs in zip((y, u, v), _planes(ref)):
                assert np.abs(got - theirs).max() <= 4 and np.abs(got - theirs).mean() < 0.3
    with pytest.raises(ValueError, match="even-sized"):
        yuv.rgb_to_yuv420(np.zeros((7, 8, 3), np.uint8), av.VideoFrame(8, 8, "yuv420p").planes)
    with pytest.raises(ValueError, match="do not fit"):
        yuv.rgb_to_yuv420(np.zeros((8, 8, 3), np.uint8), av.VideoFrame(16, 8, "yuv420p").planes)


def test_compiled_rgb_to_yuv420_native_build_matches_the_portable_one(monkeypatch):
    """Built for this CPU, the pass converts 32 pixels of a row pair at a time where AVX-512 (VBMI) is there, the
    rest of each row one at a time; the portable build does every pixel one at a time. Both give the same bits
    for every width (a multiple of 32 or not), both ranges, extreme and random codes, and rows that are part of
    a wider picture (the strided left half of a side-by-side frame)."""
    from capture.compiled import CompiledKernel
    from capture.stream import yuv

    if yuv.kernel_error():
        pytest.skip(f"no compiled pass here: {yuv.kernel_error()}")
    native = yuv._KERNEL
    portable = CompiledKernel("rgb_to_yuv_portable", native.source, native.functions)
    rng = np.random.default_rng(12)
    wide = rng.integers(0, 256, (6, 2 * 1282, 3), dtype=np.uint8)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in
              ((2, 2), (4, 30), (2, 32), (6, 34), (4, 64), (2, 66), (8, 96), (6, 1282))]
    images += [np.full((4, 98, 3), 255, np.uint8), np.zeros((4, 98, 3), np.uint8), wide[:, :1282]]
    for full_range in (False, True):
        fmt = "yuvj420p" if full_range else "yuv420p"
        for image in images:
            h, w = image.shape[:2]
            frames = []
            for kernel in (native, portable):
                monkeypatch.setattr(yuv, "_KERNEL", kernel)
                frame = av.VideoFrame(w, h, fmt)
                yuv.rgb_to_yuv420(image, frame.planes, full_range=full_range)
                frames.append(_planes(frame))
            monkeypatch.setattr(yuv, "_KERNEL", native)
            for fast, plain in zip(*frames):
                assert np.array_equal(fast, plain), (w, h, full_range)


def test_writer_without_the_compiled_pass_writes_the_same_video(tmp_path, monkeypatch):
    """swscale stands in where the pass cannot be built: the same frames to a few levels, the same tags."""
    from capture.stream import writer as writer_module

    rng = np.random.default_rng(8)
    images = [np.clip(pattern_image(i, (64, 48)).astype(np.int16) + rng.integers(-20, 20, (48, 64, 3)), 0, 255)
              .astype(np.uint8) for i in range(4)]
    decoded = {}
    for name, error in (("compiled", None), ("swscale", "no compiler")):
        monkeypatch.setattr(writer_module.yuv, "kernel_error", lambda error=error: error)
        out = tmp_path / f"{name}.mkv"
        with VideoWriter(out, 64, 48, fps=25, crf=0) as w:
            assert w._yuv420 == (error is None)
            for i, image in enumerate(images):
                w.write(image, i)
        with av.open(str(out)) as c:
            frames = list(c.decode(video=0))
            assert all((f.colorspace, f.color_range) == (1, 1) for f in frames)
            decoded[name] = [np.stack(_planes(f)[0]) for f in frames]
    assert len(decoded["compiled"]) == len(decoded["swscale"]) == 4
    for a, b in zip(decoded["compiled"], decoded["swscale"]):
        assert np.abs(a - b).max() <= 2


def _x264_settings(path) -> dict[str, str]:
    """The settings x264 itself reports: the `options:` string of its SEI user-data message in the stream."""
    import re

    found = re.search(rb"options: ([ -~]+)", open(path, "rb").read())
    assert found, f"{path}: no x264 settings message"
    return dict(item.split("=", 1) for item in found.group(1).decode().split(" ") if "=" in item)


@pytest.mark.parametrize("preset, expected", [
    # realtime: superfast's analysis (dia search, subme 1, no p8x8) with veryfast's macroblock tree and lookahead
    ("realtime", {"me": "dia", "subme": "1", "analyse": "0x3:0x3", "mbtree": "1", "rc_lookahead": "10"}),
    ("superfast", {"me": "dia", "subme": "1", "analyse": "0x3:0x3", "mbtree": "0"}),
    ("veryfast", {"me": "hex", "subme": "2", "analyse": "0x3:0x113", "mbtree": "1", "rc_lookahead": "10"}),
])
def test_x264_runs_with_the_preset_asked_for(tmp_path, preset, expected):
    from capture.stream.reader import codec_threads

    path = tmp_path / f"{preset}.mp4"
    with VideoWriter(path, 64, 48, fps=25, preset=preset) as w:
        for i in range(4):
            w.write(pattern_image(i, (64, 48)))
    settings = _x264_settings(path)
    assert {k: settings.get(k) for k in expected} == expected
    assert settings["threads"] == str(codec_threads()) and settings["crf"].startswith("18.0")
    assert len(list(VideoReader(path))) == 4


def test_unknown_preset_is_one_clear_error(tmp_path):
    with pytest.raises(VideoError, match="unknown libx264 preset 'fastest'; one of realtime, ultrafast"):
        VideoWriter(tmp_path / "out.mp4", 64, 48, preset="fastest")
    assert not (tmp_path / "out.mp4").exists()
