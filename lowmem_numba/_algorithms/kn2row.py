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
from .._geometry import blas_limit_reason
from .._layout import transpose_blocks
from .._tuning import TRANSPOSE_COST
from .._plan import KernelPlan
from .._tuning import (GEMM_MIN_ROWS, KN2ROW_MIN_COLS, KN2ROW_SHIFT_TILES_PER_THREAD,
                       KN2ROW_SHORT_RUN)
from .._registry import Algorithm, register
from ._common import (
    NO_ARRAY,
    KernelGeometry,
    all_weights,
    batched_gemm,
    bias_cols,
    bias_rows,
    ceil_div,
    kernel_geometry,
    split_gemms,
    KN2ROW_CLAIMS,
    kn2row_family_unsupported,
    pack_tap_major,
    valid_range,
)


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
    H, W, KW = d.height, d.width, d.kernel_w
    HO, WO = d.out_height, d.out_width
    mg_count = d.out_channels_per_group
    hw = H * W
    for m in range(m0, m1):
        plane = out_img + m * HO * WO
        if init:
            bias_rows(out, plane + y0 * WO, 1, (y1 - y0) * WO, WO, bias, m, add=False)
        q0 = (m // mg_count) * nt * mg_count + m % mg_count
        for t in range(t0, t0 + nt):
            dy = (t // KW) * d.dilation_h - d.pad_top
            dx = (t % KW) * d.dilation_w - d.pad_left
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
    H, W, M, KW = d.height, d.width, d.out_channels, d.kernel_w
    WO = d.out_width
    mg_count = d.out_channels_per_group
    ldp = nt * M
    # With one tap per GEMM (q == m) or one group, a pixel's channel block is
    # one contiguous run; otherwise [m0, m1) is whole groups (see _shift_add)
    # whose runs of M/g are nt*M/g apart, and short runs are added across
    # groups with a stride instead (depthwise: one long strided loop, not
    # M length-1 runs).
    one_run = nt == 1 or d.groups == 1
    g0 = m0 // mg_count
    groups = (m1 - m0) // mg_count
    for yo in range(y0, y1):
        if init:
            bias_cols(out, out_img + yo * WO * M + m0, WO, m1 - m0, M, bias, m0, add=False)
        for t in range(t0, t0 + nt):
            ys = yo + (t // KW) * d.dilation_h - d.pad_top
            if ys < 0 or ys >= H:
                continue
            dx = (t % KW) * d.dilation_w - d.pad_left
            lo, hi = valid_range(W, WO, 1, dx)
            for xo in range(lo, hi):
                pix = out_img + (yo * WO + xo) * M
                src = (ys * W + xo + dx) * ldp + (t - t0) * mg_count
                if one_run:
                    _add_run(out, pix + m0, partial, src + m0, m1 - m0)
                elif mg_count >= KN2ROW_SHORT_RUN:
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
    M, G, HO = d.out_channels, d.groups, d.out_height
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
    KW = d.kernel_w
    ylo, yhi = valid_range(d.height, d.out_height, 1, (t // KW) * d.dilation_h - d.pad_top)
    xlo, xhi = valid_range(d.width, d.out_width, 1, (t % KW) * d.dilation_w - d.pad_left)
    return yhi > ylo and xhi > xlo


@njit(cache=True)
def _kn2row_batch(x, packed, bias, out, partial, empty, geometry, one_gemm, channels_last,
                  m_blocks, n_tiles, s_blocks, s_bands):
    d = KernelGeometry(*geometry)
    C, M, G = d.in_channels, d.out_channels, d.groups
    cg_count = d.channels_per_group
    mg_count = d.out_channels_per_group
    taps = d.kernel_taps
    hw = d.height * d.width
    nt = taps if one_gemm else 1
    for n in range(d.batch):
        x_img = n * C * hw
        out_img = n * M * d.out_height * d.out_width
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


def _plan_with(one_gemm, channels_last):
    def plan(g, threads):
        """Per image: the partial-plane GEMMs (one for all taps, or one per
        tap), each cut into tiles (the partial GEMMs have a short k = C/g, so
        columns are cut only while they stay wide), then shift-adds tiled over
        channel blocks x row bands."""
        nt = _taps_per_gemm(g, one_gemm)
        hw = g.height * g.width
        q = nt * g.out_channels_per_group
        rows, cols = (hw, q) if channels_last else (q, hw)
        split, gemms = split_gemms(g.groups, rows, cols, g.channels_per_group, threads,
                                   min_rows=GEMM_MIN_ROWS, min_cols=KN2ROW_MIN_COLS)
        want = 1 if threads == 1 else KN2ROW_SHIFT_TILES_PER_THREAD * threads
        if channels_last:
            # Whole pixels' channel runs are the contiguous unit: bands first.
            bands = min(g.out_height, want)
            s_blocks = min(g.out_channels, ceil_div(want, bands))
        else:
            s_blocks = min(g.out_channels, want)
            bands = min(g.out_height, ceil_div(want, s_blocks))
        gemms_per_image = g.kernel_taps // nt
        return KernelPlan(
            tiling=(split.row_blocks, split.col_tiles, s_blocks, bands),
            scratch_elements=nt * g.out_channels * hw,
            gemms=(gemms._replace(count=g.batch * gemms_per_image * gemms.count),),
            # Each tap's partial plane is written by its GEMM and read by the
            # shift-add, which reads and writes the output.
            moved_elements=g.batch * 2 * g.kernel_taps * g.out_channels * hw,
            parallel_items=split.items, launches=2 * g.batch * gemms_per_image)
    return plan


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

    def compute(x, packed, bias, out, scratch, g, kernel):
        _kn2row_batch(x, packed, bias, out, scratch, NO_ARRAY, kernel_geometry(g), one_gemm, channels_last,
                      *kernel.tiling)

    layout = "NHWC" if channels_last else "NCHW"
    register(Algorithm(
        name=name,
        family="kn2row",
        summary=summary,
        workspace_formula=("kh·kw·M·H·W" if one_gemm else "M·H·W") + " + M·C/g·kh·kw (packed weights)",
        unsupported=_unsupported_with(one_gemm, channels_last),
        packed_weight_elements=all_weights,
        pack_weights=pack,
        pack_cost=TRANSPOSE_COST,  # transpose_blocks (results/pack_speed.md)
        plan_kernel=_plan_with(one_gemm, channels_last),
        compute=compute,
        claims=KN2ROW_CLAIMS,
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
