"""The pluggable pretrained networks of the training losses: face recognition (identity loss) and VGG19 (ID-MRF).

Interface: a callable `nn.Module` taking RGB images [B, 3, H, W] in 0..1 (any size; it resizes itself) and
returning features: `[B, D]` for the identity network, `{layer name: [B, C, h, w]}` for the VGG19 features.
Weights come from a file loaded with `torch.load(weights_only=True)` (a plain state dict: no code runs on
load). Without a file the loss is skipped with a warning (`optional_network`); tests plug in small stand-ins.

- Identity: ResNet-50 in torchvision's parameter names (a `fc.*` head in the file is ignored), input in the
  VGGFace2 convention (224x224, BGR, 0..255, per-channel mean subtracted), output the pooled 2048-d feature.
  DECA's `resnet50_ft_weight.pkl` (VGGFace2) holds these names as numpy arrays: convert it once with
  `torch.save({k: torch.as_tensor(v) for k, v in pickle.load(f).items()}, "resnet50_ft.pt")` on a machine you trust.
- VGG19: torchvision's `features.<index>.{weight,bias}` names (classifier keys ignored), ImageNet normalisation.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..nets import ResNet50Backbone

VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's vgg19 `features`: conv widths per block ("M" = max pool)
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class WeightsError(ValueError):
    """A pretrained-weights file is missing, unsafe to load, or does not fit the network."""


def load_state_dict_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} weights {path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is unusable as given
        raise WeightsError(f"{what} weights {path}: cannot be read with weights_only=True ({exc}); "
                           "save a plain state dict of tensors with torch.save") from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise WeightsError(f"{what} weights {path}: expected a state dict, found {type(data).__name__}")
    return data


def _load_into(module: nn.Module, state: dict, path, what: str, ignore_prefixes: tuple[str, ...]) -> None:
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    unexpected = [k for k in state if k not in expected]
    if missing or wrong or unexpected:
        raise WeightsError(f"{what} weights {path} do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}, "
                           f"shapes {wrong[:3]}")
    module.load_state_dict(state, strict=False)


class IdentityNetwork(nn.Module):
    """Face-recognition features: RGB [B, 3, H, W] 0..1 -> [B, 2048] (ResNet-50, VGGFace2 input convention)."""

    def __init__(self):
        super().__init__()
        self.backbone = ResNet50Backbone()
        self.register_buffer("mean_bgr", torch.tensor(VGGFACE2_MEAN_BGR).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False)
        x = x.flip(1) * 255.0 - self.mean_bgr
        return self.backbone(x)


def load_identity_network(path: str | Path) -> IdentityNetwork:
    net = IdentityNetwork()
    state = load_state_dict_file(path, "identity network")
    state = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in state.items()}
    _load_into(net.backbone, state, path, "identity network", ("fc.",))
    return net.eval().requires_grad_(False)


class VGG19Features(nn.Module):
    """VGG19 conv features: RGB [B, 3, H, W] 0..1 -> {"relu{block}_{conv}": [B, C, h, w]} up to `last`."""

    def __init__(self, last: str = "relu4_2"):
        super().__init__()
        layers: list[nn.Module] = []
        self.names: dict[int, str] = {}
        in_ch, block, conv = 3, 1, 0
        for item in VGG19_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                block, conv = block + 1, 0
                continue
            conv += 1
            layers += [nn.Conv2d(in_ch, item, 3, padding=1), nn.ReLU(inplace=False)]
            self.names[len(layers) - 1] = f"relu{block}_{conv}"
            in_ch = item
        self.features = nn.Sequential(*layers)
        self.last = last
        if last not in self.names.values():
            raise ValueError(f"VGG19Features: unknown layer {last!r}; layers are {list(self.names.values())}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.names:
                out[self.names[i]] = x
                if self.names[i] == self.last:
                    break
        return out


def load_vgg19(path: str | Path, last: str = "relu4_2") -> VGG19Features:
    net = VGG19Features(last)
    state = load_state_dict_file(path, "VGG19")
    _load_into(net, state, path, "VGG19", ("classifier.", "mean", "std"))
    return net.eval().requires_grad_(False)


def optional_network(path: str, loader: Callable[[str], nn.Module], loss_name: str) -> Optional[nn.Module]:
    """The network from `path`, or None with a warning that `loss_name` is skipped when no file is configured."""
    if not path:
        warnings.warn(f"no weights file configured for the {loss_name} loss: it is skipped "
                      f"(set networks.{'identity' if 'identity' in loss_name else 'vgg19'}_weights)", stacklevel=2)
        return None
    return loader(path)
