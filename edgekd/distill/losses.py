"""Loss terms as free functions on logits and features (docs/method.md).

Every function returns a scalar computed in float32, whatever precision the forward pass used.
Divergences are looked up by name in DIVERGENCES, so presets choose them as data.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

_EPS = 1e-8


def one_hot_loss(t_logits: torch.Tensor) -> torch.Tensor:
    """DAFL `oh`: CE(T(x), argmax T(x)); low when the teacher is confident."""
    t = t_logits.float()
    return F.cross_entropy(t, t.argmax(1))


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """DAFL `act`: -mean |f_T(x)|, f_T what the convolutions hand the classifier
    (the input of the teacher's first linear layer, as DAFL's lenet.py returns it)."""
    return -features.float().abs().mean()


def class_diversity_loss(features: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """`div`: the mean cosine similarity of f_T between images the teacher puts in the same class.

    Why: on a colour-photo BN teacher the generator drew one image per class (benchmarks/TUNING.md
    round 14) and the student then failed on the class's other looks. CMI (Fang et al., IJCAI 2021)
    keeps samples apart with a contrastive head over a feature memory; this is its within-batch core
    with no extra network: pairs of one class are pushed apart in the teacher's own feature space.
    0 when no two images share a class.
    """
    f = F.normalize(features.float().flatten(1), dim=1)
    y = t_logits.argmax(1)
    same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool, device=y.device)
    if not bool(same.any()):
        return f.sum() * 0.0
    return (f @ f.T)[same].mean()


def balance_loss(t_logits: torch.Tensor) -> torch.Tensor:
    """DAFL `bal`: sum_k p_k log p_k of the batch-mean softmax; minimal (-log K) when classes are balanced.

    Natural log. DAFL wrote log10, which is this divided by ln(10): the dafl preset scales its weight.
    """
    p = F.softmax(t_logits.float(), dim=1).mean(0)
    return (p * torch.log(p + _EPS)).sum()


def total_variation_loss(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's image prior (its l1 form, as DataFree writes it): the mean absolute difference
    between neighbouring pixels along the four directions, summed; low for smooth images."""
    x = x.float()
    return ((x[..., :, :-1] - x[..., :, 1:]).abs().mean() + (x[..., :-1, :] - x[..., 1:, :]).abs().mean()
            + (x[..., 1:, :-1] - x[..., :-1, 1:]).abs().mean() + (x[..., :-1, :-1] - x[..., 1:, 1:]).abs().mean())


def total_variation_l2_loss(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's CIFAR-10 form of the prior: the L2 norms of the four neighbour differences, summed."""
    x = x.float()
    return (torch.norm(x[..., :, :-1] - x[..., :, 1:]) + torch.norm(x[..., :-1, :] - x[..., 1:, :])
            + torch.norm(x[..., 1:, :-1] - x[..., :-1, 1:]) + torch.norm(x[..., :-1, :-1] - x[..., 1:, 1:]))


TV_LOSSES: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"l1": total_variation_loss, "l2": total_variation_l2_loss}

