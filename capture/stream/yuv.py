"""RGB -> YUV 4:2:0 (BT.709) in one compiled pass: the writer's encoder frame straight from the picture.

swscale's rgb24 -> yuv420p takes 1.1 ms at 1280x360 and 4.4 ms at 2560x720 (a 720p input side by side with its
avatar) on one thread here; this pass, vectorised for the machine's CPU, 0.25 and 1.0 ms (AMD EPYC). On a CPU with
AVX-512 VBMI it converts 32 pixels of a row pair per step (byte permutes and word multiply-adds, the same integer
arithmetic): 0.11 and 0.44 ms with the picture in cache, 1.1 ms at 2560x720 straight from a fresh picture into a
fresh frame (there memory and first-touch page faults take most of it), against 0.43, 1.74 and 1.9 ms for the
compiler-vectorised loops (Intel Xeon, Sapphire Rapids).

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

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__)
#include <immintrin.h>

/* Two words (lo, hi) in each dword, as _mm512_madd_epi16 pairs them: the low word with the even element. */
static inline __m512i word_pair(int32_t lo, int32_t hi) {
    return _mm512_set1_epi32((int32_t)(((uint32_t)(uint16_t)lo) | ((uint32_t)(uint16_t)hi << 16)));
}

static inline int fits_word(int32_t v) { return v >= -32768 && v <= 32767; }

/* The same integers as the loops below, 32 pixels of a row pair at a time: each dword holds two byte lanes that
   vpermb spreads into words (the rest zeroed), vpmaddwd multiplies and adds them in pairs. Luma pairs (R, G) and
   (B, G): G's weight is split in two so that every factor fits a signed word. Chroma pairs the two columns of a
   2 x 2 block after adding its two rows, which is the scalar code's per-column sums added in pairs (integers: the
   same values). Every row pair of the picture (arguments as capture_rgb_to_yuv420's); returns the pixels done in
   each row (a multiple of 32), or 0 when a weight does not fit a word. */
static int64_t rows_avx512(const uint8_t *rgb, int64_t h, int64_t w, int64_t rgb_stride, uint8_t *y,
                           int64_t y_stride, uint8_t *u, int64_t u_stride, uint8_t *v, int64_t v_stride,
                           const int32_t *c) {
    const int32_t g_hi = c[1] > 32767 ? 32767 : (c[1] < -32768 ? -32768 : c[1]), g_lo = c[1] - g_hi;
    if (!(fits_word(c[0]) && fits_word(c[2]) && fits_word(g_lo)))
        return 0;
    for (int k = 4; k < 11; ++k)  /* Cb's and Cr's weights (c[7] and c[11] are offsets) */
        if (k != 7 && !fits_word(c[k])) return 0;
    uint8_t rg[64], bg[64], ch[3][64];
    for (int i = 0; i < 16; ++i) {
        rg[4 * i] = (uint8_t)(3 * i); rg[4 * i + 2] = (uint8_t)(3 * i + 1);
        bg[4 * i] = (uint8_t)(3 * i + 2); bg[4 * i + 2] = (uint8_t)(3 * i + 1);
        rg[4 * i + 1] = rg[4 * i + 3] = bg[4 * i + 1] = bg[4 * i + 3] = 0;
        for (int k = 0; k < 3; ++k) {  /* channel k of pixels 2i and 2i + 1 */
            ch[k][4 * i] = (uint8_t)(6 * i + k); ch[k][4 * i + 2] = (uint8_t)(6 * i + 3 + k);
            ch[k][4 * i + 1] = ch[k][4 * i + 3] = 0;
        }
    }
    const __mmask64 even_bytes = 0x5555555555555555ULL, px16 = 0x0000FFFFFFFFFFFFULL;
    const __mmask64 tail32 = 0x00000000FFFFFFFFULL;
    const __m512i i_rg = _mm512_loadu_si512(rg), i_bg = _mm512_loadu_si512(bg);
    const __m512i i_r = _mm512_loadu_si512(ch[0]), i_g = _mm512_loadu_si512(ch[1]), i_b = _mm512_loadu_si512(ch[2]);
    const __m512i w_rg = word_pair(c[0], g_hi), w_bg = word_pair(c[2], g_lo), o_y = _mm512_set1_epi32(c[3]);
    const __m512i u_r = word_pair(c[4], c[4]), u_g = word_pair(c[5], c[5]), u_b = word_pair(c[6], c[6]);
    const __m512i v_r = word_pair(c[8], c[8]), v_g = word_pair(c[9], c[9]), v_b = word_pair(c[10], c[10]);
    const __m512i o_u = _mm512_set1_epi32(c[7]), o_v = _mm512_set1_epi32(c[11]), zero = _mm512_setzero_si512();
    const int64_t done = w / 32 * 32;
    for (int64_t j = 0; j < h; j += 2) {
        const uint8_t *p0 = rgb + j * rgb_stride, *p1 = p0 + rgb_stride;
        uint8_t *y0 = y + j * y_stride, *y1 = y0 + y_stride;
        uint8_t *uj = u + (j / 2) * u_stride, *vj = v + (j / 2) * v_stride;
        for (int64_t i = 0; i < done; i += 32) {
            const uint8_t *rows[2] = {p0 + 3 * i, p1 + 3 * i};
            uint8_t *outs[2] = {y0 + i, y1 + i};
            __m512i lo[2], hi[2];
            for (int r = 0; r < 2; ++r) {
                lo[r] = _mm512_loadu_si512(rows[r]);
                hi[r] = _mm512_maskz_loadu_epi8(tail32, rows[r] + 64);
                for (int half = 0; half < 2; ++half) {  /* luma of 16 pixels: 48 bytes */
                    const __m512i px = _mm512_maskz_loadu_epi8(px16, rows[r] + 48 * half);
                    __m512i s = _mm512_add_epi32(
                        _mm512_madd_epi16(_mm512_maskz_permutexvar_epi8(even_bytes, i_rg, px), w_rg),
                        _mm512_madd_epi16(_mm512_maskz_permutexvar_epi8(even_bytes, i_bg, px), w_bg));
                    s = _mm512_max_epi32(_mm512_srai_epi32(_mm512_add_epi32(s, o_y), 16), zero);
                    _mm_storeu_si128((__m128i *)(outs[r] + 16 * half), _mm512_cvtusepi32_epi8(s));
                }
            }
            /* each channel's 2 x 2 sums as word pairs (two columns, both rows added) */
            const __m512i sr = _mm512_add_epi16(_mm512_maskz_permutex2var_epi8(even_bytes, lo[0], i_r, hi[0]),
                                                _mm512_maskz_permutex2var_epi8(even_bytes, lo[1], i_r, hi[1]));
            const __m512i sg = _mm512_add_epi16(_mm512_maskz_permutex2var_epi8(even_bytes, lo[0], i_g, hi[0]),
                                                _mm512_maskz_permutex2var_epi8(even_bytes, lo[1], i_g, hi[1]));
            const __m512i sb = _mm512_add_epi16(_mm512_maskz_permutex2var_epi8(even_bytes, lo[0], i_b, hi[0]),
                                                _mm512_maskz_permutex2var_epi8(even_bytes, lo[1], i_b, hi[1]));
            __m512i cu = _mm512_add_epi32(_mm512_add_epi32(_mm512_madd_epi16(sr, u_r), _mm512_madd_epi16(sg, u_g)),
                                          _mm512_madd_epi16(sb, u_b));
            __m512i cv = _mm512_add_epi32(_mm512_add_epi32(_mm512_madd_epi16(sr, v_r), _mm512_madd_epi16(sg, v_g)),
                                          _mm512_madd_epi16(sb, v_b));
            cu = _mm512_max_epi32(_mm512_srai_epi32(_mm512_add_epi32(cu, o_u), 16), zero);
            cv = _mm512_max_epi32(_mm512_srai_epi32(_mm512_add_epi32(cv, o_v), 16), zero);
            _mm_storeu_si128((__m128i *)(uj + i / 2), _mm512_cvtusepi32_epi8(cu));
            _mm_storeu_si128((__m128i *)(vj + i / 2), _mm512_cvtusepi32_epi8(cv));
        }
    }
    return done;
}
#endif

/* rgb [h, w, 3] (rows `rgb_stride` bytes apart), h and w even -> planes y [h, w], u and v [h/2, w/2] with their
   line sizes. c: Y's three weights and offset, then Cb's and Cr's, in 1/2^16 units; the chroma weights apply to
   the sum of a 2 x 2 block. work: 2 w int32. With AVX-512 (VBMI) the rows go 32 pixels at a time, the rest of
   each row through the loops above: the same bits. */
void capture_rgb_to_yuv420(const uint8_t *rgb, int64_t h, int64_t w, int64_t rgb_stride,
                           uint8_t *y, int64_t y_stride, uint8_t *u, int64_t u_stride,
                           uint8_t *v, int64_t v_stride, const int32_t *c, int32_t *work) {
    int64_t done = 0;  /* the pixels of each row that the vector pass converted */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__)
    done = rows_avx512(rgb, h, w, rgb_stride, y, y_stride, u, u_stride, v, v_stride, c);
#endif
    const int64_t rest = w - done;
    if (rest == 0) return;
    for (int64_t j = 0; j < h; j += 2) {
        const uint8_t *p0 = rgb + j * rgb_stride + 3 * done, *p1 = p0 + rgb_stride;
        uint8_t *y0 = y + j * y_stride, *y1 = y0 + y_stride;
        uint8_t *uj = u + (j / 2) * u_stride, *vj = v + (j / 2) * v_stride;
        luma_row(p0, rest, y0 + done, c[0], c[1], c[2], c[3]);
        luma_row(p1, rest, y1 + done, c[0], c[1], c[2], c[3]);
        column_chroma(p0, p1, rest, work, work + rest, c);
        column_pairs(work, rest / 2, uj + done / 2, c[7]);
        column_pairs(work + rest, rest / 2, vj + done / 2, c[11]);
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


def plane_views(planes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (Y, U, V) planes of a yuv420p frame (PyAV's VideoPlanes: buffer, `.line_size`, `.width`, `.height`) as
    writable uint8 arrays [height, width] over their buffers (rows `line_size` bytes apart)."""
    return tuple(np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width] for p in planes)


