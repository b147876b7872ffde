"""A memory of synthetic images and their teacher logits.

Mixing old batches into the student's batches keeps it from forgetting regions the generator has
moved away from (the paper's replay memory). Two policies:
- fifo: a ring buffer of the most recent images (16k images = the last 64 generator batches);
- reservoir: a uniform sample of every image generated so far (Vitter's algorithm R), so early,
  more varied generator states stay represented for the whole run.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

_MAX_BYTES = 512 * 2 ** 20  # keep the memory well under the machine's RAM, whatever the image size


POLICIES = ("fifo", "reservoir")


class ReplayMemory:
    def __init__(self, capacity: int, image_shape: Tuple[int, int, int], num_classes: int, device: torch.device,
                 policy: str = "fifo") -> None:
        if policy not in POLICIES:
            raise ValueError(f"replay policy must be one of {POLICIES}, not {policy!r}")
        self.policy = policy
        per_image = 4 * (image_shape[0] * image_shape[1] * image_shape[2] + num_classes)
        self.capacity = max(0, min(capacity, _MAX_BYTES // per_image))
        self.x = torch.empty((self.capacity, *image_shape), device=device)
        self.t = torch.empty((self.capacity, num_classes), device=device)
        self.count = 0
        self.ptr = 0
        self.seen = 0  # images ever pushed (reservoir)

    def __len__(self) -> int:
        return self.count

    def push(self, x: torch.Tensor, t: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        if self.policy == "reservoir" and self.count == self.capacity:
            self._push_reservoir(x, t)
            return
        # fifo wraps around; reservoir fills the free slots only and samples the rest (algorithm R)
        n = min(len(x), self.capacity if self.policy == "fifo" else self.capacity - self.count)
        idx = (torch.arange(n, device=self.x.device) + self.ptr) % self.capacity
        self.x[idx] = x[:n].detach().float().contiguous()
        self.t[idx] = t[:n].detach().float()
        self.ptr = (self.ptr + n) % self.capacity
        self.count = min(self.count + n, self.capacity)
        self.seen += n
        if n < len(x):  # the memory filled up inside this batch
            self.push(x[n:], t[n:])

    def _push_reservoir(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Image number i (0-based, over the whole run) takes a random slot with probability capacity/(i+1)."""
        n = len(x)
        seen = self.seen + torch.arange(1, n + 1, device=self.x.device, dtype=torch.float64)
        slot = (torch.rand(n, device=self.x.device, dtype=torch.float64) * seen).long()
        src = (slot < self.capacity).nonzero().squeeze(1)
        # Two images of one batch may draw the same slot: as in the sequential algorithm the later one
        # wins. Writing duplicates in one indexed assignment leaves the winner undefined on CUDA, and
        # the image and its logits could come from different samples.
        slots, inverse = torch.unique(slot[src], return_inverse=True)
        last = torch.zeros(len(slots), dtype=torch.long, device=slot.device).scatter_reduce(
            0, inverse, torch.arange(len(src), device=slot.device), "amax", include_self=False)
        src = src[last]
        self.x[slots] = x[src].detach().float().contiguous()
        self.t[slots] = t[src].detach().float()
        self.seen += n

    def sample(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.count, (n,), device=self.x.device)
        return self.x[idx], self.t[idx]

    def state_dict(self) -> Dict[str, object]:
        return {"x": self.x[: self.count].cpu(), "t": self.t[: self.count].cpu(), "ptr": self.ptr, "seen": self.seen}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        x, t = state["x"], state["t"]
        self.count = len(x)  # type: ignore[arg-type]
        self.x[: self.count] = x.to(self.x.device)  # type: ignore[union-attr]
        self.t[: self.count] = t.to(self.t.device)  # type: ignore[union-attr]
        self.ptr = int(state["ptr"])  # type: ignore[arg-type]
        self.seen = int(state.get("seen", self.count))  # type: ignore[arg-type]
