"""What makes the student's images: the seam between synthesis and the student's training.

A synthesizer runs once per iteration, leaves `(images, teacher logits)` in `d._last_batch` for the
student stage, and returns its loss terms for the log. Its state lives in the Distiller's generator
and generator optimiser, so checkpoints and exact resume cover it with nothing more.

- generator: one generator trained across the run (DAFL, DFAD, ZSKT, DFQ, the adversarial default);
  g_steps steps per iteration, each on fresh latents (generator_step).
- inversion: DeepInversion (Yin et al., "Dreaming to Distill", CVPR 2020; NVlabs/DeepInversion
  cifar10/deepinversion_cifar10.py): no generator; each iteration optimises a batch of pixels.
- meta: Fast-Datafree (Fang et al., "Up to 100x Faster Data-free Knowledge Distillation", AAAI 2022;
  zju-vipa/Fast-Datafree, datafree/synthesis/fast_meta.py). Each iteration clones the meta generator,
  optimises the clone and a learnable latent batch for g_steps inner steps (BN statistics, CE
  against random target classes, masked adversarial KL, on randomly shifted and flipped images),
  keeps the lowest-loss batch, and moves the meta generator by the summed inner gradients
  (first-order MAML; meta learning rate lr_g x g_steps, as the reference sets it).
- nayer: NAYER (Tran et al., CVPR 2024): a lasting generator fed through a noisy layer drawn afresh
  for every batch (nayer_synthesis).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from edgekd.distill import losses as L
from edgekd.distill.augment import random_flip, random_shift
from edgekd.distill.contrastive import local_view
from edgekd.distill.generator import reset_weights
from edgekd.distill.grey import grey_to_channels

if TYPE_CHECKING:
    from edgekd.distill.config import DistillConfig
    from edgekd.distill.loop import Distiller


def jitter(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """DeepInversion's jitter: roll the whole batch by a random shift of up to `fraction` of each side,
    so the generator must make images the teacher reads the same way wherever the object sits."""
    dy, dx = (round(fraction * n) for n in x.shape[-2:])
    if not (dy or dx):
        return x
    shift = [int(torch.randint(-d, d + 1, ())) for d in (dy, dx)]
    return torch.roll(x, shifts=shift, dims=(2, 3))


def balanced_labels(n: int, k: int, device: torch.device) -> torch.Tensor:
    """n class labels, every class n/k times (+-1), in random order."""
    return (torch.arange(n) % k)[torch.randperm(n)].to(device)


def generator_step(d: Distiller) -> Dict[str, torch.Tensor]:
    cfg, m = d.cfg, d.m
    m.student.requires_grad_(False)  # G's loss must not spend time on student gradients
    if d.bn_hook:
        d.bn_hook.enabled = True
    # A class-conditional G (gen_labels) is asked for balanced target classes; otherwise oh targets
    # the teacher's own argmax (DAFL).
    labels = balanced_labels(d.batch, d.spec.num_classes, d.plan.device) if m.generator.num_classes else None
    cr = m.contrast
    if cr:
        cr.hook.enabled = True
    with d.plans["teacher"].autocast():
        raw = m.generator(d._z(d.batch), labels)
        x = jitter(raw, cfg.g_jitter)
        t_logits = m.teacher(d._fmt(x, "teacher"))
    with d.plans["student"].autocast():
        s_logits = m.student(d._fmt(x, "student")) if cfg.w_adv else None
    if d.bn_hook:
        d.bn_hook.enabled = False
    terms: Dict[str, torch.Tensor] = {}
    if cr:  # the jittered batch is CMI's global view; a resized crop of G's images the local one
        global_features = cr.hook.pop()
        with d.plans["teacher"].autocast():
            m.teacher(d._fmt(local_view(raw), "teacher"))
        cr.hook.enabled = False
        terms["cr"] = cr.loss(global_features, cr.hook.pop())
    if cfg.w_oh:
        terms["oh"] = L.one_hot_loss(t_logits) if labels is None else F.cross_entropy(t_logits.float(), labels)
    if cfg.w_act:
        terms["act"] = L.activation_loss(d.feat_hook.features)
    if cfg.w_div:
        terms["div"] = L.class_diversity_loss(d.feat_hook.features, t_logits)
    if cfg.w_bal:
        terms["bal"] = L.balance_loss(t_logits)
    if cfg.w_tv:
        terms["tv"] = L.TV_LOSSES[cfg.tv_loss](raw)
    if cfg.w_bn:
        terms["bn"] = L.BN_LOSSES[cfg.bn_loss](d.bn_hook.pop(), cfg.bn_first)
    if cfg.w_adv:
        terms["adv"] = L.adversarial_loss(s_logits, t_logits, cfg.adv_loss, cfg.tau)
    loss = weighted_sum(cfg, terms)
    m.opt_g.zero_grad(set_to_none=True)
    if cr:
        cr.opt.zero_grad(set_to_none=True)
    if torch.is_tensor(loss) and loss.requires_grad:
        d.scalers["g"].scale(loss).backward()
        d.world.average_gradients(m.generator.parameters())
        d.scalers["g"].step(m.opt_g)
        if cr:
            d.world.average_gradients(cr.head.parameters())
            d.scalers["g"].step(cr.opt)
        d.scalers["g"].update()
    if d.bn_hook:
        d.bn_hook.advance()
    if cr:
        cr.remember()
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


def weighted_sum(cfg: DistillConfig, terms: Dict[str, torch.Tensor]) -> Any:
    """The image-side loss: each term times its weight, cfg.w_<term> (0 when the term is absent)."""
    return sum(getattr(cfg, f"w_{key}") * v for key, v in terms.items())


def targeted_terms(d: Distiller, x: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Teacher (and, for adv, student) on images asked to show `targets`: the teacher's logits and the
    oh (CE to the targets), bn and adv terms that Fast-Datafree and DeepInversion share."""
    cfg, m = d.cfg, d.m
    if d.bn_hook:
        d.bn_hook.enabled = True
    with d.plans["teacher"].autocast():
        t_logits = m.teacher(d._fmt(x, "teacher"))
    with d.plans["student"].autocast():
        s_logits = m.student(d._fmt(x, "student")) if cfg.w_adv else None
    if d.bn_hook:
        d.bn_hook.enabled = False
    terms = {"oh": F.cross_entropy(t_logits.float(), targets)}
    if cfg.w_bn:
        terms["bn"] = L.BN_LOSSES[cfg.bn_loss](d.bn_hook.pop(), cfg.bn_first)
    if cfg.w_adv:
        terms["adv"] = L.adversarial_loss(s_logits, t_logits, cfg.adv_loss, cfg.tau)
    return t_logits, terms


