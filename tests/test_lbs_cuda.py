"""The fused CUDA LBS kernel (capture/lbs_cuda) against the torch reference `capture.flame.lbs`.

Without a GPU three things are still checked: the kernel source compiles with nvcc (where nvcc exists),
the launcher's argument list and limits match the kernel's, and a numpy emulation of exactly what one
kernel thread computes -- reading the very arrays the glue hands the kernel, by the kernel's own index
arithmetic -- reproduces torch lbs. The last proves the layouts and the joint precomputation on CPU.
The `gpu` tests run the kernel itself (pycuda or CuPy) on a CUDA machine.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from capture.assets.pack import FlameModel, LandmarkEmbedding
from capture.flame import FLAME, lbs
from capture.lbs_cuda import (
    CudaLBS,
    CudaLBSError,
    CudaLBSUnavailable,
    cuda_lbs_available,
    pack_model,
    skinning_inputs,
)
from capture.lbs_cuda import launcher as L

PARENTS = (-1, 0, 1, 1, 1)  # FLAME: root, neck, jaw, left eye, right eye
TOL = 1e-5


def random_model(V: int, K: int, seed: int = 0, J: int = 5, parents=PARENTS) -> dict[str, torch.Tensor]:
    """lbs's model arguments at a head-like scale (metres): template ~0.1, bases ~1e-3 per unit coefficient."""
    g = torch.Generator().manual_seed(seed)
    v_template = 0.1 * torch.randn(V, 3, generator=g)
    shapedirs = 1e-3 * torch.randn(V, 3, K, generator=g)
    posedirs_T = 1e-3 * torch.randn((J - 1) * 9, V * 3, generator=g)
    J_regressor = torch.rand(J, V, generator=g)
    J_regressor /= J_regressor.sum(1, keepdim=True)
    lbs_weights = torch.softmax(3 * torch.randn(V, J, generator=g), dim=1)
    return dict(v_template=v_template, shapedirs=shapedirs, posedirs_T=posedirs_T, J_regressor=J_regressor,
                parents=parents, lbs_weights=lbs_weights)


def random_inputs(B: int, K: int, J: int = 5, seed: int = 1, angle: float = np.pi):
    """betas ~ N(0, 2) and axis-angle pose with angles up to `angle` (large rotations)."""
    g = torch.Generator().manual_seed(seed)
    betas = 2 * torch.randn(B, K, generator=g)
    axis = torch.nn.functional.normalize(torch.randn(B, J, 3, generator=g), dim=-1)
    theta = angle * (2 * torch.rand(B, J, 1, generator=g) - 1)
    return betas, (axis * theta).reshape(B, J * 3)


def torch_lbs(model: dict, betas, pose):
    return lbs(betas, pose, model["v_template"], model["shapedirs"], model["posedirs_T"], model["J_regressor"],
               model["parents"], model["lbs_weights"])


