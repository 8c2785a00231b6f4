"""How fast this machine runs right now: the seconds of one fixed CPU-bound workload (a numpy sort and
a pure-Python loop, one thread), timed before and after a benchmark.

The machine's CPU speed drifts by up to 2x within seconds, so an absolute figure (the nightly DAG's
wall time against its 5-minute target) means little without the speed it was measured at: a run
whose probe took 1.5x as long as another's ran on a machine 1.5x slower, whatever the code did."""

from __future__ import annotations

import time

import numpy as np

SORTED_VALUES = 4_000_000
LOOP_STEPS = 30_000_000


def probe_seconds(repeats: int = 3) -> float:
    """The fastest of `repeats` runs of the workload (the fastest is the least disturbed one)."""
    values = np.random.default_rng(0).random(SORTED_VALUES)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.sort(values)
        total = 0
        for step in range(LOOP_STEPS):
            total += step & 7
        best = min(best, time.perf_counter() - started)
    return round(best, 3)
