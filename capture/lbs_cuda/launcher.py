"""Glue between torch tensors and the fused LBS kernel (`lbs_kernel.cu`).

This layer knows nothing about FLAME. It checks every tensor (device, dtype, contiguity, shape) and names
the offending one in its error, compiles the kernel once per device, and launches it on torch's current
CUDA stream with the raw device pointers of the tensors. Two launch libraries are supported, both
imported lazily (neither installs on the CPU development machines):

- `pycuda`: compiles with `pycuda.compiler.SourceModule` (nvcc) inside the device's *primary* context,
  the one torch's runtime API uses, so pointers from `tensor.data_ptr()` are valid as they are.
- `cupy`: compiles the same text with NVRTC (`cupy.RawModule`); CuPy also uses the primary context.

`pick_launcher()` takes pycuda, then CuPy, else raises `CudaLBSUnavailable` with the reason; the torch
`lbs` stays the fallback, chosen explicitly by the caller.

Every CUDA status, raw (`check_status`) or wrapped in a library exception (`translate_errors`), ends up
as a `CudaLBSError` whose message carries the symbolic name (`CUDA_ERROR_ILLEGAL_ADDRESS`, ...).
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

KERNEL_PATH = Path(__file__).with_name("lbs_kernel.cu")
KERNEL_NAME = "flame_lbs_skin"
# The kernel's parameters in order; the launchers build their argument lists from this tuple and a
# test compares it with the signature in the .cu file.
KERNEL_ARGS = (
    "v_template", "shapedirs", "posedirs", "lbs_weights", "betas", "pose_feature", "transforms",
    "vertices", "B", "V", "K", "J",
)
# Limits of the kernel's static shared-memory staging (LBS_MAX_K, LBS_MAX_J in the .cu file).
MAX_K = 400
MAX_J = 8
# Small blocks spread one FLAME mesh (5023 vertices) over ~80 SMs even at batch 1.
THREADS_PER_BLOCK = 64
# Set CAPTURE_CUDA_SYNC=1 to synchronise after every launch, so that a faulting kernel is reported at
# its own launch and not at some later, unrelated CUDA call.
SYNC_ENV = "CAPTURE_CUDA_SYNC"


class CudaLBSError(RuntimeError):
    """A CUDA call made for the LBS kernel failed; the message names the call and the CUDA status."""


class CudaLBSUnavailable(RuntimeError):
    """The CUDA LBS path cannot run here (no CUDA device, or neither pycuda nor CuPy); use torch `lbs`."""


# ---------------------------------------------------------------------------------------------------
# Status checking
# ---------------------------------------------------------------------------------------------------

# CUresult values (cuda.h) that this kernel can plausibly meet; anything else is reported by number.
_CU_RESULT_NAMES = {
    0: "CUDA_SUCCESS",
    1: "CUDA_ERROR_INVALID_VALUE",
    2: "CUDA_ERROR_OUT_OF_MEMORY",
    3: "CUDA_ERROR_NOT_INITIALIZED",
    4: "CUDA_ERROR_DEINITIALIZED",
    100: "CUDA_ERROR_NO_DEVICE",
    101: "CUDA_ERROR_INVALID_DEVICE",
    200: "CUDA_ERROR_INVALID_IMAGE",
    201: "CUDA_ERROR_INVALID_CONTEXT",
    209: "CUDA_ERROR_NO_BINARY_FOR_GPU",
    218: "CUDA_ERROR_INVALID_PTX",
    222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
    400: "CUDA_ERROR_INVALID_HANDLE",
    500: "CUDA_ERROR_NOT_FOUND",
    700: "CUDA_ERROR_ILLEGAL_ADDRESS",
    701: "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
    702: "CUDA_ERROR_LAUNCH_TIMEOUT",
    719: "CUDA_ERROR_LAUNCH_FAILED",
    999: "CUDA_ERROR_UNKNOWN",
}
_NAME_IN_TEXT = re.compile(r"CUDA_ERROR_[A-Z_]+")


def cuda_status_name(status: int) -> str:
    """Symbolic name of a CUresult value, e.g. 700 -> 'CUDA_ERROR_ILLEGAL_ADDRESS'."""
    return _CU_RESULT_NAMES.get(int(status), f"CUresult {int(status)}")


def check_status(status: int, call: str, detail: str = "") -> None:
    """The one checker: raise `CudaLBSError` naming `call` and the symbolic status unless it is 0."""
    if int(status) != 0:
        extra = f": {detail}" if detail else ""
        raise CudaLBSError(f"{call} failed with {cuda_status_name(status)} ({int(status)}){extra}")


def _status_of(exc: BaseException) -> Optional[int]:
    """The CUresult carried by a pycuda/CuPy exception, when it can be recovered."""
    status = getattr(exc, "status", None)  # cupy CUDADriverError / CUDARuntimeError
    if isinstance(status, int):
        return status
    m = _NAME_IN_TEXT.search(str(exc))
    if m:
        for code, name in _CU_RESULT_NAMES.items():
            if name == m.group(0):
                return code
    text = str(exc).lower()  # pycuda words its errors as cuGetErrorString does
    for code, name in _CU_RESULT_NAMES.items():
        words = name.replace("CUDA_ERROR_", "").replace("_", " ").lower()
        if code and words in text:
            return code
    return None


@contextlib.contextmanager
def translate_errors(call: str) -> Iterator[None]:
    """Route an exception raised by pycuda or CuPy inside `call` through `check_status`."""
    try:
        yield
    except (CudaLBSError, CudaLBSUnavailable, ValueError, TypeError):
        raise
    except Exception as exc:
        status = _status_of(exc)
        if status is None:
            raise CudaLBSError(f"{call} failed: {type(exc).__name__}: {exc}") from exc
        try:
            check_status(status, call, f"{type(exc).__name__}: {exc}")
        except CudaLBSError as err:
            raise err from exc
        raise


# ---------------------------------------------------------------------------------------------------
# Tensor checks
# ---------------------------------------------------------------------------------------------------


def check_tensor(
    name: str, t: torch.Tensor, shape: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32
) -> None:
    """Raise ValueError/TypeError naming `name` unless t is a contiguous `dtype` tensor of `shape` on `device`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"CUDA LBS: {name} must be a torch.Tensor, found {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"CUDA LBS: {name} is on {t.device}, expected {device}; move it with .to({str(device)!r})")
    if t.dtype != dtype:
        raise ValueError(f"CUDA LBS: {name} is {t.dtype}, the kernel takes {dtype}; convert it with .to({dtype})")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"CUDA LBS: {name} must be {list(shape)}, found {list(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(
            f"CUDA LBS: {name} is not contiguous (strides {t.stride()}); pass {name}.contiguous()"
        )


