"""Backend registry: one table of names -> classes, `make_backend` with an explicit "auto" policy.

Every inference path of the product and of the benchmarks is built here: a backend name on a command line
(`--backend`) is a key of `BACKENDS` (or "auto").
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from .base import Backend
from .onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeInt8Backend
from .tensorrt_backend import TensorRTBackend
from .torch_backend import TorchBackend, TorchEagerBackend

BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (
    TensorRTBackend,
    OnnxRuntimeBackend,
    OnnxRuntimeInt8Backend,  # E_flame and D_detail in INT8, calibrated on face crops (never "auto": it trades accuracy)
    TorchBackend,  # CUDA graphs on a GPU, eager on the CPU
    TorchEagerBackend,  # the eager reference (benchmarks; DECA's one-off networks)
)}
# What each name is, for --help.
DESCRIPTIONS: dict[str, str] = {
    "auto": "the fastest that works here",
    "tensorrt": "TensorRT engines (CUDA)",
    "onnxruntime": "ONNX Runtime, float32 (CPU, or CUDA with onnxruntime-gpu)",
    "onnxruntime-int8": "ONNX Runtime CPU with E_flame and D_detail in INT8, calibrated on the input's first "
                        "frames (or renders of the pack)",
    "torch": "PyTorch (CUDA graphs on a GPU, eager on the CPU)",
    "torch-eager": "PyTorch eager, the reference",
}
# Fastest first. On CPU, ONNX Runtime runs ResNet-50 about 2x faster than eager torch (ENVIRONMENT.md).
AUTO_ORDER: tuple[tuple[str, str], ...] = (
    ("tensorrt", "cuda"),
    ("onnxruntime", "cuda"),
    ("torch", "cuda"),
    ("onnxruntime", "cpu"),
    ("torch", "cpu"),
)
NAMES = ("auto", *BACKENDS)
assert set(DESCRIPTIONS) == set(NAMES)


def describe_names() -> str:
    """'auto: the fastest that works here; tensorrt: ...' for a --backend help text."""
    return "; ".join(f"{n}: {DESCRIPTIONS[n]}" for n in NAMES)


def availability(device: Optional[str] = None) -> list[tuple[str, str, bool, str]]:
    """[(backend, device, available, reason)] in auto order, optionally for one device type only."""
    rows = []
    for name, dev in AUTO_ORDER:
        if device is not None and torch.device(device).type != dev:
            continue
        ok, why = BACKENDS[name].available(dev)
        rows.append((name, dev, ok, why))
    return rows


def _default_device(cls: type[Backend]) -> str:
    for dev in cls.devices:  # each class lists its devices best first
        if cls.available(dev)[0]:
            return dev
    return cls.devices[-1]


def _construct(name: str, network: str, pack, device: str, engines_dir, options: Optional[dict]) -> Backend:
    kwargs = dict((options or {}).get(name, {}))
    if not issubclass(BACKENDS[name], TorchBackend):  # the ONNX-fed ones look for engines_dir/<network>.onnx first
        kwargs.setdefault("engines_dir", engines_dir)
    return BACKENDS[name](network, pack, device, **kwargs)


def make_backend(name: str, network: str, pack, device: Optional[str] = None, *,
                 engines_dir: Optional[Union[str, Path]] = None, options: Optional[dict] = None) -> Backend:
    """A backend for `network` ("E_flame" | "E_detail" | "D_detail") built from `pack`.

    name: "auto" or a key of BACKENDS. device: "cpu", "cuda[:i]" or None (auto: any device;
    a named backend: its best available device). "auto" tries AUTO_ORDER and takes the first that is available
    *and* constructs; `.reason` says which and why the faster ones were passed over. A named backend that is
    unknown or unavailable raises ValueError with the list of backends and their availability.
    engines_dir: where the ONNX/engine files are looked for (default `$CAPTURE_ENGINES` or ./engines).
    options: per-backend constructor options, e.g. {"torch": {"cuda_graphs": False}, "tensorrt": {"max_batch": 4},
    "onnxruntime-int8": {"calibration": capture.int8.Calibration(...)}}.
    """
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}. Here: " + _summary(device))
    if name != "auto":
        cls = BACKENDS[name]
        dev = device or _default_device(cls)
        ok, why = cls.available(dev)
        if not ok:
            raise ValueError(f"backend {name!r} is unavailable on {dev}: {why}. Available here: " + _summary(device))
        backend = _construct(name, network, pack, dev, engines_dir, options)
        backend.reason = f"{name} on {backend.device}: requested explicitly ({getattr(backend, 'detail', why)})"
        return backend
    passed_over = []
    for backend_name, dev, ok, why in availability(device):
        if not ok:
            passed_over.append(f"{backend_name}/{dev}: {why}")
            continue
        try:
            # a device the caller named ("cuda:1") is kept; otherwise the candidate's device type
            backend = _construct(backend_name, network, pack, device or dev, engines_dir, options)
        except (RuntimeError, OSError, ValueError) as exc:
            # "auto" promises the fastest backend that *works*; a failure here is reported in `.reason`.
            passed_over.append(f"{backend_name}/{dev}: failed to start ({type(exc).__name__}: {exc})")
            continue
        skipped = f"; passed over: {' | '.join(passed_over)}" if passed_over else ""
        why = getattr(backend, "detail", why)  # what was started (e.g. its thread count), not what could be
        backend.reason = f"auto chose {backend_name} on {backend.device}: fastest available here ({why}){skipped}"
        return backend
    raise ValueError(f"no backend can run {network} on {device or 'any device'}: " + " | ".join(passed_over))


def _summary(device: Optional[str]) -> str:
    return "; ".join(f"{n}/{d} {'available' if ok else 'unavailable'} ({why})"
                     for n, d, ok, why in availability(device))
