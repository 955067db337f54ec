"""ONNX export of DECA's three networks, their JSON sidecars, and the parity check against PyTorch.

One table (`GRAPHS`) names every exported graph, its input and output tensors and the `Networks` attribute it
comes from; the CLI (`export_onnx.py`), the sidecars, the on-demand export cache and the inference backends
all read it. Each `<name>.onnx` gets a `<name>.onnx.json` sidecar that describes it (names, shapes, dtypes,
code layout, source-weights hash, file hash, exporter, opset, batch mode, synthetic flag).

Exporter choice: torch.onnx's dynamo exporter (`dynamo=True`, the default since torch 2.9). With
`dynamic_shapes` it gives the batch axis one symbolic name on input and output, checks the graph under that
symbol (the TorchScript exporter only traces one example batch), and it is the maintained path: the
TorchScript exporter warns that it is deprecated. Both were tried on these networks (torch 2.13): both match
PyTorch to ~5e-7 in ONNX Runtime; `exporter="legacy"` stays available as an explicit fallback.

Library functions raise (`ExportError`, `ParityError`); only the CLI turns them into exit codes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from capture.nets import CODE_LAYOUT, DETAIL_LATENT, INPUT_SIZE, NETWORK_NAMES, UV_SIZE, Networks

SIDECAR_FORMAT = "capture.onnx/1"
DEFAULT_OPSET = 18  # the dynamo exporter's native opset; TensorRT 10 and ONNX Runtime 1.17+ both read it
EXPORTERS = ("dynamo", "legacy")
MAX_REL_ERR_FP32 = 1e-4
BatchMode = Union[int, str]  # an int = fixed batch, "dynamic" = symbolic batch axis


class ExportError(RuntimeError):
    """An export step failed (exporter, checker, unknown network, unreadable file)."""


class ParityError(ExportError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance."""


# ----------------------------------------------------------------------------------------------------------
# The table of graphs


@dataclass(frozen=True)
class GraphSpec:
    """One exported network: its tensors without the batch axis ([B, *input_shape] -> [B, *output_shape])."""

    name: str
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]
    attr: str  # attribute of `capture.nets.Networks`

    def module(self, networks: Networks) -> nn.Module:
        return getattr(networks, self.attr)

    def example(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A plausible random input [batch, *input_shape] float32: images in [0, 1], latents ~ N(0, 1)."""
        shape = (batch, *self.input_shape)
        if self.input_name == "image":
            return torch.rand(shape, generator=generator)
        return torch.randn(shape, generator=generator)


GRAPHS: dict[str, GraphSpec] = {
    "E_flame": GraphSpec("E_flame", "image", (3, INPUT_SIZE, INPUT_SIZE), "code", (CODE_LAYOUT.total,), "e_flame"),
    "E_detail": GraphSpec("E_detail", "image", (3, INPUT_SIZE, INPUT_SIZE), "detail", (CODE_LAYOUT.n_detail,),
                          "e_detail"),
    "D_detail": GraphSpec("D_detail", "latent", (DETAIL_LATENT,), "uv_z", (1, UV_SIZE, UV_SIZE), "d_detail"),
}
assert tuple(GRAPHS) == NETWORK_NAMES


def graph_spec(name: str) -> GraphSpec:
    if name not in GRAPHS:
        raise ExportError(f"unknown network {name!r}; expected one of {list(GRAPHS)}")
    return GRAPHS[name]


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
# Hashes and file names


def file_sha256(path: Union[str, Path], chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_sha256(checkpoint: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """Content hash of a checkpoint held in memory (keys, dtypes, shapes, bytes), for packs without a file hash."""
    digest = hashlib.sha256()
    for net in sorted(checkpoint):
        if net not in GRAPHS:
            continue
        for key in sorted(checkpoint[net]):
            t = checkpoint[net][key].detach().to("cpu").contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
            digest.update(f"{net}/{key}/{t.dtype}/{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def pack_weights_sha256(pack) -> str:
    """The hash that keys every artifact made from `pack`: pack.meta['weights_sha256'] (sha256 of
    deca_model.tar), else a content hash of `pack.checkpoint`."""
    meta = getattr(pack, "meta", None) or {}
    return meta.get("weights_sha256") or checkpoint_sha256(pack.checkpoint)


def sidecar_path(artifact: Union[str, Path]) -> Path:
    """`E_flame.onnx` -> `E_flame.onnx.json` (engines use the same rule)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def read_sidecar(path: Union[str, Path]) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"sidecar {path} is missing; re-run `python export_onnx.py`") from None
    except ValueError as exc:
        raise ExportError(f"sidecar {path} is not valid JSON ({exc}); delete it and re-export") from None


