"""Encoding RGB frames at their source timestamps, with the source's audio carried along.

Every frame is written at the pts it is given (in the writer's `time_base`), so the output keeps the
source's frame count and timing, variable frame rate included. Audio is copied packet by packet from
`audio_from` when the output container accepts its codec, else re-encoded (AAC, or Opus where the container
takes no AAC), trimmed to the written video range and kept on the same timeline as the video. PCM goes into
MP4 re-encoded (MP4's PCM mapping needs a channel layout many files lack, and few players read it);
`audio_summary` says what happened. Containers that cannot store negative timestamps (Matroska, WebM, AVI)
get no audio before time 0 (the encoder's priming packet), so their muxers do not shift the video.

Encoder vs container: `codec=None` picks one the container takes (VP9 for .webm, H.264 otherwise); an
encoder the container refuses is one VideoError naming the encoders that fit. What a container keeps is asked of
its muxer by writing a frame in memory and reading it back (`muxer_keeps`), not read from FFmpeg's list of
known-good codecs, which is wrong for some muxers (MPEG-TS lists no AAC, which it stores; Ogg lists H.264, which
it refuses; MPEG-TS takes PCM but stores it as data): audio that the output cannot keep as it is goes to the first
of `_AUDIO_ENCODERS` that it keeps beside the video, and where none fits that is one VideoError before any frame.

Odd sizes: chroma-subsampled pixel formats (yuv420p needs even width and height) get the frame padded by
one pixel on the right / bottom, repeating the edge pixels, so nothing is scaled; `coded_size` tells.

`close()` flushes the encoder, writes the remaining audio and the container trailer. It is idempotent and
meant for `finally` blocks: after a crash or Ctrl-C the file is valid and holds every frame written so far.
A failed write (disk full, I/O error) is one VideoError; the file, which then has no trailer and does not
play, is removed by `close()` (FFmpeg's muxer must not be touched again after a failed write).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from fractions import Fraction

import av
import numpy as np

from ..picture import Picture
from . import yuv
from .reader import Frame, FrameConverter, VideoError, codec_threads, open_input

__all__ = ["VideoWriter", "PRESETS", "REALTIME", "check_writable", "check_encoder",
           "check_not_input", "same_file", "default_codec"]

_NEGATIVE_TS_OK = 0x40000  # AVFMT_TS_NEGATIVE: the container stores timestamps below 0
# Write failures that come from the storage, not from the muxer (disk full is told apart from these).
_STORAGE_ERRORS = (errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENXIO, errno.ENODEV)
_MP4_FAMILY = ("mp4", "ipod", "3gp", "3g2", "ismv", "f4v")
# Candidate encoders named in the error for an encoder the container refuses (those present and accepted).
_ENCODERS = ("libx264", "libx265", "libvpx-vp9", "libvpx", "libaom-av1", "libsvtav1", "mpeg4", "ffv1", "mjpeg")
# Audio that cannot be copied is re-encoded to the first of these that the container takes beside the video
# (MPEG program streams take MP2 and MP3 but no AAC; WebM Opus; Ogg Opus, FLAC or Vorbis).
_AUDIO_ENCODERS = ("aac", "libopus", "libmp3lame", "mp2", "flac", "libvorbis")


def _have_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # noqa: BLE001 - PyAV raises ValueError/RuntimeError/TypeError by version and name
        return False


# Options that keep an encoder opened only to ask a muxer from printing its banner to stderr (SVT-AV1 reads its
# level from the environment once per process, so the probe sets it only where the user has not).
_PROBE_QUIET = {"libx265": {"x265-params": "log-level=none"}}
_PROBE_ERRORS = (ValueError, TypeError, OSError, av.error.FFmpegError)


def muxer_keeps(format_name: str, video_codec: str, audio=None) -> bool:
    """Whether FFmpeg's `format_name` container keeps a `video_codec` stream, and `audio` beside it (an audio
    encoder's name, or an input's audio stream to copy; None: no audio), as video and audio.

    Asked of the muxer itself on a container in memory: a frame of each is encoded (or the input's first audio
    packets copied), written and read back. FFmpeg's list of known-good codecs is incomplete for some muxers
    (MPEG-TS lists no AAC, which it stores), and a header is not enough either: MPEG-TS writes FLAC or PCM
    without complaint as a data stream that no player reads as sound. Creates no file."""
    if video_codec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # errors only
    buf = io.BytesIO()
    try:
        probe = av.open(buf, mode="w", format=format_name)
    except _PROBE_ERRORS:
        return False
    try:
        video = probe.add_stream(video_codec, rate=25)
        formats = [f.name for f in video.codec_context.codec.video_formats or ()]
        video.width = video.height = 64
        video.pix_fmt = "yuv420p" if not formats or "yuv420p" in formats else formats[0]
        video.options = dict(_PROBE_QUIET.get(video_codec, {}))
        sound, copied = None, []
        if isinstance(audio, str):
            codec = av.codec.Codec(audio, "w")
            rates = codec.audio_rates or ()
            sound = probe.add_stream(audio, rate=48000 if not rates or 48000 in rates else rates[0])
            sound.layout = "stereo"
        elif audio is not None:
            sound = probe.add_stream_from_template(audio)
            with av.open(audio.container.name) as src:
                copied = [pkt for pkt, _ in zip((p for p in src.demux(src.streams.audio[0]) if p.size), range(3))]
        probe.start_encoding()  # opens the encoders and writes the header: where most muxers refuse a stream
        frame = av.VideoFrame(64, 64, video.pix_fmt)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts = 0
        probe.mux(video.encode(frame))
        probe.mux(video.encode(None))
        if isinstance(audio, str):
            ctx = sound.codec_context
            tone = av.AudioFrame(format=ctx.format.name, layout="stereo", samples=ctx.frame_size or 1024)
            for plane in tone.planes:
                plane.update(bytes(plane.buffer_size))
            tone.sample_rate, tone.pts = ctx.sample_rate, 0
            probe.mux(sound.encode(tone))
            probe.mux(sound.encode(None))
        for pkt in copied:
            pkt.stream = sound
            probe.mux(pkt)
        probe.close()
        with av.open(io.BytesIO(buf.getvalue()), format=format_name) as back:
            kinds = {stream.type for stream in back.streams}
    except _PROBE_ERRORS:
        with contextlib.suppress(*_PROBE_ERRORS):  # a refused header leaves it half open
            probe.close()
        return False
    return "video" in kinds and (audio is None or "audio" in kinds)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both paths exist and are one file (same device and inode: hard links and symlinks too)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_not_input(path: str | os.PathLike, inputs, what: str = "output") -> None:
    """Raise VideoError when `path` is one of `inputs` under any name (compared by identity, not by path)."""
    for source in inputs:
        if source is not None and same_file(path, source):
            raise VideoError(f"{path}: the {what} is the input {source} (the same file under another name);"
                             " writing it would destroy the input: choose another name")


# Encoders that keep transparency, and the pixel format they keep it in; `default_codec(alpha=True)` picks one
# by container. VP9 in WebM is what browsers and OBS read with its alpha; ProRes 4444 what editors and
# compositors read; FFV1 is lossless.
ALPHA_FORMATS = {"libvpx-vp9": "yuva420p", "prores_ks": "yuva444p10le", "ffv1": "yuva420p", "png": "rgba",
                 "qtrle": "argb"}
_ALPHA_DEFAULTS = {".webm": "libvpx-vp9", ".mov": "prores_ks", ".mkv": "ffv1"}
_ALPHA_OPTIONS = {"prores_ks": {"profile": "4"}}  # 4444: the profile with an alpha channel


def default_codec(path: str | os.PathLike, alpha: bool = False) -> str:
    """The video encoder for `path`'s container: VP9 for WebM (which takes no H.264), GIF's own for .gif, H.264
    otherwise; with `alpha` one that keeps transparency (ALPHA_FORMATS), or VideoError where the container
    has none."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if alpha:
        if ext not in _ALPHA_DEFAULTS:
            raise VideoError(f"{path}: a transparent background needs a container that keeps it: .webm (VP9), .mov"
                             " (ProRes 4444), .mkv (FFV1), or an image sequence (.png, .tif, .exr)")
        return _ALPHA_DEFAULTS[ext]
    if ext == ".gif":
        return "gif"
    if ext == ".webm":
        for name in ("libvpx-vp9", "libvpx", "libaom-av1"):
            try:
                av.codec.Codec(name, "w")
                return name
            except Exception:  # noqa: BLE001 - not in this build: try the next
                continue
    return "libx264"


