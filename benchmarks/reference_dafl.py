"""The reference DAFL code (huawei-noah/Data-Efficient-Model-Compression, DAFL/DAFL-train.py) on one of
time_to_accuracy.py's teachers, for the same wall-clock budget on the same machine: issue 13's baseline.

None of the reference code is in this repository. Bring a checkout of it and name it:

    python benchmarks/reference_dafl.py --dafl /path/to/Data-Efficient-Model-Compression \\
        mnist-lenet5-dafl 0 --budget 300        # then: time_to_accuracy.py report

Its script is copied to a temp dir and changed only where it cannot run here, each change listed in
PATCHES and asserted to apply: CPU instead of CUDA; the teacher comes from edgekd's loader as an eager module
whose `out_feature=True` gives the input of its first nn.Linear (DAFL's f_T: in its lenet.py, conv3's
output); no dataset download; a wall-clock budget. Everything else (its
generator, losses, optimisers, batch size, learning rates, its student LeNet5Half or ResNet18) is the
reference's. The student is scored every --eval-every seconds, off the clock, on the same images, prepared the same way
(edgekd's prepare_images with the teacher's spec), as time_to_accuracy.py scores edgekd's students; the
row lands in time-to-accuracy.jsonl with method "reference-dafl", so `report` puts the two side by side.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from time_to_accuracy import ROWS, TEACHERS, teacher_path  # noqa: E402

# (old, new) text replacements on DAFL-train.py; each must match at least once.
PATCHES: List[Tuple[str, str]] = [
    ("import resnet\n", "import resnet\nimport _edgekd_side as _ek\n"),
    (".cuda()", ""),  # CPU only
    ("nn.DataParallel(teacher)", "teacher"),
    ("nn.DataParallel(generator)", "generator"),
    ("nn.DataParallel(net)", "net"),
    ("teacher = torch.load(opt.teacher_dir + 'teacher')", "teacher = _ek.teacher()"),
    # No download: the test sets are replaced by the held-out images the driver prepared (never trained on).
    ("data_test = MNIST(", "data_test = _ek.test_set() or MNIST("),
    ("data_test = CIFAR10(", "data_test = _ek.test_set() or CIFAR10("),
    ("data_test = CIFAR100(", "data_test = _ek.test_set() or CIFAR100("),
    ("        optimizer_S.step() \n", "        optimizer_S.step() \n        _ek.tick(net, epoch * 120 + i)\n"),
]

SIDE_MODULE = '''
import json, time, sys
import numpy as np
import torch
import torch.nn as nn

CFG = json.load(open("side.json"))
T0 = time.time()
LAST = [-1e9]
OFF_CLOCK = [0.0]  # seconds spent scoring on real images
CURVE = []
X = torch.from_numpy(np.load("heldout.npz")["x"])
Y = torch.from_numpy(np.load("heldout.npz")["y"]).long()


class _WithFeatures(nn.Module):
    """DAFL calls teacher(x, out_feature=True) -> (logits, f_T); f_T is what the convolutions give the
    classifier (DAFL's lenet.py: conv3's output, the input of fc1), so the input of the first nn.Linear."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.feat = None
        first = [m for m in model.modules() if isinstance(m, nn.Linear)][0]
        first.register_forward_pre_hook(lambda _m, inp: setattr(self, "feat", inp[0]))

    def forward(self, x, out_feature=False):
        out = self.model(x)
        return (out, self.feat.flatten(1)) if out_feature else out


def teacher():
    return _WithFeatures(torch.load(CFG["teacher"], weights_only=False).eval())


def test_set():
    return torch.utils.data.TensorDataset(X, Y)


def _score(net):
    was = net.training
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(X[i:i + 500]).argmax(1) for i in range(0, len(X), 500)])
    net.train(was)
    return float((pred == Y).float().mean())


def tick(net, step):
    t = time.time() - T0 - OFF_CLOCK[0]
    done = t >= CFG["budget"]
    if done or t - LAST[0] >= CFG["eval_every"]:
        LAST[0] = t
        t_score = time.time()
        CURVE.append((round(t, 1), _score(net), None))
        OFF_CLOCK[0] += time.time() - t_score  # scoring runs off the clock, as edgekd's does
        print(f"[edgekd] {t:.0f}s step {step + 1} accuracy {CURVE[-1][1]:.4f}", flush=True)
    if done:
        json.dump({"curve": CURVE, "steps": step + 1}, open("curve.json", "w"))
        sys.exit(0)
