"""What one evaluation costs inside a distillation run, part by part (TUNING.md round 19): the run's own
label-free check (held-out generator images, the teacher's and the student's labels for them, the pool of
earlier generators' images) and the scoring on real eval data (the student on eval_images; the teacher once).
After a few iterations of a time_to_accuracy.py teacher, one thread, nothing else running:

    OMP_NUM_THREADS=1 python benchmarks/eval_cost.py fmnist-resnet34

Prints and appends a row to benchmarks/results/eval-cost.jsonl.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict

import torch

sys.path.insert(0, str(Path(__file__).parent))
from time_to_accuracy import TEACHERS, teacher_path  # noqa: E402

from edgekd.cpu import cpu_summary  # noqa: E402
from edgekd.data.datasets import load_dataset  # noqa: E402
from edgekd.distill import evaluation  # noqa: E402
from edgekd.distill.config import resolve_config  # noqa: E402
from edgekd.distill.loop import Distiller  # noqa: E402
from edgekd.distill.synthesizers import SYNTHESIZERS  # noqa: E402
from edgekd.models.checkpoint import load_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return round(time.perf_counter() - t0, 3)


def main(name: str, batch: int = 64) -> None:
    t = TEACHERS[name]
    loaded = load_model(teacher_path(name), spec_overrides=dict(t.overrides))
    cfg = resolve_config("auto", overrides={"student": t.student, "time_budget": 600, "seed": 0, "batch_size": batch},
                         teacher=loaded)
    with tempfile.TemporaryDirectory() as tmp:
        d = Distiller(loaded, cfg, Path(tmp), load_dataset(t.data))
        d._start(False)
        for _ in range(4):
            d._iteration()
            d.step += 1
        row: Dict[str, object] = {"teacher": name, "student": t.student, "batch": batch,
                                  "iteration_s": _seconds(d._iteration)}
        row["teacher_on_real_once_s"] = _seconds(lambda: evaluation.evaluate(d, label_free=False))
        row["real_scoring_s"] = _seconds(lambda: evaluation.evaluate(d, label_free=False))
        row["real_images"] = len(d.eval_x)
        for _ in range(15):  # the pool as it stands after 16 checks: full at 32 px (2048 images)
            evaluation.evaluate(d, real=False)
        row["label_free_check_s"] = _seconds(lambda: evaluation.evaluate(d, real=False))
        row["pool_images"] = len(d.pool_x)
        x = SYNTHESIZERS[d.cfg.synthesizer].heldout(d)
        row["heldout_images"] = 0 if x is None else len(x)
        row["of_which_heldout_images_s"] = _seconds(lambda: SYNTHESIZERS[d.cfg.synthesizer].heldout(d))
        if x is not None:
            row["of_which_teacher_on_heldout_s"] = _seconds(lambda: evaluation.predict(d, d.m.teacher, x))
        row["of_which_student_on_pool_s"] = _seconds(lambda: evaluation.pool_agreement(d, d.m.final_student))
    row.update(threads=torch.get_num_threads(), cpu=cpu_summary(), command="python " + " ".join(sys.argv))
    print(json.dumps(row, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "eval-cost.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
