"""conv-1x1-gemm: a 1x1 convolution is a plain matrix product, with no workspace.

With kh = kw = 1, stride 1 and no padding, the CHW plane of an image is
already the ``(C/g) x (H*W)`` GEMM operand, so each image and group is ONE GEMM
(the ``ab-ki`` form: kernel is the A operand, output is CHW)::

    out[n, g*M/g : (g+1)*M/g, H*W] = W[g*M/g : (g+1)*M/g, C/g] @ x[n, g*C/g : (g+1)*C/g, H*W]

The weights ``(M, C/g, 1, 1)`` are read as given (row-major ``M x C/g``) and
dilation has no effect on a single tap.

Parallelism: the ``N*g`` GEMMs are cut into equal tiles (columns of H*W
first, then blocks of output channels) so that the tiles spread evenly over
the threads (:func:`._common.split_plan`); each tile is one single-threaded sgemm.
Many small images or groups give one tile per GEMM; one big plane gives
column tiles.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._compile import njit  # numba.njit whose cache=True never fails (see _compile)
from ..blas import gemm
from ..geometry import blas_limit_reason
from ..registry import Algorithm, register
from ._common import add_bias_rows, dims, split_plan, tile_bounds

_F32_ONE = np.float32(1.0)
_F32_ZERO = np.float32(0.0)

@njit(parallel=True, cache=True)
def _conv1x1(x, w, bias, out, d, m_blocks, n_tiles):
    N, C, H, W, M, KH, KW, G, SH, SW, DH, DW, PT, PB, PL, PR, HO, WO = d
    hw = H * W
    cg = C // G
    mg = M // G
    # Items run image-major, then group, so one thread's contiguous share of
    # items reads neighbouring planes.
    for item in prange(N * G * m_blocks * n_tiles):
        ng, m0, m1, p0, p1 = tile_bounds(item, mg, hw, m_blocks, n_tiles)
        n = ng // G
        g = ng % G
        c_at = (n * M + g * mg + m0) * hw + p0
        gemm(False, False, m1 - m0, p1 - p0, cg, _F32_ONE,
             w, (g * mg + m0) * cg, cg,
             x, (n * C + g * cg) * hw + p0, hw,
             _F32_ZERO, out, c_at, hw)
        if bias.size:
            add_bias_rows(out, c_at, m1 - m0, p1 - p0, hw, bias, g * mg + m0)


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


def _compute(x, weights, bias, out, scratch, g, threads):
    m_blocks, n_tiles = split_plan(g.batch * g.groups, g.out_channels_per_group,
                                   g.height * g.width, threads)
    _conv1x1(x, weights, bias, out, dims(g), m_blocks, n_tiles)


register(Algorithm(
    name="conv-1x1-gemm",
    family="conv-1x1-gemm",
    summary="1x1 kernel, stride 1, no padding: the CHW input plane is the GEMM operand; "
            "one GEMM per image and group, no workspace.",
    workspace_formula="0",
    unsupported=_unsupported,
    packed_weight_elements=lambda g: 0,
    pack_weights=None,
    scratch_elements=lambda g, threads: 0,
    compute=_compute,
))