'''


def _patched_script(dafl_dir: Path) -> str:
    text = (dafl_dir / "DAFL-train.py").read_text()
    for old, new in PATCHES:
        if old not in text:
            sys.exit(f"reference_dafl: {old!r} not found in {dafl_dir / 'DAFL-train.py'}: another version of the "
                     "reference code? (this was written against its master branch)")
        text = text.replace(old, new)
    return text


def _eager_teacher(name: str, work: Path) -> Tuple[Path, Any]:
    """The teacher as an eager module saved for DAFL's script (edgekd rebuilds TorchScript files of a
    registered architecture; DAFL needs the features a hook reads), and its loaded form."""
    import torch

    from edgekd.models.checkpoint import load_model

    t = TEACHERS[name]
    loaded = load_model(teacher_path(name), spec_overrides=dict(t.overrides))
    if isinstance(loaded.model, torch.jit.ScriptModule):
        sys.exit(f"reference_dafl: {name} stays TorchScript in edgekd (no eager rebuild), so its features "
                 "cannot be read for DAFL's out_feature")
    path = work / "teacher.pt"
    torch.save(loaded.model, path)
    return path, loaded


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from edgekd.cpu import cpu_summary
    from edgekd.data.datasets import load_dataset, prepare_images

    dafl_dir = Path(args.dafl) / "DAFL" if (Path(args.dafl) / "DAFL").is_dir() else Path(args.dafl)
    t = TEACHERS[args.teacher]
    work = Path(tempfile.mkdtemp(prefix="reference-dafl-"))
    for f in ("lenet.py", "resnet.py"):
        shutil.copy(dafl_dir / f, work / f)
    (work / "DAFL-train.py").write_text(_patched_script(dafl_dir))
    (work / "_edgekd_side.py").write_text(SIDE_MODULE)
    tfile, loaded = _eager_teacher(args.teacher, work)
    ds = load_dataset(t.data)
    x = prepare_images(ds.images, loaded.spec).astype(np.float32)
    with torch.no_grad():
        teacher_acc = float((loaded.model(torch.from_numpy(x)).argmax(1).numpy() == ds.labels).mean())
    np.savez(work / "heldout.npz", x=x, y=ds.labels.astype(np.int64))
    (work / "side.json").write_text(json.dumps({"teacher": str(tfile), "budget": args.budget, "eval_every": args.eval_every}))
    channels, size = x.shape[1], x.shape[2]
    # MNIST mode: LeNet5Half student and Adam for both, as the paper's MNIST run; the other modes a ResNet18.
    reference_args = ["--dataset", args.mode, "--channels", str(channels), "--img_size", str(size),
                      "--output_dir", str(work) + "/", *args.extra]
    # The reference seeds nothing; seeding here makes a row repeatable like edgekd's.
    (work / "run.py").write_text(
        f"import random, numpy, torch\ntorch.manual_seed({args.seed}); random.seed({args.seed}); "
        f"numpy.random.seed({args.seed})\nimport runpy, sys\nsys.argv = ['DAFL-train.py'] + sys.argv[1:]\n"
        "runpy.run_path('DAFL-train.py', run_name='__main__')\n")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "run.py", *reference_args], cwd=work)
    if proc.returncode != 0 or not (work / "curve.json").exists():
        sys.exit(f"reference_dafl: the reference script failed (exit {proc.returncode}); its files are in {work}")
    out = json.loads((work / "curve.json").read_text())
    curve = out["curve"]
    return {"teacher": args.teacher, "method": "reference-dafl", "resolved_method": "reference-dafl",
            "seed": args.seed, "tag": args.tag, "sets": {"extra": args.extra, "mode": args.mode},
            "budget_s": args.budget, "steps": out["steps"], "s_steps": None, "accuracy": round(curve[-1][1], 4),
            "best_seen": round(max(a for _, a, _ in curve), 4), "teacher_accuracy": round(teacher_acc, 4),
            "curve": curve, "events": [], "plan": {"precision": "fp32", "source": "reference code"},
            "wall_s": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads(), "cpu": cpu_summary(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="More arguments for DAFL-train.py go after --, e.g. -- --batch_size 256")
    ap.add_argument("--dafl", required=True, help="checkout of huawei-noah/Data-Efficient-Model-Compression")
    ap.add_argument("teacher", choices=list(TEACHERS))
    ap.add_argument("seed", type=int)
    ap.add_argument("--budget", type=float, default=600)
    ap.add_argument("--eval-every", type=float, default=30)
    ap.add_argument("--mode", default="MNIST", choices=["MNIST", "cifar10", "cifar100"],
                    help="the reference's --dataset: which student and optimiser it builds (not a download)")
    ap.add_argument("--tag", default="")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # argparse takes no options after a positional list
    args = ap.parse_args(argv[:cut])
    args.extra = argv[cut + 1:]
    row = run(args)
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    with open(ROWS, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
