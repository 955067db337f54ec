"""Seeded, calibrated stand-ins for `deca_model.tar` (the demo pack's network weights).

Random weights alone make a useless demo: in eval mode a freshly initialised ResNet's activations drift
arbitrarily far from its BatchNorm statistics, and the code it regresses lands anywhere. So, starting from a
seeded initialisation:

1. Encoders: each residual branch's last BatchNorm is damped (`_damp_residuals`) so the pooled features still
   describe the crop, then every BatchNorm takes its running statistics from a batch of natural-looking 224x224 crops
   (scikit-image's bundled photos with crops, flips and colour jitter, plus smooth noise), measured in eval
   order so each layer sees the statistics of the already-calibrated layers before it. The first MLP layer
   is then standardised over that batch, and each row of the last layer is rescaled and shifted so the code
   slice it feeds has a plausible mean and a mild spread across images (`code_targets`).
2. D_detail: spatially smooth conv kernels, BatchNorm statistics from a batch of latents drawn from the same
   code distribution (with the weight compensating DECA's eps 0.8 so the signal keeps unit variance, and a
   shift that keeps LeakyReLU mostly linear so every latent yields a similar amplitude), the l1 columns
   weighted so jaw and exp move the map as much as the detail code does, and the last conv scaled to a
   displacement of about 0.75 mm standard deviation.

The result has exactly the official keys and shapes (`capture.nets.checkpoint_spec`). It is synthetic: the
codes depend on the image, but they do not measure the face until the heads are trained (`capture.train`,
`--config quick`: the features carry enough of the face for that).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capture.nets import (
    CODE_LAYOUT,
    DETAIL_OUT_SCALE,
    INPUT_SIZE,
    DetailGenerator,
    ResNet50Encoder,
)

N_CALIBRATION_IMAGES = 16
N_CALIBRATION_LATENTS = 8
DISPLACEMENT_STD_M = 0.00075  # target spread of D_detail's output, metres
RESIDUAL_GAIN = 0.1  # encoders: scale of each residual branch's last BatchNorm (see `_damp_residuals`)
LEAKY_OFFSET = 1.0  # BN shift before each LeakyReLU: mostly linear regime, so every latent gets a similar amplitude
JAW_STD = (0.06, 0.01, 0.01)
JAW_MEAN = (0.08, 0.0, 0.0)


def code_targets() -> tuple[Tensor, Tensor]:
    """Per-entry mean and spread of the demo E_flame code: ([236] float32, [236] float32).

    Global pose +-0.05 rad; jaw opened ~0.08 rad about x; cam = (10, 0, 0.024): the demo head's 68-landmark box
    (0.143 m, centred 0.024 m below the origin) then spans 1/1.375 of the crop, centred, as DECA's crop rule implies;
    light = soft white light, SH band 0 = 3.5 (c0 * 3.5 ~ 1) with a mild frontal (+z) and overhead (+y) term.
    """
    lay = CODE_LAYOUT
    mean = torch.zeros(lay.total)
    std = torch.zeros(lay.total)
    s = lay.slices
    std[s["shape"]] = 0.5
    std[s["tex"]] = 0.5
    std[s["exp"]] = 0.6
    pose0 = s["pose"].start
    std[pose0 : pose0 + 3] = 0.05
    mean[pose0 + 3 : pose0 + 6] = torch.tensor(JAW_MEAN)
    std[pose0 + 3 : pose0 + 6] = torch.tensor(JAW_STD)
    mean[s["cam"]] = torch.tensor([10.0, 0.0, 0.024])
    std[s["cam"]] = torch.tensor([0.3, 0.005, 0.005])
    light_mean = torch.zeros(9, 3)
    light_std = torch.full((9, 3), 0.02)
    light_mean[0], light_std[0] = 3.5, 0.15  # ambient
    light_mean[2], light_std[2] = 0.1, 0.05  # y: from above
    light_mean[3], light_std[3] = 0.3, 0.05  # z: frontal
    light_std[1] = 0.05  # x: left/right
    mean[s["light"]] = light_mean.reshape(-1)
    std[s["light"]] = light_std.reshape(-1)
    return mean, std


# ----------------------------------------------------------------------------------------------------------
# Calibration data


def _resize_square(img: np.ndarray, cx: float, cy: float, side: float) -> Tensor:
    """Square crop (zero padded outside) of an HxWx3 uint8 image -> [3, 224, 224] float32 in [0, 1]."""
    h, w = img.shape[:2]
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    n = int(round(side))
    canvas = np.zeros((n, n, 3), dtype=np.float32)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + n, w), min(y0 + n, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1, :3] / 255.0
    t = torch.from_numpy(canvas).permute(2, 0, 1)[None]
    return F.interpolate(t, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)[0]


def _calibration_images(rng: np.random.Generator, n: int = N_CALIBRATION_IMAGES) -> Tensor:
    """[n, 3, 224, 224] float32 in [0, 1]: mostly face-centred crops, a few other photos, smooth noise."""
    import skimage.data

    astronaut, chelsea, coffee = skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()
    # (image, centre x, centre y, side, centre jitter, share of the batch); the astronaut's face is at ~(228, 125)
    sources = [
        (astronaut, 228.0, 125.0, 200.0, 15.0, 0.45),
        (astronaut, 256.0, 256.0, 400.0, 60.0, 0.1),
        (chelsea, 225.0, 140.0, 220.0, 30.0, 0.15),
        (coffee, 300.0, 200.0, 300.0, 50.0, 0.15),
    ]
    counts = [int(round(share * n)) for *_, share in sources]
    n_noise = max(n - sum(counts), 1)
    out = []
    for (img, cx, cy, side, jitter, _), count in zip(sources, counts):
        for _ in range(count):
            crop = _resize_square(
                img,
                cx + rng.uniform(-jitter, jitter),
                cy + rng.uniform(-jitter, jitter),
                side * rng.uniform(0.85, 1.15),
            )
            if rng.random() < 0.5:
                crop = crop.flip(-1)
            gain = torch.from_numpy(rng.uniform(0.8, 1.2, size=(3, 1, 1)).astype(np.float32))
            crop = (crop * gain * rng.uniform(0.8, 1.2)).clamp(0.0, 1.0)
            out.append(crop)
    for _ in range(n_noise):
        coarse = torch.from_numpy(rng.uniform(0.0, 1.0, size=(1, 3, 6, 6)).astype(np.float32))
        smooth = F.interpolate(coarse, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", align_corners=False)
        out.append(smooth[0].clamp(0.0, 1.0))
    return torch.stack(out[:n])


def _detail_latents(gen: torch.Generator, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Latents drawn from the demo code distribution: jaw [n,3], exp [n,50], detail [n,128]."""
    jaw = torch.tensor(JAW_MEAN) + torch.tensor(JAW_STD) * torch.randn(n, 3, generator=gen)
    exp = 0.6 * torch.randn(n, CODE_LAYOUT.n_exp, generator=gen)
    detail = torch.randn(n, CODE_LAYOUT.n_detail, generator=gen)
    return jaw, exp, detail


