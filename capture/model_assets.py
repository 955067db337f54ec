"""The constant state of one model pack on one device, built once and passed to whatever draws or trains.

`ModelAssets.build(pack, device)` makes the FLAME module, the mesh and UV topology as tensors, the UV sampler
(the UV layout rasterised exactly once, `render.exact`), the texel grid's triangles, the UV masks, DECA's fixed
displacement and the mean-texture albedo. DECA, `AvatarRenderer` and training's `TrainRenderer` take an
instance instead of rebuilding (or reaching into each other for) these pieces.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .appearance import UVSampler, albedo_from_model, face_incidence, grid_triangles, mean_texture_albedo, uv_layout_ndc
from .assets.pack import ModelPack
from .flame import FLAME


@dataclass
class ModelAssets:
    pack: ModelPack
    device: torch.device
    flame: FLAME  # DECA's 100 shape / 50 expression components
    lbs_backend: str  # which LBS `flame` runs: "torch", or the fused CUDA kernel and how it is launched
    faces: torch.Tensor  # [F, 3] int64 vertex ids
    uvfaces: torch.Tensor  # [F, 3] int64 uv-vertex ids
    uv_ndc: torch.Tensor  # [T, 2] the UV layout in y-down NDC (`conventions.obj_uv_to_ndc`)
    uv_face: torch.Tensor  # [F, 3, 2] uv_ndc per face corner, contiguous
    incidence: torch.Tensor  # [V, F] sparse CSR vertex-face incidence (`appearance.vertex_normals`)
    uv_sampler: UVSampler  # per-vertex data -> UV maps
    grid_faces: torch.Tensor  # [N, 3] texel-grid triangles of DECA's displacement2normal (`appearance.grid_triangles`)
    face_eye_mask: torch.Tensor  # [S, S] where details apply
    fixed_displacement: torch.Tensor  # [S, S] metres, added to every predicted displacement
    mean_albedo: torch.Tensor  # [1, 3, S, S] the fallback albedo (mean_texture.jpg) when the pack has no model

    @classmethod
    def build(cls, pack: ModelPack, device: str | torch.device = "cpu", fused_lbs: bool = True) -> "ModelAssets":
        """fused_lbs: on CUDA, run LBS with the fused kernel when pycuda or CuPy can launch it (not
        differentiable: training passes False)."""
        device = torch.device(device)
        flame = FLAME(pack).to(device)
        lbs_backend = "torch"
        if fused_lbs and device.type == "cuda":
            lbs_backend = _use_cuda_lbs(flame)
        faces = torch.as_tensor(pack.uv.faces, dtype=torch.int64, device=device)
        uvfaces = torch.as_tensor(pack.uv.uvfaces, dtype=torch.int64, device=device)
        uv_ndc = torch.as_tensor(uv_layout_ndc(pack.uv.uvcoords), device=device)
        sampler = UVSampler.build(pack.uv.uvcoords, pack.uv.uvfaces, pack.uv.faces).to(device)
        return cls(
            pack=pack, device=device, flame=flame, lbs_backend=lbs_backend, faces=faces, uvfaces=uvfaces,
            uv_ndc=uv_ndc, uv_face=uv_ndc[uvfaces].contiguous(),
            incidence=face_incidence(faces, flame.v_template.shape[0]), uv_sampler=sampler,
            grid_faces=grid_triangles(sampler.size).to(device),
            face_eye_mask=torch.as_tensor(pack.face_eye_mask, device=device),
            fixed_displacement=torch.as_tensor(pack.fixed_displacement, device=device),
            mean_albedo=mean_texture_albedo(pack.mean_texture).to(device),
        )

    @property
    def n_vertices(self) -> int:
        return int(self.flame.v_template.shape[0])

    def albedo(self, tex: torch.Tensor) -> torch.Tensor:
        """tex [B, 50] -> UV albedo [B, 3, S, S]: the pack's albedo model, else the mean texture (broadcast)."""
        if self.pack.albedo is not None:
            return albedo_from_model(self.pack.albedo, tex[:, : self.pack.albedo.basis.shape[1]])
        return self.mean_albedo.expand(tex.shape[0], -1, -1, -1)


def _use_cuda_lbs(flame: FLAME) -> str:
    """Swap in the fused CUDA LBS kernel when pycuda or CuPy can launch it; torch LBS stays otherwise."""
    from .lbs_cuda import CudaLBS, cuda_lbs_available

    ok, how = cuda_lbs_available()
    if not ok:
        return f"torch ({how})"
    flame.lbs_impl = CudaLBS.from_flame(flame)
    return f"cuda kernel ({how})"
