"""Generators that map z ~ N(0, I) to images in the teacher's normalised input space."""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class Generator(nn.Module):
    """DAFL's generator, generalised to any (C, H, W).

    A linear layer makes a base_channels x h0 x w0 map (h0 about 8); each stage doubles the size with
    nearest upsampling and a 3x3 conv + BN + LeakyReLU; the last conv maps to C channels, then tanh
    and an affine-free BatchNorm, which puts every channel at mean 0 / variance 1: the statistics of
    normalised real inputs. For 32x32 this is exactly DAFL's network (two stages, 128 -> 128 -> 64).
    Wider images get more stages with halving widths, so 224x224 stays affordable.
    """

    def __init__(self, latent_dim: int, out_shape: Tuple[int, int, int], base_channels: int = 128) -> None:
        super().__init__()
        c, h, w = out_shape
        self.latent_dim = latent_dim
        self.base_channels = base_channels
        self.out_shape = (c, h, w)
        n_up = max(2, math.ceil(math.log2(max(h, w) / 8)))
        self.init_hw = (math.ceil(h / 2 ** n_up), math.ceil(w / 2 ** n_up))
        self.fc = nn.Linear(latent_dim, base_channels * self.init_hw[0] * self.init_hw[1])
        self.bn0 = nn.BatchNorm2d(base_channels)
        stages, cin = [], base_channels
        for i in range(n_up):
            # 32x32 (two stages): 128, 64 as DAFL; larger: 128, 64, 32, 16, 16.
            cout = base_channels if (n_up == 2 and i == 0) else max(16, base_channels // 2 ** i)
            stages.append(nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.2, inplace=True),
            ))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Conv2d(cin, c, 3, 1, 1)
        self.out_bn = nn.BatchNorm2d(c, affine=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], -1, *self.init_hw)
        x = self.stages(self.bn0(x))
        if x.shape[-2:] != self.out_shape[1:]:
            x = F.interpolate(x, size=self.out_shape[1:], mode="bilinear", align_corners=False)
        return self.out_bn(torch.tanh(self.head(x)))
