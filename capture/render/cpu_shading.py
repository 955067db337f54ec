"""Compiled CPU passes of the drawing path's per-frame steps: `views.mesh_normals`, `views.detail_normal_map` and
`views.lit_pixels`.

`capture_vertex_normals` is `appearance.vertex_normals` (face cross products, each vertex's sum in the incidence
matrix's order, F.normalize) with torch's roundings: the same bits as the torch steps here, 0.1 against 0.6 ms
a frame (FLAME's 5023 vertices).

`capture_detail_normals` is DECA's displacement2normal as the torch steps compute it (`UVSampler.sample` of the
posed mesh and its normals, `appearance.detail_normals` with `grid_normals`' cells and their corners), texel
by texel. The rest of this note is about `capture_lit_pixels`: covered pixels -> albedo x SH(detail normals).

`views.lit_pixels` defines the picture in torch (covered pixels, barycentric UVs, `grid_sample` of the albedo
and the detail normal map, the SH basis of `appearance.sh_terms`); on CPU tensors without gradients it runs
this kernel instead, which does the same arithmetic per pixel in one pass over the fragments: no per-step
arrays of every covered pixel (~65 ns a pixel in torch, ~27 here, 640x360 demo head). It agrees with the torch
steps to float rounding (tests/test_views.py compares both, and both with DECA's full-frame render). The kernel
is built for the machine's own CPU; with AVX-512 it lists the covered pixels first and shades them 16 at a time
(gathers; the same operations in the same order, so the same bits as one at a time: ~17 ns a pixel).

Per covered pixel, in this order (as the torch steps): uv = (b0 uv0 + b1 uv1) + b2 uv2 of the face's UV
corners; each map sampled bilinearly at uv like `grid_sample(align_corners=False, padding_mode="zeros")`
(texel coordinate (uv + 1) S / 2 - 0.5, taps outside the map count 0); colour = albedo x sum_k basis_k(n)
light'_k with light' = light x SH_CONSTANTS.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np
import torch

from ..appearance import SH_CONSTANTS
from ..compiled import CompiledKernel

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Bilinear sample of the planar map [3, S, S] at NDC (x, y) as grid_sample(align_corners=False, zeros):
   the weighted taps added in grid_sample's order (north-west, north-east, south-west, south-east). */
static inline void sample3(const float *map, int64_t S, float x, float y, float *out) {
    const float ix = (x + 1.0f) * ((float)S / 2.0f) - 0.5f;
    const float iy = (y + 1.0f) * ((float)S / 2.0f) - 0.5f;
    int64_t x0 = (int64_t)ix, y0 = (int64_t)iy;  /* floor, for the finite coordinates of a UV layout */
    if ((float)x0 > ix) x0 -= 1;
    if ((float)y0 > iy) y0 -= 1;
    const float w = ix - (float)x0, e = 1.0f - w, n = iy - (float)y0, s = 1.0f - n;
    const float nw = s * e, ne = s * w, sw = n * e, se = n * w;
    const int64_t plane = S * S;
    if (x0 >= 0 && y0 >= 0 && x0 + 1 < S && y0 + 1 < S) {
        const float *p = map + y0 * S + x0;
        for (int c = 0; c < 3; ++c, p += plane)
            out[c] = ((p[0] * nw + p[1] * ne) + p[S] * sw) + p[S + 1] * se;
        return;
    }
    /* at the map's border: the taps outside count 0 */
    const int in_x0 = x0 >= 0 && x0 < S, in_x1 = x0 + 1 >= 0 && x0 + 1 < S;
    const int in_y0 = y0 >= 0 && y0 < S, in_y1 = y0 + 1 >= 0 && y0 + 1 < S;
    for (int c = 0; c < 3; ++c) {
        const float *m = map + c * plane;
        float acc = 0.0f;
        if (in_y0 && in_x0) acc += m[y0 * S + x0] * nw;
        if (in_y0 && in_x1) acc += m[y0 * S + x0 + 1] * ne;
        if (in_y1 && in_x0) acc += m[(y0 + 1) * S + x0] * sw;
        if (in_y1 && in_x1) acc += m[(y0 + 1) * S + x0 + 1] * se;
        out[c] = acc;
    }
}

static inline void cross3(const float *a, const float *b, float *out) {
    out[0] = a[1] * b[2] - a[2] * b[1];
    out[1] = a[2] * b[0] - a[0] * b[2];
    out[2] = a[0] * b[1] - a[1] * b[0];
}

/* DECA's displacement2normal on the UV grid (appearance.detail_normals with UVSampler.sample and grid_normals):
   vid / wts [S*S, 3] the texels' vertices and weights; vertices / normals [B, V, 3]; uv_z [B, S, S];
   mask / fixed [S, S]; margins my (rows) and mx (columns). Scratch: pos and coarse [3, S*S], cells [6, h*w].
   Writes out [B, 3, S, S]. */
/* Returns 0, or -1 (nothing written) when the texel table refers to a vertex outside [0, V). */
int64_t capture_detail_normals(int64_t B, int64_t V, int64_t S, const int64_t *vid, const float *wts,
                               const float *vertices, const float *normals, const float *uv_z, const float *mask,
                               const float *fixed, int64_t my, int64_t mx, float *pos, float *coarse, float *cells,
                               float *out)
{
    const int64_t SS = S * S;
    for (int64_t t = 0; t < 3 * SS; ++t)
        if (vid[t] < 0 || vid[t] >= V) return -1;
    const int64_t y0 = my, y1 = S - 1 - my, x0 = mx, x1 = S - 1 - mx;
    const int64_t h = y1 - y0, w = x1 - x0;  /* cells; the window has (h + 1) x (w + 1) texels */
    for (int64_t b = 0; b < B; ++b) {
        const float *vb = vertices + b * V * 3, *nb = normals + b * V * 3, *zb = uv_z + b * SS;
        float *ob = out + b * 3 * SS;
        for (int64_t t = 0; t < SS; ++t) {
            float p[3] = {0.0f, 0.0f, 0.0f}, n[3] = {0.0f, 0.0f, 0.0f};
            for (int k = 0; k < 3; ++k) {
                const float wk = wts[3 * t + k];
                if (wk == 0.0f) continue;
                const int64_t v = vid[3 * t + k];
                for (int c = 0; c < 3; ++c) {
                    p[c] += wk * vb[3 * v + c];
                    n[c] += wk * nb[3 * v + c];
                }
            }
            const float offset = zb[t] * mask[t] + fixed[t];
            for (int c = 0; c < 3; ++c) {
                pos[c * SS + t] = p[c] + offset * n[c];
                coarse[c * SS + t] = n[c];
            }
        }
        /* per grid cell: the cross products of its two triangles, (here, down, right) and (right, down, diag) */
        const int64_t hw = h * w;
        for (int64_t i = 0; i < h; ++i) {
            for (int64_t j = 0; j < w; ++j) {
                const int64_t here = (y0 + i) * S + x0 + j;
                float dx[3], dy[3], dy_next[3], dd[3], first[3], second[3];
                for (int c = 0; c < 3; ++c) {
                    const float *P = pos + c * SS;
                    dx[c] = P[here + 1] - P[here];
                    dy[c] = P[here + S] - P[here];
                    dy_next[c] = P[here + S + 1] - P[here + 1];
                    dd[c] = dy[c] - dx[c];
                }
                cross3(dy, dx, first);
                cross3(dd, dy_next, second);
                for (int c = 0; c < 3; ++c) {
                    cells[c * hw + i * w + j] = first[c];
                    cells[(3 + c) * hw + i * w + j] = second[c];
                }
            }
        }
        for (int64_t c = 0; c < 3; ++c)
            for (int64_t t = 0; t < SS; ++t) ob[c * SS + t] = 0.0f;
        /* each window texel: its cells' normals added (first, the cell above, the cell left, the diagonal),
           normalised, blended with the coarse normal outside the mask */
        for (int64_t i = 0; i <= h; ++i) {
            for (int64_t j = 0; j <= w; ++j) {
                float acc[3] = {0.0f, 0.0f, 0.0f};
                for (int c = 0; c < 3; ++c) {
                    const float *first = cells + c * hw, *second = cells + (3 + c) * hw;
                    if (i < h && j < w) acc[c] += first[i * w + j];
                    if (i >= 1 && j < w) acc[c] += first[(i - 1) * w + j] + second[(i - 1) * w + j];
                    if (i < h && j >= 1) acc[c] += first[i * w + j - 1] + second[i * w + j - 1];
                    if (i >= 1 && j >= 1) acc[c] += second[(i - 1) * w + j - 1];
                }
                float ss = (acc[0] * acc[0] + acc[1] * acc[1]) + acc[2] * acc[2];
                if (ss < 1e-12f) ss = 1e-12f;
                const float inv = 1.0f / sqrtf(ss);
                const int64_t t = (y0 + i) * S + x0 + j;
                for (int c = 0; c < 3; ++c) ob[c * SS + t] = acc[c] * inv;
            }
        }
        for (int64_t t = 0; t < SS; ++t) {
            const float m = mask[t];
            for (int c = 0; c < 3; ++c) ob[c * SS + t] = ob[c * SS + t] * m + coarse[c * SS + t] * (1.0f - m);
        }
    }
    return 0;
}

/* The covered pixels' colours [n, 3] into a uint8 RGB picture [out_rows, out_w, 3]: pixel index (y * w + x) of
   a w-wide frame goes to row y + y0, column x + x0, as (uint8)(clamp(c, 0, 1) * 255 + 0.5) (the float picture's
   rounding). Returns 0, or -1 (nothing written) when an index lies outside the `rows` x w frame or its pixel
   outside the picture. */
int64_t capture_paste_u8(int64_t n, const int64_t *index, const float *colour, int64_t w, int64_t rows,
                         uint8_t *out, int64_t out_rows, int64_t out_w, int64_t x0, int64_t y0)
{
    int64_t y = 0, row = 0;  /* the row of the last pixel and its first index: one division per run of a row */
    /* the columns of the frame that land in the picture, [c0, c1): a pixel's column x must be in them */
    const int64_t c0 = x0 < 0 ? -x0 : 0, c1 = out_w - x0 < w ? out_w - x0 : w;
    const uint64_t span = c1 > c0 ? (uint64_t)(c1 - c0) : 0, limit = (uint64_t)(rows * w);
    for (int64_t i = 0; i < n; ++i) {  /* unsigned compares: a negative value is a large one */
        const int64_t k = index[i];
        if ((uint64_t)k >= limit) return -1;
        if ((uint64_t)(k - row) >= (uint64_t)w) {
            y = k / w;
            row = y * w;
            if ((uint64_t)(y + y0) >= (uint64_t)out_rows) return -1;
        }
        if ((uint64_t)(k - row - c0) >= span) return -1;
    }
    y = 0;
    row = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    const __m512 lo = _mm512_setzero_ps(), hi = _mm512_set1_ps(1.0f), scale = _mm512_set1_ps(255.0f);
    const __m512 half = _mm512_set1_ps(0.5f);
#endif
    for (int64_t i = 0; i < n; ++i) {
        if (index[i] < row || index[i] >= row + w) {
            y = index[i] / w;
            row = y * w;
        }
        uint8_t *px = out + 3 * ((y + y0) * out_w + (index[i] - row) + x0);
#if defined(__AVX512F__) && defined(__AVX512BW__)
        /* 16 neighbours in one row (the covered pixels come sorted, a row's span at a time): their 48 channels
           are 48 bytes in a row of the picture. max(v, 0) gives 0 where the scalar code's NaN converts to 0. */
        if (i + 16 <= n && index[i + 15] == index[i] + 15 && index[i] + 15 < row + w) {
            for (int k = 0; k < 3; ++k) {
                __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_loadu_ps(colour + 3 * i + 16 * k), lo), hi);
                v = _mm512_add_ps(_mm512_mul_ps(v, scale), half);
                _mm_storeu_si128((__m128i *)(px + 16 * k), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
            }
            i += 15;
            continue;
        }
#endif
        for (int c = 0; c < 3; ++c) {
            float v = colour[3 * i + c];
            v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
            px[c] = (uint8_t)(v * 255.0f + 0.5f);
        }
    }
    return 0;
}

static inline void shade_pixel(const float *bc, const float *uv, const float *alb, int64_t Sa, const float *nrm,
                               int64_t Sn, const float *L, float *out) {
    const float u = (bc[0] * uv[0] + bc[1] * uv[2]) + bc[2] * uv[4];
    const float v = (bc[0] * uv[1] + bc[1] * uv[3]) + bc[2] * uv[5];
    float a[3], nn[3];
    sample3(alb, Sa, u, v, a);
    sample3(nrm, Sn, u, v, nn);
    const float x = nn[0], y = nn[1], z = nn[2];
    const float basis[9] = {1.0f, x, y, z, x * y, x * z, y * z, x * x - y * y, 3.0f * z * z - 1.0f};
    for (int ch = 0; ch < 3; ++ch) {
        float shade = 0.0f;
        for (int k = 0; k < 9; ++k) shade += basis[k] * L[3 * k + ch];
        out[ch] = a[ch] * shade;
    }
}

#if defined(__AVX512F__)
/* sample3 for 16 pixels (lanes of `on`): the same taps, weights and additions in the same order, a tap outside
   the map gathered as 0 (x + 0 * w = x: the border sums of sample3, up to the sign of a zero). */
static inline void sample3_x16(const float *map, int64_t S, __m512 u, __m512 v, __mmask16 on, __m512 out[3]) {
    const __m512 half_s = _mm512_set1_ps((float)S / 2.0f), one = _mm512_set1_ps(1.0f), h = _mm512_set1_ps(0.5f);
    const __m512 ix = _mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(u, one), half_s), h);
    const __m512 iy = _mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(v, one), half_s), h);
    const __m512 fx = _mm512_floor_ps(ix), fy = _mm512_floor_ps(iy);
    const __m512i x0 = _mm512_cvtps_epi32(fx), y0 = _mm512_cvtps_epi32(fy);
    const __m512 w = _mm512_sub_ps(ix, fx), e = _mm512_sub_ps(one, w);
    const __m512 n = _mm512_sub_ps(iy, fy), s = _mm512_sub_ps(one, n);
    const __m512 nw = _mm512_mul_ps(s, e), ne = _mm512_mul_ps(s, w), sw = _mm512_mul_ps(n, e), se = _mm512_mul_ps(n, w);
    const __m512i zero = _mm512_setzero_si512(), last = _mm512_set1_epi32((int)S - 1), ones = _mm512_set1_epi32(1);
    const __m512i x1 = _mm512_add_epi32(x0, ones), y1 = _mm512_add_epi32(y0, ones);
    const __mmask16 in_x0 = _mm512_cmpge_epi32_mask(x0, zero) & _mm512_cmple_epi32_mask(x0, last);
    const __mmask16 in_x1 = _mm512_cmpge_epi32_mask(x1, zero) & _mm512_cmple_epi32_mask(x1, last);
    const __mmask16 in_y0 = _mm512_cmpge_epi32_mask(y0, zero) & _mm512_cmple_epi32_mask(y0, last);
    const __mmask16 in_y1 = _mm512_cmpge_epi32_mask(y1, zero) & _mm512_cmple_epi32_mask(y1, last);
    const __mmask16 m00 = on & in_y0 & in_x0, m01 = on & in_y0 & in_x1;
    const __mmask16 m10 = on & in_y1 & in_x0, m11 = on & in_y1 & in_x1;
    const __m512i t00 = _mm512_add_epi32(_mm512_mullo_epi32(y0, _mm512_set1_epi32((int)S)), x0);
    const __m512i t01 = _mm512_add_epi32(t00, ones), t10 = _mm512_add_epi32(t00, _mm512_set1_epi32((int)S));
    const __m512i t11 = _mm512_add_epi32(t10, ones);
    const __m512 z = _mm512_setzero_ps();
    for (int c = 0; c < 3; ++c) {
        const float *p = map + (int64_t)c * S * S;
        const __m512 p00 = _mm512_mask_i32gather_ps(z, m00, t00, p, 4);
        const __m512 p01 = _mm512_mask_i32gather_ps(z, m01, t01, p, 4);
        const __m512 p10 = _mm512_mask_i32gather_ps(z, m10, t10, p, 4);
        const __m512 p11 = _mm512_mask_i32gather_ps(z, m11, t11, p, 4);
        out[c] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p00, nw), _mm512_mul_ps(p01, ne)),
                                             _mm512_mul_ps(p10, sw)), _mm512_mul_ps(p11, se));
    }
}

/* shade_pixel for the n covered pixels listed in pix (their place in face_id / bary) and face (their face):
   16 at a time, the same arithmetic in the same order. Writes colour [n, 3]. */
static void shade_x16(int64_t n, const int32_t *pix, const int32_t *face, const float *bary, const float *uv_face,
                      const float *alb, int64_t Sa, const float *nrm, int64_t Sn, const float *L, float *colour) {
    const __m512i three = _mm512_set1_epi32(3), six = _mm512_set1_epi32(6);
    const __m512 z = _mm512_setzero_ps();
    for (int64_t k = 0; k < n; k += 16) {
        const int64_t left = n - k;
        const __mmask16 on = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
        const __m512i i3 = _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(on, pix + k), three);
        const __m512i f6 = _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(on, face + k), six);
        __m512 bc[3], uv[6];
        for (int j = 0; j < 3; ++j)
            bc[j] = _mm512_mask_i32gather_ps(z, on, _mm512_add_epi32(i3, _mm512_set1_epi32(j)), bary, 4);
        for (int j = 0; j < 6; ++j)
            uv[j] = _mm512_mask_i32gather_ps(z, on, _mm512_add_epi32(f6, _mm512_set1_epi32(j)), uv_face, 4);
        const __m512 u = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(bc[0], uv[0]), _mm512_mul_ps(bc[1], uv[2])),
                                       _mm512_mul_ps(bc[2], uv[4]));
        const __m512 v = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(bc[0], uv[1]), _mm512_mul_ps(bc[1], uv[3])),
                                       _mm512_mul_ps(bc[2], uv[5]));
        __m512 a[3], nn[3];
        sample3_x16(alb, Sa, u, v, on, a);
        sample3_x16(nrm, Sn, u, v, on, nn);
        const __m512 x = nn[0], y = nn[1], zz = nn[2];
        const __m512 basis[9] = {_mm512_set1_ps(1.0f), x, y, zz, _mm512_mul_ps(x, y), _mm512_mul_ps(x, zz),
                                 _mm512_mul_ps(y, zz), _mm512_sub_ps(_mm512_mul_ps(x, x), _mm512_mul_ps(y, y)),
                                 _mm512_sub_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(3.0f), zz), zz),
                                               _mm512_set1_ps(1.0f))};
        float out[3][16];
        for (int ch = 0; ch < 3; ++ch) {
            __m512 shade = z;
            for (int q = 0; q < 9; ++q)
                shade = _mm512_add_ps(shade, _mm512_mul_ps(basis[q], _mm512_set1_ps(L[3 * q + ch])));
            _mm512_storeu_ps(out[ch], _mm512_mul_ps(a[ch], shade));
        }
        const int64_t m = left >= 16 ? 16 : left;
        float *dst = colour + 3 * k;
        for (int64_t j = 0; j < m; ++j) {
            dst[3 * j] = out[0][j];
            dst[3 * j + 1] = out[1][j];
            dst[3 * j + 2] = out[2][j];
        }
    }
}
#endif

/* face_id [B, h, w] (-1 = empty), bary [B, h, w, 3]: fragments of a window at (top, left) of an H x W image.
   uv_face [F, 3, 2]; albedo [Ba, 3, Sa, Sa] (Ba = 1 or B); normals [B, 3, Sn, Sn]; light [B, 9, 3] with the SH
   constants folded in. Writes index [n] (b * H * W + y * W + x in the image) and colour [n, 3]; returns n, or -1
   (index and colour not to be read) when a fragment's face is not one of the F faces of the UV layout. */
int64_t capture_lit_pixels(int64_t B, int64_t h, int64_t w, const int64_t *face_id, const float *bary,
                           int64_t F, const float *uv_face, int64_t Ba, int64_t Sa, const float *albedo, int64_t Sn,
                           const float *normals, const float *light, int64_t H, int64_t W, int64_t top,
                           int64_t left, int64_t *index, float *colour)
{
    int64_t n = 0;
    int checked = 0;  /* the faces are checked while the covered pixels are listed, before any is shaded */
#if defined(__AVX512F__)
    /* 16 pixels at a time where the gathers' int32 offsets reach every fragment, texel and face */
    int32_t *pix = NULL;
    const int fits = 3 * B * h * w < INT32_MAX && 6 * F < INT32_MAX && 3 * Sa * Sa < INT32_MAX
                     && 3 * Sn * Sn < INT32_MAX;
    if (fits) pix = (int32_t *)malloc(sizeof(int32_t) * 2 * (size_t)(h * w > 0 ? h * w : 1));
    checked = pix != NULL;
#endif
    if (!checked)  /* one pixel at a time shades as it goes: every face first */
        for (int64_t i = 0; i < B * h * w; ++i)
            if (face_id[i] >= F) return -1;  /* a face the UV layout does not have */
    for (int64_t b = 0; b < B; ++b) {
        const float *alb = albedo + (Ba > 1 ? b : 0) * 3 * Sa * Sa;
        const float *nrm = normals + b * 3 * Sn * Sn;
        const float *L = light + b * 27;
#if defined(__AVX512F__)
        if (pix != NULL) {
            /* the covered pixels in raster order: their place, face and index in the image (branch-free) */
            int32_t *face = pix + h * w;
            int64_t m = 0, bad = 0;
            for (int64_t r = 0; r < h; ++r) {
                for (int64_t c = 0; c < w; ++c) {
                    const int64_t i = (b * h + r) * w + c;
                    const int64_t f = face_id[i];
                    pix[m] = (int32_t)i;
                    face[m] = (int32_t)f;
                    index[n + m] = b * H * W + (r + top) * W + c + left;
                    m += f >= 0;
                    bad |= f >= F;
                }
            }
            if (bad) {  /* a face the UV layout does not have */
                free(pix);
                return -1;
            }
            shade_x16(m, pix, face, bary, uv_face, alb, Sa, nrm, Sn, L, colour + 3 * n);
            n += m;
            continue;
        }
#endif
        for (int64_t r = 0; r < h; ++r) {
            for (int64_t c = 0; c < w; ++c) {
                const int64_t i = (b * h + r) * w + c;
                const int64_t f = face_id[i];
                if (f < 0) continue;
                shade_pixel(bary + 3 * i, uv_face + 6 * f, alb, Sa, nrm, Sn, L, colour + 3 * n);
                index[n++] = b * H * W + (r + top) * W + c + left;
            }
        }
    }
#if defined(__AVX512F__)
    free(pix);
#endif
    return n;
}

/* appearance.vertex_normals: per face the cross product (v1 - v0) x (v2 - v0) (torch.linalg.cross's terms),
   per vertex the sum of its faces' in the incidence matrix's CSR order (crow [V + 1], col [nnz]), divided by
   max(|n|, eps) (F.normalize; |n| with two fused multiply-adds, as torch's vector_norm has it on CPU).
   vertices [B, V, 3], faces [F, 3] int64; face_n [F, 3] work; out [B, V, 3].
   Returns -1 when a face refers to a vertex outside [0, V) or the CSR to a face outside [0, F), else 0. */
int64_t capture_vertex_normals(int64_t B, int64_t V, int64_t F, const float *vertices, const int64_t *faces,
                               const int64_t *crow, const int64_t *col, double eps, float *face_n, float *out)
{
    for (int64_t f = 0; f < 3 * F; ++f)
        if (faces[f] < 0 || faces[f] >= V) return -1;
    for (int64_t k = 0; k < crow[V]; ++k)
        if (col[k] < 0 || col[k] >= F) return -1;
    const float e = (float)eps;
    for (int64_t b = 0; b < B; ++b) {
        const float *vb = vertices + 3 * V * b;
        for (int64_t f = 0; f < F; ++f) {
            const float *p0 = vb + 3 * faces[3 * f], *p1 = vb + 3 * faces[3 * f + 1], *p2 = vb + 3 * faces[3 * f + 2];
            const float a0 = p1[0] - p0[0], a1 = p1[1] - p0[1], a2 = p1[2] - p0[2];
            const float c0 = p2[0] - p0[0], c1 = p2[1] - p0[1], c2 = p2[2] - p0[2];
            face_n[3 * f] = fmaf(a1, c2, -(a2 * c1));  /* torch.linalg.cross's rounding: one fused term */
            face_n[3 * f + 1] = fmaf(a2, c0, -(a0 * c2));
            face_n[3 * f + 2] = fmaf(a0, c1, -(a1 * c0));
        }
        float *ob = out + 3 * V * b;
        for (int64_t v = 0; v < V; ++v) {
            float x = 0.0f, y = 0.0f, z = 0.0f;
            for (int64_t k = crow[v]; k < crow[v + 1]; ++k) {
                const float *n = face_n + 3 * col[k];
                x += n[0];
                y += n[1];
                z += n[2];
            }
            float norm = sqrtf(fmaf(z, z, fmaf(y, y, x * x)));  /* as torch's vector_norm rounds it */
            if (norm < e) norm = e;
            ob[3 * v] = x / norm;
            ob[3 * v + 1] = y / norm;
            ob[3 * v + 2] = z / norm;
        }
    }
    return 0;
}
"""

