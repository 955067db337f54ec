"""The training-set folder and its loader: images, 68 landmarks, face-skin masks, identity labels.

Layout (one folder, `make_dataset.py` writes it; any photo collection can be brought into it):

    DIR/labels.csv             header `image,identity`, one row per image (identity: any string)
    DIR/images/<name>          RGB image (PNG or JPEG)
    DIR/landmarks/<stem>.txt   68 rows `x y`: iBUG-68 landmarks in image pixels (x = column, y = row)
    DIR/masks/<stem>.png       grey mask of the face skin, same size as the image (> 127 = skin)
    DIR/truth/<stem>.npz       optional: the codes a synthetic image was rendered with (for evaluation only)

Samples come in groups of K images of one identity (shape and detail consistency swap codes within a group).
Crops are DECA's training crops: a square of side mean(landmark-box sides) x U(scale_min, scale_max) around the
box centre, resampled to `render_size` (the encoder sees it resized to 224).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..conventions import pixel_to_ndc
from ..crop import image_points_to_crop, warp_crop

N_LANDMARKS = 68
LABELS = "labels.csv"
FIXED_CROP_BUDGET = 512 * 2**20  # bytes of fixed crops kept in memory (about 8000 crops at 64 px, 700 at 224)


class DatasetError(ValueError):
    """The training folder is unusable; `problems` lists every problem found (one line each)."""

    def __init__(self, root: Path, problems: list[str]):
        self.problems = problems
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        super().__init__(f"training data {root} cannot be used:\n" + "\n".join(f"  - {p}" for p in shown)
                         + "\n(layout: see `python -m capture.train --help` or capture/train/dataset.py)")


@dataclass(frozen=True)
class Entry:
    name: str  # file name under images/
    identity: str

    @property
    def stem(self) -> str:
        return Path(self.name).stem


def read_labels(root: Path) -> list[Entry]:
    path = root / LABELS
    if not path.is_file():
        raise DatasetError(root, [f"{LABELS} is missing: write one row `image,identity` per image"])
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise DatasetError(root, [f"{LABELS} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}):"
                                  " write it as a CSV text file with the header `image,identity`"]) from None
    except (OSError, csv.Error) as exc:
        raise DatasetError(root, [f"{LABELS}: unreadable ({getattr(exc, 'strerror', None) or exc})"]) from None
    if not rows or [c.strip() for c in rows[0]] != ["image", "identity"]:
        raise DatasetError(root, [f"{LABELS}: first row must be the header `image,identity`, found {rows[:1]}"])
    entries, problems = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            problems.append(f"{LABELS} line {line}: expected `image,identity`, found {row}")
            continue
        entries.append(Entry(row[0].strip(), row[1].strip()))
    if problems:
        raise DatasetError(root, problems)
    return entries


def read_landmarks(path: Path) -> np.ndarray:
    """`<stem>.txt` -> [68, 2] float32 (x, y) image pixels; ValueError naming the file when malformed."""
    try:
        points = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path.name}: unreadable landmarks ({exc})") from None
    if points.shape != (N_LANDMARKS, 2):
        raise ValueError(f"{path.name}: expected {N_LANDMARKS} rows of `x y`, found shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"{path.name}: landmarks contain NaN or inf")
    return points.astype(np.float32)


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size  # (W, H)


def validate_dataset(root: str | Path, k: int = 2) -> list[Entry]:
    """Check every file of the folder; returns the entries or raises one DatasetError listing all problems."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, [f"{root} is not a folder"])
    entries = read_labels(root)
    problems = []
    seen = set()
    for e in entries:
        if e.name in seen:
            problems.append(f"{LABELS}: image {e.name} listed twice")
        seen.add(e.name)
        image, lmk, mask = (root / "images" / e.name, root / "landmarks" / f"{e.stem}.txt",
                            root / "masks" / f"{e.stem}.png")
        try:
            size = _image_size(image)
        except (OSError, ValueError) as exc:
            problems.append(f"images/{e.name}: missing or unreadable ({type(exc).__name__})")
            continue
        try:
            points = read_landmarks(lmk)
            w, h = size
            box = np.ptp(points, axis=0)
            if box.min() <= 1:
                problems.append(f"landmarks/{lmk.name}: landmark box is degenerate ({box.tolist()} px)")
            elif points[:, 0].max() < 0 or points[:, 1].max() < 0 or points[:, 0].min() > w or points[:, 1].min() > h:
                problems.append(f"landmarks/{lmk.name}: all landmarks lie outside the {w}x{h} image")
        except ValueError as exc:
            problems.append(f"landmarks/{exc}" if lmk.is_file() else f"landmarks/{lmk.name}: missing")
        try:
            if _image_size(mask) != size:
                problems.append(f"masks/{mask.name}: size {_image_size(mask)} differs from the image's {size}")
        except (OSError, ValueError):
            problems.append(f"masks/{mask.name}: missing or unreadable")
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.identity] = counts.get(e.identity, 0) + 1
    usable = [i for i, n in counts.items() if n >= k]
    if not entries:
        problems.append(f"{LABELS} lists no images")
    elif not usable:
        problems.append(f"no identity has the {k} images per person that a sample needs (counts: {counts}); "
                        f"add images or lower data.k_per_identity")
    if problems:
        raise DatasetError(root, problems)
    return entries


