"""Silhouette antialiasing of a drawn picture: smooth head outlines and transparent edges.

The rasterizers sample one point per pixel (its centre), so a silhouette comes out as a staircase and a
transparent background's alpha as 0 or 1. This pass gives every pixel beside a silhouette the share of its
square that the nearer surface covers, from the mesh's own edges, in the way of nvdiffrast's `antialias`
(Laine et al. 2020, "Modular Primitives for High-Performance Differentiable Rendering"):

- Each pair of neighbouring pixels (left-right and up-down) whose centres show different triangles is looked
  at from the nearer one's centre (a pixel on nothing is farther than any other). From that centre the pass
  walks the mesh towards the other centre, triangle to triangle across the edges the segment crosses, until
  it meets the other pixel's triangle (no silhouette between them: the same surface) or crosses a silhouette
  edge: one whose two faces turn opposite ways on the screen, or with one face only (the mesh's border).
  nvdiffrast looks at the nearer pixel's own triangle only; the walk also finds a silhouette a thin, grazing
  triangle away, which is where silhouettes are.
- The silhouette edge's line cuts both pixels' squares (its covered side: the side of its face's third corner,
  which holds where the centre lies exactly on the edge): the nearer pixel keeps its covered share s and
  takes 1 - s of the other pixel's colour; the other pixel takes its own covered share of the nearer one's
  colour (the exact area of a unit square on one side of a line). A pixel beside several such pairs takes the
  largest share of one of them (a straight edge seen from two neighbours is one share, not two).
- Colours are mixed with their alpha (premultiplied) and stored back unpremultiplied: over an opaque
  background that is a plain mix of the two colours, and with `--background transparent` the head keeps its
  colour out to its edge with alpha = its covered share (black stays under alpha 0).

`antialias` runs one compiled pass (`capture.compiled`), which looks only at the pairs that some silhouette edge
crosses (a few thousand, against ~10^5 pairs on different triangles in a 720p head); without a C compiler the
same arithmetic runs in numpy over every pair on different triangles (`antialias_numpy`, also the tests' second
implementation: both give the same pixels, broken meshes included). Pixel coordinates: centres at integers
(`conventions.ndc_to_pixel`); the fragments and the picture they are pasted into are both y-down.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np
import torch

from ..compiled import CompiledKernel
from ..conventions import ndc_to_pixel

# Triangles a walk crosses before it gives up: a silhouette farther than that (more than a pixel's width of thin,
# grazing triangles) is left as it is drawn.
MAX_STEPS = 16
# Pixels: how far a crossing may lie behind where a walk is and still count (the rasterizer's snapped corners put
# a covered centre up to 1/512 pixel outside its triangle's float edges); also the margin of the compiled pass's
# search for the pairs an edge crosses.
NEAR = 0.01

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <math.h>

#define MAX_STEPS @MAX_STEPS@
#define NEAR @NEAR@f  /* see the module's NEAR */

typedef struct { const float *x, *y; const int64_t *faces, *nb; int64_t F; const int8_t *turn; } Mesh;

/* +1 / -1: which way a face turns on the screen (the sign of its doubled area), 0: edge-on */
static inline int8_t face_turn(const float *x, const float *y, const int64_t *v) {
    const float ax = x[v[0]], ay = y[v[0]];
    const float a = (x[v[1]] - ax) * (y[v[2]] - ay) - (y[v[1]] - ay) * (x[v[2]] - ax);
    return (int8_t)((a > 0.0f) - (a < 0.0f));
}

/* Whether the edge of face f towards its neighbour n (-1: none) is a silhouette. */
static inline int is_silhouette(const Mesh *m, int64_t f, int64_t n) {
    return n < 0 || m->turn[n] == 0 || m->turn[n] != m->turn[f];
}

/* Walk from the centre (px, py) on face f one pixel along (dx, dy) towards a centre on face g (-1: nothing).
   1 when the segment crosses a silhouette edge, with its ends and the face's third corner (on the covered
   side) in e[6], else 0. */
static int silhouette(const Mesh *m, int64_t f, int64_t g, float px, float py, int dx, int dy, float *e) {
    int64_t from = -1;
    float entry_t = 0.0f;  /* where the walk entered this face */
    for (int step = 0; step < MAX_STEPS; ++step) {
        const int64_t *v = m->faces + 3 * f;
        int exit_k = -1;
        float exit_t = -1e30f;
        for (int k = 0; k < 3; ++k) {
            if (from >= 0 && m->nb[3 * f + k] == from) continue;  /* the edge the walk came in by */
            const float ax = m->x[v[k]], ay = m->y[v[k]], bx = m->x[v[(k + 1) % 3]], by = m->y[v[(k + 1) % 3]];
            float a_across, b_across, a_along, b_along;
            if (dy == 0) { a_across = ay - py; b_across = by - py; a_along = (ax - px) * dx; b_along = (bx - px) * dx; }
            else { a_across = ax - px; b_across = bx - px; a_along = (ay - py) * dy; b_along = (by - py) * dy; }
            if (a_across * b_across > 0.0f || a_across == b_across) continue;  /* the edge misses the segment's line */
            const float s = a_across / (a_across - b_across);
            const float t = a_along + s * (b_along - a_along);
            if (t > exit_t) { exit_t = t; exit_k = k; }  /* a convex face: the farthest crossing is the way out */
        }
        if (exit_k < 0 || exit_t >= 1.0f) return 0;  /* the other centre lies on this surface */
        if (exit_t < entry_t - NEAR) return 0;  /* no way forward: faces folded onto each other (a broken mesh) */
        const int64_t n = m->nb[3 * f + exit_k];
        if (is_silhouette(m, f, n)) {
            e[0] = m->x[v[exit_k]]; e[1] = m->y[v[exit_k]];
            e[2] = m->x[v[(exit_k + 1) % 3]]; e[3] = m->y[v[(exit_k + 1) % 3]];
            e[4] = m->x[v[(exit_k + 2) % 3]]; e[5] = m->y[v[(exit_k + 2) % 3]];
            return 1;
        }
        if (n == g) return 0;
        from = f;
        f = n;
        entry_t = exit_t;
    }
    return 0;
}

/* The share of a unit square on the positive side of a line at signed distance d from its centre, the line's
   unit normal (nx, ny). */
static inline float square_share(float d, float nx, float ny) {
    float a = fabsf(nx), b = fabsf(ny);
    if (a > b) { const float t = a; a = b; b = t; }
    const float half = 0.5f * (a + b), ad = fabsf(d);
    if (ad <= 0.5f * (b - a)) return 0.5f + d / b;
    float inside = 1.0f;
    if (ad < half) { const float r = half - ad; inside = 1.0f - r * r / (2.0f * a * b); }
    return d > 0.0f ? inside : 1.0f - inside;
}

typedef struct {
    Mesh m;
    const int64_t *ids;
    const float *depth;
    int64_t W, PW, top, left;
    const uint8_t *rgb, *alpha;
    float *share;        /* per fragment: the largest share offered so far */
    int64_t *source;     /* the picture pixel it comes from */
    uint32_t *colour;    /* and that pixel's RGBA */
    int64_t *touched;    /* the fragments offered anything, in order */
    int64_t n_touched, cap;
    int failed;          /* 1: out of memory, -1: a face id out of range */
} Pass;

static inline uint32_t rgba_at(const Pass *p, int64_t at) {
    const uint8_t *q = p->rgb + 3 * at;
    return (uint32_t)q[0] | ((uint32_t)q[1] << 8) | ((uint32_t)q[2] << 16)
           | ((uint32_t)(p->alpha ? p->alpha[at] : 255) << 24);
}

/* Offer fragment i the share w of picture pixel src's colour: it keeps the largest share, and of equal ones
   the lowest src (so the result does not depend on the order of the offers). */
static void offer(Pass *p, int64_t i, float w, int64_t src) {
    if (!(w > 0.0f)) return;
    const float have = p->share[i];
    if (w < have || (w == have && src >= p->source[i])) return;
    if (have == 0.0f) {
        if (p->n_touched == p->cap) {
            int64_t *more = realloc(p->touched, (size_t)(2 * p->cap) * sizeof(int64_t));
            if (!more) { p->failed = 1; return; }  /* reported as out of memory */
            p->touched = more;
            p->cap *= 2;
        }
        p->touched[p->n_touched++] = i;
    }
    p->share[i] = w;
    p->source[i] = src;
    p->colour[i] = rgba_at(p, src);
}

/* The pair of fragments (r, c) and (r + dir, c + 1 - dir), on different faces. */
static __attribute__((noinline)) void pair(Pass *p, int64_t r, int64_t c, int dir) {
    const int64_t r2 = r + dir, c2 = c + 1 - dir, W = p->W;
    const int64_t i = r * W + c, j = r2 * W + c2, fa = p->ids[i], fb = p->ids[j];
    if (fa == fb) return;
    if (fa >= p->m.F || fb >= p->m.F) { p->failed = -1; return; }
    int near_first;
    if (fa < 0) near_first = 0;
    else if (fb < 0) near_first = 1;
    else near_first = p->depth[i] < p->depth[j] || (p->depth[i] == p->depth[j] && fa < fb);
    const int64_t n = near_first ? i : j, o = near_first ? j : i;
    const int64_t nr = near_first ? r : r2, nc = near_first ? c : c2;
    const int64_t orow = near_first ? r2 : r, ocol = near_first ? c2 : c;
    const int sgn = near_first ? 1 : -1;
    float e[6];
    if (!silhouette(&p->m, p->ids[n], p->ids[o], (float)nc, (float)nr, sgn * (1 - dir), sgn * dir, e)) return;
    float ux = e[3] - e[1], uy = e[0] - e[2];  /* the edge's normal */
    const float len = sqrtf(ux * ux + uy * uy);
    if (!(len > 0.0f)) return;
    ux /= len; uy /= len;
    float dn = ((float)nc - e[0]) * ux + ((float)nr - e[1]) * uy;
    float dout = ((float)ocol - e[0]) * ux + ((float)orow - e[1]) * uy;
    if ((e[4] - e[0]) * ux + (e[5] - e[1]) * uy < 0.0f) {  /* positive on the covered side */
        dn = -dn; dout = -dout; ux = -ux; uy = -uy;
    }
    const int64_t pn = (nr + p->top) * p->PW + nc + p->left, po = (orow + p->top) * p->PW + ocol + p->left;
    offer(p, n, 1.0f - square_share(dn, ux, uy), po);
    offer(p, o, square_share(dout, ux, uy), pn);
}

static inline int64_t clamp64(double v, int64_t lo, int64_t hi) {
    return v < (double)lo ? lo : v > (double)hi ? hi : (int64_t)v;
}

/* pair() for the pairs of one direction whose centres' segment an edge crosses (dir 0: left-right pairs, on
   the rows of centres the edge spans; 1: up-down, on its columns): the edge's ends as (line, position along
   the line), the lines l0..l1-1 and positions q0..q1-1 of the fragments. */
static void crossed_on_lines(Pass *p, int dir, float al, float aq, float bl, float bq, int64_t l0, int64_t l1,
                             int64_t q0, int64_t q1) {
    if (al == bl) return;
    const int64_t first = clamp64(ceil(fminf(al, bl)), l0, l1), last = clamp64(floor(fmaxf(al, bl)), l0 - 1, l1 - 1);
    for (int64_t l = first; l <= last; ++l) {
        const float q = aq + ((float)l - al) * (bq - aq) / (bl - al);
        const int64_t q_lo = clamp64(floor(q - NEAR), q0 - 1, q1), q_hi = clamp64(floor(q + NEAR), q0 - 1, q1);
        for (int64_t k = q_lo; k <= q_hi; ++k)
            if (k >= q0 && k + 1 < q1) pair(p, dir ? k : l, dir ? l : k, dir);
    }
}

/* pair() for every pixel pair the edge (ax, ay) - (bx, by) crosses, within rows r0..r1-1, columns c0..c1-1. */
static void crossed_pairs(Pass *p, float ax, float ay, float bx, float by, int64_t r0, int64_t r1, int64_t c0,
                          int64_t c1) {
    if (!(isfinite(ax) && isfinite(ay) && isfinite(bx) && isfinite(by))) return;
    crossed_on_lines(p, 0, ay, ax, by, bx, r0, r1, c0, c1);
    crossed_on_lines(p, 1, ax, ay, bx, by, c0, c1, r0, r1);
}

/* ids / depth: H x W fragments (batch 1); x, y: [V] vertex pixel coordinates in the fragments' frame; faces, nb:
   [F, 3] corners and the face across each edge (k: corner k -> k + 1; -1 none); rgb [PH, PW, 3] and alpha
   [PH, PW] (or NULL: opaque) the picture, fragment (r, c) at its (r + top, c + left); share, source, colour:
   H x W scratch, share all zero (and left so). Returns the pixels changed, -1 when a face id is out of range, -2 out
   of memory. */
int64_t capture_antialias(const int64_t *ids, const float *depth, int64_t H, int64_t W, const float *x,
                          const float *y, const int64_t *faces, const int64_t *nb, int64_t F, uint8_t *rgb,
                          uint8_t *alpha, int64_t PH, int64_t PW, int64_t top, int64_t left, float *share,
                          int64_t *source, uint32_t *colour) {
    for (int64_t i = 0; i < 3 * F; ++i)
        if (nb[i] >= F) return -1;
    const int64_t r0 = top < 0 ? -top : 0, c0 = left < 0 ? -left : 0;  /* the fragments inside the picture */
    const int64_t r1 = H < PH - top ? H : PH - top, c1 = W < PW - left ? W : PW - left;
    if (r1 <= r0 || c1 <= c0) return 0;
    Pass p = {{x, y, faces, nb, F, NULL}, ids, depth, W, PW, top, left, rgb, alpha, share, source, colour, NULL, 0,
              4096, 0};
    int8_t *turn = malloc((size_t)(F > 0 ? F : 1));
    p.touched = malloc((size_t)p.cap * sizeof(int64_t));
    int64_t changed = -2;
    if (!turn || !p.touched) goto done;
    for (int64_t f = 0; f < F; ++f) turn[f] = face_turn(x, y, faces + 3 * f);
    p.m.turn = turn;
    /* Only the pairs a silhouette edge crosses can change (the walk ends on one): each edge's crossings of the
       rows and columns of pixel centres, a pair either side where it passes within NEAR of a centre (the
       rasterizer's snapped corners may put that centre on either side). */
    for (int64_t f = 0; f < F; ++f)
        for (int k = 0; k < 3; ++k) {
            const int64_t n = nb[3 * f + k];
            if ((n >= 0 && n < f) || !is_silhouette(&p.m, f, n)) continue;  /* each silhouette edge once */
            const int64_t *v = faces + 3 * f;
            crossed_pairs(&p, x[v[k]], y[v[k]], x[v[(k + 1) % 3]], y[v[(k + 1) % 3]], r0, r1, c0, c1);
        }
    if (p.failed) { changed = p.failed < 0 ? -1 : -2; goto done; }
    for (int64_t k = 0; k < p.n_touched; ++k) {
        const int64_t i = p.touched[k];
        const float w = p.share[i];
        const uint32_t t = p.colour[i];
        const int64_t at = (i / W + top) * PW + i % W + left;
        uint8_t *q = rgb + 3 * at;
        const float own_a = alpha ? alpha[at] / 255.0f : 1.0f, t_a = (float)(t >> 24) / 255.0f;
        const float w_own = (1.0f - w) * own_a, w_t = w * t_a, a = w_own + w_t;
        const uint8_t a8 = (uint8_t)(a * 255.0f + 0.5f);
        for (int k3 = 0; k3 < 3; ++k3) {  /* black under alpha 0 */
            const float v = a8 > 0 ? (w_own * q[k3] + w_t * (float)((t >> (8 * k3)) & 255)) / a : 0.0f;
            q[k3] = (uint8_t)(v + 0.5f);
        }
        if (alpha) alpha[at] = a8;
    }
    changed = p.n_touched;
done:
    for (int64_t k = 0; k < p.n_touched; ++k) share[p.touched[k]] = 0.0f;  /* all zero again for the next call */
    free(turn);
    free(p.touched);
    return changed;
}
""".replace("@MAX_STEPS@", str(MAX_STEPS)).replace("@NEAR@", repr(NEAR))

