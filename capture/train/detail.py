"""Detail stage: E_detail and D_detail trained with E_flame frozen (DECA section 4.2 losses).

Losses: photometric with the detail normals, ID-MRF on VGG19 features (optional network), soft symmetry of the
displacement in UV, displacement regularisation (magnitude and smoothness), and detail consistency: the detail
codes of two images of the same person are swapped while each image keeps its own expression and jaw, and the
re-render must still match its image, so the detail code can only hold what does not change with expression.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..deca import Codes
from ..nets import DetailGenerator, detail_input
from . import losses as L
from .coarse import weighted_total
from .dataset import Batch, group_permutation
from .loop import TrainableEncoder, encoder_input, feature_cache_files, freeze_batchnorm, prepare_stage, run_stage
from .renderer import Rendered, TrainGeometry, TrainRenderer


def render_with_detail(renderer: TrainRenderer, d_detail: DetailGenerator, geo: TrainGeometry,
                       albedo: torch.Tensor, codes: Codes, detail: torch.Tensor) -> tuple[Rendered, torch.Tensor]:
    """D_detail(jaw, exp, detail) -> detail normals -> lit render. Returns (render, uv_z [B, 1, 256, 256])."""
    uv_z = d_detail(detail_input(codes.pose[:, 3:6], codes.exp, detail))
    with torch.no_grad():
        uv_geo = renderer.uv_geometry(geo)
    normals = renderer.detail_normals(uv_geo, uv_z)
    return renderer.render(geo, albedo, codes.light, normals), uv_z


def _twice(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t, t], 0)


def detail_consistency(renderer: TrainRenderer, d_detail: DetailGenerator, geo: TrainGeometry, albedo: torch.Tensor,
                       codes: Codes, detail: torch.Tensor, identity: torch.Tensor, images: torch.Tensor,
                       masks: torch.Tensor) -> torch.Tensor:
    """Swap detail codes within each identity group (own jaw, expression, geometry, albedo and light kept),
    re-render, and measure the photometric error against each image's own photo."""
    perm = group_permutation(identity)
    rend, _ = render_with_detail(renderer, d_detail, geo, albedo, codes, detail[perm])
    return L.detail_consistency_loss(rend.image, images, masks * rend.alpha)


def detail_terms(renderer: TrainRenderer, d_detail: DetailGenerator, codes: Codes, detail: torch.Tensor,
                 batch: Batch, vgg: Optional[nn.Module], mrf_layers) -> dict[str, torch.Tensor]:
    """Unweighted detail-stage loss terms (keys match the `w_<term>` config weights)."""
    with torch.no_grad():
        geo = renderer.geometry(codes)
        albedo = renderer.albedo(codes.tex)
    # the image's own detail code and a same-person image's code, rendered as one batch of 2B
    b = detail.shape[0]
    perm = group_permutation(batch.identity)
    geo2 = TrainGeometry(*(_twice(t) for t in (geo.vertices, geo.normals, geo.screen, geo.landmarks)))
    codes2 = Codes(**{k: _twice(getattr(codes, k)) for k in ("shape", "tex", "exp", "pose", "cam", "light", "detail")})
    both, uv_z2 = render_with_detail(renderer, d_detail, geo2, _twice(albedo), codes2,
                                     torch.cat([detail, detail[perm]]))
    rend = Rendered(both.image[:b], both.alpha[:b], both.uv[:b])
    uv_z = uv_z2[:b]
    mask = batch.masks * rend.alpha
    terms = {"photo": L.photometric_loss(rend.image, batch.images, mask)}
    if vgg is not None:
        terms["mrf"] = L.mrf_loss(vgg, L.composite(rend.image, rend.alpha, batch.images), batch.images, mrf_layers)
    face = renderer.assets.face_eye_mask
    with torch.no_grad():  # hidden texels (normal facing away from the camera) lean most on symmetry
        facing = renderer.assets.uv_sampler.sample(geo.normals)[:, 2:3].clamp(0, 1)
    terms["sym"] = L.symmetry_loss(uv_z, face[None, None] * (1 - facing))
    terms["reg_z"] = L.displacement_regulariser(uv_z, face)
    terms["reg_diff"] = L.displacement_smoothness(uv_z, face)
    terms["detail_consistency"] = L.detail_consistency_loss(both.image[b:], batch.images, batch.masks * both.alpha[b:])
    return terms


def train_detail(data_dir: str | Path, out: str | Path, cfg: dict, *, assets: Optional[str] = None,
                 init: Optional[str | Path] = None, resume: Optional[str | Path] = None,
                 vgg: Optional[nn.Module] = None, show_progress: bool = True) -> list[dict]:
    """Run the detail stage (E_flame frozen). init: usually the coarse run's folder. See `train_coarse`."""
    out = Path(out)
    inputs = prepare_stage(data_dir, cfg, assets=assets, init=init, resume=resume)
    networks, renderer = inputs.networks, inputs.renderer
    stage_cfg = cfg["detail"]
    precision = cfg["data"]["feature_precision"]
    e_flame = TrainableEncoder(networks["E_flame"], False, precision)  # cached codes per crop when fine-tuning
    networks["E_flame"].requires_grad_(False)
    if not stage_cfg["train_backbone"]:  # E_flame's features of the same crops: from the coarse run when it kept them
        e_flame.cache_all(inputs.data, *feature_cache_files("E_flame", out, init, resume))
    e_detail = TrainableEncoder(networks["E_detail"], stage_cfg["train_backbone"], precision)
    if not stage_cfg["train_backbone"]:
        reuse, save = feature_cache_files("E_detail", out, init, resume)
        e_detail.standardise_head(inputs.data, reuse, save)
    d_detail = networks["D_detail"].requires_grad_(True)
    fresh = stage_cfg["train_backbone"]

    def train_mode():
        e_detail.train()
        d_detail.train()
        freeze_batchnorm(d_detail)

    def step(batch: Batch):
        with torch.no_grad():
            flame_code = networks["E_flame"].eval()(encoder_input(batch.images)) if fresh else e_flame(batch)
        codes = Codes.from_network_outputs(flame_code, e_detail(batch))
        terms = detail_terms(renderer, d_detail, codes, codes.detail, batch, vgg, cfg["networks"]["mrf_layers"])
        return terms, weighted_total(terms, stage_cfg)

    params = (e_detail.param_groups(stage_cfg["lr"], stage_cfg["lr_backbone"])
              + [{"params": list(d_detail.parameters())}])
    return run_stage("detail", data=inputs.data, pack_dir=inputs.pack_dir, out=out, networks=networks, params=params,
                     step_fn=step, cfg=cfg, resume=resume, show_progress=show_progress,
                     modules_for_train=train_mode, fresh_crops=fresh, before_save=e_detail.sync)

