"""Pack loading: official formats written independently here, damaged files, discovery, the check CLI."""
from __future__ import annotations

import os
import pickle
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from capture.assets import AssetError, inspect_pack, load_pack, resolve_pack_dir
from capture.assets.official import read_flame_pickle, read_landmark_embedding
from capture.assets.safe_pickle import ForeignClassError, restricted_loads
from cli_runs import run_main

ROOT = Path(__file__).resolve().parents[1]


def _run_cli(*args):
    return run_main("capture.assets", *args)


# ------------------------------------------------------------------ an official-style pickle, written here
def _official_style_flame_pickle(path: Path, n_v=40, n_f=60, protocol=2, seed=0):
    """Write a FLAME-2020-layout pickle with our own throw-away chumpy module (never the project's writer)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "v_template": rng.normal(size=(n_v, 3)),
        "shapedirs": rng.normal(size=(n_v, 3, 400)) * 1e-3,
        "posedirs": rng.normal(size=(n_v, 3, 36)) * 1e-3,
        "weights": rng.dirichlet(np.ones(5), size=n_v),
    }
    jreg = np.zeros((5, n_v))
    for j in range(5):
        jreg[j, rng.choice(n_v, 4, replace=False)] = 0.25
    faces = rng.integers(0, n_v, size=(n_f, 3)).astype(np.uint32)
    kintree = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)

    fake_pkg, fake_ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x
            self._dirty_vars = {"x"}
            self.label = "test"

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    fake_ch.Ch = Ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = fake_pkg, fake_ch
    try:
        content = {k: Ch(v) for k, v in arrays.items() if k != "posedirs"}
        content.update(posedirs=arrays["posedirs"], J_regressor=scipy.sparse.csc_matrix(jreg),
                       kintree_table=kintree, f=faces, bs_style="lbs")
        path.write_bytes(pickle.dumps(content, protocol=protocol))
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    return arrays, jreg, faces


@pytest.mark.parametrize("protocol", [0, 2])
def test_flame_pickle_with_chumpy_objects_loads_without_chumpy(tmp_path, protocol):
    path = tmp_path / "generic_model.pkl"
    arrays, jreg, faces = _official_style_flame_pickle(path, protocol=protocol)
    assert "chumpy" not in sys.modules
    model = read_flame_pickle(path)
    assert "chumpy" not in sys.modules
    np.testing.assert_allclose(model.v_template, arrays["v_template"], rtol=1e-6)
    np.testing.assert_allclose(model.shapedirs, arrays["shapedirs"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(model.J_regressor, jreg, rtol=1e-6)
    np.testing.assert_array_equal(model.faces, faces.astype(np.int64))
    assert model.parents.tolist() == [-1, 0, 1, 1, 1]
    assert model.shapedirs.dtype == np.float32 and model.faces.dtype == np.int64


def test_legacy_checkpoint_format_loads(small_pack_dir, tmp_path):
    """deca_model.tar may be in torch's pre-1.6 (non-zip) format; weights_only loading reads it too."""
    pack = _damaged_copy(small_pack_dir, tmp_path / "legacy")
    ckpt = torch.load(pack / "deca_model.tar", weights_only=True)
    torch.save(ckpt, pack / "deca_model.tar", _use_new_zipfile_serialization=False)
    loaded = load_pack(pack)
    torch.testing.assert_close(loaded.checkpoint["D_detail"]["l1.0.weight"], ckpt["D_detail"]["l1.0.weight"])


def test_landmark_embedding_with_torch_tensors(tmp_path):
    rng = np.random.default_rng(1)
    content = {
        "static_lmk_faces_idx": rng.integers(0, 50, 51),
        "static_lmk_bary_coords": rng.dirichlet(np.ones(3), 51),
        "dynamic_lmk_faces_idx": torch.randint(0, 50, (79, 17)),
        "dynamic_lmk_bary_coords": torch.rand(79, 17, 3),
        "full_lmk_faces_idx": rng.integers(0, 50, (1, 68)),
        "full_lmk_bary_coords": rng.dirichlet(np.ones(3), (1, 68)).astype(np.float32),
    }
    path = tmp_path / "landmark_embedding.npy"
    np.save(path, np.array(content, dtype=object), allow_pickle=True)
    emb = read_landmark_embedding(path)
    np.testing.assert_array_equal(emb.dynamic_lmk_faces_idx, content["dynamic_lmk_faces_idx"].numpy())
    np.testing.assert_allclose(emb.dynamic_lmk_bary_coords, content["dynamic_lmk_bary_coords"].numpy())
    assert emb.full_lmk_faces_idx.shape == (68,) and emb.full_lmk_bary_coords.shape == (68, 3)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_foreign_class_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "was-run"
    data = pickle.dumps({"v_template": _Evil(marker)}, protocol=2)
    with pytest.raises(ForeignClassError, match="system"):
        restricted_loads(data)
    assert not marker.exists()


