"""Code sources: which one `auto` picks, and the eyelid calibration the landmark source applies."""
from __future__ import annotations

import numpy as np
import pytest

from capture.landmarks import LidCalibration, eye_openness, percentile_of_sorted, set_lid_gaps
from capture.sources import CODE_SOURCES, choose_source


def test_auto_is_landmarks_on_a_synthetic_pack_and_network_on_official_weights():
    assert choose_source("auto", synthetic_pack=True)[0] == "landmarks"
    assert choose_source("auto", synthetic_pack=False)[0] == "network"
    for name in CODE_SOURCES[1:]:
        assert choose_source(name, synthetic_pack=True) == (name, "as requested")
    with pytest.raises(ValueError, match="--codes-from"):
        choose_source("camera", synthetic_pack=True)


def _eyes(open_left: float, open_right: float) -> np.ndarray:
    """68 points whose eyes are 0.2 wide, with the given lid gap / width."""
    p = np.zeros((68, 2))
    for (corner_a, corner_b, up, down, x0), value in zip(((36, 39, (37, 38), (41, 40), -0.3),
                                                          (42, 45, (43, 44), (47, 46), 0.1)),
                                                         (open_right, open_left)):
        p[corner_a], p[corner_b] = (x0, 0.0), (x0 + 0.2, 0.0)
        for k, (u, d) in enumerate(zip(up, down)):
            x = x0 + 0.07 * (k + 1)
            p[u], p[d] = (x, -0.1 * value), (x, 0.1 * value)
    return p


def test_lid_helpers_measure_and_set_gaps():
    p = _eyes(0.3, 0.25)
    o = eye_openness(p)
    assert o["left"] == pytest.approx(0.3) and o["right"] == pytest.approx(0.25)
    q = set_lid_gaps(p, {"left": 0.0})
    assert eye_openness(q)["left"] == pytest.approx(0.0) and eye_openness(q)["right"] == pytest.approx(0.25)


def test_lid_calibration_is_relative_to_the_performers_open_eyes_and_keeps_winks():
    lids = LidCalibration(closed_ratio=0.15)
    for _ in range(30):  # a performer whose eyes are narrower than anyone's model: 0.2 open
        out = lids(_eyes(0.2, 0.2))
        assert eye_openness(out)["left"] == pytest.approx(0.2)  # open stays open
    assert lids.baseline["left"] == pytest.approx(0.2)
    wink = eye_openness(lids(_eyes(0.03, 0.2)))  # MediaPipe's shut eye: 15 % of open
    assert wink["left"] == pytest.approx(0.0, abs=1e-9) and wink["right"] == pytest.approx(0.2)
    half = eye_openness(lids(_eyes(0.115, 0.2)))["left"]  # half way to shut: half the open gap
    assert half == pytest.approx(0.1, abs=1e-6)
    assert eye_openness(lids(_eyes(0.26, 0.2)))["left"] == pytest.approx(0.26)  # widening passes
    assert lids.baseline["left"] == pytest.approx(0.2)  # a blink or two does not move the baseline


def test_eye_openness_is_the_norm_definition():
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = rng.normal(size=(68, 2)) * 40 + 200
        for eye, (a, b), pairs in (("right", (36, 39), ((37, 41), (38, 40))), ("left", (42, 45), ((43, 47), (44, 46)))):
            gaps = [np.linalg.norm(p[u] - p[d]) for u, d in pairs]
            assert eye_openness(p)[eye] == pytest.approx(np.mean(gaps) / np.linalg.norm(p[a] - p[b]), rel=1e-13)


def test_percentile_of_sorted_is_numpys_to_the_bit():
    rng = np.random.default_rng(4)
    for n in (1, 2, 3, 5, 17, 300):
        values = sorted(rng.uniform(0.0, 0.4, n).tolist())
        for q in (0.0, 12.5, 50.0, 80.0, 99.9, 100.0):
            assert percentile_of_sorted(values, q) == float(np.percentile(values, q))


def test_lid_baseline_is_the_percentile_of_the_last_window_of_frames():
    rng = np.random.default_rng(5)
    lids = LidCalibration(window=40, min_frames=5)
    seen = []
    for k in range(130):  # open eyes, blinks, and a performer who opens them wider after frame 60
        value = float(rng.choice([0.04, rng.uniform(0.18, 0.22) + (0.05 if k > 60 else 0.0)], p=[0.1, 0.9]))
        lids(_eyes(value, 0.2))
        seen.append(eye_openness(_eyes(value, 0.2))["left"])
        if len(seen) >= 5:
            assert lids.baseline["left"] == float(np.percentile(seen[-40:], 80.0))
    broken = _eyes(0.2, 0.2)
    broken[43] = np.nan
    before = lids.baseline["left"]
    lids(broken)  # a non-finite point is not history: the baseline stays
    assert lids.baseline["left"] == before and len(lids._sorted["left"]) == 40
