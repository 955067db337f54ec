"""What the retargeting CLIs share: arguments, building the model side, turning errors into one line."""
from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from .assets import AssetError, open_pack
from .assets.locate import cache_dir
from .avatar import Avatar, load_avatar
from .backends import NAMES as BACKEND_NAMES
from .backends import describe_names
from .console import notice, plural, say_once
from .crop import FaceDetector
from .deca import DECA
from .picture import parse_background
from .retarget import LAYOUTS, POSE_MODES
from .sources import CODE_SOURCES, choose_source
from .stills import ImageError
from .stream.reader import VideoError


class CliError(Exception):
    """A user-facing failure: printed as one `error:` line, exit status `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="astronaut",
                        help="identity photo of the avatar (default: 'astronaut', skimage's public-domain photo)")
    parser.add_argument("--assets", default=None, help="model pack folder, or 'demo' (default: CAPTURE_ASSETS)")
    add_backend_argument(parser)
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--layout", default="side-by-side", choices=LAYOUTS)
    parser.add_argument("--background", default="grey", type=_background, metavar="COLOUR",
                        help="behind the avatar in the avatar and side-by-side layouts: grey (default), black, white, "
                             "green, blue, magenta (chroma keys), #rrggbb or r,g,b; or 'transparent' (recorded with "
                             "its alpha: .webm VP9, .mov ProRes 4444, .mkv FFV1, or a .png/.tif/.exr sequence)")
    parser.add_argument("--no-antialias", dest="antialias", action="store_false",
                        help="draw the head's outline with one sample a pixel (hard edges, alpha 0 or 255) instead "
                             "of each edge pixel's covered share")
    parser.add_argument("--pose", default="source", choices=POSE_MODES,
                        help="head pose from the performer (source) or kept from the target photo")
    parser.add_argument("--texture", default="auto", choices=("auto", "photo", "model"),
                        help="avatar colour: photo texture or the pack's albedo model (auto: model if present)")
    parser.add_argument("--codes-from", default="auto", choices=CODE_SOURCES,
                        help="per-frame codes: E_flame (network), the face-mesh landmark fit (landmarks), E_flame "
                             "refined by the fit (hybrid); auto = landmarks on a synthetic pack, network otherwise")
    parser.add_argument("--hold", type=float, default=0.5, metavar="S",
                        help="seconds to keep the last expression when the face is lost (default 0.5)")


def _background(text: str) -> str:
    try:
        parse_background(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def check_background(args) -> bool:
    """Before any work: whether --background is transparent, and CliError where the layout cannot be."""
    transparent = parse_background(args.background) is None
    if transparent and args.layout == "overlay":
        raise CliError("--background transparent needs --layout avatar or side-by-side (the overlay draws over the"
                       " input, which covers every pixel)")
    return transparent


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """--backend: a name of the backend registry (capture.backends), the same list everywhere."""
    parser.add_argument("--backend", default="auto", choices=BACKEND_NAMES, metavar="NAME",
                        help=f"inference backend for the per-frame networks: {describe_names()} (default auto)")


@dataclass
class Inference:
    """The per-frame networks as one schedule calls them (`capture.backends.onnxruntime_backend.SCHEDULES`)."""

    encode_flame: Optional[Callable]  # None with landmark codes: E_flame does not run per frame
    decode_detail: Callable
    backend_name: str  # which backend runs each network, and why
    schedule: str = "offline"
    encode_workers: int = 1  # frames E_flame runs on at once (`RetargetSession(encode_workers=...)`)
    live_in_flight: Optional[int] = None  # live policy: frames in flight (`Pipeline(in_flight=...)`; None: default)
    engines: object = field(default=None, repr=False)  # the `InferenceEngines` behind the two callables
    options: dict = field(default_factory=dict, repr=False)  # the registry options they were built with


@dataclass
class ModelSide:
    """The pack, DECA, the target avatar and the per-frame networks, built once per run (or per Retargeter)."""

    deca: DECA
    avatar: Avatar
    avatar_cached: bool
    codes_from: str  # resolved code source: network, landmarks or hybrid
    inference: Inference  # for the schedule the model side was built for
    backend: str = "auto"  # --backend
    calibration: object = None  # the INT8 calibration (`capture.int8.Calibration`) every schedule's INT8 uses
    _others: dict = field(default_factory=dict, repr=False)

    def inference_for(self, schedule: str) -> Inference:
        """The networks for another schedule, built on first use and kept (ONNX Runtime's thread setting is
        fixed when a session is made; the exported graphs and INT8 calibration are reused from their caches)."""
        if schedule == self.inference.schedule:
            return self.inference
        if schedule not in self._others:
            self._others[schedule] = build_inference(self.deca, self.backend, self.codes_from, schedule,
                                                     self.calibration, reuse=self.inference)
        return self._others[schedule]

    def session(self, frame_size: tuple[int, int], inference: Optional[Inference] = None, **options):
        """A `RetargetSession` of this model side for frames [H, W] through `inference` (default: this side's)."""
        from .session import RetargetSession

        inference = inference or self.inference
        return RetargetSession(self.deca, self.avatar, frame_size, encode_flame=inference.encode_flame,
                               decode_detail=inference.decode_detail, codes_from=self.codes_from,
                               encode_workers=inference.encode_workers, **options)


def build_model_side(args, say: Callable[[str], None],
                     calibration_frames: Optional[Callable[[], Iterable]] = None,
                     schedule: str = "offline") -> ModelSide:
    """Pack -> DECA -> avatar -> inference backends, each failure as a CliError.

    calibration_frames: the performer's first frames ([H, W, 3] uint8 each), read when `--backend
    onnxruntime-int8` needs calibration crops; without them INT8 is calibrated on renders of the pack.
    schedule: how the per-frame networks will be called (offline, live or alone: `build_inference`).
    DECA's own networks (the target photo's E_flame and E_detail, run once and cached) stay the eager
    reference whatever --backend says, so that the avatar cache does not depend on it.
    """
    try:
        pack = open_pack(args.assets)
    except AssetError as exc:
        raise CliError(str(exc)) from None
    say_once(say, pack.label)
    codes_from, why = choose_source(getattr(args, "codes_from", "auto"), pack.synthetic)
    say(f"codes from {codes_from} ({why})")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        # The stages run in their own threads; one torch thread each keeps them from oversubscribing the
        # cores (benchmarks/fps.py measures its pipelined runs with the same setting).
        torch.set_num_threads(1)
    if device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA GPU is available here (use --device cpu)")
    deca = DECA.from_pack(pack, device=device)
    try:
        with FaceDetector() as detector:
            avatar, cached = load_avatar(deca, args.target, detector, cache_dir() / "avatars", args.texture,
                                         codes_from)
    except ImageError as exc:
        raise CliError(f"--target {exc}") from None
    from .int8 import Calibration

    renders = Calibration.pack_renders(deca=deca)
    calibration = (renders if calibration_frames is None
                   else Calibration.of_frames(calibration_frames, "the input's first frames", fallback=renders))
    inference = build_inference(deca, args.backend, codes_from, schedule, calibration)
    return ModelSide(deca, avatar, cached, codes_from, inference, args.backend, calibration)


def build_inference(deca: DECA, backend: str, codes_from: str, schedule: str, calibration,
                    reuse: Optional[Inference] = None) -> Inference:
    """The per-frame networks of `backend` (a registry name) for a schedule: `offline` (a file through the stage
    pipeline), `live` (a camera through it, latency first) or `alone` (one frame at a time in the caller's
    thread); on the CPU the schedule sets ONNX Runtime's threads (`intra_op_threads`), the frames E_flame runs
    on at once and the frames in flight live. reuse: another schedule's networks, whose engines are taken
    where the thread setting would build the same ones (the same threads, or a backend they do not reach).
    Each failure as a CliError."""
    from .backends import InferenceEngines
    from .backends.onnxruntime_backend import check_schedule, encode_workers, intra_op_threads, live_in_flight

    check_schedule(schedule)
    pack, device = deca.pack, deca.device.type
    options = {"onnxruntime-int8": {"calibration": calibration}}
    if device == "cpu":
        for name in ("onnxruntime", "onnxruntime-int8"):
            options.setdefault(name, {})["threads"] = intra_op_threads(codes_from, name == "onnxruntime-int8",
                                                                       schedule)
    # E_flame runs per frame only when the codes come from it
    networks = ("D_detail",) if codes_from == "landmarks" else ("E_flame", "D_detail")
    if reuse is not None and (reuse.options == options or not _threads_reach(reuse.engines, networks)):
        engines = reuse.engines
    else:
        engines = InferenceEngines(pack, backend, device=device, options=options)
    onnx_backend = backend.startswith(("auto", "onnxruntime", "tensorrt"))
    pending = onnx_exports_pending(pack, networks) if onnx_backend else []
    if pending:
        notice(f"exporting {' and '.join(pending)} to ONNX for this pack "
               f"(once, about {10 * len(pending)} s; cached)...")
    try:
        for network in networks:  # made now, so a bad choice fails before any frame
            engines.backend(network)
    except (ValueError, RuntimeError) as exc:  # a bad name, an unavailable backend, a failed export or INT8 build
        raise CliError(f"--backend {backend}: {' '.join(str(exc).split())}") from None
    encode_flame = None if codes_from == "landmarks" else engines.encode_flame
    flame = None if codes_from == "landmarks" else engines.backend("E_flame")  # per frame only with those codes
    workers = encode_workers(flame, codes_from, schedule)
    backend_name = ", ".join(f"{n} {engines.backend(n).reason.split(';')[0]}" for n in networks)
    if workers > 1:
        backend_name += f" (E_flame on {workers} frames at once)"
    in_flight = live_in_flight(flame, codes_from, schedule)
    return Inference(encode_flame, engines.decode_detail, backend_name, schedule, workers, in_flight, engines,
                     options)


def _threads_reach(engines, networks) -> bool:
    """Whether a thread setting makes a difference to these built networks: ONNX Runtime sessions on the CPU."""
    from .backends import OnnxRuntimeBackend

    return any(isinstance(b, OnnxRuntimeBackend) and b.device.type == "cpu"
               for b in (engines.backend(n) for n in networks))


def onnx_exports_pending(pack, networks) -> list[str]:
    """The networks whose ONNX graph the ONNX-fed backends will export on demand (none in ./engines or
    $CAPTURE_ENGINES, nor in the per-weights cache): the first run says so before the silence."""
    try:
        from .backends.onnxruntime_backend import OnnxRuntimeBackend
        from .export import default_engines_dir, onnx_cache_dir, pack_weights_sha256

        if not OnnxRuntimeBackend.available("cpu")[0]:
            return []
        folders = (default_engines_dir(), onnx_cache_dir(pack_weights_sha256(pack)))
    except Exception:  # noqa: BLE001 - only a notice: never fail a run over it
        return []
    return [n for n in networks if not any((f / f"{n}.onnx").is_file() for f in folders)]


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP outside a running pipeline: unwinds like Ctrl-C (every `finally` runs)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signum)


