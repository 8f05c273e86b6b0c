"""Every algorithm against the float64 reference, over every configuration it claims."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lowmem_numba as ln
from naive import (assert_close_to_reference, channels_last, conv2d_reference, conv2d_reference_loops,
                   exact_on_integers, rounding_factor, winograd_magnitude)
from strategies import cases

ALGORITHMS = ln.algorithms()


def small_integers(rng, shape):
    # Small integers make every float32 product and partial sum exact, so the
    # result must equal the float64 reference bit for bit, whatever order the
    # kernel sums in: any wrong or missing term shows.
    return rng.integers(-3, 4, size=shape).astype(np.float32)


ROUNDING_FACTOR = {name: rounding_factor(name) for name in ALGORITHMS if rounding_factor(name) != 1.0}


def stride_one_only(name):
    return not ln.supports(name, (1, 1, 9, 9), (1, 1, 3, 3), stride=2)


def cases_for(name, **kwargs):
    return cases(stride_one=stride_one_only(name), **kwargs)


def claimed(name, case):
    return ln.supports(name, case.x_shape, case.w_shape, **case.args)


def test_reference_matches_definition():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 7))
    w = rng.standard_normal((6, 2, 3, 2))
    args = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2)
    np.testing.assert_allclose(conv2d_reference(x, w, **args), conv2d_reference_loops(x, w, **args),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ALGORITHMS)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), with_bias=st.booleans(),
       layout=st.sampled_from(["NCHW", "NHWC"]))
def test_exact_on_integer_data(name, data, seed, with_bias, layout):
    case = data.draw(cases_for(name))
    if not claimed(name, case):
        return
    rng = np.random.default_rng(seed)
    x = small_integers(rng, case.x_shape)
    w = small_integers(rng, case.w_shape)
    bias = small_integers(rng, (case.out_channels,)) if with_bias else None
    expected = conv2d_reference(x, w, bias, case.stride, case.padding, case.dilation, case.groups)
    if layout == "NHWC":
        x, expected = channels_last(x), channels_last(expected)
    got = ln.conv2d(x, w, bias, algorithm=name, layout=layout, **case.args)
    assert got.dtype == np.float32
    if exact_on_integers(name):
        np.testing.assert_array_equal(got, expected)
    else:
        if layout == "NHWC":
            x, got = x.transpose(0, 3, 1, 2), got.transpose(0, 3, 1, 2)
        no_bias = np.zeros(case.out_channels, np.float32)
        assert_close_to_reference(got, x, w, no_bias if bias is None else bias, case, ROUNDING_FACTOR[name])


@pytest.mark.parametrize("name", ALGORITHMS)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), threads=st.sampled_from([1, None]))
def test_close_on_real_data(name, data, seed, threads):
    case = data.draw(cases_for(name, max_size=9))
    if not claimed(name, case):
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    w = rng.standard_normal(case.w_shape).astype(np.float32)
    bias = rng.standard_normal(case.out_channels).astype(np.float32)
    got = ln.conv2d(x, w, bias, algorithm=name, threads=threads, **case.args)
    assert_close_to_reference(got, x, w, bias, case, ROUNDING_FACTOR.get(name, 1.0))


LAYERS = {
    # name: (C, H, W, M, k, padding, stride)
    "alexnet-conv3": (256, 13, 13, 384, 3, 1, 1),
    "vgg-like": (32, 28, 28, 64, 3, 1, 1),
    "googlenet-5x5": (16, 14, 14, 32, 5, 2, 1),
    "resnet-stride2": (64, 15, 15, 64, 3, 1, 2),
    "pointwise": (64, 14, 14, 128, 1, 0, 1),
    "mobilenet-dw": (64, 14, 14, 64, 3, 1, 1),
}


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_shapes_both_thread_counts(name, layer):
    c, h, w_, m, k, p, s = LAYERS[layer]
    groups = c if layer == "mobilenet-dw" else 1
    rng = np.random.default_rng(1)
    x = small_integers(rng, (2, c, h, w_))
    w = small_integers(rng, (m, c // groups, k, k))
    if not ln.supports(name, x.shape, w.shape, s, p, 1, groups):
        pytest.skip(f"{name} does not claim {layer}")
    expected = conv2d_reference(x, w, None, (s, s), ((p, p), (p, p)), (1, 1), groups)
    # 2-bit integers over C*k*k <= 2304 terms stay below 2**24: exact in float32
    # (except for Winograd transforms with non-dyadic coefficients).
    bound = np.zeros_like(expected)
    if not exact_on_integers(name):
        magnitude = winograd_magnitude(
            conv2d_reference(np.abs(x), np.abs(w), None, (s, s), ((p, p), (p, p)), (1, 1), groups))
        bound = ROUNDING_FACTOR[name] * 2.0**-23 * (4 + 2 * np.sqrt(c // groups * k * k)) * magnitude
    for threads in (1, 2):
        got = ln.conv2d(x, w, stride=s, padding=p, groups=groups, algorithm=name, threads=threads)
        assert np.all(np.abs(got - expected) <= bound)
        got = ln.conv2d(channels_last(x), w, stride=s, padding=p, groups=groups, algorithm=name,
                        threads=threads, layout="NHWC")
        assert np.all(np.abs(got - channels_last(expected)) <= channels_last(bound))
