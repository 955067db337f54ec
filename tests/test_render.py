"""Rasterizer interface: analytic cases against independent references written here.

References: pixel centres from the documented formula x = (2c+1)/W - 1, point-in-triangle and barycentrics
in float64 numpy, and a brute-force z-buffer. Vertices are put on a 1/8-pixel grid where exact equality
is asserted, so that the rasterizer's 1/256-pixel snapping cannot matter and edge values are exact.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from capture.conventions import (
    DEPTH_FAR,
    DEPTH_NEAR,
    clip_z_to_ndc,
    image_to_tensor,
    ndc_to_clip,
    ndc_to_pixel,
    obj_uv_to_ndc,
    pixel_centers_ndc,
    pixel_to_ndc,
    tensor_to_image,
)
from capture.render import CpuRasterizer, Fragments, Window, covering_window, get_rasterizer, texture
from capture.render.cpu import c_kernel_error

KERNELS = [
    "torch",
    pytest.param("c", marks=pytest.mark.skipif(c_kernel_error() is not None,
                                                reason=f"C kernel unavailable: {c_kernel_error()}")),
]


@pytest.fixture(params=KERNELS)
def rast(request):
    return CpuRasterizer(kernel=request.param)


# ---------------------------------------------------------------------------------------------------
# Independent helpers.

def px_to_ndc(u, v, H, W):
    """Pixel coordinates (column, row) -> NDC, written from the convention, not from the package."""
    return 2.0 * (np.asarray(u, np.float64) + 0.5) / W - 1.0, 2.0 * (np.asarray(v, np.float64) + 0.5) / H - 1.0


def mesh_from_pixels(tris_px, H, W, z=None):
    """tris_px: [F, 3, 2] (column, row) per corner; z: None, one value, or one per corner (3F).
    Returns vertices [1, 3F, 3] in NDC and faces [F, 3]."""
    tris_px = np.asarray(tris_px, np.float64).reshape(-1, 3, 2)
    x, y = px_to_ndc(tris_px[..., 0], tris_px[..., 1], H, W)
    z = np.zeros(1) if z is None else np.asarray(z, np.float64)
    zz = np.full_like(x, z.item()) if z.size == 1 else z.reshape(x.shape)  # one z, or one per corner
    verts = np.stack([x, y, zz], -1).reshape(1, -1, 3)
    faces = np.arange(verts.shape[1]).reshape(-1, 3)
    return torch.tensor(verts, dtype=torch.float32), torch.tensor(faces, dtype=torch.int64)


def reference_triangle(tri_px, H, W):
    """Barycentrics of every pixel centre for one triangle in pixel coords: [H, W, 3] float64, and the
    signed distances (pixels) of each centre to the three edge lines, positive inside: [H, W, 3].
    A centre is inside iff min(distances) > 0; it is near the boundary iff |min(distances)| is small.
    Returns (None, None) for a degenerate triangle."""
    (ax, ay), (bx, by), (cx, cy) = np.asarray(tri_px, np.float64)
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64)
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    if abs(area) < 1e-9:
        return None, None
    w0 = ((bx - cols) * (cy - rows) - (by - rows) * (cx - cols)) / area
    w1 = ((cx - cols) * (ay - rows) - (cy - rows) * (ax - cols)) / area
    w2 = 1.0 - w0 - w1
    bary = np.stack([w0, w1, w2], -1)
    heights = abs(area) / np.array([np.hypot(cx - bx, cy - by), np.hypot(ax - cx, ay - cy),
                                    np.hypot(bx - ax, by - ay)])
    return bary, bary * heights


def sphere_mesh(n_lat=13, n_lon=24, radius=0.8):
    lat = np.linspace(0.0, np.pi, n_lat)
    lon = np.linspace(0.0, 2 * np.pi, n_lon, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    verts = radius * np.stack([np.sin(la) * np.cos(lo), np.cos(la), np.sin(la) * np.sin(lo)], -1).reshape(-1, 3)
    i = np.arange(n_lat - 1)[:, None] * n_lon
    j = np.arange(n_lon)[None, :]
    a, b = i + j, i + (j + 1) % n_lon
    c, d = a + n_lon, b + n_lon
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    return verts, faces


def rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------------------------------
# Conventions.

def test_conventions_pixel_mapping():
    H, W = 6, 10
    xy = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    uv = ndc_to_pixel(xy, (H, W))
    np.testing.assert_allclose(uv.numpy(), [[-0.5, -0.5], [W - 0.5, H - 0.5], [W / 2 - 0.5, H / 2 - 0.5]])
    np.testing.assert_allclose(pixel_to_ndc(uv, (H, W)).numpy(), xy.numpy(), atol=1e-12)
    centres = pixel_centers_ndc((H, W), dtype=torch.float64)
    assert centres.shape == (H, W, 2)
    x_ref, y_ref = px_to_ndc(np.arange(W)[None, :], np.arange(H)[:, None], H, W)
    np.testing.assert_allclose(centres[..., 0].numpy(), np.broadcast_to(x_ref, (H, W)))
    np.testing.assert_allclose(centres[..., 1].numpy(), np.broadcast_to(y_ref, (H, W)))


def test_conventions_uv_clip_and_images():
    uv = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.25, 0.75]])
    # v up in the file, y down in NDC: v = 1 is the top row (y = -1), v = 0 the bottom (y = +1).
    np.testing.assert_allclose(obj_uv_to_ndc(uv).numpy(), [[-1.0, 1.0], [1.0, -1.0], [-0.5, -0.5]])
    v = torch.tensor([[[0.3, -0.2, DEPTH_NEAR], [0.1, 0.4, DEPTH_FAR], [0.0, 0.0, 1.5]]])
    clip = ndc_to_clip(v)
    np.testing.assert_allclose(clip[0, :, :2].numpy(), v[0, :, :2].numpy())
    np.testing.assert_allclose(clip[0, :2, 2].numpy(), [-1.0, 1.0])
    np.testing.assert_allclose(clip[..., 3].numpy(), 1.0)
    np.testing.assert_allclose(clip_z_to_ndc(clip[..., 2]).numpy(), v[..., 2].numpy(), atol=1e-5)
    img = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    t = image_to_tensor(img)
    assert t.shape == (1, 3, 5, 7) and t.dtype == torch.float32
    assert float(t[0, 1, 2, 3]) == pytest.approx(img[2, 3, 1] / 255.0)
    np.testing.assert_array_equal(tensor_to_image(t), img)


# ---------------------------------------------------------------------------------------------------
# Coverage, barycentrics, depth.

def test_known_triangle_coverage_and_barycentrics(rast):
    H, W = 16, 16
    tri = [(1.125, 0.75), (13.5, 3.25), (4.375, 11.875)]  # 1/8-pixel grid: exact in float64 and fixed point
    bary_ref, dist = reference_triangle(tri, H, W)
    assert np.abs(dist).min() > 1e-3, "test triangle must not pass through a pixel centre"
    inside_ref = (bary_ref > 0).all(-1)
    verts, faces = mesh_from_pixels([tri], H, W, z=0.5)
    frags = rast.rasterize(verts, faces, (H, W))
    assert frags.face_id.shape == (1, H, W) and frags.face_id.dtype == torch.int64
    assert frags.bary.shape == (1, H, W, 3) and frags.bary.dtype == torch.float32
    assert frags.depth.shape == (1, H, W) and frags.depth.dtype == torch.float32
    np.testing.assert_array_equal(frags.mask[0].numpy(), inside_ref)
    assert int(frags.mask.sum()) == int(inside_ref.sum()) > 20
    np.testing.assert_allclose(frags.bary[0].numpy()[inside_ref], bary_ref[inside_ref], atol=1e-6)
    np.testing.assert_array_equal(frags.bary[0].numpy()[~inside_ref], 0.0)
    np.testing.assert_allclose(frags.depth[0].numpy()[inside_ref], 0.5, atol=1e-6)
    assert np.isinf(frags.depth[0].numpy()[~inside_ref]).all()


def test_random_triangles_match_reference_away_from_edges(rast):
    rng = np.random.default_rng(1)
    H, W = 20, 28
    for _ in range(10):
        tri = rng.uniform([-3, -3], [W + 2, H + 2], size=(3, 2))
        bary_ref, dist = reference_triangle(tri, H, W)
        clear = np.abs(dist.min(-1)) > 1e-2  # snapping moves edges by < 1/256 px
        verts, faces = mesh_from_pixels([tri], H, W)
        frags = rast.rasterize(verts, faces, (H, W))
        inside_ref = (dist > 0).all(-1)
        np.testing.assert_array_equal(frags.mask[0].numpy()[clear], inside_ref[clear])
        both = frags.mask[0].numpy() & inside_ref
        np.testing.assert_allclose(frags.bary[0].numpy()[both], bary_ref[both], atol=2e-3)


def test_winding_does_not_matter(rast):
    H, W = 12, 12
    tri = [(0.625, 1.25), (10.5, 2.375), (3.125, 10.75)]
    v1, f = mesh_from_pixels([tri], H, W)
    v2, _ = mesh_from_pixels([tri[::-1]], H, W)
    a = rast.rasterize(v1, f, (H, W))
    b = rast.rasterize(v2, f, (H, W))
    np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
    np.testing.assert_allclose(a.bary.numpy(), b.bary.numpy()[..., ::-1], atol=1e-6)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_closer_triangle_wins_regardless_of_order(rast, order):
    H, W = 16, 16
    near_tri = [(1.125, 1.25), (14.125, 1.25), (1.125, 14.25)]  # z = 0.2, below c + r = 15.375
    far_tri = [(14.625, 14.5), (-3.125, 14.5), (14.625, -3.25)]  # z = 0.5, above c + r = 11.375
    tris = [near_tri, far_tri]
    zs = [0.2, 0.5]
    verts, faces = mesh_from_pixels([tris[i] for i in order], H, W, z=np.repeat([zs[i] for i in order], 3))
    frags = rast.rasterize(verts, faces, (H, W))
    near_in = (reference_triangle(near_tri, H, W)[0] > 0).all(-1)
    far_in = (reference_triangle(far_tri, H, W)[0] > 0).all(-1)
    assert min(np.abs(reference_triangle(t, H, W)[1]).min() for t in tris) > 1e-3
    assert (near_in & far_in).sum() > 10
    near_id = order.index(0)
    fid = frags.face_id[0].numpy()
    np.testing.assert_array_equal(fid[near_in], near_id)
    np.testing.assert_array_equal(fid[far_in & ~near_in], 1 - near_id)
    np.testing.assert_allclose(frags.depth[0].numpy()[near_in], 0.2, atol=1e-6)


def test_interpenetrating_triangles_per_pixel_depth(rast):
    H, W = 16, 16  # no pixel centre at x = 0, so no exact ties
    square = [(-0.5, -0.5), (W - 0.5, -0.5), (W - 0.5, H - 0.5), (-0.5, H - 0.5)]
    x_corner, _ = px_to_ndc(np.array([c[0] for c in square]), 0, H, W)
    tris = [[square[0], square[1], square[2]], [square[0], square[2], square[3]]]
    z_corner_a = x_corner  # plane z = x
    z_corner_b = -x_corner  # plane z = -x
    za = np.concatenate([z_corner_a[[0, 1, 2]], z_corner_a[[0, 2, 3]]])
    zb = np.concatenate([z_corner_b[[0, 1, 2]], z_corner_b[[0, 2, 3]]])
    va, fa = mesh_from_pixels(tris, H, W, z=za)
    vb, _ = mesh_from_pixels(tris, H, W, z=zb)
    verts = torch.cat([va, vb], dim=1)
    faces = torch.cat([fa, fa + va.shape[1]])
    frags = rast.rasterize(verts, faces, (H, W))
    xc, _ = px_to_ndc(np.arange(W), 0, H, W)
    expected_plane_a = np.broadcast_to(xc < 0, (H, W))
    np.testing.assert_array_equal(frags.face_id[0].numpy() < 2, expected_plane_a)
    np.testing.assert_allclose(frags.depth[0].numpy(), np.broadcast_to(-np.abs(xc), (H, W)), atol=1e-6)


def test_mesh_zbuffer_matches_brute_force(rast):
    rng = np.random.default_rng(2)
    verts, faces = sphere_mesh()
    verts = verts @ rotation(rng).T
    verts[:, 0] += 0.1
    H, W = 24, 32
    tris_px = np.stack([(verts[faces][..., 0] + 1) * W / 2 - 0.5, (verts[faces][..., 1] + 1) * H / 2 - 0.5], -1)
    z = verts[faces][..., 2]
    best_z = np.full((H, W), np.inf)
    best_f = np.full((H, W), -1)
    clean = np.ones((H, W), bool)
    for f in range(len(faces)):
        bary, dist = reference_triangle(tris_px[f], H, W)
        if bary is None:  # the collapsed pole triangles
            continue
        clean &= np.abs(dist.min(-1)) > 1e-2
        inside = (dist > 0).all(-1)
        zf = bary @ z[f]
        better = inside & (zf < best_z)
        best_z[better], best_f[better] = zf[better], f
    frags = rast.rasterize(torch.tensor(verts[None], dtype=torch.float32), torch.tensor(faces), (H, W))
    assert clean.mean() > 0.8
    np.testing.assert_array_equal(frags.face_id[0].numpy()[clean], best_f[clean])
    covered = clean & (best_f >= 0)
    # Snapping to 1/256 px moves depth by at most that much times the slope (steep near the silhouette).
    np.testing.assert_allclose(frags.depth[0].numpy()[covered], best_z[covered], atol=5e-3)


def test_edge_between_pixel_centres_and_y_down(rast):
    H, W = 8, 8
    # Quad x in [-1, 0], y in [-1, -0.5]: its right edge is at column 3.5, its bottom edge at row 1.5.
    quad = np.array([[-1.0, -1.0], [0.0, -1.0], [0.0, -0.5], [-1.0, -0.5]])
    verts = torch.tensor(np.concatenate([quad, np.zeros((4, 1))], 1)[None], dtype=torch.float32)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    frags = rast.rasterize(verts, faces, (H, W))
    expected = np.zeros((H, W), bool)
    expected[0:2, 0:4] = True  # y down: the top two rows
    np.testing.assert_array_equal(frags.mask[0].numpy(), expected)


def test_edges_through_pixel_centres_follow_top_left_rule(rast):
    H, W = 8, 8
    # Four quads meeting on column 3 and row 3 (edges exactly through pixel centres).
    def quad(c0, c1, r0, r1):
        return [[(c0, r0), (c1, r0), (c1, r1)], [(c0, r0), (c1, r1), (c0, r1)]]
    edge = 3.0
    tris = (quad(-0.5, edge, -0.5, edge) + quad(edge, W - 0.5, -0.5, edge)
            + quad(-0.5, edge, edge, H - 0.5) + quad(edge, W - 0.5, edge, H - 0.5))
    verts, faces = mesh_from_pixels(tris, H, W)
    frags = rast.rasterize(verts, faces, (H, W))
    assert bool(frags.mask.all())
    quadrant = frags.face_id[0].numpy() // 2  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    # Column 3 lies on the left edge of the right-hand quads; row 3 on the top edge of the lower quads.
    assert (quadrant[:3, :3] == 0).all() and (quadrant[:3, 3:] == 1).all()
    assert (quadrant[3:, :3] == 2).all() and (quadrant[3:, 3:] == 3).all()
    # Each quad alone covers exactly its share: nothing counted twice, nothing missed.
    counts = np.zeros((H, W), int)
    for q in range(4):
        f = faces[2 * q:2 * q + 2]
        counts += rast.rasterize(verts, f, (H, W)).mask[0].numpy()
    np.testing.assert_array_equal(counts, 1)


@pytest.mark.parametrize("size", [(16, 16), (9, 14)])
@pytest.mark.parametrize("flip_second", [False, True])
def test_full_screen_quad_covers_every_pixel_once(rast, size, flip_second):
    H, W = size
    verts = torch.tensor([[[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]]])
    second = [0, 3, 2] if flip_second else [0, 2, 3]
    faces = torch.tensor([[0, 1, 2], second])
    both = rast.rasterize(verts, faces, (H, W))
    assert bool(both.mask.all())
    counts = sum(rast.rasterize(verts, faces[i:i + 1], (H, W)).mask[0].numpy().astype(int) for i in range(2))
    np.testing.assert_array_equal(counts, 1)
    np.testing.assert_allclose(both.bary.sum(-1).numpy(), 1.0, atol=1e-6)


def test_empty_frames(rast):
    H, W = 6, 9
    verts = torch.tensor([[[1.5, 0.0, 0.0], [2.0, 0.5, 0.0], [1.5, 1.0, 0.0]]])  # right of the image
    faces = torch.tensor([[0, 1, 2]])
    degenerate = verts * torch.tensor([0.0, 1.0, 1.0])  # all corners on one vertical line
    for frags in (rast.rasterize(verts, faces, (H, W)), rast.rasterize(verts, faces[:0], (H, W)),
                  rast.rasterize(degenerate, faces, (H, W))):
        assert frags.face_id.shape == (1, H, W)
        assert bool((frags.face_id == -1).all())
        assert not bool(frags.mask.any())
        assert bool(torch.isinf(frags.depth).all())
        assert bool((frags.bary == 0).all())


def test_depth_range_drops_fragments(rast):
    verts = torch.tensor([[[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]])
    faces = torch.tensor([[0, 1, 2]])
    assert bool(rast.rasterize(verts, faces, (8, 8)).mask.any())
    beyond = verts + torch.tensor([0.0, 0.0, DEPTH_FAR + 1.0])
    assert not bool(rast.rasterize(beyond, faces, (8, 8)).mask.any())


def test_non_square_output(rast):
    H, W = 12, 20
    tri = [(0.625, 0.5), (18.875, 4.25), (6.125, 11.375)]
    bary_ref, dist = reference_triangle(tri, H, W)
    assert np.abs(dist).min() > 1e-3
    inside = (bary_ref > 0).all(-1)
    verts, faces = mesh_from_pixels([tri], H, W)
    frags = rast.rasterize(verts, faces, (H, W))
    assert frags.face_id.shape == (1, H, W)
    np.testing.assert_array_equal(frags.mask[0].numpy(), inside)
    np.testing.assert_allclose(frags.bary[0].numpy()[inside], bary_ref[inside], atol=1e-6)
    # The left half of NDC is the left half of the columns, whatever the aspect ratio.
    half = torch.tensor([[[-1.0, -1.0, 0.0], [0.0, -1.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 1.0, 0.0]]])
    frags = rast.rasterize(half, torch.tensor([[0, 1, 2], [0, 2, 3]]), (H, W))
    assert bool(frags.mask[0, :, :W // 2].all()) and not bool(frags.mask[0, :, W // 2:].any())


def test_batch_elements_are_independent(rast):
    rng = np.random.default_rng(3)
    verts, faces = sphere_mesh()
    batch = np.stack([verts @ rotation(rng).T for _ in range(3)])
    batch[1, :, 2] += 5.0
    v = torch.tensor(batch, dtype=torch.float32)
    f = torch.tensor(faces)
    together = rast.rasterize(v, f, (20, 24))
    for b in range(3):
        alone = rast.rasterize(v[b:b + 1], f, (20, 24))
        assert torch.equal(together.face_id[b], alone.face_id[0])
        assert torch.equal(together.bary[b], alone.bary[0])
        assert torch.equal(together.depth[b], alone.depth[0])


@pytest.mark.skipif(c_kernel_error() is not None, reason=f"C kernel unavailable: {c_kernel_error()}")
def test_c_and_torch_kernels_agree_bit_for_bit():
    rng = np.random.default_rng(4)
    verts, faces = sphere_mesh(25, 40, radius=1.3)  # partly off screen
    batch = np.stack([verts @ rotation(rng).T + rng.normal(scale=0.2, size=3) for _ in range(2)])
    v = torch.tensor(batch, dtype=torch.float32)
    f = torch.tensor(faces)
    c = CpuRasterizer(kernel="c").rasterize(v, f, (37, 53))
    for chunk in (1 << 19, 37):  # a tiny chunk: many chunks, spans longer than a chunk
        t = CpuRasterizer(kernel="torch", chunk=chunk).rasterize(v, f, (37, 53))
        assert torch.equal(c.face_id, t.face_id)
        assert torch.equal(c.bary, t.bary)
        assert torch.equal(c.depth, t.depth)


@pytest.mark.skipif(c_kernel_error() is not None, reason=f"C kernel unavailable: {c_kernel_error()}")
def test_c_kernel_spans_agree_with_torch_on_random_triangle_soup():
    """Random triangles of every kind (slivers, degenerate, huge, off screen, edges and vertices on pixel
    centres and on the grid of half pixels, shared edges) against the torch kernel: the C kernel solves each
    row's span of covered centres from the edge inequalities, and an off-by-one there shows as a pixel."""
    gen = torch.Generator().manual_seed(5)
    H, W = 29, 41
    for trial in range(12):
        v = torch.rand(1, 120, 3, generator=gen) * 2.6 - 1.3
        v[..., 2] = torch.rand(1, 120, generator=gen) * 4 - 0.5  # some behind the near plane
        if trial % 2:  # vertices on pixel centres and half pixels: exact ties for the top-left rule
            pix = ((v[..., :2] + 1) * torch.tensor([W, H]) / 2 - 0.5)
            v[..., :2] = ((pix * 2).round() / 2 + 0.5) * 2 / torch.tensor([W, H]) - 1
        faces = torch.randint(0, 120, (400, 3), generator=gen)
        c = CpuRasterizer(kernel="c").rasterize(v, faces, (H, W))
        t = CpuRasterizer(kernel="torch").rasterize(v, faces, (H, W))
        assert torch.equal(c.face_id, t.face_id) and torch.equal(c.bary, t.bary) and torch.equal(c.depth, t.depth)
        assert (c.face_id >= 0).sum() > 100


