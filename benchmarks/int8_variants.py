"""Issue 14: where an INT8 MobileNetV2 spends its time on this CPU, and which quantization variants move it.

The shipped x86 bundle must be >= 1.2x faster than a hand-made `quantize_static` of the same student. On
AVX-512 VNNI it is 1.19x (export-vs-handmade.md); on an AVX2 CPU without VNNI it is 1.00x. This script asks
why, on whatever CPU runs it: the hand-made QDQ file against the variants ONNX Runtime's quantizer and
OpenVINO offer (QOperator, 7-bit weights, depthwise convolutions left in FP32, U8U8, S8S8, a fixed batch-1
graph, OpenVINO's CPU plugin), all timed in one process, batch 1, alternated over rounds; and ONNX Runtime's
profiler splits the convolution time into depthwise and the rest (pointwise and the stem), FP32 and INT8.
The weights are a 1-iteration run (latency does not depend on them).

    python benchmarks/int8_variants.py --name int8-variants-avx2   # -> results/NAME.{json,md}
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from export_vs_handmade import hand_made, make_run, quantize  # noqa: E402  (the same run, hand-made file, quantizer)

RESULTS = Path(__file__).parent / "results"


def _batch_one(src: Path, out: Path) -> Path:
    import onnx

    m = onnx.load(str(src))
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, str(out))
    return out


def _grouped(node: Any) -> bool:
    """A convolution node with groups (MobileNetV2's are depthwise)."""
    return any(a.name == "group" and a.i > 1 for a in node.attribute)


def variants(fp32: Path, int8: Path, root: Path, calib: np.ndarray) -> Dict[str, Path]:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType

    depthwise = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv" and _grouped(n)]
    return {
        "fp32": fp32,
        "hand-made int8 (QDQ U8S8 per-channel)": int8,
        # each the hand-made settings (export_vs_handmade.quantize) with one changed
        "QOperator": quantize(fp32, root / "qop.onnx", calib, quant_format=QuantFormat.QOperator),
        "7-bit weights (reduce_range)": quantize(fp32, root / "rr.onnx", calib, reduce_range=True),
        "depthwise left in FP32": quantize(fp32, root / "nodw.onnx", calib, nodes_to_exclude=depthwise),
        "U8U8": quantize(fp32, root / "u8u8.onnx", calib, weight_type=QuantType.QUInt8),
        "S8S8": quantize(fp32, root / "s8s8.onnx", calib, activation_type=QuantType.QInt8),
        "fixed batch 1": _batch_one(int8, root / "b1.onnx"),
    }


def _ort(path: Path, threads: int, profile: str = "") -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = threads, 3
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _openvino(path: Path, threads: int) -> Callable[[np.ndarray], Any]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                          "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def conv_split(path: Path, threads: int, x: np.ndarray, runs: int = 200) -> Dict[str, float]:
    """ms per run in depthwise convolutions and in the other convolutions, by ONNX Runtime's profiler."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.log_severity_level = threads, 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        kind = {n.name: "depthwise" if _grouped(n) else "other"
                for n in onnx.load(so.optimized_model_filepath).graph.node if "Conv" in n.op_type}
        sess = _ort(path, threads, str(Path(tmp) / "prof"))
        for _ in range(runs):
            sess.run(None, {"input": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    total: Dict[str, float] = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time"):
            total[kind.get(name[:-len("_kernel_time")], "not a convolution")] += e["dur"]
    return {k: v / runs / 1000 for k, v in total.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=1.5)
    ap.add_argument("--name", default="int8-variants")
    args = ap.parse_args()
    from edgekd.bench.latency import measure
    from edgekd.cpu import cpu_summary

    cpu = cpu_summary()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = make_run(root, "mobilenet_v2")
        hand = hand_made(run, root / "hand")
        calib = np.load(run / "calib.npz")["x"][:128].astype(np.float32)
        files = variants(hand["student fp32"], hand["student int8"], root, calib)
        x = calib[:1]
        runners: Dict[str, Callable[[np.ndarray], Any]] = {}
        for label, path in files.items():
            sess = _ort(path, args.threads)
            runners[f"{label} onnxruntime"] = lambda x, s=sess: s.run(None, {"input": x})
        try:
            runners["hand-made int8 openvino"] = _openvino(files["hand-made int8 (QDQ U8S8 per-channel)"], args.threads)
        except ImportError:
            print("openvino not installed: its row is left out", flush=True)
        p50: Dict[str, List[float]] = {k: [] for k in runners}
        for _ in range(args.rounds):
            for label, f in runners.items():
                p50[label].append(measure(lambda f=f: f(x), 1, 0.5, args.duration).p50_ms)
        hand_label = "hand-made int8 (QDQ U8S8 per-channel) onnxruntime"
        rows = [{"model": label, "p50_ms": float(np.median(v)), "rounds_p50_ms": v,
                 "vs_handmade_int8": float(np.median(np.array(p50[hand_label]) / np.array(v)))}
                for label, v in p50.items()]
        split = {label: conv_split(files[label], args.threads, x) for label in ("fp32", "hand-made int8 (QDQ U8S8 per-channel)")}
    out = {"cpu": cpu["cpu"], "cpu_flags": cpu["flags"], "cpu_count": os.cpu_count(), "threads": args.threads,
           "rounds": args.rounds, "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows, "conv_split_ms": split}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# INT8 variants of a MobileNetV2 at 224, batch 1, {args.threads} threads", "",
             f"CPU {out['cpu']} ({out['cpu_count']} cores), flags {' '.join(out['cpu_flags'])}. "
             f"`python benchmarks/int8_variants.py --name {args.name}` ({out['date']}): {args.rounds} alternated rounds, "
             "median p50; ratio = median of same-round ratios (>1: faster than the hand-made INT8 file).", "",
             "| model | p50 ms | vs hand-made INT8 |", "|---|---|---|"]
    lines += [f"| {r['model']} | {r['p50_ms']:.3f} | {r['vs_handmade_int8']:.2f}x |" for r in rows]
    lines += ["", "Convolution time by kind (ONNX Runtime profiler, 200 runs, ms per run):", "",
              "| file | depthwise | other convolutions | not a convolution |", "|---|---|---|---|"]
    lines += [f"| {label} | {v.get('depthwise', 0):.3f} | {v.get('other', 0):.3f} | {v.get('not a convolution', 0):.3f} |"
              for label, v in split.items()]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
