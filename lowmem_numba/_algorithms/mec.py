"""MEC (Cho and Brand, "MEC: memory-efficient convolution for deep neural
network", ICML 2017, arXiv 1706.06873): lower the input along ONE dimension
only, then compute each output row with ONE GEMM whose operand is a window of
the lowered matrix, described by an offset and a leading dimension (no second
copy).

Lowered matrix
--------------
For each output column ``xo``, MEC copies the ``kw``-wide (dilated, strided)
column window of the input, over all input rows and the group's channels.
With channels-last (NHWC) input this is, per image and group ``g``::

    L[g][xo][pos(y)][j][c] = x[y, xo*sw + j*dw - pad_left, g*C/g + c]   (0 outside the image)

where ``y`` runs over the H input rows, ``j`` over the kw taps and ``c`` over
the C/g channels.  One ``(xo, y)`` entry is a contiguous run of ``kw*C/g``
values, one ``xo`` a contiguous block of ``H*kw*C/g`` values (the leading
dimension ``lda`` of the GEMM operand).  Horizontal stride, dilation and
padding are resolved here, while lowering.

Rows are stored in *dilation-phase* order: ``pos(y) = start[y % dh] + y // dh``,
all rows of phase 0 first (y = 0, dh, 2dh, ...), then phase 1, and so on.  The
kernel rows of an output row, ``y = yo*sh - pad_top + i*dh``, all have the
same phase, so they are consecutive in L whatever the dilation: the whole
``(rows x kw x C/g)`` reduction of output row ``yo`` is one contiguous run of
every block ``xo``.  Output row ``yo`` is therefore ONE GEMM::

    out[yo, 0:Wo, g*M/g : (g+1)*M/g]  =  L[g][0:Wo][pos(y_first) : pos(y_first) + rows][:][:]  @  Wp[g*M/g : (g+1)*M/g][i0 : i1]^T
          (Wo x M/g, ldc = M)              (Wo x rows*kw*C/g, lda = H*kw*C/g)                 (M/g x rows*kw*C/g, ldb = kh*kw*C/g)

Vertical stride costs nothing (it only moves the window's row offset), and
vertical padding is not stored: the kernel rows ``[i0, i1)`` that fall inside
the image are found per output row, and the GEMM simply uses that shorter
reduction and the matching rows of the weights (an output row entirely in the
padding is just the bias).  So L holds Wo x H x kw x C values per image, the
paper's O(K C H W) (it stores Hp = H + padding rows).

The weights are repacked once per call from ``(M, C/g, kh, kw)`` into
``Wp = (M, kh, kw, C/g)``, L's ``(i, j, c)`` order, so that the taps of a
kernel-row range are one contiguous run of each output channel's row (read as
a transposed B operand).

Variants
--------
Cho and Brand give two ways of running the per-row GEMMs (their Algorithm 2);
both come from the one kernel below, with a parameter:

* ``mec-col`` (their *Solution A*): images are lowered one at a time, and the
  output rows of an image (``g * Ho`` GEMMs of ``Wo`` rows) are computed in
  parallel straight into the NHWC output.  Workspace: one image's L.
* ``mec-row-partition`` (their *Solution B*): the work is partitioned by
  output row only.  The whole batch is lowered at once (``L[g][n][xo]...``,
  a uniform row stride across images), and output row ``yo`` of ALL images
  is one GEMM of ``N * Wo`` rows: larger GEMMs when ``Wo`` is small.  Its
  result is laid out ``(Ho, N, Wo, M)``, which for ``N > 1`` is transposed into
  ``(N, Ho, Wo, M)`` afterwards.  Like the paper, the transposition reuses
  the lowered matrix's memory, dead by then: the result is copied there and
  written back image-major (so the workspace is ``max(|L|, |O|)``).  For
  ``N = 1`` no transposition is needed and it does exactly what ``mec-col``
  does; so does an NCHW call, which the registry converts and runs one image
  at a time.

The names are triNNity's; mapping them to Solutions A and B is our reading.

Both read and write NHWC (as in the paper): lowering then copies runs of C/g
contiguous channels, and the GEMM writes output rows of M contiguous channels.
"""

from __future__ import annotations

from numba import prange

from .._compile import njit  # numba.njit whose cache=True never fails (see _compile)
from .._blas import gemm
from .._geometry import blas_limit_reason
from .._plan import KernelPlan
from .._tuning import MEC_MIN_CHANNELS, MEC_MIN_PIXEL_ROWS
from .._registry import Algorithm, register
from ._common import (
    KernelGeometry,
    F32_ONE,
    F32_ZERO,
    all_weights,
    bias_cols,
    kernel_geometry,
    pack_channels_last,
    split_gemms,
    tile_bounds,
    valid_range,
)



