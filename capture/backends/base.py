"""The one inference interface every backend implements: named inputs in, named outputs out.

Shapes follow `capture.nets.GRAPHS`: E_flame "image" [B, 3, 224, 224] -> "code" [B, 236]; E_detail "image"
-> "detail" [B, 128]; D_detail "latent" [B, 181] -> "uv_z" [B, 1, 256, 256]; all float32.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Mapping, Union

import numpy as np
import torch

from capture.nets import GraphSpec, graph_spec

ArrayLike = Union[np.ndarray, torch.Tensor]


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (package, GPU or engine missing); the message says which and the fix."""


class Backend(ABC):
    """One network behind one runtime. Subclasses set `name` and implement `available` and `_run`.

    Attributes: `name` (its registry name, see `capture.backends.BACKENDS`), `network` ("E_flame" | ...), `device`
    (torch.device where outputs live), `spec` (the graph's tensor names and shapes), `reason` (why this backend
    was chosen, set by the registry).
    """

    name: ClassVar[str] = ""
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, network: str, device: Union[str, torch.device]):
        self.network = network
        self.spec: GraphSpec = graph_spec(network)
        self.device = torch.device(device)
        self.reason = f"{self.name} requested explicitly"

    @classmethod
    @abstractmethod
    def available(cls, device: str = "cpu") -> tuple[bool, str]:
        """(True, what will run) or (False, what is missing and how to get it). Imports nothing heavy on CPU."""

    @property
    def input_names(self) -> tuple[str, ...]:
        return (self.spec.input_name,)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.spec.output_name,)

    def run(self, inputs: Mapping[str, ArrayLike]) -> dict[str, torch.Tensor]:
        """{input name: [B, ...] float32 array/tensor} -> {output name: [B, ...] float32 tensor on `device`}."""
        x = self._check_inputs(inputs)
        return {self.spec.output_name: self._run(x)}

    @abstractmethod
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """One checked, contiguous float32 input on `self.device` -> the output tensor on `self.device`."""

    def _check_inputs(self, inputs: Mapping[str, ArrayLike]) -> torch.Tensor:
        expected = set(self.input_names)
        if set(inputs) != expected:
            raise ValueError(f"{self.network} ({self.name}) takes inputs {sorted(expected)}, got {sorted(inputs)}")
        value = inputs[self.spec.input_name]
        x = torch.from_numpy(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
        if not x.is_floating_point():
            # uint8 images would pass through unscaled (0..255 instead of 0..1): refuse rather than guess
            raise ValueError(f"{self.network} input {self.spec.input_name!r} must be floating point "
                             f"(images RGB in [0, 1]), got {x.dtype}")
        if x.ndim != 1 + len(self.spec.input_shape) or tuple(x.shape[1:]) != self.spec.input_shape or x.shape[0] < 1:
            raise ValueError(f"{self.network} input {self.spec.input_name!r} must be [B, "
                             f"{', '.join(map(str, self.spec.input_shape))}] with B >= 1, got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=torch.float32).contiguous()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.network} on {self.device}>"
