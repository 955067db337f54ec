"""Face signals per frame, measured independently of `capture` (MediaPipe face mesh, PyAV decode).

Five signals, each a 2-D image distance divided by the outer eye-corner distance (landmarks 33-263), so
that they don't change with the face's size in the picture:

| column | landmarks |
|---|---|
| mouth_open  | inner lips 13-14 |
| mouth_width | mouth corners 61-291 |
| eye_left    | the subject's left eye: mean of lid pairs 386-374, 385-380, 387-373 |
| eye_right   | the subject's right eye: mean of 159-145, 158-153, 160-144 |
| brow        | brow height: mean of 105/66/107 and 334/296/336 to their eye's centre |

The eye centres are the midpoints of the corners 33, 133 (right) and 362, 263 (left): the brow is measured from
the eye corners, not from the upper lid, so that a blink doesn't read as a brow raise. `measure_video` returns an
[N, 5] array with NaN rows where no face was found, plus that count.
Nothing here imports `capture`: this is the yardstick the pipeline is measured with.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

SIGNALS = ("mouth_open", "mouth_width", "eye_left", "eye_right", "brow")

@dataclass(frozen=True)
class Points:
    """Which landmarks of a face's point set each signal measures (indices into that set)."""

    mouth_inner: tuple  # (upper, lower) inner lip
    mouth_corners: tuple
    eye_left_lids: tuple  # (upper, lower) pairs of the subject's left eye
    eye_right_lids: tuple
    brow_right: tuple
    eye_right_corners: tuple
    brow_left: tuple
    eye_left_corners: tuple
    eye_outer: tuple  # the outer eye corners: the scale every signal is divided by


MOUTH_INNER = (13, 14)
MOUTH_CORNERS = (61, 291)
EYE_LEFT_LIDS = ((386, 374), (385, 380), (387, 373))
EYE_RIGHT_LIDS = ((159, 145), (158, 153), (160, 144))
BROW_RIGHT, EYE_RIGHT_CORNERS = (105, 66, 107), (33, 133)
BROW_LEFT, EYE_LEFT_CORNERS = (334, 296, 336), (362, 263)
EYE_OUTER = (33, 263)
FACE_MESH = Points(MOUTH_INNER, MOUTH_CORNERS, EYE_LEFT_LIDS, EYE_RIGHT_LIDS, BROW_RIGHT, EYE_RIGHT_CORNERS,
                   BROW_LEFT, EYE_LEFT_CORNERS, EYE_OUTER)  # MediaPipe's face mesh, the table above


def _dist(p: np.ndarray, a, b) -> float:
    return float(np.linalg.norm(p[a] - p[b]))


def landmark_signals(points: np.ndarray, layout: Points = FACE_MESH) -> np.ndarray:
    """The five signals of one face from its landmarks [N, 2+] (pixels, or any unit), by default MediaPipe's face
    mesh (N >= 468); another point set with its own `Points`. NaNs if degenerate."""
    p = np.asarray(points, np.float64)[:, :2]
    scale = _dist(p, *layout.eye_outer)
    if not np.isfinite(scale) or scale < 1e-6:
        return np.full(len(SIGNALS), np.nan)
    brow_r = np.linalg.norm(p[list(layout.brow_right)].mean(0) - p[list(layout.eye_right_corners)].mean(0))
    brow_l = np.linalg.norm(p[list(layout.brow_left)].mean(0) - p[list(layout.eye_left_corners)].mean(0))
    raw = [
        _dist(p, *layout.mouth_inner),
        _dist(p, *layout.mouth_corners),
        np.mean([_dist(p, a, b) for a, b in layout.eye_left_lids]),
        np.mean([_dist(p, a, b) for a, b in layout.eye_right_lids]),
        (brow_r + brow_l) / 2,
    ]
    return np.asarray(raw) / scale


@dataclass
class Signals:
    values: np.ndarray  # [N, 5], NaN rows where no face
    missed: int  # frames without a face
    fps: float | None = None

    @property
    def frames(self) -> int:
        return len(self.values)


class FaceMeter:
    """MediaPipe face mesh in tracking mode; one instance per video (it carries state between frames)."""

    def __init__(self):
        from mediapipe.python.solutions import face_mesh

        self._mesh = face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                        min_detection_confidence=0.5, min_tracking_confidence=0.5)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
        h, w = rgb.shape[:2]
        result = self._mesh.process(rgb)
        if not result.multi_face_landmarks:
            return np.full(len(SIGNALS), np.nan)
        lm = result.multi_face_landmarks[0].landmark
        pts = np.array([(q.x * w, q.y * h) for q in lm])
        return landmark_signals(pts)

    def close(self):
        self._mesh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def measure_frames(frames: Iterable[np.ndarray]) -> Signals:
    """Signals of a sequence of RGB uint8 frames, tracked as one video."""
    with FaceMeter() as meter:
        rows = [meter(f) for f in frames]
    values = np.asarray(rows, np.float64).reshape(-1, len(SIGNALS))
    return Signals(values, int(np.isnan(values).any(axis=1).sum()))


def video_frames(path, max_frames: int | None = None):
    """RGB uint8 frames of a video's first video stream, in decode order, with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if max_frames is not None and i >= max_frames:
                break
            yield frame.to_ndarray(format="rgb24")


def video_fps(path) -> float | None:
    import av

    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
        return float(rate) if rate else None


def measure_video(path: str | Path, max_frames: int | None = None) -> Signals:
    """Signals of every frame of a video (or its first `max_frames`)."""
    sig = measure_frames(video_frames(path, max_frames))
    sig.fps = video_fps(path)
    return sig


def pearson(a, b) -> tuple[float, int]:
    """Pearson correlation of two series over the indices where both are finite, and how many those are.

    NaN when fewer than 3 such indices or when either series is constant there.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3:
        return float("nan"), n
    a, b = a[ok], b[ok]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), n
    x, y = a - a.mean(), b - b.mean()
    r = (x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum())
    return float(np.clip(r, -1.0, 1.0)), n


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Print per-signal statistics of a video's face signals.")
    ap.add_argument("video")
    ap.add_argument("--max-frames", type=int, default=None)
    args = ap.parse_args(argv)
    sig = measure_video(args.video, args.max_frames)
    print(f"{args.video}: {sig.frames} frames, {sig.missed} without a face")
    for k, name in enumerate(SIGNALS):
        col = sig.values[:, k]
        print(f"  {name:12} mean {np.nanmean(col):.3f}  std {np.nanstd(col):.3f}  "
              f"min {np.nanmin(col):.3f}  max {np.nanmax(col):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