_KERNEL = CompiledKernel("antialias", _SOURCE, {
    "capture_antialias": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
                          + [ctypes.c_void_p] * 4 + [ctypes.c_int64] + [ctypes.c_void_p] * 2
                          + [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 3)})


def kernel_error() -> Optional[str]:
    """None when the compiled pass is available (compiling it on first call), else why not."""
    return _KERNEL.error()


class Scratch:
    """The compiled pass's per-pixel working memory, kept between frames (fresh pages cost more than the pass):
    share [n] float32, all zero between calls, source [n] int64 and colour [n] uint32. One per caller thread."""

    def __init__(self):
        self.share = np.zeros(0, np.float32)

    def at_least(self, n: int) -> "Scratch":
        if self.share.size < n:
            self.share = np.zeros(n, np.float32)
            self.source = np.zeros(n, np.int64)
            self.colour = np.zeros(n, np.uint32)
        return self


def face_neighbours(faces) -> np.ndarray:
    """[F, 3] int64: the face across edge k (corner k -> corner k + 1) of each face, -1 where there is none (the
    mesh's border) or where more than two faces share the edge (treated as a border too)."""
    f = np.asarray(faces, dtype=np.int64)
    F = f.shape[0]
    a = f.reshape(-1)
    b = f[:, [1, 2, 0]].reshape(-1)
    key = np.minimum(a, b) * (int(a.max(initial=0)) + 1) + np.maximum(a, b)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    counts = np.diff(np.r_[starts, key.size])
    out = np.full(3 * F, -1, np.int64)
    pair = starts[counts == 2]
    first, second = order[pair], order[pair + 1]
    out[first], out[second] = second // 3, first // 3
    return out.reshape(F, 3)


