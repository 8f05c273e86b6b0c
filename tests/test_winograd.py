"""The Winograd family: transforms, every claimed configuration, rounding, NaN spread, workspace."""

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import lowmem_numba as ln
from lowmem_numba import _registry as registry
from lowmem_numba._algorithms import winograd
from lowmem_numba._geometry import make_geometry
from naive import assert_close_to_reference, channels_last, conv2d_reference
from strategies import Case

VARIANTS = sorted(winograd.VARIANTS)
#: Error allowed against the direct-summation bound (see test_correctness.ROUNDING_FACTOR).
FACTOR = {"winograd-2x2-3x3": 2.0, "winograd-4x4-3x3": 16.0, "winograd-2x2-5x5": 16.0}


@pytest.mark.parametrize("name", VARIANTS)
def test_transforms_satisfy_the_identity_exactly(name):
    m, r, points = winograd.VARIANTS[name]
    at, g, bt = winograd.toom_cook(m, r, points)
    alpha = m + r - 1
    # AT ((G w) * (BT d)) = correlation, for every basis w, d: in rationals.
    for k in range(r):
        for j in range(alpha):
            for i in range(m):
                total = sum(at[i][t] * g[t][k] * bt[t][j] for t in range(alpha))
                assert total == Fraction(j == i + k)
    at32, g64, bt32 = winograd.matrices(name)
    assert at32.shape == (m, alpha) and g64.shape == (alpha, r) and bt32.shape == (alpha, alpha)
    assert not at32.flags.writeable


def test_weight_transform_pairs_the_rows_of_opposite_points():
    """The float64 weight transform shares the partial sums of rows ``+p``
    and ``-p`` (equal but for the signs of their odd coefficients, with
    even and odd terms both non-zero), each row in one pair at most; rows
    of zero odd or even part, equal rows and unrelated rows are not paired."""
    from lowmem_numba._microkernel import _paired_rows

    expected = {"winograd-2x2-3x3": [(1, 2)], "winograd-4x4-3x3": [(1, 2), (3, 4)],
                "winograd-2x2-5x5": [(1, 2), (3, 4)]}
    for name in VARIANTS:
        _, g, _ = winograd.toom_cook(*winograd.VARIANTS[name])
        assert _paired_rows([[float(c) for c in row] for row in g]) == expected[name]
    assert _paired_rows([[1.0, 0.0, 2.0], [1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [0.0, -3.0, 0.0]]) == []
    assert _paired_rows([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, -2.0, 4.0]]) == []
    assert _paired_rows([[1.0, 2.0], [1.0, -2.0], [1.0, -2.0], [1.0, 2.0]]) == [(0, 1), (2, 3)]


def test_bad_points_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        winograd.toom_cook(2, 3, (0, 1, 1))
    with pytest.raises(ValueError, match="points"):
        winograd.toom_cook(2, 3, (0, 1))


@st.composite
def winograd_cases(draw, r):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    padding = ((draw(st.integers(0, r)), draw(st.integers(0, r))),
               (draw(st.integers(0, r)), draw(st.integers(0, r))))
    # H or W may be smaller than the kernel when the padding makes up for it.
    height = draw(st.integers(max(1, r - padding[0][0] - padding[0][1]), 13))
    width = draw(st.integers(max(1, r - padding[1][0] - padding[1][1]), 13))
    return Case(batch=draw(st.integers(1, 3)), channels=groups * draw(st.integers(1, 5)),
                height=height, width=width, out_channels=groups * draw(st.sampled_from([1, 2, 5, 17, 33])),
                kernel=(r, r), stride=(1, 1), padding=padding, dilation=(1, 1), groups=groups)


@pytest.mark.parametrize("name", VARIANTS)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), layout=st.sampled_from(["NCHW", "NHWC"]),
       threads=st.sampled_from([1, 2]), with_bias=st.booleans())
