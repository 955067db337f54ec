"""Small C kernels for the CPU paths (rasterizer, drawing, fit, crop, RGB -> YUV), compiled with the system C
compiler on first use.

Each kernel's shared library is cached in the capture cache dir under a key of its source, flags, compiler
version and machine, built under a lock (concurrent first uses compile it once) and written atomically (a
reader never loads half a file). Without a compiler, `error()` says why and callers use the torch or numpy
steps the kernel stands in for.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

# No FMA contraction: a C loop rounds like torch's (and numpy's) separate multiplies and adds.
C_FLAGS = ("-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math")
# For the machine's own vector instructions (byte-interleaved RGB vectorises only with shuffles beyond SSE2: the
# RGB -> YUV pass is 4x faster with them). A library built so runs only on a CPU with those instructions, so its
# cache key names the CPU (`_cpu_id`) and a compiler that refuses the flag gets the portable build.
NATIVE_FLAGS = ("-march=native",)


def _cache_dir() -> Path:
    try:
        from capture.assets.locate import cache_dir
        return cache_dir() / "kernels"
    except Exception:  # noqa: BLE001 - the assets package is optional for rendering; fall back to the same default
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "capture" / "kernels"


@functools.lru_cache(maxsize=None)
def _compiler() -> tuple[str, str]:
    """(the C compiler, the first line of its --version): asked once per process, for every kernel's cache key."""
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise RuntimeError("no C compiler found (set $CC or install gcc)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return compiler, version


@functools.lru_cache(maxsize=None)
def _cpu_id() -> str:
    """What identifies this CPU's instruction set: its model and feature flags (Linux), else the platform's name
    of the processor; "" when neither is known (then no native build)."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [line for line in fh if line.startswith(("model name", "flags", "Features", "CPU part"))]
        if lines:
            return hashlib.sha256("".join(sorted(set(lines))).encode()).hexdigest()[:16]
    except OSError:
        pass
    return platform.processor()


class CompiledKernel:
    """One C source -> a ctypes library, compiled once per machine. functions: {name: (restype, argtypes)}.
    native: also build for this CPU's own instructions (`NATIVE_FLAGS`), falling back to the portable flags."""

    def __init__(self, name: str, source: str, functions: dict, flags=C_FLAGS, native: bool = False):
        self.name, self.source, self.functions, self.flags = name, source, dict(functions), tuple(flags)
        self.native = native
        self._lock = threading.Lock()
        self._lib: Optional[ctypes.CDLL] = None
        self._error: Optional[str] = None
        self.warned = False  # for callers that log the fallback once

    def error(self) -> Optional[str]:
        """None when the kernel is available (compiling it on first call), else why not."""
        with self._lock:
            if self._lib is None and self._error is None:
                try:
                    self._lib = self._load()
                except Exception as exc:  # noqa: BLE001 - any failure means: use the torch kernel, and say why
                    self._error = f"{type(exc).__name__}: {exc}"
            return self._error

    def function(self, name: str):
        """The compiled function `name`; raises when the kernel is unavailable."""
        error = self.error()
        if error:
            raise RuntimeError(f"{self.name} C kernel unavailable ({error})")
        return getattr(self._lib, name)

    def _load(self) -> ctypes.CDLL:
        if self.native and _cpu_id():
            try:
                return self._build(self.flags + NATIVE_FLAGS, _cpu_id())
            except RuntimeError:  # the compiler does not know the flag here: the portable build
                pass
        return self._build(self.flags, "")

    def _build(self, flags: tuple, cpu: str) -> ctypes.CDLL:
        compiler, version = _compiler()
        key = hashlib.sha256("\0".join([self.source, " ".join(flags), version, platform.machine(), cpu]).encode())
        target = _cache_dir() / f"{self.name}_{key.hexdigest()[:16]}.so"
        if not target.is_file():
            from capture.artifacts import atomic_write, build_lock

            with build_lock(target):
                if not target.is_file():
                    with tempfile.TemporaryDirectory(dir=target.parent) as tmp, atomic_write(target) as out:
                        src = Path(tmp) / f"{self.name}.c"
                        src.write_text(self.source)
                        proc = subprocess.run([compiler, *flags, str(src), "-o", str(out)],
                                              capture_output=True, text=True)
                        if proc.returncode != 0:
                            raise RuntimeError(f"{compiler} failed to build the {self.name} kernel:\n"
                                               f"{proc.stderr[-2000:]}")
        lib = ctypes.CDLL(str(target))
        for fname, (restype, argtypes) in self.functions.items():
            fn = getattr(lib, fname)
            fn.restype, fn.argtypes = restype, list(argtypes)
        return lib
