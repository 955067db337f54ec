"""CPU rasterizer: exact fixed-point coverage, a z-buffer, two interchangeable kernels.

Geometry (shared by both kernels, see docs/conventions.md):
- NDC vertices go to pixel coordinates (pixel centres at integers) and are snapped to 1/256 pixel
  (`SUBPIXEL_BITS`), as GPUs do. Edge functions are then exact int64 arithmetic, so a pixel centre on an
  edge shared by two triangles is given to exactly one of them (top-left rule): no holes, no double cover.
- Top-left rule in our y-down image: a centre exactly on an edge counts when that edge is a left edge
  (the triangle's interior is to its right) or a horizontal top edge (interior below it).
- Barycentrics are screen-space (not perspective-corrected), from the snapped edge functions, so covered
  pixels always get weights in [0, 1] that sum to 1. Depth = barycentric blend of vertex z; the smallest z
  in [near, far] wins; equal depths go to the lower face index. No back-face culling.
- Vertices outside a guard band of +-2^20 pixels, or non-finite ones, drop their triangles.

Kernels (`CpuRasterizer(kernel=...)`):
- "torch": pure vectorised torch. For every (triangle, bounding-box row) the exact span of covered pixel
  centres is solved from the three integer edge inequalities; only covered pixels are expanded (in
  chunks), and the z-buffer is resolved with two scatter-min passes (depth, then face index).
- "c": the same arithmetic in a small C loop, one triangle at a time, each bounding-box row's exact span of
  covered centres solved from the edge inequalities in integers (no per-pixel coverage test: 3.6 -> 2.7 ms for
  the demo head at 720p) (`capture.compiled`: compiled with the system C compiler on first use, cached in the
  capture cache dir); about 10x faster than "torch". Bit-identical results (no FMA contraction). Built for the
  machine's CPU: with AVX-512 (F, DQ, VL) a span's columns are tested eight at a time, each lane the scalar
  loop's arithmetic. The image is drawn in bands of rows whose buffers fit the L2 cache (`BAND_BYTES`), each
  band's faces in face order, so every pixel sees the same faces in the same order as in one pass (the z-test
  had been waiting on z-buffer loads from memory). Both: the 720p demo head 3.6 -> 2.5 ms, 360p 1.3 -> 1.2 ms.
- "auto" (default): "c" when it compiles, else "torch" (logged once).
"""
from __future__ import annotations

import ctypes
import logging
from typing import Optional, Tuple

import torch

from ..compiled import CompiledKernel
from ..conventions import DEPTH_FAR, DEPTH_NEAR, ndc_to_pixel
from .base import Fragments, Rasterizer, Window, check_rasterize_inputs, check_window, empty_fragments

log = logging.getLogger(__name__)

SUBPIXEL_BITS = 8
SUBPIXEL = 1 << SUBPIXEL_BITS
# Keeps every fixed-point coordinate below 2^28 so that edge functions (products of two differences,
# doubled in the torch kernel) stay below 2^61.
GUARD_PIXELS = float(1 << 20)
KERNELS = ("auto", "c", "torch")
# The C kernel draws the image in bands of rows whose buffers (z-buffer, face ids, barycentrics: 28 bytes a pixel)
# fit a core's L2 cache: a 720p head's window (~410 wide, ~640 tall) in four bands, a 360p one in one band.
BYTES_PER_PIXEL = 28
BAND_BYTES = 2 << 20


# ----------------------------------------------------------------------------------------------------
# Shared set-up: NDC -> snapped fixed-point pixel coordinates.

def snap_vertices(vertices: torch.Tensor, size: Tuple[int, int]):
    """[B, V, 3] NDC -> (fx, fy) [B, V] int64 in 1/SUBPIXEL pixels, z [B, V] float64, valid [B, V] bool."""
    v = vertices.detach().to(device="cpu", dtype=torch.float64)
    pix = ndc_to_pixel(v[..., :2], size)
    valid = torch.isfinite(v).all(dim=-1) & (pix.abs() <= GUARD_PIXELS).all(dim=-1)
    fixed = torch.where(valid.unsqueeze(-1), pix * SUBPIXEL, torch.zeros_like(pix)).round().to(torch.int64)
    z = torch.where(valid, v[..., 2], torch.zeros_like(v[..., 2]))
    return fixed[..., 0].contiguous(), fixed[..., 1].contiguous(), z.contiguous(), valid.contiguous()


