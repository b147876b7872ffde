"""`edgekd bench`: run on the device. Imports numpy and a runtime only (never torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich import box
from rich.table import Table

from edgekd.cli.app import app, console
from edgekd.errors import UsageError


def _parse_sizes(text: str) -> tuple:
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--batch-sizes {text!r}: use comma-separated integers, e.g. 1,8") from None
    if not sizes or min(sizes) < 1:
        raise UsageError("--batch-sizes must be positive integers, e.g. 1,8")
    return sizes


@app.command("bench")
def bench_cmd(
    bundles: Optional[List[Path]] = typer.Argument(None, help="Bundle directories from 'edgekd export' (default: the current directory)."),
    data: Optional[str] = typer.Option(None, "--data", help="Labelled data: fashion-mnist, mnist, IDX dir, ImageFolder, .npz (default: the bundle's synthetic images, agreement only)."),
    runtime: str = typer.Option("auto", "--runtime", help="auto (the bundle's), onnxruntime, openvino, tensorrt, a comma-separated list, or all (every one installed here), side by side."),
    batch_sizes: str = typer.Option("1,8", "--batch-sizes", help="Comma-separated batch sizes."),
    warmup: float = typer.Option(1.0, "--warmup", help="Warm-up seconds per model and batch size."),
    duration: Optional[float] = typer.Option(3.0, "--duration", help="Minimum timed seconds per model and batch size."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Timed runs instead of --duration."),
    threads: int = typer.Option(0, "--threads", help="Intra-op threads, the same for every model (0: runtime default)."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Measure accuracy on the first N images only."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full result (with environment) as JSON."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write the table as Markdown."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of accuracy against latency."),
    no_timing_check: bool = typer.Option(False, "--no-timing-check", help="Skip the cross-check against onnxruntime's profiler."),
    profile: bool = typer.Option(False, "--profile", help="Where each model's time goes, by operator type (the runtime's own profiler, batch 1)."),
    remote: Optional[str] = typer.Option(None, "--remote", help="Bench on a device over ssh: user@host[:dir] (dir default edgekd-bench, edgekd's own there)."),
    ssh_options: Optional[List[str]] = typer.Option(None, "--ssh-option", help="ssh_config Key=Value for --remote, repeatable (Port=2222, IdentityFile=~/.ssh/jetson)."),
    remote_edgekd: Optional[str] = typer.Option(None, "--remote-edgekd", help="The edgekd command on the device when not on ssh's PATH (e.g. ~/venv/bin/edgekd)."),
) -> None:
    """Benchmark student against teacher: accuracy, agreement and latency, on this device."""
    from edgekd.bench.core import BenchConfig, bench_bundles
    from edgekd.bench.remote import Remote, bench_remote
    from edgekd.bench.report import plot, to_markdown
    from edgekd.cli.rich_progress import RichProgress

    cfg = BenchConfig(data, runtime, _parse_sizes(batch_sizes), warmup, None if iterations else duration,
                      iterations, threads, max_images, not no_timing_check, profile)
    if remote:
        target = Remote.parse(remote, ssh_options or ())
        result = bench_remote(bundles or [Path(".")], cfg, target, remote_edgekd, RichProgress(console))
    elif ssh_options or remote_edgekd:
        raise UsageError("--ssh-option and --remote-edgekd go with --remote user@host")
    else:
        result = bench_bundles(bundles or [Path(".")], cfg, RichProgress(console))
    print_result(result)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(to_markdown(result))
    if plot_out:
        plot(result, plot_out)


def print_result(result: Any) -> None:
    from edgekd.bench.report import TERMINAL_COLUMNS, TERMINAL_HEADERS, fmt

    where = result.environment.get("remote", {}).get("destination")
    console.print(f"[bold]edgekd bench[/]{' on ' + where if where else ''}: accuracy on {result.evaluation['source']}")
    for bundle in dict.fromkeys(r["bundle"] for r in result.rows):
        # No vertical rules and one space of padding: every value stays whole in 80 columns; a value
        # that still does not fit wraps (fold) instead of being cut to an ellipsis.
        table = Table(title=bundle, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
        for c in TERMINAL_COLUMNS:
            table.add_column(TERMINAL_HEADERS.get(c, c), justify="left" if c == "model" else "right",
                             overflow="fold")
        for r in result.rows:
            if r["bundle"] == bundle:
                table.add_row(*(fmt(c, r.get(c)) for c in TERMINAL_COLUMNS))
        console.print(table)
    for w in result.warnings:
        console.print(f"[bold red]WARNING: {w}[/]")
    for v in result.verdicts:
        console.print(f"[bold]{v['bundle']} {v['model']}[/] at batch {v['batch_size']}: "
                      f"[green]{v['speedup_p50']:.2f}x[/] the teacher's speed (p50), "
                      f"{v['metric']} {v['accuracy_change']:+.2%}, {v['size_ratio']:.1f}x smaller")
    for p in result.operator_profiles:
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(p["shares"].items())[:5])
        console.print(f"time by operator, {p['bundle']} {p['model']} (batch 1): {top}")
    for c in result.timing_check:
        console.print(f"timing check {c['model']} (batch 1): edgekd {c['edgekd_mean_ms']:.4f} ms, loop-timed "
                      f"{c['loop_mean_ms']:.4f} ms ({c['loop_difference']:+.1%}), onnxruntime profiler "
                      f"{c['onnxruntime_profiler_mean_ms']:.4f} ms ({c['profiler_difference']:+.1%})")
