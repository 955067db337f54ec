"""ONNX Runtime backend: CPU execution provider, or CUDA when onnxruntime-gpu is installed.

Fed by `engines/<network>.onnx` when its sidecar matches the pack's weights, else by an export made on demand
into the per-weights cache folder (`capture.export.ensure_onnx`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..cpus import physical_cores
from .base import Backend, BackendUnavailable


def _ort():
    import onnxruntime

    return onnxruntime


SCHEDULES = ("offline", "live", "alone")
"""How the per-frame networks are called. offline: a file through the stage pipeline, throughput first
(`capture.video`); live: a camera through it, latency first (`capture.live`); alone: one frame at a time in the
caller's thread with no other stage beside it (`capture.Retargeter.process`)."""


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    return schedule


def intra_op_threads(codes_from: str, int8: bool = False, schedule: str = "offline") -> Optional[int]:
    """Intra-op threads per ONNX Runtime session for a schedule (None: physical cores).

    In the stage pipeline, with landmark codes only D_detail runs per frame, beside the other busy stages: one
    thread each keeps the cores to the stages (benchmarks/fps.py, 2 cores, 640x360: 32.0 FPS with 1 thread, 28.5
    with 2). With E_flame per frame (network, hybrid): an INT8 E_flame (~13 CPU ms) fits one core, and offline the
    second thread's hand-offs only cost the other stages CPU (32.6 / 32.7 FPS with 1 thread against 31.4 / 31.9
    with 2, 52 against 58 CPU ms a frame); live, the frame's latency is what counts, and two threads halve
    E_flame's share of it (36 / 46 ms median / p95 against 55-59 / 63-78). A float32 E_flame needs the cores:
    offline they are shared out between the frames it runs on at once (`pipeline_workers`), live one frame gets
    them all. Alone, nothing else runs while a network does, so every network gets every core (Retargeter.process
    on a real clip, 2 cores, AMD EPYC: network fp32 112 -> 76 ms a frame, INT8 46 -> 38, against the offline
    setting).
    """
    if check_schedule(schedule) == "alone":
        return None
    if codes_from == "landmarks" or (int8 and schedule == "offline"):
        return 1
    workers = pipeline_workers(codes_from, int8, schedule)
    return None if workers == 1 else max(1, physical_cores() // workers)


def pipeline_workers(codes_from: str, int8: bool = False, schedule: str = "offline") -> int:
    """Frames a CPU E_flame runs on at once (`RetargetSession(encode_workers=...)`), each call with
    `intra_op_threads` threads.

    Offline, a float32 E_flame is longer than all the other stages together (~36 CPU ms on one thread on an
    Intel Xeon, ~75 on an AMD EPYC), and one pass on two threads leaves the cores idle between its layers: two
    frames at once, one thread each, keep both busy (benchmarks/fps.py --codes-from network, 2 cores: 20.1 ->
    21.9 FPS over five alternating pairs, 93 -> 88 CPU ms a frame). An INT8 E_flame fits beside the other stages
    on one thread; live, one frame on every core is what shortens the latency; alone there is one frame."""
    if codes_from == "landmarks" or int8 or check_schedule(schedule) != "offline":
        return 1
    return 2 if physical_cores() >= 2 else 1


def encode_workers(flame, codes_from: str, schedule: str = "offline") -> int:
    """`pipeline_workers` for a built E_flame backend: ONNX Runtime on the CPU; 1 for every other backend (a
    GPU runs one frame's layers in parallel already; a TensorRT execution context serves one call at a time)."""
    if not isinstance(flame, OnnxRuntimeBackend) or flame.device.type != "cpu":
        return 1
    return pipeline_workers(codes_from, isinstance(flame, OnnxRuntimeInt8Backend), schedule)


def live_in_flight(flame, codes_from: str, schedule: str = "live") -> Optional[int]:
    """Frames between the first stage and the sink in live mode (`Pipeline(in_flight=...)`) for a built E_flame
    backend; None: the pipeline's default (`capture.stream.pipeline.LIVE_IN_FLIGHT`, two), and for every schedule
    but live (offline nothing limits them; alone there is one frame).

    One where a float32 ONNX Runtime E_flame runs every frame on every core of the CPU (`intra_op_threads`, live):
    it is then most of a frame's time, and a second frame in flight waits for it anyway while its crop and
    drawing take cores from the first frame's pass. benchmarks/fps.py --live --codes-from network, 2 cores (AMD
    EPYC, 640x360): latency median / p95 166 / 192 ms with two frames in flight against 95 / 112 with one, at
    13.5 against 13.4 FPS. INT8's E_flame is a small share of the frame, and two in flight overlap the rest:
    39 / 66 ms against 58 / 82."""
    float_cpu = (isinstance(flame, OnnxRuntimeBackend) and not isinstance(flame, OnnxRuntimeInt8Backend)
                 and flame.device.type == "cpu")
    if check_schedule(schedule) != "live" or codes_from == "landmarks" or not float_cpu:
        return None
    return 1 if flame.session.get_session_options().intra_op_num_threads >= physical_cores() else None


def session_options(threads: Optional[int] = None, spinning: bool = False):
    """Tuned options: intra-op threads = physical cores, all graph optimisations, sequential, memory pattern.

    spinning: let idle intra-op workers spin between runs (ONNX Runtime's own default). Off here: in the stage
    pipeline the other stages need those cores, and a spinning worker burns them. Measured with
    benchmarks/fps.py on 2 cores: 2 spinning threads per session halved the pipeline's FPS (9.6 -> 5.5),
    2 sleeping threads matched or beat 1 thread.
    """
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1  # sequential execution: no parallel branches to feed
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = True
    options.log_severity_level = 3
    return options


def _cpu_graph(network: str, path: Path) -> Optional[bytes]:
    """The graph rewritten for the CPU provider (`capture.backends.conv_taps`), None: load the file as it is
    (nothing to rewrite, or no onnx package to rewrite it with: same numbers, slower)."""
    import importlib.util

    from .conv_taps import NETWORKS, cpu_graph

    if network not in NETWORKS or importlib.util.find_spec("onnx") is None:
        return None
    return cpu_graph(path)


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime session over one network's ONNX graph.

    onnx_path: use this file as is (no freshness check; e.g. an INT8 graph from `capture.int8.ensure_int8_onnx`);
    default: `ensure_onnx(pack, network, engines_dir)`. threads: intra-op threads (default: physical cores);
    spinning: see `session_options`.
    CPU: numpy in, numpy out (zero-copy into torch). CUDA: io_binding straight onto torch CUDA tensors.
    """

    name = "onnxruntime"
    devices = ("cuda", "cpu")

    def __init__(self, network: str, pack, device: Union[str, torch.device] = "cpu", *,
                 onnx_path: Optional[Union[str, Path]] = None, engines_dir: Optional[Union[str, Path]] = None,
                 threads: Optional[int] = None, spinning: bool = False):
        super().__init__(network, device)
        ok, why = self.available(self.device.type)
        if not ok:
            raise BackendUnavailable(f"onnxruntime backend on {self.device}: {why}")
        if onnx_path is None:
            from capture.export import ensure_onnx

            onnx_path = ensure_onnx(pack, network, engines_dir=engines_dir)
        self.onnx_path = Path(onnx_path)
        ort = _ort()
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", index)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        graph = _cpu_graph(network, self.onnx_path) if self.device.type == "cpu" else None
        self.session = ort.InferenceSession(graph if graph is not None else str(self.onnx_path),
                                            session_options(threads, spinning), providers=providers)
        active = self.session.get_providers()
        if self.device.type == "cuda" and active[0] != "CUDAExecutionProvider":
            # Never fall back to CPU silently behind a backend that claims CUDA.
            raise RuntimeError(f"onnxruntime could not start the CUDA execution provider (active: {active}); "
                               "check that onnxruntime-gpu matches the installed CUDA/cuDNN")
        self.providers = active
        threads_used = self.session.get_session_options().intra_op_num_threads
        self.detail = (f"ONNX Runtime {ort.__version__} {'CUDA' if self.device.type == 'cuda' else 'CPU'}, "
                       f"{threads_used} thread{'s' if threads_used != 1 else ''}")  # what runs, for `.reason`

    @classmethod
    def available(cls, device: str = "cpu") -> tuple[bool, str]:
        try:
            ort = _ort()
        except ImportError:
            return False, "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu on a GPU machine)"
        providers = ort.get_available_providers()
        kind = torch.device(device).type
        if kind == "cpu":
            if "CPUExecutionProvider" in providers:
                return True, f"ONNX Runtime {ort.__version__} CPU, {physical_cores()} threads"
            return False, f"onnxruntime has no CPU execution provider (providers: {providers})"
        if kind == "cuda":
            if "CUDAExecutionProvider" not in providers:
                return False, ("this onnxruntime build has no CUDA execution provider (the CPU package is installed; "
                               "pip uninstall onnxruntime && pip install onnxruntime-gpu)")
            if not torch.cuda.is_available():
                return False, "onnxruntime-gpu is installed but torch sees no CUDA GPU (needed for io_binding)"
            return True, f"ONNX Runtime {ort.__version__} CUDA execution provider"
        return False, f"device {device!r} is not supported (use cpu or cuda)"

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            (out,) = self.session.run([self.spec.output_name], {self.spec.input_name: x.numpy()})
            return torch.from_numpy(out)
        return self._run_bound(x)

    def _run_bound(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty((x.shape[0], *self.spec.output_shape), dtype=torch.float32, device=self.device)
        binding = self.session.io_binding()
        index = self.device.index
        binding.bind_input(self.spec.input_name, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.spec.output_name, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        # ORT runs on its own CUDA stream: the input must be complete before, the output before it is read.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out


class OnnxRuntimeInt8Backend(OnnxRuntimeBackend):
    """ONNX Runtime on the CPU with the per-frame networks, E_flame and D_detail, statically quantised to INT8
    (`capture.int8`); E_detail, which runs once per target, keeps its float32 graph (`.detail` says which ran).

    calibration: a `capture.int8.Calibration` (face crops and what they are); default: renders of the pack.
    E_flame is calibrated on the crops, D_detail on the latents of those faces. The INT8 graph is cached beside
    the float32 one, keyed by that graph and the crops; its sidecar (`.int8_sidecar`) records the calibration
    and the error against float32 on the same inputs.
    reduce_range, threads, spinning: as `capture.int8.quantize_int8` and `OnnxRuntimeBackend`.
    """

    name = "onnxruntime-int8"
    devices = ("cpu",)

    def __init__(self, network: str, pack, device: Union[str, torch.device] = "cpu", *, calibration=None,
                 engines_dir: Optional[Union[str, Path]] = None, threads: Optional[int] = None,
                 spinning: bool = False, reduce_range: bool = False):
        ok, why = self.available(torch.device(device).type)
        if not ok:
            raise BackendUnavailable(f"onnxruntime-int8 backend on {device}: {why}")
        from capture.artifacts import read_sidecar, sidecar_path
        from capture.int8 import INT8_NETWORKS, Calibration, describe_error, ensure_int8_onnx

        self.int8_sidecar: Optional[dict] = None
        onnx_path = None
        if network in INT8_NETWORKS:
            calibration = calibration if calibration is not None else Calibration.pack_renders(pack)
            onnx_path = ensure_int8_onnx(pack, network, calibration.crops(), engines_dir=engines_dir,
                                         reduce_range=reduce_range, source=calibration.source)
            self.int8_sidecar = read_sidecar(sidecar_path(onnx_path))
        super().__init__(network, pack, device, onnx_path=onnx_path, engines_dir=engines_dir, threads=threads,
                         spinning=spinning)
        self.detail += (", " + describe_error(self.int8_sidecar) if self.int8_sidecar is not None
                        else f", fp32 (INT8 is made for {', '.join(INT8_NETWORKS)} only)")

    @classmethod
    def available(cls, device: str = "cpu") -> tuple[bool, str]:
        if torch.device(device).type != "cpu":
            return False, ("INT8 runs on ONNX Runtime's CPU execution provider only "
                           "(use onnxruntime or tensorrt on a GPU)")
        ok, why = OnnxRuntimeBackend.available("cpu")
        if not ok:
            return ok, why
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            return False, "the onnx package is missing (pip install onnx): ONNX Runtime's quantiser needs it"
        return True, why.replace(" CPU,", " CPU with INT8 E_flame and D_detail,")
