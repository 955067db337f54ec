"""benchmarks/face_signals.py, real_clips.py and fidelity.py: the yardstick for expression fidelity."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fs = _load("face_signals")
rc = _load("real_clips")
fid = _load("fidelity")
ag = _load("avatar_geometry")


def _face_points(mouth_open=6.0, mouth_width=40.0, eye_l=4.0, eye_r=5.0, brow=20.0, eye_span=100.0):
    """478 mesh points, the used ones placed so that every signal has a known value."""
    p = np.zeros((478, 2))
    cy = 100.0
    p[33], p[263] = (50, cy), (50 + eye_span, cy)  # outer corners
    p[133], p[362] = (80, cy), (120, cy)  # inner corners
    for (top, bot), x in zip(fs.EYE_RIGHT_LIDS, (65, 60, 70)):
        p[top], p[bot] = (x, cy - eye_r / 2), (x, cy + eye_r / 2)
    for (top, bot), x in zip(fs.EYE_LEFT_LIDS, (135, 130, 140)):
        p[top], p[bot] = (x, cy - eye_l / 2), (x, cy + eye_l / 2)
    for i, dx in zip(fs.BROW_RIGHT, (-10, 0, 10)):
        p[i] = (65 + dx, cy - brow)
    for i, dx in zip(fs.BROW_LEFT, (-10, 0, 10)):
        p[i] = (135 + dx, cy - brow)
    p[13], p[14] = (100, 160 - mouth_open / 2), (100, 160 + mouth_open / 2)
    p[61], p[291] = (100 - mouth_width / 2, 160), (100 + mouth_width / 2, 160)
    return p


def test_landmark_signals_known_geometry():
    got = fs.landmark_signals(_face_points())
    np.testing.assert_allclose(got, [0.06, 0.40, 0.04, 0.05, 0.20], atol=1e-12)
    # Size, position and in-plane rotation of the face don't change the signals.
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    moved = 2.5 * _face_points() @ rot.T + (300, -40)
    np.testing.assert_allclose(fs.landmark_signals(moved), got, atol=1e-12)
    # Each signal answers to its own feature only.
    wide = fs.landmark_signals(_face_points(mouth_open=12.0))
    assert wide[0] == pytest.approx(0.12) and np.allclose(wide[1:], got[1:])
    blink = fs.landmark_signals(_face_points(eye_l=0.0, eye_r=0.0))
    assert blink[2] == 0 and blink[3] == 0 and blink[4] == pytest.approx(got[4])
    assert np.isnan(fs.landmark_signals(np.zeros((478, 2)))).all()


def test_mesh_signals_use_the_face_mesh_points_they_stand_for():
    """avatar_geometry's iBUG-68 points give the face mesh's signals on the face-mesh points the 68 are taken
    from (`capture.landmarks.MESH_TO_IBUG68`), the lid gaps being equal across each eye's pairs here."""
    from capture.landmarks import MESH_TO_IBUG68

    for kw in ({}, dict(mouth_open=12.0, eye_l=0.0, brow=30.0, eye_span=80.0)):
        mesh = _face_points(**kw)
        np.testing.assert_allclose(fs.landmark_signals(mesh[list(MESH_TO_IBUG68)], ag.IBUG68),
                                   fs.landmark_signals(mesh), atol=1e-12)
    assert np.isnan(fs.landmark_signals(np.zeros((68, 2)), ag.IBUG68)).all()


def test_mesh_signals_of_saved_codes(tmp_path, small_pack_dir):
    """Codes as `capture.video --codes` saves them -> FLAME seen by an orthographic camera: the jaw opens the
    mouth, a head roll (about the view axis) changes no ratio, a frame without codes stays NaN."""
    exp, pose = np.zeros((4, 50), np.float32), np.zeros((4, 6), np.float32)
    pose[1, 3] = 0.3  # jaw open
    pose[2, :3] = (0.0, 0.0, 0.4)  # head rolled
    exp[3] = np.nan  # no face on that frame
    np.savez(tmp_path / "codes.npz", exp=exp, pose=pose)
    got = ag.codes_signals(tmp_path / "codes.npz", str(small_pack_dir))
    assert got.shape == (4, 5) and np.isfinite(got[:3]).all() and np.isnan(got[3]).all()
    assert got[1, 0] > got[0, 0] + 0.01
    np.testing.assert_allclose(got[2], got[0], atol=1e-6)


def test_pearson_on_known_arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 0.5 * x + rng.normal(size=200)
    r, n = fs.pearson(x, y)
    assert n == 200 and r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert fs.pearson(x, 3 * x + 1)[0] == pytest.approx(1.0)
    assert fs.pearson(x, -x)[0] == pytest.approx(-1.0)
    # NaNs on either side drop that index from both.
    xn, yn = x.copy(), y.copy()
    xn[:10], yn[-5:] = np.nan, np.nan
    r, n = fs.pearson(xn, yn)
    assert n == 185 and r == pytest.approx(np.corrcoef(x[10:-5], y[10:-5])[0, 1], abs=1e-12)
    assert np.isnan(fs.pearson(np.ones(50), x[:50])[0])  # constant: undefined
    assert np.isnan(fs.pearson([1.0, 2.0], [2.0, 1.0])[0])  # too few frames