# ------------------------------------------------------------------ the demo pack and damaged copies
def test_demo_pack_loads(small_pack):
    pack = small_pack
    assert pack.synthetic and "SYNTHETIC" in pack.label
    assert pack.flame.shapedirs.shape[1:] == (3, 400)
    assert pack.flame.J_regressor.shape == (5, pack.flame.n_vertices)
    assert set(pack.checkpoint) == {"E_flame", "E_detail", "D_detail"}
    assert pack.face_eye_mask.shape == (256, 256) and 0 <= pack.face_eye_mask.min() <= pack.face_eye_mask.max() <= 1
    assert pack.albedo is not None and pack.albedo.kind == "BFM"
    np.testing.assert_allclose(pack.flame.J_regressor.sum(1), 1.0, atol=1e-5)


def _damaged_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_check_cli_ok_on_demo_pack(small_pack_dir):
    result = _run_cli("check", str(small_pack_dir))
    assert result.returncode == 0, result.stderr
    assert "generic_model.pkl" in result.stdout and "SYNTHETIC" in result.stdout


def _assert_one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    for needle in needles:
        assert sum(needle in ln for ln in errors) == 1, (needle, result.stderr)
    return errors


def test_check_names_each_damaged_file(small_pack_dir, tmp_path):
    pack = _damaged_copy(small_pack_dir, tmp_path / "damaged")
    # an HTML page saved instead of the weights (the known Google Drive failure)
    (pack / "deca_model.tar").write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning")
    # a truncated pickle
    data = (pack / "generic_model.pkl").read_bytes()
    (pack / "generic_model.pkl").write_bytes(data[: len(data) // 2])
    # a wrong shape
    np.save(pack / "fixed_displacement_256.npy", np.zeros((128, 128)))
    # a landmark file that references a foreign class
    (pack / "landmark_embedding.npy").unlink()
    marker = tmp_path / "was-run"
    with open(pack / "landmark_embedding.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        fh.write(pickle.dumps(_Evil(marker), protocol=2))
    # a missing file
    (pack / "uv_face_mask.png").unlink()

    result = _run_cli("check", str(pack))
    errors = _assert_one_line_error(result, "deca_model.tar", "generic_model.pkl", "fixed_displacement_256.npy",
                                    "landmark_embedding.npy", "uv_face_mask.png")
    text = "\n".join(errors)
    for needle in ("HTML page", "truncated", "(128, 128)", "system, which a model file never needs"):
        assert needle in text, needle
    assert not marker.exists()
    with pytest.raises(AssetError) as info:
        load_pack(pack)
    assert len(info.value.problems) == 5


def test_checkpoint_key_problems_are_named(small_pack_dir, tmp_path):
    pack = _damaged_copy(small_pack_dir, tmp_path / "ckpt")
    ckpt = torch.load(pack / "deca_model.tar", weights_only=True)
    del ckpt["E_flame"]["encoder.conv1.weight"]
    ckpt["D_detail"]["l1.0.weight"] = torch.zeros(10, 181)
    ckpt["E_detail"]["encoder.extra.weight"] = torch.zeros(1)
    for sd in ckpt.values():  # num_batches_tracked may be absent in old checkpoints: tolerated
        for key in [k for k in sd if k.endswith("num_batches_tracked")]:
            del sd[key]
    ckpt["opt"] = {"lr": 1e-4}  # extra top-level keys are tolerated
    torch.save(ckpt, pack / "deca_model.tar")
    result = _run_cli("check", str(pack))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "encoder.conv1.weight" in result.stderr
    assert "l1.0.weight: expected (8192, 181), found (10, 181)" in result.stderr
    assert "encoder.extra.weight" in result.stderr
    assert "num_batches_tracked" not in result.stderr and "opt" not in result.stderr.replace("optional", "")


def test_checkpoint_with_code_is_refused(small_pack_dir, tmp_path):
    pack = _damaged_copy(small_pack_dir, tmp_path / "evil")
    marker = tmp_path / "was-run"
    torch.save({"E_flame": _Evil(marker)}, pack / "deca_model.tar")
    inspection = inspect_pack(pack)
    assert any("deca_model.tar" in p and "weights_only" in p for p in inspection.problems)
    assert not marker.exists()


def test_missing_files_list_role_and_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssetError) as info:
        load_pack(tmp_path / "empty")
    text = str(info.value)
    assert "generic_model.pkl is missing (FLAME 2020 head model)" in text and "flame.is.tue.mpg.de" in text
    assert "FLAME_albedo_from_BFM.npz" not in text  # optional


def test_discovery_order(tmp_path, monkeypatch, small_pack_dir):
    monkeypatch.setenv("CAPTURE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CAPTURE_ASSETS", raising=False)
    with pytest.raises(AssetError, match="no model pack found"):
        resolve_pack_dir(None)
    cache_assets = tmp_path / "cache" / "assets"
    cache_assets.mkdir(parents=True)
    (cache_assets / "generic_model.pkl").write_bytes(b"x")
    assert resolve_pack_dir(None) == cache_assets
    monkeypatch.setenv("CAPTURE_ASSETS", str(small_pack_dir))
    assert resolve_pack_dir(None) == small_pack_dir
    assert resolve_pack_dir(str(tmp_path)) == tmp_path
    with pytest.raises(AssetError, match="not a folder"):
        resolve_pack_dir(str(tmp_path / "nope"))
