"""im2col: build the (C/g*kh*kw) x (Ho*Wo) patch matrix P of an image, then one
GEMM per group (Anderson et al. 2017, arXiv 1709.03395).

Patch rows are indexed (c, i, j) for kernel tap (i, j) of channel c; row (c, i, j)
at output pixel (yo, xo) is input pixel ``(yo*sh + i*dh - pad_top,
xo*sw + j*dw - pad_left)`` of channel c, or zero in the padding.  Group g's
GEMM operand is the block of C/g*kh*kw consecutive rows starting at channel
``g*C/g``.

The two parameters of the family are independent: one patch-building kernel
takes the builder, one GEMM driver takes the GEMM form, and the names are
registered from the table at the bottom of this module.

Builders (every one writes every element, so the buffer is reused without
clearing, and a NaN in the input never reaches a padding entry):

* ``scan`` gathers element by element, testing each element's input
  coordinates against the image bounds.  Any stride.
* ``copy-short`` copies a run of Wo (strided) pixels per (c, i, j, output row),
  writing the padding zeros around it explicitly.  Any stride.
* ``copy-long`` copies ONE long shifted run of the input plane per (c, i, j):
  element q = yo*Wo + xo of the patch row reads input element
  ``sw*q + (i*dh - pad_top)*W + (j*dw - pad_left)`` of the channel's plane.
  That is exact whenever ``sh*W == sw*Wo``: stride 1 with the output as wide
  as the input (the paper's case, any vertical padding), and also the strided
  shapes where it holds (e.g. stride (1, 2) with Wo = W/2), read as one
  strided run.  The run spans from the first to the last patch entry whose
  pixel is inside the image, so it never reads outside the plane.  Then it
  repairs: rows whose source row is outside the image, and between
  consecutive valid rows the ``(Wo - hi) + lo`` entries that wrapped across
  the row boundary (one contiguous run per boundary), are overwritten with
  zeros.  In every other geometry (``sh*W != sw*Wo``: any other stride, or an
  output narrower or wider than the input) no patch row is one evenly spaced
  run of the plane, and the rows are built per output row exactly as
  ``copy-short`` builds them, so copy-long claims every geometry but is only
  distinct from copy-short where ``sh*W == sw*Wo``.  (The authors' library
  runs it at stride 1 only.)
* ``copy-self`` builds like ``copy-short`` but uses that rows whose kernel-row
  index differs by ``sh/dh`` hold the same data one output row apart: such rows
  are copied from the already built row, and only their last output row comes
  from the input.  Any stride (the shortcut applies when ``dh`` divides ``sh``).

GEMM forms (weights are read as given, M x C/g*kh*kw row-major; nothing is
packed):

* ``ab-ki``: out[M/g, Ho*Wo] = W_g @ P_g, gemm(N, N); group g writes its M/g
  contiguous planes of the NCHW output.
* ``atbt-ik``: out^T[Ho*Wo, M/g] = P_g^T @ W_g^T, gemm(T, T); group g writes
  the column block at channel g*M/g of the HWC output (ldc = M).  These read
  NCHW input and write NHWC output (``output_layout="NHWC"``).

Workspace and parallelism
-------------------------
Scratch is one image's patch matrix, ``C*kh*kw*Ho*Wo`` elements, reused for
every image of the batch.  Each image is built in parallel over patch rows
(over (c, j) for copy-self, whose rows depend on earlier rows of the same
(c, j)), then multiplied by parallel single-threaded GEMMs over (group,
output-channel block, pixel tile) items.
"""

from __future__ import annotations

from numba import prange

from .._compile import NONNEG, njit  # numba.njit whose cache=True never fails (see _compile)
from .._blas import gemm
from .._geometry import blas_limit_reason
from .._registry import Algorithm, register
from .._tuning import SCAN_ELEMENT_COST
from ._common import (
    KernelGeometry,
    F32_ONE,
    F32_ZERO,
    bias_cols,
    bias_rows,
    kernel_geometry,
    patch_matrix_plan,
    tile_bounds,
    valid_range,
)