# ----------------------------------------------------------------------------------------------------------
# Encoders


@torch.no_grad()
def _damp_residuals(backbone: nn.Module, gain: float = RESIDUAL_GAIN) -> None:
    """Scale the last BatchNorm of every residual branch by `gain` (the zero-init-residual idea, not quite zero).

    Sixteen random bottlenecks at full strength wash the image out: their pooled features end up nearly the same
    for every face, and nothing trained on top of them can read the expression (a ridge readout of the pooled
    features on held-out demo renders: jaw correlation 0.16). With damped branches each stage is mostly its
    shortcut, the features stay a multi-scale summary of the crop (jaw 0.73 with the same readout), and
    fine-tuning E_flame's head on them (`coarse.train_backbone = false`) learns something real.
    """
    for m in backbone.modules():
        if hasattr(m, "bn3") and isinstance(m.bn3, nn.BatchNorm2d):
            m.bn3.weight.mul_(gain)


@torch.no_grad()
def _calibrate_batchnorms(backbone: nn.Module, images: Tensor) -> Tensor:
    """Set every BN's running stats from `images`, in eval order; returns the backbone features [N, 2048]."""

    def take_stats(module: nn.BatchNorm2d, inputs: tuple[Tensor]) -> None:
        # A training-mode batch_norm with momentum 1 overwrites the running stats with this batch's (one fused
        # pass; the variance is the unbiased one, off from the biased by a factor N*H*W/(N*H*W - 1) >= 1175/1176).
        F.batch_norm(inputs[0], module.running_mean, module.running_var, None, None, True, 1.0, module.eps)
        module.num_batches_tracked.fill_(1)

    hooks = [m.register_forward_pre_hook(take_stats) for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        backbone.eval()
        features = backbone(images)
    finally:
        for h in hooks:
            h.remove()
    return features


@torch.no_grad()
def _calibrate_head(
    layers: nn.Sequential, features: Tensor, mean: Tensor, std: Tensor, tied_rows: dict[int, int]
) -> None:
    """Standardise Linear 0 over `features`; give each output of Linear 2 the target mean and spread.

    `tied_rows` {row: source row} makes rows share a direction (RGB channels of one SH coefficient), so the
    light varies in intensity more than in hue.
    """
    lin0, lin2 = layers[0], layers[2]
    pre = features @ lin0.weight.T + lin0.bias
    m0, s0 = pre.mean(0), pre.std(0).clamp_min(1e-6)
    lin0.weight.div_(s0[:, None])
    lin0.bias.sub_(m0).div_(s0)
    hidden = torch.relu(features @ lin0.weight.T + lin0.bias)

    for row, src in tied_rows.items():
        lin2.weight[row] = 0.9 * lin2.weight[src] + math.sqrt(1 - 0.9**2) * lin2.weight[row]
    proj = hidden @ lin2.weight.T
    pm, ps = proj.mean(0), proj.std(0).clamp_min(1e-8)
    gain = std / ps
    lin2.weight.mul_(gain[:, None])
    lin2.bias.copy_(mean - pm * gain)


def _light_ties() -> dict[int, int]:
    start = CODE_LAYOUT.slices["light"].start
    return {start + 3 * k + c: start + 3 * k for k in range(9) for c in (1, 2)}


# ----------------------------------------------------------------------------------------------------------
# Detail generator


def _smooth_convs(d_detail: DetailGenerator, gen: torch.Generator) -> None:
    """Conv kernels = random channel mixing x a 3x3 binomial blur: smooth maps without checkerboards."""
    blur = torch.tensor([1.0, 2.0, 1.0])
    blur = torch.outer(blur, blur) / 16.0
    for m in d_detail.conv_blocks:
        if isinstance(m, nn.Conv2d):
            cout, cin = m.weight.shape[:2]
            mix = torch.randn(cout, cin, generator=gen) / math.sqrt(cin)
            m.weight.copy_(mix[:, :, None, None] * blur)
            m.bias.zero_()


@torch.no_grad()
def _calibrate_detail(d_detail: DetailGenerator, gen: torch.Generator) -> None:
    _smooth_convs(d_detail, gen)
    jaw, exp, detail = _detail_latents(gen, N_CALIBRATION_LATENTS)

    # Give jaw, exp and the detail code comparable pull on the 8x8 seed, so wrinkles follow the expression.
    lin = d_detail.l1[0]
    fan_in_var = lin.weight.var()
    for cols, typical_var, share in (
        (slice(0, 3), sum(s * s for s in JAW_STD), 0.25),
        (slice(3, 53), 50 * 0.36, 0.35),
        (slice(53, 181), 128 * 1.0, 0.4),
    ):
        lin.weight[:, cols] *= torch.sqrt(share / (fan_in_var * typical_var))

    d_detail.eval()
    x = d_detail.l1(torch.cat([jaw, exp, detail], dim=1)).view(jaw.shape[0], 128, 8, 8)
    blocks = list(d_detail.conv_blocks)
    for i, m in enumerate(blocks):
        if isinstance(m, nn.BatchNorm2d):
            var = x.var(dim=(0, 2, 3), unbiased=False)
            m.running_mean.copy_(x.mean(dim=(0, 2, 3)))
            m.running_var.copy_(var)
            m.num_batches_tracked.fill_(1)
            # Undo the shrinking of a large eps (0.8) so every block passes on unit-variance activations.
            m.weight.copy_(torch.sqrt((var + m.eps) / var.clamp_min(1e-12)))
            m.bias.fill_(LEAKY_OFFSET)
        if isinstance(m, nn.Conv2d) and i == len(blocks) - 2:
            pre = F.conv2d(x, m.weight, None, padding=1)
            target = math.atanh(DISPLACEMENT_STD_M / DETAIL_OUT_SCALE)
            gain = target / pre.std().clamp_min(1e-12)
            m.weight.mul_(gain)
            m.bias.fill_(-(pre.mean() * gain).item())
        x = m(x)


# ----------------------------------------------------------------------------------------------------------


def _export(module: nn.Module) -> dict[str, Tensor]:
    sd = {}
    for k, v in module.state_dict().items():
        v = v.detach().to("cpu")
        sd[k] = v.to(torch.int64) if k.endswith("num_batches_tracked") else v.to(torch.float32)
        sd[k] = sd[k].clone().contiguous()
    return sd


def make_demo_checkpoint(seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """{"E_flame", "E_detail", "D_detail": state dict} with the official keys and shapes, deterministic in `seed`.

    CPU float32 tensors (num_batches_tracked int64). Takes a few seconds (two ResNet-50 passes over
    `N_CALIBRATION_IMAGES` images). Does not touch torch's global random state.
    """
    images = _calibration_images(np.random.default_rng(seed))
    gen = torch.Generator().manual_seed(seed)
    mean, std = code_targets()
    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        e_flame = ResNet50Encoder(CODE_LAYOUT.total)
        e_detail = ResNet50Encoder(CODE_LAYOUT.n_detail)
        d_detail = DetailGenerator()

    for name, enc, m, s, ties in (
        ("E_flame", e_flame, mean, std, _light_ties()),
        ("E_detail", e_detail, torch.zeros(CODE_LAYOUT.n_detail), torch.ones(CODE_LAYOUT.n_detail), {}),
    ):
        _damp_residuals(enc.encoder)
        features = _calibrate_batchnorms(enc.encoder, images)
        _calibrate_head(enc.layers, features, m, s, ties)
        out[name] = _export(enc.eval())

    _calibrate_detail(d_detail, gen)
    out["D_detail"] = _export(d_detail.eval())
    return out
