"""INT8 graphs: static quantisation of a float32 ONNX graph with ONNX Runtime's tools, the face crops it is
calibrated on, and its error against float32 on those crops (recorded in its sidecar).

The `onnxruntime-int8` backend (capture.backends) runs what `ensure_int8_onnx` makes, for both per-frame
networks: E_flame (calibrated on the crops) and D_detail (calibrated on the latents of those faces, see
`detail_latents`). Calibration crops come from the user's own input when there is one (`Calibration.of_frames`:
the first frames of the video, through the same face tracker and crop as the pipeline), else from renders of
the pack (`Calibration.pack_renders`).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import numpy as np

from capture.artifacts import (
    ExportError,
    atomic_write,
    build_lock,
    file_sha256,
    read_sidecar,
    sidecar_path,
    write_json_atomic,
)
from capture.nets import CODE_LAYOUT, INPUT_SIZE, GraphSpec, graph_spec

INT8_FORMAT = "capture.onnx-int8/4"  # /3: D_detail too, its nodes before the first conv float32; /4: and its tail
# What INT8 is made for: the per-frame networks. E_flame (4 GMAC) runs ~3.7x faster in INT8 on a VNNI CPU,
# D_detail ~1.8x (20.5 -> 11 ms, one thread); E_detail runs once per target and stays float32.
INT8_NETWORKS = ("E_flame", "D_detail")
# Faces whose latents calibrate D_detail (the first of the crops): the detail code is all D_detail takes from a
# face, and the expression half is drawn broadly anyway; 16 faces cost ~4 s of encoder passes on 2 cores, 48 ~12.
DETAIL_FACES = 16
PACK_RENDERS = 32  # calibration crops rendered from the pack when there is no input to take them from


# ----------------------------------------------------------------------------------------------------------
# Calibration crops


@dataclass
class Calibration:
    """Face crops [N, 3, 224, 224] float32 in [0, 1] to calibrate on, made on first use, and what they are
    (`source`, recorded in the INT8 graph's sidecar)."""

    source: str
    make: Callable[[], np.ndarray] = field(repr=False)
    _crops: Optional[np.ndarray] = field(default=None, repr=False)

    def crops(self) -> np.ndarray:
        if self._crops is None:
            crops = np.ascontiguousarray(self.make(), dtype=np.float32)
            if crops.ndim != 4 or crops.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE) or len(crops) == 0:
                raise ExportError(f"INT8 calibration ({self.source}): expected face crops [N, 3, {INPUT_SIZE}, "
                                  f"{INPUT_SIZE}] with N >= 1, got {tuple(crops.shape)}")
            self._crops = crops
        return self._crops

    @classmethod
    def of_crops(cls, crops: np.ndarray, source: str) -> "Calibration":
        return cls(source, lambda: crops)

    @classmethod
    def of_frames(cls, images: Callable[[], Iterable[np.ndarray]], source: str, fallback: "Calibration",
                  limit: int = 64) -> "Calibration":
        """Crops of the faces in `images()` ([H, W, 3] uint8 frames, e.g. a video's first seconds); when no
        frame has a face, `fallback`'s crops (its source says so)."""
        result = cls(source, lambda: None)

        def make() -> np.ndarray:
            crops = crops_of_frames(images(), limit)
            if len(crops):
                return crops
            result.source = f"{fallback.source} (no face in {source})"
            return fallback.crops()

        result.make = make
        return result

    @classmethod
    def pack_renders(cls, pack=None, *, deca=None, n: int = PACK_RENDERS, seed: int = 0) -> "Calibration":
        """`n` seeded faces rendered with the pack's own model (see `render_faces`)."""
        if deca is None and pack is None:
            raise ValueError("Calibration.pack_renders needs the pack or a DECA built from it")

        def make() -> np.ndarray:
            from capture.deca import DECA

            return render_faces(deca if deca is not None else DECA(pack), n, seed)

        return cls(f"{n} renders of the pack (seed {seed})", make)


def crops_of_frames(images: Iterable[np.ndarray], limit: int) -> np.ndarray:
    """Face crops [n <= limit, 3, 224, 224] of the frames that show a face, through the pipeline's tracker."""
    from capture.crop import FaceTracker, crop_to_tensor, crop_transform

    crops = []
    with FaceTracker() as tracker:
        for image in images:
            face = tracker.update(image).face
            if face is not None:
                crops.append(crop_to_tensor(image, crop_transform(face.box)).numpy())
                if len(crops) >= limit:
                    break
    return np.stack(crops) if crops else np.zeros((0, 3, INPUT_SIZE, INPUT_SIZE), np.float32)


