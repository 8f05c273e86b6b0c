"""Slow, obviously right float64 references that every fast path is checked against."""

from __future__ import annotations

import numpy as np


def conv2d_reference(x, weight, bias=None, stride=(1, 1), padding=((0, 0), (0, 0)),
                     dilation=(1, 1), groups=1):
    """Cross-correlation in float64 by explicit zero padding and a loop over taps.

    ``x`` is (N, C, H, W), ``weight`` (M, C/groups, kh, kw); padding is
    ((top, bottom), (left, right)).  Returns (N, M, Ho, Wo) float64.
    """
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    n, c, h, w = x.shape
    m, c_per_group, kh, kw = weight.shape
    (top, bottom), (left, right) = padding
    sh, sw = stride
    dh, dw = dilation
    padded = np.zeros((n, c, h + top + bottom, w + left + right))
    padded[:, :, top:top + h, left:left + w] = x
    out_h = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, m, out_h, out_w))
    m_per_group = m // groups
    for oc in range(m):
        group = oc // m_per_group
        channels = slice(group * c_per_group, (group + 1) * c_per_group)
        for i in range(kh):
            for j in range(kw):
                # Input pixels tap (i, j) sees for every output pixel.
                window = padded[:, channels,
                                i * dh: i * dh + sh * (out_h - 1) + 1: sh,
                                j * dw: j * dw + sw * (out_w - 1) + 1: sw]
                out[:, oc] += np.einsum("nchw,c->nhw", window, weight[oc, :, i, j])
    if bias is not None:
        out += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return out


def conv2d_reference_loops(x, weight, stride, padding, dilation, groups):
    """The definition itself, one output element at a time (for tiny shapes)."""
    n, c, h, w = x.shape
    m, c_per_group, kh, kw = weight.shape
    (top, bottom), (left, right) = padding
    out_h = (h + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, m, out_h, out_w))
    for b in range(n):
        for oc in range(m):
            group = oc // (m // groups)
            for yo in range(out_h):
                for xo in range(out_w):
                    total = 0.0
                    for ci in range(c_per_group):
                        for i in range(kh):
                            for j in range(kw):
                                y = yo * stride[0] + i * dilation[0] - top
                                xx = xo * stride[1] + j * dilation[1] - left
                                if 0 <= y < h and 0 <= xx < w:
                                    total += float(x[b, group * c_per_group + ci, y, xx]) * float(weight[oc, ci, i, j])
                    out[b, oc, yo, xo] = total
    return out


def assert_close_to_reference(got, x, weight, bias, case, factor=1.0):
    """Float32 output ``got`` against the float64 reference for a ``strategies.Case``.

    The bound for a float32 sum of n products: a few ulps of the sum of
    |terms|, growing like sqrt(n) (n = C/g * kh * kw + 1 with the bias),
    times ``factor`` for algorithms that round more (Winograd).  Those also
    mix a tile's inputs, so an output whose own terms are all zero still
    carries its neighbours' rounding: with ``factor`` the bound follows the
    largest magnitude of each output plane.
    """
    expected = conv2d_reference(x, weight, bias, case.stride, case.padding, case.dilation, case.groups)
    magnitude = conv2d_reference(np.abs(x), np.abs(weight), np.abs(bias), case.stride, case.padding,
                                 case.dilation, case.groups)
    if factor != 1.0:
        magnitude = winograd_magnitude(magnitude)
        if x.size and weight.size:
            # The transforms also mix every tap of a kernel with every input
            # of a tile: terms that cancel exactly still round at the scale of
            # |x| times the sum of |w| over all taps (a 1x1 input under a 3x3
            # kernel: one tap reaches it, all nine round with it; F(2x2,3x3)
            # measured 2.1x the bound above there).
            groups = case.groups
            x_max = np.abs(x).max(axis=(-2, -1)).reshape(x.shape[0], groups, -1)
            w_sum = np.abs(weight).astype(np.float64).sum(axis=(-2, -1)).reshape(groups, -1, weight.shape[1])
            mixed = np.einsum("ngc,gmc->ngm", x_max, w_sum).reshape(x.shape[0], -1)
            magnitude = np.maximum(magnitude, mixed[:, :, None, None])
    n = case.w_shape[1] * case.w_shape[2] * case.w_shape[3] + 1
    tolerance = factor * 2.0**-23 * (4 + 2 * np.sqrt(n)) * magnitude + 1e-30
    assert np.all(np.abs(got - expected) <= tolerance)


