"""The landmark fitter: its landmark model against FLAME itself, and codes it must recover from landmarks
projected from the model (noise, outliers, yaw up to 40 degrees, a performer with another shape)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from capture.fit import (
    FitConfig,
    FitState,
    LandmarkBases,
    LandmarkFitter,
    contour_row,
    right_jacobian,
    rotation_matrix,
    rotation_to_axis_angle,
    yaw_degrees,
)
from capture.flame import FLAME, contour_rows_from_yaw, rodrigues
from capture.projection import orthographic
from test_flame import make_model


def _flame_landmarks(flame: FLAME, shape, exp, rotation, jaw, cam) -> np.ndarray:
    """The reference: capture.flame (checked against smplx) + DECA's camera -> [68, 2] crop NDC."""
    def f32(a):
        return torch.as_tensor(np.asarray(a, np.float32)[None])

    out = flame(f32(shape), f32(exp), f32(np.concatenate([rotation, jaw])))
    return orthographic(out.landmarks2d, f32(cam))[0, :, :2].double().numpy()


def _euler_y(yaw_deg, pitch_deg=0.0, roll_deg=0.0) -> np.ndarray:
    R = (rotation_matrix(np.array([0.0, np.radians(yaw_deg), 0.0]))
         @ rotation_matrix(np.array([np.radians(pitch_deg), 0.0, 0.0]))
         @ rotation_matrix(np.array([0.0, 0.0, np.radians(roll_deg)])))
    return rotation_to_axis_angle(R)


@pytest.fixture(scope="module")
def demo(demo_pack):
    return FLAME(demo_pack), LandmarkBases.from_pack(demo_pack)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """A FLAME-layout model with dense random bases and random landmark faces (tests/test_flame.py), written as
    FLAME 2020's `generic_model.pkl` and DECA's `landmark_embedding.npy` and read back by the official loaders:
    the fitter sees what an official pack gives it."""
    from capture.assets.demo import write_flame_pickle, write_landmark_embedding
    from capture.assets.official import read_flame_pickle, read_landmark_embedding

    flame, lmk = make_model(seed=3)
    folder = tmp_path_factory.mktemp("official-format")
    write_flame_pickle(folder / "generic_model.pkl", v_template=flame.v_template, shapedirs=flame.shapedirs,
                       posedirs=flame.posedirs, J_regressor=flame.J_regressor, weights=flame.weights,
                       kintree_table=flame.kintree_table, faces=flame.faces)
    write_landmark_embedding(folder / "landmark_embedding.npy", static_faces=lmk.static_lmk_faces_idx,
                             static_bary=lmk.static_lmk_bary_coords, dynamic_faces=lmk.dynamic_lmk_faces_idx,
                             dynamic_bary=lmk.dynamic_lmk_bary_coords, full_faces=lmk.full_lmk_faces_idx,
                             full_bary=lmk.full_lmk_bary_coords)
    flame = read_flame_pickle(folder / "generic_model.pkl")
    lmk = read_landmark_embedding(folder / "landmark_embedding.npy")
    return FLAME.from_arrays(flame, lmk), LandmarkBases.from_model(flame, lmk)


def test_rotation_helpers_agree_with_flame():
    rng = np.random.default_rng(0)
    for _ in range(20):
        aa = rng.normal(size=3) * rng.uniform(0, 2.5)
        R = rotation_matrix(aa)
        ref = rodrigues(torch.as_tensor(aa[None])).numpy()[0]
        assert np.abs(R - ref).max() < 1e-12
        assert np.abs(rotation_matrix(rotation_to_axis_angle(R)) - R).max() < 1e-9
        d = rng.normal(size=3) * 1e-6
        numeric = rotation_matrix(aa).T @ rotation_matrix(aa + d)  # ~ exp([J_r d]x)
        approx = rotation_matrix(right_jacobian(aa) @ d)
        assert np.abs(numeric - approx).max() < 1e-11
    for yaw in np.arange(-60.0, 60.0, 0.7):
        R = rotation_matrix(np.array([0.0, np.radians(yaw), 0.0]))
        assert contour_row(yaw_degrees(R)) == int(contour_rows_from_yaw(torch.tensor([yaw]))[0])


