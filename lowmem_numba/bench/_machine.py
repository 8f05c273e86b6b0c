"""What the benchmarks need to know about this machine and the engine's GEMMs."""

from __future__ import annotations

import numpy as np

from .. import _costmodel, _microkernel, _scheduler
from .._algorithms._common import batched_gemm
from .._split import split_work
from .._threads import kernel_threads, max_threads
from .._timing import measure
from .._tuning import GEMM_MIN_ROWS, PATCH_GEMM_MIN_COLS

__all__ = ["forget_plans", "max_threads", "microkernel_tile", "recalibrate", "sgemm_seconds"]


def recalibrate():
    """Measure the cost model's machine constants again and use them from now on.

    What ``lowmem-numba calibrate`` does.  Stored in the user cache unless a
    value stayed implausible (then the defaults are used in this process only).

    Returns
    -------
    run : CalibrationRun
        ``.calibration`` (the constants), ``.fallbacks``, ``.fit_rms``, ``.seconds``.
    stored : bool
    """
    return _costmodel.recalibrate()


def forget_plans() -> None:
    """Forget the plans memoised in this process, so the next ones are made afresh."""
    _scheduler.clear_memo()


def sgemm_seconds(m: int, n: int, k: int, threads: int = 1, repeats: int = 5) -> float:
    """Best time of one ``m x n x k`` sgemm through the engine's scipy binding.

    Split over ``threads`` the way the kernels split GEMMs (each tile one
    single-threaded sgemm, BLAS held at one thread), so it is the reference a
    lowering's speed is compared with.

    Returns
    -------
    float
        Seconds.
    """
    rng = np.random.default_rng(0)
    a = rng.random(m * k, dtype=np.float32)
    b = rng.random(k * n, dtype=np.float32)
    c = np.empty(m * n, np.float32)
    no_bias = np.empty(0, np.float32)
    split = split_work(1, m, n, threads, min_rows=GEMM_MIN_ROWS, min_cols=PATCH_GEMM_MIN_COLS)

    def call():
        with kernel_threads(threads):
            batched_gemm(1, m, n, k, a, 0, 0, k, b, 0, 0, n, c, 0, 0, n, no_bias, 0, split.row_blocks,
                         split.col_tiles)

    return measure(call, repeats=repeats).best


def microkernel_tile() -> tuple[int, int, str]:
    """The own micro-kernel's register tile on this machine: (pixels, channels, ISA)."""
    return _microkernel.MR, _microkernel.NR, _microkernel.ISA
