"""Appearance: SH shading by hand, albedo layout, UV sampling, displacement -> detail normals, camera."""
from __future__ import annotations

import math

import numpy as np
import torch

from capture.appearance import UVSampler, albedo_from_model, grid_triangles, sh_shading
from capture.assets.pack import AlbedoModel
from capture.projection import crop_to_image_ndc, orthographic
from capture.reference import displacement_to_normals, vertex_normals, world2uv
from meshes import front_hemisphere

# docs/formats.md 3.4, typed in from the document (independent of the module's own formulas)
C = [0.282095, 1.023327, 1.023327, 1.023327, 0.858086, 0.858086, 0.858086, 0.429043, 0.247708]


def test_sh_shading_matches_hand_computation():
    n = np.array([0.36, -0.48, 0.8])  # unit
    x, y, z = n
    basis = [1, x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1]
    rng = np.random.default_rng(0)
    light = rng.normal(size=(9, 3))
    expected = [sum(light[k, c] * C[k] * basis[k] for k in range(9)) for c in range(3)]
    got = sh_shading(torch.tensor(n, dtype=torch.float64)[None, None], torch.tensor(light)[None])[0, 0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    # the normal-map form agrees with the per-point form
    nmap = torch.tensor(n, dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    got_map = sh_shading(nmap, torch.tensor(light)[None])
    np.testing.assert_allclose(got_map[0, :, 1, 1].numpy(), expected, rtol=1e-5)


def test_albedo_model_layout_bgr_and_nearest_resize():
    r = 4
    mean = np.zeros((r, r, 3), np.float32)
    mean[0, 0] = (0.1, 0.2, 0.3)  # B, G, R at the top-left texel
    basis = np.zeros((r * r * 3, 50), np.float32)
    basis[(r * r - 1) * 3 + 2, 0] = 1.0  # component 0 raises R of the bottom-right texel
    model = AlbedoModel(kind="BFM", mean=mean.reshape(-1), basis=basis, resolution=r)
    tex = torch.zeros(1, 50)
    tex[0, 0] = 0.5
    out = albedo_from_model(model, tex, size=8)
    assert out.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), (0.3, 0.2, 0.1))  # RGB
    np.testing.assert_allclose(out[0, :, 7, 7].numpy(), (0.5, 0, 0))
    np.testing.assert_allclose(out[0, :, 1, 1].numpy(), (0.3, 0.2, 0.1))  # nearest: 2x2 blocks


def test_uv_sampler_reproduces_linear_attribute():
    verts, faces, uv = front_hemisphere()
    sampler = UVSampler.build(uv, faces, faces, size=64)
    out = world2uv(sampler, torch.as_tensor(verts)[None])  # [1, 3, 64, 64]
    cover = sampler.coverage
    # x varies linearly with u: x = 2u - 1, sampled at texel centres; row 0 is v = 1 (y = +top)
    cols = (np.arange(64) + 0.5) / 64
    expect_x = 2 * cols - 1
    got = out[0, 0].numpy()
    assert cover.float().mean() > 0.5
    np.testing.assert_allclose(got[cover.numpy()], np.broadcast_to(expect_x, (64, 64))[cover.numpy()], atol=1e-4)
    rows_y = out[0, 1].numpy()[:, 32]
    assert rows_y[cover.numpy()[:, 32]][0] > 0 > rows_y[cover.numpy()[:, 32]][-1]  # top row = +y


def test_zero_displacement_gives_coarse_normals_back():
    verts, faces, uv = front_hemisphere()
    v = torch.as_tensor(verts)[None]
    normals = vertex_normals(v, torch.as_tensor(faces))
    assert (normals[0, :, 2] > 0).all()  # outward for this winding
    sampler = UVSampler.build(uv, faces, faces, size=64)
    grid = grid_triangles(64)
    zero = torch.zeros(1, 1, 64, 64)
    # mask 0: exactly the coarse normal map
    maps = displacement_to_normals(zero, v, normals, sampler, torch.zeros(64, 64), torch.zeros(64, 64), grid)
    torch.testing.assert_close(maps.uv_detail_normals, maps.uv_coarse_normals)
    # mask 1: the grid normals of the undisplaced surface point the same way as the coarse normals
    maps = displacement_to_normals(zero, v, normals, sampler, torch.ones(64, 64), torch.zeros(64, 64), grid)
    inner = sampler.coverage.clone()
    inner[:6] = inner[-7:] = False
    inner[:, :3] = inner[:, -4:] = False
    inner &= torch.nn.functional.max_pool2d((~sampler.coverage).float()[None, None], 5, 1, 2)[0, 0] == 0
    coarse = torch.nn.functional.normalize(maps.uv_coarse_normals[0], dim=0)
    cos = (maps.uv_detail_normals[0] * coarse).sum(0)[inner]
    assert cos.numel() > 500 and cos.min() > 0.97 and cos.median() > 0.995
    # a bump displacement tilts the normals; the displacement map is uv_z + fixed
    bump = torch.zeros(1, 1, 64, 64)
    bump[..., 28:36, 28:36] = 0.05
    maps = displacement_to_normals(bump, v, normals, sampler, torch.ones(64, 64), torch.full((64, 64), 1e-3), grid)
    assert ((maps.uv_detail_normals[0] * coarse).sum(0)[inner]).min() < 0.9
    torch.testing.assert_close(maps.displacement_map, bump + 1e-3)


def test_grid_triangles_margins_and_count():
    tri = grid_triangles(16)
    assert tri.shape == ((16 - 1 - 4) * (16 - 1 - 10) * 2, 3)
    xs, ys = tri % 16, tri // 16
    assert xs.min() == 2 and xs.max() == 16 - 1 - 2 and ys.min() == 5 and ys.max() == 16 - 1 - 5


def test_orthographic_camera_flips_y_and_z():
    pts = torch.tensor([[[0.1, 0.2, 0.3]]])
    cam = torch.tensor([[2.0, 0.5, -0.1]])
    np.testing.assert_allclose(orthographic(pts, cam)[0, 0].numpy(), (1.2, -0.2, -0.6), rtol=1e-6)


def test_crop_ndc_back_to_image():
    from capture.crop import crop_transform

    T = torch.as_tensor(crop_transform((100, 80, 200, 200)), dtype=torch.float32)
    # the crop centre maps to the box centre; the crop's corners to the square's corners
    pts = torch.tensor([[[0.0, 0.0, 0.5], [-1.0, -1.0, 0.0]]])
    out = crop_to_image_ndc(pts, T, 224, (480, 640))
    px = (out[0, :, 0] + 1) * 640 / 2 - 0.5
    py = (out[0, :, 1] + 1) * 480 / 2 - 0.5
    side = int(((100 + 120) / 2) * 1.1 * 1.25)
    np.testing.assert_allclose([px[0].item(), py[0].item()], [150, 140], atol=0.6)
    np.testing.assert_allclose([px[1].item(), py[1].item()], [150 - side / 2, 140 - side / 2], atol=side / 223)
    assert math.isclose(out[0, 0, 2].item() / 0.5, (side / 223) * 224 / 640, rel_tol=1e-3)
