"""The compiled CPU LBS pass (capture/lbs_cpu.py) against the torch reference `capture.flame.lbs`, which the
FLAME tests check against smplx: random head-scale models with large and tiny rotations, FLAME modules (the
full model and the shaped one the renderer poses), the refusals, and the renderer's use of it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from capture.flame import lbs
from capture.lbs_cpu import CpuLBS
from test_lbs_cuda import PARENTS, _flame_module, random_inputs, random_model, torch_lbs

pytestmark = pytest.mark.skipif(CpuLBS.available() is not None, reason=f"no C kernel: {CpuLBS.available()}")


def _cpu_lbs(model: dict) -> CpuLBS:
    return CpuLBS(model["v_template"], model["shapedirs"], model["posedirs_T"], model["J_regressor"],
                  model["parents"], model["lbs_weights"])


@pytest.mark.parametrize("angle", [np.pi, 1e-4, 0.0])
def test_matches_torch_lbs_on_random_models(angle):
    """Large rotations, rotations in Rodrigues' Taylor range (t < 1e-3) and none; batch 3, another tree."""
    for parents, seed in ((PARENTS, 0), ((-1, 0, 0, 2, 3), 5)):
        model = random_model(V=700, K=60, seed=seed, parents=parents)
        betas, pose = random_inputs(3, 60, seed=seed + 1, angle=angle)
        want_v, want_j = torch_lbs(model, betas, pose)
        got_v, got_j = _cpu_lbs(model)(betas, pose)
        assert got_v.shape == want_v.shape and got_j.shape == want_j.shape
        torch.testing.assert_close(got_v, want_v, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(got_j, want_j, atol=2e-6, rtol=1e-5)
        assert not torch.equal(got_v[0], got_v[1])


def test_stands_in_for_lbs_in_a_flame_module_and_its_shaped_model():
    flame = _flame_module()
    g = torch.Generator().manual_seed(3)
    shape, exp = torch.randn(2, 100, generator=g), torch.randn(2, 50, generator=g)
    pose = 0.3 * torch.randn(2, 6, generator=g)
    with torch.inference_mode():
        want = flame(shape, exp, pose)
        flame.lbs_impl = CpuLBS.from_flame(flame)
        got = flame(shape, exp, pose)
        for name in ("vertices", "joints", "landmarks2d", "landmarks3d"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=2e-6, rtol=1e-5)
        shaped = flame.with_identity(shape[:1])
        assert isinstance(shaped.lbs_impl, CpuLBS)  # rebuilt for the shaped buffers
        got1 = shaped(shape[:1, :0], exp[:1], pose[:1], landmarks=False)
        torch.testing.assert_close(got1.vertices, want.vertices[:1], atol=2e-6, rtol=1e-4)


def test_refuses_what_it_cannot_do():
    model = random_model(V=50, K=8)
    impl = _cpu_lbs(model)
    betas, pose = random_inputs(2, 8)
    with pytest.raises(ValueError, match="grad"):
        impl(betas.requires_grad_(True), pose)
    with pytest.raises(ValueError, match=r"betas must be \[B, 8\]"):
        impl(torch.zeros(2, 9), pose)
    with pytest.raises(ValueError, match="float32"):
        impl(torch.zeros(2, 8, dtype=torch.float64), pose.double())
    other = random_model(V=50, K=8, seed=4)
    with pytest.raises(ValueError, match="built from"):
        impl(torch.zeros(2, 8), pose, other["v_template"])
    vertices, _ = impl(torch.zeros(2, 8), pose, model["v_template"])  # its own tensors are fine
    torch.testing.assert_close(vertices, torch_lbs(model, torch.zeros(2, 8), pose)[0], atol=2e-6, rtol=1e-5)


def test_the_cpu_renderer_poses_with_it(demo_pack):
    from capture.avatar import demo_identity
    from capture.deca import DECA
    from capture.retarget import AvatarRenderer

    deca = DECA(demo_pack)
    renderer = AvatarRenderer(deca, demo_identity(deca), "avatar", (360, 640))
    assert isinstance(renderer._flame.lbs_impl, CpuLBS)
    assert renderer.lbs_backend == "compiled CPU pass"  # what capture.video's first lines say
    assert AvatarRenderer(deca, demo_identity(deca), "avatar", (360, 640), reference=True).lbs_backend == "torch"
    codes = renderer.avatar.codes.replace(exp=torch.full((1, 50), 0.5), pose=torch.tensor([[0.1, 0.2, 0, 0.2, 0, 0]]))
    with torch.inference_mode():
        got = renderer._posed(codes)
        want = deca.assets.flame(codes.shape, codes.exp, codes.pose).vertices  # torch lbs, the full model
    assert deca.assets.flame.lbs_impl is lbs
    torch.testing.assert_close(got, want, atol=5e-6, rtol=1e-4)
