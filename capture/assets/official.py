"""Readers for the official DECA / FLAME data files (docs/formats.md section 1) and `load_pack`.

Every reader takes a path and returns plain arrays, or raises `FileProblem` with one line that names the file
and what is wrong. `inspect_pack` runs them all and collects every problem (for `capture.assets check`);
`load_pack` raises one `AssetError` listing them, or returns a `ModelPack`.
"""
from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..artifacts import file_sha256
from ..conventions import UV_SIZE
from .pack import (
    N_EXP_FLAME,
    N_JOINTS,
    N_SHAPE_FLAME,
    AlbedoModel,
    FlameModel,
    LandmarkEmbedding,
    ModelPack,
    UVLayout,
)
from .safe_pickle import ForeignClassError, read_object_npy, restricted_loads, to_numpy

N_TEX_USED = 50  # DECA uses the first 50 albedo components


class AssetError(Exception):
    """A pack cannot be used. `problems` holds one line per problem; str() joins them."""

    def __init__(self, problems: list[str], header: str = ""):
        self.problems = list(problems)
        lines = ([header] if header else []) + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines) if header else "; ".join(self.problems))


class FileProblem(Exception):
    """One file is damaged or has the wrong contents (message: one line, file name first)."""


@dataclass(frozen=True)
class PackFile:
    name: str
    role: str
    source: str
    required: bool = True


_DECA_DATA = "DECA's GitHub repository, folder data/"
PACK_FILES: tuple[PackFile, ...] = (
    PackFile("generic_model.pkl", "FLAME 2020 head model",
             "FLAME website (flame.is.tue.mpg.de, free registration): FLAME 2020 zip, file generic_model.pkl"),
    PackFile("deca_model.tar", "DECA network weights (E_flame, E_detail, D_detail)",
             "DECA project page / README (registration; Google Drive file deca_model.tar)"),
    PackFile("landmark_embedding.npy", "68-landmark embedding on the FLAME mesh", _DECA_DATA),
    PackFile("head_template.obj", "triangles and UV layout", _DECA_DATA),
    PackFile("uv_face_eye_mask.png", "UV mask where details apply", _DECA_DATA),
    PackFile("uv_face_mask.png", "UV face-region mask", _DECA_DATA),
    PackFile("fixed_displacement_256.npy", "constant UV displacement correction", _DECA_DATA),
    PackFile("mean_texture.jpg", "mean albedo picture (fallback albedo)", _DECA_DATA),
    PackFile("FLAME_albedo_from_BFM.npz", "albedo model (BFM 2017 in FLAME UV)",
             "generate with the BFM_to_FLAME tool from the Basel Face Model 2017", required=False),
    PackFile("FLAME_texture.npz", "albedo model (FLAME texture space)",
             "FLAME website, 'FLAME texture space'", required=False),
)
FILES_BY_NAME = {f.name: f for f in PACK_FILES}


# --------------------------------------------------------------------------------------------- readers
def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FileProblem(f"{path.name}: cannot be read ({exc.strerror})") from None


