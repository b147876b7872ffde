"""Was the teacher's data grey? Read from its first BatchNorm, without any image.

A teacher that learnt from grey pictures copied to every channel (MNIST or Fashion-MNIST on a ResNet,
X-rays on an ImageNet backbone) never saw colour: a generator that makes colour images feeds it inputs
it answers arbitrarily, and the student learns from those (WRN-16-2 on MNIST: 17-35% against 75% with
grey images, benchmarks/TUNING.md rounds 10 and 15). The user rarely says so, and the input
normalisation does not tell either: grey data is often normalised with ImageNet's per-channel values.

The first BatchNorm does tell. When it reads the first convolution's output directly, its running mean
over the training data is, for every output channel o,

    running_mean[o] = bias[o] + sum_c (m_c - mean_c) * A[o, c]

where m_c is the mean raw pixel value of input channel c in the training data, mean_c/std_c the
normalisation, and A[o, c] the spatial mean of the convolution's response to a raw image of ones in
channel c (zeros elsewhere, normalised by std_c, the padding included). With tens of output channels and
three unknowns the m_c follow by least squares, with standard errors from the residual. Grey data copied
to every channel has one mean in all three: m_r = m_g = m_b; colour photographs do not (ImageNet 0.485 /
0.456 / 0.406, CIFAR-10 0.491 / 0.482 / 0.447, SVHN 0.438 / 0.444 / 0.473: 0.035-0.08 apart). The padding makes the fit approximate (the data's mean image is not flat at its
border), but it does so alike in every channel of grey data, so it biases the common mean, not the
differences. Random initial filters keep the three columns of A apart; where training made them near
equal, the standard errors grow and the answer is "cannot tell", which changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from edgekd.models.checkpoint import LoadedModel

# Raw pixel values (0-1). Grey when the channel means lie within GREY_SPREAD of each other, measured to
# within half of it (grey data on 12 architectures: 0.002-0.014 apart, benchmarks/results/grey-detection.md);
# colour when they lie COLOUR_SPREAD or more apart, four standard errors clear (the colour datasets
# above: 0.035-0.08 apart). Between the two: cannot tell, nothing changes.
GREY_SPREAD = 0.02
COLOUR_SPREAD = 0.03


@dataclass(frozen=True)
class GreyEvidence:
    grey: Optional[bool]  # True: grey data copied to every channel; False: colour; None: cannot tell
    reason: str
    channel_means: Tuple[float, ...] = ()  # raw pixel means of the training data, one per input channel
    stderr: Tuple[float, ...] = ()


def _first_conv_and_bn(model: nn.Module, input_shape: Sequence[int]) -> Optional[Tuple[nn.Conv2d, nn.Module]]:
    """The first convolution and the BatchNorm that reads its output unchanged, or None: checked by one
    forward pass (a ReLU, pooling or a second branch in between breaks the linear relation)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    if not convs or not bns:
        return None
    seen: dict = {}

    def conv_out(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        seen.setdefault("conv", out)

    def bn_in(m: nn.Module, inp: tuple) -> None:
        seen.setdefault("bn", (m, inp[0]))

    hooks = [convs[0].register_forward_hook(conv_out)] + [bn.register_forward_pre_hook(bn_in) for bn in bns]
    was_training = model.training
    try:
        model.eval()  # eval: the probe must not move the running statistics it is about to read
        with torch.no_grad():
            param = next(model.parameters(), None)
            probe = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))  # not the run's stream
            model(probe.to(param.device if param is not None else "cpu"))
    except Exception:  # a teacher that needs something else to run: no answer, not an error here
        return None
    finally:  # the teacher leaves as it came, hooks and mode, whether or not its forward ran
        model.train(was_training)
        for h in hooks:
            h.remove()
    conv, (bn, bn_in) = convs[0], seen.get("bn", (None, None))
    if bn is None or "conv" not in seen or seen["conv"].shape != bn_in.shape or not torch.equal(seen["conv"], bn_in):
        return None
    return conv, bn


