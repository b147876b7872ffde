"""Parameter and MAC counts."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (convolutions and matmuls; FLOPs / 2)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape))
        return int(counter.get_total_flops() // 2)
    finally:
        model.train(was_training)
