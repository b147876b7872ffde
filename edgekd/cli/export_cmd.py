"""`edgekd export`: a distill run (or checkpoint) -> a deployment bundle for a device profile."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from edgekd.cli.app import app, console
from edgekd.cli.options import TRUST_PICKLE
from edgekd.errors import UsageError


@app.command("export")
def export_cmd(
    source: Optional[Path] = typer.Argument(None, help="A distill run directory or a checkpoint (default: the current directory if it is a run)."),
    target: str = typer.Option(..., "--target", help="Device profile name ('edgekd targets') or a TOML file."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16 or int8 (default: the target's)."),
    calib: int = typer.Option(512, "--calib", help="Number of calibration images (generator images unless --calib-data)."),
    calib_data: Optional[str] = typer.Option(None, "--calib-data", help="Calibrate on real images instead (fashion-mnist, IDX dir, ImageFolder, .npz)."),
    calibration: str = typer.Option("minmax", "--calibration", help="INT8 calibration method: minmax, entropy or percentile."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Labelled data to measure the INT8 accuracy drop on."),
    max_int8_drop: float = typer.Option(0.02, "--max-int8-drop", help="Refuse INT8 that loses more accuracy than this on --eval-data (0.02 = 2 points)."),
    min_int8_agreement: float = typer.Option(0.90, "--min-int8-agreement", help="Refuse INT8 that agrees with FP32 on fewer held-out synthetic images than this."),
    vnni: Optional[str] = typer.Option(None, "--vnni", help="x86 targets: does the device's CPU have VNNI/AMX? yes, no, or detect (the export machine is the device; the default). Without them INT8 uses 7-bit weights."),
    force: bool = typer.Option(False, "--force", help="Write the bundle even past the INT8 thresholds (with a loud warning)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Bundle directory (default bundles/<run>-<target>-<precision>)."),
    trust_pickle: bool = TRUST_PICKLE,
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Export ONNX (+ INT8 / TensorRT inputs) and write a deployment bundle with a manifest."""
    from edgekd.deploy.bundle import ExportConfig, export_bundle
    from edgekd.deploy.targets import get_target

    if source is None:
        if not Path("student.pt").exists():
            raise UsageError("no SOURCE given and the current directory is not a distill run: give a run directory")
        source = Path(".")
    tgt = get_target(target)
    prec = precision or tgt.default_precision
    tgt.check_precision(prec)
    name = source.resolve().name if source.is_dir() else source.stem
    by_speed = precision is None and prec == "int8"  # INT8 by default only where it is faster (see below)
    bundle_dir = out or Path("bundles") / (f"{name}-{tgt.name}" if by_speed else f"{name}-{tgt.name}-{prec}")
    cfg = ExportConfig(tgt, prec, calib, calib_data, calibration, eval_data, max_int8_drop, min_int8_agreement,
                       force, trust_pickle, vnni, by_speed)
    with console.status(f"exporting {source} for {tgt.name} ({prec})"):
        result = export_bundle(source, cfg, bundle_dir)
    m = result.manifest
    if as_json:
        print(json.dumps(m, indent=2))
        return
    for w in result.warnings:
        console.print(f"[bold red]{w}[/]" if w.startswith("WARNING") else f"[yellow]• {w}[/]")
    table = Table(title=f"bundle {bundle_dir} ({tgt.name}, {m['precision']})")
    for col in ("file", "role", "precision", "size", "parameters", "MACs"):
        table.add_column(col)
    for entry in m["models"]:
        size = m["files"][entry["file"]]["bytes"]
        table.add_row(entry["file"], entry["role"], entry["precision"], f"{size / 1e6:.2f} MB",
                      f"{entry['parameters']:,}", f"{entry['macs']:,}")
    console.print(table)
    checks = m["checks"]
    console.print(f"parity ONNX Runtime vs PyTorch: max |diff| {checks['student_parity']['max_abs_diff']:.1e} "
                  f"({checks['student_parity']['tolerance']})")
    if m.get("quantization"):
        q = m["quantization"]
        console.print(f"INT8: {q['activations']} activations, {q['weights']} weights. Why: {q['reason']}")
    if "int8" in checks:
        c = checks["int8"]
        console.print(f"INT8 vs FP32 agreement on {c['on']}: {c['agreement']:.1%} exact arithmetic, "
                      f"{c['kernel_agreement']:.1%} with this CPU's kernels ({c['kernels_cpu']})")
    if "int8_real" in checks:
        c = checks["int8_real"]
        console.print(f"accuracy on {c['on']}: FP32 {c['fp32_accuracy']:.2%} -> INT8 {c['int8_accuracy']:.2%} "
                      f"(drop {c['accuracy_drop']:+.2%})")
    console.print(f"calibration: {m['calibration']['count']} images from {m['calibration']['source']}")
    if tgt.runtime == "tensorrt" and importlib.util.find_spec("tensorrt") is not None:
        # Running on the device itself (or a workstation with TensorRT): build the engines now.
        from edgekd.cli.build_cmd import build_cmd

        build_cmd(bundle_dir, verbose=False)
        return
    console.print(f"next: edgekd bench {bundle_dir}")
