"""Expression fidelity on real faces: do the avatar's mouth, eyes and brows move when the performer's do?

For each clip (the real clips of `real_clips.py`, or any `--video`) and each code source, this runs

    python -m capture.video CLIP -o OUT/<clip>_<source>.mp4 --layout avatar --assets demo --no-progress
        --codes OUT/<clip>_<source>_codes.npz [--codes-from SOURCE] [--duration S]

then measures five face signals (mouth opening and width, each eye's opening, brow height; see
`face_signals.py`, which uses MediaPipe and nothing of `capture`) on the performer's frames and on the
avatar's, frame i against frame i, and reports each signal's Pearson correlation over the frames where both
faces were found, the frames missed on either side, and the pipeline's FPS from its summary line. Writes
OUT/fidelity.json, a plot OUT/<clip>_<source>.png (performer and avatar curves, each z-scored) and the raw
signals OUT/<clip>_<source>_signals.npz (performer, avatar, and avatar_mesh from the second table).

A second table reads the same five signals off the avatar's own mesh (`avatar_geometry.py`: the saved codes
through FLAME, seen by DECA's orthographic camera; no renderer and no MediaPipe) against the same performer
signals: where it is much higher than the first, the capture is right and MediaPipe cannot read it on the
rendered avatar.

    python benchmarks/fidelity.py --clip pexels_emotions --max-seconds 5
    python benchmarks/fidelity.py --codes-from network landmarks --max-seconds 20 --out fidelity-out
    python benchmarks/fidelity.py --video my_face.mp4 --assets ~/deca-assets

When `capture.video` has no `--codes-from` flag, each clip is run once without it, labelled 'default'.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import avatar_geometry  # noqa: E402
import face_signals  # noqa: E402
import real_clips  # noqa: E402
from face_signals import SIGNALS, pearson  # noqa: E402

SUMMARY = re.compile(r"wrote (\d+) frames to .*?\(([\d.]+) FPS\)")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def codes_from_choices() -> list[str] | None:
    """The choices of `capture.video --codes-from`, [] if it takes a free value, None if there is no such flag."""
    r = subprocess.run([sys.executable, "-m", "capture.video", "--help"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
    return parse_codes_from(r.stdout + r.stderr)


def parse_codes_from(help_text: str) -> list[str] | None:
    if "--codes-from" not in help_text:
        return None
    m = re.search(r"--codes-from\s*\{([^}]*)\}", help_text)
    return [c.strip() for c in m.group(1).split(",")] if m else []


_NOISE = re.compile(r"^([WIE]\d{4} \d\d:\d\d:|WARNING: All log messages before absl|INFO: Created TensorFlow)")


def _quiet(text: str) -> list[str]:
    """The lines of a log without MediaPipe's / TensorFlow Lite's start-up chatter."""
    return [ln for ln in text.strip().splitlines() if ln.strip() and not _NOISE.match(ln)]


def run_video(src: Path, out: Path, source: str | None, assets: str, max_seconds: float | None,
              extra: list[str], timeout: float, codes: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "capture.video", str(src), "-o", str(out), "--layout", "avatar",
           "--assets", assets, "--no-progress"]
    if codes is not None:
        cmd += ["--codes", str(codes)]
    if source is not None:
        cmd += ["--codes-from", source]
    if max_seconds:
        cmd += ["--duration", f"{max_seconds:g}"]
    cmd += extra
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        rc, text = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = -1, f"timed out after {timeout:g} s\n{e.stdout or ''}{e.stderr or ''}"
    m = SUMMARY.search(text)
    return {
        "command": shlex.join(cmd), "returncode": rc, "wall_s": round(time.perf_counter() - t0, 2),
        "frames_written": int(m.group(1)) if m else None, "fps": float(m.group(2)) if m else None,
        "summary": m.group(0) if m else None,
        "log_tail": "\n".join(_quiet(text)[-8:]),
    }


def compare(performer: np.ndarray, avatar: np.ndarray) -> dict:
    n = min(len(performer), len(avatar))
    p, a = performer[:n], avatar[:n]
    corr, both = {}, {}
    for k, name in enumerate(SIGNALS):
        r, m = pearson(p[:, k], a[:, k])
        corr[name], both[name] = (None if math.isnan(r) else round(r, 4)), m
    finite = [v for v in corr.values() if v is not None]
    return {
        "corr": corr, "frames_both": both, "mean_corr": round(float(np.mean(finite)), 4) if finite else None,
        "missed_performer": int(np.isnan(p).any(1).sum()), "missed_avatar": int(np.isnan(a).any(1).sum()),
        "frames_compared": n,
    }


def _z(x: np.ndarray) -> np.ndarray:
    sd = np.nanstd(x)
    return (x - np.nanmean(x)) / sd if sd > 0 else x - np.nanmean(x)


def plot(path: Path, title: str, performer: np.ndarray, avatar: np.ndarray, fps: float | None, corr: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(performer), len(avatar))
    t = np.arange(n) / (fps or 1.0)
    fig, axes = plt.subplots(len(SIGNALS), 1, figsize=(11, 9), sharex=True)
    for k, (ax, name) in enumerate(zip(axes, SIGNALS)):
        ax.plot(t, _z(performer[:n, k]), lw=1.2, label="performer")
        ax.plot(t, _z(avatar[:n, k]), lw=1.2, label="avatar")
        r = corr.get(name)
        ax.set_ylabel(name, fontsize=9)
        ax.set_title(f"r = {r:.2f}" if r is not None else "r = n/a", fontsize=9, loc="right")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8, ncol=2)
    axes[-1].set_xlabel("seconds" if fps else "frame")
    fig.suptitle(title + "  (each curve z-scored)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(v, spec=".2f", width=6):
    return f"{'-':>{width}}" if v is None else f"{v:{width}{spec}}"


_SHORT = {"mouth_open": "mouth", "mouth_width": "width", "eye_left": "eyeL", "eye_right": "eyeR", "brow": "brow"}


def print_table(rows: list[dict]):
    head = (f"{'clip':18} {'source':10} " + " ".join(f"{_SHORT[s]:>6}" for s in SIGNALS)
            + f" {'mean':>6} {'miss P':>6} {'miss A':>6} {'frames':>6} {'FPS':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.get("error"):
            print(f"{r['clip']:18} {r['source']:10} ERROR: {r['error']}")
            continue
        print(f"{r['clip']:18} {r['source']:10} " + " ".join(_fmt(r["corr"][s]) for s in SIGNALS)
              + f" {_fmt(r['mean_corr'])} {r['missed_performer']:6d} {r['missed_avatar']:6d}"
              f" {r['frames_compared']:6d} {_fmt(r['fps'], '.1f')}")


def print_geometry_table(rows: list[dict]):
    """The avatar's own mesh (`avatar_geometry`) against the performer, for the runs that have it."""
    rows = [r for r in rows if r.get("geometry") or r.get("geometry_error")]
    if not rows:
        return
    print("\nthe avatar's own mesh (codes -> FLAME, neutral shape, orthographic; no renderer, no MediaPipe)")
    head = f"{'clip':18} {'source':10} " + " ".join(f"{_SHORT[s]:>6}" for s in SIGNALS) + f" {'mean':>6} {'frames':>6}"
    print(head)
    print("-" * len(head))
    for r in rows:
        g = r.get("geometry")
        if g is None:
            print(f"{r['clip']:18} {r['source']:10} ERROR: {r['geometry_error']}")
            continue
        print(f"{r['clip']:18} {r['source']:10} " + " ".join(_fmt(g["corr"][s]) for s in SIGNALS)
              + f" {_fmt(g['mean_corr'])} {g['frames_compared']:6d}")