def channel_means(model: nn.Module, input_shape: Sequence[int], mean: Sequence[float],
                  std: Sequence[float]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], str]:
    """The training data's mean raw pixel value per input channel and its standard error, as the first
    BatchNorm gives them (module doc); (None, None, why not) where it cannot."""
    c, h, w = input_shape
    found = _first_conv_and_bn(model, input_shape)
    if found is None:
        return None, None, "no BatchNorm reads the first convolution's output directly"
    conv, bn = found
    if not bn.running_mean.any() and bool((bn.running_var == 1).all()):
        return None, None, "its first BatchNorm holds no statistics (never trained)"
    if conv.groups != 1 or conv.in_channels != c:
        return None, None, "the first convolution is grouped"
    weight = conv.weight.detach().double().cpu()
    o = weight.shape[0]
    if o < 4 * c:
        return None, None, f"the first convolution has only {o} output channels"
    sd = torch.tensor([float(v) for v in std], dtype=torch.double).expand(c)
    mu = torch.tensor([float(v) for v in mean], dtype=torch.double).expand(c)
    ones = torch.zeros(c, 1, c, h, w, dtype=torch.double)
    for i in range(c):
        ones[i, 0, i] = 1.0 / sd[i]
    a = torch.stack([F.conv2d(ones[i], weight, None, conv.stride, conv.padding, conv.dilation).mean((0, 2, 3))
                     for i in range(c)], 1)  # (o, c)
    bias = conv.bias.detach().double().cpu() if conv.bias is not None else torch.zeros(o, dtype=torch.double)
    y = bn.running_mean.detach().double().cpu() - bias + a @ mu
    sol = torch.linalg.lstsq(a, y[:, None]).solution.squeeze(1)
    resid = y - a @ sol
    try:
        cov = (resid @ resid / max(o - c, 1)) * torch.linalg.inv(a.T @ a)
    except RuntimeError:  # singular: the channels' filters are not independent
        return None, None, "the first convolution's channels cannot be told apart"
    return sol, cov.diag().clamp_min(0).sqrt(), ""


def grey_evidence(model: nn.Module, input_shape: Sequence[int], mean: Sequence[float],
                  std: Sequence[float]) -> GreyEvidence:
    """What the teacher's first BatchNorm says about the colour of its training data (module doc)."""
    if input_shape[0] < 2:
        return GreyEvidence(None, "one input channel")
    sol, se, why = channel_means(model, input_shape, mean, std)
    if sol is None or se is None:
        return GreyEvidence(None, why)
    means = tuple(round(v, 4) for v in sol.tolist())
    errs = tuple(round(v, 4) for v in se.tolist())
    spread, err = float(sol.max() - sol.min()), float(se.max())
    shown = " / ".join(f"{v:.3f}" for v in means)
    if spread < GREY_SPREAD and 2 * err < GREY_SPREAD:
        return GreyEvidence(True, f"its first BatchNorm puts the same mean in every input channel "
                                  f"({shown}, +-{max(errs):.3f}): grey data copied to each", means, errs)
    if spread > COLOUR_SPREAD and spread > 4 * err:
        return GreyEvidence(False, f"its first BatchNorm gives the input channels different means ({shown}): "
                                   "colour data", means, errs)
    return GreyEvidence(None, f"its first BatchNorm cannot tell grey from colour ({shown}, +-{max(errs):.3f})",
                        means, errs)


def grey_setting(teacher: LoadedModel) -> Tuple[bool, str]:
    """gen_grey for a teacher when the user did not say, and why: "grey: ...", "colour: ..." or
    "cannot tell: ..." (kept in the run's config, shown in its notes)."""
    spec = teacher.spec
    if spec.in_channels < 2:
        return False, ""
    ev = grey_evidence(teacher.model, spec.input_shape, spec.mean, spec.std)
    word = {True: "grey", False: "colour", None: "cannot tell"}[ev.grey]
    return bool(ev.grey), f"{word}: {ev.reason}"


def grey_to_channels(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                     ref_mean: torch.Tensor, ref_std: torch.Tensor) -> torch.Tensor:
    """One grey channel `x`, normalised by (ref_mean, ref_std), written into every input channel in that
    channel's own normalisation (mean, std of shape (1, C, 1, 1)): the same raw grey in all of them,
    as grey data copied to an RGB teacher's channels was."""
    return (x * ref_std + ref_mean - mean) / std
