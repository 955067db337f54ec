"""Numbered image files (a VFX plate, a render, frames exported from an editor) read as one video.

A sequence is named the way the tools that write them do: a printf pattern (`shot/frame_%04d.png`), hashes
(`shot/frame.####.exr`, one `#` a digit, as Nuke and Houdini write them), or the folder that holds the files
(`shot/`: the largest set of numbered images in it with one prefix and one suffix).

Timing: the file numbered N is frame N of the timeline, at N / fps seconds (pts N in a time_base of 1 / fps;
`fps`: the user's, else `DEFAULT_FPS`, FFmpeg's own default for images), as in the compositing and 3D tools the
plate came from: a gap in the numbering (a frame that failed to render) is a gap in time, not a shift of every
later frame, and takes (USD time codes, glTF keys) keep the plate's frame numbers. A file that does not decode
is skipped and counted, as a damaged packet in a video is; a file of another size is rescaled to the first
file's, as a video's size change is. Float images (OpenEXR, Radiance HDR) hold linear light: they are shown
through the sRGB curve, as a viewer shows them; integer images (PNG, JPEG, TIFF, DPX...) are taken as they are
coded. The interface is VideoReader's, so every command reads both.

Written the other way (`-o out/frame_%04d.png`, `.jpg`, `.tif`, `.bmp`, `.exr`; hashes too): each frame is one file,
named by the source frame it shows: number = `first_number` + round(time x fps), where time is the frame's time
on the source's timeline. A sequence read and written keeps its numbers (first_number 0: 1001-1100 stays
1001-1100, a gap stays a gap); a video's frames are numbered from 1 (first_number 1: frame 1 at 0 s), as FFmpeg
numbers them. Every file is written under a temporary name and renamed, so a file that is there is whole, after
a crash too. An image holds no sound: the input's audio goes beside the frames as a WAV (`audio_beside`)
covering the frames written. OpenEXR frames are written as compositors read them (`write_exr`, the OpenEXR
library): linear light (the sRGB curve undone), half floats, PIZ-compressed, and with a transparent background
RGB premultiplied by alpha (EXR's associated alpha), ready to go over the plate.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .reader import Frame, FrameConverter, VideoError, VideoReader, av

__all__ = ["ImageSequence", "ImageSequenceReader", "ImageSequenceWriter", "DEFAULT_FPS", "IMAGE_SUFFIXES",
           "WRITTEN_FORMATS", "write_exr", "audio_beside", "check_frames_not_input", "check_output", "find_sequence",
           "is_written_as_images", "make_frames_folder", "open_video", "open_writer", "sequence_of"]

DEFAULT_FPS = 25.0  # FFmpeg's image2 demuxer's default frame rate
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".dpx", ".bmp", ".tga", ".webp", ".hdr", ".jp2",
                  ".qoi")
_PRINTF = re.compile(r"%(0?)(\d*)d")
_HASHES = re.compile(r"#+")
_NUMBERED = re.compile(r"^(.*?)(\d+)(\.[^.]+)$")  # prefix, frame number, suffix (the last digit run before it)
_LINEAR = ("exr", "hdr")  # decoders whose pictures are linear light
# The decoder for each suffix, fed the whole file as one packet (what FFmpeg's image2 demuxer does): half the cost
# of av.open's probing, which decodes the picture once more to learn its stream (3.6 against 7.4 ms a 640x360
# PNG). A file that this decoder refuses (a PNG named .jpg) is opened and probed after all.
_DECODERS = {".png": "png", ".jpg": "mjpeg", ".jpeg": "mjpeg", ".tif": "tiff", ".tiff": "tiff", ".exr": "exr",
             ".dpx": "dpx", ".bmp": "bmp", ".tga": "targa", ".webp": "webp", ".hdr": "hdr", ".jp2": "jpeg2000",
             ".qoi": "qoi"}
_SRGB_TRC = "iec61966_2_1"  # FFmpeg's name of the sRGB transfer curve (the EXR decoder's `apply_trc` option)
# What an output sequence may be written as: suffix -> (PIL format, save options; EXR: write_exr's).
# PNG at zlib level 1: ~4x faster than the default for ~15 % more bytes; JPEG at quality 95 without chroma
# subsampling (for compositing).
WRITTEN_FORMATS = {".png": ("PNG", {"compress_level": 1}), ".jpg": ("JPEG", {"quality": 95, "subsampling": 0}),
                   ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0}), ".tif": ("TIFF", {}),
                   ".tiff": ("TIFF", {}), ".bmp": ("BMP", {}),
                   ".exr": ("EXR", {"compression": "PIZ"})}  # the OpenEXR library (write_exr)
# the written formats that keep a transparent background (RGBA)
ALPHA_SUFFIXES = (".png", ".tif", ".tiff", ".exr")
# sRGB code value -> linear light (IEC 61966-2-1), for the EXR frames: as half floats, and premultiplied by each
# alpha code ([alpha, code], 256 x 256), each rounded once from float64
_SRGB_TO_LINEAR = np.where(np.arange(256) / 255 <= 0.04045, np.arange(256) / 255 / 12.92,
                           ((np.arange(256) / 255 + 0.055) / 1.055) ** 2.4)
_LINEAR_HALF = _SRGB_TO_LINEAR.astype(np.float16)
_PREMULTIPLIED_HALF = (np.arange(256)[:, None] / 255 * _SRGB_TO_LINEAR[None, :]).astype(np.float16).reshape(-1)
_ALPHA_HALF = (np.arange(256) / 255).astype(np.float16)


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


def _by_number(frames) -> tuple[tuple[int, str], ...]:
    """[(number, path)] ascending, one file a number (of `f_1.png` and `f_001.png` the shorter name): a frame
    number is a time, and two frames at one time cannot both be shown."""
    unique: dict[int, str] = {}
    for number, path in sorted(frames, key=lambda item: (item[0], len(item[1]), item[1])):
        unique.setdefault(number, path)
    return tuple(unique.items())


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


def _split_pattern(name: str) -> Optional[tuple[str, Optional[int], str]]:
    """An image file name's (prefix, digit count or None for any, suffix) when it holds a printf (%04d, %d) or
    hash (####) frame number; else None (a video named 'take #3.mp4' or '100%d.mov' is no pattern)."""
    if not _is_image(name):
        return None
    printf = _PRINTF.search(name)
    hashes = _HASHES.search(name)
    if printf is not None:
        width = int(printf.group(2)) if printf.group(1) and printf.group(2) else None
        span = printf.span()
    elif hashes is not None:
        width = len(hashes.group(0)) if len(hashes.group(0)) > 1 else None
        span = hashes.span()
    else:
        return None
    return name[:span[0]], width, name[span[1]:]


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
        return ImageSequence(str(p / f"{prefix}{pad}{suffix}"), _by_number(frames))
    parts = _split_pattern(p.name)
    if parts is None:
        return None
    prefix, width, suffix = parts
    frames = _matching(p.parent, prefix, suffix, width)
    if not frames:
        if p.exists():  # a file whose name happens to hold '%d' or '#'
            return None
        raise VideoError(f"{path}: no file matches this image sequence pattern in {p.parent}")
    pad = f"%0{width}d" if width else "%d"
    return ImageSequence(str(p.parent / f"{prefix}{pad}{suffix}"), _by_number(frames))


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
    return ImageSequence(str(p.parent / f"{m.group(1)}%0{len(m.group(2))}d{m.group(3)}"), _by_number(frames))


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
        first = sequence.first  # start and duration count from the first frame, as a VideoReader's do
        lo = 0.0 if start is None else start
        hi = None if duration is None else lo + duration
        self._frames = [(n, f) for n, f in sequence.frames
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
            where = f" at or after start={start} s" if start else ""
            if not self.skipped_files:
                raise VideoError(f"{self.path}: no frames{where} (the sequence is {sequence.describe()})")
            raise VideoError(f"{self.path}: no image of the sequence decodes{where} ({self.skipped_packets}"
                             f" unreadable: {os.path.basename(self.skipped_files[0])})")
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
        frame = None
        decoder = _DECODERS.get(os.path.splitext(path)[1].lower())
        if decoder is not None:
            try:
                with open(path, "rb") as fh:
                    packet = av.Packet(fh.read())
                context = av.CodecContext.create(decoder, "r")
                if decoder in _LINEAR:
                    context.options = {"apply_trc": _SRGB_TRC}
                frame = next(iter(context.decode(packet) + context.decode(None)), None)
            except (av.error.FFmpegError, OSError, ValueError):
                frame = None
        try:
            if frame is None:
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


class ImageSequenceWriter:
    """Write frames as numbered image files, with VideoWriter's interface (write, write_frame, close, failed,
    frames_written, audio_summary); see the module doc for the numbers and the audio.

    path: a pattern (`out/frame_%04d.png`, `out/frame.####.png`); the suffix picks the format (WRITTEN_FORMATS).
    fps: the numbering's frame rate (the source's). time_base: of the pts given to write (default 1/fps).
    first_number: the number of the frame at time 0 (1 for a video's frames, 0 for a sequence's: frame N at N / fps).
    origin: source-timeline seconds that are time 0 (0.0: the source's own; None: the first frame written, as a
        recording from a camera wants), as VideoWriter's.
    audio_from: a media file whose audio is written beside the frames when the writer closes.
    alpha: write RGBA (a Picture's coverage; `ALPHA_SUFFIXES` only). audio_offset: as VideoWriter's.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, *, fps: float | Fraction = 25,
                 time_base: Fraction | None = None, first_number: int = 1, origin: float | None = 0.0,
                 audio_from: str | os.PathLike | None = None, alpha: bool = False, audio_offset: float = 0.0):
        self.path = os.fspath(path)
        folder, name = os.path.split(self.path)
        parts = _split_pattern(name)
        suffix = os.path.splitext(name)[1].lower()
        if parts is None or suffix not in WRITTEN_FORMATS:
            raise VideoError(f"{self.path}: an image sequence is written as a pattern with one of"
                             f" {', '.join(WRITTEN_FORMATS)} (e.g. frame_%04d.png)")
        self._prefix, width_digits, self._suffix = parts
        self._digits = width_digits or 1
        self._folder = folder or "."
        self._format, self._options = WRITTEN_FORMATS[suffix]
        if alpha and suffix not in ALPHA_SUFFIXES:
            raise VideoError(_no_alpha(self.path, suffix))
        self.alpha = bool(alpha)
        self.width, self.height = int(width), int(height)
        self.fps = float(fps) if fps and fps > 0 else DEFAULT_FPS
        self.time_base = Fraction(time_base) if time_base is not None else 1 / Fraction(self.fps).limit_denominator(
            1_000_000)
        self.first_number = int(first_number)
        self._origin = origin
        self.frames_written = 0
        self.numbers: list[int] = []
        self.failed: VideoError | None = None
        self._audio_from = None if audio_from is None else os.fspath(audio_from)
        self._audio_offset = float(audio_offset or 0)
        self.audio_path = os.path.join(self._folder, (self._prefix.rstrip("._- ") or "audio") + ".wav")
        self.audio_summary = "none"
        self._times: list[float] = []
        self._closed = False

    def file_for(self, number: int) -> str:
        return os.path.join(self._folder, f"{self._prefix}{number:0{self._digits}d}{self._suffix}")

    def write(self, image, pts: int | None = None, time_base: Fraction | None = None) -> None:
        """One [height, width, 3] uint8 RGB image (or a capture.picture.Picture) as the file of its frame number."""
        from PIL import Image

        if self._closed:
            raise VideoError(f"{self.path}: write() after close()")
        if self.failed is not None:
            raise self.failed
        if self.alpha:
            rgb = image.rgba() if hasattr(image, "rgba") else np.concatenate(
                [image, np.full(np.shape(image)[:2] + (1,), 255, np.uint8)], axis=2)
        else:
            rgb = image.rgb() if hasattr(image, "rgb") else np.asarray(image)
        channels = 4 if self.alpha else 3
        if rgb.shape != (self.height, self.width, channels) or rgb.dtype != np.uint8:
            raise ValueError(f"{self.path}: expected a [{self.height}, {self.width}, {channels}] uint8 image,"
                             f" got {list(rgb.shape)} {rgb.dtype}")
        if pts is None:
            seconds = (self.frames_written / self.fps)
        else:
            seconds = float(pts * Fraction(time_base if time_base is not None else self.time_base))
        if self._origin is None:
            self._origin = seconds
        number = self.first_number + round((seconds - self._origin) * self.fps)
        if self.numbers and number <= self.numbers[-1]:  # frames closer than 1/fps (variable rate): the next number
            number = self.numbers[-1] + 1
        target = self.file_for(number)
        fd, tmp = tempfile.mkstemp(prefix=".capture-", suffix=self._suffix, dir=self._folder)
        try:
            if self._format == "EXR":  # the library writes by name
                os.close(fd)
                write_exr(tmp, rgb, **self._options)
            else:
                with os.fdopen(fd, "wb") as fh:
                    Image.fromarray(rgb).save(fh, format=self._format, **self._options)
            os.replace(tmp, target)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            why = f"disk full ({e.strerror})" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
            self.failed = VideoError(f"{target}: cannot write the frame: {why}; the {self.frames_written} frames"
                                     " written before it are whole: free some space (or choose another folder)"
                                     " and run again")
            raise self.failed from None
        self.numbers.append(number)
        self._times.append(seconds)
        self.frames_written += 1

    def write_frame(self, frame: Frame) -> None:
        self.write(frame.image, frame.pts, frame.time_base)

    def close(self) -> None:
        """Write the audio beside the frames (when there is audio and a frame). Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._audio_from is None or not self._times or self.failed is not None:
            return
        start, end = self._times[0] - self._audio_offset, self._times[-1] + 1 / self.fps - self._audio_offset
        try:
            self.audio_summary = audio_beside(self._audio_from, self.audio_path, start, end)
        except VideoError as e:
            self.audio_summary = f"not written ({e})"

    def __enter__(self) -> "ImageSequenceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def audio_beside(source: str, target: str, start: float, end: float) -> str:
    """The first audio stream of `source` from `start` to `end` seconds (its own timeline) as 16-bit PCM WAV at
    `target` (written atomically); returns the summary, e.g. 'written beside as out/frame.wav (aac -> pcm_s16le)'."""
    from .reader import open_input

    folder = os.path.dirname(target) or "."
    fd, tmp = tempfile.mkstemp(prefix=".capture-", suffix=".wav", dir=folder)
    os.close(fd)
    try:
        with open_input(source, what="audio source") as src:
            if not src.streams.audio:
                os.unlink(tmp)
                return "none"
            a_in = src.streams.audio[0]
            rate = a_in.codec_context.sample_rate
            layout = "mono" if a_in.codec_context.channels == 1 else "stereo"
            with av.open(tmp, "w", format="wav") as out:
                a_out = out.add_stream("pcm_s16le", rate=rate)
                a_out.layout = layout
                resample = av.AudioResampler(format="s16", layout=layout, rate=rate)
                first, last = round(start * rate), round(end * rate)  # samples of the source's timeline
                written = 0
                for frame in src.decode(a_in):
                    for chunk in resample.resample(frame):
                        timed = chunk if chunk.pts is not None else frame
                        at = round(float(timed.pts * timed.time_base) * rate) if timed.pts is not None else first
                        samples = chunk.to_ndarray().reshape(-1, len(chunk.layout.channels))
                        lo, hi = max(0, first - at), min(len(samples), last - at)
                        if hi <= lo:
                            continue
                        piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[lo:hi]).reshape(1, -1),
                                                           format="s16", layout=layout)
                        piece.sample_rate, piece.pts = rate, written
                        written += hi - lo
                        out.mux(a_out.encode(piece))
                out.mux(a_out.encode(None))
        os.replace(tmp, target)
    except (av.error.FFmpegError, OSError) as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise VideoError(f"{target}: {getattr(e, 'strerror', None) or e}") from None
    return f"written beside as {target} ({a_in.codec_context.codec.canonical_name} -> pcm_s16le)"


