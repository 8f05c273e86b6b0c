"""Who owns the cores while a kernel runs.

Kernels parallelise with Numba's ``prange`` and call BLAS single-threaded from
inside it.  An OpenBLAS pool spinning next to Numba's pool would fight it for
the cores, so BLAS is held at one thread while any kernel runs, and restored
when the last concurrent call finishes (the BLAS limit is process-wide, so it is
reference-counted across Python threads).

Numba's thread count is thread-local: each call sets its own and restores the
caller's.  Numba's ``workqueue`` threading layer aborts the process when two
Python threads launch parallel kernels at once, so launches are serialised
unless the layer is known to be thread-safe; the layer is made known (started)
before the first launch, so the very first calls are covered too.

GNU OpenMP does not survive ``fork``: a process forked after its parent started
Numba's ``omp`` layer gets a RuntimeError from its first kernel call instead of
being terminated inside it.  Every parallel kernel of the library must run
inside :func:`kernel_threads`.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from contextlib import contextmanager
from typing import Optional

import numba
from numba.np.ufunc import parallel as _numba_parallel

_blas_lock = threading.Lock()
_blas_depth = 0
# While held: [(_BlasThreads, its thread count before)], restored at the end.
_blas_restore = None
_blas_libraries = None

# Held around kernel launches unless Numba's layer is one of these (workqueue
# aborts on concurrent launches from several Python threads).
_THREAD_SAFE_LAYERS = ("omp", "tbb")
_serial_lock = threading.RLock()

# Set in a child forked after its parent started GNU OpenMP (see
# _after_fork_in_child): kernels must not start there.
_forked_after_openmp = False

# Per Python thread: how deep inside kernel_threads it is.
_inside = threading.local()


class _BlasThreads:
    """Reads and sets one loaded BLAS library's thread count.

    OpenBLAS with its own (pthreads) pool is driven through its C functions
    ``openblas_get_num_threads`` / ``openblas_set_num_threads`` directly, found
    in the library threadpoolctl located.  threadpoolctl's own setter (3.6 and
    later) lets only the first Python thread that called it change an OpenBLAS
    pool and silently ignores every other thread: a call from another thread
    then ran its GEMMs on a multi-threaded BLAS inside Numba's threads (a
    40 us 1x1 layer took 0.1-8 ms).  The direct calls also cost 0.2 us each
    against 0.5-0.7 us through the controller.  Other libraries (MKL, BLIS,
    OpenMP builds of OpenBLAS, whose limit is per thread) go through
    threadpoolctl's controller.
    """

    __slots__ = ("get", "set")

    def __init__(self, controller):
        direct = _openblas_functions(controller)
        if direct is None:
            self.get = lambda: controller.num_threads
            self.set = controller.set_num_threads
        else:
            self.get, self.set = direct


def _openblas_functions(controller):
    """``(get, set)`` ctypes functions of a pthreads OpenBLAS, or None."""
    if (getattr(controller, "internal_api", None) != "openblas"
            or getattr(controller, "threading_layer", None) == "openmp"):
        return None
    dynlib = getattr(controller, "dynlib", None)
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            try:
                get = getattr(dynlib, f"{prefix}openblas_get_num_threads{suffix}")
                set_ = getattr(dynlib, f"{prefix}openblas_set_num_threads{suffix}")
            except AttributeError:
                continue
            get.restype, get.argtypes = ctypes.c_int, []
            set_.restype, set_.argtypes = None, [ctypes.c_int]
            return get, set_
    return None


def _blas_libraries_loaded():
    """One :class:`_BlasThreads` per BLAS library loaded (found once)."""
    global _blas_libraries
    if _blas_libraries is None:
        from threadpoolctl import ThreadpoolController

        controllers = ThreadpoolController().select(user_api="blas").lib_controllers
        _blas_libraries = [_BlasThreads(controller) for controller in controllers]
    return _blas_libraries


def _hold_blas() -> None:
    """Hold every loaded BLAS at one thread (reference-counted across Python threads)."""
    global _blas_depth, _blas_restore
    with _blas_lock:
        if _blas_depth == 0:
            _blas_restore = [(lib, lib.get()) for lib in _blas_libraries_loaded()]
            for lib, count in _blas_restore:
                if count != 1:
                    lib.set(1)
        _blas_depth += 1


def _release_blas() -> None:
    """Undo one :func:`_hold_blas`; the last holder restores the thread counts."""
    global _blas_depth, _blas_restore
    with _blas_lock:
        _blas_depth -= 1
        # <= and the None check: a child forked from inside a hold restarts
        # the count at zero (see _after_fork_in_child).
        if _blas_depth <= 0:
            _blas_depth = 0
            if _blas_restore is not None:
                for lib, count in _blas_restore:
                    if count != 1:
                        lib.set(count)
                _blas_restore = None


@contextmanager
def single_threaded_blas():
    """Hold every loaded BLAS at one thread; restore when the last holder exits."""
    _hold_blas()
    try:
        yield
    finally:
        _release_blas()


def max_threads() -> int:
    """The most threads a kernel may use (``numba.config.NUMBA_NUM_THREADS``)."""
    return numba.config.NUMBA_NUM_THREADS


def _numba_thread_functions():
    """The threading layer's C getter and setter of this Python thread's
    Numba thread count, or None if this Numba version lacks them.

    Numba's own ``get_num_threads`` / ``set_num_threads`` call them after
    validating and making sure the layer is launched, on every call: 0.7 and
    1.1 us against 0.15 and 0.3 us (timeit), about 2 us of the fixed cost of
    a call that runs on fewer threads than its caller.  Found once, after the
    layer has started (they are the started layer's own).
    """
    global _thread_functions
    if _thread_functions is not None:
        return _thread_functions
    if _started_layer() is None:
        return None
    get = getattr(_numba_parallel, "_get_num_threads", None)
    set_ = getattr(_numba_parallel, "_set_num_threads", None)
    if get is None or set_ is None:
        return None
    _thread_functions = (get, set_)
    return _thread_functions


_thread_functions = None


def numba_thread_count() -> int:
    """This Python thread's Numba thread count (``numba.get_num_threads``)."""
    functions = _numba_thread_functions()
    return numba.get_num_threads() if functions is None else functions[0]()


def _swap_num_threads(count: int) -> int:
    """Set this Python thread's Numba thread count to ``count`` and return
    the previous count (see :func:`_numba_thread_functions`)."""
    if not 1 <= count <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"thread count {count} outside 1..{numba.config.NUMBA_NUM_THREADS}")
    functions = _thread_functions or _numba_thread_functions()
    if functions is None:
        previous = numba.get_num_threads()
        if count != previous:
            numba.set_num_threads(count)
        return previous
    get, set_ = functions
    previous = get()
    if count != previous:
        set_(count)
    return previous


