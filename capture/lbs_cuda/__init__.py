"""Fused CUDA linear blend skinning for FLAME: a drop-in for `capture.flame.lbs`.

    lbs_impl = CudaLBS.from_flame(flame)            # FLAME module on a CUDA device
    vertices, joints = lbs_impl(betas, pose)        # [B, V, 3], [B, J, 3] float32
    # or with lbs's own signature (the model tensors must be the ones it was built from):
    vertices, joints = lbs_impl(betas, pose, flame.v_template, flame.shapedirs, flame.posedirs,
                                flame.J_regressor, flame.joint_parents, flame.lbs_weights)

Split of the work (same math as `capture.flame.lbs`, checked by tests/test_lbs_cuda.py):
- once, at construction (`pack_model`): the model tensors go to the kernel's planar layouts, and since
  joint regression is linear in the shaped template, J = J_regressor @ (v_template + shapedirs . betas)
  is precomputed as J_template [J, 3] + J_dirs [J, 3, K] . betas: joints never need a pass over vertices;
- per call, in torch (`skinning_inputs`): the rest joints, Rodrigues, the kinematic chain and the pose
  feature (R_j - I), a few hundred flops per batch item;
- per call, on the GPU: one fused kernel (lbs_kernel.cu) for blendshapes, pose correctives and skinning.

Forward only: the kernel has no backward, so inputs that require grad are refused (fit with torch lbs).
`cuda_lbs_available()` says whether this path can run here and, if not, why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from capture.flame import _parents_list, rigid_chain, rodrigues
from capture.lbs_cuda.launcher import (
    MAX_J,
    MAX_K,
    CudaLBSError,
    CudaLBSUnavailable,
    SkinArgs,
    available_launchers,
    launch_skin,
    pick_launcher,
)

Parents = Union[torch.Tensor, Sequence[int]]

__all__ = [
    "CudaLBS",
    "CudaLBSError",
    "CudaLBSUnavailable",
    "PackedModel",
    "cuda_lbs_available",
    "pack_model",
    "skinning_inputs",
]


@dataclass(frozen=True)
class PackedModel:
    """FLAME's LBS buffers in the kernel's layouts (lbs_kernel.cu), float32 and contiguous."""

    v_template: torch.Tensor  # [3, V] planar: row c holds coordinate c of every vertex
    shapedirs: torch.Tensor  # [K, 3, V]
    posedirs: torch.Tensor  # [P, 3, V], P = (J-1)*9
    lbs_weights: torch.Tensor  # [J, V]
    J_template: torch.Tensor  # [J, 3] = J_regressor @ v_template
    J_dirs: torch.Tensor  # [J, 3, K] = J_regressor @ shapedirs (per coordinate)
    parents: tuple[int, ...]  # [J], parents[0] = -1

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[1])

    @property
    def n_components(self) -> int:
        return int(self.shapedirs.shape[0])

    @property
    def n_joints(self) -> int:
        return int(self.lbs_weights.shape[0])


def pack_model(
    v_template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs_T: torch.Tensor,
    J_regressor: torch.Tensor,
    parents: Parents,
    lbs_weights: torch.Tensor,
    device: Optional[Union[str, torch.device]] = None,
) -> PackedModel:
    """Rearrange `lbs`'s model tensors for the kernel (any device; runs once).

    Inputs as for `capture.flame.lbs`: v_template [V, 3], shapedirs [V, 3, K], posedirs_T [(J-1)*9, V*3],
    J_regressor [J, V], parents [J], lbs_weights [V, J]. The joint precomputation runs in float64 and is
    stored in float32. Returns a PackedModel on `device` (default: v_template's device).
    """
    plist = _parents_list(parents)
    V = v_template.shape[0]
    J = len(plist)
    if v_template.shape != (V, 3):
        raise ValueError(f"pack_model: v_template must be [V, 3], found {list(v_template.shape)}")
    if shapedirs.dim() != 3 or shapedirs.shape[:2] != (V, 3):
        raise ValueError(f"pack_model: shapedirs must be [V, 3, K] = [{V}, 3, K], found {list(shapedirs.shape)}")
    K = shapedirs.shape[2]
    P = (J - 1) * 9
    if posedirs_T.shape != (P, V * 3):
        raise ValueError(f"pack_model: posedirs_T must be [(J-1)*9, V*3] = [{P}, {V * 3}], "
                         f"found {list(posedirs_T.shape)}")
    if J_regressor.shape != (J, V):
        raise ValueError(f"pack_model: J_regressor must be [J, V] = [{J}, {V}], found {list(J_regressor.shape)}")
    if lbs_weights.shape != (V, J):
        raise ValueError(f"pack_model: lbs_weights must be [V, J] = [{V}, {J}], found {list(lbs_weights.shape)}")
    if J > MAX_J or K > MAX_K:
        raise ValueError(f"pack_model: the kernel handles up to {MAX_J} joints and {MAX_K} components, "
                         f"found {J} and {K}")
    device = torch.device(device) if device is not None else v_template.device

    def out(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=torch.float32).contiguous()

    f64 = torch.float64
    J_reg = J_regressor.to(f64)
    return PackedModel(
        v_template=out(v_template.T),
        shapedirs=out(shapedirs.permute(2, 1, 0)),
        # posedirs_T rows index v*3 + c: view as [P, V, 3] and make the vertex index fastest.
        posedirs=out(posedirs_T.reshape(P, V, 3).permute(0, 2, 1)),
        lbs_weights=out(lbs_weights.T),
        J_template=out(J_reg @ v_template.to(f64)),
        J_dirs=out(torch.einsum("jv,vck->jck", J_reg, shapedirs.to(f64))),
        parents=tuple(plist),
    )


def skinning_inputs(
    betas: torch.Tensor, pose: torch.Tensor, J_template: torch.Tensor, J_dirs: torch.Tensor, parents: Parents
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-joint half of LBS, in torch on the inputs' device.

    betas [B, K]; pose [B, J*3] axis-angle; J_template [J, 3]; J_dirs [J, 3, K]; parents [J].
    Returns pose_feature [B, (J-1)*9] ((R_j - I) of joints 1..J-1, row-major), transforms [B, J, 12]
    (top 3x4 rows of each joint's skinning matrix, row-major) and posed joints [B, J, 3].
    """
    B = betas.shape[0]
    J = J_template.shape[0]
    if pose.shape != (B, J * 3):
        raise ValueError(f"CUDA LBS: pose must be [B, J*3] = [{B}, {J * 3}], found {list(pose.shape)}")
    joints_rest = J_template + torch.einsum("jck,bk->bjc", J_dirs, betas)
    rot = rodrigues(pose.reshape(B * J, 3)).reshape(B, J, 3, 3)
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    pose_feature = (rot[:, 1:] - eye).reshape(B, (J - 1) * 9)
    posed_joints, transforms = rigid_chain(rot, joints_rest, parents)
    return pose_feature.contiguous(), transforms[:, :, :3, :].reshape(B, J, 12).contiguous(), posed_joints


def cuda_lbs_available() -> tuple[bool, str]:
    """(True, 'pycuda'/'cupy') when the fused kernel can run here, else (False, the reason)."""
    if not torch.cuda.is_available():
        return False, "no CUDA device (or a CPU-only torch build); capture.flame.lbs is the fallback"
    found, why = available_launchers()
    if not found:
        return False, f"neither pycuda nor CuPy imports ({why}); capture.flame.lbs is the fallback"
    return True, found[0]


_MODEL_ARGS = ("v_template", "shapedirs", "posedirs_T", "J_regressor", "parents", "lbs_weights")


def _signature(name: str, t) -> tuple:
    """What identifies a model argument: the tree by value, tensors by storage (no device read-back)."""
    if name == "parents":
        return tuple(_parents_list(t))
    return (t.data_ptr(), tuple(t.shape), t.dtype, str(t.device))


class CudaLBS:
    """`capture.flame.lbs` for one fixed model, running the fused CUDA kernel.

    Build it from lbs's model tensors (`CudaLBS(v_template, shapedirs, posedirs_T, J_regressor, parents,
    lbs_weights)`) or from a `capture.flame.FLAME` module (`CudaLBS.from_flame(flame)`); `device` defaults
    to the model's (it must be CUDA) and `launcher` forces "pycuda" or "cupy". Raises
    `CudaLBSUnavailable` where the kernel cannot run: the caller then uses torch `lbs`.
    """

    def __init__(
        self,
        v_template: torch.Tensor,
        shapedirs: torch.Tensor,
        posedirs_T: torch.Tensor,
        J_regressor: torch.Tensor,
        parents: Parents,
        lbs_weights: torch.Tensor,
        device: Optional[Union[str, torch.device]] = None,
        launcher: Optional[str] = None,
    ):
        device = torch.device(device) if device is not None else v_template.device
        if device.type != "cuda":
            raise CudaLBSUnavailable(f"CudaLBS needs a CUDA device, found {device}; use capture.flame.lbs there")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.model = pack_model(v_template, shapedirs, posedirs_T, J_regressor, parents, lbs_weights, device)
        self._sources = {
            name: _signature(name, t)
            for name, t in zip(_MODEL_ARGS, (v_template, shapedirs, posedirs_T, J_regressor, parents, lbs_weights))
        }
        self._launcher = pick_launcher(device, launcher)

    @classmethod
    def from_flame(cls, flame: torch.nn.Module, device=None, launcher: Optional[str] = None) -> "CudaLBS":
        """From a `capture.flame.FLAME` module's buffers (shapedirs already cut to n_shape + n_exp)."""
        return cls(
            flame.v_template, flame.shapedirs, flame.posedirs, flame.J_regressor, flame.joint_parents,
            flame.lbs_weights, device=device, launcher=launcher,
        )

    @property
    def launcher_name(self) -> str:
        return self._launcher.name

    def __call__(
        self,
        betas: torch.Tensor,
        pose: torch.Tensor,
        v_template: Optional[torch.Tensor] = None,
        shapedirs: Optional[torch.Tensor] = None,
        posedirs_T: Optional[torch.Tensor] = None,
        J_regressor: Optional[torch.Tensor] = None,
        parents: Optional[Parents] = None,
        lbs_weights: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """betas [B, K], pose [B, J*3] float32 on the model's device -> vertices [B, V, 3], joints [B, J, 3].

        The model arguments exist so that this object can stand where `lbs` is called; when given they
        must be the very tensors it was built from (compared by storage pointer and shape, no data read).
        """
        given = (v_template, shapedirs, posedirs_T, J_regressor, parents, lbs_weights)
        for name, t in zip(_MODEL_ARGS, given):
            if t is not None and _signature(name, t) != self._sources[name]:
                raise ValueError(
                    f"CudaLBS: {name} is not the tensor this CudaLBS was built from; build a new CudaLBS "
                    "for another model"
                )
        if torch.is_grad_enabled() and (betas.requires_grad or pose.requires_grad):
            raise ValueError(
                "CudaLBS: betas/pose require grad but the fused kernel has no backward; "
                "use capture.flame.lbs for fitting, or call under torch.no_grad()"
            )
        m = self.model
        B = betas.shape[0] if betas.dim() == 2 else -1
        K, J, V = m.n_components, m.n_joints, m.n_vertices
        if betas.dim() != 2 or betas.shape[1] != K:
            raise ValueError(f"CudaLBS: betas must be [B, {K}], found {list(betas.shape)}")
        if pose.shape != (B, J * 3):
            raise ValueError(f"CudaLBS: pose must be [B, J*3] = [{B}, {J * 3}], found {list(pose.shape)}")
        for name, t in (("betas", betas), ("pose", pose)):
            if t.device != self.device or t.dtype != torch.float32:
                raise ValueError(
                    f"CudaLBS: {name} is {t.dtype} on {t.device}, the model is torch.float32 on {self.device}; "
                    f"move it with .to({str(self.device)!r}, torch.float32)"
                )
        betas = betas.contiguous()
        pose_feature, transforms, joints = skinning_inputs(betas, pose, m.J_template, m.J_dirs, m.parents)
        vertices = torch.empty(B, V, 3, dtype=torch.float32, device=self.device)
        args = SkinArgs(
            v_template=m.v_template, shapedirs=m.shapedirs, posedirs=m.posedirs, lbs_weights=m.lbs_weights,
            betas=betas, pose_feature=pose_feature, transforms=transforms, vertices=vertices,
        )
        launch_skin(self._launcher, args)
        return vertices, joints
