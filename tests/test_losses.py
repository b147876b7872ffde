import math

import pytest
import torch

from edgekd.distill import losses as L


def test_one_hot_loss_hand_checked():
    t = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # CE to own argmax: -log softmax of the max logit
    want = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (math.e + 1))) / 2
    assert abs(L.one_hot_loss(t).item() - want) < 1e-6


def test_activation_loss():
    f = torch.tensor([[1.0, -3.0], [2.0, 0.0]])
    assert L.activation_loss(f).item() == -1.5


def test_class_diversity_counts_only_pairs_of_one_class():
    f = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 2.0]], requires_grad=True)
    logits = torch.tensor([[5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [0.0, 5.0]])
    # class 0 pair: cos((1,0), (1,1)) = 1/sqrt2; class 1 pair: identical directions, cos = 1
    assert abs(L.class_diversity_loss(f, logits).item() - (1 / math.sqrt(2) + 1) / 2) < 1e-6
    L.class_diversity_loss(f, logits).backward()
    assert f.grad.abs().sum() > 0  # G gets a push apart
    distinct = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    assert L.class_diversity_loss(f[:2], distinct).item() == 0.0  # no two images share a class


def test_balance_loss_is_minus_log_k_when_balanced_and_zero_when_collapsed():
    balanced = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    assert abs(L.balance_loss(balanced).item() + math.log(2)) < 1e-3
    collapsed = torch.tensor([[10.0, -10.0], [10.0, -10.0]])
    assert abs(L.balance_loss(collapsed).item()) < 1e-6


def test_bn_statistics_loss():
    stats = [(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]), torch.zeros(2), torch.ones(2))]
    # ||(1,1)||_2 + ||(1,1)||_2
    assert abs(L.bn_statistics_loss(stats).item() - 2 * math.sqrt(2)) < 1e-6


def test_bn_gaussian_kl_loss():
    # channel 0: N(1, 2) vs N(0, 1): 0.5 * (2 + 1 - 1 - ln 2); channel 1 matches: 0. Mean over channels.
    stats = [(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1.0]), torch.zeros(2), torch.ones(2))]
    want = 0.5 * (0.5 * (2 + 1 - 1 - math.log(2)))
    assert abs(L.bn_gaussian_kl_loss(stats).item() - want) < 1e-6
    # scale-free: the same mismatch in a layer with 100x the running variance scores the same
    scaled = [(torch.tensor([10.0, 0.0]), torch.tensor([200.0, 100.0]), torch.zeros(2), torch.full((2,), 100.0))]
    assert abs(L.bn_gaussian_kl_loss(scaled).item() - want) < 1e-5
    # two layers add up; a zero variance is clamped instead of giving inf
    assert abs(L.bn_gaussian_kl_loss(stats * 2).item() - 2 * want) < 1e-6
    dead = [(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.ones(1))]
    assert math.isfinite(L.bn_gaussian_kl_loss(dead).item())


def test_kl_and_tau_squared():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # p_t = (0.75, 0.25)
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert abs(L.kl_loss(s, t).item() - want) < 1e-6
    assert L.kl_loss(t, t).item() < 1e-7
    t2 = torch.tensor([[2 * math.log(3.0), 0.0]])  # at tau=2 the same distribution
    assert abs(L.kl_loss(s, t2, tau=2.0).item() - 4 * want) < 1e-5


def test_l1_logits():
    assert L.l1_logits_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])).item() == 1.5


def test_mse_logits_sees_every_logit():
    s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    assert L.mse_logits_loss(s, t).item() == 2.5  # (1 + 4) / 2
    assert L.DIVERGENCES["mse"] is L.mse_logits_loss
    # two teachers sure of class 0 alike at tau 1, apart in the other logits: KL barely tells them, mse does
    sure, sure_other = torch.tensor([[12.0, 0.0, 0.0]]), torch.tensor([[12.0, 6.0, -6.0]])
    student = torch.tensor([[12.0, 0.0, 0.0]])
    assert L.kl_loss(student, sure_other).item() < 0.02 < L.mse_logits_loss(student, sure_other).item()
    assert L.mse_logits_loss(student, sure).item() == 0.0


def test_masked_kl_only_counts_agreeing_samples():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[2.0, 0.0], [2.0, 0.0]])  # sample 0 agrees, sample 1 does not
    per = L.kl_per_sample(s, t)
    assert abs(L.masked_kl_loss(s, t).item() - per[0].item() / 2) < 1e-6


def test_adversarial_is_negative_divergence():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    assert torch.allclose(L.adversarial_loss(s, t, "l1"), -L.l1_logits_loss(s, t))
    assert torch.allclose(L.adversarial_loss(s, t, "kl"), -L.kl_loss(s, t))


def test_attention_transfer_pairs_by_size():
    a = torch.ones(2, 3, 4, 4)
    b = torch.zeros(2, 3, 4, 4)
    b[:, :, 0, 0] = 1.0
    loss = L.attention_transfer_loss([a, torch.ones(2, 1, 3, 3)], [b])
    # attention maps: uniform 1/4 per cell vs one-hot; mean squared diff over 16 cells
    want = ((0.25 - 1.0) ** 2 + 15 * 0.25 ** 2) / 16
    assert abs(loss.item() - want) < 1e-6


def test_discriminator_losses():
    d_real, d_fake = torch.tensor([10.0]), torch.tensor([-10.0])
    assert L.discriminator_loss(d_real, d_fake).item() < 1e-3
    assert L.fool_discriminator_loss(d_fake).item() > 9


def test_total_variation_hand_checked():
    from edgekd.distill.losses import total_variation_loss

    flat = torch.full((2, 3, 8, 8), 0.7)
    assert float(total_variation_loss(flat)) == 0.0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., 1::2] = 1.0  # vertical stripes: every horizontal and diagonal neighbour differs by 1
    assert float(total_variation_loss(stripes)) == pytest.approx(3.0)


def test_dafl_features_are_the_classifiers_input():
    """DAFL's f_T on its LeNet-5 is conv3's output (120 values), the input of fc1, not of the last layer."""
    from edgekd.distill.hooks import ClassifierInputHook
    from edgekd.models.registry import create_model

    model = create_model("lenet5", num_classes=10, in_channels=1).eval()
    hook = ClassifierInputHook(model)
    x = torch.randn(3, 1, 32, 32)
    model(x)
    assert hook.features is not None and hook.features.shape == (3, 120)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert hook.features.shape[1] == linears[0].in_features != linears[-1].in_features
