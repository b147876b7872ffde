"""Information commands: models, targets, inspect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from edgekd.cli.app import app, console
from edgekd.cli.options import (
    INPUT_SIZE,
    LABELS,
    MEAN,
    NUM_CLASSES,
    RESIZE,
    STD,
    TEACHER_ARCH,
    TRUST_PICKLE,
    spec_overrides,
)


@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the architectures edgekd can build (students and teachers)."""
    from edgekd.models.registry import get_entry, list_models

    rows = [get_entry(n) for n in list_models()]
    if as_json:
        print(json.dumps([{"name": e.name, "family": e.family, "input_size": list(e.default_input_size),
                           "description": e.description} for e in rows], indent=2))
        return
    table = Table(title="Architectures")
    for col in ("name", "family", "default input", "description"):
        table.add_column(col)
    for e in rows:
        table.add_row(e.name, e.family, "x".join(map(str, e.default_input_size)), e.description)
    console.print(table)


@app.command("targets")
def targets_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the device profiles that `edgekd export --target` accepts."""
    from edgekd.deploy.targets import list_targets

    targets = list_targets()
    if as_json:
        print(json.dumps([t.to_dict() for t in targets], indent=2))
        return
    table = Table(title="Targets")
    for col in ("name", "runtime", "precisions", "opset", "description"):
        table.add_column(col)
    for t in targets:
        table.add_row(t.name, t.runtime, ", ".join(t.precisions), str(t.opset), t.description)
    console.print(table)


@app.command("inspect")
def inspect_cmd(
    file: Path = typer.Argument(..., help="A checkpoint: edgekd, state_dict, TorchScript or (trusted) pickle."),
    teacher_arch: Optional[str] = TEACHER_ARCH,
    trust_pickle: bool = TRUST_PICKLE,
    input_size: Optional[str] = INPUT_SIZE,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    num_classes: Optional[int] = NUM_CLASSES,
    labels: Optional[str] = LABELS,
    resize: Optional[str] = RESIZE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Say what a checkpoint is: format, architecture, classes, input shape, parameters, MACs, grey or colour data,
    and the preset distill's --method auto would run on it."""
    from edgekd.distill.grey import grey_setting
    from edgekd.distill.presets import choose_method
    from edgekd.models.checkpoint import load_model
    from edgekd.models.info import count_macs, count_parameters

    loaded = load_model(file, teacher_arch, trust_pickle, spec_overrides(input_size, mean, std, num_classes, labels, resize))
    spec = loaded.spec
    info = {
        "file": str(file), "format": loaded.format, "sha256": loaded.sha256, "arch": spec.arch,
        "classes": spec.num_classes, "input_shape": [1, *spec.input_shape], "mean": list(spec.mean),
        "std": list(spec.std), "labels": list(spec.labels) if spec.labels else None,
        "parameters": count_parameters(loaded.model), "macs": count_macs(loaded.model, spec.input_shape),
        "provenance": loaded.provenance,
        "data_colour": grey_setting(loaded)[1] or None,  # what distill's generator will make, and why
        "method_auto": dict(zip(("method", "why"), choose_method(loaded))),  # what `distill` runs by default
        "notes": loaded.notes,  # what loading decided: keys renamed, a prefix dropped, a TorchScript rebuilt
    }
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=f"{file}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key in ("format", "arch", "classes", "input_shape", "mean", "std", "labels"):
        table.add_row(key, str(info[key]))
    table.add_row("parameters", f"{info['parameters']:,}")
    table.add_row("MACs", f"{info['macs']:,}")
    if info["data_colour"]:
        table.add_row("data colour", info["data_colour"])
    table.add_row("distill --method auto", f"{info['method_auto']['method']}: {info['method_auto']['why']}")
    for note in info["notes"]:
        table.add_row("loading", note)
    table.add_row("sha256", info["sha256"][:16] + "...")
    for k, v in (info["provenance"] or {}).items():
        table.add_row(f"provenance.{k}", str(v)[:80])
    console.print(table)
