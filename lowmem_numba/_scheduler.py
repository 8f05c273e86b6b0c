"""The scheduler: pick the algorithm and thread count of a convolution, under a
memory budget, and say why.

Every registered algorithm at every candidate thread count is a candidate.  A
candidate is rejected when the algorithm does not support the configuration or
its workspace exceeds ``memory_limit``; the rest are ranked by time, either
predicted by the calibrated cost model (``mode="model"``, deterministic) or
measured on the real shape (``mode="measure"``, winner cached per shape and
machine in the user cache directory).  Among candidates within 5 % of the
fastest, the smallest workspace wins.

Nothing read back is trusted: a stored plan is used only if its algorithm is
registered, supports the configuration, fits ``memory_limit`` and runs on a
thread count within the budget; otherwise it is measured again.  Plans are
memoised per process (at most :data:`MEMO_SIZE`, recently used ones kept)
and measured plans stored per machine (at most :data:`MAX_STORED_PLANS`,
oldest dropped).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _registry as registry
from ._version import __version__
from ._cache import cache_dir, machine_id, read_store, update_store
from ._execute import execute, prepare_weights
from ._costmodel import calibration, predict_seconds
from ._geometry import ConvGeometry, check_flag, check_memory_limit, check_threads, make_geometry
from ._layout import check_layout, to_nchw_shape
from ._memo import Memo, clear_all
from ._threads import max_threads
from ._units import format_bytes
from ._workspace import Workspace

MODES = ("model", "measure")

#: Candidates predicted (or measured) within this fraction of the fastest count
#: as equally fast, and the smallest workspace among them is chosen...
MEMORY_PREFERENCE = 0.05
#: ...if it saves at least this fraction of the workspace of the fastest among
#: them; otherwise the fastest.  Without it, ResNet-50's layer4 3x3 at batch 8
#: on two threads went to winograd-2x2-3x3-nhwc (16.8 MiB, predicted 3.7 %
#: slower) over winograd-2x2-3x3 (16.9 MiB): one image at a time through
#: layout conversions, 13.0 ms measured against 8.4.
MEMORY_SAVING = 0.25

#: Candidates the model predicts this many times slower than the best are not
#: timed in measure mode (the loop nest on a large layer would take seconds).
_MEASURE_PRUNE_FACTOR = 8.0

#: Plans memoised per process.  A plan holds every candidate (about 40 with
#: their verdicts, some 12 KB), so the memo stays under about 6 MB; the five
#: network tables have 125 layers, so a memo this size holds every layer at a
#: few settings.
MEMO_SIZE = 512

_NOT_TIMED = f"not timed: predicted over {_MEASURE_PRUNE_FACTOR:g}x slower than the fastest"

#: Measured plans kept in ``plans.json`` per cache directory, oldest dropped
#: first.  A compact entry is about 0.6 KB, so the file stays under about
#: 300 KB and rewriting it (once per measured plan, which itself takes
#: 0.1 s or more of timing) stays cheap.
MAX_STORED_PLANS = 512


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


#: The family ``winograd=False`` excludes, and the verdict ``explain()`` gives it.
WINOGRAD_FAMILY = "winograd"
EXCLUDED_WINOGRAD = "excluded: winograd=False (Winograd rounds differently from direct summation)"


def _thread_options(budget):
    options, t = [], 1
    while t < budget:
        options.append(t)
        t *= 2
    return options + [budget]


def _check_mode(mode):
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    return mode


def _screen(g: ConvGeometry, budget: int, layout: str, memory_limit, prepacked=False, winograd=True):
    """Candidates with workspace, and the rejection reason of the infeasible ones."""
    screened = []
    for name in registry.names():
        algorithm = registry.get(name)
        reason = algorithm.unsupported(g)
        if reason is None and not winograd and algorithm.family == WINOGRAD_FAMILY:
            screened.extend(Candidate(name, t, None, None, EXCLUDED_WINOGRAD) for t in _thread_options(budget))
            continue
        for t in _thread_options(budget):
            if reason is not None:
                screened.append(Candidate(name, t, None, None, f"unsupported: {reason}"))
                continue
            space = algorithm.plan(g, t, layout, prepacked, memory_limit).workspace_bytes
            if memory_limit is not None and space > memory_limit:
                screened.append(Candidate(name, t, space, None,
                                          f"over budget: {format_bytes(space)} > {format_bytes(memory_limit)}"))
            else:
                screened.append(Candidate(name, t, space, None))
    return screened


def _rank(screened, seconds_of):
    """Fill in times, choose, and explain the others.

    Among the candidates within ``MEMORY_PREFERENCE`` of the fastest, the one
    with the smallest workspace wins if it saves at least ``MEMORY_SAVING`` of
    the workspace of the fastest of them: such time differences are within
    the model's error and the timing noise, while workspaces often differ by
    orders of magnitude; a workspace a few percent smaller is not worth them.
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
    quickest = min(close, key=lambda c: (c.seconds, c.workspace_bytes, c.threads, c.algorithm))
    leanest = min(close, key=lambda c: (c.workspace_bytes, c.seconds, c.threads, c.algorithm))
    best = leanest if leanest.workspace_bytes <= quickest.workspace_bytes * (1 - MEMORY_SAVING) else quickest
    return best, _explain(timed, best)


