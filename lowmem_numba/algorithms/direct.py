"""direct-sum2d: the plain loop nest, no GEMM, no workspace (the baseline)."""

from __future__ import annotations

from numba import prange

from .._compile import njit  # numba.njit whose cache=True never fails (see _compile)
from ..registry import Algorithm, register
from ._common import dims, fill_rows, valid_range


@njit(parallel=True, cache=True)
def _direct_sum2d(x, w, bias, out, d):
    N, C, H, W, M, KH, KW, G, SH, SW, DH, DW, PT, PB, PL, PR, HO, WO = d
    cg_count = C // G
    mg_count = M // G
    # One output row per item: it stays in L1 while all C/g * kh * kw taps
    # accumulate into it.
    for item in prange(N * M * HO):
        n = item // (M * HO)
        m = (item // HO) % M
        yo = item % HO
        g = m // mg_count
        out_row = (n * M + m) * HO * WO + yo * WO
        fill_rows(out, out_row, 1, WO, WO, bias, m)
        for cg in range(cg_count):
            x_plane = (n * C + g * cg_count + cg) * H * W
            for i in range(KH):
                iy = yo * SH + i * DH - PT
                if iy < 0 or iy >= H:
                    continue
                for j in range(KW):
                    dx = j * DW - PL
                    lo, hi = valid_range(W, WO, SW, dx)
                    wv = w[((m * cg_count + cg) * KH + i) * KW + j]
                    x_row = x_plane + iy * W + dx
                    for xo in range(lo, hi):
                        out[out_row + xo] += wv * x[x_row + xo * SW]


def _compute(x, weights, bias, out, scratch, geometry, threads):
    _direct_sum2d(x, weights, bias, out, dims(geometry))


register(Algorithm(
    name="direct-sum2d",
    family="direct",
    summary="Plain loop nest over output rows; no GEMM (baseline).",
    workspace_formula="0",
    unsupported=lambda g: None,
    packed_weight_elements=lambda g: 0,
    pack_weights=None,
    scratch_elements=lambda g, threads: 0,
    compute=_compute,
))
