"""Compile engines/*.onnx into TensorRT engines (+ JSON sidecars) for this machine's GPU.

    capture-build-engines [--onnx-dir engines/] [--fp16|--fp32] [--max-batch 8] [--timing-cache PATH]
                          [--networks E_flame ...] [--force]

(also `python -m capture.build_engines ...` and, in a checkout, `python build_engines.py ...`)

Needs an NVIDIA GPU and TensorRT 10 from NVIDIA's index (see README, 'Engines'). Up-to-date engines are kept
(sidecar check: source ONNX hash, GPU, TensorRT version, precision) unless --force. Exit status: 0 ok,
1 build failure, 2 nothing to build or TensorRT/GPU missing; errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .console import add_version_argument, prog
from .export import ExportError
from .nets import NETWORK_NAMES as NETWORKS
from .trt import TensorRTError, TensorRTUnavailable


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog("capture-build-engines", "capture.build_engines"),
                                 description=__doc__.splitlines()[0])
    add_version_argument(ap)
    ap.add_argument("--onnx-dir", type=Path, default=Path("engines"),
                    help="folder of the .onnx files (default engines/)")
    precision = ap.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="FP16 (default)")
    precision.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="FP32")
    ap.set_defaults(precision="fp16")
    ap.add_argument("--max-batch", type=int, default=8, help="largest batch of the optimisation profile (default 8)")
    ap.add_argument("--opt-batch", type=int, default=1, help="batch TensorRT tunes for (default 1, live capture)")
    ap.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit (default 4 GiB)")
    ap.add_argument("--timing-cache", type=Path, default=None,
                    help="timing cache to load and update (default: <onnx-dir>/timing.cache)")
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS, metavar="NAME")
    ap.add_argument("--force", action="store_true", help="rebuild even when the engine is up to date")
    return ap.parse_args(argv)


class _Refused(Exception):
    """Nothing can be built: a one-line reason for the user (exit 2)."""


def run(args: argparse.Namespace) -> None:
    from .trt import BuildOptions, engine_path_for, ensure_engine, tensorrt_missing

    missing = tensorrt_missing()
    if missing:
        raise _Refused(missing)

    onnx_files = [args.onnx_dir / f"{name}.onnx" for name in args.networks]
    absent = [str(p) for p in onnx_files if not p.is_file()]
    if absent:
        raise _Refused(f"missing {', '.join(absent)}; run `capture-export --out {args.onnx_dir}` first "
                       "(`python export_onnx.py` in a checkout)")
    options = BuildOptions(precision=args.precision, max_batch=args.max_batch, opt_batch=args.opt_batch,
                           workspace_gib=args.workspace_gib,
                           timing_cache=args.timing_cache or args.onnx_dir / "timing.cache")
    for onnx_path in onnx_files:
        engine = engine_path_for(onnx_path)
        if args.force and engine.exists():
            engine.unlink()
        ensure_engine(onnx_path, engine, options, rebuild=True, log=print)
        print(f"{engine}: ok ({options.precision}, batch 1..{options.max_batch})", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except _Refused as exc:
        print(f"build_engines: {exc}", file=sys.stderr)
        return 2
    except TensorRTUnavailable as exc:
        print(f"build_engines: {exc}", file=sys.stderr)
        return 2
    except (TensorRTError, ExportError, OSError) as exc:
        print(f"build_engines: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