def render_faces(deca, n: int, seed: int = 0) -> np.ndarray:
    """`n` face crops rendered by DECA's decoder, as E_flame sees a face: seeded identities
    (`capture.avatar.demo_identity`), random expression, jaw, head turn and framing, SH-lit albedo over a
    random smooth background."""
    import torch

    from capture.avatar import demo_identity

    g = torch.Generator().manual_seed(seed)
    uniform = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(*shape, generator=g)  # noqa: E731
    crops = []
    ys, xs = torch.meshgrid(torch.linspace(0, 1, INPUT_SIZE), torch.linspace(0, 1, INPUT_SIZE), indexing="ij")
    for i in range(n):
        codes = demo_identity(deca, seed=seed * 1000 + i + 1).codes.to("cpu")
        pose = torch.zeros(1, 6)  # pitch, yaw, jaw opening
        pose[0, 0], pose[0, 1], pose[0, 3] = (float(uniform(-0.15, 0.15, 1)), float(uniform(-0.35, 0.35, 1)),
                                              float(uniform(0.0, 0.25, 1)))
        cam = codes.cam.clone()  # scale and offset of the face in the crop
        cam[0, 0] *= float(uniform(0.9, 1.1, 1))
        cam[0, 1:] += uniform(-0.04, 0.04, 2)
        codes = codes.replace(exp=0.4 * torch.randn(1, codes.exp.shape[1], generator=g), pose=pose, cam=cam)
        views = deca.decode(codes.to(deca.device), want_shape=False).views
        top, bottom = uniform(0.1, 0.9, 3), uniform(0.1, 0.9, 3)
        background = top[:, None, None] * (1 - ys) + bottom[:, None, None] * ys + 0.05 * xs
        lit, alpha = views.lit[0].cpu(), views.alpha[0].cpu()
        crops.append((lit * alpha + background * (1 - alpha)).clamp(0, 1).numpy())
    return np.stack(crops).astype(np.float32)


def detail_latents(pack, crops: np.ndarray, *, engines_dir: Optional[Union[str, Path]] = None,
                   seed: int = 0) -> np.ndarray:
    """D_detail's calibration inputs for face crops [N, 3, 224, 224]: [2N, 181] latents (`nets.detail_input`).

    The first N are the faces' own codes (jaw and expression from float32 E_flame, detail code from float32
    E_detail); the next N keep those detail codes with a seeded broad jaw and expression (jaw opening 0-0.5
    rad, expression N(0, 1.5^2)), because per-frame expressions need not come from E_flame (the landmark and
    hybrid code sources fit them) and MinMax ranges must cover what the pipeline will feed."""
    import torch

    from capture.export import cpu_session, ensure_onnx
    from capture.nets import detail_input

    def encode(name: str) -> np.ndarray:
        spec = graph_spec(name)
        session = cpu_session(ensure_onnx(pack, name, engines_dir=engines_dir))
        return np.concatenate([session.run([spec.output_name], {spec.input_name: crops[i:i + 1]})[0]
                               for i in range(len(crops))])

    crops = np.ascontiguousarray(crops, dtype=np.float32)
    code = torch.from_numpy(encode("E_flame"))
    detail = torch.from_numpy(encode("E_detail"))
    parts = CODE_LAYOUT.split(code)
    g = torch.Generator().manual_seed(seed)
    n = len(crops)
    jaw = torch.zeros(n, 3)
    jaw[:, 0] = 0.5 * torch.rand(n, generator=g)
    broad = detail_input(jaw, 1.5 * torch.randn(n, CODE_LAYOUT.n_exp, generator=g), detail)
    own = detail_input(parts["pose"][:, 3:], parts["exp"], detail)
    return torch.cat([own, broad]).numpy().astype(np.float32)