def check_encoder(path: str | os.PathLike, codec: str | None = None, alpha: bool = False) -> str:
    """Before any work: the encoder for `path` (None: `default_codec`), or VideoError when the container refuses
    it, this build lacks it, or (`alpha`) it keeps no transparency. Creates no file."""
    path = os.fspath(path)
    codec = codec or default_codec(path, alpha)
    if alpha:
        _alpha_format(path, codec)
    if not _have_encoder(codec):
        raise VideoError(f"{path}: video encoder {codec!r} is not available in this PyAV build")
    try:
        probe = av.open(path, mode="w")
    except (ValueError, av.error.FFmpegError, OSError) as e:
        msg = getattr(e, "strerror", None) or str(e)
        raise VideoError(f"{path}: cannot create output ({msg}); use a .mp4, .mkv or .mov name") from None
    format_name = probe.format.name
    probe.close()  # it only named the extension's container: creates no file until the first write
    if not muxer_keeps(format_name, codec):
        raise _refused(path, format_name, codec)
    return codec


def _alpha_format(path: str, codec: str) -> str:
    """The pixel format `codec` keeps transparency in (ALPHA_FORMATS), or VideoError."""
    if codec not in ALPHA_FORMATS:
        raise VideoError(f"{path}: the {codec} encoder keeps no transparency; one of {', '.join(ALPHA_FORMATS)}"
                         " does (--codec NAME)")
    return ALPHA_FORMATS[codec]