@dataclass(frozen=True)
class SkinArgs:
    """Everything one launch needs, as tensors in the kernel's layouts (see lbs_kernel.cu)."""

    v_template: torch.Tensor  # [3, V]
    shapedirs: torch.Tensor  # [K, 3, V]
    posedirs: torch.Tensor  # [P, 3, V], P = (J-1)*9
    lbs_weights: torch.Tensor  # [J, V]
    betas: torch.Tensor  # [B, K]
    pose_feature: torch.Tensor  # [B, P]
    transforms: torch.Tensor  # [B, J, 12]
    vertices: torch.Tensor  # [B, V, 3] output

    def check(self) -> tuple[int, int, int, int]:
        """Validate every tensor against the others; returns (B, V, K, J)."""
        device = self.v_template.device
        if device.type != "cuda":
            raise ValueError(f"CUDA LBS: v_template is on {device}; the kernel needs CUDA tensors")
        if self.v_template.dim() != 2 or self.lbs_weights.dim() != 2 or self.betas.dim() != 2:
            raise ValueError(
                "CUDA LBS: v_template [3, V], lbs_weights [J, V] and betas [B, K] must be 2-d, found "
                f"{list(self.v_template.shape)}, {list(self.lbs_weights.shape)}, {list(self.betas.shape)}"
            )
        V = self.v_template.shape[1]
        J = self.lbs_weights.shape[0]
        B, K = self.betas.shape
        if not 1 <= J <= MAX_J:
            raise ValueError(f"CUDA LBS: the kernel handles 1..{MAX_J} joints, lbs_weights has {J}")
        if K > MAX_K:
            raise ValueError(f"CUDA LBS: the kernel handles at most {MAX_K} blendshape components, betas has {K}")
        if B < 1 or B > 65535:
            raise ValueError(f"CUDA LBS: batch size must be 1..65535 (grid y), found {B}")
        P = (J - 1) * 9
        check_tensor("v_template", self.v_template, (3, V), device)
        check_tensor("shapedirs", self.shapedirs, (K, 3, V), device)
        check_tensor("posedirs", self.posedirs, (P, 3, V), device)
        check_tensor("lbs_weights", self.lbs_weights, (J, V), device)
        check_tensor("betas", self.betas, (B, K), device)
        check_tensor("pose_feature", self.pose_feature, (B, P), device)
        check_tensor("transforms", self.transforms, (B, J, 12), device)
        check_tensor("vertices", self.vertices, (B, V, 3), device)
        return B, V, K, J

    def pointers(self) -> list[int]:
        return [getattr(self, name).data_ptr() for name in KERNEL_ARGS[:8]]