def vertex_pixels(screen: torch.Tensor, size: tuple[int, int], window=None) -> tuple[np.ndarray, np.ndarray]:
    """Frame NDC [1, V, 3] -> (x, y) [V] float32 pixel coordinates in the fragments' frame (a `Window`'s, or the
    whole frame's)."""
    xy = screen.detach()[0, :, :2].to("cpu", torch.float32).numpy()
    pix = ndc_to_pixel(xy, size)
    if window is not None:
        pix = pix - np.array([window.left, window.top], np.float32)
    return np.ascontiguousarray(pix[:, 0], np.float32), np.ascontiguousarray(pix[:, 1], np.float32)


def antialias(rgb: np.ndarray, alpha: Optional[np.ndarray], face_id: torch.Tensor, depth: torch.Tensor,
              x: np.ndarray, y: np.ndarray, faces: np.ndarray, neighbours: np.ndarray, top: int = 0,
              left: int = 0, kernel: str = "auto", scratch: Optional[Scratch] = None) -> int:
    """Antialias the silhouettes of a drawn picture in place; returns the pixels changed.

    rgb [PH, PW, 3] uint8 and alpha [PH, PW] uint8 or None (opaque): the picture, C-contiguous; face_id / depth
    [1, H, W] (or [H, W]): the fragments drawn into it, fragment (r, c) at picture pixel (r + top, c + left);
    x, y [V] float32: the vertices in the fragments' pixel coordinates (`vertex_pixels`); faces [F, 3];
    neighbours [F, 3] (`face_neighbours`). kernel: "auto" (compiled, else numpy), "c" or "numpy". scratch: the
    compiled pass's working memory to reuse (a `Scratch`; one for this call when None).
    """
    ids = face_id.reshape(face_id.shape[-2:]).to("cpu", torch.int64).contiguous()
    z = depth.reshape(depth.shape[-2:]).to("cpu", torch.float32).contiguous()
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or not rgb.flags.c_contiguous:
        raise ValueError(f"antialias: rgb must be a C-contiguous [rows, width, 3] uint8 array, got {rgb.shape}")
    if alpha is not None and (alpha.dtype != np.uint8 or alpha.shape != rgb.shape[:2] or not alpha.flags.c_contiguous):
        raise ValueError(f"antialias: alpha must be a C-contiguous {rgb.shape[:2]} uint8 array, got {alpha.shape}")
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    neighbours = np.ascontiguousarray(neighbours, dtype=np.int64)
    x, y = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float32)
    if x.shape != y.shape or neighbours.shape != faces.shape or (faces.size and (faces.min() < 0
                                                                               or faces.max() >= x.size)):
        raise ValueError(f"antialias: {faces.shape[0]} faces with corners in [{faces.min(initial=0)}, "
                         f"{faces.max(initial=0)}] and {neighbours.shape} neighbours do not fit {x.size} vertices")
    if kernel == "numpy" or (kernel == "auto" and kernel_error() is not None):
        return antialias_numpy(rgb, alpha, ids.numpy(), z.numpy(), x, y, faces, neighbours, top, left)
    H, W = ids.shape
    work = (scratch or Scratch()).at_least(H * W)
    changed = _KERNEL.function("capture_antialias")(
        ids.data_ptr(), z.data_ptr(), H, W, x.ctypes.data, y.ctypes.data, faces.ctypes.data,
        neighbours.ctypes.data, faces.shape[0], rgb.ctypes.data, None if alpha is None else alpha.ctypes.data,
        rgb.shape[0], rgb.shape[1], int(top), int(left), work.share.ctypes.data, work.source.ctypes.data,
        work.colour.ctypes.data)
    if changed == -1:
        raise ValueError(f"antialias: fragments of faces up to {int(ids.max())}, the mesh has {faces.shape[0]}")
    if changed < 0:
        raise MemoryError("antialias: out of memory")
    return int(changed)


