"""INT8 on a CPU without VNNI, for real: ONNX Runtime's kernels run under qemu-user emulating a Haswell
(AVX2, no AVX-512, no VNNI), whatever CPU runs the suite. .ci/run installs Debian's qemu-user."""

import json
import platform
import shutil
import subprocess
import sys

import pytest

from edgekd.deploy.bundle import ExportConfig, export_bundle
from edgekd.deploy.targets import get_target

QEMU = shutil.which("qemu-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None or platform.machine() != "x86_64",
                                reason="needs qemu-user on x86_64 (apt-get install qemu-user)")

ON_HASWELL = """
import json, sys
from pathlib import Path
import numpy as np
from edgekd.bench.core import BenchConfig, bench_bundles
from edgekd.cpu import cpu_summary
from edgekd.deploy.ort_optimize import write_optimized
from edgekd.deploy.quantize import compare_int8
out = {"cpu": cpu_summary()}
pi5 = Path(sys.argv[1])
check = write_optimized(pi5 / "student.int8.onnx", pi5.parent / "on-haswell.opt.onnx",
                        np.load(pi5 / "calib.npy")[:32], "arm")
out["pi5"] = check["argmax_agreement"]
for b in map(Path, sys.argv[2:]):
    x = np.load(b / "synthetic.npz")["x"]
    r = compare_int8(b / "student.onnx", b / "student.int8.onnx", x, "held-out")
    res = bench_bundles([b], BenchConfig(batch_sizes=(1,), warmup_s=0.0, duration_s=None, iterations=2,
                                         verify_timing=False, runtime="onnxruntime"))
    out[b.name] = {"exact": r.agreement, "kernels": r.kernel_agreement, "warnings": res.warnings}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, run_dir):
    tmp = tmp_path_factory.mktemp("kinds")
    for vnni in ("yes", "no"):
        export_bundle(run_dir, ExportConfig(get_target("x86-cpu"), "int8", calib_count=64,
                                                min_int8_agreement=0.0, vnni=vnni), tmp / f"vnni-{vnni}")
    export_bundle(run_dir, ExportConfig(get_target("raspberry-pi-5"), "int8", calib_count=64, min_int8_agreement=0.0),
                  tmp / "pi5")
    return tmp


def test_int8_on_an_avx2_cpu_without_vnni(bundles):
    proc = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", ON_HASWELL, str(bundles / "pi5"),
                           str(bundles / "vnni-yes"), str(bundles / "vnni-no")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["cpu"]["int8_dot_product"] is None and "avx512f" not in got["cpu"]["flags"]
    # 7-bit weights: the AVX2 kernels compute exactly what the quantized graph says.
    no = got["vnni-no"]
    assert abs(no["kernels"] - no["exact"]) <= 0.02, got
    assert no["warnings"] == []
    # Full-range weights on this CPU: bench says the kernels can saturate, and what to do.
    assert len(got["vnni-yes"]["warnings"]) == 1 and "--vnni no" in got["vnni-yes"]["warnings"][0]
    # An ARM (S8S8) bundle made on such a CPU: its offline-optimised file passes its parity check, both
    # files run as the ARM device runs them (on a real AVX2 EPYC it once failed by comparing fused
    # saturating kernels against the unfused float path).
    assert got["pi5"] >= 0.98, got


def test_cpuid_is_asked_directly_where_numpy_cannot_tell():
    """AVX-VNNI is not in numpy's probe: edgekd executes CPUID itself. Its vendor string must be the one
    /proc/cpuinfo names, and its AVX-VNNI bit the kernel's flag (no emulator here)."""
    from pathlib import Path

    from edgekd.cpu import _cpuid, _has_avx_vnni

    info = Path("/proc/cpuinfo").read_text()
    vendor = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("vendor_id"))
    regs = _cpuid(0)
    assert regs is not None
    assert b"".join(r.to_bytes(4, "little") for r in (regs[1], regs[3], regs[2])).decode() == vendor
    flags = next(line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags"))
    assert _has_avx_vnni() == ("avx_vnni" in flags)
