"""Every coordinate flip, re-mapping and fixed size of `capture`, one named function or constant each.

The conventions themselves are written down in `docs/conventions.md`; this module is their code. Crop,
projection, rendering and training call these functions instead of writing `2 * u - 1`, `-y` or `224`
inline, so that a flip happens once, at a boundary, and can be found by name.

Vocabulary: B batch, V vertices, H x W output image, "NDC" = DECA's crop NDC (x right, y down, -1..+1
across the image, +-1 at the outer pixel borders), "pixel coordinates" = (column, row) with pixel centres
at integers.
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch

INPUT_SIZE = 224  # side of DECA's face crop, the only input size of E_flame / E_detail (AvgPool2d(7))
UV_SIZE = 256  # side of FLAME's UV maps (albedo, masks, displacement, normal maps)

# Depth range handed to nvdiffrast (its clip z must lie in [-1, 1]); fragments outside it are dropped by
# both rasterizers so that they agree. Wide enough for DECA's z (about +-2 for a head at scale 8-10) with
# or without the +10 that DECA adds before rasterising.
DEPTH_NEAR = -100.0
DEPTH_FAR = 100.0


def _per_axis(points, size) -> tuple:
    """(H, W) of `size` (an int means a square) and whether both sides are equal."""
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    return int(h), int(w)


def _axis_values(points, x: float, y: float):
    """(x, y) as an array/tensor of `points`' type, to scale the last axis per coordinate."""
    if isinstance(points, torch.Tensor):
        return points.new_tensor([x, y])
    dtype = points.dtype if isinstance(points, np.ndarray) and points.dtype.kind == "f" else np.float64
    return np.asarray([x, y], dtype=dtype)


def ndc_to_pixel(xy, size: Union[int, Tuple[int, int]]):
    """NDC (x, y) -> pixel coordinates (column u, row v), pixel centres at integers.

    xy: [..., 2] tensor or array (x right, y down); size: (H, W), or S for a square S x S image (the crop).
    u = (x + 1) * W / 2 - 0.5, v = (y + 1) * H / 2 - 0.5 (pytorch3d-compatible). The one place for it.
    """
    h, w = _per_axis(xy, size)
    scale = w / 2.0 if h == w else _axis_values(xy, w / 2.0, h / 2.0)
    return (xy + 1.0) * scale - 0.5


def pixel_to_ndc(uv, size: Union[int, Tuple[int, int]]):
    """Pixel coordinates (column u, row v) -> NDC (x, y); the inverse of `ndc_to_pixel` (same `size`)."""
    h, w = _per_axis(uv, size)
    scale = 2.0 / w if h == w else _axis_values(uv, 2.0 / w, 2.0 / h)
    return (uv + 0.5) * scale - 1.0


def pixel_centers_ndc(size: Tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """NDC position of every pixel centre: [H, W, 2] (x, y) = `pixel_to_ndc` of (column, row), in `dtype`.

    x = (c + 0.5) * 2 / W - 1, y = (r + 0.5) * 2 / H - 1: the one pixel-centre grid (training's barycentrics)."""
    H, W = size
    rows, cols = torch.meshgrid(torch.arange(H, device=device, dtype=dtype),
                                torch.arange(W, device=device, dtype=dtype), indexing="ij")
    return pixel_to_ndc(torch.stack([cols, rows], dim=-1), (H, W))


def flip_y_z(points: torch.Tensor) -> torch.Tensor:
    """FLAME's axes (y up, +z towards the viewer) -> crop NDC axes (y down, smaller z closer): (x, -y, -z).

    points [..., 3]. The only y/z flip of the geometry (`capture.projection.orthographic` applies it)."""
    return torch.cat([points[..., 0:1], -points[..., 1:3]], dim=-1)


def obj_uv_to_ndc(uv: torch.Tensor) -> torch.Tensor:
    """OBJ texture coordinates (u right, v UP, 0..1) -> our y-down NDC: (2u - 1, -(2v - 1)).

    uv: [..., 2]. This is the one v-flip of the project: v = 1 lands on row 0 of a UV map. The result is
    both the position at which the UV layout is rasterised and a `grid_sample` grid (align_corners=False).
    """
    u, v = uv.unbind(-1)
    return torch.stack([2.0 * u - 1.0, 1.0 - 2.0 * v], dim=-1)


def ndc_to_clip(vertices: torch.Tensor, near: float = DEPTH_NEAR, far: float = DEPTH_FAR) -> torch.Tensor:
    """Our NDC vertices -> nvdiffrast clip space (x, y, z, w), w = 1.

    vertices: [B, V, 3] float32. x and y pass unchanged (nvdiffrast writes clip y = -1 to row 0, which is our
    y-down NDC); z is mapped linearly from [near, far] to [-1, 1], so "smaller z = closer" survives.
    Returns [B, V, 4].
    """
    xy = vertices[..., :2]
    zc = (vertices[..., 2:3] - near) * (2.0 / (far - near)) - 1.0
    return torch.cat([xy, zc, torch.ones_like(zc)], dim=-1)


def clip_z_to_ndc(zc: torch.Tensor, near: float = DEPTH_NEAR, far: float = DEPTH_FAR) -> torch.Tensor:
    """nvdiffrast's z/w in [-1, 1] -> our NDC z in [near, far]; the inverse of the z part of `ndc_to_clip`."""
    return (zc + 1.0) * ((far - near) / 2.0) + near


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB (rows top to bottom) -> [1, 3, H, W] float32 in 0..1."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image: expected an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}; "
            "convert grey/RGBA/float images first"
        )
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div_(255.0)


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """[3, H, W] or [1, 3, H, W] float in 0..1 -> HxWx3 uint8 RGB (values clamped, rounded to nearest)."""
    if tensor.dim() == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"tensor: expected batch size 1, got shape {tuple(tensor.shape)}; index one image")
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"tensor: expected [3, H, W] or [1, 3, H, W], got shape {tuple(tensor.shape)}")
    scaled = tensor.detach().float().clamp(0.0, 1.0).mul(255.0).round()
    return scaled.to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
