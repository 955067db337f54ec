"""Single-image reconstruction: DECA.encode/decode on the demo pack and the reconstruct CLI on a real photo."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from capture.crop import FaceDetector, crop_to_tensor, crop_transform
from capture.deca import DECA
from capture.projection import crop_to_image_ndc
from capture.stills import astronaut


@pytest.fixture(scope="module")
def deca(demo_pack):
    return DECA.from_pack(demo_pack)


def test_encode_decode_shapes_and_ranges(deca):
    image = astronaut()
    with FaceDetector() as det:
        face = det.detect(image)[0]
    T = crop_transform(face.box)
    crop = crop_to_tensor(image, T)[None]
    codes = deca.encode(crop)
    assert codes.shape.shape == (1, 100) and codes.light.shape == (1, 9, 3) and codes.detail.shape == (1, 128)
    rec = deca.decode(codes)
    v = deca.pack.flame.n_vertices
    assert rec.geometry.vertices.shape == (1, v, 3)
    assert rec.displacement_map.shape == (1, 1, 256, 256) and rec.uv_detail_normals.shape == (1, 3, 256, 256)
    assert rec.views.lit.shape == (1, 3, 224, 224)
    # the demo camera puts the head inside the crop, landmarks included
    lmk = rec.geometry.landmarks2d[0, :, :2]
    assert lmk.abs().max() < 1.0
    assert 0.1 < rec.views.alpha.mean() < 0.9
    # detail normals are unit length inside the face-eye mask (but at UV seams, where DECA's grid normals
    # mix both sides of the cut)
    norms = rec.uv_detail_normals[0].norm(dim=0)[(deca.assets.face_eye_mask > 0.99) & deca.assets.uv_sampler.coverage]
    assert ((norms - 1).abs() < 1e-3).float().mean() > 0.98
    # the same codes rendered in the original frame land inside the detected face's crop square
    h, w = image.shape[:2]
    screen = crop_to_image_ndc(rec.geometry.landmarks2d, torch.as_tensor(T, dtype=torch.float32), 224, (h, w))
    px = (screen[0, :, 0] + 1) * w / 2 - 0.5
    side = 224 / T[0, 0]
    x0 = -T[0, 2] / T[0, 0]
    assert x0 - 1 <= px.min() and px.max() <= x0 + side + 1


@pytest.mark.slow
def test_reconstruct_cli_writes_every_file(tmp_path, demo_pack_dir, demo_pack):
    from capture import reconstruct

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank)
    rc = reconstruct.main(["astronaut", str(blank), "-o", str(tmp_path / "out"), "--assets", str(demo_pack_dir)])
    assert rc == 1  # the blank image has no face; the astronaut is still processed
    out = tmp_path / "out"
    for name in ("astronaut_codes.npz", "astronaut_shape.png", "astronaut_shape_detail.png", "astronaut_lit.png",
                 "astronaut.obj", "astronaut.mtl", "astronaut.png", "astronaut_normals.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("blank*"))
    codes = np.load(out / "astronaut_codes.npz")
    x0, y0, x1, y1 = codes["face_box"]
    # the astronaut's face, measured by hand on the 512x512 photo: eye centres ~(202, 102) and (249, 102),
    # mouth ~y 145, chin ~y 175: the box holds them all and is not much larger than the face
    assert x0 < 195 and x1 > 256 and y0 < 98 and y1 > 165 and (x1 - x0) < 130 and (y1 - y0) < 130
    obj = (out / "astronaut.obj").read_text()
    assert "mtllib astronaut.mtl" in obj and obj.count("\nf ") == len(demo_pack.uv.faces)
    assert "disp astronaut_normals.png" in (out / "astronaut.mtl").read_text()
    photo = np.asarray(Image.open(out / "astronaut_shape.png"))
    assert photo.shape == (512, 512, 3)


@pytest.mark.slow
def test_reconstruct_into_the_photos_folder_never_writes_over_an_input(tmp_path, demo_pack_dir, capsys):
    """-o is the photos' own folder: face.png would be face's UV texture. Given as a folder, with a broken
    image and a hard link among them: every input survives byte for byte, the bad one costs one line."""
    import os

    from capture import reconstruct

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut()).save(photos / "face.png")
    os.link(photos / "face.png", photos / "face_shape.png")  # also what face's grey render would be called
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / "notes.txt").write_text("not an image: ignored")
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    rc = reconstruct.main([str(photos), "-o", str(photos), "--assets", str(demo_pack_dir)])
    captured = capsys.readouterr()
    assert rc == 1  # the broken image
    assert "Traceback" not in captured.err
    assert [ln for ln in captured.err.splitlines() if ln.startswith("error:")] == [
        ln for ln in captured.err.splitlines() if "broken.jpg" in ln]
    for name, data in before.items():
        assert (photos / name).read_bytes() == data, name
    assert (photos / "face_recon.obj").is_file() and (photos / "face_recon.png").is_file()
    assert (photos / "face_shape_recon.obj").is_file()  # the hard link is its own image with its own name
    assert "as face_recon" in captured.out
