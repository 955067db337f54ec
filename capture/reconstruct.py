"""`python -m capture.reconstruct IMG [IMG ...] -o OUTDIR`: DECA's single-image reconstruction.

Per image: `<name>_codes.npz`, `<name>_shape.png` / `<name>_shape_detail.png` (grey five-light renders over
the photo), `<name>_lit.png` (SH-lit albedo render over the photo), `<name>.obj` + `.mtl` + texture `.png` +
`_normals.png`. An image without a face is reported in one line; the others are still processed and the exit
status is non-zero at the end.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .appearance import extract_texture
from .avatar import fit_identity
from .assets import AssetError, open_pack
from .sources import CODE_SOURCES, choose_source
from .camera import crop_to_image_ndc
from .crop import FaceDetector
from .deca import CROP_SIZE, DECA
from .meshio import to_uint8_image, write_obj
from .stills import ImageError, astronaut, crop_largest_face, load_image
from .views import composite


def reconstruct_one(deca: DECA, detector: FaceDetector, image: np.ndarray, name: str, out_dir: Path,
                    codes_from: str = "network") -> list[Path]:
    """codes_from: 'network' (E_flame, as DECA) or 'landmarks' / 'hybrid' (shape, pose and camera fitted to the
    face mesh, `capture.avatar.fit_identity`)."""
    face_crop = crop_largest_face(image, detector, source=name)
    codes = deca.encode(face_crop.crop[None])
    if codes_from in ("landmarks", "hybrid") and face_crop.face.landmarks is not None:
        codes = fit_identity(deca, face_crop, codes, codes_from)
    h, w = image.shape[:2]
    T = torch.as_tensor(face_crop.image_to_crop, dtype=torch.float32)
    rec = deca.decode(codes, image_size=(h, w), image_to_crop=T)
    photo = torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0

    written = []
    arrays = codes.numpy()
    arrays.update(image_to_crop=face_crop.image_to_crop, face_box=np.asarray(face_crop.face.box),
                  landmarks2d=rec.geometry.landmarks2d[0].cpu().numpy(), synthetic_pack=deca.pack.synthetic)
    np.savez(out_dir / f"{name}_codes.npz", **arrays)
    written.append(out_dir / f"{name}_codes.npz")
    views = rec.views
    pictures = {"shape": composite(views.shape, views.visible, photo),
                "shape_detail": composite(views.shape_detail, views.visible, photo),
                "lit": composite(views.lit.clamp(0, 1), views.alpha, photo)}
    for key, picture in pictures.items():
        path = out_dir / f"{name}_{key}.png"
        Image.fromarray(to_uint8_image(picture[0].cpu().numpy())).save(path)
        written.append(path)

    # texture from the full-resolution photo, like DECA's uv_texture_gt
    screen = crop_to_image_ndc(rec.geometry.screen, T, CROP_SIZE, (h, w))
    texture = extract_texture(photo, screen, deca.uv_sampler, deca.face_eye_mask, rec.uv_texture.clamp(0, 1))
    normal_map = to_uint8_image((rec.uv_detail_normals[0] * 0.5 + 0.5).cpu().numpy())
    written += write_obj(out_dir / f"{name}.obj", rec.geometry.vertices[0].cpu().numpy(), deca.pack.uv.faces,
                         deca.pack.uv.uvcoords, deca.pack.uv.uvfaces, texture=to_uint8_image(texture[0].cpu().numpy()),
                         normal_map=normal_map)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capture.reconstruct", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files; 'astronaut' = skimage's astronaut photo")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--assets", default=None, help="model pack folder, or 'demo' (default: CAPTURE_ASSETS)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--codes-from", default="auto", choices=CODE_SOURCES,
                        help="E_flame's codes (network), shape/pose/camera fitted to the face mesh (landmarks), or "
                             "E_flame's refined by the fit (hybrid); auto = landmarks on a synthetic pack")
    args = parser.parse_args(argv)
    try:
        pack = open_pack(args.assets)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(pack.label, flush=True)
    codes_from, why = choose_source(args.codes_from, pack.synthetic)
    print(f"codes from {codes_from} ({why})", flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA GPU is available here (use --device cpu)", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create output folder {out_dir}: {exc.strerror}", file=sys.stderr)
        return 2
    deca = DECA.from_pack(pack, device=args.device)
    failures = 0
    with FaceDetector() as detector:
        for item in args.images:
            name = "astronaut" if item == "astronaut" else Path(item).stem
            try:
                image = astronaut() if item == "astronaut" else load_image(item)
                written = reconstruct_one(deca, detector, image, name, out_dir, codes_from)
                print(f"{item}: wrote {len(written)} files to {out_dir}/{name}*")
            except ImageError as exc:
                failures += 1
                print(f"error: {exc}", file=sys.stderr)
            except OSError as exc:
                failures += 1
                print(f"error: {item}: cannot write output ({exc.strerror})", file=sys.stderr)
    if failures:
        print(f"{failures} of {len(args.images)} image(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
