"""pointwise-ukernel, direct-ukernel: convolution on an own register-tiled micro-kernel.

No GEMM library and no lowering: the micro-kernel of :mod:`lowmem_numba._microkernel`
keeps an ``MR x NR`` tile (``MR`` output pixels by ``NR`` output channels; 12 x 32
on AVX-512) in vector registers while it reduces over the input channels AND the
kernel taps, reading the input in place, and stores the tile once, bias added.
This is the batch-reduce GEMM structure of oneDNN's direct convolution.

Packing
-------
The weights ``(M, C/g, kh, kw)`` are packed once as
``[groups][ceil(M/g / NR)][kh][kw][C/g][NR]``, the ``NR`` output channels of a
block contiguous and zero-padded to ``NR``, so each reduction step is one
contiguous run of ``NV`` vector loads; ``VL x VL`` blocks of the weight rows are
transposed in registers (:func:`pack_lanes`).  That is the only workspace
(besides the few-channel copy below): persistent in a
:class:`~lowmem_numba.Conv2d`, per call in the functional API.  A functional
call whose parallel items' tiles span the batch (batch 1, or the images
stacked), run in one launch, and whose threads share the channel blocks (not
the tiles) packs inside the kernel instead: each parallel item packs one block at a time into
scratch of its own and runs all its tiles on it, so the packed weights are
never written to memory and read back, and the workspace is one block per
item (:func:`_plan_packing`).  The tile kernel's stack buffer for edge tiles
(``MR*NR`` floats) is not heap memory.

Borders
-------
The input is not padded (but see Layouts for small images).  Along each
output dimension the indices split into an interior run, where every tap is
inside the input, and the few border indices on either side, each with its
own clipped tap range (computed, never stored).  Their product cuts the output plane into rectangles with one tap
range each; each rectangle is walked in row-major order ``MR`` pixels at a time
(a tile may wrap onto the next row), so interior tiles run the full kernel and
the border costs a few tiles with fewer taps.  A remainder of at most
``MR - SMALL_MR`` pixels runs on ``SMALL_MR``-row tiles, and a channel block of
at most ``VL`` channels (M/g = 16, depthwise...) on half-width tiles; a last
block of exactly ``VL`` channels after a full one (M/g = 48, 112, 144...) runs
with that one on wide tiles of ``WIDE_MR`` rows by ``NR + VL`` channels
(:func:`channel_units`).  On
small planes (7x7, 14x14) the border is much of the plane and its short runs
waste most of a tile; at batch > 1 the images are then stacked
(:func:`_stacks`): each output row of a rectangle is walked over all the
images, so a border column of a batch of 8 is one tile of 8 pixels, each
reducing over its own taps.  Small planes of a 1x1 layer without stride or
padding are stacked as one row of ``H*W`` pixels per image
(:func:`_walked_geometry`), so that each weight block serves several images.

Limits
------
Lanes are output channels, so with few output channels per group (depthwise:
one) most lanes idle: such layers are correct but slow, and the cost model
prices the idle lanes so ``"auto"`` leaves them to other algorithms.  Every
offset is a 64-bit integer: no 32-bit BLAS limit applies.

Layouts
-------
Both kernels serve NCHW and NHWC by strides alone: one input scalar per pixel
per step is broadcast, so the channel step is ``H*W`` (NCHW) or 1 (NHWC) and
any stride or dilation is an offset.  NHWC output stores each pixel's channels
as vectors; NCHW output transposes the tile in registers first.  Each layout
is registered under its own name (``-nhwc`` suffix) so neither converts, with
one exception: with channels-last input, one group and dilation 1, a row of
taps is one contiguous run of ``kw*C`` values (as in the packed weights), and
the kernel folds its tap and channel loops into one; for NCHW layers of at
most ``UKERNEL_FOLD_CHANNELS`` input channels (RGB first layers, whose
3-step channel loop costs more than its work) the NCHW kernel therefore
copies each image channels-last first (``C*H*W`` floats of scratch per image),
and so does it with the whole batch when the images are stacked (see
Borders) and have many channels (``UKERNEL_STACK_COPY_CHANNELS``), unless a
``memory_limit`` cannot hold the copy.
Likewise an image of at most ``UKERNEL_PAD_PIXELS`` outputs that are mostly
border outputs (a 7x7 image under a 3x3 or 5x5 kernel) is copied with its
rows zero-padded, so that every output row is one run of the interior
(:func:`_staging`).  A staged call
copies and runs as many images at a time as fit in ``UKERNEL_STAGE_ELEMENTS``
(one, for a 224x224 RGB image).  A strided NCHW 1x1 layer without padding
(ResNet's downsampling shortcuts) at batch > 1 runs on a copy of the pixels
at the stride, the whole batch at once unless a ``memory_limit`` cannot
hold it (:func:`_subsampling`): a 1x1 layer of stride 1 on a quarter of
the input, its images stacked.

Threads
-------
Items of ``prange`` are (image x group, or group when the images are
stacked) x output-channel blocks x runs of tiles, cut by
:func:`lowmem_numba._split.split_work`; inside an item, equal blocks of
about ``UKERNEL_TILE_BLOCK`` tiles are swept once per output-channel block, so a
tile's input stays in cache while every weight block passes over it.  On a
1x1 kernel with more than ``UKERNEL_REDUCTION_BLOCK`` input channels per group,
each sweep reduces over one block of input channels at a time
(:func:`_channel_block`), the tiles adding their partial sums to the output
(``ACCUMULATE``), so that a weight block's panel stays in L1 across the
tiles instead of streaming from L2 at every step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Optional

import numpy as np
from numba import prange

from .._caches import l1_bytes, l2_bytes, page_bytes
from .._compile import NONNEG, njit, serial_twin  # numba.njit whose cache=True never fails (see _compile)
from .._microkernel import (ACCUMULATE, MR, NR, SMALL_MR, VL, WIDE_MR, tile_full, tile_half, tile_small,
                            tile_small_half, tile_small_wide, tile_wide, transpose_block)
from .._layout import transpose_blocks
from .._plan import FLOAT32_BYTES, KernelPlan
from .._split import split_work
from .._threads import numba_thread_count
from .._tuning import (TRANSPOSE_COST, UKERNEL_FOLD_CHANNELS, UKERNEL_GENERAL_STORE_COST, UKERNEL_HALF_BLOCK_COST,
                       UKERNEL_NCHW_STORE_COST, UKERNEL_PACK_COST, UKERNEL_PACK_IN_KERNEL_COST,
                       UKERNEL_PACK_SWEEP_L2_SHARE, UKERNEL_PAD_INTERIOR, UKERNEL_PAD_PIXELS, UKERNEL_PLANAR_PAGES_MAX,
                       UKERNEL_REDUCTION_BLOCK, UKERNEL_STACK_COPY_CHANNELS, UKERNEL_STACK_MARGIN,
                       UKERNEL_STACK_PIXELS, UKERNEL_STACK_SEGMENT_COST, UKERNEL_STAGE_ELEMENTS,
                       UKERNEL_STRIDED_1X1_COST, UKERNEL_TILE_BLOCK, UKERNEL_WIDE_UNIT_COST)
from .._registry import Algorithm, register
from ._common import LINE, NO_ARRAY, KernelGeometry, ceil_div, kernel_geometry, tile_bounds, unpadded_1x1

# ----------------------------------------------------------------- geometry of borders

@njit(cache=True, nogil=True)
def _interior(out_size, in_size, stride, dilation, pad, taps):
    """Output indices [lo, hi) where all ``taps`` taps fall inside the input
    (lo == hi when there are none), clamped to [0, out_size)."""
    lo = min(out_size, -(-pad // stride))
    last = in_size - 1 + pad - (taps - 1) * dilation  # o*stride <= last
    hi = min(out_size, last // stride + 1) if last >= 0 else 0
    return lo, max(lo, hi)


@njit(cache=True, nogil=True)
def _tap_range(o, in_size, stride, dilation, pad, taps):
    """Taps [t0, t0 + nt) of output index ``o`` that fall inside the input."""
    first = o * stride - pad
    t0 = 0 if first >= 0 else min(taps, (-first + dilation - 1) // dilation)
    t1 = min(taps, (in_size - 1 - first) // dilation + 1) if in_size - 1 - first >= 0 else 0
    return t0, max(0, t1 - t0)


@njit(cache=True, nogil=True)
def _class_count(out_size, lo, hi):
    """Runs along one dimension: the border indices one by one, the interior as one."""
    if hi > lo:
        return lo + 1 + (out_size - hi)
    return out_size


@njit(cache=True, nogil=True)
def _class(q, out_size, lo, hi, in_size, stride, dilation, pad, taps):
    """Run ``q`` along one dimension: (first index, count, first tap, taps)."""
    if hi > lo:
        if q < lo:
            start, count = q, 1
        elif q == lo:
            return lo, hi - lo, 0, taps
        else:
            start, count = hi + (q - lo - 1), 1
    else:
        start, count = q, 1
    t0, nt = _tap_range(start, in_size, stride, dilation, pad, taps)
    return start, count, t0, nt


@njit(cache=True, nogil=True)
def _plane_tiles(geometry, stacked):
    """Tiles of one output plane (all rectangles), in closed form; with
    ``stacked``, of the batch's planes stacked (each output row of a
    rectangle walked over the images).

    Each border index is a run of its own and the interior one run, along each
    dimension, so a plane has (border rows + 1) x (border columns + 1)
    rectangles; counting them one by one took seconds for paddings of a few
    thousand (and forever for 2**31) while only planning.
    """
    d = KernelGeometry(*geometry)
    HO, WO = d.out_height, d.out_width
    ylo, yhi = _interior(HO, d.height, d.stride_h, d.dilation_h, d.pad_top, d.kernel_h)
    xlo, xhi = _interior(WO, d.width, d.stride_w, d.dilation_w, d.pad_left, d.kernel_w)
    ny, nx = yhi - ylo, xhi - xlo  # interior run lengths (0: no interior)
    by, bx = HO - ny, WO - nx      # border indices, one run each
    if stacked:  # per output row: each border column, then the interior columns, over the images
        return HO * (bx * ((d.batch + MR - 1) // MR) + (d.batch * nx + MR - 1) // MR)
    # border x border: one pixel each; border x interior runs; interior x interior
    return (by * bx + by * ((nx + MR - 1) // MR) + bx * ((ny + MR - 1) // MR)
            + (ny * nx + MR - 1) // MR)


def _run_pixels(pixels):
    """Pixels a run of ``pixels`` costs as the kernel tiles it: whole ``MR``
    tiles, and a remainder of at most ``MR - SMALL_MR`` on ``SMALL_MR`` tiles."""
    full, rest = divmod(pixels, MR)
    return full * MR + (ceil_div(rest, SMALL_MR) * SMALL_MR if rest <= MR - SMALL_MR else MR)


def _rectangles(d):
    """``(ny, ni, nx, nj)`` of every rectangle of a plane's walk: ``ny`` rows
    of ``nx`` output pixels that reduce over ``ni`` kernel rows of ``nj``
    taps (the border indices one by one, the interior as one run, along
    each dimension)."""
    ylo, yhi = _interior(d.out_height, d.height, d.stride_h, d.dilation_h, d.pad_top, d.kernel_h)
    xlo, xhi = _interior(d.out_width, d.width, d.stride_w, d.dilation_w, d.pad_left, d.kernel_w)
    rows = [_class(q, d.out_height, ylo, yhi, d.height, d.stride_h, d.dilation_h, d.pad_top, d.kernel_h)
            for q in range(_class_count(d.out_height, ylo, yhi))]
    columns = [_class(q, d.out_width, xlo, xhi, d.width, d.stride_w, d.dilation_w, d.pad_left, d.kernel_w)
               for q in range(_class_count(d.out_width, xlo, xhi))]
    return [(ny, ni, nx, nj) for _, ny, _, ni in rows for _, nx, _, nj in columns]


def _tiled_pixels(d, stacked):
    """Full-kernel pixels per image that a walk costs as the kernel tiles it:
    each rectangle (stacked: each row of each rectangle, over the images,
    see :func:`_stacks`) rounded as the kernel tiles it and weighted by the
    share of the taps it reduces over."""
    images = d.batch if stacked else 1
    total = 0.0
    for ny, ni, nx, nj in _rectangles(d):
        run = _run_pixels(images * nx) * ny if stacked else _run_pixels(ny * nx)
        total += run * ni * nj
    return total / (images * d.kernel_taps)


def _run_stores(length, segment, nchw):
    """``(general, starts)`` of a run of ``length`` output pixels that the
    kernel tiles as it walks them (whole ``MR`` tiles, a short remainder on
    ``SMALL_MR`` tiles), ``segment`` consecutive pixels at a time lying
    together in the output (a row of a plane; stacked, one image's part):
    the pixels of tiles stored through the tile kernel's general path (tiles
    short of their kernel's rows, and with ``nchw`` tiles spanning two
    segments, which the transposed vector store cannot write), and the
    segment starts that fall inside a tile.  In closed form over the whole
    tiles (runs can be millions of pixels long)."""
    full, rest = divmod(length, MR)
    covered = full * MR
    # Segment starts inside whole tiles: multiples of ``segment`` below the
    # end of the last whole tile that are not tile starts.
    starts = (covered - 1) // segment - (covered - 1) // math.lcm(segment, MR) if full else 0
    general = 0
    if nchw and full:  # shorter segments than a tile: every tile spans two
        general = covered if segment < MR else starts * MR
    step = SMALL_MR if rest <= MR - SMALL_MR else MR
    for first in range(covered, length, step):
        pixels = min(step, length - first)
        inside = (first + pixels - 1) // segment - first // segment
        starts += inside
        if pixels < step or (nchw and inside):
            general += pixels
    return general, starts


def _walk_stores(d, stacked, nchw):
    """Per image, ``(general, starts)`` of the kernel's walk of ``d`` (see
    :func:`_run_stores`): pixels stored through the general path, and, of a
    ``stacked`` walk, the image boundaries inside tiles times the kernel rows
    those tiles reduce over (each a further input stream of every channel).
    A rectangle's rows lie one after another in the output when they are
    whole rows of the plane (stacked: whole planes of one channel).

    Stacked walks (planes of at most ``UKERNEL_STACK_PIXELS`` outputs, or a
    1x1 layer's one row) go rectangle by rectangle; the per-image walk in
    closed form over the border's rows and columns, which a huge padding
    makes billions of (border rows and columns are one pixel thick, corners
    single pixels: see :func:`_plane_tiles`)."""
    if stacked:
        general = starts = 0
        plane = d.out_height * d.out_width
        for ny, ni, nx, _ in _rectangles(d):  # each row of the rectangle, over the images
            length = d.batch * nx
            row_general, row_starts = _run_stores(length, nx, nchw)
            if nx == plane * d.out_channels:  # the images' rows follow one another in the output
                row_general = _run_stores(length, length, nchw)[0]
            general += ny * row_general
            starts += ny * ni * row_starts
        return general / d.batch, starts / d.batch
    HO, WO = d.out_height, d.out_width
    ny, nx = _interior_extent(d)  # interior run lengths
    by, bx = HO - ny, WO - nx     # border rows and columns
    general = by * bx  # corners: single-pixel tiles
    if nx:  # each border row's interior: one row
        general += by * _run_stores(nx, nx, nchw)[0]
    if ny:  # each border column's interior: a pixel per row
        general += bx * _run_stores(ny, ny if WO == 1 else 1, nchw)[0]
    if ny and nx:
        general += _run_stores(ny * nx, ny * nx if nx == WO else nx, nchw)[0]
    return general, 0.0


def _interior_extent(d):
    """``(rows, columns)`` of the outputs of one plane whose taps all fall
    inside the input."""
    ylo, yhi = _interior(d.out_height, d.height, d.stride_h, d.dilation_h, d.pad_top, d.kernel_h)
    xlo, xhi = _interior(d.out_width, d.width, d.stride_w, d.dilation_w, d.pad_left, d.kernel_w)
    return yhi - ylo, xhi - xlo


def _interior_pixels(d):
    """Outputs of one plane whose taps all fall inside the input."""
    rows, columns = _interior_extent(d)
    return rows * columns


def _walk_pixels(d):
    """Pixels per image that the per-image walk is priced at: the interior
    rounded as the kernel tiles it, each border pixel one (see :func:`_plan`)."""
    interior = _interior_pixels(d)
    return _run_pixels(interior) + d.out_height * d.out_width - interior


def _stacks(g):
    """Whether the kernel stacks the images of a call into its rectangles.

    Along the border, a plane's rectangles are single rows or columns (single
    pixels in the corners), which run on short tiles.  Stacked, each row of a
    rectangle is walked over all the images instead (its input and output
    rows are ``C*H*W`` and ``M*Ho*Wo`` elements apart, a stride like any
    other), so that those tiles fill up while every pixel still reduces over
    its own taps only: no zero-padded copy, and no product of a padding zero.
    Chosen at batch > 1 on planes of at most ``UKERNEL_STACK_PIXELS`` outputs
    that have a border, when it is priced below the per-image walk (on a
    zero-padded copy where one would be made): at batch 2, GoogLeNet's 7x7
    5x5 layers ran 12 % slower stacked (border rows of two pixels), at batch
    3 9 % faster.  Without a border there is nothing to gain this way: 7x7
    1x1 layers ran 4-25 % slower stacked at batch 8 (ResNet-50's layer4 512
    -> 2048: 11.4 against 9.1 ms on one thread), their 7-pixel rows over the
    images making more short tiles, each streaming the whole reduction's
    weights; such layers are stacked as one row per image instead
    (:func:`_walked_geometry`).
    """
    ratio = _stacking_ratio(g)
    return ratio is not None and ratio < UKERNEL_STACK_MARGIN


def _walked_geometry(g):
    """``(geometry, stacked)``: the geometry the kernel walks, and whether
    its images are stacked (:func:`_stacks`).

    A 1x1 layer without stride or padding whose planes hold at most the
    pixels a block of ``UKERNEL_TILE_BLOCK`` tiles covers is walked as one
    row of ``H*W`` pixels per image, the images stacked: the batch is then
    one rectangle of whole tiles, and every weight block serves the tiles
    of one image and more per sweep, where the per-image walk streamed all
    the weights once per image (through a short last tile each).  At batch
    8 (Intel Xeon, best of three alternating processes) ResNet-50's and
    MobileNet's 7x7 1x1 layers and GoogLeNet's 5b 1x1 ran 1.02-1.19x faster
    on one thread and 1.0-1.18x on two with prepacked weights, and
    functional calls (which then pack the weights inside the kernel)
    1.05-1.19x and 1.04-1.36x; 14x14 planes (a tile block of under one
    image) ran 10 % slower, so they keep the per-image walk.  On AVX2's
    6-pixel tiles a block covers 96 pixels, 1.96 7x7 planes: stacked (when
    the rule asked for two planes per block) the same layers and GoogLeNet's
    other 7x7 1x1 layers ran at batch 8 1.03-1.19x faster on two threads
    and 0.97-1.08x on one (AMD EPYC, functional, best of 5 alternating).
    """
    if (g.batch > 1 and unpadded_1x1(g) and (g.stride_h, g.stride_w) == (1, 1)
            and g.height * g.width <= UKERNEL_TILE_BLOCK * MR):
        return dataclasses.replace(g, height=1, width=g.height * g.width), True
    return g, _stacks(g)


def _stacking_ratio(g):
    """The stacked walk's price over the per-image walk's (on the row-padded
    copy where one would be made), both priced by :func:`_tiled_pixels`; None
    where stacking is not considered (batch 1, planes over
    ``UKERNEL_STACK_PIXELS`` outputs or without a border) or gains nothing
    (no output reduces over any tap: every tap falls in the padding)."""
    d = KernelGeometry(*kernel_geometry(g))
    if (g.batch < 2 or g.out_height * g.out_width > UKERNEL_STACK_PIXELS
            or _interior_pixels(d) == g.out_height * g.out_width):
        return None
    per_image = KernelGeometry(*kernel_geometry(_staged_geometry(g, Staging(False, True, 1)) if _pads(g) else g))
    walked = _tiled_pixels(per_image, False)
    return _tiled_pixels(d, True) / walked if walked else None


# ----------------------------------------------------------------- the kernel

#: Tile widths (``run_tiles``' ``width``): ``VL`` channels (a last block of at
#: most one vector), ``NR`` (a block), ``NR + VL`` (a block and the half block
#: after it: :func:`channel_units`).
HALF, FULL, WIDE = 0, 1, 2


@njit(cache=True, nogil=True)
def channel_units(channels):
    """``(blocks, units)`` of ``channels`` output channels per group:
    ``NR``-channel blocks, as packed, and the units the kernel runs them in,
    one block each except that a last block of exactly ``VL`` channels runs
    with the block before it as one wide unit (``WIDE_MR`` rows of ``NR + VL``
    channels: ``UKERNEL_WIDE_UNIT_COST``)."""
    blocks = (channels + NR - 1) // NR
    wide = blocks >= 2 and channels - (blocks - 1) * NR == VL
    return blocks, blocks - 1 if wide else blocks


@njit(cache=True, nogil=True, inline="always")
def run_tiles(width, w, w_at, w_cstep, w_jstep, w_istep, w_next, x, x_at, x_ystep, x_xstep, x_cstep, x_jstep,
              x_istep, lo, hi, nx, kc, nj, ni, out, o_at, o_ystep, o_xstep, o_lstep, nr, bias, b_off, has_bias):
    """Pixels ``lo <= p < hi`` of a rectangle ``nx`` pixels wide on the tiles
    of ``width`` (HALF, FULL or WIDE): whole tiles of their rows (``MR``, or
    ``WIDE_MR``), and a remainder that fits in ``SMALL_MR``-row tiles at less
    than a whole tile's cost on those; the other arguments are the tile
    kernel's (see :func:`lowmem_numba._microkernel.make_tile_kernel`)."""
    rows = WIDE_MR if width == WIDE else MR
    for p0 in range(lo, hi, rows):
        mr = min(rows, hi - p0)
        step = SMALL_MR if mr <= rows - SMALL_MR else rows
        for s in range(p0, p0 + mr, step):
            n = min(step, p0 + mr - s)
            if step == SMALL_MR:
                if width == HALF:
                    tile_small_half(w, w_at, w_cstep, w_jstep, w_istep, w_next, x, x_at, x_ystep, x_xstep,
                                    x_cstep, x_jstep, x_istep, s, nx, n, kc, nj, ni, out, o_at, o_ystep,
                                    o_xstep, o_lstep, nr, bias, b_off, has_bias)
                elif width == FULL:
                    tile_small(w, w_at, w_cstep, w_jstep, w_istep, w_next, x, x_at, x_ystep, x_xstep, x_cstep,
                               x_jstep, x_istep, s, nx, n, kc, nj, ni, out, o_at, o_ystep, o_xstep, o_lstep,
                               nr, bias, b_off, has_bias)
                else:
                    tile_small_wide(w, w_at, w_cstep, w_jstep, w_istep, w_next, x, x_at, x_ystep, x_xstep,
                                    x_cstep, x_jstep, x_istep, s, nx, n, kc, nj, ni, out, o_at, o_ystep,
                                    o_xstep, o_lstep, nr, bias, b_off, has_bias)
            elif width == HALF:
                tile_half(w, w_at, w_cstep, w_jstep, w_istep, w_next, x, x_at, x_ystep, x_xstep, x_cstep,
                          x_jstep, x_istep, s, nx, n, kc, nj, ni, out, o_at, o_ystep, o_xstep, o_lstep, nr,
                          bias, b_off, has_bias)
            elif width == FULL:
                tile_full(w, w_at, w_cstep, w_jstep, w_istep, w_next, x, x_at, x_ystep, x_xstep, x_cstep,
                          x_jstep, x_istep, s, nx, n, kc, nj, ni, out, o_at, o_ystep, o_xstep, o_lstep, nr,
                          bias, b_off, has_bias)
            else:
                tile_wide(w, w_at, w_cstep, w_jstep, w_istep, w_next, x, x_at, x_ystep, x_xstep, x_cstep,
                          x_jstep, x_istep, s, nx, n, kc, nj, ni, out, o_at, o_ystep, o_xstep, o_lstep, nr,
                          bias, b_off, has_bias)