@pytest.mark.skipif(c_kernel_error() is not None, reason=f"C kernel unavailable: {c_kernel_error()}")
def test_c_kernel_in_bands_and_its_portable_build_agree_with_torch(monkeypatch):
    """The C kernel draws the image in bands of rows (each band's faces in face order) and, built for a CPU with
    AVX-512, tests a span's columns eight at a time. Every band height (one row, a few, the whole image) and the
    portable build (one column at a time, one band per call as asked) give the torch kernel's bits: random
    triangles across band borders, exact depth ties (the lower face wins in every band), spans of every length,
    and a batch."""
    from capture.compiled import CompiledKernel
    from capture.render import cpu

    native = cpu._RASTER
    portable = CompiledKernel("cpu_raster_portable", native.source, native.functions)
    gen = torch.Generator().manual_seed(9)
    H, W = 37, 61
    for trial in range(6):
        v = torch.rand(2, 150, 3, generator=gen) * 2.6 - 1.3
        v[..., 2] = torch.rand(2, 150, generator=gen) * 4 - 0.5
        if trial % 2:  # a few depths shared by many vertices: ties between faces
            v[..., 2] = (v[..., 2] * 2).round() / 2
        faces = torch.randint(0, 150, (500, 3), generator=gen)
        fx, fy, z, valid = cpu.snap_vertices(v, (H, W))
        want = cpu.rasterize_torch(fx, fy, z, valid, faces, (H, W))
        assert (want[0] >= 0).sum() > 500
        for kernel in (native, portable):
            monkeypatch.setattr(cpu, "_RASTER", kernel)
            for band in (1, 3, 8, H, None):
                got = cpu.rasterize_c(fx, fy, z, valid, faces, (H, W), band=band)
                for a, b in zip(got, want):
                    assert torch.equal(a, b), (trial, band, kernel.name)


