"""The procedural demo head: every array of the synthetic demo pack that stands in for FLAME 2020 + DECA's data.

The official files need a registration, so the demo pack carries a head of our own in FLAME's layout
(docs/formats.md 1.2-1.6); `capture.assets.demo` writes it in the official file formats.

How the head is made, in one paragraph. The surface is a smooth union of ellipsoids (cranium, face, jaw,
chin, cheeks, brow ridge, lips, ears, neck) plus a nose, carved by two eye sockets. It is meshed by casting
rays from one interior point over a latitude/longitude grid that is denser on the face, so the head is a
radial graph: every triangle faces away from that point (outward winding by construction) and the grid
parameters double as the UV layout (face in the middle of the map, seam at the back of the head, crown at
the top, neck at the bottom). The grid is cut along the mouth line (the lower lip has its own copies of the
slit vertices, so rotating the jaw opens the mouth) and has two almond openings behind which sit two eyeball
spheres, separate parts of the same vertex array as in FLAME, mapped to discs in the bottom corners of the
UV map. Skinning weights, joint regressors, blendshapes, landmarks and UV images are all defined from the
same geometry, so they agree with each other.

Conventions: metres, y up, the face looks toward +z, the subject's left is +x (FLAME's "left eye" joint 3);
iBUG-68 landmark 0 and the subject's right eye (36-41) are on the -x side (image left in a frontal view).
UV: u right, v up, both in [0, 1]; images are stored with row 0 = v = 1 (top).

Expression space. The first components of the 100 expression columns (shapedirs[:, :, 300 + k]) are designed
face movements, named by `EXPRESSION_NAMES` (in column order); the rest are weaker smooth random fields on the
face. A coefficient of 1.0 is a full, strong expression of a real face (an eye fully closed, a broad smile), with
real-face magnitudes; _L / _R are the subject's left (+x) / right (-x) side. The jaw opening itself is a pose
(joint 2); "lipsPart" parts the lips on top of it.

| k  | name         | at 1.0 (peak displacement)                                                          |
|----|--------------|-------------------------------------------------------------------------------------|
| 0  | lipsPart     | lower lip down, upper lip up: 4.5 mm mid-lip opening, closed at the corners          |
| 1  | smile_L      | left lip corner up, out and back 9 mm (iBUG 54), cheek up a little                  |
| 2  | smile_R      | the same on the right (48)                                                          |
| 3  | browUp_L     | left brow up 9 mm (22-26), the forehead above less, the lid rim not at all           |
| 4  | browUp_R     | the same on the right (17-21)                                                       |
| 5  | eyeClose_L   | left eye fully closed: upper lid down over the eyeball to meet the lower lid (43,44 |
|    |              | on 47,46), lower lid up 1-2 mm; the lids stay outside the eyeball for 0..1          |
| 6  | eyeClose_R   | the same on the right (37,38 on 41,40)                                              |
| 7  | browDown_L   | left brow down 6 mm and toward the midline (inner part most)                        |
| 8  | browDown_R   | the same on the right                                                               |
| 9  | browInnerUp  | both inner brows up 7 mm (21, 22), the outer ends much less                         |
| 10 | frown_L      | left lip corner down 6 mm                                                           |
| 11 | frown_R      | right lip corner down 6 mm                                                          |
| 12 | stretch_L    | left lip corner out (+x) 7 mm, a little down and back                               |
| 13 | stretch_R    | right lip corner out (-x) 7 mm                                                      |
| 14 | lipsPress    | lips pressed: both lips thinned toward the mouth line and pulled back 3.5 mm        |
| 15 | funnel       | lips forward 6 mm and flared open in the middle, corners in                         |
| 16 | pucker       | lips forward, corners in 8 mm each (mouth narrower), lips closed                     |
| 17 | cheekRaise_L | left cheek up 4 mm, lower lid up 2 mm                                               |
| 18 | cheekRaise_R | the same on the right                                                               |
| 19 | eyeWide_L    | left upper lid up 3.5 mm (along the eyeball)                                        |
| 20 | eyeWide_R    | the same on the right                                                               |
| 21 | sneer        | nose wings and the upper lip's middle up 3.5 mm                                     |
| 22 | cheekPuff    | both cheeks out 6 mm                                                                |
| 23 | mouthLeft    | the mouth shifted 6 mm to the subject's left (+x)                                   |

Fields that are not about the lids fade to zero near the eye openings' rims, so no component (designed or
random) can push a rim into its eyeball.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.sparse

from ..conventions import UV_SIZE

N_SHAPE = 300  # identity columns of shapedirs
N_EXP = 100  # expression columns, after the identity ones
N_POSE_FEATURES = 36  # (R_j - I) of the four non-root joints
N_ALBEDO = 50  # albedo basis columns written (DECA uses 50 of BFM's 199)
N_YAW_ROWS = 79  # dynamic contour rows: yaw 0..39 then -1..-39 degrees
TEXTURE_SIZE = 512
ROOT_PARENT = 4294967295  # -1 as uint32, as FLAME's kintree_table stores it
JAW, LEFT_EYE, RIGHT_EYE = 2, 3, 4
DEFAULT_N_VERTICES = 5023

# The designed expression components, in column order (shapedirs[:, :, 300 + k]); see the module doc.
EXPRESSION_NAMES = (
    "lipsPart", "smile_L", "smile_R", "browUp_L", "browUp_R", "eyeClose_L", "eyeClose_R", "browDown_L",
    "browDown_R", "browInnerUp", "frown_L", "frown_R", "stretch_L", "stretch_R", "lipsPress", "funnel", "pucker",
    "cheekRaise_L", "cheekRaise_R", "eyeWide_L", "eyeWide_R", "sneer", "cheekPuff", "mouthLeft",
)

_MM = 1e-3
_V0 = 0.145  # UV: the head occupies v in [_V0, 1]; the eyeball discs sit in the strip below
_EYE_UV_CENTRES = {LEFT_EYE: (0.93, 0.07), RIGHT_EYE: (0.07, 0.07)}
_EYE_UV_RADIUS = 0.062
_EYE_RADIUS = 0.0122
_LID_GAP = 0.0016  # lid shell radius minus eyeball radius
_EYE_BACK_ANGLE = np.pi * 160.0 / 180.0  # eyeballs are open behind this polar angle (never visible)


@dataclass
class DemoHead:
    """All arrays of the demo pack, with the official files' shapes and dtypes.

    V vertices, F faces, T uv-vertices, R albedo resolution. Rows of the UV images run from v = 1 (top) down.
    """

    v_template: np.ndarray  # [V, 3] float64, metres
    faces: np.ndarray  # [F, 3] int64, counter-clockwise seen from outside
    shapedirs: np.ndarray  # [V, 3, 400] float64: 300 identity then 100 expression components
    posedirs: np.ndarray  # [V, 3, 36] float64
    J_regressor: np.ndarray  # [5, V] float64, rows sum to 1
    weights: np.ndarray  # [V, 5] float64, rows sum to 1
    kintree_table: np.ndarray  # [2, 5] int64, row 0 = parents with 4294967295 for the root
    uvcoords: np.ndarray  # [T, 2] float64 in [0, 1], v up
    uvfaces: np.ndarray  # [F, 3] int64
    static_lmk_faces_idx: np.ndarray  # [51] int64 (iBUG 17..67)
    static_lmk_bary_coords: np.ndarray  # [51, 3] float64
    dynamic_lmk_faces_idx: np.ndarray  # [79, 17] int64 (iBUG 0..16 per integer yaw)
    dynamic_lmk_bary_coords: np.ndarray  # [79, 17, 3] float32
    full_lmk_faces_idx: np.ndarray  # [1, 68] int64
    full_lmk_bary_coords: np.ndarray  # [1, 68, 3] float32
    uv_face_eye_mask: np.ndarray  # [256, 256, 4] uint8 RGBA
    uv_face_mask: np.ndarray  # [256, 256, 4] uint8 RGBA
    fixed_displacement: np.ndarray  # [256, 256] float64, metres
    mean_texture: np.ndarray  # [512, 512, 3] uint8 RGB
    albedo_mean: np.ndarray  # [R*R*3] float32, BGR, rows top to bottom, 0..1
    albedo_basis: np.ndarray  # [R*R*3, 50] float32

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])


# ---------------------------------------------------------------------------------------------------------------
# Small math helpers


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _gauss(points, centre, sigma):
    """[N] Gaussian bump of 3D distance to `centre`."""
    d2 = np.sum((points - np.asarray(centre)) ** 2, axis=-1)
    return np.exp(-0.5 * d2 / sigma ** 2)


def _normalize(v, axis=-1):
    n = np.linalg.norm(v, axis=axis, keepdims=True)
    return v / np.maximum(n, 1e-12)


def _smin(a, b, k):
    """Polynomial smooth minimum: a union of two distance fields with a fillet of size ~k."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1.0 - h) + a * h - k * h * (1.0 - h)


