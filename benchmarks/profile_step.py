"""Where the time of one distillation iteration goes (issue 13, point 7): the user's case by default,
torchvision resnet34 -> mobilenet_v2 at 3x32x32. Times the generator step and one student step apart,
then runs torch.profiler over whole iterations and keeps the top operators by self CPU time.
Random teacher weights: speed does not depend on them.

    python benchmarks/profile_step.py --teacher resnet34 --student mobilenet_v2 --size 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgekd.cpu import cpu_summary
from edgekd.distill.config import resolve_config
from edgekd.distill.evaluation import predict
from edgekd.distill.loop import Distiller
from edgekd.distill.student import student_step
from edgekd.distill.synthesizers import generator_step
from edgekd.models.checkpoint import LoadedModel
from edgekd.models.registry import create_model, get_entry
from edgekd.spec import ModelSpec

RESULTS = Path(__file__).parent / "results"


def _timed(fn, n: int) -> float:
    fn()  # warm-up: allocation, kernel choice
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="resnet34")
    ap.add_argument("--student", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--channels-last", default="auto")
    ap.add_argument("--set", nargs="*", default=[], help="extra config key=value")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model(args.teacher, 10, args.channels).eval()
    spec = ModelSpec(get_entry(args.teacher).name, 10, args.channels, (args.size, args.size), (0.5,), (0.5,))
    loaded = LoadedModel(model, spec, "edgekd", Path("random"), "0" * 64)
    extra = dict(kv.split("=", 1) for kv in args.set)
    cfg = resolve_config("adversarial", overrides={"student": args.student, "batch_size": args.batch,
                                                   "iterations": 10**6, "precision": args.precision,
                                                   "channels_last": args.channels_last, **extra})
    with tempfile.TemporaryDirectory() as tmp:
        d = Distiller(loaded, cfg, Path(tmp))
        g_s = _timed(lambda: generator_step(d), 2)
        s_s = _timed(lambda: student_step(d, first=False), 4)
        t_s = _timed(lambda: predict(d, d.m.teacher, d.m.generator(d._z(cfg.batch_size)).detach()), 2)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            d._iteration()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40)
    row = {"teacher": args.teacher, "student": args.student, "input": f"{args.channels}x{args.size}x{args.size}",
           "batch": args.batch, "plan": d.plan_reason, "s_steps": cfg.s_steps,
           "generator_step_s": g_s, "student_step_s": s_s, "teacher_forward_s": t_s,
           "iteration_s_estimate": g_s + cfg.s_steps * s_s, "cpu": cpu_summary(), "command": "python " + " ".join(sys.argv)}
    print(json.dumps(row, indent=1))
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"profile-{args.teacher}-{args.student}-{args.size}{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(row, indent=2) + "\n")
    stem.with_suffix(".txt").write_text(json.dumps(row, indent=2) + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
