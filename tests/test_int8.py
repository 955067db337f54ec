"""INT8 as a registry backend: E_flame quantised on calibration crops and D_detail on those faces' latents, their
sidecars, their error against float32 on the same inputs, the cache, and where calibration crops come from.

Uses test_export.py's seeded networks and the graphs it exports once per session.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from capture.artifacts import read_sidecar, sidecar_path
from capture.backends import OnnxRuntimeInt8Backend, make_backend
from capture.int8 import Calibration, calibration_sha256, crops_of_frames, render_faces
from test_export import export_once, memory_pack

# INT8 E_flame may differ from float32 by at most this fraction of the code's rms, on the crops it was
# calibrated on (seeded ResNet-50 on smooth images: 2.1 % measured; 8-bit activations over MinMax ranges).
INT8_TOLERANCE = 0.06
# INT8 D_detail, as a fraction of the displacement's rms on its calibration latents (seeded generator: 1.0 %
# measured; the demo pack's 5.6 %, which was 21 % with the latent's Gemm and BatchNorm quantised too).
DETAIL_TOLERANCE = 0.1


def smooth_images(n: int, seed: int) -> np.ndarray:
    """Image-like inputs: random 8x8 colour fields upsampled to 224x224, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(224, 224), mode="bilinear", align_corners=False).numpy()


@pytest.fixture(scope="module")
def engines_dir(tmp_path_factory):
    return export_once(tmp_path_factory)


@pytest.fixture(scope="module")
def calibration():
    return Calibration.of_crops(smooth_images(12, seed=5), "smooth test images")


@pytest.fixture(scope="module")
def int8_flame(engines_dir, calibration):
    return make_backend("onnxruntime-int8", "E_flame", memory_pack(), "cpu", engines_dir=engines_dir,
                        options={"onnxruntime-int8": {"calibration": calibration, "threads": 1}})


@pytest.fixture(scope="module")
def int8_detail(engines_dir, calibration):
    return make_backend("onnxruntime-int8", "D_detail", memory_pack(), "cpu", engines_dir=engines_dir,
                        options={"onnxruntime-int8": {"calibration": calibration, "threads": 1}})


def _one_at_a_time(run, crops: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(run(crops[i:i + 1])) for i in range(len(crops))]).astype(np.float64)


def test_int8_flame_is_within_tolerance_of_fp32_on_the_same_crops(int8_flame, engines_dir, calibration):
    import onnxruntime as ort

    fp32 = ort.InferenceSession(str(engines_dir / "E_flame.onnx"), providers=["CPUExecutionProvider"])
    crops = calibration.crops()
    ref = _one_at_a_time(lambda x: fp32.run(["code"], {"image": x})[0], crops)
    got = _one_at_a_time(lambda x: int8_flame.run({"image": x})["code"].numpy(), crops)
    rms, ref_rms = np.sqrt(((got - ref) ** 2).mean()), np.sqrt((ref ** 2).mean())
    assert 0 < rms <= INT8_TOLERANCE * ref_rms  # quantised (not fp32 under another name), and close
    # the sidecar's figures are these same figures
    recorded = int8_flame.int8_sidecar["error_vs_fp32"]
    assert recorded["rms"] == pytest.approx(rms, rel=1e-5)
    assert recorded["reference_rms"] == pytest.approx(ref_rms, rel=1e-5)
    assert recorded["measured_on"] == "the calibration inputs"
    assert set(recorded["slices"]) == {"shape", "tex", "exp", "pose", "cam", "light"}


