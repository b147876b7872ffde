"""A run on disk: the metrics log, atomic checkpoints and the exact resume from them.

A checkpoint holds everything the next iteration depends on (models, optimisers, replay memory, random
streams, the chosen schedule and plans, the kept student), so a killed run resumed goes on as if it had
never stopped. Under torchrun every rank's own state is gathered into rank 0's file.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch

from edgekd import __version__
from edgekd.distill.config import settings_as_run
from edgekd.distill.precision import DTYPES, ExecutionPlan
from edgekd.errors import EdgekdError, UsageError
from edgekd.fileio import atomic_path
from edgekd.rundir import RunDir

if TYPE_CHECKING:
    from edgekd.distill.config import DistillConfig
    from edgekd.distill.loop import Distiller

# Settings a resumed run may change: how long it goes on and how it reports; everything else shapes
# the models, the memory or the schedule the checkpoint was made with.
RESUME_MAY_CHANGE = ("iterations", "time_budget", "eval_every_s", "eval_images", "checkpoint_every_s",
                     "checkpoint_every", "max_recoveries", "max_collapses", "keep_best", "device", "precision", "channels_last")


def log(d: Distiller, record: Dict[str, Any]) -> None:
    d.history.append(record)
    if d.world.main:
        with open(d.rundir / RunDir.METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_records(path: Path) -> List[Dict[str, Any]]:
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # torn by a kill or a full disk while appending
        if isinstance(record, dict):
            records.append(record)
    return records


def _on_cpu(state: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v.cpu() if torch.is_tensor(v) else v for k, v in state.items()}


def _rank_state(d: Distiller) -> Dict[str, Any]:
    """What differs between ranks: the random streams and the replay memory."""
    return {"rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if d.plan.device.type == "cuda" else None,
            "memory": _on_cpu(d.memory.state_dict()), "heldout": _on_cpu(d.heldout.state_dict()),
            "bn_average": d.bn_hook.state_dict() if d.bn_hook else {},
            "cr_bank": d.m.contrast.bank.state_dict() if d.m.contrast else None}


def save_checkpoint(d: Distiller) -> None:
    """Every rank calls it (their states are gathered); rank 0 writes, atomically."""
    ranks = d.world.gather(_rank_state(d))
    if not d.world.main:
        return
    state = {
        "edgekd_version": __version__, "step": d.step, "elapsed": d.elapsed,
        "measure_seconds": d.measure_seconds,
        "models": d.m.state_dict(), **ranks[0],  # rank 0's own streams, memory and BN average at the top
        "scalers": {k: v.state_dict() for k, v in d.scalers.items()},
        "lr_scale": d.lr_scale, "collapse_run": d.collapse_run, "collapses": d.collapses, "events": d.events,
        "ema_updates": d.ema_updates,
        "teacher_sha256": d.teacher_info.sha256, "config": d.cfg.to_dict(),
        "plans": {role: [p.precision, p.channels_last] for role, p in d.plans.items()},
        "s_steps": [d.s_steps, d.s_steps_chosen], "batch": d.batch, "batch_fit": d.batch_fit,
        "pool": {"x": d.pool_x.cpu(), "t": d.pool_t.cpu(), "rng": d._pool_rng.get_state()},
        "best": None if d.best_model is None else {"step": d.best_step, "state": d.best_model.state_dict()},
        "world_size": d.world.size, "ranks": ranks[1:],
    }
    with atomic_path(d.rundir / RunDir.CHECKPOINT) as tmp:
        torch.save(state, tmp)


def periodic_checkpoint(d: Distiller) -> None:
    """A checkpoint that cannot be written (disk full) costs resumability, not the run: warn, go on."""
    try:
        save_checkpoint(d)
    except (OSError, EdgekdError) as e:
        d._event(f"step {d.step}: could not write {RunDir.CHECKPOINT} ({e}); training goes on")


def check_resumable(saved: Dict[str, Any], cfg: DistillConfig) -> None:
    saved = settings_as_run(saved)  # a setting newer than the checkpoint must be at its default to resume
    for key, value in cfg.to_dict().items():
        if key not in RESUME_MAY_CHANGE and saved.get(key, value) != value:
            raise UsageError(f"--resume: {key} was {saved[key]!r} in this run, not {value!r}: resume with the "
                             "run's settings (edgekd distill --resume reads them from its config.json)")


def load_checkpoint(d: Distiller) -> None:
    path = d.rundir / RunDir.CHECKPOINT
    try:
        state = torch.load(path, map_location=d.plan.device, weights_only=True)
    except Exception as e:
        raise UsageError(f"--resume: {path} is unreadable ({type(e).__name__}); start a new run") from None
    if state["teacher_sha256"] != d.teacher_info.sha256:
        raise UsageError(f"--resume: {d.rundir} was distilled from another teacher file")
    check_resumable(state["config"], d.cfg)
    saved_world = int(state.get("world_size", 1))
    if saved_world != d.world.size:
        raise UsageError(f"--resume: this run was distilled by {saved_world} process(es), not {d.world.size}: "
                         + ("resume it with torchrun --nproc_per_node " + str(saved_world) + " -m edgekd distill ..."
                            if saved_world > 1 else "resume it without torchrun"))
    if d.world.rank:
        state.update(state["ranks"][d.world.rank - 1])
    restore_plans(d, state.get("plans"))
    d.m.load_state_dict(state["models"])
    d.memory.load_state_dict({k: v.to(d.plan.device) if torch.is_tensor(v) else v for k, v in state["memory"].items()})
    if "heldout" in state:
        d.heldout.load_state_dict(state["heldout"])
    for k, v in state["scalers"].items():
        d.scalers[k].load_state_dict(v)
    torch.set_rng_state(state["rng_cpu"].cpu())
    if state["rng_cuda"] is not None:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
    d.step, d.elapsed = int(state["step"]), float(state["elapsed"])
    d.measure_seconds = float(state.get("measure_seconds", 0.0))
    d.lr_scale, d.collapse_run = float(state["lr_scale"]), int(state["collapse_run"])
    d.events = list(state["events"])
    d.ema_updates = int(state.get("ema_updates", 0))
    d.collapses = int(state.get("collapses", 0))
    s_steps, d.s_steps_chosen = state.get("s_steps", [d.cfg.s_steps, False])
    d.s_steps = int(s_steps)
    d.batch = int(state.get("batch", d.cfg.batch_size))
    d.batch_fit = state.get("batch_fit")
    if "pool" in state:
        dev = d.plan.device
        d.pool_x, d.pool_t = state["pool"]["x"].to(dev), state["pool"]["t"].to(dev)
        d._pool_rng.set_state(state["pool"]["rng"].cpu())
    if d.bn_hook and state.get("bn_average"):
        d.bn_hook.load_state_dict(state["bn_average"], d.plan.device)
    if d.m.contrast and state.get("cr_bank"):
        d.m.contrast.bank.load_state_dict(state["cr_bank"])
    if state.get("best"):
        d.best_model = copy.deepcopy(d.m.final_student).requires_grad_(False)
        d.best_model.load_state_dict(state["best"]["state"])
        d.best_step = int(state["best"]["step"])
    # Metrics logged after the checkpoint belong to the lost future: drop them.
    # A torn last line (killed while appending) is dropped with them.
    metrics = d.rundir / RunDir.METRICS
    if metrics.exists() and d.world.main:
        d.history = [r for r in read_records(metrics) if r.get("step", math.inf) <= d.step]
        metrics.write_text("".join(json.dumps(r) + "\n" for r in d.history))
    d.progress.message(f"resumed {d.rundir} at step {d.step} ({d.elapsed:.0f}s done)")


def restore_plans(d: Distiller, saved: Optional[Dict[str, Any]], why: str = "resumed") -> None:
    """A resumed run goes on with the plans it started with, whatever a probe would say today
    (and every rank with rank 0's)."""
    for role, (precision, cl) in (saved or {}).items():
        plan = d.plans[role]
        if (plan.precision, plan.channels_last) != (precision, cl):
            reason = f"{precision}{', channels_last' if cl else ''} ({why})"
            d.plans[role] = ExecutionPlan(plan.device, DTYPES[precision], bool(cl), reason)
    d.plans["teacher"].module(d.m.teacher)
    d.plans["teacher"].module(d.m.generator)
    for model in (d.m.student, d.m.ema):
        if model is not None:
            d.plans["student"].module(model)