def grid_for(B: int, V: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block) of one launch: blockIdx.y = batch item, x covers the vertices."""
    return ((V + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK, B, 1), (THREADS_PER_BLOCK, 1, 1)


def kernel_source() -> str:
    return KERNEL_PATH.read_text()


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


class PycudaLauncher:
    """Compiles with nvcc through pycuda into the device's primary context (the one torch uses)."""

    name = "pycuda"

    def __init__(self, device: torch.device):
        import pycuda.driver as drv  # lazy: pycuda needs libcuda
        from pycuda.compiler import SourceModule

        self._drv = drv
        self.device = device
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.init()  # the runtime creates and binds the primary context first
        with translate_errors("pycuda cuInit / retain primary context"):
            drv.init()
            self._ctx = drv.Device(index).retain_primary_context()
        with self._current(), translate_errors(f"pycuda SourceModule({KERNEL_PATH.name})"):
            module = SourceModule(kernel_source(), no_extern_c=True)
            self._fn = module.get_function(KERNEL_NAME)

    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        self._ctx.push()
        try:
            yield
        finally:
            self._drv.Context.pop()

    def launch(self, args: SkinArgs, B: int, V: int, K: int, J: int, stream_handle: int) -> None:
        # pycuda only launches on its own Stream objects; it cannot wrap torch's handle. On torch's
        # default stream (handle 0, the legacy null stream) stream=None is that very stream. On a side
        # stream the launch is fenced by two host synchronisations instead: correct, but it stalls
        # the host; use CuPy (which does take external streams) on multi-stream pipelines.
        side_stream = stream_handle != 0
        if side_stream:
            torch.cuda.current_stream(self.device).synchronize()
        grid, block = grid_for(B, V)
        ptrs = [np.uintp(p) for p in args.pointers()]
        ints = [np.int32(n) for n in (B, V, K, J)]
        with self._current(), translate_errors(f"{KERNEL_NAME} launch (pycuda)"):
            self._fn(*ptrs, *ints, grid=grid[:2], block=block, stream=None)
            if side_stream or os.environ.get(SYNC_ENV) == "1":
                self._drv.Context.synchronize()


class CupyLauncher:
    """Compiles the same source with NVRTC through CuPy and launches on torch's stream by handle."""

    name = "cupy"

    def __init__(self, device: torch.device):
        import cupy  # lazy

        self._cupy = cupy
        self.device = device
        self._index = device.index if device.index is not None else torch.cuda.current_device()
        with cupy.cuda.Device(self._index), translate_errors(f"CuPy RawModule({KERNEL_PATH.name})"):
            module = cupy.RawModule(code=kernel_source())
            self._fn = module.get_function(KERNEL_NAME)

    def launch(self, args: SkinArgs, B: int, V: int, K: int, J: int, stream_handle: int) -> None:
        cp = self._cupy
        grid, block = grid_for(B, V)
        ptrs = [np.uint64(p) for p in args.pointers()]
        ints = [np.int32(n) for n in (B, V, K, J)]
        # Handle 0 is torch's default stream, the legacy null stream, which is CuPy's null stream too.
        stream = cp.cuda.Stream.null if stream_handle == 0 else cp.cuda.ExternalStream(stream_handle)
        with cp.cuda.Device(self._index), stream, translate_errors(f"{KERNEL_NAME} launch (cupy)"):
            self._fn(grid, block, tuple(ptrs + ints))
            if os.environ.get(SYNC_ENV) == "1":
                cp.cuda.runtime.deviceSynchronize()


LAUNCHERS = {"pycuda": PycudaLauncher, "cupy": CupyLauncher}
PREFERENCE = ("pycuda", "cupy")


def _importable(module: str) -> tuple[bool, str]:
    try:
        __import__(module)
        return True, ""
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError for a missing libcuda
        return False, f"{type(exc).__name__}: {exc}"


def available_launchers() -> tuple[list[str], str]:
    """Names of launch libraries that import here, in preference order, and why the others do not."""
    found, why = [], []
    for name in PREFERENCE:
        ok, reason = _importable(name)
        if ok:
            found.append(name)
        else:
            why.append(f"{name}: {reason}")
    return found, "; ".join(why)


def pick_launcher(device: torch.device, prefer: Optional[str] = None):
    """Build a launcher for `device`: `prefer` if given, else pycuda, then CuPy."""
    if not torch.cuda.is_available():
        raise CudaLBSUnavailable("CUDA LBS needs a CUDA device and a CUDA build of torch; use capture.flame.lbs")
    if prefer is not None and prefer not in LAUNCHERS:
        raise ValueError(f"unknown CUDA LBS launcher {prefer!r}; choose one of {sorted(LAUNCHERS)}")
    found, why = available_launchers()
    order = [prefer] if prefer is not None else found
    if prefer is not None and prefer not in found:
        raise CudaLBSUnavailable(f"CUDA LBS launcher {prefer!r} does not import here ({why})")
    if not order:
        raise CudaLBSUnavailable(
            f"CUDA LBS needs pycuda or CuPy, neither imports here ({why}); "
            "install one (pip install pycuda, or cupy-cuda12x / cupy-cuda13x) or use capture.flame.lbs"
        )
    return LAUNCHERS[order[0]](device)


def launch_skin(launcher, args: SkinArgs) -> torch.Tensor:
    """Check `args` and run the kernel on torch's current stream; returns args.vertices."""
    B, V, K, J = args.check()
    if args.v_template.device != launcher.device:
        raise ValueError(
            f"CUDA LBS: tensors are on {args.v_template.device} but the kernel was built for {launcher.device}"
        )
    stream = torch.cuda.current_stream(launcher.device).cuda_stream
    launcher.launch(args, B, V, K, J, stream)
    return args.vertices