def winograd_magnitude(magnitude):
    """Each output's magnitude raised to its plane's largest (NCHW)."""
    if magnitude.size == 0:
        return magnitude
    return np.maximum(magnitude, magnitude.max(axis=(-2, -1), keepdims=True))


#: Winograd's rounding against the direct-summation bound of
#: :func:`assert_close_to_reference`: its transforms mix a tile's inputs and
#: their coefficients (up to 5 in B^T, 8 in A^T) amplify rounding.  Over 300
#: random small layers the worst was 3.6x (F(4x4,3x3)) and 4.3x (F(2x2,5x5));
#: F(2x2,3x3) stays near 1x (2 leaves room for a layer of three terms among
#: zeros, which reached 1.2x).
def rounding_factor(name):
    if not name.startswith("winograd-"):
        return 1.0
    return 2.0 if name.startswith("winograd-2x2-3x3") else 16.0


def exact_on_integers(name):
    """Whether small-integer data gives exact float32 results: true unless the
    Winograd weight transform G has non-dyadic entries (1/6, 1/24 in F(4x4,3x3)
    and F(2x2,5x5); F(2x2,3x3)'s are 0, +-1/2 and 1)."""
    return not name.startswith(("winograd-4x4-3x3", "winograd-2x2-5x5"))


def assert_matches_integer_reference(got, expected, name):
    """Exact equality on small-integer data, or, for the algorithms that are
    not exact there, agreement to float32 rounding of the largest output."""
    if exact_on_integers(name):
        np.testing.assert_array_equal(got, expected)
    else:
        scale = float(np.abs(expected).max()) if expected.size else 0.0
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * max(1.0, scale))


def supported_configuration(name, x_shape, out_channels):
    """``(w_shape, padding, groups)`` of the first configuration among 3x3
    "same", 5x5 "same", 1x1 and depthwise 3x3 "same" that algorithm ``name``
    supports on an NCHW input of ``x_shape`` (each family claims one of them)."""
    import lowmem_numba as ln

    c = x_shape[1]
    for w_shape, padding, groups in (((out_channels, c, 3, 3), 1, 1), ((out_channels, c, 5, 5), 2, 1),
                                     ((out_channels, c, 1, 1), 0, 1), ((c, 1, 3, 3), 1, c)):
        if ln.supports(name, x_shape, w_shape, padding=padding, groups=groups):
            return w_shape, padding, groups
    raise ValueError(f"{name} supports none of the test configurations")


def channels_last(array):
    """An (N, C, H, W) array as a C-contiguous (N, H, W, C) one."""
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1))


def assert_exact_like_reference(name, case, seed, with_bias, layout, threads, prepacked=False, memory_limit=None):
    """Integers in -3..3 (every product and sum exact in float32) through
    ``name`` in ``layout`` on ``threads`` threads, under ``memory_limit``,
    must equal the reference; through a ``Conv2d`` layer (weights packed
    once) with ``prepacked``."""
    import lowmem_numba as ln

    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, case.x_shape).astype(np.float32)
    w = rng.integers(-3, 4, case.w_shape).astype(np.float32)
    bias = rng.integers(-3, 4, case.out_channels).astype(np.float32) if with_bias else None
    expected = conv2d_reference(x, w, bias, case.stride, case.padding, case.dilation, case.groups)
    if layout == "NHWC":
        x, expected = channels_last(x), channels_last(expected)
    if prepacked:
        got = ln.Conv2d(w, bias, algorithm=name, layout=layout, threads=threads, memory_limit=memory_limit,
                        **case.args)(x)
    else:
        got = ln.conv2d(x, w, bias, algorithm=name, layout=layout, threads=threads, memory_limit=memory_limit,
                        **case.args)
    np.testing.assert_array_equal(got, expected)


def assert_nonfinite_like_reference(name, case, seed, layout, every):
    """Scatter NaN and +inf over about one input element in ``every`` of
    small positive integers (positive weights keep +inf +inf) and require
    exactly the reference's NaN and +inf outputs, and its finite ones."""
    import lowmem_numba as ln

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, case.x_shape).astype(np.float32)
    w = rng.integers(1, 4, case.w_shape).astype(np.float32)
    flat = x.reshape(-1)
    for value in (np.nan, np.inf):
        flat[rng.integers(0, flat.size, size=1 + flat.size // every)] = value
    expected = conv2d_reference(x, w, None, case.stride, case.padding, case.dilation, case.groups)
    if layout == "NHWC":
        x, expected = channels_last(x), channels_last(expected)
    got = ln.conv2d(x, w, algorithm=name, layout=layout, **case.args)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(got[finite], expected[finite])
