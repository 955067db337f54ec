"""`python -m capture.reconstruct IMG [IMG ...] -o OUTDIR`: DECA's single-image reconstruction.

Per image: `<name>_codes.npz`, `<name>_shape.png` / `<name>_shape_detail.png` (grey five-light renders over
the photo), `<name>_lit.png` (SH-lit albedo render over the photo), `<name>.obj` + `.mtl` + texture `.png` +
`_normals.png`. An image without a face (or one that does not read) is reported in one line; the others are
still processed and the exit status is 1 at the end. A folder stands for the images in it, sorted by name.

Nothing is ever written over an input: when an output name would be an input file (`-o` is the photos' own
folder and the texture would be `<name>.png`, a hard link...) or another image's outputs (two `face.*`), the
image's outputs get a suffix (`<name>_recon`, `<name>_recon2`, ...) and its line says so.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .appearance import extract_texture
from .assets import AssetError, open_pack
from .avatar import fit_identity
from .console import add_version_argument, command, plural, prog, say_once
from .conventions import INPUT_SIZE
from .crop import FaceDetector
from .deca import DECA
from .meshio import to_uint8_image, write_obj
from .projection import crop_to_image_ndc
from .sources import CODE_SOURCES, choose_source
from .stills import IMAGE_SUFFIXES, ImageError, astronaut, crop_largest_face, load_image
from .stream.writer import same_file
from .views import composite

# What reconstruct_one writes for a name (write_obj adds the .mtl, the texture .png and _normals.png).
OUTPUT_SUFFIXES = ("_codes.npz", "_shape.png", "_shape_detail.png", "_lit.png", ".obj", ".mtl", ".png", "_normals.png")


def output_name(stem: str, out_dir: Path, inputs, taken: set[str]) -> str:
    """The first of stem, stem_recon, stem_recon2... whose outputs in `out_dir` are none of `inputs` (by path or
    by identity: hard links, symlinks) and none of `taken` (the files of earlier images, which it then joins)."""
    resolved = {os.path.realpath(p) for p in inputs}
    for name in [stem, f"{stem}_recon"] + [f"{stem}_recon{i}" for i in range(2, 1000)]:
        outs = [os.path.realpath(out_dir / f"{name}{suffix}") for suffix in OUTPUT_SUFFIXES]
        if any(o in taken or o in resolved or any(same_file(o, p) for p in inputs) for o in outs):
            continue
        taken.update(outs)
        return name
    raise ImageError(f"{stem}: no free output name in {out_dir}")


def expand_inputs(items: list[str]) -> list[str]:
    """Folders -> the image files in them (sorted by name, by suffix); everything else as given."""
    out = []
    for item in items:
        if item != "astronaut" and os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                print(f"error: {item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})", file=sys.stderr)
            out += found or [None]
        else:
            out.append(item)
    return out


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
    screen = crop_to_image_ndc(rec.geometry.screen, T, INPUT_SIZE, (h, w))
    texture = extract_texture(photo, screen, deca.assets.uv_sampler, deca.assets.face_eye_mask,
                              rec.uv_texture.clamp(0, 1))
    normal_map = to_uint8_image((rec.uv_detail_normals[0] * 0.5 + 0.5).cpu().numpy())
    written += write_obj(out_dir / f"{name}.obj", rec.geometry.vertices[0].cpu().numpy(), deca.pack.uv.faces,
                         deca.pack.uv.uvcoords, deca.pack.uv.uvfaces, texture=to_uint8_image(texture[0].cpu().numpy()),
                         normal_map=normal_map)
    return written


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("capture-reconstruct", "capture.reconstruct"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(parser)
    parser.add_argument("images", nargs="+",
                        help="image files or folders of them; 'astronaut' = skimage's astronaut photo")
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
    say_once(lambda text: print(text, flush=True), pack.label)
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
    items = expand_inputs(args.images)
    inputs = [i for i in items if i is not None and i != "astronaut" and os.path.exists(i)]
    deca = DECA.from_pack(pack, device=args.device)
    failures = sum(1 for i in items if i is None)
    taken: set[str] = set()
    with FaceDetector() as detector:
        for item in items:
            if item is None:
                continue
            stem = "astronaut" if item == "astronaut" else Path(item).stem
            try:
                name = output_name(stem, out_dir, inputs, taken)
                image = astronaut() if item == "astronaut" else load_image(item)
                written = reconstruct_one(deca, detector, image, name, out_dir, codes_from)
                renamed = f" (as {name}: {stem}'s outputs would overwrite an input or another image's)" \
                    if name != stem else ""
                print(f"{item}: wrote {plural(len(written), 'file')} to {out_dir}/{name}*{renamed}")
            except ImageError as exc:
                failures += 1
                print(f"error: {exc}", file=sys.stderr)
            except OSError as exc:
                failures += 1
                print(f"error: {item}: cannot write output ({exc.strerror or exc})", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - one bad image costs its own line, not the batch
                failures += 1
                print(f"error: {item}: failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                      file=sys.stderr)
    if failures:
        print(f"{failures} of {plural(len(items), 'image')} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
