"""capture: real-time facial performance capture and retargeting on DECA/FLAME.

    from capture import Retargeter      # the Python API (capture.api); imported on first use

`import capture` stays cheap: torch, MediaPipe and the models load only when `Retargeter` is first touched.
"""
import os as _os

from ._version import __version__

# The per-frame numpy work (the landmark fit) is many small matrix products: OpenBLAS's thread pool makes
# them ~5x slower and fights the pipeline's stage threads for the cores. Set before numpy loads; a value
# the user exported wins.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

_LAZY = {"Retargeter": "capture.api", "Result": "capture.api"}

__all__ = ["Result", "Retargeter", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'capture' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
