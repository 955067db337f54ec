"""Named channels (capture.channels), the Live Link Face take (capture.takes) and the VMC stream (capture.vmc).

The channels must FOLLOW the codes: on the demo pack, whose expression columns are named
(capture.assets.demo_head.EXPRESSION_NAMES), each named column is driven from 0 to 1 and the ARKit channel
that means the same motion must rise monotonically to near 1, in 0..1, on the right side only.
"""
from __future__ import annotations

import csv
import socket
import threading
import time

import numpy as np
import pytest
import torch

from face_clips import make_face_clip

# The header of a Live Link Face take, as the app writes it (its order swaps Jaw/Mouth Left/Right vs ARKit).
LIVE_LINK_FACE_COLUMNS = (
    "Timecode", "BlendShapeCount",
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight", "JawLeft", "JawOpen", "MouthClose",
    "MouthFunnel", "MouthPucker", "MouthRight", "MouthLeft", "MouthSmileLeft", "MouthSmileRight",
    "MouthFrownLeft", "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft",
    "MouthStretchRight", "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper",
    "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft",
    "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight",
    "CheekPuff", "CheekSquintLeft", "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut",
    "HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw",
    "RightEyePitch", "RightEyeRoll",
)

@pytest.fixture(scope="module")
def channel_model(demo_pack):
    from capture.channels import ChannelModel
    from capture.flame import FLAME

    return ChannelModel(FLAME(demo_pack))


def _codes(exp_column=None, value=0.0, jaw=0.0, head=(0.0, 0.0, 0.0), shape=None):
    from capture.assets.demo_head import EXPRESSION_NAMES

    exp = np.zeros(50)
    if exp_column is not None:
        exp[EXPRESSION_NAMES.index(exp_column)] = value
    return {"shape": np.zeros(100) if shape is None else shape, "exp": exp,
            "pose": np.array([*head, jaw, 0.0, 0.0])}


# demo column -> (the ARKit channel it drives, the channel of the other side that must stay low)
FOLLOWS = [
    ("eyeClose_L", "eyeBlinkLeft", "eyeBlinkRight"),
    ("eyeClose_R", "eyeBlinkRight", "eyeBlinkLeft"),
    ("smile_L", "mouthSmileLeft", "mouthSmileRight"),
    ("smile_R", "mouthSmileRight", "mouthSmileLeft"),
    ("browUp_L", "browOuterUpLeft", "browOuterUpRight"),
    ("browUp_R", "browOuterUpRight", "browOuterUpLeft"),
    ("browDown_L", "browDownLeft", "browDownRight"),
    ("frown_R", "mouthFrownRight", "mouthFrownLeft"),
    ("stretch_L", "mouthStretchLeft", "mouthStretchRight"),
    ("eyeWide_R", "eyeWideRight", "eyeWideLeft"),
    ("cheekRaise_L", "cheekSquintLeft", "cheekSquintRight"),
    ("mouthLeft", "mouthLeft", "mouthRight"),
    ("browInnerUp", "browInnerUp", None),
    ("pucker", "mouthPucker", "mouthFunnel"),
    ("funnel", "mouthFunnel", "mouthPucker"),
    ("lipsPress", "mouthPressLeft", None),
    ("sneer", "noseSneerLeft", None),
    ("cheekPuff", "cheekPuff", None),
]


@pytest.mark.parametrize("column, channel, other", FOLLOWS)
def test_channels_follow_the_named_demo_columns(channel_model, column, channel, other):
    levels = np.linspace(0.0, 1.0, 6)
    rows = [channel_model(_codes(column, v)).named() for v in levels]
    values = np.array([r[channel] for r in rows])
    assert values[0] < 0.02, (column, values)  # the neutral reads neutral
    assert np.all(np.diff(values) >= -1e-6) and values[-1] - values[0] > 0.6, (column, channel, values)
    assert values[-1] >= 0.7, (column, channel, values)
    if other is not None:
        assert max(r[other] for r in rows) < 0.3, (column, other, [r[other] for r in rows])
    for r in rows:
        assert all(0.0 <= v <= 1.0 for v in r.values())


def test_jaw_pose_drives_jaw_open_and_not_the_mouth_channels(channel_model):
    rows = [channel_model(_codes(jaw=j)).named() for j in np.linspace(0.0, 0.35, 6)]
    jaw_open = np.array([r["jawOpen"] for r in rows])
    assert jaw_open[0] == 0.0 and np.all(np.diff(jaw_open) > 0) and jaw_open[-1] > 0.95
    for r in rows:  # the neutral has the same jaw: an opening mouth is no frown, pucker or smile
        assert max(r["mouthFrownLeft"], r["mouthSmileRight"], r["mouthPucker"], r["mouthClose"]) < 0.1, r
    # lips pressed together while the jaw opens: mouthClose
    closed = channel_model(_codes("lipsPart", -1.0, jaw=0.25)).named()
    assert closed["mouthClose"] > rows[0]["mouthClose"]