def _refused(path: str, format_name: str, codec: str) -> VideoError:
    fits = ", ".join(_fitting_encoders(format_name)) or "none in this build"
    return VideoError(f"{path}: the {format_name} container does not take the {codec} encoder;"
                      f" encoders that fit: {fits} (--codec NAME), or use a .mp4/.mkv name")


def _fitting_encoders(format_name: str) -> list[str]:
    return [name for name in _ENCODERS if _have_encoder(name) and muxer_keeps(format_name, name)]


# The default x264 settings, `preset="realtime"`: x264's superfast, keeping veryfast's macroblock tree and the 10-frame
# lookahead it reads. Measured on side-by-side output of a real clip at crf 18 (benchmarks/RESULTS.md): about
# veryfast's file size (+10-12 %) and PSNR (-0.1 dB) for ~60 % of its CPU time per frame; plain superfast, which
# drops the tree, makes files ~2x veryfast's. Any x264 preset name still means exactly that preset.
REALTIME = "realtime"
_REALTIME_X264 = {"preset": "superfast", "x264-params": "mbtree=1:rc-lookahead=10"}
_X26X = ("libx264", "libx265")  # the encoders that take `preset` names and `threads`
PRESETS = (REALTIME, "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
           "placebo")  # x264's and x265's names


def _encoder_options(codec: str, crf: int | None, preset: str | None) -> dict[str, str]:
    opts: dict[str, str] = {}
    if codec.startswith("libvpx"):
        # constant quality needs b=0; libvpx's default 'good' deadline is far too slow for a video pipeline
        opts.update({"b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"})
        if crf is not None:
            opts["crf"] = str(max(4, min(63, crf + 13)))  # x264's 18 looks like VP9's ~31
        return opts
    if crf is not None:
        opts["crf"] = str(crf)
    if codec in _X26X:
        opts["threads"] = str(codec_threads())
    if preset == REALTIME:
        opts.update(_REALTIME_X264 if codec == "libx264" else {"preset": "superfast"})
    elif preset is not None:
        opts["preset"] = str(preset)
    return opts


