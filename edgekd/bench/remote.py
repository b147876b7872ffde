"""`edgekd bench --remote user@host[:dir]`: bench bundles on a device from the workstation.

System OpenSSH only (no Python ssh library): the bundles (and the labelled data, as one .npz) go over
as a tar stream on ssh's stdin, the device-side bench runs there, its JSON comes back on stdout, and
the table, Markdown and plot are made here from that JSON by the same code as a local bench.

On the device it runs `edgekd bench` (the torch-free device install) when it finds it, else, for
TensorRT bundles, the standalone edgekd_trt.py each bundle carries (Jetson Nano: Python 3.6, no edgekd).
"""

from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekd.bench.core import BenchConfig, BenchResult, verdicts_for
from edgekd.data.datasets import load_dataset, prepare_images
from edgekd.deploy.manifest import load_manifest
from edgekd.errors import EdgekdError, RuntimeMissingError, UsageError
from edgekd.progress import Progress
from edgekd.spec import ModelSpec

DEFAULT_DIR = "edgekd-bench"
MARKER = ".edgekd-bench"  # marks the device directory as edgekd's own, so it may be emptied
# BatchMode: never wait at a password prompt nobody sees (keys or an agent only).
BASE_SSH_OPTIONS = ("BatchMode=yes", "ConnectTimeout=20")
SSH_UNREACHABLE = 255  # ssh's own exit status for connection and authentication failures
# Where the device install may put the command when ssh's non-login PATH does not have it.
EDGEKD_CANDIDATES = ("edgekd", "$HOME/.local/bin/edgekd")


class RemoteError(EdgekdError):
    """The device could not be reached or its bench failed."""

    exit_code = 9


@dataclass(frozen=True)
class Remote:
    destination: str  # what ssh takes: host or user@host
    directory: str  # on the device, relative to the login directory unless absolute
    options: Tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, options: Sequence[str] = ()) -> Remote:
        destination, _, directory = text.partition(":")
        if not destination or destination[0] in "-@" or destination.endswith("@") or " " in destination:
            raise UsageError(f"--remote {text!r}: use user@host or user@host:dir")
        for opt in options:
            if "=" not in opt or opt.startswith("-"):
                raise UsageError(f"--ssh-option {opt!r}: use Key=Value as in ssh_config, e.g. Port=2222")
        directory = directory.strip() or DEFAULT_DIR
        if directory.rstrip("/") in ("", "~", ".", "/"):
            raise UsageError(f"--remote {text!r}: name a directory for edgekd's files on the device, e.g. "
                             f"{destination}:{DEFAULT_DIR}")
        return cls(destination, directory, tuple(options))

    def ssh_argv(self, command: str) -> List[str]:
        opts = [a for o in (*BASE_SSH_OPTIONS, *self.options) for a in ("-o", o)]
        return ["ssh", *opts, "--", self.destination, command]


def shell_path(path: str) -> str:
    """A device path for the remote shell: quoted, with a leading ~/ kept as the login directory."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (("/" + shlex.quote(path[2:])) if path[2:] else "")
    return shlex.quote(path)


def _run(remote: Remote, command: str, stdin: Optional[bytes] = None, what: str = "",
         on_line: Optional[Callable[[str], None]] = None) -> bytes:
    """Run `command` on the device; its stdout comes back, its stderr lines go to `on_line` as they come
    (the device bench's progress), and the last of them names a failure."""
    if shutil.which("ssh") is None:
        raise RuntimeMissingError("--remote needs the OpenSSH client: apt-get install openssh-client")
    proc = subprocess.Popen(remote.ssh_argv(command), stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: List[str] = []

    def read_stderr() -> None:
        for raw in proc.stderr:  # type: ignore[union-attr]
            line = raw.decode(errors="replace").rstrip()
            if line.strip():
                lines.append(line.strip())
                if on_line:
                    on_line(line.strip())

    def write_stdin() -> None:
        try:
            if stdin is not None:
                proc.stdin.write(stdin)  # type: ignore[union-attr]
        except BrokenPipeError:  # the device refused early (its reason comes on stderr)
            pass
        finally:
            if proc.stdin is not None:
                proc.stdin.close()

    # Not proc.communicate(): it reads stderr too, racing this reader for the device's lines (CI lost the
    # device's progress and its refusal message that way). Each pipe has exactly one reader here.
    threads = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=write_stdin, daemon=True)]
    for t in threads:
        t.start()
    out = proc.stdout.read()  # type: ignore[union-attr]
    proc.wait()
    for t in threads:
        t.join()
    if proc.returncode == 0:
        return out
    last = lines[-1] if lines else f"exit status {proc.returncode}"
    if proc.returncode == SSH_UNREACHABLE:
        raise RemoteError(f"cannot reach {remote.destination} over ssh ({last}): check the host, and that "
                          "'ssh " + remote.destination + "' logs in without a password (ssh-copy-id)")
    raise RemoteError(f"{what} on {remote.destination} failed: {last.removeprefix('error: ')}")