def meta_synthesis(d: Distiller) -> Dict[str, torch.Tensor]:
    cfg, m = d.cfg, d.m
    k, n = d.spec.num_classes, d.batch
    m.student.requires_grad_(False)
    fast = copy.deepcopy(m.generator).train()
    z = d._z(n).requires_grad_(True)
    targets = torch.randint(0, k, (n,), device=z.device)
    labels = targets if fast.num_classes else None
    lr = m.opt_g.param_groups[0]["lr"]  # the run's schedule, set for this iteration
    inner = torch.optim.Adam([{"params": fast.parameters()}, {"params": [z], "lr": cfg.lr_z * lr / cfg.lr_g}],
                             lr=lr, betas=(0.5, 0.999))
    meta_params = list(m.generator.parameters())
    for p in meta_params:
        p.grad = torch.zeros_like(p)
    best_loss, best = float("inf"), None
    for _ in range(cfg.g_steps):
        with d.plans["teacher"].autocast():
            x = random_flip(random_shift(fast(z, labels)))
        t_logits, terms = targeted_terms(d, x, targets)
        loss = weighted_sum(cfg, terms)
        if float(loss.detach()) < best_loss or best is None:  # the reference keeps the batch of lowest loss
            best_loss, best = float(loss.detach()), (x.detach(), t_logits.detach())
        inner.zero_grad(set_to_none=True)
        loss.backward()
        for p, q in zip(meta_params, fast.parameters()):  # first-order MAML: sum of the inner gradients
            if q.grad is not None:
                p.grad += q.grad.float()
        inner.step()
    for group in m.opt_g.param_groups:
        group["lr"] = lr * cfg.g_steps * group.get("lr_mult", 1.0)
    d.world.average_gradients(meta_params)
    m.opt_g.step()
    m.opt_g.zero_grad(set_to_none=True)
    m.student.requires_grad_(True)
    d._last_batch = best
    terms["loss_g"] = loss.detach()
    terms["top_class_share"] = torch.bincount(best[1].argmax(1), minlength=k).max() / n
    return {key: v.detach() for key, v in terms.items()}


