"""Forward hooks that expose what the losses need from inside a network."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgekd.models.script_taps import BNInputs, TappedScript


def has_batchnorm(model: nn.Module) -> bool:
    """BatchNorm layers whose inputs the BN prior can read: eager ones, or those of a tapped TorchScript graph."""
    return (model.layers > 0) if isinstance(model, TappedScript) else any(isinstance(m, _BatchNorm) for m in model.modules())


class BNStatsHook:
    """Per-batch mean/var of every BatchNorm's input, with the layer's running statistics.

    With `momentum` r > 0 (Fast-Datafree / NAYER's bn_mmt) the batch's statistics are reported as
    (1 - r) x this batch's + r x an average over the batches before, each layer's average moved by
    `advance()` after a step: the loss then asks the average, not every small batch, to match.

    On an eager teacher, forward hooks on its BatchNorm2d layers; on a TappedScript, what its graph hands over."""

    def __init__(self, model: nn.Module, momentum: float = 0.0) -> None:
        self.enabled = False
        self.momentum = momentum
        self.stats: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._tapped: Optional[TappedScript] = None
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        if isinstance(model, TappedScript):
            self._tapped = model
            model.listeners.append(self._listen)
            self._count = model.layers
        else:
            layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
            self._handles = [m.register_forward_hook(self._hook_for(i)) for i, m in enumerate(layers)]
            self._count = len(layers)
        self._last: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # this step's (mean, var) per layer
        self.average: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # the batches before, per layer

    def _hook_for(self, i: int) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            self._record(i, inputs[0], module.running_mean, module.running_var)
        return hook

    def _listen(self, taps: BNInputs) -> None:
        for i, (x, running_mean, running_var) in enumerate(taps):
            self._record(i, x, running_mean, running_var)

    def _record(self, i: int, x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> None:
        if not self.enabled:
            return
        x = x.float()
        mean = x.mean(dim=(0, 2, 3))
        var = x.permute(1, 0, 2, 3).flatten(1).var(1, unbiased=False)
        if self.momentum:
            self._last[i] = (mean.detach(), var.detach())
            if i in self.average:
                r, (avg_mean, avg_var) = self.momentum, self.average[i]
                mean, var = (1 - r) * mean + r * avg_mean, (1 - r) * var + r * avg_var
        self.stats.append((mean, var, running_mean.float(), running_var.float()))

    def advance(self) -> None:
        """Fold the last step's statistics into the average (nothing is kept without momentum)."""
        r = self.momentum
        for i, (mean, var) in self._last.items():
            old = self.average.get(i)
            self.average[i] = (mean, var) if old is None else (r * old[0] + (1 - r) * mean, r * old[1] + (1 - r) * var)
        self._last = {}

    def state_dict(self) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
        return {i: (m.cpu(), v.cpu()) for i, (m, v) in self.average.items()}

    def load_state_dict(self, state: Dict[int, Tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> None:
        self.average = {int(i): (m.to(device), v.to(device)) for i, (m, v) in state.items()}

    def __len__(self) -> int:
        return self._count

    def pop(self) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        out, self.stats = self.stats, []
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        if self._tapped is not None:
            self._tapped.listeners.remove(self._listen)


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