# ----------------------------------------------------------------------------------------------------
# Pure torch kernel.

def _floor_div(a: torch.Tensor, b) -> torch.Tensor:
    return torch.div(a, b, rounding_mode="floor")


def snap_into_window(vertices: torch.Tensor, size: Tuple[int, int], window: Optional[Window] = None):
    """`snap_vertices` in the coordinates of `window` (a rectangle of the (H, W) image; None: the whole image):
    the same snapped image coordinates moved by whole pixels, so the same pixels. Returns fx, fy, z, valid and
    the size drawn."""
    fx, fy, z, valid = snap_vertices(vertices, size)
    if window is None:
        return fx, fy, z, valid, tuple(size)
    return fx - window.left * SUBPIXEL, fy - window.top * SUBPIXEL, z, valid, window.size


def rasterize_torch(fx, fy, z, valid, faces, size, near=DEPTH_NEAR, far=DEPTH_FAR,
                    chunk: int = 1 << 19):
    """Vectorised rasterisation of snapped vertices (see `snap_vertices`); returns (face_id, bary, depth).

    fx, fy: [B, V] int64; z: [B, V] float64; valid: [B, V] bool; faces: [F, 3] int64 (CPU).
    Works per (triangle, row): the exact span of covered pixel centres is solved from the three integer
    edge inequalities, then only covered pixels are expanded, `chunk` fragments at a time.
    """
    H, W = size
    B = fx.shape[0]
    F = faces.shape[0]
    S = SUBPIXEL
    take = torch.index_select  # much faster than advanced indexing for 1-D gathers on the CPU
    face_id = torch.full((B * H * W,), -1, dtype=torch.int64)
    bary = torch.zeros((B * H * W, 3), dtype=torch.float32)
    depth = torch.full((B * H * W,), float("inf"), dtype=torch.float32)
    empty = (face_id.view(B, H, W), bary.view(B, H, W, 3), depth.view(B, H, W))

    # Per (batch, face) g = b * F + f: corners [B*F, 3].
    X = fx[:, faces].reshape(B * F, 3)
    Y = fy[:, faces].reshape(B * F, 3)
    Z = z[:, faces].reshape(B * F, 3)
    ok = valid[:, faces].all(dim=-1).reshape(B * F)
    x0, x1, x2 = X.unbind(1)
    y0, y1, y2 = Y.unbind(1)
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    ok &= area != 0
    sign = torch.sign(area)
    # 1 / |area| as the C kernel rounds it: depths and barycentrics are multiplied by it (a division per fragment
    # was a third of the C kernel's time at 720p)
    inv_area = 1.0 / area.abs().to(torch.float64)

    # Edge k runs a_k -> b_k and weighs the opposite vertex k: (v1->v2), (v2->v0), (v0->v1).
    xa, ya = torch.stack([x1, x2, x0], 1), torch.stack([y1, y2, y0], 1)
    xb, yb = torch.stack([x2, x0, x1], 1), torch.stack([y2, y0, y1], 1)
    A = -(yb - ya) * sign[:, None]  # d(edge)/d(column), oriented so that the interior is positive
    G = (xb - xa) * sign[:, None]  # d(edge)/d(row)
    top_left = (A > 0) | ((A == 0) & (G > 0))
    bias = (~top_left).to(torch.int64)  # inside edge k  <=>  e_k >= bias_k

    cmin = (-_floor_div(-X.min(1).values, S)).clamp(min=0)
    cmax = _floor_div(X.max(1).values, S).clamp(max=W - 1)
    rmin = (-_floor_div(-Y.min(1).values, S)).clamp(min=0)
    rmax = _floor_div(Y.max(1).values, S).clamp(max=H - 1)
    ok &= (cmax >= cmin) & (rmax >= rmin)
    g_ok = ok.nonzero().squeeze(1)
    if g_ok.numel() == 0:
        return empty

    # One entry per (face, bounding-box row).
    n_rows = take(rmax - rmin + 1, 0, g_ok)
    row_g = torch.repeat_interleave(g_ok, n_rows)
    row = take(rmin, 0, row_g) + torch.arange(row_g.numel()) - torch.repeat_interleave(
        torch.cumsum(n_rows, 0) - n_rows, n_rows)
    c0 = take(cmin, 0, row_g)
    a = take(A, 0, row_g) * S  # edge change per column
    e_row = take(A, 0, row_g) * (c0 * S)[:, None].sub(take(xa, 0, row_g)) + take(G, 0, row_g) * (
        (row * S)[:, None].sub(take(ya, 0, row_g)))  # edge values at (row, cmin)
    need = take(bias, 0, row_g) - e_row  # inside edge k at column c0 + j  <=>  a_k * j >= need_k
    a_safe = torch.where(a == 0, torch.ones_like(a), a)
    lo_k = torch.where(a > 0, -_floor_div(-need, a_safe), torch.zeros_like(a))  # ceil(need / a)
    hi_k = torch.where(a < 0, _floor_div(-need, -a_safe), torch.full_like(a, W))  # floor(need / a)
    hi_k = torch.where((a == 0) & (need > 0), torch.full_like(a, -1), hi_k)
    lo = lo_k.max(dim=1).values.clamp(min=0)
    hi = torch.minimum(hi_k.min(dim=1).values, take(cmax, 0, row_g) - c0)
    count = (hi - lo + 1).clamp(min=0)
    live = (count > 0).nonzero().squeeze(1)
    if live.numel() == 0:
        return empty
    count = take(count, 0, live)
    row_g = take(row_g, 0, live)
    # Row table for the fragments: edge values at the span start, their per-column step, pixel index.
    span_e = take(e_row, 0, live) + take(a, 0, live) * take(lo, 0, live)[:, None]
    table = torch.cat([span_e, take(a, 0, live)], 1)
    pixel_start = (row_g // F) * (H * W) + take(row, 0, live) * W + take(c0, 0, live) + take(lo, 0, live)

    pixels, depths, gfaces, edges = [], [], [], []
    ends = torch.cumsum(count, 0)
    n_spans = int(count.numel())
    start = 0
    while start < n_spans:
        offset = int(ends[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(ends, offset + chunk, right=True)), start + 1)
        counts = count[start:stop]
        seg = torch.repeat_interleave(torch.arange(start, stop), counts)
        j = torch.arange(seg.numel()) - take(torch.cumsum(counts, 0) - counts, 0, seg - start)
        t = take(table, 0, seg)
        e = torch.addcmul(t[:, 0:3], t[:, 3:6], j[:, None])
        g = take(row_g, 0, seg)
        zf = take(Z, 0, g)
        ef = e.to(torch.float64)
        zz = (ef[:, 0] * zf[:, 0] + ef[:, 1] * zf[:, 1] + ef[:, 2] * zf[:, 2]) * take(inv_area, 0, g)
        keep = ((zz >= near) & (zz <= far)).nonzero().squeeze(1)
        pixels.append(take(take(pixel_start, 0, seg) + j, 0, keep))
        depths.append(take(zz, 0, keep))
        gfaces.append(take(g, 0, keep))
        edges.append(take(e, 0, keep))
        start = stop

    pix = torch.cat(pixels)
    zz = torch.cat(depths)
    g = torch.cat(gfaces)
    e = torch.cat(edges)
    if pix.numel() == 0:
        return empty
    # Nearest depth per pixel, then the lowest face index among the fragments at that depth.
    zbuf = torch.full((B * H * W,), float("inf"), dtype=torch.float64)
    zbuf.scatter_reduce_(0, pix, zz, reduce="amin")
    cand = (zz == take(zbuf, 0, pix)).nonzero().squeeze(1)
    pc, gc = take(pix, 0, cand), take(g, 0, cand)
    gbuf = torch.full((B * H * W,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    gbuf.scatter_reduce_(0, pc, gc, reduce="amin")
    win = take(cand, 0, (gc == take(gbuf, 0, pc)).nonzero().squeeze(1))
    wp, wg = take(pix, 0, win), take(g, 0, win)
    face_id[wp] = wg % F
    bary[wp] = (take(e, 0, win).to(torch.float64) * take(inv_area, 0, wg)[:, None]).to(torch.float32)
    depth[wp] = take(zz, 0, win).to(torch.float32)
    return face_id.view(B, H, W), bary.view(B, H, W, 3), depth.view(B, H, W)


# ----------------------------------------------------------------------------------------------------
# C kernel: the same arithmetic as `rasterize_torch`, one triangle at a time.

_C_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <math.h>

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define RASTER_AVX512 1
#include <immintrin.h>
#else
#define RASTER_AVX512 0
#endif

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q -= 1;
    return q;
}

/* floor(a / S); an arithmetic shift when S is a power of two (shift >= 0): no 64-bit division per triangle */
static inline int64_t floor_s(int64_t a, int64_t S, int shift) {
    return shift >= 0 ? (a >> shift) : floor_div(a, S);
}

/* What one image's triangles share. */
typedef struct {
    int64_t H, W, S;
    int shift;
    const int64_t *X, *Y;
    const double *Z;
    const uint8_t *ok;
    const int64_t *faces;
    double near_z, far_z;
    int64_t *fid;
    float *bc;
    double *zbuf;
#if RASTER_AVX512
    __m512i lane, ilo, ihi;
    __m512d nearv, farv;
    uint32_t spread3[256];
#endif
} Image;

/* Pixels [i0, i1) of an image: cleared before its faces land, their depths written after. */
static void clear_pixels(const Image *im, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
        im->zbuf[i] = INFINITY;
        im->fid[i] = -1;
        im->bc[3 * i] = im->bc[3 * i + 1] = im->bc[3 * i + 2] = 0.0f;
    }
}

static void write_depths(const Image *im, float *dp, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dp[i] = (float)im->zbuf[i];
}

/* The rows of face f's bounding box within the image; 0 when the face draws nothing. */
static int face_rows(const Image *im, int64_t f, int64_t *rmin, int64_t *rmax) {
    const int64_t i0 = im->faces[3 * f], i1 = im->faces[3 * f + 1], i2 = im->faces[3 * f + 2];
    if (!(im->ok[i0] && im->ok[i1] && im->ok[i2])) return 0;
    const int64_t y0 = im->Y[i0], y1 = im->Y[i1], y2 = im->Y[i2];
    int64_t ymin = y0 < y1 ? y0 : y1; ymin = ymin < y2 ? ymin : y2;
    int64_t ymax = y0 > y1 ? y0 : y1; ymax = ymax > y2 ? ymax : y2;
    *rmin = -floor_s(-ymin, im->S, im->shift);
    *rmax = floor_s(ymax, im->S, im->shift);
    if (*rmin < 0) *rmin = 0;
    if (*rmax > im->H - 1) *rmax = im->H - 1;
    return *rmin <= *rmax;
}

/* Face f's fragments in rows [r_lo, r_hi] (z-test against zbuf, the winner's face, barycentrics); only for a face
   that `face_rows` passed (its vertices valid). */
static void draw_face(const Image *im, int64_t f, int64_t r_lo, int64_t r_hi) {
    const int64_t S = im->S, W = im->W;
    const int64_t i0 = im->faces[3 * f], i1 = im->faces[3 * f + 1], i2 = im->faces[3 * f + 2];
    const int64_t x0 = im->X[i0], x1 = im->X[i1], x2 = im->X[i2];
    const int64_t y0 = im->Y[i0], y1 = im->Y[i1], y2 = im->Y[i2];
    int64_t area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0);
    if (area == 0) return;
    const int64_t s = area > 0 ? 1 : -1;
    area *= s;
    const int64_t xa[3] = {x1, x2, x0}, ya[3] = {y1, y2, y0};
    const int64_t xb[3] = {x2, x0, x1}, yb[3] = {y2, y0, y1};
    int64_t A[3], G[3], bias[3];
    for (int k = 0; k < 3; ++k) {
        A[k] = -(yb[k] - ya[k]) * s;
        G[k] = (xb[k] - xa[k]) * s;
        bias[k] = (A[k] > 0 || (A[k] == 0 && G[k] > 0)) ? 0 : 1;
    }
    int64_t xmin = x0 < x1 ? x0 : x1; xmin = xmin < x2 ? xmin : x2;
    int64_t xmax = x0 > x1 ? x0 : x1; xmax = xmax > x2 ? xmax : x2;
    int64_t cmin = -floor_s(-xmin, S, im->shift), cmax = floor_s(xmax, S, im->shift);
    if (cmin < 0) cmin = 0;
    if (cmax > W - 1) cmax = W - 1;
    const double za = im->Z[i0], zb = im->Z[i1], zc = im->Z[i2], inv = 1.0 / (double)area;
    const int64_t s0 = A[0] * S, s1 = A[1] * S, s2 = A[2] * S;
    const int64_t sk[3] = {s0, s1, s2};
    double *zbuf = im->zbuf;
    int64_t *fid = im->fid;
    float *bc = im->bc;
#if RASTER_AVX512
    const __m512d zav = _mm512_set1_pd(za), zbv = _mm512_set1_pd(zb), zcv = _mm512_set1_pd(zc);
    const __m512d invv = _mm512_set1_pd(inv);
    const __m512i st0 = _mm512_set1_epi64(8 * s0), st1 = _mm512_set1_epi64(8 * s1), st2 = _mm512_set1_epi64(8 * s2);
    const __m512i lane0 = _mm512_mullo_epi64(im->lane, _mm512_set1_epi64(s0));
    const __m512i lane1 = _mm512_mullo_epi64(im->lane, _mm512_set1_epi64(s1));
    const __m512i lane2 = _mm512_mullo_epi64(im->lane, _mm512_set1_epi64(s2));
    const __m512i fv = _mm512_set1_epi64(f);
#endif
    for (int64_t r = r_lo; r <= r_hi; ++r) {
        const int64_t py = r * S;
        const int64_t E[3] = {A[0] * (cmin * S - xa[0]) + G[0] * (py - ya[0]),
                              A[1] * (cmin * S - xa[1]) + G[1] * (py - ya[1]),
                              A[2] * (cmin * S - xa[2]) + G[2] * (py - ya[2])};
        /* the exact span of columns c - cmin in [lo, hi] where every edge function reaches its bias */
        int64_t lo = 0, hi = cmax - cmin;
        for (int k = 0; k < 3 && lo <= hi; ++k) {
            const int64_t need = bias[k] - E[k];  /* e_k(t) = E_k + s_k t >= bias_k  <=>  s_k t >= need */
            if (sk[k] > 0) {
                if (need > 0) { const int64_t t = (need + sk[k] - 1) / sk[k]; if (t > lo) lo = t; }
            } else if (sk[k] < 0) {
                if (need > 0) { hi = -1; break; }
                const int64_t t = (-need) / (-sk[k]); if (t < hi) hi = t;
            } else if (need > 0) { hi = -1; break; }
        }
        if (lo > hi) continue;
        const int64_t e0 = E[0] + s0 * lo, e1 = E[1] + s1 * lo, e2 = E[2] + s2 * lo;
        const int64_t start = r * W + cmin + lo, n = hi - lo + 1;
#if RASTER_AVX512
        /* eight columns at a time, each lane the scalar loop's arithmetic (no FMA, the same roundings) */
        __m512i v0 = _mm512_add_epi64(_mm512_set1_epi64(e0), lane0);
        __m512i v1 = _mm512_add_epi64(_mm512_set1_epi64(e1), lane1);
        __m512i v2 = _mm512_add_epi64(_mm512_set1_epi64(e2), lane2);
        for (int64_t t = 0; t < n; t += 8) {
            __mmask8 m = n - t >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (n - t)) - 1);
            const __m512d d0 = _mm512_cvtepi64_pd(v0), d1 = _mm512_cvtepi64_pd(v1), d2 = _mm512_cvtepi64_pd(v2);
            const __m512d zz = _mm512_mul_pd(
                _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(d0, zav), _mm512_mul_pd(d1, zbv)), _mm512_mul_pd(d2, zcv)),
                invv);
            m = _mm512_mask_cmp_pd_mask(m, zz, im->nearv, _CMP_GE_OQ);
            m = _mm512_mask_cmp_pd_mask(m, zz, im->farv, _CMP_LE_OQ);
            const int64_t idx = start + t;
            if (m) m = _mm512_mask_cmp_pd_mask(m, zz, _mm512_maskz_loadu_pd(m, zbuf + idx), _CMP_LT_OQ);
            if (m) {
                _mm512_mask_storeu_pd(zbuf + idx, m, zz);
                _mm512_mask_storeu_epi64(fid + idx, m, fv);
                const __m256 b0 = _mm512_cvtpd_ps(_mm512_mul_pd(d0, invv));
                const __m256 b1 = _mm512_cvtpd_ps(_mm512_mul_pd(d1, invv));
                const __m256 b2 = _mm512_cvtpd_ps(_mm512_mul_pd(d2, invv));
                const __m512 x = _mm512_insertf32x8(_mm512_castps256_ps512(b0), b1, 1);
                const __m512 y = _mm512_castps256_ps512(b2);
                const uint32_t mm = im->spread3[m];  /* pixel i's bit -> its three floats' bits */
                _mm512_mask_storeu_ps(bc + 3 * idx, (__mmask16)(mm & 0xFFFF), _mm512_permutex2var_ps(x, im->ilo, y));
                _mm256_mask_storeu_ps(bc + 3 * idx + 16, (__mmask8)(mm >> 16),
                                      _mm512_castps512_ps256(_mm512_permutex2var_ps(x, im->ihi, y)));
            }
            v0 = _mm512_add_epi64(v0, st0);
            v1 = _mm512_add_epi64(v1, st1);
            v2 = _mm512_add_epi64(v2, st2);
        }
