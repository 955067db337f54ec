"""`python benchmarks/fit_speed.py`: the landmark fitter's cost per frame on one CPU core.

Landmarks come from a real clip when one is cached or fetchable (benchmarks/real_clips.py), else from the model
itself with noise and head motion; either way the fitter sees a moving, talking face frame after frame, the way
`--codes-from landmarks` runs it. The process is pinned to one core (where the OS allows) and numpy's BLAS to
one thread. Reported: median / p95 / max ms per frame for the per-frame solve, the identity updates (which run
at frames 1, 4, 12, 30, 60, 120, 240, then every 300) separately, and their cost spread over all frames.

    python benchmarks/fit_speed.py [--frames N] [--clip NAME|--synthetic] [--assets demo]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def real_landmarks(name: str, n: int):
    from capture.crop import FaceTracker, crop_transform
    from capture.sources import landmarks_to_crop_ndc
    from capture.stream.reader import VideoReader
    from real_clips import fetch_clip

    path = fetch_clip(name)
    if path is None:
        return None
    out = []
    with FaceTracker() as tracker:
        reader = VideoReader(str(path))
        for frame in reader:
            result = tracker.update(frame.image)
            if result.face is not None and result.face.landmarks is not None:
                out.append(landmarks_to_crop_ndc(result.face.landmarks, crop_transform(result.face.box)))
            if len(out) >= n:
                break
        reader.close()
    return out


def synthetic_landmarks(fitter, n: int):
    from capture.fit import FitState

    rng = np.random.default_rng(0)
    t = np.arange(n) / 25.0
    out = []
    for k in range(n):
        exp = np.zeros(fitter.b.n_exp)
        exp[:12] = 0.5 * np.sin(2 * np.pi * t[k] / (1.0 + 0.3 * np.arange(12)))
        state = FitState(np.array([0.1 * np.sin(t[k]), 0.4 * np.sin(0.7 * t[k]), 0.0]),
                         np.array([0.15 + 0.15 * np.sin(3 * t[k]), 0.0, 0.0]), exp, np.array([9.0, 0.0, 0.0]))
        out.append(fitter.project(state) + rng.normal(size=(68, 2)) * 0.004)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/fit_speed.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--clip", default="franck", help="a real clip of benchmarks/real_clips.py")
    parser.add_argument("--synthetic", action="store_true", help="landmarks projected from the model instead")
    parser.add_argument("--assets", default="demo")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        except OSError:
            pass
    import torch

    torch.set_num_threads(1)
    from capture.assets import open_pack
    from capture.fit import LandmarkBases, LandmarkFitter
    from capture.landmarks import LidCalibration
    from capture.sources import N_SHAPE_PERFORMER, fit_config

    pack = open_pack(args.assets)
    print(pack.label)
    bases = LandmarkBases.from_pack(pack)
    fitter = LandmarkFitter(bases, n_shape=N_SHAPE_PERFORMER, config=fit_config(pack))
    targets = None if args.synthetic else real_landmarks(args.clip, args.frames)
    source = f"real clip {args.clip}"
    if not targets:
        targets, source = synthetic_landmarks(fitter, args.frames), "landmarks projected from the model"
    lids = LidCalibration()
    frame_ms, update_ms = [], []
    for target in targets:
        # frames that carry a slice of an identity update (cfg.shape_slice reservoir frames each)
        updating = fitter._pending is not None or fitter._frames + 1 >= fitter._next_shape_update
        t0 = time.perf_counter()
        fitter.fit(lids(target))
        dt = (time.perf_counter() - t0) * 1e3
        (update_ms if updating else frame_ms).append(dt)
    f = np.array(frame_ms)
    u = np.array(update_ms) if update_ms else np.zeros(1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"{len(targets)} frames ({source}), {cores} core(s), {bases.n_exp} expression + "
          f"{fitter.n_shape} shape components, 68 landmarks")
    print(f"per frame: median {np.median(f):.2f} ms, p95 {np.percentile(f, 95):.2f} ms, max {f.max():.2f} ms")
    print(f"frames with identity-update work: {len(update_ms)} x median {np.median(u):.1f} ms (max {u.max():.1f}); "
          f"spread over all frames {(f.sum() + u.sum()) / len(targets):.2f} ms a frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
