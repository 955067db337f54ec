"""In-memory form of a model pack: what every other part of `capture` consumes.

The loaders in `capture.assets.official` turn the official DECA/FLAME files (and the demo pack, which is
written in the very same formats) into these dataclasses. Everything here is plain numpy / torch data
with one documented dtype and shape vocabulary (V vertices, F faces, T uv-vertices, J joints = 5):
no file formats leak past this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

N_SHAPE_FLAME = 300  # identity columns of FLAME 2020's shapedirs
N_EXP_FLAME = 100  # expression columns, stored after the identity ones
N_JOINTS = 5  # global(root), neck, jaw, left eye, right eye


@dataclass
class FlameModel:
    """FLAME 2020 `generic_model.pkl`, densified and cast (float32 / int64)."""

    v_template: np.ndarray  # [V, 3] float32, metres, y up, face towards +z
    shapedirs: np.ndarray  # [V, 3, 400] float32: 300 identity then 100 expression components
    posedirs: np.ndarray  # [V, 3, 36] float32, as stored in the pickle
    J_regressor: np.ndarray  # [5, V] float32 (dense; sparse in the official file)
    weights: np.ndarray  # [V, 5] float32 skinning weights
    kintree_table: np.ndarray  # [2, 5] int64; parents = kintree_table[0] with [0] := -1
    faces: np.ndarray  # [F, 3] int64

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def parents(self) -> np.ndarray:
        parents = self.kintree_table[0].astype(np.int64).copy()
        parents[0] = -1
        return parents


@dataclass
class LandmarkEmbedding:
    """`landmark_embedding.npy`: barycentric landmarks on FLAME faces (torch tensors converted)."""

    static_lmk_faces_idx: np.ndarray  # [51] int64
    static_lmk_bary_coords: np.ndarray  # [51, 3] float32
    dynamic_lmk_faces_idx: np.ndarray  # [79, 17] int64, row = integer yaw bucket
    dynamic_lmk_bary_coords: np.ndarray  # [79, 17, 3] float32
    full_lmk_faces_idx: np.ndarray  # [68] int64 (leading batch dim of the file dropped)
    full_lmk_bary_coords: np.ndarray  # [68, 3] float32


@dataclass
class UVLayout:
    """`head_template.obj`: triangles and the UV layout (its vertex positions are not used)."""

    faces: np.ndarray  # [F, 3] int64, 0-based vertex ids
    uvcoords: np.ndarray  # [T, 2] float32, OBJ convention: u right, v up, both in [0, 1]
    uvfaces: np.ndarray  # [F, 3] int64, 0-based uv-vertex ids


@dataclass
class AlbedoModel:
    """Linear albedo model in FLAME UV space (`FLAME_albedo_from_BFM.npz` or `FLAME_texture.npz`).

    Stored as in the files: texel rows top to bottom, channels BGR, values scaled to 0..1. Only the
    first `n_components` columns are kept in memory (DECA uses 50).
    """

    kind: str  # "BFM" or "FLAME"
    mean: np.ndarray  # [R*R*3] float32
    basis: np.ndarray  # [R*R*3, K] float32
    resolution: int  # R (512 in the official files)


@dataclass
class ModelPack:
    """Everything loaded from one pack folder. `checkpoint` holds the three state dicts of deca_model.tar."""

    root: Path
    flame: FlameModel
    landmarks: LandmarkEmbedding
    uv: UVLayout
    face_eye_mask: np.ndarray  # [256, 256] float32 in 0..1 (channel 0 / 255)
    face_mask: np.ndarray  # [256, 256] float32 in 0..1
    fixed_displacement: np.ndarray  # [256, 256] float32, metres
    mean_texture: np.ndarray  # [512, 512, 3] float32 RGB in 0..1
    checkpoint: dict[str, dict[str, torch.Tensor]]  # {"E_flame": sd, "E_detail": sd, "D_detail": sd}
    albedo: Optional[AlbedoModel] = None
    meta: dict = field(default_factory=dict)  # pack.json contents ({} for an official pack)

    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("synthetic", False))

    @property
    def label(self) -> str:
        """One line naming the pack, shown first by every command."""
        if self.synthetic:
            return f"using the SYNTHETIC demo pack at {self.root} (procedural head, seeded weights: not DECA's results)"
        return f"using the model pack at {self.root}"
