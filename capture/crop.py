"""Face detection and DECA's crop: MediaPipe boxes -> DECA's similarity transform -> 224x224 input.

Images are numpy `[H, W, 3] uint8` RGB (grey `[H, W]` / `[H, W, 1]` and RGBA `[H, W, 4]` are converted).
Pixel coordinates are (x = column, y = row) with pixel centres at integers, as in skimage and OpenCV.

Face box convention (DECA's `kpt68` box)
----------------------------------------
DECA boxes a face by the min/max of the 68 iBUG landmarks from FAN: left/right/bottom come from the jaw
contour (points 0-16), the top from the eyebrows (17-26); eyes, nose and mouth are always inside.
MediaPipe gives neither FAN's points nor that box, so `FaceDetector` maps its outputs to it:

1. Face mesh available (the default, short-range faces): take the 27 mesh vertices that sit where the
   iBUG jaw and brow points sit and use their min/max:
   jaw (iBUG 0..16, subject's right ear -> chin -> left ear) = `JAW_MESH_IDX`
   (127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356);
   brows (iBUG 17..26, upper brow edge, outer -> inner, then inner -> outer) = `BROW_MESH_IDX`
   (70, 63, 105, 66, 107, 336, 296, 334, 293, 300). Both lists are left/right symmetric in the mesh.
2. No mesh for a detection (mesh off, full-range model, or the mesh missed that face): correct the
   detector's box by a fixed factor, `DETECTION_TO_KPT68`: keep the centre x, move the centre down by
   0.02 x box height, scale width by 0.93 and height by 0.91. Measured as mesh box / detection box on the
   99 faces of `skimage.data.lfw_subset()` that both models found (upsampled to 100 and 250 px: medians
   w 0.88-0.93, h 0.87-0.92, dy +0.02..+0.034) and on `skimage.data.astronaut()` at four scales
   (w 0.97, h 0.93, dy +0.007). The residual spread (about 5 % of the side) is what the fallback costs.

Crop (docs/formats.md 2.1, `kpt68` path, reproduced exactly by `crop_transform`): size0 = mean box side x 1.1,
centre = box centre, side = int(size0 x 1.25); the square's top-left, bottom-left and top-right corners
map to (0, 0), (0, size-1), (size-1, 0). T maps original pixels to crop pixels; `warp_crop` samples the
crop bilinearly with 0 outside the image, as DECA's `skimage.transform.warp(image / 255, T^-1)` does.

Crop pixels <-> DECA's crop NDC (x right, y down, +-1 at the crop's outer borders) is
u = (x + 1) * size / 2 - 0.5: `capture.conventions.ndc_to_pixel` / `pixel_to_ndc` are the only place for it.
(DECA's own visualiser uses (x + 1) * size / 2, half a pixel off this convention.)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import warp
from .console import native_logs_silenced
from .conventions import INPUT_SIZE

# Face-mesh (468/478-point topology) vertices standing in for iBUG-68 points; see the module docstring.
JAW_MESH_IDX = (127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356)
BROW_MESH_IDX = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)
KPT68_MESH_IDX = JAW_MESH_IDX + BROW_MESH_IDX

# Detector box -> kpt68 box: (centre dx, centre dy) in units of box (width, height), then (width, height) scale.
DETECTION_TO_KPT68 = {"dx": 0.0, "dy": 0.02, "sw": 0.93, "sh": 0.91}

DECA_SCALE = 1.25  # TestData's `scale`
COLD_RUNS = 2  # runs that found a face before a graph's native logs are let through (FaceDetector._start)


# --------------------------------------------------------------------------------------------------
# Images and boxes
# --------------------------------------------------------------------------------------------------


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any of [H, W], [H, W, 1], [H, W, 3], [H, W, 4] uint8 -> C-contiguous [H, W, 3] uint8 RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(
            f"image: expected uint8 pixels, got {image.dtype}; convert with "
            "(np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8) for floats in [0, 1]"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image: expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {list(image.shape)}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]  # DECA drops alpha without compositing
    return np.ascontiguousarray(image)


def _check_box(box) -> np.ndarray:
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.shape != (4,):
        raise ValueError(f"box: expected (x0, y0, x1, y1), got {np.asarray(box).shape}")
    return b


def box_iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when either is empty."""
    a, b = _check_box(a), _check_box(b)
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def full_image_box(h: int, w: int) -> tuple[float, float, float, float]:
    """The box DECA uses when no face is found: the whole image, as a square centred on it.

    DECA passes (0, 0, h-1, w-1) as (left, top, right, bottom), i.e. swaps h and w; its crop side only
    depends on the mean side, but its centre lands at ((h-1)/2, (w-1)/2). This box has the same mean
    side, (h-1 + w-1) / 2, centred on the image: identical to DECA for square images, centred otherwise.
    """
    side = ((h - 1) + (w - 1)) / 2.0
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def detection_box_to_kpt68(box) -> tuple[float, float, float, float]:
    """MediaPipe detector box -> DECA's 68-landmark box, by the fixed `DETECTION_TO_KPT68` correction."""
    x0, y0, x1, y1 = _check_box(box)
    w, h = x1 - x0, y1 - y0
    c = DETECTION_TO_KPT68
    cx = (x0 + x1) / 2 + c["dx"] * w
    cy = (y0 + y1) / 2 + c["dy"] * h
    hw, hh = c["sw"] * w / 2, c["sh"] * h / 2
    return (cx - hw, cy - hh, cx + hw, cy + hh)


