"""An output picture kept as the parts it is made of: a background colour and rectangles of pixels over it.

The side-by-side picture of a 1280x720 input is 2560x720. Built in RGB (the input copied into the left half, the
grey background into the right, the head pasted over it) and then converted to the encoder's YUV 4:2:0, it moves
~18 MB a frame through memory. Kept as its parts, the writer converts each part straight into its place in the
YUV planes (the input, the head's rectangle) and fills the rest with the background's codes: ~6 MB, and the same
bytes as converting the whole RGB picture, because every part's corners lie on even pixel coordinates, so that
no 2 x 2 chroma block takes pixels from two parts. `rgb()` builds the whole RGB picture for whoever needs one
(a display, the API, an encoder that takes another pixel format).

A picture with a transparent background (`--background transparent`) also carries its coverage as parts:
`alpha`, rectangles of uint8 masks (255 where the head or the input is, 0 elsewhere, between on the head's
antialiased outline: `capture.render.antialias`); `rgba()` builds the whole
RGBA picture for the writers that keep transparency.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .stream import yuv


class Picture:
    """height x width RGB pixels: `background` (uint8 RGB, or None when the parts cover everything) under
    `parts`, each (top, left, [h, w, 3] uint8 RGB) over the ones before it. The parts are not copied: whoever
    makes a Picture hands them over and does not write to them again."""

    dtype = np.dtype(np.uint8)

    def __init__(self, height: int, width: int, parts: Sequence[tuple[int, int, np.ndarray]],
                 background: Optional[Sequence[int]] = None,
                 alpha: Optional[Sequence[tuple[int, int, np.ndarray]]] = None):
        self.height, self.width = int(height), int(width)
        # None: opaque; else the coverage, (top, left, [h, w] uint8) parts over 0 (each may be a broadcast view)
        self.alpha = None if alpha is None else tuple((int(top), int(left), mask) for top, left, mask in alpha)
        self.background = None if background is None else np.asarray(background, np.uint8).reshape(3)
        self.parts = tuple((int(top), int(left), image) for top, left, image in parts)
        for top, left, image in self.parts:
            h, w = image.shape[:2]
            if (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or top < 0 or left < 0
                    or top + h > self.height or left + w > self.width):
                raise ValueError(f"Picture: a part {list(image.shape)} {image.dtype} at ({top}, {left}) does not lie "
                                 f"inside a {self.width}x{self.height} RGB picture")
        if self.background is None and not self._first_covers_all():
            raise ValueError("Picture: without a background the first part must cover the whole picture")
        self._rgb: Optional[np.ndarray] = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, 3

    def _first_covers_all(self) -> bool:
        return bool(self.parts) and self.parts[0][:2] == (0, 0) and self.parts[0][2].shape[:2] == (self.height,
                                                                                                    self.width)

    def rgb(self) -> np.ndarray:
        """The whole picture, [height, width, 3] uint8 (built on first use, then kept)."""
        if self._rgb is None:
            if self._first_covers_all() and len(self.parts) == 1:
                out = np.ascontiguousarray(self.parts[0][2])
            else:
                out = np.empty(self.shape, np.uint8)
                for a, b in self._uncovered_columns():
                    fill(out[:, a:b], self.background)
                for top, left, image in self.parts:
                    h, w = image.shape[:2]
                    out[top:top + h, left:left + w] = image
            self._rgb = out
        return self._rgb

    def coverage(self) -> np.ndarray:
        """The picture's alpha, [height, width] uint8 (255 everywhere when opaque)."""
        if self.alpha is None:
            return np.full((self.height, self.width), 255, np.uint8)
        out = np.zeros((self.height, self.width), np.uint8)
        for top, left, mask in self.alpha:
            h, w = mask.shape[:2]
            out[top:top + h, left:left + w] = mask
        return out

    def rgba(self) -> np.ndarray:
        """The whole picture with its coverage, [height, width, 4] uint8."""
        out = np.empty((self.height, self.width, 4), np.uint8)
        out[..., :3] = self.rgb()
        out[..., 3] = self.coverage()
        return out

    # ------------------------------------------------------------------------------------------ YUV 4:2:0
    def fits_yuv420(self) -> bool:
        """Whether `to_yuv420` can convert the parts where they are: even sizes and corners, rows contiguous."""
        even = self.height % 2 == 0 and self.width % 2 == 0
        return even and all(top % 2 == 0 and left % 2 == 0 and image.shape[0] % 2 == 0 and image.shape[1] % 2 == 0
                            and image.strides[1:] == (3, 1) for top, left, image in self.parts)

    def to_yuv420(self, planes, full_range: bool = False) -> None:
        """Into `planes` = (Y, U, V) of a yuv420p frame of the picture's size (PyAV's VideoPlanes): the bytes of
        `stream.yuv.rgb_to_yuv420(self.rgb(), planes)`, converting each part once and filling the rest."""
        if not self.fits_yuv420():
            yuv.rgb_to_yuv420(self.rgb(), planes, full_range)
            return
        if self._rgb is not None:  # built already (shown, say): one pass over it
            yuv.rgb_to_yuv420(self._rgb, planes, full_range)
            return
        y, u, v = yuv.plane_views(planes)
        if y.shape != (self.height, self.width):
            raise ValueError(f"Picture.to_yuv420: planes of {y.shape[1]}x{y.shape[0]} for a "
                             f"{self.width}x{self.height} picture")
        if self.background is not None:
            codes = _colour_codes(tuple(int(c) for c in self.background), bool(full_range))
            for a, b in self._uncovered_columns():  # the first part's corners are even: so are a and b
                y[:, a:b] = codes[0]
                u[:, a // 2:b // 2] = codes[1]
                v[:, a // 2:b // 2] = codes[2]
        for top, left, image in self.parts:
            h, w = image.shape[:2]
            rows, cols = slice(top // 2, (top + h) // 2), slice(left // 2, (left + w) // 2)  # chroma
            yuv.convert_into(image, y[top:top + h, left:left + w], u[rows, cols], v[rows, cols], full_range)

    def _uncovered_columns(self) -> list[tuple[int, int]]:
        """Column ranges the background shows in: all but those of a first part that spans every row (none
        without a background: the first part covers everything)."""
        if self.background is None:
            return []
        if not self.parts or self.parts[0][:1] != (0,) or self.parts[0][2].shape[0] != self.height:
            return [(0, self.width)]
        left, w = self.parts[0][1], self.parts[0][2].shape[1]
        return [(a, b) for a, b in ((0, left), (left + w, self.width)) if b > a]


_CODES: dict[tuple, tuple[int, int, int]] = {}


def _colour_codes(colour: tuple[int, int, int], full_range: bool) -> tuple[int, int, int]:
    key = (colour, full_range)
    if key not in _CODES:
        _CODES[key] = yuv.colour_codes(colour, full_range)
    return _CODES[key]


def fill(region: np.ndarray, colour) -> None:
    """Every pixel of `region` [h, w, 3] uint8 (a view may be given) to one RGB colour. numpy's broadcast of a
    3-vector runs pixel by pixel (3.6 ms for 1280x720 here); one row, then that row copied down: 0.1 ms."""
    if region.shape[0] and region.shape[1]:
        region[0] = colour
        region[1:] = region[:1]


def even_box(top: int, left: int, height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The rectangle (top, left, height, width) widened to even corners, kept inside an (H, W) picture (an odd
    H or W leaves its last row or column as the edge)."""
    H, W = size
    first_row, first_col = top - top % 2, left - left % 2
    end_row = min(H, top + height + (top + height) % 2)
    end_col = min(W, left + width + (left + width) % 2)
    return first_row, first_col, end_row - first_row, end_col - first_col


# --background names: the default grey is what 0.12 in a float picture rounds to (capture.retarget.BACKGROUND)
BACKGROUNDS = {"grey": (31, 31, 31), "gray": (31, 31, 31), "black": (0, 0, 0), "white": (255, 255, 255),
               "green": (0, 177, 64), "blue": (0, 71, 187), "magenta": (255, 0, 255)}
TRANSPARENT = "transparent"


def parse_background(text: str) -> Optional[tuple[int, int, int]]:
    """'--background' -> an RGB colour (a name of BACKGROUNDS, '#rrggbb', or 'r,g,b' in 0..255), or None for
    'transparent'. ValueError with the forms it takes otherwise. ('green' and 'blue' are the chroma-key
    greens and blues of film and broadcast.)"""
    name = text.strip().lower()
    if name == TRANSPARENT:
        return None
    if name in BACKGROUNDS:
        return BACKGROUNDS[name]
    try:
        if name.startswith("#") and len(name) == 7:
            return tuple(int(name[i:i + 2], 16) for i in (1, 3, 5))
        parts = [int(v) for v in name.split(",")]
        if len(parts) == 3 and all(0 <= v <= 255 for v in parts):
            return tuple(parts)
    except ValueError:
        pass
    raise ValueError(f"--background {text!r}: give a colour ({', '.join(sorted(BACKGROUNDS))}, #rrggbb or r,g,b in"
                     f" 0..255) or '{TRANSPARENT}'")
