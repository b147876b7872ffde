"""Reading and verifying a bundle's manifest. numpy/json only: the device side imports this."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from edgekd.errors import InputFileError
from edgekd.fileio import sha256_file

BUNDLE_FORMAT = "edgekd-bundle"


def load_manifest(bundle: Path, verify: bool = True) -> Dict[str, Any]:
    """The manifest of `bundle`; with verify, every listed file must exist with its recorded sha256."""
    bundle = Path(bundle)
    path = bundle / "manifest.json"
    if not path.exists():
        raise InputFileError(f"{bundle} is not an edgekd bundle (no manifest.json): run 'edgekd export' first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputFileError(f"{path} is not valid JSON: the bundle is corrupt, export it again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise InputFileError(f"{path} is not an edgekd bundle manifest")
    if verify:
        for name, info in manifest.get("files", {}).items():
            f = bundle / name
            if not f.exists():
                raise InputFileError(f"{bundle}: {name} is missing: copy the whole bundle directory again")
            if sha256_file(f) != info["sha256"]:
                raise InputFileError(f"{bundle}: {name} does not match its sha256 in manifest.json "
                                     "(tampered or corrupt): copy or export the bundle again")
    return manifest
