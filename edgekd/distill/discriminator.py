"""The paper's small fully connected discriminator on class-probability vectors."""

from __future__ import annotations

import torch
import torch.nn as nn


class Discriminator(nn.Module):
    """K -> 256 -> 256 -> 1 with LeakyReLU: tells softmax(T/tau) from softmax(S/tau)."""

    def __init__(self, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_classes, hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return self.net(probs.float()).squeeze(1)
