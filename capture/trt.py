"""TensorRT engine building from the exported ONNX graphs, engine sidecars, and staleness rules.

Building follows TensorRT's own samples: parse (every parser error listed), configure (memory pool, FP16, one
optimisation profile over the batch, timing cache), build a serialised plan, then write it with a sidecar
(GPU, compute capability, TensorRT version, precision, source ONNX hash, shapes and profile). An engine only
runs on the GPU model and TensorRT version it was built with, so `engine_status` decides, without TensorRT,
whether an engine file may be used.

`tensorrt` is imported lazily (it is absent on CPU machines); `tensorrt_missing()` says what is missing and how
to install it. Library functions raise; `build_engines.py` turns errors into exit codes.
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from capture.artifacts import (
    ExportError,
    file_sha256,
    read_sidecar,
    sidecar_path,
    write_bytes_atomic,
    write_json_atomic,
)

ENGINE_FORMAT = "capture.engine/1"
INSTALL_HINT = ("pip install tensorrt-cu12 --extra-index-url https://pypi.nvidia.com "
                "(tensorrt-cu13 for CUDA 13; see README, 'Engines')")
PRECISIONS = ("fp16", "fp32")


class TensorRTError(RuntimeError):
    """TensorRT is missing, parsing/building failed, or an engine cannot be used."""


class TensorRTUnavailable(TensorRTError):
    """tensorrt is not installed or there is no CUDA GPU."""


class StaleEngineError(TensorRTError):
    """An engine was built from another ONNX file, for another GPU or with another TensorRT."""


# ----------------------------------------------------------------------------------------------------------
# What is available


def tensorrt_missing() -> Optional[str]:
    """None when TensorRT can build and run here, else one sentence naming what is missing and the fix.

    Checks the tensorrt package before torch's CUDA so that a CPU machine answers without importing torch.
    """
    if importlib.util.find_spec("tensorrt") is None:
        return f"TensorRT is not installed (no Python module 'tensorrt'); install it on a GPU machine: {INSTALL_HINT}"
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install raises OSError/ImportError/...; reported as such
        return (f"the 'tensorrt' module is installed but does not import ({type(exc).__name__}: {exc}); "
                f"reinstall: {INSTALL_HINT}")
    import torch

    if not torch.cuda.is_available():
        return ("no CUDA GPU is visible (torch.cuda.is_available() is False): TensorRT engines are built on and for "
                "a specific NVIDIA GPU; install a CUDA build of torch and run on the GPU machine")
    return None


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of a CUDA device, from torch."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def tensorrt_version() -> str:
    import tensorrt as trt

    return trt.__version__


def engine_path_for(onnx_path: Union[str, Path]) -> Path:
    """`engines/E_flame.onnx` -> `engines/E_flame.engine`."""
    return Path(onnx_path).with_suffix(".engine")


# ----------------------------------------------------------------------------------------------------------
# Staleness (pure: no TensorRT, no GPU)


@dataclass(frozen=True)
class EngineStatus:
    """`ok` or `stale` with a reason a user can act on."""

    ok: bool
    reason: str = ""

    def __str__(self) -> str:
        return "ok" if self.ok else f"stale({self.reason})"


def engine_status(engine_sidecar: Optional[dict], onnx_path: Union[str, Path], gpu_name: str, trt_version: str,
                  *, precision: Optional[str] = None, onnx_sha256: Optional[str] = None) -> EngineStatus:
    """May an engine described by `engine_sidecar` be used here for `onnx_path`?

    Stale when: no sidecar, another sidecar format, the ONNX file is missing or its sha256 differs from the
    one the engine was built from, the GPU name or TensorRT version differ, or (if given) the precision
    differs. `onnx_sha256` skips hashing the file when the caller already knows it.
    """
    if engine_sidecar is None:
        return EngineStatus(False, "the engine has no sidecar, so its origin is unknown")
    if engine_sidecar.get("format") != ENGINE_FORMAT:
        return EngineStatus(False, f"sidecar format {engine_sidecar.get('format')!r}, expected {ENGINE_FORMAT!r}")
    onnx_path = Path(onnx_path)
    if onnx_sha256 is None:
        if not onnx_path.is_file():
            return EngineStatus(False, f"its source {onnx_path} does not exist")
        onnx_sha256 = file_sha256(onnx_path)
    if engine_sidecar.get("onnx_sha256") != onnx_sha256:
        return EngineStatus(False, f"{onnx_path.name} changed since the engine was built (ONNX sha256 "
                                   f"{str(engine_sidecar.get('onnx_sha256'))[:12]}... -> {onnx_sha256[:12]}...)")
    if engine_sidecar.get("gpu") != gpu_name:
        return EngineStatus(False, f"built for GPU {engine_sidecar.get('gpu')!r}, this is {gpu_name!r}")
    if engine_sidecar.get("tensorrt") != trt_version:
        return EngineStatus(False, f"built with TensorRT {engine_sidecar.get('tensorrt')}, this is {trt_version}")
    if precision is not None and engine_sidecar.get("precision") != precision:
        return EngineStatus(False, f"built in {engine_sidecar.get('precision')}, {precision} requested")
    return EngineStatus(True)


def read_engine_sidecar(engine_path: Union[str, Path]) -> Optional[dict]:
    """The engine's sidecar, or None when it is missing or unreadable (both mean: origin unknown)."""
    side = sidecar_path(engine_path)
    if not side.is_file():
        return None
    try:
        return read_sidecar(side)
    except ExportError:
        return None


