"""ONNX export of DECA's three networks, the checker, the parity check against PyTorch, and the on-demand cache.

Every graph follows `capture.nets.GRAPHS` (tensor names and shapes; the backends read the same table). Each
`<name>.onnx` gets a `<name>.onnx.json` sidecar (capture.artifacts) that describes it (names, shapes, dtypes,
code layout, source-weights hash, file hash, exporter, opset, batch mode, synthetic flag). INT8 graphs made
from these are `capture.int8`'s.

Exporter choice: torch.onnx's dynamo exporter (`dynamo=True`, the default since torch 2.9). With
`dynamic_shapes` it gives the batch axis one symbolic name on input and output, checks the graph under that
symbol (the TorchScript exporter only traces one example batch), and it is the maintained path: the
TorchScript exporter warns that it is deprecated. Both were tried on these networks (torch 2.13): both match
PyTorch to ~5e-7 in ONNX Runtime; `exporter="legacy"` stays available as an explicit fallback.

Library functions raise (`ExportError`, `ParityError`); only the CLI turns them into exit codes.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from capture.artifacts import (
    ExportError,
    atomic_write,
    build_lock,
    default_engines_dir,
    file_sha256,
    onnx_cache_dir,
    pack_weights_sha256,
    read_sidecar,
    sidecar_path,
    write_json_atomic,
)
from capture.nets import CODE_LAYOUT, GRAPHS, NETWORK_NAMES, GraphSpec, Networks, graph_spec

# Names other modules have long imported from here (export_onnx.py, build_engines.py, capture.trt).
__all__ = [
    "DEFAULT_OPSET", "EXPORTERS", "GRAPHS", "MAX_REL_ERR_FP32", "SIDECAR_FORMAT", "ExportError", "ExportResult",
    "GraphSpec", "ParityError", "cached_export", "check_graph", "check_parity", "cpu_session", "default_engines_dir",
    "ensure_onnx", "export_graph", "export_networks", "file_sha256", "graph_io", "graph_spec", "layout_description",
    "make_sidecar", "onnx_cache_dir", "onnx_problem", "pack_weights_sha256", "parity_batches", "parse_batch",
    "read_sidecar", "relative_error", "sidecar_path", "write_json_atomic",
]

SIDECAR_FORMAT = "capture.onnx/1"
DEFAULT_OPSET = 18  # the dynamo exporter's native opset; TensorRT 10 and ONNX Runtime 1.17+ both read it
EXPORTERS = ("dynamo", "legacy")
MAX_REL_ERR_FP32 = 1e-4
BatchMode = Union[int, str]  # an int = fixed batch, "dynamic" = symbolic batch axis


class ParityError(ExportError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance."""


def _spec(name: str) -> GraphSpec:
    try:
        return graph_spec(name)
    except ValueError as exc:
        raise ExportError(str(exc)) from None


def parse_batch(text: Union[str, int]) -> BatchMode:
    """'dynamic' or a positive int (CLI form) -> BatchMode."""
    if isinstance(text, int) or (isinstance(text, str) and text.isdigit()):
        value = int(text)
        if value < 1:
            raise ExportError(f"batch must be >= 1 or 'dynamic', got {value}")
        return value
    if text == "dynamic":
        return "dynamic"
    raise ExportError(f"batch must be a positive integer or 'dynamic', got {text!r}")


# ----------------------------------------------------------------------------------------------------------
# Export


@contextlib.contextmanager
def _quiet_exporter():
    # The dynamo exporter logs one warning per torchvision op it cannot register (torchvision does not import
    # beside the CPU torch build) and prints progress lines; neither is actionable for these graphs.
    # onnxscript's version converter logs a full traceback when it cannot reach the requested opset and then
    # keeps the graph as it is; `graph_opset` reads what was really written, the CLI says so in one line.
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export", "torch._export",
             "onnxscript", "onnxscript.version_converter")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL if n.startswith("onnxscript") else logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def export_graph(module: nn.Module, spec: GraphSpec, path: Union[str, Path], *, opset: int = DEFAULT_OPSET,
                 batch: BatchMode = "dynamic", exporter: str = "dynamo") -> Path:
    """Write `module` (eval mode, CPU, float32) as a single-file ONNX graph with `spec`'s tensor names.

    batch: "dynamic" -> the batch axis is the symbol "batch" on input and output; int N -> fixed N.
    Raises ExportError naming the network and the exporter on failure.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    # Export with batch 2: torch.export specialises sizes 0 and 1, so a batch-1 example would pin the axis.
    example_batch = 2 if batch == "dynamic" else int(batch)
    example = spec.example(example_batch, torch.Generator().manual_seed(0))
    kwargs = dict(input_names=[spec.input_name], output_names=[spec.output_name], opset_version=opset)
    try:
        with atomic_write(path) as tmp, _quiet_exporter(), torch.no_grad():
            if exporter == "dynamo":
                dyn = None
                if batch == "dynamic":
                    dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},)
                program = torch.onnx.export(module, (example,), None, dynamo=True, dynamic_shapes=dyn,
                                            external_data=False, verbose=False, **kwargs)
                program.save(str(tmp), external_data=False)
            else:
                axes = None
                if batch == "dynamic":
                    axes = {spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}}
                torch.onnx.export(module, (example,), str(tmp), dynamo=False, dynamic_axes=axes,
                                  do_constant_folding=True, **kwargs)
    except Exception as exc:  # the exporters raise many types; re-raised with context
        raise ExportError(f"{spec.name}: torch.onnx.export ({exporter}, opset {opset}) failed: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return path


def check_graph(path: Union[str, Path]) -> None:
    """onnx.checker (full check, shape inference included); raises ExportError with the checker's message."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises ValidationError and friends
        raise ExportError(f"{path}: onnx.checker rejected the graph: {exc}") from exc