def check_writable(path: str) -> None:
    """Raise VideoError before any work when `path` cannot be written (folder missing, read-only, a dir)."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise VideoError(f"{path}: output path is a directory; give a file name such as out.mp4")
    if not os.path.isdir(parent):
        raise VideoError(f"{path}: output folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise VideoError(f"{path}: output is not writable (permission denied); choose another path")


def _palette_frame(image: np.ndarray):
    """[H, W, 3] uint8 RGB -> a pal8 frame with the image's own 256-colour palette (PIL's fast octree, dithered),
    what GIF stores. PyAV takes the palette as 256 rows of (A, R, G, B) bytes."""
    from PIL import Image

    quantized = Image.fromarray(image).quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    rgb = np.zeros((256, 3), np.uint8)
    used = np.asarray(quantized.getpalette() or [], np.uint8)[:768].reshape(-1, 3)
    rgb[: len(used)] = used
    palette = np.concatenate([np.full((256, 1), 255, np.uint8), rgb], axis=1)
    return av.VideoFrame.from_ndarray((np.asarray(quantized), palette), format="pal8")


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
    audio_offset: seconds added to the audio's own timestamps to put them on the video's timeline (a separate
        sound file whose 0 s is a plate's first frame, at first / fps); default 0.
    audio_start, audio_end: source-timeline seconds of audio to keep; default: the written video range,
        from the first frame's time to the last frame's time plus one frame.
    origin: source-timeline seconds that become time 0 in the output (subtracted from video and audio
        alike, so they stay in sync); 0.0 keeps source timestamps unchanged, None uses the first frame.
    codec: video encoder; None = `default_codec(path)` (VP9 for .webm, libx264 otherwise).
    crf, preset: quality and speed for encoders that know them (libx264, libx265; VP9 maps crf); preset
        "realtime" (default) is superfast with veryfast's macroblock tree (see REALTIME), any other x264 name as is.
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
        codec: str | None = None,
        crf: int | None = 18,
        preset: str | None = REALTIME,
        pix_fmt: str = "yuv420p",
        audio_from: str | os.PathLike | None = None,
        audio_offset: float = 0.0,
        audio_start: float | None = None,
        audio_end: float | None = None,
        origin: float | None = 0.0,
        options: dict[str, str] | None = None,
        alpha: bool = False,
    ):
        self.path = os.fspath(path)
        if width <= 0 or height <= 0:
            raise ValueError(f"{self.path}: width and height must be positive, got {width}x{height}")
        check_writable(self.path)
        codec = codec or default_codec(self.path, alpha)
        self.codec = codec
        self.alpha = bool(alpha)  # frames are written with their coverage (Picture.alpha) in ALPHA_FORMATS
        if self.alpha:
            pix_fmt = _alpha_format(self.path, codec)
        if preset is not None and codec in _X26X and preset not in PRESETS:
            raise VideoError(f"{self.path}: unknown {codec} preset {preset!r}; one of {', '.join(PRESETS)}")
        if not _have_encoder(codec):
            raise VideoError(f"{self.path}: video encoder {codec!r} is not available in this PyAV build")
        self.width, self.height = int(width), int(height)
        self._gif = codec == "gif"
        if self._gif:
            pix_fmt = "pal8"  # a palette of each frame's own 256 colours (`_palette_frame`)
        fmt = av.VideoFormat(pix_fmt)
        # chroma_width(2) == 1 means chroma is subsampled horizontally, so the luma width must be even.
        self._pad_w = self.width % 2 if fmt.chroma_width(2) == 1 else 0
        self._pad_h = self.height % 2 if fmt.chroma_height(2) == 1 else 0
        self.coded_size = (self.width + self._pad_w, self.height + self._pad_h)
        self.fps = _as_fraction(fps) if fps and fps > 0 else Fraction(30)  # readers report 0.0 when unknown
        self.time_base = _as_fraction(time_base) if time_base is not None else 1 / self.fps
        self.frames_written = 0
        self._origin = None if origin is None else _as_fraction(origin)
        self._audio_offset = _as_fraction(audio_offset or 0)
        self._audio_start = None if audio_start is None else _as_fraction(audio_start)
        self._audio_end = None if audio_end is None else _as_fraction(audio_end)
        self._first_time: Fraction | None = None
        self._last_pts: int | None = None
        self._last_step: int | None = None
        self._closed = False
        self._failed: BaseException | None = None  # a failed write: the muxer is unusable from then on
        self._audio_in = None
        self._drop_negative = False
        self.audio_mode: str | None = None  # "copy", "aac", "libopus" or None
        self.audio_summary = "none"  # e.g. "copied (aac)" or "pcm_s16le re-encoded to aac (mp4 takes no pcm_s16le)"

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
            if not muxer_keeps(self._out.format.name, codec):
                raise _refused(self.path, self._out.format.name, codec)
            self._video = self._out.add_stream(codec, rate=self.fps)
            self._video.width, self._video.height = self.coded_size
            self._video.pix_fmt = pix_fmt
            self._yuv_range = None if fmt.is_rgb or self._gif else ("JPEG" if pix_fmt.startswith("yuvj") else "MPEG")
            self._to_yuv = None if fmt.is_rgb else FrameConverter(dst_colorspace="ITU709",
                                                                  dst_color_range=self._yuv_range)
            # 4:2:0, the usual case: the compiled pass (the same BT.709 arithmetic, ~4x faster than swscale)
            # a transparent yuva420p too: its colour planes as yuv420p's, the coverage into the fourth plane
            self._yuv420 = (pix_fmt in ("yuv420p", "yuvj420p") or (self.alpha and pix_fmt == "yuva420p")) \
                and yuv.kernel_error() is None
            # RGBA into another RGB packing (qtrle's argb): one swscale context for the stream
            self._repack = FrameConverter() if self.alpha and fmt.is_rgb and pix_fmt != "rgba" else None
            if self._yuv_range is not None:
                # Convert with BT.709 and say so: untagged video leaves players guessing the matrix.
                cc = self._video.codec_context
                cc.colorspace = cc.color_primaries = cc.color_trc = 1  # AVCOL_*_BT709
                cc.color_range = 2 if self._yuv_range == "JPEG" else 1
            self._video.codec_context.time_base = self.time_base
            self._video.time_base = self.time_base
            opts = _encoder_options(codec, crf, preset)
            if self.alpha:
                opts.update(_ALPHA_OPTIONS.get(codec, {}))
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
        if not src.streams.audio or self._gif:
            if src.streams.audio:
                self.audio_summary = "none: a GIF holds no sound (the input keeps it)"
            src.close()
            return
        self._audio_in = src
        a_in = src.streams.audio[0]
        self._a_in = a_in
        self._a_tb = a_in.time_base
        self._a_off = round(self._audio_offset / a_in.time_base)  # audio_offset in the audio's own units
        self._a_start0 = Fraction((a_in.start_time or 0) + self._a_off) * a_in.time_base
        name = a_in.codec_context.codec.canonical_name  # "mp3", where the decoder is "mp3float"
        fmt = self._out.format.name
        self._drop_negative = not (self._out.format.flags & _NEGATIVE_TS_OK)
        copies = not (fmt in _MP4_FAMILY and name.startswith("pcm_")) and muxer_keeps(fmt, self.codec, a_in)
        if copies:
            self._a_out = self._out.add_stream_from_template(a_in)
            self.audio_mode = "copy"
            self.audio_summary = f"copied ({name})"
        else:
            target = next((enc for enc in _AUDIO_ENCODERS if _have_encoder(enc) and muxer_keeps(fmt, self.codec, enc)),
                          None)
            if target is None:
                raise VideoError(f"{self.path}: the {fmt} container takes neither the input's {name} audio nor any"
                                 f" audio encoder here ({', '.join(_AUDIO_ENCODERS)}) beside {self.codec} video;"
                                 " use a .mp4 or .mkv name")
            rates = av.codec.Codec(target, "w").audio_rates or []
            rate = a_in.rate if (not rates or a_in.rate in rates) else 48000
            self._a_out = self._out.add_stream(target, rate=rate)
            self._a_out.layout = "mono" if a_in.channels == 1 else "stereo"
            self._resampler = av.AudioResampler(
                format=self._a_out.codec_context.format or "fltp", layout=self._a_out.layout, rate=rate
            )
            self._a_next_pts: int | None = None
            self.audio_mode = target
            self.audio_summary = f"{name} re-encoded to {target} ({fmt} takes no {name})"
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
            t0 = (pkt.pts + self._a_off) * self._a_tb  # on the video's timeline
            if t0 >= until or (end is not None and t0 >= end):
                return
            self._a_pending = None
            if front_trim and (pkt.pts + self._a_off + (pkt.duration or 0)) * self._a_tb <= start:
                continue
            shift = round(origin / self._a_tb) - self._a_off
            if self.audio_mode == "copy":
                if self._drop_negative and pkt.pts - shift < 0:
                    continue  # the muxer would shift every stream, the video too, to make it non-negative
                pkt.pts -= shift
                if pkt.dts is not None:
                    pkt.dts -= shift
                pkt.stream = self._a_out
                self._mux(pkt)
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
                self._mux_audio(self._a_out.encode(out))

    @property
    def failed(self) -> VideoError | None:
        """The write failure (disk full, I/O error) that ended this writer, or None."""
        return self._failed

    def _mux_audio(self, packets) -> None:
        """Encoded audio packets; the encoder's priming packets (pts < 0) are dropped where the container
        cannot store them (see the module doc)."""
        if self._drop_negative:
            packets = [p for p in packets if p.pts is None or p.pts >= 0]
        self._mux(packets)

    def _mux(self, packets) -> None:
        """Every write goes through here: after a failed write FFmpeg's muxer state is undefined (muxing or
        flushing again can crash the process), so the first failure is kept and turned into one line."""
        if self._failed is not None:
            raise self._failed
        try:
            self._out.mux(packets)
        except (av.error.FFmpegError, OSError) as e:
            self._failed = VideoError(self._write_failure(e))
            raise self._failed from None

    def _write_failure(self, e: BaseException) -> str:
        code = getattr(e, "errno", None)
        why = getattr(e, "strerror", None) or str(e)
        if code in (errno.ENOSPC, errno.EDQUOT):
            why, advice = f"disk full ({why})", "free some space (or choose another folder) and run again"
        elif code in _STORAGE_ERRORS or isinstance(e, OSError):
            advice = "check the drive (or choose another folder) and run again"
        else:  # the muxer refused a packet: what it takes was asked beforehand, so this is FFmpeg's own limit
            advice = f"the {self._out.format.name} container refused it: a .mp4 or .mkv name takes it"
        return (f"{self.path}: cannot write the output: {why} after {self.frames_written} frames; the partial"
                f" file does not play and is removed: {advice}")

    # ----------------------------------------------------------------------------------------------- video
    def _origin_time(self) -> Fraction:
        if self._origin is not None:
            return self._origin
        return self._first_time if self._first_time is not None else Fraction(0)

    def write(self, image: np.ndarray | Picture, pts: int | None = None, time_base: Fraction | None = None) -> None:
        """Encode one [height, width, 3] uint8 RGB image (an array, or a `capture.picture.Picture`, whose parts
        go straight into the encoder's planes where they can) at `pts` (in `time_base`, default the writer's).

        pts must increase strictly; None continues one nominal frame after the previous one.
        """
        if self._closed:
            raise VideoError(f"{self.path}: write() after close()")
        coverage = None  # yuva420p's fourth plane: the picture's coverage, or opaque for a plain array
        if self.alpha and self._yuv420:
            coverage = image.coverage() if isinstance(image, Picture) else np.full(image.shape[:2], 255, np.uint8)
        elif self.alpha:  # RGBA, for the encoders that take another packing
            image = image.rgba() if isinstance(image, Picture) else np.concatenate(
                [image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
        channels = 4 if self.alpha and coverage is None else 3
        if image.shape != (self.height, self.width, channels) or image.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: expected a [{self.height}, {self.width}, {channels}] uint8 image,"
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
        padded = bool(self._pad_w or self._pad_h)
        picture = image if isinstance(image, Picture) else None  # converted part by part where it can be
        if coverage is None and self.alpha:
            picture = None
        if picture is not None and (padded or not self._yuv420 or not picture.fits_yuv420()):
            image, picture = picture.rgb(), None
        if picture is None:
            if padded:
                image = np.pad(image, ((0, self._pad_h), (0, self._pad_w), (0, 0)), mode="edge")
            image = np.ascontiguousarray(image)
        if self._yuv420:
            frame = av.VideoFrame(self.coded_size[0], self.coded_size[1], self._video.pix_fmt)
            full_range = self._yuv_range == "JPEG"
            colour = frame.planes[:3]
            if picture is not None:
                picture.to_yuv420(colour, full_range)
            else:
                yuv.rgb_to_yuv420(image, colour, full_range=full_range)
            if coverage is not None:
                if padded:
                    coverage = np.pad(coverage, ((0, self._pad_h), (0, self._pad_w)), mode="edge")
                yuv.plane_views(frame.planes[3:])[0][:] = coverage
            frame.colorspace, frame.color_range = 1, 2 if self._yuv_range == "JPEG" else 1  # as swscale's frames
        elif self._gif:
            frame = _palette_frame(image)
        elif self.alpha:
            frame = av.VideoFrame.from_ndarray(image, format="rgba")
            if self._video.pix_fmt != "rgba":  # YUVA, or another packing (qtrle's argb)
                frame = (self._to_yuv or self._repack).frame(frame, self._video.pix_fmt)
        elif self._to_yuv is not None:
            # no copy into an RGB frame first: the conversion reads the array and makes the encoder's frame
            frame = self._to_yuv.frame(av.VideoFrame.from_numpy_buffer(image, format="rgb24"), self._video.pix_fmt)
        else:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")  # a copy: the encoder may keep the frame
        frame.pts = pts - round(self._origin_time() / self.time_base)
        frame.time_base = self.time_base
        if self._failed is not None:
            raise self._failed
        self._mux(self._video.encode(frame))
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
        if self._failed is not None:
            self._discard()
            return
        try:
            if self.frames_written:
                self._mux(self._video.encode(None))
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
                                self._mux_audio(self._a_out.encode(out))
                        self._mux_audio(self._a_out.encode(None))
            self._out.close()  # the trailer (an MP4's index): a full disk can fail here too
        except VideoError:
            self._discard()
            raise
        except (av.error.FFmpegError, OSError) as e:
            self._failed = VideoError(self._write_failure(e))
            self._discard()
            raise self._failed from None
        finally:
            if self._audio_in is not None:
                self._audio_in.close()

    def _discard(self) -> None:
        """After a failed write: release the container without writing again, remove the unplayable file."""
        try:
            self._out.close()
        except (av.error.FFmpegError, OSError):
            pass  # the trailer cannot be written either; the file goes anyway
        try:
            os.remove(self.path)
        except OSError:
            pass
        if self._audio_in is not None:
            self._audio_in.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
