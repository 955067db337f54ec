"""Silhouette antialiasing (`capture.render.antialias`) against exact pixel areas, and its two implementations
against each other."""
import math

import numpy as np
import pytest
import torch

from capture.conventions import pixel_to_ndc
from capture.render import antialias as aa
from capture.render.cpu import CpuRasterizer

H, W = 64, 80


def _mesh(quads):
    """Quads given by their pixel corners [4, 2] and a depth each -> (vertices [1, V, 3] NDC, faces [F, 3])."""
    verts, faces = [], []
    for corners, z in quads:
        base = len(verts)
        ndc = pixel_to_ndc(torch.tensor(corners, dtype=torch.float64), (H, W))
        verts += [[float(a), float(b), z] for a, b in ndc]
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    return torch.tensor([verts], dtype=torch.float32), torch.tensor(faces)


def _rectangle(angle_deg, centre=(39.3, 30.7), half=(24.0, 15.0)):
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    local = np.array([[-half[0], -half[1]], [half[0], -half[1]], [half[0], half[1]], [-half[0], half[1]]])
    return local @ np.array([[c, -s], [s, c]]).T + np.array(centre)


def _inside(corners, px, py):
    """Whether points lie inside the convex quad (corners in order)."""
    sign = None
    for k in range(4):
        (ax, ay), (bx, by) = corners[k], corners[(k + 1) % 4]
        cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
        sign = (cross >= 0) if sign is None else sign & (cross >= 0)
    return sign


def _clip(poly, a, b):
    """The part of polygon `poly` (a list of points) on the side of the line a -> b that `_inside` keeps
    (Sutherland-Hodgman)."""
    def side(p):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    out = []
    for k, p in enumerate(poly):
        q = poly[(k + 1) % len(poly)]
        sp, sq = side(p), side(q)
        if sp >= 0:
            out.append(p)
        if (sp >= 0) != (sq >= 0):
            t = sp / (sp - sq)
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def _area(poly):
    return 0.5 * abs(sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(poly, poly[1:] + poly[:1]))) if poly else 0.0


def _exact_share(corners):
    """Each pixel's area inside the convex quad: its unit square clipped by the quad's four edges."""
    lo, hi = np.floor(corners.min(0)) - 1, np.ceil(corners.max(0)) + 1
    inside = _inside(corners, *np.meshgrid(np.arange(W), np.arange(H)))
    share = inside.astype(float)
    for r in range(max(int(lo[1]), 0), min(int(hi[1]) + 1, H)):
        for c in range(max(int(lo[0]), 0), min(int(hi[0]) + 1, W)):
            poly = [(c - 0.5, r - 0.5), (c + 0.5, r - 0.5), (c + 0.5, r + 0.5), (c - 0.5, r + 0.5)]
            for k in range(4):
                poly = _clip(poly, corners[k], corners[(k + 1) % 4])
            share[r, c] = _area(poly)
    return share


def _draw(vertices, faces, colours, background=(0, 0, 0)):
    """The rasterised mesh as an opaque picture: each face's flat colour over the background."""
    frags = CpuRasterizer().rasterize(vertices, faces, (H, W))
    ids = frags.face_id[0].numpy()
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[:] = background
    rgb[ids >= 0] = np.asarray(colours, np.uint8)[ids[ids >= 0]]
    return frags, rgb


def _run(rgb, alpha, frags, vertices, faces, kernel):
    x, y = aa.vertex_pixels(vertices, (H, W))
    return aa.antialias(rgb, alpha, frags.face_id, frags.depth, x, y, faces.numpy(), aa.face_neighbours(faces),
                        kernel=kernel)


def _kernels():
    return ["numpy"] + (["c"] if aa.kernel_error() is None else [])