def test_window_gives_the_whole_images_pixels(rast):
    """A window of the image (`rasterize(..., window=...)`) holds exactly the whole image's fragments there,
    for windows inside, at the borders and around a mesh partly off screen; `covering_window` misses none."""
    rng = np.random.default_rng(11)
    verts, faces = sphere_mesh(25, 40, radius=1.3)
    v = torch.tensor(np.stack([verts @ rotation(rng).T + rng.normal(scale=0.3, size=3) for _ in range(2)]),
                     dtype=torch.float32)
    f = torch.tensor(faces)
    H, W = 37, 53
    whole = rast.rasterize(v, f, (H, W))
    windows = [Window(5, 7, 20, 30, (H, W)), Window(0, 0, H, W, (H, W)), Window(H - 1, W - 3, 1, 3, (H, W)),
               covering_window(v, (H, W)), covering_window(v * 0.25, (H, W))]
    for window in windows:
        part = rast.rasterize(v, f, (H, W), window)
        rows, cols = slice(window.top, window.top + window.height), slice(window.left, window.left + window.width)
        assert part.window == window and part.face_id.shape == (2, window.height, window.width)
        assert torch.equal(part.face_id, whole.face_id[:, rows, cols])
        assert torch.equal(part.bary, whole.bary[:, rows, cols])
        assert torch.equal(part.depth, whole.depth[:, rows, cols])
    small = v * 0.25
    covering = covering_window(small, (H, W))
    assert covering.height * covering.width < H * W / 4
    covered = int(rast.rasterize(small, f, (H, W)).mask.sum())
    assert int(rast.rasterize(small, f, (H, W), covering).mask.sum()) == covered > 0
    index = torch.arange(2 * covering.height * covering.width)
    image = torch.zeros(2 * H * W, dtype=torch.bool)
    image[covering.to_image_index(index)] = True
    inside = torch.zeros(2, H, W, dtype=torch.bool)
    inside[:, covering.top:covering.top + covering.height, covering.left:covering.left + covering.width] = True
    assert torch.equal(image.view(2, H, W), inside)
    # nothing finite, or all of it off the image: a 1-pixel window with no fragments
    assert covering_window(torch.full((1, 3, 3), float("nan")), (H, W)).size == (1, 1)
    off = covering_window(v + torch.tensor([5.0, 0.0, 0.0]), (H, W))
    assert not bool(rast.rasterize(v + torch.tensor([5.0, 0.0, 0.0]), f, (H, W), off).mask.any())
    for bad in (Window(0, 0, H + 1, W, (H, W)), Window(-1, 0, 2, 2, (H, W)), Window(0, 0, 2, 2, (H + 1, W))):
        with pytest.raises(ValueError, match="window"):
            rast.rasterize(v, f, (H, W), bad)
    with pytest.raises(TypeError, match="window"):
        rast.rasterize(v, f, (H, W), (0, 0, 2, 2))


