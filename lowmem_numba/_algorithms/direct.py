"""direct-sum2d: the plain loop nest, no GEMM, no workspace (the baseline)."""

from __future__ import annotations

from numba import prange

from .._compile import njit  # numba.njit whose cache=True never fails (see _compile)
from .._plan import KernelPlan
from .._registry import Algorithm, register
from ._common import KernelGeometry, bias_rows, kernel_geometry, valid_range


@njit(parallel=True, cache=True)
def _direct_sum2d(x, w, bias, out, geometry):
    d = KernelGeometry(*geometry)
    C, H, W, M = d.in_channels, d.height, d.width, d.out_channels
    KH, KW, HO, WO = d.kernel_h, d.kernel_w, d.out_height, d.out_width
    SH, SW, DH, DW = d.stride_h, d.stride_w, d.dilation_h, d.dilation_w
    cg_count = d.channels_per_group
    mg_count = d.out_channels_per_group
    # One output row per item: it stays in L1 while all C/g * kh * kw taps
    # accumulate into it.
    for item in prange(d.batch * M * HO):
        n = item // (M * HO)
        m = (item // HO) % M
        yo = item % HO
        g = m // mg_count
        out_row = (n * M + m) * HO * WO + yo * WO
        bias_rows(out, out_row, 1, WO, WO, bias, m, add=False)
        for cg in range(cg_count):
            x_plane = (n * C + g * cg_count + cg) * H * W
            for i in range(KH):
                iy = yo * SH + i * DH - d.pad_top
                if iy < 0 or iy >= H:
                    continue
                for j in range(KW):
                    dx = j * DW - d.pad_left
                    lo, hi = valid_range(W, WO, SW, dx)
                    wv = w[((m * cg_count + cg) * KH + i) * KW + j]
                    x_row = x_plane + iy * W + dx
                    for xo in range(lo, hi):
                        out[out_row + xo] += wv * x[x_row + xo * SW]


def _plan(g, threads):
    # One output row per parallel item, all arithmetic in the loop nest.
    return KernelPlan(direct_flops=g.flops, parallel_items=g.batch * g.out_channels * g.out_height)


def _compute(x, weights, bias, out, scratch, g, kernel):
    _direct_sum2d(x, weights, bias, out, kernel_geometry(g))


register(Algorithm(
    name="direct-sum2d",
    family="direct",
    calls_blas=False,
    summary="Plain loop nest over output rows; no GEMM (baseline).",
    workspace_formula="0",
    unsupported=lambda g: None,
    packed_weight_elements=lambda g: 0,
    pack_weights=None,
    plan_kernel=_plan,
    compute=_compute,
))
