"""ONNX export: checker, ONNX Runtime vs PyTorch parity, sidecars, freshness rules, engine staleness, CLIs.

The networks are freshly initialised modules with seeded, non-trivial BatchNorm statistics, wrapped in an
in-memory pack: the demo pack's calibrated weights take ~25 s to generate, and parity does not depend on what
the weights are. Everything is exported once per session (shared with test_backends.py through `exported`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from capture import artifacts
from capture import export as ex
from capture.nets import CODE_LAYOUT, DetailGenerator, Networks, ResNet50Encoder
from capture.trt import ENGINE_FORMAT, EngineStatus, engine_status

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 3)
TOL = 1e-4
# Written out by hand from docs/formats.md (2.2-2.5), not read from the code under test.
EXPECTED_IO = {
    "E_flame": ("image", [3, 224, 224], "code", [236]),
    "E_detail": ("image", [3, 224, 224], "detail", [128]),
    "D_detail": ("latent", [181], "uv_z", [1, 256, 256]),
}


@dataclass
class MemoryPack:
    """The part of `ModelPack` the export and backends read: checkpoint, meta, synthetic, label."""

    checkpoint: dict
    meta: dict = field(default_factory=dict)
    root: Path = Path("<in-memory test pack>")

    @property
    def synthetic(self) -> bool:
        return True

    @property
    def label(self) -> str:
        return f"using the SYNTHETIC test pack at {self.root}"


def _randomise_batchnorms(module: torch.nn.Module, gen: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))


@lru_cache(maxsize=None)
def reference_networks() -> Networks:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    nets = Networks(ResNet50Encoder(236), ResNet50Encoder(128), DetailGenerator())
    for m in (nets.e_flame, nets.e_detail, nets.d_detail):
        _randomise_batchnorms(m, gen)
        m.eval()
    return nets


@lru_cache(maxsize=None)
def memory_pack() -> MemoryPack:
    nets = reference_networks()
    checkpoint = {"E_flame": nets.e_flame.state_dict(), "E_detail": nets.e_detail.state_dict(),
                  "D_detail": nets.d_detail.state_dict()}
    return MemoryPack(checkpoint, {"synthetic": True, "weights_sha256": "5eed" * 16})


def reference_input(network: str, batch: int) -> torch.Tensor:
    """Fixed random input [batch, ...]: images uniform in [0, 1], latents N(0, 1)."""
    gen = torch.Generator().manual_seed(100 * batch + len(network))
    shape = (batch, *EXPECTED_IO[network][1])
    return torch.rand(shape, generator=gen) if EXPECTED_IO[network][0] == "image" else torch.randn(shape, generator=gen)


@lru_cache(maxsize=None)
def reference_output(network: str, batch: int) -> np.ndarray:
    module = {"E_flame": reference_networks().e_flame, "E_detail": reference_networks().e_detail,
              "D_detail": reference_networks().d_detail}[network]
    with torch.no_grad():
        return module(reference_input(network, batch)).numpy()


def rel_err(value, reference) -> float:
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    assert value.shape == reference.shape
    return float(np.abs(value - reference).max() / np.abs(reference).max())


_EXPORT_DIR: list[Path] = []


def export_once(tmp_path_factory) -> Path:
    """All three graphs, dynamic batch, exported once per session into a temporary folder."""
    if not _EXPORT_DIR:
        out = tmp_path_factory.mktemp("engines")
        ex.export_networks(reference_networks(), out, weights_sha256=memory_pack().meta["weights_sha256"],
                           synthetic=True)
        _EXPORT_DIR.append(out)
    return _EXPORT_DIR[0]


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Path:
    return export_once(tmp_path_factory)


# ----------------------------------------------------------------------------------------------------------
# Graphs


@pytest.mark.parametrize("network", list(EXPECTED_IO))
def test_graph_passes_checker_and_matches_torch_in_onnxruntime(exported, network):
    import onnx
    import onnxruntime as ort

    path = exported / f"{network}.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_name, _, out_name, out_shape = EXPECTED_IO[network]
    for batch in BATCHES:
        (value,) = session.run([out_name], {in_name: reference_input(network, batch).numpy()})
        assert value.shape == (batch, *out_shape)
        assert rel_err(value, reference_output(network, batch)) <= TOL


@pytest.mark.parametrize("network", list(EXPECTED_IO))
def test_sidecar_describes_the_graph(exported, network):
    path = exported / f"{network}.onnx"
    side = json.loads((exported / f"{network}.onnx.json").read_text())
    in_name, in_shape, out_name, out_shape = EXPECTED_IO[network]
    assert side["inputs"] == [{"name": in_name, "shape": ["batch", *in_shape], "dtype": "float32"}]
    assert side["outputs"] == [{"name": out_name, "shape": ["batch", *out_shape], "dtype": "float32"}]
    assert side["onnx_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert side["weights_sha256"] == memory_pack().meta["weights_sha256"]
    layout = side["code_layout"]
    assert layout["names"] == list(CODE_LAYOUT.names)
    assert {k: tuple(v) for k, v in layout["slices"].items()} == {
        k: (s.start, s.stop) for k, s in CODE_LAYOUT.slices.items()}
    assert layout["slices"]["light"] == [209, 236] and layout["total"] == 236 and layout["n_detail"] == 128
    assert layout["detail_latent"] == {"jaw": [0, 3], "exp": [3, 53], "detail": [53, 181]}
    assert side["exporter"] == {"torch": torch.__version__, "mode": "dynamo", "onnx": __import__("onnx").__version__}
    assert side["opset"] == ex.DEFAULT_OPSET and side["batch"] == "dynamic" and side["synthetic"] is True
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [ex.DEFAULT_OPSET]


def test_legacy_exporter_with_fixed_batch_matches_torch(tmp_path):
    spec = ex.GRAPHS["D_detail"]
    path = ex.export_graph(reference_networks().d_detail, spec, tmp_path / "D_detail.onnx", batch=3,
                           exporter="legacy", opset=17)
    ex.check_graph(path)
    io = ex.graph_io(path)
    assert io["inputs"][0]["shape"] == [3, 181] and io["outputs"][0]["shape"] == [3, 1, 256, 256]
    (value,) = ex.cpu_session(path).run(["uv_z"], {"latent": reference_input("D_detail", 3).numpy()})
    assert rel_err(value, reference_output("D_detail", 3)) <= TOL


def test_relative_error_by_hand():
    assert ex.relative_error(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == pytest.approx(0.5)
    assert ex.relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert ex.relative_error(np.ones(2), np.zeros(2)) == float("inf")
    with pytest.raises(ex.ParityError, match="shape"):
        ex.relative_error(np.zeros(2), np.zeros(3))


def test_check_parity_raises_on_a_wrong_graph(exported):
    wrong = DetailGenerator().eval()  # other weights than the exported graph
    with pytest.raises(ex.ParityError, match="D_detail.*relative error"):
        ex.check_parity(exported / "D_detail.onnx", wrong, ex.GRAPHS["D_detail"], (1,))


# ----------------------------------------------------------------------------------------------------------
# Freshness of ONNX files and the on-demand cache


def test_onnx_problem_flags_other_weights_changed_file_and_fixed_batch(exported, tmp_path):
    weights = memory_pack().meta["weights_sha256"]
    src = exported / "D_detail.onnx"
    side = json.loads(ex.sidecar_path(src).read_text())
    assert ex.onnx_problem(src, side, weights) is None
    assert "other weights" in ex.onnx_problem(src, side, "0" * 64)
    assert "fixed batch" in ex.onnx_problem(src, {**side, "batch": 4}, weights)
    assert "missing" in ex.onnx_problem(src, None, weights)
    assert "does not exist" in ex.onnx_problem(tmp_path / "nope.onnx", side, weights)
    changed = tmp_path / "D_detail.onnx"
    changed.write_bytes(src.read_bytes() + b"\0")
    assert "changed since it was exported" in ex.onnx_problem(changed, side, weights)


def test_ensure_onnx_uses_fresh_files_and_exports_stale_ones_into_the_cache(exported, tmp_path):
    pack = memory_pack()
    assert ex.ensure_onnx(pack, "D_detail", engines_dir=exported) == exported / "D_detail.onnx"
    # Same graph, but the sidecar claims other weights: it must not be used, an export lands in the cache.
    stale_dir = tmp_path / "stale"
    stale_dir.mkdir()
    shutil.copy(exported / "D_detail.onnx", stale_dir / "D_detail.onnx")
    side = json.loads((exported / "D_detail.onnx.json").read_text())
    (stale_dir / "D_detail.onnx.json").write_text(json.dumps({**side, "weights_sha256": "f" * 64}))
    path = ex.ensure_onnx(pack, "D_detail", engines_dir=stale_dir, networks=reference_networks())
    assert path.parent == artifacts.onnx_cache_dir(pack.meta["weights_sha256"])
    assert json.loads(ex.sidecar_path(path).read_text())["weights_sha256"] == pack.meta["weights_sha256"]
    (value,) = ex.cpu_session(path).run(["uv_z"], {"latent": reference_input("D_detail", 1).numpy()})
    assert rel_err(value, reference_output("D_detail", 1)) <= TOL
    # Second call: the cached export is fresh and reused (same file, not rewritten).
    mtime = path.stat().st_mtime_ns
    assert ex.ensure_onnx(pack, "D_detail", engines_dir=stale_dir) == path
    assert path.stat().st_mtime_ns == mtime


def test_pack_weights_hash_falls_back_to_checkpoint_content():
    a = {"D_detail": {"w": torch.ones(2)}}
    b = {"D_detail": {"w": torch.tensor([1.0, 2.0])}}
    assert artifacts.pack_weights_sha256(MemoryPack(a)) != artifacts.pack_weights_sha256(MemoryPack(b))
    assert artifacts.pack_weights_sha256(MemoryPack(a)) == (
        artifacts.checkpoint_sha256({"D_detail": {"w": torch.ones(2)}}))
    assert artifacts.pack_weights_sha256(MemoryPack(a, {"weights_sha256": "ab"})) == "ab"


# ----------------------------------------------------------------------------------------------------------
# Engine staleness (no TensorRT needed)


def _engine_sidecar(onnx_sha: str) -> dict:
    return {"format": ENGINE_FORMAT, "onnx_sha256": onnx_sha, "gpu": "NVIDIA H100 80GB HBM3",
            "tensorrt": "10.9.0.34", "precision": "fp16"}


def test_engine_status_ok_and_each_stale_reason(tmp_path):
    onnx_path = tmp_path / "E_flame.onnx"
    onnx_path.write_bytes(b"graph bytes")
    sha = hashlib.sha256(b"graph bytes").hexdigest()
    side = _engine_sidecar(sha)
    gpu, version = "NVIDIA H100 80GB HBM3", "10.9.0.34"

    ok = engine_status(side, onnx_path, gpu, version)
    assert ok == EngineStatus(True) and str(ok) == "ok"
    assert engine_status(side, onnx_path, gpu, version, precision="fp16").ok

    onnx_path.write_bytes(b"graph bytes, re-exported")
    changed = engine_status(side, onnx_path, gpu, version)
    assert not changed.ok and "changed" in changed.reason and str(changed).startswith("stale(")
    onnx_path.write_bytes(b"graph bytes")

    other_gpu = engine_status(side, onnx_path, "NVIDIA GeForce RTX 4090", version)
    assert not other_gpu.ok and "RTX 4090" in other_gpu.reason and "H100" in other_gpu.reason
    other_trt = engine_status(side, onnx_path, gpu, "10.13.0.35")
    assert not other_trt.ok and "10.9.0.34" in other_trt.reason and "10.13.0.35" in other_trt.reason
    assert "fp32" in engine_status(side, onnx_path, gpu, version, precision="fp32").reason
    assert not engine_status(None, onnx_path, gpu, version).ok
    assert "format" in engine_status({**side, "format": "x"}, onnx_path, gpu, version).reason
    assert "does not exist" in engine_status(side, tmp_path / "gone.onnx", gpu, version).reason
    # A known hash skips reading the file.
    assert engine_status(side, tmp_path / "gone.onnx", gpu, version, onnx_sha256=sha).ok


# ----------------------------------------------------------------------------------------------------------
# CLIs


def _load_cli(name: str):
    """The command's code in the package (the top-level script of the same name only calls its main)."""
    return importlib.import_module(f"capture.{name}")


