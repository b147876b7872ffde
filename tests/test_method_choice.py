"""--method auto, the class-conditional generator and DeepInversion's first-BN weight."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekd.distill import losses as L
from edgekd.distill.config import resolve_config, run_settings
from edgekd.distill.generator import Generator
from edgekd.distill.loop import Distiller, distill, synthesize
from edgekd.distill.persistence import check_resumable
from edgekd.distill.presets import AUTO_RULES, PRESETS, choose_method, teacher_facts
from edgekd.distill.synthesizers import balanced_labels, generator_step
from edgekd.errors import UsageError
from edgekd.models.checkpoint import LoadedModel, load_model
from edgekd.models.registry import create_model
from edgekd.spec import ModelSpec

FAST = dict(batch_size=16, eval_every_s=1e9, calib_images=32, replay_size=64, eval_images=200)


def _teacher(tmp_path, arch="wrn16-2", channels=3, size=16):
    torch.manual_seed(0)
    model = create_model(arch, 5, channels).eval()
    return LoadedModel(model, ModelSpec(arch, 5, channels, (size, size), (0.5,), (0.5,)), "edgekd",
                       tmp_path / "t.pt", "0" * 64)


def test_auto_picks_by_what_the_teacher_is(tmp_path):
    bn, plain = _teacher(tmp_path), _teacher(tmp_path, "lenet5", 1, 32)
    assert teacher_facts(bn).batchnorm and not teacher_facts(plain).batchnorm
    scripted = LoadedModel(torch.jit.script(create_model("wrn16-2", 5, 3).eval()), bn.spec, "torchscript",
                           tmp_path / "s.pt", "1" * 64)
    facts = teacher_facts(scripted)
    assert facts.compiled == "TorchScript" and facts.batchnorm  # no hooks, but its graph gives the BN inputs
    scripted_plain = LoadedModel(torch.jit.script(create_model("lenet5", 5, 1).eval()), plain.spec, "torchscript",
                                 tmp_path / "p.pt", "2" * 64)
    assert not teacher_facts(scripted_plain).batchnorm
    choices = {name: choose_method(t) for name, t in (("bn", bn), ("plain", plain), ("scripted", scripted),
                                                       ("scripted_plain", scripted_plain))}
    assert all(method in PRESETS and why for method, why in choices.values())
    assert "BatchNorm" in choices["bn"][1] and "TorchScript" in choices["scripted"][1]
    assert choices["scripted"][0] == choices["bn"][0] != choices["scripted_plain"][0] == choices["plain"][0]
    assert "logits alone" in choices["scripted_plain"][1]
    assert AUTO_RULES[-1][0](facts)  # the last rule matches anything: every teacher gets a preset
    cfg = resolve_config("auto", overrides={"iterations": 1}, teacher=bn)
    assert (cfg.method, cfg.method_choice) == choices["bn"]
    for key, value in PRESETS[cfg.method].items():
        assert getattr(cfg, key) == value, key


def test_auto_choice_is_recorded_and_a_named_method_clears_it(tmp_path, monkeypatch):
    t = _teacher(tmp_path)
    cfg = resolve_config("auto", overrides={**FAST, "iterations": 1, "student": "resnet18-cifar", "s_steps": 1}, teacher=t)
    distill(t, cfg, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["method"] == cfg.method and config["method_choice"] == cfg.method_choice
    assert any(n.startswith(f"method auto chose {cfg.method}") for n in config["notes"])
    # three channels normalised alike (0.5/0.5): the run points at --grey, which it did not use
    assert any("--grey" in n for n in config["notes"]) and not config["gen_grey"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method_choice"] == cfg.method_choice
    # resume reads the run's settings (method and its reason) back; naming a method drops the reason
    saved = run_settings(tmp_path / "run")
    again = resolve_config("auto", file_values=saved, teacher=t)
    assert (again.method, again.method_choice) == (cfg.method, cfg.method_choice)
    named = resolve_config("auto", file_values=saved, overrides={"method": "dafl"}, teacher=t)
    assert named.method == "dafl" and named.method_choice == ""
    # a run saved before a setting existed resumes at that setting's default, not at a preset's value for it
    config.pop("kd_tau"), config.pop("min_batch")
    (tmp_path / "run" / "config.json").write_text(json.dumps({**config, "no_such_setting": 1}))
    older = run_settings(tmp_path / "run")
    assert older["kd_tau"] == 1.0 and older["min_batch"] == 64 and "no_such_setting" not in older
    monkeypatch.setitem(PRESETS[cfg.method], "kd_tau", 4.0)
    assert resolve_config("auto", file_values=older, teacher=t).kd_tau == 1.0
    assert resolve_config("auto", file_values=saved, teacher=t).kd_tau == 1.0
    # the checkpoint's check holds an API caller to the same: a newer setting resumes only at its default
    older_ckpt = {k: v for k, v in cfg.to_dict().items() if k != "kd_tau"}
    check_resumable(older_ckpt, cfg)
    with pytest.raises(UsageError, match="kd_tau was 1.0 in this run, not 4.0"):
        check_resumable(older_ckpt, dataclasses.replace(cfg, kd_tau=4.0))


def test_a_batchnorm_student_learns_at_the_presets_bn_rate_unless_the_user_names_one(tmp_path):
    t = _teacher(tmp_path)
    bn = resolve_config("auto", overrides={"iterations": 1, "student": "mobilenet_v2"}, teacher=t)
    preset = PRESETS[bn.method]
    assert bn.lr_s == preset["lr_s_bn"] != preset["lr_s"] and "mobilenet_v2 has BatchNorm" in bn.lr_choice
    plain = resolve_config("auto", overrides={"iterations": 1, "student": "lenet5"}, teacher=t)
    assert plain.lr_s == preset["lr_s"] and not plain.lr_choice
    named = resolve_config("auto", overrides={"iterations": 1, "student": "mobilenet_v2", "lr_s": 1e-3}, teacher=t)
    assert named.lr_s == 1e-3 and not named.lr_choice
    # a resumed run reads its lr back, whatever the preset says now (older runs: lr_s_bn absent, 2e-3 kept)
    resumed = resolve_config("auto", file_values=bn.to_dict(), teacher=t)
    assert (resumed.lr_s, resumed.lr_choice) == (bn.lr_s, bn.lr_choice)
    old = {k: v for k, v in bn.to_dict().items() if k not in ("lr_s_bn", "lr_choice")} | {"lr_s": preset["lr_s"]}
    assert resolve_config("auto", file_values=old, teacher=t).lr_s == preset["lr_s"]
    # a preset without the key leaves every student at its lr_s
    dafl = resolve_config("dafl", overrides={"iterations": 1, "student": "mobilenet_v2"}, teacher=t)
    assert dafl.lr_s == PRESETS["dafl"]["lr_s"] and not dafl.lr_choice


def test_balanced_labels_cover_every_class():
    torch.manual_seed(0)
    y = balanced_labels(23, 5, torch.device("cpu"))
    counts = torch.bincount(y, minlength=5)
    assert counts.sum() == 23 and counts.max() - counts.min() <= 1
    assert not torch.equal(y, torch.arange(23) % 5)  # shuffled


def test_conditional_generator_round_trips_and_labels_change_its_images():
    torch.manual_seed(0)
    g = Generator(16, (3, 16, 16), 8, num_classes=5).eval()
    z = torch.randn(10, 16)
    a, b = g(z, torch.zeros(10, dtype=torch.long)), g(z, torch.ones(10, dtype=torch.long))
    assert a.shape == (10, 3, 16, 16) and not torch.allclose(a, b)
    assert torch.equal(g(z), g(z, torch.arange(10) % 5))  # unlabelled: a balanced cycle of classes
    h = Generator.from_description(g.describe())
    h.load_state_dict(g.state_dict())
    assert h.num_classes == 5 and torch.equal(h.eval()(z), g(z))
    plain = Generator(16, (3, 16, 16), 8)
    assert plain.num_classes == 0 and "embed" not in dict(plain.named_children())


def test_conditional_generator_step_targets_its_labels(tmp_path):
    cfg = resolve_config("adversarial", overrides={**FAST, "iterations": 1, "student": "resnet18-cifar",
                                                   "s_steps": 1, "gen_labels": True})
    d = Distiller(_teacher(tmp_path), cfg, tmp_path / "run")
    assert d.m.generator.num_classes == 5
    torch.manual_seed(4)
    terms = generator_step(d)
    torch.manual_seed(4)
    labels = balanced_labels(16, 5, d.plan.device)  # the step's first draw
    x, t_logits = d._last_batch
    assert torch.isclose(terms["oh"], F.cross_entropy(t_logits.float(), labels), atol=1e-5)
    assert all(torch.isfinite(v).all() for v in terms.values())


def test_conditional_run_resumes_exactly_and_exports_its_images(tmp_path):
    t = _teacher(tmp_path)
    cfg = dict(FAST, iterations=4, seed=2, student="resnet18-cifar", s_steps=2, lr_schedule="constant",
               gen_labels=True, bn_first=10.0)
    distill(t, resolve_config("adversarial", overrides=cfg), tmp_path / "full")
    distill(t, resolve_config("adversarial", overrides={**cfg, "iterations": 2}), tmp_path / "part")
    distill(t, resolve_config("adversarial", overrides=cfg), tmp_path / "part", resume=True)
    a = load_model(tmp_path / "full" / "student.pt").model.state_dict()
    b = load_model(tmp_path / "part" / "student.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(tmp_path / "full" / "generator.pt", weights_only=True)
    g = Generator.from_description(state)
    g.load_state_dict(state["state_dict"])  # what export reads back
    synth = synthesize(g, t.model, 20, seed=0)
    assert synth["x"].shape == (20, 3, 16, 16) and np.isfinite(synth["x"]).all()


def test_first_bn_weight_scales_only_the_first_layer():
    torch.manual_seed(0)
    stats = [(torch.randn(4), torch.rand(4), torch.randn(4), torch.rand(4) + 0.5) for _ in range(3)]
    for loss in L.BN_LOSSES.values():
        one, ten = loss(stats), loss(stats, 10.0)
        first = loss(stats[:1])
        assert torch.isclose(ten, one + 9 * first), loss.__name__


def test_deepinversion_pixels_stay_in_range_and_export_calibrates_on_them(tmp_path):
    from edgekd.deploy.bundle import ExportConfig, export_bundle
    from edgekd.deploy.manifest import load_manifest
    from edgekd.deploy.targets import get_target

    t = _teacher(tmp_path)
    cfg = resolve_config("deepinversion", overrides={**FAST, "iterations": 2, "g_steps": 4, "s_steps": 1,
                                                     "student": "resnet18-cifar", "eval_every_s": 0})
    assert cfg.synthesizer == "inversion" and cfg.g_flip and cfg.w_bn == 10
    result = distill(t, cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "generator.pt").exists()  # no generator: the run's images travel instead
    assert "agreement_synthetic" in result.metrics  # on images withheld from the student
    saved = np.load(tmp_path / "run" / "calib.npz")
    assert len(saved["held_x"]) == 2 * (16 // 8) and saved["x"].shape[1:] == (3, 16, 16)
    # pixels are clipped to what a camera delivers: [0, 1] in the teacher's (x - 0.5) / 0.5
    assert saved["x"].min() >= -1 - 1e-5 and saved["x"].max() <= 1 + 1e-5
    out = tmp_path / "bundle"
    export_bundle(tmp_path / "run", ExportConfig(get_target("x86-cpu"), "int8", calib_count=8,
                                                 min_int8_agreement=0.0), out)
    m = load_manifest(out)
    assert m["calibration"]["source"] == "run images (calib.npz)" and m["calibration"]["count"] == 8
    assert np.load(out / "synthetic.npz")["x"].shape == (4, 3, 16, 16)


def test_generator_output_group_learns_at_its_multiple(tmp_path):
    from edgekd.distill.schedule import lr_factor, set_lr

    cfg = resolve_config("adversarial", overrides={**FAST, "iterations": 10, "student": "resnet18-cifar",
                                                   "gen_output": "affine", "g_out_lr_mult": 50.0})
    d = Distiller(_teacher(tmp_path), cfg, tmp_path / "run")
    main, out = d.m.opt_g.param_groups
    assert {id(p) for p in out["params"]} == {id(p) for p in d.m.generator.out_bn.parameters()}
    assert len(main["params"]) + 2 == len(list(d.m.generator.parameters()))
    set_lr(d.m.opt_g, cfg.lr_g * lr_factor(cfg, 5, 0.0))  # the schedule keeps the ratio
    assert out["lr"] == pytest.approx(50 * main["lr"]) and main["lr"] < cfg.lr_g
    plain = Distiller(_teacher(tmp_path), resolve_config("adversarial", overrides={**FAST, "iterations": 1,
                                                                                   "student": "resnet18-cifar"}),
                      tmp_path / "plain")
    assert len(plain.m.opt_g.param_groups) == 1  # one group as before: older checkpoints still load
