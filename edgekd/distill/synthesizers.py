"""What makes the student's images: the seam between synthesis and the student's training.

A synthesizer runs once per iteration, leaves `(images, teacher logits)` in `d._last_batch` for the
student stage, and returns its loss terms for the log. Its state lives in the Distiller's generator
and generator optimiser, so checkpoints and exact resume cover it with nothing more.

- generator: one generator trained across the run (DAFL, DFAD, ZSKT, DFQ, the adversarial default);
  g_steps steps per iteration, each on fresh latents (generator_step).
- meta: Fast-Datafree (Fang et al., "Up to 100x Faster Data-free Knowledge Distillation", AAAI 2022;
  zju-vipa/Fast-Datafree, datafree/synthesis/fast_meta.py). Each iteration clones the meta generator,
  optimises the clone and a learnable latent batch for g_steps inner steps (BN statistics, CE
  against random target classes, masked adversarial KL, on randomly shifted and flipped images),
  keeps the lowest-loss batch, and moves the meta generator by the summed inner gradients
  (first-order MAML; meta learning rate lr_g x g_steps, as the reference sets it).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable, Dict

import torch
import torch.nn.functional as F

from edgekd.distill import losses as L
from edgekd.distill.augment import random_flip, random_shift

if TYPE_CHECKING:
    from edgekd.distill.loop import Distiller


def jitter(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """DeepInversion's jitter: roll the whole batch by a random shift of up to `fraction` of each side,
    so the generator must make images the teacher reads the same way wherever the object sits."""
    dy, dx = (round(fraction * n) for n in x.shape[-2:])
    if not (dy or dx):
        return x
    shift = [int(torch.randint(-d, d + 1, ())) for d in (dy, dx)]
    return torch.roll(x, shifts=shift, dims=(2, 3))


def generator_step(d: Distiller) -> Dict[str, torch.Tensor]:
    cfg, m = d.cfg, d.m
    m.student.requires_grad_(False)  # G's loss must not spend time on student gradients
    if d.bn_hook:
        d.bn_hook.enabled = True
    with d.plans["teacher"].autocast():
        raw = m.generator(d._z(cfg.batch_size))
        x = jitter(raw, cfg.g_jitter)
        t_logits = m.teacher(d._fmt(x, "teacher"))
    with d.plans["student"].autocast():
        s_logits = m.student(d._fmt(x, "student")) if cfg.w_adv else None
    if d.bn_hook:
        d.bn_hook.enabled = False
    terms: Dict[str, torch.Tensor] = {}
    if cfg.w_oh:
        terms["oh"] = L.one_hot_loss(t_logits)
    if cfg.w_act:
        terms["act"] = L.activation_loss(d.feat_hook.features)
    if cfg.w_bal:
        terms["bal"] = L.balance_loss(t_logits)
    if cfg.w_tv:
        terms["tv"] = L.total_variation_loss(raw)
    if cfg.w_bn:
        terms["bn"] = L.BN_LOSSES[cfg.bn_loss](d.bn_hook.pop())
    if cfg.w_adv:
        terms["adv"] = L.adversarial_loss(s_logits, t_logits, cfg.adv_loss, cfg.tau)
    weights = {"oh": cfg.w_oh, "act": cfg.w_act, "bal": cfg.w_bal, "bn": cfg.w_bn, "adv": cfg.w_adv, "tv": cfg.w_tv}
    loss = sum(weights[k] * v for k, v in terms.items())
    m.opt_g.zero_grad(set_to_none=True)
    if torch.is_tensor(loss) and loss.requires_grad:
        d.scalers["g"].scale(loss).backward()
        d.world.average_gradients(m.generator.parameters())
        d.scalers["g"].step(m.opt_g)
        d.scalers["g"].update()
    m.student.requires_grad_(True)
    d._last_batch = (x.detach(), t_logits.detach())
    terms["loss_g"] = loss.detach() if torch.is_tensor(loss) else torch.zeros(())
    terms["top_class_share"] = torch.bincount(t_logits.argmax(1), minlength=d.spec.num_classes).max() / len(x)
    return {k: v.detach() for k, v in terms.items()}


def generator_synthesis(d: Distiller) -> Dict[str, torch.Tensor]:
    terms: Dict[str, torch.Tensor] = {}
    for _ in range(d.cfg.g_steps):
        terms.update(generator_step(d))
    return terms


def meta_synthesis(d: Distiller) -> Dict[str, torch.Tensor]:
    cfg, m = d.cfg, d.m
    k, n = d.spec.num_classes, cfg.batch_size
    m.student.requires_grad_(False)
    fast = copy.deepcopy(m.generator).train()
    z = d._z(n).requires_grad_(True)
    targets = torch.randint(0, k, (n,), device=z.device)
    lr = m.opt_g.param_groups[0]["lr"]  # the run's schedule, set for this iteration
    inner = torch.optim.Adam([{"params": fast.parameters()}, {"params": [z], "lr": cfg.lr_z * lr / cfg.lr_g}],
                             lr=lr, betas=(0.5, 0.999))
    meta_params = list(m.generator.parameters())
    for p in meta_params:
        p.grad = torch.zeros_like(p)
    best_loss, best = float("inf"), None
    for _ in range(cfg.g_steps):
        if d.bn_hook:
            d.bn_hook.enabled = True
        with d.plans["teacher"].autocast():
            x = random_flip(random_shift(fast(z)))
            t_logits = m.teacher(d._fmt(x, "teacher"))
        with d.plans["student"].autocast():
            s_logits = m.student(d._fmt(x, "student")) if cfg.w_adv else None
        if d.bn_hook:
            d.bn_hook.enabled = False
        terms = {"oh": F.cross_entropy(t_logits.float(), targets)}
        if cfg.w_bn:
            terms["bn"] = L.BN_LOSSES[cfg.bn_loss](d.bn_hook.pop())
        if cfg.w_adv:
            terms["adv"] = L.adversarial_loss(s_logits, t_logits, cfg.adv_loss, cfg.tau)
        weights = {"oh": cfg.w_oh, "bn": cfg.w_bn, "adv": cfg.w_adv}
        loss = sum(weights[key] * v for key, v in terms.items())
        if float(loss.detach()) < best_loss or best is None:  # the reference keeps the batch of lowest loss
            best_loss, best = float(loss.detach()), (x.detach(), t_logits.detach())
        inner.zero_grad(set_to_none=True)
        loss.backward()
        for p, q in zip(meta_params, fast.parameters()):  # first-order MAML: sum of the inner gradients
            if q.grad is not None:
                p.grad += q.grad.float()
        inner.step()
    for group in m.opt_g.param_groups:
        group["lr"] = lr * cfg.g_steps
    d.world.average_gradients(meta_params)
    m.opt_g.step()
    m.opt_g.zero_grad(set_to_none=True)
    m.student.requires_grad_(True)
    d._last_batch = best
    terms["loss_g"] = loss.detach()
    terms["top_class_share"] = torch.bincount(best[1].argmax(1), minlength=k).max() / n
    return {key: v.detach() for key, v in terms.items()}


SYNTHESIZERS: Dict[str, Callable[[Distiller], Dict[str, torch.Tensor]]] = {
    "generator": generator_synthesis,
    "meta": meta_synthesis,
}
