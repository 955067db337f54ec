"""A renderer for training: the same pictures as `capture.views` (albedo x SH light), differentiable in the codes.

The rasteriser's fragments carry no gradient to vertex positions, so after rasterising (which triangle covers
each pixel centre) the barycentric weights are recomputed in torch from the projected corners of that triangle:
the image is then differentiable in the vertices (hence shape, expression, pose and camera), in the albedo
code and in the light. Silhouette edges carry no gradient (as with DECA's own rasteriser).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..appearance import detail_normals, sh_shading
from ..conventions import pixel_centers_ndc
from ..deca import Codes
from ..model_assets import ModelAssets
from ..projection import orthographic
from ..render import get_rasterizer
from ..views import mesh_normals


@dataclass
class TrainGeometry:
    vertices: torch.Tensor  # [B, V, 3] world (FLAME metres)
    normals: torch.Tensor  # [B, V, 3] world vertex normals
    screen: torch.Tensor  # [B, V, 3] crop NDC
    landmarks: torch.Tensor  # [B, 68, 2] crop NDC (the 2D landmarks, contour following the yaw)


@dataclass
class Rendered:
    image: torch.Tensor  # [B, 3, S, S] albedo x SH shading, 0 where uncovered
    alpha: torch.Tensor  # [B, 1, S, S] coverage
    uv: torch.Tensor  # [B, S, S, 2] UV position of each pixel (NDC of the UV maps), for `grid_sample`


def barycentrics(screen_xy: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor) -> torch.Tensor:
    """Screen-space barycentrics of the pixel centres in their covering triangle, differentiable in the vertices.

    screen_xy [B, V, 2] NDC; faces [F, 3]; face_id [B, S, S] (-1 = empty) -> [B, S, S, 3] (zeros where empty).
    """
    b, s = face_id.shape[0], face_id.shape[1]
    corners = faces[face_id.clamp(min=0)]  # [B, S, S, 3]
    batch = torch.arange(b, device=face_id.device).view(b, 1, 1, 1)
    tri = screen_xy[batch, corners]  # [B, S, S, 3, 2]
    p = pixel_centers_ndc((s, s), screen_xy.device)[None]
    v0, v1, v2 = tri.unbind(-2)

    def cross(a, c):
        return a[..., 0] * c[..., 1] - a[..., 1] * c[..., 0]

    area = cross(v1 - v0, v2 - v0)
    area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
    w1 = cross(p - v0, v2 - v0) / area
    w2 = cross(v1 - v0, p - v0) / area
    bary = torch.stack([1 - w1 - w2, w1, w2], -1)
    return bary * (face_id >= 0)[..., None].to(bary)


class TrainRenderer:
    """Albedo x SH light of one model pack's head (its `ModelAssets`), rendering square crops of side `size`.

    The steps are the drawing path's (`capture.views.mesh_normals`, `UVSampler.sample`, `appearance.detail_normals`,
    one SH basis); what is training's own is what gradients need: barycentrics recomputed from the projected
    corners, and full images (every pixel a loss looks at)."""

    def __init__(self, assets: ModelAssets, size: int):
        self.assets, self.size, self.device = assets, int(size), assets.device
        self.pack = assets.pack
        self.rasterizer = get_rasterizer("cpu")
        self._landmark_flame = None

    def landmarks(self, codes: Codes) -> torch.Tensor:
        """The 2D landmarks alone [B, 68, 2] crop NDC, as `geometry(codes).landmarks`: FLAME on the landmark
        triangles' corners only (`FLAME.landmark_model`; a landmark-only step costs a tenth of a full pass)."""
        if self._landmark_flame is None:
            self._landmark_flame = self.assets.flame.landmark_model()
        out = self._landmark_flame(codes.shape, codes.exp, codes.pose)
        return orthographic(out.landmarks2d, codes.cam)[..., :2]

    def geometry(self, codes: Codes) -> TrainGeometry:
        """FLAME, projected, with vertex normals (what a render needs; `landmarks` when nothing is rendered)."""
        out = self.assets.flame(codes.shape, codes.exp, codes.pose)
        return TrainGeometry(vertices=out.vertices, normals=mesh_normals(self.assets, out.vertices),
                             screen=orthographic(out.vertices, codes.cam),
                             landmarks=orthographic(out.landmarks2d, codes.cam)[..., :2])

    def albedo(self, tex: torch.Tensor) -> torch.Tensor:
        """tex [B, 50] -> UV albedo [B, 3, 256, 256] (the pack's albedo model, else its mean texture)."""
        albedo = self.assets.albedo(tex)
        return albedo if self.pack.albedo is not None else albedo + 0 * tex.sum()  # keep tex in the graph

    def uv_geometry(self, geo: TrainGeometry) -> tuple[torch.Tensor, torch.Tensor]:
        """The coarse surface in UV: (positions, normals) [B, 3, 256, 256] (DECA's world2uv)."""
        sampler = self.assets.uv_sampler
        return sampler.sample(geo.vertices), sampler.sample(geo.normals)

    def detail_normals(self, uv_geometry: tuple[torch.Tensor, torch.Tensor], uv_z: torch.Tensor) -> torch.Tensor:
        """uv_z [B, 1, 256, 256] metres on the coarse surface of `uv_geometry` -> detail normal map [B, 3, 256, 256]
        (world space; `appearance.detail_normals`, the same map as DECA's displacement2normal)."""
        positions, normals = uv_geometry
        return detail_normals(uv_z, positions, normals, self.assets.face_eye_mask, self.assets.fixed_displacement)

    def render(self, geo: TrainGeometry, albedo_uv: torch.Tensor, light: torch.Tensor,
               detail_normals_uv: Optional[torch.Tensor] = None) -> Rendered:
        """Albedo x SH(normals) at every covered pixel: coarse vertex normals, or the detail normal map."""
        faces = self.assets.faces
        with torch.no_grad():
            frags = self.rasterizer.rasterize(geo.screen.detach(), faces, (self.size, self.size))
        face_id = frags.face_id.to(self.device)
        bary = barycentrics(geo.screen[..., :2], faces, face_id)  # [B, S, S, 3]
        b = face_id.shape[0]
        fid = face_id.clamp(min=0)
        batch = torch.arange(b, device=self.device).view(b, 1, 1)
        uv = (bary[..., None] * self.assets.uv_face[fid]).sum(-2)  # [B, S, S, 2]
        alpha = (face_id >= 0)[:, None].to(bary)
        albedo = F.grid_sample(albedo_uv, uv, mode="bilinear", align_corners=False)
        if detail_normals_uv is None:
            corner_normals = geo.normals[batch[..., None], faces[fid]]  # [B, S, S, 3, 3]
            normals = (bary[..., None] * corner_normals).sum(-2).permute(0, 3, 1, 2)
        else:
            normals = F.grid_sample(detail_normals_uv, uv, mode="bilinear", align_corners=False)
        image = albedo * sh_shading(normals, light) * alpha
        return Rendered(image=image, alpha=alpha, uv=uv)
