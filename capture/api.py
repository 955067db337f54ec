"""The Python API: one object that retargets frames, from numpy images or from a video file or camera.

    from capture import Retargeter

    with Retargeter(target="photo.jpg", assets="demo") as rt:
        result = rt.process(rgb, time=0.0)          # rgb: [H, W, 3] uint8
        result.image, result.blendshapes["jawOpen"], result.head, result.vertices
        for result in rt.stream("performer.mp4"):   # or a camera index: rt.stream(0)
            ...

A thin shell over what the commands run: the model side is `capture.cli_common.build_model_side` (pack, DECA,
target avatar, inference backends), each frame goes through `capture.session.RetargetSession`'s stages (face
tracking and crop, codes, D_detail, rendering), `stream` drives them with `capture.stream.pipeline.Pipeline`
(one thread per stage, as `capture.video` and `capture.live` do), and the named channels come from
`capture.channels.ChannelModel`. There is no second pipeline here.
"""
from __future__ import annotations

import argparse
import queue
import threading
import time as _time
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator, Optional, Union

import numpy as np

from .cli_common import CliError, Inference, build_model_side
from .console import command
from .crop import as_rgb_uint8
from .session import FrameOutput, RetargetSession
from .stream.pipeline import Pipeline, PipelineStats
from .stream.reader import Frame

_TIME_BASE = Fraction(1, 1_000_000)  # process(): timestamps in microseconds


@dataclass
class Result:
    """One retargeted frame.

    image: the output picture, [H, W, 3] uint8 RGB, in the Retargeter's layout. alpha: with a transparent
        background, its coverage [H, W] uint8 (255 where the avatar or the input is, 0 elsewhere, where image is
        black; between at the head's edge, where image is the head's colour: straight alpha); None otherwise.
    face: a face was found in this frame. held: it was not, and the last expression was kept (`hold` seconds).
    codes: the merged FLAME/DECA codes that were rendered (the target's shape, the performer's expression, jaw
        and head pose): {"shape": [100], "exp": [50], "pose": [6], "cam": [3], ...} float32; None when the
        frame passed through unchanged (no face for longer than `hold`).
    blendshapes: ARKit's 52 named channels, 0..1 (capture/channels.py; docs/conventions.md says how each is
        measured); head: (yaw, pitch, roll) in radians; vertices: the animated avatar mesh [V, 3] (FLAME metres).
        All three are None where codes is None.
    """

    index: int
    time: float
    image: np.ndarray
    face: bool
    held: bool
    codes: Optional[dict[str, np.ndarray]]
    blendshapes: Optional[dict[str, float]]
    head: Optional[tuple[float, float, float]]
    vertices: Optional[np.ndarray]
    latency: float = 0.0  # seconds from the start of the crop to the end of rendering
    alpha: Optional[np.ndarray] = None


