"""Restricted unpickling for the two official files that are pickles: `generic_model.pkl` and
`landmark_embedding.npy`.

A model file never needs to run code, so nothing is imported by name except an allow-list of data
constructors. chumpy (which does not import on Python 3.11) and scipy.sparse are never imported either:
their objects are rebuilt as inert stand-ins that only keep their pickled state, and `to_numpy` turns them
into plain arrays. Anything else is refused with an error that names the class.
"""
from __future__ import annotations

import codecs
import collections
import io
import pickle
from typing import Any

import numpy as np


class ForeignClassError(pickle.UnpicklingError):
    """The pickle references a class or function outside the allow-list."""

    def __init__(self, module: str, name: str):
        self.qualified = f"{module}.{name}"
        super().__init__(f"references {self.qualified}, which a model file never needs; refusing to load it")


class PickledState:
    """An inert object standing in for a chumpy or scipy.sparse instance: it only records its state."""

    kind = "object"
    source = ""

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.kind} stand-in for {self.source}>"


def _standin_class(kind: str, module: str, name: str) -> type:
    return type(name, (PickledState,), {"kind": kind, "source": f"{module}.{name}"})


def _reconstruct_old_style(cls, base, state):
    """Python 2's copy_reg._reconstructor, limited to `object.__new__(stand-in)`."""
    if base is not object or not (isinstance(cls, type) and issubclass(cls, PickledState)):
        raise ForeignClassError("copy_reg", f"_reconstructor({cls!r}, {base!r})")
    return object.__new__(cls)


def _numpy_reconstruct(*args):
    return np.core.multiarray._reconstruct(*args)


_NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric"}
_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("__builtin__", "object"): object,
    ("copy_reg", "_reconstructor"): _reconstruct_old_style,
    ("copyreg", "_reconstructor"): _reconstruct_old_style,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
_SPARSE_FORMATS = {"csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for numpy data with chumpy / scipy.sparse stand-ins (and optionally torch tensors)."""

    def __init__(self, file, *, allow_torch: bool = False):
        super().__init__(file, encoding="latin1")
        self.allow_torch = allow_torch

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in _NUMPY_MODULES:
            if name == "_reconstruct":
                return _numpy_reconstruct
            if name == "scalar":
                return np.core.multiarray.scalar
            if name == "dtype":
                return np.dtype
        if module == "chumpy" or module.startswith("chumpy."):
            return _standin_class("chumpy", module, name)
        if module.startswith("scipy.sparse") and name in _SPARSE_FORMATS:
            return _standin_class("sparse", module, name)
        if self.allow_torch:
            found = _torch_class(module, name)
            if found is not None:
                return found
        raise ForeignClassError(module, name)


def _load_storage_from_bytes(data: bytes):
    """Replacement for torch.storage._load_from_bytes: the nested payload is loaded with weights_only."""
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _torch_class(module: str, name: str):
    import torch
    import torch._utils

    if (module, name) == ("torch.storage", "_load_from_bytes"):
        return _load_storage_from_bytes
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return torch._utils._rebuild_tensor_v2
    if module == "torch" and name.endswith("Storage") and isinstance(getattr(torch, name, None), type):
        return getattr(torch, name)
    return None


def restricted_loads(data: bytes, *, allow_torch: bool = False) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), allow_torch=allow_torch).load()


def to_numpy(value: Any) -> np.ndarray:
    """Plain ndarray from an ndarray, a chumpy stand-in (its `x`) or a scipy.sparse stand-in (densified)."""
    if isinstance(value, PickledState):
        if value.kind == "chumpy":
            state = value.state if isinstance(getattr(value, "state", None), dict) else {}
            if "x" not in state:
                raise ValueError(f"{value.source} object without a stored value 'x' (a derived chumpy expression)")
            return to_numpy(state["x"])
        if value.kind == "sparse":
            return _densify(value)
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _densify(value: PickledState) -> np.ndarray:
    state = value.state
    shape = tuple(int(s) for s in state.get("_shape", state.get("shape")))
    data = np.asarray(state["data"])
    fmt = value.source.rsplit(".", 1)[-1][:3]
    dense = np.zeros(shape, dtype=data.dtype)
    if fmt == "coo":
        if "coords" in state or "_coords" in state:
            rows, cols = state.get("coords", state.get("_coords"))
        else:
            rows, cols = state["row"], state["col"]
        np.add.at(dense, (np.asarray(rows), np.asarray(cols)), data)
        return dense
    indices, indptr = np.asarray(state["indices"]), np.asarray(state["indptr"])
    major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    if fmt == "csc":
        np.add.at(dense, (indices, major), data)
    else:
        np.add.at(dense, (major, indices), data)
    return dense


def read_object_npy(data: bytes) -> Any:
    """Read a `.npy` whose payload is a pickled object array, through the restricted unpickler.

    numpy's own `np.load(allow_pickle=True)` would run any code the file names; here only data constructors
    and torch tensors (rebuilt via `weights_only` loading) are admitted.
    """
    buf = io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    shape, _fortran, dtype = np.lib.format._read_array_header(buf, version)
    if dtype.hasobject:
        array = restricted_loads(buf.read(), allow_torch=True)
        if not isinstance(array, np.ndarray):
            raise pickle.UnpicklingError("the object payload is not an array")
        return array
    buf.seek(0)
    return np.load(buf, allow_pickle=False)


def write_pickle_with_chumpy_standins(obj_builder, path, protocol: int = 2) -> None:
    """Pickle what `obj_builder(Ch)` returns, where `Ch` is a class that pickles as `chumpy.ch.Ch`.

    Used to write FLAME-format files exactly as the official pickle looks (chumpy arrays with an `x` state)
    without chumpy installed: throw-away `chumpy` / `chumpy.ch` modules exist only while pickling.
    """
    import sys
    import types

    saved = {name: sys.modules.get(name) for name in ("chumpy", "chumpy.ch")}
    chumpy_mod, ch_mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:  # the attribute layout of chumpy.ch.Ch's pickled state
        def __init__(self, x):
            self.x = np.asarray(x, dtype=np.float64)
            self._dirty_vars = set()
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense = False
            self._make_sparse = False

    Ch.__module__, Ch.__qualname__, Ch.__name__ = "chumpy.ch", "Ch", "Ch"
    ch_mod.Ch = Ch
    chumpy_mod.ch = ch_mod
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy_mod, ch_mod
    try:
        payload = pickle.dumps(obj_builder(Ch), protocol=protocol)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    with open(path, "wb") as fh:
        fh.write(payload)