def find_device_bench(remote: Remote, edgekd_command: Optional[str]) -> Optional[str]:
    """The edgekd command on the device, or None when it has none (then only TensorRT bundles run)."""
    candidates = (edgekd_command,) if edgekd_command else EDGEKD_CANDIDATES
    probe = "; ".join(f'if command -v {c if c.startswith("$") else shell_path(c)} >/dev/null 2>&1; then '
                      f'echo {shlex.quote(c)}; exit 0; fi' for c in candidates) + "; exit 0"
    found = _run(remote, probe, what="looking for edgekd").decode().strip()
    return found.splitlines()[-1] if found else None


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _tar_stream(bundles: Sequence[Path], extra: Dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for b in bundles:
            tar.add(str(b), arcname=f"bundles/{b.name}")
        for name, payload in extra.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _upload_command(directory: str) -> str:
    d = shell_path(directory)
    # A directory that is not edgekd's own is never emptied.
    return (f'd={d}; if [ -d "$d" ] && [ -n "$(ls -A "$d")" ] && [ ! -f "$d/{MARKER}" ]; then '
            f'echo "error: $d holds files edgekd did not put there: name another directory (--remote HOST:DIR)" >&2; '
            f'exit 3; fi; mkdir -p "$d" && cd "$d" && touch {MARKER} && rm -rf bundles data.npz result.json && tar -xf -')


def _edgekd_command(exe: str, names: Sequence[str], cfg: BenchConfig, has_data: bool) -> str:
    args = ["bench", *(f"bundles/{n}" for n in names), "--json", "result.json", "--runtime", cfg.runtime,
            "--batch-sizes", ",".join(map(str, cfg.batch_sizes)), "--warmup", str(cfg.warmup_s),
            "--threads", str(cfg.threads)]
    args += ["--iterations", str(cfg.iterations)] if cfg.iterations else ["--duration", str(cfg.duration_s)]
    args += ["--data", "data.npz"] if has_data else []
    args += [] if cfg.verify_timing else ["--no-timing-check"]
    args += ["--profile"] if cfg.operator_profile else []
    exe_sh = exe if exe.startswith("$") else shell_path(exe)
    # Everything the device's bench prints goes to stderr (its progress, shown here as it comes); the
    # JSON alone comes back on stdout and is drawn here.
    return f"{exe_sh} {' '.join(map(shlex.quote, args))} >&2 && cat result.json"


def _standalone_command(name: str, has_data: bool) -> str:
    b = shlex.quote(f"bundles/{name}")
    data = " --data data.npz" if has_data else ""
    return f"python3 {b}/edgekd_trt.py bench {b}{data}"


def bench_remote(bundles: Sequence[Path], cfg: BenchConfig, remote: Remote, edgekd_command: Optional[str] = None,
                 progress: Optional[Progress] = None) -> BenchResult:
    progress = progress or Progress()
    bundles = [Path(b) for b in bundles]
    names = [b.resolve().name for b in bundles]
    if len(set(names)) != len(names):
        raise UsageError("--remote: two bundles share a directory name; rename one (they sit side by side there)")
    manifests = [load_manifest(b) for b in bundles]  # refuse a broken bundle before copying anything
    progress.message(f"looking for edgekd on {remote.destination}")
    exe = find_device_bench(remote, edgekd_command)
    if exe is None and edgekd_command:
        raise RuntimeMissingError(f"--remote-edgekd {edgekd_command}: no such command on {remote.destination}")
    if exe is None and not all((b / "edgekd_trt.py").is_file() for b in bundles):
        raise RuntimeMissingError(
            f"edgekd is not installed on {remote.destination} (not on ssh's PATH): pip install edgekd there, "
            "or name it with --remote-edgekd PATH (TensorRT bundles also bench without it)")
    extra: Dict[str, bytes] = {}
    source = None
    if cfg.data:
        ds = load_dataset(cfg.data).take(cfg.max_images)
        source = f"{ds.source} (sent to {remote.destination})"
        if exe:  # the device applies each bundle's own preprocessing to the raw images
            extra["data.npz"] = _npz_bytes(x=ds.images, y=ds.labels)
        else:  # the standalone script cannot resize: prepare here (all bundles share one spec then)
            specs = {json.dumps(m["spec"], sort_keys=True) for m in manifests}
            if len(specs) > 1:
                raise UsageError("--remote without edgekd on the device benches TensorRT bundles of one input spec "
                                 "at a time with --data; give them one by one")
            extra["data.npz"] = _npz_bytes(x=prepare_images(ds.images, ModelSpec.from_dict(manifests[0]["spec"])),
                                           y=ds.labels)
    payload = _tar_stream([b.resolve() for b in bundles], extra)
    progress.message(f"copying {len(bundles)} bundle(s), {len(payload) / 1e6:.1f} MB, to {remote.destination}")
    _run(remote, _upload_command(remote.directory), stdin=payload, what="copying the bundles")
    cd = f"cd {shell_path(remote.directory)} && "
    progress.message(f"benching on {remote.destination} ({'edgekd' if exe else 'edgekd_trt.py'})")
    if exe:
        def relay(line: str) -> None:  # the device bench's progress lines; its table is drawn here
            if line.startswith("• "):
                progress.message(f"{remote.destination}: {line[2:]}")

        raw = _run(remote, cd + _edgekd_command(exe, names, cfg, bool(extra)), what="edgekd bench", on_line=relay)
        result = _parse(raw, remote)
    else:
        rows = []
        for name in names:
            out = _run(remote, cd + _standalone_command(name, bool(extra)), what=f"edgekd_trt.py bench {name}")
            rows += [{"bundle": name, **r} for r in _parse_json(out, remote)]
        result = BenchResult(rows, verdicts_for(rows), {"runner": "edgekd_trt.py"},
                             {"source": "held-out synthetic images of each bundle", "kind": "synthetic"})
    if source:
        result.evaluation["source"] = source
    result.environment["remote"] = {"destination": remote.destination, "directory": remote.directory,
                                    "edgekd": exe or "edgekd_trt.py"}
    return result


def _parse_json(raw: bytes, remote: Remote) -> Any:
    try:
        return json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RemoteError(f"the bench on {remote.destination} did not return JSON (an old edgekd there? "
                          "pip install -U edgekd)") from None


def _parse(raw: bytes, remote: Remote) -> BenchResult:
    d = _parse_json(raw, remote)
    try:
        return BenchResult(d["rows"], d["verdicts"], d["environment"], d["evaluation"], d.get("timing_check", []),
                           d.get("warnings", []), d.get("operator_profiles", []))
    except (KeyError, TypeError):
        raise RemoteError(f"the bench on {remote.destination} returned JSON without rows/verdicts "
                          "(another edgekd version there? pip install -U edgekd)") from None

