"""Live frame sources: cameras through FFmpeg's capture devices, or a file/URL played at its native rate.

`open_camera(0)` opens the platform's capture device (Linux: /dev/video0 via 'v4l2'; macOS: 'avfoundation'
device 0; Windows: 'dshow', which needs the device name). A file path or URL opens as a live source paced
by its timestamps, so the live path can be exercised without a camera.

Iteration never raises for a source that goes away mid-stream (camera unplugged, network drop, truncated
file): it stops, and `ended_reason` / `disconnected` say why.

Timestamps handed on increase strictly: a camera that repeats a timestamp (or steps back) gets the next
tick of its time base, so time filters (One-Euro) and the recorder always see time move forward.
"""

from __future__ import annotations

import os
import sys
import time
from fractions import Fraction
from typing import Iterator

import av

from .reader import Frame, FrameConverter, VideoError, VideoReader, display_rotation, upright
from .sequence import ImageSequenceReader, find_sequence

__all__ = ["LiveSource", "open_camera", "camera_input"]

_LIST_HINT = {
    "v4l2": "list cameras with `v4l2-ctl --list-devices` or `ls /dev/video*`",
    "avfoundation": "list cameras with `ffmpeg -f avfoundation -list_devices true -i \"\"`",
    "dshow": "list cameras with `ffmpeg -list_devices true -f dshow -i dummy`",
}


def camera_input(spec: int | str, platform: str | None = None) -> tuple[str, str]:
    """(FFmpeg input name, input format) for a camera index or device string on `platform`
    (default: this machine's). Files and URLs are not cameras: see `open_camera`."""
    platform = platform or sys.platform
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec)
    if platform.startswith("linux"):
        return (f"/dev/video{spec}" if isinstance(spec, int) else spec), "v4l2"
    if platform == "darwin":
        return str(spec), "avfoundation"
    if platform.startswith("win"):
        if isinstance(spec, int):
            raise VideoError(
                f"camera {spec}: DirectShow (dshow) opens cameras by name, not index; pass e.g."
                f" --cam \"video=Integrated Camera\" ({_LIST_HINT['dshow']})"
            )
        return (spec if spec.startswith(("video=", "audio=")) else f"video={spec}"), "dshow"
    raise VideoError(f"camera {spec}: no known capture device format for platform {platform!r}")


def _is_file_or_url(spec: int | str) -> bool:
    if not isinstance(spec, str):
        return False
    if "://" in spec:
        return True
    return os.path.isfile(spec)


