"""Small analytic meshes shared by the tests."""
from __future__ import annotations

import numpy as np


def front_hemisphere(n: int = 24, extent: float = 0.8):
    """A smooth cap facing +z over [-extent, extent]^2 with an orthographic UV layout (u with x, v with y).

    Returns vertices [n*n, 3] float32, faces [F, 3] int64 (outward winding), uv [n*n, 2] float32.
    """
    xs = np.linspace(-extent, extent, n)
    X, Y = np.meshgrid(xs, xs[::-1])
    Z = np.sqrt(np.clip(1.2 - X**2 - Y**2, 0.05, None))
    verts = np.stack([X, Y, Z], -1).reshape(-1, 3).astype(np.float32)
    ids = np.arange(n * n).reshape(n, n)
    a, b, c, d = ids[:-1, :-1], ids[:-1, 1:], ids[1:, :-1], ids[1:, 1:]
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    uv = np.stack([(X + 1) / 2, (Y + 1) / 2], -1).reshape(-1, 2).astype(np.float32)
    return verts, faces.astype(np.int64), uv
