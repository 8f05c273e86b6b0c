"""direct-pixels: NCHW direct convolution with output pixels in the vector lanes.

The micro-kernel of :mod:`.ukernel` puts output *channels* in the lanes, so an
NCHW output tile must be transposed in registers before it is stored: on
layers with a short reduction (3-channel first layers, 27 products per output
on MobileNet's conv1; 1x1 layers on 16-64 channels) the transposes and short
stores take a third of the time (MobileNet conv1, batch 1: 0.46 ms in NCHW
against 0.32 in NHWC, same kernel).  Here the lanes are consecutive output
pixels of one row, the weights are broadcast, and each output channel's
pixels are stored as they lie in its plane:
:func:`~lowmem_numba._microkernel.make_pixel_tile_kernel` keeps
``PIXEL_CHANNELS`` channels by up to ``PIXEL_VECTORS`` vectors of ``VL``
pixels in registers over the whole reduction ``C/g * kh * kw``, reading the
input through a table of one offset per (channel, tap), or, on 1x1 layers
(one channel plane per step), at a stride.

Input
-----
A 1x1 kernel without padding needs no padded copy: each output plane is one
row of ``Ho*Wo`` pixels.  At stride 1, on inputs of at most
``PIXELS_IN_PLACE_BYTES``, the tiles read the input planes in place: on
planes of whole vectors every plane's tiles start on a vector boundary (the
``head`` pixels before a plane's first boundary, the same in every plane,
are a short tile of their own: :func:`_unit_span`); other planes (14x14,
7x7) start anywhere, their loads mostly straddling two lines, which costs
less than a copy unless there are ``PIXELS_PACK_MIN_CHANNELS`` output
channels per group to share it.  Planes of a multiple of
``PIXELS_ALIASED_PLANE_BYTES`` (16x16, 32x32, 64x64) are copied too where
L1 has at most ``PIXELS_ALIASED_MAX_WAYS`` ways: read in place, the loads of
every step fall in the same few L1 sets.  A plane's
last vector may reach into the
next plane (lanes never stored); the tile that would read past the input's
end moves back onto pixels the tile before it computes too (GoogLeNet's
480->16 on 14x14 took 30-32 us against 33-36 when that tile's input was
copied into a panel, as it still is on planes narrower than the tile).  On
long reductions (``PIXELS_COPY_MIN_REDUCTION``) over inputs of at most
``PIXELS_COPY_MAX_BYTES``, on planes that are not whole vectors, to
``PIXELS_COPY_MIN_CHANNELS`` output channels or more, the first channel
block of each run of tiles stores what it loads from the planes into the
thread's panel as well, and the other blocks read the run from there: one
contiguous stream instead of a plane per reduction step.  Not read in place, each
thread copies its runs of tiles (below) into a packed panel that starts on a
line, tile by tile, the ``SPAN`` pixels of every input channel contiguous (a short last
tile zero-padded to whole vectors), gathered from every ``stride``-th row
and column at a stride.  Staged by rows instead, ResNet-50's 1x1 stride-2
downsample (512->1024, 28x28 -> 14x14) ran at half direct-ukernel's speed:
14 pixels per row fill one vector, whose steps then issue 9 loads for 8
FMAs.  Read in place with tiles off the vector boundaries (a numpy array
starts 16 bytes past a line), every vector load straddles two lines: on the
Intel Xeon kind, one thread, 1x1 256->128 on 56x56 ran at 144-152 GFLOP/s
from a 16-byte-aligned input and 166-167 from a 64-byte-aligned one; the
panels ran at 152-159 either way, but the copy costs most where the
reduction is long and the output channels few.  Tiles shifted onto the
boundaries, the 16-byte-aligned inputs of ResNet's and MobileNet's 1x1
layers on 56x56 and 28x28 planes ran 1.06-1.20x faster than through the
panels at batch 1 (one thread, best of three alternating processes), as
fast as 64-byte-aligned ones; for memory-sized inputs see
``PIXELS_IN_PLACE_BYTES``.  At stride 1 the copy is not priced as moved
elements (it runs from cache and replaces reads that cost as much); a
strided gather is.
Any other layer first copies each image into a zero-padded
buffer split by column phase (``stride_w`` phases of every padded row), so
that the input of a tap for consecutive output pixels is consecutive at any
stride: column ``x*s + j*d`` is phase ``(j*d) % s``, position ``x + (j*d)//s``.
The copy is ``C * rows * stride_w * U`` floats, ``U`` covering a row's reads
plus a vector of slack (tiles read up to a vector past a row's end; those
lanes are never stored).

Threads
-------
Items are (image x group) x channel-block chunks x chunks of (row, tile)
units, cut by :func:`lowmem_numba._split.split_work`; each of ``min(threads,
items)`` slots takes a contiguous share of them and owns one panel (1x1
without padding).  Inside an item, runs of
tiles whose input fits ``PIXELS_RUN_BYTES`` are swept once per channel block,
so the input stays in cache and the outputs go to one block's planes at a
time: with every block over each tile instead (64 planes written at once on
MobileNet's pw1), batch 8 ran 1.1-1.7x slower than direct-ukernel; with runs,
pw1 takes 6.9 ms against 8.4 and conv1 2.7 against 4.0 (one thread).

The weights are read as given, each output channel's ``C/g * kh * kw``
values in the (c, i, j) order of the reduction: the tile broadcasts one
weight per channel and step, one load whether the channels' weights are
packed together or not.  Packed ``[channel block][C/g*kh*kw][8]`` instead,
ResNet's, MobileNet's and GoogLeNet's 1x1 and first layers ran within
0.98-1.06x of reading them as given (batch 1, one thread, best of three
alternating processes), and every functional call paid the packing
(``UKERNEL_PACK_COST`` copies per weight, 0.12 ms on MobileNet's 512->512).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._compile import NONNEG, njit, serial_twin  # numba.njit whose cache=True never fails (see _compile)
from .._caches import l1_geometry, l2_bytes
from .._microkernel import (PIXEL_CHANNELS, PIXEL_VECTORS, VL, copying_pixel_tiles, next_prefetching_pixel_tiles,
                            pixel_tiles, prefetch_to_l2, strided_pixel_tiles)
from .._plan import FLOAT32_BYTES, KernelPlan
from .._registry import Algorithm, register
from .._split import split_work
from .._tuning import (PIXELS_ALIASED_MAX_WAYS, PIXELS_ALIASED_PLANE_BYTES, PIXELS_COPY_MAX_BYTES,
                       PIXELS_COPY_MIN_CHANNELS, PIXELS_COPY_MIN_REDUCTION, PIXELS_GATHER_COST, PIXELS_IN_PLACE_BYTES,
                       PIXELS_PACK_MIN_CHANNELS, PIXELS_PACK_PREFETCH_BYTES, PIXELS_PREFETCH_NEXT_L2_SHARE,
                       PIXELS_RUN_BYTES, PIXELS_SERIAL_MAX_MACS,
                       PIXELS_SERIAL_MAX_PLANE, PIXELS_TILE_VECTORS)
from ._common import LINE, KernelGeometry, ceil_div, kernel_geometry, tile_bounds, unpadded_1x1

_tile1, _tile2, _tile3 = pixel_tiles
_strided1, _strided2, _strided3 = strided_pixel_tiles
_copying1, _copying2, _copying3 = copying_pixel_tiles
_prefetching1, _prefetching2, _prefetching3 = next_prefetching_pixel_tiles
assert PIXEL_VECTORS == 3
#: Output pixels one full tile covers.
SPAN = PIXEL_VECTORS * VL
#: What this host's tiles of 0 to PIXEL_VECTORS vectors cost, in vectors of a full tile's time.
TILE_VECTORS = PIXELS_TILE_VECTORS[PIXEL_CHANNELS]


def aliased_plane_bytes(l1_ways):
    """Planes of a multiple of this many bytes go through panels on an L1
    of ``l1_ways`` ways (``PIXELS_ALIASED_PLANE_BYTES`` up to
    ``PIXELS_ALIASED_MAX_WAYS`` ways); 0: none do."""
    return PIXELS_ALIASED_PLANE_BYTES if l1_ways <= PIXELS_ALIASED_MAX_WAYS else 0


#: This host's.
ALIASED_PLANE_BYTES = aliased_plane_bytes(l1_geometry()[1])


@njit(cache=True, nogil=True, inline="always")
def _run_tile(vectors, w, w_at, w_mstep, x, x_at, offsets, x_kstep, count, out, o_at, o_mstep, valid, mc, bias,
              b_off, has_bias):
    """One tile of ``vectors`` vectors, reading step ``k``'s input at
    ``x_at + offsets[k]``, or, with ``x_kstep > 0``, at ``x_at + k*x_kstep``
    (:func:`_run_strided_tile`)."""
    if x_kstep > 0:
        _run_strided_tile(vectors, w, w_at, w_mstep, x, x_at, x_kstep, count, out, o_at, o_mstep, valid, mc, bias,
                          b_off, has_bias, False)
    elif vectors == 3:
        _tile3(w, w_at, w_mstep, x, x_at, offsets, 0, count, out, o_at, o_mstep, valid, mc, bias, b_off, has_bias)
    elif vectors == 2:
        _tile2(w, w_at, w_mstep, x, x_at, offsets, 0, count, out, o_at, o_mstep, valid, mc, bias, b_off, has_bias)
    else:
        _tile1(w, w_at, w_mstep, x, x_at, offsets, 0, count, out, o_at, o_mstep, valid, mc, bias, b_off, has_bias)


@njit(cache=True, nogil=True, inline="always")
def _run_strided_tile(vectors, w, w_at, w_mstep, x, x_at, x_kstep, count, out, o_at, o_mstep, valid, mc, bias,
                      b_off, has_bias, prefetch_next):
    """One tile of ``vectors`` vectors reading step ``k``'s input at
    ``x_at + k*x_kstep`` (a 1x1 layer's planes or a panel's runs: the
    strided tile, which loads no offsets); with ``prefetch_next``, the tile
    that also hints the next tile's input into L2
    (``next_prefetching_pixel_tiles``)."""
    if prefetch_next:
        if vectors == 3:
            _prefetching3(w, w_at, w_mstep, x, x_at, x_kstep, count, out, o_at, o_mstep, valid, mc, bias, b_off,
                          has_bias)
        elif vectors == 2:
            _prefetching2(w, w_at, w_mstep, x, x_at, x_kstep, count, out, o_at, o_mstep, valid, mc, bias, b_off,
                          has_bias)
        else:
            _prefetching1(w, w_at, w_mstep, x, x_at, x_kstep, count, out, o_at, o_mstep, valid, mc, bias, b_off,
                          has_bias)
    elif vectors == 3:
        _strided3(w, w_at, w_mstep, x, x_at, x_kstep, count, out, o_at, o_mstep, valid, mc, bias, b_off, has_bias)
    elif vectors == 2:
        _strided2(w, w_at, w_mstep, x, x_at, x_kstep, count, out, o_at, o_mstep, valid, mc, bias, b_off, has_bias)
    else:
        _strided1(w, w_at, w_mstep, x, x_at, x_kstep, count, out, o_at, o_mstep, valid, mc, bias, b_off, has_bias)


@njit(cache=True, nogil=True)
def _sweep_planes(x, w, bias, out, d, first, stop, units, m_chunks, u_chunks, unit_block, head, x_image,
                  has_bias, prefetch_next):
    """Items ``first`` to ``stop`` of a 1x1 layer read in place, each tile
    stepping through the input planes with the strided tile (no panel, no
    copy): what :func:`_pixels_conv` runs when ``plain`` holds.
    Compiled on its own and called per slot (on one slot, outside any
    parallel region): in the general kernel's prange body, beside its other
    tiles, the same tiles ran 1x1 layers of 16-256 output channels on
    112x112 to 28x28 planes 1.01-1.06x slower at batch 1 on one thread
    (medians, ``perf/interleaved_ab.py``; alike on two threads and at batch
    8).  The same loops in their own function ran fastest without prange;
    compiled serially with every other tile kind inlined, slower still.
    Layers whose first channel block copies its input (``copies``) stay in
    the general kernel: the copying tiles in a sweep of their own ran
    GoogLeNet's 480->16 and 512->24 on 14x14 1.04-1.06x faster but ResNet-50's
    256->64 and 256->128 on 56x56 and 512->128 on 28x28 0.93-0.97x, and
    beside this sweep's tiles they slowed it by up to 0.85x."""
    reduction = d.channels_per_group
    plane = d.height * d.width
    G, M, mg = d.groups, d.out_channels, d.out_channels_per_group
    blocks = (mg + PIXEL_CHANNELS - 1) // PIXEL_CHANNELS
    for item in range(first, stop):
        ng, mb0, mb1, u_begin, u_end = tile_bounds(item, blocks, units, m_chunks, u_chunks)
        n = ng // G
        g = ng % G
        at = n * x_image + g * reduction * plane
        for run in range(u_begin, u_end, unit_block):
            run_end = min(u_end, run + unit_block)
            for mb in range(mb0, mb1):
                m0 = g * mg + mb * PIXEL_CHANNELS
                mc = min(PIXEL_CHANNELS, mg - mb * PIXEL_CHANNELS)
                for unit in range(run, run_end):
                    x0, valid = _unit_span(unit, head, 1, plane)
                    if valid <= 0:
                        continue
                    vectors = (valid + VL - 1) // VL
                    # The input's last tile moves back onto pixels the tile before
                    # computes too (see _pixels_conv).
                    overrun = at + x0 + (reduction - 1) * plane + vectors * VL - x.size
                    if overrun > 0:
                        x0 -= overrun
                        valid += overrun
                    # With prefetch_next, a run's first channel block, which reads input
                    # not in cache yet, hints the next tile's into L2 as well.
                    _run_strided_tile(vectors, w, m0 * reduction, reduction, x, at + x0, plane, reduction, out,
                                      (n * M + m0) * plane + x0, plane, valid, mc, bias, m0, has_bias,
                                      prefetch_next and mb == mb0)


