"""`python benchmarks/jitter.py`: how much the avatar trembles when the performer holds still.

A still face: skimage's astronaut photo (a real face, public domain) as a 25 fps clip, every frame with fresh
sensor noise (Gaussian, sigma 3 levels) and H.264 compression, so that the face detector and the landmarks
see what a camera on a tripod gives. Each code source runs through `python -m capture.video ... --codes`;
the avatar's 68 landmarks are rebuilt from the saved codes with FLAME (the target's shape, the rendered
expression, jaw and head pose) and scaled to millimetres. Reported per run: the frame-to-frame landmark
motion (RMS over the 68 points, median and p95 over frames) and the spread around the mean face (RMS).

    python benchmarks/jitter.py [--frames N] [--runs "network --smooth" "landmarks" ...] [--assets demo]
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DEFAULT_RUNS = ("network", "network --smooth", "landmarks", "landmarks --smooth")


def still_clip(path: Path, frames: int, seed: int = 0) -> None:
    import av
    from skimage import data

    photo = np.asarray(data.astronaut(), np.float32)[:384, 64:448]  # 384 x 384 around the face
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = photo.shape[1], photo.shape[0], "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for _ in range(frames):
            noisy = np.clip(photo + rng.normal(0.0, 3.0, photo.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def landmarks_mm(codes_path: Path, assets: str) -> np.ndarray:
    """[N, 68, 3] avatar landmarks in mm from a --codes file (frames that passed through are dropped)."""
    import torch

    from capture.assets import open_pack
    from capture.flame import FLAME

    flame = FLAME(open_pack(assets))
    with np.load(codes_path) as data:
        shape, exp, pose = (torch.as_tensor(data[k], dtype=torch.float32) for k in ("shape", "exp", "pose"))
    keep = torch.isfinite(exp).all(1)
    with torch.no_grad():
        out = flame(shape[keep], exp[keep], pose[keep])
    return out.landmarks3d.numpy() * 1000.0


def measure(points: np.ndarray) -> dict:
    step = np.sqrt(np.mean(np.sum(np.diff(points, axis=0) ** 2, -1), -1))  # [N-1] RMS over landmarks
    spread = np.sqrt(np.mean(np.sum((points - points.mean(0)) ** 2, -1)))
    return {"frames": len(points), "step_median_mm": float(np.median(step)),
            "step_p95_mm": float(np.percentile(step, 95)), "spread_mm": float(spread)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/jitter.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS),
                        help="code source and extra capture.video flags per run, e.g. 'network --smooth'")
    parser.add_argument("--assets", default="demo")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="capture-jitter-") as tmp:
        clip = Path(tmp) / "still.mp4"
        still_clip(clip, args.frames)
        for k, run in enumerate(args.runs):
            source, *extra = shlex.split(run)
            codes = Path(tmp) / f"codes{k}.npz"
            cmd = [sys.executable, "-m", "capture.video", str(clip), "-o", str(Path(tmp) / f"out{k}.mp4"),
                   "--layout", "avatar", "--assets", args.assets, "--codes-from", source, "--codes", str(codes),
                   "--no-progress", *extra]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{run}: capture.video failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            rows.append((run, measure(landmarks_mm(codes, args.assets))))
    print(f"still face, {args.frames} frames (astronaut photo + sensor noise + H.264), avatar landmarks in mm")
    print(f"{'run':<24}{'frames':>8}{'step median':>13}{'step p95':>10}{'spread':>9}")
    for run, m in rows:
        print(f"{run:<24}{m['frames']:>8}{m['step_median_mm']:>13.3f}{m['step_p95_mm']:>10.3f}{m['spread_mm']:>9.3f}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
