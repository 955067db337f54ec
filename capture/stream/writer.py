"""Encoding RGB frames at their source timestamps, with the source's audio carried along.

Every frame is written at the pts it is given (in the writer's `time_base`), so the output keeps the
source's frame count and timing, variable frame rate included. Audio is copied packet by packet from
`audio_from` when the output container accepts its codec, else re-encoded (AAC, or Opus where the container
takes no AAC), trimmed to the written video range and kept on the same timeline as the video.

Odd sizes: chroma-subsampled pixel formats (yuv420p needs even width and height) get the frame padded by
one pixel on the right / bottom, repeating the edge pixels, so nothing is scaled; `coded_size` tells.

`close()` flushes the encoder, writes the remaining audio and the container trailer. It is idempotent and
meant for `finally` blocks: after a crash or Ctrl-C the file is valid and holds every frame written so far.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np

from .reader import Frame, VideoError, open_input

__all__ = ["VideoWriter", "check_writable"]


def check_writable(path: str) -> None:
    """Raise VideoError before any work when `path` cannot be written (folder missing, read-only, a dir)."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise VideoError(f"{path}: output path is a directory; give a file name such as out.mp4")
    if not os.path.isdir(parent):
        raise VideoError(f"{path}: output folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise VideoError(f"{path}: output is not writable (permission denied); choose another path")


def _as_fraction(x) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(x).limit_denominator(1_000_000)


class VideoWriter:
    """Write [H, W, 3] uint8 RGB frames to a video file at given timestamps.

    path: output file; the container is chosen from its extension (.mp4, .mkv, .mov, .webm...).
    width, height: size of the images passed to write(); odd sizes are padded (see module doc).
    time_base: units of the pts passed to write() (Fraction); default 1/fps. Pass the source's time_base
        and pts to reproduce its timing exactly (exact when the container can store that time base; mp4/mov
        can, Matroska stores milliseconds).
    fps: nominal frame rate: stream metadata, the length the muxer gives the last frame, and the step
        for frames written without pts. Pass the source's average rate.
    audio_from: a media file whose first audio stream is copied (nothing happens if it has none).
    audio_start, audio_end: source-timeline seconds of audio to keep; default: the written video range,
        from the first frame's time to the last frame's time plus one frame.
    origin: source-timeline seconds that become time 0 in the output (subtracted from video and audio
        alike, so they stay in sync); 0.0 keeps source timestamps unchanged, None uses the first frame.
    crf, preset: quality and speed for encoders that know them (libx264, libx265; others ignore them).
    options: extra encoder options (strings), merged over crf/preset.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        *,
        fps: float | Fraction = 30,
        time_base: Fraction | None = None,
        codec: str = "libx264",
        crf: int | None = 18,
        preset: str | None = "veryfast",
        pix_fmt: str = "yuv420p",
        audio_from: str | os.PathLike | None = None,
        audio_start: float | None = None,
        audio_end: float | None = None,
        origin: float | None = 0.0,
        options: dict[str, str] | None = None,
    ):
        self.path = os.fspath(path)
        if width <= 0 or height <= 0:
            raise ValueError(f"{self.path}: width and height must be positive, got {width}x{height}")
        check_writable(self.path)
        try:
            av.codec.Codec(codec, "w")
        except Exception:
            raise VideoError(f"{self.path}: video encoder {codec!r} is not available in this PyAV build") from None
        self.width, self.height = int(width), int(height)
        fmt = av.VideoFormat(pix_fmt)
        # chroma_width(2) == 1 means chroma is subsampled horizontally, so the luma width must be even.
        self._pad_w = self.width % 2 if fmt.chroma_width(2) == 1 else 0
        self._pad_h = self.height % 2 if fmt.chroma_height(2) == 1 else 0
        self.coded_size = (self.width + self._pad_w, self.height + self._pad_h)
        self.fps = _as_fraction(fps) if fps and fps > 0 else Fraction(30)  # readers report 0.0 when unknown
        self.time_base = _as_fraction(time_base) if time_base is not None else 1 / self.fps
        self.frames_written = 0
        self._origin = None if origin is None else _as_fraction(origin)
        self._audio_start = None if audio_start is None else _as_fraction(audio_start)
        self._audio_end = None if audio_end is None else _as_fraction(audio_end)
        self._first_time: Fraction | None = None
        self._last_pts: int | None = None
        self._last_step: int | None = None
        self._closed = False
        self._audio_in = None
        self.audio_mode: str | None = None  # "copy", "aac", "libopus" or None

        audio_src = None
        if audio_from is not None:
            audio_src = open_input(os.fspath(audio_from), what="audio source")
        try:
            self._out = av.open(self.path, mode="w")
        except (ValueError, av.error.FFmpegError, OSError) as e:
            if audio_src is not None:
                audio_src.close()
            msg = getattr(e, "strerror", None) or str(e)
            raise VideoError(f"{self.path}: cannot create output ({msg}); use a .mp4, .mkv or .mov name") from None
        try:
            self._video = self._out.add_stream(codec, rate=self.fps)
            self._video.width, self._video.height = self.coded_size
            self._video.pix_fmt = pix_fmt
            self._yuv_range = None if fmt.is_rgb else ("JPEG" if pix_fmt.startswith("yuvj") else "MPEG")
            if self._yuv_range is not None:
                # Convert with BT.709 and say so: untagged video leaves players guessing the matrix.
                cc = self._video.codec_context
                cc.colorspace = cc.color_primaries = cc.color_trc = 1  # AVCOL_*_BT709
                cc.color_range = 2 if self._yuv_range == "JPEG" else 1
            self._video.codec_context.time_base = self.time_base
            self._video.time_base = self.time_base
            opts = {}
            if crf is not None:
                opts["crf"] = str(crf)
            if preset is not None:
                opts["preset"] = str(preset)
            opts.update(options or {})
            self._video.options = opts
            if audio_src is not None:
                self._setup_audio(audio_src)
        except BaseException:
            self._out.close()
            if audio_src is not None:
                audio_src.close()
            raise

    # ----------------------------------------------------------------------------------------------- audio
    def _setup_audio(self, src: av.container.InputContainer) -> None:
        if not src.streams.audio:
            src.close()
            return
        self._audio_in = src
        a_in = src.streams.audio[0]
        self._a_in = a_in
        self._a_tb = a_in.time_base
        self._a_start0 = Fraction((a_in.start_time or 0)) * a_in.time_base
        name = a_in.codec_context.name
        supported = self._out.supported_codecs
        if name in supported:
            self._a_out = self._out.add_stream_from_template(a_in)
            self.audio_mode = "copy"
        else:
            target = "aac" if "aac" in supported else "libopus"
            rates = av.codec.Codec(target, "w").audio_rates or []
            rate = a_in.rate if (not rates or a_in.rate in rates) else 48000
            self._a_out = self._out.add_stream(target, rate=rate)
            self._a_out.layout = "mono" if a_in.channels == 1 else "stereo"
            self._resampler = av.AudioResampler(
                format=self._a_out.codec_context.format or "fltp", layout=self._a_out.layout, rate=rate
            )
            self._a_next_pts: int | None = None
            self.audio_mode = target
        self._a_packets = src.demux(a_in)
        self._a_pending = None
        self._a_done = False

    def _next_audio_packet(self):
        if self._a_pending is None and not self._a_done:
            for pkt in self._a_packets:
                if pkt.pts is None or pkt.size == 0:
                    continue  # demux flush packet
                self._a_pending = pkt
                break
            else:
                self._a_done = True
        return self._a_pending

    def _pump_audio(self, until: Fraction) -> None:
        """Write source audio packets that start before `until` (source-timeline seconds)."""
        if self._audio_in is None:
            return
        start = self._audio_start if self._audio_start is not None else self._first_time
        end = self._audio_end
        # Without a front trim keep everything, AAC priming packets (negative pts) included, so the
        # copied stream keeps its decoder delay and stays in sync.
        front_trim = start is not None and start > self._a_start0
        origin = self._origin_time()
        while True:
            pkt = self._next_audio_packet()
            if pkt is None:
                return
            t0 = pkt.pts * self._a_tb
            if t0 >= until or (end is not None and t0 >= end):
                return
            self._a_pending = None
            if front_trim and (pkt.pts + (pkt.duration or 0)) * self._a_tb <= start:
                continue
            shift = round(origin / self._a_tb)
            if self.audio_mode == "copy":
                pkt.pts -= shift
                if pkt.dts is not None:
                    pkt.dts -= shift
                pkt.stream = self._a_out
                self._out.mux(pkt)
            else:
                self._reencode(pkt, shift)

    def _reencode(self, pkt, shift: int) -> None:
        for frame in pkt.decode():
            rate = self._a_out.codec_context.sample_rate
            for out in self._resampler.resample(frame):
                if self._a_next_pts is None:
                    self._a_next_pts = round((pkt.pts - shift) * self._a_tb * rate)
                out.pts = self._a_next_pts
                out.time_base = Fraction(1, rate)
                self._a_next_pts += out.samples
                self._out.mux(self._a_out.encode(out))

    # ----------------------------------------------------------------------------------------------- video
    def _origin_time(self) -> Fraction:
        if self._origin is not None:
            return self._origin
        return self._first_time if self._first_time is not None else Fraction(0)

    def write(self, image: np.ndarray, pts: int | None = None, time_base: Fraction | None = None) -> None:
        """Encode one [height, width, 3] uint8 RGB image at `pts` (in `time_base`, default the writer's).

        pts must increase strictly; None continues one nominal frame after the previous one.
        """
        if self._closed:
            raise VideoError(f"{self.path}: write() after close()")
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: expected a [{self.height}, {self.width}, 3] uint8 RGB image,"
                f" got {list(image.shape)} {image.dtype}"
            )
        if pts is None:
            if self._last_pts is None:
                pts = 0
            else:
                pts = self._last_pts + max(1, round(1 / (self.fps * self.time_base)))
        elif time_base is not None and _as_fraction(time_base) != self.time_base:
            pts = round(pts * _as_fraction(time_base) / self.time_base)
        pts = int(pts)
        if self._last_pts is not None and pts <= self._last_pts:
            raise VideoError(
                f"{self.path}: frame {self.frames_written} has pts {pts} <= previous {self._last_pts};"
                " timestamps must increase strictly"
            )
        t = pts * self.time_base
        if self._last_pts is not None:
            self._last_step = pts - self._last_pts
        if self._first_time is None:
            self._first_time = t
        if self._pad_w or self._pad_h:
            image = np.pad(image, ((0, self._pad_h), (0, self._pad_w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        if self._yuv_range is not None:
            frame = frame.reformat(format=self._video.pix_fmt, dst_colorspace="ITU709",
                                   dst_color_range=self._yuv_range)
        frame.pts = pts - round(self._origin_time() / self.time_base)
        frame.time_base = self.time_base
        self._out.mux(self._video.encode(frame))
        self._last_pts = pts
        self.frames_written += 1
        self._pump_audio(t)

    def write_frame(self, frame: Frame) -> None:
        """write(frame.image, frame.pts, frame.time_base)."""
        self.write(frame.image, frame.pts, frame.time_base)

    # ------------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Flush the encoder, write the remaining audio and the trailer. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.frames_written:
                self._out.mux(self._video.encode(None))
                if self._audio_in is not None:
                    step = self._last_step or max(1, round(1 / (self.fps * self.time_base)))
                    end = (self._last_pts + step) * self.time_base
                    if self._audio_end is not None:
                        end = self._audio_end
                    self._pump_audio(end)
                    if self.audio_mode not in (None, "copy"):
                        rate = self._a_out.codec_context.sample_rate
                        for out in self._resampler.resample(None):  # samples held by the resampler
                            if self._a_next_pts is not None:
                                out.pts, out.time_base = self._a_next_pts, Fraction(1, rate)
                                self._a_next_pts += out.samples
                                self._out.mux(self._a_out.encode(out))
                        self._out.mux(self._a_out.encode(None))
        finally:
            try:
                self._out.close()
            finally:
                if self._audio_in is not None:
                    self._audio_in.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