def _sd_ellipsoid(p, centre, radii):
    """Approximate signed distance to an axis-aligned ellipsoid (exact sign, smooth)."""
    q = (p - centre) / radii
    k0 = np.linalg.norm(q, axis=-1)
    k1 = np.linalg.norm(q / radii, axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def _sd_round_cone(p, a, ra, b, rb):
    """Approximate signed distance to a capsule whose radius goes linearly from ra (at a) to rb (at b)."""
    ab = b - a
    h = np.clip(np.sum((p - a) * ab, axis=-1) / np.dot(ab, ab), 0.0, 1.0)
    closest = a + h[..., None] * ab
    return np.linalg.norm(p - closest, axis=-1) - (ra + h * (rb - ra))


def _vertex_normals(vertices, faces):
    """[V, 3] area-weighted unit vertex normals (zero for unused vertices)."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], fn)
    return _normalize(normals)


# ---------------------------------------------------------------------------------------------------------------
# Design: the head as a field of primitives


@dataclass
class _Design:
    origin: np.ndarray  # ray origin inside the head
    blobs: list  # (name, centre, radii, fillet)
    nose: tuple  # (bridge, r_bridge, tip, r_tip, fillet)
    sockets: list  # (centre, radii, fillet): hollows around the eyes
    eye_x: float  # eyeball centre |x|
    opening_x: float  # centre |x| of the almond opening (a little lateral: the inner corner is shallower)
    eye_y: float
    eye_z: float  # eyeball centre
    eye_half_width: float
    eye_half_height: float
    mouth_y: float
    mouth_half_width: float
    lip_z: float
    neck_axis: np.ndarray  # (x, z) of the neck's vertical axis
    neck_radius: float
    neck_joint_y: float
    hinge: np.ndarray  # jaw hinge (midline point between the two condyles)


def _make_design(rng: np.random.Generator) -> _Design:
    """Head proportions in metres, varied slightly per seed (the topology never depends on the seed)."""
    z = rng.standard_normal(8)
    width = 1.0 + 0.02 * z[0]
    depth = 1.0 + 0.02 * z[1]
    height = 1.0 + 0.015 * z[2]
    nose = 1.0 + 0.05 * z[3]
    jaw = 1.0 + 0.03 * z[4]
    chin = 1.0 + 0.04 * z[5]
    lips = 1.0 + 0.05 * z[6]
    s = np.array([width, height, depth])

    def e(centre, radii, fillet, name, extra=(1.0, 1.0, 1.0)):
        return (name, np.array(centre) * s, np.array(radii) * s * np.array(extra), fillet)

    blobs = [
        e((0, 0.036, -0.012), (0.074, 0.083, 0.094), 0.02, "cranium"),
        e((0, -0.006, 0.022), (0.064, 0.076, 0.068), 0.02, "face"),
        e((0, -0.048, 0.020), (0.055, 0.043, 0.060), 0.02, "jaw", (jaw, 1, 1)),
        e((0, -0.079, 0.062), (0.019, 0.014, 0.015), 0.016, "chin", (1, chin, chin)),
        e((0, -0.150, -0.018), (0.052, 0.140, 0.054), 0.03, "neck"),
        e((0.042, 0.000, 0.055), (0.022, 0.018, 0.016), 0.02, "cheek_l"),
        e((-0.042, 0.000, 0.055), (0.022, 0.018, 0.016), 0.02, "cheek_r"),
        e((0, 0.048, 0.058), (0.058, 0.013, 0.022), 0.016, "brow_ridge"),
        e((0, -0.009, 0.085), (0.0165, 0.0085, 0.011), 0.006, "alae", (nose, 1, 1)),
        e((0, -0.0365, 0.0785), (0.0235, 0.0068, 0.0095), 0.006, "upper_lip", (1, lips, lips)),
        e((0, -0.0500, 0.0765), (0.0215, 0.0074, 0.0095), 0.006, "lower_lip", (1, lips, lips)),
        e((0.074, 0.012, -0.014), (0.010, 0.029, 0.017), 0.008, "ear_l"),
        e((-0.074, 0.012, -0.014), (0.010, 0.029, 0.017), 0.008, "ear_r"),
    ]
    bridge = np.array([0.0, 0.034, 0.072]) * s
    tip = np.array([0.0, -0.001, 0.061 + 0.030 * nose]) * s
    eye_x, eye_y = 0.0325 * width, 0.029 * height
    sockets = [(np.array([sx * eye_x, eye_y + 0.001, 0.0835 * depth]), np.array([0.021, 0.016, 0.013]), 0.010)
               for sx in (1, -1)]
    mouth_y = -0.0432 * height
    return _Design(
        origin=np.array([0.0, 0.004, -0.006]),
        blobs=blobs,
        nose=(bridge, 0.0062, tip, 0.0098 * nose, 0.007),
        sockets=sockets,
        eye_x=eye_x, opening_x=eye_x + 0.0009, eye_y=eye_y, eye_z=0.0575 * depth,
        eye_half_width=0.0112 * width, eye_half_height=0.0050,
        mouth_y=mouth_y, mouth_half_width=0.0235 * width, lip_z=0.08 * depth,
        neck_axis=np.array([0.0, -0.018 * depth]), neck_radius=0.052 * width,
        neck_joint_y=-0.07 * height,
        hinge=np.array([0.0, -0.016 * height, 0.002 * depth]),
    )


def _head_field(p: np.ndarray, d: _Design) -> np.ndarray:
    """Signed field of the head (negative inside) at points [..., 3]."""
    f = None
    for _, centre, radii, fillet in d.blobs:
        g = _sd_ellipsoid(p, centre, radii)
        f = g if f is None else _smin(f, g, fillet)
    bridge, rb, tip, rt, fillet = d.nose
    f = _smin(f, _sd_round_cone(p, bridge, rb, tip, rt), fillet)
    for centre, radii, fillet in d.sockets:
        f = -_smin(-f, _sd_ellipsoid(p, centre, radii), fillet)
    # Lids: a shell just outside each eyeball, so that the openings' rims hug the eyes.
    for sx in (1.0, -1.0):
        lid = np.linalg.norm(p - np.array([sx * d.eye_x, d.eye_y, d.eye_z]), axis=-1) - _EYE_RADIUS - _LID_GAP
        f = _smin(f, lid, 0.004)
    return f


_FACE_PARTS = ("face", "jaw", "chin", "cheek_l", "cheek_r", "upper_lip", "lower_lip")
_FACE_MARGIN = 0.002


def _face_field(p: np.ndarray, d: _Design) -> np.ndarray:
    """Signed field of the lower face alone (no cranium, ears or neck): tells the jaw from the neck."""
    f = None
    for name, centre, radii, fillet in d.blobs:
        if name in _FACE_PARTS:
            g = _sd_ellipsoid(p, centre, radii)
            f = g if f is None else _smin(f, g, fillet)
    return f


def _cast_rays(origin, dirs, design, r_max=0.30, n_samples=64, n_bisect=14):
    """[N] distance along each unit ray in `dirs` [N, 3] to the outermost crossing of the head surface."""
    r = np.linspace(0.03, r_max, n_samples)  # 0.03: the origin is deep inside
    pts = origin + dirs[:, None, :] * r[None, :, None]
    inside = _head_field(pts, design) < 0.0
    last = n_samples - 1 - np.argmax(inside[:, ::-1], axis=1)  # last inside sample
    lo = r[last]
    hi = r[np.minimum(last + 1, n_samples - 1)]
    for _ in range(n_bisect):
        mid = 0.5 * (lo + hi)
        is_in = _head_field(origin + dirs * mid[:, None], design) < 0.0
        lo = np.where(is_in, mid, lo)
        hi = np.where(is_in, hi, mid)
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------------------------
# The latitude/longitude grid: parameters <-> angles

_AZ_CENTRE_DENSITY = 0.32  # d(azimuth)/ds at the face centre relative to uniform: ~70 % of columns on the face


def _warp(s):
    a = _AZ_CENTRE_DENSITY
    return s * (a + (1.0 - a) * s * s)


def _unwarp(x):
    """Inverse of _warp on [-1, 1] (monotone), by Newton steps."""
    s = np.clip(np.asarray(x, dtype=np.float64), -1, 1).copy()
    a = _AZ_CENTRE_DENSITY
    for _ in range(30):
        s -= (_warp(s) - x) / (a + 3.0 * (1.0 - a) * s * s)
    return s


@dataclass
class _Grid:
    n_el: int
    n_az: int
    el: np.ndarray  # [n_el] row elevations (radians), el[0] = pi/2 (crown pole), decreasing
    az: np.ndarray  # [n_az + 1] column azimuths, az[0] = -pi (back seam), az[n_az] = +pi
    s: np.ndarray  # [n_az + 1] column parameters in [-1, 1]
    mouth_row: int

    def frac_index(self, az, el):
        """Fractional (row, column) grid index of the directions (az, el)."""
        j = (_unwarp(np.asarray(az) / np.pi) + 1.0) * 0.5 * self.n_az
        i = np.interp(-np.asarray(el), -self.el, np.arange(self.n_el, dtype=np.float64))
        return i, j

    def el_at(self, i):
        return np.interp(i, np.arange(self.n_el, dtype=np.float64), self.el)


def _directions(az, el):
    az, el = np.broadcast_arrays(az, el)
    return np.stack([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], axis=-1)


def _make_grid(n_el: int, n_az: int, design: _Design) -> _Grid:
    o = design.origin
    el_mouth = np.arctan2(design.mouth_y - o[1], design.lip_z + 0.01 - o[2])
    el_eye = np.arctan2(design.eye_y - o[1], np.hypot(design.eye_x, 0.07 - o[2]))
    el_bottom = np.deg2rad(-68.0)
    # Row density: more rows on the face, most at the eye and mouth levels.
    fine = np.linspace(np.pi / 2, el_bottom, 4000)
    deg = np.rad2deg(fine)
    w = 1.0 + 2.2 * _smoothstep((deg + 80) / 8) * _smoothstep((52 - deg) / 8)
    w += 3.0 * np.exp(-0.5 * ((fine - el_eye) / np.deg2rad(4.5)) ** 2)
    w += 2.0 * np.exp(-0.5 * ((fine - el_mouth) / np.deg2rad(5.0)) ** 2)
    # Steep rays meet the neck's near-vertical wall at growing spacing (~1/cos^2): compensate.
    neck = fine < np.deg2rad(-52.0)
    w[neck] *= (np.cos(np.deg2rad(-52.0)) / np.cos(fine[neck])) ** 1.5
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]))])
    cum /= cum[-1]
    el = np.interp(np.linspace(0, 1, n_el), cum, fine)
    mouth_row = int(np.argmin(np.abs(el[1:-1] - el_mouth))) + 1
    el[mouth_row] = el_mouth  # the mouth slit lies exactly on one row (a shift of < half a row)
    s = -1.0 + 2.0 * np.arange(n_az + 1) / n_az
    return _Grid(n_el=n_el, n_az=n_az, el=el, az=np.pi * _warp(s), s=s, mouth_row=mouth_row)


def _grid_dims(n_vertices: int):
    """Grid rows/columns and eyeball rings/segments whose total is close to n_vertices."""
    if n_vertices < 300:
        raise ValueError(f"make_demo_head: n_vertices={n_vertices} is too small for a head with eyes and a "
                         "mouth; use at least 300 (FLAME has 5023)")
    per_eye = 0.04 * n_vertices
    rings = max(2, 2 * int(round(np.sqrt(per_eye / 3.0) / 2.0)))
    segments = max(6, int(round((per_eye - 1) / rings)))
    head = n_vertices - 2 * (1 + rings * segments)
    rows = max(8, int(round(np.sqrt(head / 2.0))))
    cols = max(16, 2 * int(round(head / rows / 2.0)))
    return rows + 1, cols, rings, segments


def _bilinear(grid_values, i, j):
    """Sample [n_el, n_az + 1, ...] grid values at fractional indices (clamped)."""
    n_el, n_cols = grid_values.shape[:2]
    i = np.clip(i, 0, n_el - 1 - 1e-9)
    j = np.clip(j, 0, n_cols - 1 - 1e-9)
    i0 = np.floor(i).astype(np.int64)
    j0 = np.floor(j).astype(np.int64)
    a = (i - i0)[..., None]
    b = (j - j0)[..., None]
    g = grid_values
    return ((1 - a) * ((1 - b) * g[i0, j0] + b * g[i0, j0 + 1])
            + a * ((1 - b) * g[i0 + 1, j0] + b * g[i0 + 1, j0 + 1]))


# ---------------------------------------------------------------------------------------------------------------
# Mesh assembly


@dataclass
class _Mesh:
    vertices: np.ndarray
    faces: np.ndarray
    uvcoords: np.ndarray
    uvfaces: np.ndarray
    cell_faces: np.ndarray  # [n_el - 1, n_az, 2] face ids per grid cell (-1: removed / none)
    cell_main_diag: np.ndarray  # [n_el - 1, n_az] bool: cell split along (i, j)-(i+1, j+1)
    cell_removed: np.ndarray  # [n_el - 1, n_az] bool (eye openings)
    slit_cols: np.ndarray  # column ids whose slit node is duplicated
    lower_slit: np.ndarray  # vertex ids of the lower-lip copies
    upper_slit: np.ndarray  # vertex ids of the upper-lip originals (same order)
    eyeballs: dict  # joint -> vertex ids of that eyeball
    eye_centres: dict  # joint -> [3]
    is_head: np.ndarray  # [V] bool
    row: np.ndarray  # [V] grid row of grid vertices (-1 elsewhere)
    cavity_upper: np.ndarray  # vertex ids of the mouth pouch: upper half, lower half, the two corner columns
    cavity_lower: np.ndarray
    cavity_corners: np.ndarray


def _eye_hole_cells(P, grid: _Grid, design: _Design):
    """[n_el-1, n_az] bool: cells whose centre lies in an almond eye opening (tested in frontal x, y)."""
    centre = 0.25 * (P[:-1, :-1] + P[:-1, 1:] + P[1:, :-1] + P[1:, 1:])
    removed = np.zeros(centre.shape[:2], bool)
    for sx in (1.0, -1.0):
        dx = (centre[..., 0] - sx * design.opening_x) / design.eye_half_width
        dy = centre[..., 1] - design.eye_y
        half_h = design.eye_half_height * (1.0 - dx ** 2)
        removed |= (np.abs(dx) < 1.0) & (np.abs(dy) < half_h) & (centre[..., 2] > 0.02)
    # A vertex touched by two removed cells only diagonally would be non-manifold: open the pinch.
    for _ in range(4):
        a, b = removed[:-1, :-1], removed[1:, 1:]
        c, d = removed[:-1, 1:], removed[1:, :-1]
        pinch = (a & b & ~c & ~d) | (c & d & ~a & ~b)
        if not pinch.any():
            break
        ii, jj = np.nonzero(pinch)
        removed[ii, jj] = removed[ii + 1, jj + 1] = removed[ii, jj + 1] = removed[ii + 1, jj] = True
    return removed


def _eyeball(centre, rings, segments):
    """Eyeball vertices [1 + rings*segments, 3], local faces, polar angles and azimuths of its vertices.

    The rings sit at polar angles symmetric about 90 degrees, so their vertex mean is exactly the centre.
    """
    theta = np.linspace(0, _EYE_BACK_ANGLE, rings + 1)[1:]
    theta = np.concatenate([theta[: rings // 2], np.pi - theta[: rings // 2][::-1]])
    phi = 2 * np.pi * np.arange(segments) / segments
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    th = np.concatenate([[0.0], th.ravel()])
    ph = np.concatenate([[0.0], ph.ravel()])
    offsets = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], axis=1)
    verts = centre + _EYE_RADIUS * offsets
    ring = lambda r, k: 1 + r * segments + (k % segments)  # noqa: E731
    faces = [(0, ring(0, k), ring(0, k + 1)) for k in range(segments)]
    for r in range(rings - 1):
        for k in range(segments):
            faces.append((ring(r, k), ring(r + 1, k), ring(r + 1, k + 1)))
            faces.append((ring(r, k), ring(r + 1, k + 1), ring(r, k + 1)))
    faces = np.array(faces, np.int64)
    # Orientation: outward normals (checked rather than derived, it is cheap).
    tri = verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = np.sum(n * (tri.mean(1) - centre), axis=1) < 0
    faces[flip] = faces[flip][:, ::-1]
    return verts, faces, th, ph


_CAVITY_UV = (0.2, 0.8, 0.012, 0.128)  # u0, u1, v0, v1 of the mouth cavity's patch (bottom strip, centre)


def _mouth_cavity(P, row: int, cols, upper_ids, lower_ids, n_inner: int, head_verts, first_uvid: int):
    """A pouch behind the lips, so that an open mouth shows a mouth and not the inside of the head.

    cols: grid columns from one mouth corner to the other; upper_ids / lower_ids: the slit's vertex ids on the
    upper and lower lip (equal at the two corners); head_verts: the vertices so far, the pouch's are numbered
    after them. Returns vertices, faces, uvcoords, uvfaces (uv ids from first_uvid) and the new vertex ids of
    the upper half, the lower half and the corners.
    """
    first_vid = len(head_verts)
    n_c = len(cols)
    slit = P[row, cols]
    x_corner = max(abs(slit[0, 0]), abs(slit[-1, 0]), 1e-6)
    prof = np.sqrt(np.clip(1.0 - (slit[:, 0] / x_corner) ** 2, 0.0, 1.0))
    t = np.arange(1, n_inner + 1) / n_inner
    height = 0.006 * np.minimum(1.0, 1.6 * t)
    depth = 0.016 * t
    ids_up = first_vid + np.arange(n_inner * n_c).reshape(n_inner, n_c)
    ids_low = ids_up[-1, -1] + 1 + np.arange(n_inner * n_c).reshape(n_inner, n_c)
    ids_low[:, 0], ids_low[:, -1] = ids_up[:, 0], ids_up[:, -1]  # the corners close the pouch's sides
    back = (0.25 + 0.75 * prof)[None, :, None] * depth[:, None, None] * np.array([0.0, 0.0, -1.0])
    lift = (prof[None, :, None] * height[:, None, None]) * np.array([0.0, 1.0, 0.0])
    verts = np.zeros((ids_low.max() + 1 - first_vid, 3))
    verts[ids_up - first_vid] = slit[None] + back + lift
    verts[ids_low - first_vid] = slit[None] + back - lift
    # Rows around the pouch: upper slit, upper inner rows, lower inner rows (back to front), lower slit.
    chain = [np.asarray(upper_ids)] + list(ids_up) + list(ids_low[::-1]) + [np.asarray(lower_ids)]
    chain = np.stack(chain)  # [2 n_inner + 2, n_c]
    n_r = chain.shape[0]
    u0, u1, v0, v1 = _CAVITY_UV
    uu, vv = np.meshgrid(u0 + (u1 - u0) * np.arange(n_c) / (n_c - 1), v1 - (v1 - v0) * np.arange(n_r) / (n_r - 1))
    uvs = np.stack([uu.ravel(), vv.ravel()], 1)
    uv_ids = first_uvid + np.arange(n_r * n_c).reshape(n_r, n_c)
    faces, uvfaces = [], []
    for r in range(n_r - 1):
        for c in range(n_c - 1):
            a, b, cc, d = chain[r, c], chain[r, c + 1], chain[r + 1, c + 1], chain[r + 1, c]
            qa, qb, qc, qd = uv_ids[r, c], uv_ids[r, c + 1], uv_ids[r + 1, c + 1], uv_ids[r + 1, c]
            for tri, uvt in (((a, d, cc), (qa, qd, qc)), ((a, cc, b), (qa, qc, qb))):
                if len(set(tri)) == 3:
                    faces.append(tri)
                    uvfaces.append(uvt)
    faces = np.array(faces, np.int64)
    uvfaces = np.array(uvfaces, np.int64)
    # Orient every face toward the inside of the pouch (the air of the mouth).
    pts = np.concatenate([head_verts, verts])[faces]
    normal = np.cross(pts[:, 1] - pts[:, 0], pts[:, 2] - pts[:, 0])
    centre = pts.mean(1)
    axis = slit.mean(0) + np.array([0.0, 0.0, -0.008])
    # The strip is built consistently, so one vote decides for all faces (single faces near the corners
    # are ambiguous).
    if np.mean(np.sum(normal * (centre - axis), 1) > 0) > 0.5:
        faces = faces[:, ::-1].copy()
        uvfaces = uvfaces[:, ::-1].copy()
    corners = np.unique(np.concatenate([ids_up[:, 0], ids_up[:, -1]]))
    upper = np.setdiff1d(ids_up.ravel(), corners)
    lower = np.setdiff1d(ids_low.ravel(), corners)
    return verts, faces, uvs, uvfaces, upper, lower, corners


def _build_mesh(P, grid: _Grid, design: _Design, removed, rings: int, segments: int, eye_centres: dict) -> _Mesh:
    n_el, n_az = grid.n_el, grid.n_az

    # Grid vertex ids before compaction: pole 0, then rows 1.. x columns 0..n_az-1; column n_az wraps to 0.
    vid = np.zeros((n_el, n_az + 1), np.int64)
    vid[1:, :n_az] = 1 + (np.arange(1, n_el)[:, None] - 1) * n_az + np.arange(n_az)[None, :]
    vid[:, n_az] = vid[:, 0]
    n_grid = 1 + (n_el - 1) * n_az
    m = grid.mouth_row
    corner = np.abs(P[m, :, 0]) >= design.mouth_half_width
    centre_col = n_az // 2
    j_right = centre_col - np.argmax(corner[centre_col::-1])  # first corner column toward -x
    j_left = centre_col + np.argmax(corner[centre_col:])
    if j_left - j_right < 2:
        j_right, j_left = centre_col - 1, centre_col + 1
    slit_cols = np.arange(j_right + 1, j_left)
    lower_ids = n_grid + np.arange(len(slit_cols))
    vid_lower = vid.copy()
    vid_lower[m, slit_cols] = lower_ids

    # UV ids: one pole uv per column, then rows 1.. x columns 0..n_az (the seam column is duplicated).
    uvid = np.zeros((n_el, n_az + 1), np.int64)
    uvid[0, :n_az] = np.arange(n_az)
    uvid[0, n_az] = n_az - 1
    uvid[1:, :] = n_az + (np.arange(1, n_el)[:, None] - 1) * (n_az + 1) + np.arange(n_az + 1)[None, :]
    u = grid.s * 0.5 + 0.5
    v = _V0 + (1.0 - _V0) * (1.0 - np.arange(n_el) / (n_el - 1))
    uv_pole = np.stack([(np.arange(n_az) + 0.5) / n_az, np.ones(n_az)], axis=1)
    uu, vv = np.meshgrid(u, v[1:])
    uv_grid = np.stack([uu.ravel(), vv.ravel()], axis=1)

    ii, jj = np.meshgrid(np.arange(n_el - 1), np.arange(n_az), indexing="ij")
    top = np.where(ii == m, vid_lower[ii, jj], vid[ii, jj])
    top_r = np.where(ii == m, vid_lower[ii, jj + 1], vid[ii, jj + 1])
    p00, p01, p10, p11 = top, top_r, vid[ii + 1, jj], vid[ii + 1, jj + 1]
    q00, q01, q10, q11 = uvid[ii, jj], uvid[ii, jj + 1], uvid[ii + 1, jj], uvid[ii + 1, jj + 1]
    q01 = np.where(ii == 0, q00, q01)  # pole: one uv per column
    s_centre = 0.5 * (grid.s[:-1] + grid.s[1:])
    main = np.broadcast_to(s_centre > 0, ii.shape) | (ii == 0)  # mirror-symmetric diagonals

    def pick(cond, a, b):
        return np.where(cond[..., None], np.stack(a, -1), np.stack(b, -1))

    t1 = pick(main, (p00, p10, p11), (p00, p10, p01))
    t2 = pick(main, (p00, p11, p01), (p01, p10, p11))
    u1 = pick(main, (q00, q10, q11), (q00, q10, q01))
    u2 = pick(main, (q00, q11, q01), (q01, q10, q11))
    keep1 = ~removed
    keep2 = ~removed & (ii > 0)
    cell_faces = -np.ones((n_el - 1, n_az, 2), np.int64)
    n1 = int(keep1.sum())
    cell_faces[..., 0][keep1] = np.arange(n1)
    cell_faces[..., 1][keep2] = n1 + np.arange(int(keep2.sum()))
    faces = [t1[keep1], t2[keep2]]
    uvfaces = [u1[keep1], u2[keep2]]

    verts = np.zeros((n_grid + len(slit_cols), 3))
    verts[0] = P[0, 0]
    verts[1:n_grid] = P[1:, :n_az].reshape(-1, 3)
    verts[n_grid:] = P[m, slit_cols]
    uvs = [uv_pole, uv_grid]
    n_uv = n_az + (n_el - 1) * (n_az + 1)
    row = np.concatenate([[0], np.repeat(np.arange(1, n_el), n_az), np.full(len(slit_cols), m)])

    # The mouth pouch, attached to both lips of the slit.
    n_v = len(verts)
    cols = np.arange(j_right, j_left + 1)
    n_inner = 3 if n_az >= 48 else 2
    cav_v, cf, cuv, cuvf, cav_up, cav_low, cav_corner = _mouth_cavity(
        P, m, cols, vid[m, cols], vid_lower[m, cols], n_inner, verts, n_uv)
    faces.append(cf)
    uvfaces.append(cuvf)
    uvs.append(cuv)
    all_verts = [verts, cav_v]
    n_v += len(cav_v)
    n_uv += len(cuv)
    row = np.concatenate([row, -np.ones(len(cav_v), np.int64)])

    eyeball_ids = {}
    for joint in (LEFT_EYE, RIGHT_EYE):
        ev, ef, th, ph = _eyeball(eye_centres[joint], rings, segments)
        rho = th / _EYE_BACK_ANGLE * _EYE_UV_RADIUS
        cu, cv = _EYE_UV_CENTRES[joint]
        uvs.append(np.stack([cu + rho * np.cos(ph), cv + rho * np.sin(ph)], axis=1))
        faces.append(ef + n_v)
        uvfaces.append(ef + n_uv)
        eyeball_ids[joint] = n_v + np.arange(len(ev))
        all_verts.append(ev)
        n_v += len(ev)
        n_uv += len(ev)
    verts = np.concatenate(all_verts)
    faces = np.concatenate(faces).astype(np.int64)
    uvfaces = np.concatenate(uvfaces).astype(np.int64)
    uvcoords = np.concatenate(uvs)
    row = np.concatenate([row, -np.ones(n_v - len(row), np.int64)])

    # Drop what the eye openings left unused, renumbering vertices and uv-vertices.
    used = np.zeros(len(verts), bool)
    used[faces.ravel()] = True
    remap = -np.ones(len(verts), np.int64)
    remap[used] = np.arange(int(used.sum()))
    used_uv = np.zeros(len(uvcoords), bool)
    used_uv[uvfaces.ravel()] = True
    remap_uv = -np.ones(len(uvcoords), np.int64)
    remap_uv[used_uv] = np.arange(int(used_uv.sum()))

    is_head = np.zeros(len(verts), bool)
    is_head[: n_grid + len(slit_cols) + len(cav_v)] = True
    return _Mesh(
        vertices=verts[used], faces=remap[faces], uvcoords=uvcoords[used_uv], uvfaces=remap_uv[uvfaces],
        cell_faces=cell_faces, cell_main_diag=main, cell_removed=removed, slit_cols=slit_cols,
        lower_slit=remap[lower_ids], upper_slit=remap[vid[m, slit_cols]],
        eyeballs={k: remap[v] for k, v in eyeball_ids.items()}, eye_centres=eye_centres,
        is_head=is_head[used], row=row[used],
        cavity_upper=remap[cav_up], cavity_lower=remap[cav_low], cavity_corners=remap[cav_corner],
    )


# ---------------------------------------------------------------------------------------------------------------
# Landmarks: grid positions -> (face, barycentric)


def _locate(mesh: _Mesh, cell_i, a, j):
    """Face ids and barycentric weights of grid points: cell row `cell_i`, row fraction `a`, column `j`.

    The cell row is explicit so that points on the slit row pick the upper or the lower lip.
    """
    cell_i = np.asarray(cell_i, np.int64)
    a = np.asarray(a, np.float64)
    j = np.asarray(j, np.float64)
    n_az = mesh.cell_faces.shape[1]
    jc = np.floor(j).astype(np.int64)
    b = j - jc
    jc = np.mod(jc, n_az)
    main = mesh.cell_main_diag[cell_i, jc]
    faces = mesh.cell_faces[cell_i, jc]
    second = np.where(main, b > a, a + b > 1.0) & (cell_i > 0)
    # main diagonal: T1 = (p00, p10, p11) for a >= b, T2 = (p00, p11, p01)
    w_main1 = np.stack([1 - a, a - b, b], -1)
    w_main2 = np.stack([1 - b, a, b - a], -1)
    # other diagonal: T1 = (p00, p10, p01) for a + b <= 1, T2 = (p01, p10, p11)
    w_anti1 = np.stack([1 - a - b, a, b], -1)
    w_anti2 = np.stack([1 - a, 1 - b, a + b - 1], -1)
    pole = cell_i == 0
    w_pole = np.stack([1 - a, a * (1 - b), a * b], -1)
    w = np.where(main[..., None], np.where(second[..., None], w_main2, w_main1),
                 np.where(second[..., None], w_anti2, w_anti1))
    w = np.where(pole[..., None], w_pole, w)
    face = np.where(second, faces[..., 1], faces[..., 0])
    if np.any(face < 0):
        raise RuntimeError("demo head: a landmark fell into an eye opening (generator bug)")
    w = np.clip(w, 0.0, 1.0)
    return face, w / w.sum(-1, keepdims=True)


def _split_index(i):
    """Cell row and fraction of a fractional grid row."""
    i = np.asarray(i, np.float64)
    ci = np.clip(np.floor(i).astype(np.int64), 0, None)
    return ci, i - ci


def _surface_index_at_xy(P, grid: _Grid, origin, x, y, z0=0.08):
    """Fractional grid index of the front surface point with frontal coordinates (x, y)."""
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    z = np.full(x.shape, z0)
    for _ in range(6):
        d = np.stack([x, y, z], -1) - origin
        az = np.arctan2(d[..., 0], d[..., 2])
        el = np.arctan2(d[..., 1], np.hypot(d[..., 0], d[..., 2]))
        i, j = grid.frac_index(az, el)
        z = _bilinear(P, i, j)[..., 2]
    return i, j


def _scan_to_open_cell(mesh: _Mesh, i, j, di, dj):
    """Walk from grid point (i, j) in steps of (di, dj) cells until the cell there is not removed.

    Returns (cell row, row fraction, column) of the point on the first kept cell's edge facing the start. A
    start on a kept cell right next to the opening (a lid point a little off the rim) goes onto the rim too.
    """
    ci, a = _split_index(i)
    cj = int(np.floor(j))
    n_rows, n_cols = mesh.cell_removed.shape
    if not mesh.cell_removed[ci, cj % n_cols]:
        if di and 0 <= ci - di < n_rows and mesh.cell_removed[ci - di, cj % n_cols]:
            return int(ci), (1.0 if di < 0 else 0.0), float(j)
        return int(ci), float(a), float(j)
    for _ in range(sum(mesh.cell_removed.shape)):  # an opening is a few cells wide: this always ends early
        if not mesh.cell_removed[ci, cj % mesh.cell_removed.shape[1]]:
            break
        ci += di
        cj += dj
    if di:
        return int(ci), (1.0 if di < 0 else 0.0), float(j)
    return int(ci), float(a), float(cj + (1.0 - 1e-9 if dj < 0 else 0.0))


def _static_landmarks(mesh: _Mesh, P, grid: _Grid, design: _Design):
    """Face ids [51] and barycentrics [51, 3] of iBUG points 17..67 (brows, nose, eyes, mouth)."""
    o = design.origin
    ex, ey, aw, ah = design.opening_x, design.eye_y, design.eye_half_width, design.eye_half_height
    pts = []  # (cell row, fraction, column)

    def at_xy(x, y):
        i, j = _surface_index_at_xy(P, grid, o, x, y)
        ci, a = _split_index(i)
        return int(ci), float(a), float(j)

    # Brows 17-21 (subject's right, -x, outer to inner), 22-26 mirrored (inner to outer).
    bx = np.array([0.057, 0.047, 0.036, 0.025, 0.0145])
    by = ey + np.array([0.0105, 0.0155, 0.0175, 0.0168, 0.0140])
    for x, y in zip(-bx, by):
        pts.append(at_xy(x, y))
    for x, y in zip(bx[::-1], by[::-1]):
        pts.append(at_xy(x, y))
    # Nose 27-30: bridge from between the eyes to the tip (the most forward midline point).
    mid = grid.n_az // 2
    i_lo, _ = _surface_index_at_xy(P, grid, o, 0.0, ey)
    i_hi, _ = _surface_index_at_xy(P, grid, o, 0.0, design.mouth_y)
    rows = np.arange(int(i_lo), int(np.ceil(i_hi)) + 1)
    i_tip = rows[np.argmax(P[rows, mid, 2])]
    y_tip = P[i_tip, mid, 1]
    for y in np.linspace(ey + 0.002, y_tip, 4)[:-1]:
        pts.append(at_xy(0.0, y))
    pts.append((int(i_tip), 0.0, float(mid)))
    # 31-35: lower edge of the nose, alar base to alar base.
    for x, dy in zip((-0.0125, -0.0065, 0.0, 0.0065, 0.0125), (0.0, -0.0015, -0.0025, -0.0015, 0.0)):
        pts.append(at_xy(x, y_tip - 0.0145 + dy))
    # Eyes 36-41 (subject's right, -x: outer corner, upper lid x2, inner corner, lower lid x2), 42-47 (left,
    # +x: inner corner, upper x2, outer corner, lower x2). Points on the opening's rim.
    k = 0.89

    def eye(sx, order):
        out = []
        for name in order:
            if name == "outer":
                i, j = _surface_index_at_xy(P, grid, o, sx * (ex + aw), ey)
                out.append(_scan_to_open_cell(mesh, float(i), float(j), 0, int(sx)))
            elif name == "inner":
                i, j = _surface_index_at_xy(P, grid, o, sx * (ex - aw), ey)
                out.append(_scan_to_open_cell(mesh, float(i), float(j), 0, -int(sx)))
            else:
                side, frac = name
                x = sx * (ex + frac * aw / 3.0)
                dy = (1 if side == "up" else -1) * k * ah * (1 - (1 / 3) ** 2)
                i, j = _surface_index_at_xy(P, grid, o, x, ey + dy)
                out.append(_scan_to_open_cell(mesh, float(i), float(j), -1 if side == "up" else 1, 0))
        return out

    pts += eye(-1, ["outer", ("up", 1), ("up", -1), "inner", ("down", -1), ("down", 1)])
    pts += eye(1, ["inner", ("up", -1), ("up", 1), "outer", ("down", 1), ("down", -1)])
    # Mouth: 48 right corner, 49-53 upper outer, 54 left corner, 55-59 lower outer (left to right),
    # 60 inner right corner, 61-63 upper inner, 64 inner left corner, 65-67 lower inner (left to right).
    m = grid.mouth_row
    jr, jl = float(mesh.slit_cols[0] - 1), float(mesh.slit_cols[-1] + 1)
    my, mw = design.mouth_y, design.mouth_half_width
    upper_h = np.array([0.0045, 0.0078, 0.0070, 0.0078, 0.0045])
    ux = np.array([-0.62, -0.28, 0.0, 0.28, 0.62]) * mw
    pts.append((m, 0.0, jr))
    for x, h in zip(ux, upper_h):
        pts.append(at_xy(x, my + h))
    pts.append((m, 0.0, jl))
    lower_h = np.array([0.0060, 0.0090, 0.0095, 0.0090, 0.0060])
    for x, h in zip(ux[::-1] * 0.92, lower_h):
        pts.append(at_xy(x, my - h))
    _, j_inner = _surface_index_at_xy(P, grid, o, np.array([-0.5, 0.0, 0.5]) * mw, my)
    pts.append((m - 1, 1.0, jr + 0.35))
    for j in j_inner:
        pts.append((m - 1, 1.0, float(j)))
    pts.append((m - 1, 1.0, jl - 0.35))
    for j in j_inner[::-1]:
        pts.append((m, 0.0, float(j)))
    ci, a, j = (np.array(v) for v in zip(*pts))
    return _locate(mesh, ci, a, j)


# A contour point sits where the surface is about to turn away (n . view below a threshold). On the sides of
# the face that is the silhouette (threshold 0); under the chin the surface runs nearly parallel to the view,
# n . view = 0 is ill-defined there, and the visible edge of the jaw is where the surface starts to turn under:
# the threshold grows for the points that search downward.
_SILHOUETTE_UNDER_CHIN = 0.3


def _contour_landmarks(mesh: _Mesh, P, grid: _Grid, design: _Design):
    """Jaw-contour points 0..16 for every yaw row: faces [79, 17] and barycentrics [79, 17, 3].

    Row r is yaw r degrees (r <= 39) or -(r - 39) degrees (r >= 40), yaw as DECA measures it from the
    head's rotation R: atan2(-R[2,0], ...), i.e. R = R_y(yaw) turns the face toward +x. In head
    coordinates the camera then looks along v = (-sin yaw, 0, cos yaw), and each contour point is the first
    point, walking outward from below the nose along its own direction on the (azimuth, elevation) chart,
    where the surface turns away from the camera (n . v = 0, or a little before it under the chin): the
    visible outline of the lower face.
    Points are kept in front of the ears (|azimuth| <= 80 degrees).
    """
    # Normals of a smoothed copy of the surface: the silhouette of the face, not of lip creases or nostrils.
    Ps = P.copy()
    for _ in range(3):
        Ps[1:-1, :-1] = (2 * Ps[1:-1, :-1] + np.roll(Ps[1:-1, :-1], 1, 1) + np.roll(Ps[1:-1, :-1], -1, 1)
                         + Ps[:-2, :-1] + Ps[2:, :-1]) / 6.0
        Ps[:, -1] = Ps[:, 0]
    di = np.gradient(Ps, axis=0)
    dj = np.gradient(Ps, axis=1)
    normals = _normalize(np.cross(di, dj))

    o = design.origin
    d_nose = np.array([0.0, design.mouth_y + 0.026, design.lip_z]) - o
    el_c = np.arctan2(d_nose[1], d_nose[2])
    phi = np.deg2rad(167.0 + np.arange(17) * (206.0 / 16))  # chart directions, 0 = +azimuth
    rho = np.deg2rad(np.linspace(14.0, 110.0, 400))
    az = np.cos(phi)[:, None] * rho[None, :]
    el = el_c + np.sin(phi)[:, None] * rho[None, :]
    az_limit = np.deg2rad(80.0)
    el_limit = grid.el[-2]
    valid = (np.abs(az) <= az_limit) & (el >= el_limit)
    i, j = grid.frac_index(np.clip(az, -az_limit, az_limit), np.maximum(el, el_limit))
    n = _bilinear(normals, i, j)  # [17, S, 3]
    # The points that search downward stop where the face ends and the neck begins (the neck is about as wide
    # as the jaw, so without this they would slide down the neck's silhouette).
    on_face = _face_field(_bilinear(P, i, j), design) < _FACE_MARGIN
    downward = np.sin(phi)[:, None] < -0.3
    valid &= on_face | ~downward

    yaws = np.concatenate([np.arange(40), -np.arange(1, 40)]).astype(np.float64)
    y = np.deg2rad(yaws)
    view = np.stack([-np.sin(y), np.zeros_like(y), np.cos(y)], -1)  # [79, 3]
    facing = np.einsum("psk,rk->rps", n, view)  # [79, 17, S]
    threshold = (_SILHOUETTE_UNDER_CHIN * np.clip(-np.sin(phi), 0.0, 1.0) ** 2)[None, :, None]  # [1, 17, 1]
    away = (facing <= threshold) | ~valid[None]
    first = np.where(away.any(-1), np.argmax(away, -1), rho.size - 1)
    # Sub-sample position of the zero crossing.
    prev = np.maximum(first - 1, 0)
    f0 = np.take_along_axis(facing, prev[..., None], -1)[..., 0]
    f1 = np.take_along_axis(facing, first[..., None], -1)[..., 0]
    hit_valid = np.take_along_axis(np.broadcast_to(valid, facing.shape), first[..., None], -1)[..., 0]
    thr = threshold[..., 0]
    t = np.where(hit_valid & (f0 > f1), np.clip((f0 - thr) / np.maximum(f0 - f1, 1e-12), 0, 1), 0.0)
    rho_hit = rho[prev] + t * (rho[first] - rho[prev])
    az_hit = np.clip(np.cos(phi)[None] * rho_hit, -az_limit, az_limit)
    el_hit = np.maximum(el_c + np.sin(phi)[None] * rho_hit, el_limit)
    i, j = grid.frac_index(az_hit, el_hit)
    ci, a = _split_index(np.minimum(i, grid.n_el - 1 - 1e-6))
    return _locate(mesh, ci, a, j)


def _embed(vertices, faces, face_idx, bary):
    """Points [..., 3] from faces [...] and barycentric weights [..., 3]."""
    return np.einsum("...k,...kc->...c", bary, vertices[faces[face_idx]])


# ---------------------------------------------------------------------------------------------------------------
# Skinning


def _diffuse(mesh: _Mesh, values, radius: float):
    """Values [V] blurred over the mesh's edges by roughly `radius` metres (heat diffusion).

    Edge weights fade with edge length and the number of steps grows with mesh density, so coarse and fine
    meshes get about the same blur in metres.
    """
    v, f = mesh.vertices, mesh.faces
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    length = np.linalg.norm(v[rows] - v[cols], axis=1)
    weight = np.exp(-(length / radius) ** 2)
    adj = scipy.sparse.csr_matrix((weight, (rows, cols)), shape=(len(v), len(v)))  # duplicates add up
    deg = np.asarray(adj.sum(1)).ravel()
    n_iter = int(np.clip(round(2.0 * (radius / np.median(length)) ** 2), 1, 60))
    out = np.asarray(values, np.float64).copy()
    for _ in range(n_iter):
        out = out + 0.5 * (adj @ out - deg * out) / (deg + 1.0)
    return out


def _skinning(mesh: _Mesh, design: _Design):
    """weights [V, 5] and J_regressor [5, V]."""
    v = mesh.vertices
    n_v = len(v)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    head = mesh.is_head
    ax, az = design.neck_axis
    r_xz = np.hypot(x - ax, z - az)
    # Root: the neck stub below the neck joint.
    on_neck = _smoothstep((design.neck_radius + 0.006 - r_xz) / 0.010)
    y_bottom = y[head].min()
    w_root = on_neck * _smoothstep((design.neck_joint_y - y) / (design.neck_joint_y - y_bottom))
    # Jaw: below a line from the mouth back up to the hinge, in front of the hinge, above the neck.
    my, zl = design.mouth_y, design.lip_z
    hy, hz = design.hinge[1], design.hinge[2]
    along = np.clip((zl - z) / (zl - hz), 0.0, 1.0)
    y_line = my + along * (hy - my)
    band = 0.012 + 0.016 * along
    below = _smoothstep((y_line - y) / band + 0.5)
    in_front = _smoothstep((z - hz + 0.012) / 0.02)
    off_neck = _smoothstep((r_xz - design.neck_radius + 0.002) / 0.012)
    # The lips: above the slit stays with the head, below goes with the jaw, however close they are.
    m = mesh.row
    lower_side = ((m > 0) & (m > np.max(m[mesh.lower_slit]))).astype(float)
    lower_side[mesh.lower_slit] = 1.0
    lower_side[mesh.upper_slit] = 0.0
    lateral = _smoothstep((design.mouth_half_width + 0.003 - np.abs(x)) / 0.005)
    near_lips = _smoothstep((0.014 - np.abs(y - my)) / 0.006) * _smoothstep((z - 0.045) / 0.015)
    lip_mix = lateral * near_lips
    below = lip_mix * lower_side + (1 - lip_mix) * below
    w_jaw = below * in_front * off_neck * (1 - w_root)
    w_jaw = np.where(head, w_jaw, 0.0)
    w_root = np.where(head, w_root, 0.0)

    # Smooth over the mesh (the slit is a cut, so the lips stay apart), by about the same distance in metres
    # whatever the resolution: edge weights fade with length, iterations grow with density.
    w_jaw_s = _diffuse(mesh, w_jaw, radius=0.015)
    # The lower lip opens fully in the middle and half at the corners (a lens-shaped opening); the pouch
    # behind the lips follows its lip.
    x_corner = np.abs(v[mesh.cavity_corners, 0]).max() if len(mesh.cavity_corners) else design.mouth_half_width
    lip_profile = lambda ids: 0.5 + 0.5 * np.sqrt(np.clip(1 - (x[ids] / x_corner) ** 2, 0, 1))  # noqa: E731
    near_slit = np.exp(-0.5 * ((y - my) / 0.005) ** 2) * lateral * _smoothstep((z - 0.045) / 0.015) * lower_side
    w_jaw_s = w_jaw_s * (1 - near_slit * (1 - lip_profile(np.arange(n_v))))
    w_jaw_s[mesh.lower_slit] = lip_profile(mesh.lower_slit)
    w_jaw_s[mesh.upper_slit] = 0.0
    w_jaw_s[mesh.cavity_lower] = lip_profile(mesh.cavity_lower)
    w_jaw_s[mesh.cavity_upper] = 0.0
    w_jaw_s[mesh.cavity_corners] = 0.5
    w_root = _diffuse(mesh, w_root, radius=0.008)
    w_jaw = np.where(head, w_jaw_s, 0.0)
    w_root = np.where(head, w_root, 0.0)
    weights = np.zeros((n_v, 5))
    weights[:, 0] = w_root
    weights[:, JAW] = np.minimum(w_jaw, 1.0 - w_root)
    weights[:, 1] = np.where(head, 1.0 - weights[:, 0] - weights[:, JAW], 0.0)
    for joint, ids in mesh.eyeballs.items():
        weights[ids] = 0.0
        weights[ids, joint] = 1.0

    # Joint regressor: averages of vertices around each joint.
    J = np.zeros((5, n_v))
    # Root: the neck's bottom ring, each vertex weighted by its share of the ring's length (the columns are
    # denser in front), so the mean is the ring's centre.
    bottom = np.flatnonzero(head & (mesh.row == mesh.row.max()))
    bottom = bottom[np.argsort(np.arctan2(x[bottom], z[bottom]))]
    ring = v[bottom]
    seg = np.linalg.norm(ring - np.roll(ring, 1, 0), axis=1)
    J[0, bottom] = 0.5 * (seg + np.roll(seg, -1))
    neck_band = head * np.exp(-0.5 * ((y - design.neck_joint_y) / 0.006) ** 2) * on_neck * (z < 0.03)
    J[1] = neck_band
    hinge_w = np.zeros(n_v)
    for sx in (1.0, -1.0):
        side = head * (sx * x > 0) * _gauss(v, (sx * 0.08, design.hinge[1], design.hinge[2]), 0.010)
        hinge_w += side / side.sum()
    J[JAW] = hinge_w
    for joint, ids in mesh.eyeballs.items():
        ring = ids[1:]  # without the front pole: symmetric rings average to the centre
        J[joint, ring] = 1.0
    J /= J.sum(1, keepdims=True)
    return weights, J


# ---------------------------------------------------------------------------------------------------------------
# Blendshapes


def _rbf_fields(points, centres, sigmas, amplitudes):
    """Sum-of-Gaussians vector fields: [C, N, 3] from centres [C, K, 3], sigmas [C, K], amplitudes [C, K, 3]."""
    c = centres.reshape(-1, 3)
    d2 = np.sum(points ** 2, 1)[None, :] + np.sum(c ** 2, 1)[:, None] - 2.0 * c @ points.T
    g = np.exp(-0.5 * np.maximum(d2, 0.0) / sigmas.reshape(-1, 1) ** 2).reshape(centres.shape[:2] + (-1,))
    return np.matmul(g.transpose(0, 2, 1), amplitudes)  # [C, N, K] @ [C, K, 3]


def _scale_to_max(field, magnitude):
    peak = np.max(np.linalg.norm(field, axis=-1))
    return field * (magnitude / max(peak, 1e-12))


_LID_CLEARANCE = 0.00035  # a moving lid vertex stays this far outside its eyeball (the rims rest 0.4 mm out)
_LID_SPREAD_UP = np.deg2rad(18.0)  # how far above the upper rim (angle about the eyeball centre) lid motion fades:
# below the brow, which a closing eye leaves where it is
_LID_SPREAD_LOW = np.deg2rad(25.0)  # and below the lower rim


def _chord_clearance(rho0, a0, rho1, a1):
    """Smallest distance from the origin of the segments (rho0, a0) -> (rho1, a1) in the (y, z) plane (polar)."""
    p0 = np.stack([rho0 * np.sin(a0), rho0 * np.cos(a0)], -1)
    p1 = np.stack([rho1 * np.sin(a1), rho1 * np.cos(a1)], -1)
    d = p1 - p0
    t = np.clip(-np.sum(p0 * d, -1) / np.maximum(np.sum(d * d, -1), 1e-18), 0.0, 1.0)
    return np.linalg.norm(p0 + t[..., None] * d, axis=-1)


class _EyeLids:
    """The rim of one eye opening, and lid movements that keep the lids outside the eyeball.

    In coordinates about the eyeball centre, a lid vertex has a lateral offset x, an elevation angle a about
    the horizontal (x) axis through the centre and a distance rho from that axis. A lid movement turns lid
    vertices about that axis (which keeps their distance from the eyeball) by an angle that is a fraction of
    the opening's angular height at their x, fully at the rim and fading toward the brow or the cheek. A
    blendshape moves every vertex along a straight line, the chord of that arc, which near the rim would cut
    into the eyeball: the rim vertices are also pushed away from the axis, just enough that the chord clears
    the eyeball by _LID_CLEARANCE, and the vertices around them by the same fading fraction of that push.
    """

    def __init__(self, mesh: "_Mesh", centre):
        f = mesh.faces
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        uniq, counts = np.unique(edges, axis=0, return_counts=True)
        boundary = np.unique(uniq[counts == 1])
        boundary = boundary[mesh.is_head[boundary]]
        q = mesh.vertices[boundary] - centre
        near = np.linalg.norm(q, axis=1) < _EYE_RADIUS + 0.003
        self.centre = np.asarray(centre, np.float64)
        self.rim = boundary[near]
        x, a, rho = self._polar(mesh.vertices[self.rim])
        # Upper and lower rim: above and below the line through the middles of the opening's two ends (each
        # end of the almond is a short edge: its two vertices are the ends of the upper and the lower rim).
        order = np.argsort(x)
        lo_end, hi_end = order[:2], order[-2:]
        mid = np.interp(x, [x[lo_end].mean(), x[hi_end].mean()], [a[lo_end].mean(), a[hi_end].mean()])
        self.is_upper = a > mid
        self.chains = {}
        for key, sel in (("up", self.is_upper), ("low", ~self.is_upper)):
            k = np.argsort(x[sel])
            self.chains[key] = (x[sel][k], a[sel][k], rho[sel][k])
        self.x_range = (x.min(), x.max())

    def _polar(self, points):
        q = points - self.centre
        return q[:, 0], np.arctan2(q[:, 1], q[:, 2]), np.hypot(q[:, 1], q[:, 2])

    def _rim(self, key, x):
        cx, ca, cr = self.chains[key]
        return np.interp(x, cx, ca), np.interp(x, cx, cr)

    def _smooth(self, key, x):
        """The elevation of rim `key` at x, smoothed: the rims step from grid row to grid row."""
        cx, ca, _ = self.chains[key]
        x0, x1 = self.x_range
        u = lambda t: (np.clip(t, x0, x1) - 0.5 * (x0 + x1)) / (0.5 * (x1 - x0))  # noqa: E731
        return np.polyval(np.polyfit(u(cx), ca, min(4, len(cx) - 1)), u(x))

    def _turns(self, x, rho, close: bool, upper: float, lower: float, smooth: bool = False):
        """Angles by which the upper rim (down) and the lower rim (up) turn at x.

        Closing, both end on one smooth curve (a fraction `lower` of the way up the opening), but for a 0.3 mm
        sliver toward the corners, where the rims' ends would otherwise meet in a zero-area triangle.
        """
        up_s, low_s = self._smooth("up", x), self._smooth("low", x)
        height = np.maximum(up_s - low_s, 0.0)
        if not close:
            return upper * height, lower * height
        x0, x1 = self.x_range
        toward_end = np.abs(x - 0.5 * (x0 + x1)) / (0.5 * (x1 - x0))
        gap = np.minimum(height, 0.0003 / np.maximum(rho, 1e-6)) * _smoothstep((toward_end - 0.6) / 0.4)
        meet = low_s + lower * height
        # A rim vertex keeps a little of its step off the smooth rim, so that a rim that steps up a grid column
        # does not fold flat.
        a_up, a_low = (up_s, low_s) if smooth else (self._rim("up", x)[0], self._rim("low", x)[0])
        keep = 0.35
        return (a_up - (meet + upper * gap + keep * (a_up - up_s)),
                (meet - lower * gap + keep * (a_low - low_s)) - a_low)

    def _needed_rho(self, x, rho0, a0, a1):
        """Smallest rho1 >= rho0 for which the chord (rho0, a0) -> (rho1, a1) clears the eyeball."""
        need = np.sqrt(np.maximum((_EYE_RADIUS + _LID_CLEARANCE) ** 2 - x ** 2, 0.0))
        lo, hi = rho0.copy(), rho0 + 0.01
        ok = _chord_clearance(rho0, a0, lo, a1) >= need
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            good = _chord_clearance(rho0, a0, mid, a1) >= need
            hi = np.where(good, mid, hi)
            lo = np.where(good, lo, mid)
        return np.where(ok, rho0, hi)

    def field(self, points, close: bool = False, upper: float = 0.0, lower: float = 0.0):
        """[N, 3] lid displacement (metres) of `points` at coefficient 1.

        upper: fraction of the opening's height the upper rim moves down (negative: up); lower: fraction the
        lower rim moves up. close: the upper lid comes down to meet the lower one (upper 0.8, lower 0.2), both
        rims ending on the same curve.
        """
        if close:
            upper, lower = 0.8, 0.2
        x, a, rho = self._polar(points)
        a_up, rho_up = self._rim("up", x)
        a_low, rho_low = self._rim("low", x)
        turn_up, turn_low = self._turns(x, 0.5 * (rho_up + rho_low), close, upper, lower)
        # Where the rims end: how far out each rim vertex must go for its chord to clear the eyeball.
        ends = {}
        for key, sign in (("up", -1.0), ("low", 1.0)):
            cx, ca, cr = self.chains[key]
            turn = self._turns(cx, cr, close, upper, lower)[0 if key == "up" else 1]
            ends[key] = (cx, self._needed_rho(cx, cr, ca, ca + sign * turn))
        need_up = np.interp(x, *ends["up"])
        need_low = np.interp(x, *ends["low"])
        if close:  # the two rims meet: one target distance for both
            need_up = need_low = np.maximum(need_up, need_low)
        # Off the rim, the lids move with the smoothed rim (a rim that steps from row to row would otherwise
        # print its steps on the lid); the rim vertices themselves, exactly to their targets.
        up_s, low_s = self._smooth("up", x), self._smooth("low", x)
        smooth_up, smooth_low = self._turns(x, 0.5 * (rho_up + rho_low), close, upper, lower, smooth=True)
        is_up = a > 0.5 * (up_s + low_s)
        on_rim = np.exp(-0.5 * (np.where(is_up, a - a_up, a - a_low) / np.deg2rad(2.0)) ** 2)
        turn_up = on_rim * turn_up + (1 - on_rim) * smooth_up
        turn_low = on_rim * turn_low + (1 - on_rim) * smooth_low
        s = np.where(is_up, (a - up_s) / _LID_SPREAD_UP, (low_s - a) / _LID_SPREAD_LOW)
        w = 1.0 - _smoothstep(s)
        x0, x1 = self.x_range
        w *= (1.0 - _smoothstep((x0 - x) / 0.003)) * (1.0 - _smoothstep((x - x1) / 0.003))
        turn = np.where(is_up, -turn_up, turn_low) * w
        push = np.where(is_up, need_up - rho_up, need_low - rho_low) * w
        a1 = a + turn
        rho1 = rho + push
        q = points - self.centre
        target = np.stack([q[:, 0], rho1 * np.sin(a1), rho1 * np.cos(a1)], 1)
        return target - q


def _blendshapes(mesh: _Mesh, design: _Design, weights, joints, lmk, rng):
    """shapedirs [V, 3, 400] and posedirs [V, 3, 36] (metres per unit coefficient / per unit R - I entry)."""
    v = mesh.vertices.copy()
    head = mesh.is_head
    # Eyeballs follow identity changes rigidly (the field at their centre) and ignore expressions.
    for joint, ids in mesh.eyeballs.items():
        v[ids] = mesh.eye_centres[joint]
    normals = _vertex_normals(mesh.vertices, mesh.faces)
    shared = 0.5 * (normals[mesh.lower_slit] + normals[mesh.upper_slit])
    normals[mesh.lower_slit] = normals[mesh.upper_slit] = _normalize(shared)
    for ids in mesh.eyeballs.values():
        normals[ids] = (0.0, 0.0, 1.0)  # one normal per eyeball: normal-based fields move it rigidly too
    x, y, z = v.T
    side = np.clip((y - design.mouth_y) / 0.001, -1, 1)  # +1 upper lip side, -1 lower
    side[mesh.upper_slit] = 1.0
    side[mesh.lower_slit] = -1.0
    upper = (side > 0).astype(float)
    lower = 1.0 - upper
    o = design.origin

    L = lmk
    corner_r, corner_l = L[48], L[54]
    mouth = 0.5 * (L[62] + L[66])
    lip_up, lip_low = L[51], L[57]
    chin = L[8]
    brow_r, brow_l = L[19], L[24]
    nose_tip = L[30]
    alae = [L[31], L[35]]
    cheek_r = np.array([-0.045, L[33][1] - 0.002, 0.0])
    cheek_r[2] = L[31][2] - 0.012
    cheek_l = cheek_r * np.array([-1, 1, 1])
    eye_l, eye_r = mesh.eye_centres[LEFT_EYE], mesh.eye_centres[RIGHT_EYE]
    ear = [np.array([0.08, 0.012, -0.014]), np.array([-0.08, 0.012, -0.014])]
    g = lambda c, s: _gauss(v, c, s)[:, None]  # noqa: E731
    vec = lambda *c: np.array(c, np.float64)[None, :]  # noqa: E731
    xs = np.sign(x)[:, None]

    w_jaw = weights[:, JAW:JAW + 1]

    # --- identity: designed proportions first, then smooth random fields
    ident = [
        np.stack([x, 0 * x, 0 * x], 1),  # head width
        np.stack([0 * x, 0 * x, z - o[2]], 1),  # head length
        np.stack([0 * x, (y - o[1]) * (1.0 - 0.4 * np.tanh((y - o[1]) / 0.03)), 0 * x], 1),  # face height
        g(nose_tip, 0.018) * vec(0, -0.15, 1.0) + g(L[28], 0.012) * vec(0, 0, 0.5),  # nose size
        g(chin, 0.022) * vec(0, -0.6, 1.0),  # chin
        np.stack([x, 0 * x, 0 * x], 1) * _smoothstep((design.mouth_y + 0.01 - y) / 0.03)[:, None] * head[:, None],
        g(np.array([0, 0.085, 0.07]), 0.035) * vec(0, 0.3, 1.0),  # forehead
        g(eye_l, 0.03) * vec(1, 0, 0) + g(eye_r, 0.03) * vec(-1, 0, 0),  # eye spacing
        (g(cheek_l, 0.024) + g(cheek_r, 0.024)) * normals,  # cheek fullness
        (g(lip_up, 0.012) + g(lip_low, 0.012)) * normals,  # lip fullness
        (g(alae[0], 0.012) + g(alae[1], 0.012)) * xs * vec(1, 0, 0),  # nose width
        (g(brow_l, 0.02) + g(brow_r, 0.02)) * vec(0, 0.2, 1.0),  # brow ridge
        (g(corner_l, 0.014) + g(corner_r, 0.014)) * xs * vec(1, 0, 0),  # mouth width
        (g(ear[0], 0.02) + g(ear[1], 0.02)) * xs * vec(1, 0, 0.3),  # ears
        g(np.array([0, 0.12, -0.01]), 0.06) * vec(0, 1, 0),  # cranium height
        g(np.array([0, 0.03, -0.11]), 0.06) * vec(0, 0, -1),  # back of the head
    ]
    n_designed = len(ident)
    n_rand = N_SHAPE - n_designed
    k = 6
    head_ids = np.flatnonzero(head)
    centres = v[rng.choice(head_ids, size=(n_rand, k))]
    sigmas = rng.uniform(0.025, 0.06, size=(n_rand, k))
    amps = rng.standard_normal((n_rand, k, 3))
    rand = _rbf_fields(v, centres, sigmas, amps)
    mags = 4.5 * _MM * (1.0 + np.arange(N_SHAPE)) ** -0.3
    mags[n_designed:] = mags[n_designed - 1] * ((np.arange(n_designed, N_SHAPE) + 1) / n_designed) ** -0.8
    shape = np.zeros((len(v), 3, N_SHAPE + N_EXP))
    for c, field in enumerate(ident + list(rand)):
        shape[:, :, c] = _scale_to_max(field, mags[c])

    # --- expression: designed face movements (EXPRESSION_NAMES, 1.0 = a full, strong expression of a real face),
    # then weaker random fields on the face
    lids = {sx: _EyeLids(mesh, mesh.eye_centres[j]) for j, sx in ((LEFT_EYE, 1.0), (RIGHT_EYE, -1.0))}
    # Fields that are not about the lids leave the eye openings' rims alone (a rim pushed about would cut into
    # its eyeball or open a gap beside it): they fade to zero within a few mm of each eyeball.
    keep_rims = np.ones(len(v))
    for c_eye in mesh.eye_centres.values():
        keep_rims *= _smoothstep((np.linalg.norm(v - c_eye, axis=1) - _EYE_RADIUS - 0.0005) / 0.007)
    keep_rims = keep_rims[:, None]
    my, eye_y = design.mouth_y, design.eye_y
    front = _smoothstep((z - 0.02) / 0.03)[:, None]
    x_corner = abs(corner_l[0])
    lens = np.clip(1.0 - (x / x_corner) ** 2, 0.0, 1.0)[:, None]  # the lips' opening profile: 0 at the corners
    lens = lens * _smoothstep((z - 0.05) / 0.025)[:, None]  # (on the lips, not at the back of the head)
    near_slit = lambda sigma: np.exp(-0.5 * ((y - my) / sigma) ** 2)[:, None]  # noqa: E731
    # The mouth region: flat across the lips, fading toward the cheeks, the nose and the chin.
    mouth_x = (1.0 - _smoothstep((np.abs(x) - 0.018) / 0.028))[:, None]
    mouth_y = (1.0 - _smoothstep((np.abs(y - my) - 0.008) / 0.016))[:, None]
    mouth_z = _smoothstep((z - 0.05) / 0.025)[:, None]
    mouth_w = mouth_x * mouth_y * mouth_z
    lips_w = g(mouth, 0.012)

    def side(sx):
        """Soft left (sx = 1) or right (sx = -1) half of the face; the two halves sum to 1."""
        return _smoothstep((sx * x + 0.008) / 0.016)[:, None]

    def brow_band(sx, lo=0.006, hi=0.016):
        """One brow with the forehead above it: 0 at the upper lid's rim, 1 at the brow, less up the forehead."""
        across = side(sx) * (1.0 - _smoothstep((np.abs(x) - 0.060) / 0.015))[:, None]
        up = _smoothstep((y - eye_y - lo) / (hi - lo))
        up = up * (1.0 - 0.6 * _smoothstep((y - eye_y - 0.022) / 0.035))
        return across * up[:, None] * front

    def corner(sx, sigma=0.014):
        return g(corner_l if sx > 0 else corner_r, sigma)

    def cheek(sx, sigma=0.016):
        return g(np.array([sx * 0.040, eye_y - 0.030, cheek_l[2] + 0.004]), sigma)

    inner_brows = (np.exp(-0.5 * ((x - 0.017) / 0.011) ** 2) + np.exp(-0.5 * ((x + 0.017) / 0.011) ** 2))[:, None]
    # (name, field, peak mm; None: the field is already in metres per unit)
    expr = [("lipsPart", upper[:, None] * lens * near_slit(0.008) * vec(0, 0.45, 0.05)
             + lower[:, None] * lens * near_slit(0.011) * vec(0, -1.0, 0.1), 4.5)]
    expr += [(f"smile_{s}", corner(sx) * vec(0.55 * sx, 0.65, -0.40) + 0.3 * cheek(sx) * vec(0, 1, 0.35), 9.0)
             for s, sx in (("L", 1), ("R", -1))]
    expr += [(f"browUp_{s}", brow_band(sx) * vec(0, 1, 0.1), 9.0) for s, sx in (("L", 1), ("R", -1))]
    expr += [(f"eyeClose_{s}", lids[sx].field(v, close=True), None) for s, sx in (("L", 1), ("R", -1))]
    expr += [(f"browDown_{s}", brow_band(sx, 0.004, 0.016)
              * (1 - 0.45 * _smoothstep((np.abs(x) - 0.02) / 0.03))[:, None]
              * vec(-0.35 * sx, -1, 0.25), 6.0) for s, sx in (("L", 1), ("R", -1))]
    expr += [("browInnerUp", (brow_band(1) + brow_band(-1)) * inner_brows * vec(0, 1, 0.1), 7.0)]
    expr += [(f"frown_{s}", corner(sx, 0.013) * vec(0.15 * sx, -1, 0.05), 6.0) for s, sx in (("L", 1), ("R", -1))]
    expr += [(f"stretch_{s}", corner(sx) * vec(sx, -0.15, -0.25), 7.0) for s, sx in (("L", 1), ("R", -1))]
    expr += [("lipsPress", mouth_w * np.stack([0 * x, -0.4 * (y - my), 0 * x], 1) / 0.006
              + lips_w * vec(0, 0, -0.5) + g(chin, 0.012) * vec(0, 0.4, 0.2), 3.5)]
    expr += [("funnel", lips_w * vec(0, 0, 1) + mouth_w * np.stack([-0.25 * x / 0.025, 0 * x, 0 * x], 1)
              + lens * (upper[:, None] * near_slit(0.007) * vec(0, 0.5, 0.1)
                        + lower[:, None] * near_slit(0.008) * vec(0, -0.5, 0.1)), 6.0)]
    expr += [("pucker", mouth_w * np.stack([-x / 0.025, 0 * x, 0 * x], 1) + 0.8 * lips_w * vec(0, 0, 1), 8.0)]
    expr += [(f"cheekRaise_{s}", cheek(sx) * vec(0, 4.0, 1.5) * _MM * keep_rims + lids[sx].field(v, lower=0.22), None)
             for s, sx in (("L", 1), ("R", -1))]
    expr += [(f"eyeWide_{s}", lids[sx].field(v, upper=-0.4), None) for s, sx in (("L", 1), ("R", -1))]
    expr += [("sneer", (g(alae[0], 0.010) + g(alae[1], 0.010)) * vec(0, 1, 0.2)
              + upper[:, None] * g(lip_up, 0.010) * vec(0, 0.8, 0.2), 3.5)]
    expr += [("cheekPuff", g(cheek_l, 0.022) * vec(0.75, -0.1, 0.65) + g(cheek_r, 0.022) * vec(-0.75, -0.1, 0.65),
              6.0)]
    expr += [("mouthLeft", mouth_x * mouth_y * mouth_z * vec(1, 0, 0), 6.0)]
    assert tuple(name for name, _, _ in expr) == EXPRESSION_NAMES
    face_w = head * _smoothstep((z - 0.0) / 0.05) * _smoothstep((0.085 - y) / 0.03) * _smoothstep(
        (y + 0.11) / 0.02)
    face_ids = np.flatnonzero(face_w > 0.5)
    # The random fields are drawn as when 16 components were designed, so that everything drawn after them
    # (pose correctives, textures) stays the same.
    n_draw = N_EXP - 16
    centres = v[rng.choice(face_ids, size=(n_draw, 4))]
    sigmas = rng.uniform(0.012, 0.03, size=(n_draw, 4))
    amps = rng.standard_normal((n_draw, 4, 3))
    n_rand = N_EXP - len(expr)
    rand = _rbf_fields(v, centres[:n_rand], sigmas[:n_rand], amps[:n_rand]) * face_w[None, :, None]
    rand_mags = 1.5 * _MM * (1.0 + np.arange(n_rand) / 10.0) ** -0.6
    not_eye = head[:, None].astype(float)
    for c, (name, field, mm) in enumerate(expr):
        if not name.startswith(("eyeClose", "eyeWide", "cheekRaise")):
            field = field * keep_rims
        field = field * not_eye
        shape[:, :, N_SHAPE + c] = field if mm is None else _scale_to_max(field, mm * _MM)
    for c in range(n_rand):
        shape[:, :, N_SHAPE + len(expr) + c] = _scale_to_max(rand[c] * not_eye * keep_rims, rand_mags[c])

    # --- pose correctives. Features: 9 per joint (neck, jaw, left eye, right eye), R - I row-major.
    pose = np.zeros((len(v), 3, N_POSE_FEATURES))
    # Jaw opening (sin θ on entries (2,1) and -(1,2)): cheeks by the corners sink in, the lower lip rolls out.
    beside_mouth = _smoothstep((np.abs(x) - 0.018) / 0.012)[:, None]  # the cheeks, not the lips
    opening = -(g(corner_l, 0.018) + g(corner_r, 0.018)) * beside_mouth * normals * 6.0 * _MM
    opening += lower[:, None] * g(lip_low, 0.012) * vec(0, 0, 3.0 * _MM)
    opening *= not_eye
    pose[:, :, 9 + 7] = 0.5 * opening
    pose[:, :, 9 + 5] = -0.5 * opening
    # Second-order (cos θ - 1) terms and the neck: small smooth random fields where those joints act.
    neck_w = weights[:, 0] + (1 - _smoothstep((y - design.neck_joint_y + 0.01) / 0.04)) * head
    for feature, region, mm in [(9 + 4, w_jaw[:, 0], 2.0), (9 + 8, w_jaw[:, 0], 2.0), (9 + 0, w_jaw[:, 0], 1.0)]:
        c = v[rng.choice(np.flatnonzero(region > 0.5), size=(1, 4))]
        f = _rbf_fields(v, c, np.full((1, 4), 0.03), rng.standard_normal((1, 4, 3)))[0]
        pose[:, :, feature] = _scale_to_max(f * region[:, None], mm * _MM)
    for feature in range(9):
        c = v[rng.choice(np.flatnonzero(neck_w > 0.5), size=(1, 4))]
        f = _rbf_fields(v, c, np.full((1, 4), 0.04), rng.standard_normal((1, 4, 3)))[0]
        pose[:, :, feature] = _scale_to_max(f * neck_w[:, None], 1.5 * _MM)
    return shape, pose


# ---------------------------------------------------------------------------------------------------------------
# UV images


@dataclass
class _Texels:
    """Per-texel geometry of a res x res UV image (row 0 = v = 1)."""

    pos: np.ndarray  # [res, res, 3] head surface point (garbage where not on the head)
    head: np.ndarray  # [res, res] bool
    eye_theta: np.ndarray  # [res, res] polar angle on an eyeball from its front pole (nan off the eyeballs)
    cavity: np.ndarray  # [res, res] float: 0 at the lips' edges of the mouth pouch, 1 at its back wall (nan off it)
    az: np.ndarray  # [res, res] azimuth of the head grid point
    el: np.ndarray  # [res, res] elevation of the head grid point
    u: np.ndarray
    v: np.ndarray


def _texels(res: int, P, grid: _Grid) -> _Texels:
    c = (np.arange(res) + 0.5) / res
    u, v = np.meshgrid(c, 1.0 - c)
    head = v >= _V0
    i = (1.0 - (v - _V0) / (1.0 - _V0)) * (grid.n_el - 1)
    j = u * grid.n_az
    pos = _bilinear(P, np.clip(i, 0, grid.n_el - 1), j)
    theta = np.full((res, res), np.nan)
    for cu, cv in _EYE_UV_CENTRES.values():
        rho = np.hypot(u - cu, v - cv)
        inside = rho < _EYE_UV_RADIUS
        theta[inside] = (rho / _EYE_UV_RADIUS * _EYE_BACK_ANGLE)[inside]
    u0, u1, v0, v1 = _CAVITY_UV
    cavity = np.where((u >= u0) & (u <= u1) & (v >= v0) & (v <= v1),
                      1.0 - np.abs(v - 0.5 * (v0 + v1)) / (0.5 * (v1 - v0)), np.nan)
    az = np.pi * _warp(2.0 * u - 1.0)
    el = grid.el_at(np.clip(i, 0, grid.n_el - 1))
    return _Texels(pos=pos, head=head, eye_theta=theta, cavity=cavity, az=az, el=el, u=u, v=v)


def _face_region(tx: _Texels, shrink: float = 1.0):
    """Soft [res, res] face region on the head part of the UV map (forehead to under the chin, ear to ear)."""
    az = np.rad2deg(tx.az)
    el = np.rad2deg(tx.el)
    el_c = -6.0
    half_el = np.where(el > el_c, 45.0, 53.0) * shrink
    rad = (np.abs(az / (62.0 * shrink)) ** 3 + np.abs((el - el_c) / half_el) ** 3) ** (1.0 / 3.0)
    return _smoothstep((1.06 - rad) / 0.14) * tx.head


def _eye_openings(tx: _Texels, design: _Design):
    """Soft [res, res] weight of the eye openings and lids."""
    p = tx.pos
    w = np.zeros(p.shape[:2])
    for sx in (1.0, -1.0):
        dx = (p[..., 0] - sx * design.opening_x) / (design.eye_half_width * 1.25)
        dy = (p[..., 1] - design.eye_y) / (design.eye_half_height * 2.2)
        w = np.maximum(w, _smoothstep((1.1 - np.hypot(dx, dy)) / 0.3))
    return w * tx.head * (p[..., 2] > 0.0)


def _masks(tx: _Texels, design: _Design):
    """uv_face_eye_mask and uv_face_mask as [256, 256, 4] uint8 RGBA."""
    eyeball = np.where(np.isnan(tx.eye_theta), 0.0, _smoothstep((1.2 - np.nan_to_num(tx.eye_theta)) / 0.4))
    face_eye = np.maximum(_face_region(tx), eyeball)
    face = _face_region(tx, shrink=0.95) * (1.0 - _eye_openings(tx, design))

    def rgba(m):
        m8 = np.clip(np.round(m * 255.0), 0, 255).astype(np.uint8)
        return np.stack([m8, m8, m8, np.full_like(m8, 255)], -1)

    return rgba(face_eye), rgba(face)


def _periodic_fields(res, n_fields, rng, n_u=10, n_v=8):
    """[n_fields, res, res] smooth random fields, periodic in u (the seam at the back does not show)."""
    c = (np.arange(res) + 0.5) / res
    ku = np.arange(n_u) / n_u
    du = np.abs(c[:, None] - ku[None, :])
    du = np.minimum(du, 1.0 - du)
    bu = np.exp(-0.5 * (du * n_u) ** 2)
    kv = (np.arange(n_v) + 0.5) / n_v
    bv = np.exp(-0.5 * ((c[:, None] - kv[None, :]) * n_v) ** 2)
    coef = rng.standard_normal((n_fields, n_v, n_u))
    # rows run from v = 1 down: flip bv so that fields are functions of (u, v)
    return np.matmul(bv[::-1], np.matmul(coef, bu.T))


def _fixed_displacement(tx: _Texels, lmk, rng):
    """[256, 256] float64: small smooth displacement (metres), zero off the used parts of the map."""
    on = tx.head | ~np.isnan(tx.eye_theta)
    base = _periodic_fields(tx.u.shape[0], 1, rng, n_u=24, n_v=20)[0]
    base *= 2.6e-4 / base.std()
    p = tx.pos
    feat = np.zeros_like(base)
    # Wrinkle-like features: nasolabial folds, a crease under each eye, forehead lines.
    for sx in (1.0, -1.0):
        a = lmk[31 if sx < 0 else 35] + np.array([sx * 0.006, 0.002, 0.0])
        b = lmk[48 if sx < 0 else 54] + np.array([sx * 0.005, -0.004, -0.006])
        t = np.clip(np.einsum("ijk,k->ij", p - a, b - a) / np.dot(b - a, b - a), 0, 1)
        dist = np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1)
        feat -= 1.25e-3 * np.exp(-0.5 * (dist / 0.0025) ** 2) * np.sin(np.pi * t) ** 0.5
        eye = lmk[40] if sx < 0 else lmk[47]
        dist = np.linalg.norm((p - eye - np.array([0, -0.006, 0])) * np.array([0.6, 1.0, 1.0]), axis=-1)
        feat -= 6e-4 * np.exp(-0.5 * (dist / 0.003) ** 2)
    for k, yy in enumerate((0.068, 0.078, 0.088)):
        d = (p[..., 1] - yy) / 0.0018
        feat -= (3e-4 + 1e-4 * k) * np.exp(-0.5 * d * d) * np.exp(-0.5 * (p[..., 0] / 0.03) ** 2) * (p[..., 2] > 0.05)
    feat += 1.3e-3 * _gauss(p, lmk[30], 0.004)  # nose tip
    fade = _smoothstep((tx.v - _V0) / 0.04)  # to zero at the neck's edge of the map
    disp = np.where(tx.head, (base + feat) * fade, 0.0)
    eyes = ~np.isnan(tx.eye_theta)
    disp[eyes] = (0.3 * base * _smoothstep((_EYE_BACK_ANGLE - np.nan_to_num(tx.eye_theta)) / 1.0))[eyes]
    disp = np.clip(disp, -1.4e-3, 1.6e-3)
    disp[~on] = 0.0
    return disp


