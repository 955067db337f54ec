"""Live expression streaming with the VMC protocol (OSC over UDP), for VTuber apps (VSeeFace, VMagicMirror,
Warudo, ...): `--osc HOST[:PORT]` in capture.live and capture.video (port 39539 by default, the protocol's
marionette port).

Per frame, one OSC bundle (so a receiver applies a frame whole and in order):
- `/VMC/Ext/Blend/Val` (string name, float value) for the 52 ARKit names (perfect sync) and the VRM 0.x presets
  Blink_L, Blink_R, A, I, U, E, O (`capture.channels.vrm_presets`), then `/VMC/Ext/Blend/Apply`;
- `/VMC/Ext/Bone/Pos` ("Head", px, py, pz, qx, qy, qz, qw): the head's rotation (FLAME's global rotation; the
  neck pose is zero in DECA) and the neck joint's position, in Unity's left-handed axes (`to_unity`);
- `/VMC/Ext/OK` (loaded 1, calibration state 3 = calibrated, calibration mode 0 = normal, tracking 1 / 0 when
  the face is lost) and `/VMC/Ext/T` (float seconds: the frame's time).

FLAME is right-handed, y up, the face towards +z, x to the subject's LEFT. Unity is left-handed, y up, an
avatar faces +z with its RIGHT at +x. So the one mirror is x -> -x: positions (-x, y, z), and a rotation
quaternion (x, y, z, w) becomes (x, -y, -z, w) (a mirror through the x = 0 plane flips the sense of rotations
about y and z, not about x).

Sending never blocks: a non-blocking UDP socket; a send that fails (no route, a full buffer, a refused port)
is counted in `errors` and dropped, never raised. Nothing is received.
"""
from __future__ import annotations

import socket
from typing import Optional

import numpy as np
import torch
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from .channels import ARKIT_NAMES, Channels, vrm_presets

DEFAULT_PORT = 39539


def parse_address(text: str) -> tuple[str, int]:
    """`HOST[:PORT]` -> (host, port); ValueError with the fix in its message."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--osc {text}: expected HOST or HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    return host, int(port)


def quaternion_xyzw(axis_angle: np.ndarray) -> np.ndarray:
    """Axis-angle [3] -> unit quaternion (x, y, z, w), same handedness."""
    from .gltf import axis_angle_to_quaternion

    return axis_angle_to_quaternion(axis_angle)


def to_unity(position: np.ndarray, quaternion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLAME (right-handed, x = subject's left) -> Unity (left-handed, x = avatar's right): mirror x."""
    p = np.asarray(position, np.float64)
    q = np.asarray(quaternion, np.float64)
    return np.array([-p[0], p[1], p[2]]), np.array([q[0], -q[1], -q[2], q[3]])


def _message(address: str, *args) -> bytes:
    builder = OscMessageBuilder(address=address)
    for a in args:
        if isinstance(a, str):
            builder.add_arg(a, OscMessageBuilder.ARG_TYPE_STRING)
        elif isinstance(a, (int, np.integer)) and not isinstance(a, bool):
            builder.add_arg(int(a), OscMessageBuilder.ARG_TYPE_INT)
        else:
            builder.add_arg(float(a), OscMessageBuilder.ARG_TYPE_FLOAT)
    return builder.build()


class VMCSender:
    """`send(channels, time, codes=None, tracking=True)` per frame; `close()`. Counters: `frames`, `errors`."""

    def __init__(self, host: str, port: int = DEFAULT_PORT, neck_position: Optional[np.ndarray] = None):
        self.address = (host, int(port))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.neck_position = np.zeros(3) if neck_position is None else np.asarray(neck_position, np.float64)
        self.frames = 0
        self.errors = 0
        self.last_error: Optional[str] = None

    def packet(self, channels: Channels, time: float, global_pose: Optional[np.ndarray] = None,
               tracking: bool = True) -> bytes:
        bundle = OscBundleBuilder(IMMEDIATELY)
        named = channels.named()
        for name in ARKIT_NAMES:
            bundle.add_content(_message("/VMC/Ext/Blend/Val", name, named[name]))
        for name, value in vrm_presets(named).items():
            bundle.add_content(_message("/VMC/Ext/Blend/Val", name, value))
        bundle.add_content(_message("/VMC/Ext/Blend/Apply"))
        q = quaternion_xyzw(np.zeros(3) if global_pose is None else global_pose)
        p, q = to_unity(self.neck_position, q)
        bundle.add_content(_message("/VMC/Ext/Bone/Pos", "Head", *p, *q))
        bundle.add_content(_message("/VMC/Ext/OK", 1, 3, 0, 1 if tracking else 0))
        bundle.add_content(_message("/VMC/Ext/T", float(time)))
        return bundle.build().dgram

    def send(self, channels: Channels, time: float, global_pose: Optional[np.ndarray] = None,
             tracking: bool = True) -> bool:
        """One frame; False (and counted) when the datagram could not be sent. Never raises for the network."""
        data = self.packet(channels, time, global_pose, tracking)
        try:
            self._sock.sendto(data, self.address)
        except OSError as exc:  # no receiver, no route, a full send buffer (BlockingIOError), ...
            self.errors += 1
            self.last_error = exc.strerror or str(exc)
            return False
        self.frames += 1
        return True

    def close(self) -> None:
        self._sock.close()


def neck_position(flame, shape: np.ndarray) -> np.ndarray:
    """The neck joint of the avatar at rest (FLAME metres): where the head bone pivots."""
    with torch.inference_mode():
        s = torch.as_tensor(np.asarray(shape, np.float32), device=flame.v_template.device).reshape(1, -1)
        z = torch.zeros(1, flame.n_exp, device=s.device)
        joints = flame(s, z, torch.zeros(1, 6, device=s.device)).joints
    return joints[0, 1].double().cpu().numpy()