def mesh_to_kpt68_box(mesh_px: np.ndarray) -> tuple[float, float, float, float]:
    """Face-mesh landmarks [468 or 478, 2] pixels -> DECA's 68-landmark box (min/max of jaw + brows)."""
    mesh_px = np.asarray(mesh_px)
    if mesh_px.ndim != 2 or mesh_px.shape[0] < 468 or mesh_px.shape[1] < 2:
        raise ValueError(f"mesh_px: expected [468 or 478, 2] face-mesh points, got {list(mesh_px.shape)}")
    pts = mesh_px[list(KPT68_MESH_IDX), :2]
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return (float(x0), float(y0), float(x1), float(y1))


@dataclass
class Face:
    """One face in original-image pixels.

    box: (x0, y0, x1, y1) in DECA's 68-landmark-box convention (see module docstring).
    score: detector confidence in [0, 1].
    landmarks: [468 or 478, 2] float32 face-mesh points in pixels, or None when the box came from the
        detector alone.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: Optional[np.ndarray] = None

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0)


# --------------------------------------------------------------------------------------------------
# Crop math (pure)
# --------------------------------------------------------------------------------------------------


def crop_transform(box, scale: float = DECA_SCALE, size: int = INPUT_SIZE) -> np.ndarray:
    """DECA's `kpt68` crop of a face box -> [3, 3] float64 T mapping original pixels to crop pixels.

    The similarity that takes the square's top-left, bottom-left and top-right corners to (0, 0),
    (0, size-1), (size-1, 0) is exactly a uniform scale plus a translation; it is written in closed form.
    """
    left, top, right, bottom = _check_box(box)
    size0 = ((right - left) + (bottom - top)) / 2.0 * 1.1
    cx = right - (right - left) / 2.0
    cy = bottom - (bottom - top) / 2.0
    side = int(size0 * scale)  # DECA truncates
    if side <= 0:
        raise ValueError(f"box {tuple(float(v) for v in (left, top, right, bottom))}: crop side {side} <= 0")
    s = (size - 1) / side
    return np.array(
        [[s, 0.0, -s * (cx - side / 2.0)], [0.0, s, -s * (cy - side / 2.0)], [0.0, 0.0, 1.0]], dtype=np.float64
    )


def _apply_affine(points, M: np.ndarray):
    """points [..., 2] (numpy or torch) through the affine part of M [3, 3]; same type/dtype/device out."""
    if hasattr(points, "detach"):  # torch tensor: keep it on its device
        import torch

        Mt = torch.as_tensor(M, dtype=points.dtype, device=points.device)
        return points @ Mt[:2, :2].T + Mt[:2, 2]
    p = np.asarray(points)
    if p.shape[-1] != 2:
        raise ValueError(f"points: expected [..., 2] (x, y), got {list(p.shape)}")
    out = p @ M[:2, :2].T + M[:2, 2]
    return out.astype(p.dtype) if np.issubdtype(p.dtype, np.floating) else out


def image_points_to_crop(points, T: np.ndarray):
    """Original-image pixels [..., 2] (x, y) -> crop pixels [..., 2] under T from `crop_transform`."""
    return _apply_affine(points, np.asarray(T, dtype=np.float64))


def crop_points_to_image(points_crop_px, T: np.ndarray):
    """Crop pixels [..., 2] (x, y) -> original-image pixels [..., 2]: the inverse of `image_points_to_crop`."""
    return _apply_affine(points_crop_px, np.linalg.inv(np.asarray(T, dtype=np.float64)))


def warp_crop(image: np.ndarray, T: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Sample the crop: image [H, W, 3] uint8 (grey/RGBA converted), T [3, 3] -> [size, size, 3] float32 in [0, 1].

    Bilinear, 0 outside the image, same as skimage `warp(image / 255, inverse_map=T^-1)`. Written with
    four numpy gathers rather than `cv2.warpAffine`, whose sub-pixel positions are quantised to 1/32 px
    (errors up to ~1e-2 on sharp edges). Difference from skimage: skimage also clips the output to the
    input's [min, max]; this only matters for crop pixels that straddle the image border of an image whose
    darkest pixel is not 0.
    """
    return _warp(image, T, size, channels_first=False)


