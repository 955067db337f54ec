"""The per-frame work of a retargeting run, split into pipeline stages: crop, then infer+render.

`RetargetSession` owns the stateful parts (face tracker, code filter, the hold-on-miss logic, the avatar
renderer); `capture.video` and `capture.live` only wire it between a reader and a writer / preview.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from .avatar import Avatar
from .crop import FaceTracker, crop_to_tensor, crop_transform
from .deca import DECA, Codes
from .nets import CODE_LAYOUT
from .retarget import AvatarRenderer
from .stream.filters import CodeFilter
from .stream.reader import Frame

FILTERED_KEYS = ("exp", "pose", "cam")


@dataclass
class CropResult:
    frame: Frame
    crop: Optional[torch.Tensor]  # [3, 224, 224] or None (no face)
    image_to_crop: Optional[np.ndarray]
    started: float = field(default_factory=time.perf_counter)


@dataclass
class FrameOutput:
    frame: Frame  # the input frame (pts / time_base kept for the writer)
    image: np.ndarray  # output picture [H, W, 3] uint8
    codes: Optional[dict[str, np.ndarray]]  # merged codes rendered (None: passed through)
    face: bool  # a face was found in this frame
    held: bool  # the last codes were reused because the face was missing
    vertices: Optional[np.ndarray] = None  # [V, 3] animated avatar vertices, when asked for
    latency: float = 0.0  # seconds from crop start to render end


@dataclass
class SessionCounters:
    frames: int = 0
    without_face: int = 0
    held: int = 0
    passed_through: int = 0


class RetargetSession:
    """State shared by the crop and infer stages (each stage runs in its own single thread)."""

    def __init__(self, deca: DECA, avatar: Avatar, frame_size: tuple[int, int], *, layout: str = "side-by-side",
                 pose_mode: str = "source", smooth: bool = False, hold_seconds: float = 0.5,
                 tracker: Optional[FaceTracker] = None,
                 encode_flame: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 decode_detail: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 keep_vertices: bool = False):
        self.deca = deca
        self.renderer = AvatarRenderer(deca, avatar, layout, frame_size, pose_mode, decode_detail=decode_detail)
        self.tracker = tracker if tracker is not None else FaceTracker()
        self.filter = CodeFilter() if smooth else None
        self.hold_seconds = hold_seconds
        self.keep_vertices = keep_vertices
        self._encode_flame = encode_flame
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
            return CropResult(frame, None, None, started)
        T = crop_transform(result.face.box)
        return CropResult(frame, crop_to_tensor(frame.image, T), T, started)

    # ------------------------------------------------------------------------------------ stage: infer
    def encode(self, crop: torch.Tensor) -> Codes:
        images = crop[None].to(self.deca.device)
        if self._encode_flame is None:
            return self.deca.encode(images, with_detail=False)
        code = self._encode_flame(images)
        parts = CODE_LAYOUT.split(torch.as_tensor(code, device=self.deca.device))
        return Codes(**parts, detail=torch.zeros(1, CODE_LAYOUT.n_detail, device=self.deca.device))

    def infer(self, item: CropResult) -> FrameOutput:
        frame = item.frame
        self.counters.frames += 1
        held = False
        if item.crop is not None:
            codes = self.encode(item.crop)
            if self.filter is not None:
                smoothed = self.filter({k: getattr(codes, k) for k in FILTERED_KEYS}, frame.time)
                codes = codes.replace(**smoothed)
            T = item.image_to_crop
            self._last = (codes, T, frame.time)
        else:
            self.counters.without_face += 1
            if self._last is not None and frame.time - self._last[2] <= self.hold_seconds:
                codes, T, _ = self._last
                held = True
                self.counters.held += 1
            else:
                codes, T = None, None
                if self.filter is not None:
                    self.filter.reset()  # the next face starts fresh, without gliding from the old one
        rendered = self.renderer.render(frame.image, codes, T)
        if rendered.codes is None:
            self.counters.passed_through += 1
        vertices = None
        if self.keep_vertices and rendered.codes is not None:
            vertices = self.deca.geometry(rendered.codes).vertices[0].cpu().numpy()
        merged = None if rendered.codes is None else {k: v[0].detach().cpu().numpy()
                                                      for k, v in vars(rendered.codes).items()}
        return FrameOutput(frame=frame, image=rendered.image, codes=merged, face=item.crop is not None, held=held,
                           vertices=vertices, latency=time.perf_counter() - item.started)

    def close(self) -> None:
        self.tracker.close()
