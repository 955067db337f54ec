"""DECA's encode / decode, composed from the networks, FLAME, appearance and the rasteriser.

`encode` turns 224x224 crops into `Codes`; `decode` turns codes into geometry, UV maps and pictures
(docs/formats.md 2.6, 3). `DECA.geometry` / `DECA.detail` are the per-frame pieces the streaming path calls.
The networks are not DECA's own: they run behind `capture.backends` (default: the eager torch reference).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from .appearance import sh_shading
from .assets.pack import ModelPack
from .conventions import INPUT_SIZE
from .model_assets import ModelAssets
from .nets import CODE_LAYOUT, detail_input
from .projection import crop_to_image_ndc, orthographic
from .render import get_rasterizer
from .views import Views, detail_normal_map, draw_views, mesh_normals

if TYPE_CHECKING:
    from .backends import InferenceEngines

REFERENCE_BACKEND = "torch-eager"  # DECA's networks unless it is given others


@dataclass
class Codes:
    """DECA's code dict (docs/formats.md 2.3), batch-first tensors."""

    shape: torch.Tensor  # [B, 100]
    tex: torch.Tensor  # [B, 50]
    exp: torch.Tensor  # [B, 50]
    pose: torch.Tensor  # [B, 6] global | jaw axis-angle
    cam: torch.Tensor  # [B, 3] s, tx, ty
    light: torch.Tensor  # [B, 9, 3]
    detail: torch.Tensor  # [B, 128]

    @classmethod
    def from_network_outputs(cls, flame_code: torch.Tensor, detail_code: torch.Tensor) -> "Codes":
        return cls(**CODE_LAYOUT.split(flame_code), detail=detail_code)

    @property
    def batch(self) -> int:
        return self.shape.shape[0]

    def replace(self, **changes) -> "Codes":
        return replace(self, **changes)

    def select(self, index) -> "Codes":
        return Codes(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device) -> "Codes":
        return Codes(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def numpy(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name).detach().cpu().numpy() for f in fields(self)}

    @classmethod
    def from_numpy(cls, arrays: dict, device="cpu") -> "Codes":
        return cls(**{f.name: torch.as_tensor(np.asarray(arrays[f.name]), dtype=torch.float32, device=device)
                      for f in fields(cls)})


@dataclass
class Geometry:
    vertices: torch.Tensor  # [B, V, 3] world (FLAME metres)
    normals: torch.Tensor  # [B, V, 3] world vertex normals
    screen: torch.Tensor  # [B, V, 3] crop NDC
    screen_normals: torch.Tensor  # [B, V, 3] normals of the projected mesh
    landmarks2d: torch.Tensor  # [B, 68, 3] crop NDC (x, y, depth)
    landmarks3d: torch.Tensor  # [B, 68, 3] crop NDC


@dataclass
class Reconstruction:
    geometry: Geometry
    uv_z: torch.Tensor  # [B, 1, 256, 256] predicted displacement
    displacement_map: torch.Tensor  # [B, 1, 256, 256] uv_z + fixed displacement
    uv_detail_normals: torch.Tensor  # [B, 3, 256, 256] world-space normal map
    albedo: torch.Tensor  # [B, 3, 256, 256] UV albedo
    uv_texture: torch.Tensor  # [B, 3, 256, 256] albedo x SH(detail normals)
    views: Views  # pictures at the requested resolution


