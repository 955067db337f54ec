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
    AUTO_ORDER,
    BACKENDS,
    DESCRIPTIONS,
    NAMES,
    InferenceEngines,
    OnnxRuntimeBackend,
    TorchBackend,
    make_backend,
)
from capture.backends.onnxruntime_backend import intra_op_threads, session_options
from capture.cpus import physical_cores
from capture.nets import graph_spec
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
    for name in ("auto", "torch", "torch-eager", "onnxruntime", "onnxruntime-int8", "tensorrt"):
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


@pytest.mark.parametrize("cores", [1, 2, 8])
def test_intra_op_threads_follow_the_code_source_the_precision_and_the_schedule(cores, monkeypatch):
    """One ONNX Runtime thread per session where E_flame does not run per frame or, offline, runs as INT8. A
    float32 E_flame offline runs on two frames at once (one core: one), the physical cores shared out between
    them; live, and INT8 live, one frame at a time on every core (latency first). Alone (Retargeter.process:
    no other stage beside a call) every network gets every core."""
    from capture.backends import onnxruntime_backend

    monkeypatch.setattr(onnxruntime_backend, "physical_cores", lambda: cores)
    workers = onnxruntime_backend.pipeline_workers
    assert intra_op_threads("landmarks") == 1 and intra_op_threads("landmarks", int8=True, schedule="live") == 1
    assert intra_op_threads("network", int8=True) == 1 and intra_op_threads("hybrid", int8=True) == 1
    assert intra_op_threads("hybrid", schedule="live") is None
    assert intra_op_threads("network", int8=True, schedule="live") is None
    assert workers("landmarks") == workers("network", int8=True) == workers("hybrid", schedule="live") == 1
    assert workers("network") == workers("hybrid") == min(2, cores)
    assert intra_op_threads("network") == (None if cores == 1 else cores // 2)
    for codes_from in ("landmarks", "network", "hybrid"):
        for int8 in (False, True):
            assert intra_op_threads(codes_from, int8, "alone") is None
            assert workers(codes_from, int8, "alone") == 1
    with pytest.raises(ValueError, match="schedule 'camera'"):
        intra_op_threads("network", schedule="camera")


def test_encode_workers_only_for_onnx_runtime_on_the_cpu(engines_dir, monkeypatch):
    """Several E_flame frames at once only where calls may overlap and run on the CPU: ONNX Runtime sessions (not
    the torch or TensorRT backends, not CUDA), float32 offline."""
    from capture.backends import onnxruntime_backend

    monkeypatch.setattr(onnxruntime_backend, "physical_cores", lambda: 2)
    fp32 = _backend("onnxruntime", "cpu", "E_flame", engines_dir)
    assert onnxruntime_backend.encode_workers(fp32, "network") == 2
    assert onnxruntime_backend.encode_workers(fp32, "network", "live") == 1
    assert onnxruntime_backend.encode_workers(fp32, "network", "alone") == 1
    assert onnxruntime_backend.encode_workers(_backend("torch", "cpu", "E_flame", engines_dir), "network") == 1
    int8 = object.__new__(onnxruntime_backend.OnnxRuntimeInt8Backend)  # the type decides: no calibration here
    int8.device = torch.device("cpu")
    assert onnxruntime_backend.encode_workers(int8, "network") == 1


def test_live_keeps_one_frame_in_flight_only_behind_a_float32_e_flame_on_every_core(engines_dir, monkeypatch):
    """Live, a float32 ONNX Runtime E_flame with every core to itself is most of a frame: one frame in flight.
    With fewer threads than cores, as INT8, torch, or with landmark codes (no E_flame per frame): the pipeline's
    default (None)."""
    from capture.backends import onnxruntime_backend

    fp32 = _backend("onnxruntime", "cpu", "E_flame", engines_dir)
    threads = fp32.session.get_session_options().intra_op_num_threads
    monkeypatch.setattr(onnxruntime_backend, "physical_cores", lambda: threads)
    assert onnxruntime_backend.live_in_flight(fp32, "network") == 1
    assert onnxruntime_backend.live_in_flight(fp32, "hybrid") == 1
    assert onnxruntime_backend.live_in_flight(fp32, "network", "offline") is None
    assert onnxruntime_backend.live_in_flight(fp32, "network", "alone") is None
    assert onnxruntime_backend.live_in_flight(fp32, "landmarks") is None
    assert onnxruntime_backend.live_in_flight(_backend("torch", "cpu", "E_flame", engines_dir), "network") is None
    int8 = object.__new__(onnxruntime_backend.OnnxRuntimeInt8Backend)
    int8.device = torch.device("cpu")
    assert onnxruntime_backend.live_in_flight(int8, "network") is None
    monkeypatch.setattr(onnxruntime_backend, "physical_cores", lambda: threads + 1)
    assert onnxruntime_backend.live_in_flight(fp32, "network") is None


def test_each_schedule_gets_onnx_runtime_sessions_of_its_own_and_shares_what_threads_do_not_change(engines_dir,
                                                                                                     monkeypatch):
    """capture.cli_common.build_inference: the thread setting of each schedule reaches the sessions it builds
    (offline: E_flame on two frames at once, one thread each; alone: every core, one frame; live: every core, one
    frame in flight); another schedule reuses the engines where its setting would build the same ones."""
    from types import SimpleNamespace

    from capture.backends import onnxruntime_backend
    from capture.cli_common import build_inference

    monkeypatch.setenv("CAPTURE_ENGINES", str(engines_dir))
    monkeypatch.setattr(onnxruntime_backend, "physical_cores", lambda: 2)
    deca = SimpleNamespace(pack=memory_pack(), device=torch.device("cpu"))

    def threads(inference, network):
        return inference.engines.backend(network).session.get_session_options().intra_op_num_threads

    offline = build_inference(deca, "onnxruntime", "network", "offline", None)
    assert (offline.encode_workers, offline.live_in_flight, threads(offline, "E_flame")) == (2, None, 1)
    alone = build_inference(deca, "onnxruntime", "network", "alone", None, reuse=offline)
    assert alone.engines is not offline.engines and alone.encode_workers == 1 and alone.live_in_flight is None
    assert threads(alone, "E_flame") == threads(alone, "D_detail") == 2
    live = build_inference(deca, "onnxruntime", "network", "live", None, reuse=alone)
    assert live.engines is alone.engines  # the same threads: the same sessions
    assert (live.encode_workers, live.live_in_flight) == (1, 1)
    x = reference_input("E_flame", 1)
    assert torch.allclose(alone.encode_flame(x), offline.encode_flame(x), atol=1e-4)
    eager = build_inference(deca, "torch", "network", "offline", None)
    assert build_inference(deca, "torch", "network", "alone", None, reuse=eager).engines is eager.engines
    with pytest.raises(ValueError, match="schedule"):
        build_inference(deca, "torch", "network", "batch", None)


@pytest.mark.gpu
def test_torch_cuda_graph_replay_handles_two_shapes_and_fresh_outputs():
    backend = make_backend("torch", "D_detail", memory_pack(), "cuda")
    a = backend.run({"latent": reference_input("D_detail", 1)})["uv_z"]
    b = backend.run({"latent": reference_input("D_detail", 3)})["uv_z"]
    a_again = backend.run({"latent": reference_input("D_detail", 1)})["uv_z"]
    assert len(backend._graphs) == 2
    assert torch.equal(a, a_again) and a.data_ptr() != a_again.data_ptr()
    assert rel_err(b.cpu().numpy(), reference_output("D_detail", 3)) <= 5e-3


# ----------------------------------------------------------------------------------------------------------
# The registry is the only way to a network: every name builds, or says why it cannot here


def _device_for(name: str) -> str:
    cls = BACKENDS[name]
    for device in cls.devices:  # best first
        if cls.available(device)[0]:
            return device
    return cls.devices[-1]


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_registered_backend_builds_or_says_why(engines_dir, name):
    device = _device_for(name)
    ok, why = BACKENDS[name].available(device)
    if not ok:
        assert why  # an unavailable backend always says what is missing
        with pytest.raises(ValueError, match=f"'{name}' is unavailable"):
            make_backend(name, "D_detail", memory_pack(), device, engines_dir=engines_dir)
        pytest.skip(f"{name} on {device}: {why}")
    # a float32 graph on every backend: D_detail, or E_detail for INT8 (which quantises E_flame and D_detail)
    network = "E_detail" if name == "onnxruntime-int8" else "D_detail"
    spec = graph_spec(network)
    backend = make_backend(name, network, memory_pack(), device, engines_dir=engines_dir,
                           options={"tensorrt": {"precision": "fp32", "max_batch": 4}})
    assert backend.name == name and backend.reason.startswith(f"{name} on {backend.device}: requested explicitly")
    value = backend.run({spec.input_name: reference_input(network, 3)})[spec.output_name]
    assert rel_err(value.cpu().numpy(), reference_output(network, 3)) <= (1e-4 if device == "cpu" else 5e-3)


def test_names_are_the_registry_keys_and_auto_never_picks_int8_or_the_reference():
    assert NAMES == ("auto", *BACKENDS)
    assert set(DESCRIPTIONS) == set(NAMES)
    assert {"onnxruntime-int8", "torch-eager"}.isdisjoint(name for name, _ in AUTO_ORDER)
    assert set(BACKENDS) == {name for name, _ in AUTO_ORDER} | {"onnxruntime-int8", "torch-eager"}


def test_every_cli_with_a_backend_option_offers_every_registry_name():
    import argparse

    from capture import demo, live, video
    from capture.cli_common import add_backend_argument

    parser = argparse.ArgumentParser()
    add_backend_argument(parser)
    help_text = " ".join(parser.format_help().split())
    for name in NAMES:
        assert f"{name}:" in help_text
        assert parser.parse_args(["--backend", name]).backend == name
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "openvino"])
    for module, argv in ((video, ["in.mp4", "-o", "out.mp4"]), (live, [])):
        assert module.parse_args([*argv, "--backend", "onnxruntime-int8"]).backend == "onnxruntime-int8"
    assert "add_backend_argument(parser)" in open(demo.__file__).read()  # demo's main parses its own args


