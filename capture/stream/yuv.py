"""RGB -> YUV 4:2:0 (BT.709) in one compiled pass: the writer's encoder frame straight from the picture.

swscale's rgb24 -> yuv420p takes 1.1 ms at 1280x360 and 4.4 ms at 2560x720 (a 720p input side by side with its
avatar) on one thread here; this pass, vectorised for the machine's CPU, 0.25 and 1.0 ms.

The definition, on 0..255 codes, with BT.709's Kr = 0.2126, Kb = 0.0722, Kg = 1 - Kr - Kb and Y' = Kr R + Kg G +
Kb B: limited range ("MPEG", yuv420p) Y = 16 + 219/255 Y', Cb = 128 + 224/255 (B - Y') / (2 (1 - Kb)), Cr = 128
+ 224/255 (R - Y') / (2 (1 - Kr)); full range ("JPEG", yuvj420p) the same with 255/255 and no 16. The chroma of
each 2 x 2 block is that of its mean RGB (centre-sited, as swscale's default). Rounded to nearest. swscale
computes the same to a level or two (its own fixed point; tests/test_stream_io.py compares both).
"""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np

from ..compiled import CompiledKernel

KR, KB = 0.2126, 0.0722  # BT.709
FRACTION_BITS = 16

_SOURCE = r"""
#include <stdint.h>

static inline uint8_t clamp8(int32_t v) { return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v)); }

/* Each loop on its own and over one row, so that the compiler vectorises it (byte-interleaved RGB needs the
   machine's shuffles: built with -march=native). */
__attribute__((noinline)) static void luma_row(const uint8_t *restrict p, int64_t w, uint8_t *restrict y,
                                               int32_t r, int32_t g, int32_t b, int32_t o) {
    for (int64_t i = 0; i < w; ++i)
        y[i] = clamp8((r * p[3 * i] + g * p[3 * i + 1] + b * p[3 * i + 2] + o) >> 16);
}

/* per pixel column: the chroma weights applied to the sum of the two rows' pixels (not yet rounded) */
__attribute__((noinline)) static void column_chroma(const uint8_t *restrict p0, const uint8_t *restrict p1,
                                                    int64_t w, int32_t *restrict cu, int32_t *restrict cv,
                                                    const int32_t *c) {
    const int32_t ur = c[4], ug = c[5], ub = c[6], vr = c[8], vg = c[9], vb = c[10];
    for (int64_t i = 0; i < w; ++i) {
        const int32_t r = p0[3 * i] + p1[3 * i], g = p0[3 * i + 1] + p1[3 * i + 1];
        const int32_t b = p0[3 * i + 2] + p1[3 * i + 2];
        cu[i] = ur * r + ug * g + ub * b;
        cv[i] = vr * r + vg * g + vb * b;
    }
}

__attribute__((noinline)) static void column_pairs(const int32_t *restrict cs, int64_t w2, uint8_t *restrict out,
                                                   int32_t o) {
    for (int64_t i = 0; i < w2; ++i)
        out[i] = clamp8((cs[2 * i] + cs[2 * i + 1] + o) >> 16);
}

/* rgb [h, w, 3] (rows `rgb_stride` bytes apart), h and w even -> planes y [h, w], u and v [h/2, w/2] with their
   line sizes. c: Y's three weights and offset, then Cb's and Cr's, in 1/2^16 units; the chroma weights apply to
   the sum of a 2 x 2 block. work: 2 w int32. */
void capture_rgb_to_yuv420(const uint8_t *rgb, int64_t h, int64_t w, int64_t rgb_stride,
                           uint8_t *y, int64_t y_stride, uint8_t *u, int64_t u_stride,
                           uint8_t *v, int64_t v_stride, const int32_t *c, int32_t *work) {
    for (int64_t j = 0; j < h; j += 2) {
        const uint8_t *p0 = rgb + j * rgb_stride, *p1 = p0 + rgb_stride;
        luma_row(p0, w, y + j * y_stride, c[0], c[1], c[2], c[3]);
        luma_row(p1, w, y + (j + 1) * y_stride, c[0], c[1], c[2], c[3]);
        column_chroma(p0, p1, w, work, work + w, c);
        column_pairs(work, w / 2, u + (j / 2) * u_stride, c[7]);
        column_pairs(work + w, w / 2, v + (j / 2) * v_stride, c[11]);
    }
}
"""

_i64 = ctypes.c_int64
_KERNEL = CompiledKernel("rgb_to_yuv", _SOURCE, native=True, functions={
    "capture_rgb_to_yuv420": (None, [ctypes.c_void_p, _i64, _i64, _i64, ctypes.c_void_p, _i64, ctypes.c_void_p,
                                     _i64, ctypes.c_void_p, _i64, ctypes.c_void_p, ctypes.c_void_p]),
})


def coefficients(full_range: bool) -> np.ndarray:
    """The kernel's 12 fixed-point numbers (module docstring's definition): Y's, Cb's and Cr's R, G, B weights
    and offset (rounding included), the chroma weights for the sum of a 2 x 2 block."""
    kg = 1.0 - KR - KB
    sy, sc, base = (1.0, 1.0, 0.0) if full_range else (219 / 255, 224 / 255, 16.0)
    one = float(1 << FRACTION_BITS)
    luma = np.array([KR, kg, KB]) * sy
    cb = np.array([-KR, -kg, 1.0 - KB]) * sc / (2 * (1 - KB)) / 4
    cr = np.array([1.0 - KR, -kg, -KB]) * sc / (2 * (1 - KR)) / 4
    rows = [(luma, base), (cb, 128.0), (cr, 128.0)]
    return np.array([x for w, off in rows for x in (*np.round(w * one), round((off + 0.5) * one))], np.int32)


_COEFFICIENTS = {full: coefficients(full) for full in (False, True)}


def kernel_error() -> Optional[str]:
    """None when the compiled pass is available (compiling it on first use), else why not."""
    return _KERNEL.error()


def rgb_to_yuv420(image: np.ndarray, planes, full_range: bool = False) -> None:
    """image [H, W, 3] uint8 RGB (H, W even; rows contiguous) into `planes` = (Y, U, V) of a yuv420p frame,
    each with `.buffer_ptr`, `.line_size`, `.width` and `.height` (PyAV's VideoPlane)."""
    h, w = image.shape[:2]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or h % 2 or w % 2:
        raise ValueError(f"rgb_to_yuv420: expected an even-sized [H, W, 3] uint8 image, got {list(image.shape)} "
                         f"{image.dtype}")
    if image.strides[1:] != (3, 1):
        raise ValueError("rgb_to_yuv420: the image's pixels must be contiguous within a row")
    py, pu, pv = planes
    if (py.width, py.height) != (w, h) or any((p.width, p.height) != (w // 2, h // 2) for p in (pu, pv)):
        raise ValueError(f"rgb_to_yuv420: planes {[(p.width, p.height) for p in planes]} do not fit a {w}x{h} image")
    c = _COEFFICIENTS[bool(full_range)]
    work = np.empty(2 * w, np.int32)
    _KERNEL.function("capture_rgb_to_yuv420")(
        image.ctypes.data, h, w, image.strides[0], py.buffer_ptr, py.line_size, pu.buffer_ptr, pu.line_size,
        pv.buffer_ptr, pv.line_size, c.ctypes.data, work.ctypes.data)
