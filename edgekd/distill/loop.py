"""The run driver: one distillation loop for every method (presets.py holds their weights).

Per iteration:
  synthesis (synthesizers.py): the preset's synthesizer makes a batch of images and trains what makes
    them (the generator, or Fast-Datafree's meta-generator), leaving (images, teacher logits);
  student (student.py): s_steps steps on that batch mixed with replay memory, KD to the teacher
    (+ attention transfer, discriminator), EMA;
  evaluation (evaluation.py), on its schedule: real accuracy when given, agreement on held-out synthetic
    images and on the pool of earlier generators' images, which picks the student kept.
Around it: the settings fitted to the teacher (teacher_fit.py); the learning-rate schedule, student
steps per G step and the batch (schedule.py); NaN recovery from a last-good snapshot, collapse detection
and Ctrl-C/SIGTERM that stops at an iteration boundary (guards.py); periodic atomic checkpoints and exact
resume (persistence.py); the agreement between processes under torchrun (distributed.py).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from edgekd import __version__
from edgekd.data.datasets import LabelledImages, check_dataset_fits, prepare_images
from edgekd.distill import evaluation, persistence, student
from edgekd.distill.config import DistillConfig
from edgekd.distill.contrastive import Contrast, has_conv
from edgekd.distill.discriminator import Discriminator
from edgekd.distill.distributed import World
from edgekd.distill.generator import Generator
from edgekd.distill.guards import StopFlag, check_collapse, finite_params, recover, take_snapshot
from edgekd.distill.hooks import BNStatsHook, ClassifierInputHook, FeatureMapHook
from edgekd.distill.precision import ExecutionPlan, plan_execution
from edgekd.distill.probe import CpuShare, candidates, fastest_plan, probe_batch
from edgekd.distill.replay import ReplayMemory
from edgekd.distill.schedule import choose_schedule, lr_factor, refit_batch, set_lr
from edgekd.distill.synthesizers import SYNTHESIZERS
from edgekd.distill.teacher_fit import fit_config_to_teacher, start_generator_at_data_mean
from edgekd.errors import EdgekdError, UsageError
from edgekd.fileio import write_json
from edgekd.models.checkpoint import LoadedModel, save_checkpoint
from edgekd.models.registry import create_model, get_entry
from edgekd.models.script_taps import tap_batchnorm
from edgekd.progress import Progress
from edgekd.rundir import RunDir
from edgekd.spec import ModelSpec

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
    contrast: Optional[Contrast] = None  # CMI's head, optimiser and feature bank (w_cr)

    def trainable(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"generator": self.generator, "student": self.student,
                               "opt_g": self.opt_g, "opt_s": self.opt_s}
        if self.disc is not None:
            out.update(disc=self.disc, opt_d=self.opt_d)
        if self.ema is not None:
            out.update(ema=self.ema)
        if self.contrast is not None:
            out.update(cr_head=self.contrast.head, opt_cr=self.contrast.opt)
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


def _generator_optimizer(g: Generator, cfg: DistillConfig) -> torch.optim.Optimizer:
    """Adam over G; with g_out_lr_mult, G's output scale and shift in a group of their own at that
    multiple of lr_g. At lr_g 1e-3 Adam moves a shift by ~1e-3 a step: 700 steps to reach the mean
    -0.74 of MNIST normalised with 0.5/0.5, longer than a CPU run; at 50x the BN prior's first layer
    pins the input mean and spread within ~50 steps (benchmarks/TUNING.md round 8; the adversarial-bn
    preset's lr_g is 3e-3 since round 21, and the head keeps its 50x)."""
    out = list(g.out_bn.parameters()) if cfg.g_out_lr_mult != 1 else []
    rest = [p for p in g.parameters() if all(p is not q for q in out)]
    groups = [{"params": rest}] + ([{"params": out, "lr_mult": cfg.g_out_lr_mult}] if out else [])
    opt = torch.optim.Adam(groups, lr=cfg.lr_g, betas=(0.5, 0.999))
    set_lr(opt, cfg.lr_g)  # each group at lr_g x its lr_mult, as every later schedule step sets it
    return opt


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
        if cfg.w_bn:
            t = self._tap_script_batchnorm(t)
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
        fit_config_to_teacher(self, t)
        if cfg.gen_init_mean:
            start_generator_at_data_mean(self, t, g)
        d = Discriminator(k).to(dev) if cfg.w_gan > 0 else None
        self.m = _Models(
            teacher=t, student=s, generator=g, disc=d,
            opt_g=_generator_optimizer(g, cfg),
            opt_s=_OPTIMIZERS[cfg.s_optimizer](s.parameters(), cfg, cfg.lr_s),
            opt_d=torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(0.5, 0.999)) if d is not None else None,
        )
        if self.world.active:  # every rank runs under rank 0's plans and starts from its weights
            persistence.restore_plans(self, self.world.from_main({r: [p.precision, p.channels_last] for r, p in self.plans.items()}),
                                "rank 0's")
        for module in (s, g, d):
            if module is not None:
                self.world.sync_module(module)
        if cfg.ema_decay > 0:
            self.m.ema = copy.deepcopy(s).requires_grad_(False)
        self.ema_updates = 0
        self._hooks(t, s)
        if cfg.w_cr:
            self.m.contrast = Contrast(t, self.spec.input_shape, dev, cfg.lr_g, cfg.cr_bank, cfg.cr_neg, cfg.cr_tau)
            self.world.sync_module(self.m.contrast.head)
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
        self.batch_fit: Optional[Dict[str, Any]] = None  # the window refit_batch times the batch by
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

    def _tap_script_batchnorm(self, t: nn.Module) -> nn.Module:
        """A TorchScript teacher that could not be rebuilt still gives the BN prior its layers' inputs, read from
        its graph (script_taps.py), said in a note; where the graph cannot be read, teacher_fit says bn is off."""
        tapped = tap_batchnorm(t, self.spec.input_shape)  # None for an eager module: it has hooks
        if tapped is None:
            return t
        self.notes.append(f"TorchScript teacher: the inputs of its {tapped.layers} BatchNorm layers are read from its "
                          "graph (outputs checked equal to the file's), for the BN prior")
        return tapped

    def _hooks(self, t: nn.Module, s: nn.Module) -> None:
        cfg = self.cfg
        self.bn_hook = BNStatsHook(t, cfg.bn_mmt) if cfg.w_bn else None
        self.feat_hook = ClassifierInputHook(t) if cfg.w_act or cfg.w_div else None
        if self.feat_hook is not None and not self.feat_hook.available:
            self.notes.append("teacher has no nn.Linear head: act and div weights set to 0")
            cfg.w_act = cfg.w_div = 0.0
        if cfg.w_cr and not has_conv(t):
            self.notes.append("teacher has no Conv2d layer to read features from: cr weight set to 0")
            cfg.w_cr = 0.0
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
        factor = lr_factor(cfg, self.step, self.elapsed) * self.lr_scale
        set_lr(self.m.opt_g, cfg.lr_g * factor)
        set_lr(self.m.opt_s, cfg.lr_s * factor)
        set_lr(self.m.opt_d, cfg.lr_d * factor)
        self.m.generator.train()
        self.m.student.train()
        terms: Dict[str, torch.Tensor] = {}
        # During g_warmup the synthesizer learns alone: early images are far from the teacher's data
        # (BN loss still falling fast), and the student's steps on them are most of an iteration's cost.
        warm = self._fraction() < cfg.g_warmup
        # The first iteration with student steps after the first (warm, representative) is timed when
        # S steps follow their cost.
        timing = cfg.s_time_ratio > 0 and self.step >= 1 and not self.s_steps_chosen and not warm
        share = CpuShare(self.plan.device) if timing else None  # reads /proc/stat: only for the timed iteration
        t0 = self._now(timing)
        terms.update(SYNTHESIZERS[cfg.synthesizer].run(self))
        t1 = self._now(timing)
        for i in range(0 if warm else self.s_steps):
            terms.update(student.student_step(self, first=i == 0))
        if share is not None:
            choose_schedule(self, t1 - t0, (self._now(timing) - t1) / self.s_steps, share.crowded())
        names = list(terms)
        # One sync per iteration; the mean over ranks, so every rank takes the same NaN/collapse decisions.
        values = self.world.mean(torch.stack([terms[n].float().cpu() for n in names])).tolist()
        return dict(zip(names, values))

    def _now(self, timing: bool) -> float:
        if timing and self.plan.device.type == "cuda":
            torch.cuda.synchronize()  # GPU work is asynchronous: wait for it before reading the clock
        return time.perf_counter()

    def _event(self, text: str) -> None:
        self.events.append(text)
        self.progress.message(text)
        persistence.log(self, {"step": self.step, "time": round(self.elapsed, 2), "event": text})

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
            persistence.load_checkpoint(self)
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
        with StopFlag(grace_s=2.0 if self.world.active else 0.0) as stop:
            # elapsed is the loop's wall time, evaluation and checkpoints included: a 10-minute
            # budget means 10 minutes on the clock.
            tick = time.perf_counter()
            while not self._done():
                losses = self._iteration()
                self.elapsed += time.perf_counter() - tick
                tick = time.perf_counter()
                self.step += 1
                finite = all(math.isfinite(v) for v in losses.values()) and finite_params(self.m.final_student)
                if not finite:
                    bad = sorted(k for k, v in losses.items() if not math.isfinite(v)) or ["student weights"]
                    recover(self, f"non-finite {', '.join(bad)}")
                else:
                    self.recoveries_in_a_row = 0
                    check_collapse(self, losses["top_class_share"])
                    if self.snapshot is None or self.step % cfg.snapshot_every == 0:
                        take_snapshot(self)
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
                    persistence.log(self, record)
                self.progress.update(self._fraction(), self.step, {**{k: losses[k] for k in ("loss_g", "loss_s") if k in losses}, **latest})
                due = (now - last_ckpt >= cfg.checkpoint_every_s
                       or bool(cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0))
                # Every rank goes on by rank 0's clock and checkpoint times and stops when any is asked to.
                self.elapsed, stopping, due = self.world.maximum([self.elapsed, stop.requested,
                                                                  due and self.world.main])
                refit_batch(self)
                if due:
                    persistence.periodic_checkpoint(self)
                    last_ckpt = time.monotonic()
                if stopping:
                    interrupted = True
                    break
        self.progress.stop()
        return self._finish(latest, interrupted)

    def _finish(self, latest: Dict[str, Any], interrupted: bool) -> DistillResult:
        """After the last iteration: a last checkpoint, the student kept (rank 0), its artifacts and summary."""
        cfg = self.cfg
        if not finite_params(self.m.final_student) and self.snapshot is not None:
            self.m.load_state_dict(copy.deepcopy(self.snapshot))
        persistence.save_checkpoint(self)
        if not self.world.main:  # rank 0 alone evaluates, keeps the best student and writes the rest
            return DistillResult(self.rundir.path, self.rundir / RunDir.STUDENT, self.step, self.elapsed, interrupted,
                                 {}, None, list(self.events), self.plan_reason)
        if not latest or interrupted:
            latest = evaluation.evaluate(self)
        chosen, latest = evaluation.kept_student(self, latest)
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