def _warp(image: np.ndarray, T: np.ndarray, size: int, channels_first: bool) -> np.ndarray:
    """`warp_crop`, [size, size, 3] or (channels_first) [3, size, size]. An axis-aligned map (every
    `crop_transform`) runs as the compiled pass of `capture.warp` where it is built: the same float32 steps."""
    img = as_rgb_uint8(image)
    H, W = img.shape[:2]
    Tinv = np.linalg.inv(np.asarray(T, dtype=np.float64))
    grid = np.arange(size, dtype=np.float64)
    if Tinv[0, 1] == 0.0 and Tinv[1, 0] == 0.0:
        xs, ys = Tinv[0, 0] * grid + Tinv[0, 2], Tinv[1, 1] * grid + Tinv[1, 2]
        if warp.kernel_error() is None:
            return warp.warp_separable(img, _taps(ys, H), _taps(xs, W), 1.0 / 255.0, chw=channels_first)
        out = _warp_separable(img, xs, ys)
    else:
        xs = Tinv[0, 0] * grid[None, :] + Tinv[0, 1] * grid[:, None] + Tinv[0, 2]
        ys = Tinv[1, 0] * grid[None, :] + Tinv[1, 1] * grid[:, None] + Tinv[1, 2]
        out = _warp_general(img, xs, ys)
    out *= np.float32(1.0 / 255.0)
    return np.ascontiguousarray(out.transpose(2, 0, 1)) if channels_first else out


def _taps(coords: np.ndarray, n: int):
    """Linear-interpolation taps along one axis: clamped indices i0, i1 and weights (0 where outside [0, n))."""
    i0 = np.floor(coords)
    f = (coords - i0).astype(np.float32)
    i0 = i0.astype(np.int64)
    i1 = i0 + 1
    w0 = np.where((i0 >= 0) & (i0 < n), 1 - f, 0).astype(np.float32)
    w1 = np.where((i1 >= 0) & (i1 < n), f, 0).astype(np.float32)
    return np.clip(i0, 0, n - 1), np.clip(i1, 0, n - 1), w0, w1


