"""Run directories and bundles as contracts: nothing of the user's is overwritten, runs are never
mixed, a bundle that is not what export wrote is refused, a killed run resumes."""

import fcntl
import json
import os
import shutil

import pytest
import torch
from typer.testing import CliRunner

from edgekd.bench.core import BenchConfig, bench_bundles
from edgekd.cli.app import app
from edgekd.deploy import trt_device
from edgekd.deploy.bundle import ExportConfig, export_bundle
from edgekd.deploy.targets import get_target
from edgekd.distill.config import resolve_config
from edgekd.distill.loop import distill
from edgekd.errors import InputFileError, UsageError
from edgekd.models.checkpoint import load_model
from edgekd.rundir import RunDir

runner = CliRunner()
FAST_BENCH = dict(batch_sizes=(1,), warmup_s=0.0, duration_s=None, iterations=2, verify_timing=False)
FP32 = ExportConfig(get_target("x86-cpu"), "fp32", calib_count=16)
TINY = dict(iterations=2, batch_size=16, calib_images=8, eval_every_s=1e9)


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("contract") / "fp32"
    export_bundle(run_dir, FP32, out)
    return out


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# ------------------------------------------------------------------ export --out
def test_export_never_empties_a_directory_it_did_not_write(run_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["export", str(run_dir), "--target", "x86-cpu", "--precision", "fp32",
                                 "--out", str(mine)])
    assert result.exit_code == 2 and "not an earlier edgekd bundle" in result.output, result.output
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    with pytest.raises(UsageError, match="would replace"):
        export_bundle(run_dir, FP32, run_dir)
    with pytest.raises(UsageError, match="would replace"):
        export_bundle(run_dir, FP32, run_dir.parent)


def test_export_replaces_an_earlier_bundle_whole(run_dir, bundle, tmp_path):
    out = _copy(bundle, tmp_path / "b")
    before = json.loads((out / "manifest.json").read_text())["created"]
    export_bundle(run_dir, FP32, out)
    assert (out / "manifest.json").exists() and bench_bundles([out], BenchConfig(**FAST_BENCH)).rows
    assert json.loads((out / "manifest.json").read_text())["created"] >= before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary or moved-aside copy left