def geometry_row(codes: Path, performer: np.ndarray, frames: int, assets: str) -> dict:
    """compare() of the performer's signals with those of the avatar's own mesh, from the run's codes file."""
    mesh = avatar_geometry.codes_signals(codes, assets)[:frames]
    res = compare(performer, mesh)
    return {"corr": res["corr"], "mean_corr": res["mean_corr"], "frames_compared": res["frames_compared"],
            "missed": res["missed_avatar"], "values": mesh}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", nargs="+", default=None, choices=list(real_clips.CLIPS),
                    help="real clips to run (default: all, unless --video is given)")
    ap.add_argument("--video", nargs="+", default=[], help="other performer videos")
    ap.add_argument("--codes-from", nargs="+", default=None, dest="sources",
                    help="code sources to compare (default: every choice capture.video offers)")
    ap.add_argument("--max-seconds", type=float, default=None, help="only the first S seconds (--duration)")
    ap.add_argument("--out", default="fidelity-out", help="output folder (default: fidelity-out)")
    ap.add_argument("--assets", default="demo", help="model pack for capture.video (default: demo)")
    ap.add_argument("--video-args", default="", help="more arguments for capture.video, one string")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per capture.video run")
    ap.add_argument("--cache-dir", default=None, help="where real clips are cached")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    choices = codes_from_choices()
    if choices is None:
        if args.sources and args.sources != ["default"]:
            print(f"note: capture.video has no --codes-from yet; running each clip once as 'default' "
                  f"instead of {', '.join(args.sources)}")
        sources: list[str | None] = [None]
    else:
        sources = args.sources or choices or ["auto"]
        bad = [s for s in sources if choices and s not in choices]
        if bad:
            ap.error(f"capture.video --codes-from takes {', '.join(choices)}, not {', '.join(bad)}")

    inputs: list[tuple[str, Path | None, str]] = []  # label, path, why missing
    clip_names = args.clip if args.clip is not None else ([] if args.video else list(real_clips.CLIPS))
    for name in clip_names:
        path = real_clips.fetch_clip(name, args.cache_dir)
        inputs.append((name, path, real_clips.last_error))
    for v in args.video:
        p = Path(v)
        inputs.append((p.stem, p if p.is_file() else None, f"{v}: no such file"))

    extra = shlex.split(args.video_args)
    rows = []
    for label, src, why in inputs:
        if src is None:
            for s in sources:
                rows.append({"clip": label, "source": s or "default", "error": f"no clip: {why}"})
            continue
        fps = face_signals.video_fps(src)
        limit = math.ceil(args.max_seconds * fps) + 1 if args.max_seconds and fps else None
        print(f"{label}: measuring the performer ({src}) ...", flush=True)
        performer = face_signals.measure_video(src, limit)
        for s in sources:
            tag = s or "default"
            dst = out / f"{label}_{tag}.mp4"
            print(f"{label} / {tag}: capture.video ...", flush=True)
            codes = out / f"{label}_{tag}_codes.npz"
            run = run_video(src, dst, s, args.assets, args.max_seconds, extra, args.timeout, codes)
            row = {"clip": label, "source": tag, "input": str(src), "output": str(dst), **run}
            if run["returncode"] != 0 or not dst.is_file():
                row["error"] = f"capture.video exited {run['returncode']}: {run['log_tail'].splitlines()[-1:]}"
                rows.append(row)
                continue
            avatar = face_signals.measure_video(dst)
            # With --duration the pipeline stops at a timestamp: the performer frames are the first ones.
            perf = performer.values[: avatar.frames]
            row.update(compare(perf, avatar.values))
            row["frames_out"] = avatar.frames
            if avatar.frames > len(performer.values):
                row["warning"] = f"avatar has {avatar.frames} frames, performer only {len(performer.values)} measured"
            elif run["frames_written"] is not None and run["frames_written"] != avatar.frames:
                row["warning"] = f"summary says {run['frames_written']} frames, the file decodes to {avatar.frames}"
            mesh = {}
            if codes.is_file():
                try:
                    geometry = geometry_row(codes, perf, avatar.frames, args.assets)
                    mesh = {"avatar_mesh": geometry.pop("values")}
                    row["geometry"] = geometry
                except Exception as exc:  # noqa: BLE001 - the video's own comparison stands without it
                    row["geometry_error"] = f"{type(exc).__name__}: {exc}"
            np.savez_compressed(out / f"{label}_{tag}_signals.npz", performer=perf, avatar=avatar.values,
                                signals=np.array(SIGNALS), **mesh)
            png = out / f"{label}_{tag}.png"
            plot(png, f"{label} / {tag}: performer vs avatar", perf, avatar.values, fps, row["corr"])
            row["plot"] = str(png)
            rows.append(row)

    print()
    print_table(rows)
    print_geometry_table(rows)
    for r in rows:
        if r.get("warning"):
            print(f"warning: {r['clip']} / {r['source']}: {r['warning']}")
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "assets": args.assets, "max_seconds": args.max_seconds,
        "codes_from_flag": choices is not None, "signals": list(SIGNALS), "runs": rows,
    }
    (out / "fidelity.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'fidelity.json'}")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
