import io

import numpy as np
import pytest
import torch

from edgekd.errors import InputFileError, ModelError
from edgekd.models.checkpoint import load_model, save_checkpoint
from edgekd.models.registry import create_model
from edgekd.models.statedict import infer_arch
from edgekd.spec import ModelSpec


def _same_outputs(a, b, shape):
    x = torch.randn(2, *shape)
    a.eval()
    b.eval()
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5)


def test_edgekd_checkpoint_round_trip(tmp_path):
    model = create_model("lenet5", 10, 1).eval()
    spec = ModelSpec("lenet5", 10, 1, (32, 32), (0.5,), (0.5,), tuple("abcdefghij"))
    save_checkpoint(tmp_path / "m.pt", model, spec, {"note": "x"})
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.format == "edgekd"
    assert loaded.spec == spec
    assert loaded.provenance == {"note": "x"}
    assert _same_outputs(model, loaded.model, (1, 32, 32))


def test_save_refuses_nan_weights(tmp_path):
    model = create_model("lenet5", 10, 1)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match="non-finite"):
        save_checkpoint(tmp_path / "m.pt", model, ModelSpec("lenet5", 10, 1, (32, 32), (0.5,), (0.5,)))
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("arch,classes,channels", [("resnet34", 10, 3), ("mobilenet_v2", 5, 3),
                                                   ("lenet5", 10, 1), ("resnet18-cifar", 100, 3)])
def test_state_dict_architecture_inferred(tmp_path, arch, classes, channels):
    model = create_model(arch, classes, channels).eval()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded = load_model(tmp_path / "sd.pt")
    assert loaded.format == "state_dict"
    assert (loaded.spec.arch, loaded.spec.num_classes, loaded.spec.in_channels) == (arch, classes, channels)
    size = loaded.spec.input_size
    assert _same_outputs(model, loaded.model, (channels, *size) if arch not in ("resnet34", "mobilenet_v2") else (3, 64, 64))


def test_wrapped_and_dataparallel_state_dicts(tmp_path):
    model = create_model("lenet5", 10, 1)
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "w.pt")
    assert load_model(tmp_path / "w.pt").spec.arch == "lenet5"


def test_state_dict_with_explicit_arch_and_overrides(tmp_path):
    torch.save(create_model("resnet18", 10, 3).state_dict(), tmp_path / "r.pt")
    loaded = load_model(tmp_path / "r.pt", arch="resnet18",
                        spec_overrides={"input_size": (96, 96), "mean": (0.5,), "std": (0.25,)})
    assert loaded.spec.input_size == (96, 96)
    assert loaded.spec.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ModelError, match="does not fit resnet34"):
        load_model(tmp_path / "r.pt", arch="resnet34")


def test_mismatched_classes_is_an_error(tmp_path):
    torch.save(create_model("lenet5", 10, 1).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ModelError, match="--num-classes 5 does not match"):
        load_model(tmp_path / "sd.pt", spec_overrides={"num_classes": 5})


def test_state_dict_fitting_nothing(tmp_path):
    sd = {"conv.weight": torch.zeros(4, 3, 3, 3), "head.weight": torch.zeros(10, 4)}
    torch.save(sd, tmp_path / "odd.pt")
    with pytest.raises(ModelError, match="fits no registered architecture"):
        load_model(tmp_path / "odd.pt")


def test_torchscript_round_trip(tmp_path):
    model = create_model("lenet5", 10, 1).eval()
    torch.jit.script(model).save(str(tmp_path / "ts.pt"))
    loaded = load_model(tmp_path / "ts.pt", spec_overrides={"input_size": (32, 32)})
    assert loaded.format == "torchscript"
    assert (loaded.spec.num_classes, loaded.spec.in_channels) == (10, 1)
    assert _same_outputs(model, loaded.model, (1, 32, 32))


def test_pickled_module_needs_trust(tmp_path):
    model = create_model("lenet5", 10, 1).eval()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(InputFileError, match="--trust-pickle"):
        load_model(tmp_path / "whole.pt")
    loaded = load_model(tmp_path / "whole.pt", trust_pickle=True, spec_overrides={"input_size": (32, 32)})
    assert loaded.format == "pickle"
    assert _same_outputs(model, loaded.model, (1, 32, 32))