_SKIN = np.array([0.86, 0.68, 0.58])
_HAIR = np.array([0.30, 0.22, 0.17])


@dataclass
class _Margins:
    """Rest-pose edges (segments [S, 2, 3]) that the texture draws dark lines along: the upper and the lower
    rims of the eye openings (lash lines) and the mouth slit (the lip line). Texels are painted by their
    distance to these segments, so the lines sit on the lid and lip texels next to the rim and slit vertices
    and move with them."""

    lid_up: np.ndarray
    lid_low: np.ndarray
    slit: np.ndarray


def _margins(P, removed, design: _Design, mesh: "_Mesh", grid: _Grid) -> _Margins:
    """The rims of the eye openings (grid edges between a removed and a kept cell) and the mouth slit."""
    n_rows, n_cols = removed.shape
    up, low = [], []
    for i, j in zip(*np.nonzero(removed)):
        j1 = (j + 1) % n_cols
        corners = {"top": (P[i, j], P[i, j + 1]), "bottom": (P[i + 1, j], P[i + 1, j + 1]),
                   "left": (P[i, j], P[i + 1, j]), "right": (P[i, j + 1], P[i + 1, j + 1])}
        neighbours = {"top": (i - 1, j), "bottom": (i + 1, j), "left": (i, (j - 1) % n_cols), "right": (i, j1)}
        for side, (ni, nj) in neighbours.items():
            if 0 <= ni < n_rows and removed[ni, nj]:
                continue
            a, b = corners[side]
            is_up = side == "top" or (side in ("left", "right") and 0.5 * (a[1] + b[1]) > design.eye_y)
            (up if is_up else low).append((a, b))
    m = grid.mouth_row
    cols = np.arange(mesh.slit_cols[0] - 1, mesh.slit_cols[-1] + 2)
    slit = np.stack([P[m, cols[:-1]], P[m, cols[1:]]], 1)
    return _Margins(lid_up=np.asarray(up, np.float64).reshape(-1, 2, 3),
                    lid_low=np.asarray(low, np.float64).reshape(-1, 2, 3), slit=slit)


