"""Coarse stage: E_flame trained by analysis-by-synthesis (DECA section 4.1 losses).

Per batch: E_flame -> codes -> FLAME, albedo, SH light -> render; losses: landmark re-projection, eye closure,
masked photometric, identity (optional network), shape consistency (shape codes swapped between images of the
same person, every other code kept, re-rendered and compared with the image again), and the regularisers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..deca import Codes
from . import losses as L
from .dataset import Batch, group_permutation
from .loop import TrainableEncoder, feature_cache_files, prepare_stage, run_stage
from .renderer import TrainRenderer


def coarse_terms(renderer: TrainRenderer, codes: Codes, batch: Batch, identity_net: Optional[nn.Module],
                 weights: dict) -> dict[str, torch.Tensor]:
    """Unweighted coarse-stage loss terms for one batch (keys match the `w_<term>` weights of `weights`).

    Terms whose weight is 0 are not computed, and nothing is rendered when no image term is left: a
    landmark-only run (`pretrain`) costs FLAME on the landmark triangles per step instead of three renders.
    """
    on = lambda term: weights[f"w_{term}"] != 0  # noqa: E731
    use_identity = on("identity") and identity_net is not None
    renders = on("photo") or use_identity or on("shape_consistency")
    geo = renderer.geometry(codes) if renders else None
    landmarks = geo.landmarks if renders else renderer.landmarks(codes)
    terms = {}
    if on("landmark"):
        terms["landmark"] = L.landmark_loss(landmarks, batch.landmarks)
    if on("eye"):
        terms["eye"] = L.eye_closure_loss(landmarks, batch.landmarks)
    if renders:
        albedo = renderer.albedo(codes.tex)
    if on("photo") or use_identity:
        rend = renderer.render(geo, albedo, codes.light)
        if on("photo"):
            terms["photo"] = L.photometric_loss(rend.image, batch.images, batch.masks * rend.alpha)
        if use_identity:
            terms["identity"] = L.identity_loss(identity_net, L.composite(rend.image, rend.alpha, batch.images),
                                                batch.images)
    if on("shape_consistency"):
        perm = group_permutation(batch.identity)
        geo_s = renderer.geometry(codes.replace(shape=codes.shape[perm]))
        rend_s = renderer.render(geo_s, albedo, codes.light)
        terms["shape_consistency"] = (L.landmark_loss(geo_s.landmarks, batch.landmarks)
                                      + L.photometric_loss(rend_s.image, batch.images, batch.masks * rend_s.alpha))
    for term, code in (("reg_shape", codes.shape), ("reg_exp", codes.exp), ("reg_tex", codes.tex)):
        if on(term):
            terms[term] = L.shape_regulariser(code)
    if on("reg_light"):
        terms["reg_light"] = L.light_regulariser(codes.light)
    return terms


def weighted_total(terms: dict[str, torch.Tensor], stage_cfg: dict) -> torch.Tensor:
    missing = [k for k in terms if f"w_{k}" not in stage_cfg]
    if missing:
        raise KeyError(f"no weight w_{missing[0]} in the config for loss term {missing[0]!r}")
    return sum(stage_cfg[f"w_{k}"] * v for k, v in terms.items())


def train_coarse(data_dir: str | Path, out: str | Path, cfg: dict, *, assets: Optional[str] = None,
                 init: Optional[str | Path] = None, resume: Optional[str | Path] = None,
                 identity_net: Optional[nn.Module] = None, show_progress: bool = True,
                 stage: str = "coarse") -> list[dict]:
    """Run the coarse stage; writes RUN/pack/deca_model.tar, RUN/<stage>_log.csv, RUN/<stage>_train_state.pt.

    stage: the config section to run, "coarse" or "pretrain" (DECA's first step: the same stage with landmark
    and eye losses and the regularisers only; its zero-weight image terms are not even rendered).
    init: checkpoint to start from (default: the model pack's own); resume: an earlier run folder of this stage
    (its weights, optimiser state and step). identity_net: see `features.IdentityNetwork` (None = term skipped).
    Returns the logged rows (step, total, every term).
    """
    if stage not in ("coarse", "pretrain"):
        raise ValueError(f"train_coarse runs the 'coarse' or 'pretrain' section, not {stage!r}")
    out = Path(out)
    inputs = prepare_stage(data_dir, cfg, assets=assets, init=init, resume=resume)
    networks, renderer = inputs.networks, inputs.renderer
    stage_cfg = cfg[stage]
    e_flame = TrainableEncoder(networks["E_flame"], stage_cfg["train_backbone"], cfg["data"]["feature_precision"])
    if not stage_cfg["train_backbone"]:
        reuse, save = feature_cache_files("E_flame", out, init, resume)
        e_flame.standardise_head(inputs.data, reuse, save)
    for name in ("E_detail", "D_detail"):
        networks[name].requires_grad_(False)

    def step(batch: Batch):
        codes = Codes.from_network_outputs(e_flame(batch), batch.images.new_zeros(batch.size, 128))
        terms = coarse_terms(renderer, codes, batch, identity_net, stage_cfg)
        return terms, weighted_total(terms, stage_cfg)

    return run_stage(stage, data=inputs.data, pack_dir=inputs.pack_dir, out=out, networks=networks,
                     params=e_flame.param_groups(stage_cfg["lr"], stage_cfg["lr_backbone"]), step_fn=step, cfg=cfg,
                     resume=resume, show_progress=show_progress, modules_for_train=e_flame.train,
                     fresh_crops=stage_cfg["train_backbone"], before_save=e_flame.sync)