# ----------------------------------------------------------------------------------------------------------
# Building: parse, configure, build, serialise


@dataclass
class BuildOptions:
    """How to build. `max_batch` bounds the optimisation profile (min 1, opt `opt_batch`, max `max_batch`)."""

    precision: str = "fp16"
    max_batch: int = 8
    opt_batch: int = 1  # live capture runs one frame at a time
    workspace_gib: float = 4.0
    timing_cache: Optional[Path] = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise TensorRTError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise TensorRTError(f"need 1 <= opt_batch ({self.opt_batch}) <= max_batch ({self.max_batch})")


@dataclass
class ParsedNetwork:
    """Builder, network and parser kept together: the network does not outlive its builder."""

    builder: object
    network: object
    parser: object
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    profile: dict = field(default_factory=dict)  # {input name: {"min"|"opt"|"max": shape}}, set by configure


def _logger():
    import tensorrt as trt

    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


_TRT_LOGGER = None


def _tensor_info(tensor) -> dict:
    return {"name": tensor.name, "shape": [int(d) for d in tensor.shape], "dtype": str(tensor.dtype).split(".")[-1]}


def parse_onnx(onnx_path: Union[str, Path]) -> ParsedNetwork:
    """Parse an ONNX file into a TensorRT network; raises TensorRTError listing every parser error."""
    import tensorrt as trt

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise TensorRTError(f"{onnx_path} does not exist; run `python export_onnx.py` first")
    builder = trt.Builder(_logger())
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode, the flag is gone
    parser = trt.OnnxParser(network, _logger())
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            errors.append(f"[{i}] {err.code()} at node {err.node()}: {err.desc()}")
        raise TensorRTError(f"TensorRT could not parse {onnx_path} ({parser.num_errors} errors): " + "; ".join(errors))
    parsed = ParsedNetwork(builder, network, parser)
    parsed.inputs = [_tensor_info(network.get_input(i)) for i in range(network.num_inputs)]
    parsed.outputs = [_tensor_info(network.get_output(i)) for i in range(network.num_outputs)]
    return parsed


def _load_timing_cache(config, path: Optional[Path]):
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    # ignore_mismatch=False: a cache from another GPU/TensorRT is rejected loudly rather than half used
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise TensorRTError(f"timing cache {path} does not fit this GPU/TensorRT; delete it and build again")
    return cache


