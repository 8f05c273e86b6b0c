"""kn2row-aa: each kernel tap is a 1x1 convolution whose GEMM accumulates
(beta = 1) straight into the output at a shifted position (Anderson et al. 2017).

Stride 1.  With CHW planes flattened, tap (i, j) adds
``W_tap[M/g, C/g] @ x[C/g, p + dy*W + dx]`` to ``out[:, p]``, where
``dy = i*dh - pad_top`` and ``dx = j*dw - pad_left``:

* When the output is as wide as the input (Wo == W), a band of output rows is
  ONE GEMM whose B operand is the input at a flat offset (``ldb = H*W``).  The
  row range is clipped to rows whose source row exists.  Along the band, the
  |dx| edge pixels of each row read the neighbouring row's far end instead of
  padding; their true contribution from this tap is zero, so their values are
  saved before the GEMM and restored after it.  That save buffer is the whole
  scratch: |dx| * (rows per band - 1) values per output channel and thread.
* Otherwise each output row is its own GEMM over its valid columns (no scratch).

Taps need each tap's weight matrix contiguous, so weights are repacked per tap.
The four variants differ only in operand layout and transposition, and share
one kernel.  The kernel is operand A and the image operand B; a transposed B
means channels-last data, and then the product is formed transposed
(``out^T = op(B)^T op(A)^T``), which writes a channels-last output with the same
flat-offset trick (pixels as rows):

===============  ==========================  ==================  ===============
variant          tap weights packed as       image (B)           in / out layout
===============  ==========================  ==================  ===============
kn2row-aa-ab     (M/g x C/g)                 CHW                 NCHW / NCHW
kn2row-aa-atb    (C/g x M/g), transposed     CHW                 NCHW / NCHW
kn2row-aa-abt    (M/g x C/g)                 HWC, transposed     NHWC / NHWC
kn2row-aa-atbt   (C/g x M/g), transposed     HWC, transposed     NHWC / NHWC
===============  ==========================  ==================  ===============
"""

from __future__ import annotations

from numba import prange

from .._compile import njit  # numba.njit whose cache=True never fails (see _compile)
from .._blas import gemm
from .._geometry import blas_limit_reason
from .._plan import KernelPlan
from .._split import split_work
from .._tuning import GEMM_MIN_ROWS, KN2ROW_AA_BAND_COLUMNS, PACK_COST, TRANSPOSE_COST
from .._registry import Algorithm, register
from ._common import (
    KernelGeometry,
    F32_ONE,
    all_weights,
    bias_cols,
    bias_rows,
    ceil_div,
    kernel_geometry,
    KN2ROW_CLAIMS,
    kn2row_family_unsupported,
    pack_tap_major,
    valid_range,
)



@njit(parallel=True, cache=True)
def _pack_taps_transposed(w, packed, geometry):
    d = KernelGeometry(*geometry)
    # (groups, taps, C/g, M/g) from (M, C/g, taps).
    cg_count = d.channels_per_group
    mg_count = d.out_channels_per_group
    taps = d.kernel_taps
    for m in prange(d.out_channels):
        g = m // mg_count
        mg = m % mg_count
        for cg in range(cg_count):
            for t in range(taps):
                packed[(g * taps + t) * mg_count * cg_count + cg * mg_count + mg] = w[(m * cg_count + cg) * taps + t]


@njit(cache=True, nogil=True)
def _move_wrapped(out, block, m_stride, p_stride, buf, buf_at, buf_ld, rows_m,
                  first_row, wrap_rows, col, width, W, to_buffer):
    # The |dx|-wide edge runs of `wrap_rows` output rows, between the output
    # (element (m, pixel) at block + m*m_stride + pixel*p_stride) and the save
    # buffer (rows_m rows of buf_ld).
    for r in range(rows_m):
        for k in range(wrap_rows):
            pixel = (first_row + k) * W + col
            saved = buf_at + r * buf_ld + k * width
            for q in range(width):
                at = block + r * m_stride + (pixel + q) * p_stride
                if to_buffer:
                    buf[saved + q] = out[at]
                else:
                    out[at] = buf[saved + q]


@njit(cache=True, nogil=True)
def _tap_gemm(rows_m, pixels, cg_count, mg_count, C, M, hw, packed, tap_at, a_transposed,
              x, x_image, x_pixel, channels_last, out, out_block, out_pixel, plane):
    """Accumulate one tap over ``pixels`` consecutive output pixels.

    CHW: out[m, p] += W_tap[m, :] @ x[:, p + shift] (kernel is A, image is B).
    HWC: the transposed product out[p, m] += x[p + shift, :] @ W_tap[m, :]^T,
    which writes the channels-last output row by row.
    """
    if channels_last:
        b_transposed = not a_transposed
        ldb = cg_count if not a_transposed else mg_count
        gemm(False, b_transposed, pixels, rows_m, cg_count, F32_ONE,
             x, x_image + x_pixel * C, C,
             packed, tap_at, ldb,
             F32_ONE, out, out_block + out_pixel * M, M)
    else:
        lda = mg_count if a_transposed else cg_count
        gemm(a_transposed, False, rows_m, pixels, cg_count, F32_ONE,
             packed, tap_at, lda,
             x, x_image + x_pixel, hw,
             F32_ONE, out, out_block + out_pixel, plane)


