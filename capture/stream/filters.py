"""Temporal filters for per-frame codes: One-Euro (Casiez, Roussel & Vogel, CHI 2012).

A One-Euro filter is a first-order low-pass whose cutoff rises with the signal's speed: still signals are
smoothed hard (jitter goes), fast ones pass with little lag. Per sample, with dt from explicit timestamps:

    alpha(fc) = 1 / (1 + 1 / (2 pi fc dt))
    dx_hat    = dx_hat + alpha(d_cutoff) * ((x - x_hat) / dt - dx_hat)     smoothed speed
    fc        = min_cutoff + beta * |dx_hat|                                 per element
    x_hat     = x_hat + alpha(fc) * (x - x_hat)

Units: cutoffs in Hz, beta in Hz per (unit of x per second), timestamps in seconds (non-uniform is fine).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Union

import numpy as np

ArrayLike = Union[np.ndarray, float, "list[float]"]


class OneEuroFilter:
    """One-Euro filter over arrays of any (fixed) shape.

    min_cutoff, beta, d_cutoff: scalars or arrays broadcastable to the signal's shape (per-element tuning).
    `__call__(x, t)` takes a sample and its time in seconds (strictly increasing) and returns the filtered
    sample, same shape, float dtype of x (float64 for integer input). The first sample passes through.
    """

    def __init__(self, min_cutoff: ArrayLike = 1.0, beta: ArrayLike = 0.0, d_cutoff: ArrayLike = 1.0):
        self.min_cutoff = np.asarray(min_cutoff, dtype=np.float64)
        self.beta = np.asarray(beta, dtype=np.float64)
        self.d_cutoff = np.asarray(d_cutoff, dtype=np.float64)
        if np.any(self.min_cutoff <= 0) or np.any(self.d_cutoff <= 0) or np.any(self.beta < 0):
            raise ValueError(
                f"OneEuroFilter: need min_cutoff > 0, d_cutoff > 0, beta >= 0; got "
                f"{self.min_cutoff.tolist()}, {self.d_cutoff.tolist()}, {self.beta.tolist()}"
            )
        self.reset()

    def reset(self) -> None:
        """Forget the past; the next sample passes through unchanged."""
        self._x: Optional[np.ndarray] = None
        self._dx: Optional[np.ndarray] = None
        self._t: Optional[float] = None

    @staticmethod
    def _alpha(cutoff: np.ndarray, dt: float) -> np.ndarray:
        return 1.0 / (1.0 + 1.0 / (2.0 * math.pi * cutoff * dt))

    def __call__(self, x: ArrayLike, t: float) -> np.ndarray:
        x_in = np.asarray(x)
        out_dtype = x_in.dtype if np.issubdtype(x_in.dtype, np.floating) else np.float64
        xs = x_in.astype(np.float64)
        t = float(t)
        if self._x is None:
            self._x, self._dx, self._t = xs.copy(), np.zeros_like(xs), t
            return xs.astype(out_dtype)
        if xs.shape != self._x.shape:
            raise ValueError(f"OneEuroFilter: sample shape {list(xs.shape)} != {list(self._x.shape)}; reset() first")
        dt = t - self._t
        if not dt > 0:
            raise ValueError(
                f"OneEuroFilter: timestamps must increase (got t={t} after {self._t}); "
                "drop duplicated frames or reset() after a seek"
            )
        dx = (xs - self._x) / dt
        self._dx = self._dx + self._alpha(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        self._x = self._x + self._alpha(cutoff, dt) * (xs - self._x)
        self._t = t
        return self._x.astype(out_dtype)


@dataclass(frozen=True)
class OneEuroParams:
    """Parameters of one code's filter; each may be a scalar or a per-element sequence."""

    min_cutoff: ArrayLike = 1.0
    beta: ArrayLike = 0.0
    d_cutoff: ArrayLike = 1.0


# Tuned for 25-60 fps DECA codes. pose = [global rotation 3 | jaw 3] (axis-angle, radians): the jaw gets a
# high base cutoff and a large beta so speech stays crisp (a 0.3 rad opening is followed to 90 % within 3
# frames at 30 fps); global rotation and cam are smoothed more (their jitter comes from the crop).
# exp coefficients move a few units per second. Identity-like codes hardly change within a shot.
DEFAULT_CODE_PARAMS: dict[str, OneEuroParams] = {
    "exp": OneEuroParams(min_cutoff=1.5, beta=0.3, d_cutoff=1.0),
    "pose": OneEuroParams(min_cutoff=(1.0, 1.0, 1.0, 3.0, 3.0, 3.0), beta=(0.5, 0.5, 0.5, 5.0, 5.0, 5.0)),
    "cam": OneEuroParams(min_cutoff=1.0, beta=(0.05, 5.0, 5.0)),
    "shape": OneEuroParams(min_cutoff=0.3, beta=0.0),
    "tex": OneEuroParams(min_cutoff=0.3, beta=0.0),
    "light": OneEuroParams(min_cutoff=0.5, beta=0.0),
    "detail": OneEuroParams(min_cutoff=0.5, beta=0.0),
}


class CodeFilter:
    """One-Euro per named code: `codes = CodeFilter()(codes, t)`.

    params: per-key parameters, merged over `DEFAULT_CODE_PARAMS`. Keys without parameters pass through
    unfiltered. Codes are numpy arrays or torch tensors of any shape whose last axis matches per-element
    parameters (e.g. exp [1, 50], pose [1, 6], cam [1, 3]); tensors come back as tensors on their device.
    """

    def __init__(self, params: Optional[Mapping[str, OneEuroParams]] = None):
        self.params = {**DEFAULT_CODE_PARAMS, **(dict(params) if params else {})}
        self._filters: dict[str, OneEuroFilter] = {}

    def reset(self) -> None:
        """Forget the past of every code (after a seek or a lost face)."""
        self._filters.clear()

    def __call__(self, codes: Mapping[str, object], t: float) -> dict[str, object]:
        out = {}
        for key, value in codes.items():
            p = self.params.get(key)
            if p is None:
                out[key] = value
                continue
            f = self._filters.get(key)
            if f is None:
                f = self._filters[key] = OneEuroFilter(p.min_cutoff, p.beta, p.d_cutoff)
            if hasattr(value, "detach"):  # torch tensor
                import torch

                filtered = f(value.detach().cpu().numpy(), t)
                out[key] = torch.from_numpy(filtered).to(device=value.device, dtype=value.dtype)
            else:
                out[key] = f(value, t)
        return out
