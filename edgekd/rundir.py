"""A distill run directory: every file name in it, its run id, and an exclusive lock.

One run owns one directory. A fresh run refuses a directory that already holds another run (so a
new student is never paired with an old teacher or generator), two processes never work in one run
at the same time (flock, released by the kernel if the process dies), and temporary files left by a
killed process are removed when the next one takes the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional

from edgekd.errors import InputFileError, UsageError
from edgekd.fileio import PathLike, write_json


def torchscript_run_id(path: Path) -> Optional[str]:
    """The run id saved among a TorchScript file's extra files (torch.jit.save _extra_files)."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/extra/edgekd_run_id")), None)
            return z.read(name).decode() or None if name else None
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError):
        return None


class RunDir:
    CHECKPOINT = "checkpoint.pt"
    STUDENT = "student.pt"
    TEACHER = "teacher.pt"
    GENERATOR = "generator.pt"
    CALIB = "calib.npz"
    METRICS = "metrics.jsonl"
    CONFIG = "config.json"
    SUMMARY = "summary.json"
    SAMPLES = "samples.png"
    CURVES = "curves.png"
    RUN = "run.json"  # written first: the run id every artifact records
    LOCK = ".lock"
    # Any of these means the directory already holds a run.
    OWNED = (CHECKPOINT, STUDENT, TEACHER, GENERATOR, CALIB, METRICS, CONFIG, SUMMARY, RUN)

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------ state
    def holds_run(self) -> bool:
        return self.path.is_dir() and any((self.path / n).exists() for n in self.OWNED)

    def run_id(self) -> Optional[str]:
        """The id in run.json; None for runs made before run ids existed."""
        try:
            value = json.loads((self.path / self.RUN).read_text()).get("run_id")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    def check_one_run(self, artifacts: Dict[str, Optional[str]]) -> None:
        """Every artifact's recorded run id must be this run's: a student is never bundled with a
        teacher or generator of an earlier run that happened to use the same directory."""
        expected = self.run_id()
        for name, rid in artifacts.items():
            if expected and rid and rid != expected:
                raise InputFileError(f"{self.path}: {name} belongs to another run than {self.RUN} says "
                                     "(an interrupted or mixed run): distill again into a new --out")

    # ------------------------------------------------------------ life cycle
    def check_writable(self, resume: bool) -> None:
        """Before any work: --out must be a directory this run may use."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--out {self.path} is a file, not a directory: choose another --out")
        if resume:
            if not (self.path / self.CHECKPOINT).exists():
                raise UsageError(f"--resume: no {self.CHECKPOINT} in {self.path}; start without --resume")
        elif self.holds_run():
            raise UsageError(f"--out {self.path} already holds a distill run: continue it with --resume, "
                             "or choose another --out (or delete that directory)")

    def start(self) -> str:
        """A fresh run: write run.json with a new id (the first file of the run) and return the id."""
        run_id = uuid.uuid4().hex
        write_json(self.path / self.RUN, {"run_id": run_id})
        return run_id

    @contextmanager
    def locked(self, reader: bool = False) -> Iterator[RunDir]:
        """Hold the run's lock for the block: exclusive for distill, shared for a reader (export), so
        a run is never exported while a distill works in it. Another holder gets a clear error. A
        reader of a read-only directory (a run copied from elsewhere) goes on without a lock."""
        try:
            if not reader:
                self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if reader:
                yield self
                return
            raise InputFileError(f"cannot use {self.path}: {e.strerror or e}; choose a writable --out") from None
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if reader else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"{self.path} is in use by another edgekd process: wait for it to finish, "
                                 "or choose another directory") from None
            if not reader:
                self._remove_litter()
            yield self
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _remove_litter(self) -> None:
        """Temporary files of an atomic write that a killed process never renamed into place."""
        for p in self.path.glob(".*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass  # not ours to fight over: it is litter either way
