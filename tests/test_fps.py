"""benchmarks/fps.py and the fast paths it measures.

The fast functions are checked against the straightforward implementations they replace (and those against
analytic cases); fps.py is smoke-tested on a handful of frames: it runs, its JSON has every stage, the eager
reference and the ratios. No timing is asserted anywhere.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from capture.appearance import UVSampler, detail_normals, face_incidence, grid_normals, grid_triangles, vertex_normals
from capture.reference import displacement_to_normals, render_views, world2uv
from capture.reference import vertex_normals as reference_vertex_normals
from capture.render import covering_window, get_rasterizer
from capture.stream.pipeline import StepTimes, no_times
from capture.views import lit_pixels
from meshes import front_hemisphere

ROOT = Path(__file__).resolve().parents[1]


def _load_fps():
    return importlib.import_module("capture.fps")


# ------------------------------------------------------------------------------------------------ fast paths
def test_grid_normals_of_a_plane_are_its_normal():
    # z = 0.3 x - 0.2 y over a grid with spacing h: every interior normal is (-0.3, 0.2, 1) / norm, up to the
    # winding's sign (grid rows grow downwards, so the grid's own orientation decides it).
    size, h = 32, 0.1
    ys, xs = torch.meshgrid(torch.arange(size) * h, torch.arange(size) * h, indexing="ij")
    positions = torch.stack([xs, ys, 0.3 * xs - 0.2 * ys])[None].float()
    n = grid_normals(positions)
    expect = torch.tensor([-0.3, 0.2, 1.0]) / torch.tensor([-0.3, 0.2, 1.0]).norm()
    inner = n[0, :, 5:size - 6, 2:size - 3].reshape(3, -1).t()
    cos = (inner @ expect).abs()
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    assert (n[0, :, :5] == 0).all() and (n[0, :, :, :2] == 0).all()  # DECA's margins are untouched


def test_grid_normals_match_the_triangle_list_normals():
    gen = torch.Generator().manual_seed(0)
    size = 40
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    positions = torch.stack([xs, ys, 0.3 * torch.sin(3 * xs) * ys])[None] + 0.01 * torch.randn(1, 3, size, size,
                                                                                                generator=gen)
    reference = reference_vertex_normals(positions.reshape(1, 3, -1).permute(0, 2, 1), grid_triangles(size))
    fast = grid_normals(positions).reshape(1, 3, -1).permute(0, 2, 1)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)


def test_vertex_normals_fast_and_uv_sample_match_the_plain_ones():
    verts, faces, uv = front_hemisphere(extent=0.9)
    v = torch.as_tensor(verts)[None].repeat(2, 1, 1)
    v[1] *= torch.tensor([1.0, 0.5, 2.0])  # two different meshes in one batch
    f = torch.as_tensor(faces)
    fast = vertex_normals(v, f, face_incidence(f, v.shape[1]))
    torch.testing.assert_close(fast, reference_vertex_normals(v, f), atol=1e-5, rtol=0)
    sampler = UVSampler.build(uv, faces, faces, size=32)
    attrs = torch.cat([v, fast], -1)
    torch.testing.assert_close(sampler.sample(attrs), world2uv(sampler, attrs), atol=1e-6, rtol=0)


def test_detail_normals_match_displacement_to_normals():
    verts, faces, uv = front_hemisphere(extent=0.9)
    v = torch.as_tensor(verts)[None]
    f = torch.as_tensor(faces)
    normals = reference_vertex_normals(v, f)
    sampler = UVSampler.build(uv, faces, faces, size=64)
    gen = torch.Generator().manual_seed(1)
    uv_z = 0.01 * torch.randn(1, 1, 64, 64, generator=gen)
    mask = (torch.rand(64, 64, generator=gen) > 0.3).float()
    fixed = torch.full((64, 64), 1e-3)
    reference = displacement_to_normals(uv_z, v, normals, sampler, mask, fixed, grid_triangles(64))
    fast = detail_normals(uv_z, sampler.sample(v), sampler.sample(normals), mask, fixed)
    torch.testing.assert_close(fast, reference.uv_detail_normals, atol=1e-5, rtol=0)


def test_lit_pixels_match_render_views():
    verts, faces, uv = front_hemisphere(extent=0.9)
    v = torch.as_tensor(verts)[None] * torch.tensor([0.7, 0.7, 0.1]) + torch.tensor([0.0, 0.0, 0.5])
    f = torch.as_tensor(faces)
    rast = get_rasterizer("cpu")
    uv_ndc = torch.as_tensor(uv * 2 - 1)
    gen = torch.Generator().manual_seed(2)
    albedo = torch.rand(1, 3, 32, 32, generator=gen)
    normals_uv = torch.nn.functional.normalize(torch.randn(1, 3, 32, 32, generator=gen), dim=1)
    light = torch.randn(1, 9, 3, generator=gen)
    wn = reference_vertex_normals(v, f)
    views = render_views(rast, v, f, uv_ndc, f, wn, wn, (48, 64), albedo_uv=albedo, light=light,
                         detail_normals_uv=normals_uv, want_shape=False)
    fragments = rast.rasterize(v, f, (48, 64))
    windowed = rast.rasterize(v, f, (48, 64), covering_window(v, (48, 64)))
    for frags, kernel in ((fragments, "torch"), (fragments, "auto"), (windowed, "torch"), (windowed, "auto")):
        pixels = lit_pixels(frags, uv_ndc[f], albedo, normals_uv, light, kernel=kernel)
        lit, alpha = pixels.images()
        assert pixels.index.numel() == int(views.alpha.sum()) > 500
        torch.testing.assert_close(alpha, views.alpha)
        torch.testing.assert_close(lit, views.lit, atol=1e-5, rtol=1e-5)


def test_fast_renderer_matches_the_reference_renderer(demo_pack, monkeypatch):
    from capture.avatar import demo_identity
    from capture.crop import crop_transform
    from capture.deca import DECA
    from capture.render import cpu_shading
    from capture.retarget import AvatarRenderer

    deca = DECA.from_pack(demo_pack)
    avatar = demo_identity(deca)
    gen = torch.Generator().manual_seed(3)
    source = avatar.codes.replace(exp=0.8 * torch.randn(1, 50, generator=gen),
                                  pose=torch.tensor([[0.05, 0.2, 0.0, 0.15, 0.0, 0.0]]))
    frame = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    T = crop_transform((60, 10, 150, 100))
    for layout in ("side-by-side", "overlay"):
        times = StepTimes()
        ref = AvatarRenderer(deca, avatar, layout, (120, 200), reference=True).render(frame, source, T).image
        fast = AvatarRenderer(deca, avatar, layout, (120, 200), times=times).render(frame, source, T).image
        assert ref.shape == fast.shape
        if layout == "side-by-side":  # the input untouched on the left, the grey background around the head
            assert np.array_equal(fast[:, :200], frame)
            assert (fast[:, 200:] == fast[0, -1]).all(-1).mean() > 0.5 and tuple(fast[0, -1]) == (31, 31, 31)
        diff = np.abs(ref.astype(int) - fast.astype(int)).max(-1)
        assert (diff > 0).mean() < 1e-3  # rounding at the odd pixel / edge
        assert (diff > 1).sum() <= 3
        assert {"LBS", "D_detail", "shading", "rasterize", "composite"} <= set(times.stats())
        # without a C compiler: the torch steps of the drawing and of the compositing, the same picture
        with monkeypatch.context() as m:
            m.setattr(cpu_shading, "kernel_error", lambda: "no compiler (test)")
            torch_only = AvatarRenderer(deca, avatar, layout, (120, 200)).render(frame, source, T).image
        diff = np.abs(torch_only.astype(int) - fast.astype(int)).max(-1)
        assert (diff > 0).mean() < 1e-3 and (diff > 1).sum() <= 3


def test_step_times_record_and_no_times_is_free():
    times = StepTimes()
    for _ in range(3):
        with times("a"):
            pass
    times.add("b", 0.5)
    stats = times.stats()
    assert stats["a"].count == 3 and stats["b"].median_ms == pytest.approx(500.0)
    with no_times("anything"):
        pass
    assert times.cpu_ms() == {}  # CPU time only when asked for


def test_step_times_cpu_counts_the_threads_work_not_its_sleep():
    import time

    times = StepTimes(cpu=True)
    with times("sleep"):
        time.sleep(0.05)
    with times("work"):
        end = time.thread_time() + 0.03
        while time.thread_time() < end:
            pass
    times.add("given", 0.2, 0.1)
    times.add("given", 0.2, 0.3)
    cpu = times.cpu_ms()
    assert cpu["sleep"] < 10 and cpu["work"] >= 30 and cpu["given"] == pytest.approx(200.0)
    assert times.stats()["sleep"].median_ms >= 50


def test_int8_quantisation_of_a_small_graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from capture.artifacts import read_sidecar, sidecar_path
    from capture.int8 import calibration_sha256, int8_error, quantize_int8
    from capture.nets import GraphSpec

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    g = rng.normal(0, 0.5, (8, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "g"], ["code"], transB=1)],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("code", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
         helper.make_tensor("g", TensorProto.FLOAT, g.shape, g.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "tiny.onnx"
    onnx.save(model, src)
    spec = GraphSpec("Tiny", "image", (3, 16, 16), "code", (8,), "e_flame")
    calibration = rng.random((8, 3, 16, 16)).astype(np.float32)
    side = quantize_int8(src, tmp_path / "tiny.int8.onnx", calibration, spec, source="random test images")
    assert side["precision"] == "int8" and read_sidecar(sidecar_path(tmp_path / "tiny.int8.onnx")) == side
    assert side["calibration"] == {"source": "random test images", "count": 8,
                                   "sha256": calibration_sha256(calibration)}
    # the error recorded in the sidecar is the error on the calibration images themselves
    recorded = dict(side["error_vs_fp32"])
    assert recorded.pop("measured_on") == "the calibration inputs"
    assert recorded == pytest.approx(int8_error(src, tmp_path / "tiny.int8.onnx", calibration, spec))
    ops = {n.op_type for n in onnx.load(tmp_path / "tiny.int8.onnx").graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # a smooth little network: 8-bit ranges keep the output within ~2% of its size
    err = int8_error(src, tmp_path / "tiny.int8.onnx", rng.random((6, 3, 16, 16)).astype(np.float32), spec)
    assert err["rms"] < 0.03 * err["reference_rms"]
    with pytest.raises(Exception, match="calibration must be"):
        quantize_int8(src, tmp_path / "bad.onnx", calibration[:, :2], spec)


# ------------------------------------------------------------------------------------------------ fps.py
def test_compare_counts_pixel_and_code_differences():
    fps = _load_fps()
    a = fps.RunResult("a", "", 2, 1.0, 2.0, {}, {}, 0.0, None, {})
    b = fps.RunResult("eager", "", 2, 1.0, 1.0, {}, {}, 0.0, None, {})
    img = np.zeros((2, 2, 3), np.uint8)
    other = img.copy()
    other[0, 0] = (20, 0, 0)  # one pixel of four off by 20 in one channel
    a.pictures, b.pictures = {0: other}, {0: img}
    a.codes = [{"exp": np.full(50, 0.5), "pose": np.array([0, 0, 0, 0.1, 0, 0])}, None]
    b.codes = [{"exp": np.full(50, 0.25), "pose": np.zeros(6)}, None]
    out = fps.compare(a, b)
    assert out["pixel_mean_abs"] == pytest.approx(20 / 12, abs=1e-4)  # rounded to 4 places
    assert out["pixel_max_abs"] == 20 and out["pixels_off_by_more_than_8_pct"] == pytest.approx(25.0)
    assert out["exp_max_abs"] == pytest.approx(0.25) and out["jaw_max_abs_rad"] == pytest.approx(0.1)
    assert out["frames_with_codes"] == 1


@pytest.mark.slow
def test_fps_runs_and_writes_every_stage_with_ratios(tmp_path, demo_pack_dir, capsys):
    fps = _load_fps()
    out = tmp_path / "fps.json"
    nice = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None
    code = fps.main(["--frames", "4", "--chunk", "2", "--backends", "torch", "--size", "256x192", "--warmup", "1",
                     "--json", str(out), "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["priority"]) == {"nice", "raised", "why", "previous"}
    if nice is not None:  # raised while measuring where allowed, and back after
        assert os.getpriority(os.PRIO_PROCESS, 0) == nice
    for key in ("date", "command", "machine", "libraries", "input", "eager", "backends", "load_average"):
        assert key in report
    assert report["machine"]["nproc"] >= 1 and report["libraries"]["torch"]
    runs = [report["eager"], report["backends"]["torch"]]
    assert report["codes_from"] == "landmarks"  # auto on the synthetic pack; the eager run is E_flame's
    for run, absent in zip(runs, ("fit", "E_flame")):
        assert run["frames"] == 4 and run["fps"] > 0 and run["peak_rss_mb"] > 0
        assert absent not in run["stages"]
        for stage in (s for s in fps.STAGES if s != absent):
            assert run["stages"][stage]["count"] >= 1, stage
            assert run["stages"][stage]["p95_ms"] >= run["stages"][stage]["median_ms"] >= 0
        assert run["latency_ms"]["p95"] >= run["latency_ms"]["median"] > 0
    torch_run = report["backends"]["torch"]
    # two chunks each, interleaved: the ratio is the median of the paired chunk ratios
    assert len(report["eager"]["chunk_fps"]) == len(torch_run["chunk_fps"]) == 2
    paired = [a / b for a, b in zip(torch_run["chunk_fps"], report["eager"]["chunk_fps"])]
    assert torch_run["ratio_to_eager"] == pytest.approx(float(np.median(paired)), rel=1e-2)
    assert torch_run["ratio_to_eager_whole_run"] == pytest.approx(torch_run["fps"] / report["eager"]["fps"], rel=1e-2)
    assert torch_run["codes_from"] == "landmarks" and report["eager"]["codes_from"] == "network"
    assert torch_run["resolution"] == report["eager"]["resolution"] == "256x192"
    assert isinstance(report["machine_load"]["busy"], bool)
    assert torch_run["vs_eager"]["frames_compared"] >= 1
    assert {"decode", "crop", "rasterize", "encode", "stage draw"} <= set(torch_run["stage_cpu_ms"])
    # the eager reference was loaded too: the backend's own peak RSS comes from a fresh process running it alone
    assert torch_run["peak_rss_alone"] is True and torch_run["peak_rss_process_mb"] > 0
    assert 0 < torch_run["peak_rss_mb"] != torch_run["peak_rss_process_mb"]
    printed = capsys.readouterr().out
    assert "eager" in printed and "x eager" in printed and printed.rstrip().splitlines()[-1].strip()
    assert "each alone, in a fresh process" in printed
    # a probe that cannot run says why in one line instead of a figure
    failed = fps.alone_rss(fps.parse_args(["--size", "256x192"]), "tensorrt", "landmarks",
                           Path(report["input"]["path"]))
    assert set(failed) == {"error"} and "tensorrt" in failed["error"] and "\n" not in failed["error"]


def test_alone_rss_reads_only_a_figure_from_the_probe(monkeypatch):
    """The probe's last line is its JSON figure; anything else it prints there is a one-line error, no traceback."""
    fps = _load_fps()
    args = fps.parse_args(["--size", "256x192"])
    clip = Path("/cache/bench/clip-1280x720-200.mp4")  # the file the measured run decoded
    printed = {"out": ""}
    monkeypatch.setattr(fps.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, printed["out"], ""))
    printed["out"] = 'warming up\n{"peak_rss_mb": 812.5, "frames": 40}\n'
    assert fps.alone_rss(args, "torch", "landmarks", clip) == {"peak_rss_mb": 812.5, "frames": 40}
    for junk in ("Segmentation fault?\n", '{"frames": 40}\n', "[1, 2]\n"):
        printed["out"] = junk
        failed = fps.alone_rss(args, "torch", "landmarks", clip)
        assert set(failed) == {"error"} and "unreadable probe output" in failed["error"]
    # given the clip the measured run decoded, the probe reads that file at its own size (nothing to render or
    # resample in the process whose memory it measures)
    commands = []
    monkeypatch.setattr(fps.subprocess, "run", lambda command, **k: commands.append(command) or
                        subprocess.CompletedProcess(command, 0, '{"peak_rss_mb": 1.0, "frames": 1}\n', ""))
    fps.alone_rss(args, "torch", "landmarks", clip)
    command = commands[0]
    assert command[command.index("--input") + 1] == str(clip) and "--size" not in command


