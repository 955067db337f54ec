"""FLAME as pure tensor functions, plus a thin `nn.Module` that owns the buffers.

Every function takes all of its data as arguments and follows the device and dtype of its inputs, so
the same math runs on CPU and GPU and a second implementation (the CUDA LBS kernel) can replace `lbs`
with the very same signature. Shape vocabulary: B batch, V vertices, F faces, J joints (5 for FLAME),
K blendshape components, L landmarks.

Conventions are DECA's (docs/formats.md 1.2, 1.3): SMPL-X style linear blend skinning, pose feature =
(R_j - I) of the non-root joints, posedirs stored transposed as [36, V*3], full pose vector
[global | neck | jaw | left eye | right eye] in axis-angle, 79-row dynamic jaw-contour table indexed by
the integer head yaw in degrees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from capture.assets.pack import N_EXP_FLAME, N_JOINTS, N_SHAPE_FLAME, FlameModel, LandmarkEmbedding, ModelPack

Parents = Union[torch.Tensor, Sequence[int]]

NECK_JOINT = 1  # FLAME joint order: root(0), neck(1), jaw(2), left eye(3), right eye(4)
N_CONTOUR = 17  # dynamic jaw-contour landmarks (iBUG points 0..16)
N_STATIC = 51  # static inner landmarks (iBUG points 17..67)
CONTOUR_MAX_YAW = 39  # degrees; the table holds one row per integer yaw in -39..39
N_CONTOUR_ROWS = 2 * CONTOUR_MAX_YAW + 1  # 79

# Below this angle (radians) Rodrigues switches to its Taylor series: sin(t)/t and (1-cos t)/t^2
# lose all precision near 0 and their gradients are 0/0 at exactly 0.
_RODRIGUES_TAYLOR_BELOW = 1e-3


# ---------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------


def blend_shapes(betas: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Linear blendshape offsets.

    betas: [B, K] coefficients; dirs: [V, 3, K] basis. Returns [B, V, 3] = sum_k betas[b, k] * dirs[:, :, k].
    """
    if betas.shape[-1] != dirs.shape[-1]:
        raise ValueError(
            f"blend_shapes: betas has {betas.shape[-1]} coefficients but dirs has {dirs.shape[-1]} "
            f"components (betas {tuple(betas.shape)}, dirs {tuple(dirs.shape)})"
        )
    V = dirs.shape[0]
    # One GEMM over the flattened basis: [B, K] x [K, V*3].
    return (betas @ dirs.reshape(V * 3, -1).T).reshape(betas.shape[0], V, 3)


