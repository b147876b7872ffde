"""Issue 14 point 2: what ONNX Runtime's offline optimisation gives a bundle, on this CPU.

For MobileNetV2 and ResNet-18 at 224 (torchvision, 10 classes, random weights: latency does not depend
on them), FP32 and edgekd's INT8 (deploy.quantize.quantize_int8, QDQ per-channel, Gaussian calibration):
the plain ONNX file, the file optimised offline at the extended level as ONNX (what x86/ARM bundles ship
as X.opt.onnx) and in ONNX Runtime's own .ort format at the basic and extended levels. Each is loaded the
way a device loads it (a pip onnxruntime, level all), timed for session creation and batch-1 latency,
every variant once per round, rounds alternated, medians over rounds.

    python benchmarks/ort_offline.py --threads 2 --rounds 5   # -> results/ort-offline.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
import torchvision

from edgekd.bench.latency import measure
from edgekd.cpu import cpu_summary
from edgekd.deploy.quantize import QuantizeOptions, quantize_int8

RESULTS = Path(__file__).parent / "results"
ARCHS = {"mobilenet_v2": torchvision.models.mobilenet_v2, "resnet18": torchvision.models.resnet18}


def _save(src: Path, dst: Path, level: str, ort_format: bool) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    opts.optimized_model_filepath = str(dst)
    if ort_format:
        opts.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def _files(root: Path, arch: str) -> Dict[str, Path]:
    torch.manual_seed(0)
    model = ARCHS[arch](num_classes=10).eval()
    fp32 = root / f"{arch}.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(fp32), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    int8 = quantize_int8(fp32, root / f"{arch}.int8.onnx",
                         np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32),
                         QuantizeOptions(per_channel=True))
    out: Dict[str, Path] = {}
    for precision, src in (("fp32", fp32), ("int8", int8)):
        stem = src.name.removesuffix(".onnx")
        out[f"{precision} plain .onnx"] = src
        for level, fmt, suffix in (("extended", False, ".opt.onnx"), ("basic", True, ".basic.ort"),
                                   ("extended", True, ".ext.ort")):
            dst = root / (stem + suffix)
            _save(src, dst, level, fmt)
            name = {".opt.onnx": "offline extended .onnx (shipped)", ".basic.ort": ".ort basic",
                    ".ext.ort": ".ort extended"}[suffix]
            out[f"{precision} {name}"] = dst
    return out


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cpu = cpu_summary()
    rows: List[Dict[str, Any]] = []
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            files = _files(Path(tmp), arch)
            load: Dict[str, List[float]] = {k: [] for k in files}
            p50: Dict[str, List[float]] = {k: [] for k in files}
            for _ in range(args.rounds):
                for key, path in files.items():
                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = args.threads
                    start = time.perf_counter()
                    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                    load[key].append((time.perf_counter() - start) * 1e3)
                    name = sess.get_inputs()[0].name
                    p50[key].append(measure(lambda s=sess, n=name: s.run(None, {n: x}), 1, warmup_s=0.3, duration_s=1.0).p50_ms)
            for key in files:
                base = key.split(" ")[0] + " plain .onnx"
                rows.append({"arch": arch, "model": key, "p50_ms": statistics.median(p50[key]),
                             "load_ms": statistics.median(load[key]),
                             "latency_vs_plain": statistics.median(b / a for a, b in zip(p50[key], p50[base])),
                             "load_vs_plain": statistics.median(b / a for a, b in zip(load[key], load[base])),
                             "rounds": args.rounds, "threads": args.threads, "onnxruntime": ort.__version__,
                             "cpu": cpu["cpu"], "cpu_flags": cpu["flags"]})
                print(json.dumps(rows[-1]), file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ort-offline.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"# ONNX Runtime offline optimisation, batch 1, {args.threads} threads", "",
             f"CPU {cpu['cpu']} ({cpu.get('cores', '?')} cores), flags {' '.join(cpu['flags'])}; onnxruntime "
             f"{ort.__version__}. `python benchmarks/ort_offline.py --threads {args.threads} --rounds {args.rounds}`: "
             "each file loaded as a pip onnxruntime loads it (level all), once per round, rounds alternated; "
             "medians over rounds, ratios are medians of same-round ratios (>1: faster than the plain file).", "",
             "| model | file | p50 ms | latency vs plain | session load ms | load vs plain |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} 224 | {r['model']} | {r['p50_ms']:.3f} | {r['latency_vs_plain']:.2f}x | "
                     f"{r['load_ms']:.1f} | {r['load_vs_plain']:.2f}x |")
    (RESULTS / "ort-offline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
