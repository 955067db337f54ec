"""Still images: reading a photo and cropping its face the way DECA's TestData does."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .crop import Face, FaceDetector, as_rgb_uint8, crop_to_tensor, crop_transform


class ImageError(Exception):
    """An input image cannot be used (one line: file and reason)."""


# Larger pictures are refused before they are decoded: a few-kB PNG can declare gigapixels (a decompression
# bomb) and DECA crops the face to 224x224 anyway. 100 MP is above any camera photo users bring.
MAX_PIXELS = 100_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _to_rgb(im) -> np.ndarray:
    """A Pillow image of any mode -> [H, W, 3] uint8 sRGB-ish RGB."""
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (PNG, TIFF): Pillow keeps the full range, scale it rather than clip it
        a = np.asarray(im, dtype=np.float64)
        scale = 257.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 1.0
        return as_rgb_uint8(np.clip(a / scale + 0.5, 0, 255).astype(np.uint8))
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        return as_rgb_uint8(np.clip(a + 0.5, 0, 255).astype(np.uint8))
    if mode == "CMYK":
        icc = im.info.get("icc_profile")
        if icc:
            import io

            from PIL import ImageCms

            try:
                return np.asarray(ImageCms.profileToProfile(im, io.BytesIO(icc), ImageCms.createProfile("sRGB"),
                                                            outputMode="RGB"))
            except (ImageCms.PyCMSError, OSError, ValueError):
                pass  # a broken profile: Pillow's plain conversion below
        return np.asarray(im.convert("RGB"))
    if mode in ("P", "PA", "LA", "La", "RGBA", "RGBa") or "transparency" in im.info:
        # composite transparent pixels on grey (what is under them is arbitrary, often black or garbage)
        rgba = im.convert("RGBA")
        grey = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return np.asarray(Image.alpha_composite(grey, rgba).convert("RGB"))
    if mode in ("RGB", "L"):
        return as_rgb_uint8(np.asarray(im))
    return np.asarray(im.convert("RGB"))  # 1, YCbCr, LAB, HSV, I;16 variants Pillow converts itself


def load_image(path: str | Path) -> np.ndarray:
    """Image file -> [H, W, 3] uint8 RGB: every mode Pillow reads (16-bit scaled, CMYK through its ICC profile,
    palette and alpha composited on grey), EXIF orientation applied, the first frame of an animation;
    ImageError (one line) for anything unreadable or larger than MAX_PIXELS."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, expected an image file")
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS decides below
            im = Image.open(path)
        with im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{path}: {w}x{h} is {w * h / 1e6:.0f} megapixels, more than the {MAX_PIXELS // 10**6}"
                                 " MP limit (a decompression bomb, or scale the photo down)")
            im.seek(0)  # an animation's first frame
            im = ImageOps.exif_transpose(im)
            return np.array(_to_rgb(im), dtype=np.uint8, order="C")  # a writable copy (torch wants one)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: refused as a decompression bomb (more than {MAX_PIXELS // 10**6} MP)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, EOFError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None


@dataclass
class FaceCrop:
    image: np.ndarray  # [H, W, 3] uint8, the full photo
    face: Face
    image_to_crop: np.ndarray  # [3, 3] original pixels -> crop pixels
    crop: torch.Tensor  # [3, 224, 224] float32 0..1


def crop_largest_face(image: np.ndarray, detector: FaceDetector, source: str = "image") -> FaceCrop:
    """The largest face's DECA crop; raises ImageError when there is no face."""
    faces = detector.detect(image)
    if not faces:
        raise ImageError(f"{source}: no face found")
    face = faces[0]
    T = crop_transform(face.box)
    return FaceCrop(image=image, face=face, image_to_crop=T, crop=crop_to_tensor(image, T))


def astronaut() -> np.ndarray:
    """skimage.data.astronaut(): a real, public-domain frontal face photo that loads offline."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())