def test_int8_sidecar_records_the_calibration_and_the_source_graph(int8_flame, engines_dir, calibration):
    import onnx

    from capture.artifacts import file_sha256

    side = read_sidecar(sidecar_path(int8_flame.onnx_path))
    assert side == int8_flame.int8_sidecar
    assert side["format"] == "capture.onnx-int8/4" and side["network"] == "E_flame" and side["precision"] == "int8"
    assert side["method"]["float32_nodes"] == []  # E_flame starts with a convolution: all of it is quantised
    assert side["calibration"] == {"source": "smooth test images", "count": 12,
                                   "sha256": calibration_sha256(calibration.crops())}
    assert side["source_onnx_sha256"] == file_sha256(engines_dir / "E_flame.onnx")
    assert side["onnx_sha256"] == file_sha256(int8_flame.onnx_path)
    ops = {n.op_type for n in onnx.load(str(int8_flame.onnx_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "INT8 calibrated on 12 crops of smooth test images" in int8_flame.reason
    assert "code rms error" in int8_flame.reason


def test_int8_graph_is_cached_by_crops_and_requantised_for_other_crops(int8_flame, int8_detail, engines_dir,
                                                                       calibration):
    for network, made in (("E_flame", int8_flame), ("D_detail", int8_detail)):
        mtime = made.onnx_path.stat().st_mtime_ns
        again = OnnxRuntimeInt8Backend(network, memory_pack(), engines_dir=engines_dir, calibration=calibration,
                                       threads=1)
        assert again.onnx_path == made.onnx_path and again.onnx_path.stat().st_mtime_ns == mtime
    # other crops: quantised anew (D_detail's graph: the same cache code as E_flame's, a third of the time)
    other = OnnxRuntimeInt8Backend("D_detail", memory_pack(), engines_dir=engines_dir, threads=1,
                                   calibration=Calibration.of_crops(smooth_images(4, seed=9), "other images"))
    assert other.onnx_path != int8_detail.onnx_path and other.int8_sidecar["calibration"]["count"] == 8


def test_calibration_crops_come_from_the_frames_or_else_the_fallback():
    from capture.stills import astronaut

    photo = astronaut()
    fallback = Calibration.of_crops(smooth_images(2, seed=1), "fallback images")
    with_face = Calibration.of_frames(lambda: [photo, photo, photo], "the input's first frames", fallback, limit=2)
    crops = with_face.crops()
    assert crops.shape == (2, 3, 224, 224) and crops.dtype == np.float32 and 0 <= crops.min() <= crops.max() <= 1
    assert with_face.source == "the input's first frames"
    blank = np.zeros((240, 320, 3), np.uint8)
    without = Calibration.of_frames(lambda: [blank, blank], "a blank clip", fallback)
    assert np.array_equal(without.crops(), fallback.crops())
    assert without.source == "fallback images (no face in a blank clip)"
    assert crops_of_frames([blank], 4).shape == (0, 3, 224, 224)
    with pytest.raises(Exception, match="expected face crops"):
        Calibration("nothing", lambda: np.zeros((0, 3, 224, 224), np.float32)).crops()


def test_pack_renders_are_varied_face_crops(small_pack):
    from capture.deca import DECA

    crops = render_faces(DECA(small_pack), 3, seed=0)
    assert crops.shape == (3, 3, 224, 224) and crops.dtype == np.float32
    assert 0 <= crops.min() and crops.max() <= 1
    assert np.abs(crops[0] - crops[1]).mean() > 0.01  # different faces, poses and backgrounds
    assert np.array_equal(crops, render_faces(DECA(small_pack), 3, seed=0))  # seeded: the cache key is stable


def test_int8_detail_is_calibrated_on_the_faces_latents_and_keeps_the_latent_layers_float(int8_detail, engines_dir,
                                                                                          calibration):
    import onnx
    import onnxruntime as ort

    from capture.int8 import detail_latents

    latents = detail_latents(memory_pack(), calibration.crops(), engines_dir=engines_dir)
    assert latents.shape == (24, 181)
    # the first half: the faces' own codes, as float32 E_flame and E_detail give them (jaw | exp | detail)
    flame = ort.InferenceSession(str(engines_dir / "E_flame.onnx"), providers=["CPUExecutionProvider"])
    code = flame.run(["code"], {"image": calibration.crops()[:1]})[0][0]
    np.testing.assert_allclose(latents[0, :53], np.r_[code[203:206], code[150:200]], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(latents[12:, 53:], latents[:12, 53:])  # the broad half keeps the detail codes
    fp32 = ort.InferenceSession(str(engines_dir / "D_detail.onnx"), providers=["CPUExecutionProvider"])
    ref = _one_at_a_time(lambda x: fp32.run(["uv_z"], {"latent": x})[0], latents)
    got = _one_at_a_time(lambda x: int8_detail.run({"latent": x})["uv_z"].numpy(), latents)
    rms, ref_rms = np.sqrt(((got - ref) ** 2).mean()), np.sqrt((ref ** 2).mean())
    assert 0 < rms <= DETAIL_TOLERANCE * ref_rms, rms / ref_rms
    side = int8_detail.int8_sidecar
    assert side["network"] == "D_detail" and side["calibration"]["count"] == 24
    assert side["calibration"]["source"] == "latents of 12 crops of smooth test images"
    assert side["error_vs_fp32"]["rms"] == pytest.approx(rms, rel=1e-5)
    kept = side["method"]["float32_nodes"]
    graph = onnx.load(str(int8_detail.onnx_path)).graph
    ops = {n.name: n.op_type for n in graph.node}
    assert kept and {ops[name] for name in kept} >= {"Gemm", "BatchNormalization"}
    first_conv = next(n for n in graph.node if n.op_type == "Conv")
    assert any(n.op_type == "DequantizeLinear" and n.output[0] in first_conv.input for n in graph.node)
    # the tail from the one-channel last convolution on is float32: its weights, and the output itself
    last_conv = [n for n in graph.node if n.op_type == "Conv"][-1]
    assert {ops[name] for name in kept} >= {"Conv", "Tanh", "Mul"} and last_conv.name in kept
    weights = {t.name for t in graph.initializer}
    assert last_conv.input[1] in weights  # a float initializer, not the output of a DequantizeLinear
    producer = {out: n.op_type for n in graph.node for out in n.output}
    assert producer["uv_z"] == "Mul"
    assert "INT8 D_detail calibrated on 24 latents of 12 crops of smooth test images" in int8_detail.reason
    assert "displacement rms error" in int8_detail.reason
