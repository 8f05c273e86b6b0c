"""depthwise, depthwise-nhwc: a dedicated kernel for depthwise convolution.

Depthwise (and channel-multiplier) layers have one input channel per group, so
each output channel is a small stencil over one input plane: ``kh*kw``
multiply-adds per output, no reduction over channels.  GEMM-based families
then multiply thin matrices and the register-tiled micro-kernel idles most of
its lanes; this family vectorises the stencil itself, in plain Numba loops that
LLVM vectorises (no fastmath: NaN and inf propagate as in a direct sum).

Supported: ``groups == C`` (one input channel per group) with any channel
multiplier ``M/g >= 1``, any kernel size, stride, (asymmetric) padding,
dilation and batch.  Output channel ``m`` reads input channel ``m // (M/g)``.

NCHW (``depthwise``): vectorised along the output width
---------------------------------------------------------
(With one output channel per group, ``depthwise-blocked`` in
:mod:`.depthwise_blocked` moves blocks of channels into the vector lanes
instead, which avoids this kernel's per-plane costs on small planes; the
scheduler prices both.)

Every output element is ``bias + sum over taps of w[tap] * input``, computed
by *runs*: one loop over ``n`` consecutive outputs of a plane in which each
tap reads its source at ``offset(tap) + q``, i.e. with unit stride.  A run
fuses a block of 3 kernel columns x 3 kernel rows (nine taps, ``_run33``) or
one column of 3 rows (``_run13``) and adds the bias in the store; later blocks
of a larger kernel add into the output.  Taps a block does not have (kernel
rows beyond ``kh``) or that read outside the image are *zero taps*: they read
zeros from scratch with weight 0.

Horizontal borders are masks, not bounds checks: each kernel column ``j`` has
a precomputed 0/1 mask over the output columns (1 where its input column is
inside the image), and a run keeps or drops each column's partial sum with a
select.  So a dropped tap contributes exactly nothing, even when the value it
read (a neighbouring row's edge, a buffer's unwritten tail) is inf or NaN.

Stride: the input rows a band needs are split into ``sh x sw`` *phase planes*
(plane ``(r, p)`` holds input rows ``sh*k + r`` and columns ``sw*k + p``), so
tap ``(i, j)`` of output ``(yo, xo)`` is element ``(yo + a_i, xo + e_j)`` of
plane ``(r_i, p_j)``, where ``i*dh - pad_top = sh*a_i + r_i`` and ``j*dw -
pad_left = sw*e_j + p_j``: unit stride in ``xo``, no strided loads.  For
stride 2 and an even width, rows are de-interleaved by reading float pairs as
64-bit words (even columns are the low halves; strided float loads gather).
Then two modes:

* *flat* (whenever every tap a valid output reads lies within the first
  ``out_width`` elements of its plane row: stride 1 with "same"-like
  padding, MobileNet's stride 2 with padding 1...): the planes get a row
  pitch of ``out_width``, so consecutive output rows are consecutive in both
  source and output and ONE run covers a whole band of rows (long vectors even
  on 7x7 planes).  Rows outside the image are zero rows (vertical padding
  enters as ``0 * w``, as in the zero-padded definition; with finite weights
  that equals skipping the tap).  At stride 1 with output rows as wide as the
  input's, bands away from the top and bottom are read in place, uncopied.
  The commonest case, 3x3 with stride 1 and padding 1 (MobileNet's stride-1
  layers), has its own fill and run (``_fill_same33``, ``_run_same33``): on
  7x7 and 14x14 planes the general code's setup cost as much as the run.
* *rows* (anything else, e.g. "valid" padding): each output row is one run
  over plane rows of their own pitch; rows outside the image are zero taps.
  A row's run is rounded up to whole vectors (``VL``) when the extra outputs
  land on later rows of the same band, which are written afterwards.

NHWC (``depthwise-nhwc``): vectorised along the channels
---------------------------------------------------------
The input rows a band needs are copied into a per-thread buffer, padded left
and right with zero pixels (so no tap ever falls outside horizontally) and
split into ``sw`` column phases (consecutive outputs read consecutive pixels);
rows outside the image and missing taps of a 3x3 block read a zero row with
zero weights.  The weights are packed once as ``(tap, multiplier, C)`` plus a
zero row (the only packed data).  Then:

* with many channels (or a multiplier > 1), one loop over the channels
  computes two output pixels (``_px2``), each weight vector loaded once for
  both (a channel multiplier takes a strided single-pixel loop, ``_px1``);
* with few channels (``C <= DEPTHWISE_NHWC_RUN / 2``), a run covers several
  pixels' channels at once (``_vrun9``, two such runs per weight load with
  ``_vrun9x2``), the weights and bias repeated for every pixel of the run (in
  shared scratch), so the per-loop cost is paid per run, not per pixel pair.

Multiples of 512 channels get one spare cache line per pixel and tap
(``pixel_stride``): otherwise every input and weight stream of a run maps to
the same L1 sets.

Workspace
---------
Zeros and column masks (NCHW) or a zero row and the repeated weights (NHWC),
shared by all threads, plus one buffer per thread for its band's input rows,
cache-line aligned.  Bands hold ``DEPTHWISE_BAND_OUTPUTS`` outputs (NCHW) or
``DEPTHWISE_NHWC_BAND_ELEMENTS`` (NHWC), so a buffer stays in L1/L2 whatever
the image size.  Stated exactly by the plan's ``scratch_elements``.  Inputs
are never modified.

Threads
-------
Items are (image x channel) planes cut into bands of output rows (NCHW) or
images cut into bands (NHWC); how many bands a plane needs for balance comes
from :func:`lowmem_numba._split.split_work` (the cache limit may cut more).
Each thread takes one contiguous share of the items (a slot) and owns one
buffer.

Cost model
----------
The plan states the runs' arithmetic as ``vector_flops`` (zero taps and
rounded runs included, plus the fixed cost of each run and copy loop as
flops, ``DEPTHWISE_RUN_FLOPS``, ``DEPTHWISE_ROW_FLOPS``), priced at the
calibrated rate of vectorised loops, and the buffer copies as moved elements.
"""

from __future__ import annotations

import numpy as np
from numba import prange, uint32

from .._compile import NONNEG, njit  # numba.njit whose cache=True never fails (see _compile)
from .._microkernel import VL
from .._plan import KernelPlan
from .._registry import Algorithm, register
from .._split import split_work
from .._tuning import (DEPTHWISE_BAND_OUTPUTS, DEPTHWISE_NHWC_BAND_ELEMENTS, DEPTHWISE_NHWC_CHANNEL_BLOCK,
                       DEPTHWISE_NHWC_RUN, DEPTHWISE_ROW_FLOPS, DEPTHWISE_RUN_FLOPS)
from ._common import KernelGeometry, LINE, ceil_div, kernel_geometry, whole_lines, zero_run


#: Pixels per NHWC run (each weight vector is loaded once for them; see _px2).
_PIXELS = 2