@njit(parallel=True, cache=True)
def _ukernel_conv(x, w, bias, out, geometry, nhwc_in, nhwc, m_chunks, t_chunks, plane_tiles, tile_block,
                  channel_block, raw, stacked):
    """The convolution on packed weights ``w``; or, when ``raw`` (the weights
    as given) is not empty, with each item packing its channel blocks into
    its own block of ``w`` right before running its tiles on them (the item
    then sweeps all its tiles per block: pass ``tile_block >= plane_tiles``).

    ``stacked``: the images are stacked into the rectangles (see
    :func:`_stacks`): each output row of each rectangle is a rectangle of its
    own, walked image by image, and the parallel items are per group only.

    ``channel_block``: input channels per reduction block; a tile's first
    block stores its sums (bias added), the others add theirs to them.  The
    tap and channel loops of channels-last input fold only unblocked."""
    d = KernelGeometry(*geometry)
    C, H, W, M, G = d.in_channels, d.height, d.width, d.out_channels, d.groups
    KH, KW, HO, WO = d.kernel_h, d.kernel_w, d.out_height, d.out_width
    SH, SW, DH, DW = d.stride_h, d.stride_w, d.dilation_h, d.dilation_w
    PT, PL = d.pad_top, d.pad_left
    cg = d.channels_per_group
    mg = d.out_channels_per_group
    blocks, units = channel_units(mg)
    taps = d.kernel_taps
    has_bias = 1 if bias.size else 0
    pix = C if nhwc_in else 1                # input elements per pixel step
    x_cstep = 1 if nhwc_in else H * W
    # Channels-last input, one group, dilation 1: a row of taps is one
    # contiguous run of nj*C input values, as of weights, so the tap and
    # channel loops fold into one (a 3-channel layer's reduction then runs
    # 21 steps at a time on a 7x7 kernel instead of 3).
    fold = nhwc_in and G == 1 and DW == 1 and channel_block >= cg
    x_row = W * pix
    o_lstep = 1 if nhwc else HO * WO
    o_xstep = M if nhwc else 1
    o_ystep = WO * o_xstep
    w_cstep = NR
    w_jstep = cg * NR
    w_istep = KW * cg * NR
    ylo, yhi = _interior(HO, H, SH, DH, PT, KH)
    xlo, xhi = _interior(WO, W, SW, DW, PL, KW)
    y_classes = _class_count(HO, ylo, yhi)
    x_classes = _class_count(WO, xlo, xhi)
    packs = raw.size > 0
    block_elements = taps * cg * NR
    unit_elements = block_elements * (2 if units < blocks else 1)  # per item, packing in the kernel
    offsets = scatter_offsets(taps if packs else 0, cg)  # empty unless packing
    # Stacked, a rectangle's walk steps from image to image instead of from
    # row to row (NCHW and NHWC images are both C*H*W input elements apart).
    images = d.batch if stacked else 1
    planes = G if stacked else d.batch * G
    walk_x_ystep = C * H * W if stacked else SH * x_row
    walk_o_ystep = M * HO * WO if stacked else o_ystep
    for item in prange(planes * m_chunks * t_chunks):
        ng, mb0, mb1, t_lo, t_hi = tile_bounds(item, units, plane_tiles, m_chunks, t_chunks)
        n = ng // G
        g = ng % G
        x_image = n * H * W * C + g * cg if nhwc_in else (n * C + g * cg) * H * W
        o_image = n * HO * WO * M + g * mg if nhwc else (n * M + g * mg) * HO * WO
        # Sweep the item's tiles in equal blocks of about tile_block (the
        # nearest whole number of them), every weight block over each: a 14x14
        # plane's 17 tiles are one block, not 16 and a last tile that streams
        # all the weights once more for 4 pixels.
        n_tiles = t_hi - t_lo
        sweeps = max(1, (2 * n_tiles + tile_block) // (2 * tile_block))
        for sweep in range(sweeps):
            b_lo = t_lo + sweep * n_tiles // sweeps
            b_hi = t_lo + (sweep + 1) * n_tiles // sweeps
            for c0 in range(0, cg, channel_block):
                cs = min(channel_block, cg - c0)
                flags = has_bias if c0 == 0 else ACCUMULATE
                for mb in range(mb0, mb1):  # units: blocks, the last one maybe with the half block after it
                    width = WIDE if mb == units - 1 and units < blocks else HALF if mg - mb * NR <= VL else FULL
                    nr = min(NR + VL if width == WIDE else NR, mg - mb * NR)
                    if packs:
                        w_block = item * unit_elements
                        for b in range(2 if width == WIDE else 1):
                            _pack_block(raw, w, d, g * blocks + mb + b, offsets, w_block + b * block_elements,
                                        c0, cs)
                    else:
                        w_block = (g * blocks + mb) * block_elements
                    o_block = o_image + (mb * NR) * (1 if nhwc else HO * WO)
                    b_off = g * mg + mb * NR
                    seen = 0  # tiles of the rectangles before the current one
                    for qy in range(y_classes):
                        if seen >= b_hi:
                            break
                        y0, ny, i0, ni = _class(qy, HO, ylo, yhi, H, SH, DH, PT, KH)
                        for y in range(y0, y0 + ny if stacked else y0 + 1):
                            if seen >= b_hi:
                                break
                            for qx in range(x_classes):
                                if seen >= b_hi:
                                    break
                                x0, nx, j0, nj = _class(qx, WO, xlo, xhi, W, SW, DW, PL, KW)
                                pixels = images * nx if stacked else ny * nx
                                count = (pixels + MR - 1) // MR
                                if seen + count <= b_lo:
                                    seen += count
                                    continue
                                x_at = (x_image + (y * SH + i0 * DH - PT) * x_row
                                        + (x0 * SW + j0 * DW - PL) * pix + c0 * x_cstep)
                                o_at = o_block + y * o_ystep + x0 * o_xstep
                                w_at = w_block + ((i0 * KW + j0) * cg + c0) * NR
                                kc = nj * cg if fold else cs
                                kj = 1 if fold else nj
                                run_tiles(width, w, w_at, w_cstep, w_jstep, w_istep, block_elements,
                                          x, x_at, walk_x_ystep, SW * pix, x_cstep, DW * pix, DH * x_row,
                                          max(0, b_lo - seen) * MR, min(pixels, min(count, b_hi - seen) * MR),
                                          nx, kc, kj, ni, out, o_at, walk_o_ystep, o_xstep, o_lstep, nr, bias,
                                          b_off, flags)
                                seen += count


@njit(cache=True, nogil=True)
def scatter_offsets(taps, plane):
    """Where :func:`pack_lanes` stores column ``k = c*taps + t`` of a chunk
    of ``VL`` input channels: ``(t*plane + c) * NR`` floats on."""
    offsets = np.empty(VL * taps, np.int64)
    for k in range(VL * taps):
        c = k // taps
        offsets[k] = ((k - c * taps) * plane + c) * NR
    return offsets


@njit(cache=True, nogil=True)
def pack_lanes(weight, first, row, valid, taps, c0, cs, dest, base, plane, offsets):
    """Weight rows to lanes: ``dest[base + (t*plane + c - c0)*NR + lane] =
    weight[first + lane*row + c*taps + t]`` for ``lane < valid``, ``c0 <= c <
    c0 + cs`` and ``t < taps``; lanes ``>= valid`` are not written.

    ``offsets`` is ``scatter_offsets(taps, plane)``.  Whole chunks of ``VL``
    channels by ``VL`` lanes are ``taps`` register transposes; the rest goes
    element by element.  Gathering every lane with scalar loads packed
    VGG-16's 512x512x3x3 weights at 1.1 G elements/s (2.1 ms) on one thread,
    these transposes at 2.0 (1.2 ms; 0.18 ms for half of them, which fit
    in cache: 6.6 G elements/s).
    """
    full_lanes = valid // VL * VL
    for cc in range(c0, c0 + cs, VL):
        n = min(VL, c0 + cs - cc)
        lanes = full_lanes if n == VL else 0
        at = base + (cc - c0) * NR
        src = first + cc * taps
        for l0 in range(0, lanes, VL):
            for k in range(0, VL * taps, VL):
                transpose_block(weight, src + l0 * row + k, row, dest, at + l0, offsets, k)
        for lane in range(lanes, valid):
            for c in range(n):
                for t in range(taps):
                    dest[at + (t * plane + c) * NR + lane] = weight[src + lane * row + c * taps + t]


@njit(cache=True, nogil=True)
def _pack_block(weight, dest, d, item, offsets, block, c0, cs):
    """Pack input channels ``c0 <= c < c0 + cs`` of block ``item`` (group x
    block of NR output channels) into ``dest[block:block + taps*cg*NR]``:
    its NR weight rows (each ``cg*taps`` floats, index ``c*taps + t``) become
    rows of NR lanes at ``(t, c)``."""
    cg = d.channels_per_group
    mg = d.out_channels_per_group
    blocks = (mg + NR - 1) // NR
    taps = d.kernel_taps
    row = cg * taps
    g = item // blocks
    mb = item % blocks
    valid = min(NR, mg - mb * NR)
    if valid < NR:  # lanes past M/g are zero
        for t in range(taps):
            dest[block + (t * cg + c0) * NR:block + (t * cg + c0 + cs) * NR] = 0.0
    pack_lanes(weight, (g * mg + mb * NR) * row, row, valid, taps, c0, cs, dest, block + c0 * NR, cg, offsets)


@njit(parallel=True, cache=True)
def _pack(weight, dest, geometry):
    d = KernelGeometry(*geometry)
    offsets = scatter_offsets(d.kernel_taps, d.channels_per_group)
    size = d.kernel_taps * d.channels_per_group * NR
    for item in prange(d.groups * ((d.out_channels_per_group + NR - 1) // NR)):
        _pack_block(weight, dest, d, item, offsets, item * size, 0, d.channels_per_group)


#: :func:`_pack` outside any parallel region (one block, or one thread).
_pack_serial = serial_twin(_pack, "_pack_serial")


def _block_elements(g) -> int:
    """Float32 elements of one packed block of NR output channels."""
    return g.kernel_h * g.kernel_w * g.channels_per_group * NR


def _unit_elements(g) -> int:
    """Float32 elements of the packed blocks of one unit (:func:`channel_units`):
    what a parallel item packing in the kernel holds at a time."""
    blocks, units = channel_units(g.out_channels_per_group)
    return _block_elements(g) * (2 if units < blocks else 1)


def _pack_scratch_elements(g, tiling) -> int:
    """Float32 elements of scratch a call packing in the kernel holds for
    its blocks (:func:`_plan_packing`): one unit per parallel item."""
    return g.groups * tiling.m_chunks * tiling.t_chunks * _unit_elements(g)


def packed_elements(g) -> int:
    """Float32 elements of the packed weights: M/g rounded up to NR per group."""
    return g.groups * ceil_div(g.out_channels_per_group, NR) * NR * g.reduction_size


@njit(parallel=True, cache=True)
def _stage(x, x_at, x_image, x_cstep, x_ystep, x_xstep, C, H, W, dest, images, channels_last, left, WP):
    """``images`` images (``x_image`` elements apart from ``x_at``) copied
    into ``dest`` one after the other, each as an ``H x WP`` plane per channel
    with the input rows (``H`` rows of ``W`` pixels, ``x_ystep`` and
    ``x_xstep`` elements apart: a stride subsamples) at column ``left`` and
    zeros around them, channels-last or not."""
    for row in prange(images * H):
        n = row // H
        y = row - n * H
        src_row = x_at + n * x_image + y * x_ystep
        staged_at = n * C * H * WP
        if channels_last:
            for xp in range(WP):
                xx = xp - left
                inside = 0 <= xx < W
                src = src_row + xx * x_xstep
                at = staged_at + (y * WP + xp) * C
                for c in range(C):
                    dest[(at + c) & NONNEG] = x[(src + c * x_cstep) & NONNEG] if inside else 0.0
        else:  # a channel's row at a time
            for c in range(C):
                at = staged_at + (c * H + y) * WP
                src = src_row + c * x_cstep - left * x_xstep
                for xp in range(WP):
                    xx = xp - left
                    dest[(at + xp) & NONNEG] = x[(src + xp * x_xstep) & NONNEG] if 0 <= xx < W else 0.0


def _pads(g):
    """Whether an image's outputs are few (at most ``UKERNEL_PAD_PIXELS``)
    and mostly border ones: those whose taps do not all fall inside the
    input are more than ``1 - UKERNEL_PAD_INTERIOR`` of them."""
    pixels = g.out_height * g.out_width
    return (pixels <= UKERNEL_PAD_PIXELS
            and _interior_pixels(KernelGeometry(*kernel_geometry(g))) <= UKERNEL_PAD_INTERIOR * pixels)


class Staging(NamedTuple):
    """The copies of the images a kernel runs on (see :func:`_staging`)."""

    channels_last: bool  # copied channels-last (else in the layout as given)
    padded: bool         # each row zero-padded by the layer's left and right padding
    images: int          # images copied and run at a time
    subsampled: bool = False  # the pixels at the stride only (:func:`_subsampling`)


def _subsampling(g, nhwc, scratch_budget=None):
    """Staging of a strided NCHW 1x1 layer without padding, or None: the
    pixels at the stride copied into compact images (``C*Ho*Wo`` floats
    each), as many at a time as fit ``scratch_budget`` elements (None: no
    limit, the whole batch), which the kernel then runs as a 1x1 layer of
    stride 1, its images stacked (:func:`_walked_geometry`, which a stride
    rules out).

    Only where the compact images stack; and NCHW only, where a tile's
    pixels a stride apart read lines that hold half their floats or fewer
    for it (an NHWC pixel's channels fill whole lines at any stride).
    ResNet-50's layer4 downsample (1024 channels, 14x14 to 7x7) at batch 8,
    direct-ukernel subsampled and stacked against in place (AMD EPYC,
    functional calls, best of 6 alternating): 29.3 against 33.4 ms on one
    thread, 14.4 against 16.6 on two.  Subsampled without stacking, batch 1
    ran 1.08x (one thread) and 1.20x (two) faster too, and layer3's (512
    channels, 28x28) 1.07x and 1.38x, but the cost model prices
    direct-ukernel's 7x7 planes 1.1-1.3x too fast (OpenBLAS's within 3 %)
    and would then pick it for layer4's over im2col, which ran 1.25-1.29x
    faster; and layer2's (256 channels, 56x56), whose tiles' input stays in
    L2 in place, ran 0.90-0.94x as fast.
    """
    if (nhwc or not unpadded_1x1(g) or (g.stride_h, g.stride_w) == (1, 1) or g.batch == 0
            or g.out_height <= 0 or g.out_width <= 0 or not _walked_geometry(_subsampled_geometry(g))[1]):
        return None
    copy = g.in_channels * g.out_height * g.out_width
    fitting = g.batch if scratch_budget is None else min(g.batch, scratch_budget // copy)
    if fitting < 1:
        return None
    return Staging(False, False, ceil_div(g.batch, ceil_div(g.batch, fitting)), True)


def _subsampled_geometry(g):
    """A strided 1x1 layer without padding as the 1x1 layer of stride 1 the
    kernel runs on its subsampled copy (:func:`_subsampling`)."""
    return dataclasses.replace(g, height=g.out_height, width=g.out_width, stride_h=1, stride_w=1)


def _staging(g, nhwc, stacked, scratch_budget=None):
    """How the kernel reads the images: the :class:`Staging` of the copies
    it stages first, ``images`` at a time, or None to read the input in
    place.

    * NCHW with at most ``UKERNEL_FOLD_CHANNELS`` channels (one group,
      dilation 1): channels-last, so that the tap and channel loops fold;
    * few outputs, mostly border ones (:func:`_pads`), unless the images are
      ``stacked`` (see :func:`_stacks`): each row zero-padded, so that no
      column is a border one and the rows run as whole runs (the border
      otherwise runs as short runs and single pixels), while the border rows
      still reduce over their own kernel rows only.  Padded all round, every
      tile ran full but the padding's products too: 7-10 % slower on one
      thread at batch 1 (GoogLeNet's 7x7 5x5 layers 0.115 against 0.107 ms,
      ResNet-50's layer4 3x3 2.46-2.52 against 2.18-2.27 ms, GoogLeNet's 5b
      3x3 0.63-0.64 against 0.58; two alternating runs), within 3 % either
      way on two;
    * NCHW images stacked (see :func:`_stacks`) under a kernel of several
      taps, of at least ``UKERNEL_STACK_COPY_CHANNELS`` channels per group:
      the whole batch channels-last (the stacked walk needs every image in
      one copy), if it fits ``scratch_budget`` elements (a call under a
      ``memory_limit``; None: no limit).  Not 1x1 layers walked as one row
      per image (:func:`_walked_geometry`), whose tiles broadcast one run of
      consecutive pixels per step: copied, ResNet-50's and MobileNet's 7x7
      1x1 layers and GoogLeNet's 5b 1x1 ran 0.86-0.98x as fast at batch 8.

    As many images as fit in ``UKERNEL_STAGE_ELEMENTS`` (at least one) are
    staged and run at once, in equal chunks of the batch, except for the
    stacked channels-last copy (the whole batch).
    """
    fold = (not nhwc and g.groups == 1 and g.dilation_w == 1
            and g.in_channels <= UKERNEL_FOLD_CHANNELS and g.kernel_w > 1)
    padded = not stacked and _pads(g)
    wide = (stacked and not nhwc and g.kernel_h * g.kernel_w > 1
            and g.channels_per_group >= UKERNEL_STACK_COPY_CHANNELS)
    if g.batch == 0 or g.out_height <= 0 or g.out_width <= 0 or not (fold or padded or wide):
        return None
    copy = _staged_elements(g, padded)
    if wide:
        fits = scratch_budget is None or copy * g.batch <= scratch_budget
        return Staging(True, False, g.batch) if fits else None
    fitting = max(1, min(g.batch, UKERNEL_STAGE_ELEMENTS // copy))
    return Staging(nhwc or fold, padded, ceil_div(g.batch, ceil_div(g.batch, fitting)))


def _staged_elements(g, padded):
    """float32 elements of one staged image."""
    return g.in_channels * g.height * (g.width + (g.pad_left + g.pad_right if padded else 0))


def _staged_geometry(g, staging):
    """The geometry the kernel runs on for one chunk of staged images (a
    zero-padded copy is padded along the rows only: see :func:`_staging`)."""
    if not staging.padded:
        return dataclasses.replace(g, batch=staging.images)
    return dataclasses.replace(g, batch=staging.images, width=g.width + g.pad_left + g.pad_right,
                               pad_left=0, pad_right=0)


class Tiling(NamedTuple):
    """How the kernel cuts a call (a plan's ``tiling``)."""

    m_chunks: int       # parallel chunks of each plane's output-channel blocks
    t_chunks: int       # parallel chunks of each plane's tiles
    plane_tiles: int    # tiles of one plane (stacked: of the batch's planes)
    tile_block: int     # tiles swept per weight block (:data:`UKERNEL_TILE_BLOCK`)
    channel_block: int  # input channels per reduction block (:func:`_channel_block`)
    packs: bool         # the kernel packs the weights as given (:func:`_plan_packing`)
    stacked: bool       # the images are stacked into the rectangles (:func:`_stacks`)
    launched: tuple     # the kernel's geometry (a staged image's when staged)
    staging: Optional[Staging]  # the copies the kernel runs on, or None: in place
    serial: bool        # runs the kernel's serial twin, outside any parallel region (:func:`_runs_serially`)


def _channel_block(g):
    """Input channels per reduction block of a tile: all of a group's, or,
    on a 1x1 kernel reducing over more than ``UKERNEL_REDUCTION_BLOCK``
    channels, equal blocks of whole vectors of at most about that many
    (see ``UKERNEL_REDUCTION_BLOCK``)."""
    cg = g.channels_per_group
    if g.kernel_h * g.kernel_w > 1 or cg <= UKERNEL_REDUCTION_BLOCK:
        return max(1, cg)
    return ceil_div(ceil_div(cg, ceil_div(cg, UKERNEL_REDUCTION_BLOCK)), VL) * VL


def _plan(g, threads, scratch_budget=None, nhwc=False):
    """How the kernel cuts one call, and its work for the cost model; under
    a ``memory_limit``, with at most ``scratch_budget`` elements of scratch
    where it can (see :func:`_staging`; None: no limit).

    Work items are (image x group) x channel-block chunks x tile-range chunks
    (groups x ... when the images are stacked: their tiles span the batch).
    The work is priced as one ``pixels x channels x reduction`` product per
    image and group in the kernel's own orientation (``MR`` pixels by ``NR``
    channels per tile), with the pixels rounded up to whole tiles and the
    channels to whole ``NR`` blocks (``VL`` for a last block of at most ``VL``
    channels, which runs on the half-width tile), since padded lanes and
    clamped rows cost full FMAs.  Border pixels are priced one each: their
    tiles are short (rounded up to whole tiles they would count 924 pixels
    instead of 729 on AlexNet conv2, 27 % too many, and the model then put the
    kernel behind im2col, which it beats by 1.3x), but they reduce over fewer
    taps, which roughly pays for the rounding.  Stacked, every row of every
    rectangle is priced as the kernel tiles it, at its share of the taps
    (:func:`_tiled_pixels`; the stacking decision prices the per-image walk
    alike, to compare like with like).  A staged call (see :func:`_staging`)
    runs a chunk of images at a time on their copy.  On NCHW input every
    reduction step of a tile (channel block, channel and tap) broadcasts its
    pixels from the lines they span in another plane or row (the plan's
    ``planar_line_reads``: on average ``1 + (MR - 1) * stride / LINE`` lines
    per step, priced at the calibrated ``planar_line_seconds`` and
    ``planar_line_page_seconds`` per page a plane spans), unless an image's
    input planes of a group fit in L1.  Outputs the tile kernel
    stores through its general path (edge tiles, and in NCHW tiles whose
    pixels are not consecutive in the output) cost
    ``UKERNEL_GENERAL_STORE_COST`` each, and a stacked tile
    reading NCHW images in place adds a stream per further image it spans,
    per channel block, channel and kernel row (``UKERNEL_STACK_SEGMENT_COST``;
    :func:`_walk_stores`).  A reduction run in channel blocks
    (:func:`_channel_block`) reads and writes the outputs once more per
    further block.  A strided 1x1 layer without padding is planned as the
    1x1 layer of stride 1 it runs as on its subsampled copy
    (:func:`_subsampling`).
    """
    serial = _runs_serially(g, threads)
    subsampling = _subsampling(g, nhwc, scratch_budget)
    if subsampling:
        g = _subsampled_geometry(g)
    g, stacked = _walked_geometry(g)
    staging = subsampling or _staging(g, nhwc, stacked, scratch_budget)
    run = _staged_geometry(g, staging) if staging else g
    launched = kernel_geometry(run)
    d = KernelGeometry(*launched)
    plane_tiles = int(_plane_tiles(launched, stacked)) if g.out_height > 0 and g.out_width > 0 else 0
    pixels = round(_tiled_pixels(d, True)) if stacked else _walk_pixels(d)
    mg = g.out_channels_per_group
    blocks, units = channel_units(mg)
    # Threads share channel blocks before tiles: a plane's tiles are not equal
    # work (border tiles reduce over fewer taps, and are short), so cutting
    # them split ResNet-50's layer4 3x3 stride 2 (7x7 outputs, batch 1) into
    # 3 border tiles against 3 interior ones: 1.59-1.62 ms on two threads,
    # 1.22-1.25 cut by channel blocks (2.3-2.5 on one).
    split = split_work((1 if stacked else run.batch) * g.groups, units, max(1, plane_tiles), threads,
                       min_rows=1, min_cols=1, prefer="rows")
    last = mg - (blocks - 1) * NR  # channels of the last block
    # A half-width last block runs on narrower, slower tiles (UKERNEL_HALF_BLOCK_COST), or
    # with the block before it on wide ones (UKERNEL_WIDE_UNIT_COST).
    if units < blocks:
        channels = (units - 1) * NR + round((NR + VL) * UKERNEL_WIDE_UNIT_COST)
    else:
        channels = (blocks - 1) * NR + (round(VL * UKERNEL_HALF_BLOCK_COST) if last <= VL else NR)
    copy = _staged_elements(g, staging.padded) if staging else 0  # per image
    chunks = ceil_div(g.batch, staging.images) if staging else 0
    outputs = g.out_channels * g.out_height * g.out_width  # per image
    channel_block = _channel_block(g)
    # A reduction in blocks reads and writes the outputs once more per block.
    partial_sums = 2 * outputs * (ceil_div(g.channels_per_group, channel_block) - 1)
    # NCHW input: every step of a tile (channel block, channel, tap) reads the
    # lines its MR pixels span, from a uniformly distributed offset in the
    # line (Calibration.planar_line_seconds each).  Per step, not per kernel
    # row, whose further taps read the same lines: relative to
    # direct-ukernel-nhwc's time, per tile, channel and kernel row ResNet-50's
    # 3x3 layers took 0.78-0.91 ns beyond the rest of the prediction at
    # stride 1 and 1.0-2.1 at stride 2, its 1x1 layers 0.1-0.5, about the
    # same per line a step reads (0.27-0.31 ns on the 3x3 layers; AMD Zen 3
    # kind, batch 1, one thread).  Lines from planes that stay in L1 cost
    # nothing beyond the tile's curve: GoogLeNet's 5x5 layers on 14x14 and
    # 7x7 planes of 16-48 channels (9-19 KiB) took 0.02-0.06 ns per line,
    # its 3a 5x5 (28x28 planes of 16 channels, 49 KiB, beyond a 32 KiB L1)
    # 0.17.
    planar = not (nhwc or (staging and staging.channels_last))
    # A strided 1x1 layer read in place (a subsampled copy runs at stride 1):
    # its tiles' lines half unused.
    strided_1x1 = planar and d.kernel_taps == 1 and (d.stride_h, d.stride_w) != (1, 1)
    # Each line costs more the larger the planes a tile steps between
    # (UKERNEL_PLANAR_PAGES_MAX, Calibration.planar_line_page_seconds).
    plane_bytes = FLOAT32_BYTES * d.height * d.width
    beyond_l1 = plane_bytes * d.channels_per_group > l1_bytes()
    steps = ceil_div(pixels, MR) * blocks * d.channels_per_group * d.kernel_taps if planar and beyond_l1 else 0
    planar_lines = steps * (1 + (MR - 1) * d.stride_w / LINE)
    # The per-page part of a line's cost is paid once per kernel row: the
    # row's further taps read the lines its first tap fetched.  Priced per
    # tap, NCHW 3x3 and 5x5 layers on 56x56 planes ran at 0.83-0.85x their
    # prediction (64->64, 64->192 and 128->128 stride 2 at batch 1, one
    # thread, Intel Xeon kind, whose calibrations price 0 per line and
    # 0.17-0.29 ns per line and page), and "auto" moved ResNet-50's layer2
    # 3x3 stride 2 onto direct-ukernel-nhwc through a channels-last copy,
    # 1.15x slower on one thread and 1.4x on two; per row, 0.94-1.00x (other
    # 3x3 and 5x5 layers on 7x7 to 28x28 planes 0.93-1.07x -> 0.96-1.09x).
    plane_pages = min(UKERNEL_PLANAR_PAGES_MAX, plane_bytes / page_bytes()) / d.kernel_w if steps else 0.0
    # Outputs the tile kernel stores through its general path, and the input
    # streams stacked tiles add per image they span (see
    # UKERNEL_GENERAL_STORE_COST and UKERNEL_STACK_SEGMENT_COST), per image.
    general, segment_starts = _walk_stores(d, stacked, not nhwc)
    narrow = last if last not in (VL, NR) else 0  # a last block narrower than its tile: all general
    general_outputs = general * (mg - narrow) + d.out_height * d.out_width * narrow
    segment_steps = segment_starts * blocks * d.channels_per_group if planar else 0.0
    # The kernel's geometry (a staged image's, when staged) travels in the
    # plan: building it per call cost 5 us, a third of a call's fixed cost.
    # A copy into the other layout transposes as it goes (TRANSPOSE_COST).
    copy_cost = TRANSPOSE_COST if staging and staging.channels_last != nhwc else 1
    return KernelPlan(tiling=Tiling(split.row_blocks, split.col_tiles, plane_tiles, UKERNEL_TILE_BLOCK,
                                    channel_block, False, stacked, launched, staging, serial),
                      scratch_elements=copy * (staging.images if staging else 0),
                      gemms=((g.batch * g.groups, round(pixels * (UKERNEL_STRIDED_1X1_COST if strided_1x1 else 1)),
                              channels, g.reduction_size),),
                      moved_elements=g.batch * (copy * copy_cost
                                                + (0 if nhwc else round(outputs * UKERNEL_NCHW_STORE_COST))
                                                + partial_sums
                                                + round(g.groups * (general_outputs * UKERNEL_GENERAL_STORE_COST
                                                                    + segment_steps * UKERNEL_STACK_SEGMENT_COST))),
                      planar_line_reads=round(g.batch * g.groups * planar_lines), planar_plane_pages=plane_pages,
                      parallel_items=split.items, launches=2 * chunks if staging else 1,
                      serial=serial and not staging)  # staging copies in parallel


def _plan_packing(g, threads, scratch_budget=None, nhwc=False):
    """The plan of a call whose weights arrive as given, when the kernel packs
    them itself; None when the call should pack them first.

    Each parallel item packs its channel blocks, one at a time, into a block of
    scratch of its own, right before sweeping all its tiles on it.  Only where
    the items' tiles span the batch (batch 1, or the images stacked), in one
    launch, and with no cut across the tiles unless there is one item per
    thread, each running a single channel unit: every block is then packed
    once (or once per item that runs it), the packed weights are not written
    to memory and read back, and the workspace holds one block per item
    instead of all of them.  Fewer units than threads cut the tiles: there,
    each item packing its unit against a parallel packing pass before the
    kernel, GoogLeNet's 4a 5x5 (16 -> 48 on 14x14) and 1x1 layers of 832 ->
    32 and 832 -> 48 on 7x7 ran 1.16x, 1.67x and 1.44x faster at batch 1 on
    two threads (medians of ``perf/interleaved_ab.py``, Intel Xeon kind);
    with more items than threads, each packing what it runs, 832 -> 160 on
    7x7 (5 units by 5 tile ranges) ran 0.69x as fast.  Under a
    ``memory_limit`` (``scratch_budget`` elements; None: none) the images are
    read in place rather than from a copy (see :func:`_staging`) if the copy
    and the blocks do not fit together.
    """
    packing = _packing_plan(g, threads, scratch_budget, nhwc)
    if packing is not None and scratch_budget is not None and packing.scratch_elements > scratch_budget:
        packing = _packing_plan(g, threads, 0, nhwc)
    return packing


def _packing_plan(g, threads, scratch_budget, nhwc):
    """:func:`_plan_packing` with ``scratch_budget`` elements for the copy."""
    plan = _plan(g, threads, scratch_budget, nhwc=nhwc)
    tiling = plan.tiling
    one_launch = tiling.staging is None or tiling.staging.images == g.batch
    # Tiles cut only where each thread's one item runs a single unit.
    one_unit_each = tiling.m_chunks == channel_units(g.out_channels_per_group)[1] and plan.parallel_items <= threads
    if not (g.batch == 1 or tiling.stacked) or not one_launch or not (tiling.t_chunks == 1 or one_unit_each):
        return None
    # Every weight block sweeps all of the item's tiles instead of a block of
    # UKERNEL_TILE_BLOCK: not on 1x1 layers walked image by image whose input
    # rows then no longer stay in L2 across the weight blocks
    # (UKERNEL_PACK_SWEEP_L2_SHARE).
    d = KernelGeometry(*tiling.launched)
    if d.kernel_h * d.kernel_w == 1 and not tiling.stacked:
        swept = FLOAT32_BYTES * d.channels_per_group * d.out_height * d.width  # the rows at the stride
        blocked = swept * min(1.0, UKERNEL_TILE_BLOCK / max(1, tiling.plane_tiles))
        if blocked <= UKERNEL_PACK_SWEEP_L2_SHARE * l2_bytes() < swept:
            return None
    return dataclasses.replace(
        plan, tiling=tiling._replace(tile_block=max(1, tiling.plane_tiles), packs=True),
        scratch_elements=plan.scratch_elements + _pack_scratch_elements(g, tiling),
        moved_elements=plan.moved_elements + round(packed_elements(g) * UKERNEL_PACK_IN_KERNEL_COST * tiling.t_chunks))


def _runs_serially(g, threads) -> bool:
    """Whether a call runs :func:`_ukernel_conv`'s serial twin, outside any
    parallel region: at batch 1 and stride 1 on one thread.  Against the
    one-thread prange (medians of ``perf/interleaved_ab.py``, Intel Xeon
    kind): GoogLeNet's 1x1 and 5x5 layers on 14x14 and 7x7 planes 1.01-1.05x
    faster, a 3x3 layer on 28x28 1.01x; but ResNet-50's stride-2 layers
    0.98-1.00x at batch 1 and 0.96-0.99x at batch 8 (layer3's downsample and
    3x3), 1x1 layers at batch 8 0.98-1.02x."""
    return threads == 1 and g.batch == 1 and g.stride == (1, 1)


_ukernel_conv_serial = serial_twin(_ukernel_conv, "_ukernel_conv_serial")


def _pack_weights(weight, g, dest):
    # One block, or one thread: without a parallel region, which cost 2-3 us
    # of a 50 us call (GoogLeNet's 1x1 reductions to 16-32 channels).
    blocks = g.groups * ceil_div(g.out_channels_per_group, NR)
    pack = _pack_serial if blocks == 1 or numba_thread_count() == 1 else _pack
    pack(weight, dest, kernel_geometry(g))


def _make_compute(nhwc):
    def compute(x, packed, bias, out, scratch, g, kernel):
        if g.batch == 0 or g.out_height <= 0 or g.out_width <= 0:
            return
        (m_chunks, t_chunks, plane_tiles, tile_block, channel_block, packs, stacked, launched, staging,
         serial) = kernel.tiling
        raw = NO_ARRAY
        if packs:  # weights as given; the kernel packs them into blocks at the start of the scratch
            block_scratch = _pack_scratch_elements(g, kernel.tiling)
            raw, packed, scratch = packed, scratch[:block_scratch], scratch[block_scratch:]
        conv = _ukernel_conv_serial if serial else _ukernel_conv
        if staging is None:
            conv(x, packed, bias, out, launched, nhwc, nhwc, m_chunks, t_chunks, plane_tiles, tile_block,
                 channel_block, raw, stacked)
            return
        channels_last, padded, images, subsampled = staging
        C, H, W = g.in_channels, g.height, g.width
        image, plane = C * H * W, g.out_channels * g.out_height * g.out_width
        pixel = C if nhwc else 1
        # Rows and columns copied, and the steps between them (a subsampled
        # copy takes the pixels at the stride), and the columns padded on
        # either side.
        rows, columns, step_h, step_w = ((g.out_height, g.out_width, g.stride_h, g.stride_w) if subsampled
                                         else (H, W, 1, 1))
        left, right = (g.pad_left, g.pad_right) if padded else (0, 0)
        for n in range(0, g.batch, images):
            count = min(images, g.batch - n)
            if padded or subsampled:
                _stage(x, n * image, image, 1 if nhwc else H * W, step_h * W * pixel, step_w * pixel, C,
                       rows, columns, scratch, count, channels_last, left, left + columns + right)
            else:  # channels-last only
                transpose_blocks(x, n * image, scratch, 0, count, C, H * W)
            chunk, tiles = launched, plane_tiles
            if count < images:  # a last, shorter chunk: the geometry's batch (its first field) is the chunk's
                chunk = (count,) + launched[1:]
                tiles = int(_plane_tiles(chunk, stacked))
            conv(scratch, packed, bias, out[n * plane:(n + count) * plane], chunk, channels_last, nhwc,
                 m_chunks, t_chunks, tiles, tile_block, channel_block, raw, stacked)
    return compute


def _pointwise_unsupported(g):
    if (g.kernel_h, g.kernel_w) != (1, 1):
        return f"kernel {g.kernel_h}x{g.kernel_w} (pointwise-ukernel needs a 1x1 kernel)"
    return None


_TILE_TEXT = f"{MR}x{NR} register tile"
for _name, _unsupported, _what, _claims in (
    ("pointwise-ukernel", _pointwise_unsupported,
     "1x1 convolution (any stride, padding, groups)", "1x1 kernel; any stride, padding and groups"),
    ("direct-ukernel", lambda g: None,
     "direct convolution (any kernel, stride, padding, dilation, groups)",
     "any kernel, stride, padding, dilation and groups"),
):
    for _nhwc in (False, True):
        register(Algorithm(
            plan_kernel_packing=functools.partial(_plan_packing, nhwc=_nhwc),
            name=_name + ("-nhwc" if _nhwc else ""),
            family="ukernel",
            calls_blas=False,
            summary=f"{_what} on an own {_TILE_TEXT} reducing over channels and taps in registers; "
                    f"input read in place, borders by clipped taps, {'NHWC' if _nhwc else 'NCHW'}.",
            workspace_formula="g·⌈M/g/NR⌉·NR·C/g·kh·kw (packed weights; one NR·C/g·kh·kw block per "
                              "parallel item when a call packs them in the kernel: batch 1, or stacked images)"
                              + " + k·C·H·Wp, a copy of k images (as many as fit in "
                                f"{UKERNEL_STAGE_ELEMENTS} floats, at least one): rows zero-padded (Wp) when "
                                f"the output has at most {UKERNEL_PAD_PIXELS} pixels, mostly border ones, and the "
                                "images are not stacked"
                              + ("" if _nhwc else "; of a strided 1x1 layer without padding at batch > 1, the "
                                                  "pixels at the stride (N·C·Ho·Wo, or as many images as a "
                                                  "memory_limit holds)")
                              + ("" if _nhwc or _name.startswith("pointwise")
                                 else f"; or channels-last: k images when C ≤ {UKERNEL_FOLD_CHANNELS} (groups 1, "
                                      "dilation_w 1), or the whole batch (N·C·H·W) when the images are stacked, "
                                      f"the kernel is larger than 1x1 and C/g ≥ {UKERNEL_STACK_COPY_CHANNELS}, "
                                      "unless a memory_limit cannot hold it"),
            unsupported=_unsupported,
            packed_weight_elements=packed_elements,
            pack_weights=_pack_weights,
            pack_cost=UKERNEL_PACK_COST,
            plan_kernel=functools.partial(_plan, nhwc=_nhwc),
            plan_kernel_within=functools.partial(_plan, nhwc=_nhwc),
            claims=_claims,
            compute=_make_compute(_nhwc),
            input_layout="NHWC" if _nhwc else "NCHW",
            output_layout="NHWC" if _nhwc else "NCHW",
        ))
