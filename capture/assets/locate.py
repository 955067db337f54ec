"""Where model packs are looked for: `--assets DIR`, then `$CAPTURE_ASSETS`, then the per-user cache dir.

`--assets demo` (or `CAPTURE_ASSETS=demo`) selects the synthetic demo pack, generated on first use into the
cache dir.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from .official import PACK_FILES, AssetError, load_pack
from .pack import ModelPack

DEMO = "demo"
DEMO_PACK_VERSION = 7


def cache_dir() -> Path:
    """`$CAPTURE_CACHE`, else `$XDG_CACHE_HOME/capture`, else `~/.cache/capture`."""
    if os.environ.get("CAPTURE_CACHE"):
        return Path(os.environ["CAPTURE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "capture"


def default_pack_dir() -> Path:
    return cache_dir() / "assets"


def demo_pack_dir(seed: int = 0) -> Path:
    return cache_dir() / f"demo-pack-v{DEMO_PACK_VERSION}-seed{seed}"


def ensure_demo_pack(seed: int = 0) -> Path:
    """The demo pack in the cache, written once (atomically, so a crash never leaves half a pack; under a
    build lock, so that commands started together build it once)."""
    target = demo_pack_dir(seed)
    if (target / "pack.json").is_file():
        return target
    from ..artifacts import build_lock

    with build_lock(target):
        if not (target / "pack.json").is_file():
            _write_demo_pack(target, seed)
    return target


def _write_demo_pack(target: Path, seed: int) -> None:
    from ..console import notice
    from .demo import write_demo_pack

    notice(f"building the synthetic demo pack (once, 30-60 s; cached in {target})...")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".demo-pack-", dir=target.parent))
    try:
        write_demo_pack(scratch, seed=seed)
        try:
            scratch.rename(target)
        except OSError:  # another process won the race (a platform without build locks)
            if not (target / "pack.json").is_file():
                raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def resolve_pack_dir(assets: Optional[str] = None) -> Path:
    """The folder to load, by priority; raises AssetError naming every file when none is configured."""
    choice = assets or os.environ.get("CAPTURE_ASSETS")
    if choice == DEMO:
        return ensure_demo_pack()
    if choice:
        path = Path(choice).expanduser()
        if not path.is_dir():
            source = "--assets" if assets else "CAPTURE_ASSETS"
            raise AssetError([f"{source} points to {path}, which is not a folder"])
        return path
    fallback = default_pack_dir()
    if fallback.is_dir() and any(fallback.iterdir()):
        return fallback
    lines = [f"{f.name}: {f.role} -- {f.source}" for f in PACK_FILES if f.required]
    lines.append(f"put them in one folder and pass --assets DIR, set CAPTURE_ASSETS, or copy them to {fallback}")
    lines.append("to try the tool without them: --assets demo (a synthetic demo pack, generated locally)")
    raise AssetError(lines, header="no model pack found; the official files are:")


def open_pack(assets: Optional[str] = None) -> ModelPack:
    return load_pack(resolve_pack_dir(assets))