#else
        int64_t ea = e0, eb = e1, ec = e2;
        for (int64_t idx = start; idx < start + n; ++idx, ea += s0, eb += s1, ec += s2) {
            const double zz = ((double)ea * za + (double)eb * zb + (double)ec * zc) * inv;
            if (!(zz >= im->near_z && zz <= im->far_z)) continue;
            if (zz < zbuf[idx]) {
                zbuf[idx] = zz;
                fid[idx] = f;
                bc[3 * idx] = (float)((double)ea * inv);
                bc[3 * idx + 1] = (float)((double)eb * inv);
                bc[3 * idx + 2] = (float)((double)ec * inv);
            }
        }
#endif
    }
}

/* fx, fy: [B, V] fixed-point pixel coords; z: [B, V]; valid: [B, V]; faces: [F, 3].
   Outputs face_id [B, H, W], bary [B, H, W, 3], depth [B, H, W]; zbuf: scratch [H * W].
   The image is drawn in bands of `band` rows, each band's faces in their order: a pixel sees the same faces in
   the same order as in one pass over the image, and a band's buffers stay in the cache while its faces land.
   Returns 0, or -1 when the band lists cannot be allocated. */
int capture_rasterize(int64_t B, int64_t V, int64_t F, int64_t H, int64_t W, int64_t S,
                      const int64_t *fx, const int64_t *fy, const double *z, const uint8_t *valid,
                      const int64_t *faces, double near_z, double far_z,
                      int64_t *face_id, float *bary, float *depth, double *zbuf, int64_t band)
{
    const int64_t HW = H * W;
    if (band < 1) band = 1;
    const int64_t n_bands = (H + band - 1) / band;
    int64_t *band_start = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n_bands + 1));
    int64_t *rows = (int64_t *)malloc(sizeof(int64_t) * 2 * (size_t)(F > 0 ? F : 1));
    if (!band_start || !rows) { free(band_start); free(rows); return -1; }
    Image im;
    im.H = H; im.W = W; im.S = S; im.faces = faces; im.near_z = near_z; im.far_z = far_z; im.zbuf = zbuf;
    im.shift = -1;
    for (int k = 0; k < 62; ++k)
        if (((int64_t)1 << k) == S) im.shift = k;
