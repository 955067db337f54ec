"""PyTorch backend: the eager reference on CPU; on CUDA, one CUDA graph per input shape, captured once and
replayed (a ResNet-50 at batch 1 is launch-bound, and replay removes ~160 kernel launches per call)."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from .base import Backend


class TorchBackend(Backend):
    """`build_networks(pack.checkpoint)` in eval mode on `device` ("cpu" or "cuda[:i]").

    cuda_graphs: capture/replay on CUDA (default True). The CPU path never calls into CUDA.
    half: run the network in float16 on CUDA (inputs and outputs stay float32 at the interface); refused on
    the CPU, where float16 convolutions are slower than float32, rather than silently ignored.
    """

    name = "torch"
    devices = ("cuda", "cpu")

    def __init__(self, network: str, pack, device: Union[str, torch.device] = "cpu", *,
                 module: Optional[nn.Module] = None, cuda_graphs: bool = True, half: bool = False):
        super().__init__(network, device)
        if half and self.device.type != "cuda":
            raise ValueError(f"{network}: half=True needs a CUDA device (got {self.device}); use float32 on the CPU")
        self.half = bool(half)
        if module is None:
            from capture.nets import build_networks

            module = self.spec.module(build_networks(pack.checkpoint))
        self.module = module.eval().to(self.device)
        if self.half:
            self.module = self.module.half()
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def available(cls, device: str = "cpu") -> tuple[bool, str]:
        if torch.device(device).type == "cpu":
            return True, "PyTorch eager on CPU"
        if torch.device(device).type == "cuda":
            if torch.cuda.is_available():
                return True, f"PyTorch with CUDA graphs on {torch.cuda.get_device_name(0)}"
            return False, "this torch build sees no CUDA GPU (torch.cuda.is_available() is False)"
        return False, f"device {device!r} is not supported (use cpu or cuda)"

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cuda_graphs:
            with torch.inference_mode():
                return self._forward(x)
        return self._replay(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.half:
            return self.module(x.half()).float()
        return self.module(x)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        # The captured output buffer is overwritten by the next replay: hand out a copy.
        return static_out.clone()

    def _capture(self, x: torch.Tensor):
        static_in = x.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the graph: cuDNN picks its algorithms here
                self._forward(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = self._forward(static_in)
        return graph, static_in, static_out


class TorchEagerBackend(TorchBackend):
    """The eager reference: the network called one batch at a time in float32, no CUDA graphs, on any device.

    What DECA's own code does, and what benchmarks/fps.py measures every other backend against. DECA's
    one-off networks (E_flame and E_detail on the target photo) run here too, so that the avatar cache does
    not depend on the per-frame backend.
    """

    name = "torch-eager"

    def __init__(self, network: str, pack, device: Union[str, torch.device] = "cpu", *,
                 module: Optional[nn.Module] = None):
        super().__init__(network, pack, device, module=module, cuda_graphs=False, half=False)

    @classmethod
    def available(cls, device: str = "cpu") -> tuple[bool, str]:
        ok, why = super().available(device)
        if ok and torch.device(device).type == "cuda":
            why = f"PyTorch eager on {torch.cuda.get_device_name(0)}"
        return ok, why
