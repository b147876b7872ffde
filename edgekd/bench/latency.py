"""Latency measurement: warm-up, then repeated timed calls for a minimum duration or a count."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import numpy as np


@dataclass
class LatencyStats:
    batch_size: int
    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    throughput_ips: float  # images per second at this batch size

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def summarize(samples_s: List[float], batch_size: int) -> LatencyStats:
    ms = np.asarray(samples_s) * 1e3
    mean = float(ms.mean())
    return LatencyStats(batch_size, len(ms), mean, float(np.percentile(ms, 50)), float(np.percentile(ms, 90)),
                        float(np.percentile(ms, 99)), float(ms.min()), batch_size / (mean / 1e3))


def measure(fn: Callable[[], object], batch_size: int, warmup_s: float = 1.0, duration_s: Optional[float] = 3.0,
            iterations: Optional[int] = None, min_runs: int = 10) -> LatencyStats:
    """Time fn() (one inference of one prepared batch; preprocessing is outside, by construction)."""
    end = time.perf_counter() + warmup_s
    fn()  # at least one warm-up call: first calls allocate and pick kernels
    while time.perf_counter() < end:
        fn()
    samples: List[float] = []
    deadline = time.perf_counter() + (duration_s or 0.0)
    while True:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if iterations is not None:
            if len(samples) >= iterations:
                break
        elif len(samples) >= min_runs and time.perf_counter() >= deadline:
            break
    return summarize(samples, batch_size)
