"""MediaPipe's face mesh in FLAME's terms: the 68 iBUG points that DECA's landmark embedding defines.

DECA's `landmark_embedding.npy` puts the 68 iBUG-300W points on the head model (docs/formats.md 1.3): 17
yaw-dependent jaw-contour points (0..16) and 51 static ones (17..67: brows, nose, eyes, mouth). MediaPipe's
face mesh (468 points, 478 with the iris refinement) has no such points, but it has vertices that sit where
each of them sits. `MESH_TO_IBUG68[k]` is the mesh vertex standing in for iBUG point k; the table with its
derivation and check is in docs/conventions.md ("Landmark correspondences"). Left/right follow iBUG: point 0
and the eye 36..41 are on the subject's right (image left in an unmirrored frontal view), as are MediaPipe's
33 (right eye outer corner) and 61 (right mouth corner).

`IBUG68_WEIGHTS` is how much each point is trusted by the fitter: the jaw contour is a silhouette on the
head model but a fixed mesh vertex in MediaPipe (the two slide against each other as the head turns), the
brows' iBUG points follow the hairy edge that the mesh only approximates; eyes and lips are measured best.
"""
from __future__ import annotations

import bisect
import math
from collections import deque

import numpy as np

# iBUG 0..16: jaw contour, subject's right ear -> chin -> left ear (the same vertices as capture.crop's box).
_JAW = (127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356)
# 17..21 right brow outer -> inner, 22..26 left brow inner -> outer (upper brow edge).
_BROWS = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)
# 27..30 nose bridge -> tip, 31..35 lower nose edge, right alar base -> left alar base.
_NOSE = (168, 197, 5, 4, 75, 97, 2, 326, 305)
# 36..41 right eye: outer corner, upper lid (2), inner corner, lower lid (2); 42..47 left eye: inner corner,
# upper lid (2), outer corner, lower lid (2).
_EYES = (33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380)
# 48..59 outer lip: right corner, upper lip (5) -> left corner, lower lip (5) back to the right.
_OUTER_LIP = (61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181)
# 60..67 inner lip: right corner, upper (3), left corner, lower (3).
_INNER_LIP = (78, 82, 13, 312, 308, 317, 14, 87)

MESH_TO_IBUG68 = _JAW + _BROWS + _NOSE + _EYES + _OUTER_LIP + _INNER_LIP
assert len(MESH_TO_IBUG68) == 68

# iBUG index ranges
JAW = range(0, 17)
BROWS = range(17, 27)
NOSE = range(27, 36)
EYES = range(36, 48)
OUTER_LIP = range(48, 60)
INNER_LIP = range(60, 68)


def _weights() -> np.ndarray:
    w = np.ones(68)
    w[list(JAW)] = 0.25
    w[[0, 1, 15, 16]] = 0.1  # near the ears: hidden first when the head turns
    w[list(BROWS)] = 0.6
    w[list(NOSE)] = 0.8
    w[list(EYES)] = 1.5
    w[list(OUTER_LIP)] = 1.0
    w[list(INNER_LIP)] = 1.5
    return w


IBUG68_WEIGHTS = _weights()

# Mirror pairs of iBUG points (k, mirror(k)): used to check the table against the mesh's own symmetry.
IBUG68_MIRROR = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)


def ibug68_from_mesh(mesh_px: np.ndarray) -> np.ndarray:
    """Face-mesh points [468 or 478, 2+] (pixels) -> the 68 iBUG points [68, 2] float64, same units."""
    mesh_px = np.asarray(mesh_px)
    if mesh_px.ndim != 2 or mesh_px.shape[0] < 468 or mesh_px.shape[1] < 2:
        raise ValueError(f"mesh_px: expected [468 or 478, 2] face-mesh points, got {list(mesh_px.shape)}")
    return mesh_px[list(MESH_TO_IBUG68), :2].astype(np.float64)


# ------------------------------------------------------------------------------------------------ eyelids
# The lid pairs (upper, lower) of each eye in iBUG numbering, and its corners.
LID_PAIRS = {"right": ((37, 41), (38, 40)), "left": ((43, 47), (44, 46))}
EYE_CORNERS = {"right": (36, 39), "left": (42, 45)}


