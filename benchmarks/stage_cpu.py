#!/usr/bin/env python3
"""CPU time per frame of each step of the product path, one frame at a time (no pipeline overlap).

    python benchmarks/stage_cpu.py [--frames N] [--backend onnxruntime] [--codes-from landmarks] [--size 640x360]

On a shared machine wall-clock FPS moves with the neighbours' load; a thread's CPU time much less. Each step
(fit, LBS, D_detail, rasterize, shading, composite: the steps `StepTimes` names) is timed with its thread's
CPU clock; "crop" and "encode" also with the process clock, because MediaPipe and x264 work in threads of
their own. Prints median and mean ms per step and the process CPU ms per frame over the run (decoding
excluded: the frames are decoded before). Same session, engines and clip as benchmarks/fps.py.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from capture import fps


class ThreadCpuTimes:
    """A `StepTimes` stand-in that records each step's thread CPU time (seconds)."""

    def __init__(self):
        self.samples: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.thread_time()
        try:
            yield
        finally:
            self.add(name, time.thread_time() - start)

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--codes-from", default="landmarks", choices=("auto", "network", "landmarks", "hybrid"))
    parser.add_argument("--size", default="640x360")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bench_args = fps.parse_args(["--frames", str(args.frames), "--no-eager", "--backends", args.backend,
                                 "--codes-from", args.codes_from, "--size", args.size, "--quiet"])
    bench = fps.Bench(bench_args, lambda text: None)
    engines = fps.make_engines(args.backend, bench.pack, bench.device, bench_args, bench.calibration, bench.codes_from)
    frames = list(bench.frames(args.frames))
    times = ThreadCpuTimes()
    with tempfile.TemporaryDirectory() as tmp:
        warm = bench.session(engines)
        for frame in frames[:3]:
            warm.infer(warm.crop(frame))
        warm.close()
        session = bench.session(engines, times=times)
        writer = bench.writer(Path(tmp), session, "cpu")
        start = time.process_time()
        for frame in frames:
            wall, proc = time.thread_time(), time.process_time()
            item = session.crop(frame)
            times.add("crop (process)", time.process_time() - proc)
            result = session.render_codes(session.detail_codes(session.infer_codes(item)))
            proc = time.process_time()
            writer.write(result.picture, result.frame.pts, result.frame.time_base)
            times.add("encode (process)", time.process_time() - proc)
            times.add("frame (thread)", time.thread_time() - wall)
        total = time.process_time() - start
        writer.close()
        session.close()
    print(f"{args.frames} frames {args.size}, codes from {bench.codes_from}, {args.backend}: "
          f"process CPU {1e3 * total / args.frames:.1f} ms/frame, D_detail reused {session.renderer.detail_reused}")
    for name, values in times.samples.items():
        ms = np.asarray(values) * 1e3
        print(f"  {name:18s} median {np.median(ms):6.2f}  mean {ms.mean():6.2f} ms  (n={ms.size})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