def graph_io(path: Union[str, Path]) -> dict[str, list[dict]]:
    """Inputs and outputs as stored in the ONNX file: {"inputs"|"outputs": [{name, shape, dtype}]}.

    Symbolic axes appear as their name (e.g. "batch"), fixed ones as ints.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def describe(values) -> list[dict]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            tt = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim]
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
            out.append({"name": v.name, "shape": shape, "dtype": dtype})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def layout_description() -> dict:
    """CODE_LAYOUT as JSON: order, sizes and [start, stop) slices of the 236-d code, plus the detail code and
    D_detail's latent order (jaw | exp | detail)."""
    lay = CODE_LAYOUT
    return {
        "names": list(lay.names),
        "sizes": dict(lay.sizes),
        "slices": {k: [s.start, s.stop] for k, s in lay.slices.items()},
        "total": lay.total,
        "light_shape": [lay.n_light // 3, 3],
        "n_detail": lay.n_detail,
        "detail_latent": {"jaw": [0, 3], "exp": [3, 3 + lay.n_exp],
                          "detail": [3 + lay.n_exp, 3 + lay.n_exp + lay.n_detail]},
    }


def graph_opset(path: Union[str, Path]) -> int:
    """The default-domain opset a saved graph really imports (the exporter may not honour the one asked for)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ExportError(f"{path}: the graph imports no default-domain (ai.onnx) opset")
    return int(versions[0])


def make_sidecar(spec: GraphSpec, onnx_path: Union[str, Path], *, weights_sha256: str, opset: int,
                 batch: BatchMode, exporter: str, synthetic: bool) -> dict:
    """Describe an exported graph; shapes, names and the opset are read back from the file itself (`opset` is
    what was asked for, kept as `opset_requested` when the graph has another)."""
    onnx_path = Path(onnx_path)
    io = graph_io(onnx_path)
    real_opset = graph_opset(onnx_path)
    extra = {} if real_opset == opset else {"opset_requested": opset}
    return {
        "format": SIDECAR_FORMAT,
        "network": spec.name,
        "file": onnx_path.name,
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "code_layout": layout_description(),
        "weights_sha256": weights_sha256,
        "onnx_sha256": file_sha256(onnx_path),
        "exporter": {"torch": torch.__version__, "mode": exporter, "onnx": _onnx_version()},
        "opset": real_opset,
        **extra,
        "batch": batch,
        "synthetic": bool(synthetic),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _onnx_version() -> str:
    import onnx

    return onnx.__version__


@dataclass
class ExportResult:
    name: str
    onnx_path: Path
    sidecar_path: Path
    sidecar: dict


def export_networks(networks: Networks, out_dir: Union[str, Path], *, weights_sha256: str, synthetic: bool,
                    names: Iterable[str] = NETWORK_NAMES, opset: int = DEFAULT_OPSET, batch: BatchMode = "dynamic",
                    exporter: str = "dynamo") -> list[ExportResult]:
    """Export each named network to `out_dir/<name>.onnx`, run onnx.checker, write `<name>.onnx.json`."""
    out_dir = Path(out_dir)
    results = []
    for name in names:
        spec = _spec(name)
        onnx_path = export_graph(spec.module(networks), spec, out_dir / f"{name}.onnx", opset=opset, batch=batch,
                                 exporter=exporter)
        check_graph(onnx_path)
        sidecar = make_sidecar(spec, onnx_path, weights_sha256=weights_sha256, opset=opset, batch=batch,
                               exporter=exporter, synthetic=synthetic)
        side = sidecar_path(onnx_path)
        write_json_atomic(side, sidecar)
        results.append(ExportResult(name, onnx_path, side, sidecar))
    return results


# ----------------------------------------------------------------------------------------------------------
# Parity with PyTorch


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    """max |value - reference| / max |reference| (scale-free; 0 for two zero arrays)."""
    value = np.asarray(value, np.float64)
    reference = np.asarray(reference, np.float64)
    if value.shape != reference.shape:
        raise ParityError(f"shape mismatch: {value.shape} vs reference {reference.shape}")
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    diff = float(np.max(np.abs(value - reference))) if reference.size else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def cpu_session(onnx_path: Union[str, Path]):
    """A plain ONNX Runtime CPU session, for checks (the tuned one lives in the onnxruntime backend)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def parity_batches(batch: BatchMode) -> tuple[int, ...]:
    """Batches to check: 1 and 3 for a dynamic graph, the fixed batch otherwise."""
    return (1, 3) if batch == "dynamic" else (int(batch),)


def check_parity(onnx_path: Union[str, Path], module: nn.Module, spec: GraphSpec, batches: Sequence[int] = (1, 3),
                 *, seed: int = 1234, tolerance: float = MAX_REL_ERR_FP32) -> dict[int, float]:
    """Run the graph in ONNX Runtime (CPU) and `module` in torch on fresh random inputs; {batch: rel err}.

    Raises ParityError naming the network, batch and error when any exceeds `tolerance`.
    """
    session = cpu_session(onnx_path)
    gen = torch.Generator().manual_seed(seed)
    errors = {}
    for b in batches:
        x = spec.example(b, gen)
        with torch.no_grad():
            reference = module.eval()(x).numpy()
        (value,) = session.run([spec.output_name], {spec.input_name: x.numpy()})
        errors[b] = relative_error(value, reference)
        if not errors[b] <= tolerance:
            raise ParityError(f"{spec.name}: ONNX Runtime differs from PyTorch at batch {b}: max relative error "
                              f"{errors[b]:.3g} > {tolerance:g} (fp32); the export is wrong, do not use {onnx_path}")
    return errors


# ----------------------------------------------------------------------------------------------------------
# Freshness and the on-demand cache (used by the onnxruntime / tensorrt backends)


def onnx_problem(onnx_path: Union[str, Path], sidecar: Optional[dict], weights_sha256: str) -> Optional[str]:
    """Why `onnx_path` cannot serve these weights (None = usable): missing file or sidecar, other weights,
    a file changed since export, a fixed batch, or another code layout."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        return f"{onnx_path} does not exist"
    if sidecar is None:
        return f"{sidecar_path(onnx_path)} is missing"
    if sidecar.get("format") != SIDECAR_FORMAT:
        return f"{sidecar_path(onnx_path)} has format {sidecar.get('format')!r}, expected {SIDECAR_FORMAT!r}"
    if sidecar.get("weights_sha256") != weights_sha256:
        return (f"{onnx_path.name} was exported from other weights (sha256 {str(sidecar.get('weights_sha256'))[:12]}"
                f"..., this pack {weights_sha256[:12]}...)")
    if sidecar.get("batch") != "dynamic":
        return f"{onnx_path.name} has a fixed batch {sidecar.get('batch')}; the backends need a dynamic batch"
    if sidecar.get("code_layout") != layout_description():
        return f"{onnx_path.name} was exported with another code layout"
    if file_sha256(onnx_path) != sidecar.get("onnx_sha256"):
        return f"{onnx_path.name} changed since it was exported (its sha256 no longer matches the sidecar)"
    return None


def cached_export(name: str, weights_sha256: str, *, opset: int = DEFAULT_OPSET, batch: BatchMode = "dynamic",
                  exporter: str = "dynamo") -> Optional[Path]:
    """The on-demand export of `name` in the per-weights cache (`ensure_onnx`) when it is what exporting now with
    these settings would write: fresh for these weights, the same batch mode, exporter and opset, made by this torch
    and onnx. None otherwise (then export)."""
    path = onnx_cache_dir(weights_sha256) / f"{name}.onnx"
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        sidecar = read_sidecar(side)
    except ExportError:
        return None
    made_by = {"torch": torch.__version__, "mode": exporter, "onnx": _onnx_version()}
    if (onnx_problem(path, sidecar, weights_sha256) is not None or sidecar.get("batch") != batch
            or sidecar.get("exporter") != made_by or sidecar.get("opset") != opset or "opset_requested" in sidecar):
        return None
    return path


def ensure_onnx(pack, name: str, *, engines_dir: Optional[Union[str, Path]] = None,
                networks: Optional[Networks] = None) -> Path:
    """A usable dynamic-batch `<name>.onnx` for `pack`: `engines_dir`'s copy when fresh, else one exported
    (and parity-checked) on demand into the per-weights cache folder, reused afterwards."""
    spec = _spec(name)
    weights = pack_weights_sha256(pack)
    candidates = [Path(engines_dir) if engines_dir is not None else default_engines_dir(), onnx_cache_dir(weights)]

    def fresh() -> Optional[Path]:
        for folder in candidates:
            path = folder / f"{name}.onnx"
            side = sidecar_path(path)
            sidecar = None
            if side.is_file():
                with contextlib.suppress(ExportError):  # an unreadable sidecar is reported as missing below
                    sidecar = read_sidecar(side)
            if onnx_problem(path, sidecar, weights) is None:
                return path
        return None

    found = fresh()
    if found is not None:
        return found
    with build_lock(candidates[-1] / f"{name}.onnx"):  # commands started together export it once
        found = fresh()
        if found is not None:
            return found
        if networks is None:
            from capture.nets import build_networks

            networks = build_networks(pack.checkpoint)
        (result,) = export_networks(networks, candidates[-1], weights_sha256=weights,
                                    synthetic=bool(pack.synthetic), names=[name])
        check_parity(result.onnx_path, spec.module(networks), spec, parity_batches("dynamic"))
    return result.onnx_path
