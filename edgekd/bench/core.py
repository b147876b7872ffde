"""`edgekd bench`: every model of one or more bundles, accuracy + agreement + latency, same inputs
and threads for all. Torch-free: numpy and a runtime only."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekd import __version__
from edgekd.bench.latency import measure
from edgekd.bench.runners import SHORT_NAMES, bundle_runtimes, make_runner
from edgekd.cpu import cpu_summary, int8_dot_product
from edgekd.data.datasets import check_dataset_fits, load_dataset, prepare_images
from edgekd.deploy.manifest import load_manifest
from edgekd.errors import DataError, UsageError
from edgekd.progress import Progress
from edgekd.spec import ModelSpec


@dataclass
class BenchConfig:
    data: Optional[str] = None
    runtime: str = "auto"
    batch_sizes: Tuple[int, ...] = (1, 8)
    warmup_s: float = 1.0
    duration_s: Optional[float] = 3.0
    iterations: Optional[int] = None
    threads: int = 0
    max_images: Optional[int] = None
    verify_timing: bool = True
    operator_profile: bool = False  # onnxruntime: each model's time by operator type (batch 1)


@dataclass
class BenchResult:
    rows: List[Dict[str, Any]]
    verdicts: List[Dict[str, Any]]
    environment: Dict[str, Any]
    evaluation: Dict[str, Any]
    timing_check: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    operator_profiles: List[Dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {"edgekd_version": __version__, "environment": self.environment, "evaluation": self.evaluation,
                "rows": self.rows, "verdicts": self.verdicts, "timing_check": self.timing_check,
                "warnings": self.warnings, "operator_profiles": self.operator_profiles}


def _peak_rss_mb() -> Optional[float]:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    except ImportError:  # pragma: no cover - Windows
        return None


def environment(threads: int) -> Dict[str, Any]:
    import os

    cpu = cpu_summary()
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu["cpu"],
            "cpu_count": os.cpu_count(), "cpu_flags": cpu["flags"], "int8_dot_product": cpu["int8_dot_product"], "python": sys.version.split()[0], "numpy": np.__version__,
            "threads": threads or "runtime default", "torch_imported": "torch" in sys.modules}


def _eval_set(bundle: Path, manifest: Dict[str, Any], cfg: BenchConfig, spec: ModelSpec) -> Dict[str, Any]:
    """Labelled data when given, else the bundle's held-out synthetic images with teacher labels."""
    if cfg.data:
        ds = load_dataset(cfg.data)
        check_dataset_fits(ds, spec)
        ds = ds.take(cfg.max_images)
        t0 = time.perf_counter()
        x = prepare_images(ds.images, spec)
        pre_ms = (time.perf_counter() - t0) * 1e3 / len(ds)
        return {"x": x, "labels": ds.labels, "source": ds.source, "kind": "labelled",
                "preprocess_ms_per_image": pre_ms}
    name = manifest.get("synthetic_eval")
    if not name:
        raise DataError(f"{bundle} has no synthetic images: give --data PATH to measure on labelled data")
    with np.load(bundle / name) as z:
        x, pred = z["x"].astype(np.float32), z["teacher_pred"]
    if tuple(x.shape[1:]) != spec.input_shape:
        raise DataError(f"{bundle}/{name} has images of shape {x.shape[1:]}, the model needs {spec.input_shape}")
    n = cfg.max_images or len(x)
    return {"x": x[:n], "labels": None, "teacher_pred": pred[:n], "kind": "synthetic",
            "source": f"{len(x[:n])} held-out synthetic images from the bundle (no labelled data given)",
            "preprocess_ms_per_image": None}