class Retargeter:
    """A performer's face in, the target avatar out.

    target: the avatar's identity photo: a path, 'astronaut' (skimage's public-domain photo) or 'demo' (the demo
        pack's second identity). assets: the model pack folder, or 'demo' (the synthetic demo pack); None:
        $CAPTURE_ASSETS, then ~/.cache/capture/assets. codes_from: 'auto', 'network', 'landmarks' or 'hybrid'
        (README, "Capturing real faces"). backend: a name of the backend registry, as `--backend` takes
        (`capture.backends.NAMES`: 'auto', 'tensorrt', 'onnxruntime', 'onnxruntime-int8' calibrated on renders of
        the pack, 'torch', 'torch-eager'). device: 'cpu' or 'cuda' (None: cuda when available). layout:
        'avatar', 'side-by-side' or 'overlay'. background: behind the avatar, a colour ('grey', 'green', '#rrggbb',
        'r,g,b'...) or 'transparent' (then each Result has its `alpha`). antialias: each pixel of the head's
        outline gets its covered share (False: one sample a pixel, hard edges, alpha 0 or 255). pose: 'source'
        (the performer's head pose) or 'target'. texture:
        'auto', 'photo' or 'model'. smooth: One-Euro filter the codes (None: on unless the codes come from the
        landmark fit, which smooths its own points).
        hold: seconds the last expression is kept when the face is lost. verbose: print what the commands print
        (the pack, the code source, the backends); the lines are kept in `.messages` either way.

    The model side (pack, networks, avatar, backends) is built once here; the per-frame state (face tracker,
    filters, the performer's calibration) lives in a session: `process` keeps one for its frame size (a new size
    starts a new one) and each `stream` call has its own. On a CPU, torch is set to one thread per stage, as the
    commands do, and each way of calling the networks gets ONNX Runtime sessions with its own thread setting
    (`capture.backends.onnxruntime_backend.SCHEDULES`): `process` every core for each network, as nothing runs
    beside it; a file stream what capture.video uses, a camera stream what capture.live uses (built on first use
    and kept). Not thread-safe: use one Retargeter per thread.
    """

    def __init__(self, target: str = "astronaut", *, assets: Optional[str] = None, codes_from: str = "auto",
                 backend: str = "auto", device: Optional[str] = None, layout: str = "avatar", pose: str = "source",
                 texture: str = "auto", smooth: Optional[bool] = None, hold: float = 0.5, verbose: bool = False,
                 background: str = "grey", antialias: bool = True):
        from .picture import parse_background
        from .retarget import LAYOUTS, POSE_MODES

        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        if parse_background(background) is None and layout == "overlay":
            raise ValueError("background 'transparent' needs the avatar or side-by-side layout")
        if pose not in POSE_MODES:
            raise ValueError(f"pose {pose!r}: expected one of {', '.join(POSE_MODES)}")
        self.messages: list[str] = []

        def say(text: str) -> None:
            self.messages.append(text)
            if verbose:
                print(text, flush=True)

        args = argparse.Namespace(target=target, assets=assets, codes_from=codes_from, backend=backend,
                                  device=device, texture=texture)
        try:
            self.model = command(build_model_side)(args, say, schedule="alone")  # notices: once per Retargeter
        except CliError as exc:
            raise ValueError(str(exc)) from None
        pack = self.model.deca.pack
        self.synthetic = bool(pack.synthetic)
        if self.synthetic and not verbose:
            warnings.warn(pack.label, stacklevel=2)
        self.target, self.layout, self.pose, self.hold = target, layout, pose, hold
        self.background = background
        self.antialias = bool(antialias)
        self.smooth = (self.model.codes_from != "landmarks") if smooth is None else bool(smooth)
        from .channels import ChannelModel

        self._channels = ChannelModel(self.model.deca.flame)
        self._session: Optional[RetargetSession] = None
        self._session_size: Optional[tuple[int, int]] = None
        self._frames = 0
        self._clock0: Optional[float] = None
        self.stats: Optional[PipelineStats] = None  # of the last `stream`

    # ------------------------------------------------------------------------------------ properties
    @property
    def codes_from(self) -> str:
        """The code source in use ('auto' resolved)."""
        return self.model.codes_from

    @property
    def backend(self) -> str:
        """Which inference backend runs each network, and why (as `process` calls them)."""
        return self.model.inference.backend_name

    # ------------------------------------------------------------------------------------ frames
    def _inference(self, schedule: str) -> Inference:
        try:
            return self.model.inference_for(schedule)
        except CliError as exc:
            raise ValueError(str(exc)) from None

    def _new_session(self, frame_size: tuple[int, int], inference: Optional[Inference] = None) -> RetargetSession:
        return self.model.session(frame_size, inference, layout=self.layout, pose_mode=self.pose,
                                  smooth=self.smooth, hold_seconds=self.hold, keep_vertices=True,
                                  background=self.background, antialias=self.antialias)

    def _session_for(self, size: tuple[int, int]) -> RetargetSession:
        """`process`'s session: kept while the frame size stays, a fresh one when it changes."""
        size = (int(size[0]), int(size[1]))
        if self._session is None or self._session_size != size:
            self.close()
            self._session, self._session_size = self._new_session(size), size
        return self._session

    def _result(self, out: FrameOutput) -> Result:
        blendshapes = head = None
        if out.codes is not None:
            channels = self._channels(out.codes)
            blendshapes = channels.named()
            head = tuple(float(v) for v in channels.head)
        return Result(index=out.frame.index, time=out.frame.time, image=out.image, face=out.face, held=out.held,
                      codes=out.codes, blendshapes=blendshapes, head=head, vertices=out.vertices,
                      latency=out.latency, alpha=out.picture.coverage() if out.picture.alpha is not None else None)

    def process(self, rgb: np.ndarray, time: Optional[float] = None) -> Result:
        """Retarget one frame: rgb [H, W, 3] uint8 (grey and RGBA are converted); time in seconds, increasing
        from frame to frame (the filters and the hold use it; None: the wall clock since the first call)."""
        image = np.ascontiguousarray(as_rgb_uint8(np.asarray(rgb)))
        if time is None:
            now = _time.perf_counter()
            self._clock0 = now if self._clock0 is None else self._clock0
            time = now - self._clock0
        session = self._session_for(image.shape[:2])
        frame = Frame(index=self._frames, image=image, pts=round(time / _TIME_BASE), time_base=_TIME_BASE,
                      time=float(time))
        self._frames += 1
        return self._result(session.infer(session.crop(frame)))

    def calibrate(self, images) -> int:
        """Show the landmark fit the performer's face before `process` (a few frames, [H, W, 3] uint8 each), so
        that their identity is known from the first frame; returns how many had a face mesh (0 for the network
        source, which needs none). `stream` does this itself for files."""
        images = [np.ascontiguousarray(as_rgb_uint8(np.asarray(i))) for i in images]
        if not images:
            return 0
        return self._session_for(images[0].shape[:2]).calibrate(images)

    # ------------------------------------------------------------------------------------ streams
    def stream(self, source: Union[str, int], callback: Optional[Callable[[Result], None]] = None, *,
               start: Optional[float] = None, duration: Optional[float] = None, fps: Optional[float] = None):
        """Retarget a video file (every frame, in order, at its own timestamps), an image sequence (a folder of
        numbered images or a pattern such as 'shot/frame_%04d.png', at `fps`, default 25) or a camera (an index or
        a device name such as '/dev/video0'; frames are dropped when the pipeline falls behind, as in
        capture.live).

        Without a callback: an iterator of Results (breaking out of the loop stops the stream). With one:
        callback(result) for every frame, in this thread's call, which returns the PipelineStats when the
        source ends (Ctrl-C stops it cleanly). `.stats` holds the last stream's statistics either way."""
        from .stream.camera import open_camera
        from .stream.sequence import open_video

        camera = isinstance(source, int) or (isinstance(source, str)
                                             and (source.isdigit() or source.startswith("/dev/")))
        if camera:
            reader = open_camera(int(source) if str(source).isdigit() else source)
            policy, depth = "live", 1
        else:
            reader = open_video(str(source), start=start, duration=duration, fps=fps)
            policy, depth = "offline", 2
        try:
            inference = self._inference(policy)  # the networks as capture.live / capture.video call them
            session = self._new_session((reader.height, reader.width), inference)
            if not camera and session.source.needs_landmarks:
                from .video import calibration_frames

                session.calibrate(calibration_frames(str(source), start, duration, fps))
        except BaseException:
            reader.close()
            raise
        if callback is not None:
            try:
                pipeline = Pipeline(reader, stages=session.stages, sink=lambda out: callback(self._result(out)),
                                    policy=policy, depth=depth, in_flight=inference.live_in_flight)
                self.stats = pipeline.run()
                return self.stats
            finally:
                session.close()
                reader.close()
        return self._iterate(reader, session, policy, depth, inference.live_in_flight)

    def _iterate(self, reader, session: RetargetSession, policy: str, depth: int,
                 in_flight: Optional[int]) -> Iterator[Result]:
        """The pipeline in a background thread, its results handed over through a small queue (back-pressure:
        a slow consumer slows a file down; a camera drops frames instead)."""
        results: queue.Queue = queue.Queue(maxsize=2)
        closed = threading.Event()
        done = object()
        outcome: dict = {}

        def put(item) -> None:
            while not closed.is_set():
                try:
                    results.put(item, timeout=0.05)
                    return
                except queue.Full:
                    continue

        pipeline = Pipeline(reader, stages=session.stages, sink=lambda out: put(self._result(out)), policy=policy,
                            depth=depth, in_flight=in_flight, quit_event=closed)

        def run() -> None:
            try:
                outcome["stats"] = pipeline.run()
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                outcome["error"] = exc
            finally:
                put(done)

        thread = threading.Thread(target=run, name="capture-stream", daemon=True)
        thread.start()
        try:
            while True:
                item = results.get()
                if item is done:
                    break
                yield item
        finally:
            closed.set()  # the consumer stopped (or the stream ended): stop reading, discard what is in flight
            thread.join()
            session.close()
            reader.close()
            self.stats = outcome.get("stats", pipeline.snapshot())
        if "error" in outcome:
            raise outcome["error"]

    # ------------------------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release the face tracker's graphs (the models are freed with the object)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> "Retargeter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
