"""--background: chroma-key colours and a transparent background kept by the files that can hold it."""
from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from capture.picture import Picture, parse_background
from capture.stream.reader import VideoError
from capture.stream.writer import VideoWriter, check_encoder


def test_background_names_hex_and_triples():
    assert parse_background("grey") == (31, 31, 31) and parse_background("GREEN") == (0, 177, 64)
    assert parse_background("#ff8000") == (255, 128, 0) and parse_background("1, 2, 3") == (1, 2, 3)
    assert parse_background("transparent") is None
    for bad in ("pink", "#ff80", "1,2", "0,0,256"):
        with pytest.raises(ValueError, match="give a colour"):
            parse_background(bad)


def test_rgba_is_the_parts_over_nothing():
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 255
    picture = Picture(6, 8, [(0, 0, np.full((6, 4, 3), 9, np.uint8)), (2, 4, np.full((4, 4, 3), 200, np.uint8))],
                      (0, 0, 0), [(0, 0, np.broadcast_to(np.uint8(255), (6, 4))), (2, 4, mask)])
    rgba = picture.rgba()
    assert (rgba[..., :3] == picture.rgb()).all()
    expected = np.zeros((6, 8), np.uint8)
    expected[:, :4] = 255
    expected[3:5, 5:7] = 255
    assert (rgba[..., 3] == expected).all()
    opaque = Picture(2, 2, [(0, 0, np.zeros((2, 2, 3), np.uint8))])
    assert (opaque.rgba()[..., 3] == 255).all()


def _head(size=(64, 96)):
    """A 64 x 96 picture, transparent but for a 16 x 16 square at rows 24-40, columns 40-56."""
    h, w = size
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    return Picture(h, w, [(16, 32, np.full((32, 32, 3), 240, np.uint8))], (0, 0, 0), [(16, 32, mask)])


def _alpha_of_first_frame(path, decoder=None):
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        if decoder is None:
            frame = next(c.decode(stream))
        else:  # FFmpeg's own VP9 decoder drops the alpha that libvpx's reads
            context = av.CodecContext.create(decoder, "r")
            frame = next(f for packet in c.demux(stream) for f in context.decode(packet))
    return frame.to_ndarray(format="rgba")[..., 3]


@pytest.mark.parametrize("name, codec, decoder", [("out.webm", None, "libvpx-vp9"), ("out.mov", None, None),
                                                  ("out.mkv", None, None), ("rle.mov", "qtrle", None)])
def test_videos_keep_the_transparency(tmp_path, name, codec, decoder):
    w = VideoWriter(tmp_path / name, 96, 64, fps=25, alpha=True, codec=codec)
    for i in range(3):
        w.write(_head(), i)
    w.close()
    alpha = _alpha_of_first_frame(tmp_path / name, decoder)
    assert alpha[26:38, 42:54].min() >= 250 and alpha[:16].max() <= 5 and alpha[:, :30].max() <= 5


def test_containers_without_transparency_say_so_before_any_file(tmp_path):
    with pytest.raises(VideoError, match="transparent background needs a container that keeps it"):
        check_encoder(tmp_path / "out.mp4", alpha=True)
    with pytest.raises(VideoError, match="libx264 encoder keeps no transparency"):
        check_encoder(tmp_path / "out.mov", "libx264", alpha=True)
    assert check_encoder(tmp_path / "out.mov", alpha=True) == "prores_ks"
    assert not list(tmp_path.iterdir())


def test_png_frames_keep_the_transparency(tmp_path):
    from capture.stream.sequence import ImageSequenceWriter, check_output

    w = ImageSequenceWriter(tmp_path / "f_%04d.png", 96, 64, fps=25, alpha=True)
    w.write(_head(), 0)
    w.close()
    rgba = np.asarray(Image.open(tmp_path / "f_0001.png"))
    assert rgba.shape == (64, 96, 4) and rgba[30, 48, 3] == 255 and rgba[0, 0, 3] == 0
    with pytest.raises(VideoError, match="keep no transparency"):
        check_output(tmp_path / "f_%04d.jpg", alpha=True)


_READ_EXR = """
import os, sys
os.environ["OPENCV_IO_ENABLE_OPENEXR"] = "1"
import cv2, numpy as np
image = cv2.imread(sys.argv[1], cv2.IMREAD_UNCHANGED)
np.save(sys.argv[2], image[..., [2, 1, 0, 3] if image.shape[2] == 4 else [2, 1, 0]])
"""


def _read_exr(path, tmp_path):
    """An EXR file read by the OpenEXR library (OpenCV's build of it): [H, W, C] float32, RGB(A) order."""
    import subprocess
    import sys

    out = tmp_path / "exr.npy"
    subprocess.run([sys.executable, "-c", _READ_EXR, str(path), str(out)], check=True, timeout=60)
    return np.load(out)


