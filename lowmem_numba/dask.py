"""Convolutions over image sets larger than one machine, on Dask.

:func:`conv2d` and :func:`map_layers` take a ``dask.array`` of images chunked
along the batch axis and return a lazy ``dask.array``: one task per chunk,
which Dask's schedulers run anywhere (the threaded scheduler, a
``distributed.LocalCluster``, or a cluster of many machines, where nothing
changes but the scheduler address).  Needs the ``dask`` extra
(``python -m pip install "lowmem-numba[dask]"``: ``dask[array]`` and
``distributed``); ``import lowmem_numba`` never imports Dask.

How a task runs
---------------
- **Weights travel once.**  A graph holds the layers' weights once, as one
  key that every task of the graph depends on; Dask sends it to each worker
  once per computation (a worker keeps the data of a dependency while its
  tasks need it), not inside every task.  Each worker process rebuilds the layers from it once
  (keyed by a hash of the weights and settings) and reuses them, packed
  weights included, across tasks and later graphs on the same weights.
- **One arena per task slot.**  The layers of a task run one after another on
  one :class:`lowmem_numba.Workspace`, which grows to the largest layer's
  workspace and is reused by the next task: a worker process holds one arena
  per thread of the worker (one with ``threads_per_worker=1``), not one per
  layer or per task.
- **Threads.**  Each task runs its kernels on

      threads = max(1, cores // threads_on_host)

  threads (at most ``NUMBA_NUM_THREADS``), where ``cores`` is the machine's
  usable core count (``dask.system.CPU_COUNT``: affinity and cgroup quotas
  included) and ``threads_on_host`` is the number of tasks that can run at
  once on the machine: in a ``distributed`` worker, the sum of ``nthreads``
  over the workers on the same host (asked of the scheduler, at most every
  30 s); under the threaded scheduler, its pool size (Dask's ``num_workers``
  setting, else ``cores``); under the synchronous scheduler (tasks in the main
  thread), 1.  So workers x threads per worker x kernel threads never exceeds
  the cores.  ``threads=`` overrides the rule.  BLAS stays at one thread
  inside the kernels (:mod:`lowmem_numba`'s own rule).
- **Memory.**  ``memory_limit`` bounds each layer call's workspace, so the
  arena of a task never exceeds it; a worker holds ``nthreads`` arenas, the
  layers' packed weights (once), and the chunks it is working on.  With a
  named algorithm and a limit, a task lowers its thread count until the
  workspace fits (workspace grows with threads).

Numba's ``omp`` layer (the default) cannot run in a process forked after it
started; ``distributed`` starts worker processes with ``spawn`` (its default
``distributed.worker.multiprocessing-method``), which is safe.  Under the
``workqueue`` layer, kernel launches of one process are serialised (see the
README's Threads section), so threads of one worker take turns instead of
aborting.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Optional

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.base import tokenize
except ImportError as _error:  # pragma: no cover - exercised without the extra
    raise ImportError(
        f"lowmem_numba.dask needs dask ({_error}); install the extra: "
        "python -m pip install \"lowmem-numba[dask]\"") from _error

from ._geometry import check_array, check_threads, geometry_for
from ._layer import Conv2d
from ._layout import check_layout, from_nchw_shape, to_nchw_shape
from ._threads import max_threads, numba_threads
from ._workspace import Workspace

__all__ = ["conv2d", "map_layers", "task_threads"]

#: Seconds a worker trusts its count of the threads on its host before asking again.
HOST_INFO_SECONDS = 30.0
#: Layer stacks (distinct weights and settings) a process keeps built; a graph
#: of more stacks than this rebuilds layers (and repacks weights) per task.
CACHED_STACKS = 64


# -- the graph --------------------------------------------------------------------------------------------

def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm="auto",
           threads=None, memory_limit=None, layout="NCHW", winograd=True):
    """2-D convolution of a ``dask.array`` of images, chunk by chunk.

    Parameters
    ----------
    x : dask.array.Array, float32
        Images, shape (N, C, H, W) (``layout="NHWC"``: (N, H, W, C)), chunked
        along the batch axis N; each chunk is one task.  Chunks along the
        other axes are merged (a convolution needs whole images).
    weight : numpy.ndarray, float32
        Kernels, shape (M, C/groups, kh, kw).  Sent to each worker once per
        graph.
    bias : numpy.ndarray, float32, optional
        Shape (M,).
    stride, padding, dilation, groups
        As for :func:`lowmem_numba.conv2d`.
    algorithm : str, default "auto"
        A name from :func:`lowmem_numba.algorithms`, or "auto": each task
        plans its chunk's shape at its thread count under ``memory_limit``.
    threads : int, optional
        Kernel threads per task; default: the rule in this module's
        documentation (the worker's share of its machine's cores).
    memory_limit : int, optional
        Largest workspace in bytes a task may use (None: no limit; 0:
        zero-workspace algorithms only).
    layout : {"NCHW", "NHWC"}, default "NCHW"
    winograd : bool, default True
        Whether "auto" may choose a Winograd algorithm (see
        :func:`lowmem_numba.conv2d`).

    Returns
    -------
    dask.array.Array, float32
        Lazy result, shape (N, M, Ho, Wo) (NHWC: (N, Ho, Wo, M)), chunked
        along N like ``x``.

    Raises
    ------
    TypeError, ValueError
        When the graph is built, not when it runs: the errors
        :func:`lowmem_numba.conv2d` raises for the same arguments (checked
        against every distinct chunk shape; a named algorithm's workspace is
        checked at ``threads``, or at one thread when the count is left to
        the rule), and for an ``x`` that is not a 4-D ``dask.array`` or has
        unknown sizes along C, H or W.

    Examples
    --------
    >>> x = da.from_array(images, chunks=(8, -1, -1, -1))
    >>> y = conv2d(x, w, b, padding=1)              # lazy
    >>> y.compute()                                  # or y.to_zarr(...), y.persist()
    """
    _check_input_type(x)  # first, as lowmem_numba.conv2d checks x first
    layer = Conv2d(weight, bias, stride, padding, dilation, groups, algorithm=algorithm, threads=threads,
                   layout=layout, memory_limit=memory_limit, winograd=winograd)
    return _map(x, [layer], None, threads, "lowmem-conv2d")


def map_layers(x, layers, activation=None, *, threads=None):
    """Apply a stack of :class:`lowmem_numba.Conv2d` layers to each chunk of ``x``.

    Parameters
    ----------
    x : dask.array.Array, float32
        Images in the layers' layout, chunked along the batch axis (other
        axes are merged).
    layers : sequence of lowmem_numba.Conv2d
        Applied in order; each layer's output must be the next one's input.
        Their weights (packed, for a named algorithm) and settings
        (algorithm, memory_limit, layout) go to each worker once; their
        ``threads`` are replaced by the task's thread count.
    activation : callable, optional
        Elementwise function applied between consecutive layers (not after
        the last), e.g. ``lambda y: np.maximum(y, 0, out=y)``; it gets and
        must return a float32 array of the same shape, and may work in
        place.
    threads : int, optional
        Kernel threads per task; default: the rule in this module's
        documentation.

    Returns
    -------
    dask.array.Array, float32
        Lazy result of the last layer, chunked along N like ``x``.

    Raises
    ------
    TypeError, ValueError
        When the graph is built: for a layer that is not a ``Conv2d``,
        layers of different layouts, consecutive layers whose shapes do not
        chain (named by index), an activation that is not callable, and the
        errors :func:`conv2d` raises for ``x``.

    Notes
    -----
    Every layer of a task shares one arena (sized to the largest layer), and
    a worker keeps one arena per thread; layers are rebuilt once per worker
    process and reused across tasks.
    """
    if isinstance(layers, Conv2d) or isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a sequence of lowmem_numba.Conv2d; got {type(layers).__name__}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty: give at least one lowmem_numba.Conv2d")
    for index, layer in enumerate(layers):
        if not isinstance(layer, Conv2d):
            raise TypeError(f"layers[{index}] must be a lowmem_numba.Conv2d; got {type(layer).__name__}")
    layouts = {layer.layout for layer in layers}
    if len(layouts) > 1:
        raise ValueError(f"all layers must share one layout; got {sorted(layouts)}")
    if activation is not None and not callable(activation):
        raise TypeError(f"activation must be callable or None; got {type(activation).__name__}")
    if threads is not None:
        threads = check_threads(threads, max_threads())
    return _map(x, layers, activation, threads, "lowmem-layers")


def _map(x, layers, activation, threads, prefix):
    layout = layers[0].layout
    x = _check_input(x, layout)
    batch_chunks = x.chunks[0]
    # One check per distinct chunk size (unknown sizes, NaN, are checked as 1 image).
    sizes = sorted({1 if math.isnan(n) else int(n) for n in batch_chunks}) or [0]
    for n in sizes:
        shape = _check_chain(layers, (n,) + tuple(x.shape[1:]), threads, len(layers) > 1)
    out_shape = shape[1:]
    stack = _Stack.of(layers)
    weights = dask.delayed(stack, pure=True, name=f"lowmem-weights-{stack.token}")
    name = f"{prefix}-{tokenize(x.name, stack.token, threads, activation)}"
    return da.map_blocks(_run_chunk, x, weights, threads=threads, activation=activation, name=name,
                         chunks=(batch_chunks,) + tuple((s,) for s in out_shape), dtype=np.float32,
                         meta=np.empty((0, 0, 0, 0), np.float32))


def _check_input_type(x):
    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask.array.Array chunked along the batch axis; got {type(x).__name__} "
                        f"(wrap a numpy array with dask.array.from_array(x, chunks=(n, -1, -1, -1)), or call "
                        f"lowmem_numba.conv2d on it)")
    check_array(np.empty(0, dtype=x.dtype), "x")  # the dtype error of lowmem_numba.conv2d


def _check_input(x, layout):
    """x as a dask array of float32 images, one chunk along every axis but the batch."""
    layout = check_layout(layout)
    _check_input_type(x)
    if x.ndim != 4:
        axes = "N, C, H, W" if layout == "NCHW" else "N, H, W, C"
        raise ValueError(f"x must be a 4-D dask array ({axes}) chunked along N; got {x.ndim}-D shape {x.shape}")
    if any(math.isnan(s) for s in x.shape[1:]):
        raise ValueError(f"x has unknown sizes along its non-batch axes (shape {x.shape}); "
                         f"call x.compute_chunk_sizes() first")
    if any(len(c) > 1 for c in x.chunks[1:]):
        x = x.rechunk({1: -1, 2: -1, 3: -1})  # a convolution needs whole images in a task
    return x


def _check_chain(layers, shape, threads, name_layers):
    """Validate each layer on the shape the previous one produces; return the last output shape."""
    for index, layer in enumerate(layers):
        try:
            shape = _check_layer(layer, shape, threads)
        except (TypeError, ValueError) as error:
            if not name_layers:
                raise
            raise type(error)(f"layers[{index}] on input shape {shape}: {error}") from None
    return shape


def _check_layer(layer, shape, threads):
    """The errors lowmem_numba.conv2d would raise on this shape; the output shape."""
    geometry = geometry_for(to_nchw_shape(shape, layer.layout), layer._params)
    if not _is_auto(layer.algorithm):
        # Support, and the workspace against memory_limit, by the layer's own
        # check; workspace grows with threads: checked at the count asked for,
        # or at the fewest a task may lower itself to.
        probe = copy.copy(layer)
        probe.threads = 1 if threads is None else threads
        probe.workspace_bytes_for(shape)
    return from_nchw_shape(geometry.output_shape, layer.layout)


def _is_auto(algorithm):
    return isinstance(algorithm, str) and algorithm == "auto"


# -- the weights, once per graph and once per process ---------------------------------------------------

_state_lock = threading.Lock()
_counters = {"weight_loads": 0, "stack_builds": 0, "runs": 0, "images": 0}
_stacks: "OrderedDict[str, list]" = OrderedDict()
_stack_locks: dict = {}
_plans: dict = {}
_threads_used: set = set()


def _count(name, amount=1):
    with _state_lock:
        _counters[name] += amount


class _Stack:
    """The layers' state without their arenas: what a graph sends each worker once.

    Unpickling one (in a worker) is counted, so tests can see that the
    weights arrived once per worker rather than once per task.

    No ``dask.sizeof`` is registered for it, so the scheduler counts it as a
    few bytes: tasks go where their image chunks are (or to idle workers)
    instead of queueing next to the one worker that first held the weights;
    each other worker then fetches them once.
    """

    def __init__(self, states, token):
        self.states = states
        self.token = token

    @classmethod
    def of(cls, layers):
        states = []
        for layer in layers:
            # The workspace and the last call's plan are this process's own.
            state = {key: (dict(value) if isinstance(value, dict) else value)
                     for key, value in vars(layer).items() if key not in ("workspace", "_repeat")}
            states.append(state)
        volatile = ("_planned_bytes",)
        token = tokenize([{k: v for k, v in s.items() if k not in volatile} for s in states])
        return cls(states, token)

    def __dask_tokenize__(self):
        return self.token

    def __reduce__(self):
        return _load_stack, (self.states, self.token)

    def build(self):
        """Conv2d layers from the states (sharing no mutable state with them)."""
        layers = []
        for state in self.states:
            layer = Conv2d.__new__(Conv2d)
            layer.__dict__.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in state.items()})
            layer.workspace = Workspace()
            layer._repeat = None
            layers.append(layer)
        return layers


def _load_stack(states, token):
    _count("weight_loads")
    return _Stack(states, token)


def _layers_of(stack):
    """This process's layers for ``stack``, built at its first task (counted)."""
    with _state_lock:
        layers = _stacks.get(stack.token)
        if layers is not None:
            _stacks.move_to_end(stack.token)
            return layers
        lock = _stack_locks.setdefault(stack.token, threading.Lock())
    with lock:  # one build per process, even when a worker's threads start together
        with _state_lock:
            layers = _stacks.get(stack.token)
        if layers is None:
            layers = stack.build()
            with _state_lock:
                _counters["stack_builds"] += 1
                _stacks[stack.token] = layers
                while len(_stacks) > CACHED_STACKS:
                    old, _ = _stacks.popitem(last=False)
                    _stack_locks.pop(old, None)
        return layers