def _flame_module(V: int = 400, seed: int = 0) -> FLAME:
    """A FLAME module on random but well-formed arrays (FLAME's shapes: 400 components, 5 joints)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    J_reg = rng.random((5, V)).astype(f32)
    weights = np.exp(3 * rng.standard_normal((V, 5))).astype(f32)
    flame = FlameModel(
        v_template=(0.1 * rng.standard_normal((V, 3))).astype(f32),
        shapedirs=(1e-3 * rng.standard_normal((V, 3, 400))).astype(f32),
        posedirs=(1e-3 * rng.standard_normal((V, 3, 36))).astype(f32),
        J_regressor=J_reg / J_reg.sum(1, keepdims=True),
        weights=weights / weights.sum(1, keepdims=True),
        kintree_table=np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        faces=rng.integers(0, V, (2 * V, 3)).astype(np.int64),
    )
    F = flame.faces.shape[0]
    bary = rng.dirichlet(np.ones(3), size=79 * 17).astype(f32)
    lmk = LandmarkEmbedding(
        static_lmk_faces_idx=rng.integers(0, F, 51), static_lmk_bary_coords=bary[:51],
        dynamic_lmk_faces_idx=rng.integers(0, F, (79, 17)), dynamic_lmk_bary_coords=bary.reshape(79, 17, 3),
        full_lmk_faces_idx=rng.integers(0, F, 68), full_lmk_bary_coords=bary[:68],
    )
    return FLAME.from_arrays(flame, lmk, n_shape=100, n_exp=50)


# ----------------------------------------------------------------------------------------------
# CPU emulation of the kernel
# ----------------------------------------------------------------------------------------------


def emulate_kernel(v_template, shapedirs, posedirs, lbs_weights, betas, pose_feature, transforms, B, V, K, J):
    """What flame_lbs_skin computes, vectorised over the thread index v: flat float32 buffers, the kernel's
    index arithmetic, the kernel's order of accumulation."""
    f32 = np.float32
    P = (J - 1) * 9
    v = np.arange(V)
    out = np.full(B * V * 3, np.nan, dtype=f32)
    for b in range(B):  # blockIdx.y
        s_betas = betas[b * K:(b + 1) * K]  # shared-memory staging
        s_pose = pose_feature[b * P:(b + 1) * P]
        s_T = transforms[b * J * 12:(b + 1) * J * 12]

        def blend_planar(basis, coef, n):
            x = np.zeros(V, f32)
            y = np.zeros(V, f32)
            z = np.zeros(V, f32)
            for i in range(n):
                c = coef[i]
                x = x + c * basis[(i * 3 + 0) * V + v]
                y = y + c * basis[(i * 3 + 1) * V + v]
                z = z + c * basis[(i * 3 + 2) * V + v]
            return x, y, z

        dx, dy, dz = blend_planar(shapedirs, s_betas, K)
        x = v_template[v] + dx
        y = v_template[V + v] + dy
        z = v_template[2 * V + v] + dz
        px, py, pz = blend_planar(posedirs, s_pose, P)
        x, y, z = x + px, y + py, z + pz
        T = np.zeros((12, V), f32)
        for j in range(J):
            w = lbs_weights[j * V + v]
            for i in range(12):
                T[i] = T[i] + w * s_T[j * 12 + i]
        base = (b * V + v) * 3
        out[base + 0] = T[0] * x + T[1] * y + T[2] * z + T[3]
        out[base + 1] = T[4] * x + T[5] * y + T[6] * z + T[7]
        out[base + 2] = T[8] * x + T[9] * y + T[10] * z + T[11]
    return out.reshape(B, V, 3)


def emulated_lbs(model: dict, betas, pose):
    """The CudaLBS pipeline with the launch replaced by `emulate_kernel` on the same buffers."""
    m = pack_model(model["v_template"], model["shapedirs"], model["posedirs_T"], model["J_regressor"],
                   model["parents"], model["lbs_weights"])
    pose_feature, transforms, joints = skinning_inputs(betas, pose, m.J_template, m.J_dirs, m.parents)
    B, V, K, J = betas.shape[0], m.n_vertices, m.n_components, m.n_joints
    args = L.SkinArgs(v_template=m.v_template, shapedirs=m.shapedirs, posedirs=m.posedirs,
                      lbs_weights=m.lbs_weights, betas=betas.contiguous(), pose_feature=pose_feature,
                      transforms=transforms, vertices=torch.empty(B, V, 3))
    flat = [getattr(args, name) for name in L.KERNEL_ARGS[:7]]
    for name, t in zip(L.KERNEL_ARGS, flat):  # the kernel indexes raw memory: layouts must be dense
        assert t.dtype == torch.float32 and t.is_contiguous(), name
    vertices = emulate_kernel(*[t.numpy().ravel() for t in flat], B, V, K, J)
    return torch.from_numpy(vertices), joints