def _segments_distance(points, segments, reach: float):
    """[N] distance from points [N, 3] to the nearest of segments [S, 2, 3] (inf beyond `reach` of their box)."""
    out = np.full(len(points), np.inf)
    if len(segments) == 0:
        return out
    lo = segments.reshape(-1, 3).min(0) - reach
    hi = segments.reshape(-1, 3).max(0) + reach
    near = np.flatnonzero(np.all((points >= lo) & (points <= hi), axis=-1))
    q = points[near]
    dist = np.full(len(near), np.inf)
    for a, b in segments:
        ab = b - a
        t = np.clip((q - a) @ ab / max(float(ab @ ab), 1e-18), 0.0, 1.0)
        dist = np.minimum(dist, np.linalg.norm(q - (a + t[:, None] * ab), axis=-1))
    out[near] = dist
    return out


@dataclass
class _Regions:
    skin: np.ndarray
    lips: np.ndarray
    brows: np.ndarray
    hair: np.ndarray
    cheeks: np.ndarray
    iris: np.ndarray
    sclera: np.ndarray
    lash_up: np.ndarray  # dark line along the upper lids' margins
    lash_low: np.ndarray  # thinner, lighter one along the lower lids'
    lip_line: np.ndarray  # dark line along the mouth slit (both lips' inner edges)


