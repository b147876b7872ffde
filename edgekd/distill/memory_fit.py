"""The batch a run's models fit in this machine's memory, found before any step runs.

The generator step keeps the activations of the generator, the teacher and the student (its
adversarial term) alive until its backward, for every image of the batch. At 32x32 that is a few
hundred KiB per image; at 224x224 a ResNet-34 teacher with a MobileNetV2 student takes 119 MiB per
image by the count below (peak RSS grows by 88 MiB per image: 2.5 GiB at batch 8, 3.9 GiB at 24, fp32 on a CPU), so the
default batch of 256 needs ~24 GiB, and a 24-GiB machine killed the README's own command
(`edgekd distill resnet34.pt --student mobilenetv2`, 224 px) after 8 minutes. The count is what autograd
saves for the backward of each model's forward, per image (saved-tensor hooks, fp32; an upper bound: the
teacher's frozen weights save less in a run); the batch is what fits in
60% of the memory available now (the replay memory, up to 512 MiB, the evaluation images, gradients
and the allocator's slack take the rest).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from edgekd.errors import UsageError

SHARE = 0.6  # of the available memory the generator step's activations may take
_GIB = 2 ** 30


def saved_bytes(model: nn.Module, x: torch.Tensor, train: bool) -> int:
    """Bytes autograd keeps for the backward of `model(x)`: what a batch holds until the generator
    step's backward. Counted by saved-tensor hooks, so TorchScript teachers (no forward hooks) are
    counted too; a tensor saved twice is counted once. Weights are among them: see per_image_bytes."""
    seen: Dict[Tuple[int, int, torch.dtype], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    was_training = model.training
    x = x.clone().requires_grad_(True)  # the teacher's weights are frozen: gradients flow to its input
    try:
        model.train(train)  # the teacher runs in eval mode (its BN statistics must not move), the others train
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    finally:
        model.train(was_training)
    return sum(seen.values())


def per_image_bytes(model: nn.Module, shape: Tuple[int, ...], train: bool) -> int:
    """What one more image of a batch adds to saved_bytes: the difference between batches of 4 and 2
    (BatchNorm in training mode refuses one image), so weights saved once per batch do not count."""
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    return max(0, saved_bytes(model, x, train) - saved_bytes(model, x[:2], train)) // 2


def available_bytes(device: str) -> Tuple[int, str]:
    """Memory the run's tensors may take where they will live, and what it is. Processes launched
    together by torchrun must agree on the batch, so they count what is installed, not what is free
    at the moment each looks; on one machine's RAM they share it."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    together = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if device != "cpu" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return (int(total), "on the GPU") if together else (int(free), "free on the GPU")
    if together:
        return _meminfo("MemTotal") // local, f"of RAM for each of {local} processes"
    free = _meminfo("MemAvailable")
    limit = _cgroup_room()  # a container's memory limit, which /proc/meminfo does not show
    return (min(free, limit) if limit is not None else free), "of RAM available"


def _meminfo(field: str) -> int:
    """A /proc/meminfo field in bytes (MemAvailable, MemTotal); sysconf where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = "SC_AVPHYS_PAGES" if field == "MemAvailable" else "SC_PHYS_PAGES"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf(pages)


def _cgroup_room() -> Optional[int]:
    """What a cgroup-v2 memory limit leaves (limit - usage), or None when there is no limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def fit_batch(per_image: int, batch: int, free: int, where: str, shape: Tuple[int, ...],
              explicit: bool) -> Tuple[int, str]:
    """(the batch to run, a note: "" when `batch` fits). A default batch that does not fit shrinks to
    a multiple of 8 that does; one the user asked for is an error naming the batch that fits."""
    fits = int(SHARE * free // max(per_image, 1))
    if batch <= fits:
        return batch, ""
    shape_text = "x".join(map(str, shape))
    need = (f"batch {batch} needs ~{batch * per_image / _GIB:.1f} GiB of activations at {shape_text} "
            f"({per_image / 2 ** 20:.0f} MiB per image for generator, teacher and student), "
            f"{free / _GIB:.1f} GiB {where}")
    if fits < 2:
        raise UsageError(f"{need}: not even batch 2 fits; use a smaller --input-size or --student")
    chosen = fits if fits < 8 else fits // 8 * 8
    if explicit:
        raise UsageError(f"--batch-size {batch} is too large: {need}; use --batch-size {chosen} or less")
    return chosen, f"batch {chosen}: the default {need}"


def batch_for(teacher: nn.Module, student: nn.Module, generator: nn.Module, shape: Tuple[int, ...],
              latent_dim: int, batch: int, device: str, explicit: bool) -> Tuple[int, str]:
    """fit_batch for these models at this input shape on the device the run will use."""
    per_image = (per_image_bytes(teacher, shape, False) + per_image_bytes(student, shape, True)
                 + per_image_bytes(generator, (latent_dim,), True))
    free, where = available_bytes(device)
    return fit_batch(per_image, batch, free, where, shape, explicit)
