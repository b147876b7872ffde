"""Export benchmark (issue 4): model size and ONNX Runtime CPU latency of teacher FP32, student FP32
and student INT8 at 1x3x224x224 (ResNet-34 -> MobileNetV2) and at the Fashion-MNIST shapes (demo
LeNet-5 -> LeNet-5-half), plus the INT8 accuracy drop on real Fashion-MNIST with data-free
(generator) versus real calibration.

    python benchmarks/export_latency.py --run /tmp/edgekd-quality/adversarial-floor
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from edgekd.bench.core import BenchConfig, bench_bundles
from edgekd.deploy.bundle import ExportConfig, export_bundle
from edgekd.deploy.targets import get_target
from edgekd.models.checkpoint import save_checkpoint
from edgekd.models.registry import create_model
from edgekd.spec import ModelSpec

RESULTS = Path(__file__).parent / "results"


def _fake_run_224(root: Path) -> Path:
    """A run directory with randomly initialised ResNet-34 teacher and MobileNetV2 student plus a
    generator: latency and size do not depend on the weights (accuracy here means nothing)."""
    from edgekd.distill.config import resolve_config
    from edgekd.distill.loop import distill
    from edgekd.models.checkpoint import load_model

    torch.manual_seed(0)
    spec = ModelSpec("resnet34", 10, 3, (224, 224))
    save_checkpoint(root / "resnet34.pt", create_model("resnet34", 10, 3).eval(), spec)
    cfg = resolve_config("adversarial", overrides={"student": "mobilenet_v2", "iterations": 1, "batch_size": 8,
                                                   "s_steps": 1, "calib_images": 64, "eval_every_s": 1e9})
    distill(load_model(root / "resnet34.pt"), cfg, root / "run224")
    return root / "run224"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a distill run of the demo teacher (for the Fashion-MNIST rows)")
    ap.add_argument("--duration", type=float, default=3.0)
    args = ap.parse_args()
    out = {"command": "python " + " ".join(sys.argv), "latency": [], "int8_calibration": []}
    bench = BenchConfig(batch_sizes=(1,), warmup_s=1.0, duration_s=args.duration, verify_timing=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run224 = _fake_run_224(tmp)
        for name, run, data in (("resnet34->mobilenet_v2 224", run224, None),
                                ("lenet5->lenet5-half fmnist", Path(args.run), "fashion-mnist")):
            b = tmp / name.split()[0].replace(">", "")
            export_bundle(run, ExportConfig(get_target("x86-cpu"), "int8", calib_count=256), b)
            res = bench_bundles([b], BenchConfig(**{**bench.__dict__, "data": data, "max_images": 2000}))
            for r in res.rows:
                out["latency"].append({"setting": name, **{k: r[k] for k in ("model", "size_mb", "p50_ms", "p90_ms",
                                                                          "mean_ms", "top1", "agreement")}})
            out.setdefault("timing_check", []).extend({"setting": name, **c} for c in res.timing_check)
        run = Path(args.run)
        for label, calib_data in (("data-free (generator images)", None), ("real (512 Fashion-MNIST *training* images)", "fashion-mnist:train")):
            b = tmp / f"cal-{'real' if calib_data else 'gen'}"
            res = export_bundle(run, ExportConfig(get_target("x86-cpu"), "int8", calib_count=512, calib_data=calib_data,
                                                  eval_data="fashion-mnist", force=True), b)
            out["int8_calibration"].append({"calibration": label, **res.manifest["checks"]["int8_real"],
                                            "agreement_synthetic": res.manifest["checks"]["int8"]["agreement"]})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps(out, indent=2) + "\n")
    md = ["# Export: size and ONNX Runtime CPU latency (batch 1, x86-cpu target)", "",
          f"Command: `{out['command']}`. 224 px models are randomly initialised (latency/size only).", "",
          "| setting | model | size MB | p50 ms | p90 ms | top-1 (FMNIST) |", "|---|---|---|---|---|---|"]
    for r in out["latency"]:
        top1 = f"{r['top1']:.2%}" if r["top1"] is not None else "-"
        md.append(f"| {r['setting']} | {r['model']} | {r['size_mb']:.2f} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {top1} |")
    md += ["", "| INT8 calibration | FP32 accuracy | INT8 accuracy | drop | FP32/INT8 agreement (synthetic) |",
           "|---|---|---|---|---|"]
    for r in out["int8_calibration"]:
        md.append(f"| {r['calibration']} | {r['fp32_accuracy']:.2%} | {r['int8_accuracy']:.2%} | "
                  f"{r['accuracy_drop']:+.2%} | {r['agreement_synthetic']:.2%} |")
    md += ["", "| timing check | model | edgekd mean ms | loop mean ms | onnxruntime profiler mean ms |", "|---|---|---|---|---|"]
    for c in out.get("timing_check", []):
        md.append(f"| {c['setting']} | {c['model']} | {c['edgekd_mean_ms']:.3f} | {c['loop_mean_ms']:.3f} "
                  f"({c['loop_difference']:+.1%}) | {c['onnxruntime_profiler_mean_ms']:.3f} ({c['profiler_difference']:+.1%}) |")
    (RESULTS / "export.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
