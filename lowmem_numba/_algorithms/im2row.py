"""im2row: build the (Ho*Wo) x (kh*kw*C) patch matrix of an image, one row per
output pixel, then one GEMM per group (Anderson et al. 2017, arXiv 1709.03395).

The input is HWC (``input_layout="NHWC"``), so a patch row is kh*kw runs of C/g
channels, each contiguous in the input (im2col's rows, by contrast, are strided
runs of one channel).

Patch matrix
------------
Row ``p = yo*Wo + xo`` holds the receptive field of output pixel (yo, xo).  Its
columns are ordered (g, i, j, c): group g's block of ``kg = kh*kw*C/g`` columns
starts at ``g*kg`` and is in (i, j, c) order, so with one group a row is simply
(i, j, c).  Element (p, g, i, j, c) is input pixel
``(yo*sh + i*dh - pad_top, xo*sw + j*dw - pad_left)``, channel ``g*C/g + c``, or
zero in the padding.  All groups are built into one matrix with row stride
``kh*kw*C``; group g's GEMM operand is the column block at ``g*kg``.

Builders (both write every element, so the buffer is reused without clearing):

* ``scan`` visits every tap and gathers its channels element by element, each
  element testing its input pixel against the image bounds (zero outside).
* ``copy-short`` computes once per output pixel which kernel rows and columns
  fall inside the image (:func:`valid_range`), zero-fills the others and copies
  the rest as unchecked runs of C/g channels; with one group and no horizontal
  dilation a kernel row's valid taps are a single run of (valid taps)*C.

With fewer channels per group than groups (depthwise), both loop over groups
innermost (stride kh*kw*C/g in the patch row) instead of over runs of 1-2
channels, whose loop overhead made depthwise builds ~7x slower.

GEMM forms
----------
Weights are repacked (``M*C/g*kh*kw`` elements) to match the patch columns
(``P_g`` is group g's (Ho*Wo) x kg column block of the patch matrix):

===========  ====================================  =============================  ========
form         per group g                           packed weights, per group      output
===========  ====================================  =============================  ========
``ab-ik``    out[Ho*Wo, M/g] = P_g @ Wr_g          Wr_g: (kh*kw*C/g) x (M/g)      NHWC
``abt-ki``   out[M/g, Ho*Wo] = Wr'_g @ P_g^T       Wr'_g: (M/g) x (kh*kw*C/g)     NCHW
===========  ====================================  =============================  ========

``ab-ik`` writes group g's M/g output channels as a column block of the HWC
output (ldc = M); ``abt-ki`` writes them as M/g contiguous planes.

Workspace and parallelism
-------------------------
Scratch is the full patch matrix of one image, ``kh*kw*C*Ho*Wo`` elements (the
paper's algorithm), reused for every image of the batch; plus the packed weights.
Each image is built in parallel over output pixels, then multiplied by parallel
single-threaded GEMMs over (group, output-channel block, pixel tile) items.

Building and multiplying row tiles of P per thread (tile kept in cache, per-
thread scratch) was measured on VGG-16 conv3_2 and AlexNet conv2 and was not
faster: each GEMM call repacks the whole weight operand, which only tiles of
~1000+ rows amortise, and such tiles (9 MB on conv3_2) do not stay in cache
anyway.  So the registered form is the full matrix.
"""

from __future__ import annotations

from numba import prange

from .._compile import njit  # numba.njit whose cache=True never fails (see _compile)
from .._blas import gemm
from .._geometry import blas_limit_reason
from .._tuning import TRANSPOSE_TILE
from .._registry import Algorithm, register
from ._common import (
    KernelGeometry,
    F32_ONE,
    F32_ZERO,
    all_weights,
    bias_cols,
    bias_rows,
    kernel_geometry,
    pack_channels_last,
    patch_matrix_plan,
    tile_bounds,
    valid_range,
)



