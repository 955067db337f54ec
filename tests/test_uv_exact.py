"""The UV sampler against an exact rational reference (tests/uv_reference.py) on hand-made layouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from capture.appearance import UVSampler, uv_layout_ndc
from capture.reference import world2uv
from capture.render import get_rasterizer
from uv_reference import pixels_to_uv, reference_layout

S = 32


def snapped_sampler(uvcoords, uvfaces, faces, size):
    """The previous sampler: the layout through the CPU rasterizer (vertices snapped to 1/256 texel)."""
    ndc = uv_layout_ndc(uvcoords)
    layout = torch.as_tensor(np.concatenate([ndc, np.ones((len(ndc), 1), np.float32)], 1))[None]
    frags = get_rasterizer("cpu").rasterize(layout, torch.as_tensor(uvfaces, dtype=torch.int64), (size, size))
    face_id = frags.face_id[0].reshape(-1)
    covered = face_id >= 0
    ids = torch.as_tensor(np.asarray(faces), dtype=torch.int64)[face_id.clamp(min=0)] * covered[:, None]
    return UVSampler(vertex_ids=ids, weights=frags.bary[0].reshape(-1, 3) * covered[:, None], size=size)


def _layout(triangles):
    """Triangles given as three pixel (column, row) points each -> uvcoords [3F, 2] float32, uvfaces [F, 3]."""
    pts = np.asarray(triangles, np.float64).reshape(-1, 2)
    return pixels_to_uv(pts, S), np.arange(len(pts)).reshape(-1, 3)


def _check_against_reference(uvcoords, uvfaces, size=S, texels=None):
    faces = uvfaces  # vertex ids = uv ids: the sampler's vertex ids then name the uv triangle's corners
    sampler = UVSampler.build(uvcoords, uvfaces, faces, size=size)
    face_id, bary, n_inside = reference_layout(uvcoords, uvfaces, size, texels)
    sel = np.arange(size * size) if texels is None else np.asarray(sorted(texels))
    covered = face_id[sel] >= 0
    np.testing.assert_array_equal(sampler.coverage.reshape(-1).numpy()[sel], covered)
    ids = sampler.vertex_ids.numpy()[sel]
    np.testing.assert_array_equal(ids[covered], np.asarray(faces)[face_id[sel][covered]])
    np.testing.assert_allclose(sampler.weights.numpy()[sel], bary[sel], rtol=0, atol=1e-7)
    return sampler, face_id, n_inside


def _grid_triangles(c0, r0, c1, r1, step):
    tris = []
    for r in range(r0, r1, step):
        for c in range(c0, c1, step):
            a, b, d, e = (c, r), (c + step, r), (c, r + step), (c + step, r + step)
            if ((r - r0) // step + (c - c0) // step) % 2:
                tris += [(a, b, e), (a, e, d)]  # diagonal a-e
            else:
                tris += [(a, b, d), (b, e, d)]  # diagonal b-d
    return tris


def test_grid_layout_shared_edges_vertices_and_outer_border():
    # Cells of 4 texels with corners on texel centres: centres lie on shared horizontal, vertical and
    # diagonal edges and on shared vertices, and on the layout's outer border.
    uv, uvfaces = _layout(_grid_triangles(4, 3, 20, 15, 4))
    sampler, face_id, n_inside = _check_against_reference(uv, uvfaces)
    assert n_inside.max() == 1  # no centre in two triangles, shared edges and vertices included
    # outer border by the top-left rule: left and top borders in, right and bottom borders out
    expect = np.zeros((S, S), bool)
    expect[3:15, 4:20] = True
    np.testing.assert_array_equal(sampler.coverage.numpy(), expect)
    np.testing.assert_array_equal(n_inside.reshape(S, S) == 1, expect)


def test_tiny_sliver_and_overlapping_triangles():
    eps = 2.0 ** -17  # 7.6e-6 texel
    tris = [
        [(4.9, 8.9), (5.2, 8.95), (5.0, 9.2)],  # 0: tiny, contains centre (5, 9)
        [(10.1, 8.1), (10.4, 8.15), (10.2, 8.4)],  # 1: tiny, contains no centre
        [(12, 8), (12.25, 8), (12, 8.25)],  # 2: tiny, centre (12, 8) on its top-left corner: covered
        [(16, 8), (15.75, 8), (16, 8.25)],  # 3: tiny, centre (16, 8) on its top-right corner: not covered
        [(24, 13.75), (24, 14.25), (23.75, 14)],  # 4: left of the vertical edge through centre (24, 14)
        [(24, 13.75), (24, 14.25), (24.25, 14)],  # 5: right of it: the edge is its left edge, it wins
        [(1, 1), (30, 30), (30, 30 - eps)],  # 6: sliver right of the diagonal: (c, c) on its left edge
        [(1, 1), (30 - eps, 30), (30, 30)],  # 7: sliver left of the same diagonal: (c, c) not covered
        [(2, 20), (18, 20), (18, 20 + eps)],  # 8: sliver below the row-20 centres: a top edge, covered
        [(2, 24 + 1e-3), (28, 24 + 2e-3), (28, 24 + 3e-3)],  # 9: sliver between centre rows: covers nothing
        [(20, 2), (29, 2), (20, 11)],  # 10: overlaps 11: the lower index wins
        [(22, 1), (30, 9), (22, 9)],  # 11
    ]
    uv, uvfaces = _layout(tris)
    sampler, face_id, n_inside = _check_against_reference(uv, uvfaces)
    at = face_id.reshape(S, S)
    assert at[9, 5] == 0 and (face_id == 1).sum() == 0 and (face_id == 9).sum() == 0
    assert at[8, 12] == 2 and at[8, 16] == -1
    assert at[14, 24] == 5 and n_inside.reshape(S, S)[14, 24] == 1
    # the shared corner (1, 1) lies on a non-top-left edge of each sliver, (30, 30) on 6's right edge
    assert [at[c, c] for c in range(2, 30)] == [6] * 28 and at[1, 1] == at[30, 30] == -1 and (face_id == 7).sum() == 0
    assert (at[20, 2:18] == 8).all() and at[20, 18] == -1
    overlap = (n_inside.reshape(S, S) == 2)
    assert overlap.sum() > 10 and (at[overlap] == 10).all() and (at == 11).sum() > 0
    # the old snapped rasterizer puts the diagonal sliver's centres off its edge (no longer the reference)
    old = snapped_sampler(uv, uvfaces, uvfaces, S)
    assert not torch.equal(old.coverage, sampler.coverage)


def test_random_float32_layout_with_overlaps():
    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 1, (120, 1, 2))
    scale = np.exp(rng.uniform(np.log(0.004), np.log(0.15), (120, 1, 1)))
    uv = (centres + scale * rng.normal(size=(120, 3, 2))).reshape(-1, 2).astype(np.float32)
    uv[:30] = np.round(uv[:30] * S - 0.5) / S + 0.5 / S  # some corners exactly on texel centres
    uvfaces = np.arange(len(uv)).reshape(-1, 3)
    _check_against_reference(uv, uvfaces)


def test_pack_layout_against_reference_and_sampling(small_pack):
    uv, uvfaces, faces = small_pack.uv.uvcoords, small_pack.uv.uvfaces, small_pack.uv.faces
    size = 256
    sampler = UVSampler.build(uv, uvfaces, faces, size=size)
    old = snapped_sampler(uv, uvfaces, faces, size)
    rng = np.random.default_rng(0)
    differ = np.flatnonzero((sampler.coverage ^ old.coverage).reshape(-1).numpy())
    texels = set(rng.choice(size * size, 3000, replace=False).tolist()) | set(differ.tolist())
    _, face_id, _ = _check_against_reference(uv, uvfaces, size, texels)
    assert (face_id >= 0).sum() > 1000
    # sampling: the sparse product and the gather agree, as before
    verts = torch.as_tensor(small_pack.flame.v_template, dtype=torch.float32)[None]
    torch.testing.assert_close(sampler.sample(verts), world2uv(sampler, verts), atol=1e-6, rtol=0)


def test_build_keeps_the_old_call_form():
    uv, uvfaces = _layout(_grid_triangles(4, 3, 20, 15, 4))
    new = UVSampler.build(uv, uvfaces, uvfaces, size=S)
    legacy = UVSampler.build(get_rasterizer("cpu"), uv, uvfaces, uvfaces, size=S)
    assert torch.equal(new.vertex_ids, legacy.vertex_ids) and torch.equal(new.weights, legacy.weights)
    with pytest.raises(TypeError):
        UVSampler.build(uv, uvfaces, uvfaces, uvfaces, size=S)
