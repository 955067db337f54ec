"""MediaPipe's face mesh in FLAME's terms: the 68 iBUG points that DECA's landmark embedding defines.

DECA's `landmark_embedding.npy` puts the 68 iBUG-300W points on the head model (FORMATS.md 1.3): 17
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
