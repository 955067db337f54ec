"""nvdiffrast implementation of the rasterizer interface (CUDA only; `pip install diffrp-nvdiffrast`).

Mirrors `CpuRasterizer`'s output format exactly. Our NDC goes in as clip space through
`conventions.ndc_to_clip` (x, y unchanged since nvdiffrast writes clip y = -1 to row 0; z mapped from
[near, far] to [-1, 1]; w = 1). nvdiffrast's (u, v, z/w, triangle_id + 1) comes back as face_id = id - 1,
bary = (u, v, 1 - u - v) and depth = clip_z_to_ndc(z/w): u and v weigh the triangle's first and second
vertex (nvdiffrast's own `interpolate` kernel computes u*a0 + v*a1 + (1-u-v)*a2). Both rasterizers drop
fragments outside [near, far]. Its CUDA rasterizer needs H and W divisible by 8: other sizes are rendered
into a frame padded at the right/bottom, with NDC rescaled so that every kept pixel keeps its centre, then
cropped; a `Window` is rendered the same way, its NDC moved so that the window starts at row and column 0.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..conventions import DEPTH_FAR, DEPTH_NEAR, clip_z_to_ndc, ndc_to_clip
from .base import Fragments, Rasterizer, Window, check_rasterize_inputs, check_window, empty_fragments

INSTALL_HINT = ("install it with `pip install diffrp-nvdiffrast` (needs a CUDA build of torch, the CUDA "
                "toolkit and ninja; plugins compile on first use), or use get_rasterizer('cpu')")


def import_nvdiffrast():
    """`nvdiffrast.torch`, or an ImportError that says how to get it."""
    try:
        import nvdiffrast.torch as dr
    except ImportError as exc:
        raise ImportError(f"nvdiffrast is not importable ({exc}); {INSTALL_HINT}") from exc
    return dr


class NvdiffrastRasterizer(Rasterizer):
    """Rasterizer on nvdiffrast's CUDA rasterizer (`dr.RasterizeCudaContext`), one context per instance."""

    name = "nvdiffrast"

    def __init__(self, device="cuda", near: float = DEPTH_NEAR, far: float = DEPTH_FAR):
        super().__init__(near, far)
        device = torch.device(device)
        if device.type == "cuda" and device.index is None and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        if device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"nvdiffrast needs a CUDA device, got {device} (CUDA available: "
                               f"{torch.cuda.is_available()}); use get_rasterizer('cpu') instead")
        self._dr = import_nvdiffrast()
        self.device = device
        self._ctx = self._dr.RasterizeCudaContext(device=device)

    def rasterize(self, vertices: torch.Tensor, faces: torch.Tensor, size: Tuple[int, int],
                  window: Optional[Window] = None) -> Fragments:
        H, W = check_rasterize_inputs(vertices, faces, size)
        window = check_window(window, (H, W))
        B = vertices.shape[0]
        if vertices.device != self.device:
            raise ValueError(f"vertices: expected a tensor on {self.device} (this rasterizer's device), "
                             f"got {vertices.device}; move it with .to('{self.device}')")
        if faces.shape[0] == 0:
            return empty_fragments(B, (H, W), vertices.device, window)
        top, left, h, w = (window.top, window.left, *window.size) if window is not None else (0, 0, H, W)
        H8, W8 = -(-h // 8) * 8, -(-w // 8) * 8
        with torch.no_grad():
            clip = ndc_to_clip(vertices.detach().float(), self.near, self.far)
            if (H8, W8, top, left) != (H, W, 0, 0):
                # The rendered rectangle starts at (top, left) and is padded at the right/bottom:
                # x' = (x + 1) * W / W8 - 2 * left / W8 - 1 keeps every kept column's centre in place.
                scale = clip.new_tensor([W / W8, H / H8])
                shift = clip.new_tensor([2 * left / W8, 2 * top / H8])
                clip = torch.cat([(clip[..., :2] + 1.0) * scale - shift - 1.0, clip[..., 2:]], dim=-1)
            tri = faces.detach().to(device=vertices.device, dtype=torch.int32).contiguous()
            rast, _ = self._dr.rasterize(self._ctx, clip.contiguous(), tri, resolution=(H8, W8), grad_db=False)
            rast = rast[:, :h, :w]
            u, v, zc, tri_id = rast.unbind(-1)
            face_id = tri_id.round().to(torch.int64) - 1
            mask = face_id >= 0
            # Older nvdiffrast builds can return u + v slightly above 1; keep weights in [0, 1], sum 1.
            bary = torch.stack([u, v, 1.0 - u - v], dim=-1).clamp(min=0.0)
            bary = bary / bary.sum(dim=-1, keepdim=True).clamp(min=1e-12)
            bary = torch.where(mask.unsqueeze(-1), bary, torch.zeros_like(bary))
            depth = torch.where(mask, clip_z_to_ndc(zc, self.near, self.far), torch.full_like(zc, float("inf")))
        return Fragments(face_id.contiguous(), bary.float().contiguous(), depth.float().contiguous(), window)

    def __repr__(self) -> str:
        return f"NvdiffrastRasterizer(device={str(self.device)!r}, near={self.near}, far={self.far})"
