"""Per-model execution plans chosen by measurement, not by rule.

bf16 autocast and channels_last do not pay for every network on every CPU: on an AVX-512-bf16 CPU a
MobileNetV2 student trains 2.5x *slower* under bf16 (depthwise convolutions: 0.54 s against 0.22 s
for fp32 + channels_last per step of 256 at 32x32) while a ResNet-34 teacher runs faster under it
(0.51 s against 0.64 s). So on a CPU with precision and memory format left on auto, the teacher (its
forward and the backward to its input, as the generator step runs it) and the student (a training
step) each get the fastest of the candidate plans, timed on this machine. The choice is cached per
model, shape, batch, CPU and torch version, so runs on one machine agree (a resumed run uses the
plan stored in its checkpoint), and recorded in the run's config.json.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from edgekd.cpu import RELEVANT_FLAGS, torch_cpu_flags
from edgekd.distill.distributed import launched_rank
from edgekd.distill.precision import ExecutionPlan
from edgekd.fileio import write_json


def cache_path() -> Path:
    root = os.environ.get("EDGEKD_CACHE_DIR") or Path.home() / ".cache" / "edgekd"
    return Path(root) / "plans.json"


def candidates(base: ExecutionPlan, precision: str, channels_last: str) -> List[ExecutionPlan]:
    """The plans worth timing: only where both knobs are left on auto, and only on a CPU (a GPU plan
    follows the hardware: tensor cores want reduced precision and channels_last)."""
    if base.device.type != "cpu" or precision != "auto" or channels_last != "auto":
        return [base]
    out = [base] if base.dtype is not None else []
    out += [ExecutionPlan(base.device, None, True, "fp32, channels_last"),
            ExecutionPlan(base.device, None, False, "fp32")]
    return out


def _step(model: nn.Module, x: torch.Tensor, plan: ExecutionPlan, role: str) -> None:
    with plan.autocast():
        out = model(plan.tensor(x))
    loss = out.float().logsumexp(1).mean()
    if role == "teacher":  # the generator step: gradients flow to the input, not the frozen weights
        torch.autograd.grad(loss, x)
    else:
        loss.backward()


def _seconds(model: nn.Module, shape: Tuple[int, ...], batch: int, plan: ExecutionPlan, role: str) -> float:
    # The student is copied (its weights and BN statistics must not move); the frozen teacher is timed
    # in place (a TorchScript teacher may not copy), and its memory format is set again by the caller.
    m = plan.module((copy.deepcopy(model) if role == "student" else model).float().to(plan.device))
    m.train(role == "student")
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).to(plan.device)
    x.requires_grad_(role == "teacher")
    _step(m, x, plan, role)  # warm-up: allocation, kernel choice
    t0 = time.perf_counter()
    for _ in range(2):
        _step(m, x, plan, role)
        m.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / 2


def plan_key(role: str, name: str, shape: Tuple[int, ...], batch: int, plans: List[ExecutionPlan]) -> str:
    return "|".join([role, name, "x".join(map(str, shape)), str(batch), torch.__version__,
                     str(torch.get_num_threads()), " ".join(f for f in RELEVANT_FLAGS if f in torch_cpu_flags()),
                     ",".join(p.reason for p in plans)])


def _read_cache() -> Dict[str, Any]:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def busy_seconds() -> Optional[float]:
    """CPU time every core of this machine has spent busy (or stolen by the hypervisor) since boot;
    None where /proc/stat does not exist."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


