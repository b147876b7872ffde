"""The run's settings fitted to the teacher it got, before anything is built: terms the teacher cannot
support switched off (each with a note), and the generator's output started where the teacher's data is."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from edgekd.distill.generator import Generator
from edgekd.distill.grey import channel_means
from edgekd.distill.hooks import has_batchnorm
from edgekd.distill.synthesizers import IMAGE_TERMS, SYNTHESIZERS
from edgekd.models.exported import compiled_kind
from edgekd.models.script_taps import TappedScript

if TYPE_CHECKING:
    from edgekd.distill.loop import Distiller


def fit_config_to_teacher(d: Distiller, t: nn.Module) -> None:
    """Before anything is built: terms the teacher cannot support are switched off, and settings that
    depend on them reset, each with a note; a setting the teacher suggests (--grey) gets a note only."""
    cfg = d.cfg
    unused = [k for k in IMAGE_TERMS if getattr(cfg, f"w_{k}") and k not in SYNTHESIZERS[cfg.synthesizer].terms]
    if unused:  # said, not silently ignored: a --set w_div=10 on the fast preset does nothing
        d.notes.append(f"the {cfg.synthesizer} synthesizer ({cfg.method}) has no {'/'.join(unused)} term: "
                          "weight set to 0")
        for k in unused:
            setattr(cfg, f"w_{k}", 0.0)
    if cfg.bn_mmt and not SYNTHESIZERS[cfg.synthesizer].averages_bn:
        d.notes.append(f"bn_mmt acts only where a synthesizer's step advances the average, not in {cfg.synthesizer} "
                       f"({cfg.method}): set to 0")
        cfg.bn_mmt = 0.0
    compiled = compiled_kind(t)
    # A TorchScript graph whose BatchNorm inputs are read (TappedScript) keeps the BN prior; nothing else
    # reaches inside a compiled teacher.
    unread = [k for k in ("bn", "act", "div", "at", "cr") if getattr(cfg, f"w_{k}")
              and not (k == "bn" and isinstance(t, TappedScript))]
    if compiled and unread:
        d.notes.append(f"{compiled} teacher: forward hooks unavailable, so {'/'.join(unread)} weights are 0")
        for k in unread:
            setattr(cfg, f"w_{k}", 0.0)
    if cfg.w_bn and not has_batchnorm(t):
        d.notes.append("teacher has no BatchNorm: bn weight set to 0")
        cfg.w_bn = 0.0
    if cfg.g_jitter and not cfg.w_bn:
        # Jitter is half of DeepInversion's BN prior: on a BN teacher it added 7 points (three
        # seeds), on a BN-free one it cost 1 (one seed; benchmarks/TUNING.md round 4).
        d.notes.append("no BN-statistics term: g_jitter (part of that prior) set to 0")
        cfg.g_jitter = 0.0
    spec = d.spec
    if cfg.batch_choice:  # the default batch would not fit in memory (memory_fit.py)
        d.notes.append(cfg.batch_choice)
    if cfg.lr_choice:  # the preset's student lr for a BatchNorm student (resolve_config)
        d.notes.append(cfg.lr_choice)
    if cfg.grey_choice:  # what the teacher's first BatchNorm said (grey.py), the user silent
        d.notes.append(f"the generator makes {'grey' if cfg.gen_grey else 'colour'} images "
                          f"({'--no-grey' if cfg.gen_grey else '--grey'} to change); the teacher's data: {cfg.grey_choice}")
    if (spec.in_channels > 1 and not cfg.gen_grey and not cfg.grey_choice.startswith("colour")
            and len(set(spec.mean)) == len(set(spec.std)) == 1):
        # Grey data copied to every channel is normalised alike in each; colour data rarely is.
        d.notes.append("the teacher's channels share one mean/std: if it learnt from grey images copied to "
                          "every channel, --grey makes grey images (+24 points on such a teacher, "
                          "benchmarks/TUNING.md round 10)")
    if cfg.g_out_lr_mult != 1 and not cfg.w_bn:
        # Without the BN prior nothing ties G's output statistics to the data: they keep lr_g.
        d.notes.append("no BN-statistics term: g_out_lr_mult set to 1")
        cfg.g_out_lr_mult = 1.0


def start_generator_at_data_mean(d: Distiller, t: nn.Module, g: Generator) -> None:
    """G's affine output shift starts where the teacher's first BatchNorm puts its data's mean (grey.py),
    instead of at the normalised 0 it would take the 50x-lr shift tens of steps to leave."""
    spec = d.spec
    if g.output != "affine":
        d.notes.append("gen_init_mean needs the affine output head: not applied")
        return
    means, _, why = channel_means(t, spec.input_shape, spec.mean, spec.std)
    if means is None:
        d.notes.append(f"gen_init_mean: no data mean to start from ({why})")
        return
    m = means.float().to(g.mean.device).reshape(1, -1, 1, 1)
    shift = (m.mean(1, keepdim=True) - g.mean[:, :1]) / g.std[:, :1] if g.grey else (m - g.mean) / g.std
    with torch.no_grad():
        g.out_bn.bias.copy_(shift.flatten())
    d.notes.append("G's output starts at the data's mean per channel, "
                      + " / ".join(f"{v:.3f}" for v in means.tolist()) + " (the teacher's first BatchNorm)")
