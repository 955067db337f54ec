"""Animation takes written by `capture.video --export FILE`: one table of formats, one small writer per format.

`.csv`: a Live Link Face take, as the iPhone app writes it, so that the importers made for those files
(Blender, Maya, MotionBuilder, Unreal's LiveLinkFaceImporter) read ours:

- the app's header and column order: `Timecode,BlendShapeCount`, the 52 blendshapes in the app's CSV order
  (PascalCase; note the app writes `JawRight,JawLeft` and `MouthRight,MouthLeft`, the other way round from
  ARKit's enumeration: the columns are written by name, so each holds its own channel), then `HeadYaw,
  HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll`;
  `BlendShapeCount` = 61 (52 + 9 angles) on every row, as the app writes it;
- `Timecode` = `HH:MM:SS:FF.mmm` of the frame's input timestamp (`Frame.time`, seconds on the input's own
  timeline) at `TIMECODE_RATE` = 60 frames a second (the app's ARKit rate; frame-counting importers assume
  60) with `.mmm` the thousandths of a frame, so `t = 3600 HH + 60 MM + SS + (FF + mmm / 1000) / 60` to
  1/60000 s;
- one row per output frame, at the input's timestamps. A frame that passed through without a face repeats
  the last channels written (all 0 before the first face);
- angles in radians; values with 8 decimals.

The other formats are small modules of their own, fed the same per-frame record (`TakeFrame`) and the same
description of the avatar (`TakeContext`): `.glb` (capture.gltf: the avatar as a skinned, morphing glTF 2.0
rig with one animation) and `.usd` / `.usda` / `.usdc` (capture.usd: the mesh with time-sampled points and
the channels as time-sampled attributes). Every writer is `cls(path, context)`, `add(frame)` per output frame,
`close()`, and counts its `rows`.
"""
from __future__ import annotations

import csv
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .channels import ARKIT_NAMES, Channels

TIMECODE_RATE = 60


@dataclass
class TakeFrame:
    """What every take writer gets per output frame (built from a `capture.session.FrameOutput`)."""

    time: float  # seconds on the input's own timeline (`Frame.time`; the first frame need not be at 0)
    channels: Optional[Channels]  # the frame's named channels; None: no face (writers repeat the last frame)
    codes: Optional[dict]  # the merged codes rendered (shape [n_shape], exp [n_exp], pose [6], ...) or None
    vertices: Optional[np.ndarray] = None  # [V, 3] the avatar as the session skinned it, when it kept them


@dataclass
class TakeContext:
    """The target avatar as the animation files describe it, fixed for a take.

    flame: the `capture.flame.FLAME` module the codes animate; shape [n_shape] the avatar's identity;
    faces [F, 3], uvcoords [T, 2] (v up), uvfaces [F, 3] the pack's UV layout; albedo [H, W, 3] uint8 (row 0 =
    v = 1) or None; expression_names: a name per expression coefficient; fps: the input's frame rate;
    normal_map [S, S, 3] uint8: the avatar's detail as a tangent-space normal map (`capture.meshio`) or None."""

    flame: object
    shape: np.ndarray
    faces: np.ndarray
    uvcoords: np.ndarray
    uvfaces: np.ndarray
    albedo: Optional[np.ndarray]
    expression_names: Sequence[str]
    fps: float
    normal_map: Optional[np.ndarray] = None


def expression_names(meta: dict, n_exp: int) -> tuple[str, ...]:
    """A name per expression coefficient: the pack's `expression_names` (pack.json; the demo pack names its
    designed columns) for the first ones, `exp00`, `exp01`, ... (the column number) for the rest."""
    named = list(meta.get("expression_names") or []) if isinstance(meta, dict) else []
    return tuple(str(named[k]) if k < len(named) else f"exp{k:02d}" for k in range(n_exp))


def take_context(deca, avatar, fps: float) -> TakeContext:
    """The `TakeContext` of a run: the avatar's shape, albedo (its photo texture, else the pack's albedo model at
    its code) and detail normal map, the pack's UV layout and expression names."""
    from .meshio import avatar_albedo, avatar_normal_map

    pack = deca.pack
    return TakeContext(flame=deca.flame, shape=avatar.codes.shape[0].detach().cpu().numpy().astype(np.float64),
                       faces=np.asarray(pack.uv.faces), uvcoords=np.asarray(pack.uv.uvcoords),
                       uvfaces=np.asarray(pack.uv.uvfaces), albedo=avatar_albedo(deca, avatar),
                       expression_names=expression_names(pack.meta, deca.flame.n_exp), fps=float(fps or 30.0),
                       normal_map=avatar_normal_map(deca, avatar))


