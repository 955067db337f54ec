"""`python benchmarks/gpu_check.py --out DIR`: every GPU part of capture checked in one call, in under 8 minutes.

    python benchmarks/gpu_check.py --out DIR [--wheels wheels/] [--budget-s 450] [--parts a,b] [--dry-run]

Made for the bare GPU machine (torch with CUDA, CuPy, nvcc, onnxruntime for the CPU; no PyAV, no MediaPipe,
no TensorRT, no network): frames are rendered into memory and faces are boxed from the render, so neither
PyAV nor MediaPipe is needed; nvdiffrast is installed from the wheel folder it is given (`--wheels`, into
DIR/site). Parts, each in a process of its own (forked after the imports, so a crash or a hang loses only
that part) with its own time limit inside the overall budget:

- environment: card, driver, CUDA, library versions; installs the wheels.
- lbs: the fused CUDA LBS kernel (capture/lbs_cuda) against torch LBS on the demo pack's FLAME (error, ms).
- torch_cuda: the torch backend on CUDA (CUDA graphs, fp16; and fp32) against fp32 on the CPU, E_flame and
  D_detail (error, ms per call).
- raster: nvdiffrast against the CPU rasterizer on a posed FLAME mesh: coverage IoU, triangle-id agreement,
  depth difference, ms.
- e2e: end-to-end FPS at 1280x720 with per-stage times, the product path (torch CUDA graphs fp16, stage
  pipeline) beside the eager reference in the same run, interleaved in chunks (benchmarks/fps.py's code).
- pytest_gpu: the tests marked `gpu` (`pytest -m gpu tests`).

DIR/gpu_check.json and DIR/gpu_check.md are rewritten after every part (a timeout still leaves what was
done; a part that runs out of time keeps what it recorded so far); DIR/logs/PART.log holds each part's output.

`--dry-run` runs the same code on the CPU, with PyAV, MediaPipe and TensorRT hidden as on the GPU machine,
tiny sizes, and CPU stand-ins where a GPU is needed (torch LBS in float32 for the kernel, the CPU
rasterizer's other kernel for nvdiffrast, fp32 CPU for CUDA graphs fp16), so that the script cannot rot
(tests/test_gpu_check.py runs it).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("environment", "lbs", "torch_cuda", "raster", "e2e", "pytest_gpu")
LIMITS_S = {"environment": 90, "lbs": 45, "torch_cuda": 75, "raster": 120, "e2e": 150, "pytest_gpu": 150}
DRY_LIMITS_S = {name: 60 for name in PARTS}
HIDDEN_ON_GPU_MACHINE = ("av", "mediapipe", "tensorrt")  # what the bare GPU machine lacks; hidden in --dry-run


# ------------------------------------------------------------------------------------------------ report
class Report:
    """The JSON + Markdown report, rewritten atomically after every change."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        self.data = dict(meta, parts={})
        self.save()

    def set_part(self, name: str, entry: dict) -> None:
        self.data["parts"][name] = entry
        self.save()

    def save(self) -> None:
        _write_atomic(self.out / "gpu_check.json", json.dumps(self.data, indent=2, default=str) + "\n")
        _write_atomic(self.out / "gpu_check.md", to_markdown(self.data))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_markdown(data: dict) -> str:
    lines = [f"# GPU check{' (dry run on the CPU: stand-ins, tiny sizes)' if data.get('dry_run') else ''}", "",
             f"- date: {data.get('date')}", f"- command: `{data.get('command')}`",
             f"- host: {data.get('host')}"]
    env = data["parts"].get("environment", {}).get("result") or {}
    if env.get("gpu"):
        lines.append(f"- card: {env['gpu']}")
    lines += ["", "| part | status | s | summary |", "|---|---|---|---|"]
    for name in data.get("plan", PARTS):
        part = data["parts"].get(name)
        if part is None:
            lines.append(f"| {name} | pending | | |")
            continue
        summary = part.get("summary") or part.get("error", "")
        lines.append(f"| {name} | {part['status']} | {part.get('seconds', '')} | {str(summary).replace('|', '/')} |")
    for name in data.get("plan", PARTS):
        part = data["parts"].get(name) or {}
        if part.get("result"):
            lines += ["", f"## {name}", "", "```", json.dumps(part["result"], indent=1, default=str)[:6000], "```"]
    return "\n".join(lines) + "\n"


