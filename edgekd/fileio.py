"""Atomic file writes and hashing: a killed process never leaves a half-written artifact."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from edgekd.errors import InputFileError, UsageError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - older Pythons
    import tomli as tomllib  # type: ignore[no-redef]

PathLike = Union[str, "os.PathLike[str]"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and directories on some) refuse fsync: nothing better to do
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise InputFileError(f"cannot write {path}: {e.strerror or e}; choose a writable --out") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are meant to be shared
        _fsync(tmp_path)  # the data is on disk before the name points at it: a power cut leaves old or new
        os.replace(tmp_path, path)
        _fsync(path.parent)  # ... and the rename itself is durable
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_replaceable(path: PathLike, replaceable: Callable[[Path], bool], what: str) -> None:
    """`path` may be written over only if it is absent, an empty directory, or `replaceable` (an
    earlier output of the same kind): a --out that names anything else is never emptied."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise UsageError(f"--out {path} is a file: choose a new directory for the {what}")
    if any(path.iterdir()) and not replaceable(path):
        raise UsageError(f"--out {path} is a directory that is not an earlier {what}: choose a new directory "
                         "(nothing in it was touched)")


@contextmanager
def atomic_dir(path: PathLike, replaceable: Callable[[Path], bool] = lambda _: False,
               what: str = "output") -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds, and
    only if `path` is absent, empty or `replaceable`. The old directory is moved aside, the new one
    renamed in, then the old one deleted: a kill at any point leaves one whole copy at `path` or beside."""
    path = Path(path)
    check_replaceable(path, replaceable, what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise InputFileError(f"cannot write {path}: {e.strerror or e}; choose a writable --out") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        check_replaceable(path, replaceable, what)  # again: it may have changed while we worked
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", suffix=".tmp", dir=path.parent))
            os.replace(path, old)  # rename(2) may replace an empty directory
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_toml(path: PathLike, what: str) -> Any:
    """Parse a TOML file; unreadable or invalid files are one-line usage errors naming `what`."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{what} {path} is not valid TOML: {e}") from None