def _live_link_face_order() -> tuple[str, ...]:
    """Live Link Face's CSV columns: ARKit's names capitalised, in ARKit's order but for two pairs the app writes
    the other way round (JawRight before JawLeft, MouthRight before MouthLeft)."""
    names = [n[0].upper() + n[1:] for n in ARKIT_NAMES]
    for a, b in (("JawLeft", "JawRight"), ("MouthLeft", "MouthRight")):
        i, j = names.index(a), names.index(b)
        names[i], names[j] = names[j], names[i]
    return tuple(names)


LIVE_LINK_FACE_BLENDSHAPES = _live_link_face_order()
LIVE_LINK_FACE_ANGLES = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                         "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
LIVE_LINK_FACE_HEADER = ("Timecode", "BlendShapeCount") + LIVE_LINK_FACE_BLENDSHAPES + LIVE_LINK_FACE_ANGLES
BLENDSHAPE_COUNT = len(LIVE_LINK_FACE_BLENDSHAPES) + len(LIVE_LINK_FACE_ANGLES)  # 61
# CSV column -> index in ARKIT_NAMES (the same names, PascalCase)
_COLUMN_TO_ARKIT = [ARKIT_NAMES.index(col[0].lower() + col[1:]) for col in LIVE_LINK_FACE_BLENDSHAPES]


def timecode(seconds: float, rate: int = TIMECODE_RATE) -> str:
    """Seconds -> `HH:MM:SS:FF.mmm` (FF frames at `rate`, mmm thousandths of a frame). Negative times clamp to 0."""
    sub = max(0, round(seconds * rate * 1000))
    frames, milli = divmod(sub, 1000)
    secs, ff = divmod(frames, rate)
    mins, ss = divmod(secs, 60)
    hh, mm = divmod(mins, 60)
    return f"{hh:02d}:{mm:02d}:{ss:02d}:{ff:02d}.{milli:03d}"


def parse_timecode(text: str, rate: int = TIMECODE_RATE) -> float:
    """`HH:MM:SS:FF[.mmm]` -> seconds (the reverse of `timecode`)."""
    hh, mm, ss, ff = text.split(":")
    return int(hh) * 3600 + int(mm) * 60 + int(ss) + float(ff) / rate


class LiveLinkTake:
    """A Live Link Face CSV take: `add(frame)` per frame (channels None: repeat the last row's values)."""

    needs_vertices = False

    def __init__(self, path, context: Optional[TakeContext] = None):
        self.path = Path(path)
        self._file = open(self.path, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(LIVE_LINK_FACE_HEADER)
        self._last: Channels = Channels.neutral()
        self.rows = 0

    def add(self, frame: TakeFrame) -> None:
        if frame.channels is not None:
            self._last = frame.channels
        c = self._last
        values = [c.blendshapes[i] for i in _COLUMN_TO_ARKIT] + list(c.head) + list(c.eyes)
        self._csv.writerow([timecode(frame.time), BLENDSHAPE_COUNT] + [f"{float(v):.8f}" for v in values])
        self.rows += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


# suffix -> "module:class" (imported when used: usd-core is only needed for USD takes)
TAKE_FORMATS = {".csv": "capture.takes:LiveLinkTake", ".glb": "capture.gltf:GltfTake",
                ".usd": "capture.usd:UsdTake", ".usda": "capture.usd:UsdTake", ".usdc": "capture.usd:UsdTake"}


def take_writer_for(path) -> type:
    """The writer class for an `--export` file, from its extension; ValueError (one line) otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in TAKE_FORMATS:
        raise ValueError(f"--export {path}: unknown take format {suffix or '(no extension)'!r} (supported: "
                         f"{', '.join(TAKE_FORMATS)})")
    module, name = TAKE_FORMATS[suffix].split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        install = "usd-core" if exc.name == "pxr" else exc.name
        raise ValueError(f"--export {path}: {suffix} takes need the package {exc.name!r} "
                         f"(pip install {install})") from None