def eye_openness(points: np.ndarray) -> dict[str, float]:
    """Mean lid gap over eye width of each eye, from 68 iBUG points [68, 2] (any units).

    Plain Python on the points: it runs every frame in the codes thread, where numpy's per-call cost on
    2-vectors is more than the arithmetic (with it and `np.percentile`, LidCalibration took 0.3 ms a frame; 0.05)."""
    p = np.asarray(points, dtype=np.float64).tolist()

    def dist(i: int, j: int) -> float:
        return math.sqrt((p[i][0] - p[j][0]) ** 2 + (p[i][1] - p[j][1]) ** 2)

    return {eye: sum(dist(u, d) for u, d in pairs) / len(pairs) / max(dist(*EYE_CORNERS[eye]), 1e-9)
            for eye, pairs in LID_PAIRS.items()}


def set_lid_gaps(points: np.ndarray, scale: dict[str, float]) -> np.ndarray:
    """Scale each eye's lid gaps about their midpoints (points [68, 2]; scale 0 = lids meet)."""
    out = np.array(points, dtype=np.float64, copy=True)
    for eye, pairs in LID_PAIRS.items():
        k = scale.get(eye, 1.0)
        for u, d in pairs:
            mid = 0.5 * (out[u] + out[d])
            half = 0.5 * (out[u] - out[d])
            out[u], out[d] = mid + k * half, mid - k * half
    return out


def percentile_of_sorted(values: list[float], percentile: float) -> float:
    """`np.percentile(values, percentile)` (its default "linear" method, to the bit) of a sorted, non-empty list."""
    n, q = len(values), percentile / 100.0
    index = (n - 1) * q  # numpy's virtual index for "linear"
    if index >= n - 1:
        return float(values[-1])
    lo = max(math.floor(index), 0)
    t = index - lo
    a, b = values[lo], values[lo + 1]
    return float(a + (b - a) * t if t < 0.5 else b - (b - a) * (1.0 - t))


class LidCalibration:
    """Maps what MediaPipe's lid points say to how closed each eye is, relative to the performer's own eyes.

    Eyes differ: a performer's open eye may be narrower or rounder than the model's, and MediaPipe's lid
    points never quite meet. Each eye's openness (lid gap over eye width) is compared with the performer's
    own open-eye baseline (a high percentile of the last `window` frames, so blinks do not lower it); a
    ratio at or below `closed_ratio` becomes lids that meet, 1 stays as measured, linearly in between, per
    eye (winks stay winks); widening (ratio > 1) passes unchanged. Measured with the refined face mesh on
    real clips: shut eyes read 0.02-0.05 against 0.25-0.31 open on pexels_emotions, blinks 0.03-0.06
    against 0.28-0.33 on franck, i.e. ratios of 0.1-0.2. (Without the refinement they read about half
    open: 0.145 vs 0.29.)
    """

    def __init__(self, closed_ratio: float = 0.15, window: int = 300, percentile: float = 80.0,
                 min_frames: int = 5):
        self.closed_ratio = float(closed_ratio)
        self.window, self.percentile, self.min_frames = int(window), float(percentile), int(min_frames)
        self.reset()

    def reset(self) -> None:
        """A new performer: forget the baseline."""
        self._history = {eye: deque() for eye in LID_PAIRS}  # the last `window` values, oldest first
        self._sorted: dict[str, list[float]] = {eye: [] for eye in LID_PAIRS}  # the same values, sorted
        self.baseline: dict[str, float] = {}

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Next frame's 68 iBUG points [68, 2] -> the same points with each eye's lid gap remapped."""
        openness = eye_openness(points)
        for eye, value in openness.items():
            if not math.isfinite(value):  # a damaged point says nothing about the baseline
                continue
            history, ordered = self._history[eye], self._sorted[eye]
            history.append(value)
            bisect.insort(ordered, value)
            if len(history) > self.window:
                del ordered[bisect.bisect_left(ordered, history.popleft())]
            if len(history) >= self.min_frames:
                self.baseline[eye] = percentile_of_sorted(ordered, self.percentile)
        return self._remap(points, openness)

    def remap(self, points: np.ndarray) -> np.ndarray:
        """The remapping with the current baseline, without adding the frame to the history."""
        return self._remap(points, eye_openness(points))

    def _remap(self, points: np.ndarray, openness: dict[str, float]) -> np.ndarray:
        scale = {}
        for eye, value in openness.items():
            base = self.baseline.get(eye)
            if base is None:
                continue
            ratio = value / max(base, 1e-9)
            if ratio >= 1.0:
                continue
            closure = min(max((1.0 - ratio) / (1.0 - self.closed_ratio), 0.0), 1.0)  # 0 open .. 1 shut
            scale[eye] = (1.0 - closure) / ratio  # the new gap = (1 - closure) x the open gap
        return set_lid_gaps(points, scale) if scale else np.asarray(points, np.float64)