# Builders (the patch-building kernel's ``builder`` argument).
SCAN = 0
COPY_SHORT = 1
COPY_LONG = 2
COPY_SELF = 3

# GEMM forms (the driver's ``form`` argument).
AB_KI = 0     # out[M/g, Ho*Wo] = W_g @ P_g, CHW output
ATBT_IK = 1   # out[Ho*Wo, M/g] = P_g^T @ W_g^T, HWC output


# The copies below index through ``& NONNEG``: indexing ``patches[dst + q]``
# with a plain signed offset makes Numba wrap negative indices with a select
# per access, which keeps LLVM from vectorising.  With plain offsets the
# builders moved 0.5-1 G elements/s (AlexNet conv5's 584 K patch entries in
# 0.62-1.13 ms, one thread; copy-long now 0.17 ms); slices vectorise too but
# cost about 30 ns each, more than a 7-14 pixel row.


@njit(cache=True, nogil=True)
def _zero(patches, start, stop):
    for q in range(start, stop):
        patches[q & NONNEG] = F32_ZERO


@njit(cache=True, nogil=True)
def _copy_run(x, src, step, patches, dst, count):
    """``patches[dst + q] = x[src + q*step]`` for ``q < count``."""
    if step == 1:
        for q in range(count):
            patches[(dst + q) & NONNEG] = x[(src + q) & NONNEG]
    else:
        for q in range(count):
            patches[(dst + q) & NONNEG] = x[(src + q * step) & NONNEG]


@njit(cache=True, nogil=True)
def _copy_patch_row(x, x_plane, patches, dst, iy, H, W, WO, SW, dx, lo, hi):
    """One output row of a patch row: Wo pixels of input row ``iy`` from column
    ``dx`` in steps of ``SW``, zero outside [lo, hi) or when ``iy`` is outside."""
    if iy < 0 or iy >= H or lo >= hi:
        _zero(patches, dst, dst + WO)
        return
    _zero(patches, dst, dst + lo)
    _copy_run(x, x_plane + iy * W + dx + lo * SW, SW, patches, dst + lo, hi - lo)
    _zero(patches, dst + hi, dst + WO)


@njit(cache=True, nogil=True)
def _scan_patch_row(x, x_plane, patches, row, dy, dx, H, W, HO, WO, SH, SW):
    """A whole patch row, element by element, each checked against the image."""
    for yo in range(HO):
        iy = yo * SH + dy
        inside_y = iy >= 0 and iy < H
        dst = row + yo * WO
        for xo in range(WO):
            ix = xo * SW + dx
            if inside_y and ix >= 0 and ix < W:
                patches[dst + xo] = x[x_plane + iy * W + ix]
            else:
                patches[dst + xo] = F32_ZERO


@njit(cache=True, nogil=True)
def _long_patch_row(x, x_plane, patches, row, dy, dx, H, W, HO, WO, SH, SW, lo, hi):
    """A whole patch row as one run of the input plane, then repaired.

    Requires ``SH*W == SW*WO``, so that entry q reads ``base + SW*q``.
    """
    plane = HO * WO
    ylo, yhi = valid_range(H, HO, SH, dy)
    if ylo >= yhi or lo >= hi:
        _zero(patches, row, row + plane)
        return
    first = ylo * WO + lo          # first entry whose pixel is in the image
    last = (yhi - 1) * WO + hi     # one past the last such entry
    _zero(patches, row, row + first)
    _copy_run(x, x_plane + dy * W + dx + first * SW, SW, patches, row + first, last - first)
    _zero(patches, row + last, row + plane)
    # Between valid rows, the entries right of hi and left of lo read the
    # neighbouring input row: one contiguous run per row boundary.
    if lo > 0 or hi < WO:
        for yo in range(ylo + 1, yhi):
            _zero(patches, row + (yo - 1) * WO + hi, row + yo * WO + lo)


