"""Micro-kernels shared by the algorithm families.

Kernels take flat C-contiguous float32 arrays and the geometry as a tuple of
ints (see :func:`dims`), so one compiled specialisation serves every shape.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._compile import njit  # numba.njit whose cache=True never fails (see _compile)
from ..blas import gemm
from ..layout import transpose_blocks

_F32_ONE = np.float32(1.0)
_F32_ZERO = np.float32(0.0)


def dims(g) -> tuple:
    """The geometry as the int tuple kernels unpack."""
    return (
        g.batch, g.in_channels, g.height, g.width, g.out_channels, g.kernel_h,
        g.kernel_w, g.groups, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w,
        g.pad_top, g.pad_bottom, g.pad_left, g.pad_right, g.out_height, g.out_width,
    )


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@njit(cache=True, nogil=True)
def valid_range(in_size, out_size, stride, offset):
    """Output indices o in [0, out_size) whose input o*stride + offset is in [0, in_size)."""
    lo = min(out_size, max(0, -(offset // stride)))
    hi = min(out_size, (in_size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@njit(cache=True, nogil=True)
def add_bias_rows(out, offset, rows, cols, ld, bias, bias_offset):
    """out[offset + r*ld + j] += bias[bias_offset + r] for an rows x cols block."""
    for r in range(rows):
        b = bias[bias_offset + r]
        base = offset + r * ld
        for j in range(cols):
            out[base + j] += b


@njit(cache=True, nogil=True)
def add_bias_cols(out, offset, rows, cols, ld, bias, bias_offset):
    """out[offset + r*ld + j] += bias[bias_offset + j]: a channels-last block."""
    for r in range(rows):
        base = offset + r * ld
        for j in range(cols):
            out[base + j] += bias[bias_offset + j]


@njit(cache=True, nogil=True)
def fill_rows(out, offset, rows, cols, ld, bias, bias_offset):
    """Set an rows x cols block to the bias of each row (zero when bias is empty)."""
    for r in range(rows):
        b = bias[bias_offset + r] if bias.size else _F32_ZERO
        base = offset + r * ld
        for j in range(cols):
            out[base + j] = b


def gemm_split(count: int, m: int, n: int, threads: int, min_cols: int = 128):
    """How to cut ``count`` independent m x n GEMM outputs into parallel items.

    Returns (m_blocks, n_tiles).  One item per GEMM when there are enough; else
    columns are cut first (each tile keeps >= ``min_cols`` columns, the width at
    which a single-threaded sgemm stays efficient), then rows.
    """
    if count >= threads or count < 1:
        return 1, 1  # one item per GEMM, or no GEMM at all (an empty batch)
    want = ceil_div(threads, count)
    n_tiles = max(1, min(want, n // min_cols))
    m_blocks = max(1, min(ceil_div(want, n_tiles), m // 16))
    return m_blocks, n_tiles


#: Narrowest column tile and smallest row block split_plan creates by default:
#: below these a single-threaded sgemm loses efficiency faster than balance gains.
_MIN_COLS = 256
_MIN_ROWS = 16


def split_plan(count, rows, cols, threads, min_rows=_MIN_ROWS, min_cols=_MIN_COLS):
    """How to cut ``count`` equal ``rows x cols`` GEMM outputs into parallel tiles.

    Returns ``(row_blocks, col_tiles)``.  Numba's ``prange`` hands each thread
    an equal contiguous share of the items, so the wall time follows
    ``ceil(items / threads)``: the plan minimises that relative to the ideal
    ``items / threads``, preferring the fewest tiles (each tile repacks its
    operands) and column cuts over row cuts.  Also used by the MEC kernels.
    """
    if threads <= 1 or count < 1:
        return 1, 1  # nothing to balance, or no GEMM at all (an empty batch)
    max_cols = max(1, min(cols // min_cols, 4 * threads))
    max_rows = max(1, min(rows // min_rows, 4 * threads))
    best, best_cost = (1, 1), None
    for col_tiles in range(1, max_cols + 1):
        for row_blocks in range(1, max_rows + 1):
            items = count * row_blocks * col_tiles
            imbalance = ceil_div(items, threads) * threads / items
            # A small price per extra tile, higher for row cuts (which make
            # the thinner, less efficient GEMMs), breaks ties.
            cost = imbalance * (1 + 0.01 * (col_tiles - 1) + 0.02 * (row_blocks - 1))
            if best_cost is None or cost < best_cost - 1e-12:
                best, best_cost = (row_blocks, col_tiles), cost
    return best


@njit(cache=True, nogil=True)
def tile_bounds(item, m, n, m_blocks, n_tiles):
    """Parallel item ``item`` of equal m x n GEMM outputs cut into
    ``m_blocks x n_tiles`` tiles: (GEMM index, m0, m1, n0, n1)."""
    per_gemm = m_blocks * n_tiles
    mb = item % per_gemm // n_tiles
    nt = item % n_tiles
    return (item // per_gemm, mb * m // m_blocks, (mb + 1) * m // m_blocks,
            nt * n // n_tiles, (nt + 1) * n // n_tiles)


@njit(parallel=True, cache=True)
def batched_gemm(count, m, n, k, a, a_off, a_step, lda, b, b_off, b_step, ldb,
                 c, c_off, c_step, ldc, bias, bias_step, m_blocks, n_tiles):
    """``count`` GEMMs C_i = A_i @ B_i (+ bias_i per row), cut into parallel tiles.

    GEMM i uses A at ``a_off + i*a_step`` (m x k, ld ``lda``), B at
    ``b_off + i*b_step`` (k x n, ld ``ldb``), C at ``c_off + i*c_step``, and
    ``bias[i*bias_step : i*bias_step + m]`` when ``bias`` is not empty.
    """
    for item in prange(count * m_blocks * n_tiles):
        i, m0, m1, n0, n1 = tile_bounds(item, m, n, m_blocks, n_tiles)
        c_at = c_off + i * c_step + m0 * ldc + n0
        gemm(False, False, m1 - m0, n1 - n0, k, _F32_ONE,
             a, a_off + i * a_step + m0 * lda, lda,
             b, b_off + i * b_step + n0, ldb,
             _F32_ZERO, c, c_at, ldc)
        if bias.size:
            add_bias_rows(c, c_at, m1 - m0, n1 - n0, ldc, bias, i * bias_step + m0)


def pack_tap_major(weight, g, dest):
    """Weights (M, C/g, kh, kw) as (groups, kh*kw, M/g, C/g), the per-tap GEMM
    operands of the kn2row family: each group's (M/g*C/g) x taps matrix transposed."""
    transpose_blocks(weight, 0, dest, 0, g.groups, g.out_channels_per_group * g.channels_per_group,
                     g.kernel_taps)


def all_weights(g) -> int:
    """Elements of the whole weight tensor: the size of a full repacking."""
    return g.out_channels * g.reduction_size


def kn2row_family_unsupported(g):
    """The kn2row family shifts whole planes, which needs stride 1 (as in the paper)."""
    if g.stride != (1, 1):
        return f"stride {g.stride} (the kn2row family needs stride 1)"
    return None
