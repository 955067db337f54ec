"""Mesh files: the textured OBJ + MTL + texture / normal-map PNGs that DECA's save_obj writes (docs/formats.md 3.8), and
the OBJ sequences of `capture.video --meshes DIR` with one material for the whole sequence (`write_sequence_material`).

Normal maps: `write_obj(..., normal_map=)` (capture.reconstruct) writes DECA's own `_normals.png`, WORLD-space
detail normals x 0.5 + 0.5, referenced by a `disp` line as DECA's save_obj does. The sequence material is what
OBJ importers read: `map_Kd` for the albedo and `map_Bump -bm 1` for a TANGENT-space normal map (Blender's OBJ
importer turns `map_Bump` / `bump` into a tangent-space Normal Map node and ignores `norm`; see
docs/conventions.md, "Mesh files")."""
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
              normal_map: Optional[np.ndarray] = None, material: Optional[tuple[str, str]] = None) -> list[Path]:
    """Write `path` (.obj); with a texture also `.mtl` and `.png`, with a normal map `_normals.png`.

    vertices [V, 3]; faces [F, 3] 0-based; uvcoords [T, 2] (v up); texture / normal_map [H, W, 3] uint8
    (normal map = detail normals x 0.5 + 0.5); material: (MTL file name, material name) of an existing MTL to
    use instead (`write_sequence_material`). Returns the files written.
    """
    path = Path(path)
    written = [path]
    lines = ["# written by capture"]
    if material is not None:
        lines += [f"mtllib {material[0]}", f"usemtl {material[1]}"]
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


SEQUENCE_MATERIAL = "avatar"  # avatar.mtl, avatar_albedo.png, avatar_normals.png in a --meshes folder


def vertex_normals(vertices: np.ndarray, faces: np.ndarray, fallback=None) -> np.ndarray:
    """Area-weighted unit vertex normals of a numpy mesh [V, 3] (vertices a face does not use: 0, or `fallback`)."""
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    out = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(out, faces[:, k], n)
    length = np.linalg.norm(out, axis=1, keepdims=True)
    unit = out / np.maximum(length, 1e-12)
    return unit if fallback is None else np.where(length > 1e-12, unit, np.asarray(fallback, unit.dtype))


def tangent_frames(vertices: np.ndarray, faces: np.ndarray, uvcoords: np.ndarray,
                   uvfaces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex tangent (direction of +u on the surface) and bitangent (+v), area-weighted over the faces
    around each vertex: vertices [V, 3], faces [F, 3], uvcoords [T, 2] (v up), uvfaces [F, 3] -> [V, 3] each."""
    p = np.asarray(vertices, np.float64)[faces]
    uv = np.asarray(uvcoords, np.float64)[uvfaces]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    inv = np.where(np.abs(det) > 1e-20, 1.0 / np.where(det == 0, 1.0, det), 0.0)[:, None]
    # dP/du and dP/dv of each face, times its UV area (|det|) so that larger faces weigh more
    t = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * inv * np.abs(det)[:, None]
    b = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * inv * np.abs(det)[:, None]
    tangent, bitangent = np.zeros_like(vertices, dtype=np.float64), np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(tangent, faces[:, k], t)
        np.add.at(bitangent, faces[:, k], b)
    return tangent, bitangent


def to_tangent_space(world_normals: np.ndarray, normals: np.ndarray, tangents: np.ndarray,
                     bitangents: np.ndarray) -> np.ndarray:
    """Normals in world space -> in the surface's tangent frame, per texel (all [..., 3]): N = the coarse surface
    normal, T = the tangent made orthogonal to N, B = N x T flipped to the side of the bitangent (mirrored UVs).
    Returns (n.T, n.B, n.N) normalised: x along +u, y along +v (OpenGL / Blender convention), z out."""
    N = normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    T = tangents - N * (tangents * N).sum(-1, keepdims=True)
    T = T / np.maximum(np.linalg.norm(T, axis=-1, keepdims=True), 1e-12)
    B = np.cross(N, T)
    B = B * np.where((B * bitangents).sum(-1, keepdims=True) < 0, -1.0, 1.0)
    n = np.stack([(world_normals * T).sum(-1), (world_normals * B).sum(-1), (world_normals * N).sum(-1)], -1)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def avatar_albedo(deca, avatar) -> np.ndarray:
    """The avatar's colour in UV space: its photo texture, else the pack's albedo model at its code (what the
    renderer uses): [S, S, 3] uint8, row 0 = v = 1."""
    import torch

    with torch.inference_mode():
        albedo = avatar.albedo_uv if avatar.albedo_uv is not None else deca.albedo(avatar.codes.to(deca.device))
    return to_uint8_image(albedo[0].cpu().numpy())


def avatar_normal_map(deca, avatar) -> np.ndarray:
    """The avatar's detail normals (D_detail on its own detail code, neutral expression and jaw, head unrotated)
    as a tangent-space normal map: [S, S, 3] uint8 = n x 0.5 + 0.5, flat (128, 128, 255) outside the layout."""
    import torch

    from .views import detail_normal_map, mesh_normals

    assets = deca.assets
    codes = avatar.codes.to(deca.device)
    neutral = codes.replace(exp=torch.zeros_like(codes.exp), pose=torch.zeros_like(codes.pose))
    with torch.inference_mode():
        vertices = deca.flame(neutral.shape, neutral.exp, neutral.pose).vertices
        normals = mesh_normals(assets, vertices)
        uv_detail = detail_normal_map(assets, deca.displacement(neutral), vertices, normals)
        uv = deca.pack.uv
        tangent, bitangent = tangent_frames(vertices[0].cpu().numpy(), np.asarray(uv.faces), np.asarray(uv.uvcoords),
                                            np.asarray(uv.uvfaces))

        def as_uv(a):
            return assets.uv_sampler.sample(torch.as_tensor(a, dtype=vertices.dtype, device=deca.device)[None])

        frames = [t[0].permute(1, 2, 0).double().cpu().numpy() for t in (as_uv(tangent), as_uv(bitangent))]
        detail = uv_detail[0].permute(1, 2, 0).double().cpu().numpy()
        coarse = assets.uv_sampler.sample(normals)[0].permute(1, 2, 0).double().cpu().numpy()
        covered = assets.uv_sampler.coverage.cpu().numpy()
    n = to_tangent_space(detail, coarse, frames[0], frames[1])
    n[~covered] = (0.0, 0.0, 1.0)
    return np.clip(np.round((n * 0.5 + 0.5) * 255.0), 0, 255).astype(np.uint8)


def write_sequence_material(folder: Path, albedo: np.ndarray, normal_map: Optional[np.ndarray]) -> tuple[str, str]:
    """`avatar.mtl` + `avatar_albedo.png` (+ `avatar_normals.png`, tangent space) in `folder`, for every OBJ of a
    sequence. Returns (MTL file name, material name) for `write_obj(material=...)`."""
    from PIL import Image

    folder = Path(folder)
    name = SEQUENCE_MATERIAL
    Image.fromarray(albedo).save(folder / f"{name}_albedo.png")
    lines = [f"newmtl {name}", "Ka 1 1 1", "Kd 1 1 1", "Ks 0 0 0", "illum 1", f"map_Kd {name}_albedo.png"]
    if normal_map is not None:
        Image.fromarray(normal_map).save(folder / f"{name}_normals.png")
        lines.append(f"map_Bump -bm 1 {name}_normals.png")  # tangent space: what Blender's importer makes of it
    (folder / f"{name}.mtl").write_text("\n".join(lines) + "\n")
    return f"{name}.mtl", name