class PartRecorder:
    """What a part records as it goes (its file is read back by the parent even after a timeout)."""

    def __init__(self, path: Path):
        self.path = path
        self.result: dict = {}
        self.summary = ""

    def __setitem__(self, key, value) -> None:
        self.result[key] = value
        self.save()

    def save(self) -> None:
        _write_atomic(self.path, json.dumps({"result": self.result, "summary": self.summary}, default=str))


# ------------------------------------------------------------------------------------------------ shared
def hide_modules(names) -> None:
    """Make `import name` fail as it does where the package is not installed."""
    for name in names:
        sys.modules[name] = None


def ms_per_call(fn: Callable, sync: Callable | None, repeat: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(1e3 * (time.perf_counter() - t))
    times.sort()
    return {"median_ms": round(times[len(times) // 2], 3), "min_ms": round(times[0], 3), "calls": repeat}


def error_stats(test, reference) -> dict:
    import torch

    d = (test.double() - reference.double()).flatten()
    ref = reference.double().flatten()
    rms_ref = float(ref.pow(2).mean().sqrt()) or 1.0
    return {"max_abs": float(d.abs().max()), "rms": float(d.pow(2).mean().sqrt()),
            "rms_relative": float(d.pow(2).mean().sqrt()) / rms_ref, "finite": bool(torch.isfinite(test).all())}


class Context:
    def __init__(self, args):
        import torch

        self.args = args
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.sync = None if self.dry else torch.cuda.synchronize

    def pack(self):
        from capture.assets import open_pack

        return open_pack(self.args.assets)

    def deca(self):
        from capture.deca import DECA

        return DECA.from_pack(self.pack(), device=self.device)


# ------------------------------------------------------------------------------------------------ parts
def part_environment(ctx: Context, rec: PartRecorder) -> None:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "nproc": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = f"{props.name}, {round(props.total_memory / 2**30)} GiB, sm_{props.major}{props.minor}"
    for tool, cmd in (("nvidia_smi", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                      "--format=csv,noheader"]), ("nvcc", ["nvcc", "--version"])):
        if shutil.which(cmd[0]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            env[tool] = (proc.stdout.strip().splitlines() or [""])[-1]
        else:
            env[tool] = None
    rec["environment"] = env
    wheels = sorted(Path(ctx.args.wheels).glob("*.whl")) if ctx.args.wheels else []
    installed = {}
    for wheel in wheels:
        if ctx.dry:
            installed[wheel.name] = "dry run: not installed"
            continue
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target",
                               str(ctx.args.site), str(wheel)], capture_output=True, text=True, timeout=60)
        installed[wheel.name] = "installed" if proc.returncode == 0 else f"failed: {proc.stderr[-500:]}"
    rec["wheels"] = installed
    import importlib

    versions = {}
    for name in ("numpy", "cupy", "onnxruntime", "nvdiffrast", "pycuda", "pytest", "ninja", "av", "mediapipe",
                 "tensorrt", "cv2", "triton"):
        try:
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "present"))
        except Exception:  # noqa: BLE001 - absent (or hidden in a dry run)
            versions[name] = None
    rec["versions"] = versions
    rec.summary = (f"{env.get('gpu') or 'no GPU'}; torch {env['torch']} CUDA {env['torch_cuda']}; nvdiffrast "
                   f"{versions['nvdiffrast']}; cupy {versions['cupy']}")