@njit(parallel=True, cache=True)
def _pack(w, packed, geometry, channels_out):
    d = KernelGeometry(*geometry)
    # A row of w (one output channel) is (c, i, j); patch columns are (i, j, c).
    if not channels_out:
        pack_channels_last(w, packed, d)  # same rows, columns permuted
        return
    G = d.groups
    cg_count = d.channels_per_group
    mg_count = d.out_channels_per_group
    taps = d.kernel_taps
    kg = taps * cg_count
    # Also transposed per group: square blocks of (channel, w column) keep the
    # block's reads and writes in cache.
    m_tiles = (mg_count + TRANSPOSE_TILE - 1) // TRANSPOSE_TILE
    k_tiles = (kg + TRANSPOSE_TILE - 1) // TRANSPOSE_TILE
    for item in prange(G * m_tiles * k_tiles):
        g = item // (m_tiles * k_tiles)
        m0 = (item // k_tiles) % m_tiles * TRANSPOSE_TILE
        s0 = item % k_tiles * TRANSPOSE_TILE
        for s in range(s0, min(kg, s0 + TRANSPOSE_TILE)):
            c = s // taps
            dst = (g * kg + (s - c * taps) * cg_count + c) * mg_count
            for mg in range(m0, min(mg_count, m0 + TRANSPOSE_TILE)):
                packed[dst + mg] = w[(g * mg_count + mg) * kg + s]


@njit(cache=True, nogil=True)
def _zero_taps(p, dst, count, G, kg):
    """Zero ``count`` consecutive elements of each group's block, from ``dst``."""
    if count > 0:
        for g in range(G):
            at = dst + g * kg
            for q in range(count):
                p[at + q] = F32_ZERO


@njit(cache=True, nogil=True)
def _copy_taps(x, src, p, dst, taps, DW, G, cg_count, kg, checked, iy, ix, H, W):
    """Copy ``taps`` taps of one kernel row into a patch row: channel c of
    group g for tap t goes from ``x[src + t*DW*C + g*C/g + c]`` to
    ``p[dst + g*kg + t*C/g + c]``.

    With ``checked`` (the scan builder), every element tests its pixel
    (iy, ix + t*DW) against the image and stores zero outside it; otherwise
    the caller guarantees all taps are inside.
    """
    C = G * cg_count
    tap_stride = DW * C
    if not checked and G == 1 and DW == 1:
        # Adjacent taps are adjacent pixels: one run in input and patch row.
        for q in range(taps * C):
            p[dst + q] = x[src + q]
    elif cg_count >= G:
        for g in range(G):
            for t in range(taps):
                s = src + t * tap_stride + g * cg_count
                o = dst + g * kg + t * cg_count
                x_t = ix + t * DW
                for c in range(cg_count):
                    if not checked or (iy >= 0 and iy < H and x_t >= 0 and x_t < W):
                        p[o + c] = x[s + c]
                    else:
                        p[o + c] = F32_ZERO
    else:
        # Few channels per group (depthwise): make the long loop the one over
        # groups, or loop overhead dominates the copy of runs of 1-2 values.
        for t in range(taps):
            x_t = ix + t * DW
            for c in range(cg_count):
                s = src + t * tap_stride + c
                o = dst + t * cg_count + c
                for g in range(G):
                    if not checked or (iy >= 0 and iy < H and x_t >= 0 and x_t < W):
                        p[o + g * kg] = x[s + g * cg_count]
                    else:
                        p[o + g * kg] = F32_ZERO


@njit(cache=True, nogil=True)
def _build_row(x, x_img, p, row, yo, xo, d, scan):
    """Patch row of output pixel (yo, xo) at ``p[row:row + kh*kw*C]``."""
    C, H, W, G = d.in_channels, d.height, d.width, d.groups
    KH, KW, DH, DW = d.kernel_h, d.kernel_w, d.dilation_h, d.dilation_w
    cg_count = d.channels_per_group
    kg = d.kernel_taps * cg_count
    y_off = yo * d.stride_h - d.pad_top
    x_off = xo * d.stride_w - d.pad_left
    if scan:
        for i in range(KH):
            iy = y_off + i * DH
            _copy_taps(x, x_img + (iy * W + x_off) * C, p, row + i * KW * cg_count, KW, DW, G,
                       cg_count, kg, True, iy, x_off, H, W)
        return
    ilo, ihi = valid_range(H, KH, DH, y_off)
    jlo, jhi = valid_range(W, KW, DW, x_off)
    for i in range(KH):
        at = row + i * KW * cg_count
        if i < ilo or i >= ihi:
            _zero_taps(p, at, KW * cg_count, G, kg)
            continue
        _zero_taps(p, at, jlo * cg_count, G, kg)
        iy = y_off + i * DH
        _copy_taps(x, x_img + (iy * W + x_off + jlo * DW) * C, p, at + jlo * cg_count,
                   jhi - jlo, DW, G, cg_count, kg, False, iy, x_off + jlo * DW, H, W)
        _zero_taps(p, at + jhi * cg_count, (KW - jhi) * cg_count, G, kg)


@njit(parallel=True, cache=True)
def _build_patches(x, n, patches, d, scan):
    ldp = d.kernel_taps * d.in_channels
    x_img = n * d.height * d.width * d.in_channels
    WO = d.out_width
    for pix in prange(d.out_height * WO):
        _build_row(x, x_img, patches, pix * ldp, pix // WO, pix % WO, d, scan)


@njit(parallel=True, cache=True)
def _multiply(patches, w, bias, out, n, d, channels_out, m_blocks, n_tiles):
    # Items are (group, output-channel block, pixel tile); each is one GEMM.
    M = d.out_channels
    mg_count = d.out_channels_per_group
    kg = d.kernel_taps * d.channels_per_group
    ldp = d.kernel_taps * d.in_channels
    plane = d.out_height * d.out_width
    out_img = n * M * plane
    for item in prange(d.groups * m_blocks * n_tiles):
        g, m0, m1, p0, p1 = tile_bounds(item, mg_count, plane, m_blocks, n_tiles)
        channel0 = g * mg_count + m0
        if channels_out:
            at = out_img + p0 * M + channel0
            gemm(False, False, p1 - p0, m1 - m0, kg, F32_ONE, patches, p0 * ldp + g * kg, ldp,
                 w, g * kg * mg_count + m0, mg_count, F32_ZERO, out, at, M)
            bias_cols(out, at, p1 - p0, m1 - m0, M, bias, channel0, add=True)
        else:
            at = out_img + channel0 * plane + p0
            gemm(False, True, m1 - m0, p1 - p0, kg, F32_ONE, w, channel0 * kg, kg,
                 patches, p0 * ldp + g * kg, ldp, F32_ZERO, out, at, plane)
            bias_rows(out, at, m1 - m0, p1 - p0, plane, bias, channel0, add=True)


@njit(cache=True)
def _im2row_batch(x, w, bias, out, patches, geometry, scan, channels_out, m_blocks, n_tiles):
    d = KernelGeometry(*geometry)
    for n in range(d.batch):
        _build_patches(x, n, patches, d, scan)
        _multiply(patches, w, bias, out, n, d, channels_out, m_blocks, n_tiles)


def _plan_with(scan, channels_out):
    def plan(g, threads):
        return patch_matrix_plan(g, threads, element_cost=2 if scan else 1, runs=0, pixel_rows=channels_out)
    return plan


def _unsupported_with(channels_out):
    def unsupported(g):
        """ab-ik: m = Ho*Wo, n = ldb = M/g, k = kh*kw*C/g, lda = kh*kw*C, ldc = M.
        abt-ki: m = M/g, n = ldc = Ho*Wo, k = lda = kh*kw*C/g, ldb = kh*kw*C."""
        plane = g.out_height * g.out_width
        row = g.kernel_taps * g.in_channels
        if channels_out:
            sizes = {"m = Ho*Wo": plane, "n = ldb = M/g": g.out_channels_per_group,
                     "k = kh*kw*C/g": g.reduction_size, "lda = kh*kw*C": row,
                     "ldc = M": g.out_channels}
        else:
            sizes = {"m = M/g": g.out_channels_per_group, "n = ldc = Ho*Wo": plane,
                     "k = lda = kh*kw*C/g": g.reduction_size, "ldb = kh*kw*C": row}
        return blas_limit_reason(sizes)
    return unsupported


def _register(builder, scan, form, channels_out):
    def pack(weight, g, dest):
        _pack(weight, dest, kernel_geometry(g), channels_out)

    def compute(x, packed, bias, out, scratch, g, kernel):
        _im2row_batch(x, packed, bias, out, scratch, kernel_geometry(g), scan, channels_out,
                      *kernel.tiling)

    how = "element-wise bounds-checked gather" if scan else "runs of C/g channels"
    gemm_text = ("P @ W (HWC output)" if channels_out else "W @ P^T (CHW output)")
    register(Algorithm(
        name=f"im2row-{builder}-{form}",
        family="im2row",
        summary=f"Row-per-pixel patch matrix of an HWC image ({how}), then {gemm_text} per group.",
        workspace_formula="kh·kw·C·Ho·Wo + M·C/g·kh·kw (packed weights)",
        unsupported=_unsupported_with(channels_out),
        packed_weight_elements=all_weights,
        pack_weights=pack,
        plan_kernel=_plan_with(scan, channels_out),
        compute=compute,
        input_layout="NHWC",
        output_layout="NHWC" if channels_out else "NCHW",
    ))


for _form, _channels_out in (("ab-ik", True), ("abt-ki", False)):
    for _builder, _scan in (("scan", True), ("copy-short", False)):
        _register(_builder, _scan, _form, _channels_out)
