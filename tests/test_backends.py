"""Inference backends: registry and auto selection, parity of every present backend with PyTorch modules.

Uses the graphs test_export.py exports once per session and its in-memory pack of seeded networks.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from capture.backends import (
    BACKENDS,
    InferenceEngines,
    OnnxRuntimeBackend,
    TorchBackend,
    make_backend,
)
from capture.backends.onnxruntime_backend import physical_cores, session_options
from test_export import EXPECTED_IO, export_once, memory_pack, reference_input, reference_output, rel_err

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _ort_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.fixture(scope="session")
def engines_dir(tmp_path_factory):
    return export_once(tmp_path_factory)


# (backend, device, tolerance, marks). On CUDA the tolerance is looser: cuDNN, ONNX Runtime's CUDA EP and
# TensorRT use TF32 for fp32 convolutions by default on Ampere and later (10-bit mantissa). TensorRT builds
# fp32 engines for the check.
CASES = [
    pytest.param("torch", "cpu", 1e-4, id="torch-cpu"),
    pytest.param("onnxruntime", "cpu", 1e-4, id="onnxruntime-cpu"),
    pytest.param("torch", "cuda", 5e-3, id="torch-cuda", marks=pytest.mark.gpu),
    pytest.param("onnxruntime", "cuda", 5e-3, id="onnxruntime-cuda", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not _ort_has_cuda(), reason="onnxruntime-gpu is not installed")]),
    pytest.param("tensorrt", "cuda", 5e-3, id="tensorrt", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not installed (NVIDIA's pip index)")]),
]
_BACKENDS: dict = {}


def _backend(name, device, network, engines_dir):
    key = (name, device, network)
    if key not in _BACKENDS:
        options = {"tensorrt": {"precision": "fp32", "max_batch": 4}}
        _BACKENDS[key] = make_backend(name, network, memory_pack(), device, engines_dir=engines_dir, options=options)
    return _BACKENDS[key]


@pytest.mark.parametrize("network", list(EXPECTED_IO))
@pytest.mark.parametrize("name,device,tol", CASES)
def test_backend_matches_torch_modules(engines_dir, name, device, tol, network):
    backend = _backend(name, device, network, engines_dir)
    assert backend.name == name and backend.device.type == device
    in_name, _, out_name, out_shape = EXPECTED_IO[network]
    for batch in (1, 3):
        x = reference_input(network, batch)
        # numpy for one batch, a tensor for the other: both input kinds are accepted
        outputs = backend.run({in_name: x.numpy() if batch == 1 else x})
        assert set(outputs) == {out_name}
        value = outputs[out_name]
        assert isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.device.type == device
        assert tuple(value.shape) == (batch, *out_shape)
        assert rel_err(value.cpu().numpy(), reference_output(network, batch)) <= tol


@pytest.mark.skipif(HAS_CUDA, reason="auto picks a CUDA backend on this machine")
def test_auto_picks_onnxruntime_cpu_here_and_says_why(engines_dir):
    backend = make_backend("auto", "D_detail", memory_pack(), engines_dir=engines_dir)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.device.type == "cpu"
    assert backend.reason.startswith("auto chose onnxruntime on cpu")
    assert "tensorrt/cuda" in backend.reason and "torch/cuda" in backend.reason  # the faster ones passed over
    cpu_only = make_backend("auto", "D_detail", memory_pack(), "cpu", engines_dir=engines_dir)
    assert isinstance(cpu_only, OnnxRuntimeBackend) and "tensorrt" not in cpu_only.reason


def test_auto_falls_back_to_torch_when_onnxruntime_cannot_start(engines_dir, monkeypatch):
    monkeypatch.setattr(OnnxRuntimeBackend, "available", classmethod(lambda cls, device="cpu": (False, "disabled")))
    backend = make_backend("auto", "D_detail", memory_pack(), "cpu", engines_dir=engines_dir)
    assert isinstance(backend, TorchBackend) and "onnxruntime/cpu: disabled" in backend.reason


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError) as info:
        make_backend("openvino", "E_flame", memory_pack())
    message = str(info.value)
    assert "'openvino'" in message
    for name in ("auto", "torch", "onnxruntime", "tensorrt"):
        assert name in message


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_tensorrt_unavailable_says_it_is_not_installed():
    ok, why = BACKENDS["tensorrt"].available("cuda")
    assert not ok and "not installed" in why and "pip install tensorrt-cu12" in why
    with pytest.raises(ValueError, match="'tensorrt' is unavailable.*TensorRT is not installed"):
        make_backend("tensorrt", "E_flame", memory_pack())


def test_inference_engines_bundle_the_three_networks(engines_dir):
    engines = InferenceEngines(memory_pack(), backend={"E_flame": "onnxruntime", "E_detail": "onnxruntime",
                                                       "D_detail": "torch"}, device="cpu", engines_dir=engines_dir)
    images = reference_input("E_flame", 1).numpy()
    code = engines.encode_flame(images)
    assert tuple(code.shape) == (1, 236) and rel_err(code.numpy(), reference_output("E_flame", 1)) <= 1e-4
    detail = engines.encode_detail(reference_input("E_detail", 1))
    assert tuple(detail.shape) == (1, 128) and rel_err(detail.numpy(), reference_output("E_detail", 1)) <= 1e-4
    uv = engines.decode_detail(reference_input("D_detail", 3))
    assert tuple(uv.shape) == (3, 1, 256, 256) and rel_err(uv.numpy(), reference_output("D_detail", 3)) <= 1e-4
    lines = engines.describe()
    assert len(lines) == 3 and lines[2].startswith("D_detail: torch on cpu")
    with pytest.raises(ValueError, match="unknown networks"):
        InferenceEngines(memory_pack(), backend={"E_coarse": "torch"})


def test_inputs_are_checked_by_name_and_shape():
    backend = make_backend("torch", "D_detail", memory_pack(), "cpu")
    with pytest.raises(ValueError, match=r"takes inputs \['latent'\]"):
        backend.run({"image": np.zeros((1, 181), np.float32)})
    with pytest.raises(ValueError, match=r"must be \[B, 181\].*got \(1, 180\)"):
        backend.run({"latent": np.zeros((1, 180), np.float32)})


def test_torch_cpu_path_never_touches_cuda(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("CUDA was touched on the CPU path")

    backend = make_backend("torch", "D_detail", memory_pack(), "cpu")
    for attr in ("synchronize", "current_stream", "Stream", "CUDAGraph", "graph"):
        monkeypatch.setattr(torch.cuda, attr, forbidden)
    out = backend.run({"latent": reference_input("D_detail", 1)})["uv_z"]
    assert rel_err(out.numpy(), reference_output("D_detail", 1)) <= 1e-4


def test_onnxruntime_session_is_tuned():
    import onnxruntime as ort

    cores = physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    options = session_options()
    assert options.intra_op_num_threads == cores
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.enable_mem_pattern


@pytest.mark.gpu
def test_torch_cuda_graph_replay_handles_two_shapes_and_fresh_outputs():
    backend = make_backend("torch", "D_detail", memory_pack(), "cuda")
    a = backend.run({"latent": reference_input("D_detail", 1)})["uv_z"]
    b = backend.run({"latent": reference_input("D_detail", 3)})["uv_z"]
    a_again = backend.run({"latent": reference_input("D_detail", 1)})["uv_z"]
    assert len(backend._graphs) == 2
    assert torch.equal(a, a_again) and a.data_ptr() != a_again.data_ptr()
    assert rel_err(b.cpu().numpy(), reference_output("D_detail", 3)) <= 5e-3
