"""Inference backends over DECA's networks: PyTorch, ONNX Runtime and TensorRT behind one interface.

    make_backend("auto", "E_flame", pack)            # fastest that works here; see `.reason`
    InferenceEngines(pack).encode_flame(images)      # [B, 3, 224, 224] -> [B, 236]
"""
from .base import Backend, BackendUnavailable
from .engines import InferenceEngines
from .onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeInt8Backend
from .registry import AUTO_ORDER, BACKENDS, DESCRIPTIONS, NAMES, availability, describe_names, make_backend
from .tensorrt_backend import TensorRTBackend
from .torch_backend import TorchBackend, TorchEagerBackend

__all__ = [
    "AUTO_ORDER", "BACKENDS", "DESCRIPTIONS", "NAMES", "Backend", "BackendUnavailable", "InferenceEngines",
    "OnnxRuntimeBackend", "OnnxRuntimeInt8Backend", "TensorRTBackend", "TorchBackend", "TorchEagerBackend",
    "availability", "describe_names", "make_backend",
]
