"""capture.flame against independent references: smplx's FLAME, scipy's rotations, hand tables.

The test model is a small random-but-valid FLAME-format head (an ellipsoid from a subdivided
icosahedron, FLAME's 5-joint tree, smooth random bases), written to disk in the plain-numpy layout
smplx loads, so both implementations consume exactly the same data.
"""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from capture.assets.pack import FlameModel, LandmarkEmbedding
from capture.flame import (
    FLAME,
    FlameOutput,
    contour_rows_from_yaw,
    dynamic_contour_rows,
    head_yaw_degrees,
    lbs,
    rodrigues,
    vertices_to_landmarks,
)

smplx = pytest.importorskip("smplx")

PARENTS = [-1, 0, 1, 1, 1]


# ----------------------------------------------------------------------------------------------
# Test model
# ----------------------------------------------------------------------------------------------


def _icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    t = (1.0 + 5**0.5) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
             (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [np.array(v, float) / np.linalg.norm(v) for v in verts]
    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int, cache: dict[tuple[int, int], int] = cache) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new
    return np.array(verts), np.array(faces, dtype=np.int64)


def make_model(seed: int = 0) -> tuple[FlameModel, LandmarkEmbedding]:
    rng = np.random.default_rng(seed)
    unit, faces = _icosphere(3)  # 642 vertices, 1280 triangles
    V = unit.shape[0]
    v_template = unit * np.array([0.08, 0.11, 0.09])

    # Smooth per-vertex features -> smooth random bases (no per-vertex noise).
    x, y, z = unit.T
    feats = np.stack([x, y, z, x * y, y * z, z * x, x * x - y * y, z * z, np.sin(3 * x), np.cos(2 * y),
                      np.sin(2 * z + 1), x * y * z, np.ones(V)], axis=1)  # [V, 13]
    shapedirs = np.einsum("vm,mck->vck", feats, rng.normal(size=(feats.shape[1], 3, 400))) * 4e-4
    posedirs = np.einsum("vm,mck->vck", feats, rng.normal(size=(feats.shape[1], 3, 36))) * 2e-3

    targets = np.array([[0, -0.09, -0.02], [0, -0.07, -0.02], [0, -0.03, 0.04], [0.03, 0.03, 0.07],
                        [-0.03, 0.03, 0.07]])
    J_regressor = np.zeros((5, V))
    for j, target in enumerate(targets):
        near = np.argsort(np.linalg.norm(v_template - target, axis=1))[:25]
        w = rng.uniform(0.2, 1.0, size=near.size)
        J_regressor[j, near] = w / w.sum()
    d2 = ((v_template[:, None, :] - targets[None]) ** 2).sum(-1)
    logits = -d2 / 0.04**2
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)

    F = faces.shape[0]

    def bary(*shape: int) -> np.ndarray:
        return rng.dirichlet(np.ones(3), size=shape).astype(np.float32)

    flame = FlameModel(
        v_template=v_template.astype(np.float32),
        shapedirs=shapedirs.astype(np.float32),
        posedirs=posedirs.astype(np.float32),
        J_regressor=J_regressor.astype(np.float32),
        weights=weights.astype(np.float32),
        kintree_table=np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        faces=faces,
    )
    lmk = LandmarkEmbedding(
        static_lmk_faces_idx=rng.integers(0, F, size=51),
        static_lmk_bary_coords=bary(51),
        dynamic_lmk_faces_idx=rng.integers(0, F, size=(79, 17)),
        dynamic_lmk_bary_coords=bary(79, 17),
        full_lmk_faces_idx=rng.integers(0, F, size=68),
        full_lmk_bary_coords=bary(68),
    )
    return flame, lmk