def inversion_synthesis(d: Distiller) -> Dict[str, torch.Tensor]:
    """DeepInversion: a fresh batch of pixels (Gaussian noise) optimised for g_steps against the teacher:
    CE to balanced target classes, the BN-statistics prior (first layer weighted by bn_first), total
    variation and l2 priors, each step on a randomly rolled (and, with g_flip, mirrored) copy; the
    lowest-loss batch is kept, as the reference keeps its best inputs. Pixels are clipped to what a
    camera can deliver in the teacher's normalisation (DataFree's clip_images). With w_adv, the
    adversarial term makes it Adaptive DeepInversion. A slice of every batch is withheld from the
    student as held-out images (d.heldout): there is no generator to draw them from."""
    cfg, m = d.cfg, d.m
    k, n, dev = d.spec.num_classes, d.batch, d.plan.device
    m.student.requires_grad_(False)
    mean, std = (torch.tensor(v, device=dev).reshape(1, -1, 1, 1) for v in (d.spec.mean, d.spec.std))
    c, h, w = d.spec.input_shape
    if cfg.gen_grey and c > 1:
        # One grey picture per image, written into every channel through that channel's normalisation
        # (grey data on an RGB teacher, grey.py). It is optimised in the channels' average normalisation,
        # so lr means what it means for colour pixels.
        m0, s0 = mean.mean(), std.mean()
        x = torch.randn(n, 1, h, w, device=dev).requires_grad_(True)

        def image() -> torch.Tensor:
            return grey_to_channels(x, mean, std, m0, s0)
        lo, hi = (0.0 - m0) / s0, (1.0 - m0) / s0
    else:
        x = torch.randn(n, c, h, w, device=dev).requires_grad_(True)

        def image() -> torch.Tensor:
            return x
        lo, hi = (0.0 - mean) / std, (1.0 - mean) / std
    labels = balanced_labels(n, k, dev)
    lr = m.opt_g.param_groups[0]["lr"]  # the run's schedule, set for this iteration
    opt = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.99))
    best_loss, best = float("inf"), image().detach().clone()
    start = time.perf_counter()
    for i in range(cfg.g_steps):
        # A batch of the paper's 2000 steps outlasts a CPU budget: the run's clock ends it early.
        if i and cfg.time_budget and d.elapsed + time.perf_counter() - start >= cfg.time_budget:
            break
        xa = jitter(image(), cfg.g_jitter)
        if cfg.g_flip and bool(torch.rand(()) < 0.5):
            xa = xa.flip(3)
        t_logits, terms = targeted_terms(d, xa, labels)
        if cfg.w_tv:
            terms["tv"] = L.TV_LOSSES[cfg.tv_loss](xa)
        if cfg.w_l2:
            terms["l2"] = torch.norm(xa.float())
        loss = weighted_sum(cfg, terms)
        if float(loss.detach()) < best_loss:
            best_loss, best = float(loss.detach()), image().detach().clone()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
    m.student.requires_grad_(True)
    return _hand_over(d, best, best_loss, terms)


