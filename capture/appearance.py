"""Albedo, spherical-harmonics light and detail normals, all in FLAME's UV space (docs/formats.md 1.6, 3.4, 3.6).

Pure tensor functions; the one piece of state is `UVSampler`, the UV layout rasterised once (which texel lies
in which triangle, with which barycentrics) so that moving per-vertex data into UV space each frame is one
sparse product instead of a rasterisation. These are the drawing path's steps (`capture.views` composes them);
DECA's straightforward versions of the same steps are the oracles in `capture.reference`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .assets.pack import AlbedoModel
from .conventions import UV_SIZE, ndc_to_pixel, obj_uv_to_ndc
from .render.exact import rasterize_flat_exact

# SH constants, docs/formats.md 3.4; basis order 1, x, y, z, xy, xz, yz, x^2-y^2, 3z^2-1
SH_CONSTANTS = (
    1 / math.sqrt(4 * math.pi),
    (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)),
    (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)),
    (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)),
    (math.pi / 4) * 3 * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * 3 * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * 3 * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * (3 / 2) * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * (1 / 2) * math.sqrt(5 / (4 * math.pi)),
)


def sh_terms(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The 9 SH basis polynomials of normal components x, y, z (any equal shapes), stacked along `dim`,
    without their constants (`SH_CONSTANTS`): the one SH basis of the project."""
    return torch.stack([torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], dim)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """[..., 3] normals -> [..., 9] SH basis values, constants included."""
    basis = sh_terms(*normals.unbind(-1))
    return basis * basis.new_tensor(SH_CONSTANTS)


