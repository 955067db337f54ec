"""`python -m capture.train make-dataset DIR`: a tiny training set rendered from a model pack (the demo pack).

Several identities (seeded shape, albedo and detail codes) under several expressions, jaw openings, head poses,
lights and backgrounds, each rendered with its detail normals (albedo x SH light) and written in the dataset
format of `dataset.py`: image, 68 landmarks (the 2D landmarks of the render), face-skin mask (the pack's UV face
mask seen through the render), identity label, plus the codes in `truth/` for evaluation.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..assets import load_pack, resolve_pack_dir
from ..conventions import ndc_to_pixel
from ..deca import Codes
from ..model_assets import ModelAssets
from ..nets import build_networks
from .dataset import LABELS
from .detail import render_with_detail
from .renderer import TrainRenderer


def random_codes(rng: np.random.Generator, identity: dict, n: int) -> Codes:
    """n expression/pose/camera/light variations of one identity (codes in the frame's NDC)."""
    exp = rng.normal(0, 0.3, (n, 50))
    exp[:, :3] = rng.uniform(-1.5, 1.5, (n, 3))
    pose = np.zeros((n, 6))
    pose[:, 0] = rng.uniform(-0.08, 0.08, n)  # pitch
    pose[:, 1] = rng.uniform(-0.25, 0.25, n)  # yaw
    pose[:, 3] = rng.uniform(0.0, 0.3, n)  # jaw opening
    cam = np.stack([rng.uniform(6.5, 7.5, n), rng.uniform(-0.02, 0.02, n), 0.024 + rng.uniform(-0.02, 0.02, n)], 1)
    light = np.zeros((n, 9, 3))
    light[:, 0] = rng.uniform(3.0, 3.8, (n, 1))
    light[:, 1] = rng.uniform(-0.3, 0.3, (n, 1))
    light[:, 2] = rng.uniform(0.0, 0.4, (n, 1))
    light[:, 3] = rng.uniform(0.3, 0.8, (n, 1))
    light += rng.normal(0, 0.03, light.shape)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    rep = lambda a: t(np.repeat(np.asarray(a)[None], n, 0))  # noqa: E731
    return Codes(shape=rep(identity["shape"]), tex=rep(identity["tex"]), exp=t(exp), pose=t(pose), cam=t(cam),
                 light=t(light), detail=rep(identity["detail"]))


def make_dataset(out: str | Path, *, assets: Optional[str] = None, identities: int = 4, per_identity: int = 6,
                 size: int = 224, seed: int = 0, detail: bool = True) -> Path:
    """Render the tiny dataset into `out`; returns the folder.

    detail: shade with D_detail's normals (as DECA's images have wrinkles); False shades the coarse surface, which
    skips the largest cost of a render and is enough for the coarse stage (E_flame never sees the detail code).
    The random draws do not depend on it: the same seed gives the same people, expressions, poses and lights."""
    out = Path(out)
    for sub in ("images", "landmarks", "masks", "truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    pack = load_pack(resolve_pack_dir(assets or "demo"))
    d_detail = build_networks(pack.checkpoint).d_detail if detail else None
    renderer = TrainRenderer(ModelAssets.build(pack, fused_lbs=False), size)
    face_mask = torch.as_tensor(pack.face_mask)[None, None]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(identities):
        identity = {"shape": rng.normal(0, 0.8, 100), "tex": rng.normal(0, 0.8, 50), "detail": rng.normal(0, 1, 128)}
        codes = random_codes(rng, identity, per_identity)
        with torch.no_grad():
            geo = renderer.geometry(codes)
            albedo = renderer.albedo(codes.tex)
            if detail:
                rend, _ = render_with_detail(renderer, d_detail, geo, albedo, codes, codes.detail)
            else:
                rend = renderer.render(geo, albedo, codes.light)
            skin = F.grid_sample(face_mask.expand(per_identity, -1, -1, -1), rend.uv, align_corners=False) * rend.alpha
        ys = torch.linspace(0, 1, size)[None, :, None]
        for j in range(per_identity):
            tint = torch.as_tensor(rng.uniform(0.15, 0.8, 3), dtype=torch.float32)[:, None, None]
            background = tint * (0.7 + 0.3 * ys)
            picture = rend.image[j] * rend.alpha[j] + background * (1 - rend.alpha[j])
            stem = f"id{i:02d}_{j:02d}"
            Image.fromarray((picture.permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()).save(
                out / "images" / f"{stem}.png")
            Image.fromarray(((skin[j, 0] > 0.5).to(torch.uint8) * 255).numpy()).save(out / "masks" / f"{stem}.png")
            np.savetxt(out / "landmarks" / f"{stem}.txt", ndc_to_pixel(geo.landmarks[j].numpy(), size), fmt="%.3f")
            np.savez(out / "truth" / f"{stem}.npz", **codes.select(slice(j, j + 1)).numpy())
            rows.append((f"{stem}.png", f"person{i:02d}"))
    with open(out / LABELS, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "identity"])
        writer.writerows(rows)
    return out
