import json

import torch
from typer.testing import CliRunner

from edgekd.cli.app import app
from edgekd.models.registry import create_model

runner = CliRunner()


def test_users_own_command_torchvision_state_dict(tmp_path):
    torch.save(create_model("resnet34", 10, 3).state_dict(), tmp_path / "resnet34.pt")
    result = runner.invoke(app, ["distill", str(tmp_path / "resnet34.pt"), "--student", "mobilenetv2",
                                 "--input-size", "32", "--iterations", "1", "--batch-size", "4",
                                 "--set", "calib_images=8", "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["student"] == "mobilenet_v2" and summary["teacher"]["spec"]["arch"] == "resnet34"
    # the README's command names no method: auto sees a BatchNorm teacher and says so
    assert summary["method"] == "adversarial-bn" and "BatchNorm teacher" in summary["method_choice"]
    assert (tmp_path / "run" / "student.pt").exists()


def test_demo_distill_with_eval_data(tmp_path):
    result = runner.invoke(app, ["distill", "--iterations", "3", "--batch-size", "32", "--eval-data", "fashion-mnist",
                                 "--set", "eval_images=500", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "teacher accuracy" in result.output and "student accuracy" in result.output
    assert "method auto chose adversarial" in " ".join(result.output.split())  # the BN-free demo teacher


def test_distill_bad_inputs(tmp_path):
    cases = [(["distill", str(tmp_path / "no.pt")], 3), (["distill", "--student", "lenet6", "--iterations", "1"], 4),
             (["distill", "--set", "bogus=1", "--iterations", "1"], 2),
             (["distill", "--time-budget", "ten", "--iterations", "1"], 2),
             (["distill", "--iterations", "1", "--resume", "--out", str(tmp_path / "none")], 2)]
    for args, code in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.output)
        assert "Traceback" not in result.output


def test_grey_teacher_gets_grey_images(tmp_path):
    """--grey: a 3-channel teacher of grey data (ImageNet normalisation, as an X-ray on an RGB backbone) is
    distilled from pictures that are the same in every channel, and the setting is kept for --resume."""
    import numpy as np

    torch.save(create_model("lenet5", 10, 3).state_dict(), tmp_path / "t.pt")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    args = ["distill", str(tmp_path / "t.pt"), "--teacher-arch", "lenet5", "--input-size", "32",
            "--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std)), "--batch-size", "8",
            "--set", "calib_images=16", "--out", str(tmp_path / "run")]
    result = runner.invoke(app, [*args, "--iterations", "1", "--grey"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["gen_grey"] is True
    x = np.load(tmp_path / "run" / "calib.npz")["x"]
    pixels = x * np.array(std).reshape(1, 3, 1, 1) + np.array(mean).reshape(1, 3, 1, 1)
    assert x.shape[1] == 3 and np.allclose(pixels[:, 1], pixels[:, 0], atol=1e-4)
    assert np.allclose(pixels[:, 2], pixels[:, 0], atol=1e-4)
    result = runner.invoke(app, [*args, "--iterations", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["gen_grey"] is True
