"""Static INT8 quantization with ONNX Runtime: QDQ format, per-channel weights, calibrated on
generator images (no real data needed) or on real images when the user has some."""

from __future__ import annotations

import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterator, List, Optional

import numpy as np

from edgekd.cpu import cpu_flags, int8_dot_product
from edgekd.deploy.onnx_export import INPUT_NAME, ort_logits, ort_session
from edgekd.deploy.targets import VNNI_CHOICES, Target
from edgekd.errors import DataError, UsageError
from edgekd.fileio import atomic_path

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class QuantizeOptions:
    calibration: str = "minmax"
    symmetric: bool = False  # TensorRT reads symmetric Q/DQ
    signed_activations: bool = False  # int8 (not uint8) activations: S8S8, what ONNX Runtime's ARM64 kernels favour
    reduce_range: bool = False  # 7-bit weights, for x86 CPUs without VNNI
    per_channel: bool = True
    reason: str = ""  # why this scheme, for the manifest
    kernels_match_device: bool = False  # this machine's ORT INT8 kernels are the device's (same CPU class)

    def describe(self) -> Dict[str, Any]:
        activations = ("int8 symmetric" if self.symmetric else "int8 asymmetric" if self.signed_activations
                       else "uint8 asymmetric")
        return {"format": "QDQ", "activations": activations,
                "weights": ("int7" if self.reduce_range else "int8") + " symmetric"
                           + (" per-channel" if self.per_channel else " per-tensor"),
                "reduce_range": self.reduce_range, "calibration": self.calibration, "reason": self.reason}


def choose_quantization(target: Target, calibration: str = "minmax", vnni: Optional[str] = None,
                        flags: Optional[FrozenSet[str]] = None) -> QuantizeOptions:
    """The INT8 scheme that keeps agreement on the target's kernels. `vnni` overrides the target's
    setting ("detect": the export machine is the device); `flags` are the export machine's CPU flags."""
    if vnni is not None and vnni not in VNNI_CHOICES[1:]:
        raise UsageError(f"--vnni {vnni!r}: use yes, no or detect")
    if vnni and not target.vnni:
        raise UsageError(f"--vnni applies to x86 CPU targets; {target.name} is not one")
    if target.int8_symmetric:
        return QuantizeOptions(calibration, symmetric=True, reason=(
            "TensorRT reads symmetric Q/DQ (int8 activations and weights) and accumulates in int32"))
    if target.int8_activations == "int8":
        return QuantizeOptions(calibration, signed_activations=True, reason=(
            f"{target.name}: int8 activations and int8 per-channel weights (S8S8), the form ONNX Runtime's "
            "ARM64 INT8 kernels are made for"))
    setting = vnni or target.vnni
    if not setting:
        return QuantizeOptions(calibration, reason=f"{target.name}: uint8 activations, int8 per-channel weights "
                               "(ONNX Runtime's default for CPUs)")
    here = int8_dot_product(cpu_flags() if flags is None else flags)
    if setting == "detect":
        has, source = here is not None, f"the export machine's CPU ({here or 'no VNNI/AMX'}), taken as the device"
    else:
        has, source = setting == "yes", f"the device as stated (vnni = {setting})"
    if has:
        reason = (f"{source}: VNNI/AMX multiply u8 x s8 straight into int32, so full-range int8 weights "
                  "cannot saturate")
    else:
        reason = (f"{source}: without VNNI/AMX, ONNX Runtime's U8S8 kernels (VPMADDUBSW) sum pairs of u8 x s8 "
                  "products in int16, which saturates with full-range weights; 7-bit weights (reduce_range) keep "
                  "every pair inside int16")
    x86_here = platform.machine() in ("x86_64", "AMD64")
    return QuantizeOptions(calibration, reduce_range=not has, reason=reason,
                           kernels_match_device=x86_here and (here is not None) == has)