def test_torch_eager_is_eager_float32_on_any_device():
    backend = make_backend("torch-eager", "D_detail", memory_pack(), "cpu")
    assert isinstance(backend, TorchBackend) and not backend.cuda_graphs and not backend.half
    assert rel_err(backend.run({"latent": reference_input("D_detail", 1)})["uv_z"].numpy(),
                   reference_output("D_detail", 1)) <= 1e-4
    with pytest.raises(TypeError):
        BACKENDS["torch-eager"]("D_detail", memory_pack(), "cpu", cuda_graphs=True)


def test_int8_backend_refuses_the_gpu_and_runs_fp32_where_int8_is_not_made(engines_dir):
    ok, why = BACKENDS["onnxruntime-int8"].available("cuda")
    assert not ok and "CPU" in why
    backend = make_backend("onnxruntime-int8", "E_detail", memory_pack(), "cpu", engines_dir=engines_dir)
    assert backend.int8_sidecar is None and "fp32 (INT8 is made for E_flame, D_detail only)" in backend.reason


class _RecordingEngines:
    """Stands in for InferenceEngines: fixed outputs, and a log of what was asked."""

    def __init__(self):
        self.calls = []

    def encode_flame(self, images):
        self.calls.append(("E_flame", tuple(images.shape)))
        return torch.arange(236, dtype=torch.float32)[None].repeat(images.shape[0], 1)

    def encode_detail(self, images):
        self.calls.append(("E_detail", tuple(images.shape)))
        return torch.full((images.shape[0], 128), 0.5)

    def decode_detail(self, latent):
        self.calls.append(("D_detail", tuple(latent.shape)))
        return torch.zeros(latent.shape[0], 1, 256, 256)