@dataclass
class Batch:
    """One training batch: groups of K consecutive images of the same identity."""

    images: torch.Tensor  # [B, 3, S, S] float32 RGB 0..1 (crop at render_size)
    landmarks: torch.Tensor  # [B, 68, 2] crop NDC (x right, y down)
    masks: torch.Tensor  # [B, 1, S, S] float32 face-skin mask 0..1
    identity: torch.Tensor  # [B] int64 identity index
    index: torch.Tensor  # [B] int64 image index in the dataset
    crop: torch.Tensor  # [B] int64 crop id (fine-tuning mode: which cached crop), -1 for a fresh crop

    @property
    def size(self) -> int:
        return self.images.shape[0]


def training_crop(points: np.ndarray, scale: float, size: int) -> np.ndarray:
    """DECA's training crop: landmarks [68, 2] px, box-side multiplier, output side -> T [3, 3]
    (image px -> crop px)."""
    left, top = points.min(0)
    right, bottom = points.max(0)
    side = ((right - left) + (bottom - top)) / 2.0 * scale
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    s = (size - 1) / side
    return np.array([[s, 0.0, -s * (cx - side / 2.0)], [0.0, s, -s * (cy - side / 2.0)], [0.0, 0.0, 1.0]])


class FaceDataset:
    """The validated folder; images are read on demand (and kept: the datasets this trains on here are small).

    `crop_scales[i, c]` fixes `crops_per_image` crops per image for the fine-tuning mode, whose backbone
    features are computed once per crop; `sample` with `fresh=True` draws a new scale per image instead.
    """

    def __init__(self, root: str | Path, k: int = 2, render_size: int = 224, scale_min: float = 1.4,
                 scale_max: float = 1.8, crops_per_image: int = 4, seed: int = 0):
        self.root = Path(root)
        self.k, self.render_size = int(k), int(render_size)
        self.scale_range = (float(scale_min), float(scale_max))
        self.entries = validate_dataset(self.root, self.k)
        names = sorted({e.identity for e in self.entries})
        self.identity_names = names
        self.identity = np.array([names.index(e.identity) for e in self.entries], np.int64)
        self.groups = [np.flatnonzero(self.identity == i) for i in range(len(names))]
        self.groups = [g for g in self.groups if len(g) >= self.k]
        rng = np.random.default_rng(seed)
        self.crop_scales = rng.uniform(*self.scale_range, size=(len(self.entries), int(crops_per_image)))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._fixed: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._fixed_bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image [H, W, 3] uint8, landmarks [68, 2] px, mask [H, W] uint8)."""
        if index not in self._cache:
            e = self.entries[index]
            image = np.asarray(Image.open(self.root / "images" / e.name).convert("RGB"))
            mask = np.asarray(Image.open(self.root / "masks" / f"{e.stem}.png").convert("L"))
            self._cache[index] = (image, read_landmarks(self.root / "landmarks" / f"{e.stem}.txt"), mask)
        return self._cache[index]

    def truth(self, index: int) -> Optional[dict[str, np.ndarray]]:
        path = self.root / "truth" / f"{self.entries[index].stem}.npz"
        if not path.is_file():
            return None
        with np.load(path) as data:
            return {k: data[k] for k in data.files}

    def crop(self, index: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One crop: (image [3, S, S], landmarks [68, 2] crop NDC, mask [1, S, S])."""
        image, points, mask = self.raw(index)
        T = training_crop(points, scale, self.render_size)
        crop = warp_crop(image, T, self.render_size)
        mask_crop = warp_crop(np.repeat(mask[..., None], 3, axis=2), T, self.render_size)[..., 0]
        lmk = pixel_to_ndc(image_points_to_crop(points.astype(np.float64), T), self.render_size)
        return (torch.from_numpy(crop).permute(2, 0, 1).contiguous(), torch.as_tensor(lmk, dtype=torch.float32),
                torch.from_numpy(np.ascontiguousarray(mask_crop))[None])

    def _fixed_crop(self, index: int, crop_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`crop(index, crop_scales[index, crop_id])`, warped once and kept while the kept crops fit the budget
        (fine-tuning draws the same fixed crops at every step)."""
        key = (index, crop_id)
        if key in self._fixed:
            return self._fixed[key]
        part = self.crop(index, float(self.crop_scales[index, crop_id]))
        size = sum(t.numel() * t.element_size() for t in part)
        if self._fixed_bytes + size <= FIXED_CROP_BUDGET:
            self._fixed[key] = part
            self._fixed_bytes += size
        return part

    def batch(self, indices, crops=None, scales=None) -> Batch:
        """Crops of `indices`: cached crop ids `crops`, or explicit `scales` (one per index)."""
        indices = list(map(int, indices))
        parts, crop_ids = [], []
        for j, i in enumerate(indices):
            if crops is not None:
                c = int(crops[j])
                parts.append(self._fixed_crop(i, c))
            else:
                c = -1
                scale = float(scales[j]) if scales is not None else float(np.mean(self.scale_range))
                parts.append(self.crop(i, scale))
            crop_ids.append(c)
        images, lmks, masks = (torch.stack(p) for p in zip(*parts))
        return Batch(images=images, landmarks=lmks, masks=masks,
                     identity=torch.as_tensor(self.identity[indices]), index=torch.as_tensor(indices),
                     crop=torch.as_tensor(crop_ids))

    def sample(self, n_identities: int, rng: np.random.Generator, fresh: bool = True) -> Batch:
        """`n_identities` groups of K images of one person (fresh random crops, or cached crop ids)."""
        chosen = rng.choice(len(self.groups), size=min(n_identities, len(self.groups)), replace=False)
        indices = np.concatenate([rng.choice(self.groups[g], size=self.k, replace=False) for g in chosen])
        if fresh:
            return self.batch(indices, scales=rng.uniform(*self.scale_range, size=len(indices)))
        return self.batch(indices, crops=rng.integers(0, self.crop_scales.shape[1], size=len(indices)))


def group_permutation(identity: torch.Tensor) -> torch.Tensor:
    """For groups of equal identity, an index that maps every item to another item of its own group.

    identity [B] int64 (groups contiguous or not) -> [B] int64; a rotation by one within each group, so no item
    is paired with itself when its group has two or more members.
    """
    perm = torch.arange(identity.shape[0])
    for value in identity.unique():
        members = (identity == value).nonzero().squeeze(1)
        perm[members] = members.roll(-1)
    return perm