@pytest.mark.parametrize("which", ["demo", "random_model"])
def test_landmark_model_equals_flame(which, request):
    """The reduced per-landmark model (module doc of capture.fit) is exact: FLAME's LBS, joints regressed from
    the shaped mesh, jaw pose correctives and the yaw-dependent contour included."""
    flame, bases = request.getfixturevalue(which)
    fitter = LandmarkFitter(bases, n_shape=0)
    rng = np.random.default_rng(1)
    for _ in range(6):
        shape = rng.normal(size=100) * 0.8
        exp = rng.normal(size=50) * 0.8
        rotation = _euler_y(rng.uniform(-50, 50), rng.uniform(-15, 15), rng.uniform(-10, 10))
        jaw = np.array([rng.uniform(0, 0.4), rng.normal() * 0.05, rng.normal() * 0.05])
        cam = np.array([rng.uniform(6, 11), rng.normal() * 0.02, rng.normal() * 0.02])
        ref = _flame_landmarks(flame, shape, exp, rotation, jaw, cam)
        fitter.set_identity(shape=shape)
        mine = fitter.project(FitState(rotation, jaw, exp, cam))
        assert np.abs(mine - ref).max() < 2e-5 * np.abs(ref).max()


def _recover(flame, bases, truth, noise, outliers, rng, n_frames=3):
    fitter = LandmarkFitter(bases, n_shape=0)
    target = _flame_landmarks(flame, np.zeros(100), truth.exp, truth.rotation, truth.jaw, truth.cam)
    clean = target.copy()
    target = target + rng.normal(size=target.shape) * noise
    bad = rng.choice(np.arange(17, 68), size=outliers, replace=False)
    target[bad] += rng.normal(size=(outliers, 2)) * 0.15  # a hand over part of the face, a missed point
    for _ in range(n_frames):  # the same frame again: warm-started iterations
        state = fitter.fit(target)
    return fitter, state, clean, bad


@pytest.mark.parametrize("yaw", [-40.0, -20.0, 0.0, 25.0, 40.0])
def test_recovers_pose_jaw_and_expression_on_the_demo_head(demo, yaw):
    flame, bases = demo
    rng = np.random.default_rng(int(yaw) + 100)
    exp = np.zeros(50)
    exp[:12] = rng.normal(size=12) * 0.4
    truth = FitState(_euler_y(yaw, rng.uniform(-10, 10), rng.uniform(-5, 5)),
                     np.array([0.18, 0.0, 0.0]), exp, np.array([9.0, 0.01, -0.015]))
    fitter, state, clean, bad = _recover(flame, bases, truth, noise=0.004, outliers=4, rng=rng)
    assert abs(yaw_degrees(rotation_matrix(state.rotation)) - yaw) < 2.0
    assert abs(state.jaw[0] - truth.jaw[0]) < 0.05
    assert abs(state.cam[0] / truth.cam[0] - 1) < 0.04
    # The expression, by what it does to the face: landmarks of the fitted codes vs the true ones (both
    # frontal, same camera), outliers left out. Without the expression the error would be ~0.05 NDC.
    def frontal(e, j):
        return _flame_landmarks(flame, np.zeros(100), e, np.zeros(3), j, truth.cam)

    moved = np.linalg.norm(frontal(truth.exp, truth.jaw) - frontal(np.zeros(50), truth.jaw), axis=1)
    err = np.linalg.norm(frontal(state.exp, state.jaw) - frontal(truth.exp, truth.jaw), axis=1)
    keep = np.setdiff1d(np.arange(17, 68), bad)
    assert np.sqrt(np.mean(err[keep] ** 2)) < 0.35 * np.sqrt(np.mean(moved[keep] ** 2))
    assert np.sqrt(np.mean(err[keep] ** 2)) < 0.012


def test_recovers_codes_on_an_official_format_pack(random_model):
    """Dense random bases and landmarks (not a face), read from official-format files: the solver, not the demo
    head's design."""
    flame, bases = random_model
    rng = np.random.default_rng(5)
    exp = rng.normal(size=50) * 0.5
    truth = FitState(_euler_y(30.0, 8.0, -4.0), np.array([0.2, 0.02, -0.01]), exp, np.array([8.0, 0.0, 0.01]))
    fitter, state, clean, bad = _recover(flame, bases, truth, noise=0.002, outliers=3, rng=rng)
    keep = np.setdiff1d(np.arange(68), bad)
    pred = fitter.project(state)
    assert np.sqrt(np.mean(np.sum((pred[keep] - clean[keep]) ** 2, 1))) < 0.006
    assert abs(yaw_degrees(rotation_matrix(state.rotation)) - 30.0) < 2.0