class CpuShare:
    """Whether a stretch of work was crowded out of the cores it asked for: the machine's cores all
    busy and this process getting less than its threads' worth. Timings made so (a test suite beside a
    run, more runs than cores) are cached only until a timing on a quiet machine replaces them (cached()):
    a schedule timed under contention once held a ResNet-34 run at 9 student steps per G step where 3-4 fit
    (benchmarks/TUNING.md round 20). Two one-thread runs on two cores each have theirs: not crowded."""

    FULL = 0.9  # a share of the cores' (or the threads') time that counts as all of it

    def __init__(self, device: torch.device = torch.device("cpu")) -> None:
        self.device = device
        self.wall, self.cpu, self.busy = time.perf_counter(), time.process_time(), busy_seconds()

    def crowded(self) -> bool:
        busy = busy_seconds()
        if self.device.type != "cpu" or busy is None or self.busy is None:
            return False  # a GPU's work is not this process's CPU time; no /proc/stat: nothing to judge by
        wall = time.perf_counter() - self.wall
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        saturated = busy - self.busy >= self.FULL * cores * wall
        wanted = min(torch.get_num_threads(), cores)
        # /proc/stat counts in ticks of 10 ms: under half a second it cannot tell.
        return wall > 0.5 and saturated and time.process_time() - self.cpu < self.FULL * wanted * wall


_CROWDED = "_crowded"  # the keys whose value was measured while other work crowded the cores


def cached(key: str, measure: Callable[[], Any], valid: Callable[[Any], bool],
           crowded: Callable[[], bool] = lambda: False) -> Tuple[Any, bool]:
    """The value cached under `key`, or `measure()` stored there; and whether it was cached. A cached
    value that is not `valid` (an older edgekd's format, a hand edit) is measured again. A value measured
    while `crowded()` (other work on the cores) is kept only until a measurement on a quiet machine
    replaces it; measured crowded again, the kept one is used, so runs on a busy machine still agree."""
    cache = _read_cache()
    had = key in cache and valid(cache[key])
    if had and key not in cache.get(_CROWDED, []):
        return cache[key], True
    value = measure()
    busy = crowded()
    if busy and had:
        return cache[key], True
    _store(cache, key, value, busy)
    return value, False


def remember(key: str, value: Any, crowded: bool) -> None:
    """Store a value measured again (schedule.refit_batch) under `key`, replacing the cached one; one
    measured while other work crowded the cores replaces only a value measured so too."""
    cache = _read_cache()
    if crowded and key in cache and key not in cache.get(_CROWDED, []):
        return
    _store(cache, key, value, crowded)


def _store(cache: Dict[str, Any], key: str, value: Any, crowded: bool) -> None:
    provisional = set(cache.get(_CROWDED, []))
    (provisional.add if crowded else provisional.discard)(key)
    cache[key], cache[_CROWDED] = value, sorted(provisional)
    if launched_rank() == 0:  # under torchrun rank 0's choice is the run's (distributed.py): only it is kept
        try:
            write_json(cache_path(), cache)
        except OSError:  # a read-only home: measure again next time
            pass


def probe_batch(batch: int, size: Tuple[int, int]) -> int:
    """The batch plans are timed at: the run's, capped at the pixels of 256 images of 32x32. At 224x224
    three timed steps per plan and side at the run's batch (112) took two minutes of a 10-minute budget
    on a 2-core CPU; 5 images of 224x224 are as much work per convolution as the batches the plans
    were compared at, and 32x32 runs time exactly what they did."""
    return max(2, min(batch, 256 * 32 * 32 // (size[0] * size[1])))


def fastest_plan(model: nn.Module, name: str, role: str, shape: Tuple[int, ...], batch: int,
                 plans: List[ExecutionPlan]) -> Tuple[ExecutionPlan, str]:
    """The quickest plan for `model` in `role`, and a note saying what was measured."""
    if len(plans) == 1:
        return plans[0], ""
    share = CpuShare(plans[0].device)

    def measure() -> List[float]:
        with torch.random.fork_rng(devices=[]):  # the run's random stream stays as if no probe ran
            return [_seconds(model, shape, batch, p, role) for p in plans]

    def valid(v: Any) -> bool:
        return isinstance(v, list) and len(v) == len(plans) and all(isinstance(t, (int, float)) for t in v)

    seconds, hit = cached(plan_key(role, name, shape, batch, plans), measure, valid, share.crowded)
    how = "cached" if hit else "measured"
    best = min(range(len(plans)), key=lambda i: seconds[i])
    timings = ", ".join(f"{p.reason} {s:.3f}s" for p, s in zip(plans, seconds))
    return plans[best], f"{role} {name}: {plans[best].reason} ({how} per step: {timings})"
