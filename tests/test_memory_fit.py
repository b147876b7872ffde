import pytest
import torch

from edgekd.distill import memory_fit
from edgekd.distill.config import resolve_config
from edgekd.distill.memory_fit import fit_batch, per_image_bytes, saved_bytes
from edgekd.errors import UsageError
from edgekd.models.checkpoint import LoadedModel
from edgekd.models.registry import create_model
from edgekd.spec import ModelSpec

MIB = 2 ** 20


def test_fit_batch_shrinks_a_default_and_refuses_an_explicit_batch():
    assert fit_batch(MIB, 256, 1024 * MIB, "of RAM available", (3, 32, 32), explicit=False) == (256, "")
    batch, note = fit_batch(10 * MIB, 256, 1024 * MIB, "of RAM available", (3, 224, 224), explicit=False)
    assert batch == 56 and batch * 10 * MIB <= 0.6 * 1024 * MIB  # 61 fit: a multiple of 8 below
    assert note.startswith("batch 56: the default batch 256 needs ~2.5 GiB") and "3x224x224" in note
    with pytest.raises(UsageError, match="--batch-size 256 is too large: batch 256 needs .*; use --batch-size 56 or less"):
        fit_batch(10 * MIB, 256, 1024 * MIB, "of RAM available", (3, 224, 224), explicit=True)
    with pytest.raises(UsageError, match="not even batch 2 fits"):
        fit_batch(1024 * MIB, 256, 1024 * MIB, "of RAM available", (3, 224, 224), explicit=False)


def test_bytes_per_image_grow_with_the_image_and_count_torchscript_alike():
    torch.manual_seed(0)
    model = create_model("resnet18-cifar", 10, 3).eval()
    small, large = per_image_bytes(model, (3, 32, 32), False), per_image_bytes(model, (3, 64, 64), False)
    assert small > 3 * 32 * 32 * 4 and large / small == pytest.approx(4, rel=0.05)  # activations scale with area
    assert per_image_bytes(torch.jit.script(model), (3, 32, 32), False) == pytest.approx(small, rel=0.25)
    assert not model.training  # the teacher is left in eval mode
    # Weights are saved once per batch, not per image: they are in saved_bytes but not in the per-image count.
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert saved_bytes(model, torch.randn(2, 3, 32, 32), False) > weights > small


def _teacher(tmp_path) -> LoadedModel:
    model = create_model("resnet18-cifar", 10, 3).eval()
    return LoadedModel(model, ModelSpec("resnet18-cifar", 10, 3, (32, 32)), "state_dict", tmp_path / "t.pt", "0" * 64)


def test_config_takes_the_batch_that_fits(tmp_path, monkeypatch):
    teacher = _teacher(tmp_path)
    assert resolve_config("auto", overrides={"student": "lenet5-half", "iterations": 1}, teacher=teacher).batch_size == 256
    monkeypatch.setattr(memory_fit, "available_bytes", lambda device: (256 * MIB, "of RAM available"))
    cfg = resolve_config("auto", overrides={"student": "resnet18-cifar", "iterations": 1}, teacher=teacher)
    assert 8 <= cfg.batch_size < 256 and cfg.batch_size % 8 == 0
    assert cfg.batch_choice.startswith(f"batch {cfg.batch_size}: the default batch 256 needs")
    with pytest.raises(UsageError, match="use --batch-size"):
        resolve_config("auto", overrides={"student": "resnet18-cifar", "batch_size": 256, "iterations": 1}, teacher=teacher)
    # A resumed run keeps the batch it was made with, whatever the memory now.
    resumed = resolve_config("auto", file_values={"batch_size": 256, "student": "resnet18-cifar", "iterations": 1}, teacher=teacher)
    assert resumed.batch_size == 256 and not resumed.batch_choice