def test_export_cli_prints_label_first_and_writes_graph_and_sidecar(tmp_path, monkeypatch, capsys):
    cli = _load_cli("export_onnx")
    monkeypatch.setattr(cli, "open_pack", lambda assets=None: memory_pack())
    rc = cli.main(["--networks", "D_detail", "--out", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0] == memory_pack().label and "SYNTHETIC" in out[0]
    assert "D_detail.onnx" in out[1] and "max rel err" in out[1]
    assert (tmp_path / "D_detail.onnx").is_file() and (tmp_path / "D_detail.onnx.json").is_file()
    assert not (tmp_path / "E_flame.onnx").exists()


def test_export_cli_copies_the_cached_export_when_it_is_what_it_would_write(tmp_path, monkeypatch, capsys):
    """A network the backends exported on demand (same weights, settings, torch and onnx) is copied from the cache
    and parity-checked like a fresh export; other settings are exported anew."""
    cli = _load_cli("export_onnx")
    pack = memory_pack()
    cached = ex.ensure_onnx(pack, "D_detail", engines_dir=tmp_path / "none")
    weights = ex.pack_weights_sha256(pack)
    assert ex.cached_export("D_detail", weights) == cached
    assert ex.cached_export("D_detail", weights, batch=1) is None
    assert ex.cached_export("D_detail", weights, exporter="legacy") is None
    assert ex.cached_export("D_detail", weights, opset=ex.DEFAULT_OPSET - 1) is None
    assert ex.cached_export("E_flame", "0" * 64) is None
    monkeypatch.setattr(cli, "open_pack", lambda assets=None: pack)
    assert cli.main(["--networks", "D_detail", "--out", str(tmp_path / "out")]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert "max rel err" in line and line.endswith("(the same export, from the cache)")
    assert (tmp_path / "out" / "D_detail.onnx").read_bytes() == cached.read_bytes()
    side = ex.read_sidecar(tmp_path / "out" / "D_detail.onnx.json")
    assert ex.onnx_problem(tmp_path / "out" / "D_detail.onnx", side, weights) is None


def test_export_cli_fails_loudly_in_one_line_when_parity_fails(tmp_path, monkeypatch, capsys):
    cli = _load_cli("export_onnx")
    monkeypatch.setattr(cli, "open_pack", lambda assets=None: memory_pack())
    rc = cli.main(["--networks", "D_detail", "--out", str(tmp_path), "--max-rel-err", "1e-12"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and "relative error" in err[0] and "D_detail" in err[0]


def test_export_cli_rejects_a_bad_batch_in_one_line(capsys):
    cli = _load_cli("export_onnx")
    assert cli.main(["--batch", "zero"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_build_engines_without_tensorrt_exits_nonzero_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "build_engines.py"), "--onnx-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "TensorRT is not installed" in lines[0] and "pip install tensorrt-cu12" in lines[0]
    assert "pypi.nvidia.com" in lines[0]


# ----------------------------------------------------------------------------------------------------------
# The engine build flow against a stand-in `tensorrt` module (the real one cannot be installed here). This
# checks our sequencing, sidecars, timing cache and staleness handling, not TensorRT itself.


def _stub_tensorrt(monkeypatch, gpu="NVIDIA H100 80GB HBM3", parse_errors=()):
    import importlib.machinery
    import types

    calls = {"builds": 0, "profile": {}, "flags": [], "pool": None}

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape, self.dtype = name, shape, "DataType.FLOAT"

    class Network:
        num_inputs = num_outputs = 1

        def get_input(self, i):
            return Tensor("latent", (-1, 181))

        def get_output(self, i):
            return Tensor("uv_z", (-1, 1, 256, 256))

    class Error:
        def __init__(self, text):
            self.text = text

        def code(self):
            return "ErrorCode.UNSUPPORTED_NODE"

        def node(self):
            return 7

        def desc(self):
            return self.text

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            self.num_errors = len(parse_errors)
            return not parse_errors

        def get_error(self, i):
            return Error(parse_errors[i])

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls["profile"][name] = (tuple(lo), tuple(opt), tuple(hi))

    class Cache:
        def serialize(self):
            return b"timing"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["pool"] = size

        def set_flag(self, flag):
            calls["flags"].append(flag)

        def add_optimization_profile(self, profile):
            pass

        def create_timing_cache(self, data):
            calls["cache_in"] = data
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return Cache()

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            assert flags == 0
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls["builds"] += 1
            return b"plan"

    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = "10.9.0.34"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Builder, trt.OnnxParser = Builder, Parser
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("capture.trt._TRT_LOGGER", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=0: gpu)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=0: (9, 0))
    return calls


def test_engine_build_flow_writes_plan_sidecar_and_timing_cache(exported, tmp_path, monkeypatch):
    from capture import trt as trt_lib

    calls = _stub_tensorrt(monkeypatch)
    onnx_path = tmp_path / "D_detail.onnx"
    shutil.copy(exported / "D_detail.onnx", onnx_path)
    shutil.copy(exported / "D_detail.onnx.json", tmp_path / "D_detail.onnx.json")
    options = trt_lib.BuildOptions(precision="fp16", max_batch=4, timing_cache=tmp_path / "timing.cache")
    side = trt_lib.build_engine(onnx_path, options=options, log=lambda line: None)

    engine = tmp_path / "D_detail.engine"
    assert engine.read_bytes() == b"plan" and (tmp_path / "timing.cache").read_bytes() == b"timing"
    assert json.loads((tmp_path / "D_detail.engine.json").read_text()) == side
    assert side["gpu"] == "NVIDIA H100 80GB HBM3" and side["compute_capability"] == "9.0"
    assert side["tensorrt"] == "10.9.0.34" and side["precision"] == "fp16"
    assert side["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert side["weights_sha256"] == memory_pack().meta["weights_sha256"]
    assert side["profile"]["max_batch"] == 4 and side["profile"]["opt_batch"] == 1
    assert calls["profile"] == {"latent": ((1, 181), (1, 181), (4, 181))}
    assert calls["flags"] == ["fp16"] and calls["pool"] == 4 << 30 and calls["builds"] == 1

    # Up to date: kept. Another GPU: refused without rebuild, rebuilt with it (timing cache now read back).
    assert trt_lib.ensure_engine(onnx_path, options=options, rebuild=False) == engine
    _stub_tensorrt(monkeypatch, gpu="NVIDIA GeForce RTX 4090")
    with pytest.raises(trt_lib.StaleEngineError, match="built for GPU 'NVIDIA H100.*RTX 4090.*build_engines.py"):
        trt_lib.ensure_engine(onnx_path, options=options, rebuild=False)
    calls = _stub_tensorrt(monkeypatch, gpu="NVIDIA GeForce RTX 4090")
    trt_lib.ensure_engine(onnx_path, options=options, rebuild=True, log=lambda line: None)
    assert calls["builds"] == 1 and calls["cache_in"] == b"timing"
    assert json.loads((tmp_path / "D_detail.engine.json").read_text())["gpu"] == "NVIDIA GeForce RTX 4090"


def test_engine_build_lists_every_parser_error(exported, monkeypatch):
    from capture import trt as trt_lib

    _stub_tensorrt(monkeypatch, parse_errors=("Conv: bad pads", "Resize: unsupported mode"))
    with pytest.raises(trt_lib.TensorRTError, match=r"2 errors.*\[0\].*bad pads.*\[1\].*unsupported mode"):
        trt_lib.parse_onnx(exported / "D_detail.onnx")


def test_build_engines_cli_builds_each_network(exported, tmp_path, monkeypatch, capsys):
    calls = _stub_tensorrt(monkeypatch)
    for name in ("E_flame", "E_detail", "D_detail"):
        (tmp_path / f"{name}.onnx").symlink_to(exported / f"{name}.onnx")
    cli = _load_cli("build_engines")
    assert cli.main(["--onnx-dir", str(tmp_path), "--fp32", "--max-batch", "2"]) == 0
    assert calls["builds"] == 3 and calls["flags"] == []
    assert (tmp_path / "timing.cache").is_file()
    for name in ("E_flame", "E_detail", "D_detail"):
        assert json.loads((tmp_path / f"{name}.engine.json").read_text())["precision"] == "fp32"
    assert cli.main(["--onnx-dir", str(tmp_path / "empty")]) == 2
    assert "run `capture-export" in capsys.readouterr().err