#: (M, C/g, kh, kw) -> (M, kh, kw, C/g): each output channel's reduction in L's
#: (i, j, c) order, so a kernel-row range is a contiguous run of a row (the
#: packing im2row's W @ P^T form uses too).
_pack_weights = pack_channels_last


@njit(cache=True, nogil=True)
def _phase_start(phase, H, DH):
    # Rows of phases before `phase` in the dilation-phase order; phase q has
    # ceil((H - q) / DH) rows (none when q >= H).
    start = 0
    for q in range(phase):
        start += (H - q + DH - 1) // DH
    return start


@njit(parallel=True, cache=True)
def _lower(x, n0, nb, low, d):
    """L for images n0 .. n0+nb-1, laid out [g][image][xo][pos(y)][j][c]."""
    C, H, W, KW = d.in_channels, d.height, d.width, d.kernel_w
    DH, DW, WO = d.dilation_h, d.dilation_w, d.out_width
    cg = d.channels_per_group
    run = KW * cg
    lda = H * run
    for item in prange(d.groups * nb * WO):
        g = item // (nb * WO)
        b = (item // WO) % nb
        xo = item % WO
        x_first = xo * d.stride_w - d.pad_left
        j0, j1 = valid_range(W, KW, DW, x_first)
        dst = item * lda
        image = (n0 + b) * H * W * C + g * cg
        for phase in range(min(DH, H)):
            for y in range(phase, H, DH):
                x_row = image + y * W * C
                for j in range(KW):
                    at = dst + j * cg
                    if j < j0 or j >= j1:
                        for c in range(cg):
                            low[at + c] = F32_ZERO
                    else:
                        src = x_row + (x_first + j * DW) * C
                        for c in range(cg):
                            low[at + c] = x[src + c]
                dst += run


@njit(parallel=True, cache=True)
def _row_gemms(low, packed, bias, out, n0, nb, d, m_blocks, row_tiles):
    """One GEMM per (group, output row) over the nb*Wo rows of L, cut into tiles.

    Results go to ``out`` at image n0 in (Ho, nb, Wo, M) order, which for
    nb = 1 is the NHWC image itself.
    """
    H, M, KH, DH = d.height, d.out_channels, d.kernel_h, d.dilation_h
    HO, WO = d.out_height, d.out_width
    mg = d.out_channels_per_group
    run = d.kernel_w * d.channels_per_group
    lda = H * run
    rows = nb * WO
    # Group-major, then output row: one thread's share of items walks down
    # the image, so consecutive GEMMs reuse most of the previous L window.
    for item in prange(d.groups * HO * m_blocks * row_tiles):
        gy, m0, m1, r0, r1 = tile_bounds(item, mg, rows, m_blocks, row_tiles)
        g = gy // HO
        yo = gy % HO
        c_at = n0 * HO * WO * M + (yo * rows + r0) * M + g * mg + m0
        y_first = yo * d.stride_h - d.pad_top
        i0, i1 = valid_range(H, KH, DH, y_first)
        if i1 <= i0:
            bias_cols(out, c_at, r1 - r0, m1 - m0, M, bias, g * mg + m0, add=False)
            continue
        y = y_first + i0 * DH
        pos = _phase_start(y % DH, H, DH) + y // DH
        # B is the packed weights read transposed (M/g rows of kh*kw*C/g):
        # measured 10-20 % faster than a (k x M/g) operand for these shapes.
        gemm(False, True, r1 - r0, m1 - m0, (i1 - i0) * run, F32_ONE,
             low, (g * rows + r0) * lda + pos * run, lda,
             packed, (g * mg + m0) * KH * run + i0 * run, KH * run,
             F32_ZERO, out, c_at, M)
        bias_cols(out, c_at, r1 - r0, m1 - m0, M, bias, g * mg + m0, add=True)


@njit(parallel=True, cache=True)
def _to_image_major(out, tmp, N, HO, block):
    """(Ho, N, block) -> (N, Ho, block) in place in ``out``, through ``tmp``."""
    chunks = N * HO
    for chunk in prange(chunks):
        for q in range(chunk * block, (chunk + 1) * block):
            tmp[q] = out[q]
    for chunk in prange(chunks):
        n = chunk // HO
        yo = chunk % HO
        src = (yo * N + n) * block
        dst = chunk * block
        for q in range(block):
            out[dst + q] = tmp[src + q]


@njit(cache=True)
def _mec_batch(x, packed, bias, out, scratch, geometry, whole_batch, m_blocks, row_tiles):
    d = KernelGeometry(*geometry)
    N = d.batch
    nb = max(1, N) if whole_batch else 1
    for n0 in range(0, N, nb):
        _lower(x, n0, nb, scratch, d)
        _row_gemms(scratch, packed, bias, out, n0, nb, d, m_blocks, row_tiles)
    if nb > 1:
        _to_image_major(out, scratch, N, d.out_height, d.out_width * d.out_channels)


def _images_per_lowering(g, whole_batch):
    return g.batch if whole_batch else 1


def _plan_with(whole_batch):
    def plan(g, threads):
        """Lower (H rows, unpadded) per lowering, then one GEMM per (group,
        output row) of ``images·Wo x M/g x kh·kw·C/g``, cut into channel
        blocks x pixel-row tiles; Solution B transposes its result after."""
        images = _images_per_lowering(g, whole_batch)
        lowerings = g.batch // images if images else 0
        rows = images * g.out_width
        # Split rows are the output channels (>= MEC_MIN_CHANNELS each), split
        # columns the lowered pixel rows (>= MEC_MIN_PIXEL_ROWS each); the GEMM
        # is issued with the pixel rows as its m.
        split, gemms = split_gemms(g.groups * g.out_height, g.out_channels_per_group, rows,
                                   g.kernel_h * g.kernel_w * g.channels_per_group, threads,
                                   min_rows=MEC_MIN_CHANNELS, min_cols=MEC_MIN_PIXEL_ROWS)
        lowered = images * g.out_width * g.height * g.kernel_w * g.in_channels
        transposed = g.batch * g.out_height * g.out_width * g.out_channels if images > 1 else 0
        return KernelPlan(
            tiling=(split.row_blocks, split.col_tiles),
            # The (Ho, N, Wo, M) result is transposed through L's memory.
            scratch_elements=max(lowered, transposed),
            gemms=(gemms._replace(count=lowerings * gemms.count, m=gemms.n, n=gemms.m),),
            moved_elements=lowerings * lowered + 2 * transposed,
            parallel_items=split.items, launches=2 * lowerings + (images > 1))
    return plan


def _unsupported_with(whole_batch):
    def unsupported(g):
        """The per-row GEMM: m <= (images per lowering)*Wo, n <= M/g,
        k <= kh*kw*C/g, lda = H*kw*C/g (L's block per output column),
        ldb = kh*kw*C/g, ldc = M."""
        run = g.kernel_w * g.channels_per_group
        rows = ("m = N*Wo", g.batch * g.out_width) if whole_batch else ("m = Wo", g.out_width)
        return blas_limit_reason({
            rows[0]: rows[1],
            "n = M/g": g.out_channels_per_group,
            "k = ldb = kh*kw*C/g": g.kernel_h * run,
            "lda = H*kw*C/g": g.height * run,
            "ldc = M": g.out_channels,
        })
    return unsupported


def _pack(weight, g, dest):
    _pack_weights(weight, dest, kernel_geometry(g))


def _compute_with(whole_batch):
    def compute(x, packed, bias, out, scratch, g, kernel):
        _mec_batch(x, packed, bias, out, scratch, kernel_geometry(g), whole_batch, *kernel.tiling)
    return compute


for _name, _whole_batch, _summary, _formula in (
    ("mec-col", False,
     "MEC (Solution A): lower one image along W (Wo x H x kw x C), then one GEMM per output "
     "row on an overlapping window of L (offset + lda, no copy).",
     "Wo·H·kw·C + M·C/g·kh·kw (packed weights)"),
    ("mec-row-partition", True,
     "MEC (Solution B): lower the whole batch along W, one GEMM per output row across all "
     "images (N·Wo rows), then transpose (Ho, N) to (N, Ho) through L's memory.",
     "max(N·Wo·H·kw·C, N·Ho·Wo·M if N > 1) + M·C/g·kh·kw (packed weights)"),
):
    register(Algorithm(
        name=_name,
        family="mec",
        summary=_summary,
        workspace_formula=_formula,
        unsupported=_unsupported_with(_whole_batch),
        packed_weight_elements=all_weights,
        pack_weights=_pack,
        plan_kernel=_plan_with(_whole_batch),
        compute=_compute_with(_whole_batch),
        input_layout="NHWC",
        output_layout="NHWC",
    ))