# ----------------------------------------------------------------- runs (NCHW)
#
# The helpers are inlined into the kernels (``inline="always"``): a call of a
# compiled function with array arguments costs reference-count updates of
# each array, atomic operations that cost more than a short run itself (see
# lowmem_numba._compile).

@njit(cache=True, nogil=True, inline="always")
def _run33(src, o, v, mk, mo, out, at, n, b, add):
    """``out[at + q] (= b +) or (+=) sum_c sel_c(sum_r v[3c+r] * src[o[3c+r] + q])`` for ``q < n``.

    Three kernel columns ``c`` of three taps each; column ``c``'s partial sum
    counts only where ``mk[mo[c] + q] != 0``.
    """
    o0 = o[0] & NONNEG
    o1 = o[1] & NONNEG
    o2 = o[2] & NONNEG
    o3 = o[3] & NONNEG
    o4 = o[4] & NONNEG
    o5 = o[5] & NONNEG
    o6 = o[6] & NONNEG
    o7 = o[7] & NONNEG
    o8 = o[8] & NONNEG
    v0, v1, v2, v3, v4, v5, v6, v7, v8 = v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]
    m0 = mo[0] & NONNEG
    m1 = mo[1] & NONNEG
    m2 = mo[2] & NONNEG
    d = at & NONNEG
    z = np.float32(0.0)
    if add:
        for q in range(n):
            c0 = v0 * src[o0 + q] + v1 * src[o1 + q] + v2 * src[o2 + q]
            c1 = v3 * src[o3 + q] + v4 * src[o4 + q] + v5 * src[o5 + q]
            c2 = v6 * src[o6 + q] + v7 * src[o7 + q] + v8 * src[o8 + q]
            out[d + q] += ((c0 if mk[m0 + q] != z else z) + (c1 if mk[m1 + q] != z else z)
                           + (c2 if mk[m2 + q] != z else z))
    else:
        for q in range(n):
            c0 = v0 * src[o0 + q] + v1 * src[o1 + q] + v2 * src[o2 + q]
            c1 = v3 * src[o3 + q] + v4 * src[o4 + q] + v5 * src[o5 + q]
            c2 = v6 * src[o6 + q] + v7 * src[o7 + q] + v8 * src[o8 + q]
            out[d + q] = (b + (c0 if mk[m0 + q] != z else z) + (c1 if mk[m1 + q] != z else z)
                          + (c2 if mk[m2 + q] != z else z))


@njit(cache=True, nogil=True, inline="always")
def _run13(src, o, v, mk, m0, out, at, n, b, add):
    """As :func:`_run33` for one kernel column of three taps (``o[:3]``, ``v[:3]``)."""
    o0 = o[0] & NONNEG
    o1 = o[1] & NONNEG
    o2 = o[2] & NONNEG
    v0, v1, v2 = v[0], v[1], v[2]
    mm = m0 & NONNEG
    d = at & NONNEG
    z = np.float32(0.0)
    if add:
        for q in range(n):
            c0 = v0 * src[o0 + q] + v1 * src[o1 + q] + v2 * src[o2 + q]
            out[d + q] += c0 if mk[mm + q] != z else z
    else:
        for q in range(n):
            c0 = v0 * src[o0 + q] + v1 * src[o1 + q] + v2 * src[o2 + q]
            out[d + q] = b + (c0 if mk[mm + q] != z else z)


@njit(cache=True, nogil=True, inline="always")
def _run_same33(src, o, pitch, mk, m0, m2, w, wb, out, at, n, b):
    """The one run of a 3x3, stride-1, padding-1 output channel: ``out[at + q] =
    b + sum_j sel_j(sum_i w[wb + 3i + j] * src[o + i*pitch + j + q])``, where
    only the outer columns need masks (``mk[m0 + q]``, ``mk[m2 + q]``).  Nine
    fixed offsets and weights in registers instead of :func:`_runs`'s tap
    arrays; with :func:`_fill_same33` it takes MobileNet's dw13 (7x7 planes,
    batch 8, one thread) from 77 to 45-60 ns per plane (noisy machine)."""
    o0 = o & NONNEG
    o1 = (o + 1) & NONNEG
    o2 = (o + 2) & NONNEG
    o3 = (o + pitch) & NONNEG
    o4 = (o + pitch + 1) & NONNEG
    o5 = (o + pitch + 2) & NONNEG
    o6 = (o + 2 * pitch) & NONNEG
    o7 = (o + 2 * pitch + 1) & NONNEG
    o8 = (o + 2 * pitch + 2) & NONNEG
    v0, v1, v2 = w[wb], w[wb + 1], w[wb + 2]
    v3, v4, v5 = w[wb + 3], w[wb + 4], w[wb + 5]
    v6, v7, v8 = w[wb + 6], w[wb + 7], w[wb + 8]
    ma = m0 & NONNEG
    mc = m2 & NONNEG
    d = at & NONNEG
    z = np.float32(0.0)
    for q in range(n):
        c0 = v0 * src[o0 + q] + v3 * src[o3 + q] + v6 * src[o6 + q]
        c1 = v1 * src[o1 + q] + v4 * src[o4 + q] + v7 * src[o7 + q]
        c2 = v2 * src[o2 + q] + v5 * src[o5 + q] + v8 * src[o8 + q]
        out[d + q] = b + (c0 if mk[ma + q] != z else z) + c1 + (c2 if mk[mc + q] != z else z)


@njit(cache=True, nogil=True, inline="always")
def _tap_slot(o, v, k, toff, w, wbase, t, present):
    """Slot ``k`` of a run: tap ``t``'s offset and weight, or a zero tap (reading
    ``src[q]`` with weight 0) when the block has no such kernel row or the
    tap reads outside the image."""
    if present and toff[t] >= 0:
        o[k] = toff[t]
        v[k] = w[wbase + t]
    else:
        o[k] = 0
        v[k] = 0.0


@njit(cache=True, nogil=True, inline="always")
def _runs(src, toff, mcol, mk, w, wbase, KH, KW, o, v, mo, out, at, n, b):
    """Every tap of one output channel over one run, in blocks of 3x3 and 3x1 taps.

    Tap ``t = i*kw + j`` reads ``src[toff[t] + q]``; ``toff[t] < 0`` marks a
    zero tap (outside the image, or beyond ``kh`` in a block), which reads
    ``src[q]`` (zeros) with weight 0.  Column ``j``'s mask is at ``mk[mcol[j]]``.
    """
    first = True
    full = KW - KW % 3
    for i0 in range(0, KH, 3):
        for j0 in range(0, full, 3):
            for cc in range(3):
                j = j0 + cc
                mo[cc] = mcol[j]
                for rr in range(3):
                    _tap_slot(o, v, cc * 3 + rr, toff, w, wbase, (i0 + rr) * KW + j, i0 + rr < KH)
            _run33(src, o, v, mk, mo, out, at, n, b, not first)
            first = False
        for j in range(full, KW):
            for rr in range(3):
                _tap_slot(o, v, rr, toff, w, wbase, (i0 + rr) * KW + j, i0 + rr < KH)
            _run13(src, o, v, mk, mcol[j], out, at, n, b, not first)
            first = False