def _astronaut(height: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut()).crop((96, 0, 352, 256))  # the face, 256x256
    return np.asarray(photo.resize((height, height)))


def test_signals_on_a_real_photo_and_a_clip(tmp_path):
    import av

    big, small, blank = _astronaut(320), _astronaut(224), np.full((224, 224, 3), 90, np.uint8)
    sig = fs.measure_frames([big, big, blank])
    assert sig.values.shape == (3, 5) and sig.missed == 1
    assert np.isfinite(sig.values[:2]).all() and np.isnan(sig.values[2]).all()
    mouth_open, mouth_width, eye_l, eye_r, brow = sig.values[0]
    assert 0 <= mouth_open < 0.15  # she smiles with lips closed
    assert 0.4 < mouth_width < 1.0 and 0.02 < eye_l < 0.2 and 0.02 < eye_r < 0.2 and 0.1 < brow < 0.6
    # Normalised by the eye span: the same face smaller in the picture reads (nearly) the same.
    np.testing.assert_allclose(fs.measure_frames([small]).values[0], sig.values[0], atol=0.03)

    path = tmp_path / "astro.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 224, 224, "yuv420p"
        for img in [small] * 4 + [blank] * 2:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    got = fs.measure_video(path)
    assert got.frames == 6 and got.missed == 2 and got.fps == pytest.approx(25)
    assert np.isfinite(got.values[:4]).all()


def test_clip_table_is_well_formed():
    assert len(rc.CLIPS) >= 3
    for name, clip in rc.CLIPS.items():
        assert clip.name == name and re.fullmatch(r"[a-z0-9_]+", name)
        assert re.fullmatch(r"[0-9a-f]{64}", clip.sha256), name
        assert clip.registry in ("pypi", "npm") and clip.package
        assert re.fullmatch(r"\d+(\.\d+)+", clip.version), "versions are pinned"
        assert clip.member and not clip.member.startswith("/") and ".." not in clip.member
        assert clip.suffix in (".mp4", ".webm", ".mov", ".mkv", ".avi")
        assert len(clip.licence) > 10 and clip.content
        w, h = clip.size
        assert w >= 320 and h >= 240
        assert clip.seconds == pytest.approx(clip.frames / clip.fps, rel=0.02)


def test_fetch_failures_are_a_reason_not_an_exception(tmp_path, monkeypatch):
    assert rc.fetch_clip("no_such_clip", tmp_path) is None
    assert "unknown clip" in rc.last_error
    broken = rc.Clip("broken", "nowhere", "pkg", "1.0", "a.mp4", "0" * 64, "MIT licence", (640, 480), 25.0,
                     25, 1.0, "nothing")
    monkeypatch.setitem(rc.CLIPS, "broken", broken)
    assert rc.fetch_clip("broken", tmp_path) is None
    assert "registry" in rc.last_error and "\n" not in rc.last_error
    assert "broken" not in rc.available_clips(tmp_path)


def test_a_real_clip_fetches_and_has_a_face():
    name = "pexels_emotions"
    path = rc.fetch_clip(name)
    if path is None:
        pytest.skip(f"cannot fetch {name}: {rc.last_error}")
    assert rc.sha256_of(path) == rc.CLIPS[name].sha256
    assert name in rc.available_clips()
    sig = fs.measure_video(path, max_frames=5)
    assert sig.frames == 5 and sig.missed == 0


def test_fidelity_reads_the_video_cli():
    line = "wrote 120 frames to out/x.mp4 in 10.6 s (11.3 FPS); 0 without a face"
    m = fid.SUMMARY.search("decoding...\n" + line)
    assert m and m.group(1) == "120" and m.group(2) == "11.3"
    assert fid.parse_codes_from("usage: ... [--smooth] [--codes NPZ]") is None
    help_text = "  --codes-from {auto,network,\n                 landmarks,hybrid}\n      where codes come from"
    assert fid.parse_codes_from(help_text) == ["auto", "network", "landmarks", "hybrid"]


def test_fidelity_compare_counts_misses():
    rng = np.random.default_rng(1)
    perf = rng.normal(size=(40, 5))
    avatar = perf * 2 + 1
    avatar[:, 1] = -avatar[:, 1]
    avatar[5] = np.nan  # avatar lost for a frame
    perf[7] = np.nan  # performer lost for another
    res = fid.compare(perf, np.vstack([avatar, avatar[:3]]))  # extra avatar frames are ignored
    assert res["frames_compared"] == 40 and res["missed_performer"] == 1 and res["missed_avatar"] == 1
    assert res["corr"]["mouth_open"] == pytest.approx(1.0) and res["corr"]["mouth_width"] == pytest.approx(-1.0)
    assert res["frames_both"]["brow"] == 38
    assert res["mean_corr"] == pytest.approx((4 - 1) / 5)