def _openexr():
    """The OpenEXR library's Python bindings (the `openexr` package), or a VideoError that says how to get them."""
    try:
        import OpenEXR
    except ImportError:
        raise VideoError("writing .exr frames needs the OpenEXR library's Python bindings: pip install openexr"
                         " (or write .png / .tif frames)") from None
    return OpenEXR


def write_exr(path: str | os.PathLike, image: np.ndarray, compression: str = "PIZ") -> None:
    """An sRGB [H, W, 3 or 4] uint8 picture (straight alpha) as an OpenEXR file (the OpenEXR library): linear
    light, half floats, RGB premultiplied by alpha where there is one (EXR's associated alpha). compression: an
    OpenEXR name (PIZ, ZIP, ZIPS, RLE, NO...); PIZ, lossless, is the smallest and fastest on these pictures (a
    720p frame in ~25 ms and ~0.9 MB, against ZIP's ~60 ms and ~1.9 MB)."""
    exr = _openexr()
    if image.shape[2] == 4:  # table look-ups: a third of the float arithmetic's time
        flat = image.reshape(-1, 4)
        pixels = np.empty(image.shape, np.float16)
        pixels.reshape(-1, 4)[:, :3] = _PREMULTIPLIED_HALF[flat[:, 3:].astype(np.intp) << 8 | flat[:, :3]]
        pixels.reshape(-1, 4)[:, 3] = _ALPHA_HALF[flat[:, 3]]
        channels = "RGBA"
    else:
        pixels, channels = _LINEAR_HALF[image], "RGB"
    header = {"compression": getattr(exr, f"{compression.upper()}_COMPRESSION"), "type": exr.scanlineimage}
    try:
        with exr.File(header, {channels: pixels}) as f:
            f.write(os.fspath(path))
    except RuntimeError as e:  # the library's I/O failures ("Cannot write image file ..."): an OSError to callers
        full = "No space left on device" in str(e) or "Disk quota exceeded" in str(e)
        raise OSError(errno.ENOSPC if full else errno.EIO, str(e).splitlines()[0] if str(e) else "") from None


