"""Export E_flame, E_detail and D_detail to ONNX (+ JSON sidecars), check them, and compare with PyTorch.

    capture-export [--assets DIR|demo] [--out engines/] [--opset 18] [--batch dynamic|N]
                   [--networks E_flame E_detail D_detail] [--exporter dynamo|legacy]

(also `python -m capture.export_onnx ...` and, in a checkout, `python export_onnx.py ...`)

A network the backends already exported on demand into the per-weights cache, with what this run would write
(the same weights, batch mode, exporter and opset, this torch and onnx), is copied from there, then checked like
a fresh export (the output line says so).

Exit status: 0 on success, 1 when an export, the checker or the parity check fails, 2 for a bad pack or
arguments or an output folder that cannot be written. Errors are one line on stderr; an `--opset` the exporter
cannot honour is one warning line (the sidecar records the graph's real opset).
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from .artifacts import copy_file_atomic
from .assets import AssetError, open_pack
from .console import add_version_argument, prog
from .export import (
    DEFAULT_OPSET,
    EXPORTERS,
    GRAPHS,
    MAX_REL_ERR_FP32,
    ExportError,
    ExportResult,
    cached_export,
    check_parity,
    export_networks,
    pack_weights_sha256,
    parity_batches,
    parse_batch,
    read_sidecar,
    sidecar_path,
)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog("capture-export", "capture.export_onnx"),
                                 description=__doc__.splitlines()[0])
    add_version_argument(ap)
    ap.add_argument("--assets", default=None, help="model pack folder, or 'demo' (default: $CAPTURE_ASSETS, cache)")
    ap.add_argument("--out", type=Path, default=Path("engines"), help="output folder (default: engines/)")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    ap.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
    ap.add_argument("--networks", nargs="+", default=list(GRAPHS), choices=list(GRAPHS), metavar="NAME",
                    help=f"which networks (default: all of {' '.join(GRAPHS)})")
    ap.add_argument("--exporter", default="dynamo", choices=EXPORTERS, help="torch.onnx exporter (default dynamo)")
    ap.add_argument("--max-rel-err", type=float, default=MAX_REL_ERR_FP32,
                    help=f"fail when ONNX Runtime and PyTorch differ by more (default {MAX_REL_ERR_FP32:g})")
    return ap.parse_args(argv)


def check_out_dir(out: Path) -> None:
    """Fail in one line before any export when the output folder cannot be made or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"--out {out}: cannot create the folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, f"--out {out}: the folder is not writable (permission denied); choose another")


def copy_export(path: Path, out: Path) -> ExportResult:
    """A cached export (`cached_export`: what exporting now would write) and its sidecar, copied into `out`."""
    dst = out / path.name
    for src, to in ((path, dst), (sidecar_path(path), sidecar_path(dst))):
        copy_file_atomic(src, to)
    sidecar = read_sidecar(sidecar_path(dst))
    return ExportResult(sidecar["network"], dst, sidecar_path(dst), sidecar)


def run(args: argparse.Namespace) -> None:
    batch = parse_batch(args.batch)
    check_out_dir(args.out)
    pack = open_pack(args.assets)
    print(pack.label, flush=True)
    from .nets import build_networks

    networks = build_networks(pack.checkpoint)
    weights = pack_weights_sha256(pack)
    cached = {name: cached_export(name, weights, opset=args.opset, batch=batch, exporter=args.exporter)
              for name in args.networks}
    exported = export_networks(networks, args.out, weights_sha256=weights, synthetic=pack.synthetic,
                               names=[n for n in args.networks if cached[n] is None], opset=args.opset, batch=batch,
                               exporter=args.exporter)
    results = {r.name: r for r in exported}
    for name, path in cached.items():
        if path is not None:
            results[name] = copy_export(path, args.out)
    for result in (results[name] for name in args.networks):
        spec = GRAPHS[result.name]
        io = result.sidecar
        shapes = (f"{io['inputs'][0]['name']} {io['inputs'][0]['shape']} -> "
                  f"{io['outputs'][0]['name']} {io['outputs'][0]['shape']}")
        errors = check_parity(result.onnx_path, spec.module(networks), spec, parity_batches(batch),
                              tolerance=args.max_rel_err)
        worst = ", ".join(f"batch {b}: {e:.2e}" for b, e in errors.items())
        source = "  (the same export, from the cache)" if cached[result.name] is not None else ""
        print(f"{result.onnx_path}  {shapes}  checker ok  max rel err vs torch ({worst}){source}", flush=True)
        if "opset_requested" in io:
            print(f"export_onnx: warning: {result.name}: the {args.exporter} exporter cannot write opset"
                  f" {io['opset_requested']} for this graph; it is opset {io['opset']} (recorded in"
                  f" {result.sidecar_path.name}); try --exporter legacy for older opsets", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except AssetError as exc:
        print(f"export_onnx: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"export_onnx: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except OSError as exc:  # the output folder: read-only, missing parent, full disk
        print(f"export_onnx: error: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""),
              file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"export_onnx: error: {exc}; install the CPU requirements (pip install -r requirements-cpu.txt)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
