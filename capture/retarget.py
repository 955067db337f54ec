"""One frame of retargeting: the performer's codes -> the target avatar's picture (FORMATS.md section 4).

From the performer: expression and jaw pose (and, with pose mode 'source', global head rotation and camera).
From the target: shape, albedo/texture, light and detail code, so D_detail regenerates the target's wrinkles
for the performer's expression on every frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .appearance import displacement_to_normals
from .avatar import Avatar
from .deca import CROP_SIZE, DECA, Codes
from .views import composite, render_views

LAYOUTS = ("avatar", "side-by-side", "overlay")
POSE_MODES = ("source", "target")
BACKGROUND = 0.12  # grey behind the avatar in the 'avatar' and 'side-by-side' layouts


def merge_codes(source: Codes, target: Codes, pose_mode: str = "source") -> Codes:
    """The transfer rule: exp + jaw from `source`; everything else from `target` (head pose per pose_mode)."""
    if pose_mode not in POSE_MODES:
        raise ValueError(f"pose mode must be one of {POSE_MODES}, got {pose_mode!r}")
    b = source.batch
    tgt = target if target.batch == b else Codes(**{k: v.expand(b, *v.shape[1:]) for k, v in vars(target).items()})
    head = source if pose_mode == "source" else tgt
    pose = torch.cat([head.pose[:, :3], source.pose[:, 3:6]], dim=1)
    return Codes(shape=tgt.shape, tex=tgt.tex, exp=source.exp, pose=pose, cam=head.cam, light=tgt.light,
                 detail=tgt.detail)


def view_transform(frame_size: tuple[int, int], fill: float = 0.8) -> np.ndarray:
    """A crop transform that shows the 224 crop as a centred square of the frame (side = fill x min(H, W)).

    Maps frame pixels -> crop pixels, pixel centres at integers on both sides.
    """
    h, w = frame_size
    side = fill * min(h, w)
    x0, y0 = (w - side) / 2, (h - side) / 2
    k = CROP_SIZE / side
    return np.array([[k, 0, (0.5 - x0) * k - 0.5], [0, k, (0.5 - y0) * k - 0.5], [0, 0, 1]], dtype=np.float64)


def output_size(layout: str, frame_size: tuple[int, int]) -> tuple[int, int]:
    h, w = frame_size
    return (h, 2 * w) if layout == "side-by-side" else (h, w)


@dataclass
class FrameResult:
    image: np.ndarray  # [H_out, W_out, 3] uint8
    codes: Optional[Codes]  # merged codes that were rendered (None when the frame passed through)


class AvatarRenderer:
    """Draws the avatar for one frame in the chosen layout. Not thread-safe (one per render thread)."""

    def __init__(self, deca: DECA, avatar: Avatar, layout: str, frame_size: tuple[int, int],
                 pose_mode: str = "source", decode_detail=None):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.deca, self.avatar, self.layout, self.pose_mode = deca, avatar.to(deca.device), layout, pose_mode
        self.frame_size = frame_size
        self.out_size = output_size(layout, frame_size)
        self.decode_detail = decode_detail  # latent [B,181] -> uv_z; None = torch D_detail
        self._view_T = torch.as_tensor(view_transform(frame_size), dtype=torch.float32, device=deca.device)
        self._background = None

    def codes_for(self, source: Codes) -> Codes:
        return merge_codes(source.to(self.deca.device), self.avatar.codes, self.pose_mode)

    @torch.inference_mode()
    def draw(self, codes: Codes, image_to_crop: Optional[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Merged codes -> (colour [1, 3, H, W], alpha [1, 1, H, W]) in frame coordinates."""
        deca = self.deca
        geo = deca.geometry(codes)
        if self.decode_detail is None:
            uv_z = deca.displacement(codes)
        else:
            from .nets import detail_input

            uv_z = self.decode_detail(detail_input(codes.pose[:, 3:6], codes.exp, codes.detail))
        maps = displacement_to_normals(uv_z, geo.vertices, geo.normals, deca.uv_sampler, deca.face_eye_mask,
                                       deca.fixed_displacement, deca.grid_faces)
        if self.layout == "overlay" and image_to_crop is not None:
            T = torch.as_tensor(image_to_crop, dtype=torch.float32, device=deca.device)
        else:
            T = self._view_T
        from .camera import crop_to_image_ndc

        screen = crop_to_image_ndc(geo.screen, T, CROP_SIZE, self.frame_size)
        albedo = self.avatar.albedo_uv if self.avatar.albedo_uv is not None else deca.albedo(codes)
        views = render_views(deca.rasterizer, screen, deca.faces, deca.uv_ndc, deca.uvfaces, geo.normals,
                             geo.screen_normals, self.frame_size, albedo_uv=albedo, light=codes.light,
                             detail_normals_uv=maps.uv_detail_normals, want_shape=False)
        return views.lit.clamp(0, 1), views.alpha

    def render(self, frame: np.ndarray, source: Optional[Codes], image_to_crop: Optional[np.ndarray]) -> FrameResult:
        """frame [H, W, 3] uint8; source codes (batch 1) or None to pass the frame through."""
        if source is None:
            return FrameResult(self._pass_through(frame), None)
        codes = self.codes_for(source)
        colour, alpha = self.draw(codes, image_to_crop)
        frame_t = torch.from_numpy(frame).to(self.deca.device).permute(2, 0, 1)[None].float() / 255.0
        if self.layout == "overlay":
            picture = composite(colour, alpha, frame_t)
        else:
            picture = composite(colour, alpha, torch.full_like(frame_t, BACKGROUND))
            if self.layout == "side-by-side":
                picture = torch.cat([frame_t, picture], dim=3)
        return FrameResult(_to_uint8(picture), codes)

    def _pass_through(self, frame: np.ndarray) -> np.ndarray:
        if self.layout == "side-by-side":
            blank = np.full_like(frame, int(BACKGROUND * 255))
            return np.concatenate([frame, blank], axis=1)
        return frame


def _to_uint8(picture: torch.Tensor) -> np.ndarray:
    return (picture[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
