"""The USD take (capture.usd), read back with usd-core's own API; and one capture.video run that writes every
take format at once, checked against each other and against the session's own vertices (the --meshes OBJs)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from face_clips import make_face_clip

pxr = pytest.importorskip("pxr", reason="usd-core is not installed (pip install usd-core)")
from pxr import Usd, UsdGeom  # noqa: E402

TIMES = 3.0 + np.array([0.0, 0.04, 0.08, 0.12, 0.17])  # one gap; the input's own timeline (not from 0)
NO_FACE = 2


@pytest.fixture(scope="module")
def flame(demo_pack):
    from capture.flame import FLAME

    return FLAME(demo_pack)


@pytest.mark.parametrize("suffix", [".usda", ".usdc", ".usd"])
def test_points_channels_and_time_read_back(tmp_path, flame, demo_pack, suffix):
    from capture.channels import ARKIT_NAMES, Channels
    from capture.takes import TakeContext, TakeFrame
    from capture.usd import UsdTake

    rng = np.random.default_rng(0)
    V = flame.v_template.shape[0]
    context = TakeContext(flame=flame, shape=np.zeros(100), faces=demo_pack.uv.faces, uvcoords=demo_pack.uv.uvcoords,
                          uvfaces=demo_pack.uv.uvfaces, albedo=np.zeros((8, 8, 3), np.uint8), expression_names=(),
                          fps=25.0)
    take = UsdTake(tmp_path / f"take{suffix}", context)
    frames = []
    for i, t in enumerate(TIMES):
        if i == NO_FACE:
            take.add(TakeFrame(time=float(t), channels=None, codes=None))
            frames.append(frames[-1])
            continue
        verts = rng.normal(size=(V, 3)).astype(np.float32) * 0.1
        ch = Channels(rng.random(52).astype(np.float32), rng.normal(size=3).astype(np.float32), np.zeros(6, np.float32))
        take.add(TakeFrame(time=float(t), channels=ch, codes={}, vertices=verts))
        frames.append((verts, ch))
    take.close()

    stage = Usd.Stage.Open(str(tmp_path / f"take{suffix}"))
    assert stage.GetTimeCodesPerSecond() == 25.0 and stage.GetFramesPerSecond() == 25.0
    assert stage.GetStartTimeCode() == pytest.approx(TIMES[0] * 25)
    assert stage.GetEndTimeCode() == pytest.approx(TIMES[-1] * 25)
    assert UsdGeom.GetStageUpAxis(stage) == "Y" and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/Take/Avatar"))
    assert stage.GetDefaultPrim().GetPath() == "/Take"
    np.testing.assert_array_equal(np.array(mesh.GetFaceVertexIndicesAttr().Get()).reshape(-1, 3), demo_pack.uv.faces)
    assert set(mesh.GetFaceVertexCountsAttr().Get()) == {3}
    st = UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st")
    assert st.GetInterpolation() == "faceVarying"
    np.testing.assert_allclose(np.array(st.ComputeFlattened()).reshape(-1, 3, 2),
                               np.asarray(demo_pack.uv.uvcoords, np.float32)[demo_pack.uv.uvfaces], atol=1e-7)
    points = mesh.GetPointsAttr()
    assert len(points.GetTimeSamples()) == len(TIMES)
    scope = stage.GetPrimAtPath("/Take/Channels")
    for t, (verts, ch) in zip(TIMES, frames):
        code = t * 25.0
        np.testing.assert_array_equal(np.array(points.Get(code)), verts)
        lo, hi = np.array(mesh.GetExtentAttr().Get(code))
        np.testing.assert_array_equal(lo, verts.min(0))
        np.testing.assert_array_equal(hi, verts.max(0))
        for k in (0, 17, 51):
            assert scope.GetAttribute(f"arkit:{ARKIT_NAMES[k]}").Get(code) == pytest.approx(float(ch.blendshapes[k]))
        assert scope.GetAttribute("head:yaw").Get(code) == pytest.approx(float(ch.head[0]))
    assert stage.GetRootLayer().customLayerData["capture:startTime"] == pytest.approx(TIMES[0])
    if suffix == ".usda":  # the material: the albedo PNG beside the file, bound to the mesh
        from pxr import UsdShade

        material = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()[0]
        assert material.GetPath() == "/Take/Materials/avatar"
        tex = UsdShade.Shader(stage.GetPrimAtPath("/Take/Materials/avatar/albedo"))
        assert tex.GetInput("file").Get().path == "./take_albedo.png" and (tmp_path / "take_albedo.png").is_file()


def test_video_writes_glb_usd_and_csv_takes_that_agree(tmp_path, demo_pack_dir):
    from capture import video
    from capture.takes import parse_timecode
    from gltf_reader import Glb

    pts = [0, 40, 80, 120, 160, 200]
    clip = make_face_clip(tmp_path / "in.mp4", len(pts), audio=False, pts=pts, missing=(3,))
    rc = video.main([str(clip.path), "-o", str(tmp_path / "out.mp4"), "--assets", str(demo_pack_dir), "--no-progress",
                     "--backend", "torch", "--hold", "0", "--meshes", str(tmp_path / "meshes"),
                     "--export", str(tmp_path / "take.glb"), "--export", str(tmp_path / "take.usda"),
                     "--export", str(tmp_path / "take.csv")])
    assert rc == 0
    with open(tmp_path / "take.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    times = np.array([parse_timecode(r[0]) for r in body])
    jaw_csv = np.array([float(r[header.index("JawOpen")]) for r in body])

    stage = Usd.Stage.Open(str(tmp_path / "take.usda"))
    fps = stage.GetTimeCodesPerSecond()
    assert fps == pytest.approx(25.0, rel=1e-3)
    points = UsdGeom.Mesh(stage.GetPrimAtPath("/Take/Avatar")).GetPointsAttr()
    jaw_usd = stage.GetPrimAtPath("/Take/Channels").GetAttribute("arkit:jawOpen")
    samples = points.GetTimeSamples()
    assert len(samples) == len(pts)
    np.testing.assert_allclose(np.array(samples) / fps, times, atol=1e-4)
    np.testing.assert_allclose([jaw_usd.Get(s) for s in samples], jaw_csv, atol=1e-7)
    # the session's own vertices, as --meshes wrote them (6 decimals), for every frame with a face
    objs = sorted((tmp_path / "meshes").glob("frame_*.obj"))
    written = {p.name for p in (tmp_path / "meshes").iterdir()}
    assert {"avatar.mtl", "avatar_albedo.png", "avatar_normals.png"} <= written
    assert objs[0].read_text().splitlines()[1:3] == ["mtllib avatar.mtl", "usemtl avatar"]
    assert len(objs) == len(pts) - 1  # the frame without a face passed through (--hold 0): no OBJ
    for obj in objs:
        index = int(obj.stem.split("_")[1])
        verts = np.array([[float(x) for x in line.split()[1:4]] for line in obj.read_text().splitlines()
                          if line.startswith("v ")])
        np.testing.assert_allclose(np.array(points.Get(samples[index])), verts, atol=1e-6)
    np.testing.assert_array_equal(np.array(points.Get(samples[3])), np.array(points.Get(samples[2])))

    glb = Glb(tmp_path / "take.glb")
    glb.check_structure()
    key_times = glb.accessor(glb.doc["animations"][0]["samplers"][0]["input"])
    np.testing.assert_allclose(key_times, times - times[0], atol=1e-4)
    # the glTF rig reproduces the session's mesh within the documented approximation (no pose correctives)
    src = np.asarray(glb.doc["meshes"][0]["extras"]["flameVertex"])
    for index in (0, 5):
        err = np.abs(glb.vertices_at(index) - np.array(points.Get(samples[index]))[src]).max()
        assert err < 3e-3, (index, err)
