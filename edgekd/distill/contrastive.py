"""CMI's contrastive term for the lasting generator: `cr` keeps new images apart from the run's earlier ones.

CMI (Fang et al., "Contrastive Model Inversion for Data-Free Knowledge Distillation", IJCAI 2021;
zju-vipa/CMI datafree/synthesis/contrastive.py): every synthetic image is an instance; a learnt MLP head
projects the teacher's channel means of two views of it (a global view and a random-resized-crop local
view), and the local view must pick its own global view out of the batch and a bank of features of
earlier images (InfoNCE at temperature cr_tau). The generator can only lower that loss by making images
the teacher tells apart from each other and from what it made before: diversity *within* a class, which
the batch-level balance term does not ask for (photo10's generator drew one look per class, TUNING.md
round 14).

Where this differs from the reference, for a CPU budget and a generator kept for the whole run (the
reference re-initialises its generator for every batch of 200 steps): the features are the channel means
of the teacher's last convolution at each spatial size (a ResNet-34: 1,024 numbers, where all its BN inputs
are 8,500), the head's hidden layer is 256 wide (the reference: as wide as the features), the bank holds
the features of the last `cr_bank` generated images, every G step adds its batch, and `cr_neg` of them are
drawn as negatives per step (the reference: 40,960 and 4,096). The global view is the generator's jittered
batch the other terms already see.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

HEAD_HIDDEN = 256
HEAD_OUT = 128  # the reference's head_dim
LOCAL_SCALE = (0.25, 1.0)  # share of the image's area a local view keeps (the reference's RandomResizedCrop)
LOCAL_RATIO = (3 / 4, 4 / 3)


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


class ConvMeansHook:
    """Channel means of the output of the model's last Conv2d at each spatial size, concatenated in
    forward order: one vector per image that sees every depth of the network (CMI's InstanceMeanHook,
    one layer per scale)."""

    def __init__(self, model: nn.Module) -> None:
        self.enabled = False
        self._maps: Dict[Tuple[int, int], torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, nn.Conv2d)]

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def _hook(self, _module: nn.Module, _inputs: Tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if self.enabled and isinstance(out, torch.Tensor) and out.dim() == 4:
            self._maps[tuple(out.shape[-2:])] = out.float().mean(dim=(2, 3))  # later layers replace earlier

    def pop(self) -> torch.Tensor:
        out = torch.cat(list(self._maps.values()), dim=1)
        self._maps = {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class ContrastHead(nn.Module):
    """The reference's MLPHead: Linear, ReLU, Linear, then L2-normalised."""

    def __init__(self, dim_in: int, hidden: int = HEAD_HIDDEN, dim_out: int = HEAD_OUT) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(x), dim=1)


class FeatureBank:
    """The (local, global) features of the last `size` images, oldest overwritten first."""

    def __init__(self, size: int, dim: int, device: torch.device) -> None:
        self.data = torch.zeros(size, 2 * dim, device=device)
        self.ptr = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, local: torch.Tensor, global_: torch.Tensor) -> None:
        rows = torch.cat([local, global_], dim=1).detach().float()
        # A step that went NaN is undone by the run's guard (guards.py), but the bank is not in its snapshot:
        # non-finite rows never enter it, or every later cr loss would be NaN.
        rows = rows[torch.isfinite(rows).all(1)][-len(self.data):]
        idx = (self.ptr + torch.arange(len(rows), device=self.data.device)) % len(self.data)
        self.data[idx] = rows
        self.ptr = int((self.ptr + len(rows)) % len(self.data))
        self.count = min(len(self.data), self.count + len(rows))

    def sample(self, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """k stored (local, global) pairs drawn without replacement (fewer while the bank fills)."""
        idx = torch.randperm(self.count, device=self.data.device)[:k]
        return self.data[idx].chunk(2, dim=1)

    def state_dict(self) -> Dict[str, object]:
        return {"data": self.data[: self.count].cpu(), "ptr": self.ptr, "count": self.count}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        data = state["data"]
        assert isinstance(data, torch.Tensor)
        self.data[: len(data)] = data.to(self.data.device)
        self.ptr, self.count = int(state["ptr"]), int(state["count"])  # type: ignore[call-overload]


def local_view(x: torch.Tensor) -> torch.Tensor:
    """A random resized crop of each image (area LOCAL_SCALE, aspect LOCAL_RATIO) scaled back to full size,
    half of them mirrored: differentiable, so the generator's gradient flows through it."""
    n = len(x)
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(*LOCAL_SCALE)
    ratio = torch.exp(torch.empty(n, device=dev).uniform_(math.log(LOCAL_RATIO[0]), math.log(LOCAL_RATIO[1])))
    w = (area * ratio).sqrt().clamp(max=1.0)  # half-widths in affine_grid's [-1, 1] coordinates
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, device=dev) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, device=dev) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0)
    zero = torch.zeros(n, device=dev)
    theta = torch.stack([torch.stack([w * flip, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def contrastive_loss(head: nn.Module, local: torch.Tensor, global_: torch.Tensor,
                     bank: Optional[Tuple[torch.Tensor, torch.Tensor]], tau: float) -> torch.Tensor:
    """The reference's "naive" InfoNCE: each local view's projection against every global one (this batch's
    and the bank's, detached), its own the positive. The batch's and the bank's rows are averaged apart,
    as the reference does, so the bank does not drown the gradient to the generator."""
    n = len(local)
    if bank is not None and len(bank[0]):
        local, global_ = torch.cat([local, bank[0]]), torch.cat([global_, bank[1]])
    proj = head(torch.cat([local, global_]).float())
    p_local, p_global = proj.chunk(2)
    logits = p_local @ p_global.detach().T / tau
    ce = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")
    return ce[:n].mean() + (ce[n:].mean() if len(ce) > n else 0.0)


class Contrast:
    """The run's contrastive parts: the hook on the teacher, the head and its optimiser, the bank."""

    def __init__(self, teacher: nn.Module, input_shape: Tuple[int, ...], device: torch.device, lr: float,
                 bank_size: int, negatives: int, tau: float) -> None:
        self.hook = ConvMeansHook(teacher)
        self.hook.enabled = True
        with torch.no_grad():
            teacher(torch.zeros(2, *input_shape, device=device))
        self.dim = self.hook.pop().shape[1]
        self.hook.enabled = False
        self.head = ContrastHead(self.dim).to(device)
        self.opt = torch.optim.Adam(self.head.parameters(), lr=lr)  # the reference: lr_g, Adam's defaults
        self.bank = FeatureBank(bank_size, self.dim, device)
        self.negatives, self.tau = negatives, tau
        self._pending: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # this step's features, for the bank

    def loss(self, global_: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        bank = self.bank.sample(self.negatives) if len(self.bank) else None
        self._pending = (local.detach(), global_.detach())
        return contrastive_loss(self.head, local, global_, bank, self.tau)

    def remember(self) -> None:
        """After the step: this batch's features join the bank."""
        if self._pending is not None:
            self.bank.add(*self._pending)
            self._pending = None

    def parameters(self) -> List[nn.Parameter]:
        return list(self.head.parameters())