# -- arenas ------------------------------------------------------------------------------------------------

class _ArenaPool:
    """One growable arena per task running at once in this process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._free: list = []
        self.arenas: list = []

    def drop_idle(self):
        with self._lock:
            self.arenas = [arena for arena in self.arenas if arena not in self._free]
            self._free = []

    @contextmanager
    def lease(self):
        with self._lock:
            if self._free:
                arena = self._free.pop()
            else:
                arena = Workspace()
                self.arenas.append(arena)
        try:
            yield arena
        finally:
            with self._lock:
                self._free.append(arena)


_arenas = _ArenaPool()


# -- threads -----------------------------------------------------------------------------------------------

_host_info = {"address": None, "threads": None, "time": -math.inf}


def _machine_cores() -> int:
    from dask.system import CPU_COUNT

    return max(1, int(CPU_COUNT))


def _current_worker():
    if "distributed" not in sys.modules:  # a distributed worker has imported it
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:  # not inside a distributed worker's task
        return None


def _threads_on_host(worker) -> int:
    """Sum of nthreads over the workers on this worker's host (scheduler's view, cached)."""
    now = time.monotonic()
    with _state_lock:
        if _host_info["address"] == worker.address and now - _host_info["time"] < HOST_INFO_SECONDS:
            return _host_info["threads"]
    own = max(1, int(getattr(getattr(worker, "state", worker), "nthreads", 1)))
    try:
        from distributed import get_client

        workers = _all_workers(get_client())
        host = workers[worker.address]["host"]
        total = sum(int(info["nthreads"]) for info in workers.values() if info.get("host") == host)
        total = max(own, total)
    except Exception:  # noqa: BLE001 - no scheduler view: count this worker alone
        total = own
    with _state_lock:
        _host_info.update(address=worker.address, threads=total, time=now)
    return total


def _all_workers(client) -> dict:
    """The scheduler's record of every worker (distributed >= 2025.4 lists 5 unless asked for all)."""
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # older distributed: always all of them
        return client.scheduler_info()["workers"]


