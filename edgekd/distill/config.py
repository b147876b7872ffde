"""DistillConfig: every knob of a distillation run, resolved from preset < config file < --set."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Optional, Tuple

from edgekd.distill.augment import AUGMENTS
from edgekd.distill.generator import OUTPUTS as GEN_OUTPUTS
from edgekd.distill.grey import grey_setting
from edgekd.distill.hooks import has_batchnorm
from edgekd.distill.losses import BN_LOSSES, DIVERGENCES, TV_LOSSES
from edgekd.distill.presets import AUTO, DEFAULT_METHOD, PRESETS, choose_method
from edgekd.distill.replay import POLICIES as REPLAY_POLICIES
from edgekd.distill.synthesizers import SYNTHESIZERS
from edgekd.errors import UsageError
from edgekd.fileio import read_toml

if TYPE_CHECKING:
    from torch import nn

    from edgekd.models.checkpoint import LoadedModel

_MAY_BE_NEGATIVE = ("seed",)
_AT_LEAST_ONE = ("cr_bank", "cr_neg", "latent_dim", "gen_width", "snapshot_every", "collapse_patience", "calib_images", "eval_images")
# Keys whose value names an entry of a registry.
_CHOICES = {"adv_loss": DIVERGENCES, "kd_loss": DIVERGENCES, "bn_loss": BN_LOSSES,
            "replay_policy": REPLAY_POLICIES, "gen_output": GEN_OUTPUTS,
            "s_augment": AUGMENTS, "synthesizer": SYNTHESIZERS, "tv_loss": TV_LOSSES}


@dataclass
class DistillConfig:
    method: str = "adversarial"  # a preset; --method auto (the CLI's default) picks one by the teacher
    method_choice: str = ""  # why --method auto picked `method` ("" when the user named it)
    student: str = "lenet5-half"
    iterations: Optional[int] = None  # stop after this many G steps ...
    time_budget: Optional[float] = None  # ... or after this many seconds (whichever comes first)
    batch_size: int = 256
    latent_dim: int = 100
    gen_width: int = 128  # generator base channels (DAFL: 128)
    g_jitter: float = 0.0  # > 0: G's batch rolled by up to this fraction of a side (DeepInversion); only with w_bn
    gen_grey: bool = False  # G makes one grey channel for every input channel (grey data on an RGB teacher)
    gen_init_mean: bool = False  # affine head: G's output shift starts at the data's mean per channel (grey.py)
    batch_choice: str = ""  # why the batch is smaller than asked by default: the memory it needs (memory_fit.py)
    grey_choice: str = ""  # what the teacher's first BatchNorm said of gen_grey, when the user did not (grey.py)
    gen_labels: bool = False  # class-conditional G asked for balanced target classes (oh = CE to the label)
    g_out_lr_mult: float = 1.0  # G's output scale/shift (affine, pixel heads) learn at this multiple of lr_g
    gen_output: str = "bn"  # bn: DAFL's whitened output | affine: + learnt scale/shift | pixel: [0, 1] pixels, normalised
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: str = "auto"  # auto | on | off
    # loss weights (docs/method.md)
    w_adv: float = 0.0
    w_bn: float = 0.0
    w_oh: float = 0.0
    w_bal: float = 0.0
    w_act: float = 0.0
    w_div: float = 0.0  # within-class diversity of the teacher's features (generator synthesizer)
    w_cr: float = 0.0  # CMI's contrastive term: new images told apart from earlier ones (contrastive.py)
    cr_tau: float = 0.1  # its temperature (CMI's adv script: 0.1)
    cr_bank: int = 4096  # features of this many recent images kept as negatives
    cr_neg: int = 1024  # negatives drawn from them per generator step
    w_at: float = 0.0
    w_gan: float = 0.0
    w_tv: float = 0.0  # DeepInversion's total-variation prior on G's images (DataFree's deepinv: 0.001)
    tv_loss: str = "l1"  # l1: DataFree's mean absolute form | l2: DeepInversion's CIFAR-10 norms
    w_l2: float = 0.0  # inversion: DeepInversion's l2 prior on the pixels
    g_flip: bool = False  # inversion: each step also mirrors the batch with probability 1/2 (DeepInversion)
    adv_loss: str = "kl"
    bn_loss: str = "l2"  # l2: DeepInversion/DFQ's norm | kl: per-layer Gaussian KL (scale-free)
    bn_first: float = 1.0  # weight of the first BN layer's term (DeepInversion's first_bn_multiplier: 10)
    # generator synthesizer: the BN term compares the running statistics with (1 - bn_mmt) x this batch's plus
    # bn_mmt x an average of the batches before (Fast-Datafree / NAYER's bn_mmt): small batches' noise averaged
    bn_mmt: float = 0.0
    kd_loss: str = "kl"
    tau: float = 1.0  # temperature of the adversarial term and the discriminator's softmax
    kd_tau: float = 1.0  # temperature of the student's own distillation term (kd_loss kl / kl_masked)
    synthesizer: str = "generator"  # generator: one G | meta: Fast-Datafree's | inversion: DeepInversion's pixels | nayer
    lr_z: float = 0.015  # meta: learning rate of the per-batch latents
    g_life: int = 0  # nayer: the generator is re-initialised every g_life iterations (0: never)
    # schedule
    g_steps: int = 1  # generator steps per iteration (meta: inner steps on one batch)
    s_steps: int = 1  # student steps per G step; with s_time_ratio > 0, the most it may be
    s_time_ratio: float = 0.0  # > 0: after two iterations, s_steps = this x (G step time / S step time), capped
    budget_g_steps: int = 0  # > 0, with a time budget: the batch shrinks (to min_batch at least) until this many G
    # steps fit by the timed iteration's cost (evaluation comes on top: runs make 70-115% of it)
    min_batch: int = 64  # the least budget_g_steps shrinks a batch to (32 lost 5 points to 64 on photo10, round 14;
    # 96 lost 0.7 to 64 on the README case capped to AVX2, round 28)
    batch_refit: bool = False  # fit the batch again a tenth into the budget from the iterations as they ran
    # (schedule.refit_batch): runs then make ~90% of budget_g_steps, but at 400 the batches it chose (64-72)
    # lost to 96 on both photo10 pairs (TUNING.md round 26); with larger batches level / -0.9 (round 27): off
    g_warmup: float = 0.0  # this share of the run trains the synthesizer alone: no student steps, no memory
    shared_batch: bool = False  # DAFL: the student learns from the very batch G was just stepped on
    lr_g: float = 1e-3
    lr_s: float = 2e-3
    lr_s_bn: float = 0.0  # > 0: the student's lr when it has BatchNorm layers, unless lr_s is named (resolve_config)
    lr_choice: str = ""  # why lr_s is lr_s_bn ("" when it is the preset's or the user's)
    lr_d: float = 1e-4
    s_optimizer: str = "adam"
    lr_schedule: str = "cosine"  # cosine decay over the run (by step, or by time under --time-budget)
    momentum: float = 0.9
    weight_decay: float = 0.0
    replay_size: int = 0  # images kept from recent batches; 0 disables replay
    replay_fraction: float = 0.0  # share of each student batch drawn from replay memory
    replay_policy: str = "fifo"  # fifo: the most recent images | reservoir: a uniform sample of the whole run
    s_augment: str = "none"  # replayed images augmented (shift, flip, shift_flip, mix) and relabelled by the teacher
    keep_best: bool = True  # save the student that agrees best with the teacher on earlier generators' images
    ema_decay: float = 0.0  # > 0: evaluate and save an exponential moving average of the student
    # robustness and logging
    eval_every_s: float = 20.0  # the student is scored at most this often (seconds)
    # ... and its label-free checks (held-out and pool agreement, keep-best) take at most this share of the
    # clock: after a check of t seconds the next waits t / eval_share (0: every eval_every_s). Scoring on
    # real eval data is not distillation and runs off the clock, every eval_every_s.
    eval_share: float = 0.05
    eval_images: int = 10000
    eval_synthetic: int = 0  # held-out synthetic images for agreement; 0: by input size (1024 at 32x32)
    checkpoint_every_s: float = 60.0
    checkpoint_every: int = 0  # also every N steps when > 0 (tests)
    snapshot_every: int = 25  # in-memory last-good state for NaN recovery
    max_recoveries: int = 10
    collapse_fraction: float = 0.9  # one class taking this share of a batch ...
    collapse_patience: int = 50  # ... for this many steps is a collapse
    max_collapses: int = 3  # the generator is re-initialised this many times, then the run stops (exit 7)
    calib_images: int = 512

    def validate(self) -> DistillConfig:
        from edgekd.models.registry import get_entry

        self.student = get_entry(self.student).name  # canonical name; unknown -> suggestion error
        if self.method not in PRESETS:
            raise UsageError(f"unknown method {self.method!r}: choose one of {', '.join(PRESETS)}")
        if self.iterations is None and self.time_budget is None:
            raise UsageError("give --iterations N or --time-budget (e.g. 10m) to bound the run")
        if self.iterations is not None and self.iterations < 1:
            raise UsageError("--iterations must be >= 1")
        if self.time_budget is not None and not 0 < self.time_budget < math.inf:
            raise UsageError("--time-budget must be a positive, finite duration, e.g. 10m")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value) or (value < 0 and f.name not in _MAY_BE_NEGATIVE):
                    raise UsageError(f"setting {f.name}={value!r}: must be a finite number >= 0")
        for key in _AT_LEAST_ONE:
            if getattr(self, key) < 1:
                raise UsageError(f"setting {key} must be >= 1")
        if self.batch_size < 2:
            raise UsageError("--batch-size must be >= 2 (BatchNorm needs more than one image)")
        if self.min_batch < 2:
            raise UsageError("min_batch must be >= 2 (BatchNorm needs more than one image)")
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise UsageError(f"{key} must be one of {', '.join(choices)}")
        if not 0 <= self.g_jitter < 0.5:
            raise UsageError("g_jitter must be in [0, 0.5) (a fraction of the image side)")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UsageError("--precision must be auto, fp32, bf16 or fp16")
        if self.s_optimizer not in ("adam", "sgd"):
            raise UsageError("s_optimizer must be adam or sgd")
        if self.lr_schedule not in ("cosine", "constant"):
            raise UsageError("lr_schedule must be cosine or constant")
        if not 0 <= self.replay_fraction < 1:
            raise UsageError("replay_fraction must be in [0, 1)")
        if not 0 <= self.eval_share <= 1:
            raise UsageError("eval_share must be in [0, 1]")
        if not 0 <= self.ema_decay < 1:
            raise UsageError("ema_decay must be in [0, 1)")
        if not (self.tau > 0 and self.kd_tau > 0):
            raise UsageError("tau and kd_tau must be > 0 (temperatures; 1 is plain softmax)")
        if not self.cr_tau > 0:
            raise UsageError("cr_tau must be > 0 (the contrastive term's temperature; CMI's 0.1)")
        if not 0 <= self.bn_mmt < 1:
            raise UsageError("bn_mmt must be in [0, 1)")
        if self.g_steps < 1 or self.s_steps < 1:
            raise UsageError("g_steps and s_steps must be >= 1")
        if not 0 <= self.g_warmup < 1:
            raise UsageError("g_warmup must be in [0, 1): the share of the run that trains the generator alone")
        if not self.s_time_ratio >= 0:
            raise UsageError("s_time_ratio must be >= 0 (0: a fixed s_steps)")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(DistillConfig)}


def _coerce(key: str, value: Any) -> Any:
    if key not in _FIELDS:
        near = difflib.get_close_matches(key, list(_FIELDS), n=2)
        raise UsageError(f"unknown setting {key!r}" + (f": did you mean {' or '.join(near)}?" if near else ""))
    default = _FIELDS[key].default
    kind = type(default) if default is not None else None
    if key in ("iterations",):
        kind = int
    if key in ("time_budget",):
        kind = float
    if not isinstance(value, str) or kind is str or kind is None:
        return _checked_type(key, value, kind)
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return kind(value)
    except ValueError:
        raise UsageError(f"setting {key}={value!r}: expected a {kind.__name__}") from None


def _checked_type(key: str, value: Any, kind: Any) -> Any:
    """A value from a config file already has a type: it must be the setting's (an int may stand for
    a float), or the run would fail later with a TypeError far from the mistake."""
    if kind is None or value is None:
        return value
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise UsageError(f"setting {key}={value!r}: expected a {kind.__name__}")
    return value


def parse_sets(items: Iterable[str]) -> Dict[str, Any]:
    """['w_bn=2', 'tau=4'] -> {'w_bn': 2.0, 'tau': 4.0}."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: use key=value, e.g. --set w_bn=0.5")
        key, value = item.split("=", 1)
        out[key.strip()] = _coerce(key.strip(), value.strip())
    return out