# ---------------------------------------------------------------------------------------------------
# Interpolation and texture.

def grid_mesh(H, W, rng, n=5):
    """A jittered n x n vertex grid over (and a bit beyond) the image, vertices on the 1/8-pixel grid."""
    cols = np.linspace(-1.5, W + 0.5, n)
    rows = np.linspace(-1.5, H + 0.5, n)
    c, r = np.meshgrid(cols, rows)
    c = np.round((c + rng.uniform(-0.4, 0.4, c.shape)) * 8) / 8
    r = np.round((r + rng.uniform(-0.4, 0.4, r.shape)) * 8) / 8
    x, y = px_to_ndc(c.ravel(), r.ravel(), H, W)
    z = rng.uniform(-1, 1, x.shape)
    verts = np.stack([x, y, z], -1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, cc, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, cc], -1).reshape(-1, 3)])
    return torch.tensor(verts[None], dtype=torch.float32), torch.tensor(faces)


def test_interpolate_reproduces_linear_attributes(rast):
    H, W = 18, 26
    verts, faces = grid_mesh(H, W, np.random.default_rng(5))
    frags = rast.rasterize(verts, faces, (H, W))
    assert bool(frags.mask.all())
    out = rast.interpolate(verts, frags, faces)  # attribute = the vertex's own NDC position
    x_ref, y_ref = px_to_ndc(np.arange(W)[None, :], np.arange(H)[:, None], H, W)
    np.testing.assert_allclose(out[0, ..., 0].numpy(), np.broadcast_to(x_ref, (H, W)), atol=2e-6)
    np.testing.assert_allclose(out[0, ..., 1].numpy(), np.broadcast_to(y_ref, (H, W)), atol=2e-6)
    np.testing.assert_allclose(out[0, ..., 2].numpy(), frags.depth[0].numpy(), atol=2e-6)
    # [V, C] attributes and per-face-corner attributes give the same image.
    shared = rast.interpolate(verts[0, :, :2], frags, faces)
    torch.testing.assert_close(shared, out[..., :2])
    per_corner = rast.interpolate_face_attributes(verts[0][faces][None], frags)
    torch.testing.assert_close(per_corner, out)


