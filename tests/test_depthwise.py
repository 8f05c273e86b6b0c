"""The depthwise family (``depthwise``, ``depthwise-nhwc``, ``depthwise-blocked``)
against the float64 reference.

* Every configuration it claims (groups == C, any channel multiplier, kernel,
  stride, asymmetric padding, dilation, batch; both layouts; one and two
  threads; with and without bias), exact on small integers, close on real data.
  ``depthwise-blocked`` claims multiplier 1 and gets channel counts that fill
  its blocks of ``VL`` channels, or not.
* Both NCHW run modes (flat bands, per-row runs) and band cuts down to one row;
  the blocked kernel's bands, its blocks of nine taps and its element-wise
  paths (planes or bands of fewer than ``VL`` pixels, a last partial block of
  channels).
* NaN and inf reach exactly the outputs whose receptive field holds them,
  even though the buffers and masked reads hold garbage (scratch is filled with
  NaN before every kernel run here).
* Inputs are left unchanged; the kernel writes nothing past its stated
  workspace; ``workspace_bytes`` is the plan's.
* The cost model prices the family's vectorised flops, and ``auto`` picks it
  on MobileNet's depthwise layers.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowmem_numba as ln
import lowmem_numba.bench  # noqa: F401  (ln.bench)
from lowmem_numba import _memo
from lowmem_numba import _registry as registry
from lowmem_numba._algorithms import depthwise, depthwise_blocked
from lowmem_numba._geometry import make_geometry
from lowmem_numba._microkernel import VL
from naive import assert_close_to_reference, assert_nonfinite_like_reference, channels_last, conv2d_reference
from strategies import Case

NAMES = ["depthwise", "depthwise-nhwc", "depthwise-blocked"]
#: The kernels that take channel multipliers (depthwise-blocked does not).
MULTIPLIER_NAMES = ["depthwise", "depthwise-nhwc"]
GUARD = 64  # sentinel elements after the stated scratch


@st.composite
def depthwise_cases(draw, max_size=20):
    """Depthwise configurations: inputs smaller than the kernel, C = 1,
    multipliers > 1, batch > 1, strides 1-3, asymmetric padding, dilation;
    MobileNet's 3x3 / padding 1 / stride 1 or 2 often, as it is the fast path."""
    if draw(st.integers(0, 3)) == 0:
        kernel, dilation, stride = (3, 3), (1, 1), (draw(st.sampled_from([1, 2])),) * 2
        padding = ((1, 1), (1, 1))
    else:
        kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = []
        for k, d in zip(kernel, dilation):
            if draw(st.booleans()):  # output as large as the input at stride 1 ("same")
                total = d * (k - 1)
                before = draw(st.integers(0, total))
                padding.append((before, total - before))
            else:
                padding.append((draw(st.integers(0, 4)), draw(st.integers(0, 4))))
        padding = tuple(padding)
    sizes = []
    for k, d, (before, after) in zip(kernel, dilation, padding):
        smallest = max(1, d * (k - 1) + 1 - before - after)
        sizes.append(draw(st.integers(smallest, max(smallest, max_size))))
    # Few channels, or enough to fill depthwise-blocked's blocks of VL
    # channels (whole, and with a partial last block).
    channels = draw(st.one_of(st.integers(1, 5), st.integers(1, 5), st.sampled_from([VL, VL + 3, 2 * VL + 1])))
    multiplier = draw(st.sampled_from([1, 1, 2, 3]))
    return Case(batch=draw(st.integers(1, 3)), channels=channels, height=sizes[0], width=sizes[1],
                out_channels=channels * multiplier, kernel=kernel, stride=stride, padding=padding,
                dilation=dilation, groups=channels)


def claimed(name, case):
    """``case`` as ``name`` claims it: multiplier 1 for depthwise-blocked."""
    if name in MULTIPLIER_NAMES:
        return case
    return dataclasses.replace(case, out_channels=case.channels)


def _small_integers(rng, shape):
    # Exact in float32 whatever the order of summation: the result must equal
    # the float64 reference bit for bit.
    return rng.integers(-3, 4, size=shape).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
@given(case=depthwise_cases(), seed=st.integers(0, 2**32 - 1), with_bias=st.booleans(),
       layout=st.sampled_from(["NCHW", "NHWC"]), threads=st.sampled_from([1, 2]))
