"""Linear blend skinning for FLAME on the CPU in one compiled pass: a drop-in for `capture.flame.lbs`.

    lbs_impl = CpuLBS.from_flame(flame)            # FLAME module on the CPU, float32
    vertices, joints = lbs_impl(betas, pose)       # [B, V, 3], [B, J, 3]

The CPU twin of `capture.lbs_cuda.CudaLBS`: the model goes to the same planar layouts once
(`capture.lbs_cuda.pack_model`, which also precomputes the rest joints' basis); per call, one compiled pass does
the per-joint half as `capture.lbs_cuda.skinning_inputs` does it in torch (rest joints, Rodrigues, the kinematic
chain, the pose feature) and the per-vertex half as lbs_kernel.cu does it (blendshapes, pose correctives,
skinning; each loop runs over the vertices of a plane, so that it vectorises). torch's `lbs` is ~40 small tensor
operations (a frame's FLAME call was ~1.6 ms in the pipeline, most of it their overhead with the GIL held);
here it is one call that releases the GIL (0.63-0.74 -> 0.22-0.30 ms a frame, FLAME's 5023 vertices, hot). Same
math as `lbs` up to float32 rounding (tests/test_lbs_cpu.py). Forward only: inputs that require grad are refused
(fit with torch `lbs`). `CpuLBS.available()` says whether the pass compiled here.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import torch

from .compiled import CompiledKernel
from .lbs_cuda import PackedModel, pack_model

_SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* v_template [3, V], shapedirs [K, 3, V], posedirs [P, 3, V], lbs_weights [J, V] (pack_model's layouts);
   betas [B, K], pose_feature [B, P], transforms [B, J, 12]; out vertices [B, V, 3]; work 15 V floats. */
void capture_lbs_skin(int64_t B, int64_t V, int64_t K, int64_t J, const float *v_template, const float *shapedirs,
                      const float *posedirs, const float *lbs_weights, const float *betas, const float *pose_feature,
                      const float *transforms, float *vertices, float *work)
{
    const int64_t P = (J - 1) * 9;
    /* d: the shaped then posed vertices, planar [3, V]; q: the pose offsets [3, V], then the same memory holds
       M, each vertex's blended 3 x 4 transform, planar [12, V] */
    float *d = work, *q = work + 3 * V, *M = work + 3 * V;
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = 0; i < 6 * V; ++i) work[i] = 0.0f;
        for (int64_t k = 0; k < K; ++k) {  /* sum_k betas[k] shapedirs[k], in component order */
            const float c = betas[b * K + k];
            const float *row = shapedirs + 3 * V * k;
            for (int64_t i = 0; i < 3 * V; ++i) d[i] = fmaf(c, row[i], d[i]);
        }
        for (int64_t p = 0; p < P; ++p) {  /* sum_p pose_feature[p] posedirs[p] */
            const float c = pose_feature[b * P + p];
            const float *row = posedirs + 3 * V * p;
            for (int64_t i = 0; i < 3 * V; ++i) q[i] = fmaf(c, row[i], q[i]);
        }
        for (int64_t i = 0; i < 3 * V; ++i) d[i] = (v_template[i] + d[i]) + q[i];
        for (int64_t i = 0; i < 12 * V; ++i) M[i] = 0.0f;
        const float *Tb = transforms + 12 * J * b;
        for (int64_t j = 0; j < J; ++j) {
            const float *w = lbs_weights + V * j;
            for (int e = 0; e < 12; ++e) {
                const float t = Tb[12 * j + e];
                float *m = M + V * e;
                for (int64_t v = 0; v < V; ++v) m[v] = fmaf(w[v], t, m[v]);
            }
        }
        float *out = vertices + 3 * V * b;
        const float *x = d, *y = d + V, *z = d + 2 * V;
        for (int64_t v = 0; v < V; ++v) {
            for (int c = 0; c < 3; ++c) {
                const float *r = M + 4 * V * c;
                out[3 * v + c] = r[v] * x[v] + r[V + v] * y[v] + r[2 * V + v] * z[v] + r[3 * V + v];
            }
        }
    }
}
/* The per-joint half, as capture.lbs_cuda.skinning_inputs computes it in torch (float32): rest joints
   J_template [J, 3] + J_dirs [J, 3, K] . betas; Rodrigues of each joint's axis-angle (capture.flame.rodrigues:
   a = sin t / t, b = 2 (sin(t/2) / t)^2, their Taylor series below t = 1e-3); pose_feature = (R_j - I) of
   joints 1..J-1; the chain down `parents`; transforms [J, 12] = [R | posed - R rest] of each joint, joints
   [J, 3] posed. For one batch item. */
static void joint_half(int64_t K, int64_t J, const int64_t *parents, const float *J_template, const float *J_dirs,
                       const float *betas, const float *pose, float *pose_feature, float *transforms, float *joints)
{
    float rest[8 * 3], R[8 * 9], W[8 * 9], t[8 * 3];
    for (int64_t j = 0; j < J; ++j)
        for (int c = 0; c < 3; ++c) {
            const float *row = J_dirs + (3 * j + c) * K;
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) acc = fmaf(row[k], betas[k], acc);
            rest[3 * j + c] = J_template[3 * j + c] + acc;
        }
    for (int64_t j = 0; j < J; ++j) {
        const float x = pose[3 * j], y = pose[3 * j + 1], z = pose[3 * j + 2];
        const float t2 = x * x + y * y + z * z;
        float a, b;
        if (t2 < 1e-6f) {
            a = 1.0f - t2 / 6.0f;
            b = 0.5f - t2 / 24.0f;
        } else {
            const float th = sqrtf(t2), h = sinf(0.5f * th) / th;
            a = sinf(th) / th;
            b = 2.0f * h * h;
        }
        const float Kx[9] = {0.0f, -z, y, z, 0.0f, -x, -y, x, 0.0f};
        float *Rj = R + 9 * j;
        for (int r = 0; r < 3; ++r)
            for (int c = 0; c < 3; ++c) {
                const float kk = Kx[3 * r] * Kx[c] + Kx[3 * r + 1] * Kx[3 + c] + Kx[3 * r + 2] * Kx[6 + c];
                Rj[3 * r + c] = ((r == c ? 1.0f : 0.0f) + a * Kx[3 * r + c]) + b * kk;
            }
        if (j > 0)
            for (int i = 0; i < 9; ++i) pose_feature[9 * (j - 1) + i] = Rj[i] - (i % 4 == 0 ? 1.0f : 0.0f);
    }
    for (int64_t j = 0; j < J; ++j) {
        float *Wj = W + 9 * j, *tj = t + 3 * j;
        if (j == 0) {
            for (int i = 0; i < 9; ++i) Wj[i] = R[i];
            for (int c = 0; c < 3; ++c) tj[c] = rest[c];
            continue;
        }
        const int64_t p = parents[j];
        const float *Wp = W + 9 * p, *Rj = R + 9 * j;
        float rel[3];
        for (int c = 0; c < 3; ++c) rel[c] = rest[3 * j + c] - rest[3 * p + c];
        for (int r = 0; r < 3; ++r) {
            for (int c = 0; c < 3; ++c)
                Wj[3 * r + c] = Wp[3 * r] * Rj[c] + Wp[3 * r + 1] * Rj[3 + c] + Wp[3 * r + 2] * Rj[6 + c];
            tj[r] = t[3 * p + r] + (Wp[3 * r] * rel[0] + Wp[3 * r + 1] * rel[1] + Wp[3 * r + 2] * rel[2]);
        }
    }
    for (int64_t j = 0; j < J; ++j) {
        const float *Wj = W + 9 * j, *rj = rest + 3 * j;
        for (int r = 0; r < 3; ++r) {
            float *T = transforms + 12 * j + 4 * r;
            for (int c = 0; c < 3; ++c) T[c] = Wj[3 * r + c];
            T[3] = t[3 * j + r] - (Wj[3 * r] * rj[0] + Wj[3 * r + 1] * rj[1] + Wj[3 * r + 2] * rj[2]);
            joints[3 * j + r] = t[3 * j + r];
        }
    }
}

/* Both halves for B items: parents [J] (parents[0] = -1, parents[j] < j), J <= 8; pose [B, J * 3] axis-angle;
   out vertices [B, V, 3], joints [B, J, 3]; work (15 V + 12 J + 9 J) floats per call. */
void capture_lbs(int64_t B, int64_t V, int64_t K, int64_t J, const int64_t *parents, const float *J_template,
                 const float *J_dirs, const float *v_template, const float *shapedirs, const float *posedirs,
                 const float *lbs_weights, const float *betas, const float *pose, float *vertices, float *joints,
                 float *work)
{
    float *pose_feature = work + 15 * V, *transforms = pose_feature + 9 * J;
    for (int64_t b = 0; b < B; ++b) {
        joint_half(K, J, parents, J_template, J_dirs, betas + K * b, pose + 3 * J * b, pose_feature, transforms,
                   joints + 3 * J * b);
        capture_lbs_skin(1, V, K, J, v_template, shapedirs, posedirs, lbs_weights, betas + K * b, pose_feature,
                         transforms, vertices + 3 * V * b, work);
    }
}
"""

