"""The register-tiled micro-kernel and the algorithms built on it.

* The tile kernels on every edge-tile case (MR remainder x NR remainder), both
  store paths, with NaN guard regions around every buffer: a read outside the
  given blocks would put NaN into a stored result, a write would change a guard.
* pointwise-ukernel / direct-ukernel (both layouts) against the float64
  reference over hypothesis shapes, including channel counts above one
  register tile, and NaN/inf propagation.
* Kernels compiled in one process load from the cache in another.
"""

import dataclasses
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numba import njit

import lowmem_numba as ln
from lowmem_numba import _microkernel as mk
from lowmem_numba._algorithms import ukernel
from lowmem_numba._geometry import make_geometry
from naive import (assert_close_to_reference, assert_exact_like_reference, assert_nonfinite_like_reference,
                   channels_last, conv2d_reference)
from strategies import Case, cases

NAMES = ["pointwise-ukernel", "pointwise-ukernel-nhwc", "direct-ukernel", "direct-ukernel-nhwc"]
GUARD = 37  # guard elements on each side of every buffer


def _runner(tile):
    """A jitted function calling the tile intrinsic ``tile`` (intrinsics are
    callable from compiled code only)."""

    @njit
    def run(w, w_off, w_c, w_j, w_i, w_next, x, x_off, x_y, x_x, x_c, x_j, x_i, p0, nx, mr, kc, nj, ni,
            out, o_off, o_y, o_x, o_l, nr, bias, b_off, has_bias):
        tile(w, w_off, w_c, w_j, w_i, w_next, x, x_off, x_y, x_x, x_c, x_j, x_i, p0, nx, mr, kc, nj, ni,
             out, o_off, o_y, o_x, o_l, nr, bias, b_off, has_bias)

    return run


_run_full, _run_half, _run_small, _run_small_half, _run_wide, _run_small_wide = (
    _runner(tile) for tile in (mk.tile_full, mk.tile_half, mk.tile_small, mk.tile_small_half, mk.tile_wide,
                               mk.tile_small_wide))
# The tile shapes of the other hosts, compiled here: the IR is generic, so
# AVX2's and the fallback's vector widths must be exact on this machine too.
_run_avx2 = _runner(mk.make_tile_kernel(mk.TILE_AVX2[1], nv=mk.TILE_AVX2[2], vl=mk.TILE_AVX2[0]))
_run_generic = _runner(mk.make_tile_kernel(mk.TILE_GENERIC[1], nv=mk.TILE_GENERIC[2], vl=mk.TILE_GENERIC[0]))


def _guarded(values):
    """``values`` inside a NaN-guarded array: (whole array, offset of values)."""
    whole = np.full(values.size + 2 * GUARD, np.nan, np.float32)
    whole[GUARD:GUARD + values.size] = values
    return whole


