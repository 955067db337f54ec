"""capture.crop: MediaPipe faces in DECA's box convention, DECA's crop math, and the stream tracker.

References: skimage's `estimate_transform('similarity')` and `warp` (what DECA itself calls), hand-measured
face bounds on `skimage.data.astronaut()`, and analytic values.
"""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from skimage.transform import estimate_transform, warp

from capture import crop as C
from capture.conventions import ndc_to_pixel, pixel_to_ndc

# Hand-measured on astronaut() (512x512) from a 4x zoom with a pixel ruler: brows' top edge y ~ 88,
# chin y ~ 176, cheek/jaw sides x ~ 181 and ~ 270 (the iBUG-68 extremes). Loose bounds around that.
ASTRO_BOUNDS = {"x0": (170, 190), "y0": (78, 96), "x1": (262, 282), "y1": (168, 186)}


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def detector():
    with C.FaceDetector() as det:
        yield det


@pytest.fixture(scope="module")
def astro_face(detector, astronaut) -> C.Face:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    return faces[0]


def _deca_reference_tform(box, scale=1.25, size=224):
    """DECA's TestData kpt68 path, written out with skimage as DECA does it."""
    left, top, right, bottom = box
    old_size = (right - left + bottom - top) / 2 * 1.1
    center = np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0])
    side = int(old_size * scale)
    src = np.array(
        [[center[0] - side / 2, center[1] - side / 2], [center[0] - side / 2, center[1] + side / 2],
         [center[0] + side / 2, center[1] - side / 2]]
    )
    dst = np.array([[0, 0], [0, size - 1], [size - 1, 0]], dtype=np.float64)
    return estimate_transform("similarity", src, dst)


def _assert_in_bounds(box, bounds=ASTRO_BOUNDS, dx=0.0, dy=0.0, s=1.0):
    for value, key in zip(box, ("x0", "y0", "x1", "y1")):
        lo, hi = bounds[key]
        off = dx if key[0] == "x" else dy
        assert s * lo + off <= value <= s * hi + off, f"{key}={value:.1f} outside [{s*lo+off:.1f}, {s*hi+off:.1f}]"


# ------------------------------------------------------------------------------------------------ detection


def test_astronaut_one_face_with_landmark_box(astro_face):
    _assert_in_bounds(astro_face.box)
    assert astro_face.score > 0.8
    assert astro_face.landmarks is not None and astro_face.landmarks.shape == (478, 2)  # refined: + 10 iris points
    # The box is the min/max of the jaw+brow mesh points (DECA's kpt68 box), so every point lies in it.
    jaw_brow = astro_face.landmarks[list(C.KPT68_MESH_IDX)]
    assert np.all(jaw_brow >= np.array(astro_face.box[:2]) - 1e-3)
    assert np.all(jaw_brow <= np.array(astro_face.box[2:]) + 1e-3)


def test_detection_only_fallback_close_to_mesh_box(astronaut, astro_face):
    with C.FaceDetector(use_mesh=False) as det:
        faces = det.detect(astronaut)
    assert len(faces) == 1 and faces[0].landmarks is None
    _assert_in_bounds(faces[0].box)
    assert C.box_iou(faces[0].box, astro_face.box) > 0.85