def _expect_shape(fname: str, key: str, array: np.ndarray, shape: tuple) -> None:
    """shape entries may be None (any size)."""
    ok = array.ndim == len(shape) and all(e is None or e == s for e, s in zip(shape, array.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
        raise FileProblem(f"{fname}: key '{key}' has shape {tuple(array.shape)}, expected {want}")


def read_flame_pickle(path: Path) -> FlameModel:
    """`generic_model.pkl`: Python-2 pickle with chumpy arrays and a sparse J_regressor, read without chumpy."""
    data = _read_bytes(path)
    name = path.name
    if data[:1] == b"<":
        raise FileProblem(f"{name}: is an HTML/XML page, not a pickle (a failed download); download it again")
    try:
        raw = restricted_loads(data)
    except ForeignClassError as exc:
        raise FileProblem(f"{name}: {exc}") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, UnicodeDecodeError) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc) or "ran out" in str(exc).lower():
            raise FileProblem(f"{name}: pickle data ends early (truncated file); download it again") from None
        raise FileProblem(f"{name}: not a readable FLAME pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise FileProblem(f"{name}: expected a dict of arrays, found {type(raw).__name__}")
    needed = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
    missing = [k for k in needed if k not in raw]
    if missing:
        raise FileProblem(f"{name}: missing key(s) {', '.join(missing)} (is this a FLAME model file?)")
    try:
        arrays = {k: to_numpy(raw[k]) for k in needed}
    except (ValueError, KeyError, TypeError) as exc:
        raise FileProblem(f"{name}: cannot convert an entry to an array ({exc})") from None
    v = arrays["v_template"]
    _expect_shape(name, "v_template", v, (None, 3))
    n_v = v.shape[0]
    _expect_shape(name, "shapedirs", arrays["shapedirs"], (n_v, 3, None))
    if arrays["shapedirs"].shape[2] < N_SHAPE_FLAME + 50:
        raise FileProblem(f"{name}: key 'shapedirs' has {arrays['shapedirs'].shape[2]} components, expected "
                          f"{N_SHAPE_FLAME + N_EXP_FLAME} (300 identity + 100 expression; FLAME 2020)")
    _expect_shape(name, "posedirs", arrays["posedirs"], (n_v, 3, (N_JOINTS - 1) * 9))
    _expect_shape(name, "J_regressor", arrays["J_regressor"], (N_JOINTS, n_v))
    _expect_shape(name, "weights", arrays["weights"], (n_v, N_JOINTS))
    _expect_shape(name, "kintree_table", arrays["kintree_table"], (2, N_JOINTS))
    _expect_shape(name, "f", arrays["f"], (None, 3))
    faces = arrays["f"].astype(np.int64)
    if faces.min() < 0 or faces.max() >= n_v:
        raise FileProblem(f"{name}: key 'f' indexes vertices outside 0..{n_v - 1}")
    kintree = arrays["kintree_table"].astype(np.int64)
    kintree[kintree > 2**31] -= 2**32  # FLAME stores the root's parent as uint32(-1)
    return FlameModel(
        v_template=v.astype(np.float32),
        shapedirs=arrays["shapedirs"].astype(np.float32),
        posedirs=arrays["posedirs"].astype(np.float32),
        J_regressor=arrays["J_regressor"].astype(np.float32),
        weights=arrays["weights"].astype(np.float32),
        kintree_table=kintree,
        faces=faces,
    )


def read_landmark_embedding(path: Path) -> LandmarkEmbedding:
    """`landmark_embedding.npy`: a 0-d object array wrapping a dict (some values are torch tensors)."""
    name = path.name
    try:
        array = read_object_npy(_read_bytes(path))
    except ForeignClassError as exc:
        raise FileProblem(f"{name}: {exc}") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, RuntimeError, KeyError,
            AttributeError, UnicodeDecodeError) as exc:
        raise FileProblem(f"{name}: not a readable landmark embedding ({type(exc).__name__}: {exc})") from None
    content = array[()] if array.shape == () else None
    if not isinstance(content, dict):
        raise FileProblem(f"{name}: expected a dict inside a 0-d object array")
    keys = {
        "static_lmk_faces_idx": (51,), "static_lmk_bary_coords": (51, 3),
        "dynamic_lmk_faces_idx": (79, 17), "dynamic_lmk_bary_coords": (79, 17, 3),
        "full_lmk_faces_idx": (1, 68), "full_lmk_bary_coords": (1, 68, 3),
    }
    missing = [k for k in keys if k not in content]
    if missing:
        raise FileProblem(f"{name}: missing key(s) {', '.join(missing)}")
    values = {}
    for key, shape in keys.items():
        values[key] = to_numpy(content[key])
        if key.startswith("full_") and values[key].shape == shape[1:]:
            values[key] = values[key][None]  # tolerate the embedding without its leading batch axis
        _expect_shape(name, key, values[key], shape)
    return LandmarkEmbedding(
        static_lmk_faces_idx=values["static_lmk_faces_idx"].astype(np.int64),
        static_lmk_bary_coords=values["static_lmk_bary_coords"].astype(np.float32),
        dynamic_lmk_faces_idx=values["dynamic_lmk_faces_idx"].astype(np.int64),
        dynamic_lmk_bary_coords=values["dynamic_lmk_bary_coords"].astype(np.float32),
        full_lmk_faces_idx=values["full_lmk_faces_idx"][0].astype(np.int64),
        full_lmk_bary_coords=values["full_lmk_bary_coords"][0].astype(np.float32),
    )


