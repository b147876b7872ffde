"""The student side of an iteration: what it learns from and how.

The synthesizer leaves its batch in `d._last_batch`; the student learns from it mixed with the replay
memory (a reservoir of the run's earlier batches, relabelled by the teacher under augmentation when
s_augment asks), by KL to the teacher's logits, plus attention transfer and the discriminator's term
where the preset weighs them, then updates the EMA copy. Gradients are averaged over processes under
torchrun. Functions over the Distiller's state, like synthesizers.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict

import torch
import torch.nn.functional as F

from edgekd.distill import losses as L
from edgekd.distill.augment import AUGMENTS

if TYPE_CHECKING:
    from edgekd.distill.loop import Distiller


def _student_batch(d: Distiller, first: bool) -> tuple:
    """shared_batch: the first S step learns from G's own batch, later ones from replay memory
    (no extra generator passes: G costs 20x the student at 32x32). Otherwise every S step
    draws fresh samples, as DFAD/ZSKT do."""
    cfg, m = d.cfg, d.m
    if cfg.shared_batch and not first:
        if len(d.memory) >= d.batch:
            return replayed(d, d.batch)
        return d._last_batch
    if cfg.shared_batch:
        x, t = d._last_batch
    else:
        with torch.no_grad(), d.plans["teacher"].autocast():
            x = m.generator(d._z(d.batch))
            t = m.teacher(d._fmt(x, "teacher"))
    d.memory.push(x, t)
    n_old = int(d.batch * cfg.replay_fraction) if len(d.memory) >= 2 * d.batch else 0
    if n_old:
        x_old, t_old = replayed(d, n_old)
        x = torch.cat([x[: len(x) - n_old], x_old.to(x.dtype)])
        t = torch.cat([t[: len(t) - n_old].float(), t_old])
    return x, t


def replayed(d: Distiller, n: int) -> tuple:
    """n images from replay memory; with s_augment, augmented and labelled again by the teacher."""
    x, t = d.memory.sample(n)
    if d.cfg.s_augment == "none":
        return x, t
    x = AUGMENTS[d.cfg.s_augment](x)
    with torch.no_grad(), d.plans["teacher"].autocast():
        return x, d.m.teacher(d._fmt(x, "teacher")).float()


def student_step(d: Distiller, first: bool) -> Dict[str, torch.Tensor]:
    cfg, m = d.cfg, d.m
    x, t_logits = _student_batch(d, first)
    if d.at_t is not None:
        d.at_t.enabled = d.at_s.enabled = True
        with torch.no_grad(), d.plans["teacher"].autocast():
            m.teacher(d._fmt(x, "teacher"))  # AT needs the teacher's feature maps of this very batch
    with d.plans["student"].autocast():
        s_logits = m.student(d._fmt(x, "student"))
    terms = {"kd": L.DIVERGENCES[cfg.kd_loss](s_logits, t_logits, cfg.kd_tau)}
    if d.at_t is not None:
        d.at_t.enabled = d.at_s.enabled = False
        terms["at"] = L.attention_transfer_loss(d.at_s.pop(), d.at_t.pop())
    if m.disc is not None:
        p_s = F.softmax(s_logits.float() / cfg.tau, dim=1)
        terms["gan"] = L.fool_discriminator_loss(m.disc(p_s))
    loss = terms["kd"] + cfg.w_at * terms.get("at", 0.0) + cfg.w_gan * terms.get("gan", 0.0)
    m.opt_s.zero_grad(set_to_none=True)
    d.scalers["s"].scale(loss).backward()
    d.world.average_gradients(m.student.parameters())
    d.scalers["s"].step(m.opt_s)
    d.scalers["s"].update()
    if m.disc is not None:
        p_t = F.softmax(t_logits.float() / cfg.tau, dim=1)
        d_loss = L.discriminator_loss(m.disc(p_t), m.disc(p_s.detach()))
        m.opt_d.zero_grad(set_to_none=True)
        d.scalers["d"].scale(d_loss).backward()
        d.world.average_gradients(m.disc.parameters())
        d.scalers["d"].step(m.opt_d)
        d.scalers["d"].update()
        terms["loss_d"] = d_loss
    terms["loss_s"] = loss
    update_ema(d)
    return {k: v.detach() for k, v in terms.items()}


@torch.no_grad()
def update_ema(d: Distiller) -> None:
    """Polyak averaging of the student: smooths the step-to-step wobble of adversarial training."""
    ema = d.m.ema
    if ema is None:
        return
    d.ema_updates += 1
    decay = min(d.cfg.ema_decay, (1 + d.ema_updates) / (10 + d.ema_updates))
    torch._foreach_lerp_(list(ema.parameters()), list(d.m.student.parameters()), 1 - decay)
    for b_ema, b in zip(ema.buffers(), d.m.student.buffers()):
        b_ema.copy_(b)