def float_nodes(path: Union[str, Path]) -> list[str]:
    """Names of the nodes `quantize_int8` keeps float32: `float_prefix` and `float_tail` of the graph at `path`."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return float_prefix(graph) + float_tail(graph)


def float_tail(graph) -> list[str]:
    """Names of the nodes from a graph's last convolution on, when that convolution has one output channel
    (D_detail's displacement: conv 16 -> 1, tanh, scale); else none (E_flame ends in a Gemm).

    As 8 bits the one-channel convolution is padded to a block of 16 output channels (3.0 of D_detail's 12 ms on
    one core); float32, the CPU session runs it as taps (`capture.backends.conv_taps`, ~1 ms). And the network's
    output, the displacement itself, then keeps float32 precision instead of 256 levels over its range."""
    convs = [i for i, node in enumerate(graph.node) if node.op_type == "Conv"]
    if not convs:
        return []
    last = graph.node[convs[-1]]
    weights = {t.name: t for t in graph.initializer}
    weight = weights.get(last.input[1]) if len(last.input) > 1 else None
    if weight is None or list(weight.dims)[:1] != [1]:  # [out channels, in, k, k]
        return []
    return [node.name for node in graph.node[convs[-1]:]]


def float_prefix(graph) -> list[str]:
    """Names of the nodes that run before a graph's first convolution (in graph order). For D_detail: the
    latent's Gemm, its reshape and BatchNorm; quantising the 181-d latent, whose parts have very different
    scales, to 8 bits cost 21 % rms of the displacement, 5.6 % without it (measured on the demo pack). E_flame
    starts with a convolution: nothing."""
    names = []
    for node in graph.node:
        if node.op_type == "Conv":
            break
        names.append(node.name)
    return names


def calibration_sha256(calibration: np.ndarray) -> str:
    data = np.ascontiguousarray(calibration, dtype=np.float32)
    return hashlib.sha256(repr(data.shape).encode() + data.tobytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Quantisation and its error


def quantize_int8(src: Union[str, Path], dst: Union[str, Path], calibration: np.ndarray, spec: GraphSpec, *,
                  reduce_range: bool = False, source: str = "") -> dict:
    """Static INT8 quantisation of a float32 graph: QDQ format, int8 per-channel weights, uint8 activations
    with MinMax ranges over `calibration` [N, *spec.input_shape] (e.g. face crops for E_flame).

    On CPUs with AVX-512 VNNI / AMX ONNX Runtime runs the result about 3x faster than float32 (E_flame).
    reduce_range: 7-bit weights, for x86 CPUs without VNNI, whose u8 x s8 instructions can saturate.
    source: what the calibration inputs are. Writes `dst` and its sidecar, which records the calibration
    (source, count, hash) and the error against `src` on the calibration inputs (`int8_error`); returns it.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 1 + len(spec.input_shape) or tuple(calibration.shape[1:]) != spec.input_shape:
        raise ExportError(f"{spec.name}: calibration must be [N, {', '.join(map(str, spec.input_shape))}], "
                          f"got {tuple(calibration.shape)}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._items = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {spec.input_name: item}

    dst.parent.mkdir(parents=True, exist_ok=True)
    pre = dst.with_name(f".{dst.name}.{os.getpid()}.pre.onnx")  # scratch: the pre-processed float32 graph
    logger = logging.getLogger()
    level = logger.level
    try:
        logger.setLevel(logging.ERROR)  # the quantiser logs a line per skipped tensor
        with atomic_write(dst) as tmp:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            keep = float_nodes(pre)
            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=keep)
    except Exception as exc:  # the quantiser raises many types; re-raised with context
        raise ExportError(f"{spec.name}: INT8 quantisation of {src} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        logger.setLevel(level)
        for leftover in (pre, pre.with_name(pre.name + ".data")):
            leftover.unlink(missing_ok=True)
    sidecar = {
        "format": INT8_FORMAT,
        "network": spec.name,
        "file": dst.name,
        "precision": "int8",
        "method": {"format": "QDQ", "weights": "int8 per-channel", "activations": "uint8 per-tensor",
                   "calibration": "MinMax", "reduce_range": bool(reduce_range), "float32_nodes": keep},
        "source_onnx_sha256": file_sha256(src),
        "calibration": {"source": source, "count": int(len(calibration)), "sha256": calibration_sha256(calibration)},
        "error_vs_fp32": dict(int8_error(src, dst, calibration, spec), measured_on="the calibration inputs"),
        "onnx_sha256": file_sha256(dst),
        "onnxruntime": _ort_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(sidecar_path(dst), sidecar)
    return sidecar


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def ensure_int8_onnx(pack, name: str, crops: np.ndarray, *, engines_dir: Optional[Union[str, Path]] = None,
                     reduce_range: bool = False, source: str = "") -> Path:
    """An INT8 `<name>.int8-<key>.onnx` next to the float32 graph of `capture.export.ensure_onnx`, calibrated on
    face crops [N, 3, 224, 224] (E_flame on the crops, D_detail on the latents of the first DETAIL_FACES,
    `detail_latents`); keyed by that graph's and the crops' hashes (and, for D_detail, the pack's weights, which
    make the latents); quantised on first use, reused while they are unchanged (its sidecar,
    `read_sidecar(sidecar_path(path))`, says how it was calibrated and its error against fp32)."""
    from capture.export import ensure_onnx, pack_weights_sha256

    spec = graph_spec(name)
    if name not in INT8_NETWORKS:
        raise ExportError(f"{name}: INT8 is made for {', '.join(INT8_NETWORKS)} only")
    fp32 = ensure_onnx(pack, name, engines_dir=engines_dir)
    fp32_sha = file_sha256(fp32)
    inputs_from = "" if name == "E_flame" else f"/latents of {pack_weights_sha256(pack)}"
    key = hashlib.sha256(f"{fp32_sha}/{calibration_sha256(crops)}{inputs_from}/{reduce_range}".encode()).hexdigest()
    dst = fp32.parent / f"{name}.int8-{key[:12]}.onnx"

    def fresh() -> bool:
        side = sidecar_path(dst)
        if dst.is_file() and side.is_file():
            with contextlib.suppress(ExportError):
                sidecar = read_sidecar(side)
                return (sidecar.get("format") == INT8_FORMAT and sidecar.get("source_onnx_sha256") == fp32_sha
                        and sidecar.get("onnx_sha256") == file_sha256(dst))
        return False

    if not fresh():
        with build_lock(dst):  # commands started together quantise it once
            if not fresh():
                inputs = crops
                if name == "D_detail":
                    faces = crops[:DETAIL_FACES]
                    inputs = detail_latents(pack, faces, engines_dir=engines_dir)
                    source = f"latents of {len(faces)} crops of {source or 'unnamed inputs'}"
                quantize_int8(fp32, dst, inputs, spec, reduce_range=reduce_range, source=source)
    return dst


def int8_error(fp32_path: Union[str, Path], int8_path: Union[str, Path], inputs: np.ndarray,
               spec: GraphSpec) -> dict:
    """Output error of the INT8 graph against its float32 source on `inputs` [N, ...] (one at a time).

    Returns {"max_abs", "rms", "reference_rms", "rel_max"} over all outputs, plus per-slice figures for E_flame's
    code ({"slices": {name: {"max_abs", "rms", "reference_rms"}}}).
    """
    from capture.export import cpu_session, relative_error

    a, b = cpu_session(fp32_path), cpu_session(int8_path)
    ref, got = [], []
    for i in range(len(inputs)):
        x = np.ascontiguousarray(inputs[i:i + 1], dtype=np.float32)
        ref.append(a.run([spec.output_name], {spec.input_name: x})[0])
        got.append(b.run([spec.output_name], {spec.input_name: x})[0])
    ref, got = np.concatenate(ref).astype(np.float64), np.concatenate(got).astype(np.float64)

    def figures(r: np.ndarray, g: np.ndarray) -> dict:
        return {"max_abs": float(np.abs(g - r).max()), "rms": float(np.sqrt(((g - r) ** 2).mean())),
                "reference_rms": float(np.sqrt((r ** 2).mean()))}

    out = figures(ref, got)
    out["rel_max"] = relative_error(got, ref)
    if spec.name == "E_flame":
        out["slices"] = {k: figures(ref[:, s], got[:, s]) for k, s in CODE_LAYOUT.slices.items()}
    return out


def describe_error(sidecar: dict) -> str:
    """One line: how an INT8 graph was calibrated and how far it is from float32 on those inputs."""
    cal, err = sidecar.get("calibration", {}), sidecar.get("error_vs_fp32", {})
    nan = float("nan")
    if sidecar.get("network") == "D_detail":  # displacement in metres, said in mm
        return (f"INT8 D_detail calibrated on {cal.get('count')} {cal.get('source') or 'unnamed latents'}, vs fp32 "
                f"on those: displacement rms error {1e3 * err.get('rms', nan):.3g} mm (displacement rms "
                f"{1e3 * err.get('reference_rms', nan):.3g} mm)")
    exp = err.get("slices", {}).get("exp")
    exp_text = f", exp rms error {exp['rms']:.3g} (exp rms {exp['reference_rms']:.3g})" if exp else ""
    return (f"INT8 calibrated on {cal.get('count')} crops of {cal.get('source') or 'unnamed inputs'}, vs fp32 on "
            f"those crops: code rms error {err.get('rms', nan):.3g} (code rms "
            f"{err.get('reference_rms', nan):.3g}), max relative error "
            f"{err.get('rel_max', nan):.3g}{exp_text}")