def _hand_over(d: Distiller, best: torch.Tensor, best_loss: float,
               terms: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A synthesizer without a lasting generator hands its kept batch to the student, labelled by the
    teacher as it is (not as augmented during synthesis), less a slice withheld as held-out images
    (d.heldout): there is no generator to draw them from later. Returns the iteration's loss terms for
    the log: the last step's, with the kept batch's loss and top class share."""
    n = len(best)
    with torch.no_grad(), d.plans["teacher"].autocast():
        t_best = d.m.teacher(d._fmt(best, "teacher")).float()
    hold = min(max(1, n // 8), n - 1, d.heldout.capacity)
    if hold:
        d.heldout.push(best[:hold], t_best[:hold])
    d._last_batch = (best[hold:], t_best[hold:])
    terms["loss_g"] = torch.tensor(best_loss)
    terms["top_class_share"] = torch.bincount(t_best.argmax(1), minlength=d.spec.num_classes).max() / n
    return {key: v.detach() for key, v in terms.items()}


# NAYER's label embedding width: its CLIP text encoder's (le_size 512).
LABEL_EMBED_DIM = 512


def class_codes(d: Distiller) -> torch.Tensor:
    """NAYER starts each image from its class's text embedding (a language model's, which edgekd cannot
    fetch offline and which exists only for named classes). A fixed random code per class stands in,
    drawn from the run's seed (resume stays exact), standardised across the classes as NAYER's
    BatchNorm1d does to a class-balanced batch."""
    gen = torch.Generator().manual_seed(d.cfg.seed + 30_011)
    e = torch.randn(d.spec.num_classes, LABEL_EMBED_DIM, generator=gen)
    return ((e - e.mean(0)) / e.std(0).clamp_min(1e-6) if len(e) > 1 else e).to(d.plan.device)


def nayer_synthesis(d: Distiller) -> Dict[str, torch.Tensor]:
    """NAYER (Tran et al., "Noisy Layer Data Generation for Efficient and Effective Data-free Knowledge
    Distillation", CVPR 2024; tmtuan1307/NAYER, datafree/synthesis/nayer.py). The generator lives across
    iterations (re-initialised every g_life), but each batch starts from a fresh *noisy layer*: a linear
    map N(0, 1) from the class codes to G's input, one per run of num_classes images (each run holds
    every class once). G and the noisy layer are optimised together for g_steps by a fresh Adam at lr_g
    (BN statistics, CE to the targets, masked adversarial KL, on shifted and flipped images); the
    lowest-loss batch is kept. Random noise that lasts one batch gives diversity; a generator that
    lasts gives speed, since it already knows how to draw each class."""
    cfg, m = d.cfg, d.m
    k, n, dev = d.spec.num_classes, d.batch, d.plan.device
    m.student.requires_grad_(False)
    if cfg.g_life and d.step and d.step % cfg.g_life == 0:
        reset_weights(m.generator)
        d.world.sync_module(m.generator)
    runs = -(-n // k)
    reps, rest = divmod(n, k)
    targets = torch.cat([torch.arange(k).repeat(reps), torch.randint(0, k, (rest,))]).to(dev)
    codes = F.pad(class_codes(d)[targets], (0, 0, 0, runs * k - n)).view(runs, k, LABEL_EMBED_DIM)
    weight = torch.randn(runs, LABEL_EMBED_DIM, cfg.latent_dim, device=dev).requires_grad_(True)
    bias = torch.zeros(runs, 1, cfg.latent_dim, device=dev).requires_grad_(True)
    lr = cfg.lr_g * d.lr_scale  # constant, as the reference: a re-initialised G late in a run must still learn
    opt = torch.optim.Adam([{"params": m.generator.parameters()}, {"params": [weight, bias]}], lr=lr, betas=(0.5, 0.999))
    best_loss, best = float("inf"), None
    for _ in range(cfg.g_steps):
        z = torch.baddbmm(bias, codes, weight).reshape(runs * k, -1)[:n]
        with d.plans["teacher"].autocast():
            x = m.generator(z)
        _, terms = targeted_terms(d, random_flip(random_shift(x)), targets)
        loss = weighted_sum(cfg, terms)
        if best is None or float(loss.detach()) < best_loss:  # the reference keeps the batch of lowest loss
            best_loss, best = float(loss.detach()), x.detach().float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        d.world.average_gradients(m.generator.parameters())
        opt.step()
    m.student.requires_grad_(True)
    return _hand_over(d, best, best_loss, terms)


def generator_heldout(d: Distiller) -> Optional[torch.Tensor]:
    """Held-out images of the current generator: fixed latents, never trained on."""
    gen = copy.deepcopy(d.m.generator).train()  # batch statistics, like training; G itself untouched
    with torch.no_grad(), d.plans["teacher"].autocast():
        return torch.cat([gen(d.eval_z[i:i + 256]) for i in range(0, len(d.eval_z), 256)]).float()


def withheld_heldout(d: Distiller) -> Optional[torch.Tensor]:
    """The newest images the synthesizer withheld from the student (None before the first)."""
    return d.heldout.x[: len(d.heldout)] if len(d.heldout) else None


@dataclass(frozen=True)
class Synthesizer:
    run: Callable[[Distiller], Dict[str, torch.Tensor]]  # one iteration's images, left in d._last_batch
    heldout: Callable[[Distiller], Optional[torch.Tensor]]  # images for agreement, never trained on
    trains_generator: bool  # False: no generator.pt; export calibrates on the run's saved images
    terms: Tuple[str, ...]  # the image-side loss weights (w_<term>) it uses; the run zeroes others, with a note
    averages_bn: bool = False  # its step advances the BN hook's running average (bn_mmt); others get it zeroed


SYNTHESIZERS: Dict[str, Synthesizer] = {
    "generator": Synthesizer(generator_synthesis, generator_heldout, True,
                             ("oh", "act", "div", "bal", "bn", "adv", "tv", "cr"),
                             averages_bn=True),
    "meta": Synthesizer(meta_synthesis, generator_heldout, True, ("oh", "bn", "adv")),
    "inversion": Synthesizer(inversion_synthesis, withheld_heldout, False, ("oh", "bn", "adv", "tv", "l2")),
    # NAYER's generator is re-initialised every g_life iterations: images withheld from the batches
    # make the held-out set, and export calibrates on the run's saved images.
    "nayer": Synthesizer(nayer_synthesis, withheld_heldout, False, ("oh", "bn", "adv")),
}
IMAGE_TERMS = ("oh", "act", "div", "bal", "bn", "adv", "tv", "l2", "cr")
