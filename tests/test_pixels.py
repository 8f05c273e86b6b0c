"""direct-pixels: the pixel-lane micro-kernel and the algorithm built on it.

* The tile kernel on every vector count, partial row ends and channel
  remainders, with NaN guards around its output: a write outside the given
  pixels and channels would change a guard.
* direct-pixels against the float64 reference over hypothesis shapes (every
  stride, padding, dilation and groups; both layouts; batch > 1), rows and
  channel counts spanning several tiles, 1x1 layers without padding (planes
  read in place or copied into panels, strided ones gathered, a short last
  tile), NaN/inf propagation.
"""

import ctypes
import dataclasses
import mmap
import sys
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

import lowmem_numba as ln
from lowmem_numba import _microkernel as mk
from lowmem_numba._algorithms import pixels
from lowmem_numba._algorithms._common import unpadded_1x1
from lowmem_numba._geometry import make_geometry
from lowmem_numba._caches import l1_geometry, l2_bytes
from lowmem_numba._tuning import (ALIGNED_OUTPUT_MIN_BYTES, PIXELS_ALIASED_MAX_WAYS, PIXELS_ALIASED_PLANE_BYTES,
                                  PIXELS_GATHER_COST, PIXELS_IN_PLACE_BYTES, PIXELS_PACK_MIN_CHANNELS,
                                  PIXELS_RUN_BYTES)
from naive import (assert_close_to_reference, assert_exact_like_reference, assert_nonfinite_like_reference,
                   conv2d_reference)
from strategies import cases

NAME = "direct-pixels"
GUARD = 29
#: What a test's output holds where nothing may be stored (never a sum of integers).
UNWRITTEN = -7.5


@njit
def _run_tile(vectors, w, w_off, w_mstep, x, x_off, offsets, x_kstep, count, out, o_off, o_mstep, valid, mc, bias,
              b_off, has_bias):
    pixels._run_tile(vectors, w, w_off, w_mstep, x, x_off, offsets, x_kstep, count, out, o_off, o_mstep, valid, mc,
                     bias, b_off, has_bias)


@njit
def _run_prefetching_tile(vectors, w, w_off, w_mstep, x, x_off, x_kstep, count, out, o_off, o_mstep, valid, mc, bias,
                          b_off, has_bias):
    pixels._run_strided_tile(vectors, w, w_off, w_mstep, x, x_off, x_kstep, count, out, o_off, o_mstep, valid, mc,
                             bias, b_off, has_bias, True)


@njit
def _run_copying_tile(vectors, w, w_off, w_mstep, x, x_off, x_kstep, count, out, o_off, o_mstep, valid, mc, bias,
                      b_off, has_bias, panel, p_off):
    pixels._run_copying_tile(vectors, w, w_off, w_mstep, x, x_off, x_kstep, count, out, o_off, o_mstep, valid, mc,
                             bias, b_off, has_bias, panel, p_off)