def test_grey_and_rgba_inputs_are_converted(detector, astronaut, astro_face):
    grey = (astronaut @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    rgba = np.concatenate([astronaut, np.full(astronaut.shape[:2] + (1,), 255, np.uint8)], axis=2)
    for image in (grey, grey[:, :, None], rgba):
        faces = detector.detect(image)
        assert len(faces) == 1
        assert C.box_iou(faces[0].box, astro_face.box) > 0.85
    with pytest.raises(TypeError, match="uint8"):
        detector.detect(astronaut / 255.0)


@pytest.mark.parametrize("kind", ["coffee", "grey"])
def test_no_face_returns_empty(detector, kind):
    image = skimage.data.coffee() if kind == "coffee" else np.full((300, 400, 3), 128, np.uint8)
    assert detector.detect(image) == []


def test_two_faces_largest_first(detector, astronaut, astro_face):
    import cv2

    patch = astronaut[30:250, 120:340]  # 220x220 around the face
    small = cv2.resize(patch, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)  # 176x176
    canvas = np.full((360, 520, 3), 200, np.uint8)  # non-square: checks mesh x/y normalisation too
    canvas[40:260, 20:240] = patch
    canvas[100:276, 320:496] = small
    faces = detector.detect(canvas)
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    assert faces[0].landmarks is not None and faces[1].landmarks is not None
    _assert_in_bounds(faces[0].box, dx=20 - 120, dy=40 - 30)
    # The small copy: the same face scaled by 0.8 about the patch corner, moved to (320, 100).
    x0, y0, x1, y1 = astro_face.box
    expect = np.array([(x0 - 120) * 0.8 + 320, (y0 - 30) * 0.8 + 100, (x1 - 120) * 0.8 + 320, (y1 - 30) * 0.8 + 100])
    assert np.abs(np.array(faces[1].box) - expect).max() < 5.0


# ------------------------------------------------------------------------------------------------ box helpers


def test_box_iou_hand_values():
    assert C.box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert C.box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert C.box_iou((0, 0, 4, 2), (0, 0, 4, 2)) == 1.0


def test_detection_box_correction_hand_values():
    # 100x100 box at (0,0): centre (50, 50 + 2), size 93 x 91.
    box = C.detection_box_to_kpt68((0, 0, 100, 100))
    assert box == pytest.approx((50 - 46.5, 52 - 45.5, 50 + 46.5, 52 + 45.5))


def test_full_image_box_matches_deca_for_square_and_centres_otherwise():
    # Square image: DECA's fallback box (0, 0, w-1, h-1) gives the very same crop.
    T = C.crop_transform(C.full_image_box(300, 300))
    assert np.allclose(T, _deca_reference_tform((0, 0, 299, 299)).params)
    # Wide image: same crop side as DECA's (mean side), centred on the image.
    h, w = 200, 400
    T = C.crop_transform(C.full_image_box(h, w))
    centre_in_crop = C.image_points_to_crop(np.array([(w - 1) / 2, (h - 1) / 2]), T)
    assert centre_in_crop == pytest.approx([111.5, 111.5])
    side = int(((h - 1) + (w - 1)) / 2 * 1.1 * 1.25)
    assert T[0, 0] == pytest.approx(223 / side)


# ------------------------------------------------------------------------------------------------ crop math


@pytest.mark.parametrize("seed", range(5))
def test_crop_transform_matches_skimage_similarity(seed):
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(-50, 400, size=2)
    box = (x0, y0, x0 + rng.uniform(20, 300), y0 + rng.uniform(20, 300))
    T = C.crop_transform(box)
    ref = _deca_reference_tform(box).params
    assert np.allclose(T, ref, atol=1e-9, rtol=0)


def test_crop_transform_other_scale_and_size():
    box = (100.0, 50.0, 200.0, 170.0)
    assert np.allclose(C.crop_transform(box, 1.6, 256), _deca_reference_tform(box, 1.6, 256).params, atol=1e-9)


def test_warp_crop_matches_skimage_warp(astronaut, astro_face):
    for box in (astro_face.box, (-120.0, -60.0, 90.0, 130.0), (400.0, 420.0, 560.0, 600.0)):  # inside, corners
        tform = _deca_reference_tform(box)
        ref = warp(astronaut / 255.0, tform.inverse, output_shape=(224, 224))
        out = C.warp_crop(astronaut, C.crop_transform(box))
        assert out.shape == (224, 224, 3) and out.dtype == np.float32
        # astronaut spans 0..255, so skimage's output clipping is a no-op and border pixels agree too.
        assert np.abs(out - ref).max() < 1e-4


def test_warp_crop_general_similarity_matches_skimage(astronaut):
    src = np.array([[150.0, 60.0], [140.0, 230.0], [320.0, 70.0]])
    dst = np.array([[0, 0], [0, 223], [223, 0]], dtype=np.float64)
    tform = estimate_transform("similarity", src, dst)  # rotated: not axis-aligned
    ref = warp(astronaut / 255.0, tform.inverse, output_shape=(224, 224))
    assert np.abs(C.warp_crop(astronaut, tform.params) - ref).max() < 1e-4


def test_warp_crop_grey_input_and_tensor(astronaut, astro_face):
    T = C.crop_transform(astro_face.box)
    grey = astronaut[:, :, 1]
    out = C.warp_crop(grey, T)
    ref = warp(grey / 255.0, np.linalg.inv(T), output_shape=(224, 224))
    assert np.abs(out - ref[:, :, None]).max() < 1e-4
    t = C.crop_to_tensor(astronaut, T)
    assert t.shape == (3, 224, 224) and t.dtype == torch.float32
    assert np.array_equal(t.numpy(), C.warp_crop(astronaut, T).transpose(2, 0, 1))


def test_compiled_warp_is_the_numpy_steps_bit_for_bit(astronaut, astro_face, monkeypatch):
    """The crop's compiled pass (`capture.warp`) against the numpy steps it stands in for: the same float32 values,
    for boxes inside the image, over its corners and larger than it, in both layouts."""
    from capture import warp as W

    if W.kernel_error():
        pytest.skip(f"no compiled pass here: {W.kernel_error()}")
    boxes = (astro_face.box, (-120.0, -60.0, 90.0, 130.0), (400.0, 420.0, 560.0, 600.0), (-300.0, -300.0, 900.0, 900.0))
    fast = [(C.warp_crop(astronaut, C.crop_transform(b)), C.crop_to_tensor(astronaut, C.crop_transform(b)).numpy())
            for b in boxes]
    monkeypatch.setattr(W, "kernel_error", lambda: "no compiler")  # the numpy steps
    for box, (hwc, chw) in zip(boxes, fast):
        T = C.crop_transform(box)
        slow = C.warp_crop(astronaut, T)
        assert np.array_equal(hwc, slow) and np.array_equal(chw, slow.transpose(2, 0, 1))
        assert np.array_equal(C.crop_to_tensor(astronaut, T).numpy(), chw)
    with pytest.raises(ValueError, match="outside the image"):
        taps = (np.array([0, 600]), np.array([1, 601]), np.ones(2, np.float32), np.zeros(2, np.float32))
        W.warp_separable(astronaut, taps, taps, 1.0)


def test_points_round_trip_and_corners(astro_face):
    box = astro_face.box
    T = C.crop_transform(box)
    tform = _deca_reference_tform(box)
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 512, size=(50, 2))
    crop_pts = C.image_points_to_crop(pts, T)
    assert np.allclose(crop_pts, tform(pts), atol=1e-9)
    assert np.allclose(C.crop_points_to_image(crop_pts, T), pts, atol=1e-9)
    # Corners of DECA's square land on the crop corners.
    left, top, right, bottom = box
    side = int(((right - left) + (bottom - top)) / 2 * 1.1 * 1.25)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    corners = np.array([[cx - side / 2, cy - side / 2], [cx - side / 2, cy + side / 2], [cx + side / 2, cy - side / 2]])
    assert np.allclose(C.image_points_to_crop(corners, T), [[0, 0], [0, 223], [223, 0]], atol=1e-9)
    # Torch tensors stay tensors.
    tp = torch.tensor(crop_pts, dtype=torch.float64)
    assert torch.allclose(C.crop_points_to_image(tp, T), torch.tensor(pts), atol=1e-9)