# ----------------------------------------------------------------- copies

@njit(cache=True, nogil=True, inline="always")
def _copy(src, s, dst, d, n):
    a = s & NONNEG
    e = d & NONNEG
    for k in range(n):
        dst[e + k] = src[a + k]


@njit(cache=True, nogil=True, inline="always")
def _deinterleave2(pairs, p, bits, d0, d1, n):
    """``bits[d0 + k]``, ``bits[d1 + k]`` = the low and high float of 64-bit word
    ``pairs[p + k]``: even and odd columns, read by whole words (a vector of
    words splits into two vectors with shifts and truncations, where strided
    float loads would gather)."""
    a = p & NONNEG
    e0 = d0 & NONNEG
    e1 = d1 & NONNEG
    for k in range(n):
        word = pairs[a + k]
        bits[e0 + k] = uint32(word & 0xFFFFFFFF)
        bits[e1 + k] = uint32(word >> 32)


@njit(cache=True, nogil=True, inline="always")
def _gather(src, s, step, dst, d, n):
    a = s & NONNEG
    e = d & NONNEG
    for k in range(n):
        dst[e + k] = src[a + step * k]


# ----------------------------------------------------------------- NCHW kernel

@njit(cache=True, nogil=True)
def _masks(scratch, d, flat, mask_len):
    """Zeros, then one 0/1 mask per kernel column, at the start of scratch.

    Mask ``j`` at output position ``q`` (column ``q mod WO`` in flat mode, ``q``
    in rows mode) is 1 where kernel column ``j`` reads inside the image."""
    W, WO, SW, DW, PL = d.width, d.out_width, d.stride_w, d.dilation_w, d.pad_left
    period = WO if flat else mask_len
    zero_run(scratch, 0, mask_len)
    for j in range(d.kernel_w):
        s = j * DW - PL
        at = (1 + j) * mask_len
        for xo in range(min(period, mask_len)):
            col = SW * xo + s
            scratch[at + xo] = 1.0 if 0 <= col < W else 0.0
        # Flat runs span whole rows: repeat the first row's pattern.
        for q in range(period, mask_len):
            scratch[at + q] = scratch[at + q - period]


@njit(cache=True, nogil=True, inline="always")
def _fill_same33(x, xp, scratch, dst, y0, y1, H, W):
    """:func:`_fill_phases` for stride 1 and padding 1 (pitch W): buffer row
    ``t`` at ``dst + t*W`` = input row ``y0 - 1 + t`` of the plane at ``xp``,
    zero outside the image, plus the zero after the last row that the
    bottom-right tap of the last output reads (masked): three plain loops,
    where the general routine's phase and stride logic cost about as much
    as the run itself on 7x7 planes."""
    rows = y1 - y0 + 2
    t0 = 1 if y0 == 0 else 0
    t1 = min(rows, H - y0 + 1)
    top = dst & NONNEG
    for k in range(t0 * W):
        scratch[top + k] = 0.0
    src = (xp + (y0 - 1 + t0) * W) & NONNEG
    middle = (dst + t0 * W) & NONNEG
    for k in range((t1 - t0) * W):
        scratch[middle + k] = x[src + k]
    bottom = (dst + t1 * W) & NONNEG
    for k in range((rows - t1) * W + 1):
        scratch[bottom + k] = 0.0


