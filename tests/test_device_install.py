"""The device install: `pip install edgekd` into a fresh venv brings no PyTorch, benches a bundle, and
a workstation command there says which extra it needs."""

import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.deploy.bundle import ExportConfig, export_bundle
from edgekd.deploy.targets import get_target

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("device") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)],
                         capture_output=True, text=True, cwd=str(venv.parent))
    if pip.returncode != 0 and ("Could not find a version" in pip.stderr or "NewConnectionError" in pip.stderr):
        pytest.skip(f"no package index reachable: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr[-2000:]
    return venv


def test_device_install_has_no_torch_and_benches_a_bundle(device_venv, run_dir, tmp_path):
    python = str(device_venv / "bin" / "python")
    for module in ("torch", "torchvision", "onnx", "matplotlib"):
        found = subprocess.run([python, "-c", f"import importlib.util as u; print(u.find_spec({module!r}) is None)"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert found == "True", f"{module} came with the device install"
    bundle = tmp_path / "b"
    export_bundle(run_dir, ExportConfig(get_target("x86-cpu"), "int8", calib_count=64), bundle)
    edgekd = str(device_venv / "bin" / "edgekd")
    bench = subprocess.run([edgekd, "bench", str(bundle), "--iterations", "2", "--warmup", "0", "--batch-sizes", "1",
                            "--no-timing-check", "--json", str(tmp_path / "r.json")],
                           capture_output=True, text=True, cwd=str(tmp_path))
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert "student int8" in bench.stdout and (tmp_path / "r.json").exists()
    targets = subprocess.run([edgekd, "targets"], capture_output=True, text=True)
    assert targets.returncode == 0 and "jetson-orin-nano" in targets.stdout
    distill = subprocess.run([edgekd, "distill", "--iterations", "1"], capture_output=True, text=True,
                             cwd=str(tmp_path))
    assert distill.returncode == 6 and 'edgekd[train]' in distill.stderr and "Traceback" not in distill.stderr
