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

`.glb`, `.usd`, `.usda`, `.usdc` are planned (issue 14) and refused in one line for now.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from .channels import ARKIT_NAMES, Channels

TIMECODE_RATE = 60


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
    """A Live Link Face CSV take: `add(time, channels)` per frame (None: repeat the last row's values)."""

    suffixes = (".csv",)

    def __init__(self, path):
        self.path = Path(path)
        self._file = open(self.path, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(LIVE_LINK_FACE_HEADER)
        self._last: Channels = Channels.neutral()
        self.rows = 0

    def add(self, time: float, channels: Optional[Channels]) -> None:
        if channels is not None:
            self._last = channels
        c = self._last
        values = [c.blendshapes[i] for i in _COLUMN_TO_ARKIT] + list(c.head) + list(c.eyes)
        self._csv.writerow([timecode(time), BLENDSHAPE_COUNT] + [f"{float(v):.8f}" for v in values])
        self.rows += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


TAKE_FORMATS = {".csv": LiveLinkTake}
PLANNED_FORMATS = (".glb", ".usd", ".usda", ".usdc")


def take_writer_for(path) -> type:
    """The writer class for an `--export` file, from its extension; ValueError (one line) otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix in TAKE_FORMATS:
        return TAKE_FORMATS[suffix]
    if suffix in PLANNED_FORMATS:
        raise ValueError(f"--export {path}: {suffix} is not yet supported (supported now: "
                         f"{', '.join(TAKE_FORMATS)})")
    raise ValueError(f"--export {path}: unknown take format {suffix or '(no extension)'!r} (supported: "
                     f"{', '.join(TAKE_FORMATS)})")
