"""The rasterizer interface: `Fragments`, the abstract `Rasterizer`, attribute interpolation, `texture`.

Modelled on nvdiffrast's four small ops: `rasterize` gives, per pixel, the nearest triangle and its
barycentric weights; `interpolate` / `interpolate_face_attributes` turn those into attribute images;
`texture` samples a texture with `grid_sample`. Implementations only provide `rasterize`; interpolation is
shared torch code, so that both implementations return exactly the same format.

Conventions (docs/conventions.md): vertices arrive in DECA's crop NDC (x right, y down, +-1 at the outer
pixel borders), smaller z is closer, no back-face culling. Fragments carry no gradient with respect to
vertex positions (as DECA's standard rasterizer); `interpolate` is differentiable in the attributes.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F_nn

from ..conventions import DEPTH_FAR, DEPTH_NEAR, ndc_to_pixel

# Pixel coordinates are limited so that the CPU rasterizer's fixed-point edge functions fit in int64.
MAX_IMAGE_SIDE = 1 << 15


@dataclass
class Fragments:
    """What `Rasterizer.rasterize` returns: the nearest surface at every pixel centre.

    face_id: [B, H, W] int64, index into `faces`, -1 where no triangle covers the pixel centre.
    bary:    [B, H, W, 3] float32, weights of the triangle's vertices in the order of faces[f]
             (screen-space, sum 1); zeros where empty.
    depth:   [B, H, W] float32, NDC z of the nearest surface; +inf where empty.
    window:  None for a whole image; for a rasterised rectangle of a larger image (`rasterize(...,
             window=...)`) the `Window` these H x W pixels are, so that pixels can be placed in the image.
    """

    face_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    window: Optional["Window"] = None

    @property
    def mask(self) -> torch.Tensor:
        """[B, H, W] bool, True where a triangle covers the pixel centre."""
        return self.face_id >= 0

    @property
    def size(self) -> Tuple[int, int]:
        """(H, W)."""
        return int(self.face_id.shape[1]), int(self.face_id.shape[2])


@dataclass(frozen=True)
class Window:
    """A rectangle of pixels of an image of `image_size` (H, W): rows top..top+height-1, columns
    left..left+width-1. Rasterising only the rectangle a mesh can cover gives the same pixels as the whole
    image and skips the rest (a head covers a fraction of a video frame)."""

    top: int
    left: int
    height: int
    width: int
    image_size: Tuple[int, int]

    @property
    def size(self) -> Tuple[int, int]:
        """(height, width): the size of the fragments."""
        return self.height, self.width

    def to_image_index(self, index: torch.Tensor) -> torch.Tensor:
        """Flat pixel indices b * h * w + y * w + x of the window -> b * H * W + (top + y) * W + left + x."""
        H, W = self.image_size
        h, w = self.size
        b, rest = torch.div(index, h * w, rounding_mode="floor"), index % (h * w)
        row, col = torch.div(rest, w, rounding_mode="floor"), rest % w
        return b * (H * W) + (row + self.top) * W + col + self.left


def covering_window(vertices: torch.Tensor, size: Tuple[int, int], margin: int = 1) -> Window:
    """The smallest `Window` of an (H, W) image holding every pixel centre that triangles between these
    vertices ([B, V, 3] NDC, all frames of the batch together) can cover, widened by `margin` pixels; non-finite
    vertices are left out (the rasterizers drop their triangles). At least one pixel, inside the image."""
    H, W = (int(s) for s in size)
    pix = ndc_to_pixel(vertices.detach()[..., :2].reshape(-1, 2).to(torch.float64), (H, W))
    pix = pix[torch.isfinite(pix).all(dim=1)]
    if pix.numel() == 0:
        return Window(0, 0, 1, 1, (H, W))
    lo = (pix.min(dim=0).values.floor() - margin).cpu().tolist()
    hi = (pix.max(dim=0).values.ceil() + margin).cpu().tolist()
    left, right = int(min(max(lo[0], 0), W - 1)), int(min(max(hi[0], 0), W - 1))
    top, bottom = int(min(max(lo[1], 0), H - 1)), int(min(max(hi[1], 0), H - 1))
    return Window(top, left, bottom - top + 1, right - left + 1, (H, W))


def check_window(window: Optional[Window], size: Tuple[int, int]) -> Optional[Window]:
    """Validate `rasterize`'s window against its image size (H, W)."""
    if window is None:
        return None
    if not isinstance(window, Window):
        raise TypeError(f"window: expected a capture.render.Window, got {type(window).__name__}")
    H, W = size
    if (tuple(window.image_size) != (H, W) or window.height < 1 or window.width < 1 or window.top < 0
            or window.left < 0 or window.top + window.height > H or window.left + window.width > W):
        raise ValueError(f"window: {window} does not lie inside the {H}x{W} image being rasterised")
    return window


