"""Short clips of a real face (skimage's astronaut photo, public domain) for the streaming tests."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from capture.stream.clips import make_test_clip

SIZE = (320, 240)


@functools.lru_cache(maxsize=1)
def _photo() -> np.ndarray:
    from skimage import data

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((360, 360)))
    photo.setflags(write=False)
    return photo


def _astronaut_frame(shift: int, size=SIZE) -> np.ndarray:
    photo = _photo()  # decoded and resized once (10 of a frame's 14 ms)
    w, h = size
    canvas = np.full((h, w, 3), 90, np.uint8)
    x0 = 20 + shift
    crop = photo[0:h, 40 : 40 + w - x0]
    canvas[:, x0 : x0 + crop.shape[1]] = crop
    return canvas


def _blank(size=SIZE) -> np.ndarray:
    w, h = size
    return np.full((h, w, 3), 90, np.uint8)


def make_face_clip(path: Path, frames: int, *, audio: bool = True, missing=(), fps=25, pts=None):
    def draw(i, size):
        return _blank(size) if i in missing else _astronaut_frame(2 * (i % 10), size)

    return make_test_clip(path, frames=frames, size=SIZE, fps=fps, audio=audio, draw=draw, pts=pts)
