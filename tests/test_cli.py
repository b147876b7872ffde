import json
import subprocess
import sys

import torch
from typer.testing import CliRunner

from edgekd.cli.app import app
from edgekd.models.registry import create_model

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("distill", "export", "bench", "models", "targets", "inspect"):
        assert cmd in result.output


def test_models_json():
    result = runner.invoke(app, ["models", "--json"])
    names = {m["name"] for m in json.loads(result.output)}
    assert {"mobilenet_v2", "resnet18", "lenet5", "lenet5-half", "resnet18-cifar", "wrn40-2"} <= names


def test_targets_json():
    result = runner.invoke(app, ["targets", "--json"])
    assert result.exit_code == 0
    assert "jetson-nano" in {t["name"] for t in json.loads(result.output)}


def test_inspect_demo_teacher(demo_teacher_path):
    result = runner.invoke(app, ["inspect", str(demo_teacher_path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["format"] == "edgekd" and info["arch"] == "lenet5"
    assert info["input_shape"] == [1, 1, 32, 32] and info["classes"] == 10
    assert info["parameters"] > 50_000 and info["macs"] > 300_000
    assert info["provenance"]["test_accuracy"] > 0.85
    assert info["method_auto"]["method"] == "adversarial" and "without BatchNorm" in info["method_auto"]["why"]


def test_inspect_state_dict_with_input_size(tmp_path):
    torch.save(create_model("resnet34", 10, 3).state_dict(), tmp_path / "resnet34.pt")
    result = runner.invoke(app, ["inspect", str(tmp_path / "resnet34.pt"), "--input-size", "64", "--json"])
    info = json.loads(result.output)
    assert info["arch"] == "resnet34" and info["input_shape"] == [1, 3, 64, 64]


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "junk.pt").write_text("junk")
    torch.save(create_model("lenet5", 10, 1).state_dict(), tmp_path / "sd.pt")
    cases = [
        (["inspect", str(tmp_path / "missing.pt")], 3, "no such file"),
        (["inspect", str(tmp_path / "junk.pt")], 3, "not a PyTorch checkpoint"),
        (["inspect", str(tmp_path / "sd.pt"), "--teacher-arch", "mobilnet"], 4, "did you mean"),
        (["inspect", str(tmp_path / "sd.pt"), "--num-classes", "7"], 4, "does not match"),
        (["inspect", str(tmp_path / "sd.pt"), "--input-size", "abc"], 2, "not a number"),
    ]
    for args, code, text in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.output)
        assert text in result.output
        assert "Traceback" not in result.output
        assert result.output.strip().count("\n") == 0, result.output


def test_real_subprocess_error_and_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgekd", "inspect", str(tmp_path / "nope.pt")],
                          capture_output=True, text=True)
    assert proc.returncode == 3
    assert proc.stderr.strip().startswith("error:") and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_env_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgekd", "inspect", str(tmp_path / "nope.pt")],
                          capture_output=True, text=True, env={**__import__("os").environ, "EDGEKD_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_real_subprocess_models():
    proc = subprocess.run([sys.executable, "-m", "edgekd", "models"], capture_output=True, text=True)
    assert proc.returncode == 0 and "lenet5-half" in proc.stdout


def test_inspect_with_labels_and_wrong_label_count(tmp_path):
    torch.save(create_model("lenet5", 3, 1).state_dict(), tmp_path / "sd.pt")
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    result = runner.invoke(app, ["inspect", str(tmp_path / "sd.pt"), "--labels", str(tmp_path / "labels.txt"), "--json"])
    assert json.loads(result.output)["labels"] == ["cat", "dog", "bird"]
    result = runner.invoke(app, ["inspect", str(tmp_path / "sd.pt"), "--labels", "cat,dog"])
    assert result.exit_code == 2 and "2 labels given for 3 classes" in result.output
