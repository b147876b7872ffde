"""Methods are data: one dict of weights and schedule per method, all run by the same loop.

Reference formulations (docs/method.md and the public DataFree benchmark):
- dafl:  oh 1, bal 5 with log10 (= 5/ln 10 with our natural log), act 0.1; G and S step together
         on one batch; student KL; Adam lr_G 0.2, lr_S 2e-3 (DAFL's MNIST settings).
- dfad:  adversarial L1 on logits; student L1; 5 S steps per G step; SGD lr_S 0.1, Adam lr_G 1e-3.
- zskt:  adversarial KL; student KL + 250 x attention transfer; 10 S steps per G step.
- dfq:   adv 1, bn 1, oh 1, bal 20 (DataFree's unified weights); student KL.
- adversarial (default, the paper's): masked KL adversarial term + BN statistics (only when the
         teacher has BN) + oh + bal; student KL at temperature 4 (kd_tau; rounds 28-29) + FC
         discriminator; S steps per G step by their
         measured cost (S time up to 2x G time, at most 20: the demo teacher's tuned 20 is 1.2x there;
         a MobileNetV2 student of a ResNet-34 gets 5, which reached 58.0% where 20 reached 45.5% in
         5 minutes, seed 0; benchmarks/TUNING.md round 5); EMA
         student; replay memory as a reservoir sample of the whole run (demo teacher: ends at its best,
         80.84%, where a FIFO of recent batches fell from 81.25% to 80.16%; mixed on a WRN teacher
         over two seeds); with a BN teacher, DeepInversion's
         jitter (G's batch rolled by up to 1/16 of a side: +7 points on a WRN-16-2 teacher over
         three seeds). act is available but 0 by default: it is unbounded and, over runs longer
         than ~2 minutes, pulled the images off the data (real accuracy fell while synthetic
         agreement rose). Tuned on three self-trained teachers: see benchmarks/TUNING.md.
- adversarial-bn: the default's weights plus DeepInversion's whole BN prior for BatchNorm teachers (first
         layer x10; G's output scale/shift learning at 50x lr_g, so they can reach the input statistics the
         first layer was fitted to within ~50 steps): WRN-16-2 MNIST 98.3% -> LeNet-5 in 150 G steps 24.7%
         -> 50.6% (seed 0; TUNING.md round 8). What `auto` picks for a teacher with readable BN statistics.
         lr_g 3e-3 (3x the adversarial preset's): under a CPU budget the generator makes only 220-370 steps,
         and at 1e-3 it reached the teacher's data late; same teacher, seed and sitting side by side, 10
         minutes of one AVX2 core: WRN-16-2 71.9% -> 87.6%, photo10 ResNet-34 58.7 / 55.8% -> 67.5 / 54.7%, resnet18
         Fashion-MNIST 65.5 / 64.2% -> 69.7 / 67.5%, resnet34 64.7 / 63.7% -> 63.8 / 65.5% (TUNING.md round 21).
- both adversarial presets, under a time budget: the batch shrinks (to 64 at least) where fewer than ~400
         generator steps of 256 would fit (budget_g_steps): on a 2-core AVX2 CPU, 10 minutes, the BN
         teachers made 60-90 steps of 256; at 64-72 images ResNet-18 53.7% -> 69.1%, ResNet-34 45.6% ->
         63.6%, photo10 47.7% -> 59.4% (seed 0; TUNING.md round 18).
- fast, deepinversion, nayer: the inversion family on its own synthesizers (below); cmi on the generator one.
- auto (the CLI default): choose_method() picks one of these by what the teacher is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Tuple

if TYPE_CHECKING:
    from edgekd.models.checkpoint import LoadedModel

PRESETS: Dict[str, Dict[str, Any]] = {
    "dafl": dict(w_adv=0.0, w_bn=0.0, w_oh=1.0, w_bal=5.0 / math.log(10), w_act=0.1, w_at=0.0, w_gan=0.0,
                 adv_loss="kl", kd_loss="kl", tau=1.0, g_steps=1, s_steps=1, shared_batch=True,
                 lr_g=0.2, lr_s=2e-3, s_optimizer="adam", replay_size=0, replay_fraction=0.0),
    "dfad": dict(w_adv=1.0, w_bn=0.0, w_oh=0.0, w_bal=0.0, w_act=0.0, w_at=0.0, w_gan=0.0,
                 adv_loss="l1", kd_loss="l1", tau=1.0, g_steps=1, s_steps=5, shared_batch=False,
                 lr_g=1e-3, lr_s=0.1, s_optimizer="sgd", replay_size=0, replay_fraction=0.0),
    "zskt": dict(w_adv=1.0, w_bn=0.0, w_oh=0.0, w_bal=0.0, w_act=0.0, w_at=250.0, w_gan=0.0,
                 adv_loss="kl", kd_loss="kl", tau=1.0, g_steps=1, s_steps=10, shared_batch=False,
                 lr_g=1e-3, lr_s=2e-3, s_optimizer="adam", replay_size=0, replay_fraction=0.0),
    "dfq": dict(w_adv=1.0, w_bn=1.0, w_oh=1.0, w_bal=20.0, w_act=0.0, w_at=0.0, w_gan=0.0,
                adv_loss="kl", kd_loss="kl", tau=1.0, g_steps=1, s_steps=5, shared_batch=False,
                lr_g=1e-3, lr_s=2e-3, s_optimizer="adam", replay_size=0, replay_fraction=0.0),
    # The student learns at kd_tau 4 (its KL on softened outputs; tau 1 stays the adversarial term's): the
    # generator makes images the teacher is sure of, and at 1 the student sees little beyond the top class.
    # BN-free teachers, 10 minutes, 13 pairs side by side (+1.1, 9 ahead): demo +2.9 (4 of 5 ahead), Fashion-MNIST LeNet-5
    # TorchScript -0.1 (3 of 5), MNIST DAFL LeNet-5 +0.2 (at its ceiling, 2 of 3; TUNING.md rounds 28-29).
    # Not in adversarial-bn: on the BN teachers' MobileNetV2 students it was -0.6 / -0.6 and -5.8 / +5.3.
    "adversarial": dict(w_adv=1.0, w_bn=1.0, w_oh=1.0, w_bal=5.0, w_act=0.0, w_at=0.0, w_gan=0.1,
                        g_jitter=0.0625, gen_width=64, adv_loss="kl_masked", kd_loss="kl", tau=1.0, kd_tau=4.0, g_steps=1, s_steps=20, s_time_ratio=2.0, budget_g_steps=400,
                        shared_batch=True, lr_g=1e-3, lr_s=2e-3, s_optimizer="adam", replay_size=16384, replay_fraction=0.5,
                        replay_policy="reservoir", ema_decay=0.999),
    # adversarial with DeepInversion's whole BN prior, for BatchNorm teachers (what auto picks there): the
    # first BN layer weighed x10 (first_bn_multiplier), and G's output scale/shift free to follow it at 50x
    # lr_g (affine head), so the images take the input statistics the teacher's first layer was fitted to
    # (MNIST normalised with 0.5/0.5: mean -0.74, std 0.57, where DAFL's head fixes 0 and 1).
    # A student with BatchNorm layers (mobilenet_v2, resnets) learns at lr_s_bn, twice lr_s: ahead on
    # every MobileNetV2 pair of the Fashion-MNIST ResNets (8 of 8, +2.2; TUNING.md rounds 22-23), where the
    # BN-free LeNet-5 lost 2 points at it; behind on the photo10 colour teacher's MobileNetV2 (3 of 3, -1.2)
    # and a resnet18 student of the Fashion-MNIST resnet34 (3 of 3, -0.7; round 24), and on the README's case with
    # fp32 plans (AVX2-capped, 2 of 3, -0.9; round 25): per student or per precision, next.
    "adversarial-bn": dict(w_adv=1.0, w_bn=1.0, bn_first=10.0, w_oh=1.0, w_bal=5.0, w_act=0.0, w_at=0.0, w_gan=0.1,
                           g_jitter=0.0625, gen_width=64, gen_output="affine", g_out_lr_mult=50.0,
                           adv_loss="kl_masked", kd_loss="kl", tau=1.0, g_steps=1, s_steps=20, s_time_ratio=2.0,
                           budget_g_steps=400, shared_batch=True, lr_g=3e-3, lr_s=2e-3, lr_s_bn=4e-3, s_optimizer="adam", replay_size=16384,
                           replay_fraction=0.5, replay_policy="reservoir", ema_decay=0.999),
    # Fast-Datafree (Fang et al., AAAI 2022; zju-vipa/Fast-Datafree scripts/fast_cifar.sh, "fast2"): the
    # synthesis side is the paper's (meta-generator, 2 inner steps, lr_g 5e-3, lr_z 0.015, bn 10, oh 0.5
    # against random targets, adv 1.1 masked KL, shifted and flipped images); the student side is ours
    # (Adam, cost-scaled steps, reservoir memory relabelled by the teacher under the same augmentation,
    # as the reference's KD step sees augmented pool images through the teacher; EMA).
    "fast": dict(synthesizer="meta", w_adv=1.1, w_bn=10.0, w_oh=0.5, w_bal=0.0, w_act=0.0, w_at=0.0, w_gan=0.0,
                 adv_loss="kl_masked", kd_loss="kl", tau=1.0, g_steps=2, lr_g=5e-3, lr_z=0.015, gen_width=64,
                 s_steps=50, s_time_ratio=2.0, shared_batch=True, lr_s=2e-3, s_optimizer="adam",
                 replay_size=16384, replay_fraction=0.5, replay_policy="reservoir", s_augment="shift_flip",
                 ema_decay=0.999),
    # DeepInversion (Yin et al., "Dreaming to Distill", CVPR 2020; NVlabs/DeepInversion, cifar10/README.md's
    # "paper parameters": 2000 Adam steps per batch of pixels at lr 0.05, BN weight 10, TV-l2 2.5e-5, l2 0,
    # jitter 2 px at 32x32 = 1/16 of a side; flips as its ImageNet code and DataFree's deepinv do; CE to
    # balanced targets). The student side is ours, as for fast. A batch costs 2000 teacher forward/backward
    # passes: hours on a CPU (the inner loop stops at the time budget), so auto never picks it there.
    "deepinversion": dict(synthesizer="inversion", w_adv=0.0, w_bn=10.0, bn_first=1.0, w_oh=1.0, w_bal=0.0,
                          w_act=0.0, w_at=0.0, w_gan=0.0, w_tv=2.5e-5, tv_loss="l2", w_l2=0.0, g_jitter=0.0625,
                          g_flip=True, adv_loss="kl_masked", kd_loss="kl", tau=1.0, g_steps=2000, lr_g=0.05,
                          s_steps=50, s_time_ratio=2.0, shared_batch=True, lr_s=2e-3, s_optimizer="adam",
                          replay_size=16384, replay_fraction=0.5, replay_policy="reservoir", ema_decay=0.999),
    # CMI (Fang et al., "Contrastive Model Inversion for Data-Free Knowledge Distillation", IJCAI 2021;
    # zju-vipa/CMI scripts/cmi/adv_cmi_cifar10_wrn402_wrn161.sh): adv 0.5 masked KL, bn 1, oh 0.5 against
    # chosen target classes (a class-conditional G asked for balanced ones), the contrastive term cr 0.8 at
    # temperature 0.1 (contrastive.py), G's lr 1e-3 (Adam, betas 0.5/0.999), its global view shifted by up to
    # 1/8 of a side (the reference's pad-4 crop at 32x32). Not the reference's: one generator kept for the whole
    # run (the reference re-initialises G for every batch and optimises it 200 steps: hours of CPU), the
    # features and bank sized for a CPU (contrastive.py); the student side is ours.
    "cmi": dict(w_adv=0.5, w_bn=1.0, w_oh=0.5, w_cr=0.8, cr_tau=0.1, w_bal=0.0, w_act=0.0, w_at=0.0, w_gan=0.0,
                gen_labels=True, g_jitter=0.125, gen_width=64, adv_loss="kl_masked", kd_loss="kl", tau=1.0,
                g_steps=1, lr_g=1e-3, s_steps=20, s_time_ratio=2.0, budget_g_steps=400, shared_batch=True,
                lr_s=2e-3, s_optimizer="adam", replay_size=16384, replay_fraction=0.5, replay_policy="reservoir",
                ema_decay=0.999),
    # NAYER (Tran et al., CVPR 2024; tmtuan1307/NAYER scripts/nayer_*.sh and datafree_kd.py defaults): 40
    # steps per batch at lr_g 4e-3 (fresh Adam), bn 10, oh 0.5 against class-balanced targets, adv 1.33
    # masked KL, shifted and flipped images, G re-initialised every 10 epochs of 2 batches (g_life 20),
    # noisy layer 512 -> 1000, G of ngf 64 (our gen_width 128) with sigmoid pixels (gen_output pixel).
    # Not the reference's: random class codes for its CLIP text embeddings (no model hub offline), no
    # 20-epoch warm-up without the student, no BN-statistics momentum (bn_mmt); the student side is ours.
    "nayer": dict(synthesizer="nayer", w_adv=1.33, w_bn=10.0, bn_first=1.0, w_oh=0.5, w_bal=0.0, w_act=0.0, w_at=0.0,
                  w_gan=0.0, adv_loss="kl_masked", kd_loss="kl", tau=1.0, g_steps=40, lr_g=4e-3, g_life=20,
                  latent_dim=1000, gen_width=128, gen_output="pixel", s_steps=50, s_time_ratio=2.0,
                  shared_batch=True, lr_s=2e-3, s_optimizer="adam", replay_size=16384, replay_fraction=0.5,
                  replay_policy="reservoir", s_augment="shift_flip", ema_decay=0.999),
}

AUTO = "auto"
DEFAULT_METHOD = AUTO  # what the CLI runs when --method is not given


@dataclass(frozen=True)
class TeacherFacts:
    """What the choice of preset looks at: known before any step runs."""

    batchnorm: bool  # BN layers whose inputs the BN prior can read: an eager module's, or a TorchScript graph's
    compiled: str  # "TorchScript" / "torch.export": a graph not rebuilt as a registered architecture, no hooks


def teacher_facts(teacher: LoadedModel) -> TeacherFacts:
    from edgekd.distill.hooks import has_batchnorm
    from edgekd.models.exported import compiled_kind
    from edgekd.models.script_taps import tap_batchnorm

    compiled = compiled_kind(teacher.model) or ""
    if compiled:
        bn = tap_batchnorm(teacher.model, teacher.spec.input_shape) is not None
    else:
        bn = has_batchnorm(teacher.model)
    return TeacherFacts(batchnorm=bn, compiled=compiled)


# First rule that matches wins. Measured in benchmarks/TUNING.md (rounds named in each reason).
AUTO_RULES: List[Tuple[Callable[[TeacherFacts], bool], str, str]] = [
    (lambda f: f.batchnorm and not f.compiled, "adversarial-bn",
     "BatchNorm teacher: the adversarial preset with DeepInversion's BN prior (first layer x10, jitter) and "
     "the generator's output statistics fitted to it"),
    # A TorchScript BN network of its own layout, 10 minutes, 5 seeds: 75.4% with the BN prior read from its graph
    # against 62.6% on logits alone (adversarial, bn off: two of five students stalled at 42-45%; TUNING.md round 30).
    (lambda f: f.batchnorm, "adversarial-bn",
     "TorchScript teacher with BatchNorm layers, their inputs read from its graph: the adversarial preset with "
     "DeepInversion's BN prior, as for an eager BatchNorm teacher"),
    (lambda f: bool(f.compiled), "adversarial",
     "compiled teacher (TorchScript or torch.export) without BatchNorm statistics to read: the adversarial "
     "preset on logits alone"),
    (lambda f: True, "adversarial", "teacher without BatchNorm: the adversarial preset (no BN prior)"),
]


def choose_method(teacher: LoadedModel) -> Tuple[str, str]:
    """--method auto: (preset, why) from what the teacher is."""
    facts = teacher_facts(teacher)
    return next((name, why) for rule, name, why in AUTO_RULES if rule(facts))


def list_methods() -> List[str]:
    return [AUTO, *PRESETS]
