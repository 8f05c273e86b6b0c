"""kn2row, kn2col and their accumulating single-buffer forms kn2row-as and
kn2col-as: a KxK convolution as kh*kw 1x1 convolutions (GEMMs) whose partial
output planes are shift-added into the output (Vasudevan, Anderson, Gregg,
ASAP 2017, arXiv 1704.04428; Anderson et al. 2017, arXiv 1709.03395).

Stride 1 only (as in the papers).  Tap ``t = (i, j)`` has the offset
``dy = i*dh - pad_top``, ``dx = j*dw - pad_left``; its partial plane ``P_t`` is
the 1x1 convolution of the whole H x W input with that tap's weights, and

    out[m, yo, xo] = bias[m] + sum_t P_t[m, yo + dy, xo + dx]

over the taps whose source pixel lies inside the H x W image (that is the zero
padding: out-of-image contributions are simply not added).  Output sizes other
than H x W ("valid", asymmetric padding, dilation) only change which pixels
are in bounds.

Per image and group, with T = kh*kw taps:

* ``kn2row`` packs the weights tap-major as a (T*M/g) x (C/g) matrix and makes
  all partial planes with ONE GEMM by the input plane (C/g x H*W).
* ``kn2col`` is the transposed ("column") arrangement: HWC input, ONE GEMM
  (H*W x C/g) @ (C/g x T*M/g) gives the partial results as columns, shift-added
  into an HWC output.
* ``kn2row-as`` / ``kn2col-as`` run T separate GEMMs, one per tap, into ONE
  reused M x H*W buffer and shift-add after each.

The four differ only in two parameters of shared kernels:

===========  ===================  ==============  =============================
variant      layouts (in & out)   taps per GEMM   workspace (beyond packed W)
===========  ===================  ==============  =============================
kn2row       NCHW                 T               T*M*H*W
kn2col       NHWC                 T               T*M*H*W
kn2row-as    NCHW                 1               M*H*W
kn2col-as    NHWC                 1               M*H*W
===========  ===================  ==============  =============================

The partial buffer holds ``nt`` (taps per GEMM) taps of every group of one
image.  Its column index ``q = (g*nt + t')*M/g + m'`` (group g, tap t' within
the GEMM, channel m' within the group) is a row of an (nt*M) x H*W matrix in
the row form and a column of an H*W x (nt*M) matrix in the column form, so
each group's GEMM writes one contiguous block of q, and both forms share the
GEMM driver and the shift-add kernel.  The shift-add is tiled over output
channel blocks x output row bands; each tile owns its output elements, so
every element is written once per tap by exactly one thread.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._compile import njit  # numba.njit whose cache=True never fails (see _compile)
from ..geometry import blas_limit_reason
from ..layout import transpose_blocks
from ..registry import Algorithm, register
from ._common import (
    all_weights,
    batched_gemm,
    ceil_div,
    dims,
    kn2row_family_unsupported,
    pack_tap_major,
    valid_range,
)

_F32_ZERO = np.float32(0.0)
_EMPTY = np.empty(0, dtype=np.float32)

#: A GEMM's columns are cut across threads only while each tile keeps this
#: many; below it, cutting rows is faster (measured on 6400x729x96 and
#: 729x256x96: 20-30 % more GFLOP/s at 2 threads than column tiles).
_WIDE_COLUMNS = 1024


#: Runs of channels shorter than this are added across groups with a stride.
_SHORT_RUN = 8

#: Shift-add tiles per thread: a few, so unequal tiles (border rows skip taps)
#: still balance under a static schedule.
_TILES_PER_THREAD = 4


def _pack(weight, g, dest, columns):
    """Row form: tap-major (groups, T, M/g, C/g).  Column form (groups, C/g, T, M/g):
    each group's M/g x (C/g*T) matrix transposed."""
    if columns:
        transpose_blocks(weight, 0, dest, 0, g.groups, g.out_channels_per_group,
                         g.channels_per_group * g.kernel_taps)
    else:
        pack_tap_major(weight, g, dest)