@pytest.mark.slow
def test_fps_sizes_interleave_the_sizes_and_give_paired_ratios(tmp_path, demo_pack_dir, capsys):
    fps = _load_fps()
    out = tmp_path / "scaling.json"
    code = fps.main(["--frames", "4", "--chunk", "2", "--backends", "torch", "--sizes", "192x128,256x192",
                     "--warmup", "1", "--json", str(out), "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["eager"] is None and report["scaling"]["sizes"] == ["192x128", "256x192"]
    runs = report["scaling"]["backends"]["torch"]
    small, large = runs["192x128"], runs["256x192"]
    assert (small["resolution"], large["resolution"]) == ("192x128", "256x192")
    assert small["frames"] == large["frames"] == 4 and len(small["chunk_fps"]) == len(large["chunk_fps"]) == 2
    assert small["ratio_to_first"] == 1.0
    paired = [a / b for a, b in zip(large["chunk_fps"], small["chunk_fps"])]
    assert large["ratio_to_first"] == pytest.approx(float(np.median(paired)), rel=1e-2)
    assert large["stages"]["rasterize"]["count"] >= 1 and large["codes_from"] == "landmarks"
    assert report["backends"]["torch"]["resolution"] == "192x128"  # the first size, where plain runs keep it
    # every size's path was loaded in this process: each size's peak RSS is taken again alone, in a fresh process
    for run in (small, large):
        assert run["peak_rss_alone"] is True and 0 < run["peak_rss_mb"] != run["peak_rss_process_mb"]
    assert report["backends"]["torch"]["peak_rss_mb"] == small["peak_rss_mb"]
    printed = capsys.readouterr().out
    assert "scaling:" in printed and "256x192" in printed
    with pytest.raises(SystemExit):
        fps.parse_args(["--sizes", "640x360"])  # one size is no scaling
    with pytest.raises(SystemExit):
        fps.parse_args(["--sizes", "640x360,1280x720", "--live"])


def test_resampled_clip_keeps_frames_and_timestamps_and_the_aspect(tmp_path, monkeypatch):
    """`--size`/`--sizes` with `--input CLIP`: the clip's first frames at another size, their timestamps kept,
    made once; a size of another aspect ratio is refused in one line."""
    from fractions import Fraction

    from capture.stream.reader import VideoReader
    from capture.stream.writer import VideoWriter

    fps = _load_fps()
    monkeypatch.setenv("CAPTURE_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "in.mp4"
    pts = [0, 3, 6, 10, 13, 16]  # not evenly spaced, in 1/30 s
    with VideoWriter(source, 128, 96, fps=10, time_base=Fraction(1, 30)) as writer:
        for k, t in enumerate(pts):
            image = np.zeros((96, 128, 3), np.uint8)
            image[:, : 20 * (k + 1)] = 200  # a bar that grows: frames tell apart
            writer.write(image, t)
    said = []
    out = fps.resampled_clip(source, 4, (256, 192), said.append)
    with VideoReader(out) as reader:
        frames = list(reader)
    assert [f.image.shape for f in frames] == [(192, 256, 3)] * 4
    assert [f.time for f in frames] == pytest.approx([t / 30 for t in pts[:4]], abs=1e-3)
    # the bar, twice as long: 40 px of 256 in the first frame, 160 in the fourth
    assert [int((f.image[96, :, 0] > 100).sum()) for f in frames] == pytest.approx([40, 80, 120, 160], abs=2)
    assert len(said) == 1 and fps.resampled_clip(source, 4, (256, 192), said.append) == out and len(said) == 1
    with pytest.raises(SystemExit) as refused:
        fps.resampled_clip(source, 4, (256, 144), said.append)
    assert "128x96" in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(SystemExit, match="no frames decoded"):  # nothing to resample: one line, nothing cached
        fps.resampled_clip(source, 0, (256, 192), said.append)
    assert not list((tmp_path / "cache").rglob("*-0.mp4"))
    # an image sequence (plate numbers 1001...): the same frames, at the plate's times, and a new clip when a
    # file changes
    plate = tmp_path / "plate"
    plate.mkdir()
    with VideoReader(source) as reader:
        for k, frame in enumerate(reader):
            Image.fromarray(frame.image).save(plate / f"p.{1001 + k}.png")
    from_plate = fps.resampled_clip(plate, 4, (256, 192), said.append)
    with VideoReader(from_plate) as reader:
        frames = list(reader)
    assert [int((f.image[96, :, 0] > 100).sum()) for f in frames] == pytest.approx([40, 80, 120, 160], abs=2)
    assert [f.time for f in frames] == pytest.approx([(1001 + k) / 25 for k in range(4)], abs=1e-3)
    assert fps.resampled_clip(tmp_path / "plate" / "p.####.png", 4, (256, 192), said.append) == from_plate
    Image.fromarray(np.zeros((96, 128, 3), np.uint8)).save(plate / "p.1002.png")
    assert fps.resampled_clip(plate, 4, (256, 192), said.append) != from_plate
    args = fps.parse_args(["--input", str(source), "--sizes", "128x96,256x192"])
    assert args.size == "128x96" and args.no_eager
    assert fps.parse_args(["--input", str(source)]).size is None  # a clip runs at its own size


def test_fps_says_a_bad_input_in_one_line(tmp_path, demo_pack_dir):
    """fps.py goes through the CLIs' error handling: a file that is not a video is one `error:` line, status 2."""
    from cli_runs import run_main

    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    done = run_main("capture.fps", "--input", bad, "--size", "256x192", "--assets", demo_pack_dir, "--backends",
                    "torch", "--frames", "2", "--priority", "0", "--quiet")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(bad) in errors[0] and "not a readable video" in errors[0], done.stderr


def test_chunk_sizes_cover_the_clip():
    fps = _load_fps()
    assert fps.chunk_sizes(200, 25) == [25] * 8
    assert fps.chunk_sizes(60, 25) == [25, 35]  # a short remainder joins the last chunk
    assert fps.chunk_sizes(64, 25) == [25, 25, 14]
    assert fps.chunk_sizes(10, 25) == [10]
    for n, c in ((1, 1), (7, 3), (101, 10), (9, 4)):
        assert sum(fps.chunk_sizes(n, c)) == n


def test_paired_ratio_is_the_median_and_ignores_one_disturbed_chunk():
    fps = _load_fps()
    eager = fps.RunResult("eager", "", 0, 0.0, 0.0, {}, {}, 0.0, None, {})
    fast = fps.RunResult("b", "", 0, 0.0, 0.0, {}, {}, 0.0, None, {})
    eager.chunk_fps = [10.0, 10.0, 2.0, 10.0, 10.0]  # another process took the machine during chunk 3
    fast.chunk_fps = [30.0, 30.0, 30.0, 30.0, 30.0]
    out = fps.paired_ratios(fast, eager)
    assert out["median"] == pytest.approx(3.0) and out["max"] == pytest.approx(15.0)
    assert out["iqr_relative"] == pytest.approx(0.0)
    # a whole-run ratio would have read 30 / (42 / 5.8) = 4.1
    eager.chunk_fps = [10.0, 5.0, 10.0, 5.0]
    assert fps.paired_ratios(fast, eager)["iqr_relative"] > fps.BUSY_SPREAD


def test_cpu_ratio_is_the_median_of_paired_chunk_cpu_times():
    """The ratio in CPU time per frame: chunks without a figure are left out; entry_with_ratios records it."""
    fps = _load_fps()
    eager = fps.RunResult("eager", "", 5, 1.0, 5.0, {}, {}, 0.0, None, {})
    fast = fps.RunResult("b", "", 5, 1.0, 25.0, {}, {}, 0.0, None, {})
    eager.chunk_cpu_ms = [300.0, 290.0, 900.0, None, 310.0]
    fast.chunk_cpu_ms = [60.0, 58.0, 60.0, 50.0, 62.0]
    assert fps.paired_cpu_ratio(fast, eager) == pytest.approx(5.0)  # median of 5, 5, 15, 5
    eager.chunk_fps, fast.chunk_fps, eager.fps_from_medians = [5.0] * 5, [25.0] * 5, 5.0
    assert fps.entry_with_ratios(fast, eager)["cpu_ratio_to_eager"] == pytest.approx(5.0)
    fast.chunk_cpu_ms = []
    assert fps.paired_cpu_ratio(fast, eager) is None


def test_machine_load_says_when_the_machine_was_busy():
    fps = _load_fps()
    run = {"wall_s": 10.0, "cores_busy": 1.8}
    report = {"machine": {"nproc": 2}, "load_average": {"before": [0.2, 0.1, 0.1], "after": [1.9, 0.9, 0.5]},
              "eager": dict(run), "backends": {"b": dict(run, ratio_chunks={"iqr_relative": 0.05})}}
    quiet = fps.machine_load(report)
    assert not quiet["busy"] and quiet["other_load_estimate"] == pytest.approx(0.1)
    report["load_average"] = {"before": [3.5, 2.0, 1.0], "after": [5.0, 3.0, 1.0]}
    report["backends"]["b"]["ratio_chunks"]["iqr_relative"] = 0.6
    busy = fps.machine_load(report)
    assert busy["busy"] and len(busy["reasons"]) == 3
    report["eager"]["chunk_cpu_ms_per_frame"] = [250.0, 260.0, 2700.0]  # the reference itself degraded
    assert (fps.machine_load(report)["eager_cpu_swing"] == pytest.approx(10.8)
            and len(fps.machine_load(report)["reasons"]) == 4)
    report["eager"]["chunk_cpu_ms_per_frame"] = [250.0, 260.0, 255.0]
    assert len(fps.machine_load(report)["reasons"]) == 3
    # measured CPU time of the other processes replaces the load averages (which lag by a minute)
    report["backends"]["b"]["ratio_chunks"]["iqr_relative"] = 0.05
    report["other_processes_cores"] = 0.1
    assert not fps.machine_load(report)["busy"] and fps.machine_load(report)["other_load_estimate"] == 0.1
    report["other_processes_cores"] = 1.6
    assert fps.machine_load(report)["reasons"] == ["other processes kept 1.60 of the 2 CPUs busy during the run"]


def test_machine_load_counts_other_runnable_threads_a_raised_priority_hides():
    """With fps.py at a higher priority other processes get little CPU time, but still want it: busy."""
    fps = _load_fps()
    run = {"wall_s": 10.0, "cores_busy": 1.8}
    report = {"machine": {"nproc": 2}, "load_average": {"before": [0.2], "after": [0.3]},
              "eager": dict(run), "backends": {"b": dict(run)}, "other_processes_cores": 0.6,
              "other_runnable_threads": 2.1, "priority": {"nice": -10, "raised": True}}
    load = fps.machine_load(report)
    assert load["busy"] and load["other_runnable_threads"] == 2.1
    assert load["reasons"] == ["other processes had 2.1 runnable threads on average on 2 CPUs (this run had "
                               "nice -10: they got less than they asked for)"]
    report["other_runnable_threads"] = 0.2
    assert not fps.machine_load(report)["busy"]


def test_cpus_that_share_a_core_are_seen_and_said():
    """Two virtual CPUs on one physical core look like two cores to the guest; the throughput probe does not:
    two threads pinned to one CPU do about one CPU's work. machine_load then says so."""
    fps = _load_fps()
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs and sched_setaffinity")
    import subprocess
    import sys

    code = "from capture.fps import parallel_speedup; print(parallel_speedup(2))"
    if shutil.which("taskset"):
        readings = []
        for _ in range(3):  # the other test workers' bursts can inflate one reading, not three
            one_cpu = subprocess.run(["taskset", "-c", str(min(os.sched_getaffinity(0))), sys.executable, "-c",
                                      code], capture_output=True, text=True, timeout=120)
            assert one_cpu.returncode == 0, one_cpu.stderr
            readings.append(float(one_cpu.stdout))
            if readings[-1] < fps.SHARED_CORES * 2:  # what fps.py flags as shared
                break
        assert min(readings) < fps.SHARED_CORES * 2, readings
    assert fps.parallel_speedup(1) is None
    run = {"wall_s": 10.0, "cores_busy": 1.8}
    report = {"machine": {"nproc": 2}, "load_average": {"before": [0.2], "after": [0.3]}, "eager": dict(run),
              "backends": {"b": dict(run)}, "other_processes_cores": 0.0, "parallel_speedup": {"before": 1.94,
                                                                                               "after": 1.9}}
    assert not fps.machine_load(report)["busy"]
    report["parallel_speedup"]["after"] = 1.15
    load = fps.machine_load(report)
    assert load["busy"] and load["shared_cores"] and "share physical cores" in load["reasons"][0]


def test_raise_priority_sets_every_thread_and_restores_it(monkeypatch):
    fps = _load_fps()
    if not hasattr(os, "setpriority"):
        pytest.skip("no setpriority here")
    nice = {}
    monkeypatch.setattr(fps.os, "getpriority", lambda which, who: 0)
    monkeypatch.setattr(fps.os, "setpriority", lambda which, who, value: nice.__setitem__(who, value))
    done = fps.raise_priority(-10)
    threads = {int(t) for t in os.listdir("/proc/self/task")} if os.path.isdir("/proc/self/task") else {0}
    assert done == {"nice": -10, "raised": True, "why": None, "previous": 0}
    assert threads <= set(nice) and set(nice.values()) == {-10}
    fps.restore_priority(done)
    assert set(nice.values()) == {0}
    assert fps.raise_priority(5)["raised"] is False  # not a higher priority: left alone

    def refuse(which, who, value):
        if value < 0:
            raise PermissionError(1, "Operation not permitted")
        nice[who] = value

    monkeypatch.setattr(fps.os, "setpriority", refuse)
    done = fps.raise_priority(-10)
    assert not done["raised"] and "not permitted" in done["why"]
    fps.restore_priority(done)  # nothing to undo


def test_runnable_counts_see_this_thread():
    fps = _load_fps()
    counts = fps._runnable_counts()
    if counts is None:
        pytest.skip("no /proc here")
    running, ours = counts
    assert ours >= 1 and running >= ours  # this thread is running while it reads


def test_other_cores_counts_what_other_processes_used():
    fps = _load_fps()
    start = fps.cpu_counters()
    if start is None:
        pytest.skip("no /proc/stat here")
    t = time.perf_counter()
    while time.perf_counter() - t < 0.05:
        pass
    measured = fps.other_cores(start, fps.cpu_counters())  # other test workers may be busy: only its type here
    assert isinstance(measured, float) and measured >= 0.0
    assert fps.other_cores((10.0, 1.0, 0.0), (16.0, 2.0, 2.0)) == pytest.approx(2.5)  # 5 of 6 CPU-s were others'
    assert fps.other_cores(None, start) is None
