"""An analytic cost model of every algorithm, calibrated once per machine.

Each algorithm's work on a geometry is described as the GEMMs it calls (count,
m, n, k), the elements it moves outside BLAS (patch building, shift-adds,
weight packing, layout conversion) and any flops done outside BLAS.  A GEMM of
shape (m, n, k) runs at ``peak * e(m) e(n) e(k)`` with ``e(x) = x / (x + h)``:
small dimensions cost efficiency, and the three half-saturation sizes ``h`` and
the peak are solved from four timed sgemm calls.  Copies run at a measured
bandwidth, the loop nest at a measured rate, and threads scale by a measured
efficiency.  The calibration takes about a second, is stored in the user cache
directory, and makes predictions deterministic.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
from numba import njit, prange

from .cache import cache_dir, machine_id, read_store, update_store

_CALIBRATION_VERSION = 1


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


@dataclass(frozen=True)
class Work:
    """What one call does, for the whole batch."""

    gemms: tuple  # ((count, m, n, k), ...)
    moved: int = 0
    direct_flops: int = 0
    launches: int = 1


def _efficiency(size, half):
    return size / (size + half)


def predict_seconds(work: Work, threads: int, c: Calibration) -> float:
    """Predicted wall time of ``work`` on ``threads`` threads."""
    serial = 0.0
    parallel_items = 0
    for count, m, n, k in work.gemms:
        if count == 0 or m == 0 or n == 0 or k == 0:
            continue
        rate = c.gemm_peak * _efficiency(m, c.half_m) * _efficiency(n, c.half_n) * _efficiency(k, c.half_k)
        serial += count * 2.0 * m * n * k / rate
        parallel_items += count * max(1, n // 128) * max(1, m // 16)
    serial += work.moved / c.copy_rate + work.direct_flops / c.direct_rate
    usable = min(threads, max(1, parallel_items)) if work.gemms else threads
    speedup = 1.0 + (usable - 1) * c.thread_efficiency
    return serial / speedup + work.launches * c.launch_seconds * (1 + 0.5 * (threads - 1))


def describe_work(name: str, g, threads: int, layout: str) -> Work:
    """The work of algorithm ``name`` on geometry ``g`` (see the module docstring)."""
    from . import registry

    algorithm = registry.get(name)
    n_img, groups = g.batch, g.groups
    c, m, taps = g.channels_per_group, g.out_channels_per_group, g.kernel_taps
    hw, plane = g.height * g.width, g.out_height * g.out_width
    patches = g.in_channels * taps * plane
    packed = algorithm.packed_weight_elements(g)
    into, back = algorithm.transform_elements(g, layout)
    moved = packed + n_img * (into + back)
    launches = 2 + (n_img if into or back else 0)
    if name == "direct-sum2d":
        return Work((), moved, g.flops, launches)
    if name == "conv-1x1-gemm":
        return Work(((n_img * groups, m, hw, c),), moved, 0, launches)
    if name.startswith(("im2col", "im2row")):
        slow_gather = 2 if "-scan-" in name else 1
        return Work(((n_img * groups, m, plane, c * taps),), moved + slow_gather * n_img * patches, 0,
                    launches + n_img)
    if name.startswith("mec"):
        lowered = g.out_width * (g.height + g.pad_top + g.pad_bottom) * g.kernel_w * g.in_channels
        return Work(((n_img * groups * g.out_height, m, g.out_width, c * taps),), moved + n_img * lowered,
                    0, launches + n_img)
    if name.startswith("kn2row-aa"):
        # The kernel's own tiling plan decides its GEMM shapes.
        from .algorithms.kn2row import _tiling

        m_blocks, rows_per_band, _, _ = _tiling(g, threads)
        bands = -(-g.out_height // rows_per_band)
        m_block = max(1, m // m_blocks)
        if g.out_width == g.width:
            return Work(((n_img * groups * taps * bands * m_blocks, m_block, rows_per_band * g.width, c),),
                        moved, 0, launches)
        return Work(((n_img * groups * taps * g.out_height * m_blocks, m_block, g.out_width, c),), moved, 0,
                    launches)
    if name in ("kn2row", "kn2col"):
        return Work(((n_img * groups, taps * m, hw, c),), moved + n_img * 2 * taps * m * hw, 0,
                    launches + n_img)
    if name in ("kn2row-as", "kn2col-as"):
        return Work(((n_img * groups * taps, m, hw, c),), moved + n_img * 2 * taps * m * hw, 0,
                    launches + n_img * taps)
    # An algorithm this model does not know: price it as its arithmetic at
    # large-GEMM speed plus a full copy of its workspace, a neutral guess.
    return Work(((n_img * groups, m, plane, c * taps),), moved + n_img * patches, 0, launches)


# --------------------------------------------------------------- calibration

@njit(parallel=True, cache=True)
def _copy(src, dst):
    for i in prange(src.size):
        dst[i] = src[i]


def _best_seconds(call, repeats=5):
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def _gemm_rate(m, n, k):
    from .algorithms._common import batched_gemm
    from .threads import kernel_threads

    rng = np.random.default_rng(0)
    a = rng.random(m * k, dtype=np.float32)
    b = rng.random(k * n, dtype=np.float32)
    out = np.empty(m * n, np.float32)
    no_bias = np.empty(0, np.float32)

    def call():
        batched_gemm(1, m, n, k, a, 0, 0, k, b, 0, 0, n, out, 0, 0, n, no_bias, 0, 1, 1)

    with kernel_threads(1):
        return 2.0 * m * n * k / _best_seconds(call)


def _half_size(ratio, small, large):
    # Solve ratio = e(small) / e(large) for h, with e(x) = x / (x + h).
    denominator = large * ratio - small
    if denominator <= 0:
        return float(large)
    return max(0.0, small * large * (1 - ratio) / denominator)


def calibrate() -> Calibration:
    """Measure the machine constants (about a second)."""
    from .api import conv2d
    from .threads import kernel_threads, max_threads

    big, small = 512, 32
    full = _gemm_rate(big, big, big)
    half_m = _half_size(_gemm_rate(small, big, big) / full, small, big)
    half_n = _half_size(_gemm_rate(big, small, big) / full, small, big)
    half_k = _half_size(_gemm_rate(big, big, small) / full, small, big)
    peak = full / (_efficiency(big, half_m) * _efficiency(big, half_n) * _efficiency(big, half_k))

    src = np.ones(4 * 2**20, np.float32)
    dst = np.empty_like(src)
    with kernel_threads(1):
        copy_rate = src.size / _best_seconds(lambda: _copy(src, dst))

    x = np.ones((1, 16, 32, 32), np.float32)
    w = np.ones((16, 16, 3, 3), np.float32)
    out = np.empty((1, 16, 32, 32), np.float32)
    direct_rate = 2 * 16 * 16 * 9 * 32 * 32 / _best_seconds(
        lambda: conv2d(x, w, padding=1, algorithm="direct-sum2d", threads=1, out=out))

    efficiency = 1.0
    threads = max_threads()
    if threads > 1:
        from .algorithms._common import batched_gemm, gemm_split

        n = 2048
        a = np.ones(256 * 256, np.float32)
        b = np.ones(256 * n, np.float32)
        c = np.empty(256 * n, np.float32)
        no_bias = np.empty(0, np.float32)
        timings = {}
        for t in (1, threads):
            m_blocks, n_tiles = gemm_split(1, 256, n, t)
            with kernel_threads(t):
                timings[t] = _best_seconds(lambda: batched_gemm(
                    1, 256, n, 256, a, 0, 0, 256, b, 0, 0, n, c, 0, 0, n, no_bias, 0, m_blocks, n_tiles))
        efficiency = min(1.0, max(0.1, (timings[1] / timings[threads] - 1) / (threads - 1)))

    tiny = np.ones((1, 1, 4, 4), np.float32)
    one = np.ones((1, 1, 1, 1), np.float32)
    tiny_out = np.empty((1, 1, 4, 4), np.float32)
    launch = _best_seconds(lambda: conv2d(tiny, one, algorithm="direct-sum2d", threads=1, out=tiny_out)) / 2
    return Calibration(peak, half_m, half_n, half_k, copy_rate, direct_rate, efficiency, launch)


def _calibration_key():
    from ._version import __version__

    return f"v{_CALIBRATION_VERSION} lowmem-numba {__version__} on {machine_id()}"


_loaded: dict = {}


def calibration() -> Calibration:
    """This machine's calibration: from memory, the user cache, or measured now."""
    key = _calibration_key()
    if key in _loaded:
        return _loaded[key]
    path = cache_dir() / "calibration.json"
    stored = read_store(path).get(key)
    result = None
    if isinstance(stored, dict):
        try:
            result = Calibration(**stored)
        except TypeError:
            result = None
    if result is None:
        result = calibrate()
        try:
            update_store(path, key, asdict(result))
        except OSError:
            pass  # a read-only cache directory costs a recalibration per process, nothing more
    _loaded[key] = result
    return result
