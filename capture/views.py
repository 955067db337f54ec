"""Pictures of a posed head: albedo, SH-lit colour, DECA's grey shape render (coarse and detailed).

Input is the mesh already in screen NDC of the target image (crop NDC, or the original frame's NDC after
`camera.crop_to_image_ndc`). One rasterisation serves every view.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .appearance import SHAPE_GREY, SHAPE_LIGHT_INTENSITY, SHAPE_LIGHTS, directional_shading, sh_shading
from .render import texture


@dataclass
class Views:
    alpha: torch.Tensor  # [B, 1, H, W] coverage
    albedo: Optional[torch.Tensor] = None  # [B, 3, H, W] unlit albedo (DECA's rendered_images at HEAD)
    lit: Optional[torch.Tensor] = None  # [B, 3, H, W] albedo x SH(detail or coarse normals)
    shape: Optional[torch.Tensor] = None  # [B, 3, H, W] grey five-light render, coarse normals
    shape_detail: Optional[torch.Tensor] = None  # [B, 3, H, W] same with detail normals
    visible: Optional[torch.Tensor] = None  # [B, 1, H, W] front-facing pixels (screen normal z < 0.15)


def render_views(rasterizer, screen_vertices: torch.Tensor, faces: torch.Tensor, uv_ndc: torch.Tensor,
                 uvfaces: torch.Tensor, world_normals: torch.Tensor, screen_normals: torch.Tensor,
                 size: tuple[int, int], *, albedo_uv: Optional[torch.Tensor] = None,
                 light: Optional[torch.Tensor] = None, detail_normals_uv: Optional[torch.Tensor] = None,
                 want_shape: bool = True) -> Views:
    """Rasterise once and build the requested views.

    screen_vertices [B, V, 3] NDC; faces [F, 3]; uv_ndc [T, 2] (uv layout in NDC, `appearance.uv_layout_ndc`);
    uvfaces [F, 3]; world_normals / screen_normals [B, V, 3]; albedo_uv [B, 3, S, S]; light [B, 9, 3];
    detail_normals_uv [B, 3, S, S] world-space.
    """
    batch = screen_vertices.shape[0]
    frags = rasterizer.rasterize(screen_vertices, faces, size)
    alpha = frags.mask[:, None].to(screen_vertices.dtype)
    uv_face = uv_ndc[uvfaces][None].expand(batch, -1, -1, -1)  # [B, F, 3, 2]
    normal_face = torch.cat([world_normals, screen_normals], -1)[:, faces]  # [B, F, 3, 6]
    attrs = rasterizer.interpolate_face_attributes(torch.cat([uv_face, normal_face], -1), frags)  # [B,H,W,8]
    grid = attrs[..., 0:2]
    world_n = attrs[..., 2:5].permute(0, 3, 1, 2)
    screen_nz = attrs[..., 7][:, None]
    visible = alpha * (screen_nz < 0.15).to(alpha)
    views = Views(alpha=alpha, visible=visible)

    normals_for_light = world_n
    if detail_normals_uv is not None:
        normals_for_light = texture(detail_normals_uv, grid) * alpha
    if albedo_uv is not None:
        views.albedo = texture(albedo_uv.expand(batch, -1, -1, -1), grid) * alpha
        if light is not None:
            views.lit = views.albedo * sh_shading(normals_for_light, light)
    if want_shape:
        views.shape = _grey(world_n, visible)
        if detail_normals_uv is not None:
            views.shape_detail = _grey(normals_for_light, visible)
    return views


def _grey(normals: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    b, _, h, w = normals.shape
    flat = normals.permute(0, 2, 3, 1).reshape(b, -1, 3)
    lights = flat.new_tensor(SHAPE_LIGHTS)
    shading = directional_shading(flat, lights, SHAPE_LIGHT_INTENSITY).view(b, 1, h, w)
    return (shading * SHAPE_GREY).expand(-1, 3, -1, -1) * visible


def composite(foreground: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """foreground x alpha + background x (1 - alpha); all [B, C, H, W] (alpha [B, 1, H, W])."""
    return foreground * alpha + background * (1 - alpha)
