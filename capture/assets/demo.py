"""The synthetic demo pack: the procedural head and seeded weights, written in the official file formats.

Every file is written exactly as its official counterpart is laid out (docs/formats.md section 1): a Python-2-style
pickle with chumpy arrays and a sparse J_regressor, an object `.npy` with torch tensors inside, a Wavefront OBJ,
RGBA PNG masks, a `torch.save` checkpoint with the three state dicts. So the demo exercises the very loaders that
users' real files go through. `pack.json` marks the pack as synthetic.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.sparse
import torch
from PIL import Image

from ..meshio import write_obj
from .safe_pickle import write_pickle_with_chumpy_standins


def write_flame_pickle(path: Path, *, v_template, shapedirs, posedirs, J_regressor, weights, kintree_table,
                       faces) -> None:
    """generic_model.pkl as FLAME 2020 ships it: chumpy arrays, csc J_regressor, uint32 faces, protocol 2."""
    v_template = np.asarray(v_template, np.float64)
    J_regressor = np.asarray(J_regressor, np.float64)
    joints = J_regressor @ v_template

    def build(Ch):
        return {
            "v_template": Ch(v_template),
            "shapedirs": Ch(np.asarray(shapedirs, np.float64)),
            "posedirs": np.asarray(posedirs, np.float64),
            "J_regressor": scipy.sparse.csc_matrix(J_regressor),
            "weights": Ch(np.asarray(weights, np.float64)),
            "J": Ch(joints),
            "kintree_table": np.asarray(kintree_table).astype(np.int64).astype(np.uint32),
            "f": np.asarray(faces).astype(np.uint32),
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }

    write_pickle_with_chumpy_standins(build, path, protocol=2)


def write_landmark_embedding(path: Path, *, static_faces, static_bary, dynamic_faces, dynamic_bary,
                             full_faces, full_bary) -> None:
    """landmark_embedding.npy: a 0-d object array holding a dict; the dynamic entries are torch tensors."""
    content = {
        "static_lmk_faces_idx": np.asarray(static_faces, np.int64),
        "static_lmk_bary_coords": np.asarray(static_bary, np.float64),
        "dynamic_lmk_faces_idx": torch.as_tensor(np.asarray(dynamic_faces, np.int64)),
        "dynamic_lmk_bary_coords": torch.as_tensor(np.asarray(dynamic_bary, np.float32)),
        "full_lmk_faces_idx": np.asarray(full_faces, np.int64).reshape(1, 68),
        "full_lmk_bary_coords": np.asarray(full_bary, np.float32).reshape(1, 68, 3),
    }
    np.save(path, np.array(content, dtype=object), allow_pickle=True)


def _rgba(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 4:
        return mask.astype(np.uint8)
    if mask.dtype != np.uint8:
        mask = np.clip(np.round(mask * 255.0), 0, 255).astype(np.uint8)
    return np.stack([mask, mask, mask, np.full_like(mask, 255)], axis=2)


def _write_checkpoint(path: Path, seed: int) -> None:
    """The seed's networks: the same for every head size, so copied from the cached full demo pack of this seed
    when there is one (make_demo_checkpoint costs a few seconds of ResNet-50 passes), else made."""
    from ..artifacts import copy_file_atomic
    from .demo_weights import make_demo_checkpoint
    from .locate import demo_pack_dir

    cached = demo_pack_dir(seed)
    if (cached / "pack.json").is_file() and (cached / "deca_model.tar").is_file() and cached != path.parent:
        copy_file_atomic(cached / "deca_model.tar", path)
    else:
        torch.save(make_demo_checkpoint(seed=seed), path)


def write_demo_pack(path, seed: int = 0, n_vertices: Optional[int] = None,
                    albedo_resolution: Optional[int] = None) -> Path:
    """Write every pack file for the synthetic demo head into `path` (created if needed)."""
    from .demo_head import EXPRESSION_NAMES, make_demo_head

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    if albedo_resolution is None:
        albedo_resolution = 256 if n_vertices is None else 64
    head = make_demo_head(seed=seed, n_vertices=n_vertices, albedo_resolution=albedo_resolution)

    write_flame_pickle(root / "generic_model.pkl", v_template=head.v_template, shapedirs=head.shapedirs,
                       posedirs=head.posedirs, J_regressor=head.J_regressor, weights=head.weights,
                       kintree_table=head.kintree_table, faces=head.faces)
    write_landmark_embedding(root / "landmark_embedding.npy",
                             static_faces=head.static_lmk_faces_idx, static_bary=head.static_lmk_bary_coords,
                             dynamic_faces=head.dynamic_lmk_faces_idx, dynamic_bary=head.dynamic_lmk_bary_coords,
                             full_faces=head.full_lmk_faces_idx, full_bary=head.full_lmk_bary_coords)
    write_obj(root / "head_template.obj", head.v_template, head.faces, head.uvcoords, head.uvfaces)
    Image.fromarray(_rgba(head.uv_face_eye_mask), "RGBA").save(root / "uv_face_eye_mask.png")
    Image.fromarray(_rgba(head.uv_face_mask), "RGBA").save(root / "uv_face_mask.png")
    np.save(root / "fixed_displacement_256.npy", np.asarray(head.fixed_displacement, np.float64))
    Image.fromarray(np.asarray(head.mean_texture, np.uint8), "RGB").save(root / "mean_texture.jpg", quality=92)
    np.savez(root / "FLAME_albedo_from_BFM.npz", MU=np.asarray(head.albedo_mean, np.float32),
             PC=np.asarray(head.albedo_basis, np.float32))
    _write_checkpoint(root / "deca_model.tar", seed)
    meta = {
        "synthetic": True,
        "generator": "capture.assets.demo",
        "seed": seed,
        "n_vertices": int(np.asarray(head.v_template).shape[0]),
        # the designed expression columns, in order; the rest of the 100 are weak random fields
        "expression_names": list(EXPRESSION_NAMES),
        "note": "procedural head and seeded network weights in the official DECA/FLAME file formats; "
                "results show the pipeline working, not DECA's accuracy",
    }
    (root / "pack.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root