@njit(parallel=True, cache=True)
def _build_patches(x, n, patches, d, builder):
    """Patch matrix of image ``n`` of the NCHW batch ``x``, by ``builder``."""
    C, H, W = d.in_channels, d.height, d.width
    KH, KW, HO, WO = d.kernel_h, d.kernel_w, d.out_height, d.out_width
    SH, SW, DH, DW = d.stride_h, d.stride_w, d.dilation_h, d.dilation_w
    plane = HO * WO
    # copy-self: row (c, i, j) at output row yo equals row (c, i - shift, j) at
    # yo + 1, so rows of one (c, j) are built in order by one item.
    shift = SH // DH if builder == COPY_SELF and SH % DH == 0 else 0
    rows_per_item = KH if builder == COPY_SELF else 1
    # copy-long: a patch row is one evenly spaced run of the plane iff SH*W == SW*WO;
    # otherwise it is built by output rows, as copy-short does.
    one_run = builder == COPY_LONG and SH * W == SW * WO
    items_per_channel = KH * KW // rows_per_item
    for item in prange(C * items_per_channel):
        c = item // items_per_channel
        r = item % items_per_channel
        if rows_per_item == 1:
            i0 = r // KW
            j = r % KW
        else:
            i0 = 0
            j = r
        x_plane = (n * C + c) * H * W
        dx = j * DW - d.pad_left
        lo, hi = valid_range(W, WO, SW, dx)
        for i in range(i0, i0 + rows_per_item):
            row = ((c * KH + i) * KW + j) * plane
            dy = i * DH - d.pad_top
            if builder == SCAN:
                _scan_patch_row(x, x_plane, patches, row, dy, dx, H, W, HO, WO, SH, SW)
            elif one_run:
                _long_patch_row(x, x_plane, patches, row, dy, dx, H, W, HO, WO, SH, SW, lo, hi)
            else:
                first_from_input = 0
                if shift > 0 and i >= shift:
                    src = ((c * KH + i - shift) * KW + j) * plane + WO
                    _copy_run(patches, src, 1, patches, row, (HO - 1) * WO)
                    first_from_input = HO - 1
                for yo in range(first_from_input, HO):
                    _copy_patch_row(x, x_plane, patches, row + yo * WO, yo * SH + dy,
                                    H, W, WO, SW, dx, lo, hi)


@njit(parallel=True, cache=True)
def _multiply(patches, w, bias, out, n, d, form, m_blocks, n_tiles):
    """Image ``n``'s output from its patch matrix, in GEMM form ``form``.

    Items are (group, output-channel block, pixel tile); each is one GEMM.
    """
    M = d.out_channels
    mg = d.out_channels_per_group
    k = d.channels_per_group * d.kernel_taps
    plane = d.out_height * d.out_width
    out_img = n * M * plane
    for item in prange(d.groups * m_blocks * n_tiles):
        g, m0, m1, p0, p1 = tile_bounds(item, mg, plane, m_blocks, n_tiles)
        channel0 = g * mg + m0
        p_at = g * k * plane + p0
        if form == AB_KI:
            at = out_img + channel0 * plane + p0
            gemm(False, False, m1 - m0, p1 - p0, k, F32_ONE, w, channel0 * k, k,
                 patches, p_at, plane, F32_ZERO, out, at, plane)
            bias_rows(out, at, m1 - m0, p1 - p0, plane, bias, channel0, add=True)
        else:
            at = out_img + p0 * M + channel0
            gemm(True, True, p1 - p0, m1 - m0, k, F32_ONE, patches, p_at, plane,
                 w, channel0 * k, k, F32_ZERO, out, at, M)
            bias_cols(out, at, p1 - p0, m1 - m0, M, bias, channel0, add=True)