def _explain(timed, best):
    """Every candidate with the reason it was not ``best``."""
    fastest = min(c.seconds for c in timed if not c.rejected and c.seconds is not None)
    explained = []
    for c in timed:
        if c is best or c.rejected:
            explained.append(c)
        elif c.seconds is None:
            explained.append(Candidate(c.algorithm, c.threads, c.workspace_bytes, None, _NOT_TIMED))
        elif c.seconds <= best.seconds:
            explained.append(Candidate(c.algorithm, c.threads, c.workspace_bytes, c.seconds,
                                       f"within {MEMORY_PREFERENCE:.0%} of the fastest but needs more "
                                       f"workspace ({format_bytes(c.workspace_bytes)})"))
        elif c.seconds <= fastest * (1 + MEMORY_PREFERENCE) and c.workspace_bytes <= best.workspace_bytes:
            explained.append(Candidate(c.algorithm, c.threads, c.workspace_bytes, c.seconds,
                                       f"slower: {c.seconds / best.seconds:.2f}x the choice, for less than "
                                       f"{MEMORY_SAVING:.0%} less workspace"))
        else:
            verdict = f"slower: {c.seconds / best.seconds:.2f}x the choice"
            if c.seconds <= fastest * (1 + MEMORY_PREFERENCE):
                verdict += ", and more workspace"
            explained.append(Candidate(c.algorithm, c.threads, c.workspace_bytes, c.seconds, verdict))
    return tuple(explained)


def _model_plan(g, budget, layout, memory_limit, prepacked=False, winograd=True):
    constants = calibration()
    screened = _screen(g, budget, layout, memory_limit, prepacked, winograd)
    best, explained = _rank(screened, lambda c: (
        predict_seconds(registry.get(c.algorithm).plan(g, c.threads, layout, prepacked, memory_limit), constants),
        ""))
    return Plan(best.algorithm, best.threads, best.workspace_bytes, best.seconds, "model", memory_limit, explained)


def _plan_key(g, budget, layout, memory_limit, prepacked, winograd=True):
    weights = "prepacked" if prepacked else "packed per call"
    excluded = "" if winograd else "no Winograd "
    return (f"{g.input_shape} {g.weight_shape} s{g.stride} p{g.padding} d{g.dilation} g{g.groups} "
            f"threads<={budget} {layout} limit={memory_limit} {weights} {excluded}"
            f"lowmem-numba {__version__} on {machine_id()}")


def _is_positive_seconds(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0 < value < 1e6)