def test_exr_frames_are_linear_premultiplied_half_floats(tmp_path):
    """What a compositor reads from `-o f.####.exr`: linear light (the sRGB curve undone), RGB premultiplied by
    alpha. Read by OpenCV's build of OpenEXR and by FFmpeg's decoder (our reader, through the sRGB curve again),
    not by the library that wrote it."""
    from capture.stream.sequence import ImageSequenceReader, ImageSequenceWriter, find_sequence, write_exr

    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    mask[8:24, 24] = 128  # an antialiased column
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[...] = (240, 128, 10)
    picture = Picture(64, 96, [(16, 32, colour)], (0, 0, 0), [(16, 32, mask)])
    w = ImageSequenceWriter(tmp_path / "f.####.exr", 96, 64, fps=25, alpha=True)
    w.write(picture, 0)
    w.close()
    got = _read_exr(tmp_path / "f.0001.exr", tmp_path)
    srgb = np.array([240, 128, 10]) / 255
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    assert got.shape == (64, 96, 4)
    np.testing.assert_allclose(got[30, 45], [*linear, 1.0], rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(got[30, 56], [*(linear * 128 / 255), 128 / 255], rtol=2e-3, atol=1e-4)
    assert (got[0, 0] == 0).all()
    # an opaque sequence (no alpha channel), read back by our reader within a level
    rgb = np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    w = ImageSequenceWriter(tmp_path / "g_%03d.exr", 96, 64, fps=25)
    w.write(rgb, 0)
    w.close()
    assert _read_exr(tmp_path / "g_001.exr", tmp_path).shape == (64, 96, 3)
    frame = next(iter(ImageSequenceReader(find_sequence(str(tmp_path / "g_%03d.exr")))))
    assert np.abs(frame.image.astype(int) - rgb).max() <= 1
    # any size, every value
    odd = np.random.default_rng(3).integers(0, 256, (7, 13, 4), dtype=np.uint8)
    write_exr(tmp_path / "odd.exr", odd)
    alpha = odd[..., 3:] / 255
    srgb = odd[..., :3] / 255
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    np.testing.assert_allclose(_read_exr(tmp_path / "odd.exr", tmp_path), np.concatenate([linear * alpha, alpha], 2),
                               rtol=2e-3, atol=2e-4)


def test_video_command_draws_over_a_key_colour_or_nothing(tmp_path, demo_pack_dir):
    from cli_runs import run_main
    from face_clips import make_face_clip

    clip = make_face_clip(tmp_path / "in.mp4", 4, audio=False)
    common = ("--assets", demo_pack_dir, "--no-progress", "--backend", "torch")
    frames = tmp_path / "frames"
    frames.mkdir()
    result = run_main("capture.video", clip.path, "-o", frames / "f_%04d.png", "--background", "transparent",
                      *common)
    assert result.returncode == 0, result.stderr
    rgba = np.asarray(Image.open(frames / "f_0001.png"))
    w = rgba.shape[1] // 2
    assert (rgba[:, :w, 3] == 255).all()  # side-by-side: the input is opaque
    right = rgba[:, w:, 3]
    assert right[:, :4].max() == 0 and right[:, -4:].max() == 0 and 0.05 < (right == 255).mean() < 0.6  # the head
    edge = (right > 0) & (right < 255)  # antialiased: the outline's pixels have their covered share
    assert 0 < edge.sum() < (right == 255).sum() / 4
    green = run_main("capture.video", clip.path, "-o", tmp_path / "green.mp4", "--background", "green",
                     "--layout", "avatar", *common)
    assert green.returncode == 0, green.stderr
    with av.open(str(tmp_path / "green.mp4")) as c:
        corner = next(c.decode(video=0)).to_ndarray(format="rgb24")[:8, :8].reshape(-1, 3).mean(0)
    assert np.abs(corner - (0, 177, 64)).max() < 6
    for extra, needle in ((("-o", tmp_path / "x.mp4"), "needs a container that keeps it"),
                          (("-o", tmp_path / "x.webm", "--layout", "overlay"), "needs --layout avatar")):
        refused = run_main("capture.video", clip.path, "--background", "transparent", *extra, *common)
        assert refused.returncode == 2 and needle in refused.stderr, refused.stderr


def test_api_refuses_a_transparent_overlay():
    from capture import Retargeter

    with pytest.raises(ValueError, match="needs the avatar or side-by-side layout"):
        Retargeter(layout="overlay", background="transparent", assets="demo")