_LASH_UP = 0.0013  # half widths (metres) of the margin lines
_LASH_LOW = 0.0005
_LIP_LINE = 0.0006


def _regions(tx: _Texels, design: _Design, lmk, margins: _Margins) -> _Regions:
    """Soft semantic regions of the UV map used by the mean texture and the albedo basis."""
    p = tx.pos
    head = tx.head.astype(float)
    front = _smoothstep(p[..., 2] / 0.03)
    # Lips: lens shapes above and below the mouth line, as tall as the outer lip landmarks are high.
    # They end at the slit's corners (where iBUG 48 and 54 are), so the lip colour marks the mouth's width.
    hw = 0.5 * (abs(margins.slit[0, 0, 0]) + abs(margins.slit[-1, 1, 0]))
    across = np.sqrt(np.clip(1.0 - (p[..., 0] / hw) ** 2, 0.0, 1.0))
    dy = p[..., 1] - design.mouth_y
    height = np.where(dy > 0, 0.0080, 0.0098) * across ** 0.6
    lips = _smoothstep((height - np.abs(dy)) / 0.0012 + 0.5) * (across > 0)
    lips *= head * _smoothstep((p[..., 2] - 0.05) / 0.01)
    # Brows: bands along the brow landmarks (only texels near them are measured, for speed).
    brows = np.zeros_like(lips)
    lo, hi = lmk[17:27].min(0) - 0.008, lmk[17:27].max(0) + 0.008
    near = np.flatnonzero(np.all((p >= lo) & (p <= hi), axis=-1) & tx.head)
    q = p.reshape(-1, 3)[near]
    dist = np.full(len(near), np.inf)
    for ids in ((17, 18, 19, 20, 21), (22, 23, 24, 25, 26)):
        pts = lmk[list(ids)]
        for a, b in zip(pts[:-1], pts[1:]):
            t = np.clip((q - a) @ (b - a) / np.dot(b - a, b - a), 0, 1)
            dist = np.minimum(dist, np.linalg.norm(q - (a + t[:, None] * (b - a)), axis=-1))
    brows.reshape(-1)[near] = _smoothstep((0.0032 - dist) / 0.0018 + 0.5)
    brows *= head * front
    el = np.rad2deg(tx.el)
    az = np.rad2deg(tx.az)
    # Short hair: hairline high on the forehead, above the ears on the sides, down to the nape at the back.
    hairline = np.interp(np.abs(az), [0, 25, 55, 75, 105, 125, 150, 180], [47, 46, 40, 36, 33, 12, -8, -12])
    hair = _smoothstep((el - hairline) / 5.0 + 0.5) * head
    for name, centre, radii, _ in design.blobs:
        if name.startswith("ear"):
            q = np.linalg.norm((p - centre) / (radii * 1.5), axis=-1)
            hair *= _smoothstep((q - 1.0) / 0.3)
    cheeks = np.zeros_like(lips)
    for sx in (1.0, -1.0):
        c = np.array([sx * 0.042, design.mouth_y + 0.03, 0.065])
        cheeks += _gauss(p, c, 0.014)
    cheeks *= head
    th = tx.eye_theta
    on_eye = ~np.isnan(th)
    thd = np.rad2deg(np.nan_to_num(th, nan=180.0))
    iris = _smoothstep((27.0 - thd) / 2.0) * on_eye
    sclera = on_eye * (1.0 - iris)
    skin = head * (1.0 - hair)
    flat = p.reshape(-1, 3)
    on_face = (tx.head & (p[..., 2] > 0.03)).astype(float)

    def line(segments, half_width, soft):
        d = _segments_distance(flat, segments, half_width + soft).reshape(p.shape[:2])
        return _smoothstep((half_width - d) / soft + 0.5) * on_face

    lash_up = line(margins.lid_up, _LASH_UP, 0.0005)
    lash_low = line(margins.lid_low, _LASH_LOW, 0.0004)
    lip_line = line(margins.slit, _LIP_LINE, 0.0004)
    return _Regions(skin=skin, lips=lips, brows=brows, hair=hair, cheeks=cheeks, iris=iris, sclera=sclera,
                    lash_up=lash_up, lash_low=lash_low, lip_line=lip_line)