@pytest.mark.parametrize("kernel", _kernels())
@pytest.mark.parametrize("angle", [0.0, 17.0, 45.0, 71.0, -33.0])
def test_edge_pixels_get_their_exact_area(kernel, angle):
    """A transparent picture of one quad: alpha is each pixel's area inside it (exact for a straight edge, so
    away from the corners), the colour stays the quad's (straight alpha)."""
    corners = _rectangle(angle)
    vertices, faces = _mesh([(corners, 0.5)])
    frags, rgb = _draw(vertices, faces, [(200, 120, 40)] * 2)
    alpha = np.where(frags.face_id[0].numpy() >= 0, 255, 0).astype(np.uint8)
    exact = _exact_share(corners)
    ys, xs = np.mgrid[0:H, 0:W]
    far = np.min(np.hypot(xs[..., None] - corners[:, 0], ys[..., None] - corners[:, 1]), axis=-1) > 2.0
    edge = far & (exact > 0) & (exact < 1)
    before = np.abs(alpha / 255 - exact)[edge].mean()
    changed = _run(rgb, alpha, frags, vertices, faces, kernel)
    error = np.abs(alpha / 255 - exact)[far]
    assert changed >= edge.sum() > 60
    assert error.max() < 0.01 and error[edge[far]].mean() < 0.004, (error.max(), before)
    assert before > 0.15  # what one sample a pixel gives
    assert (np.abs(rgb[alpha > 0].astype(int) - (200, 120, 40)) <= 1).all() and (rgb[alpha == 0] == 0).all()


@pytest.mark.parametrize("kernel", _kernels())
def test_a_nearer_surface_mixes_over_the_farther_one_and_shared_edges_stay(kernel):
    """An opaque picture: a near quad over a far one. Along the near one's outline the colour is the area mix
    of the two; the diagonal each quad's two faces share is no silhouette and is left alone."""
    far_quad = np.array([[4.2, 3.1], [75.6, 3.4], [75.3, 60.8], [3.9, 60.5]])
    near_quad = _rectangle(23.0, half=(18.0, 11.0))
    vertices, faces = _mesh([(far_quad, 0.9), (near_quad, 0.1)])
    frags, rgb = _draw(vertices, faces, [(0, 0, 255), (0, 0, 255), (250, 10, 0), (250, 10, 0)])
    before = rgb.copy()
    _run(rgb, None, frags, vertices, faces, kernel)
    exact = _exact_share(near_quad)
    ys, xs = np.mgrid[0:H, 0:W]
    away = np.min(np.hypot(xs[..., None] - near_quad[:, 0], ys[..., None] - near_quad[:, 1]), axis=-1) > 2.0
    inner = _inside(far_quad, xs, ys) & (_exact_share(far_quad) == 1)  # away from the far quad's own outline
    mixed = exact[..., None] * np.array([250, 10, 0]) + (1 - exact[..., None]) * np.array([0, 0, 255])
    err = np.abs(rgb.astype(float) - mixed)[away & inner]
    assert err.max() <= 3.0, err.max()
    assert (np.abs(before.astype(int) - mixed)[away & inner]).max() > 100  # one sample a pixel
    # pixels on neither outline (the diagonals included) are untouched
    untouched = (exact == 0) | (exact == 1)
    untouched &= inner & away
    assert (rgb[untouched] == before[untouched]).all()


