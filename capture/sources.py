"""Where each frame's codes come from: E_flame, the landmark fit, or both.

- `network`: E_flame on the 224 crop, as DECA publishes it.
- `landmarks`: FLAME fitted to MediaPipe's face mesh (capture.fit); no network runs per frame.
- `hybrid`: E_flame's codes refined by the fit: the network's expression, jaw, head pose and camera are the
  starting point and the prior; the landmarks correct what DECA is known to miss (eyelids, lip contact,
  muted expressions).
- `auto`: `landmarks` on a synthetic pack (its seeded networks cannot see a real face), `network` on
  official weights.

Every source returns `Codes` (batch 1) of the performer; the retargeting rule (capture.retarget) then takes
expression, jaw (and head pose, camera) from them. D_detail regenerates the target's wrinkles from the
jaw and expression whatever the source.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .conventions import INPUT_SIZE, pixel_to_ndc
from .crop import image_points_to_crop
from .deca import Codes
from .fit import FitConfig, FitState, LandmarkBases, LandmarkFitter
from .landmarks import LidCalibration, ibug68_from_mesh
from .nets import CODE_LAYOUT
from .stream.filters import OneEuroFilter

CODE_SOURCES = ("auto", "network", "landmarks", "hybrid")
N_SHAPE_PERFORMER = 10  # identity components estimated for a performer over the stream
N_SHAPE_TARGET = 30  # ... for a target photo (one image, more components, a stronger prior per component)
# One-Euro filter on the 68 landmarks (crop NDC, the face ~1.4 units tall) before the fit: (min_cutoff Hz, beta,
# d_cutoff Hz). MediaPipe's points tremble by ~1 px (often alternating frame to frame) on a still face; a
# blink moves the lids at ~2 NDC/s, where the cutoff rises to ~2 + 2 * 4 = 10 Hz and follows it.
LANDMARK_SMOOTHING = (2.0, 4.0, 1.0)
# ... and on the fitted head rotation (axis-angle, rad): what is left of the points' tremble shows most there,
# while a head turns slowly next to a blink (the code filter's pose setting, capture.stream.filters).
HEAD_SMOOTHING = (1.0, 0.5, 1.0)


def choose_source(requested: str, synthetic_pack: bool) -> tuple[str, str]:
    """(source, why) for `--codes-from`."""
    if requested not in CODE_SOURCES:
        raise ValueError(f"--codes-from must be one of {', '.join(CODE_SOURCES)}, got {requested!r}")
    if requested != "auto":
        return requested, "as requested"
    if synthetic_pack:
        return "landmarks", "auto: the pack is synthetic, its seeded networks cannot see a real face"
    return "network", "auto: official weights, E_flame as DECA publishes it"


def landmarks_to_crop_ndc(mesh_px: np.ndarray, image_to_crop: np.ndarray) -> np.ndarray:
    """Face-mesh points in frame pixels [468+, 2] -> the 68 iBUG points in the crop's NDC [68, 2]."""
    crop_px = image_points_to_crop(ibug68_from_mesh(mesh_px), np.asarray(image_to_crop, np.float64))
    return pixel_to_ndc(crop_px, INPUT_SIZE)


def codes_from_state(state: FitState, shape: np.ndarray, device, n_shape: int = 100,
                     template: Optional[Codes] = None) -> Codes:
    """A fitted state -> Codes (batch 1). tex, light and detail come from `template` (zeros without one)."""
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32)[None], device=device)  # noqa: E731
    full_shape = np.zeros(n_shape)
    full_shape[: len(shape)] = shape[:n_shape]
    if template is None:
        zeros = lambda n: torch.zeros(1, n, device=device)  # noqa: E731
        tex, light, detail = zeros(CODE_LAYOUT.n_tex), torch.zeros(1, 9, 3, device=device), zeros(CODE_LAYOUT.n_detail)
    else:
        tex, light, detail = template.tex, template.light, template.detail
    return Codes(shape=t(full_shape), tex=tex, exp=t(state.exp), pose=t(state.pose), cam=t(state.cam),
                 light=light, detail=detail)


def state_from_codes(codes: Codes) -> FitState:
    pose = codes.pose[0].detach().cpu().double().numpy()
    return FitState(rotation=pose[:3].copy(), jaw=pose[3:6].copy(),
                    exp=codes.exp[0].detach().cpu().double().numpy().copy(),
                    cam=codes.cam[0].detach().cpu().double().numpy().copy())


