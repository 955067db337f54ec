"""The crop's axis-aligned bilinear sampling (`capture.crop._warp_separable`) in one compiled pass.

numpy gathers the needed rows, weighs them, gathers the columns and weighs those: several [224, ~band, 3] float32
temporaries, ~2 ms a crop (E_flame's input, every frame in the network and hybrid modes). This pass does the same
float32 arithmetic in the same order per output value, (img[y0, x0] wy0 + img[y1, x0] wy1) wx0 + (img[y0, x1] wy0
+ img[y1, x1] wy1) wx1, then x 1/255: bit-identical to the numpy steps (no FMA contraction), and it can write
the channels-first layout E_flame takes directly.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np

from .compiled import CompiledKernel

_SOURCE = r"""
#include <stdint.h>

/* img [H, W, 3] uint8 (rows `stride` bytes apart); per output row i: source rows y0[i], y1[i] with weights wy0[i],
   wy1[i]; per output column j: source columns x0[j], x1[j], weights wx0[j], wx1[j] (indices in range). out:
   [n_rows, n_cols, 3] (chw = 0) or [3, n_rows, n_cols] (chw = 1) float32, each value times `scale`. */
void capture_warp_separable(const uint8_t *img, int64_t stride, const int64_t *y0, const int64_t *y1,
                            const float *wy0, const float *wy1, int64_t n_rows, const int64_t *x0,
                            const int64_t *x1, const float *wx0, const float *wx1, int64_t n_cols, float scale,
                            int chw, float *out)
{
    for (int64_t i = 0; i < n_rows; ++i) {
        const uint8_t *top = img + y0[i] * stride, *bottom = img + y1[i] * stride;
        const float a = wy0[i], b = wy1[i];
        for (int64_t j = 0; j < n_cols; ++j) {
            const uint8_t *t0 = top + 3 * x0[j], *b0 = bottom + 3 * x0[j];
            const uint8_t *t1 = top + 3 * x1[j], *b1 = bottom + 3 * x1[j];
            for (int c = 0; c < 3; ++c) {
                const float left = (float)t0[c] * a + (float)b0[c] * b;
                const float right = (float)t1[c] * a + (float)b1[c] * b;
                const float v = (left * wx0[j] + right * wx1[j]) * scale;
                if (chw) out[(c * n_rows + i) * n_cols + j] = v;
                else out[(i * n_cols + j) * 3 + c] = v;
            }
        }
    }
}
"""

_p, _i64 = ctypes.c_void_p, ctypes.c_int64
_KERNEL = CompiledKernel("warp", _SOURCE, functions={
    "capture_warp_separable": (None, [_p, _i64] + [_p] * 4 + [_i64] + [_p] * 4 + [_i64, ctypes.c_float,
                                                                                 ctypes.c_int, _p]),
})


def kernel_error() -> Optional[str]:
    """None when the compiled pass is available (compiling it on first use), else why not."""
    return _KERNEL.error()


def warp_separable(img: np.ndarray, rows: tuple, cols: tuple, scale: float, chw: bool = False) -> np.ndarray:
    """img [H, W, 3] uint8 with C-contiguous rows; rows = (y0, y1, wy0, wy1), cols = (x0, x1, wx0, wx1) as
    `capture.crop._taps` makes them (indices clamped into the image) -> [n_rows, n_cols, 3] float32 (chw:
    [3, n_rows, n_cols])."""
    H, W = img.shape[:2]
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or img.strides[1:] != (3, 1):
        raise ValueError(f"warp_separable: expected [H, W, 3] uint8 with contiguous rows, got {img.shape} {img.dtype}")
    y0, y1, wy0, wy1 = (np.ascontiguousarray(a, dt) for a, dt in zip(rows, (np.int64, np.int64, np.float32,
                                                                           np.float32)))
    x0, x1, wx0, wx1 = (np.ascontiguousarray(a, dt) for a, dt in zip(cols, (np.int64, np.int64, np.float32,
                                                                           np.float32)))
    for name, index, n in (("rows", (y0, y1), H), ("columns", (x0, x1), W)):
        if any(a.size and (int(a.min()) < 0 or int(a.max()) >= n) for a in index):
            raise ValueError(f"warp_separable: {name} outside the image's {n}")
    n_rows, n_cols = y0.size, x0.size
    out = np.empty((3, n_rows, n_cols) if chw else (n_rows, n_cols, 3), np.float32)
    _KERNEL.function("capture_warp_separable")(
        img.ctypes.data, img.strides[0], y0.ctypes.data, y1.ctypes.data, wy0.ctypes.data, wy1.ctypes.data, n_rows,
        x0.ctypes.data, x1.ctypes.data, wx0.ctypes.data, wx1.ctypes.data, n_cols, float(scale), int(chw),
        out.ctypes.data)
    return out