def test_interpolate_is_zero_where_empty_and_differentiable(rast):
    H, W = 8, 8
    tri = [(0.5, 0.5), (6.0, 0.5), (0.5, 6.0)]
    verts, faces = mesh_from_pixels([tri], H, W)
    frags = rast.rasterize(verts, faces, (H, W))
    attrs = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    out = rast.interpolate(attrs, frags, faces)
    assert out.shape == (1, H, W, 2)
    assert bool((out[~frags.mask] == 0).all())
    out.sum().backward()
    # d(sum)/d(attr of vertex k) = sum of that vertex's weights over covered pixels.
    expected = frags.bary[0][frags.mask[0]].sum(0)
    torch.testing.assert_close(attrs.grad, expected[:, None].expand(3, 2))


def test_texture_known_values():
    tex = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # [1, 1, 2, 2]: row 0 = top = v near 1
    # Texel centres in NDC (align_corners=False): -0.5 and +0.5.
    grid = torch.tensor([[[[-0.5, -0.5], [0.5, -0.5]], [[-0.5, 0.5], [0.5, 0.5]]]])
    np.testing.assert_allclose(texture(tex, grid)[0, 0].numpy(), [[1.0, 2.0], [3.0, 4.0]])
    centre = texture(tex, torch.zeros(1, 1, 1, 2))
    assert float(centre) == pytest.approx(2.5)
    # OBJ uv (0.25, 0.75) is the top-left texel, (0.75, 0.25) the bottom-right one.
    uv = obj_uv_to_ndc(torch.tensor([[0.25, 0.75], [0.75, 0.25]])).view(1, 1, 2, 2)
    np.testing.assert_allclose(texture(tex, uv)[0, 0, 0].numpy(), [1.0, 4.0])
    near = texture(tex, torch.tensor([[[[0.1, -0.1]]]]), mode="nearest")
    assert float(near) == 2.0
    # Batch-1 textures are shared across a batch of look-ups.
    assert texture(tex, grid.expand(3, -1, -1, -1)).shape == (3, 1, 2, 2)