def write_json_atomic(path: Union[str, Path], data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    kwargs = dict(input_names=[spec.input_name], output_names=[spec.output_name], opset_version=opset)
    try:
        with _quiet_exporter(), torch.no_grad():
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
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - the exporters raise many types; re-raised with context
        raise ExportError(f"{spec.name}: torch.onnx.export ({exporter}, opset {opset}) failed: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def check_graph(path: Union[str, Path]) -> None:
    """onnx.checker (full check, shape inference included); raises ExportError with the checker's message."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError and friends
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
        spec = graph_spec(name)
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


def onnx_cache_dir(weights_sha256: str) -> Path:
    """Per-weights folder for on-demand exports: <capture cache>/onnx/<first 16 hex of the weights hash>."""
    from capture.assets import cache_dir

    return cache_dir() / "onnx" / weights_sha256[:16]


def default_engines_dir() -> Path:
    """`$CAPTURE_ENGINES`, else `engines/` in the current folder (where export_onnx.py writes by default)."""
    return Path(os.environ.get("CAPTURE_ENGINES") or "engines")


def ensure_onnx(pack, name: str, *, engines_dir: Optional[Union[str, Path]] = None,
                networks: Optional[Networks] = None) -> Path:
    """A usable dynamic-batch `<name>.onnx` for `pack`: `engines_dir`'s copy when fresh, else one exported
    (and parity-checked) on demand into the per-weights cache folder, reused afterwards."""
    spec = graph_spec(name)
    weights = pack_weights_sha256(pack)
    candidates = [Path(engines_dir) if engines_dir is not None else default_engines_dir(), onnx_cache_dir(weights)]
    for folder in candidates:
        path = folder / f"{name}.onnx"
        side = sidecar_path(path)
        sidecar = None
        if side.is_file():
            with contextlib.suppress(ExportError):  # an unreadable sidecar is reported as missing below
                sidecar = read_sidecar(side)
        if onnx_problem(path, sidecar, weights) is None:
            return path
    if networks is None:
        from capture.nets import build_networks

        networks = build_networks(pack.checkpoint)
    (result,) = export_networks(networks, candidates[-1], weights_sha256=weights, synthetic=bool(pack.synthetic),
                                names=[name])
    check_parity(result.onnx_path, spec.module(networks), spec, parity_batches("dynamic"))
    return result.onnx_path


# ----------------------------------------------------------------------------------------------------------
# INT8 (static quantisation with ONNX Runtime's tools; CPU inference)

INT8_FORMAT = "capture.onnx-int8/1"


def calibration_sha256(calibration: np.ndarray) -> str:
    data = np.ascontiguousarray(calibration, dtype=np.float32)
    return hashlib.sha256(repr(data.shape).encode() + data.tobytes()).hexdigest()


def quantize_int8(src: Union[str, Path], dst: Union[str, Path], calibration: np.ndarray, spec: GraphSpec, *,
                  reduce_range: bool = False) -> dict:
    """Static INT8 quantisation of a float32 graph: QDQ format, int8 per-channel weights, uint8 activations
    with MinMax ranges over `calibration` [N, *spec.input_shape] (e.g. face crops for E_flame).

    On CPUs with AVX-512 VNNI / AMX ONNX Runtime runs the result about 3x faster than float32 (E_flame).
    reduce_range: 7-bit weights, for x86 CPUs without VNNI, whose u8 x s8 instructions can saturate.
    Writes `dst` and its sidecar; returns the sidecar. The accuracy cost is measured by `int8_error`.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 1 + len(spec.input_shape) or tuple(calibration.shape[1:]) != spec.input_shape:
        raise ExportError(f"{spec.name}: calibration must be [N, {', '.join(map(str, spec.input_shape))}], "
                          f"got {tuple(calibration.shape)}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._items = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {spec.input_name: item}

    dst.parent.mkdir(parents=True, exist_ok=True)
    pre = dst.with_name(f".{dst.name}.{os.getpid()}.pre.onnx")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    logger = logging.getLogger()
    level = logger.level
    try:
        logger.setLevel(logging.ERROR)  # the quantiser logs a line per skipped tensor
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        os.replace(tmp, dst)
    except Exception as exc:  # noqa: BLE001 - the quantiser raises many types; re-raised with context
        raise ExportError(f"{spec.name}: INT8 quantisation of {src} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        logger.setLevel(level)
        for leftover in (pre, tmp, pre.with_name(pre.name + ".data")):
            if leftover.exists():
                leftover.unlink()
    sidecar = {
        "format": INT8_FORMAT,
        "network": spec.name,
        "file": dst.name,
        "precision": "int8",
        "method": {"format": "QDQ", "weights": "int8 per-channel", "activations": "uint8 per-tensor",
                   "calibration": "MinMax", "reduce_range": bool(reduce_range)},
        "source_onnx_sha256": file_sha256(src),
        "calibration": {"count": int(len(calibration)), "sha256": calibration_sha256(calibration)},
        "onnx_sha256": file_sha256(dst),
        "onnxruntime": _ort_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(sidecar_path(dst), sidecar)
    return sidecar


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def ensure_int8_onnx(pack, name: str, calibration: np.ndarray, *, engines_dir: Optional[Union[str, Path]] = None,
                     reduce_range: bool = False) -> Path:
    """An INT8 `<name>.int8-<key>.onnx` next to the float32 graph of `ensure_onnx`, keyed by that graph's and
    the calibration's hashes; quantised on first use, reused while both are unchanged."""
    spec = graph_spec(name)
    fp32 = ensure_onnx(pack, name, engines_dir=engines_dir)
    fp32_sha = file_sha256(fp32)
    key = hashlib.sha256(f"{fp32_sha}/{calibration_sha256(calibration)}/{reduce_range}".encode()).hexdigest()[:12]
    dst = fp32.parent / f"{name}.int8-{key}.onnx"
    side = sidecar_path(dst)
    if dst.is_file() and side.is_file():
        with contextlib.suppress(ExportError):
            sidecar = read_sidecar(side)
            if sidecar.get("source_onnx_sha256") == fp32_sha and sidecar.get("onnx_sha256") == file_sha256(dst):
                return dst
    quantize_int8(fp32, dst, calibration, spec, reduce_range=reduce_range)
    return dst


def int8_error(fp32_path: Union[str, Path], int8_path: Union[str, Path], inputs: np.ndarray,
               spec: GraphSpec) -> dict:
    """Output error of the INT8 graph against its float32 source on `inputs` [N, ...] (one at a time).

    Returns {"max_abs", "rms", "reference_rms", "rel_max"} over all outputs, plus per-slice figures for E_flame's
    code ({"slices": {name: {"max_abs", "rms", "reference_rms"}}}).
    """
    a, b = cpu_session(fp32_path), cpu_session(int8_path)
    ref, got = [], []
    for i in range(len(inputs)):
        x = np.ascontiguousarray(inputs[i:i + 1], dtype=np.float32)
        ref.append(a.run([spec.output_name], {spec.input_name: x})[0])
        got.append(b.run([spec.output_name], {spec.input_name: x})[0])
    ref, got = np.concatenate(ref).astype(np.float64), np.concatenate(got).astype(np.float64)

    def figures(r: np.ndarray, g: np.ndarray) -> dict:
        return {"max_abs": float(np.abs(g - r).max()), "rms": float(np.sqrt(((g - r) ** 2).mean())),
                "reference_rms": float(np.sqrt((r ** 2).mean()))}

    out = figures(ref, got)
    out["rel_max"] = relative_error(got, ref)
    if spec.name == "E_flame":
        out["slices"] = {k: figures(ref[:, s], got[:, s]) for k, s in CODE_LAYOUT.slices.items()}
    return out
