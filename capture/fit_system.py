"""One frame's Gauss-Newton system of the landmark fit in a compiled pass (`LandmarkFitter._solve_frame`), and the
same with the shape columns and the landmark offsets for each reservoir frame of an identity update
(`LandmarkFitter._shape_steps`: 80 such frames an update, ~1.2 ms each in numpy, ~0.5 ms here).

`LandmarkFitter._jacobian` (numpy) is the definition: the 68 landmarks of a state, their Jacobian over rotation |
jaw | expression | camera, and from them, with the robust weights of the Cauchy loss, J^T W J and J^T W r. In
numpy that is ~70 small array operations an iteration (~0.35 ms, most of it call overhead, holding the GIL
the pipeline's other stages want); this pass does the same arithmetic in float64, landmark by landmark, in one
call that releases the GIL. The sums run in another order: it agrees with the numpy steps to float64 rounding
(tests/test_fit.py).
"""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np

from .compiled import CompiledKernel

_SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* C = A B, 3 x 3 row-major */
static void mul3(const double *A, const double *B, double *C) {
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            C[3 * i + j] = A[3 * i] * B[j] + A[3 * i + 1] * B[3 + j] + A[3 * i + 2] * B[6 + j];
}

static void skew(const double *v, double *K) {
    K[0] = 0.0; K[1] = -v[2]; K[2] = v[1];
    K[3] = v[2]; K[4] = 0.0; K[5] = -v[0];
    K[6] = -v[1]; K[7] = v[0]; K[8] = 0.0;
}

/* Rodrigues and the right Jacobian of an axis-angle, as capture.fit.rotation_matrix / right_jacobian */
static void rotation(const double *aa, double *R) {
    const double t = sqrt(aa[0] * aa[0] + aa[1] * aa[1] + aa[2] * aa[2]);
    double K[9], KK[9];
    skew(aa, K);
    mul3(K, K, KK);
    const double a = t < 1e-8 ? 1.0 : sin(t) / t, b = t < 1e-8 ? 0.5 : (1.0 - cos(t)) / (t * t);
    for (int i = 0; i < 9; ++i) R[i] = (i % 4 == 0 ? 1.0 : 0.0) + a * K[i] + b * KK[i];
}

static void right_jacobian(const double *aa, double *Jr) {
    const double t = sqrt(aa[0] * aa[0] + aa[1] * aa[1] + aa[2] * aa[2]);
    double K[9], KK[9];
    skew(aa, K);
    mul3(K, K, KK);
    const double a = t < 1e-6 ? 0.5 : (1.0 - cos(t)) / (t * t), b = t < 1e-6 ? 1.0 / 6.0 : (t - sin(t)) / (t * t * t);
    for (int i = 0; i < 9; ++i) Jr[i] = (i % 4 == 0 ? 1.0 : 0.0) - a * K[i] + b * KK[i];
}

/* M [skew(column m of V)] for m = 0, 1, 2 -> out [3][9] */
static void times_skews(const double *M, const double *V, double *out) {
    for (int m = 0; m < 3; ++m) {
        const double a = V[m], b = V[3 + m], c = V[6 + m];  /* column m */
        const double K[9] = {0.0, -c, b, c, 0.0, -a, -b, a, 0.0};
        mul3(M, K, out + 9 * m);
    }
}

/* Landmarks of one contour row (L points; K coefficient columns, the first ne of them expression, the rest the
   fitted shape): x, y [L, 3]; xb, yb [L, 3, K]; xf, yf [L, 3, 9]; j0 [3]; j0b [3, K]; w [L] the jaw weights of the
   arms. state = rotation (3) | jaw (3) | exp (ne) | cam (s, tx, ty) as the fitter's vector, R =
   rotation_matrix(rotation) (the caller has it: the contour row depends on it); trust [L] = weights x valid, c2 the
   Cauchy scale^2. The parameters are rotation | jaw | exp | cam, then with_shape the K - ne shape columns:
   n = 9 + ne, or 9 + K. Out, in one buffer: pred [L, 2] crop NDC, H [n, n] = J^T W J and g [n] = J^T W r, W the
   IRLS weights trust / (1 + |r|^2 / c2), r = pred - target; with_shape then the landmark offsets' parts (offset l,
   x and y in head space, moves landmark l only): H_fo [n, 2 L], H_oo [L, 2, 2], g_o [L, 2]; then 2 n doubles of
   work. */
