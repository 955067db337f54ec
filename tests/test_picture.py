"""Output pictures kept as parts (`capture.picture`): the RGB they stand for, written out by hand, and their YUV
4:2:0 planes, which must be the bytes of converting that whole RGB picture; the renderer's pictures in every
layout against compositing its float drawing; the writer's output from a Picture against the same picture as an
array."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from capture.picture import Picture, even_box
from capture.stream import yuv

pytestmark = pytest.mark.skipif(yuv.kernel_error() is not None, reason=f"no compiled pass: {yuv.kernel_error()}")


def _yuv_bytes(picture, full_range: bool, whole: bool) -> list[np.ndarray]:
    frame = av.VideoFrame(picture.width, picture.height, "yuvj420p" if full_range else "yuv420p")
    if whole:
        yuv.rgb_to_yuv420(np.ascontiguousarray(picture.rgb()), frame.planes, full_range)
    else:
        picture.to_yuv420(frame.planes, full_range)
    return [view.copy() for view in yuv.plane_views(frame.planes)]


def _by_hand(height, width, parts, background):
    out = np.empty((height, width, 3), np.uint8)
    out[:] = background if background is not None else 0
    for top, left, image in parts:
        out[top:top + image.shape[0], left:left + image.shape[1]] = image
    return out


@pytest.mark.parametrize("full_range", [False, True])
def test_parts_convert_into_the_whole_pictures_bytes(full_range):
    rng = np.random.default_rng(2)

    def noise(h, w):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    frame = noise(36, 50)
    cases = [
        (36, 100, [(0, 0, frame), (8, 62, noise(14, 20))], (31, 31, 31)),  # side by side: input, head on grey
        (36, 50, [(0, 0, frame), (10, 4, noise(20, 16))], None),  # overlay: the head over the input
        (36, 50, [(2, 6, noise(30, 44))], (31, 31, 31)),  # avatar: the head on grey
        (36, 50, [(0, 0, frame)], None),  # passed through
        (36, 100, [(0, 0, frame)], (200, 10, 90)),  # passed through side by side, another grey
        (36, 50, [(0, 10, noise(36, 20)), (30, 0, noise(6, 50))], (5, 250, 128)),  # a band, then a strip over it
        (36, 50, [(0, 0, frame[:, :40][:, ::-1])], (31, 31, 31)),  # a part whose rows run backwards in memory
    ]
    for height, width, parts, background in cases:
        picture = Picture(height, width, parts, background)
        want = _by_hand(height, width, parts, background)
        np.testing.assert_array_equal(picture.rgb(), want)
        fresh = Picture(height, width, parts, background)
        assert fresh.fits_yuv420() == all(image.strides[1:] == (3, 1) for _, _, image in parts)
        for got, whole in zip(_yuv_bytes(fresh, full_range, whole=False), _yuv_bytes(picture, full_range, True)):
            np.testing.assert_array_equal(got, whole)
    # odd corners: converted from the whole RGB picture instead, the same bytes
    odd = Picture(36, 50, [(3, 5, noise(9, 11))], (31, 31, 31))
    assert not odd.fits_yuv420()
    for got, whole in zip(_yuv_bytes(odd, full_range, whole=False),
                          _yuv_bytes(Picture(36, 50, [(0, 0, odd.rgb().copy())]), full_range, True)):
        np.testing.assert_array_equal(got, whole)


def test_pictures_refuse_parts_outside_and_holes_without_a_background():
    with pytest.raises(ValueError, match="does not lie inside"):
        Picture(10, 10, [(4, 4, np.zeros((8, 8, 3), np.uint8))], (0, 0, 0))
    with pytest.raises(ValueError, match="does not lie inside"):
        Picture(10, 10, [(0, 0, np.zeros((10, 10, 3), np.float32))], (0, 0, 0))
    with pytest.raises(ValueError, match="first part must cover"):
        Picture(10, 10, [(2, 2, np.zeros((4, 4, 3), np.uint8))])
    frame = av.VideoFrame(12, 10, "yuv420p")
    with pytest.raises(ValueError, match="planes"):
        Picture(10, 10, [(0, 0, np.zeros((10, 10, 3), np.uint8))]).to_yuv420(frame.planes)


def test_even_box_widens_to_even_corners_inside_the_picture():
    assert even_box(3, 5, 4, 4, (20, 20)) == (2, 4, 6, 6)
    assert even_box(2, 4, 6, 6, (20, 20)) == (2, 4, 6, 6)
    assert even_box(17, 17, 3, 3, (20, 20)) == (16, 16, 4, 4)
    assert even_box(17, 17, 4, 4, (21, 21)) == (16, 16, 5, 5)  # an odd picture's last row and column stay


@pytest.mark.parametrize("layout", ["side-by-side", "overlay", "avatar"])
def test_renderer_pictures_are_the_float_composite(demo_pack, layout):
    """AvatarRenderer's picture in each layout is the float composite of its own drawing (colour x alpha over
    the input or the grey background), rounded to uint8, and its YUV parts are the whole picture's bytes."""
    from capture.avatar import demo_identity
    from capture.crop import crop_transform
    from capture.deca import DECA
    from capture.retarget import BACKGROUND, AvatarRenderer

    deca = DECA.from_pack(demo_pack)
    avatar = demo_identity(deca)
    gen = torch.Generator().manual_seed(5)
    source = avatar.codes.replace(exp=0.8 * torch.randn(1, 50, generator=gen),
                                  pose=torch.tensor([[0.0, -0.2, 0.0, 0.1, 0.0, 0.0]]))
    frame = np.random.default_rng(1).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    T = crop_transform((60, 10, 150, 100))
    renderer = AvatarRenderer(deca, avatar, layout, (120, 200), antialias=False)
    result = renderer.render(frame, source, T)
    colour, alpha = renderer.draw(source, T)
    under = (torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255 if layout == "overlay"
             else torch.full((1, 3, 120, 200), BACKGROUND))
    # alpha is 0 or 1: the float composite is the drawing where covered, else what lies under it (uint8 exactly)
    assert set(alpha.unique().tolist()) <= {0.0, 1.0} and alpha.sum() > 500
    head = (colour * alpha + under * (1 - alpha))[0].permute(1, 2, 0)
    head = (head.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    want = np.concatenate([frame, head], 1) if layout == "side-by-side" else head
    np.testing.assert_array_equal(result.image, want)
    fresh = renderer.render(frame, source, T).picture
    assert fresh.fits_yuv420() and len(fresh.parts) == (1 if layout == "avatar" else 2)
    for got, whole in zip(_yuv_bytes(fresh, False, whole=False), _yuv_bytes(result.picture, False, True)):
        np.testing.assert_array_equal(got, whole)
    # antialiased: the same picture but for pixels of the outline (an uncovered one has a covered neighbour)
    smooth = AvatarRenderer(deca, avatar, layout, (120, 200)).render(frame, source, T).image
    changed = (smooth != result.image).any(-1)
    head = alpha[0, 0].numpy() > 0
    covered = np.concatenate([np.zeros_like(head), head], 1) if layout == "side-by-side" else head
    near = np.zeros_like(covered)
    near[1:] |= covered[:-1]
    near[:-1] |= covered[1:]
    near[:, 1:] |= covered[:, :-1]
    near[:, :-1] |= covered[:, 1:]
    assert 20 < changed.sum() < 0.25 * covered.sum()
    assert not (changed & ~covered & ~near).any()
    passed = renderer.render(frame, None, None)
    np.testing.assert_array_equal(passed.image[:, :200], frame)
    if layout == "side-by-side":  # the grey of the avatar's background, not one level off
        assert (passed.image[:, 200:] == want[0, -1]).all()


def test_writer_encodes_a_picture_as_its_array(tmp_path):
    """The same frames through VideoWriter as Pictures (parts into the planes) and as arrays: the same decoded
    pictures, also where a Picture cannot go part by part (odd corners) or the writer pads an odd size."""
    from capture.stream import VideoReader, VideoWriter

    def pictures(h, w):
        rng = np.random.default_rng(6)
        for k in range(4):
            frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            head = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            yield Picture(h, 2 * w, [(0, 0, frame), (2 * k, w + 2 + k, head)], (31, 31, 31))

    for h, w in ((32, 48), (31, 47)):
        decoded = []
        for name in ("parts", "arrays"):
            path = tmp_path / f"{name}-{h}.mkv"
            with VideoWriter(path, 2 * w, h, fps=25, codec="libx264", crf=0) as writer:
                for picture in pictures(h, w):
                    writer.write(picture if name == "parts" else picture.rgb())
            with VideoReader(path) as reader:
                decoded.append([f.image.copy() for f in reader])
        assert len(decoded[0]) == len(decoded[1]) == 4
        for a, b in zip(*decoded):
            np.testing.assert_array_equal(a, b)
