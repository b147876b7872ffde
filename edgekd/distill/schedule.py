"""How a run spends its budget: learning-rate schedule, student steps per generator step, and the batch.

The student-step count and the batch are chosen once, from the timed second iteration, and cached with
the execution plans (probe.py), so two runs on one machine, and a run and its resumed self, agree.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from edgekd.distill.probe import cached, plan_key
from edgekd.distill.synthesizers import IMAGE_TERMS

if TYPE_CHECKING:
    from edgekd.distill.config import DistillConfig
    from edgekd.distill.loop import Distiller

MIN_BATCH = 64  # the least budget_g_steps shrinks a batch to


def lr_factor(cfg: DistillConfig, step: int, elapsed: float) -> float:
    """Cosine from 1 to 0.01 over the run (by steps or by the time budget, whichever is further on)."""
    if cfg.lr_schedule == "constant":
        return 1.0
    frac = 0.0
    if cfg.iterations:
        frac = max(frac, step / cfg.iterations)
    if cfg.time_budget:
        frac = max(frac, elapsed / cfg.time_budget)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def set_lr(opt: Optional[torch.optim.Optimizer], lr: float) -> None:
    """Every group at lr x its own lr_mult (G's output head keeps its multiple through the schedule)."""
    if opt is not None:
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)


def _cost_terms(cfg: DistillConfig) -> str:
    """The loss terms that are on: each adds work to a G or S step (cr a second teacher pass), so a count
    timed without one is not reused with it."""
    return "+".join(k for k in (*IMAGE_TERMS, "at", "gan") if getattr(cfg, f"w_{k}"))


def choose_schedule(d: Distiller, g_seconds: float, s_seconds: float, crowded: bool = False) -> None:
    """Student steps per G step so the student's time is about s_time_ratio x the generator's,
    between 1 and cfg.s_steps; then, with budget_g_steps, the batch. Timed while other work shared the
    cores (`crowded`, probe.CpuShare): kept until a run times it on a quiet machine."""
    cfg = d.cfg
    key = "s_steps|" + "|".join([plan_key(r, n, d.spec.input_shape, cfg.batch_size, [d.plans[r]])
                                 for r, n in (("teacher", d.spec.arch), ("student", cfg.student))]
                                + [str(cfg.s_time_ratio), str(cfg.s_steps), str(cfg.g_steps), cfg.synthesizer,
                                   f"G{cfg.gen_width}x{cfg.latent_dim}", _cost_terms(cfg)])
    want = cfg.s_time_ratio * g_seconds / max(s_seconds, 1e-9)
    n, hit = cached(key, lambda: max(1, min(cfg.s_steps, round(want))),
                    lambda v: isinstance(v, int) and 1 <= v <= cfg.s_steps, lambda: crowded)
    d.s_steps, d.s_steps_chosen = int(d.world.from_main(int(n))), True
    d._event(f"step {d.step + 1}: {d.s_steps} student steps per generator step from here "
             + ("(cached for this setting)" if hit else
                f"(G step {g_seconds:.3f}s, S step {s_seconds:.3f}s, S time up to {cfg.s_time_ratio:g}x G's, "
                f"at most {cfg.s_steps}" + ("; other work shared the cores: timed again next run" if crowded else "") + ")"))
    choose_batch(d, key, g_seconds + d.s_steps * s_seconds, crowded)


def choose_batch(d: Distiller, key: str, iteration_seconds: float, crowded: bool = False) -> None:
    """With a time budget, a batch small enough that about budget_g_steps generator steps fit in it.
    A generator that makes few steps never reaches the teacher's data: on a 2-core AVX2 CPU a ResNet-18
    teacher made 71 steps of 256 images in 10 minutes (student 53.7%) and 305 steps of 64 (69.1%); a
    ResNet-34 45.6% at 256, 63.6% at 64; photo10 47.7% at 256, 59.4% at 72 (benchmarks/TUNING.md round
    18). Per-image cost is about flat in the batch, so the batch scales with the steps that fit, but no
    lower than MIN_BATCH (32 lost 5 points to 64 on photo10, round 14). The timed iteration leaves out
    evaluation and checkpoints: runs made 75-80% of the steps it foretold (hence 400 in the presets)."""
    cfg = d.cfg
    if not (cfg.budget_g_steps and cfg.time_budget) or d.batch <= MIN_BATCH:
        return
    left = max(cfg.time_budget - d.elapsed - iteration_seconds, 0.0)
    fits = left / max(iteration_seconds, 1e-9)
    key = f"batch|{key}|{cfg.batch_size}|{cfg.time_budget:g}|{cfg.budget_g_steps}"

    def measure() -> int:
        if fits >= cfg.budget_g_steps:
            return cfg.batch_size
        return max(MIN_BATCH, int(cfg.batch_size * fits / cfg.budget_g_steps) // 8 * 8)

    batch, hit = cached(key, measure, lambda v: isinstance(v, int) and MIN_BATCH <= v <= cfg.batch_size,
                        lambda: crowded)
    d.batch = int(d.world.from_main(int(batch)))  # valid: MIN_BATCH..cfg.batch_size
    if d.batch < cfg.batch_size:
        d._event(f"step {d.step + 1}: batch {d.batch} from here, so that about {cfg.budget_g_steps} "
                 f"generator steps fit in the budget "
                 + ("(cached for this setting)" if hit else
                    f"({fits:.0f} iterations of {cfg.batch_size} would: {iteration_seconds:.2f}s each); "
                    "--batch-size fixes it"))
