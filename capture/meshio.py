"""Mesh files: the textured OBJ + MTL + texture / normal-map PNGs that DECA's save_obj writes (docs/formats.md 3.8)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image


def to_uint8_image(chw: np.ndarray) -> np.ndarray:
    """[3, H, W] float in 0..1 -> [H, W, 3] uint8."""
    return np.clip(np.round(np.asarray(chw).transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray, uvcoords: Optional[np.ndarray] = None,
              uvfaces: Optional[np.ndarray] = None, texture: Optional[np.ndarray] = None,
              normal_map: Optional[np.ndarray] = None) -> list[Path]:
    """Write `path` (.obj); with a texture also `.mtl` and `.png`, with a normal map `_normals.png`.

    vertices [V, 3]; faces [F, 3] 0-based; uvcoords [T, 2] (v up); texture / normal_map [H, W, 3] uint8
    (normal map = detail normals x 0.5 + 0.5). Returns the files written.
    """
    path = Path(path)
    written = [path]
    lines = [f"# written by capture"]
    if texture is not None:
        mtl = path.with_suffix(".mtl")
        tex_png = path.with_suffix(".png")
        Image.fromarray(texture).save(tex_png)
        mtl_lines = ["newmtl FaceTexture", f"map_Kd {tex_png.name}"]
        written += [mtl, tex_png]
        if normal_map is not None:
            normal_png = path.with_name(path.stem + "_normals.png")
            Image.fromarray(normal_map).save(normal_png)
            mtl_lines.append(f"disp {normal_png.name}")
            written.append(normal_png)
        mtl.write_text("\n".join(mtl_lines) + "\n")
        lines += [f"mtllib {mtl.name}", "usemtl FaceTexture"]
    verts = np.asarray(vertices, dtype=np.float64)
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    f1 = np.asarray(faces, dtype=np.int64) + 1
    if uvcoords is not None and uvfaces is not None:
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in np.asarray(uvcoords)]
        t1 = np.asarray(uvfaces, dtype=np.int64) + 1
        lines += [f"f {a}/{ta} {b}/{tb} {c}/{tc}" for (a, b, c), (ta, tb, tc) in zip(f1, t1)]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in f1]
    path.write_text("\n".join(lines) + "\n")
    return written
