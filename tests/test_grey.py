"""Grey or colour training data, read from a teacher's first BatchNorm (edgekd/distill/grey.py).

The detector reads only the first convolution and the first BatchNorm's running mean, so a network at its
initial weights whose BN statistics were gathered over real images is a fair subject: Fashion-MNIST
test images copied to three channels (grey), or the same images tinted differently per channel (colour).
"""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekd.distill.config import resolve_config
from edgekd.distill.grey import grey_evidence, grey_setting
from edgekd.distill.loop import distill
from edgekd.models.checkpoint import LoadedModel
from edgekd.models.registry import create_model
from edgekd.spec import ModelSpec

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FAST = dict(batch_size=16, eval_every_s=1e9, calib_images=32, replay_size=64, eval_images=200)


def _raw(fmnist, tint=(1.0, 1.0, 1.0), n=128, size=32):
    x = torch.from_numpy(fmnist.images[:n].astype(np.float32) / 255).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.repeat(1, 3, 1, 1) * torch.tensor(tint).view(1, 3, 1, 1)


def _with_statistics(model: nn.Module, raw: torch.Tensor, mean, std) -> nn.Module:
    """BN statistics gathered over these images, as training would gather them (no weight moves)."""
    x = (raw - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches
    model.train()
    with torch.no_grad():
        for b in x.split(64):
            model(b)
    return model.eval()


@pytest.mark.parametrize("arch", ["resnet18", "wrn16-2", "mobilenet_v2"])
def test_grey_and_colour_data_told_apart(fmnist, arch):
    mean, std = IMAGENET  # grey data under ImageNet's per-channel normalisation: the mean/std do not tell
    torch.manual_seed(0)
    grey = _with_statistics(create_model(arch, 10, 3), _raw(fmnist), mean, std)
    ev = grey_evidence(grey, (3, 32, 32), mean, std)
    assert ev.grey is True, ev.reason
    true_mean = float(_raw(fmnist).mean())
    assert all(abs(m - true_mean) < 0.05 for m in ev.channel_means), (ev.channel_means, true_mean)
    torch.manual_seed(0)
    colour = _with_statistics(create_model(arch, 10, 3), _raw(fmnist, (1.0, 0.8, 0.6)), mean, std)
    ev = grey_evidence(colour, (3, 32, 32), mean, std)
    assert ev.grey is False, ev.reason
    assert ev.channel_means[0] > ev.channel_means[1] > ev.channel_means[2]


def test_cannot_tell_without_a_bn_reading_the_first_conv(fmnist):
    mean, std = (0.5,), (0.5,)
    torch.manual_seed(0)
    # a ReLU between the first convolution and its BatchNorm: the mean is no longer linear in the input
    relu_first = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32), nn.Flatten(),
                               nn.LazyLinear(10))
    relu_first = _with_statistics(relu_first, _raw(fmnist), mean, std)
    assert grey_evidence(relu_first, (3, 32, 32), mean, std).grey is None
    no_bn = create_model("lenet5", 10, 3).eval()
    assert grey_evidence(no_bn, (3, 32, 32), mean, std).grey is None
    untrained = create_model("wrn16-2", 10, 3).eval()  # running mean 0, var 1: nothing to read
    ev = grey_evidence(untrained, (3, 32, 32), mean, std)
    assert ev.grey is None and "never trained" in ev.reason
    assert grey_evidence(create_model("lenet5", 10, 1), (1, 32, 32), mean, std).grey is None


def _loaded(model, tmp_path, mean, std, size=32):
    return LoadedModel(model, ModelSpec("wrn16-2", 10, 3, (size, size), mean, std), "edgekd", tmp_path / "t.pt", "0" * 64)


