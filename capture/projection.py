"""DECA's orthographic projection (docs/formats.md 3.1) and the way from crop NDC back to the original frame.

FLAME is y up with +z towards the viewer; crop NDC is y down with smaller z closer: the projection applies
`conventions.flip_y_z`, the only y/z flip of the geometry. Crop NDC <-> pixels is `conventions.ndc_to_pixel`
/ `pixel_to_ndc` (pixel centres at integers, docs/conventions.md). "Camera" in this project means the video
source (`capture.stream.camera`); this module is the model's projection.
"""
from __future__ import annotations

import torch

from .conventions import flip_y_z, ndc_to_pixel, pixel_to_ndc


def orthographic(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """Scaled orthographic projection. points [B, N, 3] FLAME metres, cam [B, 3] = (s, tx, ty).

    p = s * (X + tx, Y + ty, Z), then y and z negated -> crop NDC (x right, y down, smaller z closer).
    """
    s, t = cam[:, None, 0:1], cam[:, None, 1:3]
    xy = s * (points[..., :2] + t)
    z = s * points[..., 2:3]
    return flip_y_z(torch.cat([xy, z], dim=-1))


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
    px = ndc_to_pixel(points[..., :2], crop_size)
    ones = torch.ones_like(px[..., :1])
    orig = torch.einsum("bij,bnj->bni", crop_to_image, torch.cat([px, ones], -1))[..., :2]
    x = pixel_to_ndc(orig[..., 0:1], w)  # same pixel-centre rule for the frame
    y = pixel_to_ndc(orig[..., 1:2], h)
    # the crop's NDC unit spans crop_size pixels; z is scaled with x so that depth stays comparable
    scale = crop_to_image[:, None, 0:1, 0:1].abs() * crop_size / w
    return torch.cat([x, y, points[..., 2:3] * scale[..., 0]], dim=-1)