def sh_shading(normals: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Shading from world-space normals.

    normals: [B, 3, H, W] (a normal map) or [B, N, 3]; light: [B, 9, 3] (9 SH coefficients x RGB).
    Returns [B, 3, H, W] or [B, N, 3]; no clamping (DECA's add_SHlight).
    """
    if normals.dim() == 4:
        basis = sh_basis(normals.permute(0, 2, 3, 1))  # [B, H, W, 9]
        return torch.einsum("bhwk,bkc->bchw", basis, light)
    return torch.einsum("bnk,bkc->bnc", sh_basis(normals), light)


def directional_shading(normals: torch.Tensor, directions: torch.Tensor, intensity: float) -> torch.Tensor:
    """Mean over lights of clamp(n.l, 0, 1) * intensity; normals [B, N, 3], directions [L, 3] -> [B, N]."""
    directions = F.normalize(directions, dim=-1)
    return (torch.einsum("bnc,lc->bnl", normals, directions).clamp(0, 1) * intensity).mean(-1)


# DECA's grey shape render: five lights in world space (y up, +z towards the camera), intensity 1.7 each
SHAPE_LIGHTS = ((-1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (-1.0, -1.0, 1.0), (1.0, -1.0, 1.0), (0.0, 0.0, 1.0))
SHAPE_LIGHT_INTENSITY = 1.7
SHAPE_GREY = 180.0 / 255.0


def _sparse_csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix from COO triplets (duplicates summed). CSR @ dense is one pass over the non-zeros."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta": we only use mm
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape).coalesce()
        return coo.to_sparse_csr()


def face_incidence(faces: torch.Tensor, n_vertices: int) -> torch.Tensor:
    """[V, F] sparse CSR matrix with a 1 where vertex v is a corner of face f (for `vertex_normals`)."""
    n_faces = faces.shape[0]
    rows = faces.t().reshape(-1).to(torch.int64)
    cols = torch.arange(n_faces, device=faces.device).repeat(3)
    ones = torch.ones(3 * n_faces, dtype=torch.float32, device=faces.device)
    return _sparse_csr(rows, cols, ones, (n_vertices, n_faces))


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor, incidence: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals, the scatter done as one sparse product: incidence = face_incidence(faces, V).

    vertices [B, V, 3], faces [F, 3] int64 -> [B, V, 3] unit (eps 1e-6). The one vertex-normal path (DECA's
    triangle-list scatter is `capture.reference.vertex_normals`: same sums in another order, ~1e-6).
    Differentiable in the vertices.
    """
    b, v, _ = vertices.shape
    v0, v1, v2 = (vertices.index_select(1, faces[:, i]) for i in range(3))
    face_n = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)  # [B, F, 3]
    summed = incidence.to(vertices.dtype) @ face_n.permute(1, 0, 2).reshape(faces.shape[0], b * 3)
    return F.normalize(summed.view(v, b, 3).permute(1, 0, 2), dim=-1, eps=1e-6)


def albedo_from_model(model: AlbedoModel, tex: torch.Tensor, size: int = UV_SIZE) -> torch.Tensor:
    """Linear albedo: tex [B, K<=50] -> [B, 3, size, size] RGB (file is BGR, nearest-resized like DECA)."""
    mean = torch.as_tensor(model.mean, device=tex.device, dtype=tex.dtype)
    basis = torch.as_tensor(model.basis[:, : tex.shape[1]], device=tex.device, dtype=tex.dtype)
    flat = mean[None] + tex @ basis.T  # [B, R*R*3]
    r = model.resolution
    image = flat.view(-1, r, r, 3).permute(0, 3, 1, 2)
    if r != size:
        image = F.interpolate(image, size=(size, size), mode="nearest")
    return image.flip(1)  # BGR -> RGB


def mean_texture_albedo(mean_texture: np.ndarray, size: int = UV_SIZE) -> torch.Tensor:
    """Fallback albedo from `mean_texture.jpg` ([H, W, 3] RGB 0..1) -> [1, 3, size, size]."""
    image = torch.as_tensor(np.ascontiguousarray(mean_texture), dtype=torch.float32).permute(2, 0, 1)[None]
    return F.interpolate(image, size=(size, size), mode="area")


def uv_layout_pixels(uvcoords: np.ndarray, size: int) -> np.ndarray:
    """OBJ uv [T, 2] -> [T, 2] float64 pixel coordinates (column, row) of a size x size UV map.

    The uv values are taken as float32 (the pack's and DECA's precision), then mapped in float64 through
    `obj_uv_to_ndc` and `ndc_to_pixel`: column = u * S - 0.5, row = (1 - v) * S - 0.5, exact for S a power of 2.
    """
    uv = torch.as_tensor(np.asarray(uvcoords, dtype=np.float32).astype(np.float64))
    return ndc_to_pixel(obj_uv_to_ndc(uv), (size, size)).numpy()


def uv_layout_ndc(uvcoords: np.ndarray) -> np.ndarray:
    """OBJ uv [T, 2] (v up) -> [T, 2] float32 y-down NDC (the flip lives in capture.conventions)."""
    return obj_uv_to_ndc(torch.as_tensor(np.asarray(uvcoords, dtype=np.float32))).numpy()


@dataclass
class UVSampler:
    """The UV layout rasterised once, exactly: texel -> (3 vertex ids, 3 barycentric weights, covered?)."""

    vertex_ids: torch.Tensor  # [S*S, 3] int64 (0 where uncovered)
    weights: torch.Tensor  # [S*S, 3] float32 (0 where uncovered)
    size: int
    _matrices: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def build(cls, uvcoords: np.ndarray, uvfaces: np.ndarray, faces: np.ndarray, *legacy,
              size: int = UV_SIZE) -> "UVSampler":
        """Rasterise the UV layout exactly (float64, no vertex snapping; `render.exact`), once per pack.

        uvcoords [T, 2] (OBJ u right, v up; taken as float32, as the pack stores them and DECA loads them),
        uvfaces [F, 3] uv-vertex ids, faces [F, 3] vertex ids. Each texel centre gets the face whose
        triangle contains it (top-left rule on edges, lowest face index where triangles overlap;
        docs/conventions.md "UV space") and that triangle's barycentrics. The old form
        `build(rasterizer, uvcoords, uvfaces, faces)` is still accepted; the rasterizer is not used.
        """
        if hasattr(uvcoords, "rasterize"):  # build(rasterizer, uvcoords, uvfaces, faces): drop the rasterizer
            uvcoords, uvfaces, faces = uvfaces, faces, legacy[0]
        elif legacy:
            raise TypeError("UVSampler.build(uvcoords, uvfaces, faces, size=...) takes three arrays")
        face_id, bary = rasterize_flat_exact(uv_layout_pixels(uvcoords, size), uvfaces, (size, size))
        face_id = torch.from_numpy(face_id)
        covered = face_id >= 0
        faces_t = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
        vertex_ids = torch.where(covered[:, None], faces_t[face_id.clamp(min=0)], torch.zeros(1, dtype=torch.int64))
        weights = torch.from_numpy(bary).float() * covered[:, None]
        return cls(vertex_ids=vertex_ids, weights=weights, size=size)

    def to(self, device) -> "UVSampler":
        return UVSampler(self.vertex_ids.to(device), self.weights.to(device), self.size)

    @property
    def coverage(self) -> torch.Tensor:
        """[S, S] bool: texels covered by the layout."""
        return (self.weights.sum(-1) > 0).view(self.size, self.size)

    def matrix(self, n_vertices: int) -> torch.Tensor:
        """[S*S, V] sparse CSR interpolation matrix (3 weights per covered texel), built once per V."""
        if n_vertices not in self._matrices:
            texels = torch.arange(self.size * self.size, device=self.weights.device).repeat_interleave(3)
            self._matrices[n_vertices] = _sparse_csr(texels, self.vertex_ids.reshape(-1), self.weights.reshape(-1),
                                                     (self.size * self.size, n_vertices))
        return self._matrices[n_vertices]

    def sample(self, attributes: torch.Tensor) -> torch.Tensor:
        """Per-vertex attributes [B, V, C] -> UV map [B, C, S, S] (DECA's world2uv), as one sparse product.

        The one UV-sampling path; DECA's gather-and-sum is `capture.reference.world2uv` (~8x slower on CPU)."""
        b, v, c = attributes.shape
        flat = attributes.permute(1, 0, 2).reshape(v, b * c)
        texels = self.matrix(v).to(attributes.dtype) @ flat  # [S*S, B*C]
        # contiguous channel planes: a strided (channel-last) map slows every elementwise op after it ~2x
        return texels.t().contiguous().view(b, c, self.size, self.size)


# DECA's displacement2normal leaves the UV grid's outer texels out: (columns, rows) on each side
GRID_MARGINS = (2, 5)


def grid_triangles(size: int, margin_x: int = GRID_MARGINS[0], margin_y: int = GRID_MARGINS[1]) -> torch.Tensor:
    """Triangles of the texel grid used for detail normals: two per cell, the DECA margins skipped,
    winding reordered [0, 2, 1]. Returns [N, 3] int64 texel ids (row-major: id = y * size + x)."""
    xs = torch.arange(margin_x, size - 1 - margin_x)
    ys = torch.arange(margin_y, size - 1 - margin_y)
    x, y = torch.meshgrid(xs, ys, indexing="ij")  # x outer, y inner: DECA's loop order
    x, y = x.reshape(-1), y.reshape(-1)
    here, right, down, diag = y * size + x, y * size + x + 1, (y + 1) * size + x, (y + 1) * size + x + 1
    first = torch.stack([here, right, down], -1)
    second = torch.stack([right, diag, down], -1)
    triangles = torch.stack([first, second], 1).reshape(-1, 3)
    return triangles[:, [0, 2, 1]]


def grid_normals(positions: torch.Tensor, margin_x: int = GRID_MARGINS[0],
                 margin_y: int = GRID_MARGINS[1]) -> torch.Tensor:
    """Area-weighted vertex normals of the texel grid of `grid_triangles(S, margin_x, margin_y)`, by slicing.

    positions [B, 3, S, S] -> [B, 3, S, S] unit normals (zero where no grid triangle touches a texel).
    Equals `reference.vertex_normals(positions as [B, S*S, 3], grid_triangles(S))` up to summation order:
    every cell (y, x) holds the triangles (here, down, right) and (right, down, diag), whose cross products
    are formed from the grid's row and column differences and added to their corners with shifted slices.
    """
    size = positions.shape[-1]
    y0, y1, x0, x1 = margin_y, size - 1 - margin_y, margin_x, size - 1 - margin_x
    window = positions[..., y0:y1 + 1, x0:x1 + 1]
    dx = window[..., :, 1:] - window[..., :, :-1]  # right - here
    dy = window[..., 1:, :] - window[..., :-1, :]  # down - here
    down, right = dy[..., :, :-1], dx[..., :-1, :]
    first = _cross_channels(down, right)  # (here, down, right)
    second = _cross_channels(down - right, dy[..., :, 1:])  # (right, down, diag), edges taken from `right`
    h, w = y1 - y0, x1 - x0
    acc = positions.new_zeros(positions.shape[0], 3, h + 1, w + 1)
    both = first + second
    acc[..., :h, :w] += first
    acc[..., 1:, :w] += both
    acc[..., :h, 1:] += both
    acc[..., 1:, 1:] += second
    out = torch.zeros_like(positions)
    # x / max(|x|, 1e-6), as F.normalize(eps=1e-6)
    out[..., y0:y1 + 1, x0:x1 + 1] = acc * torch.rsqrt((acc * acc).sum(1, keepdim=True).clamp_min(1e-12))
    return out


def _cross_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product over dim 1 of [B, 3, H, W] tensors (strided views welcome)."""
    ax, ay, az = a.unbind(1)
    bx, by, bz = b.unbind(1)
    return torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], 1)


def detail_normals(uv_z: torch.Tensor, uv_positions: torch.Tensor, uv_normals: torch.Tensor,
                   face_eye_mask: torch.Tensor, fixed_displacement: torch.Tensor) -> torch.Tensor:
    """DECA's displacement2normal: the detail normal map of a displacement on the coarse surface.

    The one detail-normal path; `capture.reference.displacement_to_normals` is DECA's triangle-list version.

    uv_z [B, 1, S, S]; uv_positions / uv_normals [B, 3, S, S] (the coarse mesh in UV, e.g. from
    `UVSampler.sample`); face_eye_mask, fixed_displacement [S, S]. Returns [B, 3, S, S] world-space normals.
    """
    mask = face_eye_mask.to(uv_z)[None, None]
    offset = uv_z * mask + fixed_displacement.to(uv_z)[None, None]
    dense = grid_normals(uv_positions + offset * uv_normals)
    return dense * mask + uv_normals * (1 - mask)


def extract_texture(image: torch.Tensor, screen: torch.Tensor, sampler: UVSampler, face_eye_mask: torch.Tensor,
                    fallback: torch.Tensor) -> torch.Tensor:
    """DECA's uv_texture_gt: sample the photo at each texel's projected position.

    image [B, 3, H, W] 0..1; screen [B, V, 3] the mesh in that image's NDC; face_eye_mask [S, S];
    fallback [B, 3, S, S] used outside the mask (albedo x SH, or grey 0.7 without an albedo model).
    No occlusion handling, as in DECA.
    """
    grid = sampler.sample(screen[..., :2]).permute(0, 2, 3, 1)  # [B, S, S, 2] NDC
    sampled = F.grid_sample(image, grid, mode="bilinear", align_corners=False)
    mask = face_eye_mask.to(image)[None, None]
    return sampled * mask + fallback * (1 - mask)
