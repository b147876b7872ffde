"""Augmentations of replayed synthetic images for the student's steps.

A replayed image is augmented and then labelled again by the teacher (one teacher forward, no
generator backward), so the student sees new inputs at a fraction of a generator step's cost and no
augmentation can carry a wrong label: a flipped digit gets whatever the teacher says about it.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F

# Up to 1/8 of a side: CIFAR's usual pad-4 random crop at 32x32.
SHIFT_FRACTION = 0.125


def random_shift(x: torch.Tensor, fraction: float = SHIFT_FRACTION) -> torch.Tensor:
    """Each image moved by its own random offset of up to `fraction` of a side, edges replicated
    (a pad-and-crop with no black border the teacher never saw)."""
    n, c, h, w = x.shape
    ph, pw = round(fraction * h), round(fraction * w)
    if not (ph or pw):
        return x
    padded = F.pad(x, (pw, pw, ph, ph), mode="replicate")
    oy = torch.randint(0, 2 * ph + 1, (n, 1), device=x.device)
    ox = torch.randint(0, 2 * pw + 1, (n, 1), device=x.device)
    rows = (oy + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox + torch.arange(w, device=x.device))[:, None, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None, None],
                  torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Half of the images mirrored left-right."""
    mask = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_mix(x: torch.Tensor) -> torch.Tensor:
    """Mixup without labels: each image blended with another of the batch at a uniform weight
    (Beta(1, 1), mixup's alpha 1). The teacher labels the blend, so the student sees points between
    the generator's modes, where its decision boundaries are drawn."""
    lam = torch.rand(len(x), 1, 1, 1, device=x.device, dtype=x.dtype)
    return lam * x + (1 - lam) * x[torch.randperm(len(x), device=x.device)]


AUGMENTS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "shift": random_shift,
    "flip": random_flip,
    "shift_flip": lambda x: random_flip(random_shift(x)),
    "mix": random_mix,
}
