"""TensorRT backend (thin): deserialise an engine checked by `capture.trt.ensure_engine`, bind torch CUDA
tensors, run `execute_async_v3` on one stream. `tensorrt` is imported only when this backend is built."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from .base import Backend, BackendUnavailable


class TensorRTBackend(Backend):
    """A TensorRT engine for one network on a CUDA device.

    engine_path: default `<onnx folder>/<network>.engine` next to the ONNX from `ensure_onnx(pack, ...)`.
    A stale engine (other ONNX, GPU or TensorRT) is rebuilt when `rebuild` (default) else refused.
    """

    name = "tensorrt"
    devices = ("cuda",)

    def __init__(self, network: str, pack, device: Union[str, torch.device] = "cuda", *,
                 engines_dir: Optional[Union[str, Path]] = None, engine_path: Optional[Union[str, Path]] = None,
                 precision: str = "fp16", max_batch: int = 8, rebuild: bool = True):
        super().__init__(network, device)
        ok, why = self.available(self.device.type)
        if not ok:
            raise BackendUnavailable(f"tensorrt backend: {why}")
        import tensorrt as trt

        from capture.export import ensure_onnx
        from capture.trt import BuildOptions, _logger, ensure_engine, read_engine_sidecar

        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        onnx_path = ensure_onnx(pack, network, engines_dir=engines_dir)
        options = BuildOptions(precision=precision, max_batch=max_batch,
                               timing_cache=Path(onnx_path).parent / "timing.cache")
        self.engine_path = ensure_engine(onnx_path, engine_path, options, rebuild=rebuild)
        # The engine's own profile decides (it may have been built by build_engines.py with another --max-batch).
        self.max_batch = int((read_engine_sidecar(self.engine_path) or {}).get("profile", {}).get("max_batch", 1))
        self._runtime = trt.Runtime(_logger())
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialise {self.engine_path}; delete it and rebuild")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.engine_path}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        expected = {self.spec.input_name, self.spec.output_name}
        if set(names) != expected:
            raise RuntimeError(f"{self.engine_path} has tensors {names}, expected {sorted(expected)}")
        self.stream = torch.cuda.Stream(self.device)

    @classmethod
    def available(cls, device: str = "cuda") -> tuple[bool, str]:
        if torch.device(device).type != "cuda":
            return False, "TensorRT runs on CUDA devices only"
        from capture.trt import tensorrt_missing

        missing = tensorrt_missing()
        if missing:
            return False, missing
        import tensorrt as trt

        return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(0)}"

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.max_batch:
            raise ValueError(f"{self.network}: batch {x.shape[0]} exceeds the engine's profile (max {self.max_batch}); "
                             f"rebuild with build_engines.py --max-batch {x.shape[0]}")
        out = torch.empty((x.shape[0], *self.spec.output_shape), dtype=torch.float32, device=self.device)
        ctx = self.context
        if not ctx.set_input_shape(self.spec.input_name, tuple(x.shape)):
            raise RuntimeError(f"TensorRT rejected input shape {tuple(x.shape)} for {self.spec.input_name}")
        ctx.set_tensor_address(self.spec.input_name, x.data_ptr())
        ctx.set_tensor_address(self.spec.output_name, out.data_ptr())
        # Inputs come from torch's current stream; the engine runs on its own stream, which waits for them.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.network} ({self.engine_path})")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        # Keep the buffers alive until the engine's stream is done with them.
        x.record_stream(self.stream)
        out.record_stream(self.stream)
        return out