def test_exact_on_every_claimed_configuration(name, case, seed, with_bias, layout, threads):
    case = claimed(name, case)
    assert ln.supports(name, case.x_shape, case.w_shape, **case.args)
    rng = np.random.default_rng(seed)
    x = _small_integers(rng, case.x_shape)
    w = _small_integers(rng, case.w_shape)
    bias = _small_integers(rng, (case.out_channels,)) if with_bias else None
    expected = conv2d_reference(x, w, bias, case.stride, case.padding, case.dilation, case.groups)
    if layout == "NHWC":
        x, expected = channels_last(x), channels_last(expected)
    got = ln.conv2d(x, w, bias, algorithm=name, layout=layout, threads=threads, **case.args)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", NAMES)
@given(case=depthwise_cases(), seed=st.integers(0, 2**32 - 1))
def test_close_on_real_data(name, case, seed):
    case = claimed(name, case)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    w = rng.standard_normal(case.w_shape).astype(np.float32)
    bias = rng.standard_normal(case.out_channels).astype(np.float32)
    got = ln.conv2d(x, w, bias, algorithm=name, **case.args)
    assert_close_to_reference(got, x, w, bias, case)


def _run_kernel(name, case, x, w, bias, threads, scratch_fill=np.nan, out_fill=np.nan):
    """Run the kernel straight from its plan, with scratch (plus a guard) and
    the output pre-filled: returns (output, scratch, stated scratch elements)."""
    g = make_geometry(case.x_shape, case.w_shape, case.stride, case.padding, case.dilation, case.groups)
    algorithm = registry.get(name)
    plan = algorithm.plan(g, threads, algorithm.input_layout, prepacked=True)
    stated = plan.kernel.scratch_elements
    scratch = np.full(stated + GUARD, scratch_fill, np.float32)
    if algorithm.input_layout == "NHWC":
        x, shape = channels_last(x), (g.batch, g.out_height, g.out_width, g.out_channels)
    else:
        shape = g.output_shape
    packed = np.empty(algorithm.packed_weight_elements(g), np.float32)
    weights = w.reshape(-1)
    if packed.size:
        algorithm.pack_weights(weights, g, packed)
        weights = packed
    out = np.full(int(np.prod(shape)), out_fill, np.float32)
    b = np.empty(0, np.float32) if bias is None else bias
    from lowmem_numba._threads import kernel_threads

    with kernel_threads(threads):
        algorithm.compute(x.reshape(-1), weights, b, out, scratch[:stated], g, plan.kernel)
    out = out.reshape(shape)
    return (out if algorithm.input_layout == "NCHW" else np.ascontiguousarray(out.transpose(0, 3, 1, 2)),
            scratch, stated)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30)
@given(case=depthwise_cases(), seed=st.integers(0, 2**32 - 1), threads=st.sampled_from([1, 2]),
       with_bias=st.booleans())
def test_garbage_in_scratch_never_reaches_the_output_and_nothing_is_written_past_it(
        name, case, seed, threads, with_bias):
    case = claimed(name, case)
    # Scratch starts as NaN: a masked read, a junk lane or an unwritten zero
    # row that leaked would make an output NaN; the output starts as NaN too,
    # so every output must be written.  The guard after the stated scratch
    # must stay untouched.
    rng = np.random.default_rng(seed)
    x = _small_integers(rng, case.x_shape)
    w = _small_integers(rng, case.w_shape)
    bias = _small_integers(rng, (case.out_channels,)) if with_bias else None
    got, scratch, stated = _run_kernel(name, case, x, w, bias, threads)
    expected = conv2d_reference(x, w, bias, case.stride, case.padding, case.dilation, case.groups)
    np.testing.assert_array_equal(got, expected)
    sentinel = np.float32(-7.25)
    got, scratch, stated = _run_kernel(name, case, x, w, bias, threads, scratch_fill=sentinel)
    assert np.all(scratch[stated:] == sentinel), "written past the stated workspace"


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30)
@given(case=depthwise_cases(), seed=st.integers(0, 2**32 - 1), layout=st.sampled_from(["NCHW", "NHWC"]))
def test_nan_and_inf_reach_exactly_their_receptive_fields(name, case, seed, layout):
    case = claimed(name, case)
    assert_nonfinite_like_reference(name, case, seed, layout, every=40)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_left_unchanged(name):
    rng = np.random.default_rng(3)
    for args, shape in ((dict(stride=2, padding=1), (2, 6, 14, 14)), (dict(stride=1, padding=1), (1, 5, 9, 11)),
                        (dict(stride=(1, 3), padding=((0, 2), (1, 0)), dilation=2), (2, 3, 10, 13))):
        x = rng.standard_normal(shape).astype(np.float32)
        for layout in ("NCHW", "NHWC"):
            xl = x if layout == "NCHW" else channels_last(x)
            mult = 2 if name in MULTIPLIER_NAMES else 1
            w = rng.standard_normal((mult * shape[1], 1, 3, 3)).astype(np.float32)
            b = rng.standard_normal(mult * shape[1]).astype(np.float32)
            copies = [a.copy() for a in (xl, w, b)]
            ln.conv2d(xl, w, b, groups=shape[1], algorithm=name, layout=layout, threads=2, **args)
            for before, after in zip(copies, (xl, w, b)):
                np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("name", MULTIPLIER_NAMES)
