"""Short synthetic clips for tests and benchmarks, generated with PyAV (no files shipped, no network).

Each frame shows a gradient background, a bar that moves one step per frame, a red square in the upright
top-left corner (to check orientation) and the frame index as a row of 12 large black/white blocks
(`read_frame_number` decodes it back, robustly through lossy encoding), so tests can check order, count
and rotation of decoded frames. The audio track is a 440 Hz sine.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

import av
import numpy as np

__all__ = ["ClipInfo", "make_test_clip", "pattern_image", "read_frame_number", "NUMBER_BITS"]

NUMBER_BITS = 12


@dataclass(frozen=True)
class ClipInfo:
    """What was requested: pts in `time_base`, frame times in seconds, upright size (w, h)."""

    path: str
    pts: list[int]
    time_base: Fraction
    times: list[float]
    size: tuple[int, int]
    rotation: int
    has_audio: bool
    audio_duration: float


def _block(w: int, h: int) -> int:
    return max(4, min(w // (NUMBER_BITS + 2), h // 6))


def pattern_image(index: int, size: tuple[int, int]) -> np.ndarray:
    """The upright picture of frame `index`: [h, w, 3] uint8 RGB."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = (xs * 200 // max(1, w - 1)).astype(np.uint8)
    img[..., 1] = (ys * 200 // max(1, h - 1)).astype(np.uint8)
    img[..., 2] = 96
    b = _block(w, h)
    bar_x = (index * max(1, w // 40)) % max(1, w - b)
    img[h // 2 :, bar_x : bar_x + b // 2] = (255, 255, 0)
    img[:b, :b] = (255, 0, 0)  # orientation marker, upright top-left
    y0 = 2 * b  # code row under the marker, away from the moving bar
    for bit in range(NUMBER_BITS):
        on = (index >> (NUMBER_BITS - 1 - bit)) & 1
        x0 = (bit + 1) * b
        img[y0 : y0 + b, x0 : x0 + b] = 255 if on else 0
    return img


def read_frame_number(image: np.ndarray) -> int:
    """Decode the index drawn by `pattern_image` from an upright [h, w, 3] image."""
    h, w = image.shape[:2]
    b = _block(w, h)
    y = 2 * b + b // 2
    value = 0
    for bit in range(NUMBER_BITS):
        x = (bit + 1) * b + b // 2
        patch = image[y - b // 4 : y + b // 4 + 1, x - b // 4 : x + b // 4 + 1].astype(np.float32)
        value = (value << 1) | int(patch.mean() > 127.5)
    return value


def _pick_pix_fmt(codec: str, w: int, h: int) -> str:
    formats = [f.name for f in (av.codec.Codec(codec, "w").video_formats or [])]
    # Odd sizes cannot be coded in 4:2:0; 4:4:4 keeps the exact size for reader tests.
    wanted = ["yuv444p", "yuvj444p"] if (w % 2 or h % 2) else ["yuv420p", "yuvj420p"]
    if codec == "mjpeg":  # FFmpeg's MJPEG encoder wants the full-range (j) formats
        wanted = [n.replace("yuv", "yuvj") for n in wanted]
    for name in wanted:
        if not formats or name in formats:
            return name
    return formats[0]


def make_test_clip(
    path: str | os.PathLike,
    frames: int = 30,
    size: tuple[int, int] = (160, 120),
    fps: float | Fraction = 25,
    *,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    audio: bool = False,
    audio_codec: str | None = None,
    sample_rate: int = 48000,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    rotation: int = 0,
    draw: Callable[[int, tuple[int, int]], np.ndarray] | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> ClipInfo:
    """Write a short clip and return what was asked for (the independent reference for tests).

    frames: frame count (ignored when `pts` is given: one frame per entry).
    size: upright (width, height) as a player shows it.
    fps / pts / time_base: constant rate `fps` (pts = 0, 1, 2... in 1/fps), or explicit strictly
        increasing `pts` in `time_base` (default 1/1000) for variable frame rate.
    rotation: clockwise display rotation in {0, 90, 180, 270} stored as the display matrix; the coded
        picture is the upright one turned the other way, so a correct reader returns the upright picture.
    audio: add a 440 Hz mono sine lasting the video's duration (AAC, or Opus where AAC is not accepted).
    draw(index, (w, h)) -> [h, w, 3] uint8: replaces `pattern_image`.
    """
    path = os.fspath(path)
    if rotation % 90 or not 0 <= rotation < 360:
        raise ValueError(f"rotation must be 0, 90, 180 or 270, got {rotation}")
    fps = Fraction(fps).limit_denominator(100_000)
    if pts is None:
        tb = time_base or 1 / fps
        step = round(1 / (fps * tb))
        pts = [i * step for i in range(frames)]
    else:
        tb = time_base or Fraction(1, 1000)
        pts = [int(p) for p in pts]
        if any(b <= a for a, b in zip(pts, pts[1:])):
            raise ValueError("pts must increase strictly")
    times = [float(p * tb) for p in pts]
    tail = (times[-1] - times[-2]) if len(times) > 1 else float(1 / fps)
    duration = times[-1] + tail
    w, h = size
    coded = (h, w) if rotation in (90, 270) else (w, h)
    draw = draw or pattern_image

    out = av.open(path, mode="w", options=container_options or {})
    try:
        v = out.add_stream(codec, rate=fps)
        v.width, v.height = coded
        v.pix_fmt = pix_fmt or _pick_pix_fmt(codec, *coded)
        v.codec_context.time_base = tb
        v.time_base = tb
        opts = dict(options or {})
        if codec == "libx265":
            opts.setdefault("x265-params", "log-level=error")
        v.options = opts
        if rotation:
            # PyAV takes a counter-clockwise angle; the display turns the coded picture clockwise.
            v.set_display_rotation(-rotation)
        a = None
        if audio:
            a_codec = audio_codec or ("aac" if "aac" in out.supported_codecs else "libopus")
            a = out.add_stream(a_codec, rate=sample_rate)
            a.layout = "mono"
        for i, p in enumerate(pts):
            img = np.asarray(draw(i, (w, h)), dtype=np.uint8)
            # Coded = upright turned counter-clockwise, so the clockwise display rotation restores it.
            img = np.ascontiguousarray(np.rot90(img, k=rotation // 90))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = p
            frame.time_base = tb
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        if a is not None:
            total = int(round(duration * sample_rate))
            chunk = 1024
            for s in range(0, total, chunk):
                n = min(chunk, total - s)
                wave = 0.3 * np.sin(2 * math.pi * 440.0 * np.arange(s, s + n) / sample_rate)
                af = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None], format="fltp", layout="mono")
                af.sample_rate = sample_rate
                af.pts = s
                af.time_base = Fraction(1, sample_rate)
                out.mux(a.encode(af))  # PyAV converts to the encoder's sample format
            out.mux(a.encode(None))
    finally:
        out.close()
    return ClipInfo(
        path=path, pts=list(pts), time_base=tb, times=times, size=(w, h), rotation=rotation,
        has_audio=bool(audio), audio_duration=duration if audio else 0.0,
    )