def part_lbs(ctx: Context, rec: PartRecorder) -> None:
    import torch

    from capture.flame import FLAME, lbs

    flame = FLAME(ctx.pack()).to(ctx.device)
    if ctx.dry:
        kernel, name = lbs, "dry run: torch lbs float32 on the CPU stands in for the kernel"
    else:
        from capture.lbs_cuda import CudaLBS, cuda_lbs_available

        ok, launcher = cuda_lbs_available()
        if not ok:
            raise RuntimeError(f"CUDA LBS unavailable: {launcher}")
        kernel, name = CudaLBS.from_flame(flame), f"CudaLBS ({launcher})"
    rec["kernel"] = name
    model = (flame.v_template, flame.shapedirs, flame.posedirs, flame.J_regressor, flame._parents, flame.lbs_weights)
    g = torch.Generator().manual_seed(0)
    rows = []
    for batch in ((1, 8) if ctx.dry else (1, 64, 1024)):
        K = flame.shapedirs.shape[-1]
        betas = torch.randn(batch, K, generator=g).to(ctx.device)
        pose = (0.3 * torch.randn(batch, 15, generator=g)).to(ctx.device)
        with torch.no_grad():
            v, j = kernel(betas, pose, *model)
            v64, j64 = lbs(betas.double(), pose.double(), *(t.double() if torch.is_tensor(t) else t for t in model))
            v_torch, _ = lbs(betas, pose, *model)
            row = {"batch": batch, "vertices": error_stats(v, v64), "joints": error_stats(j, j64),
                   "torch_fp32_vertices": error_stats(v_torch, v64),
                   "kernel": ms_per_call(lambda betas=betas, pose=pose: kernel(betas, pose, *model), ctx.sync,
                                         5 if ctx.dry else 50),
                   "torch": ms_per_call(lambda betas=betas, pose=pose: lbs(betas, pose, *model), ctx.sync,
                                        5 if ctx.dry else 50)}
        rows.append(row)
        rec["batches"] = rows
    worst = max(r["vertices"]["max_abs"] for r in rows)
    rec.summary = (f"{name}: vertices max |d| {worst:.2e} m vs float64 torch; batch 1: kernel "
                   f"{rows[0]['kernel']['median_ms']:.3f} ms, torch {rows[0]['torch']['median_ms']:.3f} ms")
    rec["ok"] = worst < 1e-5


def part_torch_cuda(ctx: Context, rec: PartRecorder) -> None:
    import torch

    from capture.backends import TorchBackend
    from capture.export import graph_spec

    pack = ctx.pack()
    g = torch.Generator().manual_seed(0)
    out = {}
    for network in ("E_flame", "D_detail"):
        spec = graph_spec(network)
        x = torch.rand(2, *spec.input_shape, generator=g)
        if network == "D_detail":
            x = 2 * x - 1
        if ctx.dry:
            x = x[:1]
        reference = TorchBackend(network, pack, "cpu", cuda_graphs=False)
        want = reference.run({spec.input_name: x})[spec.output_name]
        variants = [("cpu fp32 eager", "cpu", False, False)] if ctx.dry else [
            ("cuda fp32 eager", "cuda", False, False), ("cuda fp32 graphs", "cuda", True, False),
            ("cuda fp16 graphs", "cuda", True, True)]
        rows = {}
        for label, device, graphs, half in variants:
            backend = TorchBackend(network, pack, device, cuda_graphs=graphs, half=half)
            got = backend.run({spec.input_name: x})[spec.output_name].cpu()
            one = x[:1].to(device)
            rows[label] = {"vs_cpu_fp32": error_stats(got, want),
                           "batch1": ms_per_call(lambda backend=backend, spec=spec, one=one:
                                                 backend.run({spec.input_name: one}), ctx.sync,
                                                 1 if ctx.dry else 50, warmup=0 if ctx.dry else 3)}
            out[network] = rows
            rec["networks"] = out
    best = "cpu fp32 eager" if ctx.dry else "cuda fp16 graphs"
    rec.summary = "; ".join(f"{n} {best}: {r[best]['batch1']['median_ms']:.2f} ms, rms error "
                            f"{100 * r[best]['vs_cpu_fp32']['rms_relative']:.2f} % of the output"
                            for n, r in out.items())