def test_the_neutral_is_per_identity(channel_model):
    """Another identity at rest still reads neutral: the neutral is the model's own face for that shape."""
    shape = np.random.default_rng(0).normal(0, 1.0, 100)
    c = channel_model(_codes(shape=shape))
    assert np.abs(c.blendshapes).max() < 1e-5
    assert channel_model(_codes("eyeClose_L", 1.0, shape=shape)).named()["eyeBlinkLeft"] > 0.8


def test_head_angles_and_gaze(channel_model):
    yaw, pitch, roll = channel_model(_codes(head=(0.0, 0.3, 0.0))).head
    assert yaw == pytest.approx(0.3, abs=1e-5) and abs(pitch) < 1e-5 and abs(roll) < 1e-5
    assert channel_model(_codes(head=(0.2, 0.0, 0.0))).head[1] == pytest.approx(0.2, abs=1e-5)
    assert channel_model(_codes(head=(0.0, 0.0, -0.1))).head[2] == pytest.approx(-0.1, abs=1e-5)
    # a turned head is still a neutral face
    assert channel_model(_codes(head=(0.1, 0.4, 0.05))).blendshapes.max() < 1e-4
    assert not channel_model(_codes()).eyes.any()  # DECA's eye pose is zero


def test_subset_lbs_is_flames_lbs(demo_pack, channel_model):
    from capture.flame import FLAME

    flame = FLAME(demo_pack).double()
    rng = np.random.default_rng(1)
    shape, exp = torch.as_tensor(rng.normal(0, 1, (2, 100))), torch.as_tensor(rng.normal(0, 0.5, (2, 50)))
    pose = torch.as_tensor(rng.normal(0, 0.2, (2, 6)))
    ref = flame(shape, exp, pose).vertices
    full = torch.zeros(2, 15, dtype=torch.float64)
    full[:, :3], full[:, 6:9] = pose[:, :3], pose[:, 3:]
    sub = channel_model.lbs(shape, exp, full)
    np.testing.assert_allclose(sub.numpy(), ref[:, channel_model.lbs.ids].numpy(), atol=1e-9)


def test_timecode_round_trip():
    from capture.takes import parse_timecode, timecode

    assert timecode(0.0) == "00:00:00:00.000"
    assert timecode(3661.5) == "01:01:01:30.000"
    assert timecode(1 / 25) == "00:00:00:02.400"
    for t in (0.0, 0.04, 1.2345, 59.999, 7200.25):
        assert abs(parse_timecode(timecode(t)) - t) <= 1 / 60000


