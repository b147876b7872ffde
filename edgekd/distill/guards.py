"""What keeps a run from losing work: Ctrl-C at an iteration boundary, NaN recovery from the last good
in-memory snapshot, and generator-collapse detection."""

from __future__ import annotations

import copy
import signal
import time
from typing import TYPE_CHECKING, Any, Dict

import torch
import torch.nn as nn

from edgekd.distill.generator import reset_weights
from edgekd.distill.persistence import save_checkpoint
from edgekd.errors import TrainingError
from edgekd.rundir import RunDir

if TYPE_CHECKING:
    from edgekd.distill.loop import Distiller


class StopFlag:
    """First Ctrl-C (or SIGTERM: a scheduler, torchrun) asks the loop to stop at the next iteration
    boundary and save; a second one aborts. `grace_s`: a second signal sooner than this counts as the
    first (torchrun passes the terminal's Ctrl-C on to its workers, which then see it twice)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, grace_s: float = 0.0) -> None:
        self.requested = False
        self.grace_s = grace_s
        self._first = 0.0
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        try:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        except ValueError:  # not the main thread: no signal handling, Ctrl-C behaves as usual
            self._previous = {}
        return self

    def _handle(self, *_: Any) -> None:
        if self.requested and time.monotonic() - self._first >= self.grace_s:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self._first = True, time.monotonic()

    def __exit__(self, *_: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def finite_params(module: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


def take_snapshot(d: Distiller) -> None:
    d.snapshot = copy.deepcopy(d.m.state_dict())


def recover(d: Distiller, why: str) -> None:
    """Back to the last good snapshot at half the learning rates; an error after max_recoveries in a row."""
    d.recoveries_in_a_row += 1
    if d.snapshot is None or d.recoveries_in_a_row > d.cfg.max_recoveries:
        raise TrainingError(f"distillation diverged ({why}) {d.recoveries_in_a_row} times in a row: "
                            "lower the learning rates (--set lr_g=... lr_s=...) or use --precision fp32")
    d.m.load_state_dict(copy.deepcopy(d.snapshot))
    d.lr_scale *= 0.5
    d._event(f"step {d.step}: {why}; restored the last good state, learning rates x{d.lr_scale:g}")


def check_collapse(d: Distiller, top_share: float) -> None:
    """A generator whose batches fall to one class for collapse_patience steps is re-initialised; after
    max_collapses of those the run stops with its state saved."""
    cfg = d.cfg
    d.collapse_run = d.collapse_run + 1 if top_share >= cfg.collapse_fraction else 0
    if d.collapse_run < cfg.collapse_patience:
        return
    d.collapse_run = 0
    d.collapses += 1
    if d.collapses > cfg.max_collapses:
        save_checkpoint(d)
        raise TrainingError(
            f"the generator collapsed to one class {d.collapses} times (step {d.step}): this teacher "
            "needs another setting, e.g. --set w_bal=20 or --method dfq; the last state is in "
            f"{d.rundir / RunDir.CHECKPOINT}")
    reset_weights(d.m.generator)
    d.world.sync_module(d.m.generator)
    d.m.opt_g.state.clear()
    d._event(f"step {d.step}: generator collapsed to one class "
             f"({top_share:.0%} of a batch for {cfg.collapse_patience} steps); re-initialised it")
