"""Still images: reading a photo and cropping its face the way DECA's TestData does."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .crop import Face, FaceDetector, as_rgb_uint8, crop_to_tensor, crop_transform


class ImageError(Exception):
    """An input image cannot be used (one line: file and reason)."""


def load_image(path: str | Path) -> np.ndarray:
    """Image file -> [H, W, 3] uint8 RGB (grey expanded, alpha dropped, EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return as_rgb_uint8(np.asarray(im.convert("RGBA") if im.mode in ("P", "LA") else im))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


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