def regress_joints(J_regressor: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Joint locations as fixed linear combinations of vertices.

    J_regressor: [J, V]; vertices: [B, V, 3]. Returns [B, J, 3].
    """
    return torch.einsum("jv,bvc->bjc", J_regressor, vertices)


def _skew(v: torch.Tensor) -> torch.Tensor:
    """[N, 3] -> [N, 3, 3] cross-product matrices, skew(v) @ x = v x x."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(v.shape[:-1] + (3, 3))


def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors to rotation matrices.

    axis_angle: [N, 3] (direction = axis, norm = angle in radians, any magnitude). Returns [N, 3, 3].
    Uses R = I + a(t) K + b(t) K^2 with K = skew(axis_angle) unnormalised, a = sin t / t,
    b = (1 - cos t) / t^2, switching to their Taylor series for tiny t so that both the values and the
    gradients stay finite and exact at zero.
    """
    if axis_angle.dim() != 2 or axis_angle.shape[-1] != 3:
        raise ValueError(f"rodrigues: axis_angle must be [N, 3], found {tuple(axis_angle.shape)}")
    theta2 = (axis_angle * axis_angle).sum(-1)
    small = theta2 < _RODRIGUES_TAYLOR_BELOW**2
    # Take the root of a safe value: sqrt'(0) = inf would turn the discarded branch's zero gradient
    # into NaN through torch.where.
    t = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    half_sinc = torch.sin(0.5 * t) / t  # (1 - cos t) / t^2 = 2 sin^2(t/2) / t^2, without cancellation
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(t) / t)
    b = torch.where(small, 0.5 - theta2 / 24.0, 2.0 * half_sinc * half_sinc)
    K = _skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a[:, None, None] * K + b[:, None, None] * (K @ K)


def _parents_list(parents: Parents) -> list[int]:
    plist = parents.tolist() if isinstance(parents, torch.Tensor) else [int(p) for p in parents]
    if not plist or plist[0] != -1 or any(not (0 <= p < i) for i, p in enumerate(plist) if i > 0):
        raise ValueError(
            f"parents must start with -1 (the root) and list each joint after its parent, found {plist}"
        )
    return plist


def rigid_chain(
    rot: torch.Tensor, joints: torch.Tensor, parents: Parents
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics over a joint tree.

    rot: [B, J, 3, 3] local joint rotations; joints: [B, J, 3] rest-pose joint locations; parents: [J]
    (tensor or ints, parents[0] = -1, parents[i] < i).
    Returns posed_joints [B, J, 3] and transforms [B, J, 4, 4]: the world transform of each joint with
    its rest location removed (x -> R_world (x - j_rest) + j_posed), i.e. the matrices that skin a
    rest-pose vertex.
    """
    plist = _parents_list(parents)
    B, J = joints.shape[:2]
    if len(plist) != J or rot.shape != (B, J, 3, 3):
        raise ValueError(
            f"rigid_chain: expected rot [B, J, 3, 3] and parents [J] for joints [B, J, 3] = {tuple(joints.shape)}, "
            f"found rot {tuple(rot.shape)}, parents of length {len(plist)}"
        )
    # Offset of each joint from its parent at rest; the root keeps its absolute location.
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, plist[1:]]
    world_R = [rot[:, 0]]
    world_t = [rel[:, 0]]
    for i in range(1, J):  # J = 5: a loop over joints, not vertices
        p = plist[i]
        world_R.append(world_R[p] @ rot[:, i])
        world_t.append(world_t[p] + (world_R[p] @ rel[:, i, :, None])[..., 0])
    R = torch.stack(world_R, dim=1)  # [B, J, 3, 3]
    posed = torch.stack(world_t, dim=1)  # [B, J, 3]
    t = posed - (R @ joints[..., None])[..., 0]
    top = torch.cat([R, t[..., None]], dim=-1)  # [B, J, 3, 4]
    bottom = torch.zeros_like(top[:, :, :1, :])
    bottom[..., 3] = 1.0
    return posed, torch.cat([top, bottom], dim=-2)


