"""CMI's contrastive term (edgekd/distill/contrastive.py): its parts, and a run that uses it resumes exactly."""

import json
import math

import torch
import torch.nn as nn

from edgekd.distill.config import resolve_config
from edgekd.distill.contrastive import ContrastHead, ConvMeansHook, FeatureBank, contrastive_loss, local_view
from edgekd.distill.loop import Distiller, distill
from edgekd.models.checkpoint import load_model
from tests.test_checkpoint import _DaflLeNet5
from tests.test_distill import FAST, _bn_teacher


def test_conv_means_take_the_last_convolution_at_each_size():
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2),
                        nn.Conv2d(4, 5, 3, padding=1), nn.Flatten(), nn.Linear(5 * 4 * 4, 2))
    hook = ConvMeansHook(net)
    x = torch.randn(6, 1, 8, 8)
    net(x)  # disabled: nothing kept
    hook.enabled = True
    net(x)
    f = hook.pop()
    assert f.shape == (6, 4 + 5)  # the 8x8 stage's second conv, then the 4x4 stage's conv
    assert torch.allclose(f[:, :4], net[1](net[0](x)).mean(dim=(2, 3)), atol=1e-6)


def test_local_view_crops_differ_per_image_and_pass_gradients():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16, requires_grad=True)
    v = local_view(x)
    assert v.shape == x.shape
    assert not torch.allclose(v, x)
    v.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    same = torch.ones(2, 1, 16, 16).repeat(1, 1, 1, 1)
    assert torch.allclose(local_view(same), same, atol=1e-5)  # a flat image stays flat whatever the crop


def test_feature_bank_keeps_the_newest_rows_and_round_trips():
    bank = FeatureBank(5, 2, torch.device("cpu"))
    for i in range(3):
        rows = torch.full((2, 2), float(i))
        bank.add(rows, rows + 100)
    assert len(bank) == 5 and bank.ptr == 1
    local, global_ = bank.data.chunk(2, dim=1)
    assert sorted(local[:, 0].tolist()) == [0, 1, 1, 2, 2]  # 6 rows into 5: the oldest one overwritten
    assert torch.equal(global_, local + 100)
    copy = FeatureBank(5, 2, torch.device("cpu"))
    copy.load_state_dict(bank.state_dict())
    assert torch.equal(copy.data, bank.data) and (copy.ptr, copy.count) == (bank.ptr, bank.count)
    sampled_local, _ = bank.sample(3)
    assert sampled_local.shape == (3, 2)
    bank.add(torch.full((1, 2), float("nan")), torch.zeros(1, 2))  # a NaN step's features stay out
    assert torch.isfinite(bank.data).all() and bank.ptr == 1


def test_contrastive_loss_is_low_when_each_local_view_matches_its_own_global_one():
    torch.manual_seed(0)
    head = ContrastHead(16).requires_grad_(False)
    f = torch.randn(32, 16)
    matched = contrastive_loss(head, f, f, None, 0.1)
    shuffled = contrastive_loss(head, f, f[torch.randperm(32)], None, 0.1)
    assert matched < shuffled
    bank = (torch.randn(64, 16), torch.randn(64, 16))
    with_bank = contrastive_loss(head, f, f, bank, 0.1)
    assert math.isfinite(with_bank.item()) and with_bank > matched  # the bank's own rows add a second mean


def test_cr_runs_on_a_bn_teacher_and_resumes_exactly(tmp_path):
    cfg = dict(FAST, iterations=4, seed=2, student="resnet18-cifar", s_steps=2, s_time_ratio=0,
               lr_schedule="constant", w_cr=0.8, cr_bank=24, cr_neg=8)  # the bank wraps within the run
    distill(_bn_teacher(tmp_path), resolve_config("adversarial-bn", overrides=cfg), tmp_path / "full")
    distill(_bn_teacher(tmp_path), resolve_config("adversarial-bn", overrides={**cfg, "iterations": 2}), tmp_path / "part")
    distill(_bn_teacher(tmp_path), resolve_config("adversarial-bn", overrides=cfg), tmp_path / "part", resume=True)
    a = load_model(tmp_path / "full" / "student.pt").model.state_dict()
    b = load_model(tmp_path / "part" / "student.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    cr = [r["cr"] for r in rows if "cr" in r]
    # InfoNCE over n candidates starts near log(n): 16 images, then 16 + 8 bank rows.
    assert cr and all(0 < v < 2 * math.log(24) + 1 for v in cr), cr
    state = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    assert state["cr_bank"]["count"] == 24 and "cr_head" in state["models"]


def test_cr_on_the_bn_free_demo_teacher_and_off_for_torchscript(tmp_path, demo_teacher_path):
    cfg = resolve_config("adversarial", overrides=dict(FAST, iterations=2, w_cr=0.8, cr_neg=8))
    distill(load_model(demo_teacher_path), cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["cr"] for r in rows if "cr" in r]
    # A TorchScript teacher kept as a graph has no hooks to read features from: the term is switched off, said.
    torch.jit.script(_DaflLeNet5(torch.tanh).eval()).save(str(tmp_path / "tanh.pt"))
    kept = load_model(tmp_path / "tanh.pt", spec_overrides={"input_size": (32, 32)})
    d = Distiller(kept, resolve_config("adversarial", overrides={"iterations": 1, "batch_size": 4, "w_cr": 0.8}),
                  tmp_path / "ts")
    assert d.cfg.w_cr == 0 and d.m.contrast is None
    assert any("forward hooks unavailable, so bn/cr weights are 0" in n for n in d.notes), d.notes