# ------------------------------------------------------------------------------------------------ numpy twin
def _square_share(d: np.ndarray, nx: np.ndarray, ny: np.ndarray) -> np.ndarray:
    a, b = np.minimum(np.abs(nx), np.abs(ny)), np.maximum(np.abs(nx), np.abs(ny))
    ad = np.abs(d)
    half = np.float32(0.5) * (a + b)
    r = half - ad
    with np.errstate(divide="ignore", invalid="ignore"):
        corner = np.where(ad < half, np.float32(1) - r * r / (np.float32(2) * a * b), np.float32(1))
        linear = np.float32(0.5) + d / b
    inside = np.where(d > 0, corner, np.float32(1) - corner)
    return np.where(ad <= np.float32(0.5) * (b - a), linear, inside).astype(np.float32)


def _walk(x, y, faces, nb, turn, f, g, px, py, dx, dy):
    """The walk of the compiled pass for arrays of pairs: (found [N] bool, [N, 6] the edge's ends and the face's
    third corner)."""
    n = f.shape[0]
    found = np.zeros(n, bool)
    edge = np.zeros((n, 6), np.float32)
    active = np.ones(n, bool)
    came = np.full(n, -1, np.int64)
    entry = np.zeros(n, np.float32)  # where the walk entered its face
    f = f.copy()
    along_x = dy == 0
    for _ in range(MAX_STEPS):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        fv = faces[f[idx]]  # [n, 3]
        ax, ay = x[fv], y[fv]
        bx, by = x[fv[:, [1, 2, 0]]], y[fv[:, [1, 2, 0]]]
        qx, qy = px[idx, None], py[idx, None]
        sx, sy = dx[idx, None], dy[idx, None]
        ax_ = along_x[idx, None]
        a_across = np.where(ax_, ay - qy, ax - qx)
        b_across = np.where(ax_, by - qy, bx - qx)
        a_along = np.where(ax_, (ax - qx) * sx, (ay - qy) * sy)
        b_along = np.where(ax_, (bx - qx) * sx, (by - qy) * sy)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = a_across / (a_across - b_across)
            t = a_along + s * (b_along - a_along)
        ok = ~((a_across * b_across > 0) | (a_across == b_across)) & np.isfinite(t)  # NaN corners: no crossing
        ok &= ~((came[idx, None] >= 0) & (nb[f[idx]] == came[idx, None]))
        t = np.where(ok, t, np.float32(-1e30))
        k = np.argmax(t, axis=1)  # the first of equal crossings, as the compiled loop's strict >
        t_exit = t[np.arange(idx.size), k]
        stop = ~ok.any(axis=1) | (t_exit >= 1) | (t_exit < entry[idx] - np.float32(NEAR))
        nxt = nb[f[idx], k]
        t_n = np.where(nxt >= 0, turn[np.maximum(nxt, 0)], 0)
        sil = ~stop & ((nxt < 0) | (t_n == 0) | (t_n != turn[f[idx]]))
        hit = idx[sil]
        rows = np.arange(idx.size)[sil]
        third = (k[sil] + 2) % 3
        edge[hit] = np.stack([ax[rows, k[sil]], ay[rows, k[sil]], bx[rows, k[sil]], by[rows, k[sil]],
                              ax[rows, third], ay[rows, third]], axis=1)
        found[hit] = True
        done = stop | sil | (nxt == g[idx])
        active[idx[done]] = False
        move = idx[~done]
        came[move] = f[move]
        f[move] = nxt[~done]
        entry[move] = t_exit[~done]
    return found, edge


