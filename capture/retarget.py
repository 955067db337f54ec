"""One frame of retargeting: the performer's codes -> the target avatar's picture (docs/formats.md section 4).

From the performer: expression and jaw pose (and, with pose mode 'source', global head rotation and camera).
From the target: shape, albedo/texture, light and detail code, so D_detail regenerates the target's wrinkles
for the performer's expression on every frame.

One drawing path (`capture.views`), which does per frame only what changes: the albedo is the target's
(computed once), UV sampling and vertex normals are sparse products, the detail normals come from shifted
slices of the UV position map, and shading and compositing touch the head's pixels only. `reference=True`
swaps those steps for DECA's straightforward versions (`capture.reference`: full-frame float images, the
triangle-list normals), the eager baseline of `benchmarks/fps.py`; both agree to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .avatar import Avatar
from .conventions import INPUT_SIZE
from .deca import DECA, Codes
from .flame import lbs as flame_lbs
from .lbs_cpu import CpuLBS
from .model_assets import ModelAssets
from .nets import detail_input
from .picture import Picture, even_box, fill, parse_background
from .projection import crop_to_image_ndc, orthographic
from .reference import ReferenceDrawing
from .render import antialias as edges
from .render import cpu_shading
from .stream.pipeline import no_times
from .views import Drawing, LitPixels

LAYOUTS = ("avatar", "side-by-side", "overlay")
POSE_MODES = ("source", "target")
BACKGROUND = 0.12  # the default grey behind the avatar in the 'avatar' and 'side-by-side' layouts (31 in uint8:
# capture.picture.BACKGROUNDS["grey"]; `background=` names another colour, or 'transparent')
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
    k = INPUT_SIZE / side
    return np.array([[k, 0, (0.5 - x0) * k - 0.5], [0, k, (0.5 - y0) * k - 0.5], [0, 0, 1]], dtype=np.float64)


def output_size(layout: str, frame_size: tuple[int, int]) -> tuple[int, int]:
    h, w = frame_size
    return (h, 2 * w) if layout == "side-by-side" else (h, w)


@dataclass
class FrameResult:
    picture: Picture  # [H_out, W_out] RGB, as its parts (`image` builds the whole array)
    codes: Optional[Codes]  # merged codes that were rendered (None when the frame passed through)

    @property
    def image(self) -> np.ndarray:
        """[H_out, W_out, 3] uint8 RGB."""
        return self.picture.rgb()


@dataclass
class Prepared:
    """One frame between the steps of `AvatarRenderer`: the merged codes (`merge`), then the posed mesh (`pose`),
    then D_detail's map (`detail`), handed to the drawing (`finish`, which does any step still missing)."""

    codes: Codes  # merged codes, batch 1
    view: torch.Tensor  # [3, 3] frame pixels -> crop pixels, where the mesh is drawn
    vertices: Optional[torch.Tensor] = None  # [B, V, 3] world (FLAME metres)
    normals: Optional[torch.Tensor] = None  # [B, V, 3] world vertex normals
    screen: Optional[torch.Tensor] = None  # [B, V, 3] NDC of the output frame
    uv_z: Optional[torch.Tensor] = None  # [B, 1, S, S] D_detail's map, when `AvatarRenderer.detail` made it