def test_the_compiled_pass_matches_the_numpy_twin_on_a_head(demo_pack):
    """The demo head with its ears, nose and lids over each other: both implementations change the same
    pixels to within a level (float rounding), opaque and transparent, and a picture offset from its fragments."""
    if aa.kernel_error() is not None:
        pytest.skip(f"no compiled pass here: {aa.kernel_error()}")
    from capture.avatar import demo_identity
    from capture.crop import crop_transform
    from capture.deca import DECA
    from capture.retarget import AvatarRenderer

    deca = DECA.from_pack(demo_pack)
    avatar = demo_identity(deca)
    source = avatar.codes.replace(pose=torch.tensor([[0.1, 0.6, 0.0, 0.2, 0.0, 0.0]]))
    renderer = AvatarRenderer(deca, avatar, "avatar", (180, 240), antialias=False)
    prepared = renderer.prepare(source, crop_transform((20, 50, 170, 200)))
    frags, pixels = renderer._lit_pixels(prepared)
    picture = renderer._composite(np.zeros((180, 240, 3), np.uint8), pixels)
    (top, left, patch), = picture.parts
    window = frags.window
    x, y = aa.vertex_pixels(prepared.screen, (180, 240), window)
    faces = deca.assets.faces.numpy()
    nb = aa.face_neighbours(faces)
    for transparent in (False, True):
        out = {}
        for kernel in ("c", "numpy"):
            rgb = np.ascontiguousarray(patch).copy()
            alpha = np.zeros(rgb.shape[:2], np.uint8)
            ids = frags.face_id[0].numpy()
            alpha[window.top - top:window.top - top + ids.shape[0], window.left - left:window.left - left
                  + ids.shape[1]] = np.where(ids >= 0, 255, 0)
            n = aa.antialias(rgb, alpha if transparent else None, frags.face_id, frags.depth, x, y, faces, nb,
                             window.top - top, window.left - left, kernel=kernel)
            out[kernel] = (n, rgb.astype(int), alpha.astype(int))
        (n_c, rgb_c, a_c), (n_np, rgb_np, a_np) = out["c"], out["numpy"]
        assert n_c > 200 and abs(n_c - n_np) <= max(3, n_c // 200)
        assert (np.abs(rgb_c - rgb_np).max(-1) > 1).sum() <= max(3, n_c // 200)
        assert (np.abs(a_c - a_np) > 1).sum() <= max(3, n_c // 200)
        assert ((rgb_c != patch).any(-1) | (a_c % 255 > 0)).sum() >= 0.8 * n_c  # most of them visibly change


def test_both_implementations_agree_on_broken_meshes():
    """Triangle soups (faces over each other, folded, non-manifold), NaN and far-away corners, a picture offset
    from its fragments: the compiled pass and the numpy twin change the same pixels the same way, no crash."""
    if aa.kernel_error() is not None:
        pytest.skip(f"no compiled pass here: {aa.kernel_error()}")
    rng = np.random.default_rng(0)
    for trial in range(40):
        n_verts, n_faces = int(rng.integers(3, 40)), int(rng.integers(1, 60))
        vertices = torch.tensor(rng.uniform(-1.3, 1.3, (1, n_verts, 3)), dtype=torch.float32)
        if trial % 5 == 0:
            vertices[0, rng.integers(0, n_verts)] = float("nan")
        if trial % 7 == 0:
            vertices[0, rng.integers(0, n_verts), :2] = 1e7
        faces = torch.tensor(rng.integers(0, n_verts, (n_faces, 3)))
        frags = CpuRasterizer().rasterize(vertices, faces, (H, W))
        ids = frags.face_id[0].numpy()
        rgb = np.full((H + 2, W + 3, 3), 31, np.uint8)
        rgb[1:1 + H, 2:2 + W][ids >= 0] = rng.integers(0, 256, (n_faces, 3), dtype=np.uint8)[ids[ids >= 0]]
        alpha = np.where(np.pad(ids, ((1, 1), (2, 1)), constant_values=-1) >= 0, 255, 0).astype(np.uint8)
        x, y = aa.vertex_pixels(vertices, (H, W))
        out = []
        for kernel in ("c", "numpy"):
            r, a = rgb.copy(), alpha.copy()
            n = aa.antialias(r, a, frags.face_id, frags.depth, x, y, faces.numpy(), aa.face_neighbours(faces), 1, 2,
                             kernel=kernel)
            out.append((n, r.astype(int), a.astype(int)))
        (n_c, rgb_c, a_c), (n_np, rgb_np, a_np) = out
        assert n_c == n_np, trial
        assert (np.abs(rgb_c - rgb_np).max(-1) <= 1).all() and (np.abs(a_c - a_np) <= 1).all(), trial


def test_face_neighbours_and_bad_input():
    faces = np.array([[0, 1, 2], [0, 2, 3], [2, 1, 4], [1, 2, 5]])  # edge 1-2 has three faces: a border
    nb = aa.face_neighbours(faces)
    assert nb[0].tolist() == [-1, -1, 1] and nb[1].tolist() == [0, -1, -1]
    assert nb[2].tolist() == [-1, -1, -1] and nb[3].tolist() == [-1, -1, -1]
    vertices, faces_t = _mesh([(_rectangle(10.0), 0.5)])
    frags, rgb = _draw(vertices, faces_t, [(9, 9, 9)] * 2)
    x, y = aa.vertex_pixels(vertices, (H, W))
    beyond = torch.where(frags.face_id >= 0, frags.face_id + 5, frags.face_id)  # ids past the two faces
    for kernel in _kernels():
        with pytest.raises(ValueError, match="faces up to"):
            aa.antialias(rgb.copy(), None, beyond, frags.depth, x, y, faces_t.numpy(), aa.face_neighbours(faces_t),
                         kernel=kernel)
    with pytest.raises(ValueError, match="do not fit 4 vertices"):  # a corner past the vertices
        aa.antialias(rgb.copy(), None, frags.face_id, frags.depth, x, y, faces_t.numpy() + 1,
                     aa.face_neighbours(faces_t))
    with pytest.raises(ValueError, match="uint8"):
        aa.antialias(rgb.astype(np.float32), None, frags.face_id, frags.depth, x, y, faces_t.numpy(),
                     aa.face_neighbours(faces_t))