static void fit_pass(int64_t L, int64_t ne, int64_t K, int with_shape, const double *state, const double *R,
                     const double *x, const double *xb, const double *xf, const double *y, const double *yb,
                     const double *yf, const double *j0, const double *j0b, const double *w_arm,
                     const double *target, const double *trust, double c2, double *out)
{
    const int64_t nk = with_shape ? K : ne, n = 9 + nk, c0 = 6 + ne;
    const double *exp = state + 6, *cam = state + 6 + ne;
    const double s = cam[0], tx = cam[1], ty = cam[2];
    double *pred = out, *H = out + 2 * L, *g = H + n * n;
    double *H_fo = g + n, *H_oo = H_fo + (with_shape ? 2 * L * n : 0), *g_o = H_oo + (with_shape ? 4 * L : 0);
    double *work = g_o + (with_shape ? 2 * L : 0);
    double Rj[9], Jr[9], Jrj[9], A[9], G[27], D[27], j0e[3];
    rotation(state + 3, Rj);
    right_jacobian(state, Jr);
    right_jacobian(state + 3, Jrj);
    for (int i = 0; i < 9; ++i) A[i] = Rj[i] - (i % 4 == 0 ? 1.0 : 0.0);
    times_skews(R, Jr, G);    /* d p / d rotation_m = (R [J_r e_m]x) local */
    times_skews(Rj, Jrj, D);  /* d Rj / d jaw_m */
    for (int c = 0; c < 3; ++c) {
        double acc = j0[c];
        for (int64_t k = 0; k < ne; ++k) acc += j0b[c * K + k] * exp[k];
        j0e[c] = acc;
    }
    for (int64_t i = 0; i < work - H; ++i) H[i] = 0.0;  /* H, g and the offsets' parts */
    double *J0 = work, *J1 = work + n;
    for (int64_t l = 0; l < L; ++l) {
        const double *xl = x + 3 * l, *yl = y + 3 * l;
        const double *xbl = xb + 3 * K * l, *ybl = yb + 3 * K * l, *xfl = xf + 27 * l, *yfl = yf + 27 * l;
        double local[3], arm[3], p[3];
        for (int c = 0; c < 3; ++c) {
            double a = xl[c], b = yl[c];
            for (int64_t k = 0; k < ne; ++k) {
                a += xbl[c * K + k] * exp[k];
                b += ybl[c * K + k] * exp[k];
            }
            for (int q = 0; q < 9; ++q) {
                a += xfl[9 * c + q] * A[q];
                b += yfl[9 * c + q] * A[q];
            }
            local[c] = a;
            arm[c] = b;
        }
        for (int c = 0; c < 3; ++c) local[c] += arm[0] * A[3 * c] + arm[1] * A[3 * c + 1] + arm[2] * A[3 * c + 2];
        for (int c = 0; c < 3; ++c)
            p[c] = local[0] * R[3 * c] + local[1] * R[3 * c + 1] + local[2] * R[3 * c + 2] + j0e[c];
        double dp[2][6];  /* x and y rows of d p / d (rotation, jaw) */
        for (int m = 0; m < 3; ++m) {
            const double *Gm = G + 9 * m;
            for (int c = 0; c < 2; ++c)
                dp[c][m] = local[0] * Gm[3 * c] + local[1] * Gm[3 * c + 1] + local[2] * Gm[3 * c + 2];
        }
        for (int m = 0; m < 3; ++m) {
            const double *Dm = D + 9 * m;  /* d Rj; f = vec(Rj - I) changes by vec(d Rj) */
            double dlocal[3], yfd[3];
            for (int c = 0; c < 3; ++c) {
                double a = 0.0, b = 0.0;
                for (int q = 0; q < 9; ++q) {
                    a += xfl[9 * c + q] * Dm[q];
                    b += yfl[9 * c + q] * Dm[q];
                }
                dlocal[c] = a + arm[0] * Dm[3 * c] + arm[1] * Dm[3 * c + 1] + arm[2] * Dm[3 * c + 2];
                yfd[c] = b;
            }
            for (int c = 0; c < 3; ++c) dlocal[c] += yfd[0] * A[3 * c] + yfd[1] * A[3 * c + 1] + yfd[2] * A[3 * c + 2];
            for (int c = 0; c < 2; ++c)
                dp[c][3 + m] = dlocal[0] * R[3 * c] + dlocal[1] * R[3 * c + 1] + dlocal[2] * R[3 * c + 2];
        }
        for (int m = 0; m < 6; ++m) {
            J0[m] = s * dp[0][m];
            J1[m] = -s * dp[1][m];
        }
        for (int64_t k = 0; k < nk; ++k) {  /* d p / d coefficient = R (xb + (Rj - I) yb) + j0b */
            double q[3];
            for (int j = 0; j < 3; ++j)
                q[j] = xbl[j * K + k] + A[3 * j] * ybl[k] + A[3 * j + 1] * ybl[K + k] + A[3 * j + 2] * ybl[2 * K + k];
            const double d0 = R[0] * q[0] + R[1] * q[1] + R[2] * q[2] + j0b[k];
            const double d1 = R[3] * q[0] + R[4] * q[1] + R[5] * q[2] + j0b[K + k];
            const int64_t col = k < ne ? 6 + k : 9 + k;  /* exp, then (after the camera) shape */
            J0[col] = s * d0;
            J1[col] = -s * d1;
        }
        J0[c0] = p[0] + tx;
        J1[c0] = -(p[1] + ty);
        J0[c0 + 1] = s;
        J1[c0 + 1] = 0.0;
        J0[c0 + 2] = 0.0;
        J1[c0 + 2] = -s;
        const double px = s * (p[0] + tx), py = -s * (p[1] + ty);
        pred[2 * l] = px;
        pred[2 * l + 1] = py;
        const double r0 = px - target[2 * l], r1 = py - target[2 * l + 1];
        const double w = trust[l] / (1.0 + (r0 * r0 + r1 * r1) / c2);
        if (w == 0.0) continue;
        for (int64_t i = 0; i < n; ++i) {
            const double a = w * J0[i], b = w * J1[i];
            double *Hi = H + i * n;
            for (int64_t j = i; j < n; ++j) Hi[j] += a * J0[j] + b * J1[j];
            g[i] += a * r0 + b * r1;
        }
        if (!with_shape) continue;
        /* offset d of landmark l moves x by d and y by w_arm d: d p = R (I + w_arm (Rj - I)) d, x and y of d */
        double M[6], O[2][2];
        for (int c = 0; c < 2; ++c)
            for (int b = 0; b < 2; ++b)
                M[3 * c + b] = R[3 * c + b]
                               + w_arm[l] * (R[3 * c] * A[b] + R[3 * c + 1] * A[3 + b] + R[3 * c + 2] * A[6 + b]);
        for (int b = 0; b < 2; ++b) {
            O[0][b] = s * M[b];
            O[1][b] = -s * M[3 + b];
        }
        for (int64_t i = 0; i < n; ++i)
            for (int b = 0; b < 2; ++b) H_fo[i * 2 * L + 2 * l + b] = w * (J0[i] * O[0][b] + J1[i] * O[1][b]);
        for (int b = 0; b < 2; ++b) {
            for (int c = 0; c < 2; ++c) H_oo[4 * l + 2 * b + c] = w * (O[0][b] * O[0][c] + O[1][b] * O[1][c]);
            g_o[2 * l + b] = w * (O[0][b] * r0 + O[1][b] * r1);
        }
    }
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < i; ++j) H[i * n + j] = H[j * n + i];
}

