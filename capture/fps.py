"""`capture-fps` (= `python benchmarks/fps.py` in a checkout, `python -m capture.fps`): per-stage latency and
end-to-end FPS of the video pipeline, every inference backend
present side by side with the eager reference, measured in the same run on the same frames.

    python benchmarks/fps.py [--input CLIP|synthetic] [--frames N] [--backends LIST] [--size WxH] [--json OUT]
                             [--chunk N] [--long [--long-frames N]] [--live] [--device cpu|cuda]

What runs:
- the eager reference, the way DECA's own demo works: PyTorch eager networks, the straightforward renderer
  (`AvatarRenderer(reference=True)`), one frame at a time (decode, crop, E_flame, LBS, D_detail, shading,
  rasterize, composite, encode, then the next frame), no threads of our own, torch's default intra-op threads;
- each backend (torch, onnxruntime, onnxruntime-int8, tensorrt where present): the product's path, i.e. the
  fast renderer in the stage pipeline (decode | crop | networks | render | encode, one thread each, bounded
  queues), with that backend running E_flame and D_detail.
Offline, the paths are interleaved in chunks of `--chunk` frames over the same frames (eager chunk 1, each
backend's chunk 1, eager chunk 2, ...; a pipelined path is paused between its chunks, not emptied), and a
backend's ratio to the eager reference is the median of its paired chunk ratios: a burst of other work on the
machine slows one chunk, not the median. A sustained load would still favour the pipelined paths (the kernel
shares the cores per runnable thread), so fps.py runs at nice `--priority` (-15) where the system allows it and
gives the priority back at the end; `priority` in the JSON says what it got, `machine_load` (and a WARNING line)
says when the machine was busy, counting the threads of other processes that wanted a CPU. `--live` runs each
path in one block, its input paced like a camera's; latency there is frame released -> frame encoded (median,
p95), what a performer feels.
Every run decodes the same clip, tracks the same face, renders the same avatar in the same layout and encodes
with the same settings; outputs are compared with the eager reference's (codes and pixels) so that a speed-up
that changed the picture shows. Per stage: median and p95 ms; end to end: FPS, frame-in -> frame-out latency,
peak RSS (and GPU memory); then the ratio of each backend to the eager reference. A run that loads more than one
path (the eager reference, several backends) takes each backend's peak RSS again in a fresh process that runs
that path alone (`peak_rss_mb`; this process's, every path loaded, is `peak_rss_process_mb`; `--no-alone-rss`
skips it). The table is printed last;
`--json OUT` writes the same numbers. `--long` then runs >= 10k frames (the synthetic clip looped) through the
first backend and reports memory growth. `--sizes A,B,...` runs each backend's product path at every size instead
(the synthetic clip rendered at each, or an `--input` clip resampled to each: a real face at every size), the
sizes' chunks interleaved, and reports each size's FPS ratio to the first as the median of the paired chunk
ratios: the scaling table (peak RSS there: each size's path alone, in a fresh process, as above).

Input `synthetic` (default): the demo pack's performer clip (`capture.demo.render_performer_clip`: the demo
head wearing the astronaut photo, known jaw/expression/yaw motion, MediaPipe detects it), rendered once and
cached. The demo pack is synthetic (seeded weights): speed figures are real, accuracy figures describe these
weights only.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as capture/__init__.py: before numpy loads
# torch's OpenMP threads sleep instead of spinning while they wait for each other (read when torch loads): on a
# busy machine a spinning eager reference burnt 1x-3x its own CPU time per frame from one chunk to the next,
# which no pairing of chunks corrects. On a quiet machine it costs the reference ~3 % (4.87 vs 5.04 FPS).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import platform
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from .console import add_version_argument, prog
from .cpus import usable_cpus

STAGES = ("decode", "crop", "E_flame", "fit", "LBS", "D_detail", "shading", "rasterize", "composite", "encode")
EAGER = "torch-eager"  # the registry's eager reference backend
CPU_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
GPU_BACKENDS = ("torch", "tensorrt", "onnxruntime")
ALL_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "tensorrt")
CLIP_FPS = 25.0
DEFAULT_SIZE = "640x360"  # the synthetic clip's frame size
COMPARE_FRAMES = 8  # frames whose pictures are compared with the eager reference's
CALIBRATION_FRAMES = 48  # INT8 calibration crops, from a clip other than the benchmarked one
INT8_CHECK_CROPS = 48  # benchmark crops on which the INT8 code error is measured
INT8_CALIBRATION_SOURCE = "the synthetic performer rendered at another size/framing"
_DEFAULT_TORCH_THREADS = torch.get_num_threads()


# ------------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    from capture.cpus import physical_cores, usable_cpus

    info = {"cpu": cpu_model(), "nproc": len(usable_cpus()), "logical_cpus": os.cpu_count(),
            "physical_cores": physical_cores(), "platform": platform.platform(),
            "python": platform.python_version(), "memory_gb": _memory_gb(), "device": str(device), "gpu": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                       "cuda": torch.version.cuda, "capability": f"{props.major}.{props.minor}"}
    return info


PARALLEL_SECONDS = 0.1  # each phase of `parallel_speedup`
PARALLEL_ROUNDS = 3  # one-thread / every-CPU phase pairs, alternated: a burst of another process moves one pair
SHARED_CORES = 0.75  # parallel speedup per usable CPU below which the CPUs are taken as not the run's own


def parallel_speedup(cpus: int, seconds: float = PARALLEL_SECONDS, rounds: int = PARALLEL_ROUNDS) -> Optional[float]:
    """How many CPUs' work the machine does at once: float32 matrix products (one BLAS thread each) on one
    thread, then on `cpus` threads together, as a multiple of the one (the median over `rounds` alternated pairs
    of phases). About `cpus` on cores of one's own; ~1.2 where two virtual CPUs are the two hyper-threads of one
    physical core, which the guest cannot see (its /proc/cpuinfo shows two cores) and which a hypervisor may
    change between runs. None with one CPU."""
    if cpus < 2:
        return None
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((192, 192)).astype(np.float32)

    def work(deadline: float, counts: list, slot: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            a @ a  # BLAS releases the GIL
            n += 1
        counts[slot] = n

    def phase(threads: int) -> int:
        counts = [0] * threads
        deadline = time.perf_counter() + seconds
        running = [threading.Thread(target=work, args=(deadline, counts, i)) for i in range(threads)]
        for t in running:
            t.start()
        for t in running:
            t.join()
        return sum(counts)

    with threadpool_limits(1):
        a @ a  # warm
        ratios = [phase(cpus) / max(phase(1), 1) for _ in range(rounds)]
    return round(float(np.median(ratios)), 2)


def _memory_gb() -> Optional[float]:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def library_versions() -> dict:
    versions = {"torch": torch.__version__, "numpy": np.__version__}
    for name in ("onnxruntime", "onnx", "av", "mediapipe", "cv2", "tensorrt", "nvdiffrast"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "present")
        except Exception:  # noqa: BLE001 - absent or broken: reported as such
            versions[name] = None
    return versions


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_counters() -> Optional[tuple[float, float, float]]:
    """(seconds of CPU every process on the machine has used, this process's, wall clock) now; None without
    /proc/stat. Two readings give what other processes used in between, which the load average (a decaying
    1-minute mean that still holds the previous command's work) cannot."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    steal = int(fields[8]) if len(fields) > 8 else 0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    own = os.times()
    return (user + nice + system + irq + softirq + steal) / tick, own.user + own.system, time.perf_counter()


def other_cores(start: Optional[tuple], end: Optional[tuple]) -> Optional[float]:
    """Cores other processes kept busy between two `cpu_counters` readings, on average."""
    if start is None or end is None or end[2] <= start[2]:
        return None
    others = (end[0] - start[0]) - (end[1] - start[1])
    return round(max(0.0, others) / (end[2] - start[2]), 2)


# A busy machine shares the cores per runnable thread, and the two kinds of path react to that differently:
# the eager reference's two OpenMP threads meet at a barrier after every operation (a core taken from one stalls
# both), the pipeline's stages use whatever slices they get. Measured on 2 cores, every backend against a quiet
# run: two busy loops moved the FPS ratios +20..49 % at nice 0, -3..+1 % at nice -15; four busy loops +6..19 %
# at nice -10, -5..+2 % at nice -15 (benchmarks/RESULTS.md). So fps.py asks for a higher priority while it
# measures, where the system allows it (root, CAP_SYS_NICE or RLIMIT_NICE), says what it got, and gives it back.
PRIORITY = -15


def _set_nice(nice: int) -> None:
    """Every thread of this process at nice value `nice` (on Linux each thread has its own; threads started later
    inherit their starter's). PermissionError where a higher priority is not allowed."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.setpriority(os.PRIO_PROCESS, tid, nice)


def raise_priority(nice: int) -> dict:
    """This process at nice value `nice` if that is a higher priority than it has and the system allows it.
    Returns what was done, {"nice", "raised", "why", "previous"}; `restore_priority` undoes it."""
    if not hasattr(os, "setpriority"):
        return {"nice": None, "raised": False, "why": "no setpriority on this system", "previous": None}
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice >= current:
        return {"nice": current, "raised": False, "why": f"asked for {nice}, already {current}", "previous": current}
    try:
        _set_nice(nice)
    except PermissionError:
        _set_nice(current)  # lowering is always allowed: no thread is left half-way
        return {"nice": current, "raised": False, "previous": current,
                "why": f"nice {nice} not permitted here (needs root, CAP_SYS_NICE or RLIMIT_NICE)"}
    return {"nice": nice, "raised": True, "why": None, "previous": current}


def restore_priority(done: dict) -> None:
    """Back to the priority `raise_priority` found (fps.main may run inside a longer-lived process)."""
    if done.get("raised"):
        _set_nice(done["previous"])


def _runnable_counts() -> Optional[tuple[int, int]]:
    """(runnable threads on the machine, of which this process's) now; None without /proc."""
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
        ours = 0
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/self/task/{tid}/stat") as fh:
                    stat = fh.read()
                ours += stat[stat.rindex(")") + 2] == "R"
    except (OSError, ValueError, IndexError):
        return None
    return running, ours


class RunnableOthers:
    """Samples how many threads of other processes want a CPU, every `period` s in a thread; `.mean` over the
    sampling window. Unlike the CPU time other processes got, it does not fall when this process has the higher
    priority, so a busy machine still shows as one."""

    def __init__(self, period: float = 0.1):
        self.period = period
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runnable-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            counts = _runnable_counts()
            if counts is not None:
                self.samples.append(max(0, counts[0] - counts[1]))

    @property
    def mean(self) -> Optional[float]:
        return round(float(np.mean(self.samples)), 2) if self.samples else None

    def start(self) -> "RunnableOthers":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ends the sampling (again: nothing more)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


# ------------------------------------------------------------------------------------------------ memory
def rss_mb() -> float:
    """Resident set size of this process now, MB."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRss:
    """Samples RSS every `period` s in a thread; `.peak` over the sampling window (MB)."""

    def __init__(self, period: float = 0.02):
        self.period = period
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


# ------------------------------------------------------------------------------------------------ input
def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: --size {text!r}: expected WxH, e.g. 640x360") from None
    if w < 64 or h < 64:
        raise SystemExit(f"error: --size {text!r}: at least 64x64")
    return w, h


def synthetic_clip(deca, n_frames: int, size: tuple[int, int], say: Callable[[str], None],
                   fps: float = CLIP_FPS) -> Path:
    """The demo performer clip at `size`, `n_frames` long at `fps`, rendered once into the capture cache."""
    from capture.artifacts import atomic_write, build_lock
    from capture.assets.locate import cache_dir
    from capture.demo import render_performer_clip
    from capture.export import pack_weights_sha256

    w, h = size
    key = pack_weights_sha256(deca.pack)[:12]
    rate = "" if fps == CLIP_FPS else f"-{fps:g}fps"
    path = cache_dir() / "bench" / f"performer-{key}-{w}x{h}-{n_frames}{rate}.mp4"
    if not path.is_file():
        with build_lock(path):
            if not path.is_file():
                say(f"rendering the synthetic performer clip ({n_frames} frames, {w}x{h}) -> {path}")
                with atomic_write(path, suffix=".mp4") as tmp:
                    render_performer_clip(deca, tmp, n_frames, (w, h), fps)
    return path


def resampled_clip(source: Path, n_frames: int, size: tuple[int, int], say: Callable[[str], None]) -> Path:
    """The first `n_frames` frames of a clip resampled to `size` (bicubic, its own timestamps, no audio), encoded
    once near-losslessly (x264 crf 12) into the capture cache: `--size`/`--sizes` with `--input CLIP`, so that a
    real face can be measured at every size. Every size goes through this same re-encoding, the clip's own size
    too, so that the sizes differ in pixels only. The size must keep the clip's aspect ratio (within 1 %)."""
    import hashlib
    import itertools

    import av

    from capture.artifacts import atomic_write, build_lock
    from capture.assets.locate import cache_dir
    from capture.stream.reader import FrameConverter
    from capture.stream.sequence import find_sequence, open_video
    from capture.stream.writer import VideoWriter

    w, h = size
    with open_video(source) as reader:
        src_w, src_h = reader.width, reader.height
    if abs((w / h) / (src_w / src_h) - 1) > 0.01:
        raise SystemExit(f"error: --size {w}x{h}: {source} is {src_w}x{src_h}; give sizes of its aspect ratio "
                         f"(e.g. {2 * src_w}x{2 * src_h})")
    sequence = None if source.is_file() else find_sequence(str(source))
    files = [Path(f) for _, f in sequence.frames[:n_frames]] if sequence is not None else [source]
    stamp = "|".join(f"{f.resolve()}|{f.stat().st_size}|{f.stat().st_mtime_ns}" for f in files)
    key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    stem = source.stem if sequence is None else re.sub(r"%0?\d*d|#+", "", Path(sequence.pattern).stem).strip("._- ")
    path = cache_dir() / "bench" / f"{stem}-{key}-{w}x{h}-{n_frames}.mp4"
    if not path.is_file():
        with build_lock(path):
            if not path.is_file():
                say(f"resampling {source} to {w}x{h} ({n_frames} frames) -> {path}")
                resize = FrameConverter(width=w, height=h, interpolation="BICUBIC")
                with atomic_write(path, suffix=".mp4") as tmp, open_video(source) as reader, \
                        VideoWriter(tmp, w, h, fps=reader.fps or CLIP_FPS, time_base=reader.time_base, crf=12,
                                    preset="fast") as writer:
                    for frame in itertools.islice(reader, n_frames):
                        writer.write(resize.rgb(av.VideoFrame.from_ndarray(frame.image, format="rgb24")), frame.pts)
                    if writer.frames_written == 0:  # inside atomic_write: nothing is cached
                        raise SystemExit(f"error: --input {source}: no frames decoded")
    return path


class FrameSource:
    """The clip's frames, `limit` of them, looping the file when it is shorter (pts kept increasing).

    Records when each frame left the decoder (`arrived[index]`) for frame-in -> frame-out latency. With
    `pace` the frames are released at the clip's frame rate, as a camera would deliver them.
    """

    def __init__(self, path: Path, limit: int, pace: bool = False):
        self.path, self.limit, self.pace = path, int(limit), pace
        self.arrived: dict[int, float] = {}

    def __iter__(self) -> Iterator:
        from dataclasses import replace

        from capture.stream.reader import VideoReader

        produced, loop_offset_pts, started = 0, 0, time.perf_counter()
        while produced < self.limit:
            reader = VideoReader(self.path)
            last_pts, step = None, 1
            try:
                for frame in reader:
                    if produced >= self.limit:
                        break
                    if self.pace:
                        due = started + produced / (reader.fps or CLIP_FPS)
                        delay = due - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                    pts = frame.pts + loop_offset_pts
                    if last_pts is not None:
                        step = max(1, pts - last_pts)
                    last_pts = pts
                    frame = replace(frame, index=produced, pts=pts, time=float(pts * frame.time_base))
                    self.arrived[produced] = time.perf_counter()
                    produced += 1
                    yield frame
            finally:
                reader.close()
            if last_pts is None:
                raise RuntimeError(f"{self.path}: no frames decoded")
            loop_offset_pts = last_pts + step


def clip_info(path: Path):
    from capture.stream.reader import VideoReader

    with VideoReader(path) as reader:
        return {"path": str(path), "width": reader.width, "height": reader.height, "fps": reader.fps,
                "frames": reader.frame_count, "time_base": str(reader.time_base)}, reader.time_base


def collect_crops(path: Path, n: int) -> np.ndarray:
    """Face crops [n, 3, 224, 224] float32 from a clip's first n frames, through the same tracker as the pipeline."""
    from capture.crop import FaceTracker, crop_to_tensor, crop_transform

    crops = []
    with FaceTracker() as tracker:
        for frame in FrameSource(path, n):
            face = tracker.update(frame.image).face
            if face is not None:
                crops.append(crop_to_tensor(frame.image, crop_transform(face.box)).numpy())
    if not crops:
        raise RuntimeError(f"{path}: no face found for the INT8 calibration crops")
    return np.stack(crops)


# ------------------------------------------------------------------------------------------------ backends
@dataclass
class Engines:
    """One backend choice: callables for the two per-frame networks, and what they are."""

    name: str
    encode_flame: Optional[Callable]
    decode_detail: Optional[Callable]
    description: str
    settings: dict = field(default_factory=dict)
    int8_path: Optional[Path] = None
    detail_int8: Optional[dict] = None  # the INT8 D_detail graph's sidecar (calibration, error vs fp32)
    encode_workers: int = 1  # frames E_flame runs on at once in the pipeline (the session's encode stage)
    live_in_flight: Optional[int] = None  # --live: frames in flight (`Pipeline(in_flight=...)`; None: its default)


def backend_present(name: str, device: torch.device) -> tuple[bool, str]:
    from capture.backends import BACKENDS

    if name not in BACKENDS:
        return False, f"unknown backend {name!r}; choose from {', '.join(ALL_BACKENDS)}"
    return BACKENDS[name].available(device.type)


def make_engines(name: str, pack, device: torch.device, args, calibration: Callable[[], np.ndarray],
                 codes_from: str = "network") -> Engines:
    """The two per-frame networks of backend `name`, built by the registry exactly as `--backend name` builds
    them in capture.video / capture.live, with this benchmark's options (--fp32, --ort-threads, --spinning;
    INT8 calibrated on `calibration()`)."""
    from capture.backends import InferenceEngines, OnnxRuntimeBackend, OnnxRuntimeInt8Backend, TorchBackend
    from capture.backends.onnxruntime_backend import encode_workers, intra_op_threads, live_in_flight
    from capture.int8 import Calibration

    cuda = device.type == "cuda"
    half = cuda and not args.fp32
    schedule = "live" if args.live else "offline"
    # the product's thread setting unless --ort-threads says otherwise (capture.cli_common)
    def ort(int8: bool) -> dict:
        threads = args.ort_threads or (None if cuda else intra_op_threads(codes_from, int8, schedule))
        return dict(threads=threads, spinning=args.spinning)

    options = {"torch": {"cuda_graphs": cuda, "half": half}, "onnxruntime": ort(False),
               "onnxruntime-int8": dict(ort(True), calibration=Calibration(INT8_CALIBRATION_SOURCE, calibration))}
    engines = InferenceEngines(pack, name, device=str(device), options=options)
    flame = engines.backend("E_flame")
    detail = engines.backend("D_detail")  # made now, as the CLIs do: a failure shows before any frame
    int8_path = flame.onnx_path if isinstance(flame, OnnxRuntimeInt8Backend) else None
    detail_int8 = detail.int8_sidecar if isinstance(detail, OnnxRuntimeInt8Backend) else None
    if isinstance(flame, OnnxRuntimeBackend):
        threads = flame.session.get_session_options().intra_op_num_threads
        quantised = [n for n, q in (("E_flame", int8_path), ("D_detail", detail_int8)) if q is not None]
        what = f"ONNX Runtime {' and '.join(quantised) + ' int8' if quantised else 'fp32'}, {threads} thread(s) each"
        settings = {"ort_threads": threads, "spinning": args.spinning, "e_flame_int8": int8_path is not None,
                    "d_detail_int8": detail_int8 is not None}
    elif isinstance(flame, TorchBackend):
        what = ("PyTorch CUDA graphs " + ("fp16" if flame.half else "fp32") if flame.cuda_graphs
                else "PyTorch eager fp32")
        settings = {"cuda_graphs": flame.cuda_graphs, "half": flame.half}
    else:
        what, settings = "TensorRT", {}
    # landmark codes run no E_flame per frame: nothing for a second frame to do, whatever --encode-workers says
    workers = 1 if codes_from == "landmarks" else args.encode_workers or encode_workers(flame, codes_from, schedule)
    if workers > 1:
        what += f", E_flame on {workers} frames at once"
    settings["encode_workers"] = workers
    in_flight = live_in_flight(flame, codes_from, schedule)
    if in_flight is not None:
        what += f", {in_flight} frame(s) in flight"
        settings["live_in_flight"] = in_flight
    return Engines(engines.choice["E_flame"], engines.encode_flame, engines.decode_detail, what, settings,
                   int8_path, detail_int8, workers, in_flight)


# ------------------------------------------------------------------------------------------------ one run
@dataclass
class RunResult:
    name: str
    description: str
    frames: int
    wall_s: float
    fps: float
    stages: dict
    latency_ms: dict
    peak_rss_mb: float
    peak_gpu_mb: Optional[float]
    settings: dict
    codes: list = field(default_factory=list, repr=False)  # per frame: {"exp", "pose"} or None
    pictures: dict = field(default_factory=dict, repr=False)  # frame index -> picture, for comparison
    crops: list = field(default_factory=list, repr=False)  # eager only: crops for the INT8 check
    dropped: int = 0
    cpu_s: float = 0.0  # process CPU time (all threads, user + system) over the run
    fps_from_medians: Optional[float] = None  # serial runs: 1000 / sum of the stage medians (ms)
    rss_series: list = field(default_factory=list)  # long runs: [frames done, RSS MB]
    chunk_fps: list = field(default_factory=list)  # interleaved runs: FPS of each chunk, in order
    chunk_cpu_ms: list = field(default_factory=list)  # interleaved runs: process CPU ms per frame of each chunk
    stage_cpu_ms: dict = field(default_factory=dict)  # pipelined runs: mean CPU ms of each step's own thread

    def to_json(self) -> dict:
        return {"backend": self.name, "description": self.description, "frames": self.frames,
                "wall_s": round(self.wall_s, 3), "fps": round(self.fps, 3), "stages": self.stages,
                "latency_ms": self.latency_ms, "peak_rss_mb": round(self.peak_rss_mb, 1),
                "peak_gpu_mb": None if self.peak_gpu_mb is None else round(self.peak_gpu_mb, 1),
                "cpu_ms_per_frame": round(1e3 * self.cpu_s / max(self.frames, 1), 2),
                "cores_busy": round(self.cpu_s / self.wall_s, 2) if self.wall_s else None,
                "dropped": self.dropped, "settings": self.settings,
                "fps_from_stage_medians": None if self.fps_from_medians is None else round(self.fps_from_medians, 3),
                "chunk_fps": self.chunk_fps, "chunk_cpu_ms_per_frame": self.chunk_cpu_ms,
                "stage_cpu_ms": self.stage_cpu_ms}


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _stage_json(stats) -> dict:
    return {"median_ms": round(stats.median_ms, 3), "p95_ms": round(stats.p95_ms, 3),
            "mean_ms": round(stats.mean_ms, 3), "count": stats.count}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"median": None, "p95": None}
    a = np.asarray(values) * 1e3
    return {"median": round(float(np.median(a)), 2), "p95": round(float(np.percentile(a, 95)), 2)}


class Bench:
    """What every run shares: the model side, the clip, the output settings."""

    def __init__(self, args, say: Callable[[str], None], model_from: Optional["Bench"] = None):
        """model_from: a bench whose model side (pack, networks, avatar) this one shares (`--sizes`)."""
        self.args, self.say = args, say
        if model_from is not None:
            self.device, self.pack, self.codes_from = model_from.device, model_from.pack, model_from.codes_from
            self.deca, self.avatar = model_from.deca, model_from.avatar
        else:
            self._load_model(args, say)
        self.resampled_from: Optional[str] = None  # the --input clip, when it was resampled to --size
        if args.input == "synthetic":
            self.clip = synthetic_clip(self.deca, args.frames, parse_size(args.size or DEFAULT_SIZE), say)
        else:
            from capture.stream.sequence import find_sequence, open_video

            self.clip = Path(args.input)
            sequence = None if self.clip.is_file() else find_sequence(args.input)
            if not self.clip.is_file() and sequence is None:
                raise SystemExit(f"error: --input {args.input}: no such file or image sequence")
            if args.size is not None or sequence is not None:  # a sequence runs as a clip made of it, once
                if args.size is None:
                    with open_video(args.input) as reader:
                        size = (reader.width, reader.height)
                else:
                    size = parse_size(args.size)
                self.resampled_from = args.input
                self.clip = resampled_clip(self.clip, args.frames, size, say)
        self.info, self.time_base = clip_info(self.clip)
        self.frame_size = (self.info["height"], self.info["width"])
        self.n_frames = args.frames
        self.compare_at = set(np.linspace(0, self.n_frames - 1, min(COMPARE_FRAMES, self.n_frames)).round().astype(int))
        self._calibration: Optional[np.ndarray] = None
        self.sync = torch.cuda.synchronize if self.device.type == "cuda" else None

    def _load_model(self, args, say: Callable[[str], None]) -> None:
        from capture.assets import open_pack
        from capture.assets.locate import cache_dir
        from capture.avatar import load_avatar
        from capture.crop import FaceDetector
        from capture.deca import DECA
        from capture.sources import choose_source

        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda: no CUDA GPU is visible to torch here")
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.pack = open_pack(args.assets)
        say(self.pack.label)
        self.codes_from, why = choose_source(args.codes_from, self.pack.synthetic)
        say(f"codes from {self.codes_from} ({why})")
        self.deca = DECA.from_pack(self.pack, device=self.device)
        with FaceDetector() as detector:
            self.avatar, _ = load_avatar(self.deca, args.target, detector, cache_dir() / "avatars", "auto",
                                         self.codes_from)

    @property
    def size_text(self) -> str:
        return f"{self.info['width']}x{self.info['height']}"

    # INT8 calibration crops come from another rendering of the performer (other size and framing),
    # never from the benchmarked frames.
    def calibration(self) -> np.ndarray:
        if self._calibration is None:
            w, h = self.info["width"], self.info["height"]
            other = (h, h) if w != h else (w * 3 // 4, h)
            n = self.args.calibration_frames
            # at half the frame rate: twice the motion of n frames at the benchmark's rate, n frames to render
            clip = synthetic_clip(self.deca, n, (other[0] // 2 * 2, other[1] // 2 * 2), self.say, fps=CLIP_FPS / 2)
            self._calibration = collect_crops(clip, n)
        return self._calibration

    def frames(self, n: int, pace: bool = False):
        """The first `n` frames of the clip (an iterable with `.arrived`, see FrameSource)."""
        return FrameSource(self.clip, n, pace=pace)

    def tracker(self):
        """The face tracker of a session; None: the session's own (MediaPipe)."""
        return None

    def session(self, engines: Optional[Engines], times=None, reference: bool = False):
        from capture.session import RetargetSession

        return RetargetSession(self.deca, self.avatar, self.frame_size, layout=self.args.layout, pose_mode="source",
                               tracker=self.tracker(),
                               encode_flame=None if engines is None else engines.encode_flame,
                               decode_detail=None if engines is None else engines.decode_detail,
                               reference=reference, times=times,
                               codes_from="network" if reference or engines is None else self.codes_from,
                               encode_workers=1 if reference or engines is None else engines.encode_workers)

    def writer(self, folder: Path, session, tag: str):
        from capture.stream.writer import VideoWriter

        out_h, out_w = session.output_size
        options = {}
        if self.args.live:  # as capture.live records
            from capture.live import RECORD_PRESET

            options["preset"] = RECORD_PRESET
        return VideoWriter(folder / f"{tag}.mp4", out_w, out_h, fps=self.info["fps"] or CLIP_FPS,
                           time_base=self.time_base, **options)

    def warm_up(self, engines: Optional[Engines], reference: bool) -> None:
        """A few frames through a throwaway session: lazy initialisations are not charged to the run."""
        session = self.session(engines, reference=reference)
        try:
            for frame in self.frames(self.args.warmup):
                session.infer(session.crop(frame))
        finally:
            session.close()

    def _gpu_reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def _gpu_peak(self) -> Optional[float]:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated() / 2**20

    def _record(self, result: RunResult, out) -> None:
        codes = out.codes
        result.codes.append(None if codes is None else {"exp": codes["exp"].copy(), "pose": codes["pose"].copy()})
        if out.frame.index in self.compare_at:
            result.pictures[out.frame.index] = out.image

    # ------------------------------------------------------------------------------------ one frame at a time
    def run_serial(self, folder: Path, engines: Optional[Engines] = None) -> RunResult:
        """One frame at a time, no threads of ours: decode, crop, infer, encode, then the next frame.

        engines None: the eager reference, DECA's demo loop (torch eager networks, the reference renderer,
        torch's default threads). With engines: that backend and the fast renderer, serially (`--serial`),
        which gives each stage's cost without the pipeline's overlap. The whole clip in one chunk.
        """
        path = SerialPath(self, folder, engines)
        try:
            path.chunk(self.n_frames)
        except BaseException:
            path.close()
            raise
        result = path.finish()
        result.chunk_fps = []
        return result

    # ------------------------------------------------------------------------------------ pipelined
    def run_pipeline(self, engines: Engines, folder: Path, n_frames: Optional[int] = None,
                     rss_every: int = 0) -> RunResult:
        """The product's path: decode | crop | networks | render | encode in the bounded stage pipeline."""
        from capture.stream.pipeline import Pipeline, StepTimes

        n_frames = n_frames or self.n_frames
        cpu = self.device.type == "cpu"
        torch.set_num_threads(self.args.torch_threads if cpu else _DEFAULT_TORCH_THREADS)
        settings = dict(engines.settings, torch_threads=torch.get_num_threads(), depth=self.args.depth,
                        live=self.args.live)
        try:
            self.warm_up(engines, reference=False)
            times = StepTimes(sync=self.sync, cpu=True)  # the steps inside the stages; the stages' own in wall time
            session = self.session(engines, times=times)
            writer = self.writer(folder, session, engines.name)
            source = self.frames(n_frames, pace=self.args.live)
            result = RunResult(engines.name, engines.description, 0, 0.0, 0.0, {}, {}, 0.0, None, settings)
            latencies: list[float] = []

            def sink(out) -> None:
                writer.write(out.picture, out.frame.pts, out.frame.time_base)
                latencies.append(time.perf_counter() - source.arrived[out.frame.index])
                if rss_every:
                    if len(latencies) % rss_every == 0:
                        result.rss_series.append([len(latencies), round(rss_mb(), 1)])
                else:
                    self._record(result, out)

            pipeline = Pipeline(source, stages=session.stages,
                                sink=sink, policy="live" if self.args.live else "offline",
                                depth=1 if self.args.live else self.args.depth, in_flight=engines.live_in_flight,
                                finalize=writer.close)
            self._gpu_reset()
            try:
                with PeakRss() as peak:
                    cpu0 = _cpu_seconds()
                    stats = pipeline.run()
                    result.cpu_s = _cpu_seconds() - cpu0
            finally:
                session.close()
        finally:
            torch.set_num_threads(_DEFAULT_TORCH_THREADS)
        result.frames, result.wall_s = stats.frames_out, stats.wall_s
        result.fps, result.dropped = stats.fps, stats.dropped
        stages = {k: _stage_json(v) for k, v in times.stats().items()}
        for name, s in stats.stages.items():
            stages[_PIPELINE_STAGE_NAMES[name]] = _stage_json(s)
        result.stages = stages
        result.stage_cpu_ms = {k: round(v, 3) for k, v in times.cpu_ms().items()}
        result.latency_ms = _percentiles(latencies)
        result.peak_rss_mb, result.peak_gpu_mb = peak.peak, self._gpu_peak()
        return result


    # ------------------------------------------------------------------------------------ interleaved
    def open_serial(self, folder: Path, engines: Optional[Engines] = None) -> "SerialPath":
        return SerialPath(self, folder, engines)

    def open_pipeline(self, engines: Engines, folder: Path) -> "PipelinePath":
        return PipelinePath(self, engines, folder)


def chunk_sizes(n_frames: int, chunk: int) -> list[int]:
    """`n_frames` split into chunks of `chunk` frames (the last one takes the remainder when it is short)."""
    chunk = max(1, min(chunk, n_frames))
    sizes = [chunk] * (n_frames // chunk)
    rest = n_frames - sum(sizes)
    if rest:
        if sizes and rest < chunk // 2:
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return sizes


@dataclass
class Chunk:
    frames: int
    wall_s: float
    cpu_s: float

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


class SerialPath:
    """One frame at a time (the eager reference, or a backend with `--serial`), run a chunk at a time.

    The session, writer and clip reader stay open between chunks, so chunk k of every path covers the same
    frames of the clip; `chunk(n)` processes the next n frames in the calling thread.
    """

    def __init__(self, bench: "Bench", folder: Path, engines: Optional[Engines] = None):
        from capture.stream.pipeline import StepTimes

        self.bench, self.engines = bench, engines
        self.reference = reference = engines is None
        self.threads = (bench.args.eager_threads or _DEFAULT_TORCH_THREADS) if reference else (
            bench.args.torch_threads if bench.device.type == "cpu" else _DEFAULT_TORCH_THREADS)
        torch.set_num_threads(self.threads)
        bench.warm_up(engines, reference=reference)
        self.times = StepTimes(sync=bench.sync)
        self.session = bench.session(engines, times=self.times, reference=reference)
        tag = EAGER if reference else f"{engines.name} serial"
        self.writer = bench.writer(folder, self.session, tag.replace(" ", "-"))
        what = ("eager reference: PyTorch eager fp32, reference renderer, one frame at a time, "
                f"{self.threads} torch threads" if reference
                else f"{engines.description}; fast renderer, one frame at a time")
        settings = dict({} if reference else engines.settings, torch_threads=self.threads)
        self.result = RunResult(tag, what, 0, 0.0, 0.0, {}, {}, 0.0, None, settings)
        self.source = bench.frames(bench.n_frames)
        self._frames = iter(self.source)
        self.latencies: list[float] = []
        self.chunks: list[Chunk] = []
        self.peak_rss = 0.0
        torch.set_num_threads(_DEFAULT_TORCH_THREADS)

    def chunk(self, n: int) -> Chunk:
        bench, times, session, result = self.bench, self.times, self.session, self.result
        torch.set_num_threads(self.threads)
        done = 0
        try:
            with PeakRss() as peak:
                cpu0, started = _cpu_seconds(), time.perf_counter()
                while done < n:
                    with times("decode"):
                        frame = next(self._frames, None)
                    if frame is None:
                        break
                    with times("crop"):
                        item = session.crop(frame)
                    if self.reference and item.crop is not None and len(result.crops) < INT8_CHECK_CROPS:
                        result.crops.append(item.crop.numpy().copy())
                    out = session.infer(item)
                    with times("encode"):
                        self.writer.write(out.picture, out.frame.pts, out.frame.time_base)
                    self.latencies.append(time.perf_counter() - self.source.arrived.pop(frame.index))
                    bench._record(result, out)
                    done += 1
                chunk = Chunk(done, time.perf_counter() - started, _cpu_seconds() - cpu0)
        finally:
            torch.set_num_threads(_DEFAULT_TORCH_THREADS)
        self.peak_rss = max(self.peak_rss, peak.peak)
        self.chunks.append(chunk)
        return chunk

    def close(self) -> None:
        self.writer.close()
        self.session.close()

    def finish(self) -> RunResult:
        self.close()
        result = self.result
        _fill_from_chunks(result, self.chunks, self.latencies, self.peak_rss, self.bench._gpu_peak())
        result.stages = {k: _stage_json(v) for k, v in self.times.stats().items()}
        # One frame at a time, a frame costs the sum of its stages; from medians, a figure that a few frames
        # slowed down by other processes on the machine do not move.
        result.fps_from_medians = 1e3 / sum(result.stages[k]["median_ms"] for k in STAGES if k in result.stages)
        return result


class PipelinePath:
    """The product's stage pipeline for one backend, run a chunk at a time without emptying it.

    The pipeline runs in a thread for the whole clip. Between two chunks it is paused: the source, every
    stage and the sink wait at a gate before their next item, so each stage finishes at most the item it
    holds and the queues keep what they hold; the next chunk resumes from that steady state instead of
    paying a fill and a drain (which would charge the pipeline a frame-in -> frame-out latency per chunk).
    `chunk(n)` opens the gate until the sink has written n more frames. Stage times are taken inside the
    gate (the pipeline's own stage timers would include the pauses). Frames already read when a chunk
    resumed are left out of the latency figures: their wait includes the pause.
    """

    def __init__(self, bench: "Bench", engines: Engines, folder: Path):
        from capture.stream.pipeline import Pipeline, StepTimes

        self.bench, self.engines = bench, engines
        self.threads = bench.args.torch_threads if bench.device.type == "cpu" else _DEFAULT_TORCH_THREADS
        torch.set_num_threads(self.threads)
        try:
            bench.warm_up(engines, reference=False)
        finally:
            torch.set_num_threads(_DEFAULT_TORCH_THREADS)
        settings = dict(engines.settings, torch_threads=self.threads, depth=bench.args.depth, live=False,
                        chunk=bench.args.chunk)
        self.result = RunResult(engines.name, engines.description, 0, 0.0, 0.0, {}, {}, 0.0, None, settings)
        self.times = StepTimes(sync=bench.sync, cpu=True)
        self.session = bench.session(engines, times=self.times)
        self.writer = bench.writer(folder, self.session, engines.name)
        self.source = bench.frames(bench.n_frames)
        self.latencies: list[float] = []
        self.chunks: list[Chunk] = []
        self.peak_rss = 0.0
        self._open = threading.Event()  # the gate
        self._chunk_done = threading.Event()
        self._stopping = False
        self._target = self._written = 0
        self._resumed = 0.0
        self._stats = None
        self._error: Optional[BaseException] = None
        stages = [(name, self._timed(_PIPELINE_STAGE_NAMES[name], fn), *more)
                  for name, fn, *more in self.session.stages]
        self.pipeline = Pipeline(self._frames(), stages=stages, sink=self._sink, policy="offline",
                                 depth=bench.args.depth, finalize=self.writer.close)
        self._thread = threading.Thread(target=self._run, name=f"path-{engines.name}", daemon=True)
        self._thread.start()

    def _gate(self) -> None:
        while not self._open.wait(0.1):
            if self._stopping:
                raise RuntimeError("benchmark path stopped")

    def _timed(self, name: str, fn: Callable) -> Callable:
        def run(item):
            self._gate()
            t, c = time.perf_counter(), time.thread_time()
            out = fn(item)
            self.times.add(name, time.perf_counter() - t, time.thread_time() - c)
            return out
        return run

    def _frames(self) -> Iterator:
        frames = iter(self.source)
        while True:
            self._gate()
            t, c = time.perf_counter(), time.thread_time()
            frame = next(frames, None)
            if frame is None:
                return
            self.times.add("decode", time.perf_counter() - t, time.thread_time() - c)
            yield frame

    def _run(self) -> None:
        try:
            self._stats = self.pipeline.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised by chunk()/finish() in the main thread
            self._error = exc
        finally:
            self._chunk_done.set()  # wakes a chunk() waiting on a pipeline that ended

    def _sink(self, out) -> None:
        self._gate()
        t, c = time.perf_counter(), time.thread_time()
        self.writer.write(out.picture, out.frame.pts, out.frame.time_base)
        self.times.add("encode", time.perf_counter() - t, time.thread_time() - c)
        arrived = self.source.arrived.pop(out.frame.index)
        if arrived >= self._resumed:
            self.latencies.append(time.perf_counter() - arrived)
        self.bench._record(self.result, out)
        self._written += 1
        if self._written >= self._target:
            self._open.clear()
            self._chunk_done.set()

    def chunk(self, n: int) -> Chunk:
        torch.set_num_threads(self.threads)
        try:
            with PeakRss() as peak:
                cpu0, before = _cpu_seconds(), self._written
                self._target += n
                self._chunk_done.clear()
                self._resumed = started = time.perf_counter()
                self._open.set()
                while not self._chunk_done.wait(0.1):
                    pass
                wall = time.perf_counter() - started
                if self._error is not None:
                    raise self._error
                chunk = Chunk(self._written - before, wall, _cpu_seconds() - cpu0)
        finally:
            torch.set_num_threads(_DEFAULT_TORCH_THREADS)
        self.peak_rss = max(self.peak_rss, peak.peak)
        self.chunks.append(chunk)
        return chunk

    def close(self) -> None:
        """Stop a path that will not finish (an error elsewhere): its threads unwind at the gate."""
        self._stopping = True
        self._thread.join(timeout=30)
        self.session.close()

    def finish(self) -> RunResult:
        self._open.set()  # the end of the clip: let the end marker through
        self._thread.join()
        self.session.close()
        if self._error is not None:
            raise self._error
        result = self.result
        _fill_from_chunks(result, self.chunks, self.latencies, self.peak_rss, self.bench._gpu_peak())
        result.dropped = self._stats.dropped
        result.stages = {k: _stage_json(v) for k, v in self.times.stats().items()}
        result.stage_cpu_ms = {k: round(v, 3) for k, v in self.times.cpu_ms().items()}
        return result


_PIPELINE_STAGE_NAMES = {"source": "decode", "sink": "encode", "crop": "crop", "E_flame": "stage E_flame",
                         "codes": "stage codes", "detail": "stage D_detail", "render": "stage draw"}


def _fill_from_chunks(result: RunResult, chunks: list[Chunk], latencies: list[float], peak_rss: float,
                      peak_gpu: Optional[float]) -> None:
    result.frames = sum(c.frames for c in chunks)
    result.wall_s = sum(c.wall_s for c in chunks)
    result.cpu_s = sum(c.cpu_s for c in chunks)
    result.fps = result.frames / result.wall_s if result.wall_s else 0.0
    result.chunk_fps = [round(c.fps, 3) for c in chunks]
    result.chunk_cpu_ms = [round(1e3 * c.cpu_s / c.frames, 1) if c.frames else None for c in chunks]
    result.latency_ms = _percentiles(latencies)
    result.peak_rss_mb, result.peak_gpu_mb = peak_rss, peak_gpu


def run_interleaved(bench: "Bench", folder: Path, backends: list[str], make: Callable[[str], Engines],
                    serial: bool, eager: bool, say: Callable[[str], None]) -> tuple:
    """Every path over the same frames, in chunks, round robin: eager chunk 0, backend A chunk 0, ..., eager
    chunk 1, ... Returns (eager result or None, {backend: pipelined result}, {backend: serial result})."""
    paths: list[tuple[str, object]] = []
    engines_by_name: dict[str, Engines] = {}
    try:
        if eager:
            say("eager reference: warming up")
            paths.append((EAGER, bench.open_serial(folder)))
        for name in backends:
            engines_by_name[name] = engines = make(name)
            say(f"{name}: {engines.description}: warming up")
            paths.append((name, bench.open_pipeline(engines, folder)))
            if serial:
                paths.append((f"{name} serial", bench.open_serial(folder, engines)))
        bench._gpu_reset()
        sizes = chunk_sizes(bench.n_frames, bench.args.chunk)
        say(f"{bench.n_frames} frames in {len(sizes)} chunk(s) of ~{sizes[0]}, paths interleaved: "
            + ", ".join(p for p, _ in paths))
        for k, n in enumerate(sizes):
            line = []
            for name, path in paths:
                line.append(f"{name} {path.chunk(n).fps:.2f}")
            say(f"  chunk {k + 1}/{len(sizes)} FPS: " + ", ".join(line))
        results = {name: path.finish() for name, path in paths}
        paths = []
    finally:
        for _, path in paths:  # an error: stop what is still running
            with contextlib.suppress(Exception):
                path.close()
    eager_result = results.pop(EAGER, None)
    pipelined = {name: results[name] for name in backends}
    serial_runs = {name: results[f"{name} serial"] for name in backends if f"{name} serial" in results}
    return eager_result, pipelined, serial_runs, engines_by_name


def run_blocks(bench: "Bench", folder: Path, backends: list[str], make: Callable[[str], Engines], serial: bool,
               eager: bool, say: Callable[[str], None]) -> tuple:
    """Each path over the whole clip, one after the other (`--live`); same returns as `run_interleaved`."""
    eager_result = None
    if eager:
        say(f"eager reference: {bench.n_frames} frames")
        eager_result = bench.run_serial(folder)
    results, serial_runs, engines_by_name = {}, {}, {}
    for name in backends:
        engines_by_name[name] = engines = make(name)
        say(f"{name}: {engines.description}: {bench.n_frames} frames")
        results[name] = bench.run_pipeline(engines, folder)
        if serial:
            serial_runs[name] = bench.run_serial(folder, engines)
    return eager_result, results, serial_runs, engines_by_name


def run_scaling(benches: list["Bench"], folder: Path, backends: list[str], make: Callable[[str], Engines],
                say: Callable[[str], None]) -> tuple:
    """`--sizes`: each backend's product path at every size, in chunks, round robin (backend A at size 1 chunk 0,
    A at size 2 chunk 0, ..., then chunk 1, ...), so that a size's ratio to the first size is a median of chunk
    ratios taken back to back. Returns ({backend: {size: result}}, {backend: engines})."""
    paths: list[tuple[str, str, PipelinePath]] = []
    engines_by_name: dict[str, Engines] = {}
    try:
        for name in backends:
            engines_by_name[name] = engines = make(name)
            for bench in benches:
                sub = folder / bench.size_text
                sub.mkdir(exist_ok=True)
                say(f"{name} at {bench.size_text}: {engines.description}: warming up")
                paths.append((name, bench.size_text, bench.open_pipeline(engines, sub)))
        first = benches[0]
        first._gpu_reset()
        sizes = chunk_sizes(first.n_frames, first.args.chunk)
        say(f"{first.n_frames} frames at each size in {len(sizes)} chunk(s) of ~{sizes[0]}, interleaved")
        for k, n in enumerate(sizes):
            say(f"  chunk {k + 1}/{len(sizes)} FPS: "
                + ", ".join(f"{name} {size} {path.chunk(n).fps:.2f}" for name, size, path in paths))
        results: dict[str, dict[str, RunResult]] = {}
        for name, size, path in paths:
            results.setdefault(name, {})[size] = path.finish()
        paths = []
    finally:
        for _, _, path in paths:  # an error: stop what is still running
            with contextlib.suppress(Exception):
                path.close()
    return results, engines_by_name


def scaling_entry(result: RunResult, first: RunResult) -> dict:
    """A size's JSON entry with its FPS ratio to the first size (median of the paired chunk ratios)."""
    entry = result.to_json()
    paired = paired_ratios(result, first) if result.chunk_fps and first.chunk_fps else None
    entry["ratio_to_first"] = paired["median"] if paired else round(result.fps / first.fps, 3)
    entry["ratio_to_first_whole_run"] = round(result.fps / first.fps, 3)
    if paired:
        entry["ratio_chunks"] = paired
    return entry


BUSY_LOAD_PER_CPU = 0.5  # load average (1 min) before the run, per usable CPU, above which others are busy
BUSY_SPREAD = 0.25  # interquartile range of the chunk ratios relative to their median
EAGER_CPU_SWING = 1.5  # largest / smallest CPU time per frame of the eager reference's chunks


def machine_load(report: dict) -> dict:
    """Whether the numbers were taken on a busy machine, and why: the CPU time other processes used during the
    run (`other_processes_cores`, from /proc/stat; where it is missing, the 1-minute load average before the run
    and the load at the end beyond this process's share), how many threads of other processes wanted a CPU
    (`other_runnable_threads`: what a raised priority does not hide), and the spread of each backend's chunk
    ratios."""
    nproc = report["machine"]["nproc"] or 1
    before = (report["load_average"].get("before") or [None])[0]
    after = (report["load_average"].get("after") or [None])[0]
    runs = [r for r in [report.get("eager")] + list(report["backends"].values()) if r]
    ours = sum((r.get("cores_busy") or 0) * r["wall_s"] for r in runs) / max(sum(r["wall_s"] for r in runs), 1e-9)
    reasons = []
    measured = report.get("other_processes_cores")
    if measured is not None:
        # what other processes really used during the run (/proc/stat); the load average would still count the
        # previous command's work for a minute or more
        others = measured
        if others > BUSY_LOAD_PER_CPU * nproc:
            reasons.append(f"other processes kept {others:.2f} of the {nproc} CPUs busy during the run")
    else:
        if before is not None and before > BUSY_LOAD_PER_CPU * nproc:
            reasons.append(f"load average {before:.2f} before the run on {nproc} CPUs")
        others = None if after is None else round(max(0.0, after - ours), 2)
        if others is not None and others > BUSY_LOAD_PER_CPU * nproc:
            reasons.append(f"load average {after:.2f} at the end, of which ~{ours:.2f} was this benchmark")
    wanting = report.get("other_runnable_threads")
    if wanting is not None and wanting > BUSY_LOAD_PER_CPU * nproc:
        text = f"other processes had {wanting:.1f} runnable threads on average on {nproc} CPUs"
        if (report.get("priority") or {}).get("raised"):
            text += f" (this run had nice {report['priority']['nice']}: they got less than they asked for)"
        reasons.append(text)
    spreads = {name: r["ratio_chunks"]["iqr_relative"] for name, r in report["backends"].items()
               if r.get("ratio_chunks") and r["ratio_chunks"]["iqr_relative"] is not None}
    for name, spread in spreads.items():
        if spread > BUSY_SPREAD:
            reasons.append(f"{name}'s chunk ratios spread {100 * spread:.0f} % (interquartile range / median)")
    # The eager reference's own work grows with the load: its OpenMP threads burn CPU waiting for each other
    # when a core is taken away (seen: 0.25 -> 2.7 CPU s per frame at load 15 on 2 cores). Then no pairing
    # makes its ratio a quiet machine's.
    cpu = [c for c in ((report.get("eager") or {}).get("chunk_cpu_ms_per_frame") or []) if c]
    swing = round(max(cpu) / min(cpu), 2) if len(cpu) > 1 and min(cpu) > 0 else None
    if swing is not None and swing > EAGER_CPU_SWING:
        reasons.append(f"the eager reference's CPU time per frame varied {swing:.1f}x between chunks (its torch "
                       "threads spin while a core is taken away when OMP_WAIT_POLICY is not PASSIVE; "
                       "--eager-threads 1 avoids that too)")
    # CPUs that are not the run's own (hyper-threads of one core, a host that moves them): nothing else shows it
    speedups = [v for v in (report.get("parallel_speedup") or {}).values() if v is not None]
    shared = bool(speedups) and min(speedups) < SHARED_CORES * nproc
    if shared:
        reasons.append(f"the {nproc} CPUs did {min(speedups):.2f}x one CPU's work at once (x {nproc} on cores of "
                       "their own): they share physical cores, so FPS here is not a dedicated machine's")
    return {"nproc": nproc, "load_1min_before": before, "load_1min_after": after,
            "cores_busy_by_this_run": round(ours, 2), "other_load_estimate": others,
            "other_runnable_threads": wanting, "eager_cpu_swing": swing,
            "chunk_ratio_spread": spreads, "parallel_speedup": speedups or None, "shared_cores": shared,
            "busy": bool(reasons), "reasons": reasons}


# ------------------------------------------------------------------------------------------------ comparison
def paired_ratios(result: RunResult, eager: RunResult) -> Optional[dict]:
    """The per-chunk FPS ratios of a path to the eager reference (same frames, run back to back) and their
    median: a burst of other work on the machine slows one chunk of one path, not the median."""
    a, b = result.chunk_fps, eager.chunk_fps
    pairs = [x / y for x, y in zip(a, b) if x > 0 and y > 0]
    if not pairs:
        return None
    r = np.asarray(pairs)
    median = float(np.median(r))
    q25, q75 = np.percentile(r, [25, 75])
    return {"median": round(median, 3), "chunks": [round(float(x), 3) for x in r],
            "iqr_relative": round(float((q75 - q25) / median), 3) if median else None,
            "min": round(float(r.min()), 3), "max": round(float(r.max()), 3)}


def entry_with_ratios(result: RunResult, eager: Optional[RunResult]) -> dict:
    """A run's JSON entry with its FPS ratios to the eager reference of the same run (when there is one)."""
    entry = result.to_json()
    if eager is not None:
        paired = paired_ratios(result, eager) if result.chunk_fps and eager.chunk_fps else None
        if paired is not None and len(paired["chunks"]) > 1:
            entry["ratio_to_eager"] = paired["median"]
            entry["ratio_to_eager_whole_run"] = round(result.fps / eager.fps, 3)
            entry["ratio_chunks"] = paired
        else:
            entry["ratio_to_eager"] = round(result.fps / eager.fps, 3)
        entry["ratio_to_eager_medians"] = round(result.fps / eager.fps_from_medians, 3)
        cpu = paired_cpu_ratio(result, eager)
        if cpu is not None:
            entry["cpu_ratio_to_eager"] = cpu
    return entry


def paired_cpu_ratio(result: RunResult, eager: RunResult) -> Optional[float]:
    """Median over chunks of the eager reference's CPU time per frame over the path's. Wall-clock ratios on a
    busy machine favour the path with more runnable threads (the kernel shares the cores per thread, so a
    pipeline of five threads takes more of them from other jobs than a reference of two); CPU time per frame
    does not depend on that share."""
    pairs = [e / r for r, e in zip(result.chunk_cpu_ms, eager.chunk_cpu_ms) if r and e]
    return round(float(np.median(pairs)), 3) if pairs else None


def compare(result: RunResult, eager: RunResult) -> dict:
    """How far a backend's output is from the eager reference's on the same frames."""
    diffs = [np.abs(result.pictures[i].astype(np.int16) - eager.pictures[i].astype(np.int16))
             for i in sorted(set(result.pictures) & set(eager.pictures))]
    exp_err, jaw_err = [], []
    for a, b in zip(result.codes, eager.codes):
        if a is not None and b is not None:
            exp_err.append(float(np.abs(a["exp"] - b["exp"]).max()))
            jaw_err.append(float(np.abs(a["pose"][3:6] - b["pose"][3:6]).max()))
    return {
        "frames_compared": len(diffs),
        "pixel_mean_abs": round(float(np.mean([d.mean() for d in diffs])), 4) if diffs else None,
        "pixel_max_abs": int(max(int(d.max()) for d in diffs)) if diffs else None,
        "pixels_off_by_more_than_8_pct": round(100 * float(np.mean([(d.max(-1) > 8).mean() for d in diffs])), 4)
        if diffs else None,
        "exp_max_abs": round(max(exp_err), 6) if exp_err else None,
        "jaw_max_abs_rad": round(max(jaw_err), 6) if jaw_err else None,
        "frames_with_codes": len(exp_err),
    }


def int8_accuracy(bench: Bench, engines: Engines, crops: list) -> dict:
    from capture.export import ensure_onnx, graph_spec
    from capture.int8 import int8_error

    spec = graph_spec("E_flame")
    inputs = np.stack(crops) if crops else bench.calibration()
    fp32_path = ensure_onnx(bench.pack, "E_flame")
    report = int8_error(fp32_path, engines.int8_path, inputs, spec)
    report["fp32_sensitivity"] = fp32_sensitivity(fp32_path, inputs, spec)
    report["crops"] = int(len(inputs))
    report["crops_from"] = "benchmarked frames (eager run)" if crops else "calibration clip"
    report["calibration_crops"] = int(len(bench.calibration()))
    report["calibration_from"] = INT8_CALIBRATION_SOURCE
    report["int8_file"] = str(engines.int8_path)
    if engines.detail_int8 is not None:  # D_detail's error as its sidecar measured it, on its calibration latents
        side = engines.detail_int8
        report["D_detail"] = dict(side["error_vs_fp32"], latents=side["calibration"]["count"],
                                  latents_from=side["calibration"]["source"])
    return report


def fp32_sensitivity(fp32_path: Path, inputs: np.ndarray, spec) -> dict:
    """How much the float32 code moves for input changes that no one would call a different face: +-half an
    8-bit level of noise, and the crop shifted by one pixel. The INT8 error reads against these."""
    from capture.export import cpu_session

    session = cpu_session(fp32_path)

    def run(x):
        return np.concatenate([session.run(None, {spec.input_name: x[i:i + 1].astype(np.float32)})[0]
                               for i in range(len(x))]).astype(np.float64)

    ref = run(inputs)
    rng = np.random.default_rng(0)
    out = {}
    for name, changed in (("noise_half_level", inputs + rng.uniform(-0.5, 0.5, inputs.shape) / 255),
                          ("shift_1px", np.roll(inputs, 1, axis=3))):
        d = run(changed) - ref
        out[name] = {"rms": float(np.sqrt((d ** 2).mean())), "exp_rms": float(np.sqrt((d[:, 150:200] ** 2).mean()))}
    return out


# ------------------------------------------------------------------------------------------------ long run
def long_run(bench: Bench, engines: Engines, folder: Path, n_frames: int) -> dict:
    every = max(50, n_frames // 200)
    result = bench.run_pipeline(engines, folder, n_frames=n_frames, rss_every=every)
    series = result.rss_series
    warm = [r for f, r in series if f >= min(1000, n_frames // 10)]
    settled = warm[0] if warm else (series[0][1] if series else None)
    end = series[-1][1] if series else None
    slope = None
    if len(series) >= 4:
        f, r = np.asarray(series, dtype=np.float64).T
        keep = f >= min(1000, n_frames // 10)
        if keep.sum() >= 2:
            slope = float(np.polyfit(f[keep], r[keep], 1)[0] * 1000)
    after = [r for f, r in series if f >= min(1000, n_frames // 10)]
    return {"backend": engines.name, "frames": result.frames, "fps": round(result.fps, 3),
            "max_rss_after_warmup_mb": max(after) if after else None,
            "wall_s": round(result.wall_s, 1), "rss_start_mb": series[0][1] if series else None,
            "rss_after_warmup_mb": settled, "rss_end_mb": end, "peak_rss_mb": round(result.peak_rss_mb, 1),
            "growth_mb": None if end is None or settled is None else round(end - settled, 1),
            "slope_mb_per_1k_frames": None if slope is None else round(slope, 3),
            "latency_ms": result.latency_ms, "rss_series": series}


# ------------------------------------------------------------------------------------------------ report
def _cell(stages: dict, name: str) -> str:
    s = stages.get(name)
    if not s:
        return "-"
    return f"{s['median_ms']:.1f}/{s['p95_ms']:.1f}"


def format_tables(report: dict) -> str:
    runs = (([report["eager"]] if report.get("eager") else []) + list(report.get("serial", {}).values())
            + list(report["backends"].values()))
    if report.get("scaling"):  # every size's run, its stages and end to end
        runs = [dict(r, backend=f"{name} {size}") for name, by_size in report["scaling"]["backends"].items()
                for size, r in by_size.items()]
    names = [r["backend"] for r in runs]
    width = max(14, *(len(n) + 2 for n in names))
    lines = ["per stage, median/p95 ms (stages of one frame; in the pipeline they overlap across threads)",
             f"{'stage':<16}" + "".join(f"{n:>{width}}" for n in names)]
    extra = [k for r in runs for k in r["stages"] if k not in STAGES]
    for stage in list(STAGES) + sorted(set(extra), key=extra.index):
        lines.append(f"{stage:<16}" + "".join(f"{_cell(r['stages'], stage):>{width}}" for r in runs))
    cpu_steps = [k for r in runs for k in r.get("stage_cpu_ms", {})]
    if cpu_steps:
        lines += ["per stage, mean CPU ms of the thread running it (pipelined runs; what an encoder's, ONNX Runtime's "
                  "or MediaPipe's own threads do for it is not counted)"]
        for stage in sorted(set(cpu_steps), key=lambda k: (list(STAGES) + cpu_steps).index(k)):
            cells = [r.get("stage_cpu_ms", {}).get(stage) for r in runs]
            lines.append(f"{stage:<16}" + "".join(f"{'-' if c is None else f'{c:.1f}':>{width}}" for c in cells))
    m, inp = report["machine"], report["input"]
    gpu = f", {m['gpu']['name']}" if m.get("gpu") else ""
    lines += ["", f"end to end: {inp['frames_run']} frames {inp['width']}x{inp['height']} -> {report['layout']}, "
              f"codes from {report.get('codes_from', 'network')} (eager: network), "
              f"{m['cpu']} ({m['nproc']} CPUs{_speedup_text(report)}){gpu}, device {m['device']}, "
              f"load avg {report['load_average']}"]
    header = (f"{'backend':<24}{'FPS':>7}{'x eager':>9}{'x eager*':>10}{'latency med/p95 ms':>20}"
              f"{'CPU ms/frame':>14}{'peak RSS MB':>13}  what")
    lines.append(header)
    for r in runs:
        ratio = r.get("ratio_to_eager")
        ratio_text = f"{ratio:.2f}" if ratio else ("1.00" if r["backend"] == EAGER else "-")
        robust = r.get("ratio_to_eager_medians")
        robust_text = f"{robust:.2f}" if robust else "-"
        if r["backend"] == EAGER and r.get("fps_from_stage_medians"):
            robust_text = f"({r['fps_from_stage_medians']:.2f} FPS)"
        lat = r["latency_ms"]
        lat_text = "-" if lat["median"] is None else "{:.0f}/{:.0f}".format(lat["median"], lat["p95"])
        lines.append(f"{r['backend']:<24}{r['fps']:>7.2f}{ratio_text:>9}{robust_text:>10}{lat_text:>20}"
                     f"{r['cpu_ms_per_frame']:>14.0f}"
                     f"{r['peak_rss_mb']:>13.0f}  {r['description']}")
    alone = [r for r in runs if r.get("peak_rss_alone")]
    if alone:
        lines.append("peak RSS: " + ", ".join(r["backend"] for r in alone) + " each alone, in a fresh process "
                     f"(this process, every path loaded: {max(r['peak_rss_process_mb'] for r in alone):.0f} MB)")
    chunked = [r for r in runs if r.get("ratio_chunks") and r.get("ratio_to_eager")]
    if chunked:
        lines.append("x eager: median over chunks of the FPS ratio to the eager reference on the same frames, run "
                     "back to back (interquartile range / median: "
                     + ", ".join(f"{r['backend']} {100 * (r['ratio_chunks']['iqr_relative'] or 0):.0f} %"
                                 for r in chunked) + ")")
    if report.get("eager"):
        lines.append("x eager*: against the eager reference's FPS from its stage medians (1000 / sum of medians), "
                     "which other processes' bursts on the machine do not move")
    cpu_ratios = [(r["backend"], r["cpu_ratio_to_eager"]) for r in runs if r.get("cpu_ratio_to_eager")]
    if cpu_ratios:
        lines.append("x eager in CPU time per frame (median over chunks; what a busy machine does not bias): "
                     + ", ".join(f"{name} {ratio:.2f}x" for name, ratio in cpu_ratios))
    for r in runs:
        diff = r.get("vs_eager")
        if diff:
            lines.append(f"  {r['backend']} vs eager output: pixels mean |d| {diff['pixel_mean_abs']} levels, "
                         f"{diff['pixels_off_by_more_than_8_pct']}% off by > 8; exp max |d| {diff['exp_max_abs']}, "
                         f"jaw max |d| {diff['jaw_max_abs_rad']} rad")
    if report.get("int8"):
        q = report["int8"]
        sl = q.get("slices", {})
        sens = q.get("fp32_sensitivity", {})
        lines.append(f"  E_flame INT8 vs fp32 on {q['crops']} crops: code rms error {q['rms']:.3g} (code rms "
                     f"{q['reference_rms']:.3g}), exp rms error {sl.get('exp', {}).get('rms', float('nan')):.3g}; "
                     f"fp32 itself moves exp by {sens.get('noise_half_level', {}).get('exp_rms', float('nan')):.3g} "
                     f"rms for +-0.5 level input noise, {sens.get('shift_1px', {}).get('exp_rms', float('nan')):.3g} "
                     f"for a 1 px crop shift")
        if q.get("D_detail"):
            d = q["D_detail"]
            lines.append(f"  D_detail INT8 vs fp32 on its {d['latents']} calibration latents: displacement rms error "
                         f"{1e3 * d['rms']:.3g} mm (displacement rms {1e3 * d['reference_rms']:.3g} mm)")
    if report.get("long"):
        lg = report["long"]
        lines.append(f"long run ({lg['backend']}): {lg['frames']} frames at {lg['fps']:.1f} FPS, RSS "
                     f"{lg['rss_after_warmup_mb']} -> {lg['rss_end_mb']} MB after warm-up: growth {lg['growth_mb']} MB "
                     f"(slope {lg['slope_mb_per_1k_frames']} MB / 1k frames)")
    if report.get("scaling"):
        lines += _scaling_lines(report)
    priority = report.get("priority")
    if priority:
        lines.append(f"priority: nice {priority['nice']} while measuring" if priority["raised"] else
                     f"priority: not raised ({priority['why']}); on a busy machine the FPS ratios favour the "
                     "pipelined paths (more runnable threads), the CPU-time ratios do not")
    load = report.get("machine_load")
    if load and load["busy"]:
        lines.append("WARNING: busy machine, figures are not a quiet machine's: " + "; ".join(load["reasons"]))
    return "\n".join(lines)


def _speedup_text(report: dict) -> str:
    speedup = report.get("parallel_speedup") or {}
    if speedup.get("before") is None:
        return ""
    return f", doing {speedup['before']}x / {speedup.get('after')}x one CPU's work at once before / after"


def _scaling_lines(report: dict) -> list[str]:
    sc = report["scaling"]
    lines = ["", f"scaling: {report['layout']}, codes from {report.get('codes_from')}, every size's chunks interleaved "
             "with the others'",
             f"{'backend':<24}{'size':>11}{'FPS':>8}{'x first':>9}{'latency med/p95 ms':>20}{'CPU ms/frame':>14}"
             f"{'chunk spread':>14}"]
    for name, runs in sc["backends"].items():
        for size, r in runs.items():
            lat = r["latency_ms"]
            lat_text = "-" if lat["median"] is None else "{:.0f}/{:.0f}".format(lat["median"], lat["p95"])
            spread = r.get("ratio_chunks", {}).get("iqr_relative")
            spread_text = "-" if size == sc["sizes"][0] or spread is None else f"{100 * spread:.0f} %"
            lines.append(f"{name:<24}{size:>11}{r['fps']:>8.2f}{r['ratio_to_first']:>9.2f}{lat_text:>20}"
                         f"{r['cpu_ms_per_frame']:>14.0f}{spread_text:>14}")
    lines.append("x first: median over chunks of the FPS ratio to the first size, the chunks run back to back "
                 "(chunk spread: their interquartile range / median)")
    return lines


RSS_PROBE_FRAMES = 100  # frames a fresh process runs to take one backend's peak RSS alone


def alone_rss(args: argparse.Namespace, name: str, codes_from: str, clip: Path) -> dict:
    """One backend's peak RSS with nothing else loaded: the same product path (the same input, layout, code source
    and settings) run in a fresh process for up to `RSS_PROBE_FRAMES` frames, as `capture.video` would hold it.
    clip: the file the measured run decoded (the synthetic clip, or an input resampled to a size), the probe's
    input at its own size, so that the probe does not render or resample it again in the process it measures.
    Returns {"peak_rss_mb", "frames"} or {"error": one line}."""
    options = ["--input", str(clip), "--layout", args.layout, "--codes-from", codes_from,
               "--assets", args.assets, "--target", args.target, "--torch-threads", str(args.torch_threads),
               "--ort-threads", str(args.ort_threads), "--encode-workers", str(args.encode_workers),
               "--depth", str(args.depth), "--warmup", str(args.warmup),
               "--calibration-frames", str(args.calibration_frames)]
    flags = [flag for flag, on in (("--live", args.live), ("--fp32", args.fp32), ("--spinning", args.spinning)) if on]
    device = ["--device", args.device] if args.device else []
    command = [sys.executable, "-m", "capture.fps", "--rss-probe", "--backends", name, "--no-eager", "--frames",
               str(min(args.frames, RSS_PROBE_FRAMES)), "--priority", "0", "--quiet", *options, *flags, *device]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit status {done.returncode}: {tail}"}
    try:
        figure = json.loads(lines[-1])
        return {"peak_rss_mb": float(figure["peak_rss_mb"]), "frames": int(figure["frames"])}
    except (ValueError, TypeError, KeyError) as exc:
        return {"error": f"unreadable probe output ({type(exc).__name__}): {lines[-1][:120]}"}


ALONE_KEYS = ("peak_rss_mb", "peak_rss_process_mb", "peak_rss_alone", "peak_rss_alone_error")


def take_alone_rss(entry: dict, alone: dict, say: Callable[[str], None]) -> None:
    """Put a fresh process's figure (`alone_rss`) into a run's entry: `peak_rss_mb` becomes the alone figure and this
    process's moves to `peak_rss_process_mb`; on failure the entry keeps this process's and says why."""
    entry["peak_rss_process_mb"] = entry["peak_rss_mb"]
    if "error" in alone:
        entry["peak_rss_alone_error"] = alone["error"]
        say(f"{entry['backend']}: no peak RSS alone ({alone['error']})")
    else:
        entry["peak_rss_mb"], entry["peak_rss_alone"] = alone["peak_rss_mb"], True


def rss_probe(args: argparse.Namespace, bench: "Bench", name: str, folder: Path) -> dict:
    """The fresh process's side of `alone_rss`: one pipelined run of `name`, its peak RSS."""
    engines = make_engines(name, bench.pack, bench.device, args, bench.calibration, bench.codes_from)
    result = bench.run_pipeline(engines, folder)
    return {"peak_rss_mb": round(result.peak_rss_mb, 1), "frames": result.frames}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog("capture-fps", "capture.fps"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(parser)
    parser.add_argument("--input", default="synthetic",
                        help="a video file, an image sequence (a folder or a pattern such as shot/f_%%04d.png, run as "
                             "a clip made of its first frames), or 'synthetic' (default)")
    parser.add_argument("--frames", type=int, default=200, help="frames per run (default 200)")
    parser.add_argument("--backends", default="all",
                        help=f"comma list from {', '.join(ALL_BACKENDS)}, or 'all' present here (default)")
    parser.add_argument("--size", default=None, metavar="WxH",
                        help=f"frame size: the synthetic clip's (default {DEFAULT_SIZE}), or an --input clip's "
                             "frames resampled to it (default: its own size)")
    parser.add_argument("--sizes", default=None, metavar="WxH,...",
                        help="scaling: the backends' product path at each size instead (the synthetic clip "
                             "rendered at each, or the --input clip resampled to each), interleaved in chunks; each "
                             "size's FPS ratio to the first is the median of the paired chunk ratios (e.g. "
                             "640x360,1280x720,1920x1080; no eager reference)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the numbers as JSON")
    parser.add_argument("--long", action="store_true", help="then run --long-frames frames and report memory growth")
    parser.add_argument("--long-frames", type=int, default=10_000)
    parser.add_argument("--no-eager", action="store_true", help="skip the eager reference (no ratios)")
    parser.add_argument("--eager-threads", type=int, default=0,
                        help="torch threads of the eager reference (default 0: torch's default, as DECA's demo)")
    parser.add_argument("--serial", action="store_true",
                        help="also run each backend one frame at a time: per-stage costs without overlap")
    parser.add_argument("--live", action="store_true",
                        help="pace the input at the clip's frame rate with the live drop policy (camera-like latency)")
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--fp32", action="store_true", help="torch on CUDA: float32 instead of float16")
    parser.add_argument("--assets", default="demo", help="model pack: 'demo' (default) or a folder")
    parser.add_argument("--target", default="demo", help="avatar identity: 'demo' (default), 'astronaut' or a photo")
    parser.add_argument("--layout", default="side-by-side", choices=("avatar", "side-by-side", "overlay"))
    parser.add_argument("--codes-from", default="auto", choices=("auto", "network", "landmarks", "hybrid"),
                        help="code source of the backend runs (auto: landmarks on a synthetic pack); the eager "
                             "reference is always DECA's own way, E_flame per frame")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads in the pipelined runs (default 1: stages share the cores)")
    parser.add_argument("--ort-threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads per network (default 0 = the product's: 1 with landmark "
                             "codes or, offline, an INT8 E_flame; a float32 E_flame offline: the physical cores "
                             "shared out between the frames it runs on at once; live: physical cores)")
    parser.add_argument("--encode-workers", type=int, default=0,
                        help="frames E_flame runs on at once in the product path (default 0 = the product's: 2 for "
                             "a float32 ONNX Runtime E_flame on the CPU offline, else 1)")
    parser.add_argument("--spinning", action="store_true",
                        help="let ONNX Runtime's idle workers spin (its own default; off in capture's backend)")
    parser.add_argument("--depth", type=int, default=2, help="pipeline queue depth (offline policy)")
    parser.add_argument("--chunk", type=int, default=25,
                        help="offline: frames per chunk; the eager reference and each backend take turns, a chunk "
                             "each, over the same frames, and a ratio is the median of the chunks' ratios "
                             "(default 25; --chunk N >= --frames runs each path in one block)")
    parser.add_argument("--warmup", type=int, default=3, help="frames through a throwaway session before each run")
    parser.add_argument("--calibration-frames", type=int, default=CALIBRATION_FRAMES,
                        help=f"INT8 calibration crops (default {CALIBRATION_FRAMES})")
    parser.add_argument("--priority", type=int, default=PRIORITY,
                        help=f"nice value while measuring where the system allows it (default {PRIORITY}: other "
                             "processes on a busy machine move the figures less; 0 keeps the priority as it is)")
    parser.add_argument("--no-alone-rss", action="store_true",
                        help="skip measuring each backend's peak RSS alone, in a fresh process (by default done "
                             "when the run loads more than one path: the process's own peak holds them all)")
    parser.add_argument("--rss-probe", action="store_true", help=argparse.SUPPRESS)  # the fresh process's side
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be >= 1")
    if args.chunk < 1:
        parser.error("--chunk must be >= 1")
    if args.encode_workers < 0:
        parser.error("--encode-workers must be >= 0 (0: the product's choice)")
    if args.sizes is not None:
        try:
            args.sizes = [f"{w}x{h}" for w, h in (parse_size(t) for t in args.sizes.split(",") if t.strip())]
        except SystemExit as exc:  # parse_size's one line, about this size
            parser.error(str(exc).replace("error: --size", "--sizes", 1))
        if len(args.sizes) < 2 or len(set(args.sizes)) != len(args.sizes):
            parser.error("--sizes: two or more different sizes")
        if args.live or args.serial or args.long:
            parser.error("--sizes runs offline: no --live, --serial or --long")
        args.size, args.no_eager = args.sizes[0], True
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    priority = raise_priority(args.priority) if args.priority else {"nice": None, "raised": False,
                                                                    "why": "--priority 0", "previous": None}
    others = RunnableOthers().start()
    try:
        return measure(args, argv, priority, others)
    finally:
        others.stop()
        restore_priority(priority)


def measure(args: argparse.Namespace, argv, priority: dict, others: RunnableOthers) -> int:
    """fps.py's runs, report and tables (`main` without the priority and the sampling of other processes)."""
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    load_before = load_average()
    speedup_before = parallel_speedup(len(usable_cpus()))
    counters_before = cpu_counters()
    bench = Bench(args, say)
    if args.backends == "all":
        wanted = CPU_BACKENDS if bench.device.type == "cpu" else GPU_BACKENDS
        explicit = False
    else:
        wanted = tuple(b.strip() for b in args.backends.split(",") if b.strip())
        explicit = True
    backends, skipped = [], {}
    for name in wanted:
        ok, why = backend_present(name, bench.device)
        if ok:
            backends.append(name)
        elif explicit:
            raise SystemExit(f"error: --backends {name}: not available here ({why})")
        else:
            skipped[name] = why

    report = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python benchmarks/fps.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(bench.device), "priority": priority,
        "libraries": library_versions(),
        "input": dict(bench.info, synthetic=args.input == "synthetic", frames_run=bench.n_frames,
                      resampled_from=bench.resampled_from),
        "layout": args.layout, "target": args.target, "pack": bench.pack.label, "codes_from": bench.codes_from,
        "stages": list(STAGES),
        "eager": None, "backends": {}, "serial": {}, "skipped": skipped, "int8": None, "long": None,
    }
    make = lambda name: make_engines(name, bench.pack, bench.device, args, bench.calibration,  # noqa: E731
                                     bench.codes_from)
    def add(entry: dict, codes_from: str) -> dict:
        entry["codes_from"], entry["resolution"] = codes_from, bench.size_text
        return entry

    with tempfile.TemporaryDirectory(prefix="capture-fps-") as tmp:
        folder = Path(tmp)
        if args.rss_probe:
            print(json.dumps(rss_probe(args, bench, backends[0], folder)), flush=True)
            return 0
        if args.sizes:
            benches = [bench] + [Bench(argparse.Namespace(**dict(vars(args), size=other)), say, model_from=bench)
                                 for other in args.sizes[1:]]
            by_size, engines_by_name = run_scaling(benches, folder, backends, make, say)
            clips = dict(zip(args.sizes, (b.clip for b in benches)))
            report["scaling"] = {"sizes": args.sizes, "backends": {}}
            for name, runs in by_size.items():
                first = runs[args.sizes[0]]
                report["scaling"]["backends"][name] = {
                    size: dict(scaling_entry(result, first), codes_from=bench.codes_from, resolution=size)
                    for size, result in runs.items()}
                report["backends"][name] = add(first.to_json(), bench.codes_from)
                say(f"{name}: " + ", ".join(f"{size} {r.fps:.2f} FPS" for size, r in runs.items()))
            eager, results, serial_runs = None, {}, {}
        elif args.live:
            # Live: each path alone, its input paced at the clip's rate (a camera); latency is what matters
            # there and a path's FPS is capped by the input rate, so paths are not interleaved.
            eager, results, serial_runs, engines_by_name = run_blocks(bench, folder, backends, make, args.serial,
                                                                      not args.no_eager, say)
        else:
            eager, results, serial_runs, engines_by_name = run_interleaved(bench, folder, backends, make,
                                                                           args.serial, not args.no_eager, say)
        if eager is not None:
            report["eager"] = add(eager.to_json(), "network")
            say(f"eager: {eager.fps:.2f} FPS")
        for name, result in results.items():
            entry = add(entry_with_ratios(result, eager), bench.codes_from)
            if eager is not None:
                entry["vs_eager"] = compare(result, eager)
            report["backends"][name] = entry
            say(f"{name}: {result.fps:.2f} FPS" + (f", {entry['ratio_to_eager']:.2f}x eager" if eager else ""))
            if name in serial_runs:
                report["serial"][name] = add(entry_with_ratios(serial_runs[name], eager), bench.codes_from)
            if name == "onnxruntime-int8":
                report["int8"] = int8_accuracy(bench, engines_by_name[name], eager.crops if eager else [])
        # The machine's load is read over the measured runs: the fresh processes below are this run's own work
        report["load_average"] = {"before": load_before, "after": load_average()}
        report["other_processes_cores"] = other_cores(counters_before, cpu_counters())
        report["parallel_speedup"] = {"before": speedup_before, "after": parallel_speedup(len(usable_cpus()))}
        others.stop()
        report["other_runnable_threads"] = others.mean
        if args.sizes and not args.no_alone_rss:  # every size's path was loaded in this process
            for name, runs in report["scaling"]["backends"].items():
                for size, entry in runs.items():
                    say(f"{name} {size}: peak RSS alone, in a fresh process")
                    take_alone_rss(entry, alone_rss(args, name, bench.codes_from, clips[size]), say)
                report["backends"][name].update({key: runs[args.sizes[0]][key] for key in ALONE_KEYS
                                                 if key in runs[args.sizes[0]]})
        elif results and not args.no_alone_rss and (eager is not None or len(results) > 1 or serial_runs):
            for name, entry in report["backends"].items():
                say(f"{name}: peak RSS alone, in a fresh process")
                take_alone_rss(entry, alone_rss(args, name, bench.codes_from, bench.clip), say)
        if args.long and backends:
            name = max(backends, key=lambda n: report["backends"][n]["fps"])  # the fastest here
            say(f"long run: {args.long_frames} frames through {name}")
            report["long"] = long_run(bench, engines_by_name[name], folder, args.long_frames)
    report["machine_load"] = machine_load(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(format_tables(report), flush=True)
    return 0


if __name__ == "__main__":
    from .cli_common import run_cli

    with contextlib.suppress(BrokenPipeError):
        run_cli(main)