class AvatarRenderer:
    """Draws the avatar for one frame in the chosen layout. Not thread-safe per call, but `merge`, `detail` (LBS,
    D_detail) and `finish` (shading, rasterising, compositing) may run in separate threads, one frame
    apart: E_flame (or the landmark fit) and `merge` | `detail` | `finish` keep a 2-core CPU busy with no step
    holding up the others.

    Every frame takes the same path (`capture.views`): pose the mesh, D_detail, rasterise, shade the covered
    pixels, composite in uint8. reference: draw its normals, detail normal map and lit pixels with DECA's
    straightforward implementations instead (`capture.reference.ReferenceDrawing`, the eager baseline of
    `benchmarks/fps.py`), with a fresh displacement map and albedo every frame.
    decode_detail: latent [B, 181] -> uv_z; None = DECA's (`DECA.decode_detail`). times: a
    `capture.stream.pipeline.StepTimes` to record "LBS", "D_detail", "shading", "rasterize" and "composite" in.
    """

    def __init__(self, deca: DECA, avatar: Avatar, layout: str, frame_size: tuple[int, int],
                 pose_mode: str = "source", decode_detail=None, *, reference: bool = False, times=None,
                 background: str = "grey", antialias: bool = True):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        colour = parse_background(background)
        # transparent: the pictures carry their coverage (Picture.alpha), black under what is not covered
        self.transparent = colour is None
        if self.transparent and layout == "overlay":
            raise ValueError("--background transparent needs the avatar or side-by-side layout (the overlay draws"
                             " over the input, which covers every pixel)")
        self.assets: ModelAssets = deca.assets
        self.rasterizer = deca.rasterizer
        self.device = self.assets.device
        self.avatar, self.layout, self.pose_mode = avatar.to(self.device), layout, pose_mode
        self.frame_size = frame_size
        self.out_size = output_size(layout, frame_size)
        self.decode_detail = decode_detail if decode_detail is not None else deca.decode_detail
        self.reference = bool(reference)
        self.drawing = ReferenceDrawing(self.assets) if self.reference else Drawing(self.assets)
        self._times = times if times is not None else no_times
        self._view_T = torch.as_tensor(view_transform(frame_size), dtype=torch.float32, device=self.device)
        self._detail: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (latent, uv_z) of the last D_detail run
        if self.device.type == "cpu":
            cpu_shading.kernel_error()  # the compiled drawing passes: built (once per machine) now, not on a frame
        self.detail_reused = 0  # frames that reused the last displacement map
        with torch.inference_mode():
            # Constant per avatar: the merge always takes tex (hence the albedo) and shape from the target.
            self._albedo = self._make_albedo().contiguous()  # read every frame: one contiguous copy
            # the target's shape folded into FLAME's template once (the reference poses the full model)
            self._flame = None if self.reference else self.assets.flame.with_identity(self.avatar.codes.shape)
            if self._flame is not None and self.device.type == "cpu" and self._flame.lbs_impl is flame_lbs \
                    and CpuLBS.available() is None:
                self._flame.lbs_impl = CpuLBS.from_flame(self._flame)  # LBS in one compiled pass (capture.lbs_cpu)
            self._background = np.array(colour or (0, 0, 0), np.uint8)
        # silhouettes drawn with each edge pixel's covered share (`capture.render.antialias`); False: the
        # rasterizer's one sample a pixel (alpha 0 or 1)
        self.antialias = bool(antialias)
        if self.antialias:
            self._faces_np = self.assets.faces.cpu().numpy().astype(np.int64)
            self._neighbours = edges.face_neighbours(self._faces_np)
            self._edge_scratch = edges.Scratch()
            edges.kernel_error()  # built (once per machine) now, not on a frame

    @property
    def lbs_backend(self) -> str:
        """Which LBS poses the avatar each frame: the compiled CPU pass (`capture.lbs_cpu`), or the model's own
        (`ModelAssets.lbs_backend`: torch, or the fused CUDA kernel)."""
        if self._flame is not None and isinstance(self._flame.lbs_impl, CpuLBS):
            return "compiled CPU pass"
        return self.assets.lbs_backend

    def _make_albedo(self) -> torch.Tensor:
        if self.avatar.albedo_uv is not None:
            return self.avatar.albedo_uv
        return self.assets.albedo(self.avatar.codes.tex)

    def codes_for(self, source: Codes) -> Codes:
        return merge_codes(source.to(self.device), self.avatar.codes, self.pose_mode)

    # ------------------------------------------------------------------------------------ the steps
    @torch.inference_mode()
    def merge(self, source: Codes, image_to_crop: Optional[np.ndarray]) -> Prepared:
        """Performer codes (batch 1) -> the merged codes and where they are drawn; no geometry yet."""
        return self._merged(self.codes_for(source), image_to_crop)

    def _merged(self, codes: Codes, image_to_crop: Optional[np.ndarray]) -> Prepared:
        if self.layout == "overlay" and image_to_crop is not None:
            view = torch.as_tensor(image_to_crop, dtype=torch.float32, device=self.device)
        else:
            view = self._view_T
        return Prepared(codes=codes, view=view)

    @torch.inference_mode()
    def pose(self, prepared: Prepared) -> Prepared:
        """LBS: the posed mesh of a merged frame (world and frame NDC), once."""
        if prepared.vertices is None:
            codes = prepared.codes
            with self._times("LBS"):
                vertices = self._posed(codes)
                prepared.normals = self.drawing.normals(vertices)
                prepared.screen = crop_to_image_ndc(orthographic(vertices, codes.cam), prepared.view, INPUT_SIZE,
                                                    self.frame_size)
                prepared.vertices = vertices
        return prepared

    def prepare(self, source: Codes, image_to_crop: Optional[np.ndarray]) -> Prepared:
        """`merge` and `pose` in one call."""
        return self.pose(self.merge(source, image_to_crop))

    def _posed(self, codes: Codes) -> torch.Tensor:
        """FLAME's vertices [B, V, 3] for merged codes: through the target's shaped model when the codes carry
        the target's shape (always, from `prepare`), else through the full model."""
        if self._flame is not None and torch.equal(codes.shape, self.avatar.codes.shape):
            return self._flame(codes.shape[:, :0], codes.exp, codes.pose, landmarks=False).vertices
        return self.assets.flame(codes.shape, codes.exp, codes.pose).vertices

    def _displacement(self, codes: Codes) -> torch.Tensor:
        """D_detail on (jaw, exp, target detail code) -> uv_z [B, 1, S, S].

        Reuses the last map while jaw and expression have moved less than `DETAIL_REUSE` since it was made
        (D_detail is a quarter of a frame's CPU time, and wrinkles follow the expression, nothing else of the
        frame); the reference drawing makes a fresh one every frame."""
        latent = detail_input(codes.pose[:, 3:6], codes.exp, codes.detail)
        if self.drawing.reuses and self._detail is not None and self._detail[0].shape == latent.shape:
            jaw_tol, exp_tol = DETAIL_REUSE
            moved = (latent - self._detail[0]).abs()
            n_exp = codes.exp.shape[1]
            if bool((moved[:, :3].max() <= jaw_tol) & (moved[:, 3:3 + n_exp].max() <= exp_tol)):  # one sync
                self.detail_reused += 1
                return self._detail[1]
        with self._times("D_detail"):
            uv_z = self.decode_detail(latent)
        if self.drawing.reuses:
            self._detail = (latent, uv_z)
        return uv_z

    @torch.inference_mode()
    def detail(self, prepared: Prepared) -> Prepared:
        """LBS (when not done yet) and D_detail for a merged frame: a step of its own, so that a pipeline can give
        it a thread between `merge` and `finish` (which does both when this was skipped)."""
        self.pose(prepared)
        prepared.uv_z = self._displacement(prepared.codes)
        return prepared

    @torch.inference_mode()
    def finish(self, frame: np.ndarray, prepared: Prepared) -> FrameResult:
        """The picture of a prepared frame in the layout: frame [H, W, 3] uint8 -> FrameResult."""
        fragments, pixels = self._lit_pixels(prepared)
        with self._times("composite"):
            picture = self._composite(frame, pixels, fragments, prepared.screen)
        return FrameResult(picture, prepared.codes)

    # ------------------------------------------------------------------------------------ whole frames
    def render(self, frame: np.ndarray, source: Optional[Codes], image_to_crop: Optional[np.ndarray]) -> FrameResult:
        """frame [H, W, 3] uint8; source codes (batch 1) or None to pass the frame through."""
        if source is None:
            return FrameResult(self._pass_through(frame), None)
        return self.finish(frame, self.prepare(source, image_to_crop))

    @torch.inference_mode()
    def draw(self, codes: Codes, image_to_crop: Optional[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Merged codes -> (colour [1, 3, H, W] in 0..1, alpha [1, 1, H, W]) in frame coordinates."""
        lit, alpha = self._lit_pixels(self.pose(self._merged(codes, image_to_crop)))[1].images()
        return lit.clamp(0, 1), alpha

    # ------------------------------------------------------------------------------------ drawing
    def _lit_pixels(self, prepared: Prepared) -> tuple:
        """(fragments, LitPixels) of a posed frame."""
        self.pose(prepared)
        uv_z = prepared.uv_z if prepared.uv_z is not None else self._displacement(prepared.codes)
        with self._times("rasterize"):
            fragments = self.drawing.rasterize(self.rasterizer, prepared.screen, self.frame_size)
        with self._times("shading"):
            albedo = self._albedo if self.drawing.reuses else self._make_albedo()
            normal_map = self.drawing.detail_map(uv_z, prepared.vertices, prepared.normals)
            return fragments, self.drawing.lit(self.rasterizer, fragments, prepared.screen, prepared.normals, albedo,
                                               normal_map, prepared.codes.light)

    def _composite(self, frame: np.ndarray, pixels: LitPixels, fragments=None, screen=None) -> Picture:
        """The picture of a frame in the layout (batch 1), kept as its parts (`capture.picture`): the input, and
        the rectangle of the frame that holds the head, its covered pixels rounded to uint8 over the background
        (in the overlay, over the input's own pixels there): the same bytes as compositing float pictures (alpha
        is 0 or 1) and rounding them to uint8. Then, with `antialias` (and the fragments and frame NDC vertices
        they were drawn from), each pixel beside a silhouette mixed by its covered share."""
        h, w = self.frame_size
        top, left, ph, pw = self._head_box(pixels)
        if self.layout == "overlay":
            patch = np.array(frame[top:top + ph, left:left + pw], dtype=np.uint8, order="C")
        else:
            patch = np.empty((ph, pw, 3), np.uint8)
            fill(patch, self._background)
        index, colour = pixels.index.cpu(), pixels.colour.cpu()
        if cpu_shading.kernel_error() is None:  # rounding and scatter in one compiled pass
            cpu_shading.paste_u8(patch, index, colour, w, column=-left, row=-top)
        else:
            at = (torch.div(index, w, rounding_mode="floor") - top) * pw + index % w - left
            colour = (colour.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
            torch.from_numpy(patch).view(-1, 3).index_copy_(0, at, colour)
        alpha = None
        if self.transparent:
            mask = np.zeros((ph, pw), np.uint8)
            covered = index.numpy()  # on the CPU already (above)
            mask.reshape(-1)[(covered // w - top) * pw + covered % w - left] = 255
            alpha = [(top, left + (w if self.layout == "side-by-side" else 0), mask)]
        if self.antialias and fragments is not None and index.numel():
            window = fragments.window
            x, y = edges.vertex_pixels(screen, self.frame_size, window)
            at_top, at_left = (window.top, window.left) if window is not None else (0, 0)
            edges.antialias(patch, mask if self.transparent else None, fragments.face_id, fragments.depth, x, y,
                            self._faces_np, self._neighbours, at_top - top, at_left - left,
                            scratch=self._edge_scratch)
        if self.layout == "side-by-side":  # the input on the left
            if alpha is not None:
                alpha.insert(0, (0, 0, np.broadcast_to(np.uint8(255), (h, w))))
            return Picture(h, 2 * w, [(0, 0, frame), (top, w + left, patch)], self._background, alpha)
        if self.layout == "overlay":
            return Picture(h, w, [(0, 0, frame), (top, left, patch)])
        return Picture(h, w, [(top, left, patch)], self._background, alpha)

    def _head_box(self, pixels: LitPixels) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a rectangle of the frame holding every covered pixel and the pixels
        beside them (which antialiasing may mix), corners even."""
        h, w = self.frame_size
        if pixels.window is not None:  # a pixel wider than the mesh's reach already (`covering_window`)
            box = (pixels.window.top, pixels.window.left, pixels.window.height, pixels.window.width)
        elif pixels.index.numel():
            rows = torch.div(pixels.index, w, rounding_mode="floor")
            cols = pixels.index % w
            top, left = max(int(rows.min()) - 1, 0), max(int(cols.min()) - 1, 0)
            box = (top, left, min(int(rows.max()) + 2, h) - top, min(int(cols.max()) + 2, w) - left)
        else:
            box = (0, 0, 1, 1)
        return even_box(*box, (h, w))

    def _pass_through(self, frame: np.ndarray) -> Picture:
        h, w = frame.shape[:2]
        opaque = [(0, 0, np.broadcast_to(np.uint8(255), (h, w)))] if self.transparent else None  # the input
        if self.layout == "side-by-side":
            return Picture(h, 2 * w, [(0, 0, frame)], self._background, opaque)
        return Picture(h, w, [(0, 0, frame)], alpha=opaque)