@pytest.mark.parametrize("B,V,K", [(1, 50, 7), (3, 211, 40), (2, 301, 150)])
def test_emulated_kernel_matches_torch_lbs(B, V, K):
    model = random_model(V, K, seed=V)
    betas, pose = random_inputs(B, K, seed=B + K)
    ref_v, ref_j = torch_lbs(model, betas, pose)
    emu_v, emu_j = emulated_lbs(model, betas, pose)
    assert ref_v.abs().max() > 0.05  # the comparison is not between near-zero arrays
    torch.testing.assert_close(emu_v, ref_v, atol=TOL, rtol=0)
    torch.testing.assert_close(emu_j, ref_j, atol=TOL, rtol=0)


def test_emulated_kernel_handles_other_trees():
    parents = (-1, 0, 0, 2)  # 4 joints, a different branching
    model = random_model(120, 12, seed=5, J=4, parents=parents)
    betas, pose = random_inputs(2, 12, J=4, seed=9)
    ref_v, ref_j = torch_lbs(model, betas, pose)
    emu_v, emu_j = emulated_lbs(model, betas, pose)
    torch.testing.assert_close(emu_v, ref_v, atol=TOL, rtol=0)
    torch.testing.assert_close(emu_j, ref_j, atol=TOL, rtol=0)


def test_emulated_kernel_on_flame_module_buffers():
    """The buffers CudaLBS.from_flame packs (FLAME's 150 DECA components, 5 joints) through the emulation."""
    flame = _flame_module(V=300)
    model = dict(v_template=flame.v_template, shapedirs=flame.shapedirs, posedirs_T=flame.posedirs,
                 J_regressor=flame.J_regressor, parents=flame.joint_parents, lbs_weights=flame.lbs_weights)
    betas, pose = random_inputs(2, 150, seed=21)
    ref_v, ref_j = torch_lbs(model, betas, pose)
    emu_v, emu_j = emulated_lbs(model, betas, pose)
    torch.testing.assert_close(emu_v, ref_v, atol=TOL, rtol=0)
    torch.testing.assert_close(emu_j, ref_j, atol=TOL, rtol=0)


def test_joints_need_no_pass_over_vertices():
    """J_template + J_dirs . betas equals regressing the shaped template, done in float64 by hand."""
    model = random_model(80, 10, seed=3)
    m = pack_model(model["v_template"], model["shapedirs"], model["posedirs_T"], model["J_regressor"],
                   model["parents"], model["lbs_weights"])
    betas = torch.randn(4, 10, generator=torch.Generator().manual_seed(4))
    v_shaped = model["v_template"].double() + torch.einsum("bk,vck->bvc", betas.double(), model["shapedirs"].double())
    expected = torch.einsum("jv,bvc->bjc", model["J_regressor"].double(), v_shaped)
    got = m.J_template + torch.einsum("jck,bk->bjc", m.J_dirs, betas)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)


def test_packed_layouts_by_hand():
    """Spot values: planar layouts put the vertex index fastest."""
    model = random_model(30, 4, seed=8)
    m = pack_model(model["v_template"], model["shapedirs"], model["posedirs_T"], model["J_regressor"],
                   model["parents"], model["lbs_weights"])
    v, c, k, p, j = 17, 2, 3, 35, 4
    assert m.v_template[c, v] == model["v_template"][v, c]
    assert m.shapedirs[k, c, v] == model["shapedirs"][v, c, k]
    assert m.posedirs[p, c, v] == model["posedirs_T"][p, v * 3 + c]
    assert m.lbs_weights[j, v] == model["lbs_weights"][v, j]


