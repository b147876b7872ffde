"""Tuning sweep for the default method: each variant distils the same teacher for the same CPU
time budget; we record real test accuracy (measurement only: the distillation never sees a real
image) and agreement with the teacher on held-out synthetic images.

    python benchmarks/tune.py --teacher demo --data fashion-mnist --budget 120 \
        --variant base --variant w_adv=0 --out benchmarks/results/tuning.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from edgekd.cli.distill_cmd import demo_teacher_path
from edgekd.cpu import cpu_summary
from edgekd.data.datasets import load_dataset
from edgekd.distill.config import parse_sets, resolve_config
from edgekd.distill.loop import distill
from edgekd.models.checkpoint import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="demo")
    ap.add_argument("--teacher-name", default=None)
    ap.add_argument("--data", required=True)
    ap.add_argument("--method", default="adversarial")
    ap.add_argument("--student", default="lenet5-half")
    ap.add_argument("--budget", type=float, default=120)
    ap.add_argument("--variant", action="append", required=True, help="'base' or comma-separated key=value")
    ap.add_argument("--out", default="benchmarks/results/tuning.jsonl")
    ap.add_argument("--mean", type=float, help="input normalisation of a state_dict teacher")
    ap.add_argument("--std", type=float)
    ap.add_argument("--input-size", type=int, help="input side of a TorchScript teacher")
    args = ap.parse_args()
    path = demo_teacher_path() if args.teacher == "demo" else Path(args.teacher)
    data = load_dataset(args.data)
    for variant in args.variant:
        sets = {} if variant == "base" else parse_sets(variant.split(","))
        cfg = resolve_config(args.method, overrides={"student": args.student, "time_budget": args.budget,
                                                     "eval_every_s": 30, **sets})
        t0 = time.time()
        overrides = {"mean": (args.mean,), "std": (args.std,)} if args.mean is not None else {}
        if args.input_size:
            overrides["input_size"] = (args.input_size, args.input_size)
        run_dir = Path("/tmp/edgekd-tune") / f"{path.stem}-{args.student}-{args.method}-{variant.replace(',', '_')}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a scratch run per variant: edgekd refuses to overwrite one
        result = distill(load_model(path, spec_overrides=overrides), cfg, run_dir, data)
        row = {"teacher": args.teacher_name or path.name, "method": args.method, "student": args.student,
               "variant": variant, "budget_s": args.budget, "steps": result.steps,
               "accuracy": round(result.metrics["accuracy"], 4),
               "agreement_synthetic": round(result.metrics["agreement_synthetic"], 4),
               "teacher_accuracy": round(result.teacher_accuracy, 4), "events": len(result.events),
               "wall_s": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads(),
               "cpu": cpu_summary()}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
