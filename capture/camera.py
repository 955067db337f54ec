"""DECA's camera (docs/formats.md 3.1) and the way from crop NDC back to the original frame.

The orthographic projection flips y and z (FLAME is y up, +z towards the viewer; crop NDC is y down, smaller z
closer): that flip happens here and nowhere else. Crop NDC <-> pixel mapping: u = (x + 1) * S / 2 - 0.5, pixel
centres at integers (docs/conventions.md).
"""
from __future__ import annotations

import torch

from .crop import crop_pixels_to_ndc, ndc_to_crop_pixels


def orthographic(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """Scaled orthographic projection. points [B, N, 3] FLAME metres, cam [B, 3] = (s, tx, ty).

    p = s * (X + tx, Y + ty, Z), then y and z negated -> crop NDC (x right, y down, smaller z closer).
    """
    s, t = cam[:, None, 0:1], cam[:, None, 1:3]
    xy = s * (points[..., :2] + t)
    z = s * points[..., 2:3]
    return torch.cat([xy[..., 0:1], -xy[..., 1:2], -z], dim=-1)


def crop_to_image_ndc(points: torch.Tensor, image_to_crop: torch.Tensor, crop_size: int,
                      image_size: tuple[int, int]) -> torch.Tensor:
    """Crop NDC [B, N, 3] -> NDC of the original frame, through the inverse crop similarity.

    image_to_crop: [B, 3, 3] or [3, 3], maps original pixels (x = column, y = row) to crop pixels.
    image_size: (H, W) of the original frame. z is kept (depth order is all the rasteriser needs).
    """
    h, w = image_size
    crop_to_image = torch.linalg.inv(image_to_crop.to(points.dtype))
    if crop_to_image.dim() == 2:
        crop_to_image = crop_to_image[None].expand(points.shape[0], 3, 3)
    px = ndc_to_crop_pixels(points[..., :2], crop_size)
    ones = torch.ones_like(px[..., :1])
    orig = torch.einsum("bij,bnj->bni", crop_to_image, torch.cat([px, ones], -1))[..., :2]
    x = crop_pixels_to_ndc(orig[..., 0:1], w)  # same pixel-centre rule for the frame
    y = crop_pixels_to_ndc(orig[..., 1:2], h)
    # the crop's NDC unit spans crop_size pixels; z is scaled with x so that depth stays comparable
    scale = crop_to_image[:, None, 0:1, 0:1].abs() * crop_size / w
    return torch.cat([x, y, points[..., 2:3] * scale[..., 0]], dim=-1)