def int8_cpu_warning(bundle: str, manifest: Dict[str, Any], runtime: str) -> Optional[str]:
    """Full-range INT8 weights on an x86 CPU without VNNI/AMX: ONNX Runtime's U8S8 kernels saturate."""
    q = manifest.get("quantization") or {}
    if (runtime != "onnxruntime" or not q or q.get("reduce_range") or platform.machine() not in ("x86_64", "AMD64")
            or int8_dot_product() is not None):
        return None
    if manifest.get("target", {}).get("vnni"):
        fix = "re-export with --vnni no"
    else:  # a bundle for another device (TensorRT, ARM) benched here: its own kernels do not saturate
        fix = f"the INT8 figures here understate what {manifest['target'].get('name', 'its device')} computes"
    return (f"{bundle}: its INT8 model has full-range weights and this x86 CPU has no VNNI/AMX, so ONNX Runtime's "
            f"INT8 kernels here can saturate (agreement below the export's exact figure): {fix}")


def _predict(runner: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([runner(x[i:i + batch]) for i in range(0, len(x), batch)])


def _topk(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argsort(-logits, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def _batch(x: np.ndarray, size: int) -> np.ndarray:
    reps = int(np.ceil(size / len(x)))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:size]) if reps > 1 else np.ascontiguousarray(x[:size])


def bench_bundles(bundles: Sequence[Path], cfg: BenchConfig, progress: Optional[Progress] = None) -> BenchResult:
    progress = progress or Progress()
    if not bundles:
        raise UsageError("give at least one bundle directory (made by 'edgekd export')")
    if any(b < 1 for b in cfg.batch_sizes):
        raise UsageError("--batch-sizes must be positive integers, e.g. 1,8")
    for name, value, low in (("--max-images", cfg.max_images, 1), ("--iterations", cfg.iterations, 1),
                             ("--threads", cfg.threads, 0)):
        if value is not None and value < low:
            raise UsageError(f"{name} must be at least {low}")
    for name, value in (("--warmup", cfg.warmup_s), ("--duration", cfg.duration_s)):
        if value is not None and not 0 <= value < float("inf"):
            raise UsageError(f"{name} must be a finite number of seconds >= 0")
    rows: List[Dict[str, Any]] = []
    checks: List[Dict[str, Any]] = []
    profiles: List[Dict[str, Any]] = []
    runtimes: Dict[str, Any] = {}
    evaluation: Dict[str, Any] = {}
    warnings: List[str] = []
    for bundle in map(Path, bundles):
        manifest = load_manifest(bundle)
        spec = ModelSpec.from_dict(manifest["spec"])
        chosen = bundle_runtimes(cfg.runtime, manifest)
        ev = _eval_set(bundle, manifest, cfg, spec)
        evaluation = {"source": ev["source"], "kind": ev["kind"], "images": int(len(ev["x"])),
                      "preprocess_ms_per_image": ev["preprocess_ms_per_image"]}
        entries = sorted(manifest["models"], key=lambda m: m["role"] != "teacher")  # teacher first
        bundle_rows: List[Dict[str, Any]] = []
        total = len(entries) * len(cfg.batch_sizes) * len(chosen)
        for runtime in chosen:  # the first runtime's teacher is what every student is compared with
            warning = int8_cpu_warning(bundle.name, manifest, runtime)
            if warning:
                warnings.append(warning)
            teacher_pred = ev.get("teacher_pred")
            for entry in entries:
                label = f"{entry['role']} {entry['precision']}" + (f" {SHORT_NAMES[runtime]}" if len(chosen) > 1 else "")
                progress.message(f"{bundle.name}: {label} ({runtime})")
                runner = make_runner(runtime, bundle, entry, cfg.threads, manifest["target"].get("session"))
                info = runner.environment()
                # the file a runner loaded (an optimised one, or the plain one it fell back to) is per model:
                # it goes on the model's rows, the runtime's version and settings in the environment
                loaded = info.pop("file", entry["file"])
                runtimes[runtime] = info
                if info.get("note"):  # e.g. an optimised file this runtime could not read
                    warnings.append(f"{bundle.name} {label}: {info['note']}")
                logits = _predict(runner, ev["x"])
                pred = logits.argmax(1)
                if entry["role"] == "teacher" and ev["kind"] == "labelled":
                    teacher_pred = pred
                acc: Dict[str, Any] = {"top1": None, "top5": None, "agreement": None}
                if ev["labels"] is not None:
                    acc["top1"] = _topk(logits, ev["labels"], 1)
                    acc["top5"] = _topk(logits, ev["labels"], 5) if spec.num_classes > 5 else None
                if teacher_pred is not None:
                    acc["agreement"] = float((pred == teacher_pred).mean())
                for bs in cfg.batch_sizes:
                    xb = _batch(ev["x"], bs)
                    stats = measure(lambda xb=xb, run=runner: run(xb), bs, cfg.warmup_s, cfg.duration_s, cfg.iterations)
                    row = {"bundle": bundle.name, "model": label, "role": entry["role"],
                           "precision": entry["precision"], "file": loaded, "runtime": runtime,
                           "provider": getattr(runner, "provider", runtime),
                           **acc, **stats.to_dict(), "size_mb": (bundle / entry["file"]).stat().st_size / 1e6,
                           "parameters": entry.get("parameters"), "macs": entry.get("macs")}
                    bundle_rows.append(row)
                    progress.update(len(bundle_rows) / total, len(bundle_rows),
                                    {"model": label, "batch": bs, "p50_ms": round(stats.p50_ms, 3)})
                if cfg.verify_timing and hasattr(runner, "profiled_mean_ms"):
                    checks.append(_timing_check(runner, ev["x"], label, bundle.name, cfg))
                if cfg.operator_profile and hasattr(runner, "operator_profile"):
                    profiles.append({"bundle": bundle.name, "model": label, "batch_size": 1,
                                     "shares": runner.operator_profile(_batch(ev["x"], 1))})
        rows += bundle_rows
    env = environment(cfg.threads)
    env["runtimes"] = runtimes
    env["peak_rss_mb"] = _peak_rss_mb()
    env["torch_imported"] = "torch" in sys.modules
    return BenchResult(rows, verdicts_for(rows), env, evaluation, checks, warnings, profiles)


def _timing_check(runner: Any, x: np.ndarray, label: str, bundle: str, cfg: BenchConfig) -> Dict[str, Any]:
    """Our per-call timing against two independent figures for the same model at batch 1: one
    perf_counter around a whole loop of the same session (no per-call sampling), and onnxruntime's
    own profiler ('model_run' events; it adds per-node overhead, large for sub-millisecond models)."""
    xb = _batch(x, 1)
    runs = 200
    ours = measure(lambda: runner(xb), 1, 0.2, None, iterations=runs).mean_ms
    t0 = time.perf_counter()
    for _ in range(runs):
        runner(xb)
    loop = (time.perf_counter() - t0) * 1e3 / runs
    theirs = runner.profiled_mean_ms(xb, runs=runs)
    return {"bundle": bundle, "model": label, "batch_size": 1, "edgekd_mean_ms": ours, "loop_mean_ms": loop,
            "loop_difference": (ours - loop) / loop, "onnxruntime_profiler_mean_ms": theirs,
            "profiler_difference": (ours - theirs) / theirs}


def verdicts_for(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Speed-up, accuracy change and size ratio of every non-teacher row against its bundle's teacher
    at the same batch size."""
    out = []
    for r in rows:
        # The bundle's first teacher row at this batch size: with several runtimes, the first one's.
        teacher = next((t for t in rows if t["role"] == "teacher" and t["bundle"] == r["bundle"]
                        and t["batch_size"] == r["batch_size"]), None)
        if teacher is None or r["role"] == "teacher":
            continue
        metric = "top1" if r["top1"] is not None else "agreement"
        change = (r[metric] - teacher[metric]) if (metric == "top1") else (r["agreement"] - 1.0)
        out.append({"bundle": r["bundle"], "model": r["model"], "batch_size": r["batch_size"],
                    "speedup_p50": teacher["p50_ms"] / r["p50_ms"], "metric": metric,
                    "accuracy_change": change, "size_ratio": teacher["size_mb"] / r["size_mb"]})
    return out
