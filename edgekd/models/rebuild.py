"""TorchScript (and torch.export) teachers rebuilt as eager modules, so forward hooks (the BatchNorm prior,
feature losses) work.

A TorchScript module or exported graph takes no forward hooks. When the file's weights fit a registered architecture, the
eager module is rebuilt and kept if its outputs equal the file's on random inputs. A wrapper around such a
network (the common export: a per-channel normalisation in front, `net((x - mean) / std)`, perhaps a
second output) gives the eager network alone and the normalisation as its input statistics, found among
the wrapper's own tensors and kept on the same check: the teacher is then exactly what a state_dict of
that network with that mean/std would be, and distils as it does. Anything else stays as loaded, and
the note says so.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from edgekd.errors import ModelError
from edgekd.models.logits import pick_logits
from edgekd.models.registry import create_model, get_entry
from edgekd.models.statedict import by_position, infer_arch, infer_classes_channels, with_counters

_MAX_CANDIDATES = 4  # wrapper tensors tried as mean / std: each pair costs a forward of 4 images


class _Normalised(nn.Module):
    """A wrapper's normalisation in front of its network, for the check: net((x - shift) * scale)."""

    def __init__(self, net: nn.Module, shift: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("shift", shift.detach().float().reshape(1, -1, 1, 1).clone())
        self.register_buffer("scale", scale.detach().float().reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.shift) * self.scale)


@dataclass
class Rebuilt:
    model: nn.Module  # the registered network (inside the wrapper, if any): it takes normalised images
    arch: str
    classes: int
    channels: int
    # The wrapper's own normalisation as per-channel (mean, std), None when the file does none: the file
    # takes raw images x and gives its network (x - mean) / std.
    normalisation: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]
    note: str


def _fit(sd: Dict[str, torch.Tensor]) -> Optional[Tuple[str, int, int, Dict[str, torch.Tensor]]]:
    """(architecture, classes, channels, weights under its keys) when `sd` fits one, by name or in order."""
    try:
        name, classes, channels = infer_arch(sd)
        return name, classes, channels, with_counters(sd, name, classes, channels)
    except ModelError:  # no fit by name (or not a classifier's weights): try by position
        pass
    try:
        classes, channels = infer_classes_channels(sd)
    except ModelError:
        return None
    found = by_position(sd, classes, channels)
    return None if found is None else (found[0], classes, channels, found[1])


def _eager(fit: Tuple[str, int, int, Dict[str, torch.Tensor]]) -> nn.Module:
    name, classes, channels, weights = fit
    model = create_model(name, classes, channels)
    model.load_state_dict(weights)
    return model.eval()


def _max_diff(scripted: nn.Module, eager: nn.Module, x: torch.Tensor) -> Tuple[float, float, str]:
    """(max |difference| of the logits, tolerance, where the file's logits are) on `x`; inf when they cannot
    be compared (another shape, a trace fixed to another batch size)."""
    try:
        with torch.no_grad():
            out, got = scripted(x), eager(x)
        ref, where = pick_logits(out)
    except (RuntimeError, ModelError):
        return math.inf, 0.0, ""
    if ref.shape != got.shape:
        return math.inf, 0.0, ""
    return float((ref - got).abs().max()), 1e-4 * (1 + float(ref.abs().max())), where


def _probe(channels: int, size: Optional[Tuple[int, int]], arch: str) -> torch.Tensor:
    hw = size or get_entry(arch).default_input_size
    return torch.randn(4, channels, *hw, generator=torch.Generator().manual_seed(0))


def _candidates(sd: Dict[str, torch.Tensor], inner: str, channels: int) -> List[Tuple[str, torch.Tensor]]:
    """The wrapper's own tensors that could be a per-channel mean or std (one value, or one per channel)."""
    own = [(k, v) for k, v in sd.items() if not k.startswith(inner + ".") and v.is_floating_point()
           and v.numel() in (1, channels) and v.squeeze().dim() <= 1]
    return own[:_MAX_CANDIDATES]


