"""In-process timing, for notebooks and quick comparisons.

pyperf's Runner spawns worker processes and does not run inside IPython; this
times a callable in the current process instead.  Use pyperf (``perf/``) for
publishable figures.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of repeated calls, in seconds."""

    runs: tuple[float, ...]

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the runs were."""
        return (max(self.runs) - min(self.runs)) / self.median

    def gflops(self, flops: int) -> float:
        """Speed of the best run for a call of ``flops`` floating-point operations."""
        return flops / self.best / 1e9

    def __str__(self) -> str:
        return (f"best {self.best * 1e3:.3f} ms, median {self.median * 1e3:.3f} ms "
                f"over {len(self.runs)} runs")


def measure(call: Callable[[], object], *, repeats: int = 7, warmup: int = 1,
            min_seconds: Optional[float] = None) -> Timing:
    """Time ``call()`` after ``warmup`` untimed calls.

    Parameters
    ----------
    call : callable
        Called with no arguments.
    repeats : int, default 7
        Timed calls (at least 1).
    warmup : int, default 1
        Untimed calls first (JIT compilation or loading, cache warm-up).
    min_seconds : float, optional
        Keep timing beyond ``repeats`` until this much time has been spent.

    Returns
    -------
    Timing

    Raises
    ------
    ValueError
        If ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0; got {warmup}")
    for _ in range(warmup):
        call()
    runs = []
    spent = 0.0
    while len(runs) < repeats or (min_seconds is not None and spent < min_seconds):
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        runs.append(elapsed)
        spent += elapsed
    return Timing(tuple(runs))
