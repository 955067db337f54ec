"""Decoding video files into upright RGB frames with their real timestamps.

Timestamps are never invented from a frame rate: every `Frame` carries the decoder's `pts` in the stream's
`time_base`, so variable-frame-rate input stays variable (docs/conventions.md, "pts/time_base"). Rotation
metadata (the display matrix, shown as the legacy `rotate` tag by older tools) is applied to the pixels, so
downstream stages always see the picture the way a player shows it.

Truncated or corrupt input: the reader yields every frame that decodes, then raises `VideoError` (and sets
`VideoReader.truncated`). Callers that write output should finalise it in a `finally` and then report.
A damaged packet in the middle is skipped the way FFmpeg does (the decoder resynchronises on the next one)
and counted in `VideoReader.skipped_packets`; only a file that ends early is called truncated.

Size changes mid-stream (broadcast TS, concatenated clips, screen recordings): every frame is rescaled to the
first frame's size, so downstream stages see one size; `VideoReader.rescaled` counts those frames. Cover art
(an attached picture, e.g. in an audio file) is not a video stream.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import numpy as np

from ..cpus import usable_cpus

try:
    import av
except ImportError:  # a machine without PyAV (e.g. the bare GPU machine): Frame and VideoError still import,
    av = None  # and opening a video says what is missing (open_input)

__all__ = ["Frame", "VideoError", "VideoReader", "codec_threads", "upright", "display_rotation", "video_streams",
           "FrameConverter"]


class VideoError(Exception):
    """A video input or output problem, with a one-line message naming the file and what is wrong."""


@dataclass(frozen=True)
class Frame:
    """One decoded video frame.

    image: [H, W, 3] uint8 RGB, upright (rotation metadata already applied), C-contiguous.
    pts: presentation timestamp in `time_base` units, as decoded (never re-timed).
    time: pts * time_base in seconds (absolute, on the source's own timeline).
    """

    index: int
    image: np.ndarray
    pts: int
    time_base: Fraction
    time: float


class FrameConverter:
    """Pixel-format conversion of a stream's frames through one swscale context, kept for the stream.

    PyAV's `VideoFrame.to_ndarray(format=...)` / `reformat(...)` make a new context on every frame, and
    setting one up costs more than converting a 640x360 frame (rgb24 -> yuv420p: 2.8 CPU ms fresh, 1.3
    reused). Same bytes. One thread: decode and encode are pipeline stages of their own.
    """

    def __init__(self, **options):
        from av.video.reformatter import VideoReformatter

        self._sws = VideoReformatter()
        self._options = dict(options, threads=1)

    def frame(self, frame, format: str):
        """av.VideoFrame -> av.VideoFrame in `format` (with the options given at construction)."""
        return self._sws.reformat(frame, format=format, **self._options)

    def rgb(self, frame) -> np.ndarray:
        """av.VideoFrame -> [H, W, 3] uint8 RGB (a view of a fresh frame's buffer)."""
        return self.frame(frame, "rgb24").to_ndarray()


def codec_threads() -> int:
    """Threads for a decoder or encoder inside the pipeline: half the usable CPUs. The codec shares them with the
    pipeline's other busy stages; FFmpeg's and x264's own choice (about 1.5 x CPUs, frame-parallel) costs ~10 % more
    CPU a frame on 2 cores (x264 at 2560x720, H.264 decoding at 1280x720) for no more frames."""
    return max(1, len(usable_cpus()) // 2)


def display_rotation(frame_rotation_ccw: float) -> int:
    """Clockwise display rotation in {0, 90, 180, 270} from PyAV's `VideoFrame.rotation`.

    PyAV reports the display matrix as a counter-clockwise angle in [-180, 180]; players (and the legacy
    `rotate` tag, and ffmpeg's autorotate) rotate the coded picture clockwise by the negated angle.
    Angles are snapped to the nearest quarter turn; mirroring in the matrix is ignored.
    """
    return int(round(-float(frame_rotation_ccw) / 90.0)) % 4 * 90


def upright(image: np.ndarray, rotation_cw: int) -> np.ndarray:
    """Rotate a coded [H, W, C] picture clockwise by `rotation_cw` degrees, returning a contiguous copy
    only when a rotation happens."""
    k = (rotation_cw // 90) % 4
    if k == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k=-k))


def _is_url(path: str) -> bool:
    return "://" in path


_DURATION_TAG = re.compile(r"^(\d+):(\d+):(\d+(?:\.\d+)?)$")


def _tag_seconds(value: str | None) -> float | None:
    """Matroska writes per-stream durations as a `DURATION` tag 'HH:MM:SS.nnnnnnnnn'."""
    if not value:
        return None
    m = _DURATION_TAG.match(value.strip())
    if not m:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def video_streams(container) -> list:
    """The container's real video streams: an attached picture (cover art, a thumbnail) is not a video."""
    attached = av.stream.Disposition.attached_pic
    return [s for s in container.streams.video if not (s.disposition & attached)]


def open_input(path: str, what: str = "video", **kwargs) -> av.container.InputContainer:
    """av.open for reading, with every failure turned into one VideoError line naming the file."""
    if av is None:
        raise VideoError(f"{path}: cannot open {what}: PyAV is not installed (pip install av)")
    if not _is_url(path) and "format" not in kwargs:
        if not os.path.exists(path):
            raise VideoError(f"{path}: file not found (check the {what} path)")
        if os.path.isdir(path):
            raise VideoError(f"{path}: is a directory, expected a {what} file")
    try:
        return av.open(path, mode="r", **kwargs)
    except av.error.InvalidDataError:
        raise VideoError(
            f"{path}: not a readable {what} (FFmpeg found invalid data: not a media file, or truncated/corrupt,"
            " e.g. an MP4 cut off before its index)"
        ) from None
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot open {what}: {e.strerror or e}") from None
    except OSError as e:
        raise VideoError(f"{path}: cannot open {what}: {e.strerror or e}") from None


class VideoReader:
    """Iterate the frames of a video file (or URL) as `Frame`s, single pass.

    start, duration: seconds, relative to the first frame of the video stream; frames with
    start <= t - t0 < start + duration are yielded (seek to the keyframe before `start`, then trim).

    Properties describe what iteration will produce: width, height (after rotation), fps (average, 0.0 if
    unknown), frame_count (an estimate), duration (seconds or None), has_audio, rotation (clockwise degrees
    applied), time_base. After iteration, `truncated` tells whether the input ended early.

    Raises VideoError at construction for a missing file, a non-video, a file without a video stream or
    one whose first frame does not decode; during iteration (after the frames that did decode) for
    truncated or corrupt data.
    """

    skipped_noun = "damaged input packet"  # what `skipped_packets` counts, for messages

    def __init__(self, path: str | os.PathLike, start: float | None = None, duration: float | None = None):
        self.path = os.fspath(path)
        if start is not None and start < 0:
            raise ValueError(f"start must be >= 0 seconds, got {start}")
        if duration is not None and duration <= 0:
            raise ValueError(f"duration must be > 0 seconds, got {duration}")
        self._container = open_input(self.path)
        try:
            videos = video_streams(self._container)
            if not videos:
                kinds = sorted({"cover art" if s.type == "video" else s.type for s in self._container.streams})
                raise VideoError(f"{self.path}: no video stream (streams found: {', '.join(kinds or ['none'])});"
                                 " an audio file is not a video")
            self._stream = videos[0]
            # Frame+slice threading where codec_threads gives more than one: decode throughput matters here,
            # latency does not (that is the camera).
            self._stream.thread_type = "AUTO"
            self._stream.thread_count = codec_threads()
            self.time_base: Fraction = self._stream.time_base or Fraction(1, 1_000_000)
            self.has_audio = bool(self._container.streams.audio)
            rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
            self.fps = float(rate) if rate else 0.0
            self._t0 = float((self._stream.start_time or 0) * self.time_base)
            self._start = self._t0 + (start or 0.0)
            self._end = None if duration is None else self._start + duration
            self._source_end = self._stream_end()
            self.truncated = False
            self.skipped_packets = 0  # damaged packets the decoder could not use (skipped, not fatal)
            self._last_skip = ""
            self.rescaled = 0  # frames whose coded size differed from the first frame's
            self._stopped_by_limit = False
            self._error: str | None = None
            self._raw = self._decoded()
            self._first = next(self._raw, None)
            if self._first is None:
                if self._error or self.skipped_packets:
                    why = self._error or f"{self.skipped_packets} damaged packet(s): {self._last_skip}"
                    raise VideoError(f"{self.path}: no frame decodes ({why})")
                if self._source_end is not None and self._source_end - self._start > 0.25:
                    self.truncated = True
                    raise VideoError(
                        f"{self.path}: truncated video: no frame decodes but the container declares"
                        f" {self._source_end - self._t0:.3f} s (file cut short? re-download or re-export it)"
                    )
                where = f" at or after start={start} s" if start else ""
                raise VideoError(f"{self.path}: no video frames{where}")
        except BaseException:
            self._container.close()
            raise
        self.rotation = display_rotation(self._first.rotation)
        w, h = self._first.width, self._first.height
        self.width, self.height = (h, w) if self.rotation in (90, 270) else (w, h)
        self._iterated = False

    def _stream_end(self) -> float | None:
        """End time (s) the container declares for the video stream, used to detect truncation."""
        s = self._stream
        if s.duration:
            return float((s.duration + (s.start_time or 0)) * self.time_base)
        tagged = _tag_seconds(s.metadata.get("DURATION"))
        if tagged is not None:
            # FFmpeg's Matroska muxer writes the stream's end timestamp, other tools its length: of the two
            # readings take the earlier end, so a stream that starts late is never called truncated.
            return tagged if tagged > self._t0 else self._t0 + tagged
        # The container duration spans all streams; only trust it when video is the only stream.
        if self._container.duration and len(self._container.streams) == 1:
            return (self._container.duration + (self._container.start_time or 0)) / 1e6
        return None

    @property
    def duration(self) -> float | None:
        """Seconds that iteration covers (the trimmed range when start/duration are given)."""
        if self._source_end is None:
            return None if self._end is None else self._end - self._start
        stop = self._source_end if self._end is None else min(self._end, self._source_end)
        return max(0.0, stop - self._start)

    @property
    def frame_count(self) -> int:
        """Estimated number of frames iteration yields (exact count in the header when untrimmed)."""
        if self._end is None and self._start == self._t0 and self._stream.frames:
            return int(self._stream.frames)
        d = self.duration
        return int(round(d * self.fps)) if d is not None and self.fps else 0

    def _frames(self) -> Iterator[av.VideoFrame]:
        """Every frame the decoder gives, packet by packet: a packet it rejects is skipped and counted (as
        FFmpeg does), a demuxer failure (the file ends inside a packet, unreadable data) ends it in _error."""
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as e:
                self._error = str(e.strerror or e)
                return
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                if packet.size == 0:  # the decoder failed while flushing: nothing more will come
                    self._error = str(e.strerror or e)
                    return
                self.skipped_packets += 1
                self._last_skip = str(e.strerror or e)
                continue
            yield from frames

    def _decoded(self) -> Iterator[av.VideoFrame]:
        """Raw decoded frames in the [start, end) window."""
        tb = self.time_base
        if self._start > self._t0:
            try:
                self._container.seek(int(self._start / tb), stream=self._stream, backward=True)
            except av.error.FFmpegError:
                pass  # unseekable input: decode from the beginning and discard instead
        for frame in self._frames():
            if frame.pts is not None:
                t = float(frame.pts * tb)
                if t < self._start - 1e-6:
                    continue
                if self._end is not None and t >= self._end - 1e-6:
                    self._stopped_by_limit = True
                    return
            yield frame

    def __iter__(self) -> Iterator[Frame]:
        if self._iterated:
            raise RuntimeError(f"{self.path}: VideoReader is single-pass; open a new reader to read again")
        self._iterated = True
        tb = self.time_base
        step = max(1, round(1 / (self.fps * tb))) if self.fps else 1
        prev_pts: int | None = None
        index = 0
        last_time = None
        last_dur = 1.0 / self.fps if self.fps else 0.0
        raw = self._raw
        frame = self._first
        self._first = None
        coded = (frame.width, frame.height)
        convert = FrameConverter()
        try:
            while frame is not None:
                pts = frame.pts
                # Raw elementary streams carry no pts; strictly increasing pts keep any muxer happy.
                if pts is None:
                    pts = 0 if prev_pts is None else prev_pts + step
                elif prev_pts is not None and pts <= prev_pts:
                    pts = prev_pts + 1
                if (frame.width, frame.height) != coded:
                    # keep one size downstream: the writer and the session were sized on the first frame
                    frame = frame.reformat(width=coded[0], height=coded[1], interpolation="BILINEAR")
                    self.rescaled += 1
                image = upright(convert.rgb(frame), self.rotation)
                t = float(pts * tb)
                if frame.duration:
                    last_dur = float(frame.duration * tb)
                elif last_time is not None:
                    last_dur = t - last_time
                yield Frame(index=index, image=image, pts=int(pts), time_base=tb, time=t)
                prev_pts, last_time, index = pts, t, index + 1
                frame = next(raw, None)
        finally:
            raw.close()
        self._check_complete(index, last_time, last_dur)

    def _check_complete(self, count: int, last_time: float | None, last_dur: float) -> None:
        if self._error:
            self.truncated = True
            at = f" after frame {count - 1} (t={last_time:.3f} s)" if last_time is not None else ""
            raise VideoError(f"{self.path}: corrupt or truncated video{at}: {self._error}")
        if self._stopped_by_limit or self._source_end is None or last_time is None:
            return
        got = last_time + last_dur
        missing = self._source_end - got
        if missing > max(0.25, 2.5 * last_dur):
            self.truncated = True
            raise VideoError(
                f"{self.path}: truncated video: decoded {count} frames up to {got:.3f} s but the container"
                f" declares {self._source_end:.3f} s (file cut short? re-download or re-export it)"
            )

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