def test_config_takes_grey_from_the_teacher_unless_the_user_says(tmp_path, fmnist):
    mean, std = IMAGENET
    torch.manual_seed(0)
    teacher = _loaded(_with_statistics(create_model("wrn16-2", 10, 3), _raw(fmnist), mean, std), tmp_path, mean, std)
    assert grey_setting(teacher)[0]
    cfg = resolve_config("auto", overrides={"iterations": 1}, teacher=teacher)
    assert cfg.gen_grey and cfg.grey_choice.startswith("grey:")
    for method in ("adversarial", "fast"):  # a named method too: it is a fact of the teacher, not a preset
        assert resolve_config(method, overrides={"iterations": 1}, teacher=teacher).gen_grey
    said = resolve_config("auto", overrides={"iterations": 1, "gen_grey": False}, teacher=teacher)
    assert not said.gen_grey and said.grey_choice == ""
    # a resumed run keeps its own setting (config.json), whatever the teacher says now
    kept = resolve_config("auto", file_values={"method": "adversarial-bn", "gen_grey": False, "iterations": 1},
                          teacher=teacher)
    assert not kept.gen_grey
    torch.manual_seed(0)
    colour = _loaded(_with_statistics(create_model("wrn16-2", 10, 3), _raw(fmnist, (1.0, 0.8, 0.6)), mean, std),
                     tmp_path, mean, std)
    cfg = resolve_config("auto", overrides={"iterations": 1}, teacher=colour)
    assert not cfg.gen_grey and cfg.grey_choice.startswith("colour:")


@pytest.mark.parametrize("method", ["auto", "deepinversion"])  # a generator, and pixels optimised alone
def test_a_run_on_a_grey_teacher_makes_grey_images_and_says_why(tmp_path, fmnist, method):
    mean, std = (0.5,), (0.5,)
    torch.manual_seed(0)
    model = _with_statistics(create_model("wrn16-2", 10, 3), _raw(fmnist, n=128, size=16), mean, std)
    teacher = _loaded(model, tmp_path, mean, std, size=16)
    cfg = resolve_config(method, overrides={**FAST, "iterations": 1, "student": "resnet18-cifar", "s_steps": 1,
                                            "g_steps": 1 if method == "auto" else 3}, teacher=teacher)
    distill(teacher, cfg, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["gen_grey"] and config["grey_choice"].startswith("grey:")
    assert any(n.startswith("the generator makes grey images (--no-grey") for n in config["notes"])
    assert not any("if it learnt from grey images" in n for n in config["notes"])  # no stale suggestion
    calib = np.load(tmp_path / "run" / "calib.npz")["x"]  # generator images, normalised alike per channel
    assert np.allclose(calib[:, 0], calib[:, 1], atol=1e-5) and np.allclose(calib[:, 1], calib[:, 2], atol=1e-5)


def test_cli_inspect_says_grey_and_distill_no_grey_overrides(tmp_path, fmnist):
    from typer.testing import CliRunner

    from edgekd.cli.app import app

    torch.manual_seed(0)
    model = _with_statistics(create_model("wrn16-2", 10, 3), _raw(fmnist, n=128, size=16), (0.5,), (0.5,))
    torch.save(model.state_dict(), tmp_path / "wrn.pt")
    contract = ["--teacher-arch", "wrn16-2", "--input-size", "16", "--mean", "0.5", "--std", "0.5"]
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(tmp_path / "wrn.pt"), *contract, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["data_colour"].startswith("grey:")
    result = runner.invoke(app, ["distill", str(tmp_path / "wrn.pt"), *contract, "--no-grey", "--iterations", "1",
                                 "--batch-size", "16", "--student", "resnet18-cifar", "--set", "s_steps=1",
                                 "--set", "calib_images=32", "--set", "eval_images=100", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["gen_grey"] is False and config["grey_choice"] == ""


@pytest.mark.parametrize("grey", [True, False])
def test_generator_starts_at_the_data_mean(tmp_path, fmnist, grey):
    from edgekd.distill.loop import Distiller

    mean, std = IMAGENET
    torch.manual_seed(0)
    raw = _raw(fmnist, n=128, size=16)
    teacher = _loaded(_with_statistics(create_model("wrn16-2", 10, 3), raw, mean, std), tmp_path, mean, std, size=16)
    cfg = resolve_config("adversarial-bn", overrides={**FAST, "iterations": 1, "student": "resnet18-cifar",
                                                      "gen_init_mean": True, "gen_grey": grey}, teacher=teacher)
    d = Distiller(teacher, cfg, tmp_path / "run")
    g = d.m.generator.train()
    with torch.no_grad():
        x = g(torch.randn(64, cfg.latent_dim)).float()
    made = (x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).mean((0, 2, 3))
    assert torch.allclose(made, torch.full((3,), float(raw.mean())), atol=0.03), (made, float(raw.mean()))
    assert any(n.startswith("G's output starts at the data's mean") for n in d.notes)