def configure(parsed: ParsedNetwork, options: BuildOptions):
    """Builder config: workspace pool, precision, one batch profile per input, timing cache."""
    import tensorrt as trt

    builder = parsed.builder
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    if options.precision == "fp16":
        # platform_has_fast_fp16 is deprecated in late TensorRT 10 releases; absent means every supported GPU has it.
        if not getattr(builder, "platform_has_fast_fp16", True):
            # Never drop to fp32 silently: the user asked for fp16 and should choose.
            raise TensorRTError("this GPU has no fast FP16; build with --fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for info in parsed.inputs:
        rest = tuple(info["shape"][1:])
        if any(d < 0 for d in rest):
            raise TensorRTError(f"input {info['name']} {info['shape']}: only the batch axis may be dynamic")
        fixed = info["shape"][0]  # >= 0 for a fixed-batch export: the profile is that batch
        lo, opt, hi = (fixed, fixed, fixed) if fixed >= 0 else (1, options.opt_batch, options.max_batch)
        shapes = {"min": [lo, *rest], "opt": [opt, *rest], "max": [hi, *rest]}
        profile.set_shape(info["name"], shapes["min"], shapes["opt"], shapes["max"])
        parsed.profile[info["name"]] = shapes
    config.add_optimization_profile(profile)
    _load_timing_cache(config, options.timing_cache)
    return config


def build_serialized(parsed: ParsedNetwork, config) -> bytes:
    """Build the plan; raises TensorRTError when TensorRT returns nothing (its logger printed why)."""
    plan = parsed.builder.build_serialized_network(parsed.network, config)
    if plan is None:
        raise TensorRTError("TensorRT failed to build the engine (see the TensorRT messages above)")
    return bytes(plan)


def save_timing_cache(config, path: Optional[Path]) -> None:
    if path is None:
        return
    write_bytes_atomic(path, bytes(config.get_timing_cache().serialize()))


def make_engine_sidecar(*, network: str, onnx_path: Path, onnx_sha256: str, gpu: str, compute_capability: str,
                        trt_version: str, options: BuildOptions, inputs: list[dict], outputs: list[dict],
                        profile: dict, build_seconds: float) -> dict:
    onnx_side = sidecar_path(onnx_path)
    source = read_sidecar(onnx_side) if onnx_side.is_file() else {}
    return {
        "format": ENGINE_FORMAT,
        "network": network,
        "onnx": onnx_path.name,
        "onnx_sha256": onnx_sha256,
        "weights_sha256": source.get("weights_sha256"),
        "synthetic": source.get("synthetic"),
        "code_layout": source.get("code_layout"),
        "gpu": gpu,
        "compute_capability": compute_capability,
        "tensorrt": trt_version,
        "precision": options.precision,
        "inputs": inputs,
        "outputs": outputs,
        "profile": {
            "min_batch": min(s["min"][0] for s in profile.values()),
            "opt_batch": min(s["opt"][0] for s in profile.values()),
            "max_batch": min(s["max"][0] for s in profile.values()),
            "shapes": profile,
        },
        "workspace_gib": options.workspace_gib,
        "build_seconds": round(build_seconds, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def build_engine(onnx_path: Union[str, Path], engine_path: Optional[Union[str, Path]] = None,
                 options: Optional[BuildOptions] = None, log=print) -> dict:
    """ONNX file -> `<name>.engine` + `<name>.engine.json`; returns the sidecar. Raises TensorRTError."""
    missing = tensorrt_missing()
    if missing:
        raise TensorRTUnavailable(missing)
    options = options or BuildOptions()
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path is not None else engine_path_for(onnx_path)
    network_name = onnx_path.stem
    onnx_sha = file_sha256(onnx_path)
    start = time.perf_counter()

    parsed = parse_onnx(onnx_path)
    for kind, infos in (("input", parsed.inputs), ("output", parsed.outputs)):
        for info in infos:
            log(f"  {network_name} {kind} {info['name']}: {info['shape']} {info['dtype']}")
    config = configure(parsed, options)
    plan = build_serialized(parsed, config)
    save_timing_cache(config, options.timing_cache)

    write_bytes_atomic(engine_path, plan)
    gpu, cc = gpu_identity()
    sidecar = make_engine_sidecar(network=network_name, onnx_path=onnx_path, onnx_sha256=onnx_sha, gpu=gpu,
                                  compute_capability=cc, trt_version=tensorrt_version(), options=options,
                                  inputs=parsed.inputs, outputs=parsed.outputs, profile=parsed.profile,
                                  build_seconds=time.perf_counter() - start)
    write_json_atomic(sidecar_path(engine_path), sidecar)
    return sidecar


def ensure_engine(onnx_path: Union[str, Path], engine_path: Optional[Union[str, Path]] = None,
                  options: Optional[BuildOptions] = None, *, rebuild: bool = True, log=print) -> Path:
    """A usable engine for `onnx_path` on this GPU: the existing one when `engine_status` says ok, else
    rebuilt (`rebuild=True`) or refused with StaleEngineError naming the reason and the fix."""
    missing = tensorrt_missing()
    if missing:
        raise TensorRTUnavailable(missing)
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path is not None else engine_path_for(onnx_path)
    gpu, _ = gpu_identity()
    precision = options.precision if options is not None else None
    if engine_path.is_file():
        status = engine_status(read_engine_sidecar(engine_path), onnx_path, gpu, tensorrt_version(),
                               precision=precision)
        if status.ok:
            return engine_path
        reason = f"{engine_path} is stale: {status.reason}"
    else:
        reason = f"{engine_path} does not exist"
    if not rebuild:
        raise StaleEngineError(f"{reason}; rebuild it with `python build_engines.py --onnx-dir {onnx_path.parent}`")
    log(f"{reason}; building it now (takes a minute or two)")
    build_engine(onnx_path, engine_path, options, log=log)
    return engine_path
