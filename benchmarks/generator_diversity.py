"""How varied a run's synthetic images are *within* a class, beside the real data's (a diagnostic for CMI's `cr`).

For each run directory of benchmarks/time_to_accuracy.py: the 512 images its final generator made (calib.npz)
through the teacher, the input of its classifier as the feature; per class the teacher gives, the mean cosine
similarity between pairs of images (lower: more varied), averaged over classes by their share. The same for as
many real test images (a random sample), grouped by the teacher's classes too, is the level a generator would
want. Features are centred on the real images' mean first.

    python benchmarks/generator_diversity.py photo10-resnet34 /tmp/edgekd-tta/photo10-resnet34-auto-0-r25-*

Rows append to benchmarks/results/generator-diversity.jsonl and print as a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_accuracy import RESULTS, TEACHERS, teacher_path  # noqa: E402

from edgekd.cpu import cpu_summary  # noqa: E402
from edgekd.data.datasets import load_dataset, prepare_images  # noqa: E402
from edgekd.distill.hooks import ClassifierInputHook  # noqa: E402
from edgekd.models.checkpoint import load_model  # noqa: E402


def features(model: torch.nn.Module, x: torch.Tensor) -> tuple:
    """(the input of the teacher's classifier, the teacher's class) per image."""
    hook = ClassifierInputHook(model)
    with torch.no_grad():
        pred = model(x).argmax(1)
    hook.remove()
    return hook.features.float().flatten(1), pred


def within_class_similarity(f: torch.Tensor, pred: torch.Tensor, centre: torch.Tensor) -> Dict[str, float]:
    # Centred on the real images' mean feature: after a ReLU every feature is >= 0 and raw cosines crowd near 1.
    f = F.normalize(f - centre, dim=1)
    total, weight = 0.0, 0
    for c in pred.unique():
        fc = f[pred == c]
        n = len(fc)
        if n < 2:
            continue
        sim = fc @ fc.T
        total += float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))) * n
        weight += n
    share = torch.bincount(pred).float() / len(pred)
    return {"within_class_cosine": round(total / max(weight, 1), 4), "classes_seen": int((share > 0).sum()),
            "top_class_share": round(float(share.max()), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teacher", choices=list(TEACHERS))
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    t = TEACHERS[args.teacher]
    loaded = load_model(teacher_path(args.teacher), spec_overrides=dict(t.overrides))
    model = loaded.model.eval()
    n = 512
    real = load_dataset(t.data)
    pick = np.random.default_rng(0).permutation(len(real.images))[:n]  # test sets are often sorted by class
    f_real, pred_real = features(model, torch.from_numpy(prepare_images(real.images[pick], loaded.spec)))
    centre = f_real.mean(0)
    rows = [{"run": "real test images", **within_class_similarity(f_real, pred_real, centre)}]
    for run in args.runs:
        x = torch.from_numpy(np.load(run / "calib.npz")["x"][:n]).float()
        config = json.loads((run / "config.json").read_text())
        rows.append({"run": run.name, "w_cr": config.get("w_cr", 0.0),
                     **within_class_similarity(*features(model, x), centre)})
    stamp = {"teacher": args.teacher, "cpu": cpu_summary()["cpu"], "date": time.strftime("%Y-%m-%d %H:%M")}
    with open(RESULTS / "generator-diversity.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps({**stamp, **r}) + "\n")
    print(f"{'run':48} {'within-class cosine':>20} {'classes':>8} {'top share':>10}")
    for r in rows:
        print(f"{r['run']:48} {r['within_class_cosine']:>20.4f} {r['classes_seen']:>8} {r['top_class_share']:>10.3f}")


if __name__ == "__main__":
    main()
