"""conv-1x1-gemm: a 1x1 convolution is a plain matrix product, with no workspace.

With kh = kw = 1, stride 1 and no padding, the CHW plane of an image is
already the ``(C/g) x (H*W)`` GEMM operand, so each image and group is ONE GEMM
(the ``ab-ki`` form: kernel is the A operand, output is CHW)::

    out[n, g*M/g : (g+1)*M/g, H*W] = W[g*M/g : (g+1)*M/g, C/g] @ x[n, g*C/g : (g+1)*C/g, H*W]

The weights ``(M, C/g, 1, 1)`` are read as given (row-major ``M x C/g``) and
dilation has no effect on a single tap.

Parallelism: the ``N*g`` GEMMs are cut into equal tiles (columns of H*W
first, then blocks of output channels) so that the tiles spread evenly over
the threads (:func:`._common.split_gemms`); each tile is one single-threaded sgemm.
Many small images or groups give one tile per GEMM; one big plane gives
column tiles.
"""

from __future__ import annotations

from numba import prange

from .._compile import njit  # numba.njit whose cache=True never fails (see _compile)
from .._blas import gemm
from .._geometry import blas_limit_reason
from .._registry import Algorithm, register
from .._plan import KernelPlan
from .._tuning import GEMM_MIN_COLS, GEMM_MIN_ROWS
from ._common import KernelGeometry, F32_ONE, F32_ZERO, bias_rows, kernel_geometry, split_gemms, tile_bounds


@njit(parallel=True, cache=True)
def _conv1x1(x, w, bias, out, geometry, m_blocks, n_tiles):
    d = KernelGeometry(*geometry)
    C, M, G = d.in_channels, d.out_channels, d.groups
    hw = d.height * d.width
    cg = d.channels_per_group
    mg = d.out_channels_per_group
    # Items run image-major, then group, so one thread's contiguous share of
    # items reads neighbouring planes.
    for item in prange(d.batch * G * m_blocks * n_tiles):
        ng, m0, m1, p0, p1 = tile_bounds(item, mg, hw, m_blocks, n_tiles)
        n = ng // G
        g = ng % G
        c_at = (n * M + g * mg + m0) * hw + p0
        gemm(False, False, m1 - m0, p1 - p0, cg, F32_ONE,
             w, (g * mg + m0) * cg, cg,
             x, (n * C + g * cg) * hw + p0, hw,
             F32_ZERO, out, c_at, hw)
        bias_rows(out, c_at, m1 - m0, p1 - p0, hw, bias, g * mg + m0, add=True)


def _unsupported(g):
    if (g.kernel_h, g.kernel_w) != (1, 1):
        return f"kernel {g.kernel_h}x{g.kernel_w} (conv-1x1-gemm needs a 1x1 kernel)"
    if g.stride != (1, 1):
        return f"stride {g.stride} (conv-1x1-gemm needs stride 1: the input plane is the GEMM operand)"
    if any(p for pair in g.padding for p in pair):
        return f"padding {g.padding} (conv-1x1-gemm needs zero padding)"
    # One GEMM per image and group: m = M/g, n = ldb = ldc = H*W, k = lda = C/g.
    return blas_limit_reason({"m = M/g": g.out_channels_per_group,
                              "n = ldb = ldc = H*W": g.height * g.width,
                              "k = lda = C/g": g.channels_per_group})


def _plan(g, threads):
    split, gemms = split_gemms(g.batch * g.groups, g.out_channels_per_group, g.height * g.width,
                               g.channels_per_group, threads, min_rows=GEMM_MIN_ROWS,
                               min_cols=GEMM_MIN_COLS)
    return KernelPlan(tiling=(split.row_blocks, split.col_tiles), gemms=(gemms,),
                      parallel_items=split.items)


def _compute(x, weights, bias, out, scratch, g, kernel):
    _conv1x1(x, weights, bias, out, kernel_geometry(g), *kernel.tiling)


register(Algorithm(
    name="conv-1x1-gemm",
    family="conv-1x1-gemm",
    summary="1x1 kernel, stride 1, no padding: the CHW input plane is the GEMM operand; "
            "one GEMM per image and group, no workspace.",
    workspace_formula="0",
    unsupported=_unsupported,
    packed_weight_elements=lambda g: 0,
    pack_weights=None,
    plan_kernel=_plan,
    compute=_compute,
    claims="1x1 kernel, stride 1, no padding; any groups",
))
