"""capture.stream.filters: One-Euro filter and the per-code filter.

References: the closed-form first-order low-pass (beta = 0 makes One-Euro an exponential smoother with
alpha = 1 / (1 + 1 / (2 pi fc dt))), hand-computed single steps, and statistics of seeded noise.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from capture.stream.filters import DEFAULT_CODE_PARAMS, CodeFilter, OneEuroFilter, OneEuroParams


def _jitter(x: np.ndarray) -> float:
    """RMS of frame-to-frame differences."""
    return float(np.sqrt(np.mean(np.diff(x, axis=0) ** 2)))


def test_first_sample_passes_and_hand_computed_second_step():
    f = OneEuroFilter(min_cutoff=2.0, beta=0.5, d_cutoff=1.0)
    assert f(np.array([1.0, -2.0]), 0.0) == pytest.approx([1.0, -2.0])
    dt = 0.1
    x = np.array([2.0, -2.0])
    a_d = 1 / (1 + 1 / (2 * math.pi * 1.0 * dt))
    dx_hat = a_d * (x - [1.0, -2.0]) / dt  # previous speed 0
    fc = 2.0 + 0.5 * np.abs(dx_hat)
    a = 1 / (1 + 1 / (2 * math.pi * fc * dt))
    expect = np.array([1.0, -2.0]) + a * (x - [1.0, -2.0])
    assert f(x, dt) == pytest.approx(expect, abs=1e-12)


def test_steady_signal_jitter_drops_at_least_3x():
    rng = np.random.default_rng(0)
    fps, n = 30.0, 600
    t = np.arange(n) / fps
    truth = np.array([0.5, -1.0, 2.0])
    x = truth + rng.normal(0.0, 0.05, size=(n, 3))
    f = OneEuroFilter(min_cutoff=1.0, beta=0.5)
    y = np.stack([f(xi, ti) for xi, ti in zip(x, t)])
    assert _jitter(y) * 3 <= _jitter(x), (_jitter(x), _jitter(y))
    # and the filtered signal stays on the truth (no bias from the smoothing)
    assert np.abs(y[60:].mean(axis=0) - truth).max() < 0.01


def test_beta_zero_is_exponential_smoothing_with_known_step_response():
    fps = 30.0
    fc = 2.0
    alpha = 1 / (1 + fps / (2 * math.pi * fc))
    f = OneEuroFilter(min_cutoff=fc, beta=0.0)
    f(np.zeros(1), 0.0)
    for k in range(1, 20):
        y = f(np.ones(1), k / fps)
        assert y[0] == pytest.approx(1 - (1 - alpha) ** k, abs=1e-12)


def test_step_followed_within_bounded_frames_and_beta_speeds_it_up():
    def frames_to_90(beta: float) -> int:
        f = OneEuroFilter(min_cutoff=1.0, beta=beta)
        for k in range(5):
            f(np.zeros(2), k / 30)
        for k in range(5, 200):
            if f(np.ones(2), k / 30)[0] >= 0.9:
                return k - 5 + 1
        return 10**6

    slow, fast = frames_to_90(0.0), frames_to_90(2.0)
    # beta = 0: exponential smoother at 1 Hz, 30 fps -> ceil(log(0.1) / log(1 - alpha)) = 12 frames
    alpha = 1 / (1 + 30 / (2 * math.pi))
    assert slow == math.ceil(math.log(0.1) / math.log(1 - alpha))
    assert fast <= 4 < slow


def test_non_uniform_timestamps():
    # With beta = 0 every update is exact exponential smoothing over its own dt.
    f = OneEuroFilter(min_cutoff=1.5, beta=0.0)
    times = [0.0, 0.01, 0.05, 0.06, 0.3, 0.31]
    y = 0.0
    f(np.zeros(1), times[0])
    for t0, t1 in zip(times, times[1:]):
        alpha = 1 / (1 + 1 / (2 * math.pi * 1.5 * (t1 - t0)))
        y = y + alpha * (1.0 - y)
        assert f(np.ones(1), t1)[0] == pytest.approx(y, abs=1e-12)
    # A long gap moves further than a short one from the same state.
    g1, g2 = OneEuroFilter(), OneEuroFilter()
    g1(np.zeros(1), 0.0), g2(np.zeros(1), 0.0)
    assert g1(np.ones(1), 0.5)[0] > g2(np.ones(1), 0.01)[0]


def test_any_shape_dtype_and_errors():
    f = OneEuroFilter(min_cutoff=[1.0, 2.0, 3.0], beta=0.1)
    x = np.ones((2, 4, 3), dtype=np.float32)
    assert f(x, 0.0).dtype == np.float32
    assert f(x * 2, 0.1).shape == (2, 4, 3)
    with pytest.raises(ValueError, match="timestamps must increase"):
        f(x, 0.1)
    with pytest.raises(ValueError, match="shape"):
        f(np.ones(3), 0.2)
    f.reset()
    assert f(np.ones(3), 0.0) == pytest.approx([1, 1, 1])  # passes through after reset
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(min_cutoff=0.0)


def test_per_element_parameters_match_separate_filters():
    rng = np.random.default_rng(1)
    both = OneEuroFilter(min_cutoff=[0.5, 4.0], beta=[0.0, 1.0])
    one = OneEuroFilter(min_cutoff=0.5, beta=0.0)
    two = OneEuroFilter(min_cutoff=4.0, beta=1.0)
    for k in range(30):
        x = rng.normal(size=2)
        y = both(x, k / 25)
        assert y == pytest.approx([one(x[:1], k / 25)[0], two(x[1:], k / 25)[0]], abs=1e-12)


def test_code_filter_defaults_smooth_exp_and_keep_jaw_responsive():
    rng = np.random.default_rng(2)
    fps, n = 30.0, 300
    cf = CodeFilter()
    exp_truth = rng.normal(size=(1, 50))
    exp_raw, exp_out, jaw_out = [], [], []
    for k in range(n):
        jaw = 0.0 if k < 150 else 0.3  # mouth opens at frame 150
        pose = np.array([[0.1, 0.0, 0.0, jaw, 0.0, 0.0]]) + rng.normal(0, 0.002, size=(1, 6))
        codes = {"exp": exp_truth + rng.normal(0, 0.05, size=(1, 50)), "pose": pose, "frame_id": k}
        out = cf(codes, k / fps)
        assert out["frame_id"] == k  # unknown keys pass through
        exp_raw.append(codes["exp"][0])
        exp_out.append(out["exp"][0])
        jaw_out.append(out["pose"][0, 3])
    assert _jitter(np.array(exp_out)) * 3 <= _jitter(np.array(exp_raw))
    jaw_out = np.array(jaw_out)
    assert np.argmax(jaw_out[150:] >= 0.27) <= 2  # 90 % of the opening within 3 frames at 30 fps
    cf.reset()
    assert cf({"exp": np.ones((1, 50))}, 100.0)["exp"] == pytest.approx(np.ones((1, 50)))


def test_code_filter_torch_and_custom_params():
    cf = CodeFilter({"cam": OneEuroParams(min_cutoff=1.0, beta=0.0)})
    assert "exp" in cf.params and cf.params["cam"].beta == 0.0
    a = cf({"cam": torch.zeros(1, 3, dtype=torch.float32)}, 0.0)["cam"]
    b = cf({"cam": torch.ones(1, 3, dtype=torch.float32)}, 1 / 30)["cam"]
    assert isinstance(a, torch.Tensor) and b.dtype == torch.float32 and b.shape == (1, 3)
    alpha = 1 / (1 + 30 / (2 * math.pi))
    assert torch.allclose(b, torch.full((1, 3), alpha), atol=1e-6)
    assert set(DEFAULT_CODE_PARAMS) >= {"exp", "pose", "cam"}