#if RASTER_AVX512
    im.lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    im.nearv = _mm512_set1_pd(near_z);
    im.farv = _mm512_set1_pd(far_z);
    {   /* float p of eight pixels' interleaved barycentrics <- b_{p%3}[p/3], b0 and b1 in x (0-15), b2 in y (16-23) */
        int32_t lo_idx[16], hi_idx[16] = {0};
        for (int p = 0; p < 24; ++p) {
            const int i = p / 3, ch = p % 3, from = ch == 0 ? i : (ch == 1 ? 8 + i : 16 + i);
            if (p < 16) lo_idx[p] = from; else hi_idx[p - 16] = from;
        }
        im.ilo = _mm512_loadu_si512(lo_idx);
        im.ihi = _mm512_loadu_si512(hi_idx);
        for (int m = 0; m < 256; ++m) {
            uint32_t bits = 0;
            for (int i = 0; i < 8; ++i) if (m >> i & 1) bits |= 7u << (3 * i);
            im.spread3[m] = bits;
        }
    }
#endif
    int64_t *list = NULL;
    int status = 0;
    for (int64_t b = 0; b < B && status == 0; ++b) {
        im.X = fx + b * V; im.Y = fy + b * V; im.Z = z + b * V; im.ok = valid + b * V;
        im.fid = face_id + b * HW;
        im.bc = bary + b * HW * 3;
        float *dp = depth + b * HW;
        if (n_bands == 1) {  /* the whole image is one band: no lists */
            clear_pixels(&im, 0, HW);
            for (int64_t f = 0; f < F; ++f) {
                int64_t r0, r1;
                if (face_rows(&im, f, &r0, &r1)) draw_face(&im, f, r0, r1);
            }
            write_depths(&im, dp, 0, HW);
            continue;
        }
        /* each face's rows, and the faces of each band in face order */
        for (int64_t k = 0; k <= n_bands; ++k) band_start[k] = 0;
        for (int64_t f = 0; f < F; ++f) {
            int64_t r0, r1;
            if (!face_rows(&im, f, &r0, &r1)) { rows[2 * f] = 1; rows[2 * f + 1] = 0; continue; }
            rows[2 * f] = r0; rows[2 * f + 1] = r1;
            for (int64_t k = r0 / band; k <= r1 / band; ++k) band_start[k + 1] += 1;
        }
        for (int64_t k = 0; k < n_bands; ++k) band_start[k + 1] += band_start[k];
        free(list);
        list = (int64_t *)malloc(sizeof(int64_t) * (size_t)(band_start[n_bands] > 0 ? band_start[n_bands] : 1));
        if (!list) { status = -1; break; }
        {
            int64_t *fill = (int64_t *)malloc(sizeof(int64_t) * (size_t)n_bands);
            if (!fill) { status = -1; break; }
            for (int64_t k = 0; k < n_bands; ++k) fill[k] = band_start[k];
            for (int64_t f = 0; f < F; ++f)
                for (int64_t k = rows[2 * f] / band; rows[2 * f] <= rows[2 * f + 1] && k <= rows[2 * f + 1] / band; ++k)
                    list[fill[k]++] = f;
            free(fill);
        }
        for (int64_t k = 0; k < n_bands; ++k) {
            const int64_t top = k * band, bottom = top + band < H ? top + band : H;  /* rows [top, bottom) */
            clear_pixels(&im, top * W, bottom * W);
            for (int64_t j = band_start[k]; j < band_start[k + 1]; ++j) {
                const int64_t f = list[j];
                const int64_t r0 = rows[2 * f] > top ? rows[2 * f] : top;
                const int64_t r1 = rows[2 * f + 1] < bottom - 1 ? rows[2 * f + 1] : bottom - 1;
                draw_face(&im, f, r0, r1);
            }
            write_depths(&im, dp, top * W, bottom * W);
        }
    }
    free(list);
    free(rows);
    free(band_start);
    return status;
}
"""
_RASTER = CompiledKernel("cpu_raster", _C_SOURCE, native=True, functions={
    "capture_rasterize": (ctypes.c_int, [ctypes.c_int64] * 6 + [ctypes.c_void_p] * 5 + [ctypes.c_double] * 2
                          + [ctypes.c_void_p] * 4 + [ctypes.c_int64])})


def c_kernel_error() -> Optional[str]:
    """None when the C kernel is available (compiling it on first call), else why not."""
    return _RASTER.error()


def band_rows(width: int) -> int:
    """Rows of a band whose buffers (`BYTES_PER_PIXEL` a pixel) fill `BAND_BYTES`."""
    return max(1, BAND_BYTES // (BYTES_PER_PIXEL * max(1, int(width))))


def rasterize_c(fx, fy, z, valid, faces, size, near=DEPTH_NEAR, far=DEPTH_FAR, band: Optional[int] = None):
    """Same contract and bit-identical results as `rasterize_torch`, in compiled C. band: rows drawn at a time
    (default `band_rows`)."""
    rasterize_fn = _RASTER.function("capture_rasterize")
    H, W = size
    band = band_rows(W) if band is None else int(band)
    B, V = fx.shape
    faces = faces.to(dtype=torch.int64, device="cpu").contiguous()
    valid_u8 = valid.to(torch.uint8).contiguous()
    face_id = torch.empty((B, H, W), dtype=torch.int64)
    bary = torch.empty((B, H, W, 3), dtype=torch.float32)
    depth = torch.empty((B, H, W), dtype=torch.float32)
    zbuf = torch.empty((H * W,), dtype=torch.float64)
    status = rasterize_fn(
        B, V, faces.shape[0], H, W, SUBPIXEL,
        fx.data_ptr(), fy.data_ptr(), z.data_ptr(), valid_u8.data_ptr(), faces.data_ptr(),
        float(near), float(far),
        face_id.data_ptr(), bary.data_ptr(), depth.data_ptr(), zbuf.data_ptr(), band)
    if status != 0:
        raise MemoryError(f"CPU rasterizer: no memory for the band lists of {faces.shape[0]} faces")
    return face_id, bary, depth


# ----------------------------------------------------------------------------------------------------

class CpuRasterizer(Rasterizer):
    """Rasterizer for machines without a GPU. `kernel`: "auto" | "c" | "torch" (see module doc).

    Works on tensors of any device (computes on the CPU, returns on the vertices' device). The chosen
    kernel is in `.kernel`.
    """

    name = "cpu"

    def __init__(self, kernel: str = "auto", near: float = DEPTH_NEAR, far: float = DEPTH_FAR,
                 chunk: int = 1 << 19):
        super().__init__(near, far)
        if kernel not in KERNELS:
            raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
        if kernel in ("auto", "c"):
            error = c_kernel_error()
            if error and kernel == "c":
                raise RuntimeError(f"CPU raster C kernel unavailable ({error}); use kernel='torch' or 'auto'")
            if error and not _RASTER.warned:
                _RASTER.warned = True
                log.warning("CPU rasterizer: C kernel unavailable (%s); using the slower torch kernel", error)
            kernel = "torch" if error else "c"
        self.kernel = kernel
        self.chunk = int(chunk)

    def rasterize(self, vertices: torch.Tensor, faces: torch.Tensor, size: Tuple[int, int],
                  window: Optional[Window] = None) -> Fragments:
        H, W = check_rasterize_inputs(vertices, faces, size)
        window = check_window(window, (H, W))
        B = vertices.shape[0]
        if faces.shape[0] == 0 or vertices.shape[1] == 0:
            return empty_fragments(B, (H, W), vertices.device, window)
        fx, fy, z, valid, (H, W) = snap_into_window(vertices, (H, W), window)
        faces_cpu = faces.detach().to(device="cpu", dtype=torch.int64).contiguous()
        if self.kernel == "c":
            face_id, bary, depth = rasterize_c(fx, fy, z, valid, faces_cpu, (H, W), self.near, self.far)
        else:
            face_id, bary, depth = rasterize_torch(fx, fy, z, valid, faces_cpu, (H, W), self.near, self.far,
                                                   chunk=self.chunk)
        device = vertices.device
        return Fragments(face_id.to(device), bary.to(device), depth.to(device), window)

    def __repr__(self) -> str:
        return f"CpuRasterizer(kernel={self.kernel!r}, near={self.near}, far={self.far})"
