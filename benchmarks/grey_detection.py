"""Does edgekd.distill.grey tell a teacher of grey data from one of colour data? A check over many
architectures and normalisations, plus the trained teachers of time_to_accuracy.py that exist here.

The detector reads only the first convolution and the first BatchNorm's running mean. So any network
whose BatchNorm statistics were gathered over real images is a fair subject, trained or not: each
architecture below (at its random initial weights, several seeds) has its BN statistics gathered in
train mode over real images (no gradient step), grey ones (Fashion-MNIST copied to three channels) or
colour ones (photo10 patches, scripts/photo_patches.py; and the same patches desaturated, so that the
colour signal is weak: channel means 0.01-0.02 apart), under three normalisations (0.5/0.5, ImageNet's, the data's own). Then the trained
teachers in $EDGEKD_TEACHERS are read with the normalisation they were trained with.

    python benchmarks/grey_detection.py            # prints the table, writes results/grey-detection.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
ARCHS = ["resnet18", "resnet34", "resnet50", "resnet18-cifar", "wrn16-2", "wrn40-2", "mobilenet_v2",
         "mobilenet_v3_small", "efficientnet_b0", "mnasnet0_5", "shufflenet_v2_x1_0", "regnet_x_400mf"]
NORMS = {"0.5": ((0.5,), (0.5,)), "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "own": None}


def _images(kind: str, n: int, size: int) -> np.ndarray:
    """Float NCHW images in [0, 1], 3 channels."""
    from edgekd.data.datasets import load_dataset, resize_bilinear

    if kind == "grey":
        x = load_dataset("fashion-mnist").images[:n].astype(np.float32)  # N, 28, 28, 1 (test split, mixed classes)
        x = np.repeat(x, 3, axis=3)
    else:
        from time_to_accuracy import TEACHER_DIR

        x = np.load(TEACHER_DIR / "photo10_train.npz")["x"]  # sorted by class: take a random sample
        x = x[np.random.default_rng(0).permutation(len(x))[:n]].astype(np.float32)
        if kind == "pale":  # a quarter of the colour left: near-grey photographs
            lum = x.mean(3, keepdims=True)
            x = lum + 0.25 * (x - lum)
    x = resize_bilinear(x, (size, size)) / 255.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _gather_bn(model: torch.nn.Module, x: torch.Tensor) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over every batch
    model.train()
    with torch.no_grad():
        for b in x.split(64):
            model(b)
    model.eval()


def synthetic_rows(seeds: int, n: int, size: int) -> List[Dict[str, Any]]:
    from edgekd.distill.grey import grey_evidence
    from edgekd.models.registry import create_model

    rows = []
    for kind in ("grey", "colour", "pale"):
        raw = torch.from_numpy(_images(kind, n, size))
        for norm, ms in NORMS.items():
            if ms is None:
                mean = tuple(raw.mean((0, 2, 3)).tolist())
                std = tuple(raw.std((0, 2, 3)).tolist())
            else:
                mean, std = ms
            m_t = torch.tensor(mean).view(1, -1, 1, 1)
            s_t = torch.tensor(std).view(1, -1, 1, 1)
            x = (raw - m_t) / s_t
            for arch in ARCHS:
                for seed in range(seeds):
                    torch.manual_seed(seed)
                    model = create_model(arch, 10, 3)
                    _gather_bn(model, x)
                    ev = grey_evidence(model, (3, size, size), mean, std)
                    rows.append({"subject": f"{arch} (init, seed {seed})", "data": kind, "norm": norm,
                                 "truth": kind == "grey", "verdict": ev.grey, "means": ev.channel_means,
                                 "stderr": ev.stderr, "reason": ev.reason})
                    print(f"{kind:6s} {norm:8s} {arch:20s} s{seed}: {ev.grey}  {ev.channel_means} +- {ev.stderr}", flush=True)
    return rows


def teacher_rows() -> List[Dict[str, Any]]:
    from time_to_accuracy import TEACHERS, teacher_path

    from edgekd.distill.grey import grey_evidence
    from edgekd.models.checkpoint import load_model

    rows = []
    for name, t in TEACHERS.items():
        path = teacher_path(name)
        if not path.exists():
            continue
        loaded = load_model(path, spec_overrides=dict(t.overrides))
        spec = loaded.spec
        ev = grey_evidence(loaded.model, spec.input_shape, spec.mean, spec.std)
        truth = None if spec.in_channels == 1 else not name.startswith("photo10")
        rows.append({"subject": f"{name} (trained)", "data": t.data, "norm": "its own", "truth": truth,
                     "verdict": ev.grey, "means": ev.channel_means, "stderr": ev.stderr, "reason": ev.reason})
        print(f"{name}: {ev.grey}  {ev.reason}", flush=True)
    return rows


def _md(rows: List[Dict[str, Any]], cpu: str) -> str:
    def word(v: Any) -> str:
        return {True: "grey", False: "colour", None: "cannot tell"}[v]

    out = ["# Grey or colour data, read from the teacher's first BatchNorm (`edgekd/distill/grey.py`)", "",
           f"`python benchmarks/grey_detection.py` ({cpu}). Synthetic subjects: architectures at their random "
           "initial weights with BN statistics gathered over real images (grey: Fashion-MNIST copied to 3 "
           "channels; colour: photo10 patches; pale: the same patches with a quarter of their colour).", "",
           "## Verdicts by data and normalisation (synthetic subjects)", "",
           "| data | normalisation | subjects | grey | colour | cannot tell |", "|---|---|---|---|---|---|"]
    syn = [r for r in rows if "(init" in r["subject"]]
    for kind in ("grey", "colour", "pale"):
        for norm in NORMS:
            sel = [r for r in syn if r["data"] == kind and r["norm"] == norm]
            if sel:
                c = [sum(r["verdict"] is v for r in sel) for v in (True, False, None)]
                out.append(f"| {kind} | {norm} | {len(sel)} | {c[0]} | {c[1]} | {c[2]} |")
    for kind in ("grey", "colour", "pale"):
        spreads = [max(r["means"]) - min(r["means"]) for r in syn if r["data"] == kind and r["means"]]
        if spreads:
            out.append(f"| {kind}: channel means apart by | | {min(spreads):.4f} (least) | {max(spreads):.4f} (most) | | |")
    wrong = [r for r in syn if r["verdict"] is not None and r["verdict"] != r["truth"]]
    out += ["", f"Wrong verdicts: {len(wrong)} of {len(syn)}."]
    out += [f"- {r['subject']} {r['data']} {r['norm']}: {word(r['verdict'])} ({r['reason']})" for r in wrong]
    undecided = sorted({r["subject"].split(" (")[0] for r in syn if r["verdict"] is None})
    if undecided:
        out += ["", "Architectures with a 'cannot tell': " + ", ".join(undecided)]
    out += ["", "## Trained teachers (benchmarks/time_to_accuracy.py)", "",
            "| teacher | data | verdict | channel means (+- s.e.) |", "|---|---|---|---|"]
    for r in rows:
        if "(trained)" in r["subject"]:
            means = " / ".join(f"{m:.3f}" for m in r["means"]) + (f" (+-{max(r['stderr']):.3f})" if r["stderr"] else "")
            out.append(f"| {r['subject']} | {r['data']} | {word(r['verdict'])} | {means or r['reason']} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--report", action="store_true", help="rewrite the .md from the saved .json, nothing run")
    args = ap.parse_args()
    if args.report:
        saved = json.loads((RESULTS / "grey-detection.json").read_text())
        cpu = saved["cpu"]
        (RESULTS / "grey-detection.md").write_text(_md(saved["rows"], f"{cpu['cpu']}, flags {' '.join(cpu['flags'])}"))
        return
    from edgekd.cpu import cpu_summary

    torch.set_num_threads(1)
    t0 = time.time()
    rows = synthetic_rows(args.seeds, args.images, args.size) + teacher_rows()
    cpu = cpu_summary()
    kind = f"{cpu['cpu']}, flags {' '.join(cpu['flags'])}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grey-detection.json").write_text(json.dumps({"rows": rows, "cpu": cpu, "seconds": round(time.time() - t0, 1),
                                                            "args": vars(args)}, indent=1))
    md = _md(rows, kind)
    (RESULTS / "grey-detection.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