# ----------------------------------------------------------------------------------------------
# Kernel source: compiles, matches the launcher
# ----------------------------------------------------------------------------------------------

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH (CUDA toolkit not installed)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernel_compiles_with_nvcc(arch, tmp_path):
    cubin = tmp_path / f"lbs_{arch}.cubin"
    r = subprocess.run([NVCC, "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-o", str(cubin),
                        str(L.KERNEL_PATH)], capture_output=True, text=True, timeout=120)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    assert cubin.stat().st_size > 0
    assert re.search(r"0 bytes spill stores, 0 bytes spill loads", log), log
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    assert regs <= 64, f"{regs} registers: occupancy budget is 64 per thread\n{log}"
    ptx = tmp_path / "lbs.ptx"
    r = subprocess.run([NVCC, "--ptx", f"-arch={arch}", "-o", str(ptx), str(L.KERNEL_PATH)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f".entry {L.KERNEL_NAME}(" in ptx.read_text()


def _kernel_params() -> list[str]:
    src = L.kernel_source()
    sig = re.search(rf'extern "C" __global__ void {L.KERNEL_NAME}\((.*?)\)\s*{{', src, re.S).group(1)
    return [re.search(r"(\w+)\s*$", p.strip()).group(1) for p in sig.split(",")]


def test_launcher_argument_order_matches_kernel_signature():
    assert tuple(_kernel_params()) == L.KERNEL_ARGS


def test_launcher_limits_match_kernel_shared_memory():
    src = L.kernel_source()
    assert int(re.search(r"#define LBS_MAX_K (\d+)", src).group(1)) == L.MAX_K
    assert int(re.search(r"#define LBS_MAX_J (\d+)", src).group(1)) == L.MAX_J


def test_kernel_source_needs_no_headers():
    """NVRTC (CuPy) has no standard headers: the source must stand alone."""
    assert not re.search(r"^\s*#\s*include", L.kernel_source(), re.M)


# ----------------------------------------------------------------------------------------------
# Glue: checks and errors (CPU)
# ----------------------------------------------------------------------------------------------


def test_check_tensor_names_the_tensor():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"betas is torch.float64"):
        L.check_tensor("betas", torch.zeros(2, 3, dtype=torch.float64), (2, 3), cpu)
    with pytest.raises(ValueError, match=r"shapedirs must be \[4, 3, 10\], found \[4, 3, 9\]"):
        L.check_tensor("shapedirs", torch.zeros(4, 3, 9), (4, 3, 10), cpu)
    with pytest.raises(ValueError, match=r"transforms is not contiguous.*transforms.contiguous\(\)"):
        L.check_tensor("transforms", torch.zeros(12, 2).T, (2, 12), cpu)
    with pytest.raises(ValueError, match=r"vertices is on cpu, expected cuda:0"):
        L.check_tensor("vertices", torch.zeros(1), (1,), torch.device("cuda", 0))
    with pytest.raises(TypeError, match=r"pose_feature must be a torch.Tensor"):
        L.check_tensor("pose_feature", np.zeros(3), (3,), cpu)


def test_skin_args_refuse_cpu_tensors():
    z = torch.zeros
    args = L.SkinArgs(z(3, 10), z(2, 3, 10), z(36, 3, 10), z(5, 10), z(1, 2), z(1, 36), z(1, 5, 12), z(1, 10, 3))
    with pytest.raises(ValueError, match="v_template is on cpu; the kernel needs CUDA tensors"):
        args.check()


def test_check_status_uses_symbolic_names():
    L.check_status(0, "cuLaunchKernel")
    with pytest.raises(CudaLBSError, match=r"cuLaunchKernel failed with CUDA_ERROR_ILLEGAL_ADDRESS \(700\)"):
        L.check_status(700, "cuLaunchKernel")
    with pytest.raises(CudaLBSError, match=r"CUresult 12345"):
        L.check_status(12345, "cuModuleLoadData")


def test_library_exceptions_are_translated():
    class FakeCupyError(RuntimeError):  # CuPy's CUDADriverError carries .status
        status = 701

    with pytest.raises(CudaLBSError, match="launch failed with CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"):
        with L.translate_errors("launch"):
            raise FakeCupyError("too many resources requested")
    with pytest.raises(CudaLBSError, match="load failed with CUDA_ERROR_NO_BINARY_FOR_GPU"):
        with L.translate_errors("load"):
            raise RuntimeError("cuModuleLoadDataEx failed: no kernel image is available ... "
                               "CUDA_ERROR_NO_BINARY_FOR_GPU")
    with pytest.raises(CudaLBSError, match=r"launch failed with CUDA_ERROR_ILLEGAL_ADDRESS"):
        with L.translate_errors("launch"):  # pycuda words it like cuGetErrorString
            raise RuntimeError("cuLaunchKernel failed: an illegal memory access was encountered (illegal address)")
    with pytest.raises(ValueError, match="bad shape"):  # our own checks pass through untouched
        with L.translate_errors("launch"):
            raise ValueError("bad shape")


def test_pack_model_names_bad_inputs():
    model = random_model(20, 4)
    with pytest.raises(ValueError, match=r"posedirs_T must be \[\(J-1\)\*9, V\*3\] = \[36, 60\]"):
        pack_model(model["v_template"], model["shapedirs"], model["posedirs_T"][:, :57], model["J_regressor"],
                   PARENTS, model["lbs_weights"])
    with pytest.raises(ValueError, match=r"lbs_weights must be \[V, J\]"):
        pack_model(model["v_template"], model["shapedirs"], model["posedirs_T"], model["J_regressor"],
                   PARENTS, model["lbs_weights"].T)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_unavailable_without_cuda():
    ok, reason = cuda_lbs_available()
    assert not ok and "CUDA" in reason
    model = random_model(20, 4)
    with pytest.raises(CudaLBSUnavailable, match="needs a CUDA device"):
        CudaLBS(**model)
    with pytest.raises(CudaLBSUnavailable, match="capture.flame.lbs"):
        L.pick_launcher(torch.device("cuda", 0))


# ----------------------------------------------------------------------------------------------
# GPU: the kernel itself
# ----------------------------------------------------------------------------------------------


def _launchers() -> list[str]:
    found, _ = L.available_launchers() if torch.cuda.is_available() else ([], "")
    return found


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 8])
def test_cuda_lbs_matches_torch_lbs(B):
    launchers = _launchers()
    if not launchers:
        pytest.skip(cuda_lbs_available()[1])
    model = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in random_model(5023, 150, seed=2).items()}
    betas, pose = (t.cuda() for t in random_inputs(B, 150, seed=B))
    ref_v, ref_j = torch_lbs(model, betas, pose)
    for name in launchers:
        impl = CudaLBS(**model, launcher=name)
        with torch.no_grad():
            v, j = impl(betas, pose)
        torch.cuda.synchronize()
        torch.testing.assert_close(v, ref_v, atol=TOL, rtol=0, msg=lambda m, name=name: f"[{name}] {m}")
        torch.testing.assert_close(j, ref_j, atol=TOL, rtol=0, msg=lambda m, name=name: f"[{name}] {m}")