@njit(cache=True, nogil=True, inline="always")
def _run_copying_tile(vectors, w, w_at, w_mstep, x, x_at, x_kstep, count, out, o_at, o_mstep, valid, mc, bias,
                      b_off, has_bias, panel, p_at):
    """:func:`_run_tile` on a 1x1 layer's planes that also copies each
    step's input vectors into ``panel`` from ``p_at`` on, ``SPAN`` floats a
    step, as :func:`_pack_run` lays a tile out."""
    if vectors == 3:
        _copying3(w, w_at, w_mstep, x, x_at, x_kstep, count, out, o_at, o_mstep, valid, mc, bias, b_off, has_bias,
                  panel, p_at, SPAN)
    elif vectors == 2:
        _copying2(w, w_at, w_mstep, x, x_at, x_kstep, count, out, o_at, o_mstep, valid, mc, bias, b_off, has_bias,
                  panel, p_at, SPAN)
    else:
        _copying1(w, w_at, w_mstep, x, x_at, x_kstep, count, out, o_at, o_mstep, valid, mc, bias, b_off, has_bias,
                  panel, p_at, SPAN)


@njit(cache=True, nogil=True)
def _fill_offsets(table, d, pointwise, staged_rows, phase_len):
    """The input offset of every (channel, tap) of a group, in the weights'
    (c, i, j) order: pointwise, channel planes; staged, see :func:`_stage`."""
    row = d.stride_w * phase_len
    k = 0
    for c in range(d.channels_per_group):
        for i in range(d.kernel_h):
            for j in range(d.kernel_w):
                if pointwise:
                    table[k] = c * d.height * d.width
                else:
                    column = j * d.dilation_w
                    table[k] = ((c * staged_rows + i * d.dilation_h) * row + column % d.stride_w * phase_len
                                + column // d.stride_w)
                k += 1


@njit(cache=True, nogil=True)
def vector_head(address):
    """Floats from a float32 at byte ``address`` to the next vector boundary."""
    return (-address // FLOAT32_BYTES) % VL


def reads_in_place(g) -> bool:
    """Whether the tiles of a 1x1 layer without padding (geometry ``g``)
    read its input where it lies rather than through packed panels (see the
    module docstring): at stride 1, an input (all images) of at most
    ``PIXELS_IN_PLACE_BYTES``, planes of whole vectors or fewer than
    ``PIXELS_PACK_MIN_CHANNELS`` output channels per group, and planes that
    do not alias in L1 (``ALIASED_PLANE_BYTES``).  The plan decides, from
    shapes alone: the kernels are given inputs that start on a float
    boundary (:func:`lowmem_numba._api.kernel_input` copies any other)."""
    plane = g.height * g.width
    return (g.stride_h == 1 and g.stride_w == 1
            and g.batch * g.in_channels * plane * FLOAT32_BYTES <= PIXELS_IN_PLACE_BYTES
            and (plane % VL == 0 or g.out_channels_per_group < PIXELS_PACK_MIN_CHANNELS)
            and (ALIASED_PLANE_BYTES == 0 or plane * FLOAT32_BYTES % ALIASED_PLANE_BYTES != 0))


@njit(cache=True, nogil=True)
def _unit_span(k, head, lead, row_len):
    """``(x0, valid)``: the output pixels ``x0`` to ``x0 + valid`` of tile
    ``k`` of a row of ``row_len``.  Tiles ``lead`` on are ``SPAN`` pixels
    from ``head`` on; with ``lead`` 1 (1x1 layers), tile 0 covers the
    ``head`` pixels before them (``valid`` 0 if ``head`` is 0)."""
    x0 = min(row_len, max(0, head + (k - lead) * SPAN))
    return x0, min(row_len, head + (k - lead + 1) * SPAN) - x0


@njit(cache=True, nogil=True)
def _row_units(row_len, pointwise):
    """Tiles of a row in :func:`_unit_span`'s numbering: a 1x1 layer's rows
    (whole planes) have the head tile besides, possibly empty."""
    return (row_len + SPAN - 1) // SPAN + (1 if pointwise else 0)


@njit(cache=True, nogil=True)
def _prefetch_run(x, at, first_x0, stop, d):
    """Hint into L2 the input lines one channel of a run of 1x1 tiles reads:
    output pixels ``first_x0`` to ``stop`` of a plane whose input starts at
    ``x[at]`` (row by row at a stride)."""
    if d.stride_h == 1 and d.stride_w == 1:
        for i in range(first_x0, stop, LINE):
            prefetch_to_l2(x, at + i)
        prefetch_to_l2(x, at + stop - 1)
        return
    Wo = d.out_width
    for y in range(first_x0 // Wo, (stop - 1) // Wo + 1):
        row = at + y * d.stride_h * d.width
        lo = max(first_x0, y * Wo) - y * Wo
        hi = min(stop, (y + 1) * Wo) - y * Wo
        for i in range(lo * d.stride_w, (hi - 1) * d.stride_w + 1, LINE):
            prefetch_to_l2(x, row + i)
        prefetch_to_l2(x, row + (hi - 1) * d.stride_w)


@njit(cache=True, nogil=True)
def _pack_run(x, x_at, offsets, reduction, panels, panel, first, count, head, d):
    """Copy the input of tiles ``first`` to ``first + count`` of a 1x1
    layer's output planes (one row of ``Ho*Wo`` pixels each, tiles from
    :func:`_unit_span` after ``head``) into ``panels`` from ``panel`` on,
    tile by tile, each as ``reduction`` runs of ``SPAN`` floats (its input
    at every step, contiguous), pixel ``(y, x)`` reading input pixel
    ``(y*stride_h, x*stride_w)``.  A short last tile's runs are zero-padded
    to whole vectors (lanes never stored, but whatever lay there could be
    denormal numbers, which cost a microcode assist per FMA on some CPUs).
    Channel by channel, with the input of a channel
    ``PIXELS_PACK_PREFETCH_BYTES`` ahead hinted into L2: each channel's run
    lies on other pages, where no hardware prefetcher follows."""
    Wo = d.out_width
    row_len = d.out_height * Wo
    first_x0 = _unit_span(first, head, 1, row_len)[0]
    last_x0, last_valid = _unit_span(first + count - 1, head, 1, row_len)
    stop = last_x0 + last_valid
    if stop <= first_x0:
        return
    dense = d.stride_h == 1 and d.stride_w == 1
    ahead = max(1, PIXELS_PACK_PREFETCH_BYTES // (FLOAT32_BYTES * (stop - first_x0)))
    for k in range(reduction):
        if k + ahead < reduction:
            _prefetch_run(x, x_at + offsets[k + ahead], first_x0, stop, d)
        for t in range(count):
            x0, valid = _unit_span(first + t, head, 1, row_len)
            lanes = (valid + VL - 1) // VL * VL
            to = panel + (t * reduction + k) * SPAN
            if dense:
                at = x_at + x0 + offsets[k]
                for q in range(valid):
                    panels[(to + q) & NONNEG] = x[(at + q) & NONNEG]
            else:  # the tile's pixels row by row: a strided run per output row
                q = 0
                y, xx = x0 // Wo, x0 % Wo
                while q < valid:
                    run = min(Wo - xx, valid - q)
                    at = x_at + offsets[k] + y * d.stride_h * d.width + xx * d.stride_w
                    for u in range(run):
                        panels[(to + q + u) & NONNEG] = x[(at + u * d.stride_w) & NONNEG]
                    q += run
                    xx = 0
                    y += 1
            for q in range(valid, lanes):
                panels[(to + q) & NONNEG] = np.float32(0.0)


@njit(parallel=True, cache=True)
def _pixels_conv(x, w, bias, out, table_store, panels, geometry, images, x_image, x_group, row_step, rows, row_len,
                 pointwise, m_chunks, u_chunks, unit_block, staged_rows, phase_len, slots, copies, in_place, plain,
                 prefetch_next):
    """``images`` images of ``x`` (``x_image`` floats apart, groups
    ``x_group`` apart, output rows ``row_step`` apart) into ``out``, the
    items shared by ``slots`` threads.  ``table_store`` holds the int64
    offset of every reduction step's input (of a 1x1 layer, its channel
    planes, which the strided tile steps through without reading it).
    ``pointwise`` (a 1x1 kernel without padding: each output plane one row):
    the tiles read the input planes where they are when ``in_place`` holds
    (:func:`reads_in_place`), else each slot copies a run of tiles into its
    share of ``panels`` and the tiles read it there.  Read in place with
    ``copies``, a run's first channel block copies the input it reads into
    the panel, and the item's other blocks read it there.  ``plain`` (read
    in place without copies, on planes at least a tile and a vector long, so
    that the input's last tile can always move back): every tile runs in
    :func:`_sweep_planes`, which reads neither the table nor the panels
    (both empty then), its runs' first channel block hinting the next tile's
    input into L2 with ``prefetch_next``."""
    d = KernelGeometry(*geometry)
    reduction = d.channels_per_group * d.kernel_taps
    offsets = table_store.view(np.int64)[:reduction]
    if not plain:
        _fill_offsets(offsets, d, pointwise, staged_rows, phase_len)
    plane_step = d.height * d.width if pointwise else 0  # 1x1: step k reads channel plane k
    G, M = d.groups, d.out_channels
    mg = d.out_channels_per_group
    blocks = (mg + PIXEL_CHANNELS - 1) // PIXEL_CHANNELS
    plane = d.out_height * d.out_width
    lead = 1 if pointwise else 0
    row_units = _row_units(row_len, pointwise)
    units = rows * row_units
    has_bias = 1 if bias.size else 0
    items = images * G * m_chunks * u_chunks
    panel_size = unit_block * reduction * SPAN
    # Read in place, every plane starts at the same offset from a vector
    # boundary when planes are whole vectors: the tiles then start on vector
    # boundaries ``head`` floats into each plane, and no load straddles two
    # cache lines.  A plane's last vector may read past its end (into the
    # next plane; lanes never stored); a tile that would read past the
    # input's end moves back, or, on a plane narrower than it, goes through
    # its panel.  Panels start on a line.
    whole_vectors = (d.height * d.width) % VL == 0
    pack = pointwise and not in_place
    head = vector_head(x.ctypes.data) if in_place and whole_vectors else 0
    first = (-panels.ctypes.data // FLOAT32_BYTES) % LINE if pointwise else 0
    if plain and slots == 1:
        _sweep_planes(x, w, bias, out, d, 0, items, units, m_chunks, u_chunks, unit_block, head, x_image, has_bias,
                      prefetch_next)
        return
    # The last step's input offset, read once here: inside the prange body
    # Numba hoists the read out of the loop, where it ran on the plain
    # sweep's empty table too (an out-of-bounds read, caught by
    # NUMBA_BOUNDSCHECK).
    last_offset = 0 if plain else offsets[reduction - 1]
    for slot in prange(slots):
        if plain:
            _sweep_planes(x, w, bias, out, d, slot * items // slots, (slot + 1) * items // slots, units, m_chunks,
                          u_chunks, unit_block, head, x_image, has_bias, prefetch_next)
        else:
            panel = first + slot * panel_size
            for item in range(slot * items // slots, (slot + 1) * items // slots):
                ng, mb0, mb1, u_begin, u_end = tile_bounds(item, blocks, units, m_chunks, u_chunks)
                n = ng // G
                g = ng % G
                # Runs of ``unit_block`` tiles, every channel block over each run: the
                # run's input stays in cache, and the outputs go to the planes of one
                # channel block at a time (few write streams).
                for run in range(u_begin, u_end, unit_block):
                    run_end = min(u_end, run + unit_block)
                    if pack:  # one row: unit = tile
                        _pack_run(x, n * x_image + g * x_group, offsets, reduction, panels, panel, run,
                                  run_end - run, 0, d)
                    for mb in range(mb0, mb1):
                        for unit in range(run, run_end):
                            r = unit // row_units
                            x0, valid = _unit_span(unit % row_units, head, lead, row_len)
                            if valid <= 0:
                                continue
                            vectors = (valid + VL - 1) // VL
                            row_at = n * x_image + g * x_group + r * row_step
                            overrun = row_at + x0 + last_offset + vectors * VL - x.size if in_place else 0
                            if 0 < overrun <= x0:
                                # The input's last tile, whose last vector would read past the
                                # input's end, moves back onto pixels the tile before computes
                                # too (the same products in the same order: the same values).
                                x0 -= overrun
                                valid += overrun
                            src, src_at, kstep = x, row_at + x0, plane_step
                            at = panel + (unit - run) * reduction * SPAN
                            copying = False
                            if pack:
                                src, src_at, kstep = panels, at, SPAN
                            elif in_place and src_at + last_offset + vectors * VL > x.size:
                                if mb == mb0:
                                    _pack_run(x, n * x_image + g * x_group, offsets, reduction, panels, at, unit, 1,
                                              head, d)
                                src, src_at, kstep = panels, at, SPAN
                            elif in_place and copies and mb1 - mb0 > 1:
                                # The first channel block reads the planes and copies what it
                                # reads into the panel, which the other blocks then read.
                                if mb == mb0:
                                    copying = True
                                else:
                                    src, src_at, kstep = panels, at, SPAN
                            m0 = g * mg + mb * PIXEL_CHANNELS  # the block's first output channel
                            w_at = m0 * reduction
                            o_at = (n * M + m0) * plane + r * row_len + x0
                            mc = min(PIXEL_CHANNELS, mg - mb * PIXEL_CHANNELS)
                            if copying:
                                _run_copying_tile(vectors, w, w_at, reduction, src, src_at, kstep, reduction, out, o_at,
                                                  plane, valid, mc, bias, m0, has_bias, panels, at)
                            else:
                                _run_tile(vectors, w, w_at, reduction, src, src_at, offsets, kstep, reduction, out,
                                          o_at, plane, valid, mc, bias, m0, has_bias)


@njit(cache=True, nogil=True, inline="always")
def _zero(dest, start, stop):
    """``dest[start:stop] = 0`` as a loop: a slice assignment costs a view
    (tens of ns), and a staged image has two short runs of zeros per row
    and phase."""
    for i in range(start, stop):
        dest[i & NONNEG] = 0.0


@njit(parallel=True, cache=True)
def _stage(x, x_at, geometry, dest, rows, phase_len):
    """One image as ``C`` planes of ``rows`` padded rows, each split into
    ``stride_w`` phases of ``phase_len`` values (zeros outside the image).
    Each phase is a zero run, a (strided) copy and a zero run, without a
    test per element, indices kept non-negative so that no wraparound check
    stops LLVM, and stride 2 (most strided layers) a constant, which LLVM
    vectorises.  MobileNet's conv1 (Intel Xeon kind, one thread, best of
    200) staged in 0.18 ms element by element with a test each, in
    0.053-0.066 ms with slice assignments for the zeros and any stride, and
    in 0.044-0.045 ms so."""
    d = KernelGeometry(*geometry)
    C, H, W, S, PL = d.in_channels, d.height, d.width, d.stride_w, d.pad_left
    for cr in prange(C * rows):
        c = cr // rows
        y = cr % rows - d.pad_top
        at = cr * S * phase_len
        if not 0 <= y < H:
            _zero(dest, at, at + S * phase_len)
            continue
        src = x_at + (c * H + y) * W
        for phase in range(S):
            base = at + phase * phase_len
            # Positions u whose column u*S + phase - PL lies in [0, W).
            lo = min(phase_len, max(0, (PL - phase + S - 1) // S))
            hi = max(lo, min(phase_len, (W - 1 + PL - phase) // S + 1))
            _zero(dest, base, base + lo)
            first = src + lo * S + phase - PL
            if S == 2:
                for u in range(hi - lo):
                    dest[(base + lo + u) & NONNEG] = x[(first + u * 2) & NONNEG]
            else:
                for u in range(hi - lo):
                    dest[(base + lo + u) & NONNEG] = x[(first + u * S) & NONNEG]
            _zero(dest, base + hi, base + phase_len)


# ----------------------------------------------------------------- plan

def _staged_shape(g):
    """``(rows, phase_len)`` of a staged image."""
    rows = (g.out_height - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1
    reach = ((g.kernel_w - 1) * g.dilation_w) // g.stride_w
    return rows, ceil_div(g.out_width, VL) * VL + reach + VL


def _plan(g, threads):
    if g.batch == 0 or g.out_height <= 0 or g.out_width <= 0:
        return KernelPlan(tiling=(), parallel_items=1)
    # A 1x1 kernel without padding needs no padded copy: each output plane is
    # one row of Ho*Wo pixels, read in place or gathered into panels.
    pointwise = unpadded_1x1(g)
    rows, row_len = (1, g.out_height * g.out_width) if pointwise else (g.out_height, g.out_width)
    images = g.batch if pointwise else 1  # staged: one image per launch
    blocks = ceil_div(g.out_channels_per_group, PIXEL_CHANNELS)
    units = rows * _row_units(row_len, pointwise)
    split = split_work(images * g.groups, blocks, max(1, units), threads, min_rows=1, min_cols=1)
    if pointwise:
        x_image, x_group, row_step = g.in_channels * g.height * g.width, g.channels_per_group * g.height * g.width, 0
        staged = 0
    else:
        staged_rows, phase_len = _staged_shape(g)
        row = g.stride_w * phase_len
        x_image, x_group, row_step = 0, g.channels_per_group * staged_rows * row, g.stride_h * row
        staged = g.in_channels * staged_rows * row
    # Lanes computed: the vectors of every row's tiles; channels in whole blocks.
    pixels = round(rows * sum(_row_tile_vectors(row_len)) * VL)
    unit_block = max(1, PIXELS_RUN_BYTES // (FLOAT32_BYTES * SPAN * g.channels_per_group * g.kernel_taps))
    slots = max(1, min(threads, split.items))
    # A strided 1x1 layer's panels gather every input value a tile reads, once
    # per chunk of channel blocks, at PIXELS_GATHER_COST (stride 1: a copy
    # that replaces reads of equal cost, or none; see the module docstring).
    strided = pointwise and g.stride != (1, 1)
    gathered = g.in_channels * g.out_height * g.out_width * split.row_blocks if strided else 0
    in_place = pointwise and reads_in_place(g)
    # Read in place, the first channel block copies its tiles' input into the
    # panel for the other blocks (see PIXELS_COPY_MIN_REDUCTION and
    # PIXELS_COPY_MIN_CHANNELS).
    copies = (pointwise and g.channels_per_group >= PIXELS_COPY_MIN_REDUCTION
              and FLOAT32_BYTES * g.batch * g.in_channels * g.height * g.width <= PIXELS_COPY_MAX_BYTES
              and row_len % VL != 0 and g.out_channels_per_group >= PIXELS_COPY_MIN_CHANNELS)
    # Read in place without copies, on planes at least a tile and a vector
    # long (so that the input's last tile can always move back), every tile
    # runs in _sweep_planes, which needs neither the offset table nor panels:
    # no workspace (allocating GoogLeNet's 45 KiB on every call cost 1.6 us
    # of its 28 us 480->16 on 14x14, one thread, timed between calls).
    plain = in_place and not copies and row_len >= SPAN + VL
    # Where an image's input comes from beyond L2, the plain sweep's first
    # channel block of each run hints the next tile's into L2
    # (PIXELS_PREFETCH_NEXT_L2_SHARE).
    prefetch_next = plain and x_image * FLOAT32_BYTES > PIXELS_PREFETCH_NEXT_L2_SHARE * l2_bytes()
    table = 0 if plain else _table_elements(g)
    panels = _panel_elements(g, slots, unit_block) if pointwise and not plain else 0
    tiling = (images, x_image, x_group, row_step, rows, row_len, pointwise, split.row_blocks, split.col_tiles,
              unit_block, table, staged, slots, panels, copies, in_place, plain, prefetch_next)
    return KernelPlan(tiling=tiling, scratch_elements=table + staged + panels,
                      gemms=((g.batch * g.groups, pixels, blocks * PIXEL_CHANNELS,
                              g.channels_per_group * g.kernel_taps),),
                      moved_elements=g.batch * (staged + round(gathered * PIXELS_GATHER_COST)),
                      parallel_items=split.items,
                      balance=(_plane_split_balance(row_len, split.col_tiles, split.items, threads)
                               if pointwise and split.col_tiles > 1 else 1.0),
                      launches=1 if pointwise else 2 * g.batch, serial=_runs_serially(g, pointwise, slots, plain),
                      tile_kernel=None if pointwise else "pixels_staged",
                      # Read in place on planes of whole vectors, the tiles start on
                      # the input's vector boundaries, and so on the output's when it
                      # starts as far from a line (ALIGNED_OUTPUT_MIN_BYTES).
                      output_follows_input=in_place and row_len % VL == 0)


def _runs_serially(g, pointwise, slots, plain) -> bool:
    """Whether a call runs :func:`_pixels_conv`'s serial twin, outside any
    parallel region: 1x1 layers on one slot whose tiles all run in the plain
    sweep, or whose planes are at most ``PIXELS_SERIAL_MAX_PLANE`` pixels
    and whose multiply-adds at most ``PIXELS_SERIAL_MAX_MACS``."""
    if not (pointwise and slots == 1):
        return False
    plane = g.out_height * g.out_width
    return plain or (plane <= PIXELS_SERIAL_MAX_PLANE
                     and g.batch * plane * g.channels_per_group * g.out_channels <= PIXELS_SERIAL_MAX_MACS)


_pixels_conv_serial = serial_twin(_pixels_conv, "_pixels_conv_serial")


def _plane_split_balance(row_len, chunks, items, threads):
    """Wall time of a 1x1 layer's ``items`` (planes of ``row_len`` pixels,
    each cut into ``chunks`` equal runs of tiles, item ``i`` being run ``i %
    chunks``) on ``threads`` threads, each an equal contiguous share of the
    items as prange gives them, relative to a perfect share of the work.
    Tiles are priced by ``_row_tile_vectors``; the head tile is taken as
    empty.  A 7x7 plane (AVX2: 3 + 3 + 1.95 vectors) cut in two on two
    threads is 3 against 4.95: 1.25.
    On two threads GoogLeNet's 5a and 5b 1x1 layers at batch 1 had run
    1.30-1.46x their prediction, against 1.05-1.16 for direct-ukernel, which
    cuts channel blocks (AMD Zen 3 kind, functional, best of 6 alternating)."""
    units = _row_units(row_len, True)
    cost = [0.0] + _row_tile_vectors(row_len)
    runs = [sum(cost[i * units // chunks:(i + 1) * units // chunks]) for i in range(chunks)]
    shares = [sum(runs[i % chunks] for i in range(t * items // threads, (t + 1) * items // threads))
              for t in range(min(threads, items))]
    total = sum(shares)
    return max(1.0, max(shares) * len(shares) / total) if total > 0 else 1.0


def _row_tile_vectors(row_len):
    """What each tile of a row of ``row_len`` pixels costs, in vectors of a
    full tile's time: whole ``SPAN`` runs at ``PIXEL_VECTORS``, a narrower
    last one at what it costs (``TILE_VECTORS``)."""
    full, rest = divmod(ceil_div(row_len, VL), PIXEL_VECTORS)
    return [float(PIXEL_VECTORS)] * full + ([TILE_VECTORS[rest]] if rest else [])


def _table_elements(g):
    """float32 elements holding the int64 offset table, in whole vectors."""
    return ceil_div(2 * g.channels_per_group * g.kernel_taps, VL) * VL


def _panel_elements(g, slots, unit_block):
    """float32 elements of the packed panels: a run of ``unit_block`` tiles
    per slot, plus the floats that move the first onto a cache line."""
    return slots * unit_block * g.channels_per_group * g.kernel_taps * SPAN + LINE


def _compute(x, weights, bias, out, scratch, g, kernel):
    if g.batch == 0 or g.out_height <= 0 or g.out_width <= 0:
        return
    (images, x_image, x_group, row_step, rows, row_len, pointwise, m_chunks, u_chunks, unit_block, table,
     staged, slots, panels, copies, in_place, plain, prefetch_next) = kernel.tiling
    geometry = kernel_geometry(g)
    table_store = scratch[:table]
    panel_store = scratch[table + staged:table + staged + panels]
    if pointwise:
        conv = _pixels_conv_serial if kernel.serial else _pixels_conv
        conv(x, weights, bias, out, table_store, panel_store, geometry, images, x_image, x_group, row_step,
             rows, row_len, True, m_chunks, u_chunks, unit_block, 0, 0, slots, copies, in_place, plain,
             prefetch_next)
        return
    staged_rows, phase_len = _staged_shape(g)
    image, plane = g.in_channels * g.height * g.width, g.out_channels * g.out_height * g.out_width
    buffer = scratch[table:table + staged]
    for n in range(g.batch):
        _stage(x, n * image, geometry, buffer, staged_rows, phase_len)
        _pixels_conv(buffer, weights, bias, out[n * plane:(n + 1) * plane], table_store, panel_store, geometry, 1,
                     x_image, x_group, row_step, rows, row_len, False, m_chunks, u_chunks, unit_block, staged_rows,
                     phase_len, slots, False, False, False, False)


register(Algorithm(
    name="direct-pixels",
    family="ukernel",
    calls_blas=False,
    summary=f"Direct convolution on an own register tile of {PIXEL_CHANNELS} output channels by "
            f"{SPAN} output pixels (pixels in the lanes, stored straight into NCHW planes); "
            "1x1 layers without padding read the input in place or gather runs of tiles into packed panels, "
            "others stage a zero-padded copy split by column phase.",
    workspace_formula="C·rows·stride_w·(Wo + slack) (a padded copy of one image), or for 1x1 without "
                      f"padding: threads·run·C/g·{SPAN} + 16 (packed input panels; run = tiles of {SPAN} pixels "
                      f"whose input fits {PIXELS_RUN_BYTES // 1024} KiB), or 0 where every tile reads the "
                      "input in place",
    unsupported=lambda g: None,
    packed_weight_elements=lambda g: 0,
    pack_weights=None,
    tile_kernel="pixels",
    plan_kernel=_plan,
    compute=_compute,
    claims="any kernel, stride, padding, dilation and groups; NCHW",
    input_layout="NCHW",
    output_layout="NCHW",
))
