"""`edgekd build`: on the device, build TensorRT engines for a bundle."""

from __future__ import annotations

from pathlib import Path

import typer

from edgekd.cli.app import app, console
from edgekd.errors import RuntimeMissingError, UsageError


@app.command("build")
def build_cmd(
    bundle: Path = typer.Argument(Path("."), help="A TensorRT bundle from 'edgekd export --target jetson-...'."),
    verbose: bool = typer.Option(False, "--verbose", help="TensorRT's verbose build log."),
) -> None:
    """Build TensorRT engines for every model of a bundle (run this on the Jetson)."""
    from edgekd.deploy import trt_device
    from edgekd.deploy.manifest import load_manifest

    manifest = load_manifest(bundle, verify=False)  # build_bundle verifies it, after the runtime check
    if manifest.get("runtime") != "tensorrt":
        raise UsageError(f"{bundle} targets {manifest['target']['name']} ({manifest.get('runtime')}): "
                         "only TensorRT bundles are built; bench it directly")
    try:
        trt_device.import_tensorrt()
    except trt_device.TrtError as e:
        raise RuntimeMissingError(str(e)) from None
    load_manifest(bundle)  # verified: a tampered bundle is an input error, not a missing runtime
    try:
        engines = trt_device.build_bundle(str(bundle), verbose)
    except trt_device.TrtError as e:
        raise RuntimeMissingError(str(e)) from None
    for e in engines:
        console.print(f"built {e['file']} ({e['precision']}, TensorRT {e['tensorrt']}, {e['device']})")
    console.print(f"next: edgekd bench {bundle} --runtime tensorrt")