def test_textured_render_end_to_end(rast):
    """Rasterise a full-screen quad with per-corner UVs, then look up a texture: the image is the texture."""
    H, W = 8, 8
    verts = torch.tensor([[[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv_obj = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # top of the screen = v 1
    frags = rast.rasterize(verts, faces, (H, W))
    uv_img = rast.interpolate_face_attributes(obj_uv_to_ndc(uv_obj)[faces][None], frags)
    tex = torch.arange(H * W, dtype=torch.float32).view(1, 1, H, W)
    out = texture(tex, uv_img)
    torch.testing.assert_close(out, tex, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------
# Registry and errors.

def test_registry_and_errors():
    cpu = get_rasterizer("cpu")
    assert cpu.name == "cpu" and isinstance(cpu, CpuRasterizer)
    assert get_rasterizer("cpu", kernel="torch").kernel == "torch"
    if not torch.cuda.is_available():
        assert get_rasterizer("auto").name == "cpu"
        with pytest.raises((RuntimeError, ImportError), match="cpu"):
            get_rasterizer("nvdiffrast")
    assert get_rasterizer("auto", device="cpu").name == "cpu"
    with pytest.raises(ValueError, match="kind"):
        get_rasterizer("opengl")
    with pytest.raises(TypeError, match="unknown options"):
        get_rasterizer("cpu", blur=1)
    with pytest.raises(ValueError, match=r"vertices.*\[B, V, 3\]"):
        cpu.rasterize(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), (4, 4))
    with pytest.raises(ValueError, match="faces"):
        cpu.rasterize(torch.zeros(1, 3, 3), torch.tensor([[0, 1, 3]]), (4, 4))
    with pytest.raises(ValueError, match="size"):
        cpu.rasterize(torch.zeros(1, 3, 3), torch.tensor([[0, 1, 2]]), (0, 4))
    assert isinstance(cpu.rasterize(torch.zeros(1, 3, 3), torch.tensor([[0, 1, 2]]), (4, 4)), Fragments)


# ---------------------------------------------------------------------------------------------------
# GPU: nvdiffrast against the CPU rasterizer.

class FakeNvdiffrast:
    """Stands in for `nvdiffrast.torch` on the CPU, following its documented contract: clip-space input
    (w = 1 here), clip y = -1 written to row 0, H and W divisible by 8, output (u, v, z/w, triangle_id + 1)
    with u, v the weights of the triangle's 1st and 2nd vertex (its `interpolate` kernel computes
    u*a0 + v*a1 + (1-u-v)*a2) and zeros where empty."""

    calls = []

    def rasterize(self, ctx, pos, tri, resolution, grad_db=True):
        H8, W8 = resolution
        assert H8 % 8 == 0 and W8 % 8 == 0, "nvdiffrast's CUDA rasterizer needs sizes divisible by 8"
        assert pos.dtype == torch.float32 and tri.dtype == torch.int32 and pos.is_contiguous()
        assert bool((pos[..., 3] == 1).all()) and bool((pos[..., 2].abs() <= 1).all())
        self.calls.append((H8, W8))
        frags = CpuRasterizer(near=-1.0, far=1.0).rasterize(pos[..., :3], tri.long(), (H8, W8))
        m = frags.mask.float()
        rast = torch.stack([frags.bary[..., 0], frags.bary[..., 1], torch.where(frags.mask, frags.depth, 0.0),
                            (frags.face_id + 1).float()], -1) * torch.stack([m, m, m, torch.ones_like(m)], -1)
        return rast, None


@pytest.mark.parametrize("size", [(64, 96), (100, 150)])
def test_nvdiffrast_glue_with_a_fake_backend(size):
    """The nvdiffrast wrapper's conversions (clip space, padding to 8, ids, weights, depth) on the CPU."""
    from capture.render.base import Rasterizer
    from capture.render.nvdiffrast import NvdiffrastRasterizer

    glue = NvdiffrastRasterizer.__new__(NvdiffrastRasterizer)
    Rasterizer.__init__(glue)
    glue._dr, glue._ctx, glue.device = FakeNvdiffrast(), None, torch.device("cpu")
    rng = np.random.default_rng(7)
    verts, faces = head_like_mesh(rng)
    v = torch.tensor(verts[None], dtype=torch.float32)
    f = torch.tensor(faces)
    H, W = size
    a = CpuRasterizer().rasterize(v, f, size)
    b = glue.rasterize(v, f, size)
    assert FakeNvdiffrast.calls[-1] == (-(-H // 8) * 8, -(-W // 8) * 8)
    assert b.face_id.shape == (1, H, W) and b.face_id.dtype == torch.int64 and b.bary.dtype == torch.float32
    inter = (a.mask & b.mask).sum().item()
    assert inter / (a.mask | b.mask).sum().item() >= 0.99
    same = a.mask & (a.face_id == b.face_id)
    assert same.sum().item() / inter >= 0.99
    if (H % 8, W % 8) == (0, 0):  # no rescaling: the same snapped geometry, so the same pixels
        assert torch.equal(a.face_id, b.face_id)
    bary_err = (b.bary[same] - a.bary[same]).abs().max(-1).values
    assert bary_err.quantile(0.99).item() < 2e-3
    depth_err = (b.depth[same] - a.depth[same]).abs()
    assert depth_err.quantile(0.99).item() < 1e-3
    assert bool(torch.isinf(b.depth[~b.mask]).all()) and bool((b.bary[~b.mask] == 0).all())


def head_like_mesh(rng):
    """A lumpy ellipsoid (~3k triangles), rotated, placed like DECA's trans_verts (z about +-1, +10)."""
    verts, faces = sphere_mesh(41, 80, radius=1.0)
    bumps = 1.0 + 0.08 * np.sin(3 * verts[:, 0]) * np.cos(4 * verts[:, 1]) + 0.05 * np.sin(7 * verts[:, 2])
    verts = verts * bumps[:, None] * np.array([0.62, 0.8, 0.7])
    verts = verts @ rotation(rng).T
    verts[:, 2] += 10.0
    return verts, faces


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvdiffrast has no CPU path)")
@pytest.mark.parametrize("size", [(224, 224), (720, 1280), (100, 150)])
def test_nvdiffrast_matches_cpu(size):
    pytest.importorskip("nvdiffrast.torch", reason="nvdiffrast not installed (pip install diffrp-nvdiffrast)")
    from capture.render.nvdiffrast import NvdiffrastRasterizer

    rng = np.random.default_rng(6)
    gpu = NvdiffrastRasterizer("cuda")
    cpu = CpuRasterizer()
    assert get_rasterizer("auto", device="cuda").name == "nvdiffrast"
    H, W = size
    for trial in range(3):
        verts, faces = head_like_mesh(rng)
        verts[:, 0] *= H / W  # keep it round on screen
        v = torch.tensor(verts[None], dtype=torch.float32)
        f = torch.tensor(faces)
        a = cpu.rasterize(v, f, size)
        b = gpu.rasterize(v.cuda(), f.cuda(), size)
        assert b.face_id.shape == (1, H, W) and b.face_id.dtype == torch.int64
        # a window of the frame: nvdiffrast renders the rectangle alone, with the frame's pixel centres
        window = covering_window(v, size)
        part = gpu.rasterize(v.cuda(), f.cuda(), size, window)
        rows, cols = slice(window.top, window.top + window.height), slice(window.left, window.left + window.width)
        agree = (part.face_id.cpu() == b.face_id.cpu()[:, rows, cols]).float().mean().item()
        assert part.face_id.shape == (1, *window.size) and agree >= 0.999, f"trial {trial}: window {agree:.4f}"
        assert int(part.mask.sum()) >= 0.999 * int(b.mask.sum())
        assert b.bary.dtype == torch.float32 and b.depth.dtype == torch.float32
        b = type(b)(b.face_id.cpu(), b.bary.cpu(), b.depth.cpu())
        inter = (a.mask & b.mask).sum().item()
        union = (a.mask | b.mask).sum().item()
        assert inter / union >= 0.99, f"trial {trial}: IoU {inter / union:.4f}"
        same = a.mask & (a.face_id == b.face_id)
        assert same.sum().item() / inter >= 0.98
        # Both snap vertices to sub-pixel grids of their own, so weights differ by about
        # (grid step / triangle size): small almost everywhere, larger on the sliver triangles at the poles.
        bary_err = (b.bary[same] - a.bary[same]).abs().max(dim=-1).values
        assert bary_err.quantile(0.99).item() < 2e-3 and bary_err.max().item() < 0.05
        depth_err = (b.depth[same] - a.depth[same]).abs()
        assert depth_err.quantile(0.99).item() < 1e-3 and depth_err.max().item() < 2e-2
        assert bool(torch.isinf(b.depth[~b.mask]).all()) and bool((b.bary[~b.mask] == 0).all())
        # nvdiffrast's own weights reproduce the pixel centres (a linear attribute) to a fraction of a pixel.
        b_cuda = type(b)(b.face_id.cuda(), b.bary.cuda(), b.depth.cuda())
        xy = gpu.interpolate(v.cuda()[..., :2], b_cuda, f.cuda()).cpu()
        centres = np.stack(np.broadcast_arrays(*px_to_ndc(np.arange(W)[None, :], np.arange(H)[:, None], H, W)), -1)
        centres = torch.tensor(centres, dtype=torch.float32)[None]
        err_px = ((xy - centres) * torch.tensor([W / 2.0, H / 2.0])).abs()[b.mask]
        assert err_px.max().item() < 0.02


def test_a_native_kernel_is_keyed_by_the_cpu_and_falls_back_to_the_portable_build(tmp_path, monkeypatch):
    """Built for the machine's own instructions, a library must not be loaded on another CPU (its cache key names
    the CPU), and a compiler that refuses the flag leaves the portable build."""
    import ctypes

    from capture import compiled

    try:
        compiled._compiler()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("CAPTURE_CACHE", str(tmp_path))
    source = "int capture_twice(int x) { return 2 * x; }\n"
    functions = {"capture_twice": (ctypes.c_int, [ctypes.c_int])}

    def build(cpu: str, native_flags=compiled.NATIVE_FLAGS) -> set:
        monkeypatch.setattr(compiled, "NATIVE_FLAGS", native_flags)
        monkeypatch.setattr(compiled, "_cpu_id", lambda: cpu)
        kernel = compiled.CompiledKernel("twice", source, functions, native=True)
        assert kernel.error() is None and kernel.function("capture_twice")(21) == 42
        return {p.name for p in (tmp_path / "kernels").glob("twice_*.so")}

    first = build("cpu-a")
    assert len(first) == 1 and build("cpu-a") == first  # cached
    assert len(build("cpu-b")) == 2  # another CPU: another library
    refused = build("cpu-c", ("-mno-such-flag-anywhere",))  # the portable build
    assert len(refused) == 3
    assert len(build("", ("-mno-such-flag-anywhere",))) == 3  # no CPU id: the same portable build
