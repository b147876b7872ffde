"""`edgekd distill`: data-free distillation of a teacher file into a compact student."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from edgekd.cli.app import app, console, err_console
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
from edgekd.errors import Interrupted, UsageError

DEMO = "demo"
DEFAULT_BUDGET = "10m"


def demo_teacher_path() -> Path:
    return Path(__file__).resolve().parent.parent / "assets" / "demo_teacher_fmnist_lenet5.pt"


def _default_out(teacher: Path, student: str, method: str, resume: bool) -> Path:
    base = Path("runs") / f"{teacher.stem}-{student}-{method}"
    if resume or not base.exists():
        return base
    n = 2
    while base.with_name(f"{base.name}-{n}").exists():
        n += 1
    return base.with_name(f"{base.name}-{n}")


@app.command("distill")
def distill_cmd(
    teacher: str = typer.Argument(DEMO, help="Teacher file (state_dict, TorchScript, edgekd checkpoint), or 'demo' for the shipped Fashion-MNIST LeNet-5."),
    student: Optional[str] = typer.Option(None, "--student", "-s", help="Student architecture ('edgekd models'); default: lenet5-half for inputs up to 64 px, else mobilenet_v2."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="auto (default: chosen by the teacher), adversarial (the paper's), fast, dafl, dfad, zskt or dfq."),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", help="Stop after N generator steps."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", "-t", help=f"Stop after this long (90s, 10m, 1h). Default {DEFAULT_BUDGET} when --iterations is not given."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Synthetic batch size (default 256)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="auto (from the hardware), fp32, bf16 or fp16."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Labelled test data to *measure* the student on (off the --time-budget clock): fashion-mnist, mnist, an IDX dir, ImageFolder or .npz."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<teacher>-<student>-<method>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint, with its settings (a new --time-budget or --iterations may extend it)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of settings (see 'edgekd distill --help' and config.json of a run)."),
    grey: Optional[bool] = typer.Option(None, "--grey/--no-grey", help="The teacher learnt from grey images copied to every channel (MNIST, X-rays on an RGB backbone): make grey images, not colour it never saw. Default: read from the teacher's first BatchNorm where it can tell (the run's notes say), else colour."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Override any setting, e.g. --set w_bn=0.5 --set s_steps=5."),
    teacher_arch: Optional[str] = TEACHER_ARCH,
    trust_pickle: bool = TRUST_PICKLE,
    input_size: Optional[str] = INPUT_SIZE,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    num_classes: Optional[int] = NUM_CLASSES,
    labels: Optional[str] = LABELS,
    resize: Optional[str] = RESIZE,
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Distil TEACHER into a compact student with no training data (GAN-based data-free KD)."""
    from edgekd.cli.rich_progress import RichProgress
    from edgekd.data.datasets import load_dataset
    from edgekd.distill.config import load_config_file, parse_duration, parse_sets, resolve_config, run_settings
    from edgekd.distill.distributed import launched_rank
    from edgekd.distill.loop import distill
    from edgekd.distill.presets import DEFAULT_METHOD
    from edgekd.models.checkpoint import load_model
    from edgekd.rundir import RunDir

    rank = launched_rank()
    if rank:  # under torchrun, rank 0 speaks for all
        console.quiet = err_console.quiet = True
    teacher_path = demo_teacher_path() if teacher == DEMO else Path(teacher)
    if resume and out is None:
        raise UsageError("--resume needs --out RUN_DIR: the run to continue")
    if out is not None:
        RunDir(out).check_writable(resume)  # before loading anything: a wrong --out fails in a second
    saved = run_settings(out) if resume else {}
    loaded = load_model(teacher_path, teacher_arch, trust_pickle, spec_overrides(input_size, mean, std, num_classes, labels, resize))
    if student is None and not saved:
        student = "lenet5-half" if max(loaded.spec.input_size) <= 64 else "mobilenet_v2"
    # On --resume only what the user typed overrides the run's own settings.
    given = {"student": student, "seed": seed, "method": method,
             "device": None if device == "auto" else device, "precision": None if precision == "auto" else precision}
    overrides = {k: v for k, v in given.items() if v is not None}
    if grey is not None:
        overrides["gen_grey"] = grey
    if iterations is not None:
        overrides["iterations"] = iterations
    if time_budget is not None or (iterations is None and not saved):
        overrides["time_budget"] = parse_duration(time_budget or DEFAULT_BUDGET)
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    overrides.update(parse_sets(sets or []))
    file_values = {**saved, **(load_config_file(config) if config else {})}
    cfg = resolve_config(DEFAULT_METHOD, file_values, overrides, teacher=loaded)
    data = load_dataset(eval_data) if eval_data else None
    run_dir = out or _default_out(teacher_path, cfg.student, cfg.method, resume)

    budget = f"{cfg.iterations} iterations" if cfg.iterations else f"{cfg.time_budget:.0f}s"
    console.print(f"teacher [bold]{loaded.spec.arch}[/] ({loaded.format}, {loaded.spec.num_classes} classes, "
                  f"input {'x'.join(map(str, loaded.spec.input_shape))}) -> student [bold]{cfg.student}[/], "
                  f"method {cfg.method}{' (auto)' if cfg.method_choice else ''}, {budget}, run dir {run_dir}")
    result = distill(loaded, cfg, run_dir, data, RichProgress(console), resume=resume)
    if rank:
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    summary = json.loads((run_dir / "summary.json").read_text())
    if result.interrupted:
        launcher = f"torchrun --nproc_per_node {world} -m edgekd" if world > 1 else "edgekd"
        raise Interrupted(f"stopped at step {result.steps}; saved {run_dir}/checkpoint.pt and student.pt: "
                          f"continue with '{launcher} distill {teacher} --out {run_dir} --resume'")
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"distilled in {result.seconds:.0f}s, {result.steps} steps ({result.plan})", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("method", cfg.method + (f" (auto: {cfg.method_choice})" if cfg.method_choice else ""))
    if result.teacher_accuracy is not None:
        table.add_row("teacher accuracy", f"{result.teacher_accuracy:.2%}  ({data.source})")
        table.add_row("student accuracy", f"{result.metrics['accuracy']:.2%}")
        table.add_row("agreement (real)", f"{result.metrics['agreement_real']:.2%}")
    if "agreement_synthetic" in result.metrics:
        table.add_row("agreement (held-out synthetic)", f"{result.metrics['agreement_synthetic']:.2%}")
    for e in result.events:
        table.add_row("event", e)
    table.add_row("student", str(result.student_path))
    table.add_row("next", f"edgekd export {run_dir} --target x86-cpu")
    console.print(table)
