"""DECA's training losses as pure functions of tensors (the networks they need are passed in).

Shape vocabulary: B batch, S render side, L = 68 landmarks. Images are RGB in 0..1; landmarks in crop NDC.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

# iBUG-68 eyelids: (upper, lower) landmark pairs facing each other across each eye
EYELID_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))


def landmark_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Re-projection loss: mean over landmarks of the L1 distance in x and y. pred/target [B, L, 2] NDC."""
    return (pred - target).abs().sum(-1).mean()


def eye_closure_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between predicted and target upper-to-lower eyelid offsets (DECA's eye-closure loss). [B, 68, 2]."""
    upper = [u for u, _ in EYELID_PAIRS]
    lower = [lo for _, lo in EYELID_PAIRS]
    d_pred = pred[:, upper] - pred[:, lower]
    d_target = target[:, upper] - target[:, lower]
    return (d_pred - d_target).abs().sum(-1).mean()


def photometric_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked L1 colour error: sum(mask |pred - target|) / (3 sum(mask)).

    pred/target [B, 3, S, S], mask [B, 1, S, S]."""
    return (mask * (pred - target).abs()).sum() / (3 * mask.sum()).clamp(min=1.0)


def composite(render: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The render pasted into the photo where it covers it (what the feature networks compare)."""
    return render * alpha + background * (1 - alpha)


def identity_loss(network: Callable[[torch.Tensor], torch.Tensor], pred: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of face-recognition features of the render and the photo. Images [B, 3, S, S].

    The photo's features are a fixed target (no gradient through them).
    """
    f_pred = network(pred)
    with torch.no_grad():
        f_target = network(target)
    return (1 - F.cosine_similarity(f_pred.flatten(1), f_target.flatten(1), dim=1)).mean()


def shape_regulariser(code: torch.Tensor) -> torch.Tensor:
    """sum(code^2) / 2 per image, averaged over the batch (for shape, expression and albedo codes)."""
    return (code ** 2).sum(-1).mean() / 2


def light_regulariser(light: torch.Tensor) -> torch.Tensor:
    """Mean squared deviation of every SH coefficient from its RGB mean (keeps the light near-white). [B, 9, 3]."""
    return ((light - light.mean(-1, keepdim=True)) ** 2).mean()


def mrf_layer_loss(gen: torch.Tensor, target: torch.Tensor, bandwidth: float = 0.5, eps: float = 1e-5) -> torch.Tensor:
    """Implicit-diversity MRF loss on one feature layer (Wang et al. 2018), 1x1 patches.

    gen/target [B, C, H, W]. Features are centred on the target's mean and L2-normalised; cosine distances are
    made relative to each generated feature's nearest target feature, turned into affinities
    exp((1 - d_rel) / bandwidth), normalised over target features; the loss is -log of the mean over target
    features of their best affinity. 0 <= loss; it is smallest when every target feature has a close match.
    """
    mean = target.mean(dim=(0, 2, 3), keepdim=True)
    g = F.normalize((gen - mean).flatten(2), dim=1)  # [B, C, Ng]
    t = F.normalize((target - mean).flatten(2), dim=1)  # [B, C, Nt]
    cos = torch.einsum("bcg,bct->bgt", g, t)
    dist = (1 - cos) / 2
    rel = dist / (dist.min(dim=2, keepdim=True).values + eps)
    affinity = torch.exp((1 - rel) / bandwidth)
    cx = affinity / affinity.sum(dim=2, keepdim=True)
    best = cx.max(dim=1).values.mean(dim=1)  # [B]
    return -torch.log(best + eps).mean()


def mrf_loss(network: Callable[[torch.Tensor], Mapping[str, torch.Tensor]], pred: torch.Tensor, target: torch.Tensor,
             layers: Sequence[str]) -> torch.Tensor:
    """ID-MRF over the named feature layers of `network` (a dict of feature maps per image batch)."""
    f_pred = network(pred)
    with torch.no_grad():
        f_target = network(target)
    missing = [name for name in layers if name not in f_pred]
    if missing:
        raise KeyError(f"mrf_loss: the feature network gives no layer {missing}; it gives {sorted(f_pred)}")
    return sum(mrf_layer_loss(f_pred[name], f_target[name]) for name in layers) / len(layers)


def symmetry_loss(uv_z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Soft left-right symmetry of the displacement in UV: mean of weight |z - mirror(z)|.

    uv_z [B, 1, S, S]; weight [B or 1, 1, S, S] (e.g. face mask x not-visible: symmetry fills the hidden side).
    FLAME's UV layout mirrors the face about u = 0.5, so mirroring is a flip of the columns.
    """
    return (weight * (uv_z - uv_z.flip(-1)).abs()).sum() / weight.expand_as(uv_z).sum().clamp(min=1.0)


def displacement_regulariser(uv_z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |z| over the face (mask [S, S] or [1, 1, S, S]); metres scaled to millimetres so weights stay readable."""
    mask = mask.reshape(1, 1, *uv_z.shape[-2:])
    return (mask * uv_z.abs()).sum() * 1000 / (mask.sum() * uv_z.shape[0]).clamp(min=1.0)


def displacement_smoothness(uv_z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |Laplacian of z| over the face (mm); penalises noise, keeps creases that the images support."""
    kernel = uv_z.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    lap = F.conv2d(uv_z, kernel, padding=1)
    mask = mask.reshape(1, 1, *uv_z.shape[-2:])
    return (mask * lap.abs()).sum() * 1000 / (mask.sum() * uv_z.shape[0]).clamp(min=1.0)


def detail_consistency_loss(swapped_render: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The render with another same-person image's detail code (own expression and jaw) must still match the
    image: the photometric error of that render. [B, 3, S, S] / [B, 1, S, S]."""
    return photometric_loss(swapped_render, image, mask)