def smplx_contour_permutation() -> np.ndarray:
    """smplx negates DECA's yaw (its contour helper is the one DECA's lbs.py ships but never calls).

    Row k of the table handed to smplx is DECA's row perm[k]: with s = -yaw both clamp/round/split rules
    land on rows that this permutation maps onto each other, at every yaw, including beyond +-39.
    """
    return np.array([0] + [39 + k for k in range(1, 40)] + [k - 39 for k in range(40, 79)])


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def smplx_dir(model, tmp_path_factory):
    flame, lmk = model
    root = tmp_path_factory.mktemp("smplx_flame")
    with open(root / "FLAME_NEUTRAL.pkl", "wb") as f:
        pickle.dump(dict(v_template=flame.v_template, shapedirs=flame.shapedirs, posedirs=flame.posedirs,
                         J_regressor=flame.J_regressor, kintree_table=flame.kintree_table,
                         weights=flame.weights, f=flame.faces), f)
    with open(root / "flame_static_embedding.pkl", "wb") as f:
        pickle.dump(dict(lmk_face_idx=lmk.static_lmk_faces_idx, lmk_b_coords=lmk.static_lmk_bary_coords), f)
    perm = smplx_contour_permutation()
    np.save(root / "flame_dynamic_embedding.npy",
            np.array(dict(lmk_face_idx=lmk.dynamic_lmk_faces_idx[perm],
                          lmk_b_coords=lmk.dynamic_lmk_bary_coords[perm]), dtype=object),
            allow_pickle=True)
    return root


def smplx_flame(smplx_dir, batch: int, n_shape: int = 100, n_exp: int = 50):
    """The independent reference: smplx's FLAME on the same model files, with the face contour."""
    return smplx.FLAME(str(smplx_dir), gender="neutral", num_betas=n_shape, num_expression_coeffs=n_exp,
                       use_face_contour=True, batch_size=batch)


def random_axis_angle(rng: np.random.Generator, n: int, max_angle: float) -> np.ndarray:
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return axis * rng.uniform(0, max_angle, size=(n, 1))