BNStats = Sequence[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def bn_statistics_loss(stats: BNStats, first: float = 1.0) -> torch.Tensor:
    """DeepInversion/DFQ `bn`: sum_l ||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2.

    `first` weighs the first BN layer (the one nearest the pixels) apart: DeepInversion's
    first_bn_multiplier, 10 in its ImageNet script. The deep, wide layers dominate the plain sum."""
    total = torch.zeros(())
    for i, (mean, var, run_mean, run_var) in enumerate(stats):
        term = torch.norm(mean.float() - run_mean, 2) + torch.norm(var.float() - run_var, 2)
        total = total.to(mean.device) + (first if i == 0 else 1.0) * term
    return total


def bn_gaussian_kl_loss(stats: BNStats, first: float = 1.0, eps: float = 1e-5) -> torch.Tensor:
    """`bn` as a divergence: sum over layers of the channel-mean KL(N(mu, var) || N(running_mean, running_var)).

    Scale-free per layer, so every layer counts alike. The L2 form above is dominated by the deepest,
    widest layers (on a WRN-16-2 the last BN holds most of it, and a batch of *real* images still
    scores 9 against 196 for noise); here real images score 0.01 and noise 15.
    """
    total = torch.zeros(())
    for i, (mean, var, run_mean, run_var) in enumerate(stats):
        v, rv = var.float().clamp_min(eps), run_var.clamp_min(eps)
        kl = 0.5 * (v / rv + (mean.float() - run_mean) ** 2 / rv - 1 - torch.log(v / rv))
        total = total.to(mean.device) + (first if i == 0 else 1.0) * kl.mean()
    return total


BN_LOSSES: Dict[str, Callable[..., torch.Tensor]] = {"l2": bn_statistics_loss, "kl": bn_gaussian_kl_loss}


def kl_per_sample(s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """KL(softmax(T/tau) || softmax(S/tau)) for each sample."""
    log_p_t = F.log_softmax(t_logits.float() / tau, dim=1)
    log_p_s = F.log_softmax(s_logits.float() / tau, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)


def kl_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Hinton's distillation loss, tau^2 * mean KL(T || S)."""
    return tau * tau * kl_per_sample(s_logits, t_logits, tau).mean()


def l1_logits_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """DFAD's mean absolute difference of logits (tau unused)."""
    return (s_logits.float() - t_logits.float()).abs().mean()


def mse_logits_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Mean squared difference of logits (tau unused): all of the teacher's logits, where KL at tau 1 sees
    little beyond the top class of an image the teacher is sure of (Kim et al., IJCAI 2021: logit matching
    is KL's limit as tau grows)."""
    return (s_logits.float() - t_logits.float()).pow(2).mean()


def masked_kl_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """KL on the samples where student and teacher agree (m = 1[argmax S = argmax T]), averaged
    over the whole batch. The generator then seeks hard samples only near the decision boundary
    the student already shares, instead of drifting off into regions neither network knows (CMI)."""
    mask = (s_logits.argmax(1) == t_logits.argmax(1)).float()
    return tau * tau * (mask * kl_per_sample(s_logits, t_logits, tau)).mean()


Divergence = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
DIVERGENCES: Dict[str, Divergence] = {"kl": kl_loss, "l1": l1_logits_loss, "mse": mse_logits_loss,
                                      "kl_masked": masked_kl_loss}


def adversarial_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, divergence: str, tau: float = 1.0) -> torch.Tensor:
    """`adv`: the generator maximises the teacher-student divergence, so it minimises its negative."""
    return -DIVERGENCES[divergence](s_logits, t_logits, tau)


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: L2-normalised channel mean of squared activations."""
    a = feature.float().pow(2).mean(1).flatten(1)
    return F.normalize(a, dim=1)


def attention_transfer_loss(s_feats: List[torch.Tensor], t_feats: List[torch.Tensor]) -> torch.Tensor:
    """ZSKT's AT term over feature maps paired by spatial size (pairs of equal size only)."""
    t_by_size = {tuple(f.shape[-2:]): f for f in t_feats}
    terms = [(attention_map(s) - attention_map(t_by_size[tuple(s.shape[-2:])])).pow(2).mean()
             for s in s_feats if tuple(s.shape[-2:]) in t_by_size]
    if not terms:
        return torch.zeros((), device=s_feats[0].device if s_feats else None)
    return torch.stack(terms).sum()


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """D learns teacher probabilities -> 1, student probabilities -> 0."""
    return (F.binary_cross_entropy_with_logits(d_real.float(), torch.ones_like(d_real, dtype=torch.float32))
            + F.binary_cross_entropy_with_logits(d_fake.float(), torch.zeros_like(d_fake, dtype=torch.float32)))


def fool_discriminator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """The student wants D to call its probabilities the teacher's."""
    return F.binary_cross_entropy_with_logits(d_fake.float(), torch.ones_like(d_fake, dtype=torch.float32))
