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

from ..appearance import (UVSampler, albedo_from_model, detail_normals, mean_texture_albedo, sh_shading,
                          uv_layout_ndc, vertex_normals)
from ..assets.pack import ModelPack
from ..camera import orthographic
from ..deca import Codes
from ..flame import FLAME
from ..render import get_rasterizer


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


def pixel_centres(size: int, device=None) -> torch.Tensor:
    """[S, S, 2] crop NDC (x, y) of the pixel centres: (i + 0.5) * 2 / S - 1."""
    c = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) * (2.0 / size) - 1.0
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x, y], -1)


def barycentrics(screen_xy: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor) -> torch.Tensor:
    """Screen-space barycentrics of the pixel centres in their covering triangle, differentiable in the vertices.

    screen_xy [B, V, 2] NDC; faces [F, 3]; face_id [B, S, S] (-1 = empty) -> [B, S, S, 3] (zeros where empty).
    """
    b, s = face_id.shape[0], face_id.shape[1]
    corners = faces[face_id.clamp(min=0)]  # [B, S, S, 3]
    batch = torch.arange(b, device=face_id.device).view(b, 1, 1, 1)
    tri = screen_xy[batch, corners]  # [B, S, S, 3, 2]
    p = pixel_centres(s, screen_xy.device)[None]
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
    """FLAME + albedo + SH light for one model pack, rendering square crops of side `size`."""

    def __init__(self, pack: ModelPack, size: int, device: str | torch.device = "cpu"):
        self.pack, self.size, self.device = pack, int(size), torch.device(device)
        self.flame = FLAME(pack).to(self.device)
        self.rasterizer = get_rasterizer("cpu")
        self.faces = torch.as_tensor(pack.uv.faces, dtype=torch.int64, device=self.device)
        self.uvfaces = torch.as_tensor(pack.uv.uvfaces, dtype=torch.int64, device=self.device)
        self.uv_face = torch.as_tensor(uv_layout_ndc(pack.uv.uvcoords), device=self.device)[self.uvfaces]
        self.uv_sampler = UVSampler.build(pack.uv.uvcoords, pack.uv.uvfaces, pack.uv.faces)
        self.uv_sampler = self.uv_sampler.to(self.device)
        self.face_eye_mask = torch.as_tensor(pack.face_eye_mask, device=self.device)
        self.fixed_displacement = torch.as_tensor(pack.fixed_displacement, device=self.device)
        self._mean_albedo = mean_texture_albedo(pack.mean_texture).to(self.device)

    def geometry(self, codes: Codes) -> TrainGeometry:
        out = self.flame(codes.shape, codes.exp, codes.pose)
        return TrainGeometry(vertices=out.vertices, normals=vertex_normals(out.vertices, self.faces),
                             screen=orthographic(out.vertices, codes.cam),
                             landmarks=orthographic(out.landmarks2d, codes.cam)[..., :2])

    def albedo(self, tex: torch.Tensor) -> torch.Tensor:
        """tex [B, 50] -> UV albedo [B, 3, 256, 256] (the pack's albedo model, else its mean texture)."""
        if self.pack.albedo is not None:
            return albedo_from_model(self.pack.albedo, tex[:, : self.pack.albedo.basis.shape[1]])
        return self._mean_albedo.expand(tex.shape[0], -1, -1, -1) + 0 * tex.sum()

    def uv_geometry(self, geo: TrainGeometry) -> tuple[torch.Tensor, torch.Tensor]:
        """The coarse surface in UV: (positions, normals) [B, 3, 256, 256] (DECA's world2uv)."""
        return self.uv_sampler.sample(geo.vertices), self.uv_sampler.sample(geo.normals)

    def detail_normals(self, uv_geometry: tuple[torch.Tensor, torch.Tensor], uv_z: torch.Tensor) -> torch.Tensor:
        """uv_z [B, 1, 256, 256] metres on the coarse surface of `uv_geometry` -> detail normal map [B, 3, 256, 256]
        (world space; `appearance.detail_normals`, the same map as DECA's displacement2normal)."""
        positions, normals = uv_geometry
        return detail_normals(uv_z, positions, normals, self.face_eye_mask, self.fixed_displacement)

    def render(self, geo: TrainGeometry, albedo_uv: torch.Tensor, light: torch.Tensor,
               detail_normals_uv: Optional[torch.Tensor] = None) -> Rendered:
        """Albedo x SH(normals) at every covered pixel: coarse vertex normals, or the detail normal map."""
        with torch.no_grad():
            frags = self.rasterizer.rasterize(geo.screen.detach(), self.faces, (self.size, self.size))
        face_id = frags.face_id.to(self.device)
        bary = barycentrics(geo.screen[..., :2], self.faces, face_id)  # [B, S, S, 3]
        b = face_id.shape[0]
        fid = face_id.clamp(min=0)
        batch = torch.arange(b, device=self.device).view(b, 1, 1)
        uv = (bary[..., None] * self.uv_face[fid]).sum(-2)  # [B, S, S, 2]
        alpha = (face_id >= 0)[:, None].to(bary)
        albedo = F.grid_sample(albedo_uv, uv, mode="bilinear", align_corners=False)
        if detail_normals_uv is None:
            corner_normals = geo.normals[batch[..., None], self.faces[fid]]  # [B, S, S, 3, 3]
            normals = (bary[..., None] * corner_normals).sum(-2).permute(0, 3, 1, 2)
        else:
            normals = F.grid_sample(detail_normals_uv, uv, mode="bilinear", align_corners=False)
        image = albedo * sh_shading(normals, light) * alpha
        return Rendered(image=image, alpha=alpha, uv=uv)