_KERNEL = CompiledKernel("cpu_shading", _SOURCE, native=True, functions={
    "capture_lit_pixels": (ctypes.c_int64, [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2 + [ctypes.c_int64]
                           + [ctypes.c_void_p] + [ctypes.c_int64] * 2 + [ctypes.c_void_p, ctypes.c_int64]
                           + [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 2),
    "capture_detail_normals": (ctypes.c_int64, [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 2
                               + [ctypes.c_void_p] * 4),
    "capture_paste_u8": (ctypes.c_int64, [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                          ctypes.c_int64, ctypes.c_void_p] + [ctypes.c_int64] * 4),
    "capture_vertex_normals": (ctypes.c_int64, [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 4 + [ctypes.c_double]
                               + [ctypes.c_void_p] * 2)})


def kernel_error() -> Optional[str]:
    """None when the kernel is available (compiling it on first call), else why not."""
    return _KERNEL.error()


def usable(*tensors: torch.Tensor) -> bool:
    """Whether a compiled pass can stand in for the torch steps on these tensors: all float32 on the CPU, no
    gradient wanted (training differentiates through the torch steps), and the kernel compiled."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return kernel_error() is None


def applies(fragments, uv_face: torch.Tensor, albedo_uv: torch.Tensor, detail_normals_uv: torch.Tensor,
            light: torch.Tensor) -> bool:
    """Whether `lit_pixels_c` can stand in for `views.lit_pixels`' torch steps: `usable`, fragments on the CPU,
    square 3-channel maps and a [F, 3, 2] UV layout."""
    if fragments.face_id.device.type != "cpu" or uv_face.dim() != 3 or tuple(uv_face.shape[1:]) != (3, 2):
        return False
    if any(m.dim() != 4 or m.shape[1] != 3 or m.shape[2] != m.shape[3] for m in (albedo_uv, detail_normals_uv)):
        return False
    return usable(uv_face, albedo_uv, detail_normals_uv, light)


def lit_pixels_c(fragments, uv_face: torch.Tensor, albedo_uv: torch.Tensor, detail_normals_uv: torch.Tensor,
                 light: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(index [N] int64 in the image, colour [N, 3] float32, image size (H, W)) of `views.lit_pixels`."""
    B, h, w = fragments.face_id.shape
    window = fragments.window
    H, W = window.image_size if window is not None else (h, w)
    top, left = (window.top, window.left) if window is not None else (0, 0)
    if albedo_uv.shape[0] not in (1, B) or detail_normals_uv.shape[0] != B or light.shape[0] != B:
        raise ValueError(f"lit_pixels: batch {B} of the fragments against albedo {tuple(albedo_uv.shape)}, "
                         f"normals {tuple(detail_normals_uv.shape)}, light {tuple(light.shape)}")
    face_id = fragments.face_id.contiguous()
    bary = fragments.bary.to(torch.float32).contiguous()
    uv = uv_face.to(torch.float32).contiguous()
    albedo = albedo_uv.contiguous()
    normals = detail_normals_uv.contiguous()
    lit = (light.to(torch.float32) * light.new_tensor(SH_CONSTANTS, dtype=torch.float32)[:, None]).contiguous()
    index = torch.empty(B * h * w, dtype=torch.int64)
    colour = torch.empty(B * h * w, 3, dtype=torch.float32)
    n = _KERNEL.function("capture_lit_pixels")(
        B, h, w, face_id.data_ptr(), bary.data_ptr(), uv.shape[0], uv.data_ptr(), albedo.shape[0], albedo.shape[-1],
        albedo.data_ptr(), normals.shape[-1], normals.data_ptr(), lit.data_ptr(), H, W, top, left,
        index.data_ptr(), colour.data_ptr())
    if n < 0:  # checked in the pass, which reads uv_face[face_id]
        raise ValueError(f"lit_pixels: fragments of faces up to {int(face_id.max())}, but uv_face holds "
                         f"{uv_face.shape[0]} faces")
    return index[:n], colour[:n], (H, W)


def vertex_normals_c(vertices: torch.Tensor, faces: torch.Tensor, incidence: torch.Tensor,
                     eps: float = 1e-6) -> torch.Tensor:
    """`appearance.vertex_normals` in one compiled pass: vertices [B, V, 3] float32, faces [F, 3], incidence the
    [V, F] CSR of `appearance.face_incidence` (its order of each vertex's faces is the order of the sums)."""
    B, V, _ = vertices.shape
    F = faces.shape[0]
    if incidence.layout != torch.sparse_csr or tuple(incidence.shape) != (V, F) or faces.shape != (F, 3):
        raise ValueError(f"vertex normals: vertices {tuple(vertices.shape)}, faces {tuple(faces.shape)} and an "
                         f"incidence matrix {tuple(incidence.shape)} ({incidence.layout}) that do not fit")
    args = [vertices.contiguous(), faces.to(torch.int64).contiguous(),
            incidence.crow_indices().to(torch.int64).contiguous(), incidence.col_indices().to(torch.int64).contiguous()]
    face_n, out = torch.empty(F, 3), torch.empty(B, V, 3)
    status = _KERNEL.function("capture_vertex_normals")(B, V, F, *(t.data_ptr() for t in args), float(eps),
                                                        face_n.data_ptr(), out.data_ptr())
    if status < 0:
        raise ValueError(f"vertex normals: faces or incidence refer to vertices / faces outside the mesh "
                         f"({V} vertices, {F} faces)")
    return out


def detail_normals_c(uv_z: torch.Tensor, vertices: torch.Tensor, normals: torch.Tensor, vertex_ids: torch.Tensor,
                     weights: torch.Tensor, face_eye_mask: torch.Tensor, fixed_displacement: torch.Tensor,
                     margin_x: int, margin_y: int) -> torch.Tensor:
    """`views.detail_normal_map` in one compiled pass: uv_z [B, 1, S, S], vertices / normals [B, V, 3] (world),
    the UV sampler's vertex_ids / weights [S*S, 3], face_eye_mask / fixed_displacement [S, S] -> [B, 3, S, S]."""
    B, V, _ = vertices.shape
    S = uv_z.shape[-1]
    if uv_z.shape != (B, 1, S, S) or vertex_ids.shape != (S * S, 3) or face_eye_mask.shape != (S, S):
        raise ValueError(f"detail normals: uv_z {tuple(uv_z.shape)}, texel table {tuple(vertex_ids.shape)} and "
                         f"mask {tuple(face_eye_mask.shape)} do not fit vertices {tuple(vertices.shape)}")
    args = [t.contiguous() for t in (vertex_ids.to(torch.int64), weights, vertices, normals, uv_z, face_eye_mask,
                                     fixed_displacement)]
    h, w = S - 1 - 2 * margin_y, S - 1 - 2 * margin_x
    pos, coarse = torch.empty(3, S * S), torch.empty(3, S * S)
    cells = torch.empty(6, max(h, 0) * max(w, 0))
    out = torch.empty(B, 3, S, S)
    status = _KERNEL.function("capture_detail_normals")(B, V, S, *(t.data_ptr() for t in args), margin_y, margin_x,
                                                        pos.data_ptr(), coarse.data_ptr(), cells.data_ptr(),
                                                        out.data_ptr())
    if status < 0:  # checked in the pass, which reads vertices[vertex_ids]
        raise ValueError(f"detail normals: the UV layout refers to vertices in [{int(vertex_ids.min())}, "
                         f"{int(vertex_ids.max())}], the mesh has {V}")
    return out


def paste_u8(out: np.ndarray, index: torch.Tensor, colour: torch.Tensor, width: int, column: int = 0,
             row: int = 0) -> None:
    """Round the covered pixels' colours [N, 3] (float32, CPU) to uint8 as a float picture is rounded and write
    them into `out` [rows, out_width, 3] uint8 (C-contiguous): pixel index y * width + x (batch 1) lands at
    row y + row, column x + column (side-by-side: column = width; a rectangle of the frame at (top, left):
    row = -top, column = -left)."""
    if out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3 or not out.flags.c_contiguous:
        raise ValueError(f"paste_u8: out must be a C-contiguous [rows, width, 3] uint8 array, got {out.shape} "
                         f"{out.dtype}")
    index = index.to(torch.int64).contiguous()
    colour = colour.to(torch.float32).contiguous()
    frame_rows = out.shape[0] - int(row)  # the rows of the frame whose pixels can land in the picture
    fits = colour.shape == (index.numel(), 3) and frame_rows > 0 and width > 0
    if not fits or _KERNEL.function("capture_paste_u8")(index.numel(), index.data_ptr(), colour.data_ptr(),
                                                         int(width), frame_rows, out.ctypes.data, out.shape[0],
                                                         out.shape[1], int(column), int(row)) < 0:
        raise ValueError(f"paste_u8: {index.numel()} pixels of a {width}-wide frame do not fit at row {row}, column "
                         f"{column} of a {out.shape[1]}x{out.shape[0]} picture (batch 1 only)")