@njit(parallel=True, cache=True)
def _kn2row_aa(x, packed, bias, out, scratch, geometry, m_blocks, rows_per_band, slots, save_cols,
               a_transposed, channels_last):
    d = KernelGeometry(*geometry)
    C, H, W, M, G = d.in_channels, d.height, d.width, d.out_channels, d.groups
    KH, KW, HO, WO = d.kernel_h, d.kernel_w, d.out_height, d.out_width
    cg_count = d.channels_per_group
    mg_count = d.out_channels_per_group
    taps = d.kernel_taps
    hw = H * W
    plane = HO * WO
    bands = (HO + rows_per_band - 1) // rows_per_band
    items = d.batch * G * m_blocks * bands
    per_slot = ((mg_count + m_blocks - 1) // m_blocks) * save_cols
    flat = WO == W
    # Output element (m, pixel) of a block sits at block + m*m_stride + pixel*p_stride.
    m_stride = 1 if channels_last else plane
    p_stride = M if channels_last else 1
    for slot in prange(slots):
        save_at = slot * per_slot
        for item in range(slot, items, slots):
            band = item % bands
            mb = (item // bands) % m_blocks
            g = (item // (bands * m_blocks)) % G
            n = item // (bands * m_blocks * G)
            m0 = mb * mg_count // m_blocks
            rows_m = (mb + 1) * mg_count // m_blocks - m0
            y0 = band * rows_per_band
            y1 = min(HO, y0 + rows_per_band)
            m_first = g * mg_count + m0
            if channels_last:
                out_block = n * plane * M + m_first
                x_image = n * hw * C + g * cg_count
            else:
                out_block = (n * M + m_first) * plane
                x_image = (n * C + g * cg_count) * hw
            if channels_last:
                bias_cols(out, out_block + y0 * WO * M, (y1 - y0) * WO, rows_m, M, bias, m_first,
                          add=False)
            else:
                bias_rows(out, out_block + y0 * WO, rows_m, (y1 - y0) * WO, plane, bias, m_first,
                          add=False)
            for i in range(KH):
                dy = i * d.dilation_h - d.pad_top
                r0 = max(y0, -dy)
                r1 = min(y1, H - dy)
                if r1 <= r0:
                    continue
                for j in range(KW):
                    dx = j * d.dilation_w - d.pad_left
                    tap_block = (g * taps + i * KW + j) * mg_count * cg_count
                    tap_at = tap_block + (m0 if a_transposed else m0 * cg_count)
                    if flat:
                        left = max(0, -dx)
                        right = max(0, dx)
                        if left >= W or right >= W:
                            continue
                        p0 = r0 * W + left
                        p1 = (r1 - 1) * W + W - right
                        width = abs(dx)
                        wrap_rows = r1 - r0 - 1 if width > 0 else 0
                        first_row = r0 if dx > 0 else r0 + 1
                        col = W - dx if dx > 0 else 0
                        _move_wrapped(out, out_block, m_stride, p_stride, scratch, save_at, save_cols,
                                      rows_m, first_row, wrap_rows, col, width, W, True)
                        _tap_gemm(rows_m, p1 - p0, cg_count, mg_count, C, M, hw, packed, tap_at,
                                  a_transposed, x, x_image, p0 + dy * W + dx, channels_last,
                                  out, out_block, p0, plane)
                        _move_wrapped(out, out_block, m_stride, p_stride, scratch, save_at, save_cols,
                                      rows_m, first_row, wrap_rows, col, width, W, False)
                    else:
                        lo, hi = valid_range(W, WO, 1, dx)
                        if hi <= lo:
                            continue
                        for yo in range(r0, r1):
                            _tap_gemm(rows_m, hi - lo, cg_count, mg_count, C, M, hw, packed, tap_at,
                                      a_transposed, x, x_image, (yo + dy) * W + lo + dx, channels_last,
                                      out, out_block, yo * WO + lo, plane)


def _tiling(g, threads):
    """(m_blocks, rows_per_band, slots, save_cols) for a geometry and thread count."""
    width = g.out_width
    bands = max(1, ceil_div(g.out_height * width, KN2ROW_AA_BAND_COLUMNS))
    if g.out_channels_per_group < 32 * threads:
        # Few output channels: feed the threads with more (narrower) bands.
        # Otherwise splitting channels keeps each tap's GEMM as wide as the
        # band, which measured 10-35 % faster at 2 threads on 13x13 to 28x28
        # planes, where narrow bands make OpenBLAS repack the tap weights for
        # little work.
        bands = min(g.out_height, ceil_div(bands, threads) * threads)
    rows_per_band = ceil_div(g.out_height, bands)
    bands = ceil_div(g.out_height, rows_per_band)
    independent = g.batch * g.groups * bands
    # Bands of every image and group are independent; output channels are cut
    # only to balance them over the threads (an empty batch has no items: no
    # blocks, no slot, no scratch).
    m_blocks = split_work(independent, g.out_channels_per_group, 1, threads, min_rows=GEMM_MIN_ROWS,
                          min_cols=1, prefer="rows").row_blocks
    slots = min(threads, independent * m_blocks)
    save_cols = 0
    if g.out_width == g.width:
        # Widest horizontal shift among taps that keep any valid column.
        shifts = (abs(j * g.dilation_w - g.pad_left) for j in range(g.kernel_w))
        widest = max((s for s in shifts if s < g.width), default=0)
        save_cols = widest * (rows_per_band - 1)
    return m_blocks, rows_per_band, slots, save_cols


def _plan_with(channels_last):
    def plan(g, threads):
        """Per (image, group, band, channel block): one GEMM per tap into the
        output (per output row when the output is narrower than the input);
        the save buffer is the scratch, one per thread slot."""
        m_blocks, rows_per_band, slots, save_cols = _tiling(g, threads)
        m_block = ceil_div(g.out_channels_per_group, m_blocks)
        bands = ceil_div(g.out_height, rows_per_band)
        items = g.batch * g.groups * bands * m_blocks
        if g.out_width == g.width:
            count, pixels = items * g.kernel_taps, rows_per_band * g.width
        else:
            count, pixels = items * g.kernel_taps * rows_per_band, g.out_width
        m, n = (pixels, m_block) if channels_last else (m_block, pixels)
        return KernelPlan(tiling=(m_blocks, rows_per_band, slots, save_cols),
                          scratch_elements=slots * m_block * save_cols,
                          gemms=((count, m, n, g.channels_per_group),),
                          # Every tap's GEMM reads and writes the whole output block
                          # (beta = 1), and each row's |dx| edge pixels are saved and
                          # restored around it.  Without the first term the model put
                          # kn2row-aa within 5 % of direct-ukernel on AlexNet conv2
                          # (25 taps, k = 48), which measured 1.31x slower.
                          moved_elements=g.batch * g.kernel_taps * g.out_channels * g.out_height
                          * (g.out_width + 2 * (save_cols // max(1, rows_per_band - 1))),
                          parallel_items=items)
    return plan


def _blas_sizes(g, a_transposed, channels_last):
    """Largest m, n, k and leading dimensions the variant passes to gemm (per image).

    CHW: m = M/g, n = band pixels (<= Ho*Wo), k = C/g, lda = C/g (M/g when A
    is transposed), ldb = H*W, ldc = Ho*Wo.  HWC (the transposed product):
    m = band pixels, n = M/g, k = C/g, lda = C, ldb = C/g (M/g), ldc = M.
    """
    cg, mg = g.channels_per_group, g.out_channels_per_group
    pixels = g.out_height * g.out_width
    if channels_last:
        return {"m = band pixels <= Ho*Wo": pixels, "n = M/g": mg, "k = C/g": cg,
                "lda = C": g.in_channels, "ldb = " + ("M/g" if a_transposed else "C/g"):
                mg if a_transposed else cg, "ldc = M": g.out_channels}
    return {"m = M/g": mg, "n = ldc = Ho*Wo": pixels, "k = C/g": cg,
            "lda = " + ("M/g" if a_transposed else "C/g"): mg if a_transposed else cg,
            "ldb = H*W": g.height * g.width}


def _unsupported_with(a_transposed, channels_last):
    def unsupported(g):
        return kn2row_family_unsupported(g) or blas_limit_reason(
            _blas_sizes(g, a_transposed, channels_last))
    return unsupported


def _register(suffix, a_transposed, channels_last):
    def pack(weight, g, dest):
        if a_transposed:
            _pack_taps_transposed(weight, dest, kernel_geometry(g))
        else:
            pack_tap_major(weight, g, dest)

    def compute(x, packed, bias, out, scratch, g, kernel):
        _kn2row_aa(x, packed, bias, out, scratch, kernel_geometry(g), *kernel.tiling, a_transposed,
                   channels_last)

    operands = ("A^T" if a_transposed else "A") + (" B^T (HWC input)" if channels_last else " B")
    register(Algorithm(
        name=f"kn2row-aa-{suffix}",
        family="kn2row",
        summary=f"Per-tap 1x1 GEMMs ({operands}) accumulating (beta=1) into the shifted output; "
                "edge pixels saved and restored.",
        workspace_formula="M·C/g·kh·kw (packed weights) + threads·M·|dx|·(band rows − 1)",
        unsupported=_unsupported_with(a_transposed, channels_last),
        packed_weight_elements=all_weights,
        pack_weights=pack,
        # The tap-major packing is transpose_blocks; the transposed one
        # scatters element by element (results/pack_speed.md).
        pack_cost=PACK_COST if a_transposed else TRANSPOSE_COST,
        plan_kernel=_plan_with(channels_last),
        compute=compute,
        claims=KN2ROW_CLAIMS,
        input_layout="NHWC" if channels_last else "NCHW",
        output_layout="NHWC" if channels_last else "NCHW",
    ))


for _suffix, _a_transposed, _channels_last in (
    ("ab", False, False),
    ("abt", False, True),
    ("atb", True, False),
    ("atbt", True, True),
):
    _register(_suffix, _a_transposed, _channels_last)
