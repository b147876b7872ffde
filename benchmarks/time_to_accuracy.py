"""Time-to-accuracy benchmark (issue 13 point 6): every (teacher, method, seed) distils for the same
wall-clock budget; the student's accuracy on real labelled images (measurement only: no distillation
step sees one) is logged every `--eval-every` seconds, so each run is a curve of accuracy against time.

Teachers are self-trained stand-ins for files users bring (none of them is shipped except the demo):
each entry of TEACHERS says how `scripts/train_teacher.py` makes it, so the table can be remade.

    python benchmarks/time_to_accuracy.py run --teachers demo,mnist-wrn16-2 --methods auto,dafl \\
        --seeds 0,1,2 --budget 600 --jobs 2          # two runs side by side, one torch thread each
    python benchmarks/time_to_accuracy.py report      # table + plot from every row recorded so far

Rows append to benchmarks/results/time-to-accuracy.jsonl (one per run, with its curve, the CPU flags
and the torch threads it had), so a table can be filled over several sittings; `report` writes
time-to-accuracy.md and .png. Compare rows only within one sitting and machine kind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

RESULTS = Path(__file__).parent / "results"
ROWS = RESULTS / "time-to-accuracy.jsonl"
TEACHER_DIR = Path(os.environ.get("EDGEKD_TEACHERS", "/tmp/teachers"))
TRAIN = "python scripts/train_teacher.py"


@dataclass(frozen=True)
class Teacher:
    file: str  # under TEACHER_DIR ("demo": the shipped teacher)
    data: str  # labelled images the student is measured on
    student: str
    train: str  # the command that made the file
    overrides: Dict[str, Any] = field(default_factory=dict)  # input contract the file does not carry
    has_bn: bool = False


TEACHERS: Dict[str, Teacher] = {
    "demo": Teacher("demo", "fashion-mnist", "lenet5-half", "shipped (edgekd/assets)"),
    "fmnist-lenet5-ts": Teacher(
        "fmnist_lenet5.ts", "fashion-mnist", "lenet5-half",
        f"{TRAIN} --arch lenet5 --data fashion-mnist:train --test fashion-mnist --mean 0.286 --std 0.353 "
        "--epochs 6 --seed 1 --format torchscript", {"mean": (0.286,), "std": (0.353,), "input_size": (32, 32)}),
    "mnist-lenet5-dafl": Teacher(
        "mnist_lenet5_dafl.ts", "/tmp/teachers/mnist_holdout.npz", "lenet5-half",
        f"{TRAIN} --arch lenet5 --data mnist --holdout 1000 --mean 0.1307 --std 0.3081 --epochs 10 "
        "--format torchscript-dafl --save-holdout mnist_holdout.npz",
        {"mean": (0.1307,), "std": (0.3081,), "input_size": (32, 32)}),
    # pytorch/examples' MNIST Net (TorchScript, unregistered: no hooks; 28x28 only; log_softmax out)
    "fmnist-examples-net": Teacher(
        "fmnist_examples_net.ts", "fashion-mnist", "lenet5-half",
        f"{TRAIN} --arch examples-mnist-net --data fashion-mnist:train --test fashion-mnist --size 28 "
        "--mean 0.286 --std 0.353 --epochs 2 --format torchscript", {"mean": (0.286,), "std": (0.353,)}),
    # a BatchNorm network of the user's own layout, as TorchScript: no registered architecture to rebuild it
    # as, so the BN prior reads its layers' inputs from the graph (edgekd/models/script_taps.py)
    "fmnist-plainbn-ts": Teacher(
        "fmnist_plainbn.ts", "fashion-mnist", "lenet5",
        f"{TRAIN} --arch plain-bn-cnn --data fashion-mnist:train --test fashion-mnist --mean 0.286 --std 0.353 "
        "--epochs 2 --format torchscript", {"mean": (0.286,), "std": (0.353,), "input_size": (32, 32)},
        has_bn=True),
    "mnist-wrn16-2": Teacher(
        "mnist_wrn16-2.pt", "/tmp/teachers/mnist_holdout.npz", "lenet5",
        f"{TRAIN} --arch wrn16-2 --data mnist --holdout 1000 --channels 3 --epochs 8 --format state_dict "
        "--save-holdout mnist_holdout.npz", {"mean": (0.5,), "std": (0.5,)}, has_bn=True),
    "fmnist-resnet18": Teacher(
        "fmnist_resnet18.pt", "fashion-mnist", "mobilenet_v2",
        f"{TRAIN} --arch resnet18 --data fashion-mnist:train --test fashion-mnist --channels 3 --size 32 "
        "--epochs 1 --format state_dict", {"mean": (0.5,), "std": (0.5,), "input_size": (32, 32)}, has_bn=True),
    # the same network as a user's TorchScript export: normalisation inside, (logits, probabilities) out
    "fmnist-resnet18-wrapped": Teacher(
        "fmnist_resnet18_wrapped.ts", "fashion-mnist", "mobilenet_v2",
        f"{TRAIN} --arch resnet18 --data fashion-mnist:train --test fashion-mnist --channels 3 --size 32 "
        "--epochs 0 --weights fmnist_resnet18.pt --format torchscript-normalised", {"input_size": (32, 32)},
        has_bn=True),
    # the README's own case: a torchvision ResNet-34 of grey images copied to 3 channels
    "fmnist-resnet34": Teacher(
        "fmnist_resnet34.pt", "fashion-mnist", "mobilenet_v2",
        f"{TRAIN} --arch resnet34 --data fashion-mnist:train --test fashion-mnist --channels 3 --size 32 "
        "--epochs 1 --format state_dict", {"mean": (0.5,), "std": (0.5,), "input_size": (32, 32)}, has_bn=True),
    # the one teacher of colour photographs (scripts/photo_patches.py: patches of ten photos, labelled by photo)
    "photo10-resnet34": Teacher(
        "photo10_resnet34.pt", "/tmp/teachers/photo10_test.npz", "mobilenet_v2",
        f"python scripts/photo_patches.py --out photo10 && {TRAIN} --arch resnet34 --data photo10_train.npz "
        "--test photo10_test.npz --size 32 --mean 0.328,0.285,0.241 --std 0.319,0.226,0.230 --epochs 3 "
        "--format state_dict",
        {"mean": (0.328, 0.285, 0.241), "std": (0.319, 0.226, 0.230), "input_size": (32, 32)}, has_bn=True),
}


def teacher_path(name: str) -> Path:
    from edgekd.cli.distill_cmd import demo_teacher_path

    t = TEACHERS[name]
    return demo_teacher_path() if t.file == "demo" else TEACHER_DIR / t.file


def run_one(teacher: str, method: str, seed: int, budget: float, eval_every: float, sets: Dict[str, Any],
            tag: str) -> Dict[str, Any]:
    import torch

    from edgekd.cpu import cpu_summary
    from edgekd.data.datasets import load_dataset
    from edgekd.distill.config import resolve_config
    from edgekd.distill.loop import distill
    from edgekd.models.checkpoint import load_model

    t = TEACHERS[teacher]
    loaded = load_model(teacher_path(teacher), spec_overrides=dict(t.overrides))
    cfg = resolve_config(method, overrides={"student": t.student, "time_budget": budget, "seed": seed,
                                            "eval_every_s": eval_every, **sets}, teacher=loaded)
    run_dir = Path("/tmp/edgekd-tta") / f"{teacher}-{method}-{seed}{'-' + tag if tag else ''}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.time()
    result = distill(loaded, cfg, run_dir, load_dataset(t.data))
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    curve = [(h["time"], h["accuracy"], h.get("agreement_pool")) for h in history if "accuracy" in h]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"teacher": teacher, "method": method, "resolved_method": cfg.method, "seed": seed, "tag": tag,
            "sets": sets, "gen_grey": cfg.gen_grey, "grey_choice": cfg.grey_choice, "budget_s": budget,
            "steps": result.steps, "s_steps": summary.get("s_steps"), "batch": summary.get("batch"),
            "accuracy": round(result.metrics["accuracy"], 4), "best_seen": round(max(a for _, a, _ in curve), 4),
            "teacher_accuracy": round(result.teacher_accuracy, 4), "curve": curve, "events": result.events,
            "plan": result.plan, "wall_s": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads(),
            "cpu": cpu_summary(), "date": time.strftime("%Y-%m-%d %H:%M")}


def sweep(args: argparse.Namespace) -> None:
    jobs = [(t, m, s) for t in args.teachers.split(",") for s in map(int, args.seeds.split(","))
            for m in args.methods.split(",")]  # methods of one seed side by side: the same load on both
    for name in {t for t, _, _ in jobs}:
        if not teacher_path(name).exists():
            sys.exit(f"teacher {name}: {teacher_path(name)} is missing; make it with: {TEACHERS[name].train}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    running: List[subprocess.Popen] = []
    for teacher, method, seed in jobs:
        while len(running) >= args.jobs:
            time.sleep(2)
            running = [p for p in running if p.poll() is None]
        cmd = [sys.executable, __file__, "one", teacher, method, str(seed), "--budget", str(args.budget),
               "--eval-every", str(args.eval_every), "--tag", args.tag] + [x for s in args.set for x in ("--set", s)]
        running.append(subprocess.Popen(cmd, env=env))
    for p in running:
        p.wait()


def one(args: argparse.Namespace) -> None:
    from edgekd.distill.config import parse_sets

    row = run_one(args.teacher, args.method, args.seed, args.budget, args.eval_every, parse_sets(args.set), args.tag)
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(ROWS, "a") as f:  # one short append per run: parallel jobs do not interleave lines
        f.write(json.dumps(row) + "\n")


def _time_to(curve: List[Any], level: float) -> Optional[float]:
    return next((t for t, a, *_ in curve if a >= level), None)


def _cpu_kind(cpu: Dict[str, Any]) -> str:
    """What PyTorch could use: bf16 on AVX-512-bf16 (+AMX tiles where present), fp32 on AVX2 (or on an
    AVX-512 CPU capped to AVX2). Rows of different kinds are never pooled: steps per minute differ 2-3x."""
    torch_flags, flags = cpu.get("torch_flags", []), cpu.get("flags", [])
    kind = "avx512-bf16" if "avx512_bf16" in torch_flags else "avx2"
    kind += "+amx" if "amx_bf16" in torch_flags else ""
    return kind + (" (capped)" if torch_flags != flags else "")


def report(args: argparse.Namespace) -> None:
    rows = [json.loads(x) for x in ROWS.read_text().splitlines() if x.strip()]
    if args.since:
        rows = [r for r in rows if r.get("date", "") >= args.since]
    groups: Dict[tuple, List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        method = r["method"] if r["resolved_method"] == r["method"] else f"{r['method']} ({r['resolved_method']})"
        groups[(r["teacher"], method + (f" [{r['tag']}]" if r.get("tag") else ""), r["budget_s"],
                _cpu_kind(r["cpu"]))].append(r)
    md = ["# Time to accuracy: data-free distillation on a 2-core CPU", "",
          "Made by `python benchmarks/time_to_accuracy.py run ...` then `report` (commands and teacher recipes in "
          "the script). Student accuracy on real labelled images, measured only. Mean over runs; "
          "per-run values in brackets (a seed run again in a later sitting counts as another run; "
          "TUNING.md gives each sitting's pairs). 'of teacher' = final / teacher accuracy. 'time to 90%' = first "
          "evaluation at which the student reached 90% of its own run's final accuracy (mean over seeds).", "",
          "| teacher | BN | method | budget | runs | batch | G steps | final accuracy | best seen | teacher "
          "| of teacher | time to 90% | threads | CPU |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (teacher, method, budget, cpu), rs in sorted(groups.items()):
        mean = sum(r["accuracy"] for r in rs) / len(rs)
        best = sum(r["best_seen"] for r in rs) / len(rs)
        tacc = rs[0]["teacher_accuracy"]
        times = [_time_to(r["curve"], 0.9 * r["accuracy"]) for r in rs]
        times = [x for x in times if x is not None]
        seeds = ", ".join(f"{r['accuracy']:.1%}" for r in rs)
        bn = "yes" if teacher in TEACHERS and TEACHERS[teacher].has_bn else "no"
        md.append(f"| {teacher} | {bn} | {method} "
                  f"| {budget:.0f} s | {len(rs)} | {_batches(rs)} | {sum(r['steps'] for r in rs) / len(rs):.0f} | {mean:.1%} "
                  f"({seeds}) | {best:.1%} | {tacc:.1%} | {mean / tacc:.0%} "
                  f"| {sum(times) / len(times):.0f} s | {rs[0]['torch_threads']} | {cpu} |")
    md += _against_reference(rows)
    (RESULTS / "time-to-accuracy.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    # A tagged group of one run is a screen (a --set tried on one seed): the table keeps it, the plot shows
    # defaults and settings measured over several runs (e.g. --grey), so it stays readable as screens pile up.
    _plot({k: rs for k, rs in groups.items() if len(rs) > 1 or not any(r.get("tag") for r in rs)})


def _batches(rs: List[Dict[str, Any]]) -> str:
    """The batches the runs took: budget_g_steps' choice (rows from round 18 on), else --set batch_size
    (or the reference DAFL script's --batch_size), else the default 256 that every earlier row ran at."""
    def batch(r: Dict[str, Any]) -> int:
        sets = r.get("sets", {})
        extra = list(sets.get("extra", []))
        named = extra[extra.index("--batch_size") + 1] if "--batch_size" in extra[:-1] else None
        return int(r.get("batch") or sets.get("batch_size") or named or 256)

    return " / ".join(map(str, sorted({batch(r) for r in rs})))


def _hours_apart(a: Dict[str, Any], b: Dict[str, Any]) -> float:
    stamp = [time.mktime(time.strptime(r["date"], "%Y-%m-%d %H:%M")) for r in (a, b)]
    return abs(stamp[0] - stamp[1]) / 3600


def _machine(r: Dict[str, Any]) -> tuple:
    return r["cpu"].get("cpu"), _cpu_kind(r["cpu"])


def _against_reference(rows: List[Dict[str, Any]]) -> List[str]:
    """Issue 13's comparison with the reference DAFL code (benchmarks/reference_dafl.py): per reference run,
    edgekd's default (auto, no --set) on the same teacher, budget, seed, CPU kind and threads, the run nearest in
    time (side by side where one was; the table says how far apart otherwise: this machine's speed drifts
    by hour), and how soon edgekd's curve reached the accuracy the reference ended with (edgekd's first
    evaluation is an upper bound on that time)."""
    out = []
    for other in (r for r in rows if r["method"] == "reference-dafl"):
        mine = [r for r in rows if r["method"] == "auto" and not r.get("sets") and _machine(r) == _machine(other)
                and r.get("torch_threads") == other.get("torch_threads")
                and (r["teacher"], r["budget_s"], r["seed"]) == (other["teacher"], other["budget_s"], other["seed"])]
        if not mine:
            continue
        apart, r = min(((_hours_apart(m, other), m) for m in mine), key=lambda pair: pair[0])
        sitting = "side by side" if apart <= 1 / 6 else f"{apart:.1f} h apart"
        reached = _time_to(r["curve"], other["accuracy"])
        when = "-" if reached is None else f"{reached:.0f} s ({other['budget_s'] / reached:.0f}x sooner)"
        out.append(f"| {r['teacher']} | {r['seed']} | {r['budget_s']:.0f} s | {r['accuracy']:.1%} | "
                   f"{other['accuracy']:.1%} ({other['steps']} iterations of {_batches([other])}) | "
                   f"{r['accuracy'] / other['accuracy']:.2f}x | {when} | {sitting} |")
    if not out:
        return []
    return ["", "## Against the reference DAFL code (`benchmarks/reference_dafl.py`), same teacher, machine kind, budget",
            "", "edgekd's curve is sampled every 30 s: where it had passed the reference's final accuracy at its "
            "first sample, the time is an upper bound and 'x sooner' a lower bound.",
            "", "| teacher | seed | budget | edgekd auto | reference DAFL | accuracy ratio | edgekd reached the "
            "reference's final accuracy by | runs |", "|---|---|---|---|---|---|---|---|", *out]


def _plot(groups: Dict[tuple, List[Dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = sorted({k[0] for k in groups})
    colours = sorted({(k[1], k[3]) for k in groups})  # one colour per method and CPU kind
    # A grid of three panels a row: one row of ten was too wide to read.
    cols = min(3, len(teachers))
    rows_n = -(-len(teachers) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.0 * cols, 4.8 * rows_n), squeeze=False)
    for ax in axes.flat[len(teachers):]:
        ax.set_visible(False)
    for ax, teacher in zip(axes.flat, teachers):
        for (t, method, budget, cpu), rs in sorted(groups.items()):
            if t != teacher:
                continue
            colour = f"C{colours.index((method, cpu)) % 10}"
            name = f"{method} ({cpu})" if cpu != "avx512-bf16" else method
            for i, r in enumerate(rs):
                ts, accs = zip(*[(p[0], p[1]) for p in r["curve"]])
                # Longer budgets ran on both cores: dashed, so they are not read as the same setting.
                ax.plot(ts, accs, lw=1, alpha=0.8, color=colour,
                        ls="--" if budget > 300 else "-", label=f"{name}, {budget:.0f} s" if i == 0 else None)
            ax.axhline(rs[0]["teacher_accuracy"], ls="--", color="gray", lw=1)
        ax.set_title(teacher, fontsize=9)
        ax.set_xlabel("seconds of distillation")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, loc="lower right")
    for row in axes:
        row[0].set_ylabel("student accuracy (real images)")
    fig.tight_layout()
    fig.savefig(RESULTS / "time-to-accuracy.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--teachers", default=",".join(TEACHERS))
    r.add_argument("--methods", default="auto")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--threads", type=int, default=0, help="torch threads per run (default: 2 / jobs)")
    for p in (r, sub.add_parser("one")):
        p.add_argument("--budget", type=float, default=600)
        p.add_argument("--eval-every", type=float, default=30)
        p.add_argument("--set", action="append", default=[])
        p.add_argument("--tag", default="")
    o = sub.choices["one"]
    o.add_argument("teacher", choices=list(TEACHERS))
    o.add_argument("method")
    o.add_argument("seed", type=int)
    rep = sub.add_parser("report")
    rep.add_argument("--since", default="", help="only rows dated from this 'YYYY-MM-DD HH:MM' on")
    args = ap.parse_args()
    if args.cmd == "run":
        args.threads = args.threads or max(1, 2 // args.jobs)
    {"run": sweep, "one": one, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
