"""Static INT8 quantization with ONNX Runtime: QDQ format, per-channel weights, calibrated on
generator images (no real data needed) or on real images when the user has some."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np

from edgekd.deploy.onnx_export import INPUT_NAME, ort_logits, ort_session
from edgekd.errors import DataError, UsageError
from edgekd.fileio import atomic_path

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class QuantizeOptions:
    calibration: str = "minmax"
    symmetric: bool = False  # TensorRT reads symmetric Q/DQ
    reduce_range: bool = False  # for x86 CPUs without VNNI
    per_channel: bool = True


class _ArrayReader:
    """onnxruntime CalibrationDataReader over a float32 NCHW array."""

    def __init__(self, x: np.ndarray, batch: int = 32) -> None:
        self._it: Iterator[Dict[str, np.ndarray]] = ({INPUT_NAME: x[i:i + batch]} for i in range(0, len(x), batch))

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by quantize_static
        raise NotImplementedError


def check_calibration_set(x: np.ndarray, input_shape: tuple) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"calibration images have shape {tuple(x.shape[1:])}, the model needs {tuple(input_shape)}")
    if len(x) < 8:
        raise DataError(f"only {len(x)} calibration images: give at least 8 (more is better; 256-1024 is usual)")
    if not np.isfinite(x).all():
        raise DataError("calibration images contain NaN or Inf")


def quantize_int8(fp32_path: Path, out_path: Path, calib: np.ndarray, opts: QuantizeOptions) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if opts.calibration not in CALIBRATION_METHODS:
        raise UsageError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[opts.calibration]
    with tempfile.TemporaryDirectory() as tmpdir, atomic_path(out_path) as tmp:
        pre = Path(tmpdir) / "pre.onnx"
        # Shape inference and graph optimisation first, as onnxruntime recommends.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(tmp), _ArrayReader(calib.astype(np.float32)),
            quant_format=QuantFormat.QDQ, per_channel=opts.per_channel, reduce_range=opts.reduce_range,
            activation_type=QuantType.QInt8 if opts.symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=method,
            extra_options={"ActivationSymmetric": opts.symmetric, "WeightSymmetric": True,
                           "CalibTensorRangeSymmetric": opts.symmetric},
        )
    return out_path


@dataclass
class Int8Report:
    agreement: float  # FP32 vs INT8 argmax agreement
    on: str  # which images
    fp32_accuracy: Optional[float] = None
    int8_accuracy: Optional[float] = None

    @property
    def accuracy_drop(self) -> Optional[float]:
        if self.fp32_accuracy is None or self.int8_accuracy is None:
            return None
        return self.fp32_accuracy - self.int8_accuracy

    def to_dict(self) -> Dict[str, Any]:
        return {"agreement": self.agreement, "on": self.on, "fp32_accuracy": self.fp32_accuracy,
                "int8_accuracy": self.int8_accuracy, "accuracy_drop": self.accuracy_drop}


def compare_int8(fp32_path: Path, int8_path: Path, x: np.ndarray, on: str,
                 labels: Optional[np.ndarray] = None) -> Int8Report:
    a = ort_logits(ort_session(fp32_path), x).argmax(1)
    b = ort_logits(ort_session(int8_path), x).argmax(1)
    report = Int8Report(float((a == b).mean()), on)
    if labels is not None:
        report.fp32_accuracy = float((a == labels).mean())
        report.int8_accuracy = float((b == labels).mean())
    return report