@pytest.mark.gpu
def test_cuda_lbs_from_flame_is_a_drop_in_and_follows_the_stream():
    launchers = _launchers()
    if not launchers:
        pytest.skip(cuda_lbs_available()[1])
    flame = _flame_module().cuda()
    betas, pose = (t.cuda() for t in random_inputs(8, 150, seed=11))
    ref_v, ref_j = lbs(betas, pose, flame.v_template, flame.shapedirs, flame.posedirs, flame.J_regressor,
                       flame.joint_parents, flame.lbs_weights)
    for name in launchers:
        impl = CudaLBS.from_flame(flame, launcher=name)
        assert impl.launcher_name == name
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # a non-default stream: the launch must follow it
            v, j = impl(betas, pose, flame.v_template, flame.shapedirs, flame.posedirs, flame.J_regressor,
                        flame.joint_parents, flame.lbs_weights)
            v = v.clone()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        torch.testing.assert_close(v, ref_v, atol=TOL, rtol=0, msg=lambda m, name=name: f"[{name}] {m}")
        torch.testing.assert_close(j, ref_j, atol=TOL, rtol=0, msg=lambda m, name=name: f"[{name}] {m}")
        with pytest.raises(ValueError, match="shapedirs is not the tensor this CudaLBS was built from"):
            impl(betas, pose, flame.v_template, flame.shapedirs.clone())
        with pytest.raises(ValueError, match="no backward"):
            impl(betas.clone().requires_grad_(), pose)
        with pytest.raises(ValueError, match=r"betas is torch.float32 on cpu"):
            impl(betas.cpu(), pose)