def read_obj_layout(path: Path) -> UVLayout:
    """`head_template.obj`: `vt` lines and `f v/vt v/vt v/vt` (1-based); vertex positions are not used."""
    name = path.name
    try:
        text = _read_bytes(path).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise FileProblem(f"{name}: not a text Wavefront OBJ file") from None
    uvs, faces, uvfaces = [], [], []
    n_vertices = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("v "):
            n_vertices += 1
        elif line.startswith("vt "):
            parts = line.split()
            uvs.append((float(parts[1]), float(parts[2])))
        elif line.startswith("f "):
            corners = line.split()[1:]
            if len(corners) != 3 or any(c.count("/") < 1 for c in corners):
                raise FileProblem(f"{name}: line {lineno}: expected a triangle 'f v/vt v/vt v/vt'")
            ids = [c.split("/") for c in corners]
            faces.append([int(i[0]) - 1 for i in ids])
            uvfaces.append([int(i[1]) - 1 for i in ids])
    if not faces or not uvs:
        raise FileProblem(f"{name}: no faces or no texture coordinates (vt) found")
    layout = UVLayout(
        faces=np.asarray(faces, dtype=np.int64),
        uvcoords=np.asarray(uvs, dtype=np.float32),
        uvfaces=np.asarray(uvfaces, dtype=np.int64),
    )
    if layout.uvfaces.min() < 0 or layout.uvfaces.max() >= len(uvs):
        raise FileProblem(f"{name}: face uv indices outside the {len(uvs)} vt entries")
    if n_vertices and (layout.faces.min() < 0 or layout.faces.max() >= n_vertices):
        raise FileProblem(f"{name}: face vertex indices outside the {n_vertices} v entries")
    return layout