def t32(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


# ----------------------------------------------------------------------------------------------
# Against smplx
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_shape,n_exp", [(100, 50), (300, 100)])
def test_matches_smplx(model, smplx_dir, n_shape, n_exp):
    flame_arrays, lmk = model
    B = 12
    rng = np.random.default_rng(n_shape)
    ref = smplx_flame(smplx_dir, B, n_shape, n_exp)
    ours = FLAME.from_arrays(flame_arrays, lmk, n_shape=n_shape, n_exp=n_exp)

    shape = t32(rng.normal(size=(B, n_shape)) * 2)
    exp = t32(rng.normal(size=(B, n_exp)) * 2)
    glob = random_axis_angle(rng, B, 0.999 * math.pi)
    glob[:4] = [[0, 0.3, 0], [0, -0.6, 0], [0, 1.5, 0.1], [0, 0, 0]]  # a few clean yaws, and rest
    jaw = random_axis_angle(rng, B, 0.999 * math.pi)
    pose = t32(np.concatenate([glob, jaw], 1))

    with torch.no_grad():
        out = ours(shape, exp, pose)
        r = ref(betas=shape, expression=exp, global_orient=pose[:, :3], jaw_pose=pose[:, 3:])
    assert isinstance(out, FlameOutput)
    assert out.vertices.shape == (B, 642, 3) and out.joints.shape == (B, 5, 3)
    assert out.landmarks2d.shape == (B, 68, 3) and out.landmarks3d.shape == (B, 68, 3)
    np.testing.assert_allclose(out.vertices, r.vertices, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.joints, r.joints[:, :5], atol=1e-5, rtol=0)
    # smplx appends static (51) then dynamic (17) landmarks to its joints; DECA's order is contour first.
    np.testing.assert_allclose(out.landmarks2d[:, 17:], r.joints[:, 5:56], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.landmarks2d[:, :17], r.joints[:, 56:73], atol=1e-5, rtol=0)


def test_matches_smplx_with_neck_and_eyes(model, smplx_dir):
    """Neck and eye poses enter LBS like every other joint (smplx's contour ignores the neck: not compared)."""
    flame_arrays, lmk = model
    B = 6
    rng = np.random.default_rng(7)
    ref = smplx.FLAME(str(smplx_dir), gender="neutral", num_betas=100,
                       num_expression_coeffs=50, batch_size=B)
    ours = FLAME.from_arrays(flame_arrays, lmk)
    shape, exp = t32(rng.normal(size=(B, 100))), t32(rng.normal(size=(B, 50)))
    pose = t32(random_axis_angle(rng, 2 * B, 2.5).reshape(B, 6))
    neck = t32(random_axis_angle(rng, B, 1.0))
    eyes = t32(random_axis_angle(rng, 2 * B, 1.0).reshape(B, 6))
    with torch.no_grad():
        out = ours(shape, exp, pose, neck_pose=neck, eye_pose=eyes)
        r = ref(betas=shape, expression=exp, global_orient=pose[:, :3], jaw_pose=pose[:, 3:], neck_pose=neck,
                leye_pose=eyes[:, :3], reye_pose=eyes[:, 3:])
    np.testing.assert_allclose(out.vertices, r.vertices, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.joints, r.joints[:, :5], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.landmarks2d[:, 17:], r.joints[:, 5:56], atol=1e-5, rtol=0)


def test_identity_folded_in_poses_like_smplx(model, smplx_dir):
    """with_identity(shape): the shaped template once, then expression + pose per call, as smplx poses them."""
    flame_arrays, lmk = model
    B = 5
    rng = np.random.default_rng(11)
    ref = smplx_flame(smplx_dir, B)
    full = FLAME.from_arrays(flame_arrays, lmk)
    shape = t32(rng.normal(size=(1, 100)) * 2)
    shaped = full.with_identity(shape)
    assert shaped.n_shape == 0 and shaped.shapedirs.shape[-1] == 50
    exp = t32(rng.normal(size=(B, 50)) * 2)
    pose = t32(random_axis_angle(rng, 2 * B, 2.0).reshape(B, 6))
    with torch.no_grad():
        out = shaped(shape[:, :0].expand(B, 0), exp, pose)
        bare = shaped(shape[:, :0].expand(B, 0), exp, pose, landmarks=False)
        r = ref(betas=shape.expand(B, -1), expression=exp, global_orient=pose[:, :3], jaw_pose=pose[:, 3:])
    np.testing.assert_allclose(out.vertices, r.vertices, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.joints, r.joints[:, :5], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.landmarks2d[:, 17:], r.joints[:, 5:56], atol=1e-5, rtol=0)
    assert torch.equal(bare.vertices, out.vertices) and bare.landmarks2d is None and bare.landmarks3d is None
    with pytest.raises(ValueError, match="shape must be"):
        full.with_identity(shape.expand(2, -1))


def test_landmark_model_gives_smplx_landmarks_and_joints_from_the_landmark_corners(model, smplx_dir):
    """landmark_model(): LBS on the landmark triangles' corners only, the same joints and landmarks as smplx
    (head turns over the whole contour table, neck and eyes posed), and gradients that agree with the full model."""
    flame_arrays, lmk = model
    B = 6
    rng = np.random.default_rng(5)
    ref = smplx_flame(smplx_dir, B)
    full = FLAME.from_arrays(flame_arrays, lmk)
    cut = full.landmark_model()
    corners = np.unique(np.asarray(flame_arrays.faces)[np.r_[np.ravel(lmk.static_lmk_faces_idx),
                                                             np.ravel(lmk.dynamic_lmk_faces_idx),
                                                             np.ravel(lmk.full_lmk_faces_idx)]])
    assert cut.v_template.shape[0] == corners.size + 5  # (this small test mesh: every vertex is a corner)
    shape, exp = t32(rng.normal(size=(B, 100))), t32(rng.normal(size=(B, 50)) * 2)
    pose = t32(random_axis_angle(rng, 2 * B, 1.0).reshape(B, 6))
    pose[:, 1] = t32(np.linspace(-1.2, 1.2, B))  # yaw from beyond -39 to beyond +39 degrees
    neck, eyes = t32(random_axis_angle(rng, B, 0.5)), t32(random_axis_angle(rng, 2 * B, 0.5).reshape(B, 6))
    with torch.no_grad():
        out = cut(shape, exp, pose, neck_pose=neck, eye_pose=eyes)
        r = ref(betas=shape, expression=exp, global_orient=pose[:, :3], jaw_pose=pose[:, 3:], neck_pose=neck,
                leye_pose=eyes[:, :3], reye_pose=eyes[:, 3:])
        whole = full(shape, exp, pose, neck_pose=neck, eye_pose=eyes)
    np.testing.assert_allclose(out.joints, r.joints[:, :5], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.landmarks2d[:, 17:], r.joints[:, 5:56], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.landmarks2d, whole.landmarks2d, atol=1e-5, rtol=0)  # contour rows too
    np.testing.assert_allclose(out.landmarks3d, whole.landmarks3d, atol=1e-5, rtol=0)
    grads = []
    for m in (full, cut):
        e = exp.clone().requires_grad_(True)
        p = pose.clone().requires_grad_(True)
        m(shape, e, p).landmarks2d.square().sum().backward()
        grads.append(torch.cat([e.grad, p.grad], 1))
    np.testing.assert_allclose(grads[1], grads[0], atol=1e-4, rtol=1e-4)


def test_landmark_model_of_the_demo_head_reads_a_tenth_of_its_vertices(demo_pack):
    """On a FLAME-sized mesh the cut model renumbers vertices and faces; landmarks and joints stay the full model's."""
    full = FLAME(demo_pack)
    cut = full.landmark_model()
    assert cut.v_template.shape[0] < full.v_template.shape[0] / 5
    rng = np.random.default_rng(2)
    B = 4
    shape, exp = t32(rng.normal(size=(B, 100))), t32(rng.normal(size=(B, 50)) * 2)
    pose = t32(random_axis_angle(rng, 2 * B, 0.8).reshape(B, 6))
    with torch.no_grad():
        a, b = full(shape, exp, pose), cut(shape, exp, pose)
    for name in ("joints", "landmarks2d", "landmarks3d"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=1e-6, rtol=0, err_msg=name)


def test_lbs_pure_function_matches_smplx_lbs(model):
    """The functional core alone (tensor parents, float64) against smplx.lbs.lbs."""
    from smplx.lbs import lbs as smplx_lbs

    flame, _ = model
    rng = np.random.default_rng(3)
    B, K = 4, 40
    v_t = torch.as_tensor(flame.v_template, dtype=torch.float64)
    sd = torch.as_tensor(flame.shapedirs[:, :, :K], dtype=torch.float64)
    pd = torch.as_tensor(flame.posedirs.reshape(-1, 36).T.copy(), dtype=torch.float64)
    Jr = torch.as_tensor(flame.J_regressor, dtype=torch.float64)
    W = torch.as_tensor(flame.weights, dtype=torch.float64)
    parents = torch.tensor(PARENTS)
    betas = torch.as_tensor(rng.normal(size=(B, K)))
    pose = torch.as_tensor(random_axis_angle(rng, 5 * B, 3.1).reshape(B, 15))
    v, j = lbs(betas, pose, v_t, sd, pd, Jr, parents, W)
    rv, rj = smplx_lbs(betas, pose, v_t, sd, pd, Jr, parents, W)
    assert v.dtype == torch.float64
    # smplx's Rodrigues adds 1e-8 to the vector before taking its norm: agreement to ~1e-8, not 1e-15.
    np.testing.assert_allclose(v, rv, atol=1e-7, rtol=0)
    np.testing.assert_allclose(j, rj, atol=1e-7, rtol=0)


def test_landmarks3d_full_embedding_by_hand(model):
    flame_arrays, lmk = model
    ours = FLAME.from_arrays(flame_arrays, lmk)
    rng = np.random.default_rng(11)
    B = 3
    with torch.no_grad():
        out = ours(t32(rng.normal(size=(B, 100))), t32(rng.normal(size=(B, 50))), t32(rng.normal(size=(B, 6))))
    verts = out.vertices.double().numpy()
    tri = flame_arrays.faces[lmk.full_lmk_faces_idx]  # [68, 3]
    expected = np.einsum("lk,blkc->blc", lmk.full_lmk_bary_coords, verts[:, tri])
    np.testing.assert_allclose(out.landmarks3d, expected, atol=1e-6, rtol=0)


def test_vertices_to_landmarks_batched_indices():
    verts = torch.arange(2 * 4 * 3, dtype=torch.float64).reshape(2, 4, 3)
    faces = torch.tensor([[0, 1, 2], [1, 2, 3]])
    idx = torch.tensor([[0, 1], [1, 1]])
    bary = torch.tensor([[[1.0, 0, 0], [0, 0.5, 0.5]], [[0.2, 0.3, 0.5], [0, 0, 1]]], dtype=torch.float64)
    got = vertices_to_landmarks(verts, faces, idx, bary)
    v = verts.numpy()
    expected = np.stack([
        [v[0, 0], 0.5 * v[0, 2] + 0.5 * v[0, 3]],
        [0.2 * v[1, 1] + 0.3 * v[1, 2] + 0.5 * v[1, 3], v[1, 3]],
    ])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # Unbatched index/bary broadcast over the batch.
    got1 = vertices_to_landmarks(verts, faces, idx[0], bary[0])
    np.testing.assert_allclose(got1[1], [v[1, 0], 0.5 * v[1, 2] + 0.5 * v[1, 3]], atol=1e-12)


def test_buffers_follow_deca(model):
    flame_arrays, lmk = model
    m = FLAME.from_arrays(flame_arrays, lmk, n_shape=100, n_exp=50)
    assert m.shapedirs.shape == (642, 3, 150) and m.shapedirs.dtype == torch.float32
    np.testing.assert_array_equal(m.shapedirs[:, :, :100], flame_arrays.shapedirs[:, :, :100])
    np.testing.assert_array_equal(m.shapedirs[:, :, 100:], flame_arrays.shapedirs[:, :, 300:350])
    assert m.posedirs.shape == (36, 642 * 3)
    # posedirs_T[p, 3v + c] = posedirs[v, c, p]
    np.testing.assert_array_equal(m.posedirs[7, 3 * 10 + 2], flame_arrays.posedirs[10, 2, 7])
    assert m.parents.tolist() == PARENTS and m.faces.dtype == torch.int64


def test_built_from_a_model_pack_and_follows_dtype(model, tmp_path):
    from capture.assets.pack import ModelPack, UVLayout

    flame_arrays, lmk = model
    z = np.zeros((256, 256), np.float32)
    pack = ModelPack(root=tmp_path, flame=flame_arrays, landmarks=lmk,
                     uv=UVLayout(faces=flame_arrays.faces, uvcoords=np.zeros((3, 2), np.float32),
                                 uvfaces=flame_arrays.faces),
                     face_eye_mask=z, face_mask=z, fixed_displacement=z,
                     mean_texture=np.zeros((512, 512, 3), np.float32), checkpoint={})
    m = FLAME(pack, n_shape=20, n_exp=10)
    ref = FLAME.from_arrays(flame_arrays, lmk, n_shape=20, n_exp=10).double()
    rng = np.random.default_rng(2)
    shape, exp, pose = rng.normal(size=(2, 20)), rng.normal(size=(2, 10)), rng.normal(size=(2, 6))
    with torch.no_grad():
        out = m(t32(shape), t32(exp), t32(pose))
        out64 = ref(*(torch.as_tensor(a) for a in (shape, exp, pose)))
    assert out64.vertices.dtype == torch.float64 and out64.landmarks2d.dtype == torch.float64
    np.testing.assert_allclose(out.vertices, out64.vertices, atol=1e-5, rtol=0)


def test_errors_name_the_argument(model):
    flame_arrays, lmk = model
    m = FLAME.from_arrays(flame_arrays, lmk)
    z = torch.zeros
    with pytest.raises(ValueError, match=r"expression must be \[2, 50\], found \[2, 10\]"):
        m(z(2, 100), z(2, 10), z(2, 6))
    with pytest.raises(ValueError, match=r"pose must be \[B, 6\], found \[2, 15\]"):
        m(z(2, 100), z(2, 50), z(2, 15))
    with pytest.raises(ValueError, match=r"eye_pose must be \[2, 6\]"):
        m(z(2, 100), z(2, 50), z(2, 6), eye_pose=z(2, 3))
    with pytest.raises(ValueError, match="shape is torch.float64"):
        m(z(2, 100, dtype=torch.float64), z(2, 50), z(2, 6))
    with pytest.raises(ValueError, match="n_shape must be in 0..300"):
        FLAME.from_arrays(flame_arrays, lmk, n_shape=301)
    with pytest.raises(ValueError, match="n_exp must be in 0..100"):
        FLAME.from_arrays(flame_arrays, lmk, n_exp=101)


# ----------------------------------------------------------------------------------------------
# Dynamic contour rows (docs/formats.md 1.3)
# ----------------------------------------------------------------------------------------------

# Integer yaw -45..45 -> row, written out from the table: < -39 and -39 -> 78, -38..-1 -> 77..40,
# 0..39 -> 0..39, > 39 -> 39 (clamped before the sign split).
INTEGER_TABLE = dict(zip(range(-45, 46), [78] * 7 + list(range(77, 39, -1)) + list(range(0, 40)) + [39] * 6))
FRACTIONAL_TABLE = {10.4: 10, 10.6: 11, -10.4: 49, -10.6: 50, 0.3: 0, -0.3: 0, 0.7: 1, -0.7: 40, 39.4: 39,
                    39.6: 39, 44.9: 39, -38.4: 77, -38.6: 78, -39.4: 78, -44.2: 78, 2.5: 2, -2.5: 41, 3.5: 4}


def test_integer_table_is_what_formats_says():
    assert INTEGER_TABLE[0] == 0 and INTEGER_TABLE[39] == 39 and INTEGER_TABLE[45] == 39
    assert INTEGER_TABLE[-1] == 40 and INTEGER_TABLE[-38] == 77 and INTEGER_TABLE[-39] == 78
    assert INTEGER_TABLE[-40] == 78 and INTEGER_TABLE[-45] == 78


def test_contour_rows_from_yaw_table():
    table = {**{float(k): v for k, v in INTEGER_TABLE.items()}, **FRACTIONAL_TABLE}
    yaw = torch.tensor(list(table), dtype=torch.float64)
    rows = contour_rows_from_yaw(yaw)
    assert rows.dtype == torch.int64
    assert rows.tolist() == list(table.values())


def _pose15(root: np.ndarray, neck: np.ndarray | None = None) -> torch.Tensor:
    B = root.shape[0]
    pose = np.zeros((B, 15))
    pose[:, :3] = root
    if neck is not None:
        pose[:, 3:6] = neck
    return torch.as_tensor(pose)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dynamic_contour_rows_from_pure_yaw(dtype):
    # Non-integer yaws stay clear of .5 so float32 rotation round-off cannot flip a rounding.
    table = {**{float(k): v for k, v in INTEGER_TABLE.items()},
             **{k: v for k, v in FRACTIONAL_TABLE.items() if abs(abs(k) % 1 - 0.5) > 0.05}}
    yaw = np.deg2rad(np.array(list(table)))
    root = np.stack([np.zeros_like(yaw), yaw, np.zeros_like(yaw)], 1)  # rotation about +y
    pose = _pose15(root).to(dtype)
    np.testing.assert_allclose(head_yaw_degrees(pose, PARENTS), list(table), atol=1e-3)
    assert dynamic_contour_rows(pose, PARENTS).tolist() == list(table.values())
    # The neck alone (root at rest) turns the head the same way.
    neck_only = _pose15(np.zeros_like(root), root).to(dtype)
    assert dynamic_contour_rows(neck_only, torch.tensor(PARENTS)).tolist() == list(table.values())


def test_dynamic_contour_rows_composed_root_and_neck():
    """R = R_root @ R_neck with general rotations, yaw by the formula in docs/formats.md, rows by the hand table."""
    rng = np.random.default_rng(5)
    n = 400
    root = random_axis_angle(rng, n, 1.2)
    neck = random_axis_angle(rng, n, 0.8)
    R = Rotation.from_rotvec(root).as_matrix() @ Rotation.from_rotvec(neck).as_matrix()
    yaw = np.degrees(np.arctan2(-R[:, 2, 0], np.sqrt(R[:, 0, 0] ** 2 + R[:, 1, 0] ** 2)))
    y = np.round(np.minimum(yaw, 39)).astype(int)
    expected = [INTEGER_TABLE.get(int(v), 78 if v < -45 else None) for v in y]
    keep = np.abs(np.abs(yaw) % 1 - 0.5) > 1e-6  # no coin-flip roundings
    got = dynamic_contour_rows(_pose15(root, neck), PARENTS).numpy()
    assert keep.sum() > 390
    assert got[keep].tolist() == [e for e, k in zip(expected, keep) if k]
    # The composition order matters: R_neck @ R_root gives different rows for these poses.
    R_swapped = Rotation.from_rotvec(neck).as_matrix() @ Rotation.from_rotvec(root).as_matrix()
    yaw_swapped = np.degrees(np.arctan2(-R_swapped[:, 2, 0], np.hypot(R_swapped[:, 0, 0], R_swapped[:, 1, 0])))
    assert (np.round(np.minimum(yaw_swapped, 39)) != y).sum() > 50


def test_forward_uses_contour_row_of_head_yaw(model):
    flame_arrays, lmk = model
    m = FLAME.from_arrays(flame_arrays, lmk)
    yaws = [-50.0, -39.0, -20.2, -1.0, 0.0, 12.7, 39.0, 60.0]
    B = len(yaws)
    pose = torch.zeros(B, 6)
    pose[:, 1] = torch.deg2rad(torch.tensor(yaws))
    with torch.no_grad():
        out = m(torch.zeros(B, 100), torch.zeros(B, 50), pose)
    verts = out.vertices.double().numpy()
    for b, yaw in enumerate(yaws):
        row = INTEGER_TABLE[int(np.clip(round(yaw), -45, 45))]
        tri = flame_arrays.faces[lmk.dynamic_lmk_faces_idx[row]]
        expected = np.einsum("lk,lkc->lc", lmk.dynamic_lmk_bary_coords[row], verts[b][tri])
        np.testing.assert_allclose(out.landmarks2d[b, :17], expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Rodrigues
# ----------------------------------------------------------------------------------------------


def test_rodrigues_random_and_large_angles():
    rng = np.random.default_rng(0)
    aa = random_axis_angle(rng, 500, 3 * math.pi)
    aa[:3] = [[math.pi, 0, 0], [0, -math.pi, 0], [1e-3, 0, 0]]  # half turns, and the branch switch
    expected = Rotation.from_rotvec(aa).as_matrix()
    np.testing.assert_allclose(rodrigues(torch.as_tensor(aa)), expected, atol=1e-12, rtol=0)
    np.testing.assert_allclose(rodrigues(t32(aa)), expected, atol=2e-6, rtol=0)


def test_rodrigues_tiny_angles():
    rng = np.random.default_rng(1)
    mags = np.concatenate([[0.0, 1e-30, 1e-12, 1e-8, 1e-6, 9.99e-4, 1.001e-3], 10 ** rng.uniform(-10, -2, 100)])
    aa = random_axis_angle(rng, mags.size, 1.0)
    aa = aa / np.maximum(np.linalg.norm(aa, axis=1, keepdims=True), 1e-300) * mags[:, None]
    expected = Rotation.from_rotvec(aa).as_matrix()
    got = rodrigues(torch.as_tensor(aa)).numpy()
    # Compare R - I so that the tiny off-diagonal terms are checked relative to their own size.
    np.testing.assert_allclose(got - np.eye(3), expected - np.eye(3), atol=1e-15, rtol=1e-9)
    got32 = rodrigues(t32(aa)).numpy()
    assert np.isfinite(got32).all()
    np.testing.assert_allclose(got32, expected, atol=1e-7, rtol=0)


def test_rodrigues_gradient_at_zero():
    aa = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    R = rodrigues(aa)
    # dR/dv at v = 0 is the cross-product matrix: d R[2,1] / d v_x = 1, d R[1,2] / d v_x = -1.
    (g,) = torch.autograd.grad(R[0, 2, 1] - R[0, 1, 2], aa, retain_graph=True)
    np.testing.assert_allclose(g.numpy(), [[2.0, 0.0, 0.0]], atol=1e-12)
    assert torch.isfinite(torch.autograd.grad(R.sum(), aa)[0]).all()