def _no_alpha(path: str, suffix: str) -> str:
    return (f"{path}: {suffix} images keep no transparency; write .png, .tif or .exr frames, or a"
            " .webm / .mov / .mkv video")


def check_output(path: str | os.PathLike, codec: str | None = None, alpha: bool = False) -> str:
    """Before any work: what `path` is written with (an image format for a pattern, else the video encoder from
    writer.check_encoder), or VideoError (also where `alpha`, a transparent background, cannot be kept)."""
    from .writer import check_encoder

    path = os.fspath(path)
    if _split_pattern(os.path.basename(path)) is None:
        if _is_image(path):
            stem, suffix = os.path.splitext(path)
            raise VideoError(f"{path}: one image cannot hold every frame; give a pattern such as {stem}_%04d{suffix}"
                             " to write each frame as an image, or a video name (.mp4, .mkv, .mov)")
        return check_encoder(path, codec, alpha)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in WRITTEN_FORMATS:
        raise VideoError(f"{path}: an image sequence is written as one of {', '.join(WRITTEN_FORMATS)}"
                         f" (e.g. frame_%04d.png), not {suffix or 'a name without a suffix'}")
    if codec is not None:
        raise VideoError(f"{path}: --codec is for a video; an image sequence's format comes from its suffix")
    if alpha and suffix not in ALPHA_SUFFIXES:
        raise VideoError(_no_alpha(path, suffix))
    if suffix == ".exr":
        _openexr()  # said now, not after the first frame's work
    return WRITTEN_FORMATS[suffix][0].lower()