def _tile_case(rows_max, mr, nr, nchw_out, with_bias, p0, nx, seed, kc=5, nj=2, ni=2, half=False,
               run=None, nr_max=mk.NR, accumulate=False, block=None):
    """Run one tile on guarded buffers and check it against the definition;
    with ``accumulate``, the tile adds to an output of other integers
    (``ACCUMULATE``: the bias is then not added).  The weights are packed in
    blocks of ``block`` lanes (default ``nr_max``), NaN between them."""
    rng = np.random.default_rng(seed)
    # Packed weights [ni][nj][kc][NR]; lanes >= nr are NaN: they must not leak.
    w_block = rng.integers(-3, 4, (ni, nj, kc, nr_max)).astype(np.float32)
    w_block[..., nr:] = np.nan
    block = block or nr_max
    # Blocks of ``block`` lanes, each ``w_next`` elements after the one before (a
    # wide tile's lanes past NR come from the next block), a NaN gap between.
    w_next = ni * nj * kc * block + GUARD
    packed = np.full(w_next * -(-nr_max // block), np.nan, np.float32)
    for b in range(0, nr_max, block):  # a last, narrower block's lanes past nr_max are NaN too
        lanes = w_block[..., b:b + block]
        packed[b // block * w_next:][:ni * nj * kc * block].reshape(ni, nj, kc, block)[..., :lanes.shape[-1]] = lanes
    # Input: a rectangle of pixels (row-major, nx wide) with kc channels,
    # dilated tap offsets; laid out NHWC-like with a row stride.
    rows = (p0 + rows_max) // nx + 2
    x_x, x_c, x_j, x_i = kc, 1, kc, (nx + nj) * kc
    x_y = x_i
    x_size = (rows + ni) * x_y
    x_vals = rng.integers(-3, 4, x_size).astype(np.float32)
    pixels = [divmod(p0 + r, nx) for r in range(mr)]
    # Input elements the tile may read: every other one becomes NaN, so any
    # read beyond them shows up.
    used = np.zeros(x_size, bool)
    for (y, xx) in pixels:
        for i in range(ni):
            for j in range(nj):
                at = y * x_y + xx * x_x + i * x_i + j * x_j
                used[at:at + kc] = True
    x_vals[~used] = np.nan
    bias_vals = rng.integers(-3, 4, nr).astype(np.float32)
    # Output: NHWC-like (lanes contiguous, pixel step nr + 3) or NCHW-like
    # (lanes strided, pixels contiguous with row stride nx + 2).
    if nchw_out:
        o_x, o_y = 1, nx + 2
        o_l = rows * o_y + 5
    else:
        o_x, o_l = nr + 3, 1
        o_y = (nx + 1) * o_x
    o_size = (nr - 1) * o_l + rows * o_y + nx * o_x + 1
    w = _guarded(packed)
    x = _guarded(x_vals)
    bias = _guarded(bias_vals) if with_bias else np.empty(0, np.float32)
    out = np.full(o_size + 2 * GUARD, -7.0, np.float32)
    if accumulate:  # every element its own value, so that adding to the wrong one shows
        out = rng.integers(-9, 10, out.size).astype(np.float32)
    expected = out.copy()
    if run is None and half:
        run = _run_half if rows_max == mk.MR else _run_small_half
    elif run is None:
        run = _run_full if rows_max == mk.MR else _run_small
    run(w, GUARD, block, kc * block, nj * kc * block, w_next, x, GUARD, x_y, x_x, x_c, x_j, x_i, p0, nx, mr,
        kc, nj, ni, out, GUARD, o_y, o_x, o_l, nr, bias, GUARD if with_bias else 0,
        mk.ACCUMULATE if accumulate else int(with_bias))
    for r, (y, xx) in enumerate(pixels):
        for lane in range(nr):
            at = GUARD + y * o_y + xx * o_x + lane * o_l
            total = float(expected[at]) if accumulate else 0.0
            total += float(bias_vals[lane]) if with_bias and not accumulate else 0.0
            for i in range(ni):
                for j in range(nj):
                    for c in range(kc):
                        total += (float(w_block[i, j, c, lane])
                                  * float(x_vals[y * x_y + xx * x_x + i * x_i + j * x_j + c]))
            expected[at] = total
    np.testing.assert_array_equal(out, expected)


EDGE_ROWS = sorted({1, 2, mk.SMALL_MR, min(mk.SMALL_MR + 1, mk.MR), mk.MR - 1, mk.MR} - {0})
EDGE_LANES = sorted({1, mk.VL - 1, mk.VL, mk.VL + 1, mk.NR - 1, mk.NR} - {0})


@pytest.mark.parametrize("mr", EDGE_ROWS)
@pytest.mark.parametrize("nr", EDGE_LANES)
@pytest.mark.parametrize("nchw_out", [False, True])
def test_full_tile_every_edge_case_stays_in_bounds(mr, nr, nchw_out):
    # p0 = 0 with a wide rectangle keeps the pixels contiguous (the transposed
    # NCHW fast path when the tile is full); nx = 5 wraps rows (the general path).
    for p0, nx, seed in ((0, 64, 1), (3, 5, 2)):
        _tile_case(mk.MR, mr, nr, nchw_out, with_bias=bool(seed % 2), p0=p0, nx=nx, seed=seed)
    _tile_case(mk.MR, mr, nr, nchw_out, with_bias=True, p0=0, nx=64, seed=3)
    # Adding to the output (a reduction in blocks) on both paths, bias ignored.
    for p0, nx, seed in ((0, 64, 12), (3, 5, 13)):
        _tile_case(mk.MR, mr, nr, nchw_out, with_bias=True, p0=p0, nx=nx, seed=seed, accumulate=True)


@pytest.mark.parametrize("mr", range(1, mk.SMALL_MR + 1))
@pytest.mark.parametrize("nr", EDGE_LANES)
@pytest.mark.parametrize("nchw_out", [False, True])
def test_small_tile_every_edge_case_stays_in_bounds(mr, nr, nchw_out):
    _tile_case(mk.SMALL_MR, mr, nr, nchw_out, with_bias=True, p0=1, nx=3, seed=4)
    _tile_case(mk.SMALL_MR, mr, nr, nchw_out, with_bias=False, p0=0, nx=50, seed=5)
    _tile_case(mk.SMALL_MR, mr, nr, nchw_out, with_bias=True, p0=0, nx=50, seed=14, accumulate=True)


HALF_LANES = sorted({1, mk.VL // 2, mk.VL - 1, mk.VL})


@pytest.mark.parametrize("mr", EDGE_ROWS)
@pytest.mark.parametrize("nr", HALF_LANES)
@pytest.mark.parametrize("nchw_out", [False, True])
def test_half_width_tiles_every_edge_case_stays_in_bounds(mr, nr, nchw_out):
    # Half-width kernels read VL of the NR packed lanes per step.
    _tile_case(mk.MR, mr, nr, nchw_out, with_bias=True, p0=0, nx=64, seed=8, half=True)
    _tile_case(mk.MR, mr, nr, nchw_out, with_bias=False, p0=3, nx=5, seed=9, half=True)
    if mr <= mk.SMALL_MR:
        _tile_case(mk.SMALL_MR, mr, nr, nchw_out, with_bias=True, p0=1, nx=3, seed=10, half=True)
        _tile_case(mk.SMALL_MR, mr, nr, nchw_out, with_bias=True, p0=0, nx=50, seed=11, half=True)


WIDE_LANES = sorted({1, mk.VL, mk.NR - 1, mk.NR, mk.NR + 1, mk.NR + mk.VL - 1, mk.NR + mk.VL})


@pytest.mark.parametrize("mr", sorted({1, 2, mk.SMALL_MR, mk.SMALL_MR + 1, mk.WIDE_MR - 1, mk.WIDE_MR}))
@pytest.mark.parametrize("nr", WIDE_LANES)
@pytest.mark.parametrize("nchw_out", [False, True])
def test_wide_tiles_every_edge_case_stays_in_bounds(mr, nr, nchw_out):
    # Wide kernels read NR lanes of one packed block and VL of the next.
    wide = dict(nr_max=mk.NR + mk.VL, block=mk.NR)
    _tile_case(mk.WIDE_MR, mr, nr, nchw_out, with_bias=True, p0=0, nx=64, seed=15, run=_run_wide, **wide)
    _tile_case(mk.WIDE_MR, mr, nr, nchw_out, with_bias=False, p0=3, nx=5, seed=16, run=_run_wide, **wide)
    _tile_case(mk.WIDE_MR, mr, nr, nchw_out, with_bias=True, p0=0, nx=64, seed=17, run=_run_wide,
               accumulate=True, **wide)
    if mr <= mk.SMALL_MR:
        _tile_case(mk.SMALL_MR, mr, nr, nchw_out, with_bias=True, p0=1, nx=3, seed=18, run=_run_small_wide, **wide)
        _tile_case(mk.SMALL_MR, mr, nr, nchw_out, with_bias=False, p0=0, nx=50, seed=19, run=_run_small_wide,
                   **wide)


@pytest.mark.parametrize("tile, run", [(mk.TILE_AVX2, _run_avx2), (mk.TILE_GENERIC, _run_generic)],
                         ids=["avx2-shape", "generic-shape"])
@pytest.mark.parametrize("nchw_out", [False, True])
def test_other_hosts_tile_shapes_are_exact(tile, run, nchw_out):
    vl, rows, nv = tile
    for mr in sorted({1, rows - 1, rows}):
        for nr in sorted({1, vl - 1, vl, vl + 1, vl * nv}):
            _tile_case(rows, mr, nr, nchw_out, with_bias=True, p0=0, nx=64, seed=mr * 100 + nr, run=run,
                       nr_max=vl * nv)
            _tile_case(rows, mr, nr, nchw_out, with_bias=False, p0=2, nx=3, seed=mr + nr, run=run,
                       nr_max=vl * nv)


def test_tile_with_no_taps_stores_bias_only():
    _tile_case(mk.MR, mk.MR, mk.NR, False, with_bias=True, p0=0, nx=64, seed=6, ni=0)
    _tile_case(mk.MR, 3, 5, True, with_bias=True, p0=0, nx=64, seed=7, nj=0)


def test_tile_shape_follows_host():
    assert mk.NR == mk.VL * mk.NV and 1 <= mk.SMALL_MR < mk.MR <= mk.VL
    assert (mk.VL, mk.MR, mk.NV) == {"avx512": mk.TILE_AVX512, "avx2": mk.TILE_AVX2}.get(
        mk.ISA, mk.TILE_GENERIC)


# ----------------------------------------------------------------- algorithms

@st.composite
def wide_cases(draw):
    """strategies.cases() with channel counts spanning several register tiles."""
    case = draw(cases(max_size=16))
    m_per_group = draw(st.sampled_from([1, 2, mk.NR - 1, mk.NR, mk.NR + 3, mk.NR + mk.VL, mk.NR + mk.VL + 2,
                                        2 * mk.NR + 5, 2 * mk.NR + mk.VL]))
    c_per_group = draw(st.integers(1, 9)) if case.groups <= 3 else case.channels // case.groups
    return dataclasses.replace(case, out_channels=case.groups * m_per_group,
                               channels=case.groups * c_per_group)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None)
@given(case=st.one_of(cases(), wide_cases()), seed=st.integers(0, 2**32 - 1),
       with_bias=st.booleans(), layout=st.sampled_from(["NCHW", "NHWC"]),
       threads=st.sampled_from([1, 2]))
def test_exact_against_reference(name, case, seed, with_bias, layout, threads):
    if not ln.supports(name, case.x_shape, case.w_shape, **case.args):
        assert name.startswith("pointwise") and case.kernel != (1, 1)
        return
    assert_exact_like_reference(name, case, seed, with_bias, layout, threads)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None)
@given(case=st.one_of(cases(), wide_cases()), batch=st.integers(2, 14), seed=st.integers(0, 2**32 - 1),
       with_bias=st.booleans(), threads=st.sampled_from([1, 2]), copied=st.booleans())
def test_stacked_images_exact_against_reference(name, case, batch, seed, with_bias, threads, copied):
    """Every claimed configuration with the images stacked into the
    rectangles (forced here whatever the price, at batch 2-14: walks of one
    tile and of several) is exact, in the kernel's own layout; NCHW images
    read in place, or (``copied``: forced here at any channel count; kernels
    of several taps) from a channels-last copy of the whole batch."""
    case = dataclasses.replace(case, batch=batch, kernel=(1, 1) if name.startswith("pointwise") else case.kernel)
    if not ln.supports(name, case.x_shape, case.w_shape, **case.args):
        return
    layout = "NHWC" if name.endswith("-nhwc") else "NCHW"
    g = make_geometry(case.x_shape, case.w_shape, case.stride, case.padding, case.dilation, case.groups)
    ln._memo.clear_all()
    try:
        with mock.patch.object(ukernel, "_stacks", lambda g: True), \
                mock.patch.object(ukernel, "UKERNEL_STACK_COPY_CHANNELS", 1 if copied else 2**31):
            tiling = ln._registry.get(name).plan(g, threads, layout).kernel.tiling
            assert tiling.stacked
            if copied and layout == "NCHW" and g.kernel_h * g.kernel_w > 1 and g.out_height > 0 and g.out_width > 0:
                assert tiling.staging == ukernel.Staging(True, False, batch)
            assert_exact_like_reference(name, case, seed, with_bias, layout, threads)
    finally:
        ln._memo.clear_all()  # forget the plans made while forced


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(batch=st.integers(2, 9), height=st.integers(1, 12), width=st.integers(1, 12), groups=st.sampled_from([1, 3]),
       c_per_group=st.integers(1, 9), m_per_group=st.sampled_from([1, mk.VL + 1, mk.NR + 3]),
       dilation=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1), with_bias=st.booleans(),
       threads=st.sampled_from([1, 2]))
def test_small_1x1_planes_walk_one_row_per_image_exactly(name, batch, height, width, groups, c_per_group,
                                                         m_per_group, dilation, seed, with_bias, threads):
    """A 1x1 layer without stride or padding on planes of at most a tile
    block's pixels is walked as one row of H*W pixels per image, the images
    stacked (the plan says so), and is exact in the kernel's own layout;
    one more pixel per plane, and it is not."""
    assume(height * width <= ukernel.UKERNEL_TILE_BLOCK * mk.MR)
    case = Case(batch, groups * c_per_group, height, width, groups * m_per_group, (1, 1), (1, 1), ((0, 0), (0, 0)),
                (dilation, dilation), groups)
    layout = "NHWC" if name.endswith("-nhwc") else "NCHW"
    g = make_geometry(case.x_shape, case.w_shape, case.stride, case.padding, case.dilation, case.groups)
    tiling = ln._registry.get(name).plan(g, threads, layout).kernel.tiling
    walked = ukernel.KernelGeometry(*tiling.launched)
    assert tiling.stacked and (walked.height, walked.width, walked.batch) == (1, height * width, batch)
    assert_exact_like_reference(name, case, seed, with_bias, layout, threads)
    larger = make_geometry((batch, 1, 1, ukernel.UKERNEL_TILE_BLOCK * mk.MR + 1), (1, 1, 1, 1), 1, 0)
    assert ukernel._walked_geometry(larger) == (larger, False)


@st.composite
def long_reduction_cases(draw):
    """strategies.cases() with more input channels per group (up to five
    vectors), batch 1-4."""
    case = draw(cases(max_size=10))
    c_per_group = draw(st.integers(1, 5 * mk.VL))
    m_per_group = draw(st.sampled_from([1, mk.VL, mk.NR + 3, mk.NR + mk.VL]))
    return dataclasses.replace(case, batch=draw(st.integers(1, 4)), channels=case.groups * c_per_group,
                               out_channels=case.groups * m_per_group)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None)
@given(case=long_reduction_cases(), block=st.integers(1, 2 * mk.VL + 1), seed=st.integers(0, 2**32 - 1),
       with_bias=st.booleans(), layout=st.sampled_from(["NCHW", "NHWC"]), threads=st.sampled_from([1, 2]),
       prepacked=st.booleans())
def test_reductions_in_channel_blocks_exact_against_reference(name, case, block, seed, with_bias, layout, threads,
                                                             prepacked):
    """Tiles that reduce over ``block`` input channels at a time, the partial
    sums added up in the output (the plan does so on long 1x1 reductions;
    forced here on every configuration, with blocks of any size and a short
    last one): the reference's result, in both layouts, on weights packed
    first or inside the kernel, the images stacked or not."""
    if not ln.supports(name, case.x_shape, case.w_shape, **case.args):
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ukernel, "_channel_block", lambda g: min(block, g.channels_per_group))
        ln._memo.clear_all()
        try:
            assert_exact_like_reference(name, case, seed, with_bias, layout, threads, prepacked=prepacked)
        finally:
            ln._memo.clear_all()