def _restore_num_threads(count: int) -> None:
    """Set this Python thread's Numba thread count back to ``count``, a
    count :func:`_swap_num_threads` returned (valid; one C call, without
    reading the current count first)."""
    functions = _thread_functions or _numba_thread_functions()
    if functions is None:
        numba.set_num_threads(count)
    else:
        functions[1](count)


@contextmanager
def numba_threads(count: int):
    """Run this Python thread's kernels on ``count`` Numba threads."""
    previous = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _started_layer() -> Optional[str]:
    """Numba's threading layer, starting it first if no kernel has run yet.

    ``numba.get_num_threads`` makes Numba choose its layer and launch its
    threads (under Numba's own lock, once), so the layer is known before the
    first parallel region, whatever ``NUMBA_THREADING_LAYER``,
    ``NUMBA_THREADING_LAYER_PRIORITY`` or the libraries installed (Numba falls
    back to workqueue when libgomp and TBB are missing) make it.  Once
    started, the layer never changes in a process, so it is asked once.
    """
    global _layer
    if _layer is None:
        openmp_counts = _openmp_thread_counts()
        numba.get_num_threads()
        _restore_openmp_thread_counts(openmp_counts)
        try:
            _layer = numba.threading_layer()
        except ValueError:  # not started after all: treat as unknown
            return None
    return _layer


def _openmp_thread_counts():
    """``[(controller, its thread count)]`` of every OpenMP runtime loaded."""
    from threadpoolctl import ThreadpoolController

    controllers = ThreadpoolController().select(user_api="openmp").lib_controllers
    return [(controller, controller.num_threads) for controller in controllers]


def _restore_openmp_thread_counts(counts) -> None:
    """Set back the OpenMP thread counts that starting Numba's layer changed.

    Numba's ``omp`` layer sets the calling thread's OpenMP thread count to
    ``NUMBA_NUM_THREADS`` when it starts, in the OpenMP runtime already
    loaded if there is one (GNU OpenMP is shared by its soname): a caller's
    ``torch.set_num_threads(1)`` (or ``omp_set_num_threads``) became 2 on
    this 2-core machine after the library's first kernel, and torch then
    ran on 2 threads.  Numba's own regions name their thread count, so they
    do not read it.
    """
    for controller, count in counts:
        if controller.num_threads != count:
            controller.set_num_threads(count)