def _normalisations(cands: List[Tuple[str, torch.Tensor]]) -> Iterator[Tuple[str, torch.Tensor, torch.Tensor]]:
    """(how it reads, shift, scale) for x -> (x - shift) * scale: each tensor as a mean, each as a std
    (divided by) or an inverse std (multiplied by), and none at all. One tensor as both comes last: where
    mean and std hold the same values (0.5), the note should still name each for what it is."""
    shifts = [("x", "", torch.zeros(1))] + [(f"x - {k}", k, v) for k, v in cands]
    scales = [("", "", torch.ones(1))] + [(f" / {k}", k, 1 / v) for k, v in cands] + [(f" * {k}", k, v) for k, v in cands]
    pairs = sorted(itertools.product(shifts, scales), key=lambda p: bool(p[0][1]) and p[0][1] == p[1][1])
    for (a, _, shift), (b, _, scale) in pairs:
        yield (f"({a}){b}" if b else a), shift, scale


def _statistics(shift: torch.Tensor, scale: torch.Tensor, channels: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(x - shift) * scale as per-channel (mean, std)."""
    mean = shift.float().flatten().expand(channels) if shift.numel() == 1 else shift.float().flatten()
    std = 1 / (scale.float().flatten().expand(channels) if scale.numel() == 1 else scale.float().flatten())
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _wrapped(scripted: nn.Module, source: nn.Module, size: Optional[Tuple[int, int]],
             label: str) -> Tuple[Optional[Rebuilt], str]:
    """A wrapper whose submodule is a registered network: its normalisation found, or a note on why not."""
    sd = dict(source.state_dict())
    note = ""  # why the first fitting submodule did not rebuild; a later one (an ensemble's second member) may
    for path, sub in source.named_modules():
        if not path:
            continue
        fit = _fit(dict(sub.state_dict()))
        if fit is None:
            continue
        name, classes, channels = fit[:3]
        net = _eager(fit)
        x = _probe(channels, size, name)
        for how, shift, scale in _normalisations(_candidates(sd, path, channels)):
            diff, tol, where = _max_diff(scripted, _Normalised(net, shift, scale).eval(), x)
            if diff <= tol:
                normalises = how != "x"
                return Rebuilt(net, name, classes, channels, _statistics(shift, scale, channels) if normalises else None,
                               f"{label} teacher rebuilt as eager {name} (its submodule {path!r})"
                               + (f" with the wrapper's normalisation {how} as its input statistics" if normalises else "")
                               + (f", {where} of its output as the logits" if where else "")
                               + f" (outputs equal on 4 random inputs, max |diff| {diff:.1e}): forward hooks "
                               "available"), ""
        has_bn = any(k.endswith("running_mean") for k in sub.state_dict())
        note = note or (f" (its submodule {path!r} is a {name}, but the rest of its forward is more than a "
                        f"normalisation edgekd can find: `torch.save(model.{path}.state_dict(), f)` would load as "
                        f"{name}" + (" with hooks, so the BatchNorm prior works" if has_bn else "") + ")")
    return None, note


def rebuild_eager(scripted: nn.Module, size: Optional[Tuple[int, int]], label: str = "TorchScript",
                  source: Optional[nn.Module] = None) -> Tuple[Optional[Rebuilt], str]:
    """The file as an eager module with the same outputs, or None and a note on why it stays as loaded.
    `source`: the module whose weights and submodules are read, where `scripted` wraps it (an exported
    program run in chunks of its batch size); outputs are always `scripted`'s."""
    scripted.eval()
    source = scripted if source is None else source
    fit = _fit(dict(source.state_dict()))
    if fit is not None:
        name, classes, channels = fit[:3]
        eager = _eager(fit)
        diff, tol, where = _max_diff(scripted, eager, _probe(channels, size, name))
        if diff <= tol:
            return Rebuilt(eager, name, classes, channels, None,
                           f"{label} teacher rebuilt as eager {name}"
                           + (f" ({where} of its output as the logits)" if where else "")
                           + f" (outputs equal on 4 random inputs, max |diff| {diff:.1e}): forward hooks available"), ""
        return None, (f"{label} teacher: its weights fit {name} but its outputs differ from it "
                      f"(max |diff| {diff:.2g}); kept as {label}, so no forward hooks")
    rebuilt, why = _wrapped(scripted, source, size, label)
    if rebuilt is not None:
        return rebuilt, ""
    return None, f"{label} teacher: its weights fit no registered architecture; kept as {label}" + why