@pytest.mark.parametrize("band", [1, 5, 13])
def test_bands_down_to_single_rows(name, band, monkeypatch):
    # Small band limits cut the planes into many bands: interior bands (read
    # in place), top and bottom bands (copied between zero rows), stride-2
    # bands, and per-row runs whose rounding must stay inside their band.
    monkeypatch.setattr(depthwise, "DEPTHWISE_BAND_OUTPUTS", band)
    monkeypatch.setattr(depthwise, "DEPTHWISE_NHWC_BAND_ELEMENTS", band)
    _memo.clear_all()
    try:
        rng = np.random.default_rng(band)
        for shape, k, args in (((2, 3, 17, 9), 3, dict(padding=1)),
                               ((1, 2, 20, 18), 3, dict(stride=2, padding=1)),
                               ((2, 2, 11, 12), 3, dict(padding=0)),
                               ((1, 3, 15, 10), 5, dict(stride=(2, 1), padding=2)),
                               ((1, 2, 9, 9), 2, dict(dilation=2, padding=((2, 0), (1, 1))))):
            x = _small_integers(rng, shape)
            w = _small_integers(rng, (shape[1] * 2, 1, k, k))
            b = _small_integers(rng, (shape[1] * 2,))
            g = make_geometry(shape, w.shape, groups=shape[1], **args)
            expected = conv2d_reference(x, w, b, g.stride, g.padding, g.dilation, g.groups)
            for threads in (1, 2):
                layout = "NHWC" if name.endswith("nhwc") else "NCHW"
                xl, ex = (channels_last(x), channels_last(expected)) if layout == "NHWC" else (x, expected)
                got = ln.conv2d(xl, w, b, groups=shape[1], algorithm=name, layout=layout, threads=threads,
                                **args)
                np.testing.assert_array_equal(got, ex)
    finally:
        _memo.clear_all()


@pytest.mark.parametrize("budget", [1, 3000, 40000])
def test_blocked_bands_blocks_of_taps_and_element_wise_paths(budget, monkeypatch):
    # The buffer budget cuts images into bands down to single output rows
    # (bands that start or end in the padding, bands of fewer than VL pixels
    # moved element by element); channel counts with and without a partial
    # last block; kernels of one, two and six blocks of nine taps; stride 2
    # and 3, dilation; scratch and the output start as NaN.
    monkeypatch.setattr(depthwise_blocked, "DEPTHWISE_BLOCKED_BUFFER_BYTES", budget)
    _memo.clear_all()
    try:
        rng = np.random.default_rng(budget)
        one, no = (1, 1), ((0, 0), (0, 0))
        for channels, hw, k, stride, padding, dilation in (
                (VL, (9, 9), 3, one, ((1, 1), (1, 1)), one),
                (VL + 5, (13, 10), 3, (2, 2), ((1, 1), (1, 1)), one),
                (2 * VL, (11, 12), 5, (1, 3), ((2, 1), (0, 3)), one),
                (VL, (6, 7), 7, one, ((3, 3), (3, 3)), (1, 2)),
                (3, (8, 5), 3, (2, 2), ((2, 2), (2, 2)), (2, 2)),
                (VL + 1, (3, 4), 3, one, ((1, 1), (1, 1)), one),
                (VL, (2, 9), 1, one, ((3, 4), (0, 1)), one),  # bands wholly in the padding
                (VL + 2, (3, 17), 2, (2, 1), ((4, 5), (2, 0)), (2, 1)),
                (VL, (1, 1), 1, one, no, one)):
            case = Case(batch=2, channels=channels, height=hw[0], width=hw[1], out_channels=channels,
                        kernel=(k, k), stride=stride, padding=padding, dilation=dilation, groups=channels)
            x = _small_integers(rng, case.x_shape)
            w = _small_integers(rng, case.w_shape)
            b = _small_integers(rng, (channels,))
            expected = conv2d_reference(x, w, b, case.stride, case.padding, case.dilation, case.groups)
            for threads in (1, 2):
                got, scratch, stated = _run_kernel("depthwise-blocked", case, x, w, b, threads)
                np.testing.assert_array_equal(got, expected)
                got, scratch, stated = _run_kernel("depthwise-blocked", case, x, w, None, threads,
                                                   scratch_fill=np.float32(-7.25))
                assert np.all(scratch[stated:] == np.float32(-7.25)), "written past the stated workspace"
                np.testing.assert_array_equal(
                    got, conv2d_reference(x, w, None, case.stride, case.padding, case.dilation, case.groups))
    finally:
        _memo.clear_all()