def empty_fragments(batch: int, size: Tuple[int, int], device, window: Optional[Window] = None) -> Fragments:
    """Fragments of a frame (or of `window`, whose size then wins) that no triangle touches."""
    H, W = window.size if window is not None else size
    return Fragments(
        face_id=torch.full((batch, H, W), -1, dtype=torch.int64, device=device),
        bary=torch.zeros((batch, H, W, 3), dtype=torch.float32, device=device),
        depth=torch.full((batch, H, W), float("inf"), dtype=torch.float32, device=device),
        window=window,
    )


def check_rasterize_inputs(vertices: torch.Tensor, faces: torch.Tensor, size) -> Tuple[int, int]:
    """Validate `rasterize` arguments; returns (H, W). Errors name the argument and the fix."""
    if not isinstance(vertices, torch.Tensor) or vertices.dim() != 3 or vertices.shape[-1] != 3:
        shape = tuple(vertices.shape) if isinstance(vertices, torch.Tensor) else type(vertices).__name__
        raise ValueError(f"vertices: expected a [B, V, 3] tensor of NDC positions, got {shape}; "
                         "add a batch dimension with vertices[None] if needed")
    if not vertices.is_floating_point():
        raise TypeError(f"vertices: expected a float tensor, got {vertices.dtype}")
    if not isinstance(faces, torch.Tensor) or faces.dim() != 2 or faces.shape[-1] != 3:
        shape = tuple(faces.shape) if isinstance(faces, torch.Tensor) else type(faces).__name__
        raise ValueError(f"faces: expected an [F, 3] integer tensor, got {shape}")
    if faces.is_floating_point() or faces.dtype == torch.bool:
        raise TypeError(f"faces: expected an integer tensor (int64), got {faces.dtype}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[1]):
        raise ValueError(f"faces: vertex indices must lie in [0, {vertices.shape[1] - 1}] for the "
                         f"{vertices.shape[1]} vertices given, found [{int(faces.min())}, {int(faces.max())}]")
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size: expected (H, W), got {size!r}") from None
    if not (0 < H <= MAX_IMAGE_SIDE and 0 < W <= MAX_IMAGE_SIDE):
        raise ValueError(f"size: H and W must lie in 1..{MAX_IMAGE_SIDE}, got {(H, W)}")
    return H, W


class Rasterizer(abc.ABC):
    """One rasterizer: `rasterize` is implementation-specific, the rest is shared.

    `name` says which implementation this is ("cpu", "nvdiffrast"); `near`/`far` bound the NDC z of the
    fragments that are kept (see conventions.DEPTH_NEAR / DEPTH_FAR).
    """

    name: str = "abstract"

    def __init__(self, near: float = DEPTH_NEAR, far: float = DEPTH_FAR):
        if not near < far:
            raise ValueError(f"near/far: need near < far, got near={near}, far={far}")
        self.near = float(near)
        self.far = float(far)

    @abc.abstractmethod
    def rasterize(self, vertices: torch.Tensor, faces: torch.Tensor, size: Tuple[int, int],
                  window: Optional[Window] = None) -> Fragments:
        """Nearest-surface rasterisation of triangles, no back-face culling.

        vertices: [B, V, 3] float32 in NDC (x right, y down, smaller z closer); faces: [F, 3] int64;
        size: (H, W). A pixel belongs to a triangle when its centre is inside it (top-left rule on edges).
        window: a `Window` of the (H, W) image: only its pixels are rasterised (fragments of the window's size,
        `fragments.window` set), the same ones as in the whole image's fragments (`covering_window`).
        """

    def interpolate(self, attributes: torch.Tensor, fragments: Fragments, faces: torch.Tensor) -> torch.Tensor:
        """Per-vertex attributes -> [B, H, W, C] image (zeros where empty). attributes: [B, V, C] or [V, C]."""
        return interpolate(attributes, fragments, faces)

    def interpolate_face_attributes(self, face_attrs: torch.Tensor, fragments: Fragments) -> torch.Tensor:
        """Per-face-corner attributes [B, F, 3, C] (or [F, 3, C]) -> [B, H, W, C] (zeros where empty)."""
        return interpolate_face_attributes(face_attrs, fragments)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, near={self.near}, far={self.far})"