class LiveSource:
    """An iterable of `Frame`s from a live input. Single pass; close() releases the device.

    Attributes: name, format_name ('v4l2', 'avfoundation', 'dshow', or 'file'), width, height (upright
    for files; for devices the first frame's rotation is applied as it arrives), fps (nominal, 0.0 if
    unknown), rotation, time_base (of Frame.pts, for VideoWriter); after iteration `ended_reason` (str)
    and `disconnected` (True when the input failed rather than ended).
    """

    def __init__(self, name: str, format_name: str, container=None, reader: VideoReader | None = None,
                 realtime: bool = True):
        self.name = name
        self.format_name = format_name
        self._container = container
        self._reader = reader
        self._realtime = realtime
        self._closed = False
        self.ended_reason: str | None = None
        self.disconnected = False
        if reader is not None:
            self.width, self.height, self.fps, self.rotation = reader.width, reader.height, reader.fps, reader.rotation
            self.time_base = reader.time_base
        else:
            s = container.streams.video[0]
            # Frame threading buffers one frame per thread: latency a live source cannot afford.
            s.thread_type = "SLICE"
            self._stream = s
            rate = s.average_rate or s.guessed_rate or s.base_rate
            self.fps = float(rate) if rate else 0.0
            self.rotation = 0
            self.width, self.height = s.codec_context.width, s.codec_context.height
            self.time_base = s.time_base or Fraction(1, 1_000_000)

    def __iter__(self) -> Iterator[Frame]:
        return self._paced_file() if self._reader is not None else self._device()

    def _paced_file(self) -> Iterator[Frame]:
        """Frames at their own timestamps against a fixed wall-clock start (late frames go out at once)."""
        wall0 = t0 = None
        try:
            for frame in self._reader:
                if self._realtime:
                    if wall0 is None:
                        wall0, t0 = time.monotonic(), frame.time
                    delay = wall0 + (frame.time - t0) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                yield frame
            self.ended_reason = "end of the sequence" if self.format_name == "image sequence" else "end of file"
        except VideoError as e:
            self.ended_reason, self.disconnected = f"input failed: {e}", True

    def _device(self) -> Iterator[Frame]:
        stream = self._stream
        index = 0
        wall0 = time.monotonic()
        rotation = None
        prev_pts: int | None = None
        convert = FrameConverter()
        try:
            for frame in self._container.decode(stream):
                if rotation is None:
                    rotation = self.rotation = display_rotation(frame.rotation)
                    if rotation in (90, 270):
                        self.width, self.height = self.height, self.width
                image = upright(convert.rgb(frame), rotation)
                tb = self.time_base
                if frame.pts is not None:
                    pts = int(frame.pts)
                else:  # some devices stamp nothing: use the arrival time
                    pts = int((time.monotonic() - wall0) / tb)
                if prev_pts is not None and pts <= prev_pts:
                    pts = prev_pts + 1
                prev_pts = pts
                yield Frame(index=index, image=image, pts=pts, time_base=tb, time=float(pts * tb))
                index += 1
            self.ended_reason = "camera stream ended"
        except (av.error.FFmpegError, OSError) as e:
            self.ended_reason = f"camera disconnected: {getattr(e, 'strerror', None) or e}"
            self.disconnected = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.ended_reason is None:
            self.ended_reason = "closed"
        if self._reader is not None:
            self._reader.close()
        if self._container is not None:
            self._container.close()

    def __enter__(self) -> "LiveSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_camera(spec: int | str, *, size: tuple[int, int] | None = None, fps: float | None = None,
                realtime: bool = True) -> LiveSource:
    """Open a camera (int index or device string), a file/URL or an image sequence (a folder of numbered images
    or a pattern, `capture.stream.sequence`) as a live source.

    size=(w, h), fps: requested capture mode (devices only; the driver may refuse); fps is also an image
    sequence's frame rate (default 25).
    realtime: pace file sources at their timestamps (False: as fast as they decode, for tests).
    """
    if _is_file_or_url(spec):
        reader = VideoReader(spec)
        return LiveSource(str(spec), "file", reader=reader, realtime=realtime)
    sequence = find_sequence(spec) if isinstance(spec, str) else None  # a folder or pattern of numbered images
    if sequence is not None:
        return LiveSource(str(spec), "image sequence", reader=ImageSequenceReader(sequence, fps=fps),
                          realtime=realtime)
    if isinstance(spec, str) and os.sep in spec and not spec.startswith("/dev/"):
        raise VideoError(f"{spec}: no such file (expected a camera index, a device, a video file or a URL)")
    name, fmt = camera_input(spec)
    if fmt == "v4l2" and not os.path.exists(name):
        raise VideoError(f"camera {spec}: {name} does not exist (no camera?); {_LIST_HINT[fmt]},"
                         " or pass a video file to run the live path on it")
    options: dict[str, str] = {}
    if size is not None:
        options["video_size"] = f"{int(size[0])}x{int(size[1])}"
    if fps is not None:
        options["framerate"] = f"{fps:g}"
    try:
        container = av.open(name, format=fmt, options=options)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        msg = getattr(e, "strerror", None) or str(e)
        raise VideoError(
            f"camera {spec}: cannot open {name} with FFmpeg input '{fmt}': {msg}; {_LIST_HINT[fmt]}"
        ) from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"camera {spec}: {name} ('{fmt}') has no video stream")
    return LiveSource(name, fmt, container=container)