def test_bad_files(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(InputFileError, match="empty"):
        load_model(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("hello, not a checkpoint\n")
    with pytest.raises(InputFileError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "text.pt")
    torch.save(create_model("lenet5", 10, 1).state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="truncated|corrupt|not a PyTorch"):
        load_model(tmp_path / "cut.pt")


def test_infer_arch_prefers_exact_shapes():
    sd = create_model("resnet18", 10, 3).state_dict()
    assert infer_arch(sd)[0] == "resnet18"


class _DaflLeNet5(torch.nn.Module):
    """DAFL's lenet.py layout: other parameter names, an extra forward argument."""

    def __init__(self, act=torch.relu):
        super().__init__()
        self.act = act
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 6, 5), torch.nn.Conv2d(6, 16, 5)
        self.conv3 = torch.nn.Conv2d(16, 120, 5)
        self.fc1, self.fc2 = torch.nn.Linear(120, 84), torch.nn.Linear(84, 10)

    def forward(self, img: torch.Tensor, out_feature: bool = False) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(self.act(self.conv1(img)), 2)
        x = torch.nn.functional.max_pool2d(self.act(self.conv2(x)), 2)
        feature = self.act(self.conv3(x)).view(-1, 120)
        return self.fc2(self.act(self.fc1(feature)))


def test_torchscript_bn_teacher_is_rebuilt_eager_with_hooks(tmp_path):
    from edgekd.distill.config import resolve_config
    from edgekd.distill.loop import Distiller

    torch.manual_seed(0)
    model = create_model("wrn16-2", 10, 3).eval()
    torch.jit.script(model).save(str(tmp_path / "wrn.pt"))
    loaded = load_model(tmp_path / "wrn.pt")
    assert loaded.format == "torchscript" and not isinstance(loaded.model, torch.jit.ScriptModule)
    assert loaded.spec.arch == "wrn16-2" and loaded.spec.input_size == (32, 32)
    assert "rebuilt as eager wrn16-2" in loaded.notes[0]
    assert _same_outputs(model, loaded.model, (3, 32, 32))
    d = Distiller(loaded, resolve_config("dfq", overrides={"iterations": 1, "batch_size": 4}), tmp_path / "run")
    assert d.cfg.w_bn > 0 and d.bn_hook is not None  # the BN prior is on: hooks work
    assert not any("hooks unavailable" in n for n in d.notes)


def test_torchscript_in_another_layout_is_matched_by_position_and_checked(tmp_path):
    torch.manual_seed(0)
    dafl = _DaflLeNet5().eval()
    torch.jit.script(dafl).save(str(tmp_path / "dafl.pt"))
    loaded = load_model(tmp_path / "dafl.pt")
    assert loaded.spec.arch == "lenet5" and not isinstance(loaded.model, torch.jit.ScriptModule)
    assert _same_outputs(dafl, loaded.model, (1, 32, 32))
    # Same weights, other function (tanh): the output check refuses the rebuild, TorchScript is kept.
    torch.jit.script(_DaflLeNet5(torch.tanh).eval()).save(str(tmp_path / "tanh.pt"))
    kept = load_model(tmp_path / "tanh.pt", spec_overrides={"input_size": (32, 32)})
    assert isinstance(kept.model, torch.jit.ScriptModule) and "outputs differ" in kept.notes[0]


def _script(name: str):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_photo_patches_keep_test_regions_apart():
    """scripts/photo_patches.py: training patches come only from the left 70% of a photo, test patches only
    from the right 30%, at the asked size (a red | blue photo split there gives red | blue patches)."""
    mod = _script("photo_patches")
    photo = np.zeros((120, 200, 3), np.uint8)
    cut = int(200 * mod.TRAIN_SHARE)
    photo[:, :cut, 0] = 255
    photo[:, cut:, 2] = 255
    rng = np.random.default_rng(0)
    train, test = mod.patches_of(photo, "train", 50, 16, rng), mod.patches_of(photo, "test", 50, 16, rng)
    assert train.shape == test.shape == (50, 16, 16, 3) and train.dtype == np.uint8
    assert (train[..., 0] == 255).all() and (train[..., 2] == 0).all()
    assert (test[..., 2] == 255).all() and (test[..., 0] == 0).all()


def test_train_teacher_writes_dafl_layout_torchscript(tmp_path):
    """scripts/train_teacher.py --format torchscript-dafl: the same weights in DAFL's layout, with its
    extra forward argument; edgekd loads it back as an eager lenet5 with the same outputs."""
    mod = _script("train_teacher")
    torch.manual_seed(0)
    model = create_model("lenet5", 10, 1).eval()
    dafl = mod.DaflLeNet5.from_lenet5(model)
    x = torch.randn(4, 1, 32, 32)
    assert torch.equal(dafl(x), model(x)) and torch.equal(dafl(x, True), model(x))
    torch.jit.script(dafl).save(str(tmp_path / "dafl.pt"))
    loaded = load_model(tmp_path / "dafl.pt")
    assert loaded.spec.arch == "lenet5" and not isinstance(loaded.model, torch.jit.ScriptModule)
    assert torch.allclose(loaded.model(x), model(x), atol=1e-6)
    with pytest.raises(SystemExit, match="needs --arch lenet5"):
        mod.DaflLeNet5.from_lenet5(create_model("lenet5-half", 10, 1))


def test_state_dicts_as_training_scripts_save_them(tmp_path):
    """Names differ from the architecture's in the ways training code makes them differ."""
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 3).eval()
    sd = model.state_dict()
    files = {
        "lightning.pt": ({"state_dict": {"model." + k: v for k, v in sd.items()}, "epoch": 3}, "under 'model.'"),
        "compiled.pt": ({"_orig_mod." + k: v for k, v in sd.items()}, "under '_orig_mod.'"),
        "old.pt": ({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, None),
    }
    for name, (obj, note) in files.items():
        torch.save(obj, tmp_path / name)
        loaded = load_model(tmp_path / name)
        assert loaded.spec.arch == "resnet18", name
        assert _same_outputs(model, loaded.model, (3, 64, 64)), name
        assert (note is None and not loaded.notes) or any(note in n for n in loaded.notes), (name, loaded.notes)


def test_fine_tuned_head_in_a_sequential_is_matched_in_order(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 3)
    model.fc = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(512, 10))
    model.eval()
    torch.save(model.state_dict(), tmp_path / "ft.pt")
    loaded = load_model(tmp_path / "ft.pt")
    assert loaded.spec.arch == "resnet18" and "fc.1.weight -> fc.weight" in loaded.notes[0]
    assert _same_outputs(model, loaded.model, (3, 64, 64))