def read_mask_png(path: Path) -> np.ndarray:
    """UV mask PNG -> [256, 256] float32 in 0..1 from channel 0 (DECA resizes with nearest if needed)."""
    image = _read_image(path)
    if image.ndim == 3:
        image = image[..., 0]
    mask = image.astype(np.float32) / 255.0
    if mask.shape != (UV_SIZE, UV_SIZE):
        rows = (np.arange(UV_SIZE) * mask.shape[0] // UV_SIZE)
        cols = (np.arange(UV_SIZE) * mask.shape[1] // UV_SIZE)
        mask = mask[rows][:, cols]
    return mask


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise FileProblem(f"{path.name}: not a readable image ({exc})") from None


def read_mean_texture(path: Path) -> np.ndarray:
    image = _read_image(path)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image[..., :3].astype(np.float32) / 255.0


def read_plain_npy(path: Path, shape: tuple) -> np.ndarray:
    data = _read_bytes(path)
    import io

    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise FileProblem(f"{path.name}: not a readable .npy array ({exc})") from None
    _expect_shape(path.name, "array", array, shape)
    return array


def read_albedo(path: Path) -> AlbedoModel:
    """`FLAME_albedo_from_BFM.npz` (MU, PC; BGR, 0..1) or `FLAME_texture.npz` (mean, tex_dir; 0..255)."""
    name = path.name
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise FileProblem(f"{name}: not a readable .npz archive ({exc})") from None
    try:
        if {"MU", "PC"} <= keys:
            mean, basis, kind, scale = archive["MU"].reshape(-1), archive["PC"], "BFM", 1.0
            basis = basis.reshape(mean.shape[0], -1)
        elif {"mean", "tex_dir"} <= keys:
            mean, kind, scale = archive["mean"].reshape(-1), "FLAME", 1.0 / 255.0
            basis = archive["tex_dir"].reshape(mean.shape[0], -1)
        else:
            raise FileProblem(f"{name}: expected keys MU/PC (BFM) or mean/tex_dir (FLAME), found {sorted(keys)}")
    except (ValueError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise FileProblem(f"{name}: damaged array inside the archive ({exc})") from None
    resolution = int(round((mean.shape[0] / 3) ** 0.5))
    if 3 * resolution * resolution != mean.shape[0]:
        raise FileProblem(f"{name}: mean has {mean.shape[0]} values, not 3*R*R for a square texture")
    if basis.shape[1] < N_TEX_USED:
        raise FileProblem(f"{name}: basis has {basis.shape[1]} components, at least {N_TEX_USED} are needed")
    return AlbedoModel(
        kind=kind,
        mean=(mean * scale).astype(np.float32),
        basis=(basis[:, :N_TEX_USED] * scale).astype(np.float32),
        resolution=resolution,
    )


def read_checkpoint(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """`deca_model.tar` via `torch.load(weights_only=True)`, checked key by key against the architecture."""
    name = path.name
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.lstrip()[:1] == b"<" or b"<html" in head.lower():
        raise FileProblem(f"{name}: is an HTML page, not model weights (a failed Google Drive download "
                          "saved the warning page); download the file again")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "invalid load key" in text:
            raise FileProblem(f"{name}: not a PyTorch checkpoint ({text.splitlines()[0]})") from None
        first = next((ln for ln in text.splitlines() if ln.strip()), text)
        raise FileProblem(f"{name}: refused by weights_only loading, it holds more than tensors ({first})") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FileProblem(f"{name}: damaged or truncated checkpoint ({first}); download it again") from None
    if not isinstance(loaded, dict):
        raise FileProblem(f"{name}: expected a dict with E_flame, E_detail, D_detail, found {type(loaded).__name__}")
    problems = checkpoint_problems(loaded)
    if problems:
        raise FileProblem(f"{name}: " + "; ".join(problems))
    return {k: {n: t for n, t in loaded[k].items()} for k in ("E_flame", "E_detail", "D_detail")}


def checkpoint_problems(loaded: dict) -> list[str]:
    """Compare a loaded checkpoint with the architecture (docs/formats.md 2.5), one line per network at fault."""
    from ..nets import NETWORK_NAMES, checkpoint_spec, state_dict_problems

    spec = checkpoint_spec()
    problems = []
    for net in NETWORK_NAMES:
        found = loaded.get(net)
        if not isinstance(found, dict):
            problems.append(f"top-level key '{net}' is missing (found {sorted(map(str, loaded))[:6]})")
            continue
        problems += [f"{net} {p}" for p in state_dict_problems(net, found, spec[net])]
    return problems


# --------------------------------------------------------------------------------------------- the pack
@dataclass
class FileReport:
    name: str
    status: str  # "ok", "missing", "damaged", "absent (optional)"
    detail: str = ""


@dataclass
class Inspection:
    root: Path
    rows: list[FileReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


def _describe(value: Any) -> str:
    if isinstance(value, FlameModel):
        return (f"V={value.n_vertices} F={len(value.faces)} shapedirs{tuple(value.shapedirs.shape)} "
                f"posedirs{tuple(value.posedirs.shape)} J_regressor{tuple(value.J_regressor.shape)}")
    if isinstance(value, LandmarkEmbedding):
        return "51 static, 79x17 dynamic, 68 full"
    if isinstance(value, UVLayout):
        return f"F={len(value.faces)} vt={len(value.uvcoords)}"
    if isinstance(value, AlbedoModel):
        return f"{value.kind} {value.resolution}x{value.resolution}, {value.basis.shape[1]} components used"
    if isinstance(value, dict):
        counts = ", ".join(f"{k} {len(sd)} keys" for k, sd in value.items())
        return counts
    if isinstance(value, np.ndarray):
        return f"{tuple(value.shape)} {value.dtype}"
    return ""


_READERS: dict[str, Callable[[Path], Any]] = {
    "generic_model.pkl": read_flame_pickle,
    "deca_model.tar": read_checkpoint,
    "landmark_embedding.npy": read_landmark_embedding,
    "head_template.obj": read_obj_layout,
    "uv_face_eye_mask.png": read_mask_png,
    "uv_face_mask.png": read_mask_png,
    "fixed_displacement_256.npy": lambda p: read_plain_npy(p, (UV_SIZE, UV_SIZE)).astype(np.float32),
    "mean_texture.jpg": read_mean_texture,
    "FLAME_albedo_from_BFM.npz": read_albedo,
    "FLAME_texture.npz": read_albedo,
}


def inspect_pack(root: str | Path, names: Optional[set[str]] = None) -> Inspection:
    """Read every pack file, recording status, shapes and every problem (never raises for file contents)."""
    root = Path(root).expanduser()
    result = Inspection(root=root)
    if not root.is_dir():
        result.problems.append(f"{root}: no such folder")
        return result
    for spec in PACK_FILES:
        if names is not None and spec.name not in names:
            continue
        path = root / spec.name
        if not path.is_file():
            if spec.required:
                result.rows.append(FileReport(spec.name, "missing", spec.role))
                result.problems.append(f"{spec.name} is missing ({spec.role}); get it from {spec.source}")
            else:
                result.rows.append(FileReport(spec.name, "absent (optional)", spec.role))
            continue
        try:
            value = _READERS[spec.name](path)
        except FileProblem as exc:
            result.rows.append(FileReport(spec.name, "damaged", str(exc).split(": ", 1)[-1]))
            result.problems.append(str(exc))
            continue
        result.values[spec.name] = value
        result.rows.append(FileReport(spec.name, "ok", _describe(value)))
    result.problems.extend(_consistency_problems(result.values))
    return result


def _consistency_problems(values: dict[str, Any]) -> list[str]:
    problems = []
    flame, layout, lmk = (values.get(k) for k in ("generic_model.pkl", "head_template.obj", "landmark_embedding.npy"))
    if flame is not None and layout is not None:
        if layout.faces.shape != flame.faces.shape:
            problems.append(f"head_template.obj has {len(layout.faces)} triangles but generic_model.pkl has "
                            f"{len(flame.faces)}: the two files come from different models")
        elif layout.faces.max() >= flame.n_vertices:
            problems.append("head_template.obj indexes more vertices than generic_model.pkl has")
    if flame is not None and lmk is not None:
        biggest = max(lmk.static_lmk_faces_idx.max(), lmk.dynamic_lmk_faces_idx.max(), lmk.full_lmk_faces_idx.max())
        if biggest >= len(flame.faces):
            problems.append(f"landmark_embedding.npy refers to triangle {biggest}, generic_model.pkl has "
                            f"{len(flame.faces)}: the two files come from different models")
    return problems


def read_pack_meta(root: Path) -> dict:
    path = root / "pack.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError):
        return {"damaged_pack_json": True}


def load_pack(root: str | Path) -> ModelPack:
    """Load and validate a model pack folder (official files or the demo pack, same formats)."""
    inspection = inspect_pack(root)
    if inspection.problems:
        raise AssetError(inspection.problems, header=f"model pack {inspection.root} cannot be used:")
    values = inspection.values
    albedo = values.get("FLAME_albedo_from_BFM.npz") or values.get("FLAME_texture.npz")
    meta = read_pack_meta(inspection.root)
    meta.setdefault("weights_sha256", file_sha256(inspection.root / "deca_model.tar"))
    return ModelPack(
        root=inspection.root,
        flame=values["generic_model.pkl"],
        landmarks=values["landmark_embedding.npy"],
        uv=values["head_template.obj"],
        face_eye_mask=values["uv_face_eye_mask.png"],
        face_mask=values["uv_face_mask.png"],
        fixed_displacement=values["fixed_displacement_256.npy"],
        mean_texture=values["mean_texture.jpg"],
        checkpoint=values["deca_model.tar"],
        albedo=albedo,
        meta=meta,
    )