def test_ndc_pixel_mapping():
    ndc = np.array([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    px = ndc_to_pixel(ndc, 224)
    # +-1 at the outer borders of the 224 crop, whose pixel centres are 0..223.
    assert np.allclose(px, [[-0.5, -0.5], [223.5, 223.5], [111.5, 111.5]])
    assert np.allclose(pixel_to_ndc(px, 224), ndc)
    assert torch.allclose(pixel_to_ndc(ndc_to_pixel(torch.tensor(ndc), 224), 224), torch.tensor(ndc))


# ------------------------------------------------------------------------------------------------ tracker


def _sequence(astronaut):
    """14 frames of the face moving right 3 px/frame, 6 blank frames, 6 frames of it back (moving on)."""
    patch = astronaut[30:250, 120:340]
    frames, offsets = [], []
    for i in range(26):
        canvas = np.full((320, 480, 3), 90, np.uint8)
        if 14 <= i < 20:
            frames.append(canvas)
            offsets.append(None)
            continue
        ox, oy = 40 + 3 * i, 50 + i  # patch's top-left in the frame
        canvas[oy:oy + 220, ox:ox + 220] = patch
        frames.append(canvas)
        offsets.append((ox - 120, oy - 30))  # astronaut -> frame translation
    return frames, offsets


@pytest.mark.parametrize("refine", [False, True])
def test_tracker_follows_misses_and_recovers(detector, astronaut, astro_face, refine):
    frames, offsets = _sequence(astronaut)
    tracker = C.FaceTracker(detector, detect_every=5, refine_with_mesh=refine)
    cx0, cy0 = astro_face.center
    results = [tracker.update(f) for f in frames]
    # Without mesh refinement the face's absence is only seen at the next scheduled detection (frame 15):
    # frame 14 still shows the held box. Mesh tracking notices at once.
    first_miss = 14 if refine else 15
    for i, (res, off) in enumerate(zip(results, offsets)):
        if off is None:
            if i < first_miss:
                assert res.face is not None and not res.detected_this_frame
            else:
                assert res.face is None and res.detected_this_frame
                assert res.missed_in_a_row == i - first_miss + 1
            continue
        assert res.face is not None, f"frame {i}: face lost"
        assert res.missed_in_a_row == 0
        err = np.hypot(res.face.center[0] - (cx0 + off[0]), res.face.center[1] - (cy0 + off[1]))
        # Lag of a few frames at 3.2 px/frame, well inside the crop's 37 % margin.
        assert err < 0.15 * astro_face.width, f"frame {i}: centre off by {err:.1f} px"
        assert abs(res.face.width - astro_face.width) < 0.1 * astro_face.width
    detected = [i for i, r in enumerate(results) if r.detected_this_frame]
    if refine:
        assert {0, 14, 15, 16, 17, 18, 19, 20} <= set(detected)
    else:
        assert detected == [0, 5, 10, 15, 16, 17, 18, 19, 20, 25]
    assert tracker.frames == 26 and tracker.frames_without_face == 20 - first_miss
    assert tracker.detections_run == len(detected)


def test_tracker_keeps_its_face_when_a_larger_one_appears(detector, astronaut):
    import cv2

    patch = astronaut[30:250, 120:340]
    small = cv2.resize(patch, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)
    first = np.full((360, 520, 3), 200, np.uint8)
    first[100:276, 320:496] = small
    both = first.copy()
    both[40:260, 20:240] = patch
    tracker = C.FaceTracker(detector, detect_every=1)
    r0 = tracker.update(first)
    r1 = tracker.update(both)
    assert r1.detected_this_frame and r1.face.center[0] > 320  # still the small face on the right
    assert C.box_iou(r0.face.box, r1.face.box) > 0.8
    tracker.reset()
    assert tracker.update(both).face.center[0] < 240  # fresh track: the largest face