@njit(cache=True)
def _im2col_batch(x, w, bias, out, patches, geometry, builder, form, m_blocks, n_tiles):
    d = KernelGeometry(*geometry)
    for n in range(d.batch):
        _build_patches(x, n, patches, d, builder)
        _multiply(patches, w, bias, out, n, d, form, m_blocks, n_tiles)


def _builder_runs(g, builder) -> int:
    """Copy runs (loops over a row) ``builder`` issues per image: one per
    patch row and output row, but one per patch row for a copy-long that is
    one run, and for copy-self one run for each derived row (plus its last
    output row) and one per output row for the others."""
    rows = g.in_channels * g.kernel_taps
    if builder == COPY_LONG and g.stride_h * g.width == g.stride_w * g.out_width:
        return rows
    shift = g.stride_h // g.dilation_h if g.stride_h % g.dilation_h == 0 else 0
    if builder == COPY_SELF and 0 < shift < g.kernel_h:
        first_rows = g.in_channels * g.kernel_w * shift
        return first_rows * g.out_height + 2 * (rows - first_rows)
    return rows * g.out_height


def _plan_with(builder, form):
    def plan(g, threads):
        return patch_matrix_plan(g, threads, element_cost=SCAN_ELEMENT_COST if builder == SCAN else 1,
                                 runs=_builder_runs(g, builder), pixel_rows=form == ATBT_IK)
    return plan


def _unsupported_with(form):
    def unsupported(g):
        """ab-ki: m = M/g, n = ldb = ldc = Ho*Wo, k = lda = C/g*kh*kw.
        atbt-ik: m = lda = Ho*Wo, n = M/g, k = ldb = C/g*kh*kw, ldc = M."""
        plane = g.out_height * g.out_width
        if form == AB_KI:
            sizes = {"m = M/g": g.out_channels_per_group, "n = ldb = ldc = Ho*Wo": plane,
                     "k = lda = C/g*kh*kw": g.reduction_size}
        else:
            sizes = {"m = lda = Ho*Wo": plane, "n = M/g": g.out_channels_per_group,
                     "k = ldb = C/g*kh*kw": g.reduction_size, "ldc = M": g.out_channels}
        return blas_limit_reason(sizes)
    return unsupported


def _register(builder_name, builder, builder_text, form_name, form, form_text, output_layout):
    def compute(x, weights, bias, out, scratch, g, kernel):
        _im2col_batch(x, weights, bias, out, scratch, kernel_geometry(g), builder, form, *kernel.tiling)

    register(Algorithm(
        name=f"im2col-{builder_name}-{form_name}",
        family="im2col",
        summary=f"Patch matrix ({builder_text}), then {form_text} per group.",
        workspace_formula="C·kh·kw·Ho·Wo",
        unsupported=_unsupported_with(form),
        packed_weight_elements=lambda g: 0,
        pack_weights=None,
        plan_kernel=_plan_with(builder, form),
        compute=compute,
        output_layout=output_layout,
    ))


_BUILDERS = (
    ("scan", SCAN, "element-wise bounds-checked gather"),
    ("copy-short", COPY_SHORT, "short row copies"),
    ("copy-long", COPY_LONG, "one long shifted run per patch row, wrapped and padding entries "
                             "zeroed after; short row copies unless stride_h·W = stride_w·Wo"),
    ("copy-self", COPY_SELF, "short row copies, deriving rows from already built rows"),
)

_FORMS = (
    ("ab-ki", AB_KI, "W @ P (CHW output)", "NCHW"),
    ("atbt-ik", ATBT_IK, "P^T @ W^T (HWC output)", "NHWC"),
)

for _form_name, _form, _form_text, _output_layout in _FORMS:
    for _builder_name, _builder, _builder_text in _BUILDERS:
        _register(_builder_name, _builder, _builder_text, _form_name, _form, _form_text,
                  _output_layout)
