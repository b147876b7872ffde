"""Generators that map z ~ N(0, I) to images in the teacher's normalised input space."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekd.distill.grey import grey_to_channels


class Generator(nn.Module):
    """DAFL's generator, generalised to any (C, H, W).

    A linear layer makes a base_channels x h0 x w0 map (h0 about 8); each stage doubles the size with
    nearest upsampling and a 3x3 conv + BN + LeakyReLU; the last conv maps to C channels, then tanh
    and an affine-free BatchNorm, which puts every channel at mean 0 / variance 1: the statistics of
    normalised real inputs. For 32x32 this is exactly DAFL's network (two stages, 128 -> 128 -> 64).
    Wider images get more stages with halving widths, so 224x224 stays affordable.

    output="bn" (default) is DAFL's head: every channel at mean 0 / variance 1, which is right when
    the teacher's normalisation whitens its data but not with the common mean = std = 0.5 (normalised
    MNIST has mean -0.74 and never leaves [-1, 1]). output="affine" adds a learnt scale and shift;
    output="pixel" makes pixels in [0, 1] (affine BN, sigmoid) and applies the teacher's own
    (p - mean) / std, so every image is one a camera could deliver. Measured on the WRN-16-2 MNIST
    teacher (benchmarks/TUNING.md round 4), neither beat "bn"; "pixel" made one-class students.

    num_classes > 0 makes it class-conditional (`gen_labels`): a learnt embedding of the class label
    is concatenated to z, so the loss can ask for a given class (CE against the label, as
    DeepInversion, CMI and NAYER ask the teacher for sampled targets) instead of whatever the teacher
    already sees most (DAFL's argmax). Called without labels it makes a balanced cycle of classes.

    grey=True makes one channel and writes the same grey picture into every input channel, each through
    its own normalisation (pixel p = out * std_0 + mean_0, channel c = (p - mean_c) / std_c): for the
    teachers of grey data copied to 3 channels (MNIST or X-rays on an RGB backbone), which never saw
    colour and answer it arbitrarily.
    """

    def __init__(self, latent_dim: int, out_shape: Tuple[int, int, int], base_channels: int = 128,
                 output: str = "bn", mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                 num_classes: int = 0, grey: bool = False) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"generator output must be one of {OUTPUTS}, not {output!r}")
        c, h, w = out_shape
        self.latent_dim = latent_dim
        self.base_channels = base_channels
        self.out_shape = (c, h, w)
        self.output = output
        self.num_classes = num_classes
        self.grey = grey
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.register_buffer("mean", _per_channel(mean, c), persistent=False)
        self.register_buffer("std", _per_channel(std, c), persistent=False)
        n_up = max(2, math.ceil(math.log2(max(h, w) / 8)))
        self.init_hw = (math.ceil(h / 2 ** n_up), math.ceil(w / 2 ** n_up))
        self.fc = nn.Linear(latent_dim * (2 if num_classes else 1), base_channels * self.init_hw[0] * self.init_hw[1])
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
        made = 1 if grey else c
        self.head = nn.Conv2d(cin, made, 3, 1, 1)
        self.out_bn = nn.BatchNorm2d(made, affine=output != "bn")

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                labels = torch.arange(len(z), device=z.device) % self.num_classes
            z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)
        x = self.fc(z).view(z.shape[0], -1, *self.init_hw)
        x = self.stages(self.bn0(x))
        if x.shape[-2:] != self.out_shape[1:]:
            x = F.interpolate(x, size=self.out_shape[1:], mode="bilinear", align_corners=False)
        if self.output == "pixel":
            # With grey, the one channel broadcasts against every channel's mean and std.
            return (torch.sigmoid(self.out_bn(self.head(x))) - self.mean) / self.std
        out = self.out_bn(torch.tanh(self.head(x)))  # bn: whitened; affine: then a learnt scale and shift
        if self.grey:  # channel 0's normalised grey, re-normalised for every channel
            out = grey_to_channels(out, self.mean, self.std, self.mean[:, :1], self.std[:, :1])
        return out

    def describe(self) -> Dict[str, Any]:
        """Everything `from_description` needs besides the weights (saved in generator.pt)."""
        return {"latent_dim": self.latent_dim, "out_shape": list(self.out_shape), "base_channels": self.base_channels,
                "output": self.output, "num_classes": self.num_classes, "grey": self.grey, "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    @classmethod
    def from_description(cls, d: Dict[str, Any]) -> Generator:
        return cls(d["latent_dim"], tuple(d["out_shape"]), d["base_channels"], d.get("output", "bn"),
                   d.get("mean", (0.0,)), d.get("std", (1.0,)), d.get("num_classes", 0), d.get("grey", False))


OUTPUTS = ("bn", "affine", "pixel")


def reset_weights(module: nn.Module) -> None:
    """Every layer back to PyTorch's initial weights (BN running statistics too), drawn from the global
    random stream, which checkpoints carry: a re-initialised generator resumes exactly."""
    for m in module.modules():
        if hasattr(m, "reset_parameters") and m is not module:
            m.reset_parameters()


def _per_channel(values: Sequence[float], c: int) -> torch.Tensor:
    t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    return (t.expand(c) if t.numel() == 1 else t).reshape(1, c, 1, 1).clone()