def convert_into(image: np.ndarray, y: np.ndarray, u: np.ndarray, v: np.ndarray, full_range: bool = False) -> None:
    """image [H, W, 3] uint8 RGB (H, W even; each row's pixels contiguous) into plane arrays y [H, W], u and v
    [H/2, W/2] (uint8, contiguous within rows: `plane_views`, or rectangles of them at even coordinates)."""
    h, w = image.shape[:2]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or h % 2 or w % 2:
        raise ValueError(f"rgb_to_yuv420: expected an even-sized [H, W, 3] uint8 image, got {list(image.shape)} "
                         f"{image.dtype}")
    if image.strides[1:] != (3, 1):
        raise ValueError("rgb_to_yuv420: the image's pixels must be contiguous within a row")
    if y.shape != (h, w) or u.shape != (h // 2, w // 2) or v.shape != (h // 2, w // 2):
        raise ValueError(f"rgb_to_yuv420: planes {[list(p.shape) for p in (y, u, v)]} do not fit a {w}x{h} image")
    if any(p.dtype != np.uint8 or p.strides[1] != 1 or not p.flags.writeable for p in (y, u, v)):
        raise ValueError("rgb_to_yuv420: the planes must be writable uint8 arrays, contiguous within a row")
    c = _COEFFICIENTS[bool(full_range)]
    work = np.empty(2 * w, np.int32)
    _KERNEL.function("capture_rgb_to_yuv420")(
        image.ctypes.data, h, w, image.strides[0], y.ctypes.data, y.strides[0], u.ctypes.data, u.strides[0],
        v.ctypes.data, v.strides[0], c.ctypes.data, work.ctypes.data)


def rgb_to_yuv420(image: np.ndarray, planes, full_range: bool = False) -> None:
    """image [H, W, 3] uint8 RGB (H, W even; rows contiguous) into `planes` = (Y, U, V) of a yuv420p frame,
    each with `.line_size`, `.width` and `.height` and the buffer protocol (PyAV's VideoPlane)."""
    convert_into(image, *plane_views(planes), full_range=full_range)  # which checks both


def colour_codes(rgb, full_range: bool = False) -> tuple[int, int, int]:
    """The (Y, Cb, Cr) codes of a flat uint8 RGB colour, as the pass converts a block of it."""
    block = np.empty((2, 2, 3), np.uint8)
    block[:] = np.asarray(rgb, np.uint8)
    y, u, v = np.empty((2, 2), np.uint8), np.empty((1, 1), np.uint8), np.empty((1, 1), np.uint8)
    convert_into(block, y, u, v, full_range)
    return int(y[0, 0]), int(u[0, 0]), int(v[0, 0])