class DECA:
    """Networks + the model's constants (`ModelAssets`) + a rasteriser for one model pack, on one device.

    engines: the networks, a `capture.backends.InferenceEngines` (each network is made on first use); default
    the registry's eager torch reference on `device`, as DECA's own code runs them.
    assets: the pack's `ModelAssets` on `device`, when the caller already has them (built here otherwise)."""

    def __init__(self, pack: ModelPack, device: str | torch.device = "cpu", rasterizer: str = "auto",
                 engines: Optional["InferenceEngines"] = None, assets: Optional[ModelAssets] = None):
        self.pack = pack
        self.device = torch.device(device)
        if engines is None:
            from .backends import InferenceEngines

            engines = InferenceEngines(pack, REFERENCE_BACKEND, device=str(self.device))
        self.engines = engines
        if assets is not None and (assets.pack is not pack or assets.device != self.device):
            raise ValueError("DECA: assets were built for another pack or device")
        self.assets = assets if assets is not None else ModelAssets.build(pack, self.device)
        self.flame = self.assets.flame
        self.rasterizer = get_rasterizer(rasterizer, device=self.device)

    @property
    def lbs_backend(self) -> str:
        return self.assets.lbs_backend

    @classmethod
    def from_pack(cls, pack: ModelPack, device: str | torch.device = "cpu", rasterizer: str = "auto",
                  engines: Optional["InferenceEngines"] = None, assets: Optional[ModelAssets] = None) -> "DECA":
        return cls(pack, device=device, rasterizer=rasterizer, engines=engines, assets=assets)

    # ------------------------------------------------------------------------------------------- encode
    @torch.inference_mode()
    def encode(self, images: torch.Tensor, with_detail: bool = True) -> Codes:
        """images [B, 3, 224, 224] RGB in 0..1 (no normalisation) -> Codes."""
        if images.dim() != 4 or images.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"images must be [B, 3, {INPUT_SIZE}, {INPUT_SIZE}], got {tuple(images.shape)}")
        images = images.to(self.device, torch.float32)
        flame_code = self.engines.encode_flame(images).to(self.device)
        detail = (self.engines.encode_detail(images).to(self.device) if with_detail
                  else flame_code.new_zeros(images.shape[0], CODE_LAYOUT.n_detail))
        return Codes.from_network_outputs(flame_code, detail)

    # ------------------------------------------------------------------------------------------- decode
    @torch.inference_mode()
    def geometry(self, codes: Codes) -> Geometry:
        out = self.flame(codes.shape, codes.exp, codes.pose)
        screen = orthographic(out.vertices, codes.cam)
        return Geometry(
            vertices=out.vertices,
            normals=mesh_normals(self.assets, out.vertices),
            screen=screen,
            screen_normals=mesh_normals(self.assets, screen),
            landmarks2d=orthographic(out.landmarks2d, codes.cam),
            landmarks3d=orthographic(out.landmarks3d, codes.cam),
        )

    @torch.inference_mode()
    def displacement(self, codes: Codes) -> torch.Tensor:
        """D_detail on (jaw, exp, detail) -> uv_z [B, 1, 256, 256]."""
        return self.decode_detail(detail_input(codes.pose[:, 3:6], codes.exp, codes.detail))

    def decode_detail(self, latent: torch.Tensor) -> torch.Tensor:
        """D_detail: latent [B, 181] (`capture.nets.detail_input`) -> uv_z [B, 1, 256, 256] on `device`."""
        return self.engines.decode_detail(latent).to(self.device)

    def albedo(self, codes: Codes) -> torch.Tensor:
        return self.assets.albedo(codes.tex)

    @torch.inference_mode()
    def decode(self, codes: Codes, *, image_size: Optional[tuple[int, int]] = None,
               image_to_crop: Optional[torch.Tensor] = None, albedo_uv: Optional[torch.Tensor] = None,
               want_shape: bool = True) -> Reconstruction:
        """Codes -> geometry, detail maps and pictures.

        Pictures are rendered in the 224 crop by default; with `image_size` (H, W) and `image_to_crop`
        ([B, 3, 3] or [3, 3]) they are rendered in the original frame instead (DECA's render_orig).
        `albedo_uv` overrides the albedo (e.g. a texture extracted from a photo).
        """
        codes = codes.to(self.device)
        geo = self.geometry(codes)
        uv_z = self.displacement(codes)
        uv_detail_normals = detail_normal_map(self.assets, uv_z, geo.vertices, geo.normals)
        albedo = albedo_uv if albedo_uv is not None else self.albedo(codes)
        uv_texture = albedo * sh_shading(uv_detail_normals, codes.light)
        if image_size is None:
            screen, size = geo.screen, (INPUT_SIZE, INPUT_SIZE)
        else:
            screen = crop_to_image_ndc(geo.screen, image_to_crop.to(self.device), INPUT_SIZE, image_size)
            size = image_size
        fragments = self.rasterizer.rasterize(screen, self.assets.faces, size)
        views = draw_views(fragments, self.assets, geo.normals, geo.screen_normals, albedo_uv=albedo,
                           light=codes.light, detail_normals_uv=uv_detail_normals, want_shape=want_shape)
        displacement_map = uv_z + self.assets.fixed_displacement.to(uv_z)[None, None]
        return Reconstruction(geometry=geo, uv_z=uv_z, displacement_map=displacement_map,
                              uv_detail_normals=uv_detail_normals, albedo=albedo, uv_texture=uv_texture,
                              views=views)
