"""BatchNorm inputs read from a TorchScript teacher's graph (edgekd/models/script_taps.py): a BN network of a layout
edgekd has no architecture for still distils with the BN prior, as its eager self would."""

import json

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from edgekd.cli.app import app
from edgekd.distill import losses as L
from edgekd.distill.config import resolve_config
from edgekd.distill.hooks import BNStatsHook
from edgekd.distill.loop import Distiller, distill
from edgekd.distill.presets import choose_method, teacher_facts
from edgekd.models.checkpoint import load_model
from edgekd.models.script_taps import TappedScript, tap_batchnorm

FAST = dict(batch_size=16, eval_every_s=1e9, calib_images=32, replay_size=64, eval_images=200)


class _OwnLayout(nn.Module):
    """conv-BN-ReLU twice, pooled, a BatchNorm1d and a linear head: no registered architecture has these weights."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, stride=2), nn.BatchNorm2d(12), nn.ReLU())
        self.neck = nn.BatchNorm1d(12)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.block(self.stem(x)).mean((2, 3))))


class _BnInABranch(nn.Module):
    """Its only BatchNorm sits inside control flow: not at the graph's top level, so not read."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.shape[0] > 0:
            y = self.bn(y)
        return self.head(y.mean((2, 3)))


def _own_layout() -> nn.Module:
    torch.manual_seed(0)
    net = _OwnLayout()
    for m in net.modules():  # statistics a trained network would have, not the 0 / 1 of a new one
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net.eval()


@pytest.mark.parametrize("compile", ["script", "trace"])
def test_the_graph_hands_over_what_hooks_on_the_eager_network_see(compile):
    eager = _own_layout()
    compiled = (torch.jit.script(_own_layout()) if compile == "script"
                else torch.jit.trace(_own_layout(), torch.randn(2, 3, 16, 16)))
    tapped = tap_batchnorm(compiled, (3, 16, 16))
    # the two BatchNorm2d: the head's BatchNorm1d has no image statistics, and the eager hooks leave it out too
    assert isinstance(tapped, TappedScript) and tapped.layers == 2
    hooks = [BNStatsHook(eager), BNStatsHook(tapped)]
    assert len(hooks[0]) == len(hooks[1]) == 2
    grads = []
    for hook, model in zip(hooks, (eager, tapped)):
        x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_()
        hook.enabled = True
        out = model(x)
        stats = hook.pop()
        L.bn_statistics_loss(stats, first=10.0).backward()
        grads.append((out.detach(), stats, x.grad))
    (out_e, stats_e, grad_e), (out_t, stats_t, grad_t) = grads
    assert torch.allclose(out_e, out_t, atol=1e-5) and len(stats_e) == len(stats_t) == 2
    for a, b in zip(stats_e, stats_t):
        assert all(torch.allclose(u.detach(), v.detach(), atol=1e-5) for u, v in zip(a, b))
    assert grad_t.abs().sum() > 0 and torch.allclose(grad_e, grad_t, atol=1e-5)  # the prior trains the images alike


def test_bn_the_graph_hides_leaves_the_teacher_as_it_was():
    assert tap_batchnorm(torch.jit.script(_BnInABranch().eval()), (3, 16, 16)) is None
    assert tap_batchnorm(_own_layout(), (3, 16, 16)) is None  # an eager module has hooks: nothing to tap
    # torch.jit.freeze folds each BatchNorm into its convolution: no statistics left to read
    assert tap_batchnorm(torch.jit.freeze(torch.jit.script(_own_layout())), (3, 16, 16)) is None


def test_a_torchscript_bn_teacher_of_its_own_layout_distils_with_its_bn_prior_and_resumes_exactly(tmp_path):
    torch.jit.script(_own_layout()).save(str(tmp_path / "own.ts"))

    def teacher():
        return load_model(tmp_path / "own.ts", spec_overrides={"input_size": (16, 16), "mean": (0.5,), "std": (0.5,)})

    t = teacher()
    assert "kept as TorchScript" in t.notes[0]  # not rebuilt: the graph is what runs
    shown = CliRunner().invoke(app, ["inspect", str(tmp_path / "own.ts"), "--input-size", "16", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["method_auto"]["method"] == "adversarial-bn"
    facts = teacher_facts(t)
    assert facts.batchnorm and facts.compiled == "TorchScript"
    method, why = choose_method(t)
    assert method == "adversarial-bn" and "read from its graph" in why
    cfg = dict(FAST, iterations=4, seed=1, student="resnet18-cifar", s_steps=2, s_time_ratio=0, lr_schedule="constant")
    full = Distiller(teacher(), resolve_config("auto", overrides=cfg, teacher=t), tmp_path / "full")
    full.run()
    assert full.cfg.w_bn == 1.0 and len(full.bn_hook) == 2
    assert any("BatchNorm layers are read from its graph" in n for n in full.notes)
    metrics = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    bn = [r["bn"] for r in metrics if "bn" in r]  # the logged iterations
    assert bn and all(v > 0 for v in bn)
    distill(teacher(), resolve_config("auto", overrides={**cfg, "iterations": 2}, teacher=t), tmp_path / "part")
    distill(teacher(), resolve_config("auto", overrides=cfg, teacher=t), tmp_path / "part", resume=True)
    a = load_model(tmp_path / "full" / "student.pt").model.state_dict()
    b = load_model(tmp_path / "part" / "student.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the run directory keeps the user's TorchScript file, not the tapped copy
    assert isinstance(load_model(tmp_path / "full" / "teacher.pt").model, torch.jit.ScriptModule)


@pytest.mark.parametrize("w_bn", [0.0, 1.0])
def test_the_bn_weight_decides_whether_the_graph_is_tapped(tmp_path, w_bn):
    torch.jit.script(_own_layout()).save(str(tmp_path / "own.ts"))
    t = load_model(tmp_path / "own.ts", spec_overrides={"input_size": (16, 16)})
    cfg = resolve_config("adversarial", overrides={**FAST, "iterations": 1, "student": "resnet18-cifar", "s_steps": 1,
                                                   "w_bn": w_bn})
    d = Distiller(t, cfg, tmp_path / "run")
    assert isinstance(d.m.teacher, TappedScript) == bool(w_bn) and bool(d.bn_hook) == bool(w_bn)