def flame_mesh_ndc(deca, size) -> tuple:
    """A posed FLAME head of the pack in image NDC for a (H, W) frame, as the product renders it."""
    import torch

    from capture.projection import orthographic

    B = 1
    shape = torch.zeros(B, deca.flame.n_shape, device=deca.device)
    exp = torch.zeros(B, deca.flame.n_exp, device=deca.device)
    pose = torch.tensor([[0.0, 0.35, 0.0, 0.15, 0.0, 0.0]], device=deca.device)
    verts = deca.flame(shape, exp, pose).vertices
    ndc = orthographic(verts, torch.tensor([[8.0, 0.0, 0.0]], device=deca.device))
    H, W = size
    ndc = ndc * torch.tensor([min(H, W) / W, min(H, W) / H, 1.0], device=deca.device)  # square head in the frame
    return ndc, deca.assets.faces


def part_raster(ctx: Context, rec: PartRecorder) -> None:
    from capture.render import get_rasterizer

    deca = ctx.deca()
    reference = get_rasterizer("cpu", kernel="c")
    if ctx.dry:
        test, name = get_rasterizer("cpu", kernel="torch"), "dry run: the CPU rasterizer's torch kernel stands in"
    else:
        test, name = get_rasterizer("nvdiffrast", ctx.device), "nvdiffrast"
    rec["rasterizer"] = name
    rows = []
    for size in ((96, 160), (224, 224)) if ctx.dry else ((224, 224), (720, 1280), (1080, 1920)):
        verts, faces = flame_mesh_ndc(deca, size)
        faces = faces.to(ctx.device).long()
        ref = reference.rasterize(verts.cpu(), faces.cpu(), size)
        got = test.rasterize(verts, faces, size)
        m_ref, m_got = ref.mask[0], got.mask[0].cpu()
        both = m_ref & m_got
        iou = float(both.sum()) / max(1, float((m_ref | m_got).sum()))
        same_face = float((ref.face_id[0][both] == got.face_id[0].cpu()[both]).float().mean()) if both.any() else None
        depth = float((ref.depth[0][both] - got.depth[0].cpu()[both]).abs().max()) if both.any() else None
        rows.append({"size": f"{size[1]}x{size[0]}", "covered_pixels": int(m_ref.sum()), "coverage_iou": iou,
                     "same_triangle_share": same_face, "depth_max_abs": depth,
                     "ms": {"reference_cpu": ms_per_call(lambda verts=verts, faces=faces, size=size:
                                                         reference.rasterize(verts.cpu(), faces.cpu(), size),
                                                         None, 2 if ctx.dry else 5, warmup=1),
                            "test": ms_per_call(lambda verts=verts, faces=faces, size=size:
                                                test.rasterize(verts, faces, size), ctx.sync,
                                                2 if ctx.dry else 50, warmup=1)}})
        rec["sizes"] = rows
    worst = min(r["coverage_iou"] for r in rows)
    triangles = deca.assets.faces.shape[0]
    rec.summary = f"{name} vs CPU rasterizer on FLAME ({triangles} triangles): coverage IoU >= {worst:.5f}"
    rec["ok"] = worst >= 0.99  # as tests/test_render.py asks of nvdiffrast on random meshes


class BoxTracker:
    """The face tracker's stand-in without MediaPipe: each in-memory frame's box is known from its render."""

    def __init__(self, boxes: dict):
        self.boxes = boxes  # id(image array) -> (x0, y0, x1, y1)

    def update(self, image):
        from capture.crop import Face, TrackResult

        box = self.boxes.get(id(image))
        return TrackResult(None if box is None else Face(box, 1.0), True, 0 if box is not None else 1)

    def close(self) -> None:
        pass


