"""Exact rasterisation of a flat 2D triangle layout (all depths equal), in float64 with no snapping.

Used once per model pack to build the UV sampler (the layout is DECA's UV map, rasterised by `world2uv`
at z = 1). Unlike the CPU rasterizer (`render.cpu`, vertices snapped to 1/256 pixel), the vertices stay
where they are, so the barycentrics are those of the true triangles and no texel is covered that the
exact inside test leaves empty. The rules are the rasterizers' own (docs/conventions.md, "Rasterization
rules" and "UV space"):

- a pixel belongs to a triangle when its centre is inside it;
- a centre exactly on an edge: top-left rule in the y-down image (the edge counts when the triangle lies
  to its right, or below it for a horizontal edge), so a centre on an edge shared by two triangles goes to
  exactly one of them, and centres on the layout's outer border follow the same rule;
- where triangles overlap (equal depths everywhere): the lowest face index wins;
- zero-area triangles cover nothing.

How it is exact: per triangle, every pixel centre of its bounding box gets the three edge functions in
float64 with a rounding-error bound (Shewchuk's orientation filter, widened). Centres whose signs the
bound cannot settle, or whose edge functions are not known to 1e-9 relative (centres on or within ~1e-9
of an edge, sliver triangles), are recomputed with exact rational arithmetic (`fractions.Fraction`); the
others are strictly inside or outside as float64 says. Barycentrics = edge function / their sum, in the
order of the face's vertices, in [0, 1] and summing to 1 (to rounding).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Tuple

import numpy as np

# Bound on the rounding error of an edge function, relative to |d1 * d2| + |d3 * d4|. Shewchuk's
# ccwerrboundA is (3 + 16 eps) eps = 3.3e-16; a margin of 30x costs nothing (such centres go exact).
_ERROR_BOUND = 1e-14
# Edge functions known to this relative precision are used as they are; others are recomputed exactly.
_RELATIVE = 1e-9
_CHUNK = 1 << 20


def _edge(ax, ay, bx, by, px, py):
    """Edge function of a -> b at p (positive to the left in a y-up frame) and its error bound."""
    left = (bx - ax) * (py - ay)
    right = (by - ay) * (px - ax)
    return left - right, _ERROR_BOUND * (np.abs(left) + np.abs(right))


def _exact_edge(a, b, p) -> Fraction:
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def rasterize_flat_exact(pixels: np.ndarray, faces: np.ndarray, size: Tuple[int, int]):
    """Rasterise triangles given in pixel coordinates (column, row; pixel centres at integers).

    pixels [V, 2] float64; faces [F, 3] int; size (H, W). Returns face_id [H*W] int64 (-1 where empty,
    row-major) and bary [H*W, 3] float64 (weights of faces[face_id]'s vertices, 0 where empty).
    """
    H, W = size
    pixels = np.asarray(pixels, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    face_id = np.full(H * W, -1, dtype=np.int64)
    bary = np.zeros((H * W, 3), dtype=np.float64)
    if len(faces) == 0:
        return face_id, bary
    corners = pixels[faces]  # [F, 3, 2]
    x, y = corners[..., 0], corners[..., 1]
    finite = np.isfinite(corners).all(axis=(1, 2))
    x, y = np.where(finite[:, None], x, 0.0), np.where(finite[:, None], y, 0.0)

    # Orientation of every triangle, exactly: +1, -1, or 0 (degenerate, dropped).
    area, bound = _edge(x[:, 0], y[:, 0], x[:, 1], y[:, 1], x[:, 2], y[:, 2])
    sign = np.where(area > bound, 1, np.where(area < -bound, -1, 0))
    for f in np.flatnonzero((sign == 0) & finite):
        a, b, c = (tuple(Fraction(float(v)) for v in corners[f, k]) for k in range(3))
        exact = _exact_edge(a, b, c)
        sign[f] = (exact > 0) - (exact < 0)
    sign[~finite] = 0

    # Edge k runs a_k -> b_k and weighs the opposite vertex k: (v1 -> v2), (v2 -> v0), (v0 -> v1).
    order_a, order_b = [1, 2, 0], [2, 0, 1]
    xa, ya, xb, yb = x[:, order_a], y[:, order_a], x[:, order_b], y[:, order_b]
    # Top-left rule (signs of float differences are exact): the oriented edge function grows with the
    # column (a left edge), or is flat in the column and grows with the row (a top edge, rows go down).
    d_col, d_row = -(yb - ya) * sign[:, None], (xb - xa) * sign[:, None]
    top_left = (d_col > 0) | ((d_col == 0) & (d_row > 0))

    cmin = np.clip(np.ceil(x.min(1)), 0, W).astype(np.int64)
    cmax = np.clip(np.floor(x.max(1)), -1, W - 1).astype(np.int64)
    rmin = np.clip(np.ceil(y.min(1)), 0, H).astype(np.int64)
    rmax = np.clip(np.floor(y.max(1)), -1, H - 1).astype(np.int64)
    width, height = cmax - cmin + 1, rmax - rmin + 1
    live = np.flatnonzero((sign != 0) & (width > 0) & (height > 0))
    counts = width[live] * height[live]

    hits_pixel, hits_face, hits_bary = [], [], []
    ends = np.cumsum(counts)
    start = 0
    while start < len(live):
        offset = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, offset + _CHUNK, side="right")), start + 1)
        f = np.repeat(live[start:stop], counts[start:stop])
        local = np.arange(len(f)) - np.repeat(ends[start:stop] - counts[start:stop] - offset, counts[start:stop])
        col = cmin[f] + local % width[f]
        row = rmin[f] + local // width[f]
        e, err = _edge(xa[f], ya[f], xb[f], yb[f], col[:, None].astype(np.float64), row[:, None].astype(np.float64))
        s = e * sign[f, None]
        maybe = ~(s < -err).any(1)  # not certainly outside
        exact = maybe & (err >= _RELATIVE * np.abs(e)).any(1)  # >=: e = 0 with err = 0 goes exact
        inside = np.flatnonzero(maybe & ~exact)  # every s > err: strictly inside
        hits_pixel.append(row[inside] * W + col[inside])
        hits_face.append(f[inside])
        hits_bary.append(s[inside] / s[inside].sum(1, keepdims=True))
        for i in np.flatnonzero(exact):
            hit = _exact_hit(corners[f[i]], int(sign[f[i]]), top_left[f[i]], col[i], row[i])
            if hit is not None:
                hits_pixel.append(np.array([row[i] * W + col[i]]))
                hits_face.append(np.array([f[i]]))
                hits_bary.append(np.array([hit]))
        start = stop

    if not hits_pixel:
        return face_id, bary
    pixel, face, weights = np.concatenate(hits_pixel), np.concatenate(hits_face), np.concatenate(hits_bary)
    # Equal depths everywhere: the lowest face index wins.
    order = np.lexsort((face, pixel))
    pixel, face, weights = pixel[order], face[order], weights[order]
    first = np.ones(len(pixel), dtype=bool)
    first[1:] = pixel[1:] != pixel[:-1]
    face_id[pixel[first]] = face[first]
    bary[pixel[first]] = weights[first]
    return face_id, bary


def _exact_hit(corners: np.ndarray, sign: int, top_left: np.ndarray, col: int, row: int):
    """Exact inside test and barycentrics of pixel centre (col, row) in one triangle; None when outside."""
    v = [tuple(Fraction(float(c)) for c in corners[k]) for k in range(3)]
    p = (Fraction(int(col)), Fraction(int(row)))
    s = [_exact_edge(v[a], v[b], p) * sign for a, b in ((1, 2), (2, 0), (0, 1))]
    if any(sk < 0 or (sk == 0 and not top_left[k]) for k, sk in enumerate(s)):
        return None
    total = s[0] + s[1] + s[2]
    return [float(sk / total) for sk in s]