def _weighted(corner_values: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Sum over the 3 corners [B, H, W, 3, C] with the barycentric weights; zeros where empty."""
    bary = fragments.bary.to(device=corner_values.device, dtype=corner_values.dtype)
    out = (bary.unsqueeze(-1) * corner_values).sum(dim=-2)
    return torch.where(fragments.mask.to(out.device).unsqueeze(-1), out, torch.zeros_like(out))


def interpolate(attributes: torch.Tensor, fragments: Fragments, faces: torch.Tensor) -> torch.Tensor:
    """Barycentric interpolation of per-vertex attributes.

    attributes: [B, V, C] or [V, C] float; faces: [F, 3] int64 (the ones rasterised).
    Returns [B, H, W, C] in the attributes' dtype, zeros where empty.
    """
    B = fragments.face_id.shape[0]
    if attributes.dim() == 2:
        attributes = attributes.unsqueeze(0).expand(B, -1, -1)
    if attributes.dim() != 3 or attributes.shape[0] != B:
        raise ValueError(f"attributes: expected [B={B}, V, C] or [V, C], got {tuple(attributes.shape)}")
    faces = faces.to(device=attributes.device, dtype=torch.int64)
    face_id = fragments.face_id.to(attributes.device).clamp(min=0)
    vertex_ids = faces[face_id]  # [B, H, W, 3]
    batch_ids = torch.arange(B, device=attributes.device).view(B, 1, 1, 1)
    return _weighted(attributes[batch_ids, vertex_ids], fragments)


def interpolate_face_attributes(face_attrs: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Barycentric interpolation of per-face-corner attributes (DECA's way, e.g. UVs with their own faces).

    face_attrs: [B, F, 3, C] or [F, 3, C] float. Returns [B, H, W, C], zeros where empty.
    """
    B = fragments.face_id.shape[0]
    if face_attrs.dim() == 3:
        face_attrs = face_attrs.unsqueeze(0).expand(B, -1, -1, -1)
    if face_attrs.dim() != 4 or face_attrs.shape[0] != B or face_attrs.shape[2] != 3:
        raise ValueError(f"face_attrs: expected [B={B}, F, 3, C] or [F, 3, C], got {tuple(face_attrs.shape)}")
    face_id = fragments.face_id.to(face_attrs.device).clamp(min=0)
    batch_ids = torch.arange(B, device=face_attrs.device).view(B, 1, 1)
    return _weighted(face_attrs[batch_ids, face_id], fragments)


def texture(tex: torch.Tensor, uv_ndc: torch.Tensor, mode: str = "bilinear",
            padding_mode: str = "zeros") -> torch.Tensor:
    """Sample a texture at NDC positions: `grid_sample(tex, uv_ndc, align_corners=False)`.

    tex: [B, C, Ht, Wt] (or batch 1, broadcast) float, row 0 = top (v = 1 in OBJ terms);
    uv_ndc: [B, H, W, 2], x right / y down in -1..+1 across the texture's outer texel borders, as made by
    `conventions.obj_uv_to_ndc`. mode: "bilinear" or "nearest". Returns [B, C, H, W].
    """
    if tex.dim() != 4:
        raise ValueError(f"tex: expected [B, C, Ht, Wt], got {tuple(tex.shape)}")
    if uv_ndc.dim() != 4 or uv_ndc.shape[-1] != 2:
        raise ValueError(f"uv_ndc: expected [B, H, W, 2], got {tuple(uv_ndc.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode: expected 'bilinear' or 'nearest', got {mode!r}")
    B = uv_ndc.shape[0]
    if tex.shape[0] == 1 and B > 1:
        tex = tex.expand(B, -1, -1, -1)
    elif tex.shape[0] != B:
        raise ValueError(f"tex: batch {tex.shape[0]} does not match uv_ndc batch {B} (use batch 1 to share)")
    return F_nn.grid_sample(tex, uv_ndc.to(tex.dtype), mode=mode, padding_mode=padding_mode,
                            align_corners=False)