class _ArrayReader:
    """onnxruntime CalibrationDataReader over a float32 NCHW array."""

    def __init__(self, x: np.ndarray, batch: int = 32) -> None:
        self._it: Iterator[Dict[str, np.ndarray]] = ({INPUT_NAME: x[i:i + batch]} for i in range(0, len(x), batch))

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._it, None)

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:  # qdq_loss_debug iterates the reader
        return self._it

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
            activation_type=QuantType.QInt8 if opts.symmetric or opts.signed_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=method,
            extra_options={"ActivationSymmetric": opts.symmetric, "WeightSymmetric": True,
                           "CalibTensorRangeSymmetric": opts.symmetric},
        )
    return out_path


@dataclass
class Int8Report:
    """FP32 vs INT8 on the same images, two ways. `agreement` is the quantized graph computed exactly
    (Q/DQ in float: what the scheme itself gives, and what TensorRT computes), the same on every CPU.
    `kernel_agreement` is this machine's ONNX Runtime INT8 kernels, which differ by CPU: without VNNI
    they saturate. Accuracies are given where labels are."""

    agreement: float
    kernel_agreement: float
    on: str  # which images
    kernels_cpu: str = ""  # this machine's int8 dot-product instruction, or that it has none
    fp32_accuracy: Optional[float] = None
    int8_accuracy: Optional[float] = None
    kernel_int8_accuracy: Optional[float] = None

    @property
    def accuracy_drop(self) -> Optional[float]:
        if self.fp32_accuracy is None or self.int8_accuracy is None:
            return None
        return self.fp32_accuracy - self.int8_accuracy

    def to_dict(self) -> Dict[str, Any]:
        return {"agreement": self.agreement, "kernel_agreement": self.kernel_agreement, "on": self.on,
                "kernels_cpu": self.kernels_cpu,
                "fp32_accuracy": self.fp32_accuracy, "int8_accuracy": self.int8_accuracy,
                "kernel_int8_accuracy": self.kernel_int8_accuracy, "accuracy_drop": self.accuracy_drop}


def compare_int8(fp32_path: Path, int8_path: Path, x: np.ndarray, on: str,
                 labels: Optional[np.ndarray] = None) -> Int8Report:
    a = ort_logits(ort_session(fp32_path), x).argmax(1)
    exact = ort_logits(ort_session(int8_path, optimize=False), x).argmax(1)
    kernels = ort_logits(ort_session(int8_path), x).argmax(1)
    report = Int8Report(float((a == exact).mean()), float((a == kernels).mean()), on,
                        int8_dot_product() or "none")
    if labels is not None:
        report.fp32_accuracy = float((a == labels).mean())
        report.int8_accuracy = float((exact == labels).mean())
        report.kernel_int8_accuracy = float((kernels == labels).mean())
    return report


def drifting_layers(fp32_path: Path, int8_path: Path, x: np.ndarray, top: int = 3) -> List[Dict[str, Any]]:
    """The activations where the INT8 model departs most from the FP32 one: signal-to-quantization-noise
    ratio (dB; lower is worse) of each tensor the two graphs share, FP32 against QDQ, over the images, as
    onnxruntime.quantization.qdq_loss_debug measures it; with the loss of that tensor's own Q/DQ pair."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory() as tmp:
        saved = {}
        for name, path in (("float", fp32_path), ("qdq", int8_path)):
            augmented = Path(tmp) / f"{name}.onnx"
            modify_model_output_intermediate_tensors(str(path), str(augmented))
            saved[name] = collect_activations(str(augmented), _ArrayReader(x.astype(np.float32), batch=len(x)))
    matched = create_activation_matching(saved["qdq"], saved["float"])
    rows = []
    for tensor, m in matched.items():
        if m.get("float") is None or m.get("pre_qdq") is None or m.get("post_qdq") is None:
            continue  # renamed by the pre-processing, or not quantized
        rows.append({"tensor": tensor,
                     "sqnr_db": round(compute_signal_to_quantization_noice_ratio(m["float"], m["post_qdq"]), 1),
                     "own_qdq_sqnr_db": round(compute_signal_to_quantization_noice_ratio(m["pre_qdq"], m["post_qdq"]), 1)})
    return sorted(rows, key=lambda r: r["sqnr_db"])[:top]
