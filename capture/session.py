"""The per-frame work of a retargeting run, split into pipeline stages: crop, then infer+render.

`RetargetSession` owns the stateful parts (face tracker, code filter, the hold-on-miss logic, the avatar
renderer); `capture.video` and `capture.live` only wire it between a reader and a writer / preview.
`infer` is also available as three steps, `infer_codes` (E_flame or the landmark fit, merge), `detail_codes` (LBS,
D_detail) and `render_codes` (shading, rasterising, compositing), so that pipeline stages can keep two cores busy.
LBS goes with the lighter of its neighbours: after the landmark fit (~5 ms), before D_detail when the codes
stage runs E_flame (~25 ms INT8).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from .avatar import Avatar
from .crop import FaceDetector, FaceTracker, crop_to_tensor, crop_transform
from .deca import DECA, Codes
from .nets import CODE_LAYOUT
from .picture import Picture
from .retarget import AvatarRenderer, Prepared
from .sources import landmarks_to_crop_ndc, make_source
from .stream.filters import CodeFilter
from .stream.pipeline import no_times
from .stream.reader import Frame

FILTERED_KEYS = ("exp", "pose", "cam")


@dataclass
class CropResult:
    frame: Frame
    crop: Optional[torch.Tensor]  # [3, 224, 224] or None (no face, or the code source needs no crop)
    image_to_crop: Optional[np.ndarray]  # None: no face
    landmarks: Optional[np.ndarray] = None  # [68, 2] iBUG points in crop NDC, when the source uses them
    started: float = field(default_factory=time.perf_counter)
    network: Optional[Codes] = None  # E_flame's codes of the crop, when the E_flame stage ran it


@dataclass
class FrameOutput:
    frame: Frame  # the input frame (pts / time_base kept for the writer)
    picture: Picture  # output picture [H, W] RGB as its parts: what the writer takes (`image` builds the array)
    codes: Optional[dict[str, np.ndarray]]  # merged codes rendered (None: passed through)
    face: bool  # a face was found in this frame
    held: bool  # the last codes were reused because the face was missing
    vertices: Optional[np.ndarray] = None  # [V, 3] animated avatar vertices, when asked for
    latency: float = 0.0  # seconds from crop start to render end

    @property
    def image(self) -> np.ndarray:
        """The output picture, [H, W, 3] uint8 RGB."""
        return self.picture.rgb()


@dataclass
class CodesResult:
    """What `infer_codes` hands to `render_codes`."""

    item: CropResult
    prepared: Optional[Prepared]  # None: pass the frame through
    face: bool
    held: bool


@dataclass
class SessionCounters:
    frames: int = 0
    without_face: int = 0
    without_landmarks: int = 0  # a face was found but no face mesh (landmark sources hold the last codes)
    held: int = 0
    passed_through: int = 0


class RetargetSession:
    """State shared by the crop and infer stages (each stage runs in its own single thread)."""

    def __init__(self, deca: DECA, avatar: Avatar, frame_size: tuple[int, int], *, layout: str = "side-by-side",
                 pose_mode: str = "source", smooth: bool = False, hold_seconds: float = 0.5,
                 tracker: Optional[FaceTracker] = None,
                 encode_flame: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 decode_detail: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 keep_vertices: bool = False, reference: bool = False, times=None,
                 codes_from: str = "network", encode_workers: int = 1, background: str = "grey",
                 antialias: bool = True):
        """reference: the DECA-style renderer (see `capture.retarget`); times: a `StepTimes` that receives
        "E_flame" here and the renderer's steps; codes_from: 'network', 'landmarks' or 'hybrid'
        (capture.sources; resolve 'auto' with `capture.sources.choose_source` first); encode_workers: with more
        than one, E_flame runs in a stage of its own on that many frames at once (see `stages`); background: behind
        the avatar (`capture.picture.parse_background`: a colour, or 'transparent'); antialias: smooth silhouettes
        and fractional alpha at the head's edge (`capture.render.antialias`)."""
        self.deca = deca
        self._times = times if times is not None else no_times
        self.renderer = AvatarRenderer(deca, avatar, layout, frame_size, pose_mode, decode_detail=decode_detail,
                                       reference=reference, times=times, background=background,
                                       antialias=antialias)
        self.source = make_source(codes_from, self.encode, deca, times)
        # MediaPipe's attention refinement (lids and lips) costs a few ms a frame; only the landmark fit uses it
        self._detector = None if tracker is not None else FaceDetector(refine=self.source.needs_landmarks)
        self.tracker = tracker if tracker is not None else FaceTracker(self._detector)
        self.filter = CodeFilter() if smooth else None
        self.hold_seconds = hold_seconds
        self.keep_vertices = keep_vertices
        self._encode_flame = encode_flame
        if int(encode_workers) < 1:
            raise ValueError(f"encode_workers must be >= 1, got {encode_workers}")
        self.encode_workers = int(encode_workers)
        self._last: Optional[tuple[Codes, np.ndarray, float]] = None  # codes, T, time of the last face
        self.counters = SessionCounters()

    @property
    def output_size(self) -> tuple[int, int]:
        return self.renderer.out_size

    # ------------------------------------------------------------------------------------ stage: crop
    def crop(self, frame: Frame) -> CropResult:
        started = time.perf_counter()
        result = self.tracker.update(frame.image)
        if result.face is None:
            return CropResult(frame, None, None, started=started)
        T = crop_transform(result.face.box)
        landmarks = None
        if self.source.needs_landmarks and result.face.landmarks is not None:
            landmarks = landmarks_to_crop_ndc(result.face.landmarks, T)
        crop = crop_to_tensor(frame.image, T) if self.source.needs_crop else None
        return CropResult(frame, crop, T, started=started, landmarks=landmarks)

    def calibrate(self, images) -> int:
        """Show the code source a sample of the performer's frames ([H, W, 3] uint8 each, e.g. every few
        frames of a video's first seconds) before the run, so that the performer's identity is known from
        the first output frame. Uses its own tracker; returns the number of frames with a face mesh."""
        if not self.source.needs_landmarks:
            return 0
        samples = []
        with FaceTracker() as tracker:
            for image in images:
                result = tracker.update(image)
                if result.face is not None and result.face.landmarks is not None:
                    samples.append(landmarks_to_crop_ndc(result.face.landmarks, crop_transform(result.face.box)))
        self.source.calibrate(samples)
        return len(samples)

    # ------------------------------------------------------------------------------------ stage: infer
    def encode(self, crop: torch.Tensor) -> Codes:
        images = crop[None].to(self.deca.device)
        if self._encode_flame is None:
            with self._times("E_flame"):
                return self.deca.encode(images, with_detail=False)
        with self._times("E_flame"):
            code = self._encode_flame(images)
        parts = CODE_LAYOUT.split(torch.as_tensor(code, device=self.deca.device))
        return Codes(**parts, detail=torch.zeros(1, CODE_LAYOUT.n_detail, device=self.deca.device))

    @property
    def stages(self) -> list[tuple]:
        """The per-frame work as pipeline stages, in order, for `capture.stream.pipeline.Pipeline` (video, live
        and benchmarks/fps.py all run these): face tracking and the crop | codes and merge | (LBS and) D_detail |
        shading, rasterising and compositing. E_flame and D_detail, the two largest steps, are in stages of
        their own: beside the others either would hold up the whole pipeline on a 2-core CPU (a stage's time
        bounds the FPS however idle the other core is). With `encode_workers` > 1 (and a source that runs
        E_flame) E_flame leaves the codes stage for a stage of its own, "E_flame", of that many threads, each on
        its own frame: a float32 E_flame on one thread is longer than every other stage together, and one
        frame's pass cannot keep two cores busy."""
        stages: list[tuple] = [("crop", self.crop)]
        if self.encode_workers > 1 and self.source.needs_crop:
            stages.append(("E_flame", self.encode_crop, self.encode_workers))
        return stages + [("codes", self.infer_codes), ("detail", self.detail_codes), ("render", self.render_codes)]

    def encode_crop(self, item: CropResult) -> CropResult:
        """The E_flame stage: E_flame on the frame's crop (safe to run on several frames at once)."""
        if item.crop is not None:
            item.network = self.encode(item.crop)
        return item

    def infer(self, item: CropResult) -> FrameOutput:
        """Every stage after the crop in one call: crop result -> output picture."""
        return self.render_codes(self.detail_codes(self.infer_codes(item)))

    def detail_codes(self, result: "CodesResult") -> "CodesResult":
        """Third stage: LBS (unless done after the fit) and D_detail on the frame's jaw and expression (nothing
        for a frame passed through)."""
        if result.prepared is not None:
            self.renderer.detail(result.prepared)
        return result

    def infer_codes(self, item: CropResult) -> CodesResult:
        """Second stage: E_flame or the landmark fit (or the held codes), the code filter, merge (and LBS after
        the fit)."""
        frame = item.frame
        self.counters.frames += 1
        held = False
        face = item.image_to_crop is not None
        usable = face and not (self.source.needs_landmarks and not self.source.needs_crop and item.landmarks is None)
        if face and not usable:
            self.counters.without_landmarks += 1
        if usable:
            codes = self.source(item.crop, item.landmarks, frame.time, network=item.network)
            if self.filter is not None:
                smoothed = self.filter({k: getattr(codes, k) for k in FILTERED_KEYS}, frame.time)
                codes = codes.replace(**smoothed)
            T = item.image_to_crop
            self._last = (codes, T, frame.time)
        else:
            self.counters.without_face += not face
            if self._last is not None and frame.time - self._last[2] <= self.hold_seconds:
                codes, T, _ = self._last
                held = True
                self.counters.held += 1
            else:
                codes, T = None, None
                if self.filter is not None:
                    self.filter.reset()  # the next face starts fresh, without gliding from the old one
                self.source.reset()
        prepared = None if codes is None else self.renderer.merge(codes, T)
        if prepared is not None and not self.source.needs_crop:
            self.renderer.pose(prepared)  # no E_flame in this stage: LBS here keeps the D_detail stage short
        return CodesResult(item=item, prepared=prepared, face=face, held=held)

    def render_codes(self, result: CodesResult) -> FrameOutput:
        """Last stage: the picture of the frame's codes (or the frame passed through)."""
        item, frame = result.item, result.item.frame
        if result.prepared is None:
            rendered = self.renderer.render(frame.image, None, None)
            self.counters.passed_through += 1
        else:
            rendered = self.renderer.finish(frame.image, result.prepared)
        vertices = None
        if self.keep_vertices and result.prepared is not None:
            vertices = result.prepared.vertices[0].detach().cpu().numpy()
        merged = None if rendered.codes is None else {k: v[0].detach().cpu().numpy()
                                                      for k, v in vars(rendered.codes).items()}
        return FrameOutput(frame=frame, picture=rendered.picture, codes=merged, face=result.face, held=result.held,
                           vertices=vertices, latency=time.perf_counter() - item.started)

    def close(self) -> None:
        self.tracker.close()
        if self._detector is not None:
            self._detector.close()