void capture_fit_system(int64_t L, int64_t ne, int64_t K, const double *state, const double *R, const double *x,
                        const double *xb, const double *xf, const double *y, const double *yb, const double *yf,
                        const double *j0, const double *j0b, const double *target, const double *trust, double c2,
                        double *out)
{
    fit_pass(L, ne, K, 0, state, R, x, xb, xf, y, yb, yf, j0, j0b, 0, target, trust, c2, out);
}

void capture_fit_system_shape(int64_t L, int64_t ne, int64_t K, const double *state, const double *R,
                              const double *x, const double *xb, const double *xf, const double *y, const double *yb,
                              const double *yf, const double *j0, const double *j0b, const double *w_arm,
                              const double *target, const double *trust, double c2, double *out)
{
    fit_pass(L, ne, K, 1, state, R, x, xb, xf, y, yb, yf, j0, j0b, w_arm, target, trust, c2, out);
}
"""

_p, _i64, _f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_KERNEL = CompiledKernel("fit_system", _SOURCE, functions={
    "capture_fit_system": (None, [_i64] * 3 + [_p] * 12 + [_f64, _p]),
    "capture_fit_system_shape": (None, [_i64] * 3 + [_p] * 13 + [_f64, _p]),
})


def kernel_error() -> Optional[str]:
    """None when the compiled pass is available (compiling it on first use), else why not."""
    return _KERNEL.error()


def fit_system(row, n_exp: int, vector: np.ndarray, R: np.ndarray, target: np.ndarray, trust: np.ndarray,
               c2: float):
    """(pred [L, 2], J^T W J [n, n], J^T W r [n]) of one frame, n = 9 + n_exp: `row` is the fitter's `_RowData`
    of the state's contour row, vector the state as `_vector` makes it, R its rotation matrix, target [L, 2],
    trust [L] = weights x valid."""
    return _run(False, row, n_exp, vector, R, target, trust, c2)


def shape_system(row, n_exp: int, vector: np.ndarray, R: np.ndarray, target: np.ndarray, trust: np.ndarray,
                 c2: float):
    """`fit_system` with the shape columns of `row` and the landmark offsets, for an identity update's frame:
    (pred [L, 2], J^T W J [n, n] and J^T W r [n] over rotation | jaw | exp | cam | shape, n = 9 + row's columns,
    then the offsets' parts: H_fo [n, 2 L] (parameters x offsets), H_oo [L, 2, 2] (offset l with itself: it
    moves landmark l only), g_o [L, 2])."""
    return _run(True, row, n_exp, vector, R, target, trust, c2)


def _run(with_shape: bool, row, n_exp: int, vector, R, target, trust, c2: float):
    L, _, K = row.xb.shape
    n = 9 + (K if with_shape else n_exp)
    if K < n_exp or vector.shape != (9 + n_exp,) or target.shape != (L, 2) or trust.shape != (L,):
        raise ValueError(f"fit_system: row of {L} points and {K} columns, {n_exp} expression, state {vector.shape}, "
                         f"target {target.shape}, trust {trust.shape}")
    # no copies: the fitter's arrays are float64 and C-ordered already (a row's are made by arithmetic)
    arrays = (vector, R, row.x, row.xb, row.xf, row.y, row.yb, row.yf, row.j0, row.j0b)
    arrays += (row.w,) if with_shape else ()
    pointers = [np.ascontiguousarray(a, dtype=np.float64) for a in arrays + (target, trust)]
    state, R_, *rows, target_, trust_ = (a.ctypes.data for a in pointers)
    sizes = [2 * L, n * n, n] + ([2 * L * n, 4 * L, 2 * L] if with_shape else [])
    out = np.empty(sum(sizes) + 2 * n)
    name = "capture_fit_system_shape" if with_shape else "capture_fit_system"
    _KERNEL.function(name)(L, n_exp, K, state, R_, *rows, target_, trust_, float(c2), out.ctypes.data)
    parts, start = [], 0
    for size, shape in zip(sizes, [(L, 2), (n, n), (n,), (n, 2 * L), (L, 2, 2), (L, 2)]):
        parts.append(out[start:start + size].reshape(shape))
        start += size
    return tuple(parts)
