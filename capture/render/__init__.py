"""Rendering layer: one rasterizer interface, two implementations (nvdiffrast on CUDA, CPU elsewhere).

    rast = get_rasterizer("auto", device)      # .name says which one was picked
    frags = rast.rasterize(verts_ndc, faces, (H, W))
    normals_img = rast.interpolate(normals, frags, faces)          # [B, H, W, 3]
    uv_img = rast.interpolate_face_attributes(face_uvs, frags)     # [B, H, W, 2]
    albedo_img = texture(albedo_uv, uv_img)                        # [B, 3, H, W]

Conventions (NDC, pixel centres, UV v-flip, depth): docs/conventions.md and `capture.conventions`.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict

import torch

from .base import (
    Fragments,
    Rasterizer,
    Window,
    covering_window,
    empty_fragments,
    interpolate,
    interpolate_face_attributes,
    texture,
)
from .cpu import CpuRasterizer

log = logging.getLogger(__name__)


_OPTIONS = {"cpu": ("near", "far", "kernel", "chunk"), "nvdiffrast": ("near", "far")}


def _pick(kind: str, kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k in _OPTIONS[kind]}


def _make_cpu(device, **kwargs) -> Rasterizer:
    return CpuRasterizer(**_pick("cpu", kwargs))


def _make_nvdiffrast(device, **kwargs) -> Rasterizer:
    from .nvdiffrast import NvdiffrastRasterizer  # lazy: imports nothing GPU-related until asked
    return NvdiffrastRasterizer(device=device if device is not None else "cuda", **_pick("nvdiffrast", kwargs))


RASTERIZERS: Dict[str, Callable[..., Rasterizer]] = {"cpu": _make_cpu, "nvdiffrast": _make_nvdiffrast}


def get_rasterizer(kind: str = "auto", device=None, **kwargs) -> Rasterizer:
    """A rasterizer by name: "cpu", "nvdiffrast", or "auto".

    "auto" picks nvdiffrast when `device` is CUDA (default: CUDA if available) and nvdiffrast imports and
    initialises, else the CPU rasterizer; the choice and the reason are logged, and `.name` says which.
    An explicit kind that cannot be built raises. kwargs go to the constructors that take them
    (near, far; CPU only: kernel, chunk).
    """
    unknown = set(kwargs) - {name for names in _OPTIONS.values() for name in names}
    if unknown:
        raise TypeError(f"get_rasterizer: unknown options {sorted(unknown)}; known: near, far, kernel, chunk")
    if kind != "auto":
        if kind not in RASTERIZERS:
            raise ValueError(f"kind: expected 'auto' or one of {sorted(RASTERIZERS)}, got {kind!r}")
        return RASTERIZERS[kind](device, **kwargs)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        try:
            rast = _make_nvdiffrast(device, **kwargs)
            log.info("rasterizer: nvdiffrast on %s", device)
            return rast
        except (ImportError, RuntimeError, OSError) as exc:  # not installed, no GPU, plugin build failed
            log.warning("rasterizer: nvdiffrast unavailable on %s (%s); using the CPU rasterizer", device, exc)
    rast = _make_cpu(device, **kwargs)
    log.info("rasterizer: cpu (%s kernel)", rast.kernel)
    return rast


__all__ = ["Fragments", "Rasterizer", "Window", "covering_window", "CpuRasterizer", "get_rasterizer", "interpolate",
           "interpolate_face_attributes", "texture", "empty_fragments", "RASTERIZERS"]
