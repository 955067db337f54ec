"""Pictures of a posed head: albedo, SH-lit colour, DECA's grey shape render (coarse and detailed).

Input is the mesh already in screen NDC of the target image (crop NDC, or the original frame's NDC after
`camera.crop_to_image_ndc`). One rasterisation serves every view.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F_nn

from .appearance import (SH_CONSTANTS, SHAPE_GREY, SHAPE_LIGHT_INTENSITY, SHAPE_LIGHTS, directional_shading,
                         sh_shading)
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
                 want_shape: bool = True, fragments=None) -> Views:
    """Rasterise once and build the requested views.

    screen_vertices [B, V, 3] NDC; faces [F, 3]; uv_ndc [T, 2] (uv layout in NDC, `appearance.uv_layout_ndc`);
    uvfaces [F, 3]; world_normals / screen_normals [B, V, 3]; albedo_uv [B, 3, S, S]; light [B, 9, 3];
    detail_normals_uv [B, 3, S, S] world-space. fragments: this mesh already rasterised at `size` (skips it).
    """
    batch = screen_vertices.shape[0]
    frags = fragments if fragments is not None else rasterizer.rasterize(screen_vertices, faces, size)
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


@dataclass
class LitPixels:
    """The lit colour of the covered pixels only: what `render_views(...).lit` holds there, without the
    full-frame images (the head covers a fraction of a video frame; everything else is background)."""

    index: torch.Tensor  # [N] int64, flat pixel index b * H * W + y * W + x
    colour: torch.Tensor  # [N, 3] albedo x SH(detail normals), not clamped
    size: tuple[int, int]  # (H, W)
    batch: int

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lit [B, 3, H, W], alpha [B, 1, H, W]) as `render_views` gives them (zeros where uncovered)."""
        h, w = self.size
        lit = self.colour.new_zeros(self.batch * h * w, 3)
        lit[self.index] = self.colour
        alpha = self.colour.new_zeros(self.batch * h * w)
        alpha[self.index] = 1.0
        return (lit.view(self.batch, h, w, 3).permute(0, 3, 1, 2),
                alpha.view(self.batch, 1, h, w))


def lit_pixels(fragments, uv_face: torch.Tensor, albedo_uv: torch.Tensor, detail_normals_uv: torch.Tensor,
               light: torch.Tensor) -> LitPixels:
    """`render_views(...).lit` (albedo x SH of the detail normals) for the covered pixels only.

    fragments: from `rasterizer.rasterize`; uv_face [F, 3, 2] the UV layout per face corner in NDC
    (`uv_ndc[uvfaces]`); albedo_uv [1 or B, 3, S, S]; detail_normals_uv [B, 3, S, S]; light [B, 9, 3].
    Same arithmetic as `render_views` per pixel (barycentric UVs, bilinear `grid_sample`, SH), so results
    agree to float rounding; the work scales with the head's pixels instead of the frame's.
    """
    batch, h, w = fragments.face_id.shape
    face_id = fragments.face_id.reshape(-1)
    index = (face_id >= 0).nonzero().squeeze(1)
    faces = face_id.index_select(0, index)
    bary = fragments.bary.reshape(-1, 3).index_select(0, index).to(uv_face.dtype)
    uv = (bary.unsqueeze(-1) * uv_face.index_select(0, faces)).sum(dim=-2)  # [N, 2]
    owner = torch.div(index, h * w, rounding_mode="floor") if batch > 1 else None
    colour = uv.new_empty(index.numel(), 3)
    constants = light.new_tensor(SH_CONSTANTS)[:, None]
    for b in range(batch):  # one grid_sample per frame of the batch (batch 1 in the streaming path)
        sel = None if owner is None else (owner == b).nonzero().squeeze(1)
        grid = (uv if sel is None else uv.index_select(0, sel)).view(1, 1, -1, 2)
        albedo = albedo_uv[b if albedo_uv.shape[0] > 1 else 0][None]
        textures = torch.cat([albedo, detail_normals_uv[b][None].to(albedo)], 1)  # one sampling pass for both
        sampled = F_nn.grid_sample(textures, grid.to(textures.dtype), mode="bilinear", padding_mode="zeros",
                                   align_corners=False)[0, :, 0]  # [6, n], channel rows stay contiguous
        x, y, z = sampled[3], sampled[4], sampled[5]
        # The SH basis of appearance.sh_basis, as rows, with its constants folded into the light.
        basis = torch.stack([torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1])
        shade = (light[b] * constants).t() @ basis  # [3, n]
        value = (sampled[0:3] * shade).t()
        if sel is None:
            colour = value
        else:
            colour[sel] = value
    return LitPixels(index=index, colour=colour, size=(h, w), batch=batch)


def _grey(normals: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    b, _, h, w = normals.shape
    flat = normals.permute(0, 2, 3, 1).reshape(b, -1, 3)
    lights = flat.new_tensor(SHAPE_LIGHTS)
    shading = directional_shading(flat, lights, SHAPE_LIGHT_INTENSITY).view(b, 1, h, w)
    return (shading * SHAPE_GREY).expand(-1, 3, -1, -1) * visible


def composite(foreground: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """foreground x alpha + background x (1 - alpha); all [B, C, H, W] (alpha [B, 1, H, W])."""
    return foreground * alpha + background * (1 - alpha)