@njit(cache=True, nogil=True, inline="always")
def _fill_phases(x, pairs, xp, scratch, bits, base, d, y_first, rows, phase_size, lead, pitch):
    """Buffer rows ``t < rows`` of every (row phase r, column phase p) plane:
    ``Q[r, p][t][k] = x[sh*(y_first + t) + r][sw*k + p]`` for ``k < pitch`` (as
    far as the input row goes), zero rows outside the image.

    A stride-2 row is de-interleaved in whole vectors (``VL // 2`` words): the
    extra elements land on the next buffer row, written afterwards (the zero
    rows last of all), or in the plane's tail, which holds ``VL`` elements.
    """
    H, W, SH, SW = d.height, d.width, d.stride_h, d.stride_w
    half = VL // 2
    for r in range(SH):
        y0 = SH * y_first + r   # input row of buffer row 0
        t0 = min(rows, max(0, (-y0 + SH - 1) // SH))
        t1 = min(rows, max(t0, (H - y0 + SH - 1) // SH))
        if t1 > t0:
            if SW == 1:
                plane = base + r * phase_size + lead
                if SH == 1 and W == pitch:
                    _copy(x, xp + (y0 + t0) * W, scratch, plane + t0 * pitch, (t1 - t0) * W)
                else:
                    for t in range(t0, t1):
                        _copy(x, xp + (y0 + SH * t) * W, scratch, plane + t * pitch, min(W, pitch))
            elif SW == 2 and W % 2 == 0:
                plane = base + r * 2 * phase_size + lead
                count = min(W >> 1, pitch)
                whole = (count + half - 1) // half * half
                for t in range(t0, t1):
                    word = (xp + (y0 + SH * t) * W) >> 1
                    n = whole if word + whole <= pairs.size else count
                    _deinterleave2(pairs, word, bits, plane + t * pitch, plane + phase_size + t * pitch, n)
            else:
                for p in range(SW):
                    plane = base + (r * SW + p) * phase_size + lead
                    count = min((W - p + SW - 1) // SW, pitch)
                    for t in range(t0, t1):
                        _gather(x, xp + (y0 + SH * t) * W + p, SW, scratch, plane + t * pitch, count)
        for p in range(SW):
            plane = base + (r * SW + p) * phase_size + lead
            zero_run(scratch, plane, t0 * pitch)
            zero_run(scratch, plane + t1 * pitch, (rows - t1) * pitch)


@njit(parallel=True, cache=True)
def _depthwise_nchw(x, w, bias, out, scratch, geometry, flat, band_rows, slots, run, mask_len, slot_size,
                    lead, phase_size, row_len):
    d = KernelGeometry(*geometry)
    C, H, W, M = d.in_channels, d.height, d.width, d.out_channels
    KH, KW, HO, WO = d.kernel_h, d.kernel_w, d.out_height, d.out_width
    SH, SW, DH, DW, PT, PL = d.stride_h, d.stride_w, d.dilation_h, d.dilation_w, d.pad_top, d.pad_left
    mult = d.out_channels_per_group
    taps = d.kernel_taps
    span_h = (KH - 1) * DH + 1
    plane_in = H * W
    plane_out = HO * WO
    _masks(scratch, d, flat, mask_len)
    shared = (1 + KW) * mask_len
    bands = (HO + band_rows - 1) // band_rows
    items = d.batch * C * bands
    has_bias = bias.size > 0
    # 3x3, stride 1, padding 1 on every side: MobileNet's stride-1 layers
    # (output as wide as the input, so flat, and only the outer columns masked).
    same33 = (flat and KH == 3 and KW == 3 and SH == 1 and SW == 1 and DH == 1 and DW == 1 and PT == 1
              and PL == 1 and d.pad_bottom == 1 and d.pad_right == 1)
    # Float pairs of the input as 64-bit words, for the stride-2 de-interleave.
    pairs = x[:x.size // 2 * 2].view(np.uint64)
    bits = scratch.view(np.uint32)
    # Tap (i, j) = input row sh*(yo + a_i) + r_i, column sw*(xo + e_j) + p_j.
    amin = (-PT) // SH
    amax = ((KH - 1) * DH - PT) // SH
    rel = np.empty(taps, np.int64)   # flat: tap offsets in a slot's buffer
    colrel = np.empty(KW, np.int64)  # rows: column offsets in a buffer row
    mcol = np.empty(KW, np.int64)
    for j in range(KW):
        s = j * DW - PL
        mcol[j] = (1 + j) * mask_len
        e = s // SW
        lo = min(WO, max(0, -e))
        hi = min(WO, max(lo, (W - 1 - s) // SW + 1))
        # Columns no output reads are zero taps (they might point far away).
        colrel[j] = (s - e * SW) * phase_size + e if hi > lo else -(1 << 62)
        for i in range(KH):
            a = (i * DH - PT) // SH
            r = i * DH - PT - a * SH
            rel[i * KW + j] = ((r * SW + s - e * SW) * phase_size + lead + (a - amin) * WO + e
                               if hi > lo else -1)
    for slot in prange(slots):
        base = shared + slot * slot_size
        toff = np.empty(taps, np.int64)
        o = np.empty(9, np.int64)
        v = np.empty(9, np.float32)
        mo = np.empty(3, np.int64)
        for item in range(slot * items // slots, (slot + 1) * items // slots):
            band = item % bands
            nc = item // bands
            c = nc % C
            n = nc // C
            y0 = band * band_rows
            y1 = min(HO, y0 + band_rows)
            xp = nc * plane_in
            if flat:
                r_lo = y0 - PT
                r_hi = y1 - 1 - PT + span_h
                # In place: stride 1, output rows as wide as input rows, the
                # band's rows inside the image, every read inside x, and no
                # zero taps (those read zeros from scratch).
                inside = (SH == 1 and SW == 1 and W == WO and r_lo >= 0 and r_hi <= H and KH % 3 == 0
                          and xp + r_lo * W - PL >= 0 and xp + r_hi * W + d.pad_right <= x.size)
                if same33 and not inside:
                    _fill_same33(x, xp, scratch, base + lead, y0, y1, H, W)
                elif not inside:
                    _fill_phases(x, pairs, xp, scratch, bits, base, d, y0 + amin, y1 - y0 + amax - amin,
                                 phase_size, lead, WO)
                count = (y1 - y0) * WO
                # One call site per helper, whichever array the taps read: each
                # inlined copy of a run helper is compile time (LLVM's).
                src = x if inside else scratch
                if same33:
                    # Tap (0, 0) of the band's first output: input row y0 - 1,
                    # column -1, in place or in the buffer (row 0 = y0 - 1).
                    first = xp + r_lo * W - 1 if inside else base + lead - 1
                    for k in range(mult):
                        m = c * mult + k
                        b = bias[m] if has_bias else np.float32(0.0)
                        at = (n * M + m) * plane_out + y0 * WO
                        _run_same33(src, first, W, scratch, mask_len, 3 * mask_len, w, m * 9, out, at, count, b)
                    continue
                if inside:
                    for i in range(KH):
                        for j in range(KW):
                            toff[i * KW + j] = xp + (r_lo + i * DH) * W + j * DW - PL
                else:
                    for t in range(taps):
                        toff[t] = base + rel[t] if rel[t] >= 0 else -1
                for k in range(mult):
                    m = c * mult + k
                    b = bias[m] if has_bias else np.float32(0.0)
                    at = (n * M + m) * plane_out + y0 * WO
                    _runs(src, toff, mcol, scratch, w, m * taps, KH, KW, o, v, mo, out, at, count, b)
            else:
                # Input rows [a, e) of the band, each split into its sw column
                # phases; one run per output row.
                a = min(max(y0 * SH - PT, 0), H)
                e = max(a, min((y1 - 1) * SH - PT + span_h, H))
                rows = e - a
                if SW == 1:
                    _copy(x, xp + a * W, scratch, base + lead, rows * W)
                elif SW == 2 and W % 2 == 0:
                    _deinterleave2(pairs, (xp + a * W) >> 1, bits, base + lead, base + phase_size + lead,
                                   rows * row_len)
                else:
                    for p in range(SW):
                        cnt = (W - p + SW - 1) // SW
                        for r in range(rows):
                            _gather(x, xp + (a + r) * W + p, SW, scratch,
                                    base + p * phase_size + lead + r * row_len, cnt)
                for yo in range(y0, y1):
                    for i in range(KH):
                        r = yo * SH + i * DH - PT
                        for j in range(KW):
                            toff[i * KW + j] = (base + lead + (r - a) * row_len + colrel[j]
                                                if 0 <= r < H and colrel[j] > -(1 << 61) else -1)
                    # Round the run up to whole vectors when the extra outputs
                    # fall on rows of this band that are written later.
                    count = run if yo * WO + run <= y1 * WO else WO
                    for k in range(mult):
                        m = c * mult + k
                        b = bias[m] if has_bias else np.float32(0.0)
                        _runs(scratch, toff, mcol, scratch, w, m * taps, KH, KW, o, v, mo, out,
                              (n * M + m) * plane_out + yo * WO, count, b)


# ----------------------------------------------------------------- NHWC kernel

@njit(cache=True, nogil=True, inline="always")
def _grid9(r, c, j0):
    """The nine offsets ``r[i] + c[j0 + j]`` (rows ``i``, columns ``j`` < 3) of one
    pixel's taps, row by row, through ``NONNEG`` (see :func:`_px2`)."""
    r0, r1, r2 = r[0], r[1], r[2]
    c0, c1, c2 = c[j0], c[j0 + 1], c[j0 + 2]
    return ((r0 + c0) & NONNEG, (r0 + c1) & NONNEG, (r0 + c2) & NONNEG,
            (r1 + c0) & NONNEG, (r1 + c1) & NONNEG, (r1 + c2) & NONNEG,
            (r2 + c0) & NONNEG, (r2 + c1) & NONNEG, (r2 + c2) & NONNEG)


@njit(cache=True, nogil=True, inline="always")
def _nine(o, shift):
    """``o[k] + shift`` for ``k < 9``, through ``NONNEG``."""
    return ((o[0] + shift) & NONNEG, (o[1] + shift) & NONNEG, (o[2] + shift) & NONNEG,
            (o[3] + shift) & NONNEG, (o[4] + shift) & NONNEG, (o[5] + shift) & NONNEG,
            (o[6] + shift) & NONNEG, (o[7] + shift) & NONNEG, (o[8] + shift) & NONNEG)


@njit(cache=True, nogil=True, inline="always")
def _tap9(wp, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, a0, a1, a2, a3, a4, a5, a6, a7, a8, ch):
    """Nine taps of one pixel at channel ``ch``: ``sum_t wp[w_t + ch] * src[a_t + ch]``."""
    return (wp[w0 + ch] * src[a0 + ch] + wp[w1 + ch] * src[a1 + ch] + wp[w2 + ch] * src[a2 + ch]
            + wp[w3 + ch] * src[a3 + ch] + wp[w4 + ch] * src[a4 + ch] + wp[w5 + ch] * src[a5 + ch]
            + wp[w6 + ch] * src[a6 + ch] + wp[w7 + ch] * src[a7 + ch] + wp[w8 + ch] * src[a8 + ch])


@njit(cache=True, nogil=True, inline="always")
def _px2(src, r, c, wp, wo, base, bo, out, oo, n, add):
    """Two output pixels over ``n`` channels, nine taps (3 rows x 3 columns).

    Pixel ``p`` tap ``(i, j)`` reads ``src[r[i] + c[3p + j] + ch]`` with weight
    ``wp[wo[3i + j] + ch]``; the result goes to ``out[oo[p] + ch]``, set to
    ``base[bo + ch] +`` the taps (the bias, or zeros), or added to with ``add``.
    Two, not four: LLVM vectorises a loop only while the runtime checks that
    its stores overlap none of its loads stay under 128, and four pixels'
    stores against their 36 input and 9 weight streams need 180.
    """
    a0, a1, a2, a3, a4, a5, a6, a7, a8 = _grid9(r, c, 0)
    b0, b1, b2, b3, b4, b5, b6, b7, b8 = _grid9(r, c, 3)
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = _nine(wo, 0)
    p0, p1 = oo[0] & NONNEG, oo[1] & NONNEG
    bb = bo & NONNEG
    if add:
        for ch in range(n):
            out[p0 + ch] += _tap9(wp, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, a0, a1, a2, a3, a4, a5, a6, a7,
                                  a8, ch)
            out[p1 + ch] += _tap9(wp, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, b0, b1, b2, b3, b4, b5, b6, b7,
                                  b8, ch)
    else:
        for ch in range(n):
            bv = base[bb + ch]
            out[p0 + ch] = bv + _tap9(wp, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, a0, a1, a2, a3, a4, a5, a6,
                                      a7, a8, ch)
            out[p1 + ch] = bv + _tap9(wp, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, b0, b1, b2, b3, b4, b5, b6,
                                      b7, b8, ch)


@njit(cache=True, nogil=True, inline="always")
def _px1(src, r, c, wp, wo, base, bo, bstep, out, oo, ostep, n, add):
    """One output pixel over ``n`` channels, nine taps, any output and bias step
    (``out[oo + ch*ostep]``, ``base[bo + ch*bstep]``); ``r``, ``c`` and ``wo``
    as in :func:`_px2` (pixel 0 only)."""
    a0, a1, a2, a3, a4, a5, a6, a7, a8 = _grid9(r, c, 0)
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = _nine(wo, 0)
    p0 = oo & NONNEG
    bb = bo & NONNEG
    if ostep == 1 and bstep == 1:  # one output channel per input channel: unit stride, vectorised
        if add:
            for ch in range(n):
                out[p0 + ch] += _tap9(wp, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, a0, a1, a2, a3, a4, a5, a6, a7,
                                      a8, ch)
        else:
            for ch in range(n):
                out[p0 + ch] = base[bb + ch] + _tap9(wp, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, a0, a1, a2, a3,
                                                     a4, a5, a6, a7, a8, ch)
    elif add:
        for ch in range(n):
            out[p0 + ch * ostep] += _tap9(wp, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, a0, a1, a2, a3, a4, a5,
                                          a6, a7, a8, ch)
    else:
        for ch in range(n):
            out[p0 + ch * ostep] = base[bb + ch * bstep] + _tap9(wp, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, a0,
                                                                 a1, a2, a3, a4, a5, a6, a7, a8, ch)


@njit(cache=True, nogil=True, inline="always")
def _vrun9(src, o, wr, wo, out, at, n, bo, add):
    """``out[at + f] (= wr[bo + f] +) or (+=) sum_k wr[wo[k] + f] * src[o[k] + f]`` for ``f < n``:
    nine taps with a weight per element (the NHWC row runs, weights repeated
    for every pixel of the run)."""
    o0, o1, o2, o3, o4, o5, o6, o7, o8 = _nine(o, 0)
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = _nine(wo, 0)
    d = at & NONNEG
    bb = bo & NONNEG
    if add:
        for f in range(n):
            out[d + f] += _tap9(wr, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, o0, o1, o2, o3, o4, o5, o6, o7, o8,
                                f)
    else:
        for f in range(n):
            out[d + f] = wr[bb + f] + _tap9(wr, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, o0, o1, o2, o3, o4, o5,
                                            o6, o7, o8, f)


@njit(cache=True, nogil=True, inline="always")
def _vrun9x2(src, o, step, wr, wo, out, at, ostep, n, bo, add):
    """:func:`_vrun9` for two runs at once, the second ``step`` further in
    ``src`` and ``ostep`` further in ``out``: each weight is loaded once for both."""
    o0, o1, o2, o3, o4, o5, o6, o7, o8 = _nine(o, 0)
    q0, q1, q2, q3, q4, q5, q6, q7, q8 = _nine(o, step)
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = _nine(wo, 0)
    d = at & NONNEG
    e = (at + ostep) & NONNEG
    bb = bo & NONNEG
    if add:
        for f in range(n):
            out[d + f] += _tap9(wr, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, o0, o1, o2, o3, o4, o5, o6, o7, o8,
                                f)
            out[e + f] += _tap9(wr, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, q0, q1, q2, q3, q4, q5, q6, q7, q8,
                                f)
    else:
        for f in range(n):
            b = wr[bb + f]
            out[d + f] = b + _tap9(wr, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, o0, o1, o2, o3, o4, o5, o6, o7,
                                   o8, f)
            out[e + f] = b + _tap9(wr, w0, w1, w2, w3, w4, w5, w6, w7, w8, src, q0, q1, q2, q3, q4, q5, q6, q7,
                                   q8, f)


@njit(parallel=True, cache=True)
def _depthwise_nhwc(x, wp, bias, out, scratch, geometry, band_rows, slots, padded_w, rows_cap, slot_size,
                    channel_block, px, run_px):
    d = KernelGeometry(*geometry)
    C, H, W, M = d.in_channels, d.height, d.width, d.out_channels
    KH, KW, HO, WO = d.kernel_h, d.kernel_w, d.out_height, d.out_width
    SH, SW, DH, DW, PT, PL = d.stride_h, d.stride_w, d.dilation_h, d.dilation_w, d.pad_top, d.pad_left
    mult = d.out_channels_per_group
    taps = d.kernel_taps
    span_h = (KH - 1) * DH + 1
    # A buffer row holds the padded input row split into SW column phases:
    # padded column X at pixel (X % SW) * kp + X // SW, each pixel px floats
    # (pixel_stride), so that a tap's columns for consecutive outputs are
    # consecutive pixels.  Pixels beyond the input are zero.
    kp = (padded_w + SW - 1) // SW
    row = SW * kp * px
    zero_row = 0                # scratch[:row] holds zeros (rows outside the image, zero taps)
    shared = (row + LINE - 1) // LINE * LINE
    zero_w = taps * mult * px   # wp[zero_w:zero_w + C] holds zeros (zero taps)
    last = padded_w - 1         # a zero pixel: the column of zero taps
    zero_px = ((last % SW) * kp + last // SW) * px
    bands = (HO + band_rows - 1) // band_rows
    items = d.batch * bands
    zero_run(scratch, 0, row)
    # The first block's store adds base[...]: the bias, or zeros (the zero row).
    has_bias = bias.size > 0
    base_b = bias if has_bias else scratch
    # Row runs (run_px pixels of one channel per group, px == C): the weights
    # and the bias repeated for every pixel of a run, then zeros.
    span = run_px * C
    rep = shared
    if run_px:
        for t in range(taps + 1):
            for p in range(run_px):
                for c in range(C):
                    scratch[rep + t * span + p * C + c] = wp[t * C + c] if t < taps else (
                        bias[c] if has_bias else np.float32(0.0))
        zero_run(scratch, rep + (taps + 1) * span, span)
        shared += (taps + 2) * span
    for slot in prange(slots):
        base = shared + slot * slot_size
        # The padding pixels of every buffer row stay zero.
        for rr in range(rows_cap):
            zero_run(scratch, base + rr * row, row)
        r = np.empty(3, np.int64)
        cpix = np.empty(3 * _PIXELS, np.int64)
        wo = np.empty(9, np.int64)
        oo = np.empty(_PIXELS, np.int64)
        o9 = np.empty(9, np.int64)
        rowoff = np.empty(KH, np.int64)
        for item in range(slot * items // slots, (slot + 1) * items // slots):
            band = item % bands
            n = item // bands
            y0 = band * band_rows
            y1 = min(HO, y0 + band_rows)
            a = min(max(y0 * SH - PT, 0), H)
            e = max(a, min((y1 - 1) * SH - PT + span_h, H))
            for rr in range(e - a):
                src_row = ((n * H + a + rr) * W) * C
                if px == C and SW == 1:
                    _copy(x, src_row, scratch, base + rr * row + PL * C, W * C)
                else:
                    for xx in range(W):
                        col = PL + xx
                        at = base + rr * row + ((col % SW) * kp + col // SW) * px
                        _copy(x, src_row + xx * C, scratch, at, C)
            for yo in range(y0, y1):
                for i in range(KH):
                    y = yo * SH + i * DH - PT
                    rowoff[i] = base + (y - a) * row if 0 <= y < H else -1
                o_row = (n * HO + yo) * WO
                if run_px:
                    # Row runs: run_px output pixels x C channels at once.
                    first = True
                    for i0 in range(0, KH, 3):
                        for j0 in range(0, KW, 3):
                            xo = 0
                            while xo < WO:
                                count = min(run_px, WO - xo) * C
                                double = xo + 2 * run_px <= WO  # two full runs: weights loaded once
                                for ii in range(3):
                                    i = i0 + ii
                                    ok_i = i < KH and rowoff[min(i, KH - 1)] >= 0
                                    for jj in range(3):
                                        j = j0 + jj
                                        if ok_i and j < KW:
                                            col = xo * SW + j * DW
                                            o9[ii * 3 + jj] = rowoff[i] + ((col % SW) * kp + col // SW) * px
                                            wo[ii * 3 + jj] = rep + (i * KW + j) * span
                                        else:
                                            o9[ii * 3 + jj] = zero_row
                                            wo[ii * 3 + jj] = rep + (taps + 1) * span
                                if double:
                                    # The second run's taps are run_px*SW input pixels on:
                                    # the same phase, run_px pixels further.  Zero taps
                                    # read the zero row, which is long enough for both.
                                    _vrun9x2(scratch, o9, run_px * px, scratch, wo, out, (o_row + xo) * M,
                                             run_px * M, count, rep + taps * span, not first)
                                    xo += 2 * run_px
                                else:
                                    _vrun9(scratch, o9, scratch, wo, out, (o_row + xo) * M, count,
                                           rep + taps * span, not first)
                                    xo += run_px
                            first = False
                    continue
                # Channels in blocks, so that a block's weights and input
                # columns stay in L1 while every pixel pair of the row uses them.
                for c0 in range(0, C, channel_block):
                    cn = min(channel_block, C - c0)
                    for k in range(mult):
                        first = True
                        for i0 in range(0, KH, 3):
                            for j0 in range(0, KW, 3):
                                # Taps of this 3x3 block: real, or zero row x zero weights.
                                for ii in range(3):
                                    i = i0 + ii
                                    ok_i = i < KH and rowoff[min(i, KH - 1)] >= 0
                                    r[ii] = (rowoff[i] if ok_i else zero_row) + c0
                                    for jj in range(3):
                                        j = j0 + jj
                                        if ok_i and j < KW:
                                            wo[ii * 3 + jj] = ((i * KW + j) * mult + k) * px + c0
                                        else:
                                            wo[ii * 3 + jj] = zero_w + c0
                                xo = 0
                                if mult == 1:
                                    while xo + _PIXELS <= WO:
                                        for p in range(_PIXELS):
                                            oo[p] = (o_row + xo + p) * M + c0
                                            for jj in range(3):
                                                j = j0 + jj
                                                col = (xo + p) * SW + j * DW
                                                cpix[3 * p + jj] = (((col % SW) * kp + col // SW) * px if j < KW
                                                                    else zero_px)
                                        _px2(scratch, r, cpix, wp, wo, base_b, c0 if has_bias else 0, out, oo, cn,
                                             not first)
                                        xo += _PIXELS
                                while xo < WO:
                                    for jj in range(3):
                                        j = j0 + jj
                                        col = xo * SW + j * DW
                                        cpix[jj] = ((col % SW) * kp + col // SW) * px if j < KW else zero_px
                                    # Without a bias, base_b is the zero row: any
                                    # step reads zeros, and step 1 keeps one
                                    # channel per group on the vectorised path.
                                    _px1(scratch, r, cpix, wp, wo, base_b, c0 * mult + k if has_bias else 0,
                                         mult if has_bias else 1, out, (o_row + xo) * M + c0 * mult + k, mult,
                                         cn, not first)
                                    xo += 1
                                first = False


@njit(parallel=True, cache=True)
def _pack_nhwc(w, wp, geometry, px):
    """Weights ``(M, 1, kh, kw)`` as ``wp[(tap*mult + k)*px + c] = w[(c*mult + k)*taps + tap]``,
    then ``px`` zeros (the zero taps' weights); the ``px - C`` floats after each
    run of ``C`` are zeros too (never read)."""
    d = KernelGeometry(*geometry)
    C = d.in_channels
    mult = d.out_channels_per_group
    taps = d.kernel_taps
    for t in prange(taps):
        for k in range(mult):
            for c in range(C):
                wp[(t * mult + k) * px + c] = w[(c * mult + k) * taps + t]
            for c in range(C, px):
                wp[(t * mult + k) * px + c] = 0.0
    for c in range(px):
        wp[taps * mult * px + c] = 0.0


# ----------------------------------------------------------------- plans

def _phase_columns(g):
    """Per kernel column: (first output column reading inside the image, end,
    e = floor(s / sw)); the column's tap reads element ``xo + e`` of its phase."""
    WO, SW = g.out_width, g.stride_w
    result = []
    for j in range(g.kernel_w):
        s = j * g.dilation_w - g.pad_left
        e = s // SW
        lo = min(WO, max(0, -e))
        hi = min(WO, max(lo, (g.width - 1 - s) // SW + 1))
        result.append((lo, hi, e))
    return result


def _bands(g, count, threads, band_limit):
    """Output rows per band: enough bands for ``split_work`` to balance
    ``count`` planes over the threads, and at most ``band_limit`` rows each."""
    split = split_work(count, g.out_height, 1, threads, min_rows=1, min_cols=1)
    return max(1, min(g.out_height, band_limit, ceil_div(g.out_height, split.row_blocks)))


def is_flat(g) -> bool:
    """Whether whole bands of output rows are one run: every tap read by a
    valid output falls within its buffer row of ``out_width`` elements (stride
    1 with 'same'-like padding, MobileNet's stride 2 with padding 1...)."""
    return all(hi + e <= g.out_width for lo, hi, e in _phase_columns(g) if hi > lo)


def _nchw_tiling(g, threads):
    """(flat, band_rows, slots, run, mask_len, slot_size, lead, phase_size, row_len, items)."""
    HO, WO, W = g.out_height, g.out_width, g.width
    flat = is_flat(g)
    band_rows = _bands(g, g.batch * g.in_channels, threads, max(1, DEPTHWISE_BAND_OUTPUTS // WO))
    items = g.batch * g.in_channels * ceil_div(HO, band_rows)
    slots = max(1, min(threads, items))
    span_h = (g.kernel_h - 1) * g.dilation_h + 1
    columns = [e for lo, hi, e in _phase_columns(g) if hi > lo]  # zero taps read nothing
    if flat:
        # Phase planes of pitch WO, one row per output row plus the kernel's
        # reach (amax - amin rows); reads reach e_min before a plane and
        # e_max after it (masked).
        amin = (-g.pad_top) // g.stride_h
        amax = ((g.kernel_h - 1) * g.dilation_h - g.pad_top) // g.stride_h
        lead = max([0] + [-e for e in columns])
        # A stride-2 row is de-interleaved in whole vectors: up to VL extra
        # elements after the last row.
        tail = max([0] + columns) + (VL if g.stride_w == 2 else 0)
        phase_size = lead + (band_rows + amax - amin) * WO + tail
        run = band_rows * WO
        return (flat, band_rows, slots, run, whole_lines(run), whole_lines(g.stride_h * g.stride_w * phase_size) + LINE,
                lead, phase_size, WO, items)
    run = ceil_div(WO, VL) * VL
    row_len = ceil_div(W, g.stride_w)
    lead = max([0] + [-e for e in columns])
    tail = max([0] + [run + e - row_len for e in columns])
    rows = min(g.height, (band_rows - 1) * g.stride_h + span_h)
    phase_size = lead + rows * row_len + tail
    return (flat, band_rows, slots, run, whole_lines(run), whole_lines(g.stride_w * phase_size) + LINE, lead, phase_size,
            row_len, items)


def _nchw_work(g, tiling):
    """(flops the runs do, elements copied into the buffers) for the cost model.

    Flops count every tap slot the runs compute: kernel rows in blocks of
    three (a block's missing rows are zero taps), and in rows mode each row's
    run rounded up to whole vectors (the last row of a band is exact, not
    discounted); plus the fixed cost of each run and of each row loop of the
    copies, as flops at the same rate (``DEPTHWISE_RUN_FLOPS``,
    ``DEPTHWISE_ROW_FLOPS``).  Copies: a flat band's phase planes (zero rows
    included) unless it is read in place; in rows mode every band's input rows.
    """
    flat, band_rows, slots, run, mask_len, slot_size, lead, phase_size, row_len, items = tiling
    HO, WO = g.out_height, g.out_width
    tap_slots = ceil_div(g.kernel_h, 3) * 3 * g.kernel_w
    blocks = ceil_div(g.kernel_h, 3) * (g.kernel_w // 3 + g.kernel_w % 3)
    planes_in = g.batch * g.in_channels
    mult = g.out_channels_per_group
    bands = ceil_div(HO, band_rows)
    span_h = (g.kernel_h - 1) * g.dilation_h + 1
    if flat:
        outputs = HO * WO
        if g.stride != (1, 1) or g.width != WO or g.kernel_h % 3:
            buffered = bands
        else:  # bands reaching into the top or bottom padding
            top = min(bands, ceil_div(g.pad_top, band_rows))  # bands with y0 < pad_top
            # bands with y1 > HO - pad_bottom
            bottom_start = max(0, (HO - g.pad_bottom) // band_rows) if g.pad_bottom else bands
            buffered = top + max(0, bands - max(bottom_start, top))
        rows = band_rows + ((g.kernel_h - 1) * g.dilation_h) // g.stride_h + 1
        copied = planes_in * buffered * g.stride_h * g.stride_w * (phase_size - lead)
        # One copy loop per buffered band, or one per input row when rows are split.
        row_loops = planes_in * buffered * (1 if g.stride == (1, 1) and g.width == WO else rows * g.stride_h)
        runs = planes_in * bands * mult * blocks
    else:
        outputs = HO * run
        rows = min(g.height, (band_rows - 1) * g.stride_h + span_h)
        copied = planes_in * bands * rows * g.width
        row_loops = planes_in * bands * (1 if g.stride_w <= 2 else rows * g.stride_w)
        runs = planes_in * HO * mult * blocks
    flops = (2 * g.batch * g.out_channels * outputs * tap_slots + runs * DEPTHWISE_RUN_FLOPS
             + row_loops * DEPTHWISE_ROW_FLOPS)
    return flops, copied


def _nchw_plan(g, threads):
    """The NCHW kernel's plan: its band tiling, its scratch and its arithmetic."""
    if g.batch == 0:
        return KernelPlan(tiling=(), parallel_items=1)
    tiling = _nchw_tiling(g, threads)
    flat, band_rows, slots, run, mask_len, slot_size = tiling[:6]
    flops, copied = _nchw_work(g, tiling)
    scratch = (1 + g.kernel_w) * mask_len + slots * slot_size
    return KernelPlan(tiling=tiling[:9], scratch_elements=scratch, moved_elements=copied,
                      vector_flops=flops, parallel_items=tiling[9])


def _nchw_compute(x, weights, bias, out, scratch, g, kernel):
    if g.batch == 0:
        return
    flat, band_rows, slots, run, mask_len, slot_size, lead, phase_size, row_len = kernel.tiling
    _depthwise_nchw(x, weights, bias, out, scratch, kernel_geometry(g), flat, band_rows, slots, run,
                    mask_len, slot_size, lead, phase_size, row_len)


def _nhwc_tiling(g, threads):
    """(band_rows, slots, padded_w, rows_cap, slot_size, run_px, items)."""
    C, SW = g.in_channels, g.stride_w
    # One zero pixel after the right padding: the column of zero taps.
    padded_w = g.width + g.pad_left + g.pad_right + 1
    row = SW * ceil_div(padded_w, SW) * pixel_stride(C)
    limit = max(1, DEPTHWISE_NHWC_BAND_ELEMENTS // max(1, g.out_width * g.out_channels))
    band_rows = _bands(g, g.batch, threads, limit)
    items = g.batch * ceil_div(g.out_height, band_rows)
    slots = max(1, min(threads, items))
    span_h = (g.kernel_h - 1) * g.dilation_h + 1
    rows_cap = min(g.height, (band_rows - 1) * g.stride_h + span_h)
    # Few channels: runs over several pixels' channels at once (one channel
    # per group, unpadded pixels), else pixel pairs over all channels.
    run_px = min(g.out_width, DEPTHWISE_NHWC_RUN // C)
    if g.out_channels_per_group != 1 or pixel_stride(C) != C or run_px < 2:
        run_px = 0
    return band_rows, slots, padded_w, rows_cap, whole_lines(rows_cap * row) + LINE, run_px, items


def _nhwc_plan(g, threads):
    """The NHWC kernel's plan: bands of output rows, one padded row buffer per thread."""
    if g.batch == 0:
        return KernelPlan(tiling=(), parallel_items=1)
    band_rows, slots, padded_w, rows_cap, slot_size, run_px, items = _nhwc_tiling(g, threads)
    row = g.stride_w * ceil_div(padded_w, g.stride_w) * pixel_stride(g.in_channels)
    repeated = (g.kernel_taps + 2) * run_px * g.in_channels
    tap_slots = ceil_div(g.kernel_h, 3) * 3 * ceil_div(g.kernel_w, 3) * 3  # 3x3 blocks, zero taps included
    bands = ceil_div(g.out_height, band_rows)
    copied = g.batch * bands * rows_cap * g.width * g.in_channels
    blocks = ceil_div(g.kernel_h, 3) * ceil_div(g.kernel_w, 3)
    per_row = ceil_div(g.out_width, 2 * run_px) if run_px else (
        (g.out_width // 2 + g.out_width % 2) * g.out_channels_per_group)
    runs = g.batch * g.out_height * per_row * blocks
    copies = g.batch * bands * rows_cap * (1 if g.stride_w == 1 and pixel_stride(g.in_channels) == g.in_channels
                                           else g.width)
    flops = (2 * g.batch * g.out_height * g.out_width * g.out_channels * tap_slots + runs * DEPTHWISE_RUN_FLOPS
             + copies * DEPTHWISE_ROW_FLOPS)
    return KernelPlan(tiling=(band_rows, slots, padded_w, rows_cap, slot_size, run_px),
                      scratch_elements=whole_lines(row) + repeated + slots * slot_size, moved_elements=copied,
                      vector_flops=flops, parallel_items=items)


def _nhwc_compute(x, weights, bias, out, scratch, g, kernel):
    if g.batch == 0:
        return
    band_rows, slots, padded_w, rows_cap, slot_size, run_px = kernel.tiling
    _depthwise_nhwc(x, weights, bias, out, scratch, kernel_geometry(g), band_rows, slots, padded_w,
                    rows_cap, slot_size, DEPTHWISE_NHWC_CHANNEL_BLOCK, pixel_stride(g.in_channels), run_px)


def _nhwc_packed_elements(g) -> int:
    """Weights as (tap, multiplier, channels padded to the pixel stride), then
    one zero row (zero taps)."""
    return (g.kernel_taps * g.out_channels_per_group + 1) * pixel_stride(g.in_channels)


def _nhwc_pack(weight, g, dest):
    _pack_nhwc(weight, dest, kernel_geometry(g), pixel_stride(g.in_channels))


def pixel_stride(channels: int) -> int:
    """Floats per pixel in the NHWC buffer and per tap in the packed weights.

    With a multiple of 512 channels, pixels (and taps) 2 or 4 KiB apart fall
    in one or two of the L1's 4 KiB-periodic set groups, and a run's 9 weight
    and 18 input streams thrashed its 8 ways (MobileNet's 7x7x1024 layer ran
    at 16 GFLOP/s, 24 with this); one extra cache line per pixel spreads them.
    Other counts spread over 4 groups or more (256 channels: 1 KiB apart)
    and are left dense, since the padding costs a copy per pixel.
    """
    return channels + LINE if channels % 512 == 0 else channels


def _unsupported(g):
    if g.channels_per_group != 1:
        return (f"{g.channels_per_group} input channels per group (depthwise needs groups == C: "
                f"one input channel per group)")
    return None


_CLAIMS = "groups == C (one input channel per group), any channel multiplier, kernel, stride, padding, dilation"

register(Algorithm(
    name="depthwise",
    family="depthwise",
    calls_blas=False,
    summary="Depthwise convolution vectorised along the output width, whole bands of rows per loop "
            "(masked borders, strides split into phase planes); NCHW.",
    workspace_formula="(1 + kw)·band + threads·sh·sw·(band rows + kernel span)·Wo (band ≈ 2048 outputs)",
    unsupported=_unsupported,
    packed_weight_elements=lambda g: 0,
    pack_weights=None,
    plan_kernel=_nchw_plan,
    compute=_nchw_compute,
    claims=_CLAIMS,
))

register(Algorithm(
    name="depthwise-nhwc",
    family="depthwise",
    calls_blas=False,
    summary="Depthwise convolution vectorised along the channels, two output pixels per weight load "
            "(several pixels per loop when channels are few), input rows zero-padded per thread; NHWC.",
    workspace_formula="(M·kh·kw + C) (packed weights) + (1 + threads·band rows)·(W + padding + 1)·C",
    unsupported=_unsupported,
    packed_weight_elements=_nhwc_packed_elements,
    pack_weights=_nhwc_pack,
    plan_kernel=_nhwc_plan,
    compute=_nhwc_compute,
    claims=_CLAIMS,
    input_layout="NHWC",
    output_layout="NHWC",
))