def _mean_albedo(tx: _Texels, reg: _Regions, design: _Design, margins: _Margins, rng) -> np.ndarray:
    """[res, res, 3] float RGB in 0..1."""
    res = tx.u.shape[0]
    noise = _periodic_fields(res, 3, rng, n_u=40, n_v=32)
    noise /= noise.std(axis=(1, 2), keepdims=True)
    img = np.zeros((res, res, 3))
    img += tx.head[..., None] * _SKIN * (1.0 + 0.025 * noise[0][..., None])
    img = img * (1 - reg.cheeks[..., None] * 0.35) + reg.cheeks[..., None] * 0.35 * np.array([0.88, 0.58, 0.52])
    img = img * (1 - reg.lips[..., None]) + reg.lips[..., None] * np.array([0.72, 0.42, 0.42])
    img = img * (1 - 0.9 * reg.brows[..., None]) + 0.9 * reg.brows[..., None] * np.array([0.22, 0.15, 0.11])
    hair = _HAIR * (1.0 + 0.08 * noise[1][..., None])
    img = img * (1 - reg.hair[..., None]) + reg.hair[..., None] * hair
    # Lids and sockets slightly darker, nostrils dark.
    lids = _eye_openings(tx, design)
    img *= 1.0 - 0.10 * lids[..., None]
    # Lash lines along the lid margins (the upper one darker and wider), the lip line along the mouth slit.
    img = img * (1 - 0.92 * reg.lash_up[..., None]) + 0.92 * reg.lash_up[..., None] * np.array([0.09, 0.06, 0.05])
    img = img * (1 - 0.7 * reg.lash_low[..., None]) + 0.7 * reg.lash_low[..., None] * np.array([0.22, 0.15, 0.12])
    img = img * (1 - 0.8 * reg.lip_line[..., None]) + 0.8 * reg.lip_line[..., None] * np.array([0.30, 0.12, 0.12])
    # Eyeballs: sclera, iris with a darker limbus, pupil.
    th = np.rad2deg(np.nan_to_num(tx.eye_theta, nan=180.0))
    iris_col = np.array([0.26, 0.20, 0.15]) * (0.7 + 0.3 * _smoothstep((th - 10) / 15))[..., None]
    iris_col = iris_col * (1 - 0.6 * _smoothstep((th - 22.0) / 4.0))[..., None]
    pupil = _smoothstep((11.0 - th) / 1.5)[..., None]
    eye = reg.sclera[..., None] * np.array([0.92, 0.90, 0.86]) + reg.iris[..., None] * iris_col
    eye = eye * (1 - pupil) + pupil * 0.04
    on_eye = ~np.isnan(tx.eye_theta)
    img[on_eye] = eye[on_eye]
    # Mouth pouch: lip colour at its edges, darkening toward the back.
    cav = ~np.isnan(tx.cavity)
    depth = np.nan_to_num(tx.cavity)[..., None]
    mouth = (1 - depth) * np.array([0.62, 0.30, 0.30]) + depth * np.array([0.20, 0.06, 0.07])
    # Toward the corners the pouch's walls are lip-coloured, so an open mouth's dark part tapers at the corners.
    u0, u1 = _CAVITY_UV[:2]
    columns = len(margins.slit)  # the pouch's column intervals, corner to corner
    from_corner = (0.5 - np.abs((tx.u - 0.5 * (u0 + u1)) / (u1 - u0))) * columns  # in columns
    wall = (1.0 - _smoothstep((from_corner - 0.3) / 1.2))[..., None]
    mouth = mouth * (1 - wall) + wall * np.array([0.60, 0.33, 0.33])
    img[cav] = mouth[cav]
    return np.clip(img, 0.0, 1.0)