def antialias_numpy(rgb, alpha, ids, depth, x, y, faces, nb, top=0, left=0) -> int:
    """`antialias`'s arithmetic in numpy (no compiler needed); the same pixels to float rounding."""
    H, W = ids.shape
    PH, PW = rgb.shape[:2]
    r0, c0 = max(-top, 0), max(-left, 0)
    r1, c1 = min(H, PH - top), min(W, PW - left)
    if r1 <= r0 or c1 <= c0:
        return 0
    if ids.size and int(ids.max()) >= faces.shape[0]:
        raise ValueError(f"antialias: fragments of faces up to {int(ids.max())}, the mesh has {faces.shape[0]}")
    v = faces
    area = ((x[v[:, 1]] - x[v[:, 0]]) * (y[v[:, 2]] - y[v[:, 0]])
            - (y[v[:, 1]] - y[v[:, 0]]) * (x[v[:, 2]] - x[v[:, 0]])).astype(np.float32)
    turn = np.where(area > 0, 1, np.where(area < 0, -1, 0))  # which way each face turns; 0: edge-on (or NaN)
    rr, cc = np.mgrid[r0:r1, c0:c1]
    pairs = []
    for dr, dc in ((0, 1), (1, 0)):  # right, down (the compiled loop's order)
        keep = (rr + dr < r1) & (cc + dc < c1)
        r, c = rr[keep], cc[keep]
        i, j = r * W + c, (r + dr) * W + c + dc
        fa, fb = ids.reshape(-1)[i], ids.reshape(-1)[j]
        diff = fa != fb
        pairs.append((i[diff], j[diff], r[diff], c[diff], dr, dc))
    flat_ids, flat_z = ids.reshape(-1), depth.reshape(-1)
    picture = rgb.reshape(-1, 3).astype(np.float32)
    cover = (alpha.reshape(-1).astype(np.float32) if alpha is not None else np.full(PH * PW, 255, np.float32))
    colours = np.concatenate([picture, cover[:, None]], axis=1)
    offers = []  # (pixel of the fragments, share, picture pixel whose colour it takes)
    for i, j, r, c, dr, dc in pairs:
        fa, fb = flat_ids[i], flat_ids[j]
        near_first = np.where(fa < 0, False, np.where(fb < 0, True, (flat_z[i] < flat_z[j])
                                                      | ((flat_z[i] == flat_z[j]) & (fa < fb))))
        n, o = np.where(near_first, i, j), np.where(near_first, j, i)
        nr, nc = np.where(near_first, r, r + dr), np.where(near_first, c, c + dc)
        orow, ocol = np.where(near_first, r + dr, r), np.where(near_first, c + dc, c)
        sgn = np.where(near_first, 1, -1).astype(np.float32)
        found, e = _walk(x, y, faces, nb, turn, flat_ids[n], flat_ids[o], nc.astype(np.float32),
                         nr.astype(np.float32), sgn * dc, sgn * dr)
        ux, uy = e[:, 3] - e[:, 1], e[:, 0] - e[:, 2]
        length = np.sqrt(ux * ux + uy * uy)
        found &= length > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            ux, uy = ux / length, uy / length
        f32 = np.float32  # in float32 throughout, as the compiled pass
        dn = (nc.astype(f32) - e[:, 0]) * ux + (nr.astype(f32) - e[:, 1]) * uy
        dout = (ocol.astype(f32) - e[:, 0]) * ux + (orow.astype(f32) - e[:, 1]) * uy
        sign = np.where((e[:, 4] - e[:, 0]) * ux + (e[:, 5] - e[:, 1]) * uy < 0, -1, 1).astype(np.float32)
        dn, dout, ux, uy = dn * sign, dout * sign, ux * sign, uy * sign
        pn = (nr + top) * PW + nc + left
        po = (orow + top) * PW + ocol + left
        offers.append((n[found], 1 - _square_share(dn, ux, uy)[found], po[found]))
        offers.append((o[found], _square_share(dout, ux, uy)[found], pn[found]))
    who, w, src = (np.concatenate(parts) for parts in zip(*offers))
    keep = w > 0
    who, w, src = who[keep], w[keep], src[keep]
    order = np.lexsort((src, -w, who))  # per pixel the largest share first, of equal ones the lowest source
    first = np.r_[True, who[order][1:] != who[order][:-1]] if order.size else np.zeros(0, bool)
    pick = order[first]
    share = np.zeros(H * W, np.float32)
    target = np.zeros((H * W, 4), np.float32)
    share[who[pick]] = w[pick]
    target[who[pick]] = colours[src[pick]]
    changed = np.flatnonzero(share > 0)
    if changed.size == 0:
        return 0
    rows, cols = changed // W, changed % W
    at = (rows + top) * PW + cols + left
    w = share[changed]
    own_a = cover[at] / 255
    t_a = target[changed, 3] / 255
    w_own, w_t = (1 - w) * own_a, w * t_a
    a = w_own + w_t
    a8 = (a * 255 + 0.5).astype(np.uint8)
    with np.errstate(divide="ignore", invalid="ignore"):  # black under alpha 0
        mixed = np.where(a8[:, None] > 0, (w_own[:, None] * picture[at] + w_t[:, None] * target[changed, :3])
                         / a[:, None], 0)
    rgb.reshape(-1, 3)[at] = (mixed + 0.5).astype(np.uint8)
    if alpha is not None:
        alpha.reshape(-1)[at] = a8
    return int(changed.size)
