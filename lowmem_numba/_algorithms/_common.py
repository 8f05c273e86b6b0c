"""Micro-kernels shared by the algorithm families.

Kernels take flat C-contiguous float32 arrays and the geometry as a
:class:`KernelGeometry` record, whose fields they read by name; its one Numba
type lets one compiled specialisation serve every shape.  Kernels launched
from Python receive it as the plain tuple :func:`kernel_geometry` builds and
rebuild the record on entry (see :mod:`lowmem_numba._kernel_geometry`).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._compile import NONNEG, njit  # numba.njit whose cache=True never fails (see _compile)
from .._kernel_geometry import KernelGeometry, kernel_geometry  # noqa: F401  (re-exported)
from .._plan import CACHE_LINE_BYTES, FLOAT32_BYTES, Gemms, KernelPlan
from .._split import split_work
from .._tuning import GEMM_MIN_ROWS, PATCH_GEMM_MIN_COLS, PATCH_RUN_COST
from .._blas import gemm
from .._layout import transpose_blocks

#: The float32 constants kernels pass to gemm (alpha, beta) and store.
F32_ONE = np.float32(1.0)
F32_ZERO = np.float32(0.0)
#: An empty float32 array: what a kernel is passed for an array argument it
#: goes without (the weights as given, when it reads packed ones).
NO_ARRAY = np.empty(0, np.float32)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


#: float32 elements in one 64-byte cache line.  Per-thread buffers start on
#: their own lines (the workspace itself starts on one) and at least one line
#: apart: two threads refilling buffers that shared a line for every 7x7
#: plane ran slower together than one alone (false sharing, measured on the
#: depthwise kernels).
LINE = CACHE_LINE_BYTES // FLOAT32_BYTES


def whole_lines(elements: int) -> int:
    """``elements`` rounded up to whole cache lines."""
    return ceil_div(elements, LINE) * LINE


@njit(cache=True, nogil=True, inline="always")
def zero_run(dst, at, count):
    """``dst[at : at + count] = 0``, indexed through ``NONNEG`` so that LLVM
    vectorises it (inlined: a call would cost more than a short run)."""
    e = at & NONNEG
    for k in range(count):
        dst[e + k] = 0.0


@njit(cache=True, nogil=True)
def valid_range(in_size, out_size, stride, offset):
    """Output indices o in [0, out_size) whose input o*stride + offset is in [0, in_size)."""
    lo = min(out_size, max(0, -(offset // stride)))
    hi = min(out_size, (in_size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@njit(cache=True, nogil=True)
def bias_rows(out, offset, rows, cols, ld, bias, bias_offset, add):
    """Channel-per-row block: row r of the ``rows x cols`` block at ``out[offset]``
    (leading dimension ``ld``) gets ``bias[bias_offset + r]``.

    With ``add`` the bias is added (nothing happens without a bias); otherwise
    the block is set to it (to zero without a bias).
    """
    if add and not bias.size:
        return
    for r in range(rows):
        b = bias[bias_offset + r] if bias.size else F32_ZERO
        base = offset + r * ld
        if add:
            for j in range(cols):
                out[base + j] += b
        else:
            for j in range(cols):
                out[base + j] = b


@njit(cache=True, nogil=True)
def bias_cols(out, offset, rows, cols, ld, bias, bias_offset, add):
    """Channels-last block: column j of the ``rows x cols`` block at
    ``out[offset]`` (leading dimension ``ld``) gets ``bias[bias_offset + j]``.

    With ``add`` the bias is added (nothing happens without a bias); otherwise
    the block is set to it (to zero without a bias).
    """
    if add and not bias.size:
        return
    for r in range(rows):
        base = offset + r * ld
        if not bias.size:
            for j in range(cols):
                out[base + j] = F32_ZERO
        elif add:
            for j in range(cols):
                out[base + j] += bias[bias_offset + j]
        else:
            for j in range(cols):
                out[base + j] = bias[bias_offset + j]


def unpadded_1x1(g) -> bool:
    """Whether ``g`` has a 1x1 kernel and no padding: each output plane is
    then its input's pixels (at the stride), read where they lie."""
    return (g.kernel_h, g.kernel_w) == (1, 1) and not any(p for pair in g.padding for p in pair)


