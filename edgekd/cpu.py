"""What this CPU can do, as the numeric libraries will see it. Torch-free: the device side imports it.

Two views, because the libraries differ in what they obey:
- `cpu_flags()`: the hardware as CPUID reports it. ONNX Runtime's kernels dispatch on CPUID alone, so
  INT8 decisions (VNNI or not) use this view. /proc/cpuinfo alone is not enough: an emulator or a VM
  may pass the host's flags through there while CPUID (what code actually dispatches on) says less.
- `torch_cpu_flags()`: the same minus what ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA cap. PyTorch and
  oneDNN obey those caps, so bf16 autocast under `ONEDNN_MAX_CPU_ISA=AVX2` would run on slow fallback
  paths: the distillation plan must choose fp32 there, exactly as it would on an AVX2-only machine.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Dict, FrozenSet, Optional, Tuple

# Flags that decide precision and INT8 kernels; recorded with every benchmark row and manifest.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
                  "amx_bf16", "amx_int8", "asimddp", "i8mm", "bf16")
# Instructions that multiply-accumulate 8-bit products straight into int32, with no int16
# intermediate that can saturate (the VPMADDUBSW path of x86 AVX2/AVX-512 without VNNI).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
# oneDNN ISA names, weakest first; a cap at one of them hides every flag that needs a later one.
_ONEDNN_ISA_ORDER = ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni",
                     "avx512_core_bf16", "avx10_1_512", "avx512_core_amx", "avx10_1_512_amx",
                     "avx512_core_amx_fp16", "avx10_1_512_amx_fp16", "all")
_NEEDS_ISA = {"avx_vnni": "avx2_vnni", "avx512f": "avx512_core", "avx512bw": "avx512_core",
              "avx512_vnni": "avx512_core_vnni", "avx512_bf16": "avx512_core_bf16",
              "amx_bf16": "avx512_core_amx", "amx_int8": "avx512_core_amx"}


def _proc_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _numpy_cpuid() -> Dict[str, bool]:
    """numpy's own CPUID probe (the features its dispatcher found); empty where unavailable."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as feats
        except ImportError:
            return {}
    return dict(feats)


# x86-64 machine code for cpuid(leaf, subleaf, out[4]) under the System V ABI (rdi, rsi, rdx):
# push rbx; mov eax, edi; mov ecx, esi; mov r8, rdx; cpuid; store eax, ebx, ecx, edx at r8; pop rbx; ret.
_CPUID_CODE = bytes.fromhex("5389f889f14989d00fa241890041895804418948084189500c5bc3")
_cpuid_fn: Any = None


def _cpuid(leaf: int, subleaf: int = 0) -> Optional[Tuple[int, int, int, int]]:
    """The CPUID instruction itself (eax, ebx, ecx, edx), for the features numpy's probe does not know
    (AVX-VNNI): /proc/cpuinfo shows the host's flags even under an emulator. None where it cannot run."""
    global _cpuid_fn
    if platform.machine() not in ("x86_64", "AMD64") or os.name != "posix":
        return None
    try:
        import ctypes

        if _cpuid_fn is None:
            import mmap

            buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            buf.write(_CPUID_CODE)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
            fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32 * 4))(addr)
            _cpuid_fn = (fn, buf)  # the buffer must outlive the function
        out = (ctypes.c_uint32 * 4)()
        _cpuid_fn[0](leaf, subleaf, out)
        return tuple(out)  # type: ignore[return-value]
    except (OSError, ValueError, TypeError, AttributeError):  # no executable mapping allowed here
        return None


def _has_avx_vnni() -> Optional[bool]:
    """CPUID leaf 7 subleaf 1, EAX bit 4 (needs max leaf >= 7); None when CPUID cannot be asked."""
    top = _cpuid(0)
    if top is None:
        return None
    if top[0] < 7:
        return False
    regs = _cpuid(7, 1)
    return None if regs is None else bool(regs[0] >> 4 & 1)


def cpu_flags() -> FrozenSet[str]:
    """Linux flag names of this CPU, checked against CPUID where numpy can tell."""
    flags = set()
    for line in _proc_cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    cpuid = _numpy_cpuid()
    if cpuid:
        for linux, np_name in (("avx2", "AVX2"), ("avx512f", "AVX512F"), ("avx512_vnni", "AVX512VNNI"),
                               ("avx512_bf16", "AVX512BF16")):
            if np_name in cpuid and not cpuid[np_name]:
                flags.discard(linux)
        if "avx512f" not in flags:  # no AVX-512 foundation: no AVX-512 extension, and no AMX part lacks it
            flags -= {f for f in flags if f.startswith(("avx512", "amx"))}
        if "avx2" not in flags:
            flags.discard("avx_vnni")
    if "avx_vnni" in flags and _has_avx_vnni() is False:  # numpy cannot tell; CPUID can
        flags.discard("avx_vnni")
    return frozenset(flags)


def isa_caps() -> Dict[str, str]:
    return {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
            if os.environ.get(k)}


def torch_cpu_flags() -> FrozenSet[str]:
    """cpu_flags() as PyTorch/oneDNN will use them under the ISA caps set in the environment."""
    flags = set(cpu_flags())
    caps = isa_caps()
    cap = (caps.get("ONEDNN_MAX_CPU_ISA") or caps.get("DNNL_MAX_CPU_ISA") or "").lower()
    if cap in _ONEDNN_ISA_ORDER:
        limit = _ONEDNN_ISA_ORDER.index(cap)
        flags -= {f for f, isa in _NEEDS_ISA.items() if _ONEDNN_ISA_ORDER.index(isa) > limit}
    if caps.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2"):
        flags -= {f for f in flags if f.startswith(("avx512", "amx"))}
    return frozenset(flags)


def int8_dot_product(flags: Optional[FrozenSet[str]] = None) -> Optional[str]:
    """The instruction that makes 8-bit dot products exact and fast here, or None (e.g. x86 without VNNI)."""
    flags = cpu_flags() if flags is None else flags
    return next((f for f in INT8_DOT_FLAGS if f in flags), None)


def cpu_name() -> str:
    for line in _proc_cpuinfo().splitlines():
        if line.lower().startswith(("model name", "hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_summary() -> Dict[str, Any]:
    """What a benchmark row or a manifest records about the CPU it ran on."""
    flags = cpu_flags()
    return {"cpu": cpu_name(), "machine": platform.machine(), "cores": os.cpu_count(),
            "flags": [f for f in RELEVANT_FLAGS if f in flags],
            "torch_flags": [f for f in RELEVANT_FLAGS if f in torch_cpu_flags()],
            "int8_dot_product": int8_dot_product(flags), "isa_caps": isa_caps()}