def load_config_file(path: Path) -> Dict[str, Any]:
    data = read_toml(path, "config")
    return {k: _coerce(k, v) for k, v in data.items()}


def run_settings(run_dir: Path) -> Dict[str, Any]:
    """The settings a run was made with (its config.json), for --resume to go on with."""
    from edgekd.rundir import RunDir

    path = RunDir(run_dir) / RunDir.CONFIG
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"--resume: {path} is missing or unreadable; start a new run") from None
    return settings_as_run(data) if isinstance(data, dict) else {}


def settings_as_run(saved: Dict[str, Any]) -> Dict[str, Any]:
    """A run's saved settings, each setting newer than the run at its field's default.

    The run ran with what the code did before the setting existed, its default, not whatever a preset gives it
    today (adversarial-bn's lr_s_bn, say): --resume goes on as the run started, and checks a resume against it.
    """
    newer = {k: f.default for k, f in _FIELDS.items() if k not in saved and f.default is not dataclasses.MISSING}
    return {**newer, **{k: v for k, v in saved.items() if k in _FIELDS}}


def parse_duration(text: Optional[str]) -> Optional[float]:
    """'90', '90s', '10m', '1.5h' -> seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    scale = units.get(t[-1:], None)
    try:
        return float(t[:-1]) * scale if scale else float(t)
    except ValueError:
        raise UsageError(f"duration {text!r}: use seconds or a suffix, e.g. 90s, 10m, 1h") from None


def resolve_config(method: str = DEFAULT_METHOD, file_values: Optional[Dict[str, Any]] = None,
                   overrides: Optional[Dict[str, Any]] = None, teacher: Optional[LoadedModel] = None) -> DistillConfig:
    """preset(method) < config file < explicit overrides (CLI options and --set).

    method "auto" picks the preset from what the teacher is (presets.choose_method); without a
    teacher to look at it takes the default preset's plain form."""
    file_values = dict(file_values or {})
    overrides = dict(overrides or {})
    method = overrides.get("method") or file_values.get("method") or method
    choice = file_values.get("method_choice", "")
    if method == AUTO:
        method, choice = choose_method(teacher) if teacher is not None else ("adversarial", "no teacher to look at")
    elif overrides.get("method"):
        choice = ""
    if method not in PRESETS:
        raise UsageError(f"unknown method {method!r}: choose one of {AUTO}, {', '.join(PRESETS)}")
    values: Dict[str, Any] = {**PRESETS[method], **file_values, **overrides, "method": method, "method_choice": choice}
    if teacher is not None and "gen_grey" not in file_values and "gen_grey" not in overrides:
        values["gen_grey"], values["grey_choice"] = grey_setting(teacher)
    elif "gen_grey" in overrides:
        values["grey_choice"] = ""  # the user said
    cfg = DistillConfig(**values).validate()
    named = {**file_values, **overrides}
    # A resumed run's config.json names lr_s and batch_size: it keeps what it started with, and no student
    # is built to decide them again.
    pick_lr = bool(cfg.lr_s_bn) and "lr_s" not in named
    pick_batch = "batch_size" not in file_values
    student = _student_for(cfg, teacher) if teacher is not None and (pick_lr or pick_batch) else None
    if pick_lr and student is not None and has_batchnorm(student):
        cfg.lr_s = cfg.lr_s_bn
        cfg.lr_choice = (f"student lr {cfg.lr_s:g}, not {PRESETS[method]['lr_s']:g}: {cfg.student} has BatchNorm "
                         "layers (benchmarks/TUNING.md round 23; --set lr_s=... to change)")
    if pick_batch and student is not None:
        cfg.batch_size, cfg.batch_choice = _batch_that_fits(cfg, teacher, student, explicit="batch_size" in overrides)
    if "batch_size" in named and "budget_g_steps" not in named:
        cfg.budget_g_steps = 0  # a batch the user named is the batch the run takes
    return cfg


def _student_for(cfg: DistillConfig, teacher: LoadedModel) -> nn.Module:
    """The run's student architecture, freshly initialised: resolve_config asks what it is, not its weights."""
    from edgekd.models.registry import create_model

    return create_model(cfg.student, teacher.spec.num_classes, teacher.spec.in_channels)


def _batch_that_fits(cfg: DistillConfig, teacher: LoadedModel, student: nn.Module, explicit: bool) -> Tuple[int, str]:
    """cfg.batch_size, or less where the run's models would not fit in memory at it (memory_fit.py)."""
    from edgekd.distill.generator import Generator
    from edgekd.distill.memory_fit import batch_for

    spec = teacher.spec
    generator = Generator(cfg.latent_dim, spec.input_shape, cfg.gen_width, cfg.gen_output, spec.mean, spec.std,
                          spec.num_classes if cfg.gen_labels else 0, cfg.gen_grey)
    try:
        return batch_for(teacher.model, student, generator, spec.input_shape, cfg.latent_dim, cfg.batch_size,
                         cfg.device, explicit)
    except RuntimeError:  # a student that cannot take the input: the run says so, in one line, when it starts
        return cfg.batch_size, ""
