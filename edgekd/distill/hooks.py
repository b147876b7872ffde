"""Forward hooks that expose what the losses need from inside a network."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


class BNStatsHook:
    """Per-batch mean/var of every BatchNorm's input, with the layer's running statistics."""

    def __init__(self, model: nn.Module) -> None:
        self.enabled = False
        self.stats: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._handles = [m.register_forward_hook(self._hook) for m in model.modules()
                         if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]

    def _hook(self, module: nn.Module, inputs: Tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        if not self.enabled:
            return
        x = inputs[0].float()
        mean = x.mean(dim=(0, 2, 3))
        var = x.permute(1, 0, 2, 3).flatten(1).var(1, unbiased=False)
        self.stats.append((mean, var, module.running_mean.float(), module.running_var.float()))

    def __len__(self) -> int:
        return len(self._handles)

    def pop(self) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        out, self.stats = self.stats, []
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class ClassifierInputHook:
    """DAFL's f_T: what the convolutions hand the classifier, i.e. the input of the model's *first*
    nn.Linear. DAFL's own LeNet-5 returns conv3's output there (the input of fc1, not of the last layer
    fc2); on a single-Linear head (ResNet, WRN, MobileNet) first and last are the same layer."""

    def __init__(self, model: nn.Module) -> None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.features: Optional[torch.Tensor] = None
        self._handle = linears[0].register_forward_pre_hook(self._hook) if linears else None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def _hook(self, _module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
        self.features = inputs[0]

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()


class FeatureMapHook:
    """For attention transfer: the last 4-D output at each spatial size, in forward order."""

    def __init__(self, model: nn.Module) -> None:
        self.enabled = False
        self._maps: Dict[Tuple[int, int], torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook) for m in model.modules()
                         if len(list(m.children())) == 0 and not isinstance(m, (nn.Linear, nn.Dropout))]

    def _hook(self, _module: nn.Module, _inputs: Tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if self.enabled and isinstance(out, torch.Tensor) and out.dim() == 4:
            self._maps[tuple(out.shape[-2:])] = out

    def pop(self) -> List[torch.Tensor]:
        out = list(self._maps.values())
        self._maps = {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
