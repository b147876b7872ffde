"""ONNX Runtime's offline-optimised model beside each of a bundle's ONNX files (ONNX Runtime targets).

`X.opt.onnx` is `X.onnx` after ONNX Runtime's graph optimisations up to the *extended* level (constant
folding, QDQ -> QLinear* fusions, Conv + activation fusions for the CPU execution provider). A session
then starts without re-running those passes: 1.05-1.6x faster for MobileNetV2 and ResNet-18 at 224 here
(FP32 and INT8), at the same latency (benchmarks/results/ort-offline.md). Not the *all* level: its NCHWc layout transforms are made for
the vector width of the CPU that ran them, and are redone at load on the device anyway.

Not ONNX Runtime's own .ort format: a full onnxruntime build (pip, what edgekd bench and the README's
device commands use) does not redo all its runtime optimisations for an .ort file: MobileNetV2 FP32 ran
2.4x slower from one made at this level, and INT8 5x slower from one made at the basic level (same page).
The .ort format is for ONNX Runtime's reduced-size (mobile) builds, which edgekd does not deploy to. Extended-level
files hold com.microsoft operators: only ONNX Runtime runs them; OpenVINO and TensorRT read X.onnx.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from edgekd.errors import QualityError

OPTIMIZATION = "extended"
SUFFIX = ".opt.onnx"
# Fused INT8 kernels round a little differently from the unfused graph they are checked against.
MIN_AGREEMENT = 0.98


def optimized_name(onnx_file: str) -> str:
    return onnx_file.removesuffix(".onnx") + SUFFIX


def _session(path: Path, level: Any = None, save_to: Optional[Path] = None, platform: str = "x86") -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = level if level is not None else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if save_to is not None:
        opts.optimized_model_filepath = str(save_to)
    # Whether int8-activation (S8S8) QDQ groups fuse into QLinear kernels: ONNX Runtime decides by the
    # CPU it runs on (yes on ARM, no on x86), so a file made on x86 for ARM must say so, as
    # onnxruntime.tools.convert_onnx_models_to_ort --target_platform arm does; and the parity check loads
    # both files the same way, as the target does. Otherwise, on an x86 CPU without VNNI, the fused S8S8
    # kernels (u8 x s8 pairs summed in int16, which can saturate) were compared against the unfused float
    # path and disagreed on 6% of images (AMD EPYC, AVX2 only), though nothing in the graph had changed.
    opts.add_session_config_entry("session.qdqisint8allowed", "1" if platform == "arm" else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _load_ms(path: Path, platform: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _session(path, platform=platform)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def write_optimized(onnx_path: Path, out_path: Path, x: np.ndarray, platform: str = "x86") -> Dict[str, Any]:
    """Write `out_path` from `onnx_path` (inside a bundle being assembled, which is moved into place only
    when complete), check it computes what the ONNX file computes on `x` (both loaded as a device loads
    them on `platform`, at the *all* level), and time both files' session creation. Returns the check for the
    manifest; a file that disagrees is deleted (QualityError)."""
    import onnxruntime as ort

    _session(onnx_path, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, save_to=out_path, platform=platform)
    a, b = _session(onnx_path, platform=platform), _session(out_path, platform=platform)
    xs = x.astype(np.float32)
    ya = np.concatenate([a.run(None, {a.get_inputs()[0].name: xs[i:i + 1]})[0] for i in range(len(xs))])
    yb = np.concatenate([b.run(None, {b.get_inputs()[0].name: xs[i:i + 1]})[0] for i in range(len(xs))])
    diff = float(np.abs(ya - yb).max()) if len(xs) else 0.0
    agree = float((ya.argmax(1) == yb.argmax(1)).mean()) if len(xs) else 1.0
    if not agree >= MIN_AGREEMENT or not np.isfinite(diff):
        out_path.unlink(missing_ok=True)
        raise QualityError(f"{out_path.name} disagrees with {onnx_path.name} on {1 - agree:.1%} of {len(xs)} images: "
                           "onnxruntime's offline optimisation changed the model; export again without it "
                           '(ort_optimized = "" in a copy of the target file)')
    return {"file": out_path.name, "from": onnx_path.name, "optimization": OPTIMIZATION, "platform": platform,
            "onnxruntime": ort.__version__, "max_abs_diff": diff, "argmax_agreement": agree, "on": len(xs),
            "load_ms": {"onnx": round(_load_ms(onnx_path, platform), 2),
                        "optimized": round(_load_ms(out_path, platform), 2)}}