_layer: Optional[str] = None


def _check_not_forked_from_openmp() -> None:
    if _forked_after_openmp:
        raise RuntimeError(
            "lowmem_numba: this process was forked after the OpenMP threading layer started "
            "in its parent. GNU OpenMP cannot run parallel regions in a forked child (Numba "
            "terminates the process, and a multiprocessing pool then waits forever). Start "
            "worker processes with multiprocessing.get_context('spawn') or "
            "get_context('forkserver') (concurrent.futures.ProcessPoolExecutor(mp_context=...)), "
            "or select a fork-safe layer before the parent runs any kernel: "
            "NUMBA_THREADING_LAYER=workqueue or tbb."
        )


def _after_fork_in_child() -> None:
    global _forked_after_openmp, _serial_lock, _blas_lock, _blas_depth, _blas_restore
    # Locks held by other threads of the parent at fork time stay held forever
    # in the child (which has only the forking thread): start afresh.
    _serial_lock = threading.RLock()
    _blas_lock = threading.Lock()
    _blas_depth = 0
    _blas_restore = None
    # Asked of Numba rather than recorded by kernel_threads, so a layer started
    # by any code of the parent counts.  Only GNU OpenMP (Linux) breaks after a
    # fork; other OpenMP runtimes, TBB and workqueue re-create their threads.
    try:
        layer = numba.threading_layer()
    except ValueError:
        return
    if layer == "omp" and sys.platform.startswith("linux"):
        _forked_after_openmp = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class kernel_threads:
    """Context every parallel kernel of the library runs in.

    Parameters
    ----------
    count : int, optional
        Numba threads for this Python thread's kernels; the calling thread's
        current count if None.
    blas : bool, default True
        Whether the kernels inside call BLAS, which is then held at one
        thread.  Kernels that never call it skip the hold (about 3 us).

    Raises
    ------
    RuntimeError
        In a process forked after its parent started GNU OpenMP, before any
        parallel region is entered (where it would otherwise be killed).

    Notes
    -----
    Launches are serialised unless Numba's layer is known to accept parallel
    regions from several Python threads at once (``omp``, ``tbb``): the
    workqueue layer aborts the process on concurrent launches, and an unknown
    layer gets the same caution.

    A class rather than a generator-based context manager, which with the
    layer asked once and unchanged thread counts left alone took entering
    and leaving from 13.5 to 8.7 us with the BLAS hold and a thread-count
    change (timeit), for layers that take 10-100 us; the thread counts set
    through C (:func:`_numba_thread_functions`, :class:`_BlasThreads`) then
    took it to 3.9 us (2.1 us without the BLAS hold); finding them once and
    setting the count back without reading it first, to 1.4 us (with a
    thread-count change, without the BLAS hold; 0.8 without the change).
    """

    __slots__ = ("_count", "_blas", "_lock", "_previous", "_entered")

    def __init__(self, count: Optional[int] = None, *, blas: bool = True):
        self._count = count
        self._blas = blas
        self._lock = None
        self._previous = None
        self._entered = False

    def __enter__(self):
        # The state restored on exit lives in the instance: one per with-block.
        if self._entered:
            raise RuntimeError("a kernel_threads instance can be entered once; create one per with-block")
        self._entered = True
        if _forked_after_openmp:
            _check_not_forked_from_openmp()
        if (_layer or _started_layer()) not in _THREAD_SAFE_LAYERS:
            self._lock = _serial_lock  # the lock of this process, even if a fork replaces it later
            self._lock.acquire()
        try:
            count = self._count
            if count is not None:
                previous = _swap_num_threads(count)
                if previous != count:
                    self._previous = previous
            if self._blas:
                _hold_blas()
        except BaseException:
            self._restore_numba()
            raise
        _inside.depth = getattr(_inside, "depth", 0) + 1
        return self

    def __exit__(self, *exc_info):
        _inside.depth -= 1
        try:
            if self._blas:
                _release_blas()
        finally:
            self._restore_numba()
        return False

    def _restore_numba(self):
        try:
            if self._previous is not None:
                _restore_num_threads(self._previous)
                self._previous = None
        finally:
            if self._lock is not None:
                lock, self._lock = self._lock, None
                lock.release()


def inside_kernel_threads() -> bool:
    """Whether this Python thread is inside :func:`kernel_threads` (for checks and tests)."""
    return getattr(_inside, "depth", 0) > 0
