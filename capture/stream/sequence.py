"""Numbered image files (a VFX plate, a render, frames exported from an editor) read as one video.

A sequence is named the way the tools that write them do: a printf pattern (`shot/frame_%04d.png`), hashes
(`shot/frame.####.exr`, one `#` a digit, as Nuke and Houdini write them), or the folder that holds the files
(`shot/`: the largest set of numbered images in it with one prefix and one suffix).

Timing: frame number N is at (N - first) / fps seconds (`fps`: the user's, else `DEFAULT_FPS`, FFmpeg's own
default for images), so a gap in the numbering (a frame that failed to render) is a gap in time, not a shift of
every later frame. A file that does not decode is skipped and counted, as a damaged packet in a video is; a file
of another size is rescaled to the first file's, as a video's size change is. Float images (OpenEXR, Radiance
HDR) hold linear light: they are shown through the sRGB curve, as a viewer shows them; integer images (PNG, JPEG,
TIFF, DPX...) are taken as they are coded. The interface is VideoReader's, so every command reads both.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .reader import Frame, FrameConverter, VideoError, VideoReader, av

__all__ = ["ImageSequence", "ImageSequenceReader", "DEFAULT_FPS", "IMAGE_SUFFIXES", "find_sequence", "open_video",
           "sequence_of"]

DEFAULT_FPS = 25.0  # FFmpeg's image2 demuxer's default frame rate
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".dpx", ".bmp", ".tga", ".webp", ".hdr", ".jp2",
                  ".qoi")
_PRINTF = re.compile(r"%(0?)(\d*)d")
_HASHES = re.compile(r"#+")
_NUMBERED = re.compile(r"^(.*?)(\d+)(\.[^.]+)$")  # prefix, frame number, suffix (the last digit run before it)
_LINEAR = ("exr", "hdr")  # decoders whose pictures are linear light
_SRGB_TRC = "iec61966_2_1"  # FFmpeg's name of the sRGB transfer curve (the EXR decoder's `apply_trc` option)


@dataclass(frozen=True)
class ImageSequence:
    """Files of one sequence, ascending by frame number: `pattern` (printf style, for messages) and
    `frames` [(number, path)]."""

    pattern: str
    frames: tuple[tuple[int, str], ...]

    @property
    def first(self) -> int:
        return self.frames[0][0]

    @property
    def last(self) -> int:
        return self.frames[-1][0]

    @property
    def missing(self) -> list[int]:
        """Numbers inside [first, last] with no file."""
        have = {n for n, _ in self.frames}
        return [n for n in range(self.first, self.last + 1) if n not in have]

    def describe(self) -> str:
        """e.g. 'frame_%04d.png, frames 1001-1100 (2 missing: 1050, 1077)'."""
        gaps = self.missing
        shown = ", ".join(str(n) for n in gaps[:5]) + (", ..." if len(gaps) > 5 else "")
        return (f"{self.pattern}, frames {self.first}-{self.last}"
                + (f" ({len(gaps)} missing: {shown})" if gaps else ""))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _matching(folder: Path, prefix: str, suffix: str, width: Optional[int]) -> list[tuple[int, str]]:
    """Files `prefix<digits>suffix` in `folder` ([(number, path)] ascending); `width`: the digit count a
    zero-padded pattern asks for (a longer number still matches, as FFmpeg's does), None for any."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    digits = r"\d+" if not width else rf"\d{{{width},}}"
    exact = re.compile(re.escape(prefix) + f"({digits})" + re.escape(suffix) + "$")
    found = []
    for name in names:
        m = exact.match(name)
        if m and (not width or len(m.group(1)) == width or not m.group(1).startswith("0")):
            found.append((int(m.group(1)), str(folder / name)))
    return sorted(found)


def find_sequence(path: str) -> Optional[ImageSequence]:
    """The image sequence `path` names (a printf or hash pattern, or a folder of numbered images), or None when it
    names none (a video file, a single image, a URL). A pattern or folder that matches no file is a VideoError."""
    if "://" in path:
        return None
    p = Path(path)
    if p.is_dir():
        groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
        try:
            names = sorted(os.listdir(p))
        except OSError as e:
            raise VideoError(f"{path}: cannot list the folder ({e.strerror})") from None
        for name in names:
            m = _NUMBERED.match(name)
            if m and _is_image(name) and (p / name).is_file():
                groups.setdefault((m.group(1), m.group(3)), []).append((int(m.group(2)), str(p / name)))
        if not groups:
            raise VideoError(f"{path}: is a folder without numbered images (frame_0001.png, ...); give a video file"
                             " or an image sequence (a folder of numbered images, or a pattern like frame_%04d.png)")
        (prefix, suffix), frames = max(groups.items(), key=lambda kv: (len(kv[1]), kv[0]))
        digits = {len(os.path.basename(f)) - len(prefix) - len(suffix) for _, f in frames}
        pad = f"%0{digits.pop()}d" if len(digits) == 1 else "%d"
        return ImageSequence(str(p / f"{prefix}{pad}{suffix}"), tuple(sorted(frames)))
    name = p.name
    hashes = _HASHES.search(name)
    printf = _PRINTF.search(name)
    if printf is None and hashes is None:
        return None
    if printf is not None:
        width = int(printf.group(2)) if printf.group(1) and printf.group(2) else None
        span = printf.span()
    else:
        width = len(hashes.group(0)) if len(hashes.group(0)) > 1 else None
        span = hashes.span()
    prefix, suffix = name[:span[0]], name[span[1]:]
    frames = _matching(p.parent, prefix, suffix, width)
    if not frames:
        if p.exists():  # a file whose name happens to hold '%d' or '#'
            return None
        raise VideoError(f"{path}: no file matches this image sequence pattern in {p.parent}")
    pad = f"%0{width}d" if width else "%d"
    return ImageSequence(str(p.parent / f"{prefix}{pad}{suffix}"), tuple(frames))


def sequence_of(path: str) -> Optional[ImageSequence]:
    """For a single numbered image (`frame_0001.png`): the sequence it is one frame of, when there are others;
    else None. For a hint: a file is still read as the one image it is."""
    p = Path(path)
    m = _NUMBERED.match(p.name)
    if not m or not _is_image(p.name) or not p.is_file():
        return None
    frames = _matching(p.parent, m.group(1), m.group(3), len(m.group(2)))
    if len(frames) < 2:
        return None
    return ImageSequence(str(p.parent / f"{m.group(1)}%0{len(m.group(2))}d{m.group(3)}"), tuple(frames))


class ImageSequenceReader:
    """Iterate an image sequence as `Frame`s, with VideoReader's interface (see the module doc for timing).

    start, duration: seconds from the first frame, as for VideoReader. fps: the sequence's frame rate (default
    DEFAULT_FPS). After iteration `skipped_packets` counts the files that did not decode (`skipped_files` names
    them) and `rescaled` the frames of another size; a sequence is never `truncated`.
    """

    has_audio = False
    rotation = 0
    skipped_noun = "unreadable image"

    def __init__(self, sequence: ImageSequence, start: float | None = None, duration: float | None = None,
                 fps: float | None = None):
        if av is None:
            raise VideoError(f"{sequence.pattern}: cannot read images: PyAV is not installed (pip install av)")
        if start is not None and start < 0:
            raise ValueError(f"start must be >= 0 seconds, got {start}")
        if duration is not None and duration <= 0:
            raise ValueError(f"duration must be > 0 seconds, got {duration}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.sequence = sequence
        self.path = sequence.pattern
        self.fps = float(fps or DEFAULT_FPS)
        self.time_base = Fraction(1, 1) / Fraction(self.fps).limit_denominator(1_000_000)
        first = sequence.first
        lo = 0.0 if start is None else start
        hi = None if duration is None else lo + duration
        self._frames = [(n - first, f) for n, f in sequence.frames
                        if (n - first) / self.fps >= lo - 1e-9 and (hi is None or (n - first) / self.fps < hi - 1e-9)]
        self.truncated = False
        self.skipped_packets = 0
        self.skipped_files: list[str] = []
        self.rescaled = 0
        self._convert = FrameConverter()
        self._iterated = False
        self._first = None
        while self._frames and self._first is None:  # the first file that decodes sets the size
            self._first = self._read(self._frames[0][1])
            if self._first is None:
                self._frames.pop(0)
        if self._first is None:
            why = f" ({self.skipped_packets} unreadable: {os.path.basename(self.skipped_files[0])})" \
                if self.skipped_files else ""
            where = f" at or after start={start} s" if start else ""
            raise VideoError(f"{self.path}: no image of the sequence decodes{where}{why}")
        self.height, self.width = self._first.shape[:2]

    @property
    def frame_count(self) -> int:
        return len(self._frames)

    @property
    def duration(self) -> float:
        """Seconds from the first frame read to the end of the last (one frame long)."""
        return (self._frames[-1][0] - self._frames[0][0] + 1) / self.fps

    def _read(self, path: str) -> Optional[np.ndarray]:
        """[H, W, 3] uint8 RGB of one file, or None (counted) when it does not decode."""
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                if stream.codec_context.name in _LINEAR:
                    stream.codec_context.options = {"apply_trc": _SRGB_TRC}
                frame = next(container.decode(stream))
                return np.ascontiguousarray(self._convert.rgb(frame))
        except (av.error.FFmpegError, OSError, ValueError, IndexError, StopIteration):
            self.skipped_packets += 1
            self.skipped_files.append(path)
            return None

    def __iter__(self) -> Iterator[Frame]:
        if self._iterated:
            raise RuntimeError(f"{self.path}: the reader is single-pass; open a new one to read again")
        self._iterated = True
        index = 0
        for i, (pts, path) in enumerate(self._frames):
            image = self._first if i == 0 else self._read(path)
            self._first = None
            if image is None:
                continue
            if image.shape[:2] != (self.height, self.width):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                image = frame.reformat(width=self.width, height=self.height, interpolation="BILINEAR").to_ndarray()
                self.rescaled += 1
            yield Frame(index=index, image=image, pts=pts, time_base=self.time_base, time=float(pts * self.time_base))
            index += 1

    def close(self) -> None:
        self._first = None

    def __enter__(self) -> "ImageSequenceReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(path: str | os.PathLike, start: float | None = None, duration: float | None = None,
               fps: float | None = None):
    """A reader for `path`: an ImageSequenceReader when it names an image sequence, else a VideoReader. `fps` is
    an image sequence's frame rate; a video keeps its own timestamps, so it is refused there (ValueError)."""
    path = os.fspath(path)
    sequence = find_sequence(path)
    if sequence is not None:
        return ImageSequenceReader(sequence, start=start, duration=duration, fps=fps)
    if fps is not None:
        raise ValueError(f"{path}: --fps is for image sequences; a video keeps its own timestamps")
    return VideoReader(path, start=start, duration=duration)