def test_blocked_buffers_stay_within_their_budget():
    # Whatever the image, a thread's buffers hold one band (at most the
    # budget, or one output row when a row alone is larger).
    for shape in ((1, 32, 112, 112), (8, 1024, 7, 7), (1, 64, 224, 224)):
        g = make_geometry(shape, (shape[1], 1, 3, 3), padding=1, groups=shape[1])
        for threads in (1, 2):
            kernel = registry.get("depthwise-blocked").plan_kernel(g, threads)
            per_slot = kernel.tiling[4] * 4
            assert per_slot <= depthwise_blocked.DEPTHWISE_BLOCKED_BUFFER_BYTES + 64 * 1024, (shape, per_slot)


@contextlib.contextmanager
def _nhwc_path(run=None, pixel_pad=None):
    """Force the NHWC kernel's other paths on small shapes: pixel pairs (no
    row runs) and padded pixels (as for multiples of 512 channels)."""
    saved = depthwise.DEPTHWISE_NHWC_RUN, depthwise.pixel_stride
    if run is not None:
        depthwise.DEPTHWISE_NHWC_RUN = run
    if pixel_pad is not None:
        depthwise.pixel_stride = lambda channels: channels + pixel_pad
    _memo.clear_all()
    try:
        yield
    finally:
        depthwise.DEPTHWISE_NHWC_RUN, depthwise.pixel_stride = saved
        _memo.clear_all()


@pytest.mark.parametrize("run, pixel_pad", [(1, None), (1, 16), (4096, 16)],
                         ids=["pixel-pairs", "pairs-padded-pixels", "row-runs-padded-pixels"])
@settings(max_examples=30)
@given(case=depthwise_cases(), seed=st.integers(0, 2**32 - 1), threads=st.sampled_from([1, 2]),
       with_bias=st.booleans())
def test_every_nhwc_path_is_exact(run, pixel_pad, case, seed, threads, with_bias):
    # Row runs serve few channels, pixel pairs many (and every channel
    # multiplier > 1); multiples of 512 channels get padded pixels.  Forced
    # here on small shapes, with NaN in scratch and the output beforehand.
    rng = np.random.default_rng(seed)
    x = _small_integers(rng, case.x_shape)
    w = _small_integers(rng, case.w_shape)
    bias = _small_integers(rng, (case.out_channels,)) if with_bias else None
    expected = conv2d_reference(x, w, bias, case.stride, case.padding, case.dilation, case.groups)
    with _nhwc_path(run, pixel_pad):
        got, scratch, stated = _run_kernel("depthwise-nhwc", case, x, w, bias, threads)
        np.testing.assert_array_equal(got, expected)
        got = ln.conv2d(channels_last(x), w, bias, algorithm="depthwise-nhwc", layout="NHWC", threads=threads,
                        **case.args)
        np.testing.assert_array_equal(got, channels_last(expected))


def test_wide_layers_take_the_pixel_pair_path_and_are_exact():
    rng = np.random.default_rng(5)
    for channels in (520, 512):  # dense pixels, padded pixels
        g = make_geometry((1, channels, 9, 8), (channels, 1, 3, 3), stride=2, padding=1, groups=channels)
        assert depthwise._nhwc_tiling(g, 2)[5] == 0  # no row runs
        x = _small_integers(rng, g.input_shape)
        w = _small_integers(rng, g.weight_shape)
        b = _small_integers(rng, (channels,))
        for args in (dict(stride=2, padding=1), dict(padding=1), dict(padding=((2, 0), (1, 3)), dilation=2)):
            gg = make_geometry(x.shape, w.shape, groups=channels, **args)
            expected = conv2d_reference(x, w, b, gg.stride, gg.padding, gg.dilation, channels)
            for threads in (1, 2):
                got = ln.conv2d(channels_last(x), w, b, groups=channels, algorithm="depthwise-nhwc", layout="NHWC",
                                threads=threads, **args)
                np.testing.assert_array_equal(got, channels_last(expected))