def lbs(
    betas: torch.Tensor,
    pose: torch.Tensor,
    v_template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs_T: torch.Tensor,
    J_regressor: torch.Tensor,
    parents: Parents,
    lbs_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SMPL-X style linear blend skinning (the reference the CUDA kernel must match).

    betas [B, K]; pose [B, J*3] axis-angle per joint; v_template [V, 3]; shapedirs [V, 3, K];
    posedirs_T [(J-1)*9, V*3] (DECA's reshaped+transposed layout: 36 rows for FLAME); J_regressor [J, V];
    parents [J] (ints, or an int64 tensor: a host tuple avoids reading a GPU tensor back every call);
    lbs_weights [V, J]. Returns vertices [B, V, 3] and posed joints [B, J, 3].
    """
    B = betas.shape[0]
    V = v_template.shape[0]
    J = J_regressor.shape[0]
    if pose.shape != (B, J * 3):
        raise ValueError(f"lbs: pose must be [B, J*3] = [{B}, {J * 3}], found {tuple(pose.shape)}")
    if posedirs_T.shape != ((J - 1) * 9, V * 3):
        raise ValueError(
            f"lbs: posedirs_T must be [(J-1)*9, V*3] = [{(J - 1) * 9}, {V * 3}], found {tuple(posedirs_T.shape)}"
        )
    v_shaped = v_template + blend_shapes(betas, shapedirs)
    joints_rest = regress_joints(J_regressor, v_shaped)
    rot = rodrigues(pose.reshape(B * J, 3)).reshape(B, J, 3, 3)
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    pose_feature = (rot[:, 1:] - eye).reshape(B, (J - 1) * 9)
    v_posed = v_shaped + (pose_feature @ posedirs_T).reshape(B, V, 3)
    posed_joints, transforms = rigid_chain(rot, joints_rest, parents)
    # Blend the 3x4 parts only: [V, J] x [B, J, 12] -> [B, V, 3, 4].
    T = (lbs_weights @ transforms[:, :, :3, :].reshape(B, J, 12)).reshape(B, V, 3, 4)
    vertices = (T[..., :3] @ v_posed[..., None])[..., 0] + T[..., 3]
    return vertices, posed_joints


def vertices_to_landmarks(
    vertices: torch.Tensor, faces: torch.Tensor, lmk_faces_idx: torch.Tensor, lmk_bary: torch.Tensor
) -> torch.Tensor:
    """Barycentric landmarks on a triangle mesh.

    vertices [B, V, 3]; faces [F, 3] int64; lmk_faces_idx [B, L] or [L] int64; lmk_bary [B, L, 3] or [L, 3].
    Returns [B, L, 3]: sum_i bary[l, i] * vertices[faces[idx[l], i]].
    """
    B = vertices.shape[0]
    tri = faces[lmk_faces_idx]  # [L, 3] or [B, L, 3] vertex ids
    if tri.dim() == 2:
        corners = vertices[:, tri]  # [B, L, 3(corner), 3(xyz)]
    else:
        batch = torch.arange(B, device=vertices.device)[:, None, None]
        corners = vertices[batch, tri]
    return (lmk_bary.to(vertices.dtype)[..., :, None] * corners).sum(-2)


def contour_rows_from_yaw(yaw_deg: torch.Tensor) -> torch.Tensor:
    """DECA's yaw -> dynamic-contour row (docs/formats.md 1.3).

    yaw_deg [B] in degrees. Clamp to <= 39, round (half to even, as torch.round), then
    yaw 0..39 -> row yaw; yaw -1..-39 -> row 39 - yaw (40..78); yaw < -39 -> row 78. Returns [B] int64.
    """
    y = torch.round(torch.clamp(yaw_deg, max=CONTOUR_MAX_YAW)).to(torch.int64)
    neg = torch.where(y < -CONTOUR_MAX_YAW, torch.full_like(y, N_CONTOUR_ROWS - 1), CONTOUR_MAX_YAW - y)
    return torch.where(y < 0, neg, y)


def _chain_to_root(joint: int, plist: list[int]) -> list[int]:
    chain = []
    while joint != -1:
        chain.append(joint)
        joint = plist[joint]
    return chain


def head_yaw_degrees(pose: torch.Tensor, parents: Parents, neck_joint: int = NECK_JOINT) -> torch.Tensor:
    """Yaw of the neck chain's accumulated rotation, DECA's sign: [B, J*3] -> [B] degrees.

    R = R_root @ ... @ R_neck; yaw = atan2(-R[2,0], sqrt(R[0,0]^2 + R[1,0]^2)), positive for a turn about +y.
    """
    plist = _parents_list(parents)
    B = pose.shape[0]
    if pose.dim() != 2 or pose.shape[1] != 3 * len(plist):
        raise ValueError(f"pose must be [B, J*3] = [B, {3 * len(plist)}], found {tuple(pose.shape)}")
    chain = _chain_to_root(neck_joint, plist)  # [neck, ..., root]
    rots = rodrigues(pose.reshape(B, -1, 3)[:, chain].reshape(-1, 3)).reshape(B, len(chain), 3, 3)
    R = rots[:, 0]
    for k in range(1, len(chain)):  # apply ancestors on the left
        R = rots[:, k] @ R
    yaw = torch.atan2(-R[:, 2, 0], torch.sqrt(R[:, 0, 0] ** 2 + R[:, 1, 0] ** 2))
    return torch.rad2deg(yaw)


def dynamic_contour_rows(pose: torch.Tensor, parents: Parents, neck_joint: int = NECK_JOINT) -> torch.Tensor:
    """Row of the 79-row dynamic contour table for each pose: full pose [B, J*3] -> [B] int64."""
    return contour_rows_from_yaw(head_yaw_degrees(pose, parents, neck_joint))


# ---------------------------------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------------------------------


@dataclass
class FlameOutput:
    vertices: torch.Tensor  # [B, V, 3] FLAME metres
    joints: torch.Tensor  # [B, 5, 3] posed joints
    landmarks2d: Optional[torch.Tensor]  # [B, 68, 3]: 17 yaw-dependent contour points, then 51 static ones
    landmarks3d: Optional[torch.Tensor]  # [B, 68, 3]: the fixed full embedding (both None: not asked for)


def _check(name: str, t: torch.Tensor, expected: tuple, ref: torch.Tensor) -> None:
    """Shape/dtype/device check at the public entry; `expected` may hold None for 'any'."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"FLAME.forward: {name} must be a torch.Tensor, found {type(t).__name__}")
    if t.dim() != len(expected) or any(e is not None and e != s for e, s in zip(expected, t.shape)):
        want = "[" + ", ".join("B" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"FLAME.forward: {name} must be {want}, found {list(t.shape)}")
    if t.dtype != ref.dtype or t.device != ref.device:
        raise ValueError(
            f"FLAME.forward: {name} is {t.dtype} on {t.device} but the model is {ref.dtype} on {ref.device}; "
            f"move one of them with .to(...)"
        )


class FLAME(torch.nn.Module):
    """FLAME head model with DECA's buffers; `forward` is a thin call into the pure functions above.

    `FLAME(pack, n_shape=100, n_exp=50)` takes `pack.flame` and `pack.landmarks` from a
    `capture.assets.pack.ModelPack`; `FLAME.from_arrays(flame, landmarks, ...)` takes them directly.
    DECA uses the first 100 identity and first 50 expression components; up to 300 / 100 are allowed.
    """

    def __init__(self, pack: ModelPack, n_shape: int = 100, n_exp: int = 50):
        super().__init__()
        self._build(pack.flame, pack.landmarks, n_shape, n_exp)

    @classmethod
    def from_arrays(
        cls, flame: FlameModel, landmarks: LandmarkEmbedding, n_shape: int = 100, n_exp: int = 50
    ) -> "FLAME":
        self = cls.__new__(cls)
        torch.nn.Module.__init__(self)
        self._build(flame, landmarks, n_shape, n_exp)
        return self

    def _build(self, flame: FlameModel, lmk: LandmarkEmbedding, n_shape: int, n_exp: int) -> None:
        if not 0 <= n_shape <= N_SHAPE_FLAME:
            raise ValueError(f"n_shape must be in 0..{N_SHAPE_FLAME} (DECA uses 100), found {n_shape}")
        if not 0 <= n_exp <= N_EXP_FLAME:
            raise ValueError(f"n_exp must be in 0..{N_EXP_FLAME} (DECA uses 50), found {n_exp}")
        V = flame.v_template.shape[0]
        J = N_JOINTS
        expect = {
            "v_template": (flame.v_template, (V, 3)),
            "posedirs": (flame.posedirs, (V, 3, (J - 1) * 9)),
            "J_regressor": (flame.J_regressor, (J, V)),
            "weights": (flame.weights, (V, J)),
            "kintree_table": (flame.kintree_table, (2, J)),
        }
        for key, (arr, shape) in expect.items():
            if tuple(arr.shape) != shape:
                raise ValueError(f"FLAME model key '{key}': expected shape {shape}, found {tuple(arr.shape)}")
        sd = flame.shapedirs
        if sd.ndim != 3 or sd.shape[:2] != (V, 3) or sd.shape[2] < N_SHAPE_FLAME + n_exp:
            raise ValueError(
                f"FLAME model key 'shapedirs': expected [{V}, 3, >= {N_SHAPE_FLAME + n_exp}] "
                f"({N_SHAPE_FLAME} identity then expression columns), found {tuple(sd.shape)}"
            )
        if flame.faces.ndim != 2 or flame.faces.shape[1] != 3:
            raise ValueError(f"FLAME model key 'f': expected [F, 3], found {tuple(flame.faces.shape)}")
        lmk_expect = {
            "static_lmk_faces_idx": (lmk.static_lmk_faces_idx, (N_STATIC,)),
            "static_lmk_bary_coords": (lmk.static_lmk_bary_coords, (N_STATIC, 3)),
            "dynamic_lmk_faces_idx": (lmk.dynamic_lmk_faces_idx, (N_CONTOUR_ROWS, N_CONTOUR)),
            "dynamic_lmk_bary_coords": (lmk.dynamic_lmk_bary_coords, (N_CONTOUR_ROWS, N_CONTOUR, 3)),
            "full_lmk_faces_idx": (lmk.full_lmk_faces_idx, (N_CONTOUR + N_STATIC,)),
            "full_lmk_bary_coords": (lmk.full_lmk_bary_coords, (N_CONTOUR + N_STATIC, 3)),
        }
        for key, (arr, shape) in lmk_expect.items():
            if tuple(np.shape(arr)) != shape:
                raise ValueError(f"landmark embedding key '{key}': expected shape {shape}, "
                                 f"found {tuple(np.shape(arr))}")

        self.n_shape, self.n_exp = int(n_shape), int(n_exp)
        f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        i64 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64))  # noqa: E731
        sd = np.asarray(sd, dtype=np.float32)
        shapedirs = np.concatenate([sd[:, :, :n_shape], sd[:, :, N_SHAPE_FLAME : N_SHAPE_FLAME + n_exp]], axis=2)
        posedirs_T = np.asarray(flame.posedirs, dtype=np.float32).reshape(V * 3, -1).T
        self.register_buffer("v_template", f32(flame.v_template))
        self.register_buffer("shapedirs", f32(shapedirs))
        self.register_buffer("posedirs", f32(np.ascontiguousarray(posedirs_T)))
        self.register_buffer("J_regressor", f32(flame.J_regressor))
        self.register_buffer("lbs_weights", f32(flame.weights))
        self.register_buffer("parents", i64(flame.parents))
        self.register_buffer("faces", i64(flame.faces))
        self.register_buffer("static_lmk_faces_idx", i64(lmk.static_lmk_faces_idx))
        self.register_buffer("static_lmk_bary_coords", f32(lmk.static_lmk_bary_coords))
        self.register_buffer("dynamic_lmk_faces_idx", i64(lmk.dynamic_lmk_faces_idx))
        self.register_buffer("dynamic_lmk_bary_coords", f32(lmk.dynamic_lmk_bary_coords))
        self.register_buffer("full_lmk_faces_idx", i64(lmk.full_lmk_faces_idx))
        self.register_buffer("full_lmk_bary_coords", f32(lmk.full_lmk_bary_coords))
        # A host copy of the tree so that forward never reads a (possibly GPU) tensor back to Python.
        self._parents = tuple(_parents_list(flame.parents))
        # Same signature as `lbs`; capture.lbs_cuda.CudaLBS.from_flame(self) can be put here on a GPU.
        self.lbs_impl = lbs

    def with_identity(self, shape: torch.Tensor) -> "FLAME":
        """This model with one identity's shape folded in, for posing that identity frame after frame.

        shape [1, n_shape] -> a FLAME whose template is the shaped template v_template + shapedirs . shape and
        whose only blendshapes are the expression ones (n_shape = 0: its forward takes shape [B, 0]). It gives
        forward(shape, ...)'s vertices up to float rounding without the pass over the identity basis (two
        thirds of the blendshape data, the bulk of LBS's memory traffic) on every call. Shares the other
        buffers; an `lbs_impl` other than torch's is rebuilt for the new buffers (`.from_flame`).
        """
        _check("shape", shape, (1, self.n_shape), self.v_template)
        out = FLAME.__new__(FLAME)
        torch.nn.Module.__init__(out)
        for name, buffer in self.named_buffers(recurse=False):
            out.register_buffer(name, buffer)
        with torch.no_grad():
            out.v_template = self.v_template + blend_shapes(shape, self.shapedirs[..., : self.n_shape])[0]
            out.shapedirs = self.shapedirs[..., self.n_shape:].contiguous()
        out.n_shape, out.n_exp = 0, self.n_exp
        out._parents = self._parents
        if self.lbs_impl is lbs:
            out.lbs_impl = lbs
        elif hasattr(type(self.lbs_impl), "from_flame"):
            out.lbs_impl = type(self.lbs_impl).from_flame(out)
        else:
            raise TypeError(f"with_identity: lbs_impl {self.lbs_impl!r} has no from_flame(flame) to rebuild it for "
                            "the shaped buffers; use torch's capture.flame.lbs or give it one")
        return out

    def landmark_model(self) -> "FLAME":
        """This model cut down to the vertices its landmarks read, for work that needs the landmarks alone.

        forward gives the same landmarks and joints (up to float rounding) at a fraction of the cost: LBS runs
        on the corners of the landmark triangles (static, every row of the dynamic contour table, the full
        embedding) and on J extra rows holding the joint regressor applied to the template and to every
        blendshape. The rest joints are linear in the shaped vertices, so those rows give them exactly, and
        the cut model's J_regressor only picks them out. Its `vertices` are those corners then the J rows (not
        posed: zero skinning weights), not a mesh; `faces` are the landmark triangles in the cut numbering.
        """
        lmk_faces = [self.static_lmk_faces_idx, self.dynamic_lmk_faces_idx, self.full_lmk_faces_idx]
        used_faces = torch.unique(torch.cat([f.reshape(-1) for f in lmk_faces]))
        keep = torch.unique(self.faces[used_faces].reshape(-1))
        K, J = keep.numel(), self.J_regressor.shape[0]
        vertex_slot = torch.full((self.v_template.shape[0],), -1, dtype=torch.int64, device=keep.device)
        vertex_slot[keep] = torch.arange(K, device=keep.device)
        face_slot = torch.full((self.faces.shape[0],), -1, dtype=torch.int64, device=keep.device)
        face_slot[used_faces] = torch.arange(used_faces.numel(), device=keep.device)
        jreg = self.J_regressor
        n_pose = self.posedirs.shape[0]
        posedirs = self.posedirs.reshape(n_pose, -1, 3)[:, keep]
        buffers = {
            "v_template": torch.cat([self.v_template[keep], jreg @ self.v_template]),
            "shapedirs": torch.cat([self.shapedirs[keep], torch.einsum("jv,vck->jck", jreg, self.shapedirs)]),
            "posedirs": torch.cat([posedirs, posedirs.new_zeros(n_pose, J, 3)], 1).reshape(n_pose, -1).contiguous(),
            "J_regressor": torch.cat([jreg.new_zeros(J, K), torch.eye(J, dtype=jreg.dtype, device=jreg.device)], 1),
            "lbs_weights": torch.cat([self.lbs_weights[keep], self.lbs_weights.new_zeros(J, J)]),
            "faces": vertex_slot[self.faces[used_faces]],
            "static_lmk_faces_idx": face_slot[self.static_lmk_faces_idx],
            "dynamic_lmk_faces_idx": face_slot[self.dynamic_lmk_faces_idx],
            "full_lmk_faces_idx": face_slot[self.full_lmk_faces_idx],
        }
        out = FLAME.__new__(FLAME)
        torch.nn.Module.__init__(out)
        for name, buffer in self.named_buffers(recurse=False):
            out.register_buffer(name, buffers.get(name, buffer))
        out.n_shape, out.n_exp, out._parents = self.n_shape, self.n_exp, self._parents
        out.lbs_impl = lbs
        return out

    @property
    def joint_parents(self) -> tuple[int, ...]:
        """Each joint's parent index (-1 for the root), as Python ints."""
        return self._parents

    def forward(
        self,
        shape: torch.Tensor,
        expression: torch.Tensor,
        pose: torch.Tensor,
        neck_pose: Optional[torch.Tensor] = None,
        eye_pose: Optional[torch.Tensor] = None,
        landmarks: bool = True,
    ) -> FlameOutput:
        """shape [B, n_shape], expression [B, n_exp], pose [B, 6] = global(3) | jaw(3) axis-angle,
        neck_pose [B, 3] and eye_pose [B, 6] (left | right) default to zeros as in DECA.
        landmarks=False: skip the landmarks (None in the output) where only the mesh is wanted."""
        ref = self.v_template
        _check("pose", pose, (None, 6), ref)
        B = pose.shape[0]
        _check("shape", shape, (B, self.n_shape), ref)
        _check("expression", expression, (B, self.n_exp), ref)
        if neck_pose is None:
            neck_pose = pose.new_zeros(B, 3)
        else:
            _check("neck_pose", neck_pose, (B, 3), ref)
        if eye_pose is None:
            eye_pose = pose.new_zeros(B, 6)
        else:
            _check("eye_pose", eye_pose, (B, 6), ref)

        full_pose = torch.cat([pose[:, :3], neck_pose, pose[:, 3:], eye_pose], dim=1)  # [B, 15]
        betas = torch.cat([shape, expression], dim=1)
        vertices, joints = self.lbs_impl(
            betas, full_pose, self.v_template, self.shapedirs, self.posedirs,
            self.J_regressor, self._parents, self.lbs_weights,
        )
        if not landmarks:
            return FlameOutput(vertices=vertices, joints=joints, landmarks2d=None, landmarks3d=None)
        rows = dynamic_contour_rows(full_pose, self._parents)
        lmk_idx = torch.cat(
            [self.dynamic_lmk_faces_idx[rows], self.static_lmk_faces_idx.expand(B, -1)], dim=1
        )
        lmk_bary = torch.cat(
            [self.dynamic_lmk_bary_coords[rows], self.static_lmk_bary_coords.expand(B, -1, -1)], dim=1
        )
        landmarks2d = vertices_to_landmarks(vertices, self.faces, lmk_idx, lmk_bary)
        landmarks3d = vertices_to_landmarks(vertices, self.faces, self.full_lmk_faces_idx, self.full_lmk_bary_coords)
        return FlameOutput(vertices=vertices, joints=joints, landmarks2d=landmarks2d, landmarks3d=landmarks3d)