def _stored_plan(stored, screened, memory_limit) -> Optional[Plan]:
    """The plan a ``plans.json`` entry holds, or None unless it is valid here.

    Valid: the compact form written by :func:`_measure_plan`, one time (or
    null) per screened candidate, and a choice that is a registered algorithm
    supporting this configuration, within ``memory_limit``, on a thread count
    the budget allows (i.e. a feasible screened candidate), with a time.
    """
    if not isinstance(stored, dict):
        return None
    algorithm, threads, times = stored.get("algorithm"), stored.get("threads"), stored.get("times")
    if (not isinstance(algorithm, str) or isinstance(threads, bool) or not isinstance(threads, int)
            or not isinstance(times, list) or len(times) != len(screened)
            or not all(t is None or _is_positive_seconds(t) for t in times)):
        return None
    timed = [c if c.rejected else Candidate(c.algorithm, c.threads, c.workspace_bytes, seconds)
             for c, seconds in zip(screened, times)]
    chosen = [c for c in timed if (c.algorithm, c.threads) == (algorithm, threads)]
    if len(chosen) != 1 or chosen[0].rejected or chosen[0].seconds is None:
        return None  # unknown, unsupported, over the limit, beyond the budget, or never timed
    best = chosen[0]
    return Plan(best.algorithm, best.threads, best.workspace_bytes, best.seconds, "measure", memory_limit,
                _explain(timed, best))


def _timed_call(name, g, threads, layout, prepacked, x_flat, w_flat, out_flat, memory_limit=None):
    """A call of ``name`` as it would run: functional (packing the weights and
    allocating its workspace each call) or as a layer (weights packed once,
    workspace reused)."""
    algorithm = registry.get(name)
    plan = algorithm.plan(g, threads, layout, prepacked, memory_limit)
    no_bias = np.empty(0, np.float32)
    if not prepacked:
        return lambda: execute(plan, x_flat, w_flat, no_bias, out_flat)
    weights = prepare_weights(algorithm, w_flat, g)
    workspace = Workspace(plan.workspace_bytes, fixed=True)
    return lambda: execute(plan, x_flat, weights, no_bias, out_flat, workspace)


def _measure_plan(g, budget, layout, memory_limit, prepacked=False, winograd=True):
    from ._timing import measure

    path = cache_dir() / "plans.json"
    key = _plan_key(g, budget, layout, memory_limit, prepacked, winograd)
    screened = _screen(g, budget, layout, memory_limit, prepacked, winograd)
    stored = _stored_plan(read_store(path).get(key), screened, memory_limit)
    if stored is not None:
        return stored
    model = {(c.algorithm, c.threads): c.seconds
             for c in _model_plan(g, budget, layout, memory_limit, prepacked, winograd).candidates
             if c.seconds is not None}
    fastest_predicted = min(model.values())
    rng = np.random.default_rng(0)
    x_flat = rng.standard_normal(int(np.prod(g.input_shape))).astype(np.float32)
    w_flat = rng.standard_normal(int(np.prod(g.weight_shape))).astype(np.float32)
    out_flat = np.empty(int(np.prod(g.output_shape)), np.float32)

    def seconds_of(c):
        predicted = model[(c.algorithm, c.threads)]
        if predicted > _MEASURE_PRUNE_FACTOR * fastest_predicted:
            return None, _NOT_TIMED
        call = _timed_call(c.algorithm, g, c.threads, layout, prepacked, x_flat, w_flat, out_flat, memory_limit)
        return measure(call, repeats=3, warmup=1, min_seconds=0.02).best, ""

    best, explained = _rank(screened, seconds_of)
    # Compact: the choice and one time (4 significant digits) per screened
    # candidate; verdicts and workspaces are recomputed when read, and the plan
    # returned now is the one read back later.
    entry = {"algorithm": best.algorithm, "threads": best.threads,
             "times": [None if c.seconds is None or c.rejected else float(f"{c.seconds:.4g}")
                       for c in explained]}
    plan = _stored_plan(entry, screened, memory_limit)
    try:
        update_store(path, key, entry, max_entries=MAX_STORED_PLANS)
    except OSError:
        pass  # an unwritable cache only costs re-measuring
    return plan


_memo = Memo(MEMO_SIZE)


def clear_memo() -> None:
    """Forget the plans (and the API's validated calls) memoised in this
    process, e.g. after recalibrating."""
    clear_all()


