"""The drawing path (`capture.views`) against DECA's straightforward implementations (`capture.reference`).

On one fixed frame of the demo head (a posed expression, decoded by D_detail), every step the product takes is
compared with the oracle that does the same thing DECA's way: vertex normals, the detail normal map, and every
picture `DECA.decode` draws. Tolerances are float32 rounding of sums taken in another order.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from capture import reference
from capture.appearance import GRID_MARGINS
from capture.avatar import demo_identity
from capture.deca import DECA
from capture.model_assets import ModelAssets
from capture.projection import orthographic
from capture.render import covering_window, cpu_shading, get_rasterizer
from capture.views import detail_normal_map, draw_views, lit_pixels, mesh_normals


@pytest.fixture(scope="module")
def frame(demo_pack):
    deca = DECA(demo_pack, assets=ModelAssets.build(demo_pack))
    avatar = demo_identity(deca)
    gen = torch.Generator().manual_seed(7)
    codes = avatar.codes.replace(exp=0.8 * torch.randn(1, 50, generator=gen),
                                 pose=torch.tensor([[0.05, 0.25, 0.0, 0.12, 0.0, 0.0]]))
    with torch.inference_mode():
        vertices = deca.assets.flame(codes.shape, codes.exp, codes.pose).vertices
        uv_z = deca.displacement(codes)
    return deca, codes, vertices, uv_z


def test_normals_match_the_oracles(frame):
    deca, codes, vertices, uv_z = frame
    a = deca.assets
    normals = mesh_normals(a, vertices)
    torch.testing.assert_close(normals, reference.vertex_normals(vertices, a.faces), atol=2e-6, rtol=0)
    torch.testing.assert_close(a.uv_sampler.sample(vertices), reference.world2uv(a.uv_sampler, vertices),
                               atol=1e-6, rtol=0)
    product = detail_normal_map(a, uv_z, vertices, normals)
    oracle = reference.displacement_to_normals(uv_z, vertices, normals, a.uv_sampler, a.face_eye_mask,
                                               a.fixed_displacement, a.grid_faces).uv_detail_normals
    # Same sums in another order. Where a texel's grid triangles are tiny (their summed cross product below
    # F.normalize's eps of 1e-6, e.g. in the UV-compressed eye and lip corners) the map is not unit length and
    # keeps the sums' rounding, scaled up by 1 / eps: a few dozen texels differ by up to ~1e-4 there.
    diff = (product - oracle).abs().amax(1)
    assert float(diff.max()) < 1e-3
    assert float((diff > 1e-5).float().mean()) < 1e-3
    assert (a.face_eye_mask > 0.5).sum() > 1000 and uv_z.abs().max() > 1e-4  # real detail, not a flat map


def test_pictures_match_render_views(frame):
    deca, codes, vertices, uv_z = frame
    a = deca.assets
    normals = mesh_normals(a, vertices)
    screen = orthographic(vertices, codes.cam)
    screen_normals = mesh_normals(a, screen)
    normal_map = detail_normal_map(a, uv_z, vertices, normals)
    albedo = deca.albedo(codes)
    fragments = deca.rasterizer.rasterize(screen, a.faces, (224, 224))
    kw = dict(albedo_uv=albedo, light=codes.light, detail_normals_uv=normal_map)
    product = draw_views(fragments, a, normals, screen_normals, **kw)
    oracle = reference.render_views(deca.rasterizer, screen, a.faces, a.uv_ndc, a.uvfaces, normals, screen_normals,
                                    (224, 224), fragments=fragments, **kw)
    assert 0.1 < float(oracle.alpha.mean()) < 0.9
    torch.testing.assert_close(product.alpha, oracle.alpha, atol=0, rtol=0)
    # visible: screen normal z < 0.15, the same interpolation; a pixel exactly at the threshold could differ
    assert int((product.visible != oracle.visible).sum()) <= 2
    both = (product.visible == oracle.visible).expand(-1, 3, -1, -1)
    for name in ("albedo", "lit", "shape", "shape_detail"):
        p, o = getattr(product, name), getattr(oracle, name)
        if name.startswith("shape"):
            p, o = p[both], o[both]
        torch.testing.assert_close(p, o, atol=1e-5, rtol=1e-5, msg=name)
    # the product's picture (covered pixels only) is the same lit colour
    lit, alpha = lit_pixels(fragments, a.uv_face, albedo, normal_map, codes.light).images()
    torch.testing.assert_close(alpha, oracle.alpha, atol=0, rtol=0)
    torch.testing.assert_close(lit, oracle.lit, atol=1e-5, rtol=1e-5)


def test_decode_is_the_drawing_path_end_to_end(frame):
    """DECA.decode (product normals and detail map, draw_views) against the whole DECA-style chain."""
    deca, codes, vertices, uv_z = frame
    a = deca.assets
    rec = deca.decode(codes)
    normals = reference.vertex_normals(vertices, a.faces)
    screen = orthographic(vertices, codes.cam)
    maps = reference.displacement_to_normals(uv_z, vertices, normals, a.uv_sampler, a.face_eye_mask,
                                             a.fixed_displacement, a.grid_faces)
    oracle = reference.render_views(deca.rasterizer, screen, a.faces, a.uv_ndc, a.uvfaces, normals,
                                    reference.vertex_normals(screen, a.faces), (224, 224), albedo_uv=deca.albedo(codes),
                                    light=codes.light, detail_normals_uv=maps.uv_detail_normals)
    diff = (rec.uv_detail_normals - maps.uv_detail_normals).abs().amax(1)
    assert float(diff.max()) < 1e-3 and float((diff > 1e-5).float().mean()) < 1e-3  # see test_normals_...
    torch.testing.assert_close(rec.displacement_map, maps.displacement_map, atol=0, rtol=0)
    for name in ("alpha", "lit", "albedo"):
        p, o = getattr(rec.views, name), getattr(oracle, name)
        bytes_p, bytes_o = (p.clamp(0, 1) * 255 + 0.5).to(torch.uint8), (o.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        differ = (bytes_p != bytes_o)
        assert int(differ.sum()) <= 10, name  # a value at a rounding boundary, at most
        assert int((bytes_p.int() - bytes_o.int()).abs().max()) <= 1, name


@pytest.mark.skipif(cpu_shading.kernel_error() is not None, reason=f"no C kernel: {cpu_shading.kernel_error()}")
def test_compiled_lit_pixels_match_the_torch_steps():
    """The compiled CPU pass of `lit_pixels` against its torch steps: a batch of two frames sharing one albedo,
    maps of two sizes, UVs running past the maps' borders (grid_sample's zero padding), a window of the frame."""
    gen = torch.Generator().manual_seed(5)
    B, H, W = 2, 40, 56
    rast = get_rasterizer("cpu")
    x, y = torch.meshgrid(torch.linspace(-0.9, 0.7, 9), torch.linspace(-0.8, 0.9, 8), indexing="xy")
    grid = torch.stack([x, y, torch.zeros_like(x)], -1).reshape(-1, 3)
    ids = torch.arange(72).view(8, 9)
    faces = torch.cat([torch.stack([ids[:-1, :-1], ids[:-1, 1:], ids[1:, 1:]], -1).reshape(-1, 3),
                       torch.stack([ids[:-1, :-1], ids[1:, 1:], ids[1:, :-1]], -1).reshape(-1, 3)])
    vertices = torch.stack([grid, grid * 0.8 + 0.1])
    uv_face = (torch.rand(faces.shape[0], 3, 2, generator=gen) * 2.3 - 1.15)  # some beyond +-1
    albedo = torch.rand(1, 3, 16, 16, generator=gen)
    normals = torch.nn.functional.normalize(torch.randn(B, 3, 24, 24, generator=gen), dim=1)
    light = torch.randn(B, 9, 3, generator=gen)
    for window in (None, covering_window(vertices, (H, W))):
        fragments = rast.rasterize(vertices, faces, (H, W), window)
        assert cpu_shading.applies(fragments, uv_face, albedo, normals, light)
        fast = lit_pixels(fragments, uv_face, albedo, normals, light)
        slow = lit_pixels(fragments, uv_face, albedo, normals, light, kernel="torch")
        assert fast.index.numel() > 1000 and fast.size == slow.size == (H, W) and fast.batch == B
        assert torch.equal(fast.index, slow.index)
        torch.testing.assert_close(fast.colour, slow.colour, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="uv_face holds"):  # a layout of fewer faces than the fragments use
        lit_pixels(fragments, uv_face[:10], albedo, normals, light)
    # gradients wanted (training): the torch steps
    assert not cpu_shading.applies(fragments, uv_face, albedo.clone().requires_grad_(), normals, light)
    with pytest.raises(ValueError, match="kernel"):
        lit_pixels(fragments, uv_face, albedo, normals, light, kernel="c")


@pytest.mark.skipif(cpu_shading.kernel_error() is not None, reason=f"no C kernel: {cpu_shading.kernel_error()}")
def test_compiled_lit_pixels_16_at_a_time_match_one_at_a_time(frame, monkeypatch):
    """The kernel is built for this CPU: with AVX-512 it shades 16 pixels at a time (gathers, masked taps at
    the maps' borders). The portable build shades one at a time; both must give the same bits, on the demo
    head's frame and on UVs running past the maps' borders, in a batch of two and in a window."""
    from capture.compiled import CompiledKernel

    deca, codes, vertices, uv_z = frame
    a = deca.assets
    screen = orthographic(vertices, codes.cam)
    cases = [(deca.rasterizer.rasterize(screen, a.faces, (224, 224)), a.uv_face, deca.albedo(codes),
              detail_normal_map(a, uv_z, vertices, mesh_normals(a, vertices)), codes.light)]
    gen = torch.Generator().manual_seed(11)
    batch = torch.cat([screen, screen * 0.7], 0)
    window = covering_window(batch, (96, 80))
    cases.append((deca.rasterizer.rasterize(batch, a.faces, (96, 80), window),
                  torch.rand(a.uv_face.shape, generator=gen) * 2.4 - 1.2,  # beyond +-1: taps off the maps
                  torch.rand(1, 3, 32, 32, generator=gen),
                  torch.nn.functional.normalize(torch.randn(2, 3, 16, 16, generator=gen), dim=1),
                  torch.randn(2, 9, 3, generator=gen)))
    native = cpu_shading._KERNEL
    portable = CompiledKernel("cpu_shading_portable", native.source, native.functions)
    for fragments, uv_face, albedo, normals, light in cases:
        fast = cpu_shading.lit_pixels_c(fragments, uv_face, albedo, normals, light)
        monkeypatch.setattr(cpu_shading, "_KERNEL", portable)
        plain = cpu_shading.lit_pixels_c(fragments, uv_face, albedo, normals, light)
        monkeypatch.setattr(cpu_shading, "_KERNEL", native)
        assert fast[0].numel() > 500 and fast[2] == plain[2]
        assert torch.equal(fast[0], plain[0]) and torch.equal(fast[1], plain[1])


@pytest.mark.skipif(cpu_shading.kernel_error() is not None, reason=f"no C kernel: {cpu_shading.kernel_error()}")
def test_compiled_vertex_normals_are_the_torch_steps(frame):
    """The compiled pass of `mesh_normals` against `appearance.vertex_normals` on a batch of two posed frames:
    the same sums in the same order (on this project's machines the same bits; the tolerance allows a torch
    built without fused multiply-adds), and one that needs gradients takes the torch steps."""
    deca, codes, vertices, uv_z = frame
    a = deca.assets
    with torch.inference_mode():
        other = a.flame(codes.shape, -codes.exp, codes.pose * torch.tensor([[1.0, -1.0, 1.0, 0.5, 0.0, 0.0]])).vertices
    batch = torch.cat([vertices, other])
    fast = mesh_normals(a, batch)
    slow = mesh_normals(a, batch, kernel="torch")
    assert fast.shape == slow.shape == batch.shape and not torch.equal(fast[0], fast[1])
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
    wanting = vertices.clone().requires_grad_(True)
    mesh_normals(a, wanting).sum().backward()  # the torch steps: differentiable
    assert wanting.grad is not None and wanting.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="outside the mesh"):
        cpu_shading.vertex_normals_c(batch, a.faces.clamp(max=0) + batch.shape[1], a.incidence)


@pytest.mark.skipif(cpu_shading.kernel_error() is not None, reason=f"no C kernel: {cpu_shading.kernel_error()}")
def test_compiled_detail_normal_map_matches_the_torch_steps(frame):
    """The compiled CPU pass of `detail_normal_map` against its torch steps on a batch of two posed frames."""
    deca, codes, vertices, uv_z = frame
    a = deca.assets
    with torch.inference_mode():  # a second posed frame: another expression and jaw
        other = a.flame(codes.shape, -codes.exp, codes.pose * torch.tensor([[1.0, -1.0, 1.0, 0.5, 0.0, 0.0]])).vertices
    batch_v = torch.cat([vertices, other])
    batch_z = torch.cat([uv_z, uv_z.flip(-1)])
    normals = mesh_normals(a, batch_v)
    fast = detail_normal_map(a, batch_z, batch_v, normals)
    slow = detail_normal_map(a, batch_z, batch_v, normals, kernel="torch")
    assert fast.shape == slow.shape == (2, 3, a.uv_sampler.size, a.uv_sampler.size)
    # Same sums in another order: where a texel's grid triangles are tiny the normal keeps the sums' rounding,
    # scaled up (test_normals_match_the_oracles). Against the torch steps in float64 the compiled pass must be
    # as close as the float32 torch steps are.
    assert float((fast - slow).abs().max()) < 1e-3
    wide = type(a.uv_sampler)(a.uv_sampler.vertex_ids, a.uv_sampler.weights.double(), a.uv_sampler.size)
    exact = detail_normal_map(SimpleNamespace(uv_sampler=wide, face_eye_mask=a.face_eye_mask.double(),
                                              fixed_displacement=a.fixed_displacement.double()),
                              batch_z.double(), batch_v.double(), normals.double())
    err_fast = (fast.double() - exact).abs().amax(1).flatten()
    err_slow = (slow.double() - exact).abs().amax(1).flatten()
    assert float(err_fast.max()) < 1e-3
    assert float(err_fast.quantile(0.999)) <= 1.5 * float(err_slow.quantile(0.999)) + 1e-7
    assert float((err_fast > 1e-5).double().mean()) <= 1.5 * float((err_slow > 1e-5).double().mean()) + 1e-4
    assert not torch.equal(fast[0], fast[1])
    with pytest.raises(ValueError, match="kernel"):
        detail_normal_map(a, batch_z, batch_v, normals, kernel="c")
    # a UV layout that names a vertex the mesh does not have is refused (the pass reads vertices[vertex_ids])
    s = a.uv_sampler
    for bad in (s.vertex_ids.shape[0] // 2, 0):
        ids = s.vertex_ids.clone()
        ids[bad, 1] = batch_v.shape[1] if bad else -1
        with pytest.raises(ValueError, match="UV layout refers"):
            cpu_shading.detail_normals_c(batch_z, batch_v, normals, ids, s.weights, a.face_eye_mask,
                                         a.fixed_displacement, *GRID_MARGINS)


@pytest.mark.skipif(cpu_shading.kernel_error() is not None, reason=f"no C kernel: {cpu_shading.kernel_error()}")
def test_compiled_paste_rounds_like_a_float_picture():
    """paste_u8 writes (clamp(c, 0, 1) * 255 + 0.5) as uint8 at each pixel's place, in a side-by-side picture too."""
    gen = torch.Generator().manual_seed(3)
    h, w = 7, 9
    index = torch.randperm(h * w, generator=gen)[:40]
    colour = torch.rand(40, 3, generator=gen) * 1.4 - 0.2  # some below 0 and above 1
    colour[:5] = (torch.arange(15, dtype=torch.float32).view(5, 3) + 0.5) / 255  # on rounding boundaries
    expected = (colour.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    # in any order, and in scan order (runs along a row and across row ends, as the shading pass gives them)
    for order in (torch.arange(40), torch.argsort(index)):
        for column, out_w in ((0, w), (w, 2 * w)):
            out = np.full((h, out_w, 3), 17, np.uint8)
            cpu_shading.paste_u8(out, index[order], colour[order], w, column)
            want = np.full((h, out_w, 3), 17, np.uint8)
            rows, cols = (index // w).numpy(), (index % w).numpy() + column
            want[rows, cols] = expected.numpy()
            np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="uint8"):
        cpu_shading.paste_u8(np.zeros((h, w, 3), np.float32), index, colour, w)
    # what would land outside the picture is refused, and nothing is written (the pass checks every index first)
    untouched = np.zeros((h, w, 3), np.uint8)
    with pytest.raises(ValueError, match="do not fit"):
        cpu_shading.paste_u8(untouched, torch.cat([index, index[-1:] + h * w]), torch.cat([colour, colour[-1:]]), w)
    assert not untouched.any()
    with pytest.raises(ValueError, match="do not fit"):
        cpu_shading.paste_u8(np.zeros((h, w, 3), np.uint8), index - h * w, colour, w)
    with pytest.raises(ValueError, match="do not fit"):
        cpu_shading.paste_u8(np.zeros((h, w, 3), np.uint8), index, colour, w, column=1)
    # into a rectangle of the frame (rows 2..5, columns 3..7): row = -top, column = -left
    rows, cols = index // w, index % w
    inside = (rows >= 2) & (rows < 6) & (cols >= 3) & (cols < 8)
    patch = np.full((4, 5, 3), 17, np.uint8)
    cpu_shading.paste_u8(patch, index[inside], colour[inside], w, column=-3, row=-2)
    want = np.full((4, 5, 3), 17, np.uint8)
    want[(rows[inside] - 2).numpy(), (cols[inside] - 3).numpy()] = expected[inside].numpy()
    np.testing.assert_array_equal(patch, want)
    for outside in (inside | (cols == 8), inside | (cols == 2), inside | (rows == 1), inside | (rows == 6)):
        assert (outside & ~inside).any()
        untouched = np.zeros((4, 5, 3), np.uint8)
        with pytest.raises(ValueError, match="do not fit"):
            cpu_shading.paste_u8(untouched, index[outside], colour[outside], w, column=-3, row=-2)
        assert not untouched.any()



@pytest.mark.skipif(cpu_shading.kernel_error() is not None, reason=f"no C kernel: {cpu_shading.kernel_error()}")
def test_compiled_paste_16_at_a_time_matches_one_at_a_time(monkeypatch):
    """Built for this CPU, paste_u8 converts 16 neighbours of a row at once where AVX-512 is there; the portable
    build one pixel at a time. Rows of covered pixels with gaps and row ends inside a run of 16, colours beyond
    [0, 1], on rounding boundaries, -0.0 and NaN: the same bytes, and the float picture's rounding."""
    from capture.compiled import CompiledKernel

    gen = torch.Generator().manual_seed(5)
    h, w = 6, 53
    covered = torch.rand(h * w, generator=gen) > 0.08  # gaps, and runs across row ends
    covered[2 * w + 10:2 * w + 30] = True
    index = covered.nonzero().squeeze(1)
    n = index.numel()
    colour = torch.rand(n, 3, generator=gen) * 1.4 - 0.2
    run = int((index < 2 * w + 10).sum())  # where the long run starts: 16 pixels converted at once
    colour[run:run + 16] = (torch.arange(48, dtype=torch.float32).view(16, 3) * 5 + 0.5) / 255  # rounding ties
    colour[run + 16, 0], colour[run + 17, 1], colour[3, 2] = -0.0, float("nan"), float("nan")
    native = cpu_shading._KERNEL
    portable = CompiledKernel("cpu_shading_portable", native.source, native.functions)
    pictures = []
    for kernel in (native, portable):
        monkeypatch.setattr(cpu_shading, "_KERNEL", kernel)
        out = np.full((h, 2 * w, 3), 17, np.uint8)
        cpu_shading.paste_u8(out, index, colour, w, w)
        pictures.append(out)
    monkeypatch.setattr(cpu_shading, "_KERNEL", native)
    np.testing.assert_array_equal(pictures[0], pictures[1])
    finite = torch.isfinite(colour).all(1)
    rows, cols = (index // w).numpy(), (index % w).numpy() + w
    expected = (colour.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    np.testing.assert_array_equal(pictures[0][rows, cols][finite.numpy()], expected[finite.numpy()])
    assert (pictures[0][:, :w] == 17).all()

def test_renderer_steps_in_any_split_draw_the_same_picture(frame):
    """merge | detail (LBS, D_detail) | finish, as the pipeline's stages run them, with LBS after the merge (a
    landmark source) or left to `detail` or to `finish`: one picture, and LBS and D_detail run once a frame."""
    from capture.retarget import AvatarRenderer
    from capture.stream.pipeline import StepTimes

    deca, codes, _, _ = frame
    avatar = demo_identity(deca)
    image = np.random.default_rng(5).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    whole = AvatarRenderer(deca, avatar, "side-by-side", (96, 128)).render(image, codes, None)
    head = (whole.image[:, 128:] != whole.image[0, -1]).any(-1)
    assert 0.05 < head.mean() < 0.9  # the head is in the picture
    splits = {
        "pose after merge": lambda r: r.finish(image, r.detail(r.pose(r.merge(codes, None)))),
        "pose in detail": lambda r: r.finish(image, r.detail(r.merge(codes, None))),
        "all in finish": lambda r: r.finish(image, r.merge(codes, None)),
    }
    for name, run in splits.items():
        times = StepTimes()
        got = run(AvatarRenderer(deca, avatar, "side-by-side", (96, 128), times=times))
        np.testing.assert_array_equal(got.image, whole.image, err_msg=name)
        counts = {k: s.count for k, s in times.stats().items()}
        assert counts["LBS"] == 1 and counts["D_detail"] == 1, (name, counts)
