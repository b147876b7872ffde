"""Reading and verifying a bundle's manifest. numpy/json only: the device side imports this."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from edgekd.errors import InputFileError

BUNDLE_FORMAT = "edgekd-bundle"


def load_manifest(bundle: Path, verify: bool = True) -> Dict[str, Any]:
    """The manifest of `bundle`. With verify: every file listed exists with its recorded sha256, every
    file the manifest refers to is listed, the bundle holds no unlisted model or data file and no link,
    and a student model is there (trt_device.verify_bundle has the rules). So a model copied over another,
    a dropped entry or a path out of the bundle is refused, not benched."""
    bundle = Path(bundle)
    path = bundle / "manifest.json"
    if not path.is_file():
        raise InputFileError(f"{bundle} is not an edgekd bundle (no manifest.json): run 'edgekd export' first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputFileError(f"{path} is not valid JSON: the bundle is corrupt, export it again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise InputFileError(f"{path} is not an edgekd bundle manifest")
    if verify:
        _verify(bundle, manifest)
    return manifest


def _verify(bundle: Path, manifest: Dict[str, Any]) -> None:
    # One rule set for both sides: the standalone device script (copied into TensorRT bundles) owns it.
    from edgekd.deploy.trt_device import TrtError, verify_bundle

    try:
        verify_bundle(str(bundle), manifest)
    except TrtError as e:
        raise InputFileError(str(e)) from None