def test_both_nchw_modes_are_exercised():
    # MobileNet's layers (stride 1 and 2, padding 1) run as flat bands; a
    # 'valid' stride-1 layer needs per-row runs.
    for layer in ln.bench.layers("mobilenet"):
        if layer.groups > 1:
            g = make_geometry(layer.x_shape(1), layer.w_shape, layer.stride, layer.padding, 1, layer.groups)
            assert depthwise.is_flat(g), layer.name
    assert not depthwise.is_flat(make_geometry((1, 2, 9, 9), (2, 1, 3, 3), groups=2))


@pytest.mark.parametrize("name", NAMES)
def test_only_one_input_channel_per_group_is_claimed(name):
    assert ln.supports(name, (1, 8, 9, 9), (8, 1, 3, 3), groups=8)
    assert ln.supports(name, (1, 1, 9, 9), (1, 1, 3, 3))  # C = 1 = groups
    if name in MULTIPLIER_NAMES:
        assert ln.supports(name, (1, 8, 9, 9), (24, 1, 3, 3), groups=8)
    else:
        assert not ln.supports(name, (1, 8, 9, 9), (24, 1, 3, 3), groups=8)
        reason = registry.get(name).unsupported(make_geometry((1, 8, 9, 9), (24, 1, 3, 3), groups=8))
        assert "multiplier 3" in reason and "'depthwise'" in reason
    for w_shape, groups in (((8, 8, 3, 3), 1), ((8, 2, 3, 3), 4)):
        assert not ln.supports(name, (1, 8, 9, 9), w_shape, groups=groups)
        reason = registry.get(name).unsupported(make_geometry((1, 8, 9, 9), w_shape, groups=groups))
        assert isinstance(reason, str) and "per group" in reason


@pytest.mark.parametrize("name", NAMES)
def test_workspace_bytes_is_the_plan(name):
    for shape, w_shape, args in (((1, 32, 112, 112), (32, 1, 3, 3), dict(padding=1, groups=32)),
                                 ((8, 512, 14, 14), (512, 1, 3, 3), dict(stride=2, padding=1, groups=512)),
                                 ((2, 3, 10, 13), (6, 1, 5, 3), dict(stride=(1, 3), padding=((0, 2), (1, 0)),
                                                                    dilation=2, groups=3))):
        g = make_geometry(shape, w_shape, **args)
        if registry.get(name).unsupported(g):
            continue  # a channel multiplier, for depthwise-blocked
        for threads in (1, 2):
            for layout in ("NCHW", "NHWC"):
                plan = registry.get(name).plan(g, threads, layout)
                call_shape = shape if layout == "NCHW" else (shape[0], *shape[2:], shape[1])
                assert ln.workspace_bytes(name, call_shape, w_shape, threads=threads, layout=layout,
                                          **args) == plan.workspace_bytes
                if layout == registry.get(name).input_layout:
                    # No layout conversion: scratch and packed weights only,
                    # and small (per-thread bands, not the whole input).
                    assert plan.workspace_elements < g.batch * g.in_channels * g.height * g.width + 4 * 2**16


def test_the_cost_model_prices_vectorised_flops():
    from lowmem_numba._costmodel import DEFAULTS, predict_seconds
    from lowmem_numba._plan import CallPlan, KernelPlan

    g = make_geometry((1, 4, 8, 8), (4, 1, 3, 3), padding=1, groups=4)

    def call(kernel):
        return CallPlan("depthwise", g, 1, "NCHW", True, g, 1, kernel, 0, 0, 0)

    idle = predict_seconds(call(KernelPlan(parallel_items=1)), DEFAULTS)
    busy = predict_seconds(call(KernelPlan(vector_flops=10**9, parallel_items=1)), DEFAULTS)
    assert busy - idle == pytest.approx(1e9 / DEFAULTS.vector_rate)
    assert DEFAULTS.vector_rate > 5 * DEFAULTS.direct_rate


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_auto_picks_the_family_on_mobilenet_depthwise_layers(layout, monkeypatch):
    from lowmem_numba import _costmodel, _scheduler
    from lowmem_numba._costmodel import DEFAULTS

    monkeypatch.setattr(_scheduler, "calibration", lambda: DEFAULTS)
    _scheduler.clear_memo()
    try:
        for layer in ln.bench.layers("mobilenet"):
            if layer.groups == 1:
                continue
            shape = layer.x_shape(1)
            if layout == "NHWC":
                shape = (1, layer.height, layer.width, layer.in_channels)
            chosen = ln.plan(shape, layer.w_shape, threads=1, layout=layout, **layer.conv_args)
            assert chosen.algorithm.startswith("depthwise"), (layer.name, chosen.explain())
    finally:
        _scheduler.clear_memo()
    low, high = _costmodel.PLAUSIBLE["vector_rate"]
    assert low <= DEFAULTS.vector_rate <= high