def test_state_dict_renamed_throughout_is_not_matched_in_order(tmp_path):
    # A state_dict has no forward to check a by-position fit against: with every name different the
    # tensors could belong to another network, so it is refused (TorchScript files are checked instead).
    sd = {f"layer{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(create_model("lenet5", 10, 1).state_dict().items())}
    torch.save(sd, tmp_path / "renamed.pt")
    with pytest.raises(ModelError, match="fits no registered architecture"):
        load_model(tmp_path / "renamed.pt")


def test_onnx_teacher_is_refused_with_what_to_pass(tmp_path):
    torch.onnx.export(create_model("lenet5", 10, 1).eval(), torch.randn(1, 1, 32, 32), str(tmp_path / "t.onnx"),
                      dynamo=False)
    with pytest.raises(InputFileError, match="is an ONNX model: .*PyTorch weights"):
        load_model(tmp_path / "t.onnx")


class _Normalised(torch.nn.Module):
    """A scripted wrapper that normalises inside, with `s` for self (only a convention)."""

    def __init__(s):
        super().__init__()
        s.net = create_model("lenet5", 10, 1)
        s.register_buffer("mean", torch.full((1, 1, 1, 1), 0.5))

    def forward(s, image: torch.Tensor) -> torch.Tensor:
        return s.net(image - s.mean)


def test_torchscript_forward_argument_names_do_not_matter(tmp_path):
    torch.manual_seed(0)
    model = _Normalised().eval()
    torch.jit.script(model).save(str(tmp_path / "norm.pt"))
    loaded = load_model(tmp_path / "norm.pt", spec_overrides={"input_size": (32, 32)})
    assert loaded.spec.arch == "lenet5" and loaded.spec.num_classes == 10
    # The wrapper's subtraction is found among its tensors: the lenet5 rebuilt eager, the subtraction its input
    # statistics (mean 0.5, std 1), as a state_dict of the lenet5 given --mean 0.5 --std 1 would be.
    assert ("rebuilt as eager lenet5 (its submodule 'net') with the wrapper's normalisation x - mean as its input "
            "statistics") in loaded.notes[0]
    assert loaded.spec.mean == (0.5,) and loaded.spec.std == (1.0,)
    assert not isinstance(loaded.model, torch.jit.ScriptModule)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model((x - 0.5) / 1.0), model(x), atol=1e-5)


