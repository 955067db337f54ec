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

from .appearance import (
    UVSampler,
    albedo_from_model,
    displacement_to_normals,
    grid_triangles,
    mean_texture_albedo,
    sh_shading,
    uv_layout_ndc,
    vertex_normals,
)
from .assets.pack import ModelPack
from .camera import crop_to_image_ndc, orthographic
from .flame import FLAME
from .nets import CODE_LAYOUT, detail_input
from .render import get_rasterizer
from .views import Views, render_views

if TYPE_CHECKING:
    from .backends import InferenceEngines

CROP_SIZE = 224
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
    """Networks + FLAME + appearance for one model pack, on one device.

    engines: the networks, a `capture.backends.InferenceEngines` (each network is made on first use); default
    the registry's eager torch reference on `device`, as DECA's own code runs them.
    """

    def __init__(self, pack: ModelPack, device: str | torch.device = "cpu", rasterizer: str = "auto",
                 engines: Optional["InferenceEngines"] = None):
        self.pack = pack
        self.device = torch.device(device)
        if engines is None:
            from .backends import InferenceEngines

            engines = InferenceEngines(pack, REFERENCE_BACKEND, device=str(self.device))
        self.engines = engines
        self.flame = FLAME(pack).to(self.device)
        self.lbs_backend = "torch"
        if self.device.type == "cuda":
            self._use_cuda_lbs()
        self.rasterizer = get_rasterizer(rasterizer, device=self.device)
        self.faces = torch.as_tensor(pack.uv.faces, dtype=torch.int64, device=self.device)
        self.uvfaces = torch.as_tensor(pack.uv.uvfaces, dtype=torch.int64, device=self.device)
        self.uv_ndc = torch.as_tensor(uv_layout_ndc(pack.uv.uvcoords), device=self.device)
        self.uv_sampler = UVSampler.build(pack.uv.uvcoords, pack.uv.uvfaces, pack.uv.faces).to(self.device)
        self.grid_faces = grid_triangles(self.uv_sampler.size).to(self.device)
        self.face_eye_mask = torch.as_tensor(pack.face_eye_mask, device=self.device)
        self.fixed_displacement = torch.as_tensor(pack.fixed_displacement, device=self.device)
        self._mean_albedo = mean_texture_albedo(pack.mean_texture).to(self.device)

    def _use_cuda_lbs(self) -> None:
        """Swap in the fused CUDA LBS kernel when pycuda or CuPy can launch it; torch LBS stays otherwise."""
        from .lbs_cuda import CudaLBS, cuda_lbs_available

        ok, how = cuda_lbs_available()
        if ok:
            self.flame.lbs_impl = CudaLBS.from_flame(self.flame)
            self.lbs_backend = f"cuda kernel ({how})"
        else:
            self.lbs_backend = f"torch ({how})"

    @classmethod
    def from_pack(cls, pack: ModelPack, device: str | torch.device = "cpu", rasterizer: str = "auto",
                  engines: Optional["InferenceEngines"] = None) -> "DECA":
        return cls(pack, device=device, rasterizer=rasterizer, engines=engines)

    # ------------------------------------------------------------------------------------------- encode
    @torch.inference_mode()
    def encode(self, images: torch.Tensor, with_detail: bool = True) -> Codes:
        """images [B, 3, 224, 224] RGB in 0..1 (no normalisation) -> Codes."""
        if images.dim() != 4 or images.shape[1:] != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(f"images must be [B, 3, {CROP_SIZE}, {CROP_SIZE}], got {tuple(images.shape)}")
        images = images.to(self.device, torch.float32)
        flame_code = self.engines.encode_flame(images).to(self.device)
        detail = (self.engines.encode_detail(images).to(self.device) if with_detail
                  else flame_code.new_zeros(images.shape[0], CODE_LAYOUT.n_detail))
        return Codes.from_network_outputs(flame_code, detail)

    # ------------------------------------------------------------------------------------------- decode
    @torch.inference_mode()
    def geometry(self, codes: Codes) -> Geometry:
        out = self.flame(codes.shape, codes.exp, codes.pose)
        normals = vertex_normals(out.vertices, self.faces)
        screen = orthographic(out.vertices, codes.cam)
        return Geometry(
            vertices=out.vertices,
            normals=normals,
            screen=screen,
            screen_normals=vertex_normals(screen, self.faces),
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
        if self.pack.albedo is not None:
            return albedo_from_model(self.pack.albedo, codes.tex[:, : self.pack.albedo.basis.shape[1]])
        return self._mean_albedo.expand(codes.batch, -1, -1, -1)

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
        maps = displacement_to_normals(uv_z, geo.vertices, geo.normals, self.uv_sampler, self.face_eye_mask,
                                       self.fixed_displacement, self.grid_faces)
        albedo = albedo_uv if albedo_uv is not None else self.albedo(codes)
        uv_texture = albedo * sh_shading(maps.uv_detail_normals, codes.light)
        if image_size is None:
            screen, size = geo.screen, (CROP_SIZE, CROP_SIZE)
        else:
            screen = crop_to_image_ndc(geo.screen, image_to_crop.to(self.device), CROP_SIZE, image_size)
            size = image_size
        views = render_views(self.rasterizer, screen, self.faces, self.uv_ndc, self.uvfaces, geo.normals,
                             geo.screen_normals, size, albedo_uv=albedo, light=codes.light,
                             detail_normals_uv=maps.uv_detail_normals, want_shape=want_shape)
        return Reconstruction(geometry=geo, uv_z=uv_z, displacement_map=maps.displacement_map,
                              uv_detail_normals=maps.uv_detail_normals, albedo=albedo, uv_texture=uv_texture,
                              views=views)
