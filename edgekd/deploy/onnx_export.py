"""PyTorch -> ONNX at a target's opset, with the ModelSpec in the metadata and a parity check."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from edgekd.errors import QualityError
from edgekd.fileio import atomic_path
from edgekd.spec import ModelSpec

INPUT_NAME, OUTPUT_NAME = "input", "logits"
# Parity tolerance between ONNX Runtime and PyTorch in FP32: |ort - torch| <= ATOL + RTOL * |torch|.
PARITY_ATOL, PARITY_RTOL = 1e-4, 1e-3


@dataclass
class ParityReport:
    max_abs_diff: float
    argmax_agreement: float
    images: int
    atol: float = PARITY_ATOL
    rtol: float = PARITY_RTOL

    def to_dict(self) -> Dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "argmax_agreement": self.argmax_agreement,
                "images": self.images, "tolerance": f"atol {self.atol} + rtol {self.rtol}"}


def export_onnx(model: nn.Module, spec: ModelSpec, path: Path, opset: int,
                metadata: Optional[Dict[str, Any]] = None) -> Path:
    """Write `model` as ONNX with a dynamic batch axis; the file only appears once it is complete."""
    import onnx

    model = model.float().eval().cpu()
    dummy = torch.zeros(1, *spec.input_shape)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        # dynamo=False: the TorchScript exporter still emits opsets <= 17 (Jetson Nano needs 13).
        torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        proto = onnx.load(str(tmp))
        props = {"edgekd.spec": json.dumps(spec.to_dict())}
        for key, value in (metadata or {}).items():
            props[f"edgekd.{key}"] = value if isinstance(value, str) else json.dumps(value, default=str)
        for key, value in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "edgekd"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


def read_metadata(path: Path) -> Dict[str, Any]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    out: Dict[str, Any] = {}
    for p in proto.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out


def ort_session(path: Path, threads: int = 0, optimize: bool = True) -> Any:
    """optimize=False keeps the graph as written: a QDQ model then runs DequantizeLinear -> float op ->
    QuantizeLinear, the exact arithmetic of the quantization scheme, with no CPU-specific INT8 kernel."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_logits(session: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([session.run(None, {INPUT_NAME: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def check_parity(model: nn.Module, onnx_path: Path, x: np.ndarray) -> ParityReport:
    """Compare ONNX Runtime with PyTorch on real-shaped inputs; raise QualityError past tolerance."""
    model = model.float().eval().cpu()
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(x[i:i + 256])).numpy() for i in range(0, len(x), 256)])
    got = ort_logits(ort_session(onnx_path), x)
    diff = np.abs(got - ref)
    report = ParityReport(float(diff.max()), float((got.argmax(1) == ref.argmax(1)).mean()), len(x))
    if not np.all(diff <= PARITY_ATOL + PARITY_RTOL * np.abs(ref)):
        raise QualityError(f"ONNX Runtime differs from PyTorch by up to {report.max_abs_diff:.2e} on {onnx_path.name} "
                           f"(tolerance atol {PARITY_ATOL} + rtol {PARITY_RTOL}): the export is wrong; report it")
    return report