def _warp_separable(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    # Axis-aligned map (every crop_transform): interpolate the needed rows, then the needed columns.
    H, W = img.shape[:2]
    x0, x1, wx0, wx1 = _taps(xs, W)
    y0, y1, wy0, wy1 = _taps(ys, H)
    c_lo, c_hi = int(min(x0.min(), x1.min())), int(max(x0.max(), x1.max())) + 1
    band = img[:, c_lo:c_hi]
    rows = band[y0] * wy0[:, None, None] + band[y1] * wy1[:, None, None]  # [size, band, 3] float32
    return rows[:, x0 - c_lo] * wx0[None, :, None] + rows[:, x1 - c_lo] * wx1[None, :, None]


def _warp_general(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    H, W = img.shape[:2]
    x0, x1, wx0, wx1 = _taps(xs, W)
    y0, y1, wy0, wy1 = _taps(ys, H)
    out = img[y0, x0] * (wy0 * wx0)[..., None]
    out += img[y0, x1] * (wy0 * wx1)[..., None]
    out += img[y1, x0] * (wy1 * wx0)[..., None]
    out += img[y1, x1] * (wy1 * wx1)[..., None]
    return out


def crop_to_tensor(image: np.ndarray, T: np.ndarray, size: int = INPUT_SIZE):
    """`warp_crop` as a torch tensor [3, size, size] float32 in [0, 1] (E_flame's input layout, no batch)."""
    import torch

    return torch.from_numpy(_warp(image, T, size, channels_first=True))


# --------------------------------------------------------------------------------------------------
# Detection (MediaPipe, bundled models only)
# --------------------------------------------------------------------------------------------------


class FaceDetector:
    """MediaPipe face detection + face mesh -> faces in DECA's box convention.

    The graphs are created on first use (importing mediapipe costs ~1 s) and released by `close()`.
    One instance must not be used from two threads at once (MediaPipe graphs are not re-entrant).

    max_faces: most faces returned / meshed. min_score: detector threshold.
    use_mesh: refine boxes with face mesh (adds ~4 ms per 512x512 image on 2 cores); off = corrected
        detector box. full_range: MediaPipe's full-range detector (faces up to ~5 m) instead of the
        short-range one (~2 m); the mesh still uses its own short-range detector.
    """

    def __init__(self, *, max_faces: int = 4, min_score: float = 0.5, use_mesh: bool = True, full_range: bool = False,
                 refine: bool = True):
        if max_faces < 1:
            raise ValueError(f"max_faces: expected >= 1, got {max_faces}")
        self.max_faces = int(max_faces)
        self.min_score = float(min_score)
        self.use_mesh = bool(use_mesh)
        self.full_range = bool(full_range)
        self.refine = bool(refine)
        self._det = None
        self._mesh = None
        self._mesh_track = None
        self._cold: dict[int, list] = {}  # graph -> [runs with a face left, its open log window] (see _start)

    # -- graphs ---------------------------------------------------------------------------------
    def _start(self, make):
        """make() builds a MediaPipe graph; fd 2 stays filtered (`native_logs_silenced`) from then until the graph
        has found a face in COLD_RUNS runs. MediaPipe logs from its own threads as the graph starts and the first
        time each of its models runs, and the landmark model runs only once a face is found (a clip that opens on
        an empty room logs at its first face), so a window around each call would miss lines."""
        window = contextlib.ExitStack()
        window.enter_context(native_logs_silenced())
        try:
            graph = make()
        except BaseException:
            window.close()
            raise
        self._cold[id(graph)] = [COLD_RUNS, window]
        return graph

    def _detector(self):
        if self._det is None:
            def make():
                from mediapipe.python.solutions import face_detection

                return face_detection.FaceDetection(model_selection=1 if self.full_range else 0,
                                                    min_detection_confidence=self.min_score)

            self._det = self._start(make)
        return self._det

    def _mesh_static(self):
        if self._mesh is None:
            def make():
                from mediapipe.python.solutions import face_mesh

                return face_mesh.FaceMesh(static_image_mode=True, max_num_faces=self.max_faces,
                                          refine_landmarks=self.refine, min_detection_confidence=self.min_score)

            self._mesh = self._start(make)
        return self._mesh

    def _mesh_tracking(self):
        if self._mesh_track is None:
            def make():
                from mediapipe.python.solutions import face_mesh

                return face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=self.refine,
                                          min_detection_confidence=self.min_score, min_tracking_confidence=0.5)

            self._mesh_track = self._start(make)
        return self._mesh_track

    def _process(self, graph, img: np.ndarray):
        """graph.process(img); a cold graph's log window closes after its COLD_RUNS-th run with a face."""
        result = graph.process(img)
        cold = self._cold.get(id(graph))
        if cold is not None and (getattr(result, "multi_face_landmarks", None) or getattr(result, "detections", None)):
            cold[0] -= 1
            if cold[0] <= 0:
                self._cold.pop(id(graph))[1].close()
        return result

    def close(self) -> None:
        for name in ("_det", "_mesh", "_mesh_track"):
            graph = getattr(self, name)
            if graph is not None:
                graph.close()
                cold = self._cold.pop(id(graph), None)
                if cold is not None:  # closed before it warmed up: its shutdown is filtered too
                    cold[1].close()
                setattr(self, name, None)

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- public ---------------------------------------------------------------------------------
    def detect(self, image: np.ndarray, use_mesh: Optional[bool] = None) -> list[Face]:
        """All faces in image [H, W, 3] uint8 RGB (grey/RGBA converted), largest box first; [] if none.

        use_mesh: override the instance's setting for this call (the tracker skips the static mesh when
        its tracking-mode mesh already measures the face).
        """
        img = as_rgb_uint8(image)
        H, W = img.shape[:2]
        result = self._process(self._detector(), img)
        detections = []
        for det in result.detections or []:
            bb = det.location_data.relative_bounding_box
            box = (bb.xmin * W, bb.ymin * H, (bb.xmin + bb.width) * W, (bb.ymin + bb.height) * H)
            detections.append((detection_box_to_kpt68(box), float(det.score[0])))
        if not detections:
            return []
        # Largest first before truncating, and so that big faces get first pick of the meshes below.
        detections.sort(key=lambda d: (d[0][2] - d[0][0]) * (d[0][3] - d[0][1]), reverse=True)
        detections = detections[: self.max_faces]

        use_mesh = self.use_mesh if use_mesh is None else use_mesh
        meshes = self._mesh_points(self._process(self._mesh_static(), img), H, W) if use_mesh else []
        mesh_boxes = [mesh_to_kpt68_box(m) for m in meshes]
        faces, used = [], set()
        for box, score in detections:
            # Greedy: each mesh goes to the detection it overlaps most (the mesh runs its own detector).
            best, best_iou = None, 0.3
            for j, mb in enumerate(mesh_boxes):
                iou = box_iou(box, mb)
                if j not in used and iou > best_iou:
                    best, best_iou = j, iou
            if best is None:
                faces.append(Face(box=tuple(float(v) for v in box), score=score))
            else:
                used.add(best)
                faces.append(Face(box=mesh_boxes[best], score=score, landmarks=meshes[best]))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    def track_mesh(self, image: np.ndarray) -> Optional[np.ndarray]:
        """Face mesh in tracking mode (carries its ROI over frames; one face): [468, 2] float32 pixels, [478, 2]
        with `refine`, or None."""
        img = as_rgb_uint8(image)
        meshes = self._mesh_points(self._process(self._mesh_tracking(), img), *img.shape[:2])
        return meshes[0] if meshes else None

    @staticmethod
    def _mesh_points(result, H: int, W: int) -> list[np.ndarray]:
        out = []
        for lm in result.multi_face_landmarks or []:
            pts = np.array([(p.x, p.y) for p in lm.landmark], dtype=np.float32)
            pts *= np.array([W, H], dtype=np.float32)
            out.append(pts)
        return out


# --------------------------------------------------------------------------------------------------
# Tracking over a stream
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackResult:
    """face: the tracked face (smoothed box; landmarks only on frames where they are fresh) or None.
    detected_this_frame: the detector ran on this frame. missed_in_a_row: consecutive frames without a face.
    """

    face: Optional[Face]
    detected_this_frame: bool
    missed_in_a_row: int


def _box_to_ccs(box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dtype=np.float64)


def _ccs_to_box(c: np.ndarray) -> tuple[float, float, float, float]:
    return (float(c[0] - c[2] / 2), float(c[1] - c[3] / 2), float(c[0] + c[2] / 2), float(c[1] + c[3] / 2))


class FaceTracker:
    """One face over a stream: detect every `detect_every` frames, smooth the box in between.

    The detector runs when the track is new or lost, when its last score was below `min_score`, every
    `detect_every` frames, and (with `refine_with_mesh`) when face-mesh tracking loses the face. Among
    several faces it keeps the one overlapping the current box most (IoU >= `keep_iou`), else takes the
    largest and restarts the track. The output box glides toward the latest measurement by exponential
    smoothing of centre and size, `smoothing` = fraction of the gap closed per frame (1 = no smoothing).

    refine_with_mesh: measure the box every frame with face mesh in tracking mode (~2 ms per frame on
        2 cores, at 512x512 and 1280x720 alike) instead of holding the last detection between detections.
        It also notices a vanished face on the very frame; without it, only the next scheduled detection
        does. The periodic detections then run the detector alone (~1.5 ms). On a steadily moving face
        (3 px/frame) the box lags ~3 px with it and ~9 px without.
        Limitation: the tracking mesh follows one face; if it settles on another face than the track's,
        the box falls back to the corrected detector box and the detector runs every frame.
    """

    def __init__(
        self,
        detector: Optional[FaceDetector] = None,
        *,
        detect_every: int = 5,
        min_score: float = 0.7,
        smoothing: float = 0.5,
        keep_iou: float = 0.3,
        refine_with_mesh: bool = True,
    ):
        if detect_every < 1:
            raise ValueError(f"detect_every: expected >= 1, got {detect_every}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing: expected in (0, 1], got {smoothing}")
        self._owns_detector = detector is None
        self.detector = detector if detector is not None else FaceDetector()
        self.detect_every = int(detect_every)
        self.min_score = float(min_score)
        self.smoothing = float(smoothing)
        self.keep_iou = float(keep_iou)
        self.refine_with_mesh = bool(refine_with_mesh)
        self.frames = 0  # frames seen
        self.frames_without_face = 0  # total frames with no face
        self.detections_run = 0
        self.reset()

    def reset(self) -> None:
        """Forget the track and the miss run (the next frame runs the detector)."""
        self._drop_track()
        self._missed = 0

    def _drop_track(self) -> None:
        self._state = None  # smoothed (cx, cy, w, h)
        self._target = None  # latest measurement (cx, cy, w, h)
        self._score = 0.0
        self._since_detect = 0

    def close(self) -> None:
        if self._owns_detector:
            self.detector.close()

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, image: np.ndarray) -> TrackResult:
        """Next frame [H, W, 3] uint8 RGB -> TrackResult."""
        img = as_rgb_uint8(image)
        self.frames += 1
        self._since_detect += 1
        need_detect = (
            self._state is None or self._since_detect >= self.detect_every or self._score < self.min_score
        )
        mesh, mesh_box, landmarks = None, None, None
        if self.refine_with_mesh:
            mesh = self.detector.track_mesh(img)
            mesh_box = mesh_to_kpt68_box(mesh) if mesh is not None else None
            if not need_detect:
                if mesh_box is not None and box_iou(mesh_box, _ccs_to_box(self._state)) >= self.keep_iou:
                    self._target, landmarks = _box_to_ccs(mesh_box), mesh
                else:
                    need_detect = True  # mesh lost the face or jumped to another one

        if need_detect:
            self.detections_run += 1
            self._since_detect = 0
            # With mesh tracking on, the detector only confirms and scores; the mesh gives the box.
            face = self._pick(self.detector.detect(img, use_mesh=False if self.refine_with_mesh else None))
            if face is None:
                self._drop_track()
                self._missed += 1
                self.frames_without_face += 1
                return TrackResult(None, True, self._missed)
            self._score = face.score
            if mesh_box is not None and box_iou(mesh_box, face.box) >= self.keep_iou:
                box, landmarks = mesh_box, mesh
            else:
                box, landmarks = face.box, face.landmarks
            target = _box_to_ccs(box)
            if self._state is None or box_iou(box, _ccs_to_box(self._state)) < self.keep_iou:
                self._state = target.copy()  # new or jumped face: no gliding from the old place
            self._target = target

        self._state = self._state + self.smoothing * (self._target - self._state)
        self._missed = 0
        face = Face(box=_ccs_to_box(self._state), score=self._score, landmarks=landmarks)
        return TrackResult(face, need_detect, 0)

    def _pick(self, faces: list[Face]) -> Optional[Face]:
        if not faces:
            return None
        if self._state is not None:
            current = _ccs_to_box(self._state)
            best = max(faces, key=lambda f: box_iou(f.box, current))
            if box_iou(best.box, current) >= self.keep_iou:
                return best
        return faces[0]