def test_long_1x1_reductions_run_in_equal_channel_blocks():
    """Above UKERNEL_REDUCTION_BLOCK input channels per group, a 1x1 layer's
    tiles reduce over equal blocks of whole vectors; larger kernels and
    shorter reductions are not blocked."""
    from lowmem_numba._tuning import UKERNEL_REDUCTION_BLOCK as most

    def block(c, m, k=1, groups=1):
        g = make_geometry((1, c, 7, 7), (m, c // groups, k, k), groups=groups)
        plan = ln._registry.get("direct-ukernel").plan(g, 1, prepacked=True)
        assert plan.kernel.tiling.channel_block == ukernel._channel_block(g)
        return plan.kernel.tiling.channel_block

    assert block(most, 64) == most and block(4 * most, 64, k=3) == 4 * most
    assert block(2 * most, 64) == most and block(3 * most, 64) == most
    assert block(most + 1, 64) == -(-(most // 2 + 1) // mk.VL) * mk.VL  # two blocks, the last one shorter
    assert block(4 * most, 64, groups=2) == most


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(case=wide_cases(), seed=st.integers(0, 2**32 - 1))
def test_close_on_real_data(name, case, seed):
    if not ln.supports(name, case.x_shape, case.w_shape, **case.args):
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    w = rng.standard_normal(case.w_shape).astype(np.float32)
    bias = rng.standard_normal(case.out_channels).astype(np.float32)
    got = ln.conv2d(x, w, bias, algorithm=name, **case.args)
    assert_close_to_reference(got, x, w, bias, case)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(case=st.one_of(cases(), wide_cases()), seed=st.integers(0, 2**32 - 1),
       layout=st.sampled_from(["NCHW", "NHWC"]))
def test_nan_and_inf_propagate_as_in_reference(name, case, seed, layout):
    if not ln.supports(name, case.x_shape, case.w_shape, **case.args):
        return
    assert_nonfinite_like_reference(name, case, seed, layout, every=50)


@pytest.mark.parametrize("name", NAMES)
def test_layer_shapes_full_tiles_and_threads(name):
    # Big enough for full tiles, interior and border rectangles, several
    # output-channel blocks and a split over two threads.
    rng = np.random.default_rng(2)
    for (c, hw, m, k, s, p) in ((48, 17, 70, 3, 1, 1), (40, 15, 64, 1, 2, 0), (16, 23, 33, 5, 2, 2)):
        x = rng.integers(-3, 4, (2, c, hw, hw)).astype(np.float32)
        w = rng.integers(-3, 4, (m, c, k, k)).astype(np.float32)
        b = rng.integers(-3, 4, m).astype(np.float32)
        if not ln.supports(name, x.shape, w.shape, stride=s, padding=p):
            continue
        expected = conv2d_reference(x, w, b, (s, s), ((p, p), (p, p)))
        layer = ln.Conv2d(w, b, stride=s, padding=p, algorithm=name)
        for threads in (1, 2):
            np.testing.assert_array_equal(
                ln.conv2d(x, w, b, stride=s, padding=p, algorithm=name, threads=threads), expected)
            np.testing.assert_array_equal(layer(x), expected)


def test_workspace_is_the_packed_weights_only():
    """The packed weights, or at batch 1 on one thread one block of them,
    packed in the kernel.  On two threads the 3 channel blocks would split
    2 + 1, so the threads share the tiles and the weights are packed first."""
    g = make_geometry((2, 64, 28, 28), (70, 64, 3, 3), padding=1)
    block = mk.NR * 64 * 9
    for name in NAMES[2:]:
        elements = ukernel.packed_elements(g)
        assert elements == -(-70 // mk.NR) * block
        nhwc = name.endswith("-nhwc")
        for batch, threads, expected in ((2, 2, elements), (1, 1, block), (1, 2, elements)):
            shape = (batch, 28, 28, 64) if nhwc else (batch, 64, 28, 28)
            assert ln.workspace_bytes(name, shape, (70, 64, 3, 3), padding=1, threads=threads,
                                      layout="NHWC" if nhwc else "NCHW") == 4 * expected


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None)
@given(case=st.one_of(cases(), wide_cases()), seed=st.integers(0, 2**32 - 1), with_bias=st.booleans(),
       layout=st.sampled_from(["NCHW", "NHWC"]), threads=st.sampled_from([1, 2]))
def test_calls_whose_items_span_the_batch_pack_inside_the_kernel(name, case, seed, with_bias, layout, threads):
    """A functional call whose items' tiles span the batch (batch 1, or the
    images stacked), in one launch, and whose threads share the channel
    blocks, or cut the tiles with one item per thread running one channel
    unit, packs each block into scratch of its own inside the kernel: no
    packed copy of the weights, one block per parallel item in the
    workspace (two where the last two run as one wide unit), and the reference's result (every configuration, both
    layouts, batch 1-3, 1-2 threads)."""
    if not ln.supports(name, case.x_shape, case.w_shape, **case.args):
        return
    g = make_geometry(case.x_shape, case.w_shape, case.stride, case.padding, case.dilation, case.groups)
    if g.out_height < 1 or g.out_width < 1:
        return
    kernel_layout = "NHWC" if name.endswith("-nhwc") else "NCHW"
    plan = ln._registry.get(name).plan(g, threads, kernel_layout)
    tiling = plan.kernel.tiling
    one_launch = tiling.staging is None or tiling.staging.images == case.batch
    one_unit_each = (tiling.m_chunks == ukernel.channel_units(case.out_channels // case.groups)[1]
                     and plan.kernel.parallel_items <= threads)
    assert tiling.packs == ((case.batch == 1 or tiling.stacked) and one_launch
                            and (tiling.t_chunks == 1 or one_unit_each))
    assume(tiling.packs)
    assert plan.packed_weight_elements == 0
    block = case.kernel[0] * case.kernel[1] * (case.channels // case.groups) * mk.NR
    m_per_group = case.out_channels // case.groups
    if m_per_group > mk.NR and m_per_group % mk.NR == mk.VL:  # the last two blocks run as one wide unit
        block *= 2
    staged_copy = ln._registry.get(name).plan(g, threads, kernel_layout, prepacked=True).workspace_elements
    assert plan.workspace_elements == case.groups * tiling.m_chunks * tiling.t_chunks * block + staged_copy
    assert_exact_like_reference(name, case, seed, with_bias, layout, threads)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_one_unit_per_thread_packs_inside_the_kernel_with_the_tiles_cut(layout):
    """Fewer channel units than threads cut the tiles: each thread's one item
    then packs the unit it runs itself (GoogLeNet's 4a 5x5, 16 -> 48: one
    wide unit, two tile ranges on two threads); with more items than threads
    (ResNet-50-like 832 -> 160 on 7x7: five units by five tile ranges) the
    weights are packed once, before the kernel."""
    name = "direct-ukernel-nhwc" if layout == "NHWC" else "direct-ukernel"
    one_unit = make_geometry((1, 16, 14, 14), (48, 16, 5, 5), padding=2)
    plan = ln._registry.get(name).plan(one_unit, 2, layout)
    tiling = plan.kernel.tiling
    assert (tiling.m_chunks, tiling.t_chunks, tiling.packs, plan.packed_weight_elements) == (1, 2, True, 0)
    assert plan.workspace_elements == 2 * ukernel.packed_elements(one_unit)  # a wide unit's two blocks, per item
    case = Case(batch=1, channels=16, height=14, width=14, out_channels=48, kernel=(5, 5), stride=(1, 1),
                padding=((2, 2), (2, 2)), dilation=(1, 1), groups=1)
    assert_exact_like_reference(name, case, 0, True, layout, 2)
    many_items = make_geometry((1, 832, 7, 7), (160, 832, 1, 1))
    plan = ln._registry.get(name).plan(many_items, 2, layout)
    assert plan.kernel.tiling.t_chunks > 1 and plan.kernel.parallel_items > 2
    assert not plan.kernel.tiling.packs and plan.packed_weight_elements == ukernel.packed_elements(many_items)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_few_channel_layers_read_a_channels_last_copy(channels):
    """NCHW layers with at most UKERNEL_FOLD_CHANNELS input channels (RGB first
    layers) run on a channels-last copy of the images, so that the tap and
    channel loops fold: the copy is the only scratch (all three images fit
    in UKERNEL_STAGE_ELEMENTS: they are copied and run at once), and every
    image of the batch gets its own output."""
    from lowmem_numba._tuning import UKERNEL_FOLD_CHANNELS

    assert channels <= UKERNEL_FOLD_CHANNELS
    case = Case(batch=3, channels=channels, height=23, width=19, out_channels=40, kernel=(7, 5), stride=(2, 1),
                padding=((3, 3), (2, 2)), dilation=(1, 1), groups=1)
    rng = np.random.default_rng(channels)
    x = rng.standard_normal(case.x_shape, dtype=np.float32)
    w = rng.standard_normal(case.w_shape, dtype=np.float32)
    b = rng.standard_normal(40, dtype=np.float32)
    g = make_geometry(case.x_shape, case.w_shape, case.stride, case.padding)
    plan = ln._registry.get("direct-ukernel").plan(g, 2, prepacked=True)
    assert plan.kernel.tiling.staging == ukernel.Staging(True, False, 3)  # channels-last, not padded, 3 images at once
    assert plan.workspace_elements == 3 * channels * 23 * 19
    for threads in (1, 2):
        got = ln.conv2d(x, w, b, **case.args, algorithm="direct-ukernel", threads=threads)
        assert_close_to_reference(got, x, w, b, case)
    wide = make_geometry((1, UKERNEL_FOLD_CHANNELS + 1, 64, 64), (40, UKERNEL_FOLD_CHANNELS + 1, 3, 3), 1, 1)
    assert ln._registry.get("direct-ukernel").plan(wide, 2, prepacked=True).kernel.tiling.staging is None


def test_stacked_wide_nchw_images_are_copied_channels_last_within_the_memory_limit(monkeypatch, forget_plans):
    """ResNet-50's layer4 3x3 stride 2 at batch 4: stacked, its 512-channel
    images are read from a channels-last copy of the batch (the scratch), or
    in place when a ``memory_limit`` cannot hold the copy, prepacked or not;
    exact both ways.  Stacking is forced: the model stacks this layer on
    AVX-512's 12-pixel tiles, not on AVX2's 6-pixel ones, which leave its
    7-pixel rows less to gain."""
    from lowmem_numba._tuning import UKERNEL_STACK_COPY_CHANNELS

    monkeypatch.setattr(ukernel, "_stacks", lambda g: g.batch > 1)

    x_shape, w_shape = (4, 512, 14, 14), (512, 512, 3, 3)
    assert w_shape[1] >= UKERNEL_STACK_COPY_CHANNELS
    g = make_geometry(x_shape, w_shape, 2, 1)
    algorithm = ln._registry.get("direct-ukernel")
    copy = 4 * 512 * 14 * 14
    free = algorithm.plan(g, 2, prepacked=True)
    assert free.kernel.tiling.stacked and free.kernel.tiling.staging == ukernel.Staging(True, False, 4)
    assert free.workspace_elements == copy
    limited = algorithm.plan(g, 2, prepacked=True, memory_limit=4 * copy - 4)
    assert limited.kernel.tiling.stacked and limited.kernel.tiling.staging is None and limited.workspace_elements == 0
    # Functional calls pack the weights inside the kernel, block by block,
    # beside the copy or (under the limit) without it.
    packing = algorithm.plan(g, 2)
    assert packing.kernel.tiling.packs and packing.kernel.tiling.staging == ukernel.Staging(True, False, 4)
    assert packing.packed_weight_elements == 0 and packing.workspace_elements > copy
    block = 9 * 512 * ukernel.NR  # one thread's block of packed weights
    for limit in (2**20, 4 * (copy + block) - 4):  # the copy alone over the limit, or with the block
        packing_within = algorithm.plan(g, 1, memory_limit=limit)
        assert packing_within.kernel.tiling.packs and packing_within.kernel.tiling.staging is None
        assert packing_within.packed_weight_elements == 0 and packing_within.workspace_elements == block
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, x_shape).astype(np.float32)
    w = rng.integers(-3, 4, w_shape).astype(np.float32)
    expected = conv2d_reference(x, w, None, (2, 2), ((1, 1), (1, 1)))
    for limit in (None, 4 * copy - 4):
        layer = ln.Conv2d(w, stride=2, padding=1, algorithm="direct-ukernel", memory_limit=limit, threads=2)
        np.testing.assert_array_equal(layer(x), expected)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", ["direct-ukernel", "pointwise-ukernel"])
@pytest.mark.parametrize("stride", [(2, 2), (3, 1), (1, 2)])
def test_strided_1x1_layers_run_on_a_subsampled_copy(layout, name, stride):
    """A strided NCHW 1x1 layer without padding whose compact images stack
    runs as the 1x1 layer of stride 1 on a copy of its pixels at the
    stride: of the whole batch (the scratch), of as many images as a
    ``memory_limit`` holds (equal chunks: 3 + 2 of 5), or in place when not
    one fits; NHWC, padded layers and batch 1 in place.  Exact every way,
    functional or prepacked, on 1 and 2 threads."""
    case = Case(5, 19, 9, 8, 37, (1, 1), stride, ((0, 0), (0, 0)), (1, 1), 1)
    x_shape, w_shape = case.x_shape, case.w_shape
    g = make_geometry(x_shape, w_shape, stride, 0)
    assert ukernel._walked_geometry(ukernel._subsampled_geometry(g))[1]  # 20-36 pixels: stacked
    copy = 19 * g.out_height * g.out_width  # one subsampled image
    name += "-nhwc" if layout == "NHWC" else ""
    algorithm = ln._registry.get(name)
    for limit, images in ((None, 5), (4 * 3 * copy, 3), (4 * copy - 4, None)):
        plan = algorithm.plan(g, 2, layout, prepacked=True, memory_limit=limit)
        tiling = plan.kernel.tiling
        if images is None or layout == "NHWC":
            assert tiling.staging is None and plan.workspace_elements == 0
        else:
            assert tiling.staging == ukernel.Staging(False, False, images, True) and tiling.stacked
            assert plan.workspace_elements == images * copy
            launched = ukernel.KernelGeometry(*tiling.launched)
            assert (launched.stride_h, launched.stride_w, launched.batch) == (1, 1, images)
        for threads in (1, 2):
            for prepacked, memory_limit in ((True, limit), (False, None)):  # functional: packs, over the limits
                assert_exact_like_reference(name, case, sum(stride), True, layout, threads, prepacked, memory_limit)
    padded = algorithm.plan(make_geometry(x_shape, w_shape, stride, 1), 2, layout, prepacked=True)
    assert padded.kernel.tiling.staging is None or not padded.kernel.tiling.staging.subsampled
    single = algorithm.plan(make_geometry((1,) + x_shape[1:], w_shape, stride, 0), 2, layout, prepacked=True)
    assert single.kernel.tiling.staging is None  # batch 1: nothing to stack


@pytest.mark.parametrize("layout, stride, batch", [("NCHW", (2, 2), 1), ("NCHW", (2, 1), 2), ("NCHW", (1, 3), 1),
                                                   ("NCHW", (1, 1), 1), ("NHWC", (2, 2), 1), ("NCHW", (2, 2), 5)])
def test_strided_1x1_layers_read_in_place_are_priced_higher(layout, stride, batch):
    """A strided NCHW 1x1 layer read in place costs its walk's pixels times
    UKERNEL_STRIDED_1X1_COST (its tiles' lines half unused); stride 1,
    channels-last input and a subsampled copy (batch 5 of 9x8 planes:
    stacked, see test_strided_1x1_layers_run_on_a_subsampled_copy) cost
    their pixels."""
    from lowmem_numba._tuning import UKERNEL_STRIDED_1X1_COST

    hw = (9, 8) if batch == 5 else (28, 28)
    g = make_geometry((batch, 64) + hw, (96, 64, 1, 1), stride, 0)
    name = "direct-ukernel" if layout == "NCHW" else "direct-ukernel-nhwc"
    kernel = ln._registry.get(name).plan(g, 1, layout, prepacked=True).kernel
    tiling, ((_, pixels, _, _),) = kernel.tiling, kernel.gemms
    launched = ukernel.KernelGeometry(*tiling.launched)
    walked = round(ukernel._tiled_pixels(launched, True)) if tiling.stacked else ukernel._walk_pixels(launched)
    in_place = layout == "NCHW" and stride != (1, 1) and batch != 5
    assert (tiling.staging is not None and tiling.staging.subsampled) == (batch == 5)
    assert pixels == round(walked * (UKERNEL_STRIDED_1X1_COST if in_place else 1))


@pytest.fixture
def forget_plans():
    """Memoised plans forgotten before and after the test (which patches what
    planning sees; requested after ``monkeypatch``, it is torn down first)."""
    ln._memo.clear_all()
    yield
    ln._memo.clear_all()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("hw, k, padding, stride", [(7, 3, 1, 1), (7, 5, 2, 1), (9, 5, (3, 1), (2, 1)), (5, 7, 4, 2)])
@pytest.mark.parametrize("fitting, images", [(1, 1), (2, 2), (3, 3), (5, 3)])
def test_small_images_run_on_a_zero_padded_copy(layout, hw, k, padding, stride, fitting, images, monkeypatch,
                                                forget_plans):
    """Small images whose outputs are mostly border outputs are copied with
    their rows zero-padded (unless stacked: not here), so that every row runs
    whole, as
    many at a time as UKERNEL_STAGE_ELEMENTS holds (here ``fitting`` images)
    in equal chunks of the batch of 3 (2 + 1 when two fit); the copy is the
    scratch."""
    x_shape, w_shape = (3, 20, hw, hw + 2), (37, 20, k, k)
    g = make_geometry(x_shape, w_shape, stride, padding)
    padded_image = 20 * hw * (hw + 2 + g.pad_left + g.pad_right)  # rows padded, not columns
    monkeypatch.setattr(ukernel, "UKERNEL_STAGE_ELEMENTS", fitting * padded_image + padded_image - 1)
    monkeypatch.setattr(ukernel, "_stacks", lambda g: False)
    name = "direct-ukernel" + ("-nhwc" if layout == "NHWC" else "")
    plan = ln._registry.get(name).plan(g, 2, layout, prepacked=True)
    assert plan.kernel.tiling.staging == ukernel.Staging(layout == "NHWC", True, images)
    assert plan.workspace_elements == images * padded_image
    rng = np.random.default_rng(hw * k)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = rng.standard_normal(w_shape, dtype=np.float32)
    b = rng.standard_normal(37, dtype=np.float32)
    expected = conv2d_reference(x, w, b, g.stride, g.padding)
    case = Case(batch=3, channels=20, height=hw, width=hw + 2, out_channels=37, kernel=(k, k), stride=g.stride,
                padding=g.padding, dilation=(1, 1), groups=1)
    xl = channels_last(x) if layout == "NHWC" else x
    for threads in (1, 2):
        got = ln.conv2d(xl, w, b, stride=stride, padding=padding, algorithm=name, threads=threads, layout=layout)
        got = got.transpose(0, 3, 1, 2) if layout == "NHWC" else got
        assert got.shape == expected.shape
        assert_close_to_reference(got, x, w, b, case)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 70), st.integers(1, 40), st.integers(1, 4), st.integers(1, 4),
       st.integers(1, 2))
def test_packed_weights_follow_the_documented_layout(groups, mg, cg, kh, kw, threads):
    """``[group][channel block][kh][kw][C/g][NR]``, lanes past M/g zero, bit for
    bit (register transposes where VL x VL blocks are whole, element by
    element at the edges; NaN payloads and signed zeros pass unchanged)."""
    nr = ukernel.NR
    rng = np.random.default_rng(mg * 1000 + cg)
    w = rng.standard_normal((groups * mg, cg, kh, kw)).astype(np.float32)
    w.reshape(-1)[::7] = -0.0
    w.reshape(-1)[::11] = np.nan
    g = make_geometry((1, groups * cg, kh, kw), w.shape, 1, 0, 1, groups)
    blocks = -(-mg // nr)
    expected = np.zeros((groups, blocks * nr, kh, kw, cg), np.float32)
    expected[:, :mg] = w.reshape(groups, mg, cg, kh, kw).transpose(0, 1, 3, 4, 2)
    expected = expected.reshape(groups, blocks, nr, kh, kw, cg).transpose(0, 1, 3, 4, 5, 2)
    dest = np.full(ukernel.packed_elements(g), 7.0, np.float32)
    with ln._threads.kernel_threads(threads, blas=False):
        ukernel._pack_weights(w.reshape(-1), g, dest)
    assert dest.tobytes() == np.ascontiguousarray(expected).tobytes()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("hw, kernel, stride, groups", [(56, (1, 1), 1, 1), (56, (3, 3), 2, 2), (45, (5, 3), 1, 1),
                                                        (31, (3, 3), 1, 1), (14, (1, 1), 1, 1),
                                                        (14, (3, 3), 1, 2), (72, (1, 1), 2, 1)])
def test_nchw_plans_count_the_lines_each_step_reads(layout, hw, kernel, stride, groups, monkeypatch, forget_plans):
    """On NCHW input every step (tile, channel block, channel, tap) of every
    image and group reads the lines its pixels span, on average
    ``1 + (MR - 1) * stride / 16`` (priced apart: planar_line_seconds), from
    planes of ``H*W*4`` bytes over a page (at most UKERNEL_PLANAR_PAGES_MAX;
    planar_line_page_seconds each, once per kernel row), unless an image's
    planes of a group fit in L1; channels-last input none."""
    from lowmem_numba._tuning import UKERNEL_PLANAR_PAGES_MAX

    monkeypatch.setattr(ukernel, "l1_bytes", lambda: 4 * 24 * 14 * 14 - 1)  # all but 24 14x14 planes of 2 groups
    monkeypatch.setattr(ukernel, "page_bytes", lambda: 4096)
    batch, c, m = 2, 24, 40
    name = "direct-ukernel" if layout == "NCHW" else "direct-ukernel-nhwc"
    kh, kw = kernel
    g = make_geometry((batch, c, hw, hw), (m, c // groups, kh, kw), stride, (kh // 2, kw // 2), 1, groups)
    plan = ln._registry.get(name).plan(g, 1, layout, prepacked=True)
    (_, pixels, _, _), = plan.kernel.gemms
    if layout == "NCHW" and kernel == (1, 1) and stride > 1:  # priced beyond its pixels (UKERNEL_STRIDED_1X1_COST)
        pixels = ukernel._walk_pixels(ukernel.KernelGeometry(*plan.kernel.tiling.launched))
    steps = batch * groups * -(-pixels // mk.MR) * -(-(m // groups) // mk.NR) * (c // groups) * kh * kw
    lines = steps * (1 + (mk.MR - 1) * stride / 16)
    beyond_l1 = c // groups * hw * hw >= 24 * 14 * 14
    counted = layout == "NCHW" and beyond_l1
    assert plan.planar_line_reads == (pytest.approx(lines, abs=1) if counted else 0)
    assert plan.planar_plane_pages == (pytest.approx(min(UKERNEL_PLANAR_PAGES_MAX, 4 * hw * hw / 4096) / kw)
                                       if counted else 0.0)  # once per kernel row
    assert UKERNEL_PLANAR_PAGES_MAX < 4 * 72 * 72 / 4096  # the 72x72 case is capped


@pytest.mark.parametrize("l2_kib", [1024, 2048, 8192])
def test_packing_inside_the_kernel_needs_each_sweeps_input_in_l2(l2_kib, monkeypatch, forget_plans):
    """A functional 1x1 call walked image by image packs the weights inside
    the kernel, every weight block sweeping all of the item's tiles, only
    where the input rows a sweep reads take at most
    UKERNEL_PACK_SWEEP_L2_SHARE of L2 (or a block of UKERNEL_TILE_BLOCK tiles
    would not fit either); otherwise before the kernel (a packed copy).
    ResNet-50's layer2 downsample reads 28 of its 56 rows of 256 planes (1.6
    MB, 66 tiles); a 3x3 layer on the same input always packs inside."""
    from lowmem_numba._tuning import UKERNEL_PACK_SWEEP_L2_SHARE

    monkeypatch.setattr(ukernel, "l2_bytes", lambda: l2_kib * 1024)
    swept, tiles = 4 * 256 * 28 * 56, -(-28 * 28 // mk.MR)
    fits = swept <= UKERNEL_PACK_SWEEP_L2_SHARE * l2_kib * 1024
    fits_blocked = swept * ukernel.UKERNEL_TILE_BLOCK / tiles <= UKERNEL_PACK_SWEEP_L2_SHARE * l2_kib * 1024
    for w_shape, padding, packs in (((512, 256, 1, 1), 0, fits or not fits_blocked), ((512, 256, 3, 3), 1, True)):
        plan = ln._registry.get("direct-ukernel").plan(make_geometry((1, 256, 56, 56), w_shape, 2, padding), 1)
        assert plan.kernel.tiling.packs == packs
        assert (plan.packed_weight_elements == 0) == packs
    assert (fits, fits_blocked) == ((False, True) if l2_kib <= 2048 else (True, True))  # both sides taken


def _walk_stores_by_tile(d, stacked, nchw):
    """:func:`ukernel._walk_stores` tile by tile, from the kernel's walk:
    every tile the kernel runs (whole ``MR`` tiles, a short remainder on
    ``SMALL_MR`` ones), its pixels' output offsets, and whether the tile
    kernel stores it through its general path."""
    images = d.batch if stacked else 1
    o_ystep = d.out_channels * d.out_height * d.out_width if stacked else d.out_width
    general = starts = 0
    for ny, ni, nx, _ in ukernel._rectangles(d):
        walks = [images * nx] * ny if stacked else [ny * nx]
        for pixels in walks:
            for p0 in range(0, pixels, mk.MR):
                mr = min(mk.MR, pixels - p0)
                step = mk.SMALL_MR if mr <= mk.MR - mk.SMALL_MR else mk.MR
                for s in range(p0, p0 + mr, step):
                    count = min(step, p0 + mr - s)
                    offsets = [(p // nx) * o_ystep + p % nx for p in range(s, s + count)]
                    consecutive = offsets == list(range(offsets[0], offsets[0] + count))
                    if count < step or (nchw and not consecutive):
                        general += count
                    if stacked:
                        starts += ni * (len({p // nx for p in range(s, s + count)}) - 1)
    return general / images, starts / images if stacked else 0.0


@settings(max_examples=200, deadline=None)
@given(batch=st.integers(1, 30), height=st.integers(1, 40), width=st.integers(1, 40), kernel=st.integers(1, 6),
       stride=st.integers(1, 3), padding=st.integers(0, 3), dilation=st.integers(1, 2), stacked=st.booleans(),
       nchw=st.booleans())
def test_walk_stores_count_the_tiles_the_kernel_runs(batch, height, width, kernel, stride, padding, dilation,
                                                     stacked, nchw):
    """The closed form behind UKERNEL_GENERAL_STORE_COST and
    UKERNEL_STACK_SEGMENT_COST equals a count over the kernel's tiles."""
    reach = dilation * (kernel - 1)
    assume(height + 2 * padding - reach >= 1 and width + 2 * padding - reach >= 1)
    g = make_geometry((batch, 3, height, width), (5, 3, kernel, kernel), stride, padding, dilation)
    d = ukernel.KernelGeometry(*ukernel.kernel_geometry(g))
    assert ukernel._walk_stores(d, stacked, nchw) == pytest.approx(_walk_stores_by_tile(d, stacked, nchw))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("batch, c, m, hw, kernel", [(8, 16, 48, 14, 5), (8, 160, 320, 7, 3), (1, 32, 128, 14, 5),
                                                    (2, 24, 40, 13, 3), (8, 64, 24, 28, 3)])
def test_plans_price_general_stores_and_stacked_segments(layout, batch, c, m, hw, kernel, monkeypatch, forget_plans):
    """direct-ukernel's plan adds UKERNEL_GENERAL_STORE_COST copies per output
    stored through the general path (a last channel block narrower than its
    tile kernel: all its outputs) and, stacked on NCHW input read in place,
    UKERNEL_STACK_SEGMENT_COST per segment start, channel block and channel."""
    from lowmem_numba._tuning import UKERNEL_GENERAL_STORE_COST, UKERNEL_STACK_SEGMENT_COST

    name = "direct-ukernel" if layout == "NCHW" else "direct-ukernel-nhwc"
    g = make_geometry((batch, c, hw, hw), (m, c, kernel, kernel), 1, kernel // 2)
    spanning = (batch, hw, kernel) == (8, 14, 5) and layout == "NCHW"
    if spanning:  # stacked as on AVX-512 (AVX2's 6-pixel tiles leave it per image)
        monkeypatch.setattr(ukernel, "_stacks", lambda g: True)
    plan = ln._registry.get(name).plan(g, 1, layout, prepacked=True)
    ln._memo.clear_all()
    monkeypatch.setattr(ukernel, "UKERNEL_GENERAL_STORE_COST", 0)
    monkeypatch.setattr(ukernel, "UKERNEL_STACK_SEGMENT_COST", 0)
    free = ln._registry.get(name).plan(g, 1, layout, prepacked=True)
    tiling = plan.kernel.tiling
    stacked, staging, d = tiling.stacked, tiling.staging, ukernel.KernelGeometry(*tiling.launched)
    general, starts = _walk_stores_by_tile(d, stacked, layout == "NCHW")
    last = m - (-(-m // mk.NR) - 1) * mk.NR
    narrow = 0 if last in (mk.VL, mk.NR) else last
    outputs = general * (m - narrow) + d.out_height * d.out_width * narrow
    planar = layout == "NCHW" and not (staging and staging.channels_last)
    segment_steps = starts * -(-m // mk.NR) * c if planar else 0
    expected = batch * (outputs * UKERNEL_GENERAL_STORE_COST + segment_steps * UKERNEL_STACK_SEGMENT_COST)
    # The plan rounds its moved elements per image: up to half an element each.
    assert plan.kernel.moved_elements - free.kernel.moved_elements == pytest.approx(expected, abs=batch)
    if spanning:  # a stacked walk spanning images: both terms
        assert stacked and general and starts


def test_serial_twin_is_the_same_code_under_its_own_cache_name():
    """The one-thread twin of the kernel compiles the same code without
    parallel=True, under a name of its own: Numba names and keys cache
    files by function name and line, not by options, so a shared name would
    load one compilation from the other's cache."""
    from lowmem_numba._algorithms import ukernel

    twin, kernel = ukernel._ukernel_conv_serial, ukernel._ukernel_conv
    assert twin.py_func.__code__ is kernel.py_func.__code__
    assert twin.py_func.__qualname__ == "_ukernel_conv_serial" != kernel.py_func.__qualname__
    assert kernel.targetoptions.get("parallel") and not twin.targetoptions.get("parallel")
