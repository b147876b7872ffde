"""`edgekd bench --remote` against a real OpenSSH server started on 127.0.0.1 with a throwaway key."""

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgekd.bench.core import BenchConfig, bench_bundles
from edgekd.bench.remote import Remote, shell_path
from edgekd.cli.app import app
from edgekd.deploy.bundle import ExportConfig, export_bundle
from edgekd.deploy.targets import get_target
from edgekd.errors import UsageError

runner = CliRunner()
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
EDGEKD = str(Path(sys.executable).parent / "edgekd")  # this venv's command, as the device's install


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not os.path.exists(SSHD):
        pytest.fail("openssh-server is missing: scripts/setup.sh installs it (apt-get install openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PermitRootLogin prohibit-password\nPidFile {d / 'sshd.pid'}\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory sshd insists on as root
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "sshd.log", "w"))
    options = (f"Port={port}", f"IdentityFile={d / 'client'}", "StrictHostKeyChecking=no",
               f"UserKnownHostsFile={d / 'known_hosts'}", "LogLevel=ERROR")
    remote = Remote(f"{getpass.getuser()}@127.0.0.1", str(d / "device"), options)
    deadline = time.time() + 20
    while subprocess.run(remote.ssh_argv("true"), capture_output=True).returncode != 0:
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
        time.sleep(0.2)
    yield remote
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rb") / "x86 fp32"  # a space in the name: quoting on the device
    export_bundle(run_dir, ExportConfig(get_target("x86-cpu"), "fp32", calib_count=32), out)
    return out


def _cli(remote: Remote, *args: str, edgekd: str = EDGEKD, directory: str = ""):
    opts = [a for o in remote.options for a in ("--ssh-option", o)]
    where = f"{remote.destination}:{directory or remote.directory}"
    return runner.invoke(app, ["bench", *args, "--remote", where, *opts, "--remote-edgekd", edgekd,
                               "--iterations", "3", "--warmup", "0", "--batch-sizes", "1,2", "--no-timing-check"])


def test_remote_bench_equals_the_local_bench(sshd, bundle, fmnist, tmp_path):
    res = _cli(sshd, str(bundle), "--data", "fashion-mnist", "--max-images", "300", "--json", str(tmp_path / "r.json"),
               "--markdown", str(tmp_path / "r.md"), "--plot", str(tmp_path / "r.png"))
    assert res.exit_code == 0, res.output
    assert f"edgekd bench on {sshd.destination}" in res.output and "student fp32" in res.output
    remote = json.loads((tmp_path / "r.json").read_text())
    local = bench_bundles([bundle], BenchConfig(data="fashion-mnist", max_images=300, batch_sizes=(1, 2), warmup_s=0,
                                                duration_s=None, iterations=3, verify_timing=False))
    # Same images, same preprocessing (applied on the device from the raw uint8 sent over), same runtime.
    assert [(r["model"], r["batch_size"], r["top1"], r["agreement"]) for r in remote["rows"]] == \
        [(r["model"], r["batch_size"], r["top1"], r["agreement"]) for r in local.rows]
    assert remote["rows"][0]["top1"] > 0.5 and len(remote["verdicts"]) == 2
    assert remote["environment"]["remote"]["destination"] == sshd.destination
    assert remote["environment"]["torch_imported"] is False  # the device side ran without torch
    assert "fashion-mnist" in remote["evaluation"]["source"] and (tmp_path / "r.png").stat().st_size > 1000
    assert "| x86 fp32 | student fp32 |" in (tmp_path / "r.md").read_text()
    device = Path(sshd.directory)
    assert (device / "bundles" / "x86 fp32" / "manifest.json").is_file() and (device / "result.json").is_file()


def test_remote_bench_again_replaces_its_own_files(sshd, bundle):
    assert _cli(sshd, str(bundle)).exit_code == 0  # synthetic agreement, over the previous run's files
    assert not (Path(sshd.directory) / "data.npz").exists()


def test_remote_progress_arrives_as_it_happens(sshd, bundle):
    from edgekd.bench.remote import bench_remote
    from edgekd.progress import RecordingProgress

    progress = RecordingProgress()
    remote = Remote(sshd.destination, sshd.directory, sshd.options)
    bench_remote([bundle], BenchConfig(batch_sizes=(1,), warmup_s=0, duration_s=None, iterations=2, verify_timing=False),
                 remote, EDGEKD, progress)
    device = [m for m in progress.messages if m.startswith(f"{sshd.destination}: ")]
    # The device's own progress lines (which of its per-model lines Rich prints without a terminal varies).
    assert any(m.endswith("fp32 (onnxruntime)") for m in device), progress.messages


def test_remote_directory_with_other_files_is_left_alone(sshd, bundle, tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    res = _cli(sshd, str(bundle), directory=str(foreign))
    assert res.exit_code == 9 and "holds files edgekd did not put there" in res.output
    assert os.listdir(foreign) == ["notes.txt"]


def test_remote_failures_are_one_line(sshd, bundle, run_dir, tmp_path):
    res = _cli(sshd, str(bundle), edgekd="/nowhere/edgekd")
    assert res.exit_code == 6 and "no such command" in res.output
    unreachable = Remote(sshd.destination, sshd.directory, (f"Port={_free_port()}",) + sshd.options[1:])
    res = _cli(unreachable, str(bundle))
    assert res.exit_code == 9 and "cannot reach" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["bench", str(bundle), "--remote", "-oProxyCommand=x"])
    assert res.exit_code == 2 and "user@host" in res.output
    res = runner.invoke(app, ["bench", str(bundle), "--ssh-option", "Port=22"])
    assert res.exit_code == 2 and "--remote" in res.output


def test_device_without_edgekd(sshd, bundle, run_dir, tmp_path):
    """No edgekd on the device's PATH: an ONNX Runtime bundle cannot bench there (exit 6, what to install);
    a TensorRT bundle falls back to the edgekd_trt.py it carries (no TensorRT here, so that fails, named)."""
    cmd = ["bench", "--remote", f"{sshd.destination}:{sshd.directory}",
           *[a for o in sshd.options for a in ("--ssh-option", o)]]
    res = runner.invoke(app, [*cmd[:1], str(bundle), *cmd[1:]])
    if "no such" not in res.output and res.exit_code == 0:
        pytest.skip("this machine has an edgekd on ssh's default PATH")
    assert res.exit_code == 6 and "pip install edgekd" in res.output
    nano = tmp_path / "nano"
    export_bundle(run_dir, ExportConfig(get_target("jetson-nano"), "fp16", calib_count=32), nano)
    res = runner.invoke(app, [*cmd[:1], str(nano), *cmd[1:]])
    assert res.exit_code == 9 and "edgekd_trt.py bench nano" in res.output, res.output


@pytest.mark.parametrize("text,want", [("jet@nano", ("jet@nano", "edgekd-bench")),
                                       ("jet@nano:/data/b", ("jet@nano", "/data/b")),
                                       ("nano:~/x", ("nano", "~/x"))])
def test_remote_spec(text, want):
    r = Remote.parse(text)
    assert (r.destination, r.directory) == want


@pytest.mark.parametrize("text", ["", "@nano", "jet@", "nano:~", "nano:/", "-oProxyCommand=x"])
def test_remote_spec_refused(text):
    with pytest.raises(UsageError):
        Remote.parse(text)


def test_shell_path_quotes_and_keeps_home():
    assert shell_path("~/a b") == "\"$HOME\"/'a b'"
    assert shell_path("$(rm -rf /)") == "'$(rm -rf /)'"