def test_performer_shape_goes_to_shape_not_expression(demo):
    """A performer whose face differs from the model's (other shape components, and per-point offsets like
    MediaPipe's brow edge vs the model's brow points) keeps a neutral expression when neutral."""
    flame, bases = demo
    rng = np.random.default_rng(7)
    shape = np.zeros(100)
    shape[:10] = rng.normal(size=10) * 1.2
    offsets = np.zeros((68, 2))
    offsets[17:27, 1] = -0.05  # brows detected higher than the model's points (crop NDC, y down)
    cam = np.array([9.0, 0.0, 0.0])
    frames = []
    for k in range(90):
        exp = np.zeros(50)
        if k % 3 == 0:  # an expressive frame now and then, neutral otherwise
            exp[:12] = rng.normal(size=12) * 0.6
        rotation = _euler_y(rng.uniform(-25, 25), rng.uniform(-8, 8), 0.0)
        jaw = np.array([rng.uniform(0, 0.25) if k % 3 == 0 else 0.0, 0.0, 0.0])
        target = _flame_landmarks(flame, shape, exp, rotation, jaw, cam) + offsets
        frames.append((target + rng.normal(size=(68, 2)) * 0.003, exp, jaw))

    def neutral_error(estimate_identity: bool) -> float:
        config = FitConfig() if estimate_identity else FitConfig(shape_updates=(), shape_every=10 ** 9)
        fitter = LandmarkFitter(bases, n_shape=10, config=config)
        fitter._next_shape_update = 1 if estimate_identity else 10 ** 9
        errors = []
        for k, (target, exp, _jaw) in enumerate(frames):
            state = fitter.fit(target)
            if k >= 60 and not exp.any():  # neutral frames after the shape has settled
                errors.append(np.linalg.norm(fitter.project(state.copy()) - fitter.project(
                    FitState(state.rotation, state.jaw, np.zeros(50), state.cam)), axis=1).mean())
        return float(np.mean(errors))

    leaked, estimated = neutral_error(False), neutral_error(True)
    # expression-driven landmark motion (crop NDC) on neutral frames: what is left of the identity in it
    assert estimated < 0.35 * leaked
    assert estimated < 0.01


def test_a_shape_update_is_spread_over_frames_and_equals_the_one_at_once(demo):
    """While tracking, the identity update runs a slice per frame on a copy: the frames meanwhile keep the old
    identity, the new one is taken at a fixed frame, and it is the estimate `update_shape` makes at once."""
    flame, bases = demo
    rng = np.random.default_rng(5)
    shape = np.zeros(flame.n_shape)
    shape[:10] = rng.normal(size=10) * 1.2
    cam = np.array([9.0, 0.0, 0.01])
    targets = []
    for k in range(40):
        exp = np.zeros(50)
        exp[:8] = rng.normal(size=8) * 0.4 * (k % 2)
        targets.append(_flame_landmarks(flame, shape, exp, _euler_y(rng.uniform(-20, 20)), np.zeros(3), cam)
                       + rng.normal(size=(68, 2)) * 0.003)
    config = FitConfig(shape_updates=(30,), shape_slice=8)

    def track():
        fitter = LandmarkFitter(bases, n_shape=10, config=config)
        fitter._next_shape_update = 30
        shapes, states = [], []
        for target in targets:
            states.append(fitter.fit(target))
            shapes.append(fitter.shape.copy())
            if len(shapes) == 29:  # what the update will start from
                at_once = copy.deepcopy(fitter)
        return fitter, np.array(shapes), states, at_once

    fitter, shapes, states, at_once = track()
    # the update starts at frame 30 (index 29) with 30 reservoir frames x 2 iterations = 60 steps of 8: it is
    # taken at the 8th frame from there (index 36); every frame before has the old identity
    changed = np.flatnonzero(np.abs(np.diff(shapes, axis=0)).max(1) > 0) + 1
    assert list(changed) == [36]
    assert fitter._pending is None
    # the same estimate as at once, from the reservoir the update started with (the frames fitted meanwhile do
    # not enter it: they joined the reservoir after it started)
    at_once.fit(targets[29])  # frame 30 enters the reservoir; then the update, at once
    at_once._pending = None
    at_once.update_shape()
    np.testing.assert_allclose(fitter.shape, at_once.shape, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fitter.offsets, at_once.offsets, rtol=0, atol=1e-12)
    # deterministic: a second run of the same stream gives the same states
    _, shapes2, states2, _ = track()
    np.testing.assert_array_equal(shapes, shapes2)
    assert all(np.array_equal(a.exp, b.exp) for a, b in zip(states, states2))
    # a fixed identity cancels an update in progress
    fixed = LandmarkFitter(bases, n_shape=10, config=FitConfig(shape_updates=(3,), shape_slice=1))
    for target in targets[:3]:
        fixed.fit(target)
    assert fixed._pending is not None  # 3 frames x 2 iterations, one a frame
    fixed.set_identity(shape=np.ones(10) * 0.1)
    for target in targets[3:9]:
        fixed.fit(target)
    assert fixed._pending is None and np.allclose(fixed.shape[:10], 0.1)