class MemoryFrames:
    """fps.py's FrameSource over frames held in memory: `limit` of them, looped, with arrival times."""

    def __init__(self, frames: list, limit: int):
        self.frames, self.limit = frames, limit
        self.arrived: dict[int, float] = {}

    def __iter__(self):
        from dataclasses import replace

        for i in range(self.limit):
            src = self.frames[i % len(self.frames)]
            frame = replace(src, index=i, pts=i, time=float(i * src.time_base))
            self.arrived[i] = time.perf_counter()
            yield frame


class NullWriter:
    """No encoder on the GPU machine (no PyAV): frames are only counted (the encode stage is not measured)."""

    def __init__(self):
        self.frames_written = 0

    def write(self, image, pts=None, time_base=None) -> None:
        self.frames_written += 1

    def close(self) -> None:
        pass


def performer_frames(deca, size, n: int) -> tuple[list, dict]:
    """n frames of the demo head moving (jaw, expression, yaw) over a gradient, rendered in memory, and the
    face box of each (from the rendered alpha: no detector needed)."""
    from fractions import Fraction

    import numpy as np
    import torch

    from capture.avatar import demo_identity
    from capture.retarget import AvatarRenderer
    from capture.stream.reader import Frame

    W, H = size
    performer = demo_identity(deca, seed=2)
    renderer = AvatarRenderer(deca, performer, "avatar", (H, W), pose_mode="source")
    t = np.arange(n) / 25.0  # head turning, jaw and expression moving (capture.demo's clip needs PyAV)
    seq = {"yaw": 0.35 * np.sin(2 * np.pi * t / 3), "jaw": 0.12 * (1 - np.cos(2 * np.pi * t / 1.3)),
           "exp": (0.8 * np.sin(2 * np.pi * t[:, None] / (1 + np.arange(50)[None] % 5))).astype(np.float32)}
    frames, boxes = [], {}
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    background = torch.as_tensor(np.stack([0.35 + 0.2 * ys / H, 0.38 + 0.1 * xs / W, 0.42 + 0 * xs]),
                                 device=deca.device)[None]
    for i in range(n):
        pose = torch.zeros(1, 6, device=deca.device)
        pose[0, 1], pose[0, 3] = float(seq["yaw"][i]), float(seq["jaw"][i])
        codes = performer.codes.replace(exp=torch.as_tensor(seq["exp"][i:i + 1], device=deca.device), pose=pose,
                                        cam=torch.tensor([[7.0, 0.0, 0.0]], device=deca.device))
        with torch.no_grad():
            colour, alpha = renderer.draw(codes, None)
        picture = colour * alpha + background * (1 - alpha)
        image = np.ascontiguousarray(
            (picture[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy())
        on = np.argwhere(alpha[0, 0].cpu().numpy() > 0.5)
        frames.append(Frame(index=i, image=image, pts=i, time_base=Fraction(1, 25), time=i / 25))
        if len(on):
            (y0, x0), (y1, x1) = on.min(0), on.max(0)
            boxes[id(image)] = (float(x0), float(y0), float(x1), float(y1))
    return frames, boxes


def load_fps_module():
    import importlib

    return importlib.import_module("capture.fps")


def part_e2e(ctx: Context, rec: PartRecorder) -> None:
    import numpy as np
    import torch

    fps = load_fps_module()
    dry = ctx.dry
    size = (256, 144) if dry else (1280, 720)
    n, chunk, held = (4, 2, 4) if dry else (150, 25, 50)
    argv = ["--frames", str(n), "--chunk", str(chunk), "--warmup", "1" if dry else "3", "--codes-from", "network",
            "--device", str(ctx.device.type), "--backends", "torch"]
    args = fps.parse_args(argv)
    deca = ctx.deca()
    from capture.avatar import demo_identity

    t = time.perf_counter()
    frames, boxes = performer_frames(deca, size, held)
    rec["input"] = {"size": f"{size[0]}x{size[1]}", "frames_run": n, "distinct_frames": held, "chunk": chunk,
                    "render_s": round(time.perf_counter() - t, 2), "faces_boxed": len(boxes),
                    "encode": "not measured: no PyAV here, frames are only counted"}

    class MemoryBench(fps.Bench):
        def __init__(self):  # no clip file, no MediaPipe: the parts of fps.Bench that the paths use
            self.args, self.say = args, lambda text: None
            self.device, self.deca, self.pack = ctx.device, deca, deca.pack
            self.codes_from = "network"
            self.avatar = demo_identity(deca)
            self.info = {"width": size[0], "height": size[1], "fps": 25.0}
            self.time_base = frames[0].time_base
            self.frame_size = (size[1], size[0])
            self.n_frames = n
            self.compare_at = set(np.linspace(0, n - 1, min(fps.COMPARE_FRAMES, n)).round().astype(int))
            self._calibration = None
            self.sync = ctx.sync

        def frames(self, count: int, pace: bool = False):
            return MemoryFrames(frames, count)

        def tracker(self):
            return BoxTracker(boxes)

        def writer(self, folder, session, tag):
            return NullWriter()

    bench = MemoryBench()
    log = []

    def say(text: str) -> None:
        log.append(text)
        rec["log"] = log

    def make(name):
        return fps.make_engines(name, bench.pack, bench.device, args, bench.calibration, "network")

    with tempfile.TemporaryDirectory(prefix="gpu-check-e2e-") as tmp:
        eager, results, _, _ = fps.run_interleaved(bench, Path(tmp), ["torch"], make, False, True, say)
    rec["eager"] = eager.to_json()
    entry = fps.entry_with_ratios(results["torch"], eager)
    entry["vs_eager"] = fps.compare(results["torch"], eager)
    rec["torch"] = entry
    rec["peak_gpu_mb"] = None if dry else round(torch.cuda.max_memory_allocated() / 2**20, 1)
    rec.summary = (f"{size[0]}x{size[1]}: {entry['description']} {entry['fps']:.1f} FPS, eager {eager.fps:.2f} FPS, "
                   f"{entry['ratio_to_eager']:.2f}x (median of chunk ratios); latency median "
                   f"{entry['latency_ms']['median']} ms")


def part_pytest_gpu(ctx: Context, rec: PartRecorder) -> None:
    import xml.etree.ElementTree as ET

    import pytest

    junit = Path(ctx.args.out) / "pytest_gpu.xml"
    targets = [str(ROOT / "tests" / "test_lbs_cuda.py")] if ctx.dry else [str(ROOT / "tests")]
    argv = ["-q", "-m", "gpu", "-p", "no:cacheprovider", "--continue-on-collection-errors",
            f"--junitxml={junit}", "--rootdir", str(ROOT), *targets]
    rec["command"] = "pytest " + " ".join(argv)
    code = int(pytest.main(argv))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    if junit.is_file():
        for suite in ET.parse(junit).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
        for case in ET.parse(junit).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    rec["exit_code"] = code
    rec["counts"] = counts
    rec["failed"] = failed[:50]
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    rec.summary = (f"pytest -m gpu: {passed} passed, {counts['failures']} failed, {counts['errors']} errors, "
                   f"{counts['skipped']} skipped (exit {code})")
    rec["ok"] = code in (0, 5) and not counts["failures"] and not counts["errors"]


PART_FUNCTIONS = {"environment": part_environment, "lbs": part_lbs, "torch_cuda": part_torch_cuda,
                  "raster": part_raster, "e2e": part_e2e, "pytest_gpu": part_pytest_gpu}


# ------------------------------------------------------------------------------------------------ runner
def run_part(name: str, ctx_args, out: Path, limit_s: float) -> dict:
    """The part in a forked child with `limit_s`; what it recorded survives its crash or timeout."""
    record = out / "parts" / f"{name}.json"
    log = out / "logs" / f"{name}.log"
    started = time.perf_counter()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.setsid()
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            import importlib

            importlib.invalidate_caches()  # the environment part may have installed wheels since the fork
            rec = PartRecorder(record)
            rec.save()
            PART_FUNCTIONS[name](Context(ctx_args), rec)
            rec.save()
            code = 0
        except BaseException:  # noqa: BLE001 - reported through the log and the exit status
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    status, timed_out = None, False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - started > limit_s:
            timed_out = True
            with _suppress():
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    entry = {"seconds": round(time.perf_counter() - started, 1), "limit_s": round(limit_s)}
    with _suppress():
        entry.update(json.loads(record.read_text()))
    if timed_out:
        entry["status"] = "timeout"
        entry["error"] = f"ran past its {limit_s:.0f} s limit; what it recorded so far is kept"
    elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        ok = entry.get("result", {}).get("ok", True)
        entry["status"] = "ok" if ok else "check failed"
    else:
        entry["status"] = "failed"
        tail = log.read_text(errors="replace").strip().splitlines()[-15:] if log.is_file() else []
        entry["error"] = " / ".join(line.strip() for line in tail[-3:]) or f"exit status {status}"
        entry["log_tail"] = tail
    return entry


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], Exception)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="report folder (gpu_check.json, gpu_check.md, logs/)")
    parser.add_argument("--wheels", default=None, help="folder of wheels to install first (e.g. nvdiffrast)")
    parser.add_argument("--assets", default="demo", help="model pack: 'demo' (default) or a folder")
    parser.add_argument("--parts", default="all", help=f"comma list from {', '.join(PARTS)} (default all)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="all parts together (default 450 s)")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: stand-ins and tiny sizes (CI)")
    args = parser.parse_args(argv)
    args.plan = list(PARTS) if args.parts == "all" else [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.plan) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}; choose from {', '.join(PARTS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out)
    for sub in ("parts", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    args.site = str((out / "site").resolve())
    if args.dry_run:
        hide_modules(HIDDEN_ON_GPU_MACHINE)
    if not args.dry_run:
        # wheels go to DIR/site, which every part sees (this process's children inherit sys.path)
        os.makedirs(args.site, exist_ok=True)
        sys.path.insert(0, args.site)
    # pytest and the plugins' JIT builds run in this process's children: they see the wheels through PYTHONPATH
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [p for p in (None if args.dry_run else args.site, str(ROOT), os.environ.get("PYTHONPATH")) if p])
    sys.path.insert(0, str(ROOT))
    # Import the heavy modules once, before forking, without touching CUDA (a forked child must initialise it).
    import torch

    import capture.deca
    import capture.session  # noqa: F401
    from capture.assets import open_pack

    open_pack(args.assets)  # the demo pack is written once here, not in every part
    del torch
    report = Report(out, {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                          "command": "python benchmarks/gpu_check.py "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
                          "host": f"{platform.node()} ({os.cpu_count()} CPUs)", "dry_run": args.dry_run,
                          "plan": args.plan, "budget_s": args.budget_s})
    limits = DRY_LIMITS_S if args.dry_run else LIMITS_S
    for name in args.plan:
        left = args.budget_s - (time.perf_counter() - started)
        if left < 10:
            report.set_part(name, {"status": "skipped", "error": "out of the overall budget"})
            continue
        print(f"[gpu_check] {name} (limit {min(limits[name], left):.0f} s)", flush=True)
        entry = run_part(name, args, out, min(limits[name], left))
        report.set_part(name, entry)
        print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']} s: "
              f"{entry.get('summary') or entry.get('error', '')}", flush=True)
    report.data["seconds"] = round(time.perf_counter() - started, 1)
    report.save()
    print(f"[gpu_check] report: {out / 'gpu_check.md'} ({report.data['seconds']} s)", flush=True)
    failed = [n for n, p in report.data["parts"].items() if p["status"] not in ("ok",)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
