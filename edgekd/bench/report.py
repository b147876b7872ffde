"""Bench results as Markdown and as a PNG of accuracy against latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from edgekd.bench.core import BenchResult
from edgekd.errors import RuntimeMissingError

# What the terminal table shows, one table per bundle (its name as the title, wrapped, never cut): these
# fit 80 columns whole, where device benches are read (ssh, CI logs). The rest is in --json/--markdown.
TERMINAL_COLUMNS = ("model", "batch_size", "top1", "agreement", "p50_ms", "p99_ms", "throughput_ips", "size_mb")
TERMINAL_HEADERS = {"batch_size": "batch", "agreement": "agree", "p50_ms": "p50 ms", "p99_ms": "p99 ms",
                    "throughput_ips": "img/s", "size_mb": "MB"}
COLUMNS = ("bundle", "model", "runtime", "batch_size", "top1", "top5", "agreement", "mean_ms", "p50_ms", "p90_ms",
           "p99_ms", "throughput_ips", "size_mb", "parameters", "macs")


def fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("top1", "top5", "agreement"):
        return f"{value:.2%}"
    if key.endswith("_ms"):
        return f"{value:.3f}"
    if key == "throughput_ips":
        return f"{value:,.0f}"
    if key == "size_mb":
        return f"{value:.2f}"
    if key in ("parameters", "macs") and isinstance(value, int):
        return f"{value:,}"
    return str(value)


def to_markdown(result: BenchResult) -> str:
    ev = result.evaluation
    lines = [f"Accuracy on: {ev.get('source')} ({ev.get('images')} images). "
             f"Preprocessing (outside the timed region): "
             + (f"{ev['preprocess_ms_per_image']:.3f} ms/image" if ev.get("preprocess_ms_per_image") else "n/a"), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in result.rows:
        lines.append("| " + " | ".join(fmt(c, r.get(c)) for c in COLUMNS) + " |")
    if result.verdicts:
        lines += ["", "| bundle | model | batch | speed-up (p50) vs teacher | accuracy change | size ratio |",
                  "|---|---|---|---|---|---|"]
        for v in result.verdicts:
            lines.append(f"| {v['bundle']} | {v['model']} | {v['batch_size']} | {v['speedup_p50']:.2f}x | "
                         f"{v['accuracy_change']:+.2%} ({v['metric']}) | {v['size_ratio']:.1f}x |")
    if result.timing_check:
        lines += ["", "| timing check (batch 1) | edgekd mean ms | loop-timed mean ms | diff | "
                  "onnxruntime profiler mean ms | diff |", "|---|---|---|---|---|---|"]
        for c in result.timing_check:
            lines.append(f"| {c['bundle']} {c['model']} | {c['edgekd_mean_ms']:.4f} | {c['loop_mean_ms']:.4f} | "
                         f"{c['loop_difference']:+.1%} | {c['onnxruntime_profiler_mean_ms']:.4f} | "
                         f"{c['profiler_difference']:+.1%} |")
    lines += [f"\n**Warning:** {w}" for w in result.warnings]
    env = result.environment
    lines += ["", f"Environment: {env.get('cpu')}, {env.get('cpu_count')} CPUs, flags {' '.join(env.get('cpu_flags') or []) or 'n/a'}, "
              f"{env.get('platform')}, "
              f"Python {env.get('python')}, threads {env.get('threads')}, runtimes "
              + ", ".join(f"{k} {v.get('version')} ({v.get('provider')})" for k, v in env.get("runtimes", {}).items()),
              ""]
    return "\n".join(lines)


def plot(result: BenchResult, path: Path, batch_size: Optional[int] = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeMissingError("--plot needs matplotlib: pip install matplotlib") from None
    sizes = sorted({r["batch_size"] for r in result.rows})
    bs = batch_size or sizes[0]
    rows: List[Dict[str, Any]] = [r for r in result.rows if r["batch_size"] == bs]
    metric = "top1" if any(r["top1"] is not None for r in rows) else "agreement"
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r[metric] is None:
            continue
        ax.scatter(r["p50_ms"], r[metric] * 100, s=40 + 200 * r["size_mb"] / max(x["size_mb"] for x in rows))
        ax.annotate(f"{r['bundle']}\n{r['model']}" if len(result.verdicts) > 2 else r["model"],
                    (r["p50_ms"], r[metric] * 100), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"p50 latency at batch {bs} (ms)")
    ax.set_ylabel(("top-1 accuracy" if metric == "top1" else "agreement with teacher") + " (%)")
    ax.set_title(f"accuracy vs latency ({result.evaluation.get('source', '')[:50]})", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