def _albedo_basis(tx: _Texels, reg: _Regions, mean: np.ndarray, rng) -> np.ndarray:
    """[N_ALBEDO, res, res, 3] RGB basis images (coefficient +-2 = plausible variation)."""
    res = tx.u.shape[0]
    skin = (reg.skin + reg.lips * 0.5)[..., None]
    designed = [
        mean * 0.09 * tx.head[..., None],  # lighter / darker
        skin * np.array([0.035, -0.004, -0.018]),  # redder
        skin * np.array([0.012, 0.018, -0.022]),  # more olive / yellow
        reg.lips[..., None] * np.array([0.06, -0.012, 0.0]),  # lip colour
        -(reg.brows + reg.hair)[..., None] * mean * 0.25,  # brow / hair darkness
        reg.cheeks[..., None] * np.array([0.045, -0.01, -0.01]),  # flush
        -reg.iris[..., None] * mean * 0.3,  # iris darkness
    ]
    n_rand = N_ALBEDO - len(designed)
    fields = _periodic_fields(res, n_rand, rng, n_u=12, n_v=10)
    fields /= fields.std(axis=(1, 2), keepdims=True)
    colour = rng.standard_normal((n_rand, 3)) * 0.4 + 1.0  # mostly brightness-like, a bit of hue
    std = 0.02 * (1.0 + np.arange(n_rand) / 6.0) ** -0.7
    rand = fields[..., None] * colour[:, None, None, :] * std[:, None, None, None] * skin[None]
    return np.concatenate([np.stack(designed), rand]).astype(np.float32)


