"""The scheduler: pick the algorithm and thread count of a convolution, under a
memory budget, and say why.

Every registered algorithm at every candidate thread count is a candidate.  A
candidate is rejected when the algorithm does not support the configuration or
its workspace exceeds ``memory_limit``; the rest are ranked by time, either
predicted by the calibrated cost model (``mode="model"``, deterministic) or
measured on the real shape (``mode="measure"``, winner cached per shape and
machine in the user cache directory).  Among candidates within 5 % of the
fastest, the smallest workspace wins.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import registry
from ._version import __version__
from .cache import cache_dir, machine_id, read_store, update_store
from .costmodel import calibration, describe_work, predict_seconds
from .geometry import ConvGeometry, check_memory_limit, check_threads, make_geometry
from .layout import check_layout, to_nchw_shape
from .registry import FLOAT32_BYTES
from .threads import max_threads
from .units import format_bytes

MODES = ("model", "measure")

#: Candidates predicted (or measured) within this fraction of the fastest count
#: as equally fast, and the smallest workspace among them is chosen.
MEMORY_PREFERENCE = 0.05

#: Candidates the model predicts this many times slower than the best are not
#: timed in measure mode (the loop nest on a large layer would take seconds).
_MEASURE_PRUNE_FACTOR = 8.0


@dataclass(frozen=True)
class Candidate:
    """One (algorithm, threads) pair the scheduler considered."""

    algorithm: str
    threads: int
    workspace_bytes: Optional[int]
    seconds: Optional[float]
    rejected: str = ""


@dataclass(frozen=True)
class Plan:
    """The scheduler's choice for one convolution.

    Attributes
    ----------
    algorithm : str
    threads : int
    workspace_bytes : int
    predicted_seconds : float
        Predicted (``mode="model"``) or measured (``mode="measure"``) time.
    mode : str
    memory_limit : int or None
    candidates : tuple of Candidate
        Everything considered, with the reason each was not chosen.
    """

    algorithm: str
    threads: int
    workspace_bytes: int
    predicted_seconds: float
    mode: str
    memory_limit: Optional[int]
    candidates: tuple

    def explain(self) -> str:
        """A readable table of every candidate and why it was or was not chosen."""
        limit = "none" if self.memory_limit is None else format_bytes(self.memory_limit)
        kind = "predicted" if self.mode == "model" else "measured"
        lines = [f"plan ({self.mode} mode, memory limit {limit}): {self.algorithm} on "
                 f"{self.threads} thread(s), workspace {format_bytes(self.workspace_bytes)}, "
                 f"{kind} {self.predicted_seconds * 1e3:.3f} ms",
                 f"{'algorithm':<28} {'threads':>7} {'workspace':>11} {kind + ' ms':>13}  verdict"]
        for c in self.candidates:
            space = "-" if c.workspace_bytes is None else format_bytes(c.workspace_bytes)
            ms = "-" if c.seconds is None else f"{c.seconds * 1e3:.3f}"
            chosen = c.algorithm == self.algorithm and c.threads == self.threads
            verdict = "CHOSEN" if chosen else c.rejected
            lines.append(f"{c.algorithm:<28} {c.threads:>7} {space:>11} {ms:>13}  {verdict}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()


def _thread_options(budget):
    options, t = [], 1
    while t < budget:
        options.append(t)
        t *= 2
    return options + [budget]


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    return mode


def _screen(g: ConvGeometry, budget: int, layout: str, memory_limit, prepacked=False):
    """Candidates with workspace, and the rejection reason of the infeasible ones."""
    screened = []
    for name in registry.names():
        algorithm = registry.get(name)
        reason = algorithm.unsupported(g)
        for t in _thread_options(budget):
            if reason is not None:
                screened.append(Candidate(name, t, None, None, f"unsupported: {reason}"))
                continue
            space = FLOAT32_BYTES * algorithm.workspace_elements(g, t, layout, prepacked)
            if memory_limit is not None and space > memory_limit:
                screened.append(Candidate(name, t, space, None,
                                          f"over budget: {format_bytes(space)} > {format_bytes(memory_limit)}"))
            else:
                screened.append(Candidate(name, t, space, None))
    return screened


def _rank(screened, seconds_of):
    """Fill in times, choose, and explain the others.

    Among the candidates within ``MEMORY_PREFERENCE`` of the fastest, the one
    with the smallest workspace wins: such differences are within the model's
    error and the timing noise, while the workspaces differ by orders of
    magnitude.
    """
    timed = []
    for c in screened:
        if c.rejected:
            timed.append(c)
        else:
            seconds, note = seconds_of(c)
            timed.append(Candidate(c.algorithm, c.threads, c.workspace_bytes, seconds, note))
    feasible = [c for c in timed if not c.rejected and c.seconds is not None]
    if not feasible:
        raise ValueError("no algorithm fits this memory limit for this configuration")
    fastest = min(c.seconds for c in feasible)
    close = [c for c in feasible if c.seconds <= fastest * (1 + MEMORY_PREFERENCE)]
    best = min(close, key=lambda c: (c.workspace_bytes, c.seconds, c.threads, c.algorithm))
    explained = []
    for c in timed:
        if c is best or c.rejected:
            explained.append(c)
        elif c.seconds <= best.seconds:
            explained.append(Candidate(c.algorithm, c.threads, c.workspace_bytes, c.seconds,
                                       f"within {MEMORY_PREFERENCE:.0%} of the fastest but needs more "
                                       f"workspace ({format_bytes(c.workspace_bytes)})"))
        else:
            verdict = f"slower: {c.seconds / best.seconds:.2f}x the choice"
            if c in close:
                verdict += ", and more workspace"
            explained.append(Candidate(c.algorithm, c.threads, c.workspace_bytes, c.seconds, verdict))
    return best, tuple(explained)


def _model_plan(g, budget, layout, memory_limit, prepacked=False):
    constants = calibration()
    screened = _screen(g, budget, layout, memory_limit, prepacked)
    best, explained = _rank(screened, lambda c: (
        predict_seconds(describe_work(c.algorithm, g, c.threads, layout), c.threads, constants), ""))
    return Plan(best.algorithm, best.threads, best.workspace_bytes, best.seconds, "model", memory_limit, explained)


def _plan_key(g, budget, layout, memory_limit):
    return (f"{g.input_shape} {g.weight_shape} s{g.stride} p{g.padding} d{g.dilation} g{g.groups} "
            f"threads<={budget} {layout} limit={memory_limit} lowmem-numba {__version__} on {machine_id()}")


def _measure_plan(g, budget, layout, memory_limit):
    from .api import conv2d
    from .timing import measure

    path = cache_dir() / "plans.json"
    key = _plan_key(g, budget, layout, memory_limit)
    stored = read_store(path).get(key)
    if isinstance(stored, dict):
        try:
            candidates = tuple(Candidate(**c) for c in stored["candidates"])
            return Plan(stored["algorithm"], stored["threads"], stored["workspace_bytes"],
                        stored["seconds"], "measure", memory_limit, candidates)
        except (KeyError, TypeError):
            pass  # a foreign or older entry: measure again and overwrite it
    model = {(c.algorithm, c.threads): c.seconds
             for c in _model_plan(g, budget, layout, memory_limit).candidates if c.seconds is not None}
    fastest_predicted = min(model.values())
    rng = np.random.default_rng(0)
    x = rng.standard_normal(g.input_shape).astype(np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w = rng.standard_normal(g.weight_shape).astype(np.float32)
    args = dict(stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups, layout=layout)
    out = conv2d(x, w, algorithm=next(c.algorithm for c in _screen(g, budget, layout, None) if not c.rejected),
                 **args)

    def seconds_of(c):
        predicted = model[(c.algorithm, c.threads)]
        if predicted > _MEASURE_PRUNE_FACTOR * fastest_predicted:
            return None, f"not timed: predicted {predicted / fastest_predicted:.0f}x slower"
        timing = measure(lambda: conv2d(x, w, algorithm=c.algorithm, threads=c.threads, out=out, **args),
                         repeats=3, warmup=1, min_seconds=0.02)
        return timing.best, ""

    best, explained = _rank(_screen(g, budget, layout, memory_limit), seconds_of)
    plan = Plan(best.algorithm, best.threads, best.workspace_bytes, best.seconds, "measure", memory_limit,
                explained)
    try:
        update_store(path, key, {"algorithm": plan.algorithm, "threads": plan.threads,
                                 "workspace_bytes": plan.workspace_bytes, "seconds": plan.predicted_seconds,
                                 "candidates": [c.__dict__ for c in explained]})
    except OSError:
        pass  # an unwritable cache only costs re-measuring
    return plan


_memo: dict = {}
_memo_lock = threading.Lock()


def plan_geometry(g: ConvGeometry, *, memory_limit=None, threads=None, layout="NCHW", mode="model",
                  prepacked=False) -> Plan:
    """:func:`plan` for an already validated geometry (memoised per process)."""
    budget = check_threads(threads, max_threads())
    memory_limit = check_memory_limit(memory_limit)
    mode = _check_mode(mode)
    key = (g, budget, layout, memory_limit, mode, prepacked)
    with _memo_lock:
        cached = _memo.get(key)
    if cached is not None:
        return cached
    if mode == "model":
        result = _model_plan(g, budget, layout, memory_limit, prepacked)
    else:
        result = _measure_plan(g, budget, layout, memory_limit)
    with _memo_lock:
        _memo[key] = result
    return result


def plan(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, *, memory_limit=None,
         threads=None, layout="NCHW", mode="model", prepacked=False) -> Plan:
    """Choose the algorithm and thread count for a convolution.

    Parameters
    ----------
    x_shape : tuple of int
        Input shape in ``layout`` ((N, C, H, W) or (N, H, W, C), batch optional).
    w_shape : tuple of int
        Weight shape (M, C/groups, kh, kw).
    stride, padding, dilation, groups
        As for :func:`lowmem_numba.conv2d`.
    memory_limit : int, optional
        Largest workspace allowed, in bytes; None for no limit, 0 for
        zero-workspace algorithms only.
    threads : int, optional
        Thread budget: the plan uses at most this many; default all of Numba's.
    layout : {"NCHW", "NHWC"}, default "NCHW"
    mode : {"model", "measure"}, default "model"
        ``"model"`` predicts with the calibrated cost model (calibrated once
        per machine, about a second); ``"measure"`` times the candidates on
        this shape and caches the winner in the user cache directory
        (``$LOWMEM_NUMBA_CACHE_DIR`` overrides it).
    prepacked : bool, default False
        Plan for a :class:`lowmem_numba.Conv2d` layer, whose packed weights are
        persistent: they then do not count as workspace.  The default plans a
        functional :func:`lowmem_numba.conv2d` call, which repacks per call.

    Returns
    -------
    Plan
        With ``.algorithm``, ``.threads``, ``.workspace_bytes``,
        ``.predicted_seconds`` and ``.explain()``.

    Raises
    ------
    TypeError, ValueError
        For invalid arguments, or when no algorithm fits ``memory_limit``.
    """
    layout = check_layout(layout)
    g = make_geometry(to_nchw_shape(x_shape, layout), w_shape, stride, padding, dilation, groups)
    return plan_geometry(g, memory_limit=memory_limit, threads=threads, layout=layout, mode=mode,
                         prepacked=prepacked)


@dataclass(frozen=True)
class NetworkPlan:
    """Per-layer plans whose shared arena (the largest workspace) fits a limit."""

    plans: tuple
    arena_bytes: int
    memory_limit: Optional[int]

    def explain(self) -> str:
        limit = "none" if self.memory_limit is None else format_bytes(self.memory_limit)
        lines = [f"network plan: shared arena {format_bytes(self.arena_bytes)} (limit {limit})",
                 f"{'layer':<32} {'algorithm':<28} {'threads':>7} {'workspace':>11} {'ms':>10}"]
        for name, p in self.plans:
            lines.append(f"{name:<32} {p.algorithm:<28} {p.threads:>7} {format_bytes(p.workspace_bytes):>11} "
                         f"{p.predicted_seconds * 1e3:>10.3f}")
        return "\n".join(lines)


def plan_network(layers, *, memory_limit=None, threads=None, mode="model", layout="NCHW",
                 prepacked=True) -> NetworkPlan:
    """Plan each layer of a network run one layer after another.

    The layers share one arena as large as the largest workspace, so the limit
    bounds each layer's workspace (not their sum).  By default the layers are
    :class:`lowmem_numba.Conv2d` objects holding packed weights, which are
    persistent and not part of the arena.

    Parameters
    ----------
    layers : iterable
        :class:`lowmem_numba.Layer` rows (e.g. ``lowmem_numba.layers("vgg16")``)
        or ``(name, x_shape, w_shape, conv_kwargs)`` tuples.
    memory_limit, threads, mode, layout
        As for :func:`plan`.
    prepacked : bool, default True
        As for :func:`plan`; False plans functional calls that repack weights.

    Returns
    -------
    NetworkPlan
    """
    plans = []
    for layer in layers:
        if hasattr(layer, "x_shape"):
            name, x_shape, w_shape, kwargs = layer.label, layer.x_shape(), layer.w_shape, layer.conv_args
            if layout == "NHWC":
                x_shape = (x_shape[0],) + x_shape[2:] + (x_shape[1],)
        else:
            name, x_shape, w_shape, kwargs = layer
        plans.append((name, plan(x_shape, w_shape, memory_limit=memory_limit, threads=threads,
                                 layout=layout, mode=mode, prepacked=prepacked, **kwargs)))
    arena = max((p.workspace_bytes for _, p in plans), default=0)
    return NetworkPlan(tuple(plans), arena, check_memory_limit(memory_limit))
