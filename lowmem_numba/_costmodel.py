"""An analytic cost model of every algorithm, calibrated once per machine.

Each algorithm's work on a geometry is described as the GEMMs it calls (count,
m, n, k), the elements it moves outside BLAS (patch building, shift-adds,
weight packing, layout conversion) and any flops done outside BLAS.  A GEMM of
shape (m, n, k) runs at ``peak * e(m) e(n) e(k)`` with ``e(x) = x / (x + h)``:
small dimensions cost efficiency, and the three half-saturation sizes ``h`` and
the peak are fitted (least squares in log space) to sgemm timings over several
sizes per dimension; BLAS's packing of a call's panels (``m k + k n``
elements) adds its own measured rate (``pack_rate``).  Copies run at a
measured bandwidth, the loop nest at a measured rate, and threads scale by a
measured efficiency, except for what a kernel streams from memory
(``memory_elements``), whose bandwidth the threads share.  GEMMs on the
library's own micro-kernel are priced on their own curve, ``ukernel_peak
e(k)``: their plans state pixels and channels already rounded up to whole
register tiles, and the kernel runs every whole tile at the same speed (the
BLAS curve's ``e(m) e(n)`` had predicted 7x7 layers 1.4-1.7x too slow).
direct-pixels' pixel-lane tile has a curve of its own (``pixels_peak``,
``pixels_half_k``): it stores its sums as they lie, so a short reduction
costs it less (on the Intel kind its half-saturation reduction came out
7.5-12.4 against the channel-lane tile's 14.7-17.7 in five calibrations), and
a second one on the layers it runs on a padded copy, through a table of input
offsets (``pixels_staged_peak``, ``pixels_staged_half_k``).  A register tile
reading planar (NCHW) input reads its pixels of every reduction step from the
cache lines of another plane or row (``planar_line_reads``), each line at a
measured cost (``planar_line_seconds``) and a measured cost more per page
its planes span (``planar_line_page_seconds``).  The
calibration takes about a second, is checked for plausibility, stored in the user cache
directory (``lowmem-numba calibrate`` measures it again and shows it), and
makes predictions deterministic.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import scipy.optimize
from numba import prange

from . import _algorithms  # noqa: F401  (registers every algorithm)
from . import _registry as registry
from ._compile import njit  # numba.njit whose cache=True never fails (see _compile)
from ._execute import execute, prepare_weights
from ._split import split_work
from ._version import __version__
from ._algorithms._common import batched_gemm
from ._cache import cache_dir, machine_id, read_store, update_store
from ._caches import page_bytes
from ._geometry import make_geometry
from ._threads import kernel_threads, max_threads


@dataclass(frozen=True)
class Calibration:
    """Machine constants of the cost model (single-thread unless stated)."""
    gemm_peak: float          # flop/s of a large sgemm
    half_m: float             # sizes at which each GEMM dimension halves efficiency
    half_n: float
    half_k: float
    copy_rate: float          # float32 elements moved per second
    direct_rate: float        # flop/s of the direct loop nest
    thread_efficiency: float  # speed-up per added thread, as a fraction of ideal
    launch_seconds: float     # fixed cost of one parallel kernel launch
    vector_rate: float = 3.6e10  # flop/s of a family's own vectorised loops (DEFAULTS.vector_rate)
    ukernel_peak: float = 1.1e11  # flop/s of the micro-kernel on long reductions (DEFAULTS.ukernel_peak)
    ukernel_half_k: float = 14.0  # reduction length at which the micro-kernel runs at half of it
    pixels_peak: float = 1.1e11  # the same two of direct-pixels' pixel-lane tile (DEFAULTS.pixels_peak)
    pixels_half_k: float = 14.0
    pixels_staged_peak: float = 1.1e11  # and of that tile on staged (padded, kh x kw) layers
    pixels_staged_half_k: float = 14.0
    pack_rate: float = 5.0e9  # float32 elements/s of BLAS's panel packing beyond the fit (DEFAULTS.pack_rate)
    planar_line_seconds: float = 3e-10  # a line a tile's step reads from planar input (DEFAULTS.planar_line_seconds)
    planar_line_page_seconds: float = 0.0  # what such a line costs more per page of its plane (planar_plane_pages)

    @functools.cached_property
    def _fields_hash(self) -> int:
        return hash(tuple(getattr(self, f.name) for f in fields(self)))

    def __hash__(self):
        # The memo key of every "auto" call holds the calibration in force:
        # hashed once (0.3 us over its fields each time).
        return self._fields_hash


def _efficiency(size, half):
    return size / (size + half)


def predict_seconds(plan, c: Calibration) -> float:
    """Predicted wall time of a planned call.

    Parameters
    ----------
    plan : CallPlan
        What the call does (``registry.get(name).plan(...)``): its GEMMs as
        issued, the elements it moves outside BLAS, its own loops' flops, its
        parallel items and launches.  Nothing here depends on the family.
        Own flops are priced at the loop nest's rate (``direct_flops``) or
        at the rate of vectorised loops (``vector_flops``); GEMMs at BLAS's
        rates, or the micro-kernel's when ``plan.gemms_on_blas`` is False.
    c : Calibration

    Returns
    -------
    float
        Seconds.
    """
    serial = 0.0
    for count, m, n, k in plan.gemms:
        if count == 0 or m == 0 or n == 0 or k == 0:
            continue
        if not plan.gemms_on_blas:
            peak, half = getattr(c, f"{plan.tile_kernel}_peak"), getattr(c, f"{plan.tile_kernel}_half_k")
            serial += count * 2.0 * m * n * k / (peak * _efficiency(k, half))
            continue
        rate = c.gemm_peak * _efficiency(m, c.half_m) * _efficiency(n, c.half_n) * _efficiency(k, c.half_k)
        serial += count * 2.0 * m * n * k / rate
        # BLAS copies A and B into its panels on every call: negligible for
        # square GEMMs, but on 7x7-14x14 images (n = 49-196) it is the
        # 20-40 % by which the efficiency curve alone underpredicted im2col
        # on the Intel kind (512 x 49 x 4608 sgemm: 2.32 ms predicted without
        # it, 2.77 with it at that kind's copy rate, 2.84 measured).  Timed
        # with the curve's own sgemms (pack_rate, _PACK_SHAPE), not taken
        # as the copy rate, which is memory's and moves with the memory
        # traffic of a shared machine (AMD Zen 3 kind: 1.5-3.5e9 elements/s).
        serial += count * (m * k + k * n) / c.pack_rate
    serial += plan.moved_elements / c.copy_rate + plan.direct_flops / c.direct_rate
    serial += plan.planar_line_reads * (c.planar_line_seconds + plan.planar_plane_pages * c.planar_line_page_seconds)
    serial += plan.vector_flops / c.vector_rate
    threads = plan.threads
    usable = min(threads, max(1, plan.parallel_items))
    speedup = (1.0 + (usable - 1) * c.thread_efficiency) / (plan.balance if usable > 1 else 1.0)
    shared = plan.memory_elements / c.copy_rate  # the threads share the memory's bandwidth
    return serial / speedup + shared + plan.launches * c.launch_seconds * (1 + 0.5 * (threads - 1))


# --------------------------------------------------------------- calibration
#
# Robustness.  A calibration is measured once per process under a lock (other
# threads wait and reuse it), from best-of timings taken in interleaved rounds
# (a transient disturbance spoils only some samples of each shape).  The GEMM
# half-saturation sizes are fitted by least squares in log space over several
# sizes per dimension, not solved from one ratio of two timings: two clean
# calibrations on a 2-core AVX-512 machine gave half_k = 0.92 and 10.2 with the
# ratio method, enough to flip picks on VGG-16 conv2_1.  Every constant is then
# checked against PLAUSIBLE; an implausible group is measured again after a short
# pause, and if it stays implausible it takes its DEFAULTS value and the result
# is not stored, so that a later process measures again.

_CALIBRATION_VERSION = 13  # 3: vector_rate; 4: launch_seconds after the fixed-cost cuts (11.7 -> 4.3 us
                           # here): a stored launch cost from before steered small layers wrongly;
                           # 5: the micro-kernel's own curve (ukernel_peak, ukernel_half_k);
                           # 6: direct-pixels' tile's own curve (pixels_peak, pixels_half_k);
                           # 7: the tile helpers inlined (half-saturation reductions 19-24 ->
                           # 15-18 and 12-13 -> 8-12 here); 8: a low thread efficiency is measured
                           # again (DOUBTFUL_BELOW), and one stored from a disturbed run is dropped;
                           # 9: packed weights and scratch start on a cache line (aligned_empty), so
                           # the tiles' curves are measured again; 10: direct-pixels' curve on 36x36
                           # planes (32x32 ones alias in L1) and on staged layers, its AVX2 tile 4
                           # channels wide; 11: BLAS's panel packing timed with the GEMM curve
                           # (pack_rate) instead of priced at the copy rate; 12: the lines a tile's
                           # steps read from planar input measured (planar_line_seconds), instead of 6
                           # copies per tile, channel and kernel row times the share of a page a plane is;
                           # 13: and their cost per page of their planes (planar_line_page_seconds)

#: Sizes of the varied GEMM dimension when fitting half-saturation sizes, the
#: other two being ``_GEMM_CENTER``.  They span the channel counts and output
#: blocks of the network layers.  Not 8: OpenBLAS 0.3.30 runs an 8 x 256 x 256
#: sgemm through its small-matrix path at 100-115 GFLOP/s, faster than 256^3,
#: which is no point of the e(x) = x / (x + h) curve.  256 rather than 512 as
#: the centre because a 512^3 sgemm falls out of L2 and runs 5-10 % slower than
#: a 256^3 one here, which that curve cannot express either.  Without those two
#: the fit is close (log residual 0.004 rms) and repeatable (three calibrations
#: on a busy machine: half_m 15.07-15.11, half_n 3.43-3.46, half_k 4.72-4.73).
_GEMM_SIZES = (16, 32, 64, 128, 256)
_GEMM_CENTER = 256

#: Small GEMMs are timed batched in one kernel call of about this many flops
#: (a 256^3 sgemm, about 0.3 ms), so that the few microseconds of dispatch do
#: not count as GEMM inefficiency (the model prices launches separately).
_GEMM_TARGET_FLOPS = 2 * 256**3

#: Timing plan: rounds interleave all shapes, each round keeps the best of
#: ``_REPEATS`` calls, and the best over rounds (and attempts) is used.
_ROUNDS = 4
_REPEATS = 3

#: Attempts per group of constants before falling back, and the pause between
#: them (a busy process next door often finishes, or is descheduled, within it).
_ATTEMPTS = 3
_PAUSE_SECONDS = 0.25

#: Plausible range of every constant: a measurement outside it is disturbed (or
#: the machine is broken), not a fact to plan with.
PLAUSIBLE = {
    # single-thread sgemm: under 1 GFLOP/s is an emulated or broken BLAS; 2
    # TFLOP/s is 8x the fp32 FMA peak of a 4 GHz AVX-512 core
    "gemm_peak": (1e9, 2e12),
    # e(8) above 99.4 % or e(256) below 20 % is no BLAS we know of; the fit's
    # search range is 0.01-10000, so its edges fall outside
    "half_m": (0.05, 1024.0),
    "half_n": (0.05, 1024.0),
    "half_k": (0.05, 1024.0),
    # float32 elements per second: 0.4 GB/s to 8 TB/s of read + write traffic
    "copy_rate": (5e7, 1e12),
    "direct_rate": (5e7, 1e12),
    # flop/s of vectorised own loops: 0.5 GFLOP/s (vectorisation lost
    # entirely on a slow core) to 1 TFLOP/s (4x a 4 GHz AVX-512 core's peak)
    "vector_rate": (5e8, 1e12),
    # 2 threads on a clean 2-core machine: 0.90-1.0; a busy loop on the other
    # core gave 0.1 or less.  2-way SMT at all logical CPUs gives about 0.5, so
    # 0.4 accepts it while rejecting a core taken by another process.
    "thread_efficiency": (0.4, 1.15),
    # one parallel kernel launch, thread limits included: 4.3 us here
    "launch_seconds": (1e-7, 1e-2),
    # the micro-kernel: as the GEMM peak; its half-saturation reduction is
    # 15-18 here (the register tile is set up and stored once per reduction)
    "ukernel_peak": (1e9, 2e12),
    "ukernel_half_k": (0.05, 1024.0),
    "pixels_peak": (1e9, 2e12),
    "pixels_half_k": (0.05, 1024.0),
    "pixels_staged_peak": (1e9, 2e12),
    "pixels_staged_half_k": (0.05, 1024.0),
    # as copy_rate; packing that costs nothing beyond the curve is given the
    # upper end (_measure_gemm)
    "pack_rate": (5e7, 1e12),
    # a line that costs nothing beyond the tile's curve is 0 (_measure_ukernel);
    # 100 ns is a trip to memory a hundred times over
    "planar_line_seconds": (0.0, 1e-7),
    "planar_line_page_seconds": (0.0, 1e-7),
}

#: Values below these are measured again like implausible ones (up to
#: ``_ATTEMPTS``, keeping the best timings), but the last measurement stands:
#: they happen on some machines, and more often on a disturbed one.  On the
#: 2-core Intel Xeon kind, whose clean calibrations give 0.84-0.95, one
#: calibration took 0.47 while the other core was busy; the model then
#: priced two threads at 1.47x one, kept 1 MiB layers on one thread
#: (VGG-16's conv3_2 at batch 1 on Winograd F(4x4,3x3), 10.4 ms, where
#: F(2x2,3x3) on two ran 7.2), and the value was stored for good.
DOUBTFUL_BELOW = {"thread_efficiency": 0.7}

#: Root-mean-square log residual of the GEMM fit above which the timings are
#: taken as disturbed (fits here: 0.004; one timing off by 50 % gives about 0.15).
_MAX_FIT_RMS = 0.1

#: What an implausible constant falls back to: the values of a clean
#: calibration of a 2-core AVX-512 machine (Intel Xeon, OpenBLAS 0.3.30), except
#: thread_efficiency, which is set below the measured 0.95 on purpose: too low
#: a value puts large layers on one thread (1.1-2x slower), too high a value
#: only spreads small layers, whose launch cost the model prices anyway, and
#: the planar line's two costs, the AMD Zen 3 kind's flat 0.15-0.23 ns
#: (version 12, rounded up) and no cost per page (the Intel kind calibrates
#: 0 and 0.08-0.11 ns: 0.02-0.1 ns per line on 14x14-28x28 planes, 0.25-0.34
#: on 56x56, where the flat fallback is about right).
DEFAULTS = Calibration(gemm_peak=1.1e11, half_m=15.0, half_n=3.6, half_k=4.3, copy_rate=5.0e9,
                       direct_rate=1.95e9, thread_efficiency=0.8, launch_seconds=4.3e-6, vector_rate=3.6e10,
                       ukernel_peak=1.1e11, ukernel_half_k=14.0, pixels_peak=1.1e11, pixels_half_k=14.0,
                       pixels_staged_peak=1.1e11, pixels_staged_half_k=14.0, pack_rate=5.0e9,
                       planar_line_seconds=3e-10, planar_line_page_seconds=0.0)

_GROUPS = {"gemm": ("gemm_peak", "half_m", "half_n", "half_k", "pack_rate"), "copy": ("copy_rate",),
           "direct": ("direct_rate",), "vector": ("vector_rate",), "threads": ("thread_efficiency",),
           "launch": ("launch_seconds",),
           "ukernel": ("ukernel_peak", "ukernel_half_k", "pixels_peak", "pixels_half_k", "pixels_staged_peak",
                       "pixels_staged_half_k", "planar_line_seconds", "planar_line_page_seconds")}


@dataclass(frozen=True)
class CalibrationRun:
    """One calibration as measured, with what went wrong.

    Attributes
    ----------
    calibration : Calibration
        The constants (fallbacks included).
    fallbacks : tuple of str
        Constants that stayed implausible and hold their :data:`DEFAULTS`
        value; a run with fallbacks is not stored.
    remeasured : tuple of str
        Groups of constants that were implausible at first and measured again.
    fit_rms : float
        Root-mean-square log residual of the GEMM efficiency fit.
    seconds : float
        Time the calibration took.
    implausible_values : dict
        The last measured value of each constant in ``fallbacks``.
    """

    calibration: Calibration
    fallbacks: tuple = ()
    remeasured: tuple = ()
    fit_rms: float = 0.0
    seconds: float = 0.0
    implausible_values: dict = field(default_factory=dict)


@njit(parallel=True, cache=True)
def _copy(src, dst):
    for i in prange(src.size):
        dst[i] = src[i]


def _best_seconds(call, repeats=_REPEATS):
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def _interleaved_best(calls: dict, best: dict, rounds=_ROUNDS, repeats=_REPEATS) -> dict:
    """Best seconds of each call over ``rounds`` interleaved rounds, merged into ``best``."""
    for _ in range(rounds):
        for key, call in calls.items():
            best[key] = min(best.get(key, float("inf")), _best_seconds(call, repeats))
    return best


def _gemm_shapes():
    shapes = []
    for dim in range(3):
        for size in _GEMM_SIZES:
            shape = [_GEMM_CENTER] * 3
            shape[dim] = size
            if tuple(shape) not in shapes:
                shapes.append(tuple(shape))
    return shapes


def _gemm_calls():
    """(m, n, k) -> (call, flops per call): single-threaded sgemm, batched."""
    rng = np.random.default_rng(0)
    size = _GEMM_CENTER * _GEMM_CENTER
    a = rng.random(size, dtype=np.float32)
    b = rng.random(size, dtype=np.float32)
    out = np.empty(size, np.float32)
    no_bias = np.empty(0, np.float32)
    calls = {}
    for m, n, k in _gemm_shapes():
        count = max(1, -(-_GEMM_TARGET_FLOPS // (2 * m * n * k)))
        # Every GEMM of the batch reuses the same operands and output (steps 0):
        # one thread runs them one after another.
        calls[(m, n, k)] = (lambda m=m, n=n, k=k, count=count: batched_gemm(
            count, m, n, k, a, 0, 0, k, b, 0, 0, n, out, 0, 0, n, no_bias, 0, 1, 1), count * 2.0 * m * n * k)
    return calls


def _gemm_call(m, n, k):
    """A call of one single-threaded (m, n, k) sgemm on operands of its own."""
    rng = np.random.default_rng(0)
    a = rng.random(m * k, dtype=np.float32)
    b = rng.random(k * n, dtype=np.float32)
    out = np.empty(m * n, np.float32)
    no_bias = np.empty(0, np.float32)
    return lambda: batched_gemm(1, m, n, k, a, 0, 0, k, b, 0, 0, n, out, 0, 0, n, no_bias, 0, 1, 1)


def _gemm_rate(m, n, k):
    """Single-thread flop/s of one (m, n, k) sgemm (best of a few calls)."""
    call = _gemm_call(m, n, k)
    with kernel_threads(1):
        return 2.0 * m * n * k / _best_seconds(call, 5)


_H_GRID = np.logspace(-2, 4, 241)


def fit_gemm(rates: dict):
    """Fit ``rate = peak e(m) e(n) e(k)`` to measured rates, in log space.

    Parameters
    ----------
    rates : dict
        ``(m, n, k) -> flop/s``.

    Returns
    -------
    peak, half_m, half_n, half_k, rms : float
        The least-squares constants (half sizes searched over 0.01-10000 by
        coordinate descent on a log grid, then refined) and the root-mean-square
        log residual.
    """
    shapes = np.array(list(rates), dtype=np.float64)
    logs = np.log(np.array(list(rates.values()), dtype=np.float64))
    halves = np.array([8.0, 8.0, 8.0])

    def residuals(h):  # h: (candidates, 3) -> (candidates, points), peak solved in closed form
        predicted = np.log(shapes[None, :, :] / (shapes[None, :, :] + h[:, None, :])).sum(axis=2)
        r = logs[None, :] - predicted
        return r - r.mean(axis=1, keepdims=True)

    for grid_step in (None, 1.0, 0.25, 0.05):
        for _ in range(4):
            for d in range(3):
                if grid_step is None:
                    grid = _H_GRID
                else:  # a finer log grid around the current value
                    grid = halves[d] * np.exp(np.linspace(-grid_step, grid_step, 41))
                    grid = grid[(grid >= _H_GRID[0]) & (grid <= _H_GRID[-1])]
                candidates = np.repeat(halves[None, :], len(grid), axis=0)
                candidates[:, d] = grid
                halves[d] = grid[np.argmin((residuals(candidates) ** 2).sum(axis=1))]
    r = logs - np.log(shapes / (shapes + halves)).sum(axis=1)
    peak = float(np.exp(r.mean()))
    rms = float(np.sqrt(((r - r.mean()) ** 2).mean()))
    return peak, float(halves[0]), float(halves[1]), float(halves[2]), rms


def implausible(values: dict) -> list:
    """Names of the constants in ``values`` that are missing, not finite numbers
    or outside :data:`PLAUSIBLE`."""
    bad = []
    for name, (low, high) in PLAUSIBLE.items():
        value = values.get(name)
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or not low <= value <= high):
            bad.append(name)
    return bad


#: The sgemm whose time beyond the fitted curve is BLAS's packing of its
#: panels (``pack_rate``): im2col's GEMM of ResNet-50's layer4 3x3, whose
#: m x k weight panel is 60 times its k x n one and outweighs its outputs.
_PACK_SHAPE = (512, 49, 4608)


def _measure_gemm(best, known):

    calls = _gemm_calls()
    pack = _gemm_call(*_PACK_SHAPE)
    with kernel_threads(1):  # timed in the same rounds as the curve's shapes
        _interleaved_best({**{shape: call for shape, (call, _) in calls.items()}, "pack": pack}, best)
    peak, half_m, half_n, half_k, rms = fit_gemm({shape: flops / best[shape]
                                                  for shape, (_, flops) in calls.items()})
    m, n, k = _PACK_SHAPE
    fitted = 2.0 * m * n * k / (peak * _efficiency(m, half_m) * _efficiency(n, half_n) * _efficiency(k, half_k))
    extra = best["pack"] - fitted
    # Packing that costs nothing the curve does not already price is as fast
    # as a plausible rate can be.
    fastest = PLAUSIBLE["pack_rate"][1]
    pack_rate = min(fastest, (m * k + k * n) / extra) if extra > 0 else fastest
    values = dict(gemm_peak=peak, half_m=half_m, half_n=half_n, half_k=half_k, pack_rate=pack_rate)
    return values, rms


def _measure_copy(best, known):

    src = np.ones(4 * 2**20, np.float32)  # 32 MiB of traffic: beyond the caches
    dst = np.empty_like(src)
    with kernel_threads(1):
        _interleaved_best({"copy": lambda: _copy(src, dst)}, best, rounds=2, repeats=2)
    return {"copy_rate": src.size / best["copy"]}


def _prepacked_call(name, x_shape, w_shape, padding, groups=1, layout="NCHW"):
    """The plan and a call of algorithm ``name`` with weights packed once, on
    one thread, through the execution layer."""
    g = make_geometry(x_shape, w_shape, 1, padding, 1, groups)
    algorithm = registry.get(name)
    x = np.ones(int(np.prod(x_shape)), np.float32)
    w = prepare_weights(algorithm, np.ones(int(np.prod(w_shape)), np.float32), g)
    out = np.empty(int(np.prod(g.output_shape)), np.float32)
    plan = algorithm.plan(g, 1, layout, prepacked=True)
    no_bias = np.empty(0, np.float32)
    return plan, lambda: execute(plan, x, w, no_bias, out)


def _measure_direct(best, known):

    plan, call = _prepacked_call("direct-sum2d", (1, 16, 32, 32), (16, 16, 3, 3), 1)
    with kernel_threads(1):
        _interleaved_best({"direct": call}, best, rounds=2)
    return {"direct_rate": plan.geometry.flops / best["direct"]}


#: The vectorised-loop rate is measured on the depthwise kernel: 64 planes of
#: 64 x 64, 3x3, padded left and right only, so every band is read in place
#: (no copies, which the copy rate prices) and every flop is a run's; about
#: 0.1 ms, so that the launch (priced apart) is a few percent of it.
_VECTOR_SHAPE = ((1, 64, 64, 64), (64, 1, 3, 3), ((0, 0), (1, 1)), 64)


def _measure_vector(best, known):

    plan, call = _prepacked_call("depthwise", *_VECTOR_SHAPE)
    with kernel_threads(1):
        _interleaved_best({"vector": call}, best)
    return {"vector_rate": plan.vector_flops / best["vector"]}


#: The register tiles' curves are fitted to convolutions into 256 channels,
#: each tile's on its layers: algorithm, layout, output rows and columns,
#: kernel side (padded to keep the size) and input channels (three
#: reductions; 0.15-10 ms each, so that the launch is a few percent at most).
#: The micro-kernel runs 1x1 layers channels-last (no tile transposes, which
#: the NCHW plans price as moved elements).  direct-pixels reads the NCHW
#: planes of 1x1 layers in place, on 36 x 36 planes as the networks' 56x56,
#: 28x28 and 14x14 ones are (a 32 x 32 plane aliases in L1 and goes through
#: panels: PIXELS_ALIASED_PLANE_BYTES), and runs other layers on a staged
#: copy through an offset per step: 3x3 layers on rows of whole tiles, over
#: the reductions of the networks' 3x3 layers (18 to 1152).  On the AMD Zen 3
#: kind, priced on the 1x1 curve, the staged tile ran 3x3 and 5x5 layers
#: 1.1-1.5x slower than predicted (ResNet-50's 3x3 on 56x56 at 2 threads:
#: 2.3-2.6 ms against 1.8 predicted, and chosen over Winograd's 1.4-1.5).
_TILE_LAYERS = {"ukernel": ("direct-ukernel-nhwc", "NHWC", 32, 32, 1, (16, 64, 256)),
                "pixels": ("direct-pixels", "NCHW", 36, 36, 1, (16, 64, 256)),
                "pixels_staged": ("direct-pixels", "NCHW", 24, 48, 3, (2, 16, 128))}


def fit_reduction(rates: dict):
    """Fit ``rate = peak k / (k + half)`` to measured rates, in log space.

    Parameters
    ----------
    rates : dict
        ``k -> flop/s``.

    Returns
    -------
    peak, half : float
        The least-squares constants (``half`` searched over 0.01-10000 on a
        fine log grid).
    """
    ks = np.array(list(rates), dtype=np.float64)
    logs = np.log(np.array(list(rates.values()), dtype=np.float64))
    grid = np.logspace(-2, 4, 2401)
    r = logs[None, :] - np.log(ks[None, :] / (ks[None, :] + grid[:, None]))
    spread = ((r - r.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    best = int(np.argmin(spread))
    return float(np.exp(r[best].mean())), float(grid[best])


#: A planar line's cost (``planar_line_seconds``; see the micro-kernel's
#: plan for the lines a step reads) is what direct-ukernel's NCHW 1x1 layers
#: take beyond their prediction without it (the tile's curve, the transposed
#: stores, the launch), per line: least squares of the relative error over
#: two layers into 256 channels, on 14x14 and 28x28 planes of 256 channels
#: (0.3 and 1.3 ms), timed in the rounds of the tiles' curves so that both
#: see the same phase of a shared machine (timed apart, three calibrations
#: in a noisy phase gave 0, 0.02 and 0.22 ns; in the same rounds 0.15-0.23
#: on the AMD Zen 3 kind).  Until version 12 the model priced 6 copies per
#: tile, channel block, channel and kernel row, times the share of a 4 KiB
#: page a plane is (fitted on the Intel Xeon kind's 56x56 planes).  On the
#: AMD Zen 3 kind the kernel's 1x1 layers then ran 0.64-0.72x their
#: prediction on 28x28 and 56x56 planes and 1.07-1.22x on 7x7 ones, relative
#: to conv-1x1-gemm's (best of 5 alternating, batch 1 and 8, one thread).
#: The line's cost per page its plane spans (``planar_line_page_seconds``)
#: is fitted with it, least squares of both (each at least 0) over five
#: layers on planes of 0.19 to 4 pages (UKERNEL_PLANAR_PAGES_MAX).  Version
#: 12's two layers (14x14 and 28x28) are not where the Intel kind's lines
#: cost: its calibrations there gave 0-0.05 ns per line, and the model then
#: put ResNet-50's layer2 downsample (56x56 planes) on direct-ukernel, which
#: ran 0.60-0.89x as fast as direct-pixels.  Six calibrations there gave 0 ns
#: per line (one: 0.10) and 0.08-0.11 ns per line and page (one: 0.01), so
#: 0.25-0.34 ns per line on 56x56 planes; with three layers (up to 56x56)
#: the fit moved more between calibrations.
_PLANAR_LAYERS = ((1, 256, 14, 14), (1, 256, 28, 28), (1, 256, 40, 40), (1, 256, 56, 56), (1, 256, 64, 64))


def _measure_ukernel(best, known):
    # Each tile's curve on its layers (_TILE_LAYERS), in the layout it stores
    # without transposing; in the same rounds, the planar layers.
    calls, flops, planar = {}, {}, {}
    for tile, (name, layout, rows, cols, side, channels) in _TILE_LAYERS.items():
        for c in channels:
            key = tile, c * side**2  # the tile and the layer's reduction
            plan, calls[key] = _prepacked_call(name, (1, c, rows, cols), (256, c, side, side), side // 2,
                                               layout=layout)
            flops[key] = sum(2.0 * count * m * n * k for count, m, n, k in plan.gemms)
    for shape in _PLANAR_LAYERS:
        planar[shape], calls[shape] = _prepacked_call("direct-ukernel", shape, (256, shape[1], 1, 1), 0)
    with kernel_threads(1):
        _interleaved_best(calls, best)
    constants = {}
    for tile in _TILE_LAYERS:
        peak, half = fit_reduction({k: flops[t, k] / best[t, k] for t, k in flops if t == tile})
        constants.update({f"{tile}_peak": peak, f"{tile}_half_k": half})
    free = Calibration(**{**asdict(DEFAULTS), **known, **constants, "planar_line_seconds": 0.0,
                          "planar_line_page_seconds": 0.0})
    # Per second measured: the lines, and the lines times their planes' pages.
    lines = np.array([[plan.planar_line_reads / best[s], plan.planar_line_reads * plan.planar_plane_pages / best[s]]
                      for s, plan in planar.items()])
    excess = np.array([(best[s] - predict_seconds(plan, free)) / best[s] for s, plan in planar.items()])
    # Lines that cost nothing beyond the rest of the prediction cost 0.
    flat, per_page = scipy.optimize.nnls(lines, excess)[0]
    constants.update(planar_line_seconds=float(flat), planar_line_page_seconds=float(per_page))
    return constants


def _measure_launch(best, known):
    # execute() enters kernel_threads (BLAS and Numba thread limits), as every call does.
    _, call = _prepacked_call("direct-sum2d", (1, 1, 4, 4), (1, 1, 1, 1), 0)
    _interleaved_best({"launch": call}, best, repeats=5)
    return {"launch_seconds": best["launch"] / 2}


def _measure_threads(best, known):

    threads = max_threads()
    if threads <= 1:
        return {"thread_efficiency": 1.0}
    # One 256 x (1024 threads) x 256 sgemm: a 256 x 1024 block per thread, the
    # size of a large layer's share, on 1 thread and on all.
    n = 1024 * threads
    a = np.ones(256 * 256, np.float32)
    b = np.ones(256 * n, np.float32)
    c = np.empty(256 * n, np.float32)
    no_bias = np.empty(0, np.float32)

    def call(t):
        split = split_work(1, 256, n, t, min_rows=16, min_cols=128)
        m_blocks, n_tiles = split.row_blocks, split.col_tiles
        return lambda: batched_gemm(1, 256, n, 256, a, 0, 0, 256, b, 0, 0, n, c, 0, 0, n, no_bias, 0,
                                    m_blocks, n_tiles)

    for _ in range(_ROUNDS):  # interleaved, each timing under its own thread count
        for t in (1, threads):
            with kernel_threads(t):
                _interleaved_best({t: call(t)}, best, rounds=1)
    return {"thread_efficiency": (best[1] / best[threads] - 1) / (threads - 1)}


#: Each group's measurement, in this order: ``measure(best, known)`` times
#: into ``best`` and may price with ``known``, the constants measured before.
_MEASURE = {"gemm": _measure_gemm, "copy": _measure_copy, "direct": _measure_direct,
            "vector": _measure_vector, "threads": _measure_threads, "launch": _measure_launch,
            "ukernel": _measure_ukernel}


def calibrate_run(*, attempts=None, pause=None) -> CalibrationRun:
    """Measure the machine constants robustly (about a second).

    Each group of constants (GEMM, copy, loop nest, vectorised loops, threads,
    launch, micro-kernel) is timed as the best over interleaved rounds; a group with a constant outside
    :data:`PLAUSIBLE` (or a GEMM fit whose residual exceeds ``_MAX_FIT_RMS``) is
    measured again after ``pause`` seconds (default ``_PAUSE_SECONDS``), keeping
    the best timings of all attempts, up to ``attempts`` times (default
    ``_ATTEMPTS``); then it falls back to :data:`DEFAULTS`.  A group with a
    constant under :data:`DOUBTFUL_BELOW` is measured again the same way, but
    keeps its last measurement.

    Returns
    -------
    CalibrationRun
    """
    attempts = _ATTEMPTS if attempts is None else attempts
    pause = _PAUSE_SECONDS if pause is None else pause
    start = time.perf_counter()
    values, fallbacks, remeasured, rms, rejected = {}, [], [], 0.0, {}
    for group, measure in _MEASURE.items():
        best = {}  # best timings, kept across attempts
        for attempt in range(attempts):
            if attempt:
                remeasured.append(group)
                time.sleep(pause)
            measured = measure(best, values)
            if group == "gemm":
                measured, rms = measured
            bad = [name for name in implausible({**asdict(DEFAULTS), **measured}) if name in measured]
            if group == "gemm" and (bad or rms > _MAX_FIT_RMS):
                bad = list(_GROUPS["gemm"])  # one bad constant or a poor fit discredits them all
            doubtful = [name for name, floor in DOUBTFUL_BELOW.items() if measured.get(name, floor) < floor]
            if not bad and not (doubtful and attempt < attempts - 1):
                break
        else:
            fallbacks += bad
            rejected.update({name: measured[name] for name in bad})
            measured.update({name: getattr(DEFAULTS, name) for name in bad})
        if group == "threads":
            # Measured super-linear speed-up is cache luck, not a rate to plan with.
            measured["thread_efficiency"] = min(1.0, measured["thread_efficiency"])
        values.update(measured)
    return CalibrationRun(Calibration(**values), tuple(fallbacks), tuple(remeasured), rms,
                          time.perf_counter() - start, rejected)


def calibrate() -> Calibration:
    """Measure the machine constants (about a second); see :func:`calibrate_run`."""
    return calibrate_run().calibration


@functools.lru_cache(maxsize=1)
def _calibration_key():
    """What a stored calibration is keyed on (built once: every "auto" call
    looks its calibration up under it)."""
    return f"v{_CALIBRATION_VERSION} lowmem-numba {__version__} on {machine_id()}"


def _calibration_path():
    return cache_dir() / "calibration.json"


def validated(stored) -> "Calibration | None":
    """The Calibration a stored entry holds, or None unless every constant is a
    finite number within :data:`PLAUSIBLE` (a hand-edited or foreign entry with
    0, NaN, a string or 1e9 must not steer the scheduler)."""
    if not isinstance(stored, dict) or implausible(stored):
        return None
    return Calibration(**{name: float(stored[name]) for name in PLAUSIBLE})


def stored_calibration() -> "tuple[Calibration, str] | None":
    """This machine's stored calibration and when it was measured, without
    measuring; None if there is none (or it is invalid)."""
    stored = read_store(_calibration_path()).get(_calibration_key())
    result = validated(stored)
    if result is None:
        return None
    return result, str(stored.get("measured_at", "an unknown time"))


def _store(run: CalibrationRun) -> bool:
    if run.fallbacks:
        return False  # partly guessed: let a later process measure again
    entry = dict(asdict(run.calibration), measured_at=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    try:
        update_store(_calibration_path(), _calibration_key(), entry)
    except OSError:
        return False  # a read-only cache directory costs a recalibration per process, nothing more
    return True


_loaded: dict = {}
# One calibration per process: the first caller measures, the others wait for it
# (eight threads calibrating at once timed each other's GEMMs and stored
# half-saturation sizes of 0.0).
_lock = threading.Lock()


def calibration() -> Calibration:
    """This machine's calibration: from memory, the user cache, or measured now.

    Thread-safe: the first call of a process loads or measures it, concurrent
    callers wait and reuse it.  A stored entry is used only if it passes
    :func:`validated`; a measured one is stored only if nothing fell back.
    """
    key = _calibration_key()
    result = _loaded.get(key)
    if result is not None:
        return result
    with _lock:
        result = _loaded.get(key)
        if result is None:
            found = stored_calibration()
            if found is not None:
                result = found[0]
            else:
                run = calibrate_run()
                _store(run)
                result = run.calibration
            _loaded[key] = result
    return result


def loaded_calibration() -> "Calibration | None":
    """The calibration this process uses if it has one already, else None:
    never loads or measures (for memo keys built before validation)."""
    return _loaded.get(_calibration_key())


def recalibrate() -> "tuple[CalibrationRun, bool]":
    """Measure again, store (unless something fell back) and use the result in
    this process.

    Returns
    -------
    run : CalibrationRun
    stored : bool
        Whether it was written to the user cache.
    """
    with _lock:
        run = calibrate_run()
        stored = _store(run)
        _loaded[_calibration_key()] = run.calibration
    return run, stored


def describe(c: Calibration, threads=None) -> list:
    """What the constants mean, in plain words (one line each)."""
    threads = max_threads() if threads is None else threads

    def eff(size, half):
        return 100 * _efficiency(size, half)

    lines = [
        f"GEMM peak: {c.gemm_peak / 1e9:.1f} GFLOP/s on one thread (a large sgemm)",
        f"  a GEMM with k = 64 (a 64-channel tap of kn2row-aa) runs at {eff(64, c.half_k):.0f} % of it, "
        f"k = 16 at {eff(16, c.half_k):.0f} %",
        f"  m = 64 output channels: {eff(64, c.half_m):.0f} %; n = 64 pixels: {eff(64, c.half_n):.0f} % "
        f"(half-saturation sizes m {c.half_m:.2f}, n {c.half_n:.2f}, k {c.half_k:.2f})",
        f"  BLAS's panel packing: {c.pack_rate / 1e9:.2f} G float32/s beyond that curve (a "
        f"{_PACK_SHAPE[0]} x {_PACK_SHAPE[1]} x {_PACK_SHAPE[2]} sgemm: "
        f"{(_PACK_SHAPE[0] + _PACK_SHAPE[1]) * _PACK_SHAPE[2] / c.pack_rate * 1e3:.2f} ms more)",
        f"copies: {c.copy_rate / 1e9:.2f} G float32/s ({c.copy_rate * 8 / 1e9:.1f} GB/s read + write)",
        f"direct loop nest: {c.direct_rate / 1e9:.2f} GFLOP/s "
        f"({c.gemm_peak / c.direct_rate:.0f}x slower than the GEMM peak)",
        f"vectorised loops (depthwise runs): {c.vector_rate / 1e9:.1f} GFLOP/s",
    ]
    for t in sorted({2, threads}):
        if t <= threads and t > 1:
            lines.append(f"{t} threads: {1 + (t - 1) * c.thread_efficiency:.2f}x one thread on large layers "
                         f"(thread efficiency {c.thread_efficiency:.2f})")
    lines.append(f"kernel launch: {c.launch_seconds * 1e6:.1f} us")
    for what, peak, half in (("micro-kernel", c.ukernel_peak, c.ukernel_half_k),
                             ("direct-pixels' tile", c.pixels_peak, c.pixels_half_k),
                             ("direct-pixels' tile, staged", c.pixels_staged_peak, c.pixels_staged_half_k)):
        lines.append(f"{what}: {peak / 1e9:.1f} GFLOP/s on long reductions; a reduction of 64 runs at "
                     f"{eff(64, half):.0f} % of it, 16 at {eff(16, half):.0f} % (half-saturation {half:.1f})")
    lines.append(f"a cache line a register tile's step reads from planar (NCHW) input: "
                 f"{c.planar_line_seconds * 1e9:.2f} ns, and {c.planar_line_page_seconds * 1e9:.2f} ns more "
                 f"per {page_bytes() // 1024} KiB page its plane spans")
    return lines


def calibrate_command(show=False) -> str:
    """The text of ``lowmem-numba calibrate`` (measure again and store) or
    ``lowmem-numba calibrate --show`` (the stored values, measuring nothing)."""
    path = cache_dir() / "calibration.json"
    if show:
        found = stored_calibration()
        if found is None:
            return (f"no valid calibration stored for this machine in {path}; the first automatic plan "
                    f"measures one, or run: lowmem-numba calibrate")
        constants, when = found
        head = [f"stored calibration ({path}, measured {when}):"]
    else:
        run, stored = recalibrate()
        constants = run.calibration
        head = [f"measured in {run.seconds:.1f} s (GEMM fit residual {run.fit_rms:.3f} rms in log space)"]
        if run.remeasured:
            head.append(f"implausible at first, measured again: {', '.join(dict.fromkeys(run.remeasured))}")
        if run.fallbacks:
            measured = ", ".join(f"{name} {value:.3g} (plausible {PLAUSIBLE[name][0]:g}-{PLAUSIBLE[name][1]:g})"
                                 for name, value in run.implausible_values.items())
            head.append(f"still implausible: {measured}")
            head.append(f"so the defaults are used for {', '.join(run.fallbacks)} and nothing is stored "
                        f"(is another program busy? run lowmem-numba calibrate again on a quiet machine)")
        else:
            head.append(f"stored in {path}" if stored else f"could not write {path}: used in this process only")
    values = [f"  {name} = {getattr(constants, name):.6g}" for name in PLAUSIBLE]
    return "\n".join(head + ["", "constants:"] + values + ["", "what they mean:"]
                     + ["  " + line for line in describe(constants)])
