"""Who owns the cores while a kernel runs.

Kernels parallelise with Numba's ``prange`` and call BLAS single-threaded from
inside it.  An OpenBLAS pool spinning next to Numba's pool would fight it for
the cores, so BLAS is held at one thread while any kernel runs, and restored
when the last concurrent call finishes (the BLAS limit is process-wide, so it is
reference-counted across Python threads).

Numba's thread count is thread-local: each call sets its own and restores the
caller's.  Numba's ``workqueue`` threading layer aborts the process when two
Python threads launch parallel kernels at once, so under that layer calls are
serialised.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numba

_blas_lock = threading.Lock()
_blas_depth = 0
_blas_limiter = None
_controller = None

# Held around kernel launches only when Numba runs on its workqueue layer.
_workqueue_lock = threading.RLock()


def _blas_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


@contextmanager
def single_threaded_blas():
    """Hold every loaded BLAS at one thread; restore when the last holder exits."""
    global _blas_depth, _blas_limiter
    with _blas_lock:
        if _blas_depth == 0:
            _blas_limiter = _blas_controller().limit(limits=1, user_api="blas")
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def max_threads() -> int:
    """The most threads a kernel may use (``numba.config.NUMBA_NUM_THREADS``)."""
    return numba.config.NUMBA_NUM_THREADS


@contextmanager
def numba_threads(count: int):
    """Run this Python thread's kernels on ``count`` Numba threads."""
    previous = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _threading_layer_is_workqueue() -> bool:
    try:
        return numba.threading_layer() == "workqueue"
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        return numba.config.THREADING_LAYER == "workqueue"


@contextmanager
def kernel_threads(count: int):
    """Context for running kernels on ``count`` threads with BLAS single-threaded."""
    if _threading_layer_is_workqueue():
        with _workqueue_lock, numba_threads(count), single_threaded_blas():
            yield
    else:
        with numba_threads(count), single_threaded_blas():
            yield
