"""Scaling of `torchrun --nproc_per_node N -m edgekd distill` on this machine's CPU (gloo): the same
teacher, budget and seed with 1 process (all cores as threads) and with N processes (torchrun gives
each one thread), reporting steps, synthetic images seen per second and the student's accuracy on
real test data (measured only). On a CPU the processes share the cores the single process already
used, so this shows the overhead of the collectives, not a speed-up; several GPUs are where it pays.

    python benchmarks/distributed_scaling.py --budget 60s --nproc 2   # -> results/distributed-scaling.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgekd.cpu import cpu_summary

RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent


def run(nproc: int, budget: str, teacher: str, seed: int, batch: int, work: Path) -> dict:
    out = work / f"n{nproc}-s{seed}"
    launch = ([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "edgekd"] if nproc > 1
              else [sys.executable, "-m", "edgekd"])
    cmd = [*launch, "distill", teacher, "--time-budget", budget, "--seed", str(seed), "--batch-size", str(batch),
           "--eval-data", "fashion-mnist", "--out", str(out), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "EDGEKD_CACHE_DIR": str(work)})
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    s = json.loads((out / "summary.json").read_text())
    return {"processes": nproc, "seed": seed, "budget": budget, "batch_per_process": batch, "steps": s["steps"],
            "seconds": s["seconds"], "images_per_s": s["steps"] * batch * nproc / s["seconds"],
            "accuracy": s["final"].get("accuracy"), "teacher_accuracy": s["teacher_accuracy"], "plan": s["plan"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="60s")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--teacher", default="demo")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    cpu = cpu_summary()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for n in (1, args.nproc):
                row = {**run(n, args.budget, args.teacher, seed, args.batch_size, Path(tmp)), "cpu": cpu["cpu"],
                       "cpu_flags": cpu["flags"], "cpu_count": os.cpu_count()}
                rows.append(row)
                print(json.dumps(row))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed-scaling.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [f"# torchrun scaling on CPU ({cpu['cpu']}, {os.cpu_count()} cores, flags {' '.join(cpu['flags'])})", "",
             f"`python benchmarks/distributed_scaling.py --budget {args.budget} --nproc {args.nproc} "
             f"--seeds {args.seeds}`; teacher {args.teacher}, batch {args.batch_size} per process.", "",
             "| processes | seed | steps | seconds | synthetic images/s | student accuracy | teacher | plan |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['accuracy']:.2%}" if r["accuracy"] is not None else "-"
        lines.append(f"| {r['processes']} | {r['seed']} | {r['steps']} | {r['seconds']} | {r['images_per_s']:.0f} | "
                     f"{acc} | {r['teacher_accuracy']:.2%} | {r['plan']} |")
    (RESULTS / "distributed-scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
