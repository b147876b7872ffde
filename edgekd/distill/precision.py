"""Pick device, autocast dtype and memory format from what the hardware has (never assumed)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch
import torch.nn as nn

from edgekd.cpu import cpu_flags, torch_cpu_flags
from edgekd.errors import UsageError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype by name


@dataclass(frozen=True)
class ExecutionPlan:
    device: torch.device
    dtype: Optional[torch.dtype]  # autocast dtype; None = fp32
    channels_last: bool
    reason: str

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def module(self, m: nn.Module) -> nn.Module:
        """`m` in this plan's memory format (in place, as nn.Module.to is)."""
        return m.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        """`x` as a model under this plan takes it: fp32 models get bf16 images as float."""
        if self.dtype is None and x.dtype != torch.float32:
            x = x.float()
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @property
    def needs_grad_scaler(self) -> bool:
        return self.dtype is torch.float16 and self.device.type == "cuda"


def plan_execution(device: str = "auto", precision: str = "auto", channels_last: str = "auto") -> ExecutionPlan:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but PyTorch sees no CUDA GPU: use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise UsageError(f"--device {device!r}: use auto, cpu or cuda")
    dev = torch.device(device)
    # The flags PyTorch will use: under ONEDNN_MAX_CPU_ISA=AVX2 a bf16-capable CPU must plan as an AVX2 one.
    flags = torch_cpu_flags() if dev.type == "cpu" else set()
    if precision == "auto":
        if dev.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            reason = f"CUDA GPU: {precision} autocast"
        elif flags & {"avx512_bf16", "amx_bf16"}:
            precision = "bf16"
            reason = "CPU has " + "+".join(sorted(flags & {"avx512_bf16", "amx_bf16"})) + ": bf16 autocast"
        else:
            precision = "fp32"
            reason = "CPU without bf16 instructions" + (" (as capped by the environment)" if "avx512_bf16" in cpu_flags() else "") + ": fp32"
    else:
        reason = f"{precision} as asked"
    if precision == "fp16" and dev.type == "cpu":
        raise UsageError("fp16 autocast is for CUDA; on a CPU use --precision bf16 or fp32")
    dtype = DTYPES[precision]
    if channels_last == "auto":
        # channels_last pays with reduced-precision kernels (oneDNN on CPU, tensor cores on GPU).
        use_cl = dtype is not None
    else:
        use_cl = channels_last in ("on", "true", "1", True)
    return ExecutionPlan(dev, dtype, use_cl, reason + (", channels_last" if use_cl else ""))
