"""The one drawing path: posed mesh -> normals -> detail normal map -> rasterised pixels -> lit colour.

    normals = mesh_normals(assets, vertices)                       # appearance.vertex_normals (sparse)
    normal_map = detail_normal_map(assets, uv_z, vertices, normals)  # UVSampler.sample + appearance.detail_normals
    fragments = rasterizer.rasterize(screen, assets.faces, (H, W), covering_window(screen, (H, W)))
    pixels = lit_pixels(fragments, assets.uv_face, albedo_uv, normal_map, light)   # the product's picture
    views = draw_views(fragments, assets, ...)                     # every picture DECA draws (decode)

`retarget.AvatarRenderer` (the product), `deca.DECA.decode` and training's `train.renderer.TrainRenderer` draw
through these functions; only the covered pixels are shaded (a head covers a fraction of a frame; the product
rasterises only the window of the frame the head can cover, `Drawing.rasterize`), with one SH basis
(`appearance.sh_terms`). On CPU tensors without gradients `detail_normal_map` and `lit_pixels` run their
arithmetic as compiled passes (`capture.render.cpu_shading`); the torch steps here define it and run
everywhere else. The input mesh is already in the target image's NDC (crop NDC, or the frame's
after `projection.crop_to_image_ndc`). DECA's straightforward full-frame versions of the same steps are the
test oracles in `capture.reference`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F_nn

from .appearance import (
    GRID_MARGINS,
    SH_CONSTANTS,
    SHAPE_GREY,
    SHAPE_LIGHT_INTENSITY,
    SHAPE_LIGHTS,
    detail_normals,
    directional_shading,
    sh_terms,
    vertex_normals,
)
from .render import Window, covering_window, cpu_shading


@dataclass
class Views:
    alpha: torch.Tensor  # [B, 1, H, W] coverage
    albedo: Optional[torch.Tensor] = None  # [B, 3, H, W] unlit albedo (DECA's rendered_images at HEAD)
    lit: Optional[torch.Tensor] = None  # [B, 3, H, W] albedo x SH(detail or coarse normals)
    shape: Optional[torch.Tensor] = None  # [B, 3, H, W] grey five-light render, coarse normals
    shape_detail: Optional[torch.Tensor] = None  # [B, 3, H, W] same with detail normals
    visible: Optional[torch.Tensor] = None  # [B, 1, H, W] front-facing pixels (screen normal z < 0.15)


# ------------------------------------------------------------------------------------------------ geometry
def mesh_normals(assets, vertices: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    """[B, V, 3] -> area-weighted unit vertex normals [B, V, 3] (world, or of the projected mesh). kernel "auto":
    on CPU tensors without gradients the same sums in one compiled pass (`cpu_shading.vertex_normals_c`, the
    incidence matrix's order); "torch": `appearance.vertex_normals`."""
    if _compiled(kernel) and cpu_shading.usable(vertices):
        return cpu_shading.vertex_normals_c(vertices, assets.faces, assets.incidence)
    return vertex_normals(vertices, assets.faces, assets.incidence)


def detail_normal_map(assets, uv_z: torch.Tensor, vertices: torch.Tensor, normals: torch.Tensor,
                      kernel: str = "auto") -> torch.Tensor:
    """D_detail's displacement uv_z [B, 1, S, S] on the coarse mesh (vertices, normals [B, V, 3], world)
    -> world-space detail normal map [B, 3, S, S] (DECA's displacement2normal). kernel "auto": on CPU tensors
    without gradients the same arithmetic in one compiled pass (`capture.render.cpu_shading`); "torch": the
    torch steps below (always, for training's gradients and on the GPU)."""
    sampler = assets.uv_sampler
    if _compiled(kernel) and cpu_shading.usable(uv_z, vertices, normals, sampler.weights, assets.face_eye_mask,
                                                assets.fixed_displacement):
        return cpu_shading.detail_normals_c(uv_z, vertices, normals, sampler.vertex_ids, sampler.weights,
                                            assets.face_eye_mask, assets.fixed_displacement, *GRID_MARGINS)
    uv = sampler.sample(torch.cat([vertices, normals], -1))
    return detail_normals(uv_z, uv[:, 0:3], uv[:, 3:6], assets.face_eye_mask, assets.fixed_displacement)


def _compiled(kernel: str) -> bool:
    """kernel "auto": use a compiled CPU pass where it applies; "torch": the torch steps."""
    if kernel not in ("auto", "torch"):
        raise ValueError(f"kernel: expected 'auto' or 'torch', got {kernel!r}")
    return kernel == "auto"


# ------------------------------------------------------------------------------------------------ pixels
@dataclass
class CoveredPixels:
    """The pixel centres a rasterised mesh covers: where they are and which triangle, with which weights."""

    index: torch.Tensor  # [N] int64, flat pixel index b * H * W + y * W + x
    face: torch.Tensor  # [N] int64 covering face
    bary: torch.Tensor  # [N, 3] barycentrics of faces[face]'s corners
    size: tuple[int, int]  # (H, W)
    batch: int

    @classmethod
    def of(cls, fragments) -> "CoveredPixels":
        """The covered pixels of fragments, indexed in the whole image (also when they are of a `Window`)."""
        batch, h, w = fragments.face_id.shape
        face_id = fragments.face_id.reshape(-1)
        if face_id.device.type == "cpu":  # numpy's flatnonzero: half the time of torch's nonzero on the CPU
            local = torch.from_numpy(np.flatnonzero(face_id.numpy() >= 0))
        else:
            local = (face_id >= 0).nonzero().squeeze(1)
        window = getattr(fragments, "window", None)
        index, size = (local, (h, w)) if window is None else (window.to_image_index(local), window.image_size)
        return cls(index=index, face=face_id.index_select(0, local),
                   bary=fragments.bary.reshape(-1, 3).index_select(0, local), size=size, batch=batch)

    def interpolate(self, face_attrs: torch.Tensor) -> torch.Tensor:
        """Per-face-corner attributes [F, 3, C] -> [N, C] at the covered pixels (barycentric)."""
        return _barycentric(self.bary.to(face_attrs.dtype), face_attrs.index_select(0, self.face))

    def interpolate_vertices(self, attributes: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Per-vertex attributes [B, V, C] (one mesh per frame) -> [N, C] at the covered pixels."""
        b, v, c = attributes.shape
        corners = faces.index_select(0, self.face)  # [N, 3]
        if b > 1:
            corners = corners + (self.owner() * v)[:, None]
        values = attributes.reshape(b * v, c).index_select(0, corners.reshape(-1)).view(-1, 3, c)
        return _barycentric(self.bary.to(attributes.dtype), values)

    def owner(self) -> torch.Tensor:
        """[N] the frame of the batch each covered pixel belongs to."""
        h, w = self.size
        return torch.div(self.index, h * w, rounding_mode="floor")

    def frames(self) -> Iterator[tuple[int, Optional[torch.Tensor]]]:
        """(b, positions of frame b's pixels among the N, or None when the batch is one frame)."""
        if self.batch == 1:
            yield 0, None
            return
        owner = self.owner()
        for b in range(self.batch):
            yield b, (owner == b).nonzero().squeeze(1)

    def images(self, values: torch.Tensor) -> torch.Tensor:
        """[N, C] values at the covered pixels -> [B, C, H, W] images, zeros elsewhere."""
        h, w = self.size
        out = values.new_zeros(self.batch * h * w, values.shape[1])
        out[self.index] = values
        return out.view(self.batch, h, w, -1).permute(0, 3, 1, 2)


def _barycentric(bary: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """bary [N, 3] . corners [N, 3, C] -> [N, C], added corner by corner: the bits of (bary[..., None] *
    corners).sum(-2), without torch's reduction over a middle axis of 3 (3x slower than the whole rest)."""
    return (bary[:, 0:1] * corners[:, 0] + bary[:, 1:2] * corners[:, 1]) + bary[:, 2:3] * corners[:, 2]


def sample_uv_maps(uv: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Bilinear look-up of UV maps [1, C, S, S] at uv [n, 2] (NDC of the maps) -> [C, n] (rows contiguous)."""
    grid = uv.view(1, 1, -1, 2).to(maps.dtype)
    return F_nn.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, :, 0]


def sh_rows(normals: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """SH shading of normals given as rows [3, n] under light [9, 3] -> [3, n] (no clamping, DECA's
    add_SHlight), with the basis of `appearance.sh_terms` and its constants folded into the light."""
    basis = sh_terms(normals[0], normals[1], normals[2], dim=0)  # [9, n]
    return (light * light.new_tensor(SH_CONSTANTS)[:, None]).t() @ basis


@dataclass
class LitPixels:
    """The lit colour of the covered pixels only: what `draw_views(...).lit` holds there, without the
    full-frame images (the head covers a fraction of a video frame; everything else is background)."""

    index: torch.Tensor  # [N] int64, flat pixel index b * H * W + y * W + x
    colour: torch.Tensor  # [N, 3] albedo x SH(detail normals), not clamped
    size: tuple[int, int]  # (H, W)
    batch: int
    window: Optional[Window] = None  # a rectangle of the frame holding every covered pixel (None: not known)

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lit [B, 3, H, W], alpha [B, 1, H, W]) as `draw_views` gives them (zeros where uncovered)."""
        h, w = self.size
        lit = self.colour.new_zeros(self.batch * h * w, 3)
        lit[self.index] = self.colour
        alpha = self.colour.new_zeros(self.batch * h * w)
        alpha[self.index] = 1.0
        return (lit.view(self.batch, h, w, 3).permute(0, 3, 1, 2),
                alpha.view(self.batch, 1, h, w))


def _sample(pixels: CoveredPixels, uv: torch.Tensor, *maps: torch.Tensor) -> list[torch.Tensor]:
    """UV maps [1 or B, C_i, S, S] at the covered pixels' uv [N, 2] -> one [C_i, N] per map: one grid_sample
    per map and frame of the batch (batch 1 in the streaming path; sampling the maps one by one is faster
    than stacking them first, and gives the same values)."""
    out = [uv.new_empty(m.shape[1], uv.shape[0]) for m in maps]
    for b, sel in pixels.frames():
        at = uv if sel is None else uv.index_select(0, sel)
        sampled = [sample_uv_maps(at, m[b if m.shape[0] > 1 else 0][None].to(maps[0])) for m in maps]
        if sel is None:
            return sampled
        for target, part in zip(out, sampled):
            target[:, sel] = part
    return out


def _shade(pixels: CoveredPixels, albedo: torch.Tensor, normals: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """albedo x SH(normals) at the covered pixels: [3, N] rows -> [N, 3]."""
    colour = albedo.new_empty(albedo.shape[1], 3)
    for b, sel in pixels.frames():
        if sel is None:
            return (albedo * sh_rows(normals, light[b])).t()
        colour[sel] = (albedo[:, sel] * sh_rows(normals[:, sel], light[b])).t()
    return colour


def lit_pixels(fragments, uv_face: torch.Tensor, albedo_uv: torch.Tensor, detail_normals_uv: torch.Tensor,
               light: torch.Tensor, kernel: str = "auto") -> LitPixels:
    """Albedo x SH of the detail normals for the covered pixels only: the product's picture.

    fragments: from `rasterizer.rasterize`; uv_face [F, 3, 2] the UV layout per face corner in NDC
    (`ModelAssets.uv_face`); albedo_uv [1 or B, 3, S, S]; detail_normals_uv [B, 3, S, S]; light [B, 9, 3].
    The work scales with the head's pixels instead of the frame's. kernel "auto": on CPU tensors without
    gradients the same arithmetic runs in one compiled pass (`capture.render.cpu_shading`), else (and with
    "torch") as the torch steps below.
    """
    if _compiled(kernel) and cpu_shading.applies(fragments, uv_face, albedo_uv, detail_normals_uv, light):
        index, colour, size = cpu_shading.lit_pixels_c(fragments, uv_face, albedo_uv, detail_normals_uv, light)
        return LitPixels(index=index, colour=colour, size=size, batch=fragments.face_id.shape[0],
                         window=getattr(fragments, "window", None))
    pixels = CoveredPixels.of(fragments)
    albedo, normals = _sample(pixels, pixels.interpolate(uv_face), albedo_uv, detail_normals_uv)
    return LitPixels(index=pixels.index, colour=_shade(pixels, albedo, normals, light), size=pixels.size,
                     batch=pixels.batch, window=getattr(fragments, "window", None))


def draw_views(fragments, assets, world_normals: torch.Tensor, screen_normals: torch.Tensor, *,
               albedo_uv: Optional[torch.Tensor] = None, light: Optional[torch.Tensor] = None,
               detail_normals_uv: Optional[torch.Tensor] = None, want_shape: bool = True) -> Views:
    """Every picture DECA draws of one rasterised mesh (the views of `deca.DECA.decode`).

    fragments: the mesh (`assets.faces`) rasterised at the target size; world_normals / screen_normals
    [B, V, 3] (vertex normals of the world and of the projected mesh); albedo_uv [1 or B, 3, S, S];
    light [B, 9, 3]; detail_normals_uv [B, 3, S, S] world-space. Lit colour = `lit_pixels`' arithmetic.
    """
    pixels = CoveredPixels.of(fragments)
    ones = fragments.bary.new_ones(pixels.index.shape[0], 1)
    screen_nz = pixels.interpolate_vertices(screen_normals[..., 2:3], assets.faces)
    front = (screen_nz < 0.15).to(ones)
    views = Views(alpha=pixels.images(ones), visible=pixels.images(front))
    world_n = pixels.interpolate_vertices(world_normals, assets.faces).t()  # [3, N]
    normals_for_light = world_n
    maps = [m for m in (albedo_uv, detail_normals_uv) if m is not None]
    if maps:
        sampled = _sample(pixels, pixels.interpolate(assets.uv_face), *maps)
        if detail_normals_uv is not None:
            normals_for_light = sampled[-1]
        if albedo_uv is not None:
            views.albedo = pixels.images(sampled[0].t())
            if light is not None:
                views.lit = pixels.images(_shade(pixels, sampled[0], normals_for_light, light))
    if want_shape:
        views.shape = pixels.images(_grey(pixels, world_n) * front)
        if detail_normals_uv is not None:
            views.shape_detail = pixels.images(_grey(pixels, normals_for_light) * front)
    return views


class Drawing:
    """The steps of one frame's picture that `AvatarRenderer` runs, in the product's way; the eager DECA-style
    baseline (`reference.ReferenceDrawing`) replaces the same three steps and nothing else."""

    # Reuse what stays put: the avatar's albedo, and a displacement map while the expression barely moves.
    reuses = True

    def __init__(self, assets):
        self.assets = assets

    def rasterize(self, rasterizer, screen: torch.Tensor, size: tuple[int, int]):
        """The mesh (frame NDC) rasterised within the rectangle of the frame it can cover (`covering_window`):
        the same covered pixels as the whole frame's fragments, without clearing and scanning the rest."""
        return rasterizer.rasterize(screen, self.assets.faces, size, covering_window(screen, size))

    def normals(self, vertices: torch.Tensor) -> torch.Tensor:
        return mesh_normals(self.assets, vertices)

    def detail_map(self, uv_z: torch.Tensor, vertices: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        return detail_normal_map(self.assets, uv_z, vertices, normals)

    def lit(self, rasterizer, fragments, screen: torch.Tensor, normals: torch.Tensor, albedo_uv: torch.Tensor,
            normal_map: torch.Tensor, light: torch.Tensor) -> LitPixels:
        return lit_pixels(fragments, self.assets.uv_face, albedo_uv, normal_map, light)


def _grey(pixels: CoveredPixels, normals: torch.Tensor) -> torch.Tensor:
    """DECA's grey five-light shape render of normals [3, N] -> [N, 3]."""
    lights = normals.new_tensor(SHAPE_LIGHTS)
    shading = directional_shading(normals.t()[None], lights, SHAPE_LIGHT_INTENSITY)[0]  # [N]
    return (shading * SHAPE_GREY)[:, None].expand(-1, 3)


def composite(foreground: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """foreground x alpha + background x (1 - alpha); all [B, C, H, W] (alpha [B, 1, H, W])."""
    return foreground * alpha + background * (1 - alpha)
