"""Files the project makes and reuses (ONNX graphs, INT8 graphs, engines, caches): hashes, JSON sidecars, and
the one way a file is written so that a reader never sees half of it.

A sidecar is `<artifact>.json` beside the artifact; it says what the artifact was made from, so that a stale one
is noticed (capture.export, capture.int8, capture.trt read and write them).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Iterator, Mapping, Union

import torch

PathLike = Union[str, Path]


class ExportError(RuntimeError):
    """Making or reading an artifact failed (exporter, checker, unknown network, missing or unreadable file)."""


# ----------------------------------------------------------------------------------------------------------
# Atomic writes


@contextlib.contextmanager
def atomic_write(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an exception the temporary file
    replaces `path` in one step (os.replace), otherwise it is removed and `path` is left as it was.

    suffix: appended to the temporary name, for writers that read the format from the extension.
    The temporary name is hidden and unique per process and thread, so concurrent writers never share one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp{suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} for {path}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def build_lock(path: PathLike) -> Iterator[None]:
    """Hold an exclusive lock named after `path` (`.<name>.lock` beside it) while `path` is built.

    Processes that need the same cached artifact at the same moment (two commands started together, test
    workers) then build it once: the others wait here and, checking again after the lock, find it made. The
    build itself must still write atomically (a crash leaves no half file, and the lock dies with its holder).
    Without `fcntl` (Windows) this does nothing: concurrent first uses then each build, which stays correct.

        if not ready(path):
            with build_lock(path):
                if not ready(path):
                    build(path)
    """
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from .console import notice

            notice(f"waiting for another process that is building {path.name}...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def copy_file_atomic(src: PathLike, dst: PathLike) -> None:
    """`src`'s bytes to `dst`, which is either left as it was or replaced whole."""
    import shutil

    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_json_atomic(path: PathLike, data: Mapping) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"  # serialise first: a bad value never truncates
    with atomic_write(path) as tmp:
        tmp.write_text(text)


# ----------------------------------------------------------------------------------------------------------
# Hashes


def file_sha256(path: PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_sha256(checkpoint: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """Content hash of a checkpoint held in memory (keys, dtypes, shapes, bytes), for packs without a file hash."""
    from capture.nets import NETWORK_NAMES

    digest = hashlib.sha256()
    for net in sorted(checkpoint):
        if net not in NETWORK_NAMES:
            continue
        for key in sorted(checkpoint[net]):
            # reshape: 0-d tensors cannot be viewed as bytes
            t = checkpoint[net][key].detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{net}/{key}/{t.dtype}/{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def pack_weights_sha256(pack) -> str:
    """The hash that keys every artifact made from `pack`: pack.meta['weights_sha256'] (sha256 of
    deca_model.tar), else a content hash of `pack.checkpoint`."""
    meta = getattr(pack, "meta", None) or {}
    return meta.get("weights_sha256") or checkpoint_sha256(pack.checkpoint)


# ----------------------------------------------------------------------------------------------------------
# Sidecars and where artifacts live


def sidecar_path(artifact: PathLike) -> Path:
    """`E_flame.onnx` -> `E_flame.onnx.json` (engines use the same rule)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def read_sidecar(path: PathLike) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"sidecar {path} is missing; re-run `python export_onnx.py`") from None
    except ValueError as exc:
        raise ExportError(f"sidecar {path} is not valid JSON ({exc}); delete it and re-export") from None


def onnx_cache_dir(weights_sha256: str) -> Path:
    """Per-weights folder for on-demand exports: <capture cache>/onnx/<first 16 hex of the weights hash>."""
    from capture.assets import cache_dir

    return cache_dir() / "onnx" / weights_sha256[:16]


def default_engines_dir() -> Path:
    """`$CAPTURE_ENGINES`, else `engines/` in the current folder (where export_onnx.py writes by default)."""
    return Path(os.environ.get("CAPTURE_ENGINES") or "engines")