def _ending_at_unreadable_page(a):
    """A C-contiguous copy of ``a`` whose last float is the last before a
    page that cannot be read: any read past its end faults (on Linux; a
    plain copy elsewhere)."""
    if not sys.platform.startswith("linux"):
        return a.copy()
    page = mmap.PAGESIZE
    pages = -(-a.nbytes // page) + 1
    store = mmap.mmap(-1, pages * page)
    address = ctypes.addressof(ctypes.c_char.from_buffer(store))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(address + (pages - 1) * page, page, 0) != 0:
        pytest.skip("mprotect is not available")
    view = np.frombuffer(store, np.float32, count=a.size, offset=(pages - 1) * page - a.nbytes).reshape(a.shape)
    view[...] = a
    return view


@pytest.mark.parametrize("vectors", range(1, mk.PIXEL_VECTORS + 1))
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("strided", [False, True, "copying", "prefetching"])
@pytest.mark.parametrize("count", [1, 7, mk.PREFETCH_STEPS, mk.PREFETCH_STEPS + 1, 3 * mk.PREFETCH_STEPS + 2])
def test_tile_stores_only_its_pixels_and_channels(vectors, with_bias, strided, count):
    """The tile reads ``mc`` weight rows ``w_mstep`` apart (the last one
    ends right before an unreadable page: channels past ``mc`` must not read
    further) and stores only its ``valid`` pixels of its ``mc`` channels;
    every step counts, in the prefetching loop and in the last
    ``PREFETCH_STEPS`` (a loop of their own); the input of step ``k`` is
    at ``offsets[k]`` (in any order), or ``k * x_kstep`` when strided; the
    copying tile also stores each step's ``vectors`` input vectors into a
    panel, ``SPAN`` floats a step, and nothing else there; the tile that
    hints the next tile's input into L2 computes the same (its hints reach
    past the input's end, and never fault)."""
    rng = np.random.default_rng(vectors)
    pc, vl = mk.PIXEL_CHANNELS, mk.VL
    for valid in sorted({1, vl - 1, vl, (vectors - 1) * vl + 1, vectors * vl}):
        if not (vectors - 1) * vl < valid <= vectors * vl:
            continue
        for mc in sorted({1, pc - 1, pc}):
            w_mstep = count + 3
            w = _ending_at_unreadable_page(rng.integers(-3, 4, (mc - 1) * w_mstep + count).astype(np.float32))
            x_kstep = 3 * vl + 1
            steps = np.arange(count, dtype=np.int64) * x_kstep
            offsets = steps if strided else rng.permutation(steps)
            x = rng.integers(-3, 4, count * x_kstep + vectors * vl).astype(np.float32)
            for k in range(count):  # lanes past `valid` may be anything
                x[offsets[k] + valid:offsets[k] + vectors * vl] = np.nan
            bias = rng.integers(-3, 4, mc + 2).astype(np.float32)
            o_mstep = vectors * vl + 5
            # Not NaN: a lane past `valid` stored by mistake holds NaN (from x), and
            # NaN == NaN for assert_array_equal; sums here are integers.
            out = np.full(GUARD + pc * o_mstep + GUARD, UNWRITTEN, np.float32)
            table = np.full(count, -10**9, np.int64) if strided else offsets  # strided: the table is not read
            panel = np.full(GUARD + count * pixels.SPAN + GUARD, -7.0, np.float32)
            if strided == "copying":
                _run_copying_tile(vectors, w, 0, w_mstep, x, 0, x_kstep, count, out, GUARD, o_mstep, valid, mc, bias,
                                  2, int(with_bias), panel, GUARD)
                copied = np.full_like(panel, -7.0)
                for k in range(count):
                    at = GUARD + k * pixels.SPAN
                    copied[at:at + vectors * vl] = x[offsets[k]:offsets[k] + vectors * vl]
                np.testing.assert_array_equal(panel, copied)
            elif strided == "prefetching":
                _run_prefetching_tile(vectors, w, 0, w_mstep, x, 0, x_kstep, count, out, GUARD, o_mstep, valid, mc,
                                      bias, 2, int(with_bias))
            else:
                _run_tile(vectors, w, 0, w_mstep, x, 0, table, x_kstep if strided else 0, count, out, GUARD, o_mstep,
                          valid, mc, bias, 2, int(with_bias))
            expected = np.full_like(out, UNWRITTEN)
            for m in range(mc):
                sums = sum(w[m * w_mstep + k].astype(np.float64) * x[offsets[k]:offsets[k] + valid]
                           for k in range(count))
                expected[GUARD + m * o_mstep:GUARD + m * o_mstep + valid] = sums + (bias[2 + m] if with_bias else 0)
            np.testing.assert_array_equal(out, expected.astype(np.float32), err_msg=f"valid={valid} mc={mc}")


@st.composite
def wide_cases(draw):
    """strategies.cases() with rows and channel counts spanning several tiles."""
    case = draw(cases(max_size=12))
    m_per_group = draw(st.sampled_from([1, mk.PIXEL_CHANNELS - 1, mk.PIXEL_CHANNELS, 2 * mk.PIXEL_CHANNELS + 3]))
    width = draw(st.sampled_from([case.width, pixels.SPAN - 1, pixels.SPAN + mk.VL + 3, 2 * pixels.SPAN + 1]))
    return dataclasses.replace(case, out_channels=case.groups * m_per_group, width=max(case.width, width))


@settings(max_examples=60, deadline=None)
@given(case=st.one_of(cases(), wide_cases()), seed=st.integers(0, 2**32 - 1), with_bias=st.booleans(),
       layout=st.sampled_from(["NCHW", "NHWC"]), threads=st.sampled_from([1, 2]))
def test_exact_against_reference(case, seed, with_bias, layout, threads):
    assert_exact_like_reference(NAME, case, seed, with_bias, layout, threads)


@settings(max_examples=25, deadline=None)
@given(case=wide_cases(), seed=st.integers(0, 2**32 - 1))
def test_close_on_real_data(case, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    w = rng.standard_normal(case.w_shape).astype(np.float32)
    bias = rng.standard_normal(case.out_channels).astype(np.float32)
    assert_close_to_reference(ln.conv2d(x, w, bias, algorithm=NAME, **case.args), x, w, bias, case)


@settings(max_examples=25, deadline=None)
@given(case=st.one_of(cases(), wide_cases()), seed=st.integers(0, 2**32 - 1),
       layout=st.sampled_from(["NCHW", "NHWC"]))
def test_nan_and_inf_propagate_as_in_reference(case, seed, layout):
    assert_nonfinite_like_reference(NAME, case, seed, layout, every=50)


def _at_line_offset(a, floats):
    """A C-contiguous copy of ``a`` starting ``floats`` floats past a cache line."""
    store = np.empty(a.size + 32, np.float32)
    start = (-store.ctypes.data // 4) % 16 + floats
    view = store[start:start + a.size].reshape(a.shape)
    view[...] = a
    return view


@pytest.mark.parametrize("line_offset", [0, 1, 4])
@pytest.mark.parametrize("c, hw, m, groups", [(40, 7, 19, 1), (16, 14, 24, 1), (12, 12, 10, 2), (5, 8, 3, 1),
                                              (3, 23, 9, 1), (20, 4, 17, 1), (9, 1, 5, 1)])
def test_pointwise_planes_read_in_place(c, hw, m, groups, line_offset):
    """1x1, stride 1, no padding: no staged copy; each plane is one row of
    tiles, the last one short unless the plane is whole tiles (144 pixels
    is; 49, 196, 64, 529, 16 and 1 are not).  Read in place (every case has
    fewer than PIXELS_PACK_MIN_CHANNELS output channels): on planes of whole
    vectors (144, 64 and 16 pixels) with the tiles shifted onto vector
    boundaries behind a short head tile (15 or 12 pixels at ``line_offset``
    1 or 4, none at 0); over a batch and both thread counts."""
    _check_pointwise((3, c, hw, hw), m, groups, (1, 1), line_offset)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), c_per_group=st.integers(1, 9), groups=st.sampled_from([1, 2]),
       hw=st.sampled_from([1, 5, 7, 9, 14]),  # planes of no whole vectors (8 or 16 lanes), as copies need
       m_per_group=st.sampled_from([mk.PIXEL_CHANNELS + 1, 2 * mk.PIXEL_CHANNELS, 3 * mk.PIXEL_CHANNELS + 5]),
       line_offset=st.sampled_from([0, 1, 4]))
def test_first_channel_block_copies_for_the_others(batch, c_per_group, groups, hw, m_per_group, line_offset):
    """1x1 planes read in place under several channel blocks, the first
    block of each run copying its input into the panel that the others read
    (forced here on short reductions and few channels: PIXELS_COPY_MIN_REDUCTION
    and PIXELS_COPY_MIN_CHANNELS patched to 1), exact over a batch, groups,
    both thread counts."""
    ln._memo.clear_all()
    try:
        with mock.patch.object(pixels, "PIXELS_COPY_MIN_REDUCTION", 1), \
                mock.patch.object(pixels, "PIXELS_COPY_MIN_CHANNELS", 1):
            g = make_geometry((batch, groups * c_per_group, hw, hw), (groups * m_per_group, c_per_group, 1, 1),
                              groups=groups)
            assert ln._registry.get(NAME).plan(g, 2).kernel.tiling[14]
            _check_pointwise((batch, groups * c_per_group, hw, hw), groups * m_per_group, groups, (1, 1), line_offset)
    finally:
        ln._memo.clear_all()


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), c_per_group=st.integers(1, 9), groups=st.sampled_from([1, 2]),
       hw=st.sampled_from([8, 9, 12, 23]),  # planes of a tile and a vector or more, as the plain sweep needs
       m_per_group=st.sampled_from([1, mk.PIXEL_CHANNELS + 1, 3 * mk.PIXEL_CHANNELS]),
       line_offset=st.sampled_from([0, 1, 4]))
