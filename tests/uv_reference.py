"""An independent exact reference for the UV sampler: rational arithmetic, one texel at a time.

Written from the rules in docs/conventions.md ("Crop NDC", "Rasterization rules", "UV space"), sharing no
code with `capture.render.exact`:
- texel (r, c) of an S x S map samples uv = ((c + 0.5) / S, 1 - (r + 0.5) / S): the layout is rasterised at
  (2u - 1, -(2v - 1)) and pixel centres sit at NDC (2c + 1) / S - 1, so a uv vertex lies at pixel
  (column u * S - 1/2, row (1 - v) * S - 1/2); uv values are read as float32, as the pack stores them;
- barycentrics by Cramer's rule for p = v0 + l1 (v1 - v0) + l2 (v2 - v0), l0 = 1 - l1 - l2;
- inside: every l_k >= 0, and where l_k = 0 the edge opposite vertex k must be a left edge (the third
  vertex lies strictly to the right of the line at its row) or a horizontal top edge (third vertex below);
- among the triangles that contain a texel centre, the lowest face index wins.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def uv_to_pixel(uv, size: int):
    u, v = (Fraction(float(np.float32(t))) for t in uv)
    return u * size - Fraction(1, 2), (1 - v) * size - Fraction(1, 2)


def _counts(a, b, c) -> bool:
    """Does the edge a-b (third vertex c) count for centres lying exactly on it (top-left rule, rows down)?"""
    (xa, ya), (xb, yb), (xc, yc) = a, b, c
    if ya == yb:
        return yc > ya  # horizontal: a top edge when the triangle is below it
    x_line = xa + (xb - xa) * (yc - ya) / (yb - ya)
    return xc > x_line  # a left edge when the triangle is to its right


def barycentrics(tri, p):
    """Exact (l0, l1, l2) of p in triangle tri (three (x, y) Fractions); None when degenerate."""
    (x0, y0), (x1, y1), (x2, y2) = tri
    det = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    if det == 0:
        return None
    dx, dy = p[0] - x0, p[1] - y0
    l1 = (dx * (y2 - y0) - (x2 - x0) * dy) / det
    l2 = ((x1 - x0) * dy - dx * (y1 - y0)) / det
    return 1 - l1 - l2, l1, l2


def contains(tri, lam) -> bool:
    if lam is None or min(lam) < 0:
        return False
    for k in range(3):
        if lam[k] == 0 and not _counts(tri[(k + 1) % 3], tri[(k + 2) % 3], tri[k]):
            return False
    return True


def reference_layout(uvcoords, uvfaces, size: int, texels=None):
    """face_id [S*S] (-1 empty), bary [S*S, 3] float64, n_inside [S*S] (how many faces contain each centre).

    texels: optional iterable of flat texel ids to evaluate (others are left empty, n_inside -1).
    """
    pix = [uv_to_pixel(t, size) for t in np.asarray(uvcoords)]
    tris = [tuple(pix[int(i)] for i in f) for f in np.asarray(uvfaces)]
    face_id = np.full(size * size, -1, np.int64)
    bary = np.zeros((size * size, 3))
    n_inside = np.zeros(size * size, np.int64)
    wanted = None
    if texels is not None:
        wanted = set(int(t) for t in texels)
        n_inside[:] = -1
        n_inside[list(wanted)] = 0
    for f, tri in enumerate(tris):
        xs, ys = [p[0] for p in tri], [p[1] for p in tri]
        for r in range(max(0, math.ceil(min(ys))), min(size - 1, math.floor(max(ys))) + 1):
            for c in range(max(0, math.ceil(min(xs))), min(size - 1, math.floor(max(xs))) + 1):
                t = r * size + c
                if wanted is not None and t not in wanted:
                    continue
                lam = barycentrics(tri, (Fraction(c), Fraction(r)))
                if contains(tri, lam):
                    n_inside[t] += 1
                    if face_id[t] < 0:  # faces are visited in increasing index
                        face_id[t] = f
                        bary[t] = [float(x) for x in lam]
    return face_id, bary, n_inside


def pixels_to_uv(points, size: int) -> np.ndarray:
    """Pixel (column, row) -> OBJ uv (float32), the inverse of `uv_to_pixel` (exact for dyadic points)."""
    p = np.asarray(points, np.float64)
    return np.stack([(p[:, 0] + 0.5) / size, 1 - (p[:, 1] + 0.5) / size], 1).astype(np.float32)