def test_every_claimed_configuration_against_reference(name, data, seed, layout, threads, with_bias):
    case = data.draw(winograd_cases(winograd.VARIANTS[name][1]))
    assert ln.supports(name, case.x_shape, case.w_shape, **case.args)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    w = rng.standard_normal(case.w_shape).astype(np.float32)
    bias = rng.standard_normal(case.out_channels).astype(np.float32) if with_bias else None
    x_before, w_before = x.copy(), w.copy()
    if layout == "NHWC":
        got = ln.conv2d(channels_last(x), w, bias, algorithm=name + "-nhwc", layout="NHWC", threads=threads,
                        **case.args).transpose(0, 3, 1, 2)
    else:
        got = ln.conv2d(x, w, bias, algorithm=name, threads=threads, **case.args)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(w, w_before)
    zero = np.zeros(case.out_channels, np.float32)
    assert_close_to_reference(got, x, w, zero if bias is None else bias, case, FACTOR[name])


@pytest.mark.parametrize("name", VARIANTS)
@settings(max_examples=25, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), layout=st.sampled_from(["NCHW", "NHWC"]),
       threads=st.sampled_from([1, 2]), with_bias=st.booleans(), wide=st.booleans())
def test_calls_with_few_tiles_transform_the_weights_inside_the_kernel(name, data, seed, layout, threads,
                                                                     with_bias, wide):
    """When the batch has at most WINOGRAD_IN_KERNEL_TILES tiles (and only
    then), each slot transforms its blocks of weights into its own scratch,
    one reduction block at a time: no transformed copy in the workspace, and
    bit for bit the result of a Conv2d whose weights were transformed
    beforehand (both layouts, batch 1-3, 1-2 threads; ``wide``: several
    reduction blocks and channel blocks, the last partial)."""
    r = winograd.VARIANTS[name][1]
    case = data.draw(winograd_cases(r))
    if wide:
        case = dataclasses.replace(case, channels=case.groups * 150, out_channels=case.groups * 45)
    kernel_name = name + ("-nhwc" if layout == "NHWC" else "")
    g = make_geometry(case.x_shape, case.w_shape, case.stride, case.padding, case.dilation, case.groups)
    plan = registry.get(kernel_name).plan(g, threads, layout)
    tiles = case.batch * winograd._sizes(g, name)[2]
    inside = tiles <= winograd.WINOGRAD_IN_KERNEL_TILES
    assert plan.kernel.tiling[-1] == inside and (plan.packed_weight_elements == 0) == inside
    assume(inside)
    assert plan.kernel.tiling[1] >= tiles  # one tile block: each block of weights transformed once
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    w = rng.standard_normal(case.w_shape).astype(np.float32)
    bias = rng.standard_normal(case.out_channels).astype(np.float32) if with_bias else None
    xl = channels_last(x) if layout == "NHWC" else x
    got = ln.conv2d(xl, w, bias, algorithm=kernel_name, layout=layout, threads=threads, **case.args)
    layer = ln.Conv2d(w, bias, algorithm=kernel_name, layout=layout, threads=threads, **case.args)
    np.testing.assert_array_equal(got, layer(xl))
    got = got.transpose(0, 3, 1, 2) if layout == "NHWC" else got
    zero = np.zeros(case.out_channels, np.float32)
    assert_close_to_reference(got, x, w, zero if bias is None else bias, case, FACTOR[name])


