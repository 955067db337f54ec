"""`InferenceEngines`: DECA's three networks behind backends, created on first use."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from capture.nets import NETWORK_NAMES

from .base import ArrayLike, Backend
from .registry import make_backend


class InferenceEngines:
    """E_flame, E_detail and D_detail behind one backend choice.

    backend: a registry name ("auto" or a key of `capture.backends.BACKENDS`) for all three, or a dict
    {network: name}; `options` go to `make_backend`.
    Each network's backend is made on first use (E_detail runs once per target, so a live session that never
    needs it pays nothing for it). Outputs are float32 tensors on the chosen backend's device.
    """

    def __init__(self, pack, backend: Union[str, dict[str, str]] = "auto", device: Optional[str] = None, *,
                 engines_dir: Optional[Union[str, Path]] = None, options: Optional[dict] = None):
        self.pack = pack
        choice = backend if isinstance(backend, dict) else {n: backend for n in NETWORK_NAMES}
        unknown = sorted(set(choice) - set(NETWORK_NAMES))
        if unknown:
            raise ValueError(f"backend choice names unknown networks {unknown}; networks are {list(NETWORK_NAMES)}")
        self.choice = {n: choice.get(n, "auto") for n in NETWORK_NAMES}
        self.device = device
        self.engines_dir = engines_dir
        self.options = options
        self._backends: dict[str, Backend] = {}

    def backend(self, network: str) -> Backend:
        if network not in self._backends:
            self._backends[network] = make_backend(self.choice[network], network, self.pack, self.device,
                                                   engines_dir=self.engines_dir, options=self.options)
        return self._backends[network]

    def encode_flame(self, images: ArrayLike) -> torch.Tensor:
        """[B, 3, 224, 224] RGB in [0, 1] -> code [B, 236] (split with capture.nets.CODE_LAYOUT)."""
        return self.backend("E_flame").run({"image": images})["code"]

    def encode_detail(self, images: ArrayLike) -> torch.Tensor:
        """[B, 3, 224, 224] RGB in [0, 1] -> detail code [B, 128]."""
        return self.backend("E_detail").run({"image": images})["detail"]

    def decode_detail(self, latent: ArrayLike) -> torch.Tensor:
        """latent [B, 181] = capture.nets.detail_input(jaw, exp, detail) -> UV displacement [B, 1, 256, 256] (m)."""
        return self.backend("D_detail").run({"latent": latent})["uv_z"]

    def describe(self) -> list[str]:
        """One line per backend made so far: network and `.reason`."""
        return [f"{n}: {b.reason}" for n, b in self._backends.items()]