def test_first_channel_block_hints_the_next_tile(batch, c_per_group, groups, hw, m_per_group, line_offset):
    """The plain sweep whose runs' first channel block hints the next tile's
    input into L2 (forced here on any input: PIXELS_PREFETCH_NEXT_L2_SHARE
    patched to 0; the plan says so) is exact over a batch, groups, both
    thread counts, planes of whole vectors and not; and an image's input of
    at most that share of L2 is not hinted."""
    x_shape = (batch, groups * c_per_group, hw, hw)
    g = make_geometry(x_shape, (groups * m_per_group, c_per_group, 1, 1), groups=groups)
    ln._memo.clear_all()
    try:
        with mock.patch.object(pixels, "PIXELS_PREFETCH_NEXT_L2_SHARE", 0):
            tiling = ln._registry.get(NAME).plan(g, 2).kernel.tiling
            assert tiling[17] == tiling[16]  # plain
            _check_pointwise(x_shape, groups * m_per_group, groups, (1, 1), line_offset)
    finally:
        ln._memo.clear_all()
    assert not ln._registry.get(NAME).plan(g, 2).kernel.tiling[17]


def test_copying_needs_long_reductions_small_inputs_split_planes_and_many_channels():
    """The plan copies on 1x1 stride-1 layers of PIXELS_COPY_MIN_REDUCTION
    channels or more per group whose input fits PIXELS_COPY_MAX_BYTES, on
    planes that are not whole vectors, to PIXELS_COPY_MIN_CHANNELS output
    channels per group or more."""
    from lowmem_numba._tuning import PIXELS_COPY_MAX_BYTES, PIXELS_COPY_MIN_CHANNELS, PIXELS_COPY_MIN_REDUCTION

    def copies(x_shape, w_shape, groups=1):
        return ln._registry.get(NAME).plan(make_geometry(x_shape, w_shape, groups=groups), 1).kernel.tiling[14]

    c, m = PIXELS_COPY_MIN_REDUCTION, PIXELS_COPY_MIN_CHANNELS
    assert copies((1, c, 14, 14), (m, c, 1, 1)) and not copies((1, c - 1, 14, 14), (m, c - 1, 1, 1))
    assert not copies((1, c, 14, 14), (m - 1, c, 1, 1)) and not copies((1, c, 28, 28), (m, c, 1, 1))
    assert not copies((1, 2 * c - 2, 7, 7), (2 * m, c - 1, 1, 1), 2) and copies((1, 2 * c, 7, 7), (2 * m, c, 1, 1), 2)
    hw = int((PIXELS_COPY_MAX_BYTES // (4 * c)) ** 0.5) - 1  # not whole vectors at 8 or 16 lanes
    assert (hw * hw) % 8
    assert copies((1, c, hw, hw), (m, c, 1, 1)) and not copies((2, c, hw, hw), (m, c, 1, 1))


def _reads_in_place(x_shape, m, stride=1):
    return pixels.reads_in_place(make_geometry(x_shape, (m, x_shape[1], 1, 1), stride))


def test_aliasing_and_large_inputs_are_not_read_in_place():
    """Planes of a multiple of PIXELS_ALIASED_PLANE_BYTES (on an L1 of at
    most PIXELS_ALIASED_MAX_WAYS ways), planes that are not whole vectors
    under PIXELS_PACK_MIN_CHANNELS output channels or more, inputs over
    PIXELS_IN_PLACE_BYTES and strides go through panels; the networks'
    planes (56x56, 28x28, 14x14, 7x7) do not."""
    for side in (56, 28, 14, 7, 36, 12):
        assert _reads_in_place((1, 64, side, side), 64)
    assert [pixels.aliased_plane_bytes(ways) for ways in (4, 8, 12, 16)] == [PIXELS_ALIASED_PLANE_BYTES] * 2 + [0] * 2
    aliasing = pixels.ALIASED_PLANE_BYTES > 0
    assert aliasing == (l1_geometry()[1] <= PIXELS_ALIASED_MAX_WAYS)
    side = int(PIXELS_ALIASED_PLANE_BYTES ** 0.5) // 2  # 16 x 16 floats
    for h, w in ((side, side), (2 * side, 2 * side), (side // 2, 2 * side), (4 * side, side), (112, 112)):
        assert h * w * 4 % PIXELS_ALIASED_PLANE_BYTES == 0 and _reads_in_place((1, 8, h, w), 8) != aliasing
    assert not _reads_in_place((1, 8, 7, 7), PIXELS_PACK_MIN_CHANNELS)
    assert _reads_in_place((1, 8, 4, 4), PIXELS_PACK_MIN_CHANNELS)
    assert not _reads_in_place((1, 8, 7, 7), 8, stride=2)
    c = PIXELS_IN_PLACE_BYTES // (4 * 28 * 28)
    assert _reads_in_place((1, c, 28, 28), 8) and not _reads_in_place((1, c + 1, 28, 28), 8)


@pytest.mark.parametrize("x_shape, m, line_offset", [((3, 6, 7, 7), 520, 4), ((2, 3, 14, 14), 512, 0),
                                                     ((1, 129, 256, 256), 3, 4), ((2, 5, 16, 16), 9, 4),
                                                     ((1, 3, 32, 32), 2 * mk.PIXEL_CHANNELS + 1, 1)])
def test_pointwise_planes_copied_into_panels(x_shape, m, line_offset):
    """1x1, stride 1, no padding, through packed panels: planes that are not
    whole vectors under at least PIXELS_PACK_MIN_CHANNELS output channels,
    an input larger than PIXELS_IN_PLACE_BYTES and planes that alias in L1
    (where L1 has at most PIXELS_ALIASED_MAX_WAYS ways; read in place
    otherwise)."""
    aliased_only = x_shape[2] * x_shape[3] in (16 * 16, 32 * 32)
    assert _reads_in_place(x_shape, m) == (aliased_only and pixels.ALIASED_PLANE_BYTES == 0)
    _check_pointwise(x_shape, m, 1, (1, 1), line_offset)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect through the C library")
@pytest.mark.parametrize("c, hw, m", [(7, 7, 5), (9, 14, 3), (3, 1, 2), (5, 4, 9), (2, 23, 17), (260, 14, 20)])
def test_in_place_planes_never_read_past_the_input(c, hw, m):
    """Read in place, a plane's last vector reaches past the plane (lanes
    never stored): the tile whose last vector would leave the input moves
    back onto pixels the tile before it computes too, or, on a plane
    narrower than it, goes through a panel.  The input ends right before an
    unreadable page, for planes of whole vectors (16 pixels) and not (49,
    196, 1, 529), with the first channel block copying for the others (260
    channels, 3 blocks), over a batch and both thread counts."""
    rng = np.random.default_rng(hw)
    x = _ending_at_unreadable_page(rng.integers(-3, 4, (2, c, hw, hw)).astype(np.float32))
    w = rng.integers(-3, 4, (m, c, 1, 1)).astype(np.float32)
    expected = conv2d_reference(x, w, None, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    for threads in (1, 2):
        np.testing.assert_array_equal(ln.conv2d(x, w, algorithm=NAME, threads=threads), expected)


@pytest.mark.parametrize("line_offset", range(16))
@pytest.mark.parametrize("row_len", [16, 48, 64, 784, 3136])
def test_in_place_tiles_start_on_vector_boundaries(line_offset, row_len):
    """The tiles of a plane read in place cover it once, in order, and all
    but the head tile start on a vector boundary of the input."""
    x = _at_line_offset(np.zeros(row_len + 16, np.float32), line_offset)
    head = pixels.vector_head(x.ctypes.data)
    assert 0 <= head < mk.VL and (x.ctypes.data + 4 * head) % (4 * mk.VL) == 0
    covered = 0
    for k in range(row_len // pixels.SPAN + 2):
        x0, valid = pixels._unit_span(k, head, 1, row_len)
        if valid <= 0:
            continue
        assert x0 == covered and valid <= (head if k == 0 else pixels.SPAN)
        assert k == 0 or (x.ctypes.data + 4 * x0) % (4 * mk.VL) == 0
        covered += valid
    assert covered == row_len


@pytest.mark.parametrize("byte_offset", [1, 2, 3])
@pytest.mark.parametrize("x_shape, m", [((2, 16, 14, 14), 24), ((1, 9, 8, 8), 5), ((3, 5, 7, 7), 11)])
def test_inputs_off_a_float_boundary_are_copied_first(x_shape, m, byte_offset):
    """The plans of 1x1 layers read their input in place without asking where
    it lies (with no workspace on the plain sweep's planes: 196 and 64
    pixels here; 49 go through a panel): an input that does not start on a
    float boundary (a buffer at an odd offset) is copied first, through
    ``conv2d`` and a layer, on both thread counts, exact and unmodified."""
    rng = np.random.default_rng(byte_offset)
    values = rng.integers(-3, 4, x_shape).astype(np.float32)
    store = np.zeros(values.nbytes + 8, np.uint8)
    x = np.ndarray(x_shape, np.float32, buffer=store, offset=byte_offset)
    x[...] = values
    assert not x.flags.aligned and x.flags.c_contiguous
    w = rng.integers(-3, 4, (m, x_shape[1], 1, 1)).astype(np.float32)
    expected = conv2d_reference(values, w, None, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    before = store.copy()
    layer = ln.Conv2d(w, algorithm=NAME, threads=1)
    given = []

    def execute(plan, x_flat, *args):
        given.append(x_flat.flags.aligned)
        return real_execute(plan, x_flat, *args)

    real_execute = ln._execute.execute
    with mock.patch.object(ln._api, "execute", execute), mock.patch.object(ln._layer, "execute", execute):
        for threads in (1, 2):
            np.testing.assert_array_equal(ln.conv2d(x, w, algorithm=NAME, threads=threads), expected)
            np.testing.assert_array_equal(ln.conv2d(x, w, threads=threads), expected)
        for _ in range(2):  # planned, then repeated
            np.testing.assert_array_equal(layer(x), expected)
    assert given == [True] * 6
    np.testing.assert_array_equal(store, before)


@pytest.mark.parametrize("line_offset", [0, 4, 12])
def test_large_outputs_start_as_far_from_a_line_as_the_input(line_offset):
    """Read in place on planes of whole vectors, the tiles' loads start on
    the input's vector boundaries: a new output of ALIGNED_OUTPUT_MIN_BYTES
    or more starts as far from a cache line as the input, so that their
    stores do too (conv2d, a layer's first and repeated calls); smaller
    outputs, and planes that are not whole vectors, are numpy's."""
    rng = np.random.default_rng(line_offset)
    c, m, hw = 5, 2 * mk.PIXEL_CHANNELS + 3, 128  # planes of whole vectors; a 1.2 MiB output
    x = _at_line_offset(rng.integers(-3, 4, (1, c, hw, hw)).astype(np.float32), line_offset)
    w = rng.integers(-3, 4, (m, c, 1, 1)).astype(np.float32)
    expected = conv2d_reference(x, w, None, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    assert 4 * m * hw * hw >= ALIGNED_OUTPUT_MIN_BYTES
    layer = ln.Conv2d(w, algorithm=NAME, threads=1)
    outputs = [ln.conv2d(x, w, algorithm=NAME, threads=1), layer(x), layer(x)]
    for out in outputs:
        np.testing.assert_array_equal(out, expected)
        assert out.flags.c_contiguous and out.ctypes.data % 64 == x.ctypes.data % 64
    g = make_geometry(x.shape, w.shape)
    assert ln._registry.get(NAME).plan(g, 1).aligns_output
    small = make_geometry((1, c, 48, 48), w.shape)
    assert not ln._registry.get(NAME).plan(small, 1).aligns_output
    split = make_geometry((1, c, 127, 129), w.shape)
    assert 4 * m * 127 * 129 >= ALIGNED_OUTPUT_MIN_BYTES and not ln._registry.get(NAME).plan(split, 1).aligns_output


@pytest.mark.parametrize("shape, stride", [((3, 24, 28, 28), (2, 2)), ((2, 10, 13, 9), (2, 3)),
                                           ((1, 7, 14, 14), (3, 1)), ((2, 5, 3, 2), (2, 2)),
                                           ((1, 6, 30, 200), (1, 4))])
def test_strided_pointwise_planes_are_gathered(shape, stride):
    """1x1 at a stride, no padding: the output planes are rows of tiles as at
    stride 1, each tile's input gathered into the panels (odd sizes, output
    rows that end inside a tile, a 2x1 output)."""
    _check_pointwise(shape, 11, 1, stride, 1)


def _check_pointwise(x_shape, m, groups, stride, line_offset):
    rng = np.random.default_rng(x_shape[2])
    c = x_shape[1]
    x = _at_line_offset(rng.integers(-3, 4, x_shape).astype(np.float32), line_offset)
    w = rng.integers(-3, 4, (m, c // groups, 1, 1)).astype(np.float32)
    b = rng.integers(-3, 4, m).astype(np.float32)
    g = make_geometry(x.shape, w.shape, stride, groups=groups)
    assert unpadded_1x1(g)
    plan = ln._registry.get(NAME).plan(g, 2, prepacked=True)
    unit_block = max(1, PIXELS_RUN_BYTES // (4 * pixels.SPAN * c // groups))
    slots = 2 if plan.kernel.parallel_items > 1 else 1
    # Read in place without copies on planes of a tile and a vector or more,
    # every tile runs in the plain sweep, which needs no workspace.
    copies = plan.kernel.tiling[14]
    plain = pixels.reads_in_place(g) and not copies and g.out_height * g.out_width >= pixels.SPAN + mk.VL
    assert plan.kernel.tiling[16] == plain
    # The plain sweep hints the next tile's input into L2 where an image's input exceeds that share of L2.
    image_bytes = 4 * c * g.height * g.width
    assert plan.kernel.tiling[17] == (plain and image_bytes > pixels.PIXELS_PREFETCH_NEXT_L2_SHARE * l2_bytes())
    assert plan.workspace_elements == (0 if plain else pixels._table_elements(g)
                                       + slots * unit_block * c // groups * pixels.SPAN + 16)
    # A strided layer's gathers are priced: each chunk of channel blocks gathers every input value it reads.
    gathered = c * g.out_height * g.out_width * plan.kernel.tiling[7] if stride != (1, 1) else 0
    assert plan.kernel.moved_elements == g.batch * round(gathered * PIXELS_GATHER_COST)
    expected = conv2d_reference(x, w, b, stride, ((0, 0), (0, 0)), (1, 1), groups)
    layer = ln.Conv2d(w, b, stride=stride, groups=groups, algorithm=NAME)
    for threads in (1, 2):
        np.testing.assert_array_equal(ln.conv2d(x, w, b, stride, groups=groups, algorithm=NAME, threads=threads),
                                      expected)
        np.testing.assert_array_equal(layer(x), expected)


def test_first_layer_shapes_and_workspace():
    """RGB first layers (3x3 stride 2, 7x7 stride 2, 11x11 stride 4) over a
    batch: rows of several tiles with a partial last vector, the staged copy
    as the scratch besides the offset table."""
    rng = np.random.default_rng(3)
    for (hw, m, k, s, p) in ((45, 16, 3, 2, 1), (61, 19, 7, 2, 3), (71, 8, 11, 4, 2)):
        x = rng.standard_normal((2, 3, hw, hw)).astype(np.float32)
        w = rng.standard_normal((m, 3, k, k)).astype(np.float32)
        b = rng.standard_normal(m).astype(np.float32)
        g = make_geometry(x.shape, w.shape, s, p)
        rows, phase_len = pixels._staged_shape(g)
        assert phase_len >= g.out_width + (k - 1) // s + mk.VL
        assert ln.workspace_bytes(NAME, x.shape, w.shape, stride=s, padding=p, threads=2) == 4 * (
            pixels._table_elements(g) + 3 * rows * s * phase_len)
        case = _case(x.shape, w.shape, s, p)
        for threads in (1, 2):
            assert_close_to_reference(ln.conv2d(x, w, b, stride=s, padding=p, algorithm=NAME, threads=threads),
                                      x, w, b, case)


def _case(x_shape, w_shape, s, p):
    from strategies import Case

    return Case(batch=x_shape[0], channels=x_shape[1], height=x_shape[2], width=x_shape[3], out_channels=w_shape[0],
                kernel=w_shape[2:], stride=(s, s), padding=((p, p), (p, p)), dilation=(1, 1), groups=1)


@pytest.mark.parametrize("x_shape, w_shape, padding", [((2, 1030, 10, 10), (10, 1030, 1, 1), 0),
                                                       ((2, 120, 5, 61), (19, 120, 3, 3), 1)])
def test_runs_of_single_tiles(x_shape, w_shape, padding):
    """Long reductions: each run of tiles is a single tile (its input fills
    the run's budget), so every channel block passes over run after run."""
    g = make_geometry(x_shape, w_shape, padding=padding)
    plan = ln._registry.get(NAME).plan(g, 2, prepacked=True)
    unit_block = plan.kernel.tiling[9]
    assert unit_block == 1
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, x_shape).astype(np.float32)
    w = rng.integers(-3, 4, w_shape).astype(np.float32)
    expected = conv2d_reference(x, w, None, (1, 1), ((padding, padding), (padding, padding)))
    for threads in (1, 2):
        np.testing.assert_array_equal(ln.conv2d(x, w, padding=padding, algorithm=NAME, threads=threads), expected)


@pytest.mark.parametrize("row_len", [1, 7, 49, 196, 784, 3136])
@pytest.mark.parametrize("chunks, images, threads", [(1, 1, 1), (2, 1, 2), (3, 1, 2), (2, 8, 2), (4, 1, 2), (2, 3, 2)])
def test_pointwise_plans_price_the_split_of_their_planes(row_len, chunks, images, threads):
    """The balance of a 1x1 plan's pixel split is each thread's share of the
    priced tile vectors, from the kernel's own numbering of tiles and items,
    against a perfect share: 1 when every thread runs whole planes."""
    units = pixels._row_units(row_len, True)
    head = 0  # the balance takes the head tile as empty
    vectors = []
    for k in range(units):
        _, valid = pixels._unit_span(k, head, 1, row_len)
        whole, rest = divmod(-(-valid // mk.VL), pixels.PIXEL_VECTORS)
        vectors.append(whole * pixels.PIXEL_VECTORS + pixels.TILE_VECTORS[rest])
    items = images * chunks
    per_item = [sum(vectors[k] for k in range(units) if i % chunks * units // chunks <= k
                    < (i % chunks + 1) * units // chunks) for i in range(items)]
    shares = [sum(per_item[t * items // threads:(t + 1) * items // threads]) for t in range(min(threads, items))]
    expected = max(shares) * len(shares) / sum(shares)
    assert pixels._plane_split_balance(row_len, chunks, items, threads) == pytest.approx(max(1.0, expected))
    if items % threads == 0 and (items // threads) % chunks == 0:
        assert pixels._plane_split_balance(row_len, chunks, items, threads) == 1.0


def test_pointwise_plans_carry_the_balance_of_their_split():
    """A 7x7 1x1 layer at batch 1 on two threads is cut by pixels (its
    channel blocks are the cheaper cut to keep whole), and its plan prices
    that cut's longer share; on one thread, or cut into whole planes, 1."""
    for batch in (1, 8):
        g = make_geometry((batch, 832, 7, 7), (128, 832, 1, 1))
        for threads in (1, 2):
            plan = ln._registry.get("direct-pixels").plan(g, threads)
            chunks, items = plan.kernel.tiling[8], plan.parallel_items
            expected = pixels._plane_split_balance(49, chunks, items, threads) if chunks > 1 else 1.0
            assert plan.balance == expected
            assert (plan.balance > 1.0) == (threads == 2 and batch == 1 and chunks > 1)