def test_deca_runs_the_networks_it_is_given(small_pack):
    from capture.deca import DECA
    from capture.nets import CODE_LAYOUT

    engines = _RecordingEngines()
    deca = DECA(small_pack, engines=engines)
    codes = deca.encode(torch.rand(2, 3, 224, 224))
    expected = CODE_LAYOUT.split(torch.arange(236, dtype=torch.float32)[None].repeat(2, 1))
    assert torch.equal(codes.exp, expected["exp"]) and torch.equal(codes.light, expected["light"])
    assert torch.equal(codes.detail, torch.full((2, 128), 0.5))
    assert tuple(deca.displacement(codes).shape) == (2, 1, 256, 256)
    assert engines.calls == [("E_flame", (2, 3, 224, 224)), ("E_detail", (2, 3, 224, 224)), ("D_detail", (2, 181))]
    assert not hasattr(deca, "nets")  # DECA owns no networks of its own


def test_deca_defaults_to_the_eager_reference_made_on_first_use(small_pack):
    from capture.deca import DECA
    from capture.nets import CODE_LAYOUT, build_networks

    deca = DECA(small_pack)
    assert deca.engines.choice == {"E_flame": "torch-eager", "E_detail": "torch-eager", "D_detail": "torch-eager"}
    assert deca.engines.describe() == []  # nothing built until used
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = build_networks(small_pack.checkpoint).e_flame.eval()(x)
    codes = deca.encode(x, with_detail=False)
    for key, value in CODE_LAYOUT.split(reference).items():
        assert torch.equal(getattr(codes, key), value), key
    assert [line.split(":")[0] for line in deca.engines.describe()] == ["E_flame"]


@pytest.mark.parametrize("k,bias", [(3, True), (5, False)])
def test_single_output_conv_as_taps_gives_the_conv(k, bias):
    # ONNX Runtime on the original graph is the reference; the rewrite only reorders the additions.
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from capture.backends.conv_taps import split_single_output_convs

    rng = np.random.default_rng(k)
    w = rng.standard_normal((1, 6, k, k)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(np.array([0.3], np.float32), "b")]
                                                 if bias else [])
    conv = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["c"], name="last", kernel_shape=[k, k],
                            pads=[k // 2] * 4)
    graph = helper.make_graph([conv, helper.make_node("Tanh", ["c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 6, 20, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 1, 20, 24])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    original = model.SerializeToString()
    assert split_single_output_convs(model) == 1
    assert not [n for n in model.graph.node if n.op_type == "Conv" and n.name == "last"]
    x = rng.standard_normal((2, 6, 20, 24)).astype(np.float32)
    want, got = (ort.InferenceSession(g, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                 for g in (original, model.SerializeToString()))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_d_detail_reaches_cpu_sessions_without_a_single_output_conv(engines_dir):
    import onnx

    from capture.backends.conv_taps import cpu_graph

    backend = _backend("onnxruntime", "cpu", "D_detail", engines_dir)
    model = onnx.load_from_string(cpu_graph(backend.onnx_path))
    one_channel = {t.name for t in model.graph.initializer if len(t.dims) == 4 and t.dims[0] == 1}
    assert not [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in one_channel]
    assert cpu_graph(_backend("onnxruntime", "cpu", "E_flame", engines_dir).onnx_path) is None  # nothing to do
