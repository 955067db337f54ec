"""DECA's straightforward implementations of the drawing steps: the oracles of `capture.views`.

Each function here does what DECA's code does, in DECA's way (triangle-list scatters, gathers, full-frame
images), and nothing in the product calls it for a picture: tests compare `capture.views` (sparse products,
sliced grid normals, covered pixels only) against these, and `AvatarRenderer(reference=True)` draws with
them as the eager baseline of `benchmarks/fps.py`. Both agree to float rounding.

- `vertex_normals`: area-weighted normals by a scatter over the triangle list (`appearance.vertex_normals`)
- `world2uv`: per-vertex data -> UV maps by a gather and a weighted sum (`appearance.UVSampler.sample`)
- `displacement_to_normals`: DECA's displacement2normal, vertex normals of the texel grid's triangle list
  (`appearance.detail_normals`)
- `render_views`: every view as full-frame images (`views.draw_views`, `views.lit_pixels`)
- `ReferenceDrawing`: the three steps of `views.Drawing` done with the above, for `AvatarRenderer`
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .appearance import SHAPE_GREY, SHAPE_LIGHT_INTENSITY, SHAPE_LIGHTS, UVSampler, directional_shading, sh_shading
from .render import texture
from .views import Drawing, LitPixels, Views


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals. vertices [B, V, 3], faces [F, 3] int64 -> [B, V, 3] unit (eps 1e-6)."""
    v0, v1, v2 = (vertices[:, faces[:, i]] for i in range(3))
    face_n = torch.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2 x area: area weighting for free
    normals = torch.zeros_like(vertices)
    for i in range(3):
        normals.index_add_(1, faces[:, i], face_n)
    return F.normalize(normals, dim=-1, eps=1e-6)


def world2uv(sampler: UVSampler, attributes: torch.Tensor) -> torch.Tensor:
    """Per-vertex attributes [B, V, C] -> UV map [B, C, S, S] (DECA's world2uv), gathered texel by texel."""
    gathered = attributes[:, sampler.vertex_ids]  # [B, S*S, 3, C]
    texels = (gathered * sampler.weights[None, :, :, None]).sum(2)
    return texels.permute(0, 2, 1).reshape(attributes.shape[0], -1, sampler.size, sampler.size)


@dataclass
class DetailMaps:
    uv_detail_normals: torch.Tensor  # [B, 3, S, S] world-space normal map
    displacement_map: torch.Tensor  # [B, 1, S, S] uv_z + fixed displacement (metres)
    uv_coarse_normals: torch.Tensor  # [B, 3, S, S]
    uv_positions: torch.Tensor  # [B, 3, S, S] detailed surface positions


def displacement_to_normals(uv_z: torch.Tensor, vertices: torch.Tensor, normals: torch.Tensor,
                            sampler: UVSampler, face_eye_mask: torch.Tensor, fixed_displacement: torch.Tensor,
                            grid_faces: torch.Tensor) -> DetailMaps:
    """DECA's displacement2normal.

    uv_z [B, 1, S, S] predicted displacement (metres); vertices/normals [B, V, 3] coarse mesh (world);
    face_eye_mask [S, S]; fixed_displacement [S, S]; grid_faces from `appearance.grid_triangles(S)`.
    """
    batch, size = uv_z.shape[0], sampler.size
    uv_positions = world2uv(sampler, vertices)
    uv_normals = world2uv(sampler, normals)  # interpolated, deliberately not re-normalised (as DECA)
    mask = face_eye_mask.to(uv_z)[None, None]
    offset = uv_z * mask + fixed_displacement.to(uv_z)[None, None]
    detailed = uv_positions + offset * uv_normals
    dense = vertex_normals(detailed.reshape(batch, 3, -1).permute(0, 2, 1), grid_faces)
    dense = dense.permute(0, 2, 1).reshape(batch, 3, size, size)
    detail_normals = dense * mask + uv_normals * (1 - mask)
    return DetailMaps(
        uv_detail_normals=detail_normals,
        displacement_map=uv_z + fixed_displacement.to(uv_z)[None, None],
        uv_coarse_normals=uv_normals,
        uv_positions=detailed,
    )


def render_views(rasterizer, screen_vertices: torch.Tensor, faces: torch.Tensor, uv_ndc: torch.Tensor,
                 uvfaces: torch.Tensor, world_normals: torch.Tensor, screen_normals: torch.Tensor,
                 size: tuple[int, int], *, albedo_uv: Optional[torch.Tensor] = None,
                 light: Optional[torch.Tensor] = None, detail_normals_uv: Optional[torch.Tensor] = None,
                 want_shape: bool = True, fragments=None) -> Views:
    """Rasterise once and build the requested views as full-frame images (DECA's render).

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


def _grey(normals: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    b, _, h, w = normals.shape
    flat = normals.permute(0, 2, 3, 1).reshape(b, -1, 3)
    lights = flat.new_tensor(SHAPE_LIGHTS)
    shading = directional_shading(flat, lights, SHAPE_LIGHT_INTENSITY).view(b, 1, h, w)
    return (shading * SHAPE_GREY).expand(-1, 3, -1, -1) * visible


class ReferenceDrawing(Drawing):
    """`views.Drawing` done DECA's way: triangle-list normals, displacement2normal, full-frame images; the
    displacement map is made for every frame."""

    reuses = False

    def normals(self, vertices: torch.Tensor) -> torch.Tensor:
        return vertex_normals(vertices, self.assets.faces)

    def detail_map(self, uv_z: torch.Tensor, vertices: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        a = self.assets
        return displacement_to_normals(uv_z, vertices, normals, a.uv_sampler, a.face_eye_mask,
                                       a.fixed_displacement, a.grid_faces).uv_detail_normals

    def rasterize(self, rasterizer, screen: torch.Tensor, size: tuple[int, int]):
        """The whole frame, as DECA rasterises."""
        return rasterizer.rasterize(screen, self.assets.faces, size)

    def lit(self, rasterizer, fragments, screen: torch.Tensor, normals: torch.Tensor, albedo_uv: torch.Tensor,
            normal_map: torch.Tensor, light: torch.Tensor) -> LitPixels:
        a = self.assets
        h, w = fragments.face_id.shape[1:]
        views = render_views(rasterizer, screen, a.faces, a.uv_ndc, a.uvfaces, normals, normals, (h, w),
                             albedo_uv=albedo_uv, light=light, detail_normals_uv=normal_map, want_shape=False,
                             fragments=fragments)
        covered = views.alpha.reshape(-1) > 0
        index = covered.nonzero().squeeze(1)
        colour = views.lit.permute(0, 2, 3, 1).reshape(-1, 3).index_select(0, index)
        return LitPixels(index=index, colour=colour, size=(h, w), batch=screen.shape[0])