# ------------------------------------------------------------------ distill --out, locks, run ids
def test_fresh_distill_refuses_a_directory_holding_a_run(run_dir, tmp_path, demo_teacher_path):
    out = _copy(run_dir, tmp_path / "run")
    student = (out / "student.pt").read_bytes()
    result = runner.invoke(app, ["distill", "--iterations", "1", "--out", str(out)])
    assert result.exit_code == 2 and "already holds a distill run" in result.output
    assert (out / "student.pt").read_bytes() == student
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["distill", "--iterations", "1", "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and "is a file" in result.output


def test_a_run_in_use_is_refused_by_distill_and_export(run_dir, tmp_path, demo_teacher_path):
    out = _copy(run_dir, tmp_path / "run")
    fd = os.open(out / RunDir.LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a distill working in it would
    try:
        with pytest.raises(UsageError, match="in use by another edgekd process"):
            export_bundle(out, FP32, tmp_path / "b")
        cfg = resolve_config("adversarial", overrides=dict(TINY, iterations=3))
        with pytest.raises(UsageError, match="in use"):
            distill(load_model(demo_teacher_path), cfg, out, resume=True)
    finally:
        os.close(fd)


def test_export_refuses_a_student_of_another_run(run_dir, tmp_path):
    out = _copy(run_dir, tmp_path / "run")
    (out / RunDir.RUN).write_text(json.dumps({"run_id": "someone-else"}))
    with pytest.raises(InputFileError, match="another run"):
        export_bundle(out, FP32, tmp_path / "b")


def test_litter_of_a_killed_write_is_removed_by_the_next_run(tmp_path, demo_teacher_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    distill(load_model(demo_teacher_path), resolve_config("adversarial", overrides=TINY), out)
    assert not list(out.glob(".*.tmp")) and RunDir(out).run_id()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run_id"] == RunDir(out).run_id()
    assert torch.load(out / "generator.pt", weights_only=True)["run_id"] == summary["run_id"]


# ------------------------------------------------------------------ resume
def test_resume_takes_the_runs_own_settings_and_survives_a_torn_log(tmp_path):
    out = tmp_path / "run"
    first = runner.invoke(app, ["distill", "--iterations", "2", "--batch-size", "16", "--seed", "3",
                                "--set", "ema_decay=0", "--set", "calib_images=8", "--set", "checkpoint_every=1",
                                "--out", str(out)])
    assert first.exit_code == 0, first.output
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "time": 1.0, "loss_')  # a kill in the middle of an append
    result = runner.invoke(app, ["distill", "--iterations", "3", "--resume", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["steps"] == 3
    config = json.loads((out / "config.json").read_text())
    assert config["ema_decay"] == 0 and config["seed"] == 3 and config["batch_size"] == 16
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # every line whole again
    changed = runner.invoke(app, ["distill", "--iterations", "4", "--resume", "--batch-size", "32",
                                  "--out", str(out)])
    assert changed.exit_code == 2 and "batch_size was 16" in changed.output
    assert runner.invoke(app, ["distill", "--resume", "--iterations", "1"]).exit_code == 2  # which run?


# ------------------------------------------------------------------ bundle integrity
def _tampered(bundle, tmp_path, edit):
    bad = _copy(bundle, tmp_path / "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    edit(bad, manifest)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    return bad


def _swap_teacher_in(bad, m):
    shutil.copyfile(bad / "teacher.onnx", bad / "student.onnx")
    del m["files"]["student.onnx"]


@pytest.mark.parametrize("edit, message", [
    (_swap_teacher_in, "student.onnx is used but not listed"),
    (lambda bad, m: m.update(files=[]), "lists no files"),
    (lambda bad, m: m.update(files={}), "lists no files"),
    (lambda bad, m: m["files"].update({"../../etc/passwd": "x"}), "not a file of the bundle"),
    (lambda bad, m: m["files"].update({"/etc/passwd": {"sha256": "0"}}), "not a file of the bundle"),
    (lambda bad, m: (bad / "extra.onnx").write_bytes(b"x"), "extra.onnx is not listed"),
    (lambda bad, m: m.update(models=[e for e in m["models"] if e["role"] != "student"]), "names no student"),
])
def test_bench_refuses_a_bundle_that_is_not_what_export_wrote(bundle, tmp_path, edit, message):
    bad = _tampered(bundle, tmp_path, edit)
    with pytest.raises(InputFileError, match=message):
        bench_bundles([bad], BenchConfig(**FAST_BENCH))
    result = runner.invoke(app, ["bench", str(bad)])
    assert result.exit_code == 3 and "Traceback" not in result.output


def test_bench_outputs_written_into_a_bundle_do_not_break_it(bundle, tmp_path):
    ok = _copy(bundle, tmp_path / "ok")  # as make demo does: bench --plot BUNDLE/bench.png
    (ok / "bench.png").write_bytes(b"png")
    (ok / "bench.json").write_text("{}")
    assert bench_bundles([ok], BenchConfig(**FAST_BENCH)).rows


def test_device_script_refuses_links_and_never_writes_through_one(bundle, tmp_path):
    bad = _copy(bundle, tmp_path / "bad")
    victim = tmp_path / "bashrc"
    victim.write_text("precious")
    os.symlink(victim, bad / "timing.cache")
    with pytest.raises(trt_device.TrtError, match="is a link"):
        trt_device.read_verified_manifest(str(bad))
    os.symlink(victim, bad / ".timing.cache.tmp")  # planted where a naive writer would put its temp file
    trt_device.write_bytes(str(bad / "timing.cache"), b"cache")
    assert victim.read_text() == "precious"
    assert (bad / "timing.cache").read_bytes() == b"cache" and not (bad / "timing.cache").is_symlink()
    assert trt_device.main(["bench", str(bad)]) == 6  # the planted temp link is still refused


# ------------------------------------------------------------------ bad input is one line, never a traceback
@pytest.fixture(scope="module")
def junk(tmp_path_factory):
    from edgekd.models.registry import create_model

    d = tmp_path_factory.mktemp("junk")
    torch.save({"format": "edgekd-checkpoint", "version": 1, "arch": "lenet5",
                "state_dict": create_model("lenet5", 10, 1).state_dict()}, d / "nospec.pt")
    (d / "labels.bin").write_bytes(bytes(range(256)) * 4)
    target = (get_target("x86-cpu").to_dict())
    (d / "opset.toml").write_text("\n".join(
        f"{k} = {json.dumps(v)}" for k, v in {**target, "opset": "abc"}.items() if k not in ("bench", "vnni")))
    (d / "cfg.toml").write_text("batch_size = [1]\n")
    for cls in ("a", "b"):
        (d / "imgs" / cls).mkdir(parents=True)
        (d / "imgs" / cls / "x.png").write_bytes(b"\x89PNG but not really")
    import numpy as np

    np.savez(d / "empty.npz")
    # runs at 40 px only: not 224, nor a size edgekd tries when the file does not say (32, 28, 64, ...)
    torch.jit.script(_OddLeNet(side=40).eval()).save(str(d / "lenet40.pt"))
    return d


CASES = {
    "checkpoint without spec": (["distill", "{j}/nospec.pt", "-n", "1"], 3),
    "binary labels file": (["distill", "-n", "1", "--labels", "{j}/labels.bin"], 2),
    "opset not a number": (["export", "{run}", "--target", "{j}/opset.toml"], 2),
    "config value of the wrong type": (["distill", "-n", "1", "--config", "{j}/cfg.toml"], 2),
    "snapshot_every=0": (["distill", "-n", "1", "--set", "snapshot_every=0"], 2),
    "lr nan": (["distill", "-n", "1", "--set", "lr_g=nan"], 2),
    "negative count": (["distill", "-n", "1", "--set", "eval_images=-1"], 2),
    "std nan": (["distill", "-n", "1", "--std", "nan"], 2),
    "time budget nan": (["distill", "-t", "nan"], 2),
    "time budget inf": (["distill", "-t", "inf"], 2),
    "export --calib 0": (["export", "{run}", "--target", "x86-cpu", "--calib", "0"], 2),
    "bench empty npz": (["bench", "{bundle}", "--data", "{j}/empty.npz"], 5),
    "bench corrupt image": (["bench", "{bundle}", "--data", "{j}/imgs"], 5),
    "TorchScript teacher that runs at no common size": (["distill", "{j}/lenet40.pt", "-n", "1"], 4),
    "bench --max-images 0": (["bench", "{bundle}", "--data", "fashion-mnist", "--max-images", "0"], 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_an_exit_code(case, junk, run_dir, bundle, tmp_path):
    args, code = CASES[case]
    args = [a.format(j=junk, run=run_dir, bundle=bundle) for a in args]
    if args[0] in ("distill", "export"):
        args += ["--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == code, (case, result.output, result.exception)
    assert "Traceback" not in result.output and result.output.strip().startswith("error:"), result.output
    assert not (tmp_path / "out").exists() or args[0] == "distill"


def test_every_target_key_has_a_type_check():
    from dataclasses import fields

    from edgekd.deploy.targets import _KINDS, Target

    assert set(_KINDS) == {f.name for f in fields(Target)}


# ------------------------------------------------------------------ teachers of other layouts export too
class _OddLeNet(torch.nn.Module):
    """DAFL's forward signature, channel counts no registered architecture has, a (logits, features) output."""

    def __init__(self, digamma: bool = False, side: int = 32):
        super().__init__()
        self.digamma = digamma
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 8, 5), torch.nn.Conv2d(8, 12, 5)
        k = ((side - 4) // 2 - 4) // 2  # the fc layer fixes the input side
        self.fc = torch.nn.Linear(12 * k * k, 10)

    def forward(self, img: torch.Tensor, out_feature: bool = False):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(img)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        if self.digamma:  # an operator ONNX has no export for
            x = torch.digamma(x + 1.0)
        f = x.flatten(1)
        return self.fc(f), f


@pytest.mark.parametrize("digamma", [False, True])
def test_torchscript_teacher_with_extra_argument_and_tuple_output(tmp_path, digamma):
    torch.manual_seed(0)
    original = _OddLeNet(digamma).eval()
    torch.jit.script(original).save(str(tmp_path / "t.pt"))
    loaded = load_model(tmp_path / "t.pt", spec_overrides={"input_size": (32, 32), "mean": (0.5,), "std": (0.5,)})
    notes = " ".join(loaded.notes)
    assert "item 0 is taken as the logits" in notes and "out_feature" in notes, notes
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(loaded.model(x), original(x)[0])
    run = tmp_path / "run"
    distill(loaded, resolve_config("adversarial", overrides=TINY), run)
    result = export_bundle(run, FP32, tmp_path / "b")
    m = result.manifest
    roles = [e["role"] for e in m["models"]]
    if not digamma:
        assert roles == ["student", "teacher"] and m["teacher_export"]["exported"]
        assert m["checks"]["teacher_parity"]["max_abs_diff"] < 1e-3
    else:  # the teacher cannot be exported: the student's bundle is written anyway, and says why
        assert roles == ["student"] and not m["teacher_export"]["exported"]
        assert "digamma" in m["teacher_export"]["error"] and any("WARNING" in w for w in result.warnings)
        res = bench_bundles([tmp_path / "b"], BenchConfig(**FAST_BENCH))
        assert [r["model"] for r in res.rows] == ["student fp32"] and res.rows[0]["agreement"] is not None


def test_torch_export_teacher_of_an_unregistered_class_distils_and_exports(tmp_path):
    """A .pt2 (torch.export.save) of a class edgekd does not know, fixed to batch 1, (logits, probabilities)
    out: distilled on logits through the graph in chunks, kept in the run as the user's file, and bundled
    with a teacher ONNX that gives the file's logits at any batch."""
    import numpy as np
    import onnxruntime as ort

    torch.manual_seed(0)
    original = _OddLeNet(False).eval()
    ep = torch.export.export(original, (torch.randn(1, 1, 32, 32),))
    torch.export.save(ep, tmp_path / "t.pt2")
    loaded = load_model(tmp_path / "t.pt2", spec_overrides={"mean": (0.5,), "std": (0.5,)})
    assert loaded.format == "exported" and loaded.spec.input_size == (32, 32)
    run = tmp_path / "run"
    cfg = resolve_config("auto", overrides=TINY, teacher=loaded)
    assert cfg.method == "adversarial" and "torch.export" in cfg.method_choice
    distill(loaded, cfg, run)
    assert (run / RunDir.TEACHER).read_bytes() == (tmp_path / "t.pt2").read_bytes()
    result = export_bundle(run, FP32, tmp_path / "b")
    assert result.manifest["teacher_export"]["exported"]
    session = ort.InferenceSession(str(tmp_path / "b" / "teacher.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 32, 32)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = original(x)[0]
    assert np.allclose(got, want.numpy(), atol=1e-4)