_p, _i64 = ctypes.c_void_p, ctypes.c_int64
_KERNEL = CompiledKernel("lbs_cpu", _SOURCE, native=True, functions={
    "capture_lbs_skin": (None, [_i64] * 4 + [_p] * 9),
    "capture_lbs": (None, [_i64] * 4 + [_p] * 12),
})


class CpuLBS:
    """`capture.flame.lbs` for one fixed model (float32, CPU), the per-vertex half compiled. Build it from a
    `capture.flame.FLAME` module (`CpuLBS.from_flame(flame)`, e.g. the shaped model of `FLAME.with_identity`)."""

    def __init__(self, v_template: torch.Tensor, shapedirs: torch.Tensor, posedirs_T: torch.Tensor,
                 J_regressor: torch.Tensor, parents, lbs_weights: torch.Tensor):
        if v_template.device.type != "cpu":
            raise ValueError(f"CpuLBS needs the model on the CPU, found {v_template.device}")
        error = _KERNEL.error()
        if error:
            raise RuntimeError(f"CpuLBS: the compiled pass is unavailable ({error}); use capture.flame.lbs")
        self.model: PackedModel = pack_model(v_template, shapedirs, posedirs_T, J_regressor, parents, lbs_weights)
        self._sources = tuple(t.data_ptr() for t in (v_template, shapedirs, posedirs_T, J_regressor, lbs_weights))
        self._parents = torch.tensor(self.model.parents, dtype=torch.int64)

    @staticmethod
    def available() -> Optional[str]:
        """None when the compiled pass is available here (compiling it on first use), else why not."""
        return _KERNEL.error()

    @classmethod
    def from_flame(cls, flame: torch.nn.Module) -> "CpuLBS":
        return cls(flame.v_template, flame.shapedirs, flame.posedirs, flame.J_regressor, flame.joint_parents,
                   flame.lbs_weights)

    def __call__(self, betas: torch.Tensor, pose: torch.Tensor, v_template: Optional[torch.Tensor] = None,
                 shapedirs: Optional[torch.Tensor] = None, posedirs_T: Optional[torch.Tensor] = None,
                 J_regressor: Optional[torch.Tensor] = None, parents=None,
                 lbs_weights: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """betas [B, K], pose [B, J*3] float32 -> vertices [B, V, 3], joints [B, J, 3]. The model arguments let
        it stand where `lbs` is called; when given they must be the tensors it was built from."""
        given = (v_template, shapedirs, posedirs_T, J_regressor, lbs_weights)
        if any(t is not None and t.data_ptr() != s for t, s in zip(given, self._sources)):
            raise ValueError("CpuLBS: called with model tensors other than the ones it was built from")
        if torch.is_grad_enabled() and (betas.requires_grad or pose.requires_grad):
            raise ValueError("CpuLBS: betas/pose require grad but the pass has no backward; use capture.flame.lbs")
        m = self.model
        K, J, V = m.n_components, m.n_joints, m.n_vertices
        if betas.dim() != 2 or betas.shape[1] != K or pose.shape != (betas.shape[0], J * 3):
            raise ValueError(f"CpuLBS: betas must be [B, {K}] and pose [B, {J * 3}], found {list(betas.shape)} and "
                             f"{list(pose.shape)}")
        if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in (betas, pose)):
            raise ValueError("CpuLBS: betas and pose must be float32 CPU tensors")
        B = betas.shape[0]
        vertices, joints = torch.empty(B, V, 3), torch.empty(B, J, 3)
        work = torch.empty(15 * V + 21 * J)
        _KERNEL.function("capture_lbs")(
            B, V, K, J, *(t.data_ptr() for t in (self._parents, m.J_template, m.J_dirs, m.v_template, m.shapedirs,
                                                  m.posedirs, m.lbs_weights, betas.contiguous(), pose.contiguous(),
                                                  vertices, joints, work)))
        return vertices, joints