def split_gemms(count, m, n, k, threads, *, min_rows, min_cols, prefer="cols"):
    """Cut ``count`` equal m x n x k GEMMs into parallel tiles (one
    :func:`~lowmem_numba._split.split_work` rule) and describe the tiles.

    Returns
    -------
    split : Split
        ``row_blocks x col_tiles`` per GEMM; the kernel decodes items with
        :func:`tile_bounds`.
    gemms : Gemms
        The GEMMs as issued, for the plan (tile shapes rounded up).
    """
    split = split_work(count, m, n, threads, min_rows=min_rows, min_cols=min_cols, prefer=prefer)
    return split, Gemms(split.items, ceil_div(m, split.row_blocks), ceil_div(n, split.col_tiles), k)


def patch_matrix_plan(g, threads, *, element_cost, runs, pixel_rows):
    """The plan of the patch-matrix families (im2col, im2row).

    Per image: one patch matrix of ``C·kh·kw x Ho·Wo`` elements (the scratch),
    then per group a GEMM of ``M/g x Ho·Wo x C/g·kh·kw`` cut into tiles (issued
    with pixels as rows when ``pixel_rows``).  Two parallel regions per image.

    Parameters
    ----------
    element_cost : float
        Copies each patch element costs its builder (1 for runs of copies;
        more for a bounds-checked gather).
    runs : int
        Copy runs the builder issues per image, each priced at
        ``PATCH_RUN_COST`` copies besides its elements.
    """
    patches = g.in_channels * g.kernel_taps * g.out_height * g.out_width
    split, gemms = split_gemms(g.groups, g.out_channels_per_group, g.out_height * g.out_width,
                               g.reduction_size, threads, min_rows=GEMM_MIN_ROWS,
                               min_cols=PATCH_GEMM_MIN_COLS)
    if pixel_rows:
        gemms = gemms._replace(m=gemms.n, n=gemms.m)
    return KernelPlan(tiling=(split.row_blocks, split.col_tiles), scratch_elements=patches,
                      gemms=(gemms._replace(count=g.batch * gemms.count),),
                      moved_elements=int(g.batch * (element_cost * patches + runs * PATCH_RUN_COST)),
                      parallel_items=split.items, launches=2 * g.batch)


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
        gemm(False, False, m1 - m0, n1 - n0, k, F32_ONE,
             a, a_off + i * a_step + m0 * lda, lda,
             b, b_off + i * b_step + n0, ldb,
             F32_ZERO, c, c_at, ldc)
        bias_rows(c, c_at, m1 - m0, n1 - n0, ldc, bias, i * bias_step + m0, add=True)


@njit(parallel=True, cache=True)
def pack_channels_last(w, packed, geometry):
    """Weights (M, C/g, kh, kw) as (M, kh, kw, C/g): each output channel's
    reduction reordered from (c, i, j) to (i, j, c), the order of im2row's patch
    columns and of MEC's lowered rows.  Scattered writes stay in one row."""
    d = KernelGeometry(*geometry)
    cg_count = d.channels_per_group
    taps = d.kernel_taps
    kg = taps * cg_count
    for m in prange(d.out_channels):
        for c in range(cg_count):
            for t in range(taps):
                packed[m * kg + t * cg_count + c] = w[(m * cg_count + c) * taps + t]


def pack_tap_major(weight, g, dest):
    """Weights (M, C/g, kh, kw) as (groups, kh*kw, M/g, C/g), the per-tap GEMM
    operands of the kn2row family: each group's (M/g*C/g) x taps matrix transposed."""
    transpose_blocks(weight, 0, dest, 0, g.groups, g.out_channels_per_group * g.channels_per_group,
                     g.kernel_taps)


def all_weights(g) -> int:
    """Elements of the whole weight tensor: the size of a full repacking."""
    return g.out_channels * g.reduction_size


#: What the kn2row family supports, in words.
KN2ROW_CLAIMS = "stride 1; any kernel, padding, dilation and groups"


def kn2row_family_unsupported(g):
    """The kn2row family shifts whole planes, which needs stride 1 (as in the paper)."""
    if g.stride != (1, 1):
        return f"stride {g.stride} (the kn2row family needs stride 1)"
    return None
