"""Student/teacher architecture registry, in the style of timm's register_model/create_model.

Names are matched without case, '-' or '_', so 'mobilenetv2', 'mobilenet_v2' and 'MobileNet-V2'
are one entry.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch.nn as nn

from edgekd.errors import ModelError
from edgekd.spec import IMAGENET_MEAN, IMAGENET_STD

Builder = Callable[[int, int], nn.Module]  # (num_classes, in_channels) -> module


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Builder
    family: str  # "torchvision" or "small"
    default_input_size: Tuple[int, int]
    default_mean: Tuple[float, ...]
    default_std: Tuple[float, ...]
    description: str


_REGISTRY: Dict[str, ModelEntry] = {}
_ALIASES: Dict[str, str] = {}


def _key(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


def register_model(name: str, family: str, input_size: int, description: str,
                   mean: Tuple[float, ...] = IMAGENET_MEAN, std: Tuple[float, ...] = IMAGENET_STD,
                   aliases: Tuple[str, ...] = ()) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        entry = ModelEntry(name, fn, family, (input_size, input_size), mean, std, description)
        _REGISTRY[name] = entry
        for alias in (name, *aliases):
            _ALIASES[_key(alias)] = name
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the definition modules fills the registry.
    from edgekd.models import small, zoo  # noqa: F401


def list_models() -> List[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        near = difflib.get_close_matches(_key(name), list(_ALIASES), n=3, cutoff=0.5)
        names = sorted({_ALIASES[n] for n in near})
        hint = f"did you mean {', '.join(names)}? " if names else ""
        raise ModelError(f"unknown architecture {name!r}: {hint}'edgekd models' lists them all")
    return _REGISTRY[canonical]


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build an untrained model of a registered architecture."""
    if num_classes < 2:
        raise ModelError(f"a classifier needs at least 2 classes, got {num_classes}")
    if in_channels < 1:
        raise ModelError(f"input channels must be >= 1, got {in_channels}")
    return get_entry(name).builder(num_classes, in_channels)
