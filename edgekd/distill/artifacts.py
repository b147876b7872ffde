"""What a finished run leaves besides the student: generator, calibration set, pictures, teacher copy."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

import numpy as np
import torch

from edgekd.fileio import atomic_path
from edgekd.models.checkpoint import save_checkpoint
from edgekd.models.exported import compiled_kind
from edgekd.rundir import RunDir

if TYPE_CHECKING:
    from edgekd.distill.loop import Distiller


def write_artifacts(d: Distiller) -> None:
    from edgekd.distill.loop import synthesize
    from edgekd.distill.synthesizers import SYNTHESIZERS

    run = d.rundir
    g = d.m.generator
    teacher = d.m.teacher.float().to(memory_format=torch.contiguous_format)
    held: Dict[str, np.ndarray] = {}
    if SYNTHESIZERS[d.cfg.synthesizer].trains_generator:
        with atomic_path(run / RunDir.GENERATOR) as tmp:
            torch.save({"state_dict": {k: v.cpu() for k, v in g.state_dict().items()}, **g.describe(),
                        "run_id": d.run_id}, tmp)
        synth = synthesize(g, teacher, d.cfg.calib_images, seed=d.cfg.seed + 20_011)
    else:  # no generator to draw from: the images the run made (export calibrates on these)
        synth, held = _made_images(d)
    with atomic_path(run / RunDir.CALIB) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, x=synth["x"], teacher_logits=synth["teacher_logits"],
                                teacher_pred=synth["teacher_logits"].argmax(1), run_id=np.asarray(d.run_id or ""),
                                **held)
    _save_teacher(d)
    _plot_samples(d, synth)
    _plot_curves(d.history, run / RunDir.CURVES, d.teacher_accuracy)


def _made_images(d: Distiller) -> tuple:
    """Calibration images from the replay memory (a sample of what the student learnt from) and the
    held-out images the synthesizer withheld from the student, each with the teacher's logits."""
    gen = torch.Generator().manual_seed(d.cfg.seed + 20_011)
    source = d.memory if len(d.memory) else d.heldout
    idx = torch.randperm(len(source), generator=gen)[: d.cfg.calib_images].to(source.x.device)
    synth = {"x": source.x[idx].float().cpu().numpy(), "teacher_logits": source.t[idx].float().cpu().numpy()}
    n = len(d.heldout)
    held = {"held_x": d.heldout.x[:n].float().cpu().numpy(), "held_pred": d.heldout.t[:n].argmax(1).cpu().numpy()}
    return synth, held


def _jit_save(model: torch.jit.ScriptModule, path: Path, run_id: str) -> None:
    """torch.jit.save, atomically, with the run id; its deprecation warning is for the user's own code,
    not something a distill run should print (TorchScript teachers are what users have)."""
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(model, str(tmp), _extra_files={"edgekd_run_id": run_id})


def _save_teacher(d: Distiller) -> None:
    """A copy of the teacher in the run directory, so export can bundle it without the original path."""
    t = d.teacher_info
    model = t.model.float().to(memory_format=torch.contiguous_format).cpu()
    if isinstance(model, torch.jit.ScriptModule):
        _jit_save(model, d.rundir / RunDir.TEACHER, d.run_id or "")
    elif compiled_kind(model) == "torch.export":
        # An exported graph edgekd could not rebuild: the user's file as it is (loading finds the format
        # by content, whatever the name).
        with atomic_path(d.rundir / RunDir.TEACHER) as tmp:
            shutil.copyfile(t.path, tmp)
    elif t.format in ("edgekd", "state_dict", "torchscript", "exported"):  # compiled ones: rebuilt as a registered arch
        save_checkpoint(d.rundir / RunDir.TEACHER, model, t.spec,
                        {"source": str(t.path), "sha256": t.sha256, "run_id": d.run_id})
    else:  # a trusted pickle of an unregistered class: keep it scripted if possible
        try:
            scripted = torch.jit.script(model)
        except Exception:
            d.notes.append("teacher could not be scripted; export will need the original file")
            return
        _jit_save(scripted, d.rundir / RunDir.TEACHER, d.run_id or "")
    d.m.teacher.to(d.plan.device)


def _denormalise(x: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    img = x.transpose(0, 2, 3, 1) * np.asarray(std) + np.asarray(mean)
    return np.clip(img, 0, 1)


def _plot_samples(d: Distiller, synth: Dict[str, np.ndarray], per_class: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = d.spec
    x, logits = synth["x"], synth["teacher_logits"]
    pred, conf = logits.argmax(1), logits.max(1)
    k = spec.num_classes
    rows = list(range(min(k, 20)))  # a picture of 1000 rows helps nobody
    fig, axes = plt.subplots(len(rows), per_class, figsize=(per_class * 0.9, len(rows) * 0.9 + 0.4), squeeze=False)
    imgs = _denormalise(x, spec.mean, spec.std)
    for r, c in enumerate(rows):
        idx = np.where(pred == c)[0]
        total = len(idx)
        idx = idx[np.argsort(-conf[idx])][:per_class]
        for j in range(per_class):
            ax = axes[r][j]
            ax.axis("off")
            if j < len(idx):
                im = imgs[idx[j]]
                ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray" if im.shape[-1] == 1 else None)
        name = spec.labels[c] if spec.labels else str(c)
        axes[r][0].set_title(f"{name} ({total} of {len(x)})", fontsize=6, loc="left")
    fig.suptitle("synthetic images by teacher class", fontsize=8)
    fig.tight_layout()
    with atomic_path(d.rundir / RunDir.SAMPLES) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _plot_curves(history: List[Dict[str, Any]], path: Any, teacher_accuracy: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in history if "event" not in h]
    if not rows:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in ("loss_g", "loss_s", "kd", "adv", "oh", "bal", "bn"):
        pts = [(h["step"], h[key]) for h in rows if key in h]
        if pts:
            ax1.plot(*zip(*pts), label=key, lw=1)
    ax1.set_xlabel("step")
    ax1.set_title("losses")
    ax1.legend(fontsize=7)
    for key in ("accuracy", "agreement_real", "agreement_synthetic"):
        pts = [(h["time"], h[key]) for h in rows if key in h]
        if pts:
            ax2.plot(*zip(*pts), marker=".", label=key)
    if teacher_accuracy is not None:
        ax2.axhline(teacher_accuracy, ls="--", color="gray", label="teacher accuracy")
    ax2.set_xlabel("seconds")
    ax2.set_ylim(0, 1)
    ax2.set_title("student")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
