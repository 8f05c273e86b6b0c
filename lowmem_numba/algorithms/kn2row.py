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

Taps need the (M/g x C/g) weight matrix of each tap contiguous, so weights are
repacked to (groups, kh*kw, M/g, C/g).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..blas import gemm
from ..registry import Algorithm, register
from ._common import ceil_div, dims, fill_rows, valid_range

_F32_ONE = np.float32(1.0)

#: Output columns (of H*W) per band: the M x band output block and the C x band
#: input window stay in L2 across all kh*kw taps.
_BAND_COLUMNS = 512


@njit(parallel=True, cache=True)
def _pack_taps(w, packed, d):
    N, C, H, W, M, KH, KW, G, SH, SW, DH, DW, PT, PB, PL, PR, HO, WO = d
    cg_count = C // G
    mg_count = M // G
    taps = KH * KW
    for m in prange(M):
        g = m // mg_count
        mg = m % mg_count
        for cg in range(cg_count):
            for t in range(taps):
                packed[((g * taps + t) * mg_count + mg) * cg_count + cg] = w[(m * cg_count + cg) * taps + t]


@njit(cache=True, nogil=True)
def _copy_wrapped(src, src_off, src_ld, dst, dst_off, dst_ld, rows_m, first_row, wrap_rows, col, width, W, to_save):
    # Moves the |dx|-wide edge runs of `wrap_rows` output rows between the
    # output (to_save: out -> save buffer) and the save buffer (restore).
    for r in range(rows_m):
        for k in range(wrap_rows):
            out_at = src_off + r * src_ld + (first_row + k) * W + col
            buf_at = dst_off + r * dst_ld + k * width
            if to_save:
                for q in range(width):
                    dst[buf_at + q] = src[out_at + q]
            else:
                for q in range(width):
                    src[out_at + q] = dst[buf_at + q]


@njit(parallel=True, cache=True)
def _kn2row_aa(x, packed, bias, out, scratch, d, m_blocks, rows_per_band, slots, save_cols):
    N, C, H, W, M, KH, KW, G, SH, SW, DH, DW, PT, PB, PL, PR, HO, WO = d
    cg_count = C // G
    mg_count = M // G
    taps = KH * KW
    hw = H * W
    plane = HO * WO
    bands = (HO + rows_per_band - 1) // rows_per_band
    items = N * G * m_blocks * bands
    per_slot = ((mg_count + m_blocks - 1) // m_blocks) * save_cols
    flat = WO == W
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
            out_block = (n * M + g * mg_count + m0) * plane
            x_group = (n * C + g * cg_count) * hw
            fill_rows(out, out_block + y0 * WO, rows_m, (y1 - y0) * WO, plane, bias, g * mg_count + m0)
            for i in range(KH):
                dy = i * DH - PT
                r0 = max(y0, -dy)
                r1 = min(y1, H - dy)
                if r1 <= r0:
                    continue
                for j in range(KW):
                    dx = j * DW - PL
                    a_off = ((g * taps + i * KW + j) * mg_count + m0) * cg_count
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
                        _copy_wrapped(out, out_block, plane, scratch, save_at, save_cols,
                                      rows_m, first_row, wrap_rows, col, width, W, True)
                        gemm(False, False, rows_m, p1 - p0, cg_count, _F32_ONE,
                             packed, a_off, cg_count,
                             x, x_group + p0 + dy * W + dx, hw,
                             _F32_ONE, out, out_block + p0, plane)
                        _copy_wrapped(out, out_block, plane, scratch, save_at, save_cols,
                                      rows_m, first_row, wrap_rows, col, width, W, False)
                    else:
                        lo, hi = valid_range(W, WO, 1, dx)
                        if hi <= lo:
                            continue
                        for yo in range(r0, r1):
                            gemm(False, False, rows_m, hi - lo, cg_count, _F32_ONE,
                                 packed, a_off, cg_count,
                                 x, x_group + (yo + dy) * W + lo + dx, hw,
                                 _F32_ONE, out, out_block + yo * WO + lo, plane)


def _tiling(g, threads):
    """(m_blocks, rows_per_band, slots, save_cols) for a geometry and thread count."""
    width = g.out_width
    bands = max(1, ceil_div(g.out_height * width, _BAND_COLUMNS))
    bands = min(g.out_height, ceil_div(bands, threads) * threads)
    rows_per_band = ceil_div(g.out_height, bands)
    bands = ceil_div(g.out_height, rows_per_band)
    independent = g.batch * g.groups * bands
    m_blocks = 1
    if independent < threads:
        m_blocks = max(1, min(ceil_div(threads, independent), g.out_channels_per_group // 16))
    slots = min(threads, independent * m_blocks)
    save_cols = 0
    if g.out_width == g.width:
        # Widest horizontal shift among taps that keep any valid column.
        shifts = (abs(j * g.dilation_w - g.pad_left) for j in range(g.kernel_w))
        widest = max((s for s in shifts if s < g.width), default=0)
        save_cols = widest * (rows_per_band - 1)
    return m_blocks, rows_per_band, slots, save_cols


def _scratch(g, threads):
    m_blocks, _, slots, save_cols = _tiling(g, threads)
    return slots * ceil_div(g.out_channels_per_group, m_blocks) * save_cols


def _packed(g):
    return g.out_channels * g.reduction_size


def _pack(weight, g, dest):
    _pack_taps(weight, dest, dims(g))


def _compute(x, packed, bias, out, scratch, g, threads):
    m_blocks, rows_per_band, slots, save_cols = _tiling(g, threads)
    _kn2row_aa(x, packed, bias, out, scratch, dims(g), m_blocks, rows_per_band, slots, save_cols)


def _unsupported(g):
    if g.stride != (1, 1):
        return f"stride {g.stride} (the kn2row family needs stride 1)"
    return None


register(Algorithm(
    name="kn2row-aa-ab",
    family="kn2row",
    summary="Per-tap 1x1 GEMMs accumulating (beta=1) into the shifted output; edge pixels saved and restored.",
    workspace_formula="M·C/g·kh·kw (packed weights) + threads·M·|dx|·band rows",
    unsupported=_unsupported,
    packed_weight_elements=_packed,
    pack_weights=_pack,
    scratch_elements=_scratch,
    compute=_compute,
))
