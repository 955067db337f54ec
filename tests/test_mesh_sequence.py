"""OBJ sequences (`capture.video --meshes DIR`): one material for the sequence, with a tangent-space normal map
(capture.meshio), checked against analytic tangent frames; Blender's OBJ importer reading it when installed."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from scipy.spatial.transform import Rotation


def _square(n=4):
    """A flat n x n grid in the xy plane, uv = xy: tangent +x, bitangent +y, normal +z everywhere."""
    g = np.linspace(0.0, 1.0, n)
    xy = np.stack(np.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            i = r * n + c
            faces += [(i, i + 1, i + n + 1), (i, i + n + 1, i + n)]
    return np.c_[xy, np.zeros(len(xy))], np.array(faces), xy


def test_tangent_frames_of_a_plane_and_of_a_rotated_plane():
    from capture.meshio import tangent_frames, to_tangent_space

    verts, faces, uv = _square()
    t, b = tangent_frames(verts, faces, uv, faces)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(unit(t), np.tile([1.0, 0, 0], (len(verts), 1)), atol=1e-12)
    np.testing.assert_allclose(unit(b), np.tile([0, 1.0, 0], (len(verts), 1)), atol=1e-12)
    # a detail normal n_ts given in the (u, v, out) frame, put on the plane rotated by R, comes back as n_ts
    R = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_matrix()
    rng = np.random.default_rng(0)
    n_ts = rng.normal(size=(len(verts), 3))
    n_ts[:, 2] = np.abs(n_ts[:, 2]) + 0.5
    n_ts /= np.linalg.norm(n_ts, axis=1, keepdims=True)
    t, b = tangent_frames(verts @ R.T, faces, uv, faces)
    out = to_tangent_space(n_ts @ R.T, np.tile(R[:, 2], (len(verts), 1)), t, b)
    np.testing.assert_allclose(out, n_ts, atol=1e-12)
    # mirrored UVs (u -> 1 - u): +u now runs along -x; the frame follows, so x of the map flips with it
    t, b = tangent_frames(verts, faces, np.c_[1.0 - uv[:, 0], uv[:, 1]], faces)
    out = to_tangent_space(n_ts, np.tile([0, 0, 1.0], (len(verts), 1)), t, b)
    np.testing.assert_allclose(out, n_ts * [-1, 1, 1], atol=1e-12)


def test_sequence_material_and_blender_reads_it(tmp_path):
    from capture.meshio import write_obj, write_sequence_material

    verts, faces, uv = _square()
    albedo = np.full((8, 8, 3), 200, np.uint8)
    normals = np.full((8, 8, 3), (128, 128, 255), np.uint8)
    material = write_sequence_material(tmp_path, albedo, normals)
    write_obj(tmp_path / "frame_000000.obj", verts, faces, uv, faces, material=material)
    mtl = (tmp_path / "avatar.mtl").read_text().splitlines()
    assert "map_Kd avatar_albedo.png" in mtl and "map_Bump -bm 1 avatar_normals.png" in mtl
    obj = (tmp_path / "frame_000000.obj").read_text().splitlines()
    assert obj[1:3] == ["mtllib avatar.mtl", "usemtl avatar"]
    if shutil.which("blender") is None:
        pytest.skip("blender is not installed: the MTL was checked as text only")
    script = tmp_path / "check.py"
    script.write_text(
        "import bpy\n"
        "bpy.ops.wm.read_factory_settings(use_empty=True)\n"
        f"bpy.ops.wm.obj_import(filepath={str(tmp_path / 'frame_000000.obj')!r})\n"
        "m = bpy.data.materials['avatar']\n"
        "nodes = [(n.type, getattr(n, 'space', ''), getattr(getattr(n, 'image', None), 'name', ''))\n"
        "         for n in m.node_tree.nodes]\n"
        "print('NODES', nodes)\n")
    run = subprocess.run(["blender", "-b", "--factory-startup", "--python", str(script)], capture_output=True,
                         text=True, timeout=300)
    line = next(x for x in run.stdout.splitlines() if x.startswith("NODES "))
    assert "('NORMAL_MAP', 'TANGENT', '')" in line and "avatar_normals.png" in line and "avatar_albedo.png" in line
