"""The run driver: one distillation loop for every method (presets.py holds their weights).

Per iteration:
  synthesis (synthesizers.py): the preset's synthesizer makes a batch of images and trains what makes
    them (the generator, or Fast-Datafree's meta-generator), leaving (images, teacher logits);
  student (student.py): s_steps steps on that batch mixed with replay memory, KD to the teacher
    (+ attention transfer, discriminator), EMA;
  evaluation (evaluation.py), on its schedule: real accuracy when given, agreement on held-out synthetic
    images and on the pool of earlier generators' images, which picks the student kept.
Around it, here: an in-memory last-good snapshot for NaN recovery, collapse detection, periodic atomic
checkpoints, exact resume, Ctrl-C/SIGTERM that stops at an iteration boundary and saves, and the
agreement between processes under torchrun (distributed.py).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from edgekd import __version__
from edgekd.data.datasets import LabelledImages, check_dataset_fits, prepare_images
from edgekd.distill import evaluation, student
from edgekd.distill.config import DistillConfig
from edgekd.distill.discriminator import Discriminator
from edgekd.distill.distributed import World
from edgekd.distill.generator import Generator, reset_weights
from edgekd.distill.grey import channel_means
from edgekd.distill.hooks import BNStatsHook, ClassifierInputHook, FeatureMapHook, has_batchnorm
from edgekd.distill.precision import DTYPES, ExecutionPlan, plan_execution
from edgekd.distill.probe import cached, candidates, fastest_plan, plan_key, probe_batch
from edgekd.distill.replay import ReplayMemory
from edgekd.distill.synthesizers import IMAGE_TERMS, SYNTHESIZERS
from edgekd.errors import EdgekdError, TrainingError, UsageError
from edgekd.fileio import atomic_path, write_json
from edgekd.models.checkpoint import LoadedModel, save_checkpoint
from edgekd.models.registry import create_model, get_entry
from edgekd.progress import Progress
from edgekd.rundir import RunDir
from edgekd.spec import ModelSpec

MIN_BATCH = 64  # the least budget_g_steps shrinks a batch to
_OPTIMIZERS = {
    "adam": lambda params, cfg, lr: torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999), weight_decay=cfg.weight_decay),
    "sgd": lambda params, cfg, lr: torch.optim.SGD(params, lr=lr, momentum=cfg.momentum,
                                                   weight_decay=cfg.weight_decay or 5e-4),
}


@dataclass
class DistillResult:
    run_dir: Path
    student_path: Path
    steps: int
    seconds: float
    interrupted: bool
    metrics: Dict[str, Any]
    teacher_accuracy: Optional[float]
    events: List[str] = field(default_factory=list)
    plan: str = ""


@dataclass
class _Models:
    teacher: nn.Module
    student: nn.Module
    generator: Generator
    disc: Optional[Discriminator]
    opt_g: torch.optim.Optimizer
    opt_s: torch.optim.Optimizer
    opt_d: Optional[torch.optim.Optimizer]
    ema: Optional[nn.Module] = None  # exponential moving average of the student's weights

    def trainable(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"generator": self.generator, "student": self.student,
                               "opt_g": self.opt_g, "opt_s": self.opt_s}
        if self.disc is not None:
            out.update(disc=self.disc, opt_d=self.opt_d)
        if self.ema is not None:
            out.update(ema=self.ema)
        return out

    @property
    def final_student(self) -> nn.Module:
        """What is evaluated and saved: the EMA student when enabled."""
        return self.ema if self.ema is not None else self.student

    def state_dict(self) -> Dict[str, Any]:
        return {k: v.state_dict() for k, v in self.trainable().items()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k, v in self.trainable().items():
            v.load_state_dict(state[k])


class _StopFlag:
    """First Ctrl-C (or SIGTERM: a scheduler, torchrun) asks the loop to stop at the next iteration
    boundary and save; a second one aborts. `grace_s`: a second signal sooner than this counts as the
    first (torchrun passes the terminal's Ctrl-C on to its workers, which then see it twice)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, grace_s: float = 0.0) -> None:
        self.requested = False
        self.grace_s = grace_s
        self._first = 0.0
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        except ValueError:  # not the main thread: no signal handling, Ctrl-C behaves as usual
            self._previous = {}
        return self

    def _handle(self, *_: Any) -> None:
        if self.requested and time.monotonic() - self._first >= self.grace_s:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self._first = True, time.monotonic()

    def __exit__(self, *_: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _lr_factor(cfg: DistillConfig, step: int, elapsed: float) -> float:
    if cfg.lr_schedule == "constant":
        return 1.0
    frac = 0.0
    if cfg.iterations:
        frac = max(frac, step / cfg.iterations)
    if cfg.time_budget:
        frac = max(frac, elapsed / cfg.time_budget)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def _set_lr(opt: Optional[torch.optim.Optimizer], lr: float) -> None:
    if opt is not None:
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)


def _generator_optimizer(g: Generator, cfg: DistillConfig) -> torch.optim.Optimizer:
    """Adam over G; with g_out_lr_mult, G's output scale and shift in a group of their own at that
    multiple of lr_g. At lr_g 1e-3 Adam moves a shift by ~1e-3 a step: 700 steps to reach the mean
    -0.74 of MNIST normalised with 0.5/0.5, longer than a CPU run; at 50x the BN prior's first layer
    pins the input mean and spread within ~50 steps (benchmarks/TUNING.md round 8)."""
    out = list(g.out_bn.parameters()) if cfg.g_out_lr_mult != 1 else []
    rest = [p for p in g.parameters() if all(p is not q for q in out)]
    groups = [{"params": rest}] + ([{"params": out, "lr_mult": cfg.g_out_lr_mult}] if out else [])
    opt = torch.optim.Adam(groups, lr=cfg.lr_g, betas=(0.5, 0.999))
    _set_lr(opt, cfg.lr_g)  # each group at lr_g x its lr_mult, as every later schedule step sets it
    return opt


def _finite_params(module: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


def _check_student_takes(student: nn.Module, name: str, spec: ModelSpec) -> None:
    """A student too deep for the teacher's input size (LeNet-5 needs >= 32x32) fails here, in one line,
    not as a convolution error in the middle of the first step."""
    try:
        with torch.no_grad():
            student.eval()(torch.zeros(2, *spec.input_shape, device=next(student.parameters()).device))
    except RuntimeError as e:
        size = "x".join(map(str, spec.input_shape))
        raise UsageError(f"student {name} cannot take the teacher's {size} input ({str(e).splitlines()[0][:80]}): "
                         "choose another --student (edgekd models lists them)") from None
    student.train()


class Distiller:
    """Holds one run's state; `run()` executes it. Use `distill()` unless you need the pieces."""

    def __init__(self, teacher: LoadedModel, cfg: DistillConfig, run_dir: Path,
                 eval_data: Optional[LabelledImages] = None, progress: Optional[Progress] = None) -> None:
        self.cfg = cfg.validate()
        self.world = World.from_environment(cfg.device)  # one process, or one rank of torchrun's
        self.teacher_info = teacher
        self.spec = teacher.spec
        self.rundir = RunDir(run_dir)
        self.run_id: Optional[str] = None
        self.progress = (progress or Progress()) if self.world.main else Progress()
        self.plan: ExecutionPlan = plan_execution(cfg.device, cfg.precision, cfg.channels_last)
        self.events: List[str] = []
        self.notes: List[str] = list(teacher.notes)
        if cfg.method_choice:
            self.notes.append(f"method auto chose {cfg.method}: {cfg.method_choice}")
        torch.manual_seed(cfg.seed)
        dev = self.plan.device
        k = self.spec.num_classes

        get_entry(cfg.student)  # unknown student -> one clear error before any work
        t = teacher.model.to(dev).eval()
        for p in t.parameters():
            p.requires_grad_(False)
        s = create_model(cfg.student, k, self.spec.in_channels).to(dev)
        _check_student_takes(s, cfg.student, self.spec)
        g = Generator(cfg.latent_dim, self.spec.input_shape, cfg.gen_width, cfg.gen_output,
                      self.spec.mean, self.spec.std, k if cfg.gen_labels else 0, cfg.gen_grey).to(dev)
        # Each side gets the fastest plan on this CPU (probe.py); G runs under the teacher's, whose
        # input it makes and through which its gradients flow.
        choices = candidates(self.plan, cfg.precision, cfg.channels_last)
        self.plans: Dict[str, ExecutionPlan] = {}
        for role, model, name in (("teacher", t, self.spec.arch), ("student", s, cfg.student)):
            self.plans[role], note = fastest_plan(model, name, role, self.spec.input_shape,
                                                  probe_batch(cfg.batch_size, self.spec.input_size), choices)
            if note:
                self.notes.append(note)
        self.plans["teacher"].module(t)
        self.plans["teacher"].module(g)
        self.plans["student"].module(s)
        self._fit_config_to_teacher(t)
        if cfg.gen_init_mean:
            self._start_generator_at_data_mean(t, g)
        d = Discriminator(k).to(dev) if cfg.w_gan > 0 else None
        self.m = _Models(
            teacher=t, student=s, generator=g, disc=d,
            opt_g=_generator_optimizer(g, cfg),
            opt_s=_OPTIMIZERS[cfg.s_optimizer](s.parameters(), cfg, cfg.lr_s),
            opt_d=torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(0.5, 0.999)) if d is not None else None,
        )
        if self.world.active:  # every rank runs under rank 0's plans and starts from its weights
            self._restore_plans(self.world.from_main({r: [p.precision, p.channels_last] for r, p in self.plans.items()}),
                                "rank 0's")
        for module in (s, g, d):
            if module is not None:
                self.world.sync_module(module)
        if cfg.ema_decay > 0:
            self.m.ema = copy.deepcopy(s).requires_grad_(False)
        self.ema_updates = 0
        self._hooks(t, s)
        self.memory = ReplayMemory(cfg.replay_size if cfg.replay_fraction > 0 else 0, self.spec.input_shape, k, dev,
                                   cfg.replay_policy)
        # Held-out images withheld from the student, for synthesizers without a generator to draw them from.
        h, w = self.spec.input_size
        n_eval = cfg.eval_synthetic or max(64, min(1024, 1024 * 1024 // (h * w)))
        self.heldout = ReplayMemory(0 if SYNTHESIZERS[cfg.synthesizer].trains_generator else n_eval,
                                    self.spec.input_shape, k, dev, "fifo")
        self.scalers = {name: torch.amp.GradScaler(dev.type, enabled=self.plan.needs_grad_scaler)
                        for name in ("g", "s", "d")}
        # With s_time_ratio the count follows the measured step costs from iteration 3 on; the two
        # iterations before it (warm-up, then timed) take 2 student steps, not cfg.s_steps: at 224x224 on
        # a CPU, 20 steps of a MobileNetV2 at batch 112 are 100 s each, before the run knows it wants 1-5.
        self.s_steps = min(cfg.s_steps, 2) if cfg.s_time_ratio > 0 else cfg.s_steps
        self.s_steps_chosen = False
        self.batch = cfg.batch_size  # images per generator and student step; budget_g_steps may lower it
        self.step = 0
        self.elapsed = 0.0
        self.measure_seconds = 0.0  # scoring on real eval data: wall time outside the budget
        self.lr_scale = 1.0
        self.collapse_run = 0
        self.collapses = 0
        self.recoveries_in_a_row = 0
        self.snapshot: Optional[Dict[str, Any]] = None
        self.history: List[Dict[str, Any]] = []
        self.eval_x: Optional[torch.Tensor] = None
        self.eval_y: Optional[torch.Tensor] = None
        self.teacher_accuracy: Optional[float] = None
        self.teacher_pred_real: Optional[torch.Tensor] = None
        if eval_data is not None:
            check_dataset_fits(eval_data, self.spec)
            sub = eval_data.take(cfg.eval_images)
            self.eval_x = torch.from_numpy(prepare_images(sub.images, self.spec)).to(dev)
            self.eval_y = torch.from_numpy(sub.labels).to(dev)
            self.eval_source = sub.source
        # Held-out synthetic images for agreement: fixed latents, never trained on.
        # Fewer for large inputs (64 at 224x224), so evaluation stays a small share of the budget.
        gen = torch.Generator().manual_seed(cfg.seed + 10_007)
        self.eval_z = torch.randn(n_eval, cfg.latent_dim, generator=gen).to(dev)
        self.best_model: Optional[nn.Module] = None  # the student kept so far (keep_best)
        self.best_step: Optional[int] = None
        self.pool_x = torch.empty(0, *self.spec.input_shape, device=dev)
        self.pool_t = torch.empty(0, dtype=torch.long, device=dev)
        self._pool_rng = torch.Generator().manual_seed(cfg.seed + 20_011)  # own stream: resume stays exact
        if self.world.rank:  # other batches on every other rank; rank 0 keeps the one-process stream
            torch.manual_seed(cfg.seed + 1_000_003 * self.world.rank)

    # ---------------------------------------------------------------- set-up helpers
    def _fit_config_to_teacher(self, t: nn.Module) -> None:
        """Before anything is built: terms the teacher cannot support are switched off, and settings that
        depend on them reset, each with a note; a setting the teacher suggests (--grey) gets a note only."""
        cfg = self.cfg
        unused = [k for k in IMAGE_TERMS if getattr(cfg, f"w_{k}") and k not in SYNTHESIZERS[cfg.synthesizer].terms]
        if unused:  # said, not silently ignored: a --set w_div=10 on the fast preset does nothing
            self.notes.append(f"the {cfg.synthesizer} synthesizer ({cfg.method}) has no {'/'.join(unused)} term: "
                              "weight set to 0")
            for k in unused:
                setattr(cfg, f"w_{k}", 0.0)
        scripted = isinstance(t, torch.jit.ScriptModule)
        if scripted and (cfg.w_bn or cfg.w_act or cfg.w_div or cfg.w_at):
            self.notes.append("TorchScript teacher: forward hooks unavailable, so bn/act/div/at weights are 0")
            cfg.w_bn = cfg.w_act = cfg.w_div = cfg.w_at = 0.0
        if cfg.w_bn and not has_batchnorm(t):
            self.notes.append("teacher has no BatchNorm: bn weight set to 0")
            cfg.w_bn = 0.0
        if cfg.g_jitter and not cfg.w_bn:
            # Jitter is half of DeepInversion's BN prior: on a BN teacher it added 7 points (three
            # seeds), on a BN-free one it cost 1 (one seed; benchmarks/TUNING.md round 4).
            self.notes.append("no BN-statistics term: g_jitter (part of that prior) set to 0")
            cfg.g_jitter = 0.0
        spec = self.spec
        if cfg.batch_choice:  # the default batch would not fit in memory (memory_fit.py)
            self.notes.append(cfg.batch_choice)
        if cfg.grey_choice:  # what the teacher's first BatchNorm said (grey.py), the user silent
            self.notes.append(f"the generator makes {'grey' if cfg.gen_grey else 'colour'} images "
                              f"({'--no-grey' if cfg.gen_grey else '--grey'} to change); the teacher's data: {cfg.grey_choice}")
        if (spec.in_channels > 1 and not cfg.gen_grey and not cfg.grey_choice.startswith("colour")
                and len(set(spec.mean)) == len(set(spec.std)) == 1):
            # Grey data copied to every channel is normalised alike in each; colour data rarely is.
            self.notes.append("the teacher's channels share one mean/std: if it learnt from grey images copied to "
                              "every channel, --grey makes grey images (+24 points on such a teacher, "
                              "benchmarks/TUNING.md round 10)")
        if cfg.g_out_lr_mult != 1 and not cfg.w_bn:
            # Without the BN prior nothing ties G's output statistics to the data: they keep lr_g.
            self.notes.append("no BN-statistics term: g_out_lr_mult set to 1")
            cfg.g_out_lr_mult = 1.0

    def _start_generator_at_data_mean(self, t: nn.Module, g: Generator) -> None:
        """G's affine output shift starts where the teacher's first BatchNorm puts its data's mean (grey.py),
        instead of at the normalised 0 it would take the 50x-lr shift tens of steps to leave."""
        spec = self.spec
        if g.output != "affine":
            self.notes.append("gen_init_mean needs the affine output head: not applied")
            return
        means, _, why = channel_means(t, spec.input_shape, spec.mean, spec.std)
        if means is None:
            self.notes.append(f"gen_init_mean: no data mean to start from ({why})")
            return
        m = means.float().to(g.mean.device).reshape(1, -1, 1, 1)
        shift = (m.mean(1, keepdim=True) - g.mean[:, :1]) / g.std[:, :1] if g.grey else (m - g.mean) / g.std
        with torch.no_grad():
            g.out_bn.bias.copy_(shift.flatten())
        self.notes.append("G's output starts at the data's mean per channel, "
                          + " / ".join(f"{v:.3f}" for v in means.tolist()) + " (the teacher's first BatchNorm)")

    def _hooks(self, t: nn.Module, s: nn.Module) -> None:
        cfg = self.cfg
        self.bn_hook = BNStatsHook(t) if cfg.w_bn else None
        self.feat_hook = ClassifierInputHook(t) if cfg.w_act or cfg.w_div else None
        if self.feat_hook is not None and not self.feat_hook.available:
            self.notes.append("teacher has no nn.Linear head: act and div weights set to 0")
            cfg.w_act = cfg.w_div = 0.0
        self.at_t = FeatureMapHook(t) if cfg.w_at else None
        self.at_s = FeatureMapHook(s) if cfg.w_at else None

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.latent_dim, device=self.plan.device)

    @property
    def plan_reason(self) -> str:
        t, s = self.plans["teacher"], self.plans["student"]
        return t.reason if t == s else f"teacher {t.reason}; student {s.reason}"

    def _fmt(self, x: torch.Tensor, role: str) -> torch.Tensor:
        return self.plans[role].tensor(x)

    # ---------------------------------------------------------------- one iteration
    def _iteration(self) -> Dict[str, float]:
        cfg = self.cfg
        factor = _lr_factor(cfg, self.step, self.elapsed) * self.lr_scale
        _set_lr(self.m.opt_g, cfg.lr_g * factor)
        _set_lr(self.m.opt_s, cfg.lr_s * factor)
        _set_lr(self.m.opt_d, cfg.lr_d * factor)
        self.m.generator.train()
        self.m.student.train()
        terms: Dict[str, torch.Tensor] = {}
        # During g_warmup the synthesizer learns alone: early images are far from the teacher's data
        # (BN loss still falling fast), and the student's steps on them are most of an iteration's cost.
        warm = self._fraction() < cfg.g_warmup
        # The first iteration with student steps after the first (warm, representative) is timed when
        # S steps follow their cost.
        timing = cfg.s_time_ratio > 0 and self.step >= 1 and not self.s_steps_chosen and not warm
        t0 = self._now(timing)
        terms.update(SYNTHESIZERS[cfg.synthesizer].run(self))
        t1 = self._now(timing)
        for i in range(0 if warm else self.s_steps):
            terms.update(student.student_step(self, first=i == 0))
        if timing:
            self._choose_schedule(t1 - t0, (self._now(timing) - t1) / self.s_steps)
        names = list(terms)
        # One sync per iteration; the mean over ranks, so every rank takes the same NaN/collapse decisions.
        values = self.world.mean(torch.stack([terms[n].float().cpu() for n in names])).tolist()
        return dict(zip(names, values))

    def _now(self, timing: bool) -> float:
        if timing and self.plan.device.type == "cuda":
            torch.cuda.synchronize()  # GPU work is asynchronous: wait for it before reading the clock
        return time.perf_counter()

    def _choose_schedule(self, g_seconds: float, s_seconds: float) -> None:
        """Student steps per G step so the student's time is about s_time_ratio x the generator's,
        between 1 and cfg.s_steps; then, with budget_g_steps, the batch. Cached like the plans, so two
        runs on one machine (and a run and its resumed self, which stores both) take the same schedule."""
        cfg = self.cfg
        key = "s_steps|" + "|".join([plan_key(r, n, self.spec.input_shape, cfg.batch_size, [self.plans[r]])
                                     for r, n in (("teacher", self.spec.arch), ("student", cfg.student))]
                                    + [str(cfg.s_time_ratio), str(cfg.s_steps), str(cfg.g_steps)])
        want = cfg.s_time_ratio * g_seconds / max(s_seconds, 1e-9)
        n, hit = cached(key, lambda: max(1, min(cfg.s_steps, round(want))),
                        lambda v: isinstance(v, int) and 1 <= v <= cfg.s_steps)
        self.s_steps, self.s_steps_chosen = int(self.world.from_main(int(n))), True
        self._event(f"step {self.step + 1}: {self.s_steps} student steps per generator step from here "
                    + ("(cached for this setting)" if hit else
                       f"(G step {g_seconds:.3f}s, S step {s_seconds:.3f}s, S time up to {cfg.s_time_ratio:g}x G's, "
                       f"at most {cfg.s_steps})"))
        self._choose_batch(key, g_seconds + self.s_steps * s_seconds)

    def _choose_batch(self, key: str, iteration_seconds: float) -> None:
        """With a time budget, a batch small enough that about budget_g_steps generator steps fit in it.
        A generator that makes few steps never reaches the teacher's data: on a 2-core AVX2 CPU a ResNet-18
        teacher made 71 steps of 256 images in 10 minutes (student 53.7%) and 305 steps of 64 (69.1%); a
        ResNet-34 45.6% at 256, 63.6% at 64; photo10 47.7% at 256, 59.4% at 72 (benchmarks/TUNING.md round
        18). Per-image cost is about flat in the batch, so the batch scales with the steps that fit, but no
        lower than MIN_BATCH (32 lost 5 points to 64 on photo10, round 14). The timed iteration leaves out
        evaluation and checkpoints: runs made 75-80% of the steps it foretold (hence 400 in the presets)."""
        cfg = self.cfg
        if not (cfg.budget_g_steps and cfg.time_budget) or self.batch <= MIN_BATCH:
            return
        left = max(cfg.time_budget - self.elapsed - iteration_seconds, 0.0)
        fits = left / max(iteration_seconds, 1e-9)
        key = f"batch|{key}|{cfg.batch_size}|{cfg.time_budget:g}|{cfg.budget_g_steps}"

        def measure() -> int:
            if fits >= cfg.budget_g_steps:
                return cfg.batch_size
            return max(MIN_BATCH, int(cfg.batch_size * fits / cfg.budget_g_steps) // 8 * 8)

        batch, hit = cached(key, measure, lambda v: isinstance(v, int) and MIN_BATCH <= v <= cfg.batch_size)
        self.batch = int(self.world.from_main(int(batch)))  # valid: MIN_BATCH..cfg.batch_size
        if self.batch < cfg.batch_size:
            self._event(f"step {self.step + 1}: batch {self.batch} from here, so that about {cfg.budget_g_steps} "
                        f"generator steps fit in the budget "
                        + ("(cached for this setting)" if hit else
                           f"({fits:.0f} iterations of {cfg.batch_size} would: {iteration_seconds:.2f}s each); "
                           "--batch-size fixes it"))

    # ---------------------------------------------------------------- robustness
    def _take_snapshot(self) -> None:
        self.snapshot = copy.deepcopy(self.m.state_dict())

    def _recover(self, why: str) -> None:
        self.recoveries_in_a_row += 1
        if self.snapshot is None or self.recoveries_in_a_row > self.cfg.max_recoveries:
            raise TrainingError(f"distillation diverged ({why}) {self.recoveries_in_a_row} times in a row: "
                                "lower the learning rates (--set lr_g=... lr_s=...) or use --precision fp32")
        self.m.load_state_dict(copy.deepcopy(self.snapshot))
        self.lr_scale *= 0.5
        self._event(f"step {self.step}: {why}; restored the last good state, learning rates x{self.lr_scale:g}")

    def _check_collapse(self, top_share: float) -> None:
        self.collapse_run = self.collapse_run + 1 if top_share >= self.cfg.collapse_fraction else 0
        if self.collapse_run >= self.cfg.collapse_patience:
            self.collapse_run = 0
            self.collapses += 1
            if self.collapses > self.cfg.max_collapses:
                self.save_checkpoint()
                raise TrainingError(
                    f"the generator collapsed to one class {self.collapses} times (step {self.step}): this teacher "
                    "needs another setting, e.g. --set w_bal=20 or --method dfq; the last state is in "
                    f"{self.rundir / RunDir.CHECKPOINT}")
            reset_weights(self.m.generator)
            self.world.sync_module(self.m.generator)
            self.m.opt_g.state.clear()
            self._event(f"step {self.step}: generator collapsed to one class "
                        f"({top_share:.0%} of a batch for {self.cfg.collapse_patience} steps); re-initialised it")

    def _event(self, text: str) -> None:
        self.events.append(text)
        self.progress.message(text)
        self._log({"step": self.step, "time": round(self.elapsed, 2), "event": text})

    # ---------------------------------------------------------------- evaluation
    # ---------------------------------------------------------------- persistence
    def _log(self, record: Dict[str, Any]) -> None:
        self.history.append(record)
        if self.world.main:
            with open(self.rundir / RunDir.METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _rank_state(self) -> Dict[str, Any]:
        """What differs between ranks: the random streams and the replay memory."""
        return {"rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if self.plan.device.type == "cuda" else None,
                "memory": {k: v.cpu() if torch.is_tensor(v) else v for k, v in self.memory.state_dict().items()},
                "heldout": {k: v.cpu() if torch.is_tensor(v) else v for k, v in self.heldout.state_dict().items()}}

    def save_checkpoint(self) -> None:
        """Every rank calls it (their states are gathered); rank 0 writes."""
        ranks = self.world.gather(self._rank_state())
        if not self.world.main:
            return
        state = {
            "edgekd_version": __version__, "step": self.step, "elapsed": self.elapsed,
            "measure_seconds": self.measure_seconds,
            "models": self.m.state_dict(), "memory": self.memory.state_dict(), "heldout": self.heldout.state_dict(),
            "scalers": {k: v.state_dict() for k, v in self.scalers.items()},
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.plan.device.type == "cuda" else None,
            "lr_scale": self.lr_scale, "collapse_run": self.collapse_run, "collapses": self.collapses, "events": self.events,
            "ema_updates": self.ema_updates,
            "teacher_sha256": self.teacher_info.sha256, "config": self.cfg.to_dict(),
            "plans": {role: [p.precision, p.channels_last] for role, p in self.plans.items()},
            "s_steps": [self.s_steps, self.s_steps_chosen], "batch": self.batch,
            "pool": {"x": self.pool_x.cpu(), "t": self.pool_t.cpu(), "rng": self._pool_rng.get_state()},
            "best": None if self.best_model is None else {"step": self.best_step,
                                                          "state": self.best_model.state_dict()},
            "world_size": self.world.size, "ranks": ranks[1:],
        }
        with atomic_path(self.rundir / RunDir.CHECKPOINT) as tmp:
            torch.save(state, tmp)

    def _periodic_checkpoint(self) -> None:
        """A checkpoint that cannot be written (disk full) costs resumability, not the run: warn, go on."""
        try:
            self.save_checkpoint()
        except (OSError, EdgekdError) as e:
            self._event(f"step {self.step}: could not write {RunDir.CHECKPOINT} ({e}); training goes on")

    def load_checkpoint(self) -> None:
        path = self.rundir / RunDir.CHECKPOINT
        try:
            state = torch.load(path, map_location=self.plan.device, weights_only=True)
        except Exception as e:
            raise UsageError(f"--resume: {path} is unreadable ({type(e).__name__}); start a new run") from None
        if state["teacher_sha256"] != self.teacher_info.sha256:
            raise UsageError(f"--resume: {self.rundir} was distilled from another teacher file")
        check_resumable(state["config"], self.cfg)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world.size:
            raise UsageError(f"--resume: this run was distilled by {saved_world} process(es), not {self.world.size}: "
                             + ("resume it with torchrun --nproc_per_node " + str(saved_world) + " -m edgekd distill ..."
                                if saved_world > 1 else "resume it without torchrun"))
        if self.world.rank:
            state.update(state["ranks"][self.world.rank - 1])
        self._restore_plans(state.get("plans"))
        self.m.load_state_dict(state["models"])
        self.memory.load_state_dict({k: v.to(self.plan.device) if torch.is_tensor(v) else v
                                     for k, v in state["memory"].items()})
        if "heldout" in state:
            self.heldout.load_state_dict(state["heldout"])
        for k, v in state["scalers"].items():
            self.scalers[k].load_state_dict(v)
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"] is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.measure_seconds = float(state.get("measure_seconds", 0.0))
        self.lr_scale, self.collapse_run = float(state["lr_scale"]), int(state["collapse_run"])
        self.events = list(state["events"])
        self.ema_updates = int(state.get("ema_updates", 0))
        self.collapses = int(state.get("collapses", 0))
        self.s_steps, self.s_steps_chosen = state.get("s_steps", [self.cfg.s_steps, False])
        self.s_steps = int(self.s_steps)
        self.batch = int(state.get("batch", self.cfg.batch_size))
        if "pool" in state:
            dev = self.plan.device
            self.pool_x, self.pool_t = state["pool"]["x"].to(dev), state["pool"]["t"].to(dev)
            self._pool_rng.set_state(state["pool"]["rng"].cpu())
        if state.get("best"):
            self.best_model = copy.deepcopy(self.m.final_student).requires_grad_(False)
            self.best_model.load_state_dict(state["best"]["state"])
            self.best_step = int(state["best"]["step"])
        # Metrics logged after the checkpoint belong to the lost future: drop them.
        # A torn last line (killed while appending) is dropped with them.
        log = self.rundir / RunDir.METRICS
        if log.exists() and self.world.main:
            self.history = [r for r in _read_records(log) if r.get("step", math.inf) <= self.step]
            log.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        self.progress.message(f"resumed {self.rundir} at step {self.step} ({self.elapsed:.0f}s done)")

    def _restore_plans(self, saved: Optional[Dict[str, Any]], why: str = "resumed") -> None:
        """A resumed run goes on with the plans it started with, whatever a probe would say today
        (and every rank with rank 0's)."""
        for role, (precision, cl) in (saved or {}).items():
            plan = self.plans[role]
            if (plan.precision, plan.channels_last) != (precision, cl):
                reason = f"{precision}{', channels_last' if cl else ''} ({why})"
                self.plans[role] = ExecutionPlan(plan.device, DTYPES[precision], bool(cl), reason)
        self.plans["teacher"].module(self.m.teacher)
        self.plans["teacher"].module(self.m.generator)
        for model in (self.m.student, self.m.ema):
            if model is not None:
                self.plans["student"].module(model)

    def _student_spec(self) -> ModelSpec:
        return self.spec.with_(arch=get_entry(self.cfg.student).name, extra={})

    def provenance(self) -> Dict[str, Any]:
        return {"teacher_sha256": self.teacher_info.sha256, "teacher_file": str(self.teacher_info.path),
                "teacher_arch": self.spec.arch, "method": self.cfg.method, "steps": self.step,
                "seconds": round(self.elapsed, 1), "config": self.cfg.to_dict(), "edgekd_version": __version__,
                "run_id": self.run_id}

    # ---------------------------------------------------------------- the run
    def _done(self) -> bool:
        cfg = self.cfg
        return bool((cfg.iterations and self.step >= cfg.iterations)
                    or (cfg.time_budget and self.elapsed >= cfg.time_budget))

    def _fraction(self) -> float:
        cfg = self.cfg
        parts = [self.step / cfg.iterations if cfg.iterations else 0.0,
                 self.elapsed / cfg.time_budget if cfg.time_budget else 0.0]
        return min(1.0, max(parts))

    def run(self, resume: bool = False) -> DistillResult:
        with contextlib.ExitStack() as stack:
            error = None
            if self.world.main:  # rank 0 owns the run directory; the others only read the checkpoint
                try:
                    self.rundir.check_writable(resume)
                    stack.enter_context(self.rundir.locked())
                    self.rundir.check_writable(resume)  # again under the lock: another process may have begun
                except EdgekdError as e:
                    error = e
            self.world.raise_if_any(error)
            return self._run(resume)

    def _start(self, resume: bool) -> None:
        cfg = self.cfg
        if resume:
            self.load_checkpoint()
            self.run_id = self.rundir.run_id()
        elif self.world.main:
            self.run_id = self.rundir.start()
            (self.rundir / RunDir.METRICS).write_text("")
        if self.world.main:
            write_json(self.rundir / RunDir.CONFIG, {
                **cfg.to_dict(), "resolved_precision": {r: p.precision for r, p in self.plans.items()},
                "channels_last": {r: p.channels_last for r, p in self.plans.items()},
                "device_plan": self.plan_reason, "processes": self.world.size, "notes": self.notes})

    def _run(self, resume: bool) -> DistillResult:
        cfg = self.cfg
        error = None
        try:
            self._start(resume)
        except EdgekdError as e:
            error = e
        self.world.raise_if_any(error)
        for note in self.notes:
            self.progress.message(note)
        self.progress.start(f"distill {self.spec.arch} -> {cfg.student} ({cfg.method})")
        last_check = last_measure = last_ckpt = time.monotonic()
        check_every = cfg.eval_every_s
        latest: Dict[str, Any] = {}
        interrupted = False
        with _StopFlag(grace_s=2.0 if self.world.active else 0.0) as stop:
            # elapsed is the loop's wall time, evaluation and checkpoints included: a 10-minute
            # budget means 10 minutes on the clock.
            tick = time.perf_counter()
            while not self._done():
                losses = self._iteration()
                self.elapsed += time.perf_counter() - tick
                tick = time.perf_counter()
                self.step += 1
                finite = all(math.isfinite(v) for v in losses.values()) and _finite_params(self.m.final_student)
                if not finite:
                    bad = sorted(k for k, v in losses.items() if not math.isfinite(v)) or ["student weights"]
                    self._recover(f"non-finite {', '.join(bad)}")
                else:
                    self.recoveries_in_a_row = 0
                    self._check_collapse(losses["top_class_share"])
                    if self.snapshot is None or self.step % cfg.snapshot_every == 0:
                        self._take_snapshot()
                now = time.monotonic()
                record = {"step": self.step, "time": round(self.elapsed, 2),
                          **{k: round(v, 5) for k, v in losses.items()}}
                if self.world.main and self.eval_x is not None and (now - last_measure >= cfg.eval_every_s
                                                                    or self._done()):
                    t0 = time.perf_counter()
                    record.update(evaluation.evaluate(self, label_free=False))
                    spent = time.perf_counter() - t0
                    tick += spent  # scoring on the user's real images is not distillation: off the clock
                    self.measure_seconds += spent
                    last_measure = time.monotonic()
                if self.world.main and (now - last_check >= check_every or self._done()):
                    t0 = time.perf_counter()
                    record.update(evaluation.evaluate(self, real=False))
                    if cfg.eval_share:  # paced by its cost: 5 s of checks on a 600 s budget, not 25%
                        check_every = max(cfg.eval_every_s, (time.perf_counter() - t0) / cfg.eval_share)
                    last_check = time.monotonic()
                scored = {k: v for k, v in record.items() if k in evaluation.SCORES}
                if scored:
                    latest = {**latest, **scored}
                    self._warn_if_chance(latest)
                if self.step % 10 == 0 or scored:
                    self._log(record)
                self.progress.update(self._fraction(), self.step, {**{k: losses[k] for k in ("loss_g", "loss_s") if k in losses}, **latest})
                due = (now - last_ckpt >= cfg.checkpoint_every_s
                       or bool(cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0))
                # Every rank goes on by rank 0's clock and checkpoint times and stops when any is asked to.
                self.elapsed, stopping, due = self.world.maximum([self.elapsed, stop.requested,
                                                                  due and self.world.main])
                if due:
                    self._periodic_checkpoint()
                    last_ckpt = time.monotonic()
                if stopping:
                    interrupted = True
                    break
        self.progress.stop()
        if not _finite_params(self.m.final_student) and self.snapshot is not None:
            self.m.load_state_dict(copy.deepcopy(self.snapshot))
        self.save_checkpoint()
        if not self.world.main:  # rank 0 alone evaluates, keeps the best student and writes the rest
            return DistillResult(self.rundir.path, self.rundir / RunDir.STUDENT, self.step, self.elapsed, interrupted,
                                 {}, None, list(self.events), self.plan_reason)
        if not latest or interrupted:
            latest = evaluation.evaluate(self)
        chosen = self.m.final_student
        if self.best_model is not None and self.best_step != self.step:
            better, counts = evaluation.earlier_is_better(self, self.best_model, chosen)
            if better:
                last = latest.get("agreement_pool", 0.0)
                latest = evaluation.evaluate(self, self.best_model)
                chosen = self.best_model
                self._event(f"kept the student of step {self.best_step}: it agrees with the teacher on "
                            f"{latest['agreement_pool']:.1%} of earlier generators' images, the last one on "
                            f"{last:.1%} ({counts})")
            else:
                latest = {**latest, "best_step": self.step}
                self._event(f"kept the last student: the best-scoring earlier one (step {self.best_step}) is not "
                            f"better on earlier generators' images beyond chance ({counts})")
        student_path = self.rundir / RunDir.STUDENT
        save_checkpoint(student_path, chosen.float().to(memory_format=torch.contiguous_format).cpu(),
                        self._student_spec(), self.provenance())
        chosen.to(self.plan.device)
        if not interrupted:
            from edgekd.distill.artifacts import write_artifacts

            write_artifacts(self)
        summary = {"steps": self.step, "seconds": round(self.elapsed, 1),
                   "measure_seconds": round(self.measure_seconds, 1), "interrupted": interrupted,
                   "final": latest, "teacher_accuracy": self.teacher_accuracy, "events": self.events,
                   "run_id": self.run_id, "plan": self.plan_reason, "s_steps": self.s_steps, "batch": self.batch, "method": cfg.method, "method_choice": cfg.method_choice,
                   "notes": self.notes, "student": cfg.student,
                   "teacher": {"file": str(self.teacher_info.path), "sha256": self.teacher_info.sha256,
                               "format": self.teacher_info.format, "spec": self.spec.to_dict()}}
        write_json(self.rundir / RunDir.SUMMARY, summary)
        return DistillResult(self.rundir.path, student_path, self.step, self.elapsed, interrupted, latest,
                             self.teacher_accuracy, list(self.events), self.plan_reason)

    def _warn_if_chance(self, metrics: Dict[str, float]) -> None:
        k = self.spec.num_classes
        value = metrics.get("accuracy", metrics.get("agreement_synthetic", 1.0))
        if self._fraction() > 0.25 and value <= 1.5 / k:
            self._event(f"step {self.step}: student near chance ({value:.1%} with {k} classes)")


def _read_records(path: Path) -> List[Dict[str, Any]]:
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # torn by a kill or a full disk while appending
        if isinstance(record, dict):
            records.append(record)
    return records


# Settings a resumed run may change: how long it goes on and how it reports; everything else shapes
# the models, the memory or the schedule the checkpoint was made with.
RESUME_MAY_CHANGE = ("iterations", "time_budget", "eval_every_s", "eval_images", "checkpoint_every_s",
                     "checkpoint_every", "max_recoveries", "max_collapses", "keep_best", "device", "precision", "channels_last")


def check_resumable(saved: Dict[str, Any], cfg: DistillConfig) -> None:
    now = cfg.to_dict()
    for key, value in now.items():
        if key not in RESUME_MAY_CHANGE and saved.get(key, value) != value:
            raise UsageError(f"--resume: {key} was {saved[key]!r} in this run, not {value!r}: resume with the "
                             "run's settings (edgekd distill --resume reads them from its config.json)")


def distill(teacher: LoadedModel, cfg: DistillConfig, run_dir: Path, eval_data: Optional[LabelledImages] = None,
            progress: Optional[Progress] = None, resume: bool = False) -> DistillResult:
    """Distil `teacher` into a fresh `cfg.student` with no training data; write the run directory."""
    distiller = Distiller(teacher, cfg, run_dir, eval_data, progress)
    try:
        return distiller.run(resume=resume)
    finally:
        distiller.world.close()


def synthesize(generator: Generator, teacher: nn.Module, n: int, seed: int, batch: int = 256) -> Dict[str, np.ndarray]:
    """n synthetic images (normalised NCHW float32) with the teacher's logits, reproducible by seed."""
    device = next(generator.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    xs, ts = [], []
    generator.train()  # batch statistics, as in training
    with torch.no_grad():
        for i in range(0, n, batch):
            z = torch.randn(min(batch, n - i), generator.latent_dim, generator=gen).to(device)
            x = generator(z).float()
            xs.append(x.cpu())
            ts.append(teacher(x).float().cpu())
    return {"x": torch.cat(xs).numpy(), "teacher_logits": torch.cat(ts).numpy()}
