"""The closed loop through MediaPipe: the demo head rendered with known blinks, jaw and smiles, detected by face
mesh, fitted by the landmark code source, compared with what it was rendered with."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from capture.assets.demo_head import EXPRESSION_NAMES
from capture.avatar import load_avatar
from capture.crop import FaceDetector
from capture.deca import DECA
from capture.retarget import AvatarRenderer
from capture.session import RetargetSession
from capture.stream.reader import Frame

COL = {name: k for k, name in enumerate(EXPRESSION_NAMES)}
N_FRAMES = 48
SIZE = (360, 480)  # H, W


def _sequence(n: int) -> dict[str, np.ndarray]:
    t = np.arange(n) / 12.0

    def blink(centre):
        return np.exp(-0.5 * ((t - centre) / 0.12) ** 2)

    return {
        "jaw": 0.3 * np.clip(np.sin(2 * math.pi * t / 1.9), 0, None),
        "eyeClose_L": np.clip(blink(0.9) + blink(2.9), 0, 1),
        "eyeClose_R": np.clip(blink(1.9) + blink(3.5), 0, 1),
        "smile": 0.8 * np.clip(np.sin(2 * math.pi * t / 2.7 + 1.0), 0, None),
        "browUp": 0.8 * np.clip(np.sin(2 * math.pi * t / 3.1 + 2.5), 0, None),
        "yaw": np.radians(12.0) * np.sin(2 * math.pi * t / 4.0),
    }


@pytest.fixture(scope="module")
def rendered(demo_pack):
    deca = DECA(demo_pack)
    with FaceDetector() as detector:  # the performer: the astronaut's face fitted onto the demo head
        performer, _ = load_avatar(deca, "astronaut", detector, None, texture="model", codes_from="landmarks")
    renderer = AvatarRenderer(deca, performer, "avatar", SIZE)
    seq = _sequence(N_FRAMES)
    background = torch.tensor([0.35, 0.4, 0.45])[None, :, None, None]
    frames = []
    for i in range(N_FRAMES):
        exp = torch.zeros(1, 50)
        exp[0, COL["eyeClose_L"]] = float(seq["eyeClose_L"][i])
        exp[0, COL["eyeClose_R"]] = float(seq["eyeClose_R"][i])
        exp[0, COL["smile_L"]] = exp[0, COL["smile_R"]] = float(seq["smile"][i])
        exp[0, COL["browUp_L"]] = exp[0, COL["browUp_R"]] = float(seq["browUp"][i])
        pose = torch.zeros(1, 6)
        pose[0, 1] = float(seq["yaw"][i])
        pose[0, 3] = float(seq["jaw"][i])
        codes = performer.codes.replace(exp=exp, pose=pose, cam=torch.tensor([[9.0, 0.0, 0.0]]))
        colour, alpha = renderer.draw(codes, None)
        picture = colour * alpha + background * (1 - alpha)
        frames.append((picture[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
    return deca, performer, frames, seq


@pytest.mark.slow
def test_landmark_source_recovers_blinks_jaw_smile_and_brows(rendered):
    deca, performer, frames, seq = rendered
    session = RetargetSession(deca, performer, SIZE, layout="avatar", codes_from="landmarks")
    session.calibrate(frames[::3])
    exp, jaw, yaw = [], [], []
    for i, image in enumerate(frames):
        frame = Frame(index=i, image=image, pts=i, time_base=Fraction(1, 12), time=i / 12.0)
        out = session.infer_codes(session.crop(frame))
        assert out.prepared is not None, f"frame {i}: no face found in the render"
        codes = out.prepared.codes
        exp.append(codes.exp[0].numpy())
        jaw.append(float(codes.pose[0, 3]))
        yaw.append(float(codes.pose[0, 1]))
    session.close()
    exp = np.array(exp)

    def corr(a, b):
        return float(np.corrcoef(a, b)[0, 1])

    got = {
        "jaw": corr(jaw, seq["jaw"]), "yaw": corr(yaw, seq["yaw"]),
        "eyeClose_L": corr(exp[:, COL["eyeClose_L"]], seq["eyeClose_L"]),
        "eyeClose_R": corr(exp[:, COL["eyeClose_R"]], seq["eyeClose_R"]),
        "smile": corr(exp[:, COL["smile_L"]] + exp[:, COL["smile_R"]], seq["smile"]),
        "browUp": corr(exp[:, COL["browUp_L"]] + exp[:, COL["browUp_R"]], seq["browUp"]),
    }
    print("closed-loop correlations:", {k: round(v, 2) for k, v in got.items()})
    want = {"jaw": 0.9, "yaw": 0.9, "eyeClose_L": 0.7, "eyeClose_R": 0.7, "smile": 0.7, "browUp": 0.6}
    assert all(got[k] > v for k, v in want.items()), got
    # a closed eye is closed on the fit too, an open one open (not just correlated)
    shut = seq["eyeClose_L"] > 0.9
    assert exp[shut, COL["eyeClose_L"]].mean() > 0.5
    assert np.abs(exp[seq["eyeClose_L"] < 0.05, COL["eyeClose_L"]]).mean() < 0.3


@pytest.mark.parametrize("codes_from", ["network", "hybrid"])
def test_e_flame_on_two_frames_at_once_gives_the_pictures_of_one_at_a_time(rendered, codes_from):
    """`encode_workers=2`: E_flame leaves the codes stage for a stage of two threads, each on its own frame. The
    pipeline then hands on, in order, the same codes and pictures as the session gives one frame at a time (the
    landmark fit of the hybrid source, which carries state from frame to frame, still sees every frame in turn)."""
    from capture.stream import Pipeline

    deca, performer, frames, _ = rendered
    frames = [Frame(index=i, image=image, pts=i, time_base=Fraction(1, 12), time=i / 12.0)
              for i, image in enumerate(frames[:10])]

    def run(workers: int) -> list:
        session = RetargetSession(deca, performer, SIZE, codes_from=codes_from, encode_workers=workers)
        try:
            if workers == 1:
                return [session.infer(session.crop(frame)) for frame in frames]
            assert [stage[0] for stage in session.stages] == ["crop", "E_flame", "codes", "detail", "render"]
            out = []
            Pipeline(frames, stages=session.stages, sink=out.append).run()
            return out
        finally:
            session.close()

    one, two = run(1), run(2)
    assert [o.frame.index for o in two] == list(range(len(frames)))
    for a, b in zip(one, two):
        assert a.codes is not None and b.codes is not None
        np.testing.assert_array_equal(a.image, b.image)
        for key in ("exp", "pose", "cam"):
            np.testing.assert_array_equal(a.codes[key], b.codes[key])
    with pytest.raises(ValueError, match="encode_workers"):
        RetargetSession(deca, performer, SIZE, encode_workers=0)
    landmarks = RetargetSession(deca, performer, SIZE, codes_from="landmarks", encode_workers=2)
    assert [stage[0] for stage in landmarks.stages] == ["crop", "codes", "detail", "render"]  # no E_flame to run
    landmarks.close()
