"""winograd-2x2-3x3, winograd-4x4-3x3, winograd-2x2-5x5: fused, tile-blocked Winograd.

Winograd's minimal filtering F(m x m, r x r) computes an ``m x m`` block of a
stride-1 ``r x r`` convolution from an ``a x a`` input tile (``a = m + r - 1``)
as ``Y = A^T [ sum_c (G w_c G^T) * (B^T d_c B) ] A``: the reduction over input
channels becomes ``a^2`` independent products of (tiles x C) by (C x M), one per
transform point, with ``a^2 / (m^2 r^2)`` of the direct convolution's
multiplications (1/2.25 for F(2x2,3x3), 1/4 for F(4x4,3x3), 1/2.78 for
F(2x2,5x5)).  torch on x86 has no Winograd, so these run 3x3 and 5x5 stride-1
layers with fewer multiplications than any direct or GEMM method can.

Transform points
----------------
The matrices come from the Toom-Cook construction (:func:`toom_cook`) at the
points named in :data:`VARIANTS`: 0, 1, -1 and infinity for F(2x2,3x3); 0, +-1,
+-2 and infinity for F(4x4,3x3) and F(2x2,5x5).  Small integers keep every
input and output coefficient an integer (exact in float32, products by +-1 are
free) and the condition number low: measured float32 error against float64 is
that of direct summation for F(2x2,3x3) and 3-4.5x it for F(4x4,3x3)
(``/work/shared/notes/microkernel.md``); points +-1/2 (for a = 8) would add
another factor of 2-3, so F(6x6,3x3) is not offered.

Fused and tile-blocked
----------------------
Nothing holds the transform of a whole image.  The tiles of a group are
numbered over the batch, and each thread takes whole blocks of ``tile_block``
of them (a block may end one image and start the next), in turn:

1. transforms the block's input tiles into ``V[point][tile][c]``: an NHWC
   tile in place, or staged with its zero padding first at the image's
   edges; NCHW tiles, a run of them along a row of tiles at a time, from a
   strip of the run's input rows staged channels last by register
   transposes (:func:`_stage_strip`), read as an NHWC image is.  Staged
   tile by tile instead, gathering each pixel's channels from their planes
   (a line each), NCHW layers ran 1.2-1.5x slower than NHWC on 112x112 and
   224x224 images and 1.1-1.3x on 28x28 and 56x56 (F(4x4,3x3) and
   F(2x2,3x3), one thread, Intel Xeon kind); from strips, prepacked calls
   at batch 1, one thread, best of 2-3 alternating processes: VGG-16's
   conv1_2 1.26-1.52x faster, conv2_2 1.21-1.23x, conv3_2 1.08-1.16x,
   ResNet-50's layer1 3x3 1.21-1.33x, GoogLeNet's conv2 and 3a 3x3
   1.05-1.20x, 13x13 and 14x14 layers 0.97-1.09x (batch 8: 1.01-1.29x,
   AlexNet's conv3 on F(2x2,3x3) 0.97x; two threads 0.97-1.53x);
2. for each block of ``NR`` output channels and each point, runs the
   micro-kernel of :mod:`lowmem_numba._microkernel` over the block's tiles
   (``MR`` tiles by ``NR`` channels in registers, reducing over C/g in blocks
   of ``WINOGRAD_REDUCTION_BLOCK`` channels whose sums it adds up in place)
   into ``Z[point][tile][lane]``;
3. inverse-transforms each tile of ``Z`` and stores it into the output with
   the bias, clipping the partial tiles at the right and bottom edges: NCHW
   outputs a row of a run of tiles at a time, ``VL`` pixels transposed to
   channel vectors (:func:`_store_row_vectors`).  Stored pixel by pixel
   instead (a pixel's channels, one plane apart, a line each), or on planes
   a multiple of 4 KiB apart a channel's rows of a tile at a time (4 floats
   a line: 224x224 planes fall in one L1 set), VGG-16's conv1_2 (224x224,
   F(4x4,3x3), prepacked, batch 1, one thread) ran 1.61x as long as NHWC
   (23.4 against 14.5 ms); transposed, 1.18x (15.1 against 12.8, the same
   process alternating).

A functional call whose batch has at most ``WINOGRAD_IN_KERNEL_TILES``
tiles transforms the weights inside the kernel (:func:`_plan_packing`; under
a ``memory_limit`` too, if its scratch fits): one
tile block holds all of a group's tiles over the batch, and step
2 runs per reduction block of ``WINOGRAD_REDUCTION_BLOCK`` input channels,
whose weights the slot transforms into its own scratch first, then per point;
each point's sums are added in the same order, so the result is bit for bit
that of weights transformed beforehand.

The transforms are separable (rows, then columns) and vectorised along the
channels; the input transform of each whole vector of a tile's channels runs
in registers (:func:`_input_transform`, the same float32 sums in the same
order as the loops over memory it replaced, which took a fifth of a 14x14
layer's time: F(4x4,3x3) layers 1.10-1.27x faster, F(2x2,5x5) 1.15-1.20x);
they apply only the non-zero coefficients, so a NaN or infinity in
the input reaches exactly the transform points whose coefficient on it is not
zero, and through them the outputs of its tile that the README lists.

Workspace
---------
Per thread: ``V`` (a^2 * tile_block * C/g), ``Z`` (a^2 * tile_block * NR),
the staging of one tile's channels, at most ``WINOGRAD_STAGE_CHANNELS`` at a
time (2 a^2 max(min(C/g, 64), VL): the last channels short of a vector go
through a zero-padded vector), the inverse transform's passes (a m + m^2)
tile_block NR, and in NCHW the strip of a run's input rows, ``a`` rows of
``(min(tile_block, tiles per row) - 1) m + a`` columns and ``STRIP_SLACK``
more, of min(C/g, 64) channels (20-91 KiB on 14x14 to 56x56 images, 343
KiB on VGG-16's 224x224 conv1_2 with F(4x4,3x3)), after the int64 column
offsets of its transposes (2 VL); plus the
transformed weights ``a^2 * M * C/g`` (rounded up to
NR channels per group, and NR floats more per point and group: see
:func:`point_stride`), which a :class:`~lowmem_numba.Conv2d` keeps and the
functional API builds per call, through per-thread staging of its own
(:func:`pack_scratch_elements`): the transform runs in float64 registers
(:func:`lowmem_numba._microkernel.make_separable_transform`) and rounds once.
Transformed inside the kernel, they take instead, per thread, their staging
and one reduction block of them (r^2 (``WINOGRAD_PACK_CHANNELS`` + 1) NR +
a^2 (min(C/g, ``WINOGRAD_REDUCTION_BLOCK``) + 1) NR: each point's block one
NR row longer than its channels, see :func:`_winograd_conv`).
``tile_block`` is chosen so that one thread's ``V`` and ``Z`` fill half of L2
(:func:`tile_block`), at least one micro-kernel tile (``MR`` tiles).
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np
from numba import prange

from .._caches import l2_bytes, l3_bytes
from .._compile import NONNEG, njit  # numba.njit whose cache=True never fails (see _compile)
from .._microkernel import (ACCUMULATE, MR, NR, SMALL_MR, VL, make_separable_transform, tile_row_transpose_2,
                            tile_row_transpose_4, transpose_block)
from .._plan import FLOAT32_BYTES, KernelPlan
from .._registry import Algorithm, register
from .._split import split_work
from .._tuning import (WINOGRAD_IN_KERNEL_TILES, WINOGRAD_PACK_CHANNELS, WINOGRAD_PACK_COST,
                       WINOGRAD_PACK_IN_KERNEL_COST, WINOGRAD_REDUCTION_BLOCK, WINOGRAD_SLOT_CACHE_FRACTION,
                       WINOGRAD_STAGE_CHANNELS, WINOGRAD_TILE_POINT_COST, WINOGRAD_TRANSFORM_COST,
                       WINOGRAD_TRANSFORM_FLOPS_PER_ELEMENT,
                       WINOGRAD_WEIGHT_MEMORY_READ_COST,
                       WINOGRAD_WEIGHT_READ_COST)
from ._common import NO_ARRAY, KernelGeometry, ceil_div, kernel_geometry
from .ukernel import FULL, HALF, pack_lanes, run_tiles, scatter_offsets

# ----------------------------------------------------------------- transforms


def toom_cook(m: int, r: int, points) -> tuple:
    """Winograd matrices of F(m, r) from its finite interpolation points.

    Parameters
    ----------
    m, r : int
        Outputs per tile and kernel size (one dimension).
    points : sequence of int or Fraction
        The ``m + r - 2`` distinct finite points; infinity is the last one.

    Returns
    -------
    AT, G, BT : tuple of list of list of Fraction
        ``AT`` (m x a), ``G`` (a x r), ``BT`` (a x a) with ``a = m + r - 1``,
        such that ``y = AT @ ((G @ w) * (BT @ d))`` is the correlation
        ``y[i] = sum_k w[k] d[i + k]``, exactly.

    Notes
    -----
    ``AT`` evaluates at the points, ``G`` holds the Lagrange scaling
    ``1 / prod_{l != j} (p_j - p_l)``, and ``BT`` is solved exactly (in
    rationals) from the identity, which determines it uniquely.
    """
    alpha = m + r - 1
    p = [Fraction(v) for v in points]
    if len(p) != alpha - 1 or len(set(p)) != len(p):
        raise ValueError(f"F({m},{r}) needs {alpha - 1} distinct finite points; got {points!r}")
    f = [_product(p[j] - p[l] for l in range(alpha - 1) if l != j) for j in range(alpha - 1)]
    at = [[p[j] ** i for j in range(alpha - 1)] + [Fraction(i == m - 1)] for i in range(m)]
    g = [[p[j] ** k / f[j] for k in range(r)] for j in range(alpha - 1)]
    g.append([Fraction(k == r - 1) for k in range(r)])
    # sum_t AT[i,t] G[t,k] BT[t,j] = [j == i + k] for all i, k, j: one linear
    # system per column j of BT, with rows (i, k).
    system = [[at[i][t] * g[t][k] for t in range(alpha)] for i in range(m) for k in range(r)]
    targets = [[Fraction(j == i + k) for j in range(alpha)] for i in range(m) for k in range(r)]
    bt = _solve(system, targets)  # alpha x alpha: rows t, columns j
    for j in range(alpha - 1):
        if f[j] < 0:  # same identity with a positive scaling (as usually printed)
            g[j] = [-v for v in g[j]]
            bt[j] = [-v for v in bt[j]]
    return at, g, bt


def _product(values):
    out = Fraction(1)
    for v in values:
        out *= v
    return out


def _solve(a, b):
    """Exact solution ``x`` of the consistent system ``a @ x = b`` (full column rank)."""
    rows, cols = len(a), len(a[0])
    aug = [list(a[i]) + list(b[i]) for i in range(rows)]
    pivot_rows = []
    row = 0
    for col in range(cols):
        pivot = next((i for i in range(row, rows) if aug[i][col] != 0), None)
        if pivot is None:
            raise ValueError("Winograd points give a singular system")
        aug[row], aug[pivot] = aug[pivot], aug[row]
        lead = aug[row][col]
        aug[row] = [v / lead for v in aug[row]]
        for i in range(rows):
            if i != row and aug[i][col] != 0:
                factor = aug[i][col]
                aug[i] = [v - factor * w for v, w in zip(aug[i], aug[row])]
        pivot_rows.append(row)
        row += 1
    if any(v != 0 for i in range(row, rows) for v in aug[i]):
        raise ValueError("Winograd identity has no exact solution at these points")
    return [aug[i][cols:] for i in range(cols)]


#: name -> (m, r, finite points).  Small integer points: every coefficient of
#: AT and BT is an integer, and the error stays near direct summation's.
VARIANTS = {
    "winograd-2x2-3x3": (2, 3, (0, 1, -1)),
    "winograd-4x4-3x3": (4, 3, (0, 1, -1, 2, -2)),
    "winograd-2x2-5x5": (2, 5, (0, 1, -1, 2, -2)),
}


@functools.lru_cache(maxsize=None)
def matrices(name: str) -> tuple:
    """``(AT, G, BT)`` of a variant as read-only arrays: AT and BT float32
    (small integers, exact), G float64 (the weights are transformed in float64
    and rounded once)."""
    m, r, points = VARIANTS[name]
    at, g, bt = toom_cook(m, r, points)
    arrays = (np.array(at, dtype=np.float32), np.array(g, dtype=np.float64), np.array(bt, dtype=np.float32))
    for array, exact in zip(arrays, (at, g, bt)):
        if array.dtype == np.float32 and any(Fraction(float(v)) != v for row in exact for v in row):
            raise ValueError(f"{name}: a transform coefficient is not exact in float32")
        array.flags.writeable = False
    return arrays


@njit(cache=True, nogil=True, inline="always")
def _transform(mat, src, s_off, s_step, dst, d_off, d_step, n):
    """``dst[d_off + k*d_step + c] = sum_l mat[k, l] * src[s_off + l*s_step + c]``
    for ``c < n``, applying only the non-zero coefficients (so 0 * inf never
    makes a NaN).

    Every inner loop runs over a slice: indexing ``dst[d_off + c]`` with a
    signed offset makes Numba check for negative indices, which keeps LLVM from
    vectorising (1.2 G terms/s against 22 with slices, 256 channels).
    """
    for k in range(mat.shape[0]):
        d = dst[d_off + k * d_step:d_off + k * d_step + n]
        first = True
        for l in range(mat.shape[1]):
            coef = mat[k, l]
            if coef == 0:
                continue
            s = src[s_off + l * s_step:s_off + l * s_step + n]
            if first:
                for c in range(n):
                    d[c] = coef * s[c]
                first = False
            else:
                for c in range(n):
                    d[c] += coef * s[c]


# ----------------------------------------------------------------- the kernel


#: The input transforms ``B^T d B`` of the variants, in :data:`VARIANTS`
#: order, in float32 like the loops of :func:`_transform`.
_input_f2_3, _input_f4_3, _input_f2_5 = (
    make_separable_transform(toom_cook(*spec)[2], wide=False) for spec in VARIANTS.values())


@njit(cache=True, nogil=True, inline="always")
def _input_transform(variant, src, s_off, s_row, s_col, dst, d_off, d_step):
    """``B^T d B`` of variant number ``variant`` on ``VL`` channels: tile
    value ``d[i][j]`` at ``src[s_off + i*s_row + j*s_col:][:VL]``, point
    ``p`` of the result at ``dst[d_off + p*d_step:][:VL]``.  The tile goes
    in transposed (and the result comes out so), so that the sums run in
    the order of :func:`_input_tile`'s loops: along each tile row first,
    then down the columns, the same float32 roundings."""
    a = _SIDES[variant][0]
    if variant == 0:
        _input_f2_3(src, s_off, s_col, s_row, dst, d_off, d_step, a * d_step)
    elif variant == 1:
        _input_f4_3(src, s_off, s_col, s_row, dst, d_off, d_step, a * d_step)
    else:
        _input_f2_5(src, s_off, s_col, s_row, dst, d_off, d_step, a * d_step)


@njit(cache=True, nogil=True, inline="always")
def _input_tile(x, d, n, g, y0, x0, variant, alpha, buf, p_off, t_off, v_off, v_step, chunk):
    """``B^T d B`` of the ``alpha x alpha`` input tile at (y0, x0) (may reach
    into the padding) of every channel of group ``g`` of NHWC image ``n``,
    into ``buf[v_off + point * v_step + c]``, ``chunk`` channels at a time:
    in place inside the image (channels are contiguous), else staged with
    its zeros as ``[i][j][c]`` first."""
    C, H, W, cg = d.in_channels, d.height, d.width, d.channels_per_group
    in_place = y0 >= 0 and x0 >= 0 and y0 + alpha <= H and x0 + alpha <= W
    for c0 in range(0, cg, chunk):
        cs = min(chunk, cg - c0)
        if in_place:
            src, s_off, s_row, s_col = x, ((n * H + y0) * W + x0) * C + g * cg + c0, W * C, C
        else:
            for i in range(alpha):
                for j in range(alpha):
                    at = p_off + (i * alpha + j) * cs
                    staged = buf[at:at + cs]
                    iy, ix = y0 + i, x0 + j
                    if iy < 0 or iy >= H or ix < 0 or ix >= W:
                        staged[:] = 0.0
                    else:
                        pixel = ((n * H + iy) * W + ix) * C + g * cg + c0
                        staged[:] = x[pixel:pixel + cs]
            src, s_off, s_row, s_col = buf, p_off, alpha * cs, cs
        _transform_staged(variant, src, s_off, s_row, s_col, cs, buf, v_off + c0, v_step, t_off, p_off, alpha)


@njit(cache=True, nogil=True, inline="always")
def _stage_strip(x, d, n, g, y0, x0, width, alpha, c0, cs, buf, s_off, columns):
    """Rows ``y0 .. y0+alpha`` by columns ``x0 .. x0+width`` of channels
    ``c0 .. c0+cs`` of group ``g`` of NCHW image ``n`` (zeros outside the
    image), channels last: value (i, j) of channel ``c`` at ``buf[s_off +
    (i*width + j)*cs + c]``, where a run of tiles reads them as it would an
    NHWC image's.  Whole vectors of channels go through register transposes
    of ``VL`` columns (``columns[j] = j*cs``), the last one of a row reaching
    past the image's columns (past its row or channel, never past ``x``): the
    values it brings are overwritten by the row's right padding and the
    next rows, or land in the ``STRIP_SLACK`` columns after the strip.  The
    channels past the whole vectors go element by element."""
    H, W, cg = d.height, d.width, d.channels_per_group
    plane = H * W
    lo = min(width, max(0, -x0))
    hi = max(lo, min(width, W - x0))
    whole = cs - cs % VL
    for i in range(alpha):
        y = y0 + i
        row = s_off + i * width * cs
        if y < 0 or y >= H:
            buf[row:row + width * cs] = 0.0
            continue
        buf[row:row + lo * cs] = 0.0
        first = ((n * d.in_channels + g * cg + c0) * H + y) * W + x0  # column j of channel c: first + c*plane + j
        for c in range(0, whole, VL):
            for j in range(lo, hi, VL):
                if first + (c + VL - 1) * plane + j + VL <= x.size:
                    transpose_block(x, first + c * plane + j, plane, buf, row + j * cs + c, columns, 0)
                else:  # the input's last values: no vector reaches past them
                    for k in range(j, hi):
                        for cc in range(c, c + VL):
                            buf[(row + k * cs + cc) & NONNEG] = x[(first + cc * plane + k) & NONNEG]
        for c in range(whole, cs):
            for k in range(lo, hi):
                buf[(row + k * cs + c) & NONNEG] = x[(first + c * plane + k) & NONNEG]
        buf[row + hi * cs:row + width * cs] = 0.0


@njit(cache=True, nogil=True, inline="always")
def _transform_staged(variant, src, s_off, s_row, s_col, cs, buf, v_off, v_step, t_off, p_off, alpha):
    """``B^T d B`` of one tile's ``cs`` channels, value ``d[i][j]`` of channel
    ``c`` at ``src[s_off + i*s_row + j*s_col + c]``, into ``buf[v_off +
    point*v_step + c]``.  Whole vectors of channels are transformed in
    registers (:func:`_input_transform`), and so are the last channels short
    of a vector, through a copy padded with zeros (at ``t_off``, the result
    at ``p_off``; ``src`` is read by then): by :func:`_transform`'s loops
    instead, F(2x2,5x5) on 14x14 images at batch 8 (64 output channels, one
    thread) took 0.88 ms on 8 input channels against 0.55 on 16, 1.09 on 24
    against 0.75 on 32 (now 0.54-0.59 and 0.74), F(4x4,3x3) 0.36 on 8
    against 0.25 on 16 (now 0.25)."""
    whole = cs - cs % VL
    for c in range(0, whole, VL):
        _input_transform(variant, src, s_off + c, s_row, s_col, buf, v_off + c, v_step)
    rest = cs - whole
    if rest:
        # Element by element at non-negative indices: slices cost more than
        # the copies on a few lanes.
        for i in range(alpha):
            for j in range(alpha):
                at = t_off + (i * alpha + j) * VL
                first = s_off + i * s_row + j * s_col + whole
                for lane in range(rest):
                    buf[(at + lane) & NONNEG] = src[(first + lane) & NONNEG]
                for lane in range(rest, VL):
                    buf[(at + lane) & NONNEG] = np.float32(0.0)
        _input_transform(variant, buf, t_off, alpha * VL, VL, buf, p_off, VL)
        for point in range(alpha * alpha):
            at = v_off + whole + point * v_step
            for lane in range(rest):
                buf[(at + lane) & NONNEG] = buf[(p_off + point * VL + lane) & NONNEG]


@njit(cache=True, nogil=True, inline="always")
def _tile_position(tile, tiles, tiles_x):
    """``(n, ty, tx)``: image, tile row and tile column of tile ``tile``
    (numbered over the batch, ``tiles`` per image, ``tiles_x`` per row)."""
    n, t = divmod(tile, tiles)
    ty, tx = divmod(t, tiles_x)
    return n, ty, tx


@njit(cache=True, nogil=True, inline="always")
def _tile_run(tile, left, tiles, tiles_x):
    """``(n, ty, tx, run)``: :func:`_tile_position` of tile ``tile``, and how
    many of the ``left`` tiles from it lie along its row of tiles: the run an
    NCHW strip stages and an NCHW output row stores."""
    n, ty, tx = _tile_position(tile, tiles, tiles_x)
    return n, ty, tx, min(left, tiles_x - tx)


@njit(cache=True, nogil=True, inline="always")
def _store_lanes(dest, values, lanes, has_bias):
    """``dest[q] = values[q] (+ lanes[q])`` for every ``q`` of ``values``:
    views, so that the loop indexes from zero without wraparound checks."""
    if has_bias:
        for q in range(values.size):
            dest[q] = values[q] + lanes[q]
    else:
        for q in range(values.size):
            dest[q] = values[q]


@njit(cache=True, nogil=True, inline="always")
def _store_row_vectors(tile, buf, s_off, plane, valid, out, d_off, d_stride, bias, b_off, has_bias):
    """``valid`` (at most ``VL``) pixels of a row of output tiles (``tile``
    pixels each, their channels in lanes) stored as ``VL`` channel vectors,
    ``d_stride`` apart: :data:`~lowmem_numba._microkernel.tile_row_transpose_4`
    and ``_2`` (the variants' tiles are 2 or 4 pixels a side)."""
    if tile == 4:
        tile_row_transpose_4(buf, s_off, plane, NR, valid, out, d_off, d_stride, bias, b_off, has_bias)
    else:
        tile_row_transpose_2(buf, s_off, plane, NR, valid, out, d_off, d_stride, bias, b_off, has_bias)


@njit(cache=True, nogil=True, inline="always")
def _output_block(out, d, nhwc, m0, nr, t0, count, tiles, tiles_x, at, alpha, tile, buf, z_off, r_off, y_off,
                  block, bias):
    """``A^T Z A`` of ``count`` tiles' ``Z[point][tile][lane]`` (channels m0 ..
    m0+nr; tiles ``t0 ..`` numbered over the batch, ``tiles`` per image), plus
    the bias, stored at each tile's place in the output, clipped to the
    output plane.  Both passes run over all tiles' lanes at once.  NHWC
    outputs are stored pixel by pixel (a pixel's channels are adjacent);
    NCHW outputs a row of a run of tiles along a row of tiles at a time, in
    groups of up to ``VL`` pixels transposed to channel vectors (one vector
    store per channel, :func:`_store_row_vectors`), the channels past whole
    vectors pixel by pixel."""
    M, HO, WO = d.out_channels, d.out_height, d.out_width
    plane = block * NR  # one (point, tile-block) plane of Z, R or Y
    length = count * NR
    has_bias = 1 if bias.size else 0
    # Rows: R[l][b] = sum_k AT[b, k] Z[l][k]; columns: Y[a][b] = sum_l AT[a, l] R[l][b].
    for l in range(alpha):
        _transform(at, buf, z_off + l * alpha * plane, plane, buf, r_off + l * tile * plane, plane, length)
    for b in range(tile):
        _transform(at, buf, r_off + b * plane, tile * plane, buf, y_off + b * plane, tile * plane, length)
    if nhwc:
        for k in range(count):
            n, ty, tx = _tile_position(t0 + k, tiles, tiles_x)
            y0, x0 = ty * tile, tx * tile
            for a in range(min(tile, HO - y0)):
                for b in range(min(tile, WO - x0)):
                    at_y = y_off + (a * tile + b) * plane + k * NR
                    pixel = ((n * HO + y0 + a) * WO + x0 + b) * M + m0
                    _store_lanes(out[pixel:pixel + nr], buf[at_y:at_y + nr], bias[m0:m0 + nr], has_bias)
        return
    area = HO * WO
    vectors = nr // VL if tile == 2 or tile == 4 else 0  # whole vectors of channels (see _store_row_vectors)
    k = 0
    while k < count:
        n, ty, tx, run = _tile_run(t0 + k, count - k, tiles, tiles_x)
        y0, x0 = ty * tile, tx * tile
        width = min(run * tile, WO - x0)
        for a in range(min(tile, HO - y0)):
            src = y_off + a * tile * plane + k * NR  # pixel i of the row: + (i % tile) * plane + (i // tile) * NR
            dst = (n * M + m0) * area + (y0 + a) * WO + x0
            for i in range(0, width, VL):
                for v in range(vectors):
                    _store_row_vectors(tile, buf, src + i // tile * NR + v * VL, plane, min(VL, width - i), out,
                                       dst + v * VL * area + i, area, bias, m0 + v * VL, has_bias)
            # The channels past whole vectors, pixel by pixel.
            first = vectors * VL
            rest = nr - first
            for q in range(run if rest else 0):
                for b in range(min(tile, width - q * tile)):
                    at_y = src + b * plane + q * NR + first
                    pixel = dst + first * area + q * tile + b
                    _store_lanes(out[pixel:pixel + rest * area:area], buf[at_y:at_y + rest], bias[m0 + first:m0 + nr],
                                 has_bias)
        k += run


@njit(cache=True, nogil=True)
def _slot_units(slot, slots, units, m_chunks, blocks, tile_block, tiles):
    """Units ``[first, end)`` of ``slot``: runs of about equal work, a unit's
    work being the tiles of its block (the last block of a group's ``tiles``
    is short), and a unit going to the slot its middle falls in.  Equal runs of units
    gave 13x13 images at batch 1 (blocks of 24, 24 and 1 tiles, two channel
    chunks each) 72 tiles' work on one thread and 26 on the other."""
    last = tiles - (blocks - 1) * tile_block
    per_image = (blocks - 1) * tile_block + last
    total = units // (blocks * m_chunks) * per_image * m_chunks
    first, end = units, units
    start = 0  # work of the units before ``unit``
    for unit in range(units):
        work = last if unit // m_chunks % blocks == blocks - 1 else tile_block
        middle = (2 * start + work) * slots  # twice the middle, scaled to slots
        if first == units and middle >= 2 * slot * total:
            first = unit
        if middle >= 2 * (slot + 1) * total:
            end = unit
            break
        start += work
    return first, max(first, end)


@njit(cache=True, nogil=True, inline="always")
def _products(u, w_at, v, x_at, x_row, z_at, count, tile_block, kc, half, bias, mode):
    """``Z[tile][lane] (+)= sum_c V[tile][c] U[c][lane]`` for one point's
    ``count`` tiles (rows ``x_row`` apart from ``x_at``) and ``kc`` channels of
    weights from ``w_at`` (``NR`` lanes per channel), on the micro-kernel; the
    half-width one when ``half``.  A block of at most one vector of channels
    (M/g = 16, the last block of 48) runs on the half-width micro-kernel, as
    the plan prices it (48 channels ran as 64 before: F(2x2,5x5) with 16 -> 48
    channels at 14x14, batch 8, took 1.20 ms)."""
    run_tiles(HALF if half else FULL, u, w_at, NR, 0, 0, 0, v, x_at, 0, x_row, 1, 0, 0, 0, count, tile_block,
              kc, 1, 1, v, z_at, 0, NR, 1, VL if half else NR, bias, 0, mode)


@njit(parallel=True, cache=True)
def _winograd_conv(x, u, bias, out, scratch, geometry, nhwc, at, tile, tile_block, chunk, depth, m_chunks,
                   slots, slot_elements, raw, variant):
    """The convolution on transformed weights ``u``; or, when ``raw`` (the
    weights as given) is not empty, with each slot transforming a block of
    ``NR`` output channels' weights ``depth`` input channels at a time into
    its own scratch right before multiplying them (every point's products
    then run per reduction block: pass a ``tile_block`` that holds all of a
    group's tiles, so that each block of weights is transformed once)."""
    d = KernelGeometry(*geometry)
    alpha = at.shape[1]
    points = alpha * alpha
    cg, mg, G = d.channels_per_group, d.out_channels_per_group, d.groups
    m_blocks = (mg + NR - 1) // NR
    point_step = _point_step(m_blocks, cg)
    tiles_x = (d.out_width + tile - 1) // tile
    tiles = ((d.out_height + tile - 1) // tile) * tiles_x
    span = d.batch * tiles  # a group's tiles over the batch: blocks run across images
    blocks = (span + tile_block - 1) // tile_block
    units = G * blocks * m_chunks
    packs = raw.size > 0
    taps = d.kernel_taps
    offsets = scatter_offsets(taps if packs else 0, WINOGRAD_PACK_CHANNELS + 1)  # empty unless packing
    # Scratch of one slot (see _slot_elements): V | Z | staged tile |
    # row-transformed tile | R | Y [| staged weights | transformed weights]
    # [| NCHW strip: its transposes' int64 column offsets | the strip].
    for slot in prange(slots):
        first_unit, end_unit = _slot_units(slot, slots, units, m_chunks, blocks, tile_block, span)
        v_base = slot * slot_elements
        z_base = v_base + points * tile_block * cg
        p_off = z_base + points * tile_block * NR
        stage_floats = points * max(chunk, VL)  # a tile's staged channels, at least a vector (see _input_tile)
        t_off = p_off + stage_floats
        r_off = t_off + stage_floats
        y_off = r_off + alpha * tile * tile_block * NR
        w_stage = y_off + tile * tile * tile_block * NR
        u_off = w_stage + taps * (WINOGRAD_PACK_CHANNELS + 1) * NR
        # NCHW: the int64 column offsets of the strip's transposes, then the
        # strip of a row of tiles' input, last in the slot (see _slot_elements;
        # NHWC: empty, never read).
        offsets_off = v_base + slot_elements - (0 if nhwc else _strip_size(tile_block, tiles_x, tile, alpha, chunk))
        strip_off = offsets_off + 2 * VL
        columns = scratch[offsets_off:offsets_off + (0 if nhwc else 2 * VL)].view(np.int64)
        transformed = -1  # the (group, tile block) whose input V holds
        for unit in range(first_unit, end_unit):
            mc = unit % m_chunks
            block = unit // m_chunks % blocks
            g = unit // (m_chunks * blocks)
            t0 = block * tile_block
            count = min(tile_block, span - t0)
            if unit // m_chunks != transformed:
                if nhwc:
                    for k in range(count):
                        n, ty, tx = _tile_position(t0 + k, tiles, tiles_x)
                        _input_tile(x, d, n, g, ty * tile - d.pad_top, tx * tile - d.pad_left, variant, alpha,
                                    scratch, p_off, t_off, v_base + k * cg, tile_block * cg, chunk)
                else:
                    # NCHW: each run of the block's tiles along a row of tiles
                    # reads a strip of its input rows staged channels last.
                    for c0 in range(0, cg, chunk):
                        cs = min(chunk, cg - c0)
                        for j in range(VL):
                            columns[j] = j * cs
                        k = 0
                        while k < count:
                            n, ty, tx, run = _tile_run(t0 + k, count - k, tiles, tiles_x)
                            width = (run - 1) * tile + alpha
                            _stage_strip(x, d, n, g, ty * tile - d.pad_top, tx * tile - d.pad_left, width, alpha,
                                         c0, cs, scratch, strip_off, columns)
                            for q in range(run):
                                _transform_staged(variant, scratch, strip_off + q * tile * cs, width * cs, cs, cs,
                                                  scratch, v_base + (k + q) * cg + c0, tile_block * cg, t_off,
                                                  p_off, alpha)
                            k += run
                transformed = unit // m_chunks
            for mb in range(mc * m_blocks // m_chunks, (mc + 1) * m_blocks // m_chunks):
                nr = min(NR, mg - mb * NR)
                half = nr <= VL
                if packs:
                    # Reduction blocks outside, points inside: each block's
                    # weights are transformed once into the slot's scratch,
                    # where they stay in cache for all points and tiles.
                    # Each point's block is one NR row longer than its
                    # channels: at depth * NR floats (16 KiB for 128
                    # channels) the transform's a^2 stores per vector fell in
                    # one L1 set and evicted each other.  On a 2-core Intel
                    # Xeon, one thread, functional batch-1 calls, two
                    # alternating runs each: F(4x4,3x3) on GoogLeNet's 4e
                    # 3x3 (160 -> 320, 14x14) 1.25-1.28 -> 0.92 ms, AlexNet's
                    # conv4 (384, 13x13) 3.41-3.44 -> 2.41-2.43, ResNet-50's
                    # layer4 3x3 (512, 7x7) 4.25-4.40 -> 2.43-2.54;
                    # F(2x2,3x3) 10-27 % faster.
                    first = (g * mg + mb * NR) * cg * taps
                    block_step = _point_step(1, depth)  # one NR row of padding, as point_stride
                    for c0 in range(0, cg, depth):
                        c1 = min(cg, c0 + depth)
                        _transform_channels(raw, first, cg * taps, nr, taps, c0, c1, WINOGRAD_PACK_CHANNELS,
                                            scratch[w_stage:u_off], offsets, variant, scratch, u_off, block_step)
                        for t in range(points):
                            _products(scratch, u_off + t * block_step, scratch, v_base + t * tile_block * cg + c0,
                                      cg, z_base + t * tile_block * NR, count, tile_block, c1 - c0,
                                      half, bias, 0 if c0 == 0 else ACCUMULATE)
                else:
                    for t in range(points):
                        w_at = (g * points + t) * point_step + mb * cg * NR
                        # The reduction over C/g runs in blocks of `depth`
                        # channels, each block's sums added into Z by the
                        # micro-kernel: blocked summation, as BLAS does (see
                        # WINOGRAD_REDUCTION_BLOCK).
                        for c0 in range(0, cg, depth):
                            _products(u, w_at + c0 * NR, scratch, v_base + t * tile_block * cg + c0, cg,
                                      z_base + t * tile_block * NR, count, tile_block, min(depth, cg - c0),
                                      half, bias, 0 if c0 == 0 else ACCUMULATE)
                _output_block(out, d, nhwc, g * mg + mb * NR, nr, t0, count, tiles, tiles_x, at, alpha, tile,
                              scratch, z_base, r_off, y_off, tile_block, bias)


#: The weight transforms ``G w G^T`` of the variants, in :data:`VARIANTS`
#: order (float64, rounded once).
_transform_f2_3, _transform_f4_3, _transform_f2_5 = (
    make_separable_transform(toom_cook(*spec)[1]) for spec in VARIANTS.values())
#: ``(a, r)`` of each variant's ``G`` (``a = m + r - 1``), in :data:`VARIANTS` order.
_SIDES = tuple((m + r - 1, r) for m, r, _ in VARIANTS.values())


@njit(cache=True, nogil=True, inline="always")
def _weight_transform(variant, src, s_off, s_step, dst, d_off, d_step):
    """The weight transform of variant number ``variant`` (order of
    :data:`VARIANTS`) on ``VL`` lanes, its ``r x r`` inputs ``s_step`` apart
    and its ``a x a`` outputs ``d_step`` apart (see
    :func:`lowmem_numba._microkernel.make_separable_transform`)."""
    a, r = _SIDES[variant]
    if variant == 0:
        _transform_f2_3(src, s_off, r * s_step, s_step, dst, d_off, a * d_step, d_step)
    elif variant == 1:
        _transform_f4_3(src, s_off, r * s_step, s_step, dst, d_off, a * d_step, d_step)
    else:
        _transform_f2_5(src, s_off, r * s_step, s_step, dst, d_off, a * d_step, d_step)


@njit(parallel=True, cache=True)
def _pack(weight, dest, geometry, variant, alpha, channel_block, stages, slots):
    """``U = G w G^T`` per (output, input) channel, in float64, rounded once,
    as ``[group][point][channel block][C/g][NR]`` (lanes past M/g zero), each
    point's blocks followed by ``NR`` unused floats (:func:`point_stride`).

    Items are (group, block of ``NR`` output channels), in ``slots`` equal
    runs, each slot working in its own part of ``stages`` (see
    :func:`_pack_slot`).  An item walks the input channels ``channel_block``
    at a time: their kernels are transposed into ``[tap][c][lane]`` rows
    (:func:`~lowmem_numba._algorithms.ukernel.pack_lanes`), which the
    transform then reads ``VL`` lanes at a time.
    """
    d = KernelGeometry(*geometry)
    cg, mg, G = d.channels_per_group, d.out_channels_per_group, d.groups
    taps = d.kernel_taps
    points = alpha * alpha
    m_blocks = (mg + NR - 1) // NR
    items = G * m_blocks
    # Stage rows one NR row longer than the channels they hold, so that the
    # tap rows are not a multiple of 4 KiB apart (16 channels x 32 lanes x 4 B).
    stage_row = (channel_block + 1) * NR
    offsets = scatter_offsets(taps, channel_block + 1)
    point_step = _point_step(m_blocks, cg)
    for slot in prange(slots):
        stage = stages[slot * taps * stage_row:(slot + 1) * taps * stage_row]
        for item in range(slot * items // slots, (slot + 1) * items // slots):
            g, mb = item // m_blocks, item % m_blocks
            _transform_channels(weight, (g * mg + mb * NR) * cg * taps, cg * taps, min(NR, mg - mb * NR), taps,
                                0, cg, channel_block, stage, offsets, variant, dest,
                                g * points * point_step + mb * cg * NR, point_step)


@njit(cache=True, nogil=True)
def _transform_channels(weight, first, row, lanes, taps, c_first, c_end, channel_block, stage, offsets, variant,
                        dest, at, point_step):
    """``G w G^T`` of the kernels of ``lanes`` output channels (``row``
    floats apart from ``first`` in ``weight``) and input channels ``c_first
    .. c_end`` into ``dest[at + point * point_step + (c - c_first) * NR +
    lane]``, lanes past ``lanes`` zero, staging ``channel_block`` input
    channels at a time as ``[tap][c][lane]`` rows in ``stage``."""
    stage_row = (channel_block + 1) * NR
    if lanes < NR:
        stage[:] = 0.0  # pack_lanes leaves lanes past `lanes` alone: they stay zero
    for c0 in range(c_first, c_end, channel_block):
        cs = min(channel_block, c_end - c0)
        pack_lanes(weight, first, row, lanes, taps, c0, cs, stage, 0, channel_block + 1, offsets)
        base = at + (c0 - c_first) * NR
        for e in range(0, cs * NR, VL):
            _weight_transform(variant, stage, e, stage_row, dest, base + e, point_step)


def _pack_slot(g) -> int:
    """float32 elements one packing thread works in: ``WINOGRAD_PACK_CHANNELS``
    input channels' kernels as r^2 rows of ``channels + 1`` times NR lanes."""
    channels = min(WINOGRAD_PACK_CHANNELS, g.channels_per_group)
    return g.kernel_taps * (channels + 1) * NR


def _pack_slots(g, threads) -> int:
    return max(1, min(threads, g.groups * ceil_div(g.out_channels_per_group, NR)))


def pack_scratch_elements(g, threads, name) -> int:
    """float32 scratch of the weight transform: a slot per thread."""
    return _pack_slots(g, threads) * _pack_slot(g)


# ----------------------------------------------------------------- plans


def _sizes(g, name):
    m, r, _ = VARIANTS[name]
    alpha = m + r - 1
    tiles = ceil_div(g.out_height, m) * ceil_div(g.out_width, m)
    return m, alpha, tiles


def tile_block(g, name) -> int:
    """Tiles each thread transforms and multiplies at once, by default: as
    many whole micro-kernel tiles (``MR``) as let one thread's ``V`` and ``Z``
    fill ``WINOGRAD_SLOT_CACHE_FRACTION`` of L2, at least one, and no more
    than one image-group has, so that the workspace does not grow with the
    batch (blocks still run across images: seven-tile images fill a block
    of 12 from two; :func:`_plan_within` shrinks it to fit a
    ``memory_limit``).

    Except where the transformed weights do not fit in the L3 cache and the
    batch has at most ``WINOGRAD_IN_KERNEL_TILES`` tiles: one block then
    holds them all, as when the kernel transforms the weights itself, so
    that the weights stream from memory once, not once per block.  On
    ResNet-50's layer4 3x3 at batch 8 (32 tiles of 512 channels on
    F(4x4,3x3), 38 MB of weights) that took a Conv2d from 10.1 to 8.5 ms on
    one thread (6.2 to 4.8 on two); with weights in L3 (GoogLeNet's 5b 3x3,
    11 MB) it cost 12 % (2.17 against 2.44 ms), so there blocks stay small.
    """
    _, alpha, tiles = _sizes(g, name)
    whole = _whole_batch_block(g, name)
    if whole is not None and FLOAT32_BYTES * packed_elements(g, name) > l3_bytes():
        return whole
    per_tile = 4 * alpha * alpha * (g.channels_per_group + NR)
    fit = int(l2_bytes() * WINOGRAD_SLOT_CACHE_FRACTION) // (per_tile * MR)
    return MR * max(1, min(fit, ceil_div(max(tiles, 1), MR)))


def _stage_channels(g):
    """Channels of an input tile staged and transformed at once."""
    return min(g.channels_per_group, WINOGRAD_STAGE_CHANNELS)


def _slot_elements(g, name, block, packs=False, nhwc=False):
    m, alpha, _ = _sizes(g, name)
    cg = g.channels_per_group
    # V and Z, the staged and row-transformed channels of a tile, R and Y;
    # when the kernel transforms the weights, their staging and one reduction
    # block of them; NCHW, the strip of a row of tiles' input.
    weights = g.kernel_taps * (WINOGRAD_PACK_CHANNELS + 1) * NR + alpha * alpha * _point_floats(1, _reduction_block(g))
    strip = 0 if nhwc else _strip_floats(block, ceil_div(g.out_width, m), m, alpha, _stage_channels(g))
    return (alpha * alpha * (block * (cg + NR) + 2 * max(_stage_channels(g), VL))
            + (alpha + m) * m * block * NR + (weights if packs else 0) + strip)


#: Columns after an NCHW strip that its rows' last transposes may write into
#: (see :func:`_stage_strip`).
STRIP_SLACK = VL


def _strip_floats(block, tiles_x, m, alpha, chunk):
    """float32 elements of a slot's NCHW strip (:func:`_stage_strip`): the
    int64 column offsets of its transposes (2 VL), then ``alpha`` rows of
    the input columns of the longest run of a tile block's tiles along one
    row of tiles, and ``STRIP_SLACK`` columns more, ``chunk`` channels
    each; compiled as ``_strip_size`` for the kernel."""
    return 2 * VL + (alpha * ((min(block, tiles_x) - 1) * m + alpha) + STRIP_SLACK) * chunk


_strip_size = njit(cache=True, nogil=True)(_strip_floats)


def _reduction_block(g):
    return min(WINOGRAD_REDUCTION_BLOCK, g.channels_per_group)


def _point_floats(m_blocks, cg):
    """Floats of one transform point's weights for ``m_blocks`` channel blocks
    of ``cg`` channels, plus one unused NR row (see :func:`point_stride`; the
    in-kernel transform's blocks are one channel block of ``depth``); compiled
    as ``_point_step`` for the kernels."""
    return m_blocks * cg * NR + NR


_point_step = njit(cache=True, nogil=True)(_point_floats)


def point_stride(g) -> int:
    """Floats from one transform point's weights to the next in the
    transformed weights: the point's ``ceil(M/g / NR) * C/g * NR``, plus
    ``NR`` unused.  Without that row, the points of a layer whose C/g times
    its channel blocks is a multiple of 32 were a multiple of 4 KiB apart,
    so the a^2 stores of each transformed vector fell in one L1 set and
    evicted each other: F(4x4,3x3) transformed 256 -> 256 channels in 1.60
    ms, 250 or 257 input channels in 0.67-0.87 (Intel Xeon, one thread)."""
    # The plain function: planning runs no compiled code (tests/test_threads.py).
    return _point_floats(ceil_div(g.out_channels_per_group, NR), g.channels_per_group)


def packed_elements(g, name) -> int:
    _, alpha, _ = _sizes(g, name)
    return g.groups * alpha * alpha * point_stride(g)


def _plan_within(g, threads, scratch_elements, name, nhwc=False):
    """The plan with the largest tile block, at most the default, whose
    scratch fits ``scratch_elements`` (one micro-kernel tile's if none does:
    the caller then finds it over its limit)."""
    block = tile_block(g, name)
    while True:
        plan = _plan(g, threads, name, block, nhwc=nhwc)
        if plan.scratch_elements <= scratch_elements or block <= MR:
            return plan
        block -= MR


def _largest_share(g, threads, block, tiles):
    """Tiles of the busiest thread when units are blocks of ``block`` of a
    group's ``tiles`` (one channel chunk), split as the kernel splits them
    (:func:`_slot_units`)."""
    blocks = ceil_div(tiles, block)
    units = g.groups * blocks
    slots = min(threads, units)
    last = tiles - (blocks - 1) * block
    largest = 0
    for slot in range(slots):
        first, end = _slot_units(slot, slots, units, 1, blocks, block, tiles)
        largest = max(largest, sum(last if unit % blocks == blocks - 1 else block for unit in range(first, end)))
    return largest


def _plan_packing(g, threads, scratch_budget, name, nhwc=False):
    """The plan of a call whose weights arrive as given, when the kernel
    transforms them itself; None when the call should transform them first
    (or, under a ``memory_limit``, when its scratch exceeds
    ``scratch_budget`` elements; None: no limit).

    When the batch has at most ``WINOGRAD_IN_KERNEL_TILES`` tiles: one tile
    block then holds all of a group's tiles over the batch, so each block of
    weights is transformed exactly once, by the slot that multiplies it, into
    scratch that stays in cache.  A separate transform writes ``a^2 M C/g``
    floats to memory (38 MB for F(4x4,3x3) on 512 -> 512 channels) to read
    them back once per tile block: on VGG-16's 14x14 conv5 at batch 1 that
    made F(4x4,3x3) 16.8 ms against 5.4 ms with the weights transformed
    beforehand, and on ResNet-50's 7x7 layer4 3x3 at batch 8 (4 tiles an
    image, 32 in all; one thread) 18.5-20.7 ms against 10.6-11.0 transformed
    in the kernel.
    """
    block = _whole_batch_block(g, name)
    plan = None if block is None else _plan(g, threads, name, block=block, packs=True, nhwc=nhwc)
    return None if plan is None or (scratch_budget is not None and plan.scratch_elements > scratch_budget) else plan


def _whole_batch_block(g, name):
    """A tile block holding every tile of the batch, in whole micro-kernel
    tiles, when the batch has at most ``WINOGRAD_IN_KERNEL_TILES``; else None."""
    tiles = g.batch * _sizes(g, name)[2]
    return ceil_div(max(tiles, 1), MR) * MR if tiles <= WINOGRAD_IN_KERNEL_TILES else None


def _plan(g, threads, name, block=None, packs=False, nhwc=False):
    """Blocks of ``tile_block`` tiles of one group, numbered over the batch
    (of equal size when there are few), times chunks of their output-channel
    blocks, are the units; ``slots = min(threads, units)`` threads take equal
    runs of them, each with its own scratch.  The
    channel blocks are cut (by the one splitter) only where tile blocks alone
    balance badly, as on 7x7 and 14x14 images at batch 1: each chunk
    transforms its tiles' input again unless the same thread ran the previous
    chunk.  Blocks run across images so that at batch > 1 each pass over the
    transformed weights serves a whole block (F(4x4,3x3) has 4 tiles per 7x7
    image: ResNet-50's 512-channel layer4 3x3 at batch 8 streamed its 38 MB
    of transformed weights once per image; 13.1 -> 12.0 ms on two threads,
    still memory-bound, which the pricing below tells the scheduler: it takes
    F(2x2,3x3) there, 6.9 ms).  Priced as ``a^2`` products per group of (channels
    rounded up as the micro-kernel runs them) x (tiles rounded up as it runs
    them) x C/g in reductions of at most ``WINOGRAD_REDUCTION_BLOCK``, plus
    the transforms, counted in elements (scaled per variant by
    ``WINOGRAD_TRANSFORM_COST``) with a fixed cost per tile and point
    (``WINOGRAD_TILE_POINT_COST``, per variant) and priced as vector flops
    (``WINOGRAD_TRANSFORM_FLOPS_PER_ELEMENT`` each: they run in cache), and
    the transformed weights each tile block reads: elements moved
    (``WINOGRAD_WEIGHT_READ_COST``), or, when they exceed the L3 cache, a
    stream from memory whose bandwidth the threads share
    (``WINOGRAD_WEIGHT_MEMORY_READ_COST``, ``memory_elements``)."""
    m, alpha, per_image = _sizes(g, name)
    tiles = g.batch * per_image  # a group's tiles over the batch: the space blocks cut
    points = alpha * alpha
    block = tile_block(g, name) if block is None else block
    blocks = ceil_div(max(tiles, 1), block)
    if 1 < blocks and threads > 1 and g.groups * blocks < 2 * threads:
        # Few units: where the threads' runs of them balance badly, a
        # multiple of the threads in blocks of equal size.  49 tiles (14x14
        # images at batch 1) in a block of 48 and one of 1 gave one thread all
        # the work (GoogLeNet's inception4c 3x3: 0.74-0.76 ms on one thread,
        # 0.68-0.83 on two); blocks of 25 and 24 took two threads to
        # 0.41-0.43, and whole micro-kernel tiles (24, 24 and 1) to 0.43-0.47
        # (three alternating runs each).
        even = ceil_div(tiles, min(tiles, ceil_div(blocks, threads) * threads))
        if _largest_share(g, threads, even, tiles) < _largest_share(g, threads, block, tiles):
            block = even
    cg, mg = g.channels_per_group, g.out_channels_per_group
    blocks_m = ceil_div(mg, NR)
    tile_blocks = g.groups * ceil_div(tiles, block)
    m_chunks = split_work(tile_blocks, blocks_m, 1, threads, min_rows=1, min_cols=1).row_blocks
    units = tile_blocks * m_chunks
    slots = min(threads, units)  # 0 for an empty batch: no scratch
    per_slot = _slot_elements(g, name, block, packs, nhwc)
    last = mg - (blocks_m - 1) * NR
    channels = (blocks_m - 1) * NR + (VL if last <= VL else NR)
    # Transforms: each input tile staged and written as V; Z read and each
    # output written once (the separable passes run in L1): vector work in
    # cache, in copied elements converted to vector flops.
    transformed = g.groups * tiles * round(WINOGRAD_TRANSFORM_COST[name] * (2 * points * cg * m_chunks
                                                                           + (points + m * m) * channels)
                                           + points * WINOGRAD_TILE_POINT_COST[name])
    transform_flops = round(transformed * WINOGRAD_TRANSFORM_FLOPS_PER_ELEMENT)
    # Every tile block streams the transformed weights of its channel chunk:
    # from the L3 cache, or from memory when they do not fit in it.
    # Transformed in the kernel, they are read from the slot's scratch once
    # each, after the transform (priced per element written) made them.
    # From memory, the threads share its bandwidth: two threads streamed
    # VGG-16's conv5 F(4x4,3x3) weights (38 MB) at batch 8 in 42-50 ms
    # against one thread's 69 (F(2x2,3x3), whose 17 MB stay in L3: 83 -> 34).
    in_memory = not packs and FLOAT32_BYTES * packed_elements(g, name) > l3_bytes()
    weight_reads = tile_blocks * points * channels * cg
    moved = 0 if in_memory else round(weight_reads * WINOGRAD_WEIGHT_READ_COST)
    streamed = round(weight_reads * WINOGRAD_WEIGHT_MEMORY_READ_COST) if in_memory else 0
    if packs:
        moved += round(packed_elements(g, name) * WINOGRAD_PACK_IN_KERNEL_COST[name])
    # The products as the micro-kernel runs them: per tile block, full MR-row
    # tiles and a remainder on SMALL_MR-row tiles.  Oriented channels x tiles
    # so that a small tile count costs only its rounding: the micro-kernel's
    # cost per tile does not depend on how many tiles there are.
    full, rest = divmod(tiles, block)
    rows = full * block + ceil_div(rest, MR) * MR - (rest % MR and rest % MR <= MR - SMALL_MR) * (
        MR - ceil_div(rest % MR, SMALL_MR) * SMALL_MR)
    # The reduction runs in blocks of WINOGRAD_REDUCTION_BLOCK channels, each
    # a reduction of the micro-kernel of its own (set up, stored, reloaded).
    whole, rest = divmod(cg, WINOGRAD_REDUCTION_BLOCK)
    gemms = ((g.groups * points * whole, channels, rows, WINOGRAD_REDUCTION_BLOCK),) if whole else ()
    gemms += ((g.groups * points, channels, rows, rest),) if rest else ()
    return KernelPlan(tiling=(name, block, _stage_channels(g), _reduction_block(g), m_chunks, slots,
                              per_slot, packs),
                      scratch_elements=slots * per_slot,
                      gemms=gemms, moved_elements=moved, vector_flops=transform_flops, memory_elements=streamed,
                      parallel_items=max(1, units))


def _unsupported(name):
    m, r, _ = VARIANTS[name]

    def why(g):
        if (g.kernel_h, g.kernel_w) != (r, r):
            return f"kernel {g.kernel_h}x{g.kernel_w} ({name} needs {r}x{r})"
        if (g.stride_h, g.stride_w) != (1, 1):
            return f"stride {g.stride_h}x{g.stride_w} ({name} needs stride 1)"
        if (g.dilation_h, g.dilation_w) != (1, 1):
            return f"dilation {g.dilation_h}x{g.dilation_w} ({name} needs dilation 1)"
        return None
    return why


def _pack_weights(name):
    variant = list(VARIANTS).index(name)
    alpha = sum(VARIANTS[name][:2]) - 1

    def pack(weight, g, dest, scratch):
        per_slot = _pack_slot(g)
        slots = _pack_slots(g, scratch.size // per_slot)
        _pack(weight, dest, kernel_geometry(g), variant, alpha, min(WINOGRAD_PACK_CHANNELS, g.channels_per_group),
              scratch[:slots * per_slot], slots)
    return pack


def _make_compute(nhwc):
    def compute(x, weights, bias, out, scratch, g, kernel):
        if g.batch == 0 or g.out_height <= 0 or g.out_width <= 0:
            return
        name, block, chunk, depth, m_chunks, slots, per_slot, packs = kernel.tiling
        at = matrices(name)[0]
        m = VARIANTS[name][0]
        # Weights as given (the kernel transforms them) or transformed.
        raw, transformed = (weights, NO_ARRAY) if packs else (NO_ARRAY, weights)
        _winograd_conv(x, transformed, bias, out, scratch, kernel_geometry(g), nhwc, at, m, block, chunk,
                       depth, m_chunks, slots, per_slot, raw, list(VARIANTS).index(name))
    return compute


for _name, (_m, _r, _points) in VARIANTS.items():
    _alpha = _m + _r - 1
    _point_text = ", ".join(str(p) for p in _points) + " and infinity"
    for _nhwc in (False, True):
        register(Algorithm(
            name=_name + ("-nhwc" if _nhwc else ""),
            family="winograd",
            calls_blas=False,
            summary=f"Winograd F({_m}x{_m},{_r}x{_r}) at points {_point_text}: {_alpha * _alpha} "
                    f"products per tile block on the micro-kernel, transforms fused per thread, "
                    f"{'NHWC' if _nhwc else 'NCHW'}.",
            workspace_formula=f"{_alpha * _alpha}·(M·C/g + g·NR) (transformed weights) + "
                              f"threads·{_alpha * _alpha}·tile_block·(C/g + NR)"
                              + ("" if _nhwc else f" + threads·(({_alpha}·strip + {VL})·min(C/g, "
                                 f"{WINOGRAD_STAGE_CHANNELS}) + {2 * VL}) (strip = input columns of a tile block's "
                                 f"run along a row)")
                              + f"; when a functional call's batch "
                              f"has at most {WINOGRAD_IN_KERNEL_TILES} tiles no transformed weights, instead per "
                              f"thread {_alpha * _alpha}·(min(C/g, {WINOGRAD_REDUCTION_BLOCK}) + 1)·NR of them",
            unsupported=_unsupported(_name),
            packed_weight_elements=functools.partial(packed_elements, name=_name),
            pack_cost=WINOGRAD_PACK_COST[_name],
            pack_scratch_elements=functools.partial(pack_scratch_elements, name=_name),
            pack_weights=_pack_weights(_name),
            plan_kernel=functools.partial(_plan, name=_name, nhwc=_nhwc),
            plan_kernel_within=functools.partial(_plan_within, name=_name, nhwc=_nhwc),
            plan_kernel_packing=functools.partial(_plan_packing, name=_name, nhwc=_nhwc),
            claims=f"{_r}x{_r} kernel, stride 1, dilation 1; any padding, groups and batch",
            compute=_make_compute(_nhwc),
            input_layout="NHWC" if _nhwc else "NCHW",
            output_layout="NHWC" if _nhwc else "NCHW",
        ))
