"""INT8 agreement on each kind of x86 CPU (issue 12): the same students exported three ways (x86 with
VNNI, x86 without VNNI, Jetson Orin), each measured three ways on the same held-out synthetic images
and on the real Fashion-MNIST test set:
  exact    the quantized graph in float (Q/DQ kept; what the scheme gives, and what TensorRT computes)
  here     ONNX Runtime's INT8 kernels on this CPU
  haswell  the same kernels under qemu-user emulating a Haswell: AVX2, no AVX-512, no VNNI
Students are distilled from the demo teacher in this script at each precision the CPU can take, so the
"different student from fp32 training" question is answered on one machine too.

    python benchmarks/int8_cpu_kinds.py --iterations 30 --iterations 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgekd.cli.distill_cmd import demo_teacher_path
from edgekd.cpu import cpu_summary, torch_cpu_flags
from edgekd.data.datasets import load_dataset, prepare_images
from edgekd.deploy.bundle import ExportConfig, export_bundle
from edgekd.deploy.targets import get_target
from edgekd.distill.config import resolve_config
from edgekd.distill.loop import distill
from edgekd.models.checkpoint import load_model

RESULTS = Path(__file__).parent / "results"
EXPORTS = (("x86-cpu", "yes"), ("x86-cpu", "no"), ("jetson-orin-nano", None))
MEASURE = """
import json, sys
from pathlib import Path
import numpy as np
from edgekd.deploy.quantize import compare_int8
b = Path(sys.argv[1])
with np.load(sys.argv[2]) as z:
    x, y = z["x"], z["y"]
held = np.load(b / "synthetic.npz")["x"]
s = compare_int8(b / "student.onnx", b / "student.int8.onnx", held, "synthetic")
r = compare_int8(b / "student.onnx", b / "student.int8.onnx", x, "real", y)
print(json.dumps({"synthetic": s.to_dict(), "real": r.to_dict()}))
"""


def measure(bundle: Path, real: Path, qemu_cpu: str = "") -> dict:
    cmd = ([shutil.which("qemu-x86_64"), "-cpu", qemu_cpu] if qemu_cpu else []) + [sys.executable, "-c", MEASURE,
                                                                                      str(bundle), str(real)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, action="append", help="distillation iterations per student")
    ap.add_argument("--images", type=int, default=2000, help="real test images")
    args = ap.parse_args()
    precisions = ["fp32"] + (["bf16"] if "avx512_bf16" in torch_cpu_flags() else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = load_dataset("fashion-mnist").take(args.images)
        teacher = load_model(demo_teacher_path())
        np.savez(tmp / "real.npz", x=prepare_images(ds.images, teacher.spec), y=ds.labels)
        for iters in args.iterations or [30]:
            for prec in precisions:
                run = tmp / f"run-{iters}-{prec}"
                cfg = resolve_config("adversarial", overrides={"iterations": iters, "calib_images": 64,
                                                               "eval_every_s": 1e9, "precision": prec})
                distill(load_model(demo_teacher_path()), cfg, run)
                for target, vnni in EXPORTS:
                    b = tmp / f"b-{iters}-{prec}-{target}-{vnni}"
                    export_bundle(run, ExportConfig(get_target(target), "int8", calib_count=256, force=True,
                                                    min_int8_agreement=0.0, vnni=vnni), b)
                    here, haswell = measure(b, tmp / "real.npz"), measure(b, tmp / "real.npz", "Haswell")
                    row = {"iterations": iters, "student_trained_in": prec, "target": target, "vnni": vnni,
                           "exact_synthetic": here["synthetic"]["agreement"],
                           "here_synthetic": here["synthetic"]["kernel_agreement"],
                           "haswell_synthetic": haswell["synthetic"]["kernel_agreement"],
                           "fp32_real_acc": here["real"]["fp32_accuracy"],
                           "exact_real_acc": here["real"]["int8_accuracy"],
                           "here_real_acc": here["real"]["kernel_int8_accuracy"],
                           "haswell_real_acc": haswell["real"]["kernel_int8_accuracy"]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    out = {"command": "python " + " ".join(sys.argv), "cpu": cpu_summary(), "haswell": "qemu-x86_64 -cpu Haswell",
           "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int8-cpu-kinds.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [f"# INT8 agreement by CPU kind (`{out['command']}`)", "",
          f"This CPU: {out['cpu']['cpu']}, flags {' '.join(out['cpu']['flags'])}; 'haswell' = the same ONNX Runtime "
          "under qemu-x86_64 -cpu Haswell (AVX2, no AVX-512, no VNNI).", "",
          "Agreement = INT8 argmax equal to FP32 on 256 held-out synthetic images; accuracy on "
          f"{args.images} real Fashion-MNIST test images.", "",
          "| iters | trained in | export | agreement exact | here | haswell | FP32 acc | INT8 exact | here | haswell |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        exp = r["target"] + (f" vnni={r['vnni']}" if r["vnni"] else "")
        md.append(f"| {r['iterations']} | {r['student_trained_in']} | {exp} | {r['exact_synthetic']:.1%} | "
                  f"{r['here_synthetic']:.1%} | {r['haswell_synthetic']:.1%} | {r['fp32_real_acc']:.2%} | "
                  f"{r['exact_real_acc']:.2%} | {r['here_real_acc']:.2%} | {r['haswell_real_acc']:.2%} |")
    (RESULTS / "int8-cpu-kinds.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
