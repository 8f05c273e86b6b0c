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


def assert_close_to_reference(got, x, weight, bias, case):
    """Float32 output ``got`` against the float64 reference for a ``strategies.Case``.

    The bound for a float32 sum of n products: a few ulps of the sum of
    |terms|, growing like sqrt(n) (n = C/g * kh * kw + 1 with the bias).
    """
    expected = conv2d_reference(x, weight, bias, case.stride, case.padding, case.dilation, case.groups)
    magnitude = conv2d_reference(np.abs(x), np.abs(weight), np.abs(bias), case.stride, case.padding,
                                 case.dilation, case.groups)
    n = case.w_shape[1] * case.w_shape[2] * case.w_shape[3] + 1
    tolerance = 2.0**-23 * (4 + 2 * np.sqrt(n)) * magnitude + 1e-30
    assert np.all(np.abs(got - expected) <= tolerance)
