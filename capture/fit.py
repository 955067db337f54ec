"""FLAME fitted to 2D landmarks: head pose, jaw pose, expression and DECA's orthographic camera per frame.

The model's 68 landmarks (DECA's embedding, docs/formats.md 1.3) are reduced once to per-landmark linear bases,
so a frame never touches the other vertices: with FLAME's neck and eye poses at zero (as in DECA), linear
blend skinning of a landmark collapses exactly to

    x   = sum_i b_i v_i           (v_i = template + shapedirs . [beta, psi] + posedirs . f(R_jaw), rest pose)
    y   = sum_i b_i w_i v_i       (w_i = the vertex's jaw skinning weight),  w = sum_i b_i w_i
    p   = R [x - j0 + (R_jaw - I)(y - w j2)] + j0
    ndc = (s (p_x + t_x), -s (p_y + t_y))

with j0 / j2 the root / jaw joints regressed from the shaped rest mesh (so linear in beta and psi too) and
f(R_jaw) = R_jaw - I the jaw's pose feature. `LandmarkFitter` solves it for one frame with damped
Gauss-Newton (Levenberg-Marquardt) under a Cauchy robust loss and Gaussian priors on expression and jaw,
warm-started from the previous frame. The performer's own shape (the first `n_shape` identity components) is
estimated jointly over a reservoir of past frames at growing intervals, so that a wider mouth or rounder eyes
of the performer end up in shape, not in expression. Everything is float64 numpy on the CPU: the problem is
~140 residuals by ~60 unknowns.

Coordinates: targets are DECA crop NDC (x right, y down, +-1 at the crop's borders, capture.crop), the
camera is DECA's (s, tx, ty) in that crop, rotations are axis-angle as in DECA's pose code.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from . import fit_system
from .assets.pack import N_SHAPE_FLAME, FlameModel, LandmarkEmbedding, ModelPack
from .landmarks import IBUG68_WEIGHTS

JAW_JOINT = 2
N_CONTOUR = 17
CONTOUR_MAX_YAW = 39


_BLAS = []  # the threadpoolctl controller, made on first use ([None] without threadpoolctl)


def one_blas_thread(method):
    """Run `method` with numpy's BLAS on one thread. The fit is many small matrix products, for which a BLAS
    thread pool is ~5x slower and fights the pipeline's threads for the cores. `import capture` asks for one
    thread through OPENBLAS_NUM_THREADS, which only works when numpy was not loaded first (an application
    using the API may well have loaded it); this holds whatever the import order."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        if not _BLAS:
            try:
                from threadpoolctl import ThreadpoolController

                _BLAS.append(ThreadpoolController())
            except ImportError:  # optional: without it the environment variable is all there is
                _BLAS.append(None)
        limit = _BLAS[0].limit(limits=1, user_api="blas") if _BLAS[0] is not None else contextlib.nullcontext()
        with limit:
            return method(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------------------------- rotations


def _skew(v: np.ndarray) -> np.ndarray:
    x, y, z = v
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def rotation_matrix(aa: np.ndarray) -> np.ndarray:
    """Axis-angle [3] -> [3, 3] (Rodrigues; the same convention as capture.flame.rodrigues)."""
    t = float(np.linalg.norm(aa))
    K = _skew(aa)
    if t < 1e-8:
        return np.eye(3) + K + 0.5 * K @ K
    return np.eye(3) + np.sin(t) / t * K + (1.0 - np.cos(t)) / t ** 2 * K @ K


def right_jacobian(aa: np.ndarray) -> np.ndarray:
    """J_r(aa) [3, 3]: R(aa + d) ~= R(aa) exp([J_r d]x) for a small d."""
    t = float(np.linalg.norm(aa))
    K = _skew(aa)
    if t < 1e-6:
        return np.eye(3) - 0.5 * K + K @ K / 6.0
    return np.eye(3) - (1.0 - np.cos(t)) / t ** 2 * K + (t - np.sin(t)) / t ** 3 * K @ K


def rotation_to_axis_angle(R: np.ndarray) -> np.ndarray:
    """[3, 3] rotation -> axis-angle [3] (angle in [0, pi])."""
    c = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    t = np.arccos(c)
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if t < 1e-6:
        return 0.5 * w
    if np.pi - t < 1e-4:  # near pi: the axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(R) + 1.0) / 2.0, 0.0, None))
        k = int(np.argmax(axis))
        axis = (R[:, k] + R[k, :]) / 2.0
        axis[k] = axis[k] if axis[k] != 0 else 1.0
        axis /= np.linalg.norm(axis)
        return axis * t
    return w * (t / (2.0 * np.sin(t)))


def yaw_degrees(R: np.ndarray) -> float:
    """DECA's head yaw of a global rotation (capture.flame.head_yaw_degrees with a zero neck)."""
    return float(np.degrees(np.arctan2(-R[2, 0], np.hypot(R[0, 0], R[1, 0]))))


def contour_row(yaw: float) -> int:
    """capture.flame.contour_rows_from_yaw for one yaw in degrees."""
    y = int(np.round(min(yaw, CONTOUR_MAX_YAW)))
    if y >= 0:
        return y
    return 2 * CONTOUR_MAX_YAW if y < -CONTOUR_MAX_YAW else CONTOUR_MAX_YAW - y


def _offset_sigma() -> np.ndarray:
    """[68] prior std-dev (metres) of each landmark's per-performer offset: large where the model's and
    MediaPipe's definitions of a point differ most (jaw silhouette, brow edge), small on eyes and lips."""
    from .landmarks import BROWS, EYES, INNER_LIP, JAW, NOSE, OUTER_LIP

    sigma = np.zeros(68)
    for group, sd in ((JAW, 0.010), (BROWS, 0.006), (NOSE, 0.003), (EYES, 0.002), (OUTER_LIP, 0.002),
                      (INNER_LIP, 0.0015)):
        sigma[list(group)] = sd
    return sigma


# ----------------------------------------------------------------------------------------------- the model


@dataclass
class LandmarkBases:
    """The head model reduced to its landmarks (see the module doc). P points, K coefficients (shape | exp).

    Points: 51 static landmarks, then 79 x 17 contour candidates (row r = yaw bucket r).
    """

    x0: np.ndarray  # [P, 3] template part of x
    xb: np.ndarray  # [P, 3, K] d x / d coefficients
    xf: np.ndarray  # [P, 3, 9] d x / d f(R_jaw)
    y0: np.ndarray  # [P, 3] jaw-weighted template part of y
    yb: np.ndarray  # [P, 3, K]
    yf: np.ndarray  # [P, 3, 9]
    w: np.ndarray  # [P] jaw weight of the point
    j0: np.ndarray  # [3] root joint at rest, template
    j0b: np.ndarray  # [3, K]
    j2: np.ndarray  # [3] jaw joint
    j2b: np.ndarray  # [3, K]
    n_shape: int
    n_exp: int

    @classmethod
    def from_pack(cls, pack: ModelPack, n_shape: int = 100, n_exp: int = 50) -> "LandmarkBases":
        return cls.from_model(pack.flame, pack.landmarks, n_shape, n_exp)

    @classmethod
    def from_model(cls, flame: FlameModel, lmk: LandmarkEmbedding, n_shape: int = 100,
                   n_exp: int = 50) -> "LandmarkBases":
        faces = np.asarray(flame.faces, np.int64)
        sd = np.asarray(flame.shapedirs, np.float64)
        basis = np.concatenate([sd[:, :, :n_shape], sd[:, :, N_SHAPE_FLAME:N_SHAPE_FLAME + n_exp]], axis=2)
        posedirs = np.asarray(flame.posedirs, np.float64)[:, :, 9:18]  # the jaw's 9 pose features
        w_jaw = np.asarray(flame.weights, np.float64)[:, JAW_JOINT]
        template = np.asarray(flame.v_template, np.float64)
        Jreg = np.asarray(flame.J_regressor, np.float64)

        face_idx = np.concatenate([np.asarray(lmk.static_lmk_faces_idx).reshape(-1),
                                   np.asarray(lmk.dynamic_lmk_faces_idx).reshape(-1)])
        bary = np.concatenate([np.asarray(lmk.static_lmk_bary_coords, np.float64).reshape(-1, 3),
                               np.asarray(lmk.dynamic_lmk_bary_coords, np.float64).reshape(-1, 3)])
        tri = faces[face_idx]  # [P, 3]

        def combine(per_vertex, weights):
            # sum over the 3 corners of weights [P, 3] x per_vertex[tri] ([P, 3, ...])
            gathered = per_vertex[tri]
            return np.einsum("pc,pc...->p...", weights, gathered)

        wb = bary * w_jaw[tri]
        return cls(
            x0=combine(template, bary), xb=combine(basis, bary), xf=combine(posedirs, bary),
            y0=combine(template, wb), yb=combine(basis, wb), yf=combine(posedirs, wb), w=wb.sum(1),
            j0=Jreg[0] @ template, j0b=np.einsum("v,vck->ck", Jreg[0], basis),
            j2=Jreg[JAW_JOINT] @ template, j2b=np.einsum("v,vck->ck", Jreg[JAW_JOINT], basis),
            n_shape=n_shape, n_exp=n_exp,
        )

    def rows(self, contour_row_index: int) -> np.ndarray:
        """Point ids of the 68 landmarks in iBUG order for one contour row."""
        start = 51 + N_CONTOUR * contour_row_index
        return np.concatenate([np.arange(start, start + N_CONTOUR), np.arange(51)])


@dataclass
class _RowData:
    w: np.ndarray  # [68] jaw weights
    x: np.ndarray  # [68, 3] x - j0 at zero expression and jaw
    y: np.ndarray  # [68, 3] y - w j2 at zero expression and jaw
    xf: np.ndarray  # [68, 3, 9]
    yf: np.ndarray  # [68, 3, 9]
    j0: np.ndarray  # [3] root joint at zero expression
    xb: np.ndarray  # [68, 3, n_exp + n_shape fitted]: d(x - j0) / d coefficients
    yb: np.ndarray  # [68, 3, ...]: d(y - w j2) / d coefficients
    j0b: np.ndarray  # [3, ...]


@dataclass
class FitState:
    """One frame's solution."""

    rotation: np.ndarray  # [3] global head rotation, axis-angle
    jaw: np.ndarray  # [3] jaw rotation, axis-angle
    exp: np.ndarray  # [n_exp]
    cam: np.ndarray  # [3] s, tx, ty

    @property
    def pose(self) -> np.ndarray:
        return np.concatenate([self.rotation, self.jaw])

    def copy(self) -> "FitState":
        return FitState(self.rotation.copy(), self.jaw.copy(), self.exp.copy(), self.cam.copy())


@dataclass
class FitConfig:
    iterations_first: int = 12  # LM iterations on a new track
    iterations: int = 4  # per frame, warm-started
    exp_prior: float = 5e-4  # weight of |psi|^2 (psi in units of the basis)
    exp_prior_tail: float = 2e-2  # ... for components past `n_exp_free` (noise-like, barely move landmarks)
    n_exp_free: int = 50
    jaw_prior: tuple = (2e-4, 2e-2, 2e-2)  # jaw opening (x) is free, twist (y) and sideways (z) are held
    temporal: float = 5e-4  # weight of |x - x_previous|^2 (expression, jaw): keeps a still face still
    robust_scale: float = 0.04  # Cauchy scale of a landmark's error, crop NDC (~4.5 px of a 224 crop)
    shape_prior: float = 1e-2  # weight of |beta|^2 in the joint shape estimate (beta in units of the basis)
    offset_noise: float = 0.03  # landmark noise (crop NDC) that the offsets' priors are relative to
    shape_updates: tuple = (1, 4, 12, 30, 60, 120, 240)  # frames at which the shape is re-estimated ...
    shape_every: int = 300  # ... and every this many frames after the last one
    # While tracking, an update is spread over the next frames: each fitted frame linearises this many reservoir
    # frames of it (one update of 40 frames x 2 iterations was a 60-80 ms stall of one frame; now ~8 ms more on
    # each of ~10, benchmarks/fit_speed.py). The fits meanwhile use the identity before it; the new one is taken
    # at a fixed frame, so a stream's results do not depend on timing.
    shape_slice: int = 8
    reservoir: int = 40  # frames kept for the shape estimate
    max_jaw_open: float = 0.6  # radians


class LandmarkFitter:
    """Per-frame FLAME fit to 68 landmarks, with the performer's shape estimated over the stream.

    bases: `LandmarkBases` of the model; n_shape: identity components estimated for the performer (a few:
    more fit noise); weights: per-landmark trust [68] (default `capture.landmarks.IBUG68_WEIGHTS`).
    `fit(targets)` takes [68, 2] crop NDC and returns a `FitState`; `shape` is the current identity estimate
    ([bases.n_shape], zeros past `n_shape`). `reset()` starts a new performer track (keeps the shape).
    """

    def __init__(self, bases: LandmarkBases, n_shape: int = 10, config: Optional[FitConfig] = None,
                 weights: Optional[np.ndarray] = None):
        self.b = bases
        self.cfg = config or FitConfig()
        self.n_shape = min(int(n_shape), bases.n_shape)
        self.weights = np.asarray(IBUG68_WEIGHTS if weights is None else weights, np.float64)
        self.shape = np.zeros(bases.n_shape)
        # Per-landmark offsets [68, 3] (head space, rest pose, metres): where this performer's detected
        # points sit relative to the model's embedded ones, beyond what the shape components can say.
        # MediaPipe's brow points follow the upper brow edge, its jaw points are fixed mesh vertices, the
        # model's are silhouettes and designed positions: static differences of millimetres that would
        # otherwise be read as expression. Estimated with the shape (x and y only: depth is not observed).
        self.offsets = np.zeros((68, 3))
        self.offset_sigma = _offset_sigma()
        ne = bases.n_exp
        prior = np.full(ne, self.cfg.exp_prior)
        prior[self.cfg.n_exp_free:] = self.cfg.exp_prior_tail
        self._exp_prior = prior
        self._rows: dict[int, _RowData] = {}
        self._state: Optional[FitState] = None
        self._frames = 0
        self._reservoir: list[tuple[np.ndarray, FitState]] = []
        self._rng = np.random.default_rng(0)
        self._next_shape_update = 0
        self._pending: Optional[_PendingUpdate] = None  # a shape update being spread over frames
        fit_system.kernel_error()  # the compiled pass is built (once per machine) now, not in the first frame

    def reset(self) -> None:
        self._state = None

    @property
    def state(self) -> Optional[FitState]:
        return self._state

    # ------------------------------------------------------------------------------------------- model
    def set_identity(self, shape: Optional[np.ndarray] = None, offsets: Optional[np.ndarray] = None) -> None:
        """Fix the performer's shape ([<= n_shape of the bases]) and/or landmark offsets ([68, 3] metres)."""
        if shape is not None:
            self.shape[:] = 0.0
            self.shape[: len(shape)] = shape
        if offsets is not None:
            self.offsets[:] = offsets
        self._pending = None  # an estimate in progress would override what was fixed
        self._identity_changed()

    def _identity_changed(self) -> None:
        self._rows.clear()

    def _row(self, row: int) -> "_RowData":
        """Everything of one contour row that does not change within a frame (cached until the shape or
        the offsets change): the 68 points' rest positions with the identity applied, and their bases."""
        data = self._rows.get(row)
        if data is None:
            b, ne = self.b, self.b.n_exp
            ids = b.rows(row)
            w = b.w[ids]
            coeffs = np.concatenate([self.shape, np.zeros(ne)])
            j0 = b.j0 + b.j0b @ coeffs
            j2 = b.j2 + b.j2b @ coeffs
            cols = np.r_[b.n_shape:b.n_shape + ne, 0:self.n_shape]  # expression, then the fitted shape part
            j0b, j2b = b.j0b[:, cols], b.j2b[:, cols]
            data = _RowData(
                w=w,
                x=b.x0[ids] + b.xb[ids] @ coeffs + self.offsets - j0,  # minus the root joint: "local" at rest
                y=b.y0[ids] + b.yb[ids] @ coeffs + w[:, None] * self.offsets - w[:, None] * j2,  # the arm
                xf=b.xf[ids], yf=b.yf[ids], j0=j0,
                xb=b.xb[ids][:, :, cols] - j0b[None], yb=b.yb[ids][:, :, cols] - w[:, None, None] * j2b[None],
                j0b=j0b,
            )
            self._rows[row] = data
        return data

    def _evaluate(self, row: int, exp: np.ndarray, R: np.ndarray, Rj: np.ndarray):
        """Landmarks before projection [L, 3] and what the Jacobians need."""
        d = self._row(row)
        ne = self.b.n_exp
        A = Rj - np.eye(3)
        f = A.reshape(9)
        local0 = d.x + d.xb[:, :, :ne] @ exp + d.xf @ f  # x - j0
        arm = d.y + d.yb[:, :, :ne] @ exp + d.yf @ f  # y - w j2
        j0 = d.j0 + d.j0b[:, :ne] @ exp
        local = local0 + arm @ A.T
        p = local @ R.T + j0
        return p, local, arm, d

    def project(self, state: FitState) -> np.ndarray:
        """The model's 68 landmarks for a state, crop NDC [68, 2] (DECA's landmarks2d, x and y)."""
        R, Rj = rotation_matrix(state.rotation), rotation_matrix(state.jaw)
        p, *_ = self._evaluate(contour_row(yaw_degrees(R)), state.exp, R, Rj)
        s, t = state.cam[0], state.cam[1:]
        return np.stack([s * (p[:, 0] + t[0]), -s * (p[:, 1] + t[1])], 1)

    def _jacobian(self, state: FitState, with_shape: bool):
        """Predicted ndc [L, 2] and d ndc / d params [L, 2, N] at a state.

        params = rotation (3) | jaw (3) | exp (n_exp) | s, tx, ty (3) [| shape (n_shape)]; with_shape also returns
        d ndc / d offsets as [L, 2, 2] blocks (landmark l's offset moves landmark l only).
        """
        R, Rj = rotation_matrix(state.rotation), rotation_matrix(state.jaw)
        p, local, arm, d = self._evaluate(contour_row(yaw_degrees(R)), state.exp, R, Rj)
        w = d.w
        s, t = state.cam[0], state.cam[1:]
        L = len(w)
        ne = self.b.n_exp
        n = 9 + ne + (self.n_shape if with_shape else 0)
        dp = np.zeros((L, 3, n))
        # global rotation: R exp([J_r d]x) -> dp = -R [local]x J_r d = (R [J_r e_m]x) local for each m
        Jr = right_jacobian(state.rotation)
        for m in range(3):
            dp[:, :, m] = local @ (R @ _skew(Jr[:, m])).T
        # jaw: Rj exp([J_r d]x); dRj = Rj [g]x with g = J_r e_m; f = vec(Rj - I) changes by vec(dRj)
        A = Rj - np.eye(3)
        Jrj = right_jacobian(state.jaw)
        for m in range(3):
            dRj = Rj @ _skew(Jrj[:, m])
            df = dRj.reshape(9)
            dlocal = d.xf @ df + arm @ dRj.T + (d.yf @ df) @ A.T
            dp[:, :, 3 + m] = dlocal @ R.T
        # linear coefficients (exp, then shape): d local = xb - j0b + (Rj - I)(yb - w j2b); dp = R dlocal + j0b
        k = ne + (self.n_shape if with_shape else 0)
        dcoef = np.matmul(R, d.xb[:, :, :k] + np.matmul(A, d.yb[:, :, :k])) + d.j0b[None, :, :k]
        dp[:, :, 6:6 + ne] = dcoef[:, :, :ne]
        offsets = None
        if with_shape:
            dp[:, :, 9 + ne:] = dcoef[:, :, ne:]
            # offset d of landmark l (x, y in head space) moves x by d and y by w d: dp = R (I + w (Rj - I)) d;
            # it touches that landmark only, so it is kept as one 2 x 2 block per landmark
            M = R[None] @ (np.eye(3)[None] + w[:, None, None] * A[None])  # [L, 3, 3]
            offsets = np.stack([s * M[:, 0, :2], -s * M[:, 1, :2]], 1)  # [L, 2 (ndc), 2 (offset)]
        J = np.empty((L, 2, n))
        J[:, 0] = s * dp[:, 0]
        J[:, 1] = -s * dp[:, 1]
        c = 6 + ne
        J[:, 0, c] = p[:, 0] + t[0]
        J[:, 1, c] = -(p[:, 1] + t[1])
        J[:, 0, c + 1] = s
        J[:, 1, c + 2] = -s
        J[:, 1, c + 1] = 0.0
        J[:, 0, c + 2] = 0.0
        pred = np.stack([s * (p[:, 0] + t[0]), -s * (p[:, 1] + t[1])], 1)
        return (pred, J, offsets) if with_shape else (pred, J)

    # ------------------------------------------------------------------------------------------- solving
    def _priors(self) -> np.ndarray:
        """Diagonal prior weights over one frame's parameter vector (rotation | jaw | exp | cam)."""
        ne = self.b.n_exp
        lam = np.zeros(9 + ne)
        lam[3:6] = self.cfg.jaw_prior
        lam[6:6 + ne] = self._exp_prior
        return lam

    def _solve_frame(self, target: np.ndarray, valid: np.ndarray, state: FitState, iterations: int,
                     previous: Optional[FitState], mean: Optional[FitState] = None) -> FitState:
        cfg, ne = self.cfg, self.b.n_exp
        lam = self._priors()
        x_mean = np.zeros(9 + ne) if mean is None else self._vector(mean)
        temporal = np.zeros_like(lam)
        if previous is not None:
            temporal[3:6 + ne] = cfg.temporal
        damping = 1e-3
        state = state.copy()
        trust = self.weights * valid
        for _ in range(iterations):
            _, JWJ, JWr = self._system(state, target, trust)
            x = self._vector(state)
            x_prev = self._vector(previous) if previous is not None else x
            H = JWJ + np.diag(lam + temporal)
            g = JWr + lam * (x - x_mean) + temporal * (x - x_prev)
            H[np.diag_indices_from(H)] += damping * (np.diag(H) + 1e-9)
            try:
                step = -np.linalg.solve(H, g)
            except np.linalg.LinAlgError:
                break
            state = self._apply(state, step)
            if np.abs(step).max() < 1e-6:
                break
        return state

    def _system(self, state: FitState, target: np.ndarray, trust: np.ndarray, kernel: str = "auto"):
        """(pred [68, 2], J^T W J, J^T W r) of one frame at `state`: W the IRLS weights of the Cauchy loss,
        trust / (1 + |r|^2 / c^2), r = pred - target. kernel "auto": the compiled pass where it is built
        (`capture.fit_system`), "numpy": `_jacobian` and the products (the definition)."""
        c2 = self.cfg.robust_scale ** 2
        if kernel == "auto" and fit_system.kernel_error() is None:
            R = rotation_matrix(state.rotation)
            return fit_system.fit_system(self._row(contour_row(yaw_degrees(R))), self.b.n_exp, self._vector(state), R,
                                         target, trust, c2)
        pred, J = self._jacobian(state, with_shape=False)
        r = pred - target  # [68, 2]
        robust = trust / (1.0 + (r * r).sum(1) / c2)
        J2 = J.reshape(-1, J.shape[-1])
        Jw = J2 * np.repeat(robust, 2)[:, None]
        return pred, Jw.T @ J2, Jw.T @ r.reshape(-1)

    def _shape_system(self, state: FitState, target: np.ndarray, trust: np.ndarray, kernel: str = "auto"):
        """One reservoir frame of an identity update at `state`: (J^T W J [n, n], J^T W r [n]) over the frame's
        parameters then the fitted shape (n = 9 + n_exp + n_shape), and the landmark offsets' parts: H_fo [n, 136]
        (parameters x offsets), H_oo [68, 2, 2] (the block diagonal: an offset moves its own landmark only) and
        g_o [136]; W the IRLS weights as in `_system`. kernel: as `_system` ("numpy": the definition)."""
        c2 = self.cfg.robust_scale ** 2
        if kernel == "auto" and fit_system.kernel_error() is None:
            R = rotation_matrix(state.rotation)
            _, H, g, H_fo, H_oo, g_o = fit_system.shape_system(self._row(contour_row(yaw_degrees(R))), self.b.n_exp,
                                                               self._vector(state), R, target, trust, c2)
            return H, g, H_fo, H_oo, g_o.reshape(-1)
        pred, J, Jo = self._jacobian(state, with_shape=True)  # J [L, 2, nf + ns], Jo [L, 2, 2]
        r = pred - target
        robust = trust / (1.0 + (r * r).sum(1) / c2)
        J2 = J.reshape(-1, J.shape[-1])
        Jw = J2 * np.repeat(robust, 2)[:, None]
        Jow = Jo * robust[:, None, None]
        H_fo = np.einsum("lan,lab->nlb", Jw.reshape(J.shape), Jo).reshape(J.shape[-1], -1)
        H_oo = np.einsum("lab,lac->lbc", Jow, Jo)
        g_o = np.einsum("lab,la->lb", Jow, r).reshape(-1)
        return Jw.T @ J2, Jw.T @ r.reshape(-1), H_fo, H_oo, g_o

    def _vector(self, state: FitState) -> np.ndarray:
        return np.concatenate([state.rotation, state.jaw, state.exp, state.cam])

    def _apply(self, state: FitState, step: np.ndarray) -> FitState:
        ne = self.b.n_exp
        # Rotations are stepped in their own tangent space (the Jacobian is the right one); composing the
        # step keeps large head turns exact.
        R = rotation_matrix(state.rotation) @ rotation_matrix(right_jacobian(state.rotation) @ step[0:3])
        jaw = state.jaw + step[3:6]
        jaw[0] = np.clip(jaw[0], -0.05, self.cfg.max_jaw_open)
        cam = state.cam + step[6 + ne:9 + ne]
        cam[0] = max(cam[0], 1e-3)
        return FitState(rotation_to_axis_angle(R), jaw, state.exp + step[6:6 + ne], cam)

    def initial_state(self, target: np.ndarray, valid: np.ndarray) -> FitState:
        """Scaled-orthographic Procrustes of the neutral model's static landmarks onto the targets."""
        p, *_ = self._evaluate(0, np.zeros(self.b.n_exp), np.eye(3), np.eye(3))
        use = (valid > 0) & (np.arange(68) >= 17)
        X = p[use]
        Y = target[use] * np.array([1.0, -1.0])  # back to y up
        Xc, Yc = X - X.mean(0), Y - Y.mean(0)
        # Affine 2x3 camera by least squares, then its nearest scaled rotation.
        M, *_ = np.linalg.lstsq(Xc, Yc, rcond=None)  # [3, 2]
        A = M.T  # [2, 3]
        U, S, Vt = np.linalg.svd(A, full_matrices=False)
        s = float(S.mean())
        r12 = U @ Vt  # [2, 3], orthonormal rows
        r3 = np.cross(r12[0], r12[1])
        R = np.stack([r12[0], r12[1], r3])
        if np.linalg.det(R) < 0:
            R[2] = -R[2]
        # translation: s (R X + t) = Y at the means  ->  t = Ymean / s - (R Xmean)_xy
        t = Y.mean(0) / s - (R @ X.mean(0))[:2]
        # the model's p includes R applied about j0: account for it exactly by evaluating once
        state = FitState(rotation_to_axis_angle(R), np.zeros(3), np.zeros(self.b.n_exp), np.array([s, *t]))
        pred = self.project(state)
        shift = (target[use] - pred[use]).mean(0)
        state.cam[1] += shift[0] / s
        state.cam[2] -= shift[1] / s
        return state

    # ------------------------------------------------------------------------------------------- public
    @one_blas_thread
    def fit(self, target: np.ndarray, valid: Optional[np.ndarray] = None,
            prior_state: Optional[FitState] = None) -> FitState:
        """One frame: landmarks [68, 2] crop NDC (valid [68] in 0..1, 0 = missing) -> FitState.

        prior_state: start from these codes instead of the previous frame and pull the expression and jaw
            toward them instead of toward 0 (hybrid mode: E_flame's codes).
        """
        target = np.asarray(target, np.float64)
        if target.shape != (68, 2):
            raise ValueError(f"target: expected [68, 2] crop NDC landmarks, got {list(target.shape)}")
        valid = np.ones(68) if valid is None else np.asarray(valid, np.float64)
        previous = self._state
        if prior_state is not None:
            start, iterations = prior_state, self.cfg.iterations_first if previous is None else self.cfg.iterations
        elif previous is None:
            start, iterations = self.initial_state(target, valid), self.cfg.iterations_first
        else:
            start, iterations = previous, self.cfg.iterations
        state = self._solve_frame(target, valid, start, iterations, previous, mean=prior_state)
        self._state = state
        self._frames += 1
        self._remember(target, valid, state)
        if self._pending is None and self._frames >= self._next_shape_update:
            self._pending = _PendingUpdate(self)
            self._schedule()
        if self._pending is not None and self._pending.advance(self.cfg.shape_slice):
            self._pending.adopt(self)
            self._pending = None
            self._state = state = self._solve_frame(target, valid, state, 2, previous, mean=prior_state)
        return state

    @one_blas_thread
    def calibrate(self, targets, iterations: int = 4) -> None:
        """Estimate the performer's identity (shape and offsets) from a batch of frames before tracking, e.g.
        the first seconds of a video: each [68, 2] target is fitted, then the shape is estimated jointly over
        all of them. The track itself starts fresh afterwards."""
        for target in targets:
            self.fit(target)
            self._state = None  # the frames need not be consecutive: each starts from its own estimate
        self._pending = None  # superseded by the estimate over all of them
        if self._reservoir:
            self.update_shape(iterations=iterations)
        self._state = None

    def _schedule(self) -> None:
        later = [f for f in self.cfg.shape_updates if f > self._frames]
        self._next_shape_update = later[0] if later else self._frames + self.cfg.shape_every

    def _remember(self, target, valid, state) -> None:
        # Reservoir sampling: every frame seen so far has the same chance to be in the shape estimate.
        item = (target.copy(), valid.copy(), state.copy())
        if len(self._reservoir) < self.cfg.reservoir:
            self._reservoir.append(item)
        else:
            k = int(self._rng.integers(self._frames))
            if k < self.cfg.reservoir:
                self._reservoir[k] = item

    @one_blas_thread
    def update_shape(self, iterations: int = 2) -> None:
        """Joint estimate of the performer's shape and each reservoir frame's pose/expression/camera, now
        (a spread-out one in progress is dropped)."""
        self._pending = None
        for _ in self._shape_steps(iterations):
            pass

    def _shape_steps(self, iterations: int = 2) -> Iterator[None]:
        """`update_shape` as a generator: yields before each reservoir frame it linearises (so the first `next`
        only sets up, and the one that linearises the last frame also solves); when it is exhausted the shape,
        offsets and reservoir states hold the new estimate.

        Gauss-Newton on the stacked problem, the per-frame blocks eliminated by their Schur complement.
        A constant offset between the performer's landmarks and the model's neutral face costs the
        expression prior once per frame but the shape prior only once: it goes to shape.
        """
        ns, ne = self.n_shape, self.b.n_exp
        if not self._reservoir:
            return
        cfg = self.cfg
        lam_frame = self._priors()
        frames = [(t, v, s.copy()) for t, v, s in self._reservoir]
        # global unknowns: shape (ns) then offsets (68 x 2), with their Gaussian priors
        lam_g = np.concatenate([np.full(ns, cfg.shape_prior),
                                np.repeat(cfg.offset_noise ** 2 / self.offset_sigma ** 2, 2)])
        glob = np.concatenate([self.shape[:ns], self.offsets[:, :2].reshape(-1)])
        nf = 9 + ne
        first = ns + 2 * np.arange(68)[:, None, None]  # landmark l's offsets in the global unknowns
        block_rows, block_cols = first + np.arange(2)[None, :, None], first + np.arange(2)[None, None, :]
        for _ in range(iterations):
            self.shape[:ns] = glob[:ns]
            self.offsets[:, :2] = glob[ns:].reshape(68, 2)
            self._identity_changed()
            H_bb = np.diag(lam_g)
            g_b = lam_g * glob
            blocks = []
            for target, valid, st in frames:
                yield  # before each frame: the step that linearises the last one also finishes the update
                H, g, H_fo, H_oo, g_o = self._shape_system(st, target, self.weights * valid)
                x = self._vector(st)
                H_ff = H[:nf, :nf] + np.diag(lam_frame)
                H_ff[np.diag_indices(nf)] += 1e-6
                g_f = g[:nf] + lam_frame * x
                H_fb = np.concatenate([H[:nf, nf:], H_fo[:nf]], 1)  # frame x (shape | offsets)
                solved = np.linalg.solve(H_ff, np.concatenate([H_fb, g_f[:, None]], 1))  # both sides, one LU
                Hi_Hfb, Hi_gf = solved[:, :-1], solved[:, -1]
                # the frame's part of the global system (its offsets' block diagonal), less its Schur complement
                H_bb[:ns, :ns] += H[nf:, nf:]
                H_bb[:ns, ns:] += H_fo[nf:]
                H_bb[ns:, :ns] += H_fo[nf:].T
                H_bb[block_rows, block_cols] += H_oo
                H_bb -= H_fb.T @ Hi_Hfb
                g_b[:ns] += g[nf:]
                g_b[ns:] += g_o
                g_b -= H_fb.T @ Hi_gf
                blocks.append((Hi_Hfb, Hi_gf))
            try:
                d_glob = -np.linalg.solve(H_bb, g_b)
            except np.linalg.LinAlgError:
                return
            glob = glob + d_glob
            frames = [(t, v, self._apply(st, -(Hi_gf + Hi_Hfb @ d_glob))) for (t, v, st), (Hi_Hfb, Hi_gf)
                      in zip(frames, blocks)]
        self.shape[:ns] = glob[:ns]
        self.offsets[:, :2] = glob[ns:].reshape(68, 2)
        self._identity_changed()
        self._reservoir = [(t, v, st) for t, v, st in frames]


class _PendingUpdate:
    """A shape update spread over frames: `LandmarkFitter._shape_steps` on a copy of the fitter's identity and
    reservoir, so that the frames fitted meanwhile keep the identity they had."""

    def __init__(self, fitter: LandmarkFitter):
        work = copy.copy(fitter)  # shares the bases, config and weights (read only)
        work.shape, work.offsets = fitter.shape.copy(), fitter.offsets.copy()
        work._rows, work._pending = {}, None
        work._reservoir = list(fitter._reservoir)
        self.work, self.started_with = work, list(fitter._reservoir)
        self._steps = work._shape_steps()
        self._done = next(self._steps, StopIteration) is StopIteration  # set up, up to the first frame

    def advance(self, n: int) -> bool:
        """Up to `n` more steps (n <= 0: all of them); True when the update is complete."""
        left = n if n > 0 else float("inf")
        while not self._done and left > 0:
            self._done = next(self._steps, StopIteration) is StopIteration
            left -= 1
        return self._done

    def adopt(self, fitter: LandmarkFitter) -> None:
        """The new identity into `fitter`; reservoir frames it has kept since get their refined states."""
        fitter.shape[:], fitter.offsets[:] = self.work.shape, self.work.offsets
        fitter._identity_changed()
        for i, (old, new) in enumerate(zip(self.started_with, self.work._reservoir)):
            if i < len(fitter._reservoir) and fitter._reservoir[i] is old:
                fitter._reservoir[i] = new