def take_stop_signals() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C instead of killing the process outright (a running Pipeline
    takes them over and drains to its sink, so recordings are finalised)."""
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None:
            try:
                signal.signal(signum, _raise_stopped)
            except (ValueError, OSError):  # not the main thread, or no signal support
                pass


def run_cli(main: Callable[[], int]) -> None:
    """Exit with main()'s status; user-facing errors (bad files, unusable paths) become one `error:` line,
    Ctrl-C exits 130, SIGTERM 143, SIGHUP 129 (128 + signal)."""
    take_stop_signals()
    try:
        code = main()
    except (CliError, VideoError, AssetError, ImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = getattr(exc, "code", 2)
    except OSError as exc:  # e.g. a full disk or a read-only folder while writing outputs
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        code = 128 + signum
    sys.exit(code)


def add_channel_arguments(parser: argparse.ArgumentParser, export: bool) -> None:
    """--osc (capture.live and capture.video) and --export (capture.video)."""
    parser.add_argument("--osc", default=None, metavar="HOST[:PORT]",
                        help="stream the ARKit channels, VRM presets and head bone with the VMC protocol over UDP "
                             "(port 39539 if omitted)")
    if export:
        parser.add_argument("--export", action="append", default=[], metavar="FILE",
                            help="write the take as an animation file, format from the extension: .csv (Live Link "
                                 "Face take), .glb (glTF rig + animation), .usd/.usda/.usdc (time-sampled mesh and "
                                 "channels); repeatable")


class ChannelOutputs:
    """The named channels of each output frame (capture.channels) to the --export takes and the --osc stream.
    Runs in the pipeline's sink; a frame that passed through repeats the last channels (tracking 0 on OSC)."""

    def __init__(self, deca: DECA, exports=(), osc: Optional[str] = None, inputs=(), context=None):
        """context: the `capture.takes.TakeContext` the take writers describe the avatar with (needed with
        exports)."""
        from .channels import ChannelModel
        from .stream.writer import check_not_input, check_writable
        from .takes import take_writer_for
        from .vmc import VMCSender, neck_position, parse_address

        writers = []
        try:
            for path in exports:
                writers.append(take_writer_for(path))
            address = parse_address(osc) if osc else None
        except ValueError as exc:
            raise CliError(str(exc)) from None
        if exports and context is None:
            raise ValueError("ChannelOutputs: --export needs the avatar's TakeContext (capture.takes.take_context)")
        if len({Path(p).resolve() for p in exports}) < len(exports):
            raise CliError("--export: the same file is given twice")
        for path in exports:
            check_not_input(path, inputs, what="--export file")
            check_writable(str(path))
        self.model = ChannelModel(deca.flame)
        self.takes = [cls(path, context) for cls, path in zip(writers, exports)]
        self.sender = None
        if address is not None:
            self.sender = VMCSender(*address)
            self._neck_for = None
            self._neck_position = neck_position
        self._flame = deca.flame
        self._last = None

    def add(self, out) -> None:
        """One `capture.session.FrameOutput`."""
        channels = None
        if out.codes is not None:
            channels = self.model(out.codes)
            self._last = (channels, out.codes["pose"][:3])
        if self.takes:
            from .takes import TakeFrame

            record = TakeFrame(time=out.frame.time, channels=channels, codes=out.codes, vertices=out.vertices)
            for take in self.takes:
                take.add(record)
        if self.sender is not None and self._last is not None:
            if out.codes is not None and self._neck_for is None:
                self._neck_for = out.codes["shape"]  # the avatar's shape: constant over a run
                self.sender.neck_position = self._neck_position(self._flame, out.codes["shape"])
            self.sender.send(self._last[0], out.frame.time, self._last[1], tracking=out.codes is not None)

    def close(self) -> None:
        for take in self.takes:
            take.close()
        if self.sender is not None:
            self.sender.close()

    def summary(self) -> str:
        parts = [f"take {t.path} ({plural(t.rows, 'row')})" for t in self.takes]
        if self.sender is not None:
            s = self.sender
            parts.append(f"VMC to {s.address[0]}:{s.address[1]}: {plural(s.frames, 'frame')} sent"
                         + (f", {s.errors} failed ({s.last_error})" if s.errors else ""))
        return "; ".join(parts)
