"""DECA's three networks and the layout of the coarse code (docs/formats.md sections 2.2-2.5, 8).

- `CODE_LAYOUT`: the one description of E_flame's 236-d output (shape | tex | exp | pose | cam | light).
- `ResNet50Encoder`: E_flame (out 236) and E_detail (out 128); ResNet-50 in plain torch with torchvision's
  parameter names under `encoder.`, then a two-layer MLP under `layers.`; `fold_batchnorms`: a frozen
  backbone's inference copy.
- `DetailGenerator`: D_detail, (jaw | exp | detail) -> UV displacement [B, 1, 256, 256] in FLAME metres.
- `GRAPHS` / `graph_spec`: each network's input and output tensors (names, shapes), read by the exporter and
  every inference backend.
- `checkpoint_spec`, `validate_checkpoint`, `build_networks`: the key/shape contract of `deca_model.tar`
  and strict loading (DECA's own loader silently skips bad keys; this one refuses them).

Shape vocabulary: B batch, H/W image rows/columns. Images are RGB float32 in [0, 1], no normalisation.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from .conventions import INPUT_SIZE, UV_SIZE

FEATURE_DIM = 2048
DETAIL_LATENT = 181  # jaw 3 + exp 50 + detail 128
DETAIL_OUT_SCALE = 0.01  # tanh output x 0.01 -> +-1 cm in FLAME metres
NETWORK_NAMES = ("E_flame", "E_detail", "D_detail")


# ----------------------------------------------------------------------------------------------------------
# Code layout


@dataclass(frozen=True)
class CodeLayout:
    """Order and sizes of the 236-d E_flame code, plus the size of E_detail's code.

    `split` / `join` are exact inverses; `light` is the only slice that changes shape ([B, 27] <-> [B, 9, 3],
    9 SH coefficients x RGB). `pose` is [global axis-angle 3 | jaw axis-angle 3].
    """

    n_shape: int = 100
    n_tex: int = 50
    n_exp: int = 50
    n_pose: int = 6
    n_cam: int = 3
    n_light: int = 27
    n_detail: int = 128

    @property
    def names(self) -> tuple[str, ...]:
        return ("shape", "tex", "exp", "pose", "cam", "light")

    @property
    def sizes(self) -> dict[str, int]:
        return {
            "shape": self.n_shape,
            "tex": self.n_tex,
            "exp": self.n_exp,
            "pose": self.n_pose,
            "cam": self.n_cam,
            "light": self.n_light,
        }

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    @property
    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, size in self.sizes.items():
            out[name] = slice(start, start + size)
            start += size
        return out

    def split(self, code: Tensor) -> dict[str, Tensor]:
        """[B, 236] -> {shape [B,100], tex [B,50], exp [B,50], pose [B,6], cam [B,3], light [B,9,3]} (views)."""
        if code.ndim != 2 or code.shape[1] != self.total:
            raise ValueError(f"code must be [B, {self.total}], got {tuple(code.shape)}")
        parts = {name: code[:, sl] for name, sl in self.slices.items()}
        parts["light"] = parts["light"].reshape(code.shape[0], self.n_light // 3, 3)
        return parts

    def join(self, parts: Mapping[str, Tensor]) -> Tensor:
        """Inverse of `split`: dict of slices (light [B,9,3] or [B,27]) -> [B, 236]."""
        missing = [n for n in self.names if n not in parts]
        if missing:
            raise ValueError(f"code parts missing {missing}; expected keys {list(self.names)}")
        batch = parts["shape"].shape[0]
        flat = []
        for name, size in self.sizes.items():
            t = parts[name].reshape(batch, -1)
            if t.shape[1] != size:
                raise ValueError(f"code part {name!r} has {t.shape[1]} values per item, expected {size}")
            flat.append(t)
        return torch.cat(flat, dim=1)


CODE_LAYOUT = CodeLayout()


# ----------------------------------------------------------------------------------------------------------
# The networks' I/O contract: what each exported graph / inference backend takes and gives


@dataclass(frozen=True)
class GraphSpec:
    """One network's tensors without the batch axis ([B, *input_shape] -> [B, *output_shape]), float32."""

    name: str
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]
    attr: str  # attribute of `Networks`

    def module(self, networks: "Networks") -> nn.Module:
        return getattr(networks, self.attr)

    def example(self, batch: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """A plausible random input [batch, *input_shape] float32: images in [0, 1], latents ~ N(0, 1)."""
        shape = (batch, *self.input_shape)
        if self.input_name == "image":
            return torch.rand(shape, generator=generator)
        return torch.randn(shape, generator=generator)


GRAPHS: dict[str, GraphSpec] = {
    "E_flame": GraphSpec("E_flame", "image", (3, INPUT_SIZE, INPUT_SIZE), "code", (CODE_LAYOUT.total,), "e_flame"),
    "E_detail": GraphSpec("E_detail", "image", (3, INPUT_SIZE, INPUT_SIZE), "detail", (CODE_LAYOUT.n_detail,),
                          "e_detail"),
    "D_detail": GraphSpec("D_detail", "latent", (DETAIL_LATENT,), "uv_z", (1, UV_SIZE, UV_SIZE), "d_detail"),
}
assert tuple(GRAPHS) == NETWORK_NAMES


def graph_spec(name: str) -> GraphSpec:
    """The contract of network `name`; ValueError naming the networks for any other name."""
    if name not in GRAPHS:
        raise ValueError(f"unknown network {name!r}; expected one of {list(GRAPHS)}")
    return GRAPHS[name]


# ----------------------------------------------------------------------------------------------------------
# ResNet-50 encoder (torchvision names, DECA's fixed 7x7 pool)


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block: 1x1 reduce, 3x3 (carries the stride), 1x1 expand x4, residual."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50Backbone(nn.Module):
    """ResNet-50 without `fc`: [B, 3, 224, 224] -> [B, 2048] (AvgPool2d(7, stride=1) then flatten)."""

    blocks = (3, 4, 6, 3)
    widths = (64, 128, 256, 512)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        for i, (n_blocks, width) in enumerate(zip(self.blocks, self.widths)):
            stride = 1 if i == 0 else 2
            layer = []
            for b in range(n_blocks):
                layer.append(Bottleneck(in_ch, width, stride if b == 0 else 1))
                in_ch = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self._init_like_torchvision()

    def _init_like_torchvision(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m.weight.is_meta:  # shapes only (checkpoint_spec): meta normal_() imports torch._dynamo (~1 s)
                    continue
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def fold_batchnorms(backbone: ResNet50Backbone) -> ResNet50Backbone:
    """A copy of `backbone` for inference in torch: each BatchNorm folded (with its running statistics) into the
    convolution before it, as ONNX Runtime's graph optimiser does. The same function (float32: within ~1e-6
    relative), a third fewer passes over the activations; ~15 % faster on the CPU. `backbone` is unchanged."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(backbone).eval().requires_grad_(False)

    def fold(owner: nn.Module, conv: str, bn: str) -> None:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, nn.Identity())

    fold(net, "conv1", "bn1")
    for block in net.modules():
        if isinstance(block, Bottleneck):
            for i in (1, 2, 3):
                fold(block, f"conv{i}", f"bn{i}")
            if block.downsample is not None:
                fold(block.downsample, "0", "1")
    return net


class ResNet50Encoder(nn.Module):
    """DECA's ResnetEncoder: [B, 3, 224, 224] RGB in [0, 1] -> [B, out_size] float32, no output activation.

    E_flame is `ResNet50Encoder(236)`, E_detail is `ResNet50Encoder(128)`.
    """

    def __init__(self, out_size: int):
        super().__init__()
        self.out_size = out_size
        self.encoder = ResNet50Backbone()
        self.layers = nn.Sequential(nn.Linear(FEATURE_DIM, 1024), nn.ReLU(), nn.Linear(1024, out_size))

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(
                f"encoder input must be [B, 3, {INPUT_SIZE}, {INPUT_SIZE}] (DECA's AvgPool2d(7) fixes the size), "
                f"got {tuple(images.shape)}; crop and resize the face to {INPUT_SIZE}x{INPUT_SIZE} first"
            )
        return self.layers(self.encoder(images))


# ----------------------------------------------------------------------------------------------------------
# Detail generator


def detail_input(jaw: Tensor, exp: Tensor, detail: Tensor) -> Tensor:
    """D_detail's latent in DECA's order: jaw [B,3] | exp [B,50] | detail [B,128] -> [B,181] (docs/formats.md 8.1)."""
    for name, t, n in (("jaw", jaw, 3), ("exp", exp, CODE_LAYOUT.n_exp), ("detail", detail, CODE_LAYOUT.n_detail)):
        if t.ndim != 2 or t.shape[1] != n:
            raise ValueError(f"detail_input: {name} must be [B, {n}], got {tuple(t.shape)}")
    return torch.cat([jaw, exp, detail], dim=1)


class DetailGenerator(nn.Module):
    """DECA's D_detail: latent [B, 181] (see `detail_input`) -> UV displacement [B, 1, 256, 256] in metres.

    Five bilinear x2 upsamplings from 8x8. The BatchNorms after the convs use eps 0.8 (DECA passes 0.8
    positionally, docs/formats.md 8.2); the first one uses the default 1e-5.
    """

    def __init__(self):
        super().__init__()
        self.l1 = nn.Sequential(nn.Linear(DETAIL_LATENT, 128 * 8 * 8))

        def up() -> nn.Module:
            return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

        blocks: list[nn.Module] = [nn.BatchNorm2d(128)]
        for cin, cout in ((128, 128), (128, 64), (64, 64), (64, 32), (32, 16)):
            blocks += [up(), nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, 0.8), nn.LeakyReLU(0.2)]
        blocks += [nn.Conv2d(16, 1, 3, padding=1), nn.Tanh()]
        self.conv_blocks = nn.Sequential(*blocks)

    def forward(self, latent: Tensor) -> Tensor:
        if latent.ndim != 2 or latent.shape[1] != DETAIL_LATENT:
            raise ValueError(
                f"D_detail input must be [B, {DETAIL_LATENT}] = detail_input(jaw, exp, detail), "
                f"got {tuple(latent.shape)}"
            )
        x = self.l1(latent).view(latent.shape[0], 128, 8, 8)
        return self.conv_blocks(x) * DETAIL_OUT_SCALE


# ----------------------------------------------------------------------------------------------------------
# Checkpoint contract and strict loading


def _new_module(name: str) -> nn.Module:
    if name == "E_flame":
        return ResNet50Encoder(CODE_LAYOUT.total)
    if name == "E_detail":
        return ResNet50Encoder(CODE_LAYOUT.n_detail)
    if name == "D_detail":
        return DetailGenerator()
    raise KeyError(f"unknown network {name!r}; expected one of {NETWORK_NAMES}")


def checkpoint_spec() -> dict[str, dict[str, tuple[int, ...]]]:
    """Every state-dict key and shape of deca_model.tar: {"E_flame"|"E_detail"|"D_detail": {key: shape}}.

    Built on the `meta` device, so no memory is allocated, once per process (every pack load checks against it;
    building the three modules takes ~0.5 s); each call returns its own dicts. Includes `num_batches_tracked`
    (shape ()).
    """
    return {name: dict(keys) for name, keys in _checkpoint_spec().items()}


@functools.lru_cache(maxsize=None)
def _checkpoint_spec() -> dict[str, dict[str, tuple[int, ...]]]:
    with torch.device("meta"):
        return {name: {k: tuple(v.shape) for k, v in _new_module(name).state_dict().items()} for name in NETWORK_NAMES}


@dataclass
class Networks:
    """The three DECA networks, in eval mode. Weights share storage with the checkpoint they came from."""

    e_flame: ResNet50Encoder
    e_detail: ResNet50Encoder
    d_detail: DetailGenerator

    def to(self, device: torch.device | str) -> "Networks":
        for m in (self.e_flame, self.e_detail, self.d_detail):
            m.to(device)
        return self


def _optional(key: str) -> bool:
    # Checkpoints saved before torch 0.4.1 carry no BN batch counters; they do not affect inference.
    return key.endswith("num_batches_tracked")


def _list_some(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else f" ({len(keys)})"
    return shown + more


def state_dict_problems(name: str, state_dict: Mapping[str, Tensor], spec: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Human-readable list of what is wrong with one network's state dict against its spec ([] = fine)."""
    problems = []
    missing = [k for k in spec if k not in state_dict and not _optional(k)]
    unexpected = [k for k in state_dict if k not in spec]
    mismatched = [
        f"{k}: expected {spec[k]}, found {tuple(state_dict[k].shape)}"
        for k in spec
        if k in state_dict and tuple(state_dict[k].shape) != spec[k]
    ]
    not_tensors = [k for k in state_dict if k in spec and not isinstance(state_dict[k], Tensor)]
    if missing:
        problems.append(f"missing keys: {_list_some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list_some(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_list_some(mismatched, 3)}")
    if not_tensors:
        problems.append(f"not tensors: {_list_some(not_tensors)}")
    return problems


def validate_checkpoint(checkpoint: Mapping[str, Mapping[str, Tensor]]) -> None:
    """Raise one ValueError naming the network, keys and shapes if `checkpoint` does not match the spec.

    Top-level keys other than the three networks (e.g. `opt`, `global_step`) are ignored.
    """
    absent = [n for n in NETWORK_NAMES if n not in checkpoint]
    if absent:
        raise ValueError(
            f"checkpoint lacks {absent}; deca_model.tar must hold the state dicts {list(NETWORK_NAMES)} "
            f"(found top-level keys {sorted(map(str, checkpoint))})"
        )
    spec = checkpoint_spec()
    for name in NETWORK_NAMES:
        problems = state_dict_problems(name, checkpoint[name], spec[name])
        if problems:
            raise ValueError(
                f"{name} state dict does not match DECA's architecture ({len(spec[name])} keys expected): "
                + "; ".join(problems)
                + ". Use the official deca_model.tar or a checkpoint written by capture's demo pack."
            )


def _complete(state_dict: Mapping[str, Tensor], spec: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """float32 parameters and buffers, int64 batch counters (zeros where the file has none)."""
    out = {}
    for key in spec:
        if key in state_dict:
            t = state_dict[key]
            out[key] = t.to(torch.int64) if _optional(key) else t.to(torch.float32)
        else:
            out[key] = torch.zeros((), dtype=torch.int64)
    return out


def build_networks(checkpoint: Mapping[str, Mapping[str, Tensor]]) -> Networks:
    """{"E_flame", "E_detail", "D_detail": state dict} -> `Networks` in eval mode, loaded strictly.

    Raises ValueError (see `validate_checkpoint`) on missing/unexpected keys or wrong shapes.
    """
    validate_checkpoint(checkpoint)
    spec = checkpoint_spec()
    modules = {}
    for name in NETWORK_NAMES:
        # Build on meta and adopt the checkpoint's tensors: no time spent on a random init that is overwritten.
        with torch.device("meta"):
            module = _new_module(name)
        module.load_state_dict(_complete(checkpoint[name], spec[name]), strict=True, assign=True)
        modules[name] = module.eval()
    return Networks(modules["E_flame"], modules["E_detail"], modules["D_detail"])