class _WithAuxiliary(torch.nn.Module):
    """A wrapper whose first registered submodule (a frozen copy kept for reference) is not the network it runs."""

    def __init__(self):
        super().__init__()
        self.reference = create_model("lenet5", 10, 1)
        self.net = create_model("lenet5", 10, 1)
        self.register_buffer("mean", torch.full((1,), 0.5))
        self.register_buffer("std", torch.full((1,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def test_torchscript_wrapper_is_rebuilt_from_the_submodule_it_runs(tmp_path):
    torch.manual_seed(0)
    model = _WithAuxiliary().eval()
    torch.jit.script(model).save(str(tmp_path / "aux.pt"))
    loaded = load_model(tmp_path / "aux.pt", spec_overrides={"input_size": (32, 32)})
    assert "rebuilt as eager lenet5 (its submodule 'net')" in loaded.notes[0], loaded.notes
    x = torch.rand(2, 1, 32, 32)
    mean, std = loaded.spec.mean[0], loaded.spec.std[0]
    with torch.no_grad():
        assert torch.allclose(loaded.model((x - mean) / std), model(x), atol=1e-4)


class _ResNetExport(torch.nn.Module):
    """How ResNets are often exported: ImageNet-style normalisation inside, (logits, features) out."""

    def __init__(self):
        super().__init__()
        self.backbone = create_model("resnet18", 10, 3)
        self.register_buffer("mean", torch.tensor([0.3, 0.4, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor):
        logits = self.backbone((x - self.mean) / self.std)
        return logits, logits.softmax(1)


class _Squashed(_ResNetExport):
    def forward(self, x: torch.Tensor):
        return self.backbone(torch.tanh(x - self.mean))


def test_torchscript_wrapper_of_a_bn_network_is_rebuilt_with_its_normalisation(tmp_path):
    torch.manual_seed(0)
    model = _ResNetExport().eval()
    for bn in model.modules():  # running statistics of a trained network, not the identity of a fresh one
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    torch.jit.script(model).save(str(tmp_path / "export.pt"))
    loaded = load_model(tmp_path / "export.pt", spec_overrides={"input_size": (32, 32)})
    note = loaded.notes[0]
    assert ("rebuilt as eager resnet18 (its submodule 'backbone') with the wrapper's normalisation (x - mean) / std "
            "as its input statistics") in note
    assert "item 0 of its output as the logits" in note
    # eager: the BatchNorm layers take hooks; the file's normalisation is the teacher's mean/std, so real
    # images are normalised as the file does it, and the network inside sees what it saw in the file
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.model.modules())
    assert loaded.spec.mean == pytest.approx((0.3, 0.4, 0.5)) and loaded.spec.std == pytest.approx((0.2, 0.25, 0.3))
    assert "normalises its input itself: mean 0.3 / 0.4 / 0.5, std 0.2 / 0.25 / 0.3" in loaded.notes[1]
    x = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (loaded.spec.mean, loaded.spec.std))
    with torch.no_grad():
        assert torch.allclose(loaded.model((x - mean) / std), model(x)[0], atol=1e-4)
    told = load_model(tmp_path / "export.pt", spec_overrides={"input_size": (32, 32), "mean": (0.5,) * 3})
    assert told.spec.mean == loaded.spec.mean and "(--mean/--std ignored)" in told.notes[1]
    # a transform that is not (x - a) * b stays TorchScript, and the note says what would load eager
    torch.jit.script(_Squashed().eval()).save(str(tmp_path / "squashed.pt"))
    kept = load_model(tmp_path / "squashed.pt", spec_overrides={"input_size": (32, 32)})
    assert isinstance(kept.model, torch.jit.ScriptModule) and "kept as TorchScript" in kept.notes[0]
    assert "its submodule 'backbone' is a resnet18" in kept.notes[0] and "BatchNorm prior" in kept.notes[0]


class _Fixed28(torch.nn.Module):
    """pytorch/examples' MNIST Net in small: an fc layer fixes the input at 28x28, log-probabilities out."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 13 * 13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return torch.log_softmax(self.fc(torch.flatten(x, 1)), dim=1)


def test_torchscript_input_size_found_when_the_file_does_not_say(tmp_path):
    torch.jit.script(_Fixed28().eval()).save(str(tmp_path / "net.pt"))
    loaded = load_model(tmp_path / "net.pt")
    assert loaded.spec.input_size == (28, 28) and loaded.spec.arch == "_Fixed28"
    assert any("does on 28x28: taken as its input size" in n for n in loaded.notes)
    with pytest.raises(ModelError, match="does not run on a 1x32x32 input .*--input-size"):
        load_model(tmp_path / "net.pt", spec_overrides={"input_size": (32, 32)})


def _export(model, example, path, dynamic_batch=False):
    """A torch.export.save'd archive, as PyTorch now recommends saving a model for deployment."""
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    torch.export.save(torch.export.export(model.eval(), (example,), dynamic_shapes=shapes), path)
    return path


def test_exported_bn_teacher_is_rebuilt_eager_with_hooks_and_its_input_size(tmp_path):
    """A .pt2 of a registered BN network, fixed to batch 2 and 16x16: rebuilt as the eager network (the
    check runs its 4 images through the batch-2 graph in chunks), input size read from the sample."""
    net = create_model("wrn16-2", 5, 3).eval()
    path = _export(net, torch.randn(2, 3, 16, 16), tmp_path / "wrn.pt2")
    loaded = load_model(path)
    assert loaded.format == "exported" and type(loaded.model) is type(net)
    assert loaded.spec.input_size == (16, 16) and loaded.spec.num_classes == 5
    assert any("torch.export teacher rebuilt as eager wrn16-2" in n for n in loaded.notes), loaded.notes
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.model.modules())  # hooks: the BN prior
    assert _same_outputs(net, loaded.model, (3, 16, 16))
    # The same file under another name (a run directory keeps it as teacher.pt) loads the same.
    (tmp_path / "teacher.pt").write_bytes(path.read_bytes())
    assert load_model(tmp_path / "teacher.pt").format == "exported"


class _Unregistered(torch.nn.Module):
    """No registered architecture: BN inside, (logits, probabilities) out."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                        torch.nn.Linear(128, 7))

    def forward(self, x):
        y = self.body(x)
        return y, y.softmax(1)


def test_exported_unregistered_teacher_runs_any_batch_without_hooks(tmp_path):
    from edgekd.distill.presets import choose_method, teacher_facts
    from edgekd.models.exported import ExportedTeacher

    torch.manual_seed(0)
    net = _Unregistered().eval()
    loaded = load_model(_export(net, torch.randn(1, 1, 20, 20), tmp_path / "odd.pt2"))
    assert loaded.format == "exported" and loaded.spec.input_size == (20, 20) and loaded.spec.num_classes == 7
    inner = next(m for m in loaded.model.modules() if isinstance(m, ExportedTeacher))
    assert inner.fixed_batch == 1  # exported at batch 1 without a dynamic batch dimension
    x = torch.randn(5, 1, 20, 20, requires_grad=True)
    out = loaded.model(x)
    assert torch.allclose(out, net(x)[0], atol=1e-5)  # item 0 taken as the logits, 5 images in chunks
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the generator learns through it
    assert teacher_facts(loaded).compiled == "torch.export" and not teacher_facts(loaded).batchnorm
    assert "torch.export" in choose_method(loaded)[1]
    dynamic = load_model(_export(net, torch.randn(2, 1, 20, 20), tmp_path / "dyn.pt2", dynamic_batch=True))
    assert next(m for m in dynamic.model.modules() if isinstance(m, ExportedTeacher)).fixed_batch is None


def test_exported_archive_with_pickled_parts_needs_trust(tmp_path):
    """torch.export.load unpickles some parts with code allowed: such an archive is refused unless
    trusted, and nothing in it is unpickled before the refusal."""
    import zipfile

    path = _export(create_model("lenet5", 10, 1), torch.randn(2, 1, 32, 32), tmp_path / "ok.pt2")
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data/sample_inputs/model.pt"):
                # torch.save of a plain Python object: weights_only refuses it, a full unpickle would run it
                buf = io.BytesIO()
                torch.save(((_Unregistered,), {}), buf)
                data = buf.getvalue()
            dst.writestr(item, data)
    with pytest.raises(InputFileError, match="pickled parts .*sample_inputs.*--trust-pickle"):
        load_model(bad)


def test_safetensors_state_dict_loads_without_pickle(tmp_path):
    """A state_dict written by Hugging Face's safetensors (as timm and the Hub ship weights) loads as the
    torchvision network it fits, float16 included; a truncated one is a one-line error."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = create_model("resnet18", 10, 3).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    loaded = load_model(tmp_path / "model.safetensors", spec_overrides={"input_size": (32, 32)})
    assert loaded.format == "state_dict" and loaded.spec.arch == "resnet18" and loaded.spec.num_classes == 10
    assert _same_outputs(net, loaded.model, (3, 32, 32))
    small = create_model("lenet5", 10, 1).eval()
    save_file({k: v.half() for k, v in small.state_dict().items()}, str(tmp_path / "half.safetensors"))
    half = load_model(tmp_path / "half.safetensors")
    assert half.spec.arch == "lenet5"
    for k, v in small.state_dict().items():
        assert torch.equal(half.model.state_dict()[k], v.half().float()), k
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="truncated or corrupt"):
        load_model(tmp_path / "cut.safetensors")
