"""Quality benchmark (issue 3): every method distils the shipped Fashion-MNIST LeNet-5 teacher into
LeNet-5-half for the same CPU time budget; student test accuracy on the real Fashion-MNIST test set
(measurement only) next to the teacher's and next to LeNet-5-half trained on the real data.

    python benchmarks/distill_quality.py --budget 300 --methods adversarial,dafl,dfad,zskt,dfq
    python benchmarks/distill_quality.py --budget 600 --methods adversarial --tag floor

Writes benchmarks/results/quality[-TAG].{json,md,png}; run directories go under /tmp/edgekd-quality.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from edgekd.cli.distill_cmd import demo_teacher_path
from edgekd.cpu import cpu_summary
from edgekd.data.datasets import load_dataset
from edgekd.distill.config import resolve_config
from edgekd.distill.loop import distill
from edgekd.models.checkpoint import load_model

RESULTS = Path(__file__).parent / "results"


def real_data_student(epochs: int) -> dict:
    out = Path("/tmp/edgekd-quality/lenet5-half-real.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "scripts/train_teacher.py", "--arch", "lenet5-half", "--data",
                           "fashion-mnist:train", "--test", "fashion-mnist", "--epochs", str(epochs), "--out", str(out)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=300)
    ap.add_argument("--methods", default="adversarial,dafl,dfad,zskt,dfq")
    ap.add_argument("--tag", default="")
    ap.add_argument("--real-epochs", type=int, default=8)
    args = ap.parse_args()
    data = load_dataset("fashion-mnist")
    teacher_path = demo_teacher_path()
    rows, curves = [], {}
    for method in args.methods.split(","):
        cfg = resolve_config(method, overrides={"student": "lenet5-half", "time_budget": args.budget,
                                                "eval_every_s": 30})
        run = Path("/tmp/edgekd-quality") / f"{method}{'-' + args.tag if args.tag else ''}"
        t0 = time.time()
        res = distill(load_model(teacher_path), cfg, run, data)
        hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        curves[method] = [(h["time"], h["accuracy"]) for h in hist if "accuracy" in h]
        rows.append({"method": method, "budget_s": args.budget, "steps": res.steps,
                     "student_accuracy": res.metrics["accuracy"], "agreement_real": res.metrics["agreement_real"],
                     "agreement_synthetic": res.metrics["agreement_synthetic"],
                     "best_seen_accuracy": max(a for _, a in curves[method]),
                     "teacher_accuracy": res.teacher_accuracy, "events": res.events, "plan": res.plan,
                     "wall_s": round(time.time() - t0, 1), "run_dir": str(run)})
        print(json.dumps(rows[-1]), flush=True)
    real = real_data_student(args.real_epochs)
    out = {"teacher": "demo LeNet-5 (Fashion-MNIST)", "student": "lenet5-half", "budget_s": args.budget,
           "cpu": cpu_summary(), "rows": rows,
           "real_data_student": real, "curves": curves,
           "command": "python " + " ".join(sys.argv)}
    stem = RESULTS / f"quality{'-' + args.tag if args.tag else ''}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    md = [f"# Distillation quality: demo LeNet-5 -> LeNet-5-half, {args.budget:.0f} s per method (CPU)", "",
          f"Command: `{out['command']}`. Accuracy on the real Fashion-MNIST test set (10,000 images), "
          "measured only: no method sees a real image.", "",
          "| method | steps | student accuracy (final) | best seen | agreement (real) | teacher | events |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['method']} | {r['steps']} | {r['student_accuracy']:.2%} | {r['best_seen_accuracy']:.2%} | "
                  f"{r['agreement_real']:.2%} | {r['teacher_accuracy']:.2%} | {len(r['events'])} |")
    md += ["", f"LeNet-5-half trained on the real training set ({real['epochs']} epochs, {real['seconds']} s): "
           f"{real['test_accuracy']:.2%}.", ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method, pts in curves.items():
        ax.plot(*zip(*pts), marker=".", label=method)
    ax.axhline(rows[0]["teacher_accuracy"], ls="--", color="gray", label="teacher (LeNet-5)")
    ax.axhline(real["test_accuracy"], ls=":", color="black", label="LeNet-5-half, real data")
    ax.set_xlabel("distillation seconds (2-core CPU)")
    ax.set_ylabel("student test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Fashion-MNIST, data-free distillation")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
