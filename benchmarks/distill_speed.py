"""Speed benchmark (issue 3): synthesis + distillation iterations per second of the default method,
with the precision/memory format edgekd picks for this machine against a plain fp32 NCHW loop of
the very same step. Teachers are randomly initialised: speed does not depend on the weights.

    python benchmarks/distill_speed.py            # writes benchmarks/results/speed-<device>.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgekd.cpu import cpu_summary, torch_cpu_flags
from edgekd.distill.config import resolve_config
from edgekd.distill.loop import Distiller
from edgekd.models.checkpoint import LoadedModel
from edgekd.models.registry import create_model, get_entry
from edgekd.spec import ModelSpec

RESULTS = Path(__file__).parent / "results"
SETTINGS = [  # (teacher, student, channels, size, batch, timed iterations)
    ("lenet5", "lenet5-half", 1, 32, 256, 8),
    ("resnet34-cifar", "resnet18-cifar", 3, 32, 64, 3),
    ("resnet34-cifar", "mobilenet_v2", 3, 32, 64, 3),
    ("resnet34", "mobilenet_v2", 3, 224, 16, 2),
]


def time_setting(teacher: str, student: str, channels: int, size: int, batch: int, n: int, precision: str,
                 channels_last: str, device: str) -> dict:
    torch.manual_seed(0)
    model = create_model(teacher, 10, channels).eval()
    spec = ModelSpec(get_entry(teacher).name, 10, channels, (size, size), (0.5,), (0.5,))
    loaded = LoadedModel(model, spec, "edgekd", Path("random"), "0" * 64)
    cfg = resolve_config("adversarial", overrides={"student": student, "batch_size": batch, "iterations": 10**6,
                                                   "precision": precision, "channels_last": channels_last,
                                                   "device": device, "replay_size": 4 * batch})
    with tempfile.TemporaryDirectory() as tmp:
        d = Distiller(loaded, cfg, Path(tmp))
        d._iteration()  # warm-up: allocation, kernel choice
        if d.plan.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            d._iteration()  # returns loss values, which synchronises with the device
        dt = (time.perf_counter() - t0) / n
    return {"teacher": teacher, "student": student, "input": f"{channels}x{size}x{size}", "batch": batch,
            "plan": d.plan_reason, "precision": d.plans["student"].precision, "channels_last": d.plans["student"].channels_last,
            "seconds_per_iteration": dt, "iterations_per_s": 1 / dt, "synthetic_images_per_s": batch / dt,
            "student_updates_per_s": cfg.s_steps / dt, "timed_iterations": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-224", action="store_true")
    args = ap.parse_args()
    rows = []
    for teacher, student, c, size, batch, n in SETTINGS:
        if args.skip_224 and size == 224:
            continue
        base = time_setting(teacher, student, c, size, batch, n, "fp32", "off", args.device)
        fast = time_setting(teacher, student, c, size, batch, n, "auto", "auto", args.device)
        fast["speedup_vs_fp32_nchw"] = base["seconds_per_iteration"] / fast["seconds_per_iteration"]
        rows += [base, fast]
        print(json.dumps(base), json.dumps(fast), sep="\n", flush=True)
    device = "cuda" if args.device == "cuda" else "cpu-" + ("amx" if "amx_bf16" in torch_cpu_flags() else
                                                         "avx512bf16" if "avx512_bf16" in torch_cpu_flags() else "plain")
    out = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "command": "python " + " ".join(sys.argv), "method": "adversarial (1 G step + 20 S steps per iteration)",
           "cpu": cpu_summary(), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"speed-{device}.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [f"# Distillation speed on {device} (torch {torch.__version__}, {out['threads']} threads)", "",
          f"Command: `{out['command']}`. One iteration = 1 generator step + 20 student steps (default method).", "",
          "| teacher -> student | input | batch | precision | channels_last | it/s | synthetic img/s | speed-up |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['teacher']} -> {r['student']} | {r['input']} | {r['batch']} | {r['precision']} | "
                  f"{r['channels_last']} | {r['iterations_per_s']:.3f} | {r['synthetic_images_per_s']:.1f} | "
                  f"{r.get('speedup_vs_fp32_nchw', 1.0):.2f}x |")
    (RESULTS / f"speed-{device}.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
