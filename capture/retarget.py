"""One frame of retargeting: the performer's codes -> the target avatar's picture (FORMATS.md section 4).

From the performer: expression and jaw pose (and, with pose mode 'source', global head rotation and camera).
From the target: shape, albedo/texture, light and detail code, so D_detail regenerates the target's wrinkles
for the performer's expression on every frame.

Two implementations of the same picture. The default one does per frame only what changes: the albedo is
the target's (computed once), UV sampling and vertex normals are sparse products, the detail normals come
from shifted slices of the UV position map, and shading and compositing touch the head's pixels only.
`reference=True` is the straightforward DECA-style path (full-frame float images, the triangle-list
normals), kept as the eager baseline of `benchmarks/fps.py` and as the oracle the fast path is tested
against; both agree to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .appearance import detail_normals, displacement_to_normals, face_incidence, vertex_normals_fast
from .avatar import Avatar
from .camera import crop_to_image_ndc, orthographic
from .deca import CROP_SIZE, DECA, Codes
from .nets import detail_input
from .stream.pipeline import no_times
from .views import LitPixels, composite, lit_pixels, render_views

LAYOUTS = ("avatar", "side-by-side", "overlay")
POSE_MODES = ("source", "target")
BACKGROUND = 0.12  # grey behind the avatar in the 'avatar' and 'side-by-side' layouts
# The displacement map is made again when the jaw (rad) or any expression coefficient has moved more than this
# since the map in hand was made: a still or slowly changing face reuses it. On franck (12 s, landmark codes)
# a third of the frames reuse it; the largest difference to a fresh map was 0.18 mm (of 2.4 mm in the map).
DETAIL_REUSE = (0.01, 0.05)


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


# The 224 crop in the avatar views: its side as a fraction of min(H, W), and how far below the frame's centre
# its centre sits (a fraction of its side). DECA's crop is centred on the face (brows to chin); measured on
# output frames, a head reaches up to ~0.27 crop sides above the crop (the demo identity; the astronaut ~0.24)
# and the neck ~0.07 below it: 0.68 and 0.10 frame that whole extent with ~4 % of the height to spare on
# each side (0.72 / 0.09 left the demo identity's crown 2 px from the top of a 360-px frame).
VIEW_FILL = 0.68
VIEW_DROP = 0.10


def view_transform(frame_size: tuple[int, int], fill: float = VIEW_FILL, drop: float = VIEW_DROP) -> np.ndarray:
    """A crop transform that shows the 224 crop as a square of the frame (side = fill x min(H, W)), centred
    across and `drop` sides below the centre, so that the whole head is in view.

    Maps frame pixels -> crop pixels, pixel centres at integers on both sides.
    """
    h, w = frame_size
    side = fill * min(h, w)
    x0, y0 = (w - side) / 2, (h - side) / 2 + drop * side
    k = CROP_SIZE / side
    return np.array([[k, 0, (0.5 - x0) * k - 0.5], [0, k, (0.5 - y0) * k - 0.5], [0, 0, 1]], dtype=np.float64)


def output_size(layout: str, frame_size: tuple[int, int]) -> tuple[int, int]:
    h, w = frame_size
    return (h, 2 * w) if layout == "side-by-side" else (h, w)


@dataclass
class FrameResult:
    image: np.ndarray  # [H_out, W_out, 3] uint8
    codes: Optional[Codes]  # merged codes that were rendered (None when the frame passed through)


@dataclass
class Prepared:
    """The geometry half of a frame (`AvatarRenderer.prepare`), handed to the drawing half (`finish`)."""

    codes: Codes  # merged codes, batch 1
    vertices: torch.Tensor  # [B, V, 3] world (FLAME metres)
    normals: torch.Tensor  # [B, V, 3] world vertex normals
    screen: torch.Tensor  # [B, V, 3] NDC of the output frame
    screen_normals: Optional[torch.Tensor] = None  # [B, V, 3] crop-NDC normals (reference path only)
    uv_z: Optional[torch.Tensor] = None  # [B, 1, S, S] D_detail's map, when `AvatarRenderer.detail` made it


class AvatarRenderer:
    """Draws the avatar for one frame in the chosen layout. Not thread-safe per call, but `prepare` (merge, LBS)
    and `finish` (D_detail, shading, rasterising, compositing) may run in two threads, one frame apart. (With
    E_flame before `prepare`, this split gives the two halves similar costs on a 2-core CPU.)

    decode_detail: latent [B, 181] -> uv_z; None = the torch D_detail. reference: the DECA-style path (see the
    module doc). times: a `capture.stream.pipeline.StepTimes` to record "LBS", "D_detail", "shading",
    "rasterize" and "composite" in.
    """

    def __init__(self, deca: DECA, avatar: Avatar, layout: str, frame_size: tuple[int, int],
                 pose_mode: str = "source", decode_detail=None, *, reference: bool = False, times=None):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.deca, self.avatar, self.layout, self.pose_mode = deca, avatar.to(deca.device), layout, pose_mode
        self.frame_size = frame_size
        self.out_size = output_size(layout, frame_size)
        self.decode_detail = decode_detail
        self.reference = bool(reference)
        self._times = times if times is not None else no_times
        self._view_T = torch.as_tensor(view_transform(frame_size), dtype=torch.float32, device=deca.device)
        self._template: Optional[np.ndarray] = None  # the fast path's background picture, made on first use
        self._detail: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (latent, uv_z) of the last D_detail run
        self.detail_reused = 0  # frames that reused the last displacement map
        if not self.reference:
            # Constant per avatar: the merge always takes tex (hence the albedo) from the target.
            with torch.inference_mode():
                self._albedo = (self.avatar.albedo_uv if self.avatar.albedo_uv is not None
                                else deca.albedo(self.avatar.codes))
                self._uv_face = deca.uv_ndc[deca.uvfaces].contiguous()  # [F, 3, 2]
                self._incidence = face_incidence(deca.faces, deca.flame.v_template.shape[0])
                self._background = _to_uint8(torch.full((1, 3, 1, 1), BACKGROUND))[0, 0]  # as the reference rounds

    def codes_for(self, source: Codes) -> Codes:
        return merge_codes(source.to(self.deca.device), self.avatar.codes, self.pose_mode)

    # ------------------------------------------------------------------------------------ the two halves
    @torch.inference_mode()
    def prepare(self, source: Codes, image_to_crop: Optional[np.ndarray]) -> Prepared:
        """Performer codes (batch 1) -> merged codes and the posed mesh (world and frame NDC)."""
        return self._prepare_merged(self.codes_for(source), image_to_crop)

    def _prepare_merged(self, codes: Codes, image_to_crop: Optional[np.ndarray]) -> Prepared:
        deca = self.deca
        if self.layout == "overlay" and image_to_crop is not None:
            T = torch.as_tensor(image_to_crop, dtype=torch.float32, device=deca.device)
        else:
            T = self._view_T
        with self._times("LBS"):
            if self.reference:
                geo = deca.geometry(codes)
                vertices, normals, screen, screen_normals = geo.vertices, geo.normals, geo.screen, geo.screen_normals
            else:
                vertices = deca.flame(codes.shape, codes.exp, codes.pose).vertices
                normals = vertex_normals_fast(vertices, deca.faces, self._incidence)
                screen, screen_normals = orthographic(vertices, codes.cam), None
            screen = crop_to_image_ndc(screen, T, CROP_SIZE, self.frame_size)
        return Prepared(codes=codes, vertices=vertices, normals=normals, screen=screen, screen_normals=screen_normals)

    def _displacement(self, codes: Codes) -> torch.Tensor:
        """D_detail on (jaw, exp, target detail code) -> uv_z [B, 1, S, S].

        The fast path reuses the last map while jaw and expression have moved less than `DETAIL_REUSE` since it
        was made (D_detail is a quarter of a frame's CPU time, and wrinkles follow the expression, nothing else
        of the frame); the reference path always runs it."""
        latent = detail_input(codes.pose[:, 3:6], codes.exp, codes.detail)
        if not self.reference and self._detail is not None and self._detail[0].shape == latent.shape:
            jaw_tol, exp_tol = DETAIL_REUSE
            moved = (latent - self._detail[0]).abs()
            if float(moved[:, :3].max()) <= jaw_tol and float(moved[:, 3:53].max()) <= exp_tol:
                self.detail_reused += 1
                return self._detail[1]
        with self._times("D_detail"):
            uv_z = self.deca.nets.d_detail(latent) if self.decode_detail is None else self.decode_detail(latent)
        if not self.reference:
            self._detail = (latent, uv_z)
        return uv_z

    @torch.inference_mode()
    def detail(self, prepared: Prepared) -> Prepared:
        """D_detail for a prepared frame (fast path; the reference path runs it in `finish`): a step of its own,
        so that a pipeline can give it a thread between `prepare` and `finish`."""
        if not self.reference:
            prepared.uv_z = self._displacement(prepared.codes)
        return prepared

    @torch.inference_mode()
    def finish(self, frame: np.ndarray, prepared: Prepared) -> FrameResult:
        """The picture of a prepared frame in the layout: frame [H, W, 3] uint8 -> FrameResult."""
        if self.reference:
            colour, alpha = self._draw_reference(prepared)
            with self._times("composite"):
                image = self._composite_reference(frame, colour, alpha)
        else:
            pixels = self._lit_pixels(prepared)
            with self._times("composite"):
                image = self._composite(frame, pixels)
        return FrameResult(image, prepared.codes)

    # ------------------------------------------------------------------------------------ whole frames
    def render(self, frame: np.ndarray, source: Optional[Codes], image_to_crop: Optional[np.ndarray]) -> FrameResult:
        """frame [H, W, 3] uint8; source codes (batch 1) or None to pass the frame through."""
        if source is None:
            return FrameResult(self._pass_through(frame), None)
        return self.finish(frame, self.prepare(source, image_to_crop))

    @torch.inference_mode()
    def draw(self, codes: Codes, image_to_crop: Optional[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Merged codes -> (colour [1, 3, H, W] in 0..1, alpha [1, 1, H, W]) in frame coordinates."""
        prepared = self._prepare_merged(codes, image_to_crop)
        if self.reference:
            return self._draw_reference(prepared)
        lit, alpha = self._lit_pixels(prepared).images()
        return lit.clamp(0, 1), alpha

    # ------------------------------------------------------------------------------------ fast path
    def _lit_pixels(self, prepared: Prepared) -> LitPixels:
        deca = self.deca
        uv_z = prepared.uv_z if prepared.uv_z is not None else self._displacement(prepared.codes)
        with self._times("rasterize"):
            fragments = deca.rasterizer.rasterize(prepared.screen, deca.faces, self.frame_size)
        with self._times("shading"):
            uv = deca.uv_sampler.sample(torch.cat([prepared.vertices, prepared.normals], -1))
            normals_uv = detail_normals(uv_z, uv[:, 0:3], uv[:, 3:6], deca.face_eye_mask,
                                        deca.fixed_displacement)
            return lit_pixels(fragments, self._uv_face, self._albedo, normals_uv, prepared.codes.light)

    def _composite(self, frame: np.ndarray, pixels: LitPixels) -> np.ndarray:
        """uint8 compositing of the covered pixels over the frame or the grey background (batch 1)."""
        h, w = self.frame_size
        colour = (pixels.colour.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        index = pixels.index
        if self.layout == "overlay":
            out = np.array(frame, dtype=np.uint8, order="C")  # a fresh copy: the writer may still hold the last
        else:
            if self._template is None:  # the grey background (and room for the input on the left)
                self._template = np.empty((*self.out_size, 3), np.uint8)
                self._template[:] = self._background
            out = self._template.copy()
            if self.layout == "side-by-side":
                out[:, :w] = frame
                index = torch.div(index, w, rounding_mode="floor") * (2 * w) + w + index % w
        out.reshape(-1, 3)[index.cpu().numpy()] = colour
        return out

    # ------------------------------------------------------------------------------------ reference path
    def _draw_reference(self, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        deca, codes = self.deca, prepared.codes
        uv_z = self._displacement(codes)
        with self._times("rasterize"):
            fragments = deca.rasterizer.rasterize(prepared.screen, deca.faces, self.frame_size)
        with self._times("shading"):
            maps = displacement_to_normals(uv_z, prepared.vertices, prepared.normals, deca.uv_sampler,
                                           deca.face_eye_mask, deca.fixed_displacement, deca.grid_faces)
            albedo = self.avatar.albedo_uv if self.avatar.albedo_uv is not None else deca.albedo(codes)
            views = render_views(deca.rasterizer, prepared.screen, deca.faces, deca.uv_ndc, deca.uvfaces,
                                 prepared.normals, prepared.screen_normals, self.frame_size, albedo_uv=albedo,
                                 light=codes.light, detail_normals_uv=maps.uv_detail_normals, want_shape=False,
                                 fragments=fragments)
        return views.lit.clamp(0, 1), views.alpha

    def _composite_reference(self, frame: np.ndarray, colour: torch.Tensor, alpha: torch.Tensor) -> np.ndarray:
        frame_t = torch.from_numpy(frame).to(self.deca.device).permute(2, 0, 1)[None].float() / 255.0
        if self.layout == "overlay":
            picture = composite(colour, alpha, frame_t)
        else:
            picture = composite(colour, alpha, torch.full_like(frame_t, BACKGROUND))
            if self.layout == "side-by-side":
                picture = torch.cat([frame_t, picture], dim=3)
        return _to_uint8(picture)

    def _pass_through(self, frame: np.ndarray) -> np.ndarray:
        if self.layout == "side-by-side":
            blank = np.full_like(frame, int(BACKGROUND * 255))
            return np.concatenate([frame, blank], axis=1)
        return frame


def _to_uint8(picture: torch.Tensor) -> np.ndarray:
    return (picture[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
