"""How a run spends its budget: learning-rate schedule, student steps per generator step, and the batch.

The student-step count and the batch are chosen from the timed second iteration and cached with the
execution plans (probe.py), so two runs on one machine agree; with batch_refit, a tenth of the way into the
budget the batch is fitted once more, from the iterations as they actually ran (refit_batch). A resumed run
takes both from its checkpoint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from edgekd.distill.probe import CpuShare, cached, plan_key, remember
from edgekd.distill.synthesizers import IMAGE_TERMS

if TYPE_CHECKING:
    from edgekd.distill.config import DistillConfig
    from edgekd.distill.loop import Distiller

REFIT_AT = 0.1  # of the time budget: the batch is fitted again from the iterations run by then
REFIT_MIN_ITERATIONS = 5  # fewer are too few to time an iteration by


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
    lower than cfg.min_batch (32 lost 5 points to 64 on photo10, round 14). The timed iteration leaves out
    evaluation and checkpoints, and a small batch costs more than its share: with batch_refit, refit_batch
    corrects the choice from the iterations as they ran."""
    cfg = d.cfg
    if not (cfg.budget_g_steps and cfg.time_budget) or d.batch <= cfg.min_batch:
        return
    left = max(cfg.time_budget - d.elapsed - iteration_seconds, 0.0)
    fits = left / max(iteration_seconds, 1e-9)
    key = f"batch|{key}|{cfg.batch_size}|{cfg.time_budget:g}|{cfg.budget_g_steps}|{cfg.min_batch}"

    def measure() -> int:
        if fits >= cfg.budget_g_steps:
            return cfg.batch_size
        return max(cfg.min_batch, int(cfg.batch_size * fits / cfg.budget_g_steps) // 8 * 8)

    batch, hit = cached(key, measure, lambda v: isinstance(v, int) and cfg.min_batch <= v <= cfg.batch_size,
                        lambda: crowded)
    d.batch = int(d.world.from_main(int(batch)))  # valid: cfg.min_batch..cfg.batch_size
    if cfg.batch_refit:  # refit_batch opens its window when this iteration ends (step and elapsed are set then)
        d.batch_fit = {"key": key, "full_seconds": iteration_seconds, "step": None, "elapsed": None, "done": False}
    if d.batch < cfg.batch_size:
        d._event(f"step {d.step + 1}: batch {d.batch} from here, so that about {cfg.budget_g_steps} "
                 f"generator steps fit in the budget "
                 + ("(cached for this setting)" if hit else
                    f"({fits:.0f} iterations of {cfg.batch_size} would: {iteration_seconds:.2f}s each); "
                    "--batch-size fixes it"))


def batch_for_seconds(seconds: float, batch: int, batch_seconds: float, full: int, full_seconds: float,
                      least: int) -> int:
    """The batch whose iteration takes `seconds`, from two observed points: `batch_seconds` at `batch`,
    `full_seconds` at `full` (the largest batch allowed). The cost is a + c x batch: per-layer dispatch,
    the optimisers and the hooks do not shrink with the batch, so on photo10 96 images took 1.76 s an
    iteration where 256 took 3.72 s (proportional: 1.40 s; benchmarks/TUNING.md round 26). With one point,
    or points that give no positive a and c (noise), proportional. Multiples of 8, least..full."""
    c = (full_seconds - batch_seconds) / (full - batch) if full > batch else 0.0
    a = batch_seconds - c * batch
    wanted = (seconds - a) / c if c > 0 and a > 0 else batch * seconds / max(batch_seconds, 1e-9)
    return int(min(full, max(least, int(wanted) // 8 * 8)))


def refit_batch(d: Distiller) -> None:
    """Once, at REFIT_AT of the budget: the batch again, so that the generator steps still wanted fit the
    time left, by what the iterations since the first choice really took (evaluation and checkpoints
    included) and the timed iteration at the full batch. The first choice assumes a cost proportional to
    the batch and leaves out evaluation: runs made 70-115% of the 400 generator steps it aimed at
    (round 25). The new batch is cached for the next run of this setting (unless other work crowded the
    cores) and kept in the checkpoint with the window, so a resumed run neither refits again nor differs."""
    fit, cfg = d.batch_fit, d.cfg
    if fit is None or fit["done"]:
        return
    if fit["step"] is None:
        fit["step"], fit["elapsed"] = d.step, d.elapsed
        d.batch_fit_share = CpuShare(d.plan.device)
        return
    ran = d.step - fit["step"]
    if ran < REFIT_MIN_ITERATIONS or d.elapsed < REFIT_AT * cfg.time_budget:
        return
    fit["done"] = True
    took = (d.elapsed - fit["elapsed"]) / ran
    want = (cfg.time_budget - d.elapsed) / max(cfg.budget_g_steps - d.step, 1)
    old = d.batch
    d.batch = int(d.world.from_main(batch_for_seconds(want, old, took, cfg.batch_size, fit["full_seconds"], cfg.min_batch)))
    share = getattr(d, "batch_fit_share", None)  # none after a resume: its window's share is unknown
    remember(fit["key"], d.batch, crowded=share is None or share.crowded())
    d._event(f"step {d.step + 1}: batch {d.batch} from here (was {old}): {ran} iterations took {took:.2f}s each, "
             f"evaluation and checkpoints included; {cfg.budget_g_steps - d.step} more generator steps in "
             f"{cfg.time_budget - d.elapsed:.0f}s want {want:.2f}s each (a full batch of {cfg.batch_size}: "
             f"{fit['full_seconds']:.2f}s)" if d.batch != old else
             f"step {d.step + 1}: batch {old} kept: {ran} iterations took {took:.2f}s each, "
             f"{cfg.budget_g_steps - d.step} more generator steps in the {cfg.time_budget - d.elapsed:.0f}s left "
             f"want {want:.2f}s each")