@njit(cache=True, nogil=True)
def _add_run(dst, dst_at, src, src_at, count):
    # Unsigned indices let LLVM drop Numba's negative-index wraparound and
    # vectorise (about 3x over signed flat indexing); array views would do the
    # same but cost two atomic reference counts per run, which dominates the
    # length-1 runs of depthwise layers.
    d0 = np.uint64(dst_at)
    s0 = np.uint64(src_at)
    for k in range(np.uint64(count)):
        dst[d0 + k] += src[s0 + k]


@njit(cache=True, nogil=True)
def _shift_add_planes(partial, out, out_img, bias, d, t0, nt, init, m0, m1, y0, y1):
    # CHW: partial channel q is the plane partial[q*H*W:], output channel m the
    # plane out[out_img + m*Ho*Wo:].  One channel's output band stays in L1
    # while each tap's partial plane streams through once.
    N, C, H, W, M, KH, KW, G, SH, SW, DH, DW, PT, PB, PL, PR, HO, WO = d
    mg_count = M // G
    hw = H * W
    for m in range(m0, m1):
        plane = out_img + m * HO * WO
        if init:
            b = bias[m] if bias.size else _F32_ZERO
            band = out[plane + y0 * WO:plane + y1 * WO]
            for k in range(band.size):
                band[k] = b
        q0 = (m // mg_count) * nt * mg_count + m % mg_count
        for t in range(t0, t0 + nt):
            dy = (t // KW) * DH - PT
            dx = (t % KW) * DW - PL
            r0, r1 = valid_range(H, HO, 1, dy)
            lo, hi = valid_range(W, WO, 1, dx)
            if hi <= lo:
                continue
            src = (q0 + (t - t0) * mg_count) * hw + dy * W + dx
            for yo in range(max(y0, r0), min(y1, r1)):
                _add_run(out, plane + yo * WO + lo, partial, src + yo * W + lo, hi - lo)


@njit(cache=True, nogil=True)
def _add_strided(dst, dst_at, dst_step, src, src_at, src_step, count):
    d0 = np.uint64(dst_at)
    s0 = np.uint64(src_at)
    ds = np.uint64(dst_step)
    ss = np.uint64(src_step)
    for k in range(np.uint64(count)):
        dst[d0 + k * ds] += src[s0 + k * ss]


@njit(cache=True, nogil=True)
def _shift_add_columns(partial, out, out_img, bias, d, t0, nt, init, m0, m1, y0, y1):
    # HWC: pixel p's partial results are the row partial[p*nt*M:], its output
    # channels out[out_img + p*M:].  Partial column q = (g*nt + t')*M/g + m'.
    N, C, H, W, M, KH, KW, G, SH, SW, DH, DW, PT, PB, PL, PR, HO, WO = d
    mg_count = M // G
    ldp = nt * M
    # With one tap per GEMM (q == m) or one group, a pixel's channel block is
    # one contiguous run; otherwise [m0, m1) is whole groups (see _shift_add)
    # whose runs of M/g are nt*M/g apart, and short runs are added across
    # groups with a stride instead (depthwise: one long strided loop, not
    # M length-1 runs).
    one_run = nt == 1 or G == 1
    g0 = m0 // mg_count
    groups = (m1 - m0) // mg_count
    for yo in range(y0, y1):
        if init:
            for xo in range(WO):
                pix = out_img + (yo * WO + xo) * M
                for m in range(m0, m1):
                    out[pix + m] = bias[m] if bias.size else _F32_ZERO
        for t in range(t0, t0 + nt):
            ys = yo + (t // KW) * DH - PT
            if ys < 0 or ys >= H:
                continue
            dx = (t % KW) * DW - PL
            lo, hi = valid_range(W, WO, 1, dx)
            for xo in range(lo, hi):
                pix = out_img + (yo * WO + xo) * M
                src = (ys * W + xo + dx) * ldp + (t - t0) * mg_count
                if one_run:
                    _add_run(out, pix + m0, partial, src + m0, m1 - m0)
                elif mg_count >= _SHORT_RUN:
                    for g in range(g0, g0 + groups):
                        _add_run(out, pix + g * mg_count, partial, src + g * nt * mg_count, mg_count)
                else:
                    for mg in range(mg_count):
                        _add_strided(out, pix + g0 * mg_count + mg, mg_count,
                                     partial, src + g0 * nt * mg_count + mg, nt * mg_count, groups)


@njit(parallel=True, cache=True)
def _shift_add(partial, out, out_img, bias, d, t0, nt, init, channels_last, m_blocks, bands):
    """Add taps [t0, t0 + nt) of ``partial`` into one image of ``out``.

    With ``init`` the output is first set to the bias (zero without one).  Tiles
    are (channel block, output row band) pairs and own their output elements.
    """
    M = d[4]
    G = d[7]
    HO = d[16]
    # Blocks of the column form hold whole groups when a group's channels are
    # not one run in the partial buffer (see _shift_add_columns).
    unit = M // G if channels_last and nt > 1 and G > 1 else 1
    units = M // unit
    for tile in prange(m_blocks * bands):
        mb = tile // bands
        band = tile % bands
        m0 = mb * units // m_blocks * unit
        m1 = (mb + 1) * units // m_blocks * unit
        y0 = band * HO // bands
        y1 = (band + 1) * HO // bands
        if channels_last:
            _shift_add_columns(partial, out, out_img, bias, d, t0, nt, init, m0, m1, y0, y1)
        else:
            _shift_add_planes(partial, out, out_img, bias, d, t0, nt, init, m0, m1, y0, y1)


@njit(cache=True, nogil=True)
def _tap_contributes(d, t):
    N, C, H, W, M, KH, KW, G, SH, SW, DH, DW, PT, PB, PL, PR, HO, WO = d
    ylo, yhi = valid_range(H, HO, 1, (t // KW) * DH - PT)
    xlo, xhi = valid_range(W, WO, 1, (t % KW) * DW - PL)
    return yhi > ylo and xhi > xlo


@njit(cache=True)
def _kn2row_batch(x, packed, bias, out, partial, empty, d, one_gemm, channels_last,
                  m_blocks, n_tiles, s_blocks, s_bands):
    N, C, H, W, M, KH, KW, G, SH, SW, DH, DW, PT, PB, PL, PR, HO, WO = d
    cg_count = C // G
    mg_count = M // G
    taps = KH * KW
    hw = H * W
    nt = taps if one_gemm else 1
    for n in range(N):
        x_img = n * C * hw
        out_img = n * M * HO * WO
        first = True
        for t0 in range(0, taps, nt):
            # A tap with no in-bounds pixel needs no GEMM (only the per-tap
            # form can skip one); the first shift-add still sets the bias.
            work = one_gemm or _tap_contributes(d, t0)
            if work:
                if channels_last:
                    # (H*W x C/g, ld C) @ (C/g x nt*M/g, ld T*M/g) -> columns
                    # [g*nt*M/g, (g+1)*nt*M/g) of the H*W x nt*M buffer.
                    batched_gemm(G, hw, nt * mg_count, cg_count,
                                 x, x_img, cg_count, C,
                                 packed, t0 * mg_count, cg_count * taps * mg_count, taps * mg_count,
                                 partial, 0, nt * mg_count, nt * M,
                                 empty, 0, m_blocks, n_tiles)
                else:
                    # (nt*M/g x C/g) @ (C/g x H*W) -> rows of the nt*M x H*W buffer.
                    batched_gemm(G, nt * mg_count, hw, cg_count,
                                 packed, t0 * mg_count * cg_count, taps * mg_count * cg_count, cg_count,
                                 x, x_img, cg_count * hw, hw,
                                 partial, 0, nt * mg_count * hw, hw,
                                 empty, 0, m_blocks, n_tiles)
            if work or first:
                _shift_add(partial, out, out_img, bias, d, t0, nt, first, channels_last,
                           s_blocks, s_bands)
                first = False


def _taps_per_gemm(g, one_gemm):
    return g.kernel_taps if one_gemm else 1


def _scratch_for(one_gemm):
    def scratch(g, threads):
        return _taps_per_gemm(g, one_gemm) * g.out_channels * g.height * g.width
    return scratch


def _gemm_split(count, m, n, threads):
    """(m_blocks, n_tiles) cutting ``count`` m x n GEMM outputs into parallel tiles.

    Like ``_common.gemm_split`` but prefers rows unless columns stay wide: the
    partial-plane GEMMs have a short k (C/g) and are often short in one of m, n.
    """
    if count >= threads or count < 1:
        return 1, 1
    want = ceil_div(threads, count)
    n_tiles = max(1, min(want, n // _WIDE_COLUMNS))
    m_blocks = max(1, min(ceil_div(want, n_tiles), m // 16))
    n_tiles = max(n_tiles, min(ceil_div(want, m_blocks), max(1, n // 128)))
    return m_blocks, n_tiles


def _plan(g, threads, one_gemm, channels_last):
    """(m_blocks, n_tiles) of the GEMMs and (channel blocks, row bands) of the shift-add."""
    nt = _taps_per_gemm(g, one_gemm)
    hw = g.height * g.width
    q = nt * g.out_channels_per_group
    if channels_last:
        m_blocks, n_tiles = _gemm_split(g.groups, hw, q, threads)
    else:
        m_blocks, n_tiles = _gemm_split(g.groups, q, hw, threads)
    want = 1 if threads == 1 else _TILES_PER_THREAD * threads
    if channels_last:
        # Whole pixels' channel runs are the contiguous unit: bands first.
        bands = min(g.out_height, want)
        s_blocks = min(g.out_channels, ceil_div(want, bands))
    else:
        s_blocks = min(g.out_channels, want)
        bands = min(g.out_height, ceil_div(want, s_blocks))
    return m_blocks, n_tiles, s_blocks, bands


def _blas_sizes(g, one_gemm, channels_last):
    """Largest m, n, k and leading dimensions the variant passes to gemm (per image).

    With nt taps per GEMM (kh*kw or 1) and T = kh*kw: the row form has
    m = nt*M/g, n = ldb = ldc = H*W, k = lda = C/g; the column form has
    m = H*W, n = nt*M/g, k = C/g, lda = C, ldb = T*M/g (the packed weights hold
    every tap) and ldc = nt*M.
    """
    nt = _taps_per_gemm(g, one_gemm)
    hw = g.height * g.width
    cg, mg = g.channels_per_group, g.out_channels_per_group
    if channels_last:
        return {"m = H*W": hw, f"n = {'kh*kw*' if one_gemm else ''}M/g": nt * mg, "k = C/g": cg,
                "lda = C": g.in_channels, "ldb = kh*kw*M/g": g.kernel_taps * mg,
                f"ldc = {'kh*kw*' if one_gemm else ''}M": nt * g.out_channels}
    return {f"m = {'kh*kw*' if one_gemm else ''}M/g": nt * mg, "n = ldb = ldc = H*W": hw,
            "k = lda = C/g": cg}


def _unsupported_with(one_gemm, channels_last):
    def unsupported(g):
        return kn2row_family_unsupported(g) or blas_limit_reason(_blas_sizes(g, one_gemm, channels_last))
    return unsupported


def _register(name, one_gemm, channels_last, summary):
    def pack(weight, g, dest):
        _pack(weight, g, dest, channels_last)

    def compute(x, packed, bias, out, scratch, g, threads):
        _kn2row_batch(x, packed, bias, out, scratch, _EMPTY, dims(g), one_gemm, channels_last,
                      *_plan(g, threads, one_gemm, channels_last))

    layout = "NHWC" if channels_last else "NCHW"
    register(Algorithm(
        name=name,
        family="kn2row",
        summary=summary,
        workspace_formula=("kh·kw·M·H·W" if one_gemm else "M·H·W") + " + M·C/g·kh·kw (packed weights)",
        unsupported=_unsupported_with(one_gemm, channels_last),
        packed_weight_elements=all_weights,
        pack_weights=pack,
        scratch_elements=_scratch_for(one_gemm),
        compute=compute,
        input_layout=layout,
        output_layout=layout,
    ))


for _name, _one_gemm, _channels_last, _summary in (
    ("kn2row", True, False,
     "All kh·kw tap planes from one (kh·kw·M x C) @ (C x H·W) GEMM, then shift-added (CHW)."),
    ("kn2col", True, True,
     "All kh·kw tap columns from one (H·W x C) @ (C x kh·kw·M) GEMM, then shift-added (HWC)."),
    ("kn2row-as", False, False,
     "One (M x C) @ (C x H·W) GEMM per tap into a reused M·H·W buffer, shift-added after each (CHW)."),
    ("kn2col-as", False, True,
     "One (H·W x C) @ (C x M) GEMM per tap into a reused H·W·M buffer, shift-added after each (HWC)."),
):
    _register(_name, _one_gemm, _channels_last, _summary)