@pytest.mark.parametrize("name", VARIANTS)
def test_layer_matches_functional_and_other_layout(name):
    r = winograd.VARIANTS[name][1]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, 11, 9)).astype(np.float32)
    w = rng.standard_normal((40, 12, r, r)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    functional = ln.conv2d(x, w, b, padding="same", algorithm=name)
    layer = ln.Conv2d(w, b, padding="same", algorithm=name)
    np.testing.assert_array_equal(layer(x), functional)
    np.testing.assert_array_equal(layer(x), functional)  # packed weights reused
    # The other layout through the NCHW kernel (converting) and the NHWC kernel.
    nhwc = ln.conv2d(channels_last(x), w, b, padding="same", algorithm=name + "-nhwc", layout="NHWC")
    np.testing.assert_allclose(nhwc, channels_last(functional), rtol=0, atol=1e-5)


def relative_errors(got, x, w, padding):
    expected = conv2d_reference(x.astype(np.float64), w.astype(np.float64), None, (1, 1), padding, (1, 1), 1)
    error = np.abs(got - expected) / np.abs(expected).max()
    return error.max(), error.mean()


@pytest.mark.parametrize("data", ["random", "ones-and-ramps"])
@pytest.mark.parametrize("name, shape, mean_bound, max_bound", [
    # The bounds on the mean error against im2col's.  The max error is
    # bounded against the plain loop nest's (direct-sum2d: one fixed summation
    # order) rather than im2col's, which depends on the BLAS kernel: OpenBLAS's
    # AVX2 sgemm on AMD Zen 3 sums these 2304-term dot products in blocks (max
    # 3.5e-7 against the loop nest's 1.4e-6), so F(4x4,3x3)'s max error (8.1e-6,
    # 6x the loop nest's) came to 23x im2col's there against 14-18x on AVX-512.
    ("winograd-2x2-3x3", (256, 14, 14, 64, 3), 2.0, 1.0),
    ("winograd-4x4-3x3", (256, 14, 14, 64, 3), 10.0, 12.0),
    ("winograd-2x2-5x5", (96, 14, 14, 64, 5), 10.0, 6.0),
])
def test_error_within_a_factor_of_im2col(name, shape, mean_bound, max_bound, data):
    """F(2x2,3x3) no worse than 2x the im2col error, F(4x4,3x3) (and
    F(2x2,5x5)) no worse than 10x, in the mean over the outputs; the largest
    error within a factor of the plain float32 loop nest's (one thread each,
    so that no split of the work changes a summation order)."""
    c, h, w_, m, r = shape
    rng = np.random.default_rng(5)
    if data == "random":
        x = rng.standard_normal((1, c, h, w_)).astype(np.float32)
        w = rng.standard_normal((m, c, r, r)).astype(np.float32)
    else:
        ramp = np.linspace(-1, 1, h * w_, dtype=np.float32).reshape(h, w_)
        x = np.broadcast_to(ramp, (1, c, h, w_)).copy()
        x[:, ::2] = 1.0
        w = np.full((m, c, r, r), 1.0 / (c * r * r), np.float32)
        w[::3] = np.linspace(0.1, 1.3, r * r, dtype=np.float32).reshape(r, r)
    padding = ((r // 2, r // 2), (r // 2, r // 2))
    got_max, got_mean = relative_errors(ln.conv2d(x, w, padding=r // 2, algorithm=name, threads=1), x, w, padding)
    _, im2col_mean = relative_errors(ln.conv2d(x, w, padding=r // 2, algorithm="im2col-copy-self-ab-ki", threads=1),
                                     x, w, padding)
    loop_max, _ = relative_errors(ln.conv2d(x, w, padding=r // 2, algorithm="direct-sum2d", threads=1), x, w, padding)
    assert got_mean <= mean_bound * max(im2col_mean, 2.0**-24)
    assert got_max <= max_bound * max(loop_max, 2.0**-24)


def reach(name):
    """reach[a, i]: whether input row i of a tile reaches output row a of it:
    some transform point l has BT[l, i] != 0 and AT[a, l] != 0."""
    at, _, bt = winograd.matrices(name)
    return (at != 0).astype(int) @ (bt != 0).astype(int) > 0


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_nan_and_inf_reach_exactly_the_documented_outputs(name, value, layout):
    """A non-finite input reaches the outputs of every tile whose input window
    holds it, at the rows and columns ``reach`` gives; nothing else."""
    m, r, _ = winograd.VARIANTS[name]
    alpha = m + r - 1
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 11, 10)).astype(np.float32)
    w = rng.standard_normal((3, 2, r, r)).astype(np.float32)
    pad = (1, 2)
    x[0, 1, 5, 4] = value
    x[0, 0, 0, 9] = value
    expected = np.zeros(conv2d_reference(x, w, None, (1, 1), ((1, 1), (2, 2)), (1, 1), 1).shape, bool)
    ho, wo = expected.shape[2:]
    rows = reach(name)
    for iy, ix in ((5, 4), (0, 9)):
        for ty in range(-(-ho // m)):
            for tx in range(-(-wo // m)):
                i, j = iy + pad[0] - ty * m, ix + pad[1] - tx * m
                if 0 <= i < alpha and 0 <= j < alpha:
                    for a in range(m):
                        for b in range(m):
                            if rows[a, i] and rows[b, j] and ty * m + a < ho and tx * m + b < wo:
                                expected[0, :, ty * m + a, tx * m + b] = True
    if layout == "NHWC":
        got = ln.conv2d(channels_last(x), w, padding=pad, algorithm=name + "-nhwc",
                        layout="NHWC").transpose(0, 3, 1, 2)
    else:
        got = ln.conv2d(x, w, padding=pad, algorithm=name)
    np.testing.assert_array_equal(~np.isfinite(got), expected)
    # Every output whose receptive field holds the value is among them.
    receptive = ~np.isfinite(conv2d_reference(np.where(np.isfinite(x), 0, np.inf), np.abs(w) + 1, None, (1, 1),
                                              ((1, 1), (2, 2)), (1, 1), 1))
    assert np.all(expected[receptive])


@pytest.mark.parametrize("name", VARIANTS)
def test_workspace_follows_the_formula_and_stays_small(name):
    m, r, _ = winograd.VARIANTS[name]
    alpha = m + r - 1
    for c, hw, mm in ((256, 56, 256), (512, 14, 512), (64, 112, 128), (3, 7, 5)):
        x_shape, w_shape = (1, c, hw, hw), (mm, c, r, r)
        g = make_geometry(x_shape, w_shape, 1, r // 2, 1, 1)
        for threads in (1, 2):
            plan = registry.get(name).plan(g, threads, prepacked=True)
            block, slots = plan.kernel.tiling[1], plan.kernel.tiling[5]
            # Whole micro-kernel tiles, or (few units) blocks of equal size.
            tiles = winograd._sizes(g, name)[2]
            blocks = -(-tiles // block)
            assert block % winograd.MR == 0 or (blocks > 1 and blocks * block - tiles < blocks)
            staging = 2 * max(min(c, 64), winograd.VL)  # a tile's staged and row-transformed channels
            # The strip of a run of tiles along a row of tiles: alpha rows of its input columns, and slack.
            columns = (min(block, -(-hw // m)) - 1) * m + alpha
            strip = 2 * winograd.VL + (alpha * columns + winograd.VL) * min(c, 64)  # and its transposes' offsets
            assert plan.workspace_elements == slots * (
                alpha * alpha * (block * (c + winograd.NR) + staging) + (alpha + m) * m * block * winograd.NR
                + strip)
            # The default tile block's target, unless one block holds every
            # tile because the transformed weights exceed the L3 cache.
            whole = (tiles <= winograd.WINOGRAD_IN_KERNEL_TILES
                     and 4 * winograd.packed_elements(g, name) > winograd.l3_bytes())
            assert plan.workspace_bytes <= 2 * winograd.l2_bytes() or (whole and block >= tiles)
            functional = registry.get(name).plan(g, threads)
            if tiles <= winograd.WINOGRAD_IN_KERNEL_TILES:
                # The kernel transforms the weights: one tile block of all
                # tiles per slot, plus the weights' staging and one reduction
                # block of them.
                block, slots, packs = functional.kernel.tiling[1], functional.kernel.tiling[5], \
                    functional.kernel.tiling[-1]
                assert packs and block == -(-tiles // winograd.MR) * winograd.MR
                columns = (min(block, -(-hw // m)) - 1) * m + alpha
                strip = 2 * winograd.VL + (alpha * columns + winograd.VL) * min(c, 64)
                assert functional.workspace_elements == slots * (
                    alpha * alpha * (block * (c + winograd.NR) + staging) + strip
                    + (alpha + m) * m * block * winograd.NR
                    + r * r * (winograd.WINOGRAD_PACK_CHANNELS + 1) * winograd.NR
                    + alpha * alpha * (min(c, 128) + 1) * winograd.NR)
            else:
                # Per call: the transformed weights and the transform's scratch.
                assert not functional.kernel.tiling[-1]
                per_call = functional.workspace_elements - plan.workspace_elements
                transformed = alpha * alpha * (-(-mm // winograd.NR) * winograd.NR * c + winograd.NR)
                assert per_call == transformed + winograd.pack_scratch_elements(g, threads, name)
            assert ln.workspace_bytes(name, x_shape, w_shape, padding=r // 2, threads=threads) == \
                functional.workspace_bytes


def test_unsupported_configurations_are_named():
    assert not ln.supports("winograd-4x4-3x3", (1, 4, 9, 9), (4, 4, 3, 3), stride=2)
    assert not ln.supports("winograd-4x4-3x3", (1, 4, 9, 9), (4, 4, 3, 3), dilation=2)
    assert not ln.supports("winograd-4x4-3x3", (1, 4, 9, 9), (4, 4, 5, 5))
    assert not ln.supports("winograd-2x2-5x5", (1, 4, 9, 9), (4, 4, 3, 3))
    with pytest.raises(ValueError, match="needs stride 1"):
        ln.conv2d(np.zeros((1, 4, 9, 9), np.float32), np.zeros((4, 4, 3, 3), np.float32), stride=2,
                  algorithm="winograd-2x2-3x3")


def test_winograd_false_excludes_the_family():
    x_shape, w_shape = (1, 256, 56, 56), (256, 256, 3, 3)
    chosen = ln.plan(x_shape, w_shape, padding=1, threads=1, prepacked=True)
    assert chosen.algorithm.startswith("winograd-")  # it wins here: ~2.5x the direct kernel
    plain = ln.plan(x_shape, w_shape, padding=1, threads=1, prepacked=True, winograd=False)
    assert not plain.algorithm.startswith("winograd-")
    assert "excluded: winograd=False" in plain.explain()
    x = np.ones((1, 4, 6, 6), np.float32)
    w = np.ones((4, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match="winograd=False"):
        ln.conv2d(x, w, algorithm="winograd-2x2-3x3", winograd=False)
    with pytest.raises(ValueError, match="winograd=False"):
        ln.Conv2d(w, algorithm="winograd-2x2-3x3", winograd=False)
    with pytest.raises(TypeError, match="winograd"):
        ln.conv2d(x, w, winograd="no")
    layer = ln.Conv2d(w, padding=1, winograd=False)
    assert not layer.plan_for((1, 4, 6, 6)).algorithm.startswith("winograd-")
    assert not ln.plan_network([("a", x_shape, w_shape, {"padding": 1})], winograd=False,
                               threads=1).plans[0][1].algorithm.startswith("winograd-")


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_many_channels_are_staged_in_chunks(name, layout):
    """More input channels than one staging chunk (64), with a remainder,
    through border tiles (staged) and interior ones (NHWC: read in place)."""
    r = winograd.VARIANTS[name][1]
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 150, 13, 12)).astype(np.float32)
    w = rng.standard_normal((36, 150, r, r)).astype(np.float32)
    b = rng.standard_normal(36).astype(np.float32)
    case = Case(1, 150, 13, 12, 36, (r, r), (1, 1), ((1, 2), (2, 0)), (1, 1), 1)
    if layout == "NHWC":
        got = ln.conv2d(channels_last(x), w, b, padding=case.padding, algorithm=name + "-nhwc",
                        layout="NHWC").transpose(0, 3, 1, 2)
    else:
        got = ln.conv2d(x, w, b, padding=case.padding, algorithm=name)
    assert_close_to_reference(got, x, w, b, case, FACTOR[name])


@pytest.mark.parametrize("name", VARIANTS)
# The assume() below keeps about one case in six for F(4x4,3x3), whose small
# images have 1-4 tiles, which divide a 12-tile block: the health check then
# failed about one run in twelve, though every run tests enough cases.
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), layout=st.sampled_from(["NCHW", "NHWC"]),
       threads=st.sampled_from([1, 2]))
def test_tile_blocks_that_run_across_images(name, data, seed, layout, threads):
    """A group's tiles are numbered over the batch: with the smallest tile
    blocks (forced by a memory_limit), blocks end one image and start the
    next, wherever the images' tile counts fall."""
    case = data.draw(winograd_cases(winograd.VARIANTS[name][1]))
    case = dataclasses.replace(case, batch=data.draw(st.integers(2, 5)))
    algorithm = name + ("-nhwc" if layout == "NHWC" else "")
    g = make_geometry(case.x_shape, case.w_shape, 1, case.padding, 1, case.groups)
    limit = registry.get(algorithm).plan(g, threads, layout, prepacked=True, memory_limit=0).workspace_bytes
    block = registry.get(algorithm).plan(g, threads, layout, prepacked=True, memory_limit=limit).kernel.tiling[1]
    tiles = winograd._sizes(g, name)[2]
    assume(block % tiles and block < case.batch * tiles)  # some block holds tiles of two images
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    w = rng.standard_normal(case.w_shape).astype(np.float32)
    bias = rng.standard_normal(case.out_channels).astype(np.float32)
    layer = ln.Conv2d(w, bias, padding=case.padding, groups=case.groups, algorithm=algorithm, layout=layout,
                      threads=threads, memory_limit=limit)
    got = layer(channels_last(x)).transpose(0, 3, 1, 2) if layout == "NHWC" else layer(x)
    assert layer.workspace_bytes <= limit
    assert_close_to_reference(got, x, w, bias, case, FACTOR[name])


def test_tile_block_shrinks_to_fit_memory_limit():
    """Under a memory_limit the tile block shrinks (whole micro-kernel tiles)
    until the scratch fits, and the plan that is checked is the one that runs."""
    x_shape, w_shape = (1, 64, 56, 56), (64, 64, 3, 3)
    g = make_geometry(x_shape, w_shape, 1, 1, 1, 1)
    algorithm = registry.get("winograd-4x4-3x3")
    free = algorithm.plan(g, 2, prepacked=True)
    limit = free.workspace_bytes // 2
    fitted = algorithm.plan(g, 2, prepacked=True, memory_limit=limit)
    assert fitted.kernel.tiling[1] < free.kernel.tiling[1]
    assert fitted.kernel.tiling[1] % winograd.MR == 0
    assert fitted.workspace_bytes <= limit
    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    layer = ln.Conv2d(w, padding=1, algorithm="winograd-4x4-3x3", threads=2, memory_limit=limit,
                      workspace=ln.Workspace(limit, fixed=True))
    np.testing.assert_allclose(layer(x), ln.conv2d(x, w, padding=1, algorithm="winograd-4x4-3x3", threads=2),
                               rtol=0, atol=1e-4)
    assert layer.workspace_bytes == fitted.workspace_bytes
    # Too small even for one micro-kernel tile per thread: refused before running.
    with pytest.raises(ValueError, match="memory_limit"):
        ln.Conv2d(w, padding=1, algorithm="winograd-4x4-3x3", threads=2, memory_limit=4096,
                  input_shape=x_shape)


@pytest.mark.parametrize("name", VARIANTS)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_transformed_weights_are_g_w_gt_rounded_once(name, data):
    """``U = G w G^T`` per kernel, computed in float64 and rounded once, in the
    layout ``[group][point][channel block][C/g][NR]`` with lanes past M/g zero
    and ``NR`` unused floats after each point's blocks (never written), for
    channel counts on and off the transposes' ``VL x VL`` blocks."""
    m, r, _ = winograd.VARIANTS[name]
    alpha = m + r - 1
    groups = data.draw(st.integers(1, 2), label="groups")
    mg = data.draw(st.integers(1, 70), label="M/g")
    cg = data.draw(st.integers(1, 40), label="C/g")
    nr = winograd.NR
    w = np.random.default_rng(mg * 100 + cg).standard_normal((groups * mg, cg, r, r)).astype(np.float32)
    g = make_geometry((1, groups * cg, 8, 8), w.shape, 1, r // 2, 1, groups)
    _, gm, _ = winograd.matrices(name)
    u = np.einsum("ik,mckl,jl->mcij", gm, w.astype(np.float64), gm)  # (M, C/g, alpha, alpha)
    blocks = -(-mg // nr)
    expected = np.zeros((groups, alpha, alpha, blocks * nr, cg))
    expected[:, :, :, :mg] = u.reshape(groups, mg, cg, alpha, alpha).transpose(0, 3, 4, 1, 2)
    expected = expected.reshape(groups, alpha * alpha, blocks, nr, cg).transpose(0, 1, 2, 4, 3).reshape(-1)
    algorithm = registry.get(name)
    for threads in (1, 2):
        dest = np.full(algorithm.packed_weight_elements(g), np.nan, np.float32)
        scratch = np.full(algorithm.pack_scratch_elements(g, threads), np.nan, np.float32)
        with ln._threads.kernel_threads(threads, blas=False):
            algorithm.pack_weights(w.reshape(-1), g, dest, scratch)
        points = dest.reshape(groups * alpha * alpha, winograd.point_stride(g))
        assert np.isnan(points[:, -nr:]).all()
        dest = points[:, :-nr].reshape(-1)
        # One rounding of the float64 value: within half an ulp of it.
        np.testing.assert_array_less(np.abs(dest - expected), np.spacing(np.abs(expected).astype(np.float32)) * 0.5
                                     + 1e-12 * np.abs(u).max())


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.integers(1, 200), st.integers(1, 5), st.integers(1, 4), st.integers(1, 5))
def test_slots_take_every_unit_once_in_runs_of_about_equal_work(images, tiles, groups, m_chunks, slots):
    tile_block = groups * winograd.MR
    blocks = -(-tiles // tile_block)
    units = images * blocks * m_chunks
    work = [min(tile_block, tiles - unit // m_chunks % blocks * tile_block) for unit in range(units)]
    ranges = [winograd._slot_units(s, slots, units, m_chunks, blocks, tile_block, tiles) for s in range(slots)]
    assert ranges[0][0] == 0 and ranges[-1][1] == units
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, each unit once
    share = sum(work) / slots
    for first, end in ranges:  # within one unit of an equal share
        assert abs(sum(work[first:end]) - share) <= max(work)


@pytest.mark.parametrize("name", VARIANTS)
def test_two_threads_share_small_images_at_batch_one(name):
    # 7x7 ... 14x14 images at batch 1 have a few tile blocks; a block of 48
    # tiles and one of 1 gave one thread all the work.  Whatever the block,
    # the busier thread gets at most about half the tiles (blocks of equal
    # size, or channel chunks where the tiles do not split).
    m, r, _ = winograd.VARIANTS[name]
    for c, hw, mm in ((128, 14, 256), (256, 13, 384), (512, 7, 512), (512, 14, 512), (96, 14, 208)):
        g = make_geometry((1, c, hw, hw), (mm, c, r, r), 1, r // 2, 1, 1)
        tiles = winograd._sizes(g, name)[2]
        kernel = registry.get(name).plan(g, 2, prepacked=True).kernel
        block, m_chunks = kernel.tiling[1], kernel.tiling[4]
        if m_chunks == 1:
            assert winograd._largest_share(g, 2, block, tiles) <= -(-tiles // 2) + winograd.MR // 2, (c, hw, block)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("side, channels, out_channels, groups, batch", [
    (16, 72, 24, 1, 2), (32, 20, 40, 1, 1), (32, 40, 48, 2, 2), (64, 9, 16, 1, 1), (38, 11, 7, 1, 2),
    (17, 8, 33, 1, 3), (9, 5, 24, 1, 2)])
def test_nchw_output_rows_stored_as_channel_vectors(name, side, channels, out_channels, groups, batch):
    """NCHW output tiles are stored a row of a run of tiles at a time,
    groups of up to VL pixels transposed to channel vectors, the last group
    of a row by masked stores (rows of 9, 17, 38 pixels; runs cut by a tile
    block or a thread's share), the channels past whole vectors (7, 24, 33
    per group) pixel by pixel; planes a multiple of 4 KiB apart (32x32,
    64x64: a group's vectors all in one L1 set) and not; with and without
    bias, several images, one and two threads, into an output that ends
    right before an unwritable page.  Same result as the reference, and bit
    for bit that of the NHWC kernel, which stores each pixel's channels as
    they are."""
    from test_pixels import _ending_at_unreadable_page

    r = winograd.VARIANTS[name][1]
    x_shape, w_shape = (batch, channels, side, side), (out_channels, channels // groups, r, r)
    rng = np.random.default_rng(side + channels + out_channels)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    case = Case(batch=batch, channels=channels, height=side, width=side, out_channels=out_channels, kernel=(r, r),
                stride=(1, 1), padding=((r // 2, r // 2), (r // 2, r // 2)), dilation=(1, 1), groups=groups)
    for b in (rng.standard_normal(out_channels).astype(np.float32), None):
        nhwc = ln.conv2d(channels_last(x), w, b, padding=r // 2, groups=groups, algorithm=name + "-nhwc",
                         layout="NHWC").transpose(0, 3, 1, 2)
        for threads in (1, 2):
            got = ln.conv2d(x, w, b, padding=r // 2, groups=groups, algorithm=name, threads=threads,
                            out=_ending_at_unreadable_page(np.zeros(nhwc.shape, np.float32)))
            assert_close_to_reference(got, x, w, np.zeros(out_channels, np.float32) if b is None else b, case,
                                      FACTOR[name])
            np.testing.assert_array_equal(got, nhwc)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("side, channels, groups, batch", [(14, 40, 1, 2), (13, 16, 1, 1), (7, 35, 1, 3),
                                                           (21, 48, 2, 2), (40, 33, 1, 1), (5, 17, 1, 2),
                                                           (2, 20, 1, 1)])
def test_nchw_tiles_read_strips_of_their_rows(name, side, channels, groups, batch):
    """NCHW tiles read a strip of their row of tiles' input rows, staged
    channels last by register transposes of whole vectors of channels and
    columns, the last columns of a row by a transpose reaching past them
    (into the next row or plane: never past the input, which here ends right
    before an unreadable page), the channels past the whole vectors one by
    one; images narrower than a vector, strips cut by tile blocks that end
    inside a row (two threads), groups, several images.  Same result as the
    reference, and the same as the NHWC kernel on the same input."""
    from test_pixels import _ending_at_unreadable_page

    r = winograd.VARIANTS[name][1]
    rng = np.random.default_rng(side * channels)
    x = _ending_at_unreadable_page(rng.standard_normal((batch, channels, side, side)).astype(np.float32))
    w = rng.standard_normal((24, channels // groups, r, r)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    case = Case(batch=batch, channels=channels, height=side, width=side, out_channels=24, kernel=(r, r),
                stride=(1, 1), padding=((r // 2, r // 2), (r // 2, r // 2)), dilation=(1, 1), groups=groups)
    nhwc = ln.conv2d(channels_last(x), w, b, padding=r // 2, groups=groups, algorithm=name + "-nhwc",
                     layout="NHWC").transpose(0, 3, 1, 2)
    for threads in (1, 2):
        got = ln.conv2d(x, w, b, padding=r // 2, groups=groups, algorithm=name, threads=threads)
        assert_close_to_reference(got, x, w, b, case, FACTOR[name])
        np.testing.assert_array_equal(got, nhwc)


@pytest.mark.parametrize("name", VARIANTS)
def test_weights_streamed_from_memory_are_priced_as_shared_bandwidth(name, monkeypatch):
    """Prepacked transformed weights beyond the L3 cache are streamed from
    memory by every tile block: priced as memory_elements (threads share the
    bandwidth), at WINOGRAD_WEIGHT_MEMORY_READ_COST per element read, which
    leaves moved_elements; within the cache they stay moved elements."""
    m, r, _ = winograd.VARIANTS[name]
    g = make_geometry((4, 64, 28, 28), (96, 64, r, r), 1, r // 2, 1, 1)
    in_cache = registry.get(name).plan(g, 2, prepacked=True).kernel
    monkeypatch.setattr(winograd, "l3_bytes", lambda: 4 * winograd.packed_elements(g, name) - 4)
    ln._memo.clear_all()  # plans are memoised on what planning sees, not on the cache size
    try:
        in_memory = registry.get(name).plan(g, 2, prepacked=True).kernel
    finally:
        ln._memo.clear_all()
    assert in_cache.memory_elements == 0 and in_memory.memory_elements > 0
    reads = (in_memory.memory_elements / winograd.WINOGRAD_WEIGHT_MEMORY_READ_COST)
    assert in_cache.moved_elements - in_memory.moved_elements == pytest.approx(
        reads * winograd.WINOGRAD_WEIGHT_READ_COST, rel=1e-3)
    assert in_memory.vector_flops == in_cache.vector_flops and in_memory.gemms == in_cache.gemms
