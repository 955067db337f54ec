"""Code sources: which one `auto` picks, and the eyelid calibration the landmark source applies."""
from __future__ import annotations

import numpy as np
import pytest

from capture.landmarks import LidCalibration, eye_openness, set_lid_gaps
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
