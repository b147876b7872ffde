"""Bench results as Markdown and as a PNG of accuracy against latency."""

from __future__ import annotations

import textwrap
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
    if result.operator_profiles:
        lines += ["", "| time by operator type (batch 1, the runtime's own profiler) | top operators |", "|---|---|"]
        for p in result.operator_profiles:
            lines.append(f"| {p['bundle']} {p['model']} | "
                         + ", ".join(f"{op} {share:.1%}" for op, share in list(p["shares"].items())[:8]) + " |")
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
    points = [r for r in rows if r[metric] is not None]
    biggest = max((x["size_mb"] for x in points), default=1.0) or 1.0
    for r in points:
        ax.scatter(r["p50_ms"], r[metric] * 100, s=40 + 200 * r["size_mb"] / biggest)
    ax.set_xlabel(f"p50 latency at batch {bs} (ms)")
    ax.set_ylabel(("top-1 accuracy" if metric == "top1" else "agreement with teacher") + " (%)")
    ax.set_title(textwrap.fill(f"accuracy vs latency ({result.evaluation.get('source', '')})", 90), fontsize=8)
    ax.margins(0.25)  # room inside the axes for labels beside the outermost points
    labels = [(f"{r['bundle']}\n{r['model']}" if len(result.verdicts) > 2 else r["model"],
               (r["p50_ms"], r[metric] * 100)) for r in points]
    ax.grid(alpha=0.3)
    place_labels(fig, ax, labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Offsets (points) tried in turn for each label: right, left, above, below, then the diagonals.
_LABEL_OFFSETS = ((6, 4), (-6, 4), (0, 10), (0, -12), (6, -12), (-6, -12), (6, 14), (-6, 14), (10, 24), (-10, 24),
                  (10, -26), (-10, -26))


def place_labels(fig: Any, ax: Any, labels: List[Any], marker_pt: float = 9.0) -> List[Any]:
    """Annotate each (text, xy) where its box overlaps no other label, no marker and not the title and
    stays inside the axes: the first free offset of _LABEL_OFFSETS, else the least-overlapping one.
    Returns the boxes (display units) of the title, the markers and the labels, in that order."""
    from matplotlib.transforms import Bbox

    fig.tight_layout()  # the final layout first: boxes are measured where they will be drawn
    renderer = fig.canvas.get_renderer()
    taken = [ax.title.get_window_extent(renderer)]
    half = marker_pt * fig.dpi / 72.0 / 2
    for _, xy in labels:
        px, py = ax.transData.transform(xy)
        taken.append(Bbox.from_extents(px - half, py - half, px + half, py + half))
    inside = ax.get_window_extent(renderer)

    def cost(box: Any) -> float:
        overlap = sum(max(0.0, min(box.x1, t.x1) - max(box.x0, t.x0)) * max(0.0, min(box.y1, t.y1) - max(box.y0, t.y0))
                      for t in taken)
        outside = box.width * box.height - max(0.0, min(box.x1, inside.x1) - max(box.x0, inside.x0)) * \
            max(0.0, min(box.y1, inside.y1) - max(box.y0, inside.y0))
        return overlap + outside

    for text, xy in labels:
        best = None
        for dx, dy in _LABEL_OFFSETS:
            ann = ax.annotate(text, xy, fontsize=7, xytext=(dx, dy), textcoords="offset points",
                              ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top")
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            c = cost(box)
            if best is None or c < best[0]:
                if best is not None:
                    best[1].remove()
                best = (c, ann, box)
            else:
                ann.remove()
            if c == 0:
                break
        taken.append(best[2])
    return taken
