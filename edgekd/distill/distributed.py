"""Distillation in several processes: `torchrun --nproc_per_node N -m edgekd distill ...`.

Data parallel, as DistributedDataParallel is: every process (rank) holds the same student, generator
and discriminator, synthesises its own batch, and averages its gradients with the others before
each optimiser step, so the weights stay identical. The averaging is an all-reduce of one flat
buffer per optimiser step rather than the DDP wrapper, because the generator's step runs the student
with its weights frozen (and the student's step runs the generator without gradients), which DDP's
reducer only allows with find_unused_parameters and an extra pass per step.

What differs per rank: the random stream (so the batches differ), the replay memory and the BatchNorm
running statistics (unused in training, where BN takes batch statistics; rank 0's are the ones saved).
Decisions that must be the same everywhere are agreed: the losses behind NaN recovery and collapse
detection are averaged over ranks, and the clock, Ctrl-C and checkpoint times are rank 0's or any
rank's (a max over ranks) once per iteration. Rank 0 alone writes the run directory; the checkpoint
carries every rank's random state and memory, so `--resume` with the same number of processes goes on
exactly, and another number is refused.

Backend: gloo on CPU (tested here with 2 processes), NCCL on CUDA, one GPU per process (LOCAL_RANK).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @classmethod
    def from_environment(cls, device: str = "auto") -> World:
        """The process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR...);
        one process when it describes none."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch.distributed as dist

        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:  # before any model is made: "cuda" then means this rank's own GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    # ---------------------------------------------------------------- collectives (no-ops alone)
    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not self.active or not grads:
            return
        import torch.distributed as dist

        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return values
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values)
        return values / self.size

    def maximum(self, values: Sequence[float]) -> List[float]:
        """The largest of every rank's values, one collective: the agreed clock and stop flags."""
        if not self.active:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def from_main(self, obj: Any) -> Any:
        """Rank 0's object on every rank (plans, step counts measured there)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's object, in rank order, on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: Optional[List[Any]] = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def sync_module(self, module: nn.Module) -> None:
        """Rank 0's weights and buffers everywhere (after a re-initialisation that drew random numbers)."""
        if not self.active:
            return
        import torch.distributed as dist

        for t in [*module.parameters(), *module.buffers()]:
            # Through a contiguous copy: a collective moves raw storage, and a channels_last tensor's
            # storage is in another order than rank 0's contiguous one would be.
            buf = t.data.contiguous()
            dist.broadcast(buf, src=0)
            if buf.data_ptr() != t.data.data_ptr():
                t.data.copy_(buf)

    def raise_if_any(self, error: Optional[BaseException]) -> None:
        """An error on one rank stops every rank (the others would wait for it forever): each raises
        its own or the first rank's."""
        errors = [error]
        if self.active:
            import torch.distributed as dist

            errors = [None] * self.size
            dist.all_gather_object(errors, error)
        if error is not None:
            raise error
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
