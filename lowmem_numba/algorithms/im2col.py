"""im2col: build the (C/g*kh*kw) x (Ho*Wo) patch matrix of an image, then one GEMM
per group, ``out[M/g, Ho*Wo] = W[M/g, C/g*kh*kw] @ patches`` (the ``ab-ki`` form:
kernel is the A operand, output is CHW).

Patch rows are indexed (c, i, j) for kernel tap (i, j) of channel c; row (c, i, j)
at output row yo reads input row ``yo*sh + i*dh - pad_top``.

Builders:

* ``copy-short`` copies a run of Wo pixels per (c, i, j, output row), writing the
  padding zeros explicitly (the buffer is reused, never cleared).
* ``copy-self`` additionally uses that rows whose kernel-row index differs by
  ``sh/dh`` hold the same data one output row apart: such rows are copied from
  the already built row, and only their last output row comes from the input.
"""

from __future__ import annotations

from numba import njit, prange

from ..registry import Algorithm, register
from ._common import batched_gemm, dims, gemm_split, valid_range

_F32_ZERO = 0.0


@njit(cache=True, nogil=True)
def _copy_patch_row(x, x_plane, patches, dst, iy, H, W, WO, SW, dx, lo, hi):
    if iy < 0 or iy >= H:
        for xo in range(WO):
            patches[dst + xo] = _F32_ZERO
        return
    for xo in range(lo):
        patches[dst + xo] = _F32_ZERO
    src = x_plane + iy * W + dx
    if SW == 1:
        for xo in range(lo, hi):
            patches[dst + xo] = x[src + xo]
    else:
        for xo in range(lo, hi):
            patches[dst + xo] = x[src + xo * SW]
    for xo in range(hi, WO):
        patches[dst + xo] = _F32_ZERO


@njit(parallel=True, cache=True)
def _build_patches(x, n, patches, d, copy_self):
    N, C, H, W, M, KH, KW, G, SH, SW, DH, DW, PT, PB, PL, PR, HO, WO = d
    plane = HO * WO
    # Row (c, i, j) at output row yo equals row (c, i - shift, j) at yo + 1.
    shift = SH // DH if copy_self and SH % DH == 0 else 0
    for cj in prange(C * KW):
        c = cj // KW
        j = cj % KW
        x_plane = (n * C + c) * H * W
        dx = j * DW - PL
        lo, hi = valid_range(W, WO, SW, dx)
        for i in range(KH):
            row = ((c * KH + i) * KW + j) * plane
            first_from_input = 0
            if shift > 0 and i >= shift:
                src = ((c * KH + i - shift) * KW + j) * plane + WO
                for q in range((HO - 1) * WO):
                    patches[row + q] = patches[src + q]
                first_from_input = HO - 1
            for yo in range(first_from_input, HO):
                _copy_patch_row(x, x_plane, patches, row + yo * WO, yo * SH + i * DH - PT,
                                H, W, WO, SW, dx, lo, hi)


def _scratch(g, threads):
    return g.in_channels * g.kernel_taps * g.out_height * g.out_width


@njit(cache=True)
def _im2col_batch(x, w, bias, out, patches, d, copy_self, m_blocks, n_tiles):
    N, C, H, W, M, KH, KW, G, SH, SW, DH, DW, PT, PB, PL, PR, HO, WO = d
    plane = HO * WO
    k = (C // G) * KH * KW
    mg = M // G
    for n in range(N):
        _build_patches(x, n, patches, d, copy_self)
        batched_gemm(G, mg, plane, k,
                     w, 0, mg * k, k,
                     patches, 0, k * plane, plane,
                     out, n * M * plane, mg * plane, plane,
                     bias, mg, m_blocks, n_tiles)


def _compute_with(copy_self):
    def compute(x, weights, bias, out, scratch, g, threads):
        m_blocks, n_tiles = gemm_split(g.groups, g.out_channels_per_group,
                                       g.out_height * g.out_width, threads)
        _im2col_batch(x, weights, bias, out, scratch, dims(g), copy_self, m_blocks, n_tiles)
    return compute


for _builder, _copy_self, _summary in (
    ("copy-short", False, "Patch matrix from short row copies, then one GEMM per group."),
    ("copy-self", True, "Patch matrix, deriving rows from already built rows, then one GEMM per group."),
):
    register(Algorithm(
        name=f"im2col-{_builder}-ab-ki",
        family="im2col",
        summary=_summary,
        workspace_formula="C·kh·kw·Ho·Wo",
        unsupported=lambda g: None,
        packed_weight_elements=lambda g: 0,
        pack_weights=None,
        scratch_elements=_scratch,
        compute=_compute_with(_copy_self),
    ))