def plan_geometry(g: ConvGeometry, *, memory_limit=None, threads=None, layout="NCHW", mode="model",
                  prepacked=False, winograd=True) -> Plan:
    """:func:`plan` for an already validated geometry (memoised per process,
    at most :data:`MEMO_SIZE` plans, recently used ones kept)."""
    if not isinstance(g, ConvGeometry):
        raise TypeError(f"g must be a ConvGeometry (see lowmem_numba._geometry.make_geometry); got {g!r}")
    budget = check_threads(threads, max_threads())
    memory_limit = check_memory_limit(memory_limit)
    layout = check_layout(layout)
    mode = _check_mode(mode)
    prepacked = check_flag(prepacked, "prepacked")
    winograd = check_flag(winograd, "winograd")
    # The calibration in force and the registry's generation are part of the
    # key: plans made before a recalibration, or before a family was
    # registered, are not reused after it.
    key = (g, budget, layout, memory_limit, mode, prepacked, winograd, calibration(), registry.generation())
    cached = _memo.get(key)
    if cached is not None:
        return cached
    if mode == "model":
        result = _model_plan(g, budget, layout, memory_limit, prepacked, winograd)
    else:
        result = _measure_plan(g, budget, layout, memory_limit, prepacked, winograd)
    _memo.put(key, result)
    return result


def _check_shape(shape, name, ndims, example):
    """A shape argument as a tuple of ints, or a TypeError/ValueError naming it."""
    if isinstance(shape, np.ndarray) and shape.ndim == 1:
        shape = shape.tolist()
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of ints such as {example}; got {shape!r}")
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in shape):
        raise TypeError(f"{name} must contain ints, such as {example}; got {shape!r}")
    if len(shape) not in ndims:
        dims = " or ".join(map(str, ndims))
        raise ValueError(f"{name} must have {dims} dimensions, such as {example}; got {tuple(shape)}")
    return tuple(int(d) for d in shape)


def plan(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, *, memory_limit=None,
         threads=None, layout="NCHW", mode="model", prepacked=False, winograd=True) -> Plan:
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
    winograd : bool, default True
        Whether the Winograd algorithms may be chosen.  They do fewer
        multiplications but round differently from direct summation (errors
        up to several times larger, see the README); False keeps to
        algorithms that sum the products themselves.  ``explain()`` lists
        them as excluded.

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
    example = "(1, 64, 56, 56)" if layout == "NCHW" else "(1, 56, 56, 64)"
    x_shape = _check_shape(x_shape, "x_shape", (3, 4), example)
    w_shape = _check_shape(w_shape, "w_shape", (4,), "(128, 64, 3, 3)")
    g = make_geometry(to_nchw_shape(x_shape, layout), w_shape, stride, padding, dilation, groups)
    return plan_geometry(g, memory_limit=memory_limit, threads=threads, layout=layout, mode=mode,
                         prepacked=prepacked, winograd=winograd)


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
                 prepacked=True, winograd=True) -> NetworkPlan:
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
    memory_limit, threads, mode, layout, winograd
        As for :func:`plan`.
    prepacked : bool, default True
        As for :func:`plan`; False plans functional calls that repack weights.

    Returns
    -------
    NetworkPlan
    """
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be an iterable of lowmem_numba.Layer rows or (name, x_shape, w_shape, "
                        f"conv_kwargs) tuples, e.g. lowmem_numba.layers(\"vgg16\"); got {layers!r}")
    prepacked = check_flag(prepacked, "prepacked")
    plans = []
    for i, layer in enumerate(layers):
        if hasattr(layer, "x_shape"):
            name, x_shape, w_shape, kwargs = layer.label, layer.x_shape(), layer.w_shape, layer.conv_args
            if layout == "NHWC":
                x_shape = (x_shape[0],) + x_shape[2:] + (x_shape[1],)
        elif (isinstance(layer, (tuple, list)) and len(layer) == 4 and isinstance(layer[0], str)
              and isinstance(layer[3], dict)):
            name, x_shape, w_shape, kwargs = layer
        else:
            raise TypeError(f"layers[{i}] must be a lowmem_numba.Layer or a (name, x_shape, w_shape, "
                            f"conv_kwargs) tuple with a str name and a dict of conv2d keywords; got {layer!r}")
        plans.append((name, plan(x_shape, w_shape, memory_limit=memory_limit, threads=threads,
                                 layout=layout, mode=mode, prepacked=prepacked, winograd=winograd,
                                 **kwargs)))
    arena = max((p.workspace_bytes for _, p in plans), default=0)
    return NetworkPlan(tuple(plans), arena, check_memory_limit(memory_limit))