class _Receiver:
    """A real python-osc VMC receiver on loopback, an ephemeral port."""

    def __init__(self):
        from pythonosc.dispatcher import Dispatcher
        from pythonosc.osc_server import ThreadingOSCUDPServer

        self.messages = []
        self._lock = threading.Lock()
        dispatcher = Dispatcher()
        dispatcher.set_default_handler(self._handle)
        self.server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, address, *args):
        with self._lock:
            self.messages.append((address, args))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_video_writes_a_live_link_face_take_and_streams_vmc(tmp_path, demo_pack_dir):
    from capture import video
    from capture.channels import ARKIT_NAMES
    from capture.takes import LIVE_LINK_FACE_HEADER, parse_timecode

    pts = [0, 40, 80, 120, 170, 200, 240, 280]  # ms; one gap: the take keeps the input's timestamps
    clip = make_face_clip(tmp_path / "in.mp4", len(pts), audio=False, pts=pts, missing=(5,))
    take = tmp_path / "take.csv"
    receiver = _Receiver()
    try:
        rc = video.main([str(clip.path), "-o", str(tmp_path / "out.mp4"), "--assets", str(demo_pack_dir),
                         "--no-progress", "--backend", "torch", "--export", str(take),
                         "--osc", f"127.0.0.1:{receiver.port}", "--hold", "0"])
        assert rc == 0
        time.sleep(0.5)
    finally:
        receiver.close()

    # --- the take, read back as a Live Link Face importer reads it
    with open(take, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    assert header[:3] == ["Timecode", "BlendShapeCount", "EyeBlinkLeft"]
    assert header[-9:] == ["HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                           "RightEyeYaw", "RightEyePitch", "RightEyeRoll"]
    assert tuple(header) == LIVE_LINK_FACE_COLUMNS == LIVE_LINK_FACE_HEADER and len(header) == 2 + 52 + 9
    assert {h[0].lower() + h[1:] for h in header[2:54]} == set(ARKIT_NAMES)
    assert len(body) == len(pts)
    assert all(len(r) == len(header) and r[1] == "61" for r in body)
    times = [parse_timecode(r[0]) for r in body]
    np.testing.assert_allclose(times, np.array(pts) / 1000.0, atol=1 / 60000)
    values = np.array([[float(v) for v in r[2:54]] for r in body])
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert body[5][2:] == body[4][2:]  # the frame without a face repeats the last values

    # --- the VMC stream
    msgs = receiver.messages
    applies = [i for i, (a, _) in enumerate(msgs) if a == "/VMC/Ext/Blend/Apply"]
    assert len(applies) == len(pts), [a for a, _ in msgs][:80]
    first = msgs[: applies[0] + 1]
    vals = [args for a, args in first if a == "/VMC/Ext/Blend/Val"]
    names = [v[0] for v in vals]
    assert names[:52] == list(ARKIT_NAMES)
    assert names[52:] == ["Blink_L", "Blink_R", "A", "I", "U", "E", "O"]
    assert all(a == "/VMC/Ext/Blend/Val" for a, _ in first[:-1])  # every Val, then Apply
    assert all(0.0 <= v[1] <= 1.0 for v in vals)
    bones = [args for a, args in msgs if a == "/VMC/Ext/Bone/Pos"]
    assert len(bones) == len(pts) and all(b[0] == "Head" and len(b) == 8 for b in bones)
    q = np.array(bones[0][4:8])
    assert abs(np.linalg.norm(q) - 1.0) < 1e-5
    oks = [args for a, args in msgs if a == "/VMC/Ext/OK"]
    assert oks[0][:3] == (1, 3, 0) and oks[0][3] == 1 and oks[5][3] == 0  # frame 5 has no face
    t = [args[0] for a, args in msgs if a == "/VMC/Ext/T"]
    np.testing.assert_allclose(t, np.array(pts) / 1000.0, atol=1e-4)


def test_absent_receiver_costs_no_error_and_no_wait():
    from capture.channels import Channels
    from capture.vmc import VMCSender

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = VMCSender("127.0.0.1", port)
    # No wait, by construction rather than by a clock (a time limit fails on a loaded machine): the socket never
    # blocks, so a full send buffer is one more counted error, not a stall of the pipeline.
    assert not sender._sock.getblocking()
    for i in range(200):
        sender.send(Channels.neutral(), i / 30)  # never raises, whatever the network says
    assert sender.frames + sender.errors == 200
    sender.close()
    unreachable = VMCSender("192.0.2.1", 39539)  # TEST-NET-1: no route on most machines, never an exception
    unreachable.send(Channels.neutral(), 0.0)
    unreachable.close()


def test_unsupported_export_and_bad_osc_are_one_line(tmp_path, demo_pack_dir):
    from capture import video
    from capture.cli_common import CliError

    clip = make_face_clip(tmp_path / "in.mp4", 2, audio=False)
    for bad, needle in ((["--export", str(tmp_path / "take.xyz")], "unknown take format"),
                        (["--export", str(tmp_path / "take")], "no extension"),
                        (["--osc", "127.0.0.1:notaport"], "HOST:PORT")):
        with pytest.raises(CliError, match=needle):
            video.main([str(clip.path), "-o", str(tmp_path / "o.mp4"), "--assets", str(demo_pack_dir),
                        "--no-progress"] + bad)


def test_vrm_presets_and_unity_conversion():
    from capture.channels import ARKIT_NAMES, vrm_presets
    from capture.vmc import parse_address, quaternion_xyzw, to_unity

    zero = {n: 0.0 for n in ARKIT_NAMES}
    assert all(v == 0.0 for v in vrm_presets(zero).values())
    a = vrm_presets(dict(zero, jawOpen=1.0))
    assert a["A"] == 1.0 and a["I"] == 0.0 and a["U"] == 0.0
    u = vrm_presets(dict(zero, mouthPucker=1.0))
    assert u["U"] == 1.0 and u["A"] == 0.0
    i = vrm_presets(dict(zero, mouthStretchLeft=1.0, mouthStretchRight=1.0))
    assert i["I"] == 1.0 and i["A"] == 0.0
    assert vrm_presets(dict(zero, eyeBlinkLeft=0.7))["Blink_L"] == 0.7
    # a head turned towards the subject's left (+y in FLAME) turns towards -x in Unity: a negative y rotation
    p, q = to_unity(np.array([0.01, 0.02, 0.03]), quaternion_xyzw(np.array([0.0, 0.3, 0.0])))
    assert np.allclose(p, [-0.01, 0.02, 0.03]) and q[1] < 0 and q[3] > 0
    assert parse_address("10.0.0.2") == ("10.0.0.2", 39539) and parse_address("host:9000") == ("host", 9000)