def _to_bgr_flat(img):
    """[..., R, R, 3] RGB -> [..., R*R*3] BGR (BFM_to_FLAME's layout)."""
    return np.ascontiguousarray(img[..., ::-1]).reshape(img.shape[:-3] + (-1,))


# ---------------------------------------------------------------------------------------------------------------


def _fit_rims(P, removed, design: _Design, centres: dict):
    """Shape the rim of each eye opening: onto the almond outline (moving along its grid column, so the
    grid order is kept) and onto its eyeball (a thin lid edge, no see-through gap)."""
    touched = np.zeros(P.shape[:2], np.int64)
    touched[:-1, :-1] += removed
    touched[:-1, 1:] += removed
    touched[1:, :-1] += removed
    touched[1:, 1:] += removed
    touched[:, 0] += touched[:, -1]
    touched[:, -1] = touched[:, 0]
    rim = (touched > 0) & (touched < 4)
    row_gap = np.abs(np.diff(P[..., 1], axis=0))
    room = 0.45 * np.minimum(np.vstack([row_gap[:1], row_gap]), np.vstack([row_gap, row_gap[-1:]]))
    P = P.copy()
    for c in centres.values():
        d = P - c
        sel = rim & (np.linalg.norm(d, axis=-1) < _EYE_RADIUS + 0.010)
        dx = (P[..., 0] - np.sign(c[0]) * design.opening_x) / design.eye_half_width
        half_h = design.eye_half_height * np.clip(1.0 - dx ** 2, 0.15, 1.0)  # the corners stay open a little
        target_y = c[1] + np.sign(d[..., 1]) * half_h
        move = np.clip(target_y - P[..., 1], -room, room)
        P[..., 1] = np.where(sel, P[..., 1] + move, P[..., 1])
        d = P - c
        lateral2 = d[..., 0] ** 2 + d[..., 1] ** 2
        shell = (_EYE_RADIUS + 0.0004) ** 2
        # Rim nodes beyond the eyeball's outline would leave a gap at the corners: bring them inside it.
        shrink = np.sqrt(np.minimum(1.0, 0.9 * shell / np.maximum(lateral2, 1e-12)))
        P[..., 0] = np.where(sel, c[0] + d[..., 0] * shrink, P[..., 0])
        P[..., 1] = np.where(sel, c[1] + d[..., 1] * shrink, P[..., 1])
        d = P - c
        lateral2 = d[..., 0] ** 2 + d[..., 1] ** 2
        z_on = c[2] + np.sqrt(np.maximum(shell - lateral2, 0.0))
        P[..., 2] = np.where(sel & (lateral2 < shell), z_on, P[..., 2])
    P[:, -1] = P[:, 0]
    return P


def make_demo_head(seed: int = 0, n_vertices: Optional[int] = None, albedo_resolution: int = 256) -> DemoHead:
    """Build the procedural demo head: all geometry and appearance arrays of the synthetic pack.

    seed: varies the proportions slightly and the random parts of the bases (same seed -> same arrays).
    n_vertices: approximate vertex count (default close to FLAME's 5023; e.g. 600 for fast tests).
    albedo_resolution: R of the albedo model (the official file has 512).
    """
    if albedo_resolution < 16:
        raise ValueError(f"make_demo_head: albedo_resolution={albedo_resolution} is too small; use >= 16")
    rng = np.random.default_rng(seed)
    design = _make_design(rng)
    n_el, n_az, rings, segments = _grid_dims(DEFAULT_N_VERTICES if n_vertices is None else int(n_vertices))
    grid = _make_grid(n_el, n_az, design)

    dirs = _directions(grid.az[None, :n_az], grid.el[1:, None]).reshape(-1, 3)
    dirs = np.concatenate([[[0.0, 1.0, 0.0]], dirs])
    r = _cast_rays(design.origin, dirs, design)
    pts = design.origin + dirs * r[:, None]
    P = np.zeros((n_el, n_az + 1, 3))
    P[0] = pts[0]
    P[1:, :n_az] = pts[1:].reshape(n_el - 1, n_az, 3)
    P[:, n_az] = P[:, 0]

    eye_centres = {joint: np.array([sx * design.eye_x, design.eye_y, design.eye_z])
                   for joint, sx in ((LEFT_EYE, 1.0), (RIGHT_EYE, -1.0))}
    removed = _eye_hole_cells(P, grid, design)
    P = _fit_rims(P, removed, design, eye_centres)
    mesh = _build_mesh(P, grid, design, removed, rings, segments, eye_centres)

    static_faces, static_bary = _static_landmarks(mesh, P, grid, design)
    dyn_faces, dyn_bary = _contour_landmarks(mesh, P, grid, design)
    full_faces = np.concatenate([dyn_faces[0], static_faces])[None]
    full_bary = np.concatenate([dyn_bary[0], static_bary])[None]
    lmk = _embed(mesh.vertices, mesh.faces, full_faces[0], full_bary[0])

    weights, J_regressor = _skinning(mesh, design)
    joints = J_regressor @ mesh.vertices
    shapedirs, posedirs = _blendshapes(mesh, design, weights, joints, lmk, rng)

    tx = _texels(UV_SIZE, P, grid)
    margins = _margins(P, removed, design, mesh, grid)
    face_eye_mask, face_mask = _masks(tx, design)
    fixed_displacement = _fixed_displacement(tx, lmk, rng)
    tex_rng_seed = rng.integers(2 ** 31)
    tx512 = _texels(TEXTURE_SIZE, P, grid)
    mean_512 = _mean_albedo(tx512, _regions(tx512, design, lmk, margins), design, margins,
                            np.random.default_rng(tex_rng_seed))
    mean_texture = np.clip(np.round(mean_512 * 255.0), 0, 255).astype(np.uint8)
    txa = tx if albedo_resolution == UV_SIZE else _texels(albedo_resolution, P, grid)
    reg_a = _regions(txa, design, lmk, margins)
    mean_a = _mean_albedo(txa, reg_a, design, margins, np.random.default_rng(tex_rng_seed))
    basis = _albedo_basis(txa, reg_a, mean_a, rng)

    kintree = np.array([[ROOT_PARENT, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64)
    return DemoHead(
        v_template=mesh.vertices.astype(np.float64),
        faces=mesh.faces.astype(np.int64),
        shapedirs=shapedirs,
        posedirs=posedirs,
        J_regressor=J_regressor,
        weights=weights,
        kintree_table=kintree,
        uvcoords=mesh.uvcoords.astype(np.float64),
        uvfaces=mesh.uvfaces.astype(np.int64),
        static_lmk_faces_idx=static_faces.astype(np.int64),
        static_lmk_bary_coords=static_bary.astype(np.float64),
        dynamic_lmk_faces_idx=dyn_faces.astype(np.int64),
        dynamic_lmk_bary_coords=dyn_bary.astype(np.float32),
        full_lmk_faces_idx=full_faces.astype(np.int64),
        full_lmk_bary_coords=full_bary.astype(np.float32),
        uv_face_eye_mask=face_eye_mask,
        uv_face_mask=face_mask,
        fixed_displacement=fixed_displacement.astype(np.float64),
        mean_texture=mean_texture,
        albedo_mean=_to_bgr_flat(mean_a).astype(np.float32),
        albedo_basis=_basis_layout(basis),
    )


def _basis_layout(basis: np.ndarray) -> np.ndarray:
    """[K, R, R, 3] RGB -> [R*R*3, K] BGR float32, the flattening DECA's FLAMETex undoes."""
    bgr = basis[..., ::-1]
    return np.ascontiguousarray(bgr.reshape(basis.shape[0], -1).T).astype(np.float32)