def check_frames_not_input(path: str | os.PathLike, inputs) -> None:
    """For an output pattern: VideoError when a file it would write over (one that matches it now) or the WAV it
    writes beside is one of `inputs` (an input sequence's files too), under any name. A video path: nothing."""
    from .writer import check_not_input

    path = os.fspath(path)
    if not is_written_as_images(path):
        return
    prefix = _split_pattern(os.path.basename(path))[0]
    check_not_input(os.path.join(os.path.dirname(path), (prefix.rstrip("._- ") or "audio") + ".wav"), inputs,
                    what="audio file written beside the frames")
    try:
        existing = find_sequence(path)
    except VideoError:  # nothing there yet
        return
    ids = {}
    for source in inputs:
        with contextlib.suppress(OSError, ValueError, TypeError):
            st = os.stat(source)
            ids[(st.st_dev, st.st_ino)] = source
    for _, name in existing.frames:
        st = os.stat(name)
        if (st.st_dev, st.st_ino) in ids:
            raise VideoError(f"{path}: the output names {name}, which is the input {ids[(st.st_dev, st.st_ino)]};"
                             " writing it would destroy the input: choose another name or folder")


def make_frames_folder(path: str | os.PathLike) -> None:
    """For an output pattern: its folder, made when missing (a sequence lives in a folder of its own, and Nuke's
    and Houdini's writers make it too); VideoError when it cannot be. A video path: nothing (its folder must be
    there, as for FFmpeg)."""
    folder = os.path.dirname(os.fspath(path))
    if folder and is_written_as_images(path) and not os.path.isdir(folder):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise VideoError(f"{path}: cannot make the folder {folder} for the frames ({e.strerror})") from None


def is_written_as_images(path: str | os.PathLike) -> bool:
    """Whether an output `path` is a pattern of numbered images (ImageSequenceWriter), not a video."""
    return _split_pattern(os.path.basename(os.fspath(path))) is not None


def open_writer(path: str | os.PathLike, width: int, height: int, *, first_number: int = 1, **options):
    """An ImageSequenceWriter for a pattern (it takes fps, time_base, origin and audio_from of `options`), else a
    VideoWriter with every option."""
    from .writer import VideoWriter

    if not is_written_as_images(path):
        return VideoWriter(path, width, height, **options)
    return ImageSequenceWriter(path, width, height, fps=options.get("fps", DEFAULT_FPS),
                               time_base=options.get("time_base"), first_number=first_number,
                               origin=options.get("origin", 0.0), audio_from=options.get("audio_from"),
                               alpha=options.get("alpha", False), audio_offset=options.get("audio_offset", 0.0))