def test_the_compiled_frame_system_is_the_numpy_one(demo, monkeypatch):
    """`capture.fit_system` (J^T W J, J^T W r and the landmarks in one compiled pass; with the shape columns and
    the landmark offsets for an identity update) against `_jacobian` and the numpy products: random states, yaws
    over several contour rows, missing points; then whole tracks (identity updates included) with and without the
    pass."""
    from capture import fit_system

    if fit_system.kernel_error():
        pytest.skip(f"no compiled pass here: {fit_system.kernel_error()}")
    flame, bases = demo
    rng = np.random.default_rng(11)
    fitter = LandmarkFitter(bases, n_shape=10)
    fitter.set_identity(shape=rng.normal(size=10), offsets=np.pad(rng.normal(size=(68, 2)) * 0.002, ((0, 0), (0, 1))))
    for yaw in (-35.0, -10.0, 0.0, 20.0, 38.0):
        state = FitState(_euler_y(yaw, rng.uniform(-10, 10), rng.uniform(-5, 5)),
                         np.array([rng.uniform(0, 0.4), 0.03, -0.02]), rng.normal(size=50) * 0.6,
                         np.array([9.0, 0.02, -0.01]))
        target = fitter.project(state) + rng.normal(size=(68, 2)) * 0.03
        trust = fitter.weights * (rng.uniform(size=68) > 0.15)
        fast = fitter._system(state, target, trust)
        slow = fitter._system(state, target, trust, kernel="numpy")
        # an identity update's frame: the shape columns and the landmark offsets' blocks too
        fast += fitter._shape_system(state, target, trust)
        slow += fitter._shape_system(state, target, trust, kernel="numpy")
        for a, b in zip(fast, slow, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * np.abs(b).max())
    shape = np.zeros(flame.n_shape)
    shape[:10] = rng.normal(size=10)
    targets = [_flame_landmarks(flame, shape, rng.normal(size=50) * 0.3, _euler_y(rng.uniform(-20, 20)),
                                np.array([rng.uniform(0, 0.2), 0, 0]), np.array([9.0, 0.0, 0.01])) for _ in range(12)]

    def track():
        f = LandmarkFitter(bases, n_shape=10)
        return [f.fit(t) for t in targets]

    with_pass = track()
    monkeypatch.setattr(fit_system, "kernel_error", lambda: "no compiler")  # the numpy steps stand in
    without = track()
    for a, b in zip(with_pass, without):
        np.testing.assert_allclose(a.exp, b.exp, atol=1e-8)
        np.testing.assert_allclose(a.jaw, b.jaw, atol=1e-9)
        np.testing.assert_allclose(a.rotation, b.rotation, atol=1e-9)


def test_the_fit_runs_numpy_blas_on_one_thread_whatever_the_import_order():
    """OPENBLAS_NUM_THREADS only works before numpy loads; the fit's own limit holds regardless (a BLAS thread pool
    makes its small products ~20x slower on a busy 2-core machine)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from capture.fit import one_blas_thread

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):  # as after `import numpy` on 2 cores
        assert 2 in blas_threads()  # (a library built or started for one thread stays at one)
        inside = one_blas_thread(blas_threads)()
    assert inside and set(inside) == {1}