class CodeSource:
    """Per-frame codes of one performer. `needs_crop`: E_flame's 224 input is used; `needs_landmarks`:
    the face mesh is used. `__call__(crop, landmarks_ndc, time) -> Codes` (time: the frame's seconds);
    `reset()` when the track is lost."""

    name = "network"
    needs_crop = True
    needs_landmarks = False

    def __call__(self, crop: Optional[torch.Tensor], landmarks_ndc: Optional[np.ndarray], time: float,
                 network: Optional[Codes] = None) -> Codes:
        """network: E_flame's codes of this crop when a pipeline stage ran it already (else run here)."""
        raise NotImplementedError

    def reset(self) -> None:
        pass

    def calibrate(self, landmarks_ndc: list) -> None:
        """Learn about the performer from a sample of frames before the run (landmark sources)."""


class NetworkSource(CodeSource):
    def __init__(self, encode: Callable[[torch.Tensor], Codes]):
        self.encode = encode

    def __call__(self, crop, landmarks_ndc, time, network=None) -> Codes:
        return network if network is not None else self.encode(crop)


class LandmarkSource(CodeSource):
    name = "landmarks"
    needs_crop = False
    needs_landmarks = True

    def __init__(self, bases: LandmarkBases, device, n_shape: int = N_SHAPE_PERFORMER, times=None,
                 config: Optional[FitConfig] = None):
        self.fitter = LandmarkFitter(bases, n_shape=n_shape, config=config)
        self.lids = LidCalibration()
        self.smoothing = OneEuroFilter(*LANDMARK_SMOOTHING)
        self.head_smoothing = OneEuroFilter(*HEAD_SMOOTHING)
        self.device = device
        self._times = times
        self._last_time: Optional[float] = None

    def _fit(self, landmarks_ndc, time: float, prior: Optional[FitState] = None) -> FitState:
        if self._last_time is not None and time <= self._last_time:
            self.smoothing.reset()  # a seek or a repeated timestamp: start the filters afresh
            self.head_smoothing.reset()
        self._last_time = time
        landmarks_ndc = self.lids(self.smoothing(landmarks_ndc, time))
        if self._times is None:
            return self.fitter.fit(landmarks_ndc, prior_state=prior)
        with self._times("fit"):
            return self.fitter.fit(landmarks_ndc, prior_state=prior)

    def __call__(self, crop, landmarks_ndc, time, network=None) -> Codes:
        state = self._fit(landmarks_ndc, time).copy()
        state.rotation = self.head_smoothing(state.rotation, time)
        return codes_from_state(state, self.fitter.shape, self.device)

    def calibrate(self, landmarks_ndc: list) -> None:
        """The performer's identity and open-eye baseline from a sample of frames ([68, 2] crop NDC each)."""
        if not landmarks_ndc:
            return
        for points in landmarks_ndc:  # the lids' baseline first, so that every sample is remapped with it
            self.lids(points)
        self.fitter.calibrate([self.lids.remap(points) for points in landmarks_ndc])

    def reset(self) -> None:
        self.fitter.reset()  # the performer's shape, offsets and lid baseline are kept: likely the same person
        self.smoothing.reset()
        self.head_smoothing.reset()


class HybridSource(LandmarkSource):
    name = "hybrid"
    needs_crop = True

    def __init__(self, encode: Callable[[torch.Tensor], Codes], bases: LandmarkBases, device,
                 n_shape: int = N_SHAPE_PERFORMER, times=None, config: Optional[FitConfig] = None):
        super().__init__(bases, device, n_shape=n_shape, times=times, config=config)
        self.encode = encode

    def __call__(self, crop, landmarks_ndc, time, network=None) -> Codes:
        net = network if network is not None else self.encode(crop)
        if landmarks_ndc is None:
            return net
        state = self._fit(landmarks_ndc, time, prior=state_from_codes(net))
        return codes_from_state(state, self.fitter.shape, self.device, template=net)


def fit_config(pack, **changes) -> FitConfig:
    """The fitter's settings for a pack. A pack that names its designed expression columns (the demo pack's
    `pack.json` "expression_names") has the rest held by a strong prior: they are weak random fields there,
    free to fit noise. Official FLAME's 50 PCA components are all free."""
    names = pack.meta.get("expression_names") if isinstance(pack.meta, dict) else None
    if names:
        changes.setdefault("n_exp_free", len(names))
    return FitConfig(**changes)


def make_source(name: str, encode: Callable[[torch.Tensor], Codes], deca, times=None) -> CodeSource:
    """The code source `name` ('network', 'landmarks', 'hybrid') for one performer on `deca`'s model."""
    if name == "network":
        return NetworkSource(encode)
    if name in ("landmarks", "hybrid"):
        bases = LandmarkBases.from_pack(deca.pack, deca.flame.n_shape, deca.flame.n_exp)
        config = fit_config(deca.pack)
        if name == "landmarks":
            return LandmarkSource(bases, deca.device, times=times, config=config)
        return HybridSource(encode, bases, deca.device, times=times, config=config)
    raise ValueError(f"code source must be one of network, landmarks, hybrid (resolve 'auto' first), got {name!r}")