def _tasks_at_once() -> int:
    """How many tasks can run at once on this machine, under whatever scheduler runs this one."""
    worker = _current_worker()
    if worker is not None:
        return _threads_on_host(worker)
    import multiprocessing

    if threading.current_thread() is threading.main_thread() and multiprocessing.parent_process() is None:
        return 1  # the synchronous scheduler: one task at a time, in the caller's thread
    configured = dask.config.get("num_workers", None)
    return int(configured) if configured else _machine_cores()


def task_threads(threads: Optional[int] = None) -> int:
    """Kernel threads a task running here gets (the rule in the module documentation).

    Parameters
    ----------
    threads : int, optional
        An explicit count: returned as is (at most ``NUMBA_NUM_THREADS``).

    Returns
    -------
    int
        ``max(1, cores // tasks that can run at once on this machine)``, at
        most ``numba.config.NUMBA_NUM_THREADS``.  Called outside a task,
        it answers for the synchronous scheduler (all cores) or, from a
        non-main thread, the threaded one.
    """
    if threads is not None:
        return max(1, min(int(threads), max_threads()))
    return _threads_rule(_machine_cores(), _tasks_at_once(), max_threads())


def _threads_rule(cores: int, tasks_at_once: int, cap: int) -> int:
    """max(1, cores // tasks_at_once), at most ``cap``."""
    return max(1, min(cap, cores // max(1, tasks_at_once)))


def _fitted_threads(layer, shape, threads):
    """``threads``, lowered until a named algorithm's workspace fits the layer's memory_limit."""
    if _is_auto(layer.algorithm) or layer.memory_limit is None:
        return threads  # "auto" plans under the limit at any thread budget
    probe = copy.copy(layer)
    for count in range(threads, 1, -1):
        probe.threads = count
        try:
            probe.workspace_bytes_for(shape)  # raises when over the limit
            return count
        except ValueError:
            continue
    return 1


# -- a task ------------------------------------------------------------------------------------------------

def _run_chunk(block, stack, threads=None, activation=None):
    """Run the stack of layers on one chunk (one task)."""
    count = task_threads(threads)
    base = _layers_of(stack)
    last = len(base) - 1
    with _arenas.lease() as arena, numba_threads(count):
        y = block
        for index, layer in enumerate(base):
            call = copy.copy(layer)  # shares the packed weights; own arena and thread count
            call.workspace = arena
            call.threads = _fitted_threads(layer, y.shape, count)
            shape = y.shape
            y = call(y)
            _note_plan(stack.token, index, call, shape)
            if activation is not None and index < last:
                y = _activate(activation, y)
    with _state_lock:
        _counters["runs"] += 1
        _counters["images"] += int(block.shape[0])
        _threads_used.add(count)
    return y


def _activate(activation, y):
    result = activation(y)
    if not isinstance(result, np.ndarray) or result.dtype != np.float32 or result.shape != y.shape:
        got = (f"{type(result).__name__}" if not isinstance(result, np.ndarray)
               else f"{result.dtype} array of shape {result.shape}")
        raise ValueError(f"activation must return a float32 array of the shape it gets, {y.shape}; got {got}")
    return result


def _note_plan(token, index, layer, shape):
    key = (token, index, tuple(shape), layer.threads)
    if key in _plans or not shape[0]:
        return
    if _is_auto(layer.algorithm):
        chosen = layer.plan_for(shape)
        algorithm, threads = chosen.algorithm, chosen.threads
    else:
        algorithm, threads = layer.algorithm, layer.threads
    record = {"layer": index, "input_shape": tuple(int(s) for s in shape), "weight_shape": layer.weight_shape,
              "algorithm": algorithm, "threads": int(threads), "workspace_bytes": layer.workspace_bytes}
    with _state_lock:
        _plans[key] = record


def _process_report() -> dict:
    """What this process did for the tasks it ran (for ``client.run``; tests, the CLI)."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    with _state_lock:
        return {"pid": os.getpid(), **_counters, "task_threads": sorted(_threads_used),
                "arena_bytes": [arena.nbytes for arena in _arenas.arenas],
                "plans": [dict(record, stack=token) for (token, *_), record in _plans.items()],
                "stacks_cached": len(_stacks), "threading_layer": layer, "numba_threads": max_threads()}


def _reset_process_report(forget: bool = False) -> None:
    """Zero the counters and forget the plans seen; with ``forget``, also drop
    the built layers and the idle arenas (tests)."""
    with _state_lock:
        for key in _counters:
            _counters[key] = 0
        _plans.clear()
        _threads_used.clear()
        if forget:
            _stacks.clear()
            _stack_locks.clear()
    if forget:
        _arenas.drop_idle()
