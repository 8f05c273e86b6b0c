"""depthwise-blocked: depthwise convolution on NCHW data, channels in the vector lanes.

The ``depthwise`` kernel vectorises along an output plane, so each plane pays
a run's setup, its border masks and (stride 2) a de-interleaving copy; on
MobileNet's 7x7 and 14x14 planes that fixed cost is most of the time (50-150 ns
a plane, where the arithmetic is 10-20).  This kernel takes ``VL`` channels of
one image and a band of output rows at a time (an *item*) and works on them
channels-last:

1. the input rows of the item's ``VL`` planes that the band reads are
   transposed in registers, ``VL`` pixels at a time
   (:func:`~lowmem_numba._microkernel.transpose_block`), into a per-thread
   buffer holding those rows zero-padded, as pixel vectors of ``VL`` channels
   (the padding columns are zeroed once per call and never written; rows
   above or below the image are zeroed per band);
2. each output pixel is ``bias + sum over taps of w[tap] * pixel``: one
   ``llvm.fma`` per tap on whole vectors
   (:func:`~lowmem_numba._microkernel.depthwise_pixels`), eight output pixels
   per call with the nine weight vectors in registers; any stride and
   dilation is only a pixel step, so stride 2 needs no de-interleaving, and
   the zero-padded buffer needs no masks;
3. the item's output pixel vectors are transposed back into its ``VL`` output
   planes.

A row's last call computes up to ``DEPTHWISE_PIXELS - 1`` pixels past the row:
they land on the next row's first pixels (computed afterwards) or in spare
pixels after the output buffer, and read spare pixels after the input buffer.
Transposes take whole blocks of ``VL`` pixels, the last block of a band moved
back to end at the band's end (it overlaps its predecessor, which it rewrites
with the same values); bands smaller than a block, and the last block of
channels when ``C`` is not a multiple of ``VL``, go element by element.

Supported: one input channel per group (``groups == C``) and one output
channel per group (channel multiplier 1), any kernel (in blocks of nine taps:
later blocks add into the output buffer), stride, (asymmetric) padding,
dilation and batch.  The ``depthwise`` kernel serves channel multipliers.

Workspace
---------
The bias padded to whole channel blocks, the int64 index tables (a buffer
offset per input pixel of a band, one output offset per lane, one buffer
offset per tap), and per thread one band's padded input rows and output pixels, ``VL``
channels deep, within ``DEPTHWISE_BLOCKED_BUFFER_BYTES`` (whole 7x7 ... 28x28
images fit; 56x56 and 112x112 are cut into bands).  Weights are packed as
``(tap, channel)`` rows, zero-padded to whole blocks of taps and channels.

Threads
-------
Items (image x channel block x band) in one contiguous share per thread;
:func:`lowmem_numba._split.split_work` decides how many bands balance them.

Cost model
----------
Every computed lane counts (padded lanes, zero taps and a row's extra pixels
included), as ``vector_flops`` scaled by ``DEPTHWISE_BLOCKED_FLOP_COST`` (the
FMA kernel runs about three times the calibrated rate of vectorised loops);
the transposes (each band's input rows, overlap included) and the buffer
zeroing count as moved elements.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._compile import njit, serial_twin  # numba.njit whose cache=True never fails (see _compile)
from .._microkernel import (DEPTHWISE_PIXELS, DEPTHWISE_TAPS, VL, depthwise_pixels, depthwise_rows_s1,
                            depthwise_rows_s2, transpose_block)
from .._plan import FLOAT32_BYTES, KernelPlan
from .._registry import Algorithm, register
from .._split import split_work
from .._tuning import DEPTHWISE_BLOCKED_BUFFER_BYTES, DEPTHWISE_BLOCKED_FLOP_COST
from ._common import KernelGeometry, LINE, ceil_div, kernel_geometry, whole_lines, zero_run


@njit(cache=True, nogil=True, inline="always")
def _transpose_run(src, s_off, s_step, s_stride, dst, d_off, d_step, table, t_off, t_step, count):
    """``count >= VL`` columns of ``VL`` rows, transposed in whole blocks: block
    ``p`` reads ``src[s_off + p*s_step + r*s_stride ...]`` and writes to
    ``dst[d_off + p*d_step + table[t_off + p*t_step + j] ...]``.  The last
    block is moved back to end at ``count`` (it rewrites some of its
    predecessor's columns with the same values)."""
    for p0 in range(0, count, VL):
        p = min(p0, count - VL)
        transpose_block(src, s_off + p * s_step, s_stride, dst, d_off + p * d_step, table, t_off + p * t_step)


@njit(parallel=True, cache=True)
def _depthwise_blocked(x, wp, bias, out, scratch, geometry, slots, band_rows, padded_w, buffer_pixels,
                       slot_size, tables, band_pixels):
    d = KernelGeometry(*geometry)
    C, H, W, M = d.in_channels, d.height, d.width, d.out_channels
    KH, KW, HO, WO = d.kernel_h, d.kernel_w, d.out_height, d.out_width
    SH, SW, DH, DW, PT, PL = d.stride_h, d.stride_w, d.dilation_h, d.dilation_w, d.pad_top, d.pad_left
    taps = d.kernel_taps
    plane_in = H * W
    plane_out = HO * WO
    blocks = (C + VL - 1) // VL
    padded_c = blocks * VL
    tap_blocks = (taps + DEPTHWISE_TAPS - 1) // DEPTHWISE_TAPS
    bands = (HO + band_rows - 1) // band_rows
    items = d.batch * blocks * bands
    span_h = (KH - 1) * DH + 1
    row_floats = padded_w * VL
    # Shared: the bias over whole channel blocks (zeros past C, or all zeros).
    has_bias = bias.size > 0
    for c in range(padded_c):
        scratch[c] = bias[c] if has_bias and c < C else np.float32(0.0)
    # Index tables: the place of a band's k-th input pixel (counted from its
    # first row inside the image) in the buffer, from that row; each lane's
    # output plane; each tap's offset from its output pixel's first input pixel.
    table = scratch[tables:tables + 2 * (band_pixels + VL + tap_blocks * DEPTHWISE_TAPS)].view(np.int64)
    lane_at = band_pixels
    tap_at = band_pixels + VL
    for k in range(band_pixels):
        y = k // W
        table[k] = (y * padded_w + k - y * W + PL) * VL
    for lane in range(VL):
        table[lane_at + lane] = lane * plane_out
    for t in range(tap_blocks * DEPTHWISE_TAPS):
        table[tap_at + t] = ((t // KW) * DH * padded_w + (t % KW) * DW) * VL if t < taps else 0
    # 3x3 with dilation 1 at stride 1 or 2: each input column loaded once.
    rows_s1 = KH == 3 and KW == 3 and DW == 1 and SW == 1
    rows_s2 = KH == 3 and KW == 3 and DW == 1 and SW == 2
    row_step = DH * row_floats
    # The buffers start on cache lines of memory, not only of scratch: a
    # vector load that straddles two lines costs two (16-byte-aligned scratch
    # took 44-48 ns a call instead of 31-33, measured on 7x7 planes).
    shared = tables + 2 * (band_pixels + VL + tap_blocks * DEPTHWISE_TAPS)
    shared = (shared + LINE - 1) // LINE * LINE + ((-(scratch.ctypes.data >> 2)) & (LINE - 1))
    for slot in prange(slots):
        image = shared + slot * slot_size
        pixels = image + buffer_pixels * VL
        zero_run(scratch, image, buffer_pixels * VL)  # the padding columns stay zero
        for item in range(slot * items // slots, (slot + 1) * items // slots):
            band = item % bands
            n = item // (blocks * bands)
            c0 = (item // bands - n * blocks) * VL
            lanes = min(VL, C - c0)
            y0 = band * band_rows
            y1 = min(HO, y0 + band_rows)
            # Buffer row k holds input row top + k: rows [first, end) are
            # inside the image, the others (padding) zeros.  A band may lie
            # wholly in the padding (padding wider than the kernel).
            top = y0 * SH - PT
            rows = (y1 - 1 - y0) * SH + span_h
            first = min(max(-top, 0), rows)
            end = min(max(H - top, first), rows)
            zero_run(scratch, image, first * row_floats)
            zero_run(scratch, image + end * row_floats, (rows - end) * row_floats)
            at = image + first * row_floats
            xp = (n * C + c0) * plane_in + (top + first) * W
            count = (end - first) * W
            if lanes == VL and count >= VL:
                _transpose_run(x, xp, 1, plane_in, scratch, at, 0, table, 0, 1, count)
            else:
                for lane in range(lanes):
                    for k in range(count):
                        scratch[at + table[k] + lane] = x[xp + lane * plane_in + k]
            for yo in range(y0, y1):
                for xo in range(0, WO, DEPTHWISE_PIXELS):
                    s = image + ((yo - y0) * SH * padded_w + xo * SW) * VL
                    o = pixels + ((yo - y0) * WO + xo) * VL
                    if rows_s1:
                        depthwise_rows_s1(scratch, s, row_step, wp, c0, padded_c, scratch, c0, scratch, o, VL, 0)
                    elif rows_s2:
                        depthwise_rows_s2(scratch, s, row_step, wp, c0, padded_c, scratch, c0, scratch, o, VL, 0)
                    else:
                        for b in range(tap_blocks):
                            depthwise_pixels(scratch, s, SW * VL, table, tap_at + b * DEPTHWISE_TAPS,
                                             taps - b * DEPTHWISE_TAPS, wp, b * DEPTHWISE_TAPS * padded_c + c0,
                                             padded_c, scratch, c0, scratch, o, VL, b)
            op = (n * M + c0) * plane_out + y0 * WO
            count = (y1 - y0) * WO
            if lanes == VL and count >= VL:
                _transpose_run(scratch, pixels, VL, VL, out, op, 1, table, lane_at, 0, count)
            else:
                for lane in range(lanes):
                    for p in range(count):
                        out[op + lane * plane_out + p] = scratch[pixels + p * VL + lane]


@njit(cache=True)
def _pack(w, wp, geometry):
    """``wp[t*padded_c + c] = w[c*taps + t]``, zeros for taps and channels
    beyond the kernel's (whole blocks of nine taps and ``VL`` channels)."""
    d = KernelGeometry(*geometry)
    C = d.in_channels
    taps = d.kernel_taps
    padded_c = (C + VL - 1) // VL * VL
    rows = (taps + DEPTHWISE_TAPS - 1) // DEPTHWISE_TAPS * DEPTHWISE_TAPS
    # Tap by tap from a strided view of the kernels, without a test per
    # element: 2.1 us for MobileNet's 1024 channels against 6.5 us for one
    # loop over every (tap, channel) testing whether it is padding (timeit),
    # paid by every functional call.
    for t in range(taps):
        row = wp[t * padded_c:(t + 1) * padded_c]
        kernels = w[t:C * taps:taps]
        for c in range(C):
            row[c] = kernels[c]
        row[C:] = 0.0
    wp[taps * padded_c:rows * padded_c] = 0.0


# ----------------------------------------------------------------- plan

def _padded_channels(g):
    return ceil_div(g.in_channels, VL) * VL


def _tap_rows(g):
    return ceil_div(g.kernel_taps, DEPTHWISE_TAPS) * DEPTHWISE_TAPS


def _tiling(g, threads):
    """(slots, band_rows, padded_w, buffer_pixels, slot_size, tables, band_pixels, items)."""
    padded_w = g.width + g.pad_left + g.pad_right
    span_h = (g.kernel_h - 1) * g.dilation_h + 1
    blocks = ceil_div(g.in_channels, VL)
    # Rows per band: the input rows and output pixels of a band stay within
    # the buffer budget; enough bands to balance the threads.
    per_row = (g.stride_h * padded_w + g.out_width) * VL
    fixed = max(0, span_h - g.stride_h) * padded_w * VL
    limit = max(1, (DEPTHWISE_BLOCKED_BUFFER_BYTES // FLOAT32_BYTES - fixed) // per_row)
    split = split_work(g.batch * blocks, g.out_height, 1, threads, min_rows=1, min_cols=1)
    band_rows = max(1, min(g.out_height, limit, ceil_div(g.out_height, split.row_blocks)))
    band_rows = ceil_div(g.out_height, ceil_div(g.out_height, band_rows))  # bands of equal height
    last_call = (g.out_width - 1) // DEPTHWISE_PIXELS * DEPTHWISE_PIXELS
    # The furthest pixel a call reads: the band's last row's last call, its
    # last pixel (past the row), the kernel's bottom-right tap.
    furthest = (((band_rows - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h) * padded_w
                + (last_call + DEPTHWISE_PIXELS - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w)
    buffer_pixels = max(((band_rows - 1) * g.stride_h + span_h) * padded_w, furthest + 1)
    output_pixels = (band_rows - 1) * g.out_width + last_call + DEPTHWISE_PIXELS
    items = g.batch * blocks * ceil_div(g.out_height, band_rows)
    slots = max(1, min(threads, items))
    tables = whole_lines(_padded_channels(g))
    slot_size = whole_lines((buffer_pixels + output_pixels) * VL) + LINE
    band_pixels = _band_input_rows(g, band_rows) * g.width
    return slots, band_rows, padded_w, buffer_pixels, slot_size, tables, band_pixels, items


def _band_input_rows(g, band_rows):
    """Input rows inside the image that one band reads, at most."""
    return min(g.height, (band_rows - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1)


def _table_elements(g, band_pixels):
    """float32 elements of the int64 index tables."""
    return 2 * (band_pixels + VL + _tap_rows(g))


def _plan(g, threads):
    if g.batch == 0:
        return KernelPlan(tiling=(), parallel_items=1)
    slots, band_rows, padded_w, buffer_pixels, slot_size, tables, band_pixels, items = _tiling(g, threads)
    # A line more, to move the buffers onto cache lines of memory.
    scratch = whole_lines(tables + _table_elements(g, band_pixels)) + LINE + slots * slot_size
    lanes = g.batch * _padded_channels(g)
    bands = ceil_div(g.out_height, band_rows)
    computed = lanes * g.out_height * ceil_div(g.out_width, DEPTHWISE_PIXELS) * DEPTHWISE_PIXELS
    moved = lanes * (bands * band_pixels + g.out_height * g.out_width) + slots * buffer_pixels * VL
    flops = round(2 * computed * _tap_rows(g) * DEPTHWISE_BLOCKED_FLOP_COST)
    return KernelPlan(tiling=(slots, band_rows, padded_w, buffer_pixels, slot_size, tables, band_pixels),
                      scratch_elements=scratch,
                      moved_elements=moved, vector_flops=flops, parallel_items=items, serial=slots == 1)


#: :func:`_depthwise_blocked` on one slot, outside any parallel region (the
#: plan's ``serial``).  Against the prange on one thread, medians of
#: ``perf/interleaved_ab.py``, Intel Xeon kind, MobileNet's depthwise layers
#: through ``Conv2d`` layers: batch 1 1.01-1.20x faster (dw7-dw11 on 14x14
#: 1.18-1.20x, dw13 on 7x7 1.15x), batch 8 1.01-1.08x.
_depthwise_blocked_serial = serial_twin(_depthwise_blocked, "_depthwise_blocked_serial")


def _compute(x, weights, bias, out, scratch, g, kernel):
    if g.batch == 0:
        return
    conv = _depthwise_blocked_serial if kernel.serial else _depthwise_blocked
    conv(x, weights, bias, out, scratch, kernel_geometry(g), *kernel.tiling)


def _packed_elements(g) -> int:
    return _tap_rows(g) * _padded_channels(g)


def _pack_weights(weight, g, dest):
    _pack(weight, dest, kernel_geometry(g))


def _unsupported(g):
    if g.channels_per_group != 1:
        return (f"{g.channels_per_group} input channels per group (depthwise-blocked needs groups == C: "
                f"one input channel per group)")
    if g.out_channels_per_group != 1:
        return (f"channel multiplier {g.out_channels_per_group} (depthwise-blocked needs one output channel "
                f"per group; 'depthwise' takes multipliers)")
    return None


register(Algorithm(
    name="depthwise-blocked",
    family="depthwise",
    calls_blas=False,
    summary=f"Depthwise convolution on {VL}-channel blocks transposed to pixel vectors in registers: "
            f"one FMA per tap and {VL} channels, any stride without de-interleaving; NCHW.",
    workspace_formula=f"bias + index tables (H·W) + threads·{VL}·((H + padding)·(W + padding) + Ho·Wo)",
    unsupported=_unsupported,
    packed_weight_elements=_packed_elements,
    pack_weights=_pack_weights,
    pack_launches=0,  # a serial copy of kh*kw*C floats
    plan_kernel=_plan,
    compute=_compute,
    claims="groups == C with one output channel per group (multiplier 1), any kernel, stride, padding, dilation",
))
