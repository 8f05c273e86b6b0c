"""Bad input gets a clear TypeError or ValueError, before any kernel runs."""

import numpy as np
import pytest

import lowmem_numba as ln

X = np.ones((1, 4, 8, 8), np.float32)
W = np.ones((6, 4, 3, 3), np.float32)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(x=X.astype(np.float64)), TypeError, ["x", "float32", "astype(np.float32)"]),
        (dict(x=X.astype(np.int32)), TypeError, ["x", "float32", "astype"]),
        (dict(x=X.tolist()), TypeError, ["x", "numpy.ndarray", "list"]),
        (dict(weight=W.astype(np.float64)), TypeError, ["weight", "float32", "astype"]),
        (dict(weight=W.tolist()), TypeError, ["weight", "ndarray"]),
        (dict(x=X[0, 0]), ValueError, ["x", "3 or 4 dimensions", "(8, 8)"]),
        (dict(x=X[None]), ValueError, ["x", "3 or 4 dimensions"]),
        (dict(weight=W[0]), ValueError, ["weight", "4 dimensions"]),
        (dict(x=np.ones((1, 5, 8, 8), np.float32)), ValueError, ["C=4", "got C=5"]),
        (dict(groups=3), ValueError, ["groups=3", "divide"]),
        (dict(groups=0), ValueError, ["groups", ">= 1"]),
        (dict(groups=2.0), TypeError, ["groups", "int"]),
        (dict(stride=0), ValueError, ["stride", ">= 1"]),
        (dict(stride=(1, 0)), ValueError, ["stride", ">= 1"]),
        (dict(stride=1.5), TypeError, ["stride", "int"]),
        (dict(stride=(1, 2, 3)), TypeError, ["stride", "pair"]),
        (dict(stride=True), TypeError, ["stride"]),
        (dict(dilation=0), ValueError, ["dilation", ">= 1"]),
        (dict(dilation="2"), TypeError, ["dilation"]),
        (dict(padding=-1), ValueError, ["padding", "non-negative"]),
        (dict(padding=((0, 1), (-1, 0))), ValueError, ["padding", "non-negative"]),
        (dict(padding="full"), ValueError, ["padding", "'full'", "same"]),
        (dict(padding=1.0), TypeError, ["padding"]),
        (dict(padding=(1, 2, 3)), TypeError, ["padding"]),
        (dict(padding="same", stride=2), ValueError, ["same", "stride 1"]),
        (dict(x=np.ones((1, 4, 2, 8), np.float32)), ValueError, ["kernel", "larger than the padded input"]),
        (dict(x=np.ones((1, 4, 8, 8), np.float32), dilation=4), ValueError, ["larger than the padded input"]),
        (dict(bias=np.ones(5, np.float32)), ValueError, ["bias", "(6,)", "(5,)"]),
        (dict(bias=np.ones(6, np.float64)), TypeError, ["bias", "float32"]),
        (dict(bias=[1.0] * 6), TypeError, ["bias", "ndarray"]),
        (dict(out=np.empty((1, 6, 6, 5), np.float32)), ValueError, ["out", "shape", "(1, 6, 6, 6)"]),
        (dict(out=np.empty((1, 6, 6, 6), np.float64)), TypeError, ["out", "float32"]),
        (dict(out=np.empty((1, 6, 6, 12), np.float32)[..., ::2]), ValueError, ["out", "C-contiguous"]),
        (dict(threads=0), ValueError, ["threads", ">= 1"]),
        (dict(threads=10**6), ValueError, ["threads", "NUMBA_NUM_THREADS"]),
        (dict(threads=1.0), TypeError, ["threads", "int"]),
        (dict(algorithm="im2col"), ValueError, ["unknown algorithm", "'im2col'", "kn2row-aa-ab"]),
        (dict(algorithm=3), TypeError, ["algorithm", "string"]),
        (dict(algorithm="kn2row-aa-ab", stride=2), ValueError, ["kn2row-aa-ab", "stride (2, 2)", "im2col-copy-self-ab-ki"]),
    ],
)
def test_bad_input_is_named(kwargs, error, words):
    args = dict(x=X, weight=W)
    args.update(kwargs)
    with pytest.raises(error) as info:
        ln.conv2d(**args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_read_only_out_is_rejected():
    out = np.empty((1, 6, 6, 6), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        ln.conv2d(X, W, out=out)


@pytest.mark.parametrize("overlaps", ["x", "weight", "bias"])
def test_out_overlapping_an_input_is_rejected(overlaps):
    x = np.ones((1, 4, 8, 8), np.float32)
    bias = np.ones(4, np.float32)
    weight = np.ones((4, 4, 1, 1), np.float32)
    target = {"x": x, "weight": weight.reshape(1, 4, 2, 2), "bias": bias.reshape(1, 4, 1, 1)}[overlaps]
    shape = {"x": (1, 4, 8, 8), "weight": (1, 4, 2, 2), "bias": (1, 4, 1, 1)}[overlaps]
    x_in = x if overlaps == "x" else np.ones((1, 4) + shape[2:], np.float32)
    with pytest.raises(ValueError, match=f"overlap {overlaps}"):
        ln.conv2d(x_in, weight, bias, out=target)


def test_dimension_beyond_32_bit_blas_is_refused():
    with pytest.raises(ValueError, match="32-bit BLAS"):
        ln.workspace_bytes("im2col-copy-self-ab-ki", (1, 1, 50000, 50000), (1, 1, 1, 1))


def test_unsupported_configuration_answers_false_not_error():
    assert not ln.supports("kn2row-aa-ab", (1, 4, 8, 8), (6, 4, 3, 3), stride=2)
    assert ln.supports("kn2row-aa-ab", (1, 4, 8, 8), (6, 4, 3, 3), stride=1)
    with pytest.raises(ValueError, match="unknown algorithm"):
        ln.supports("nope", (1, 4, 8, 8), (6, 4, 3, 3))
    with pytest.raises(ValueError, match="groups"):
        ln.supports("kn2row-aa-ab", (1, 4, 8, 8), (6, 4, 3, 3), groups=4)


def test_errors_leave_nothing_on_stderr(capfd):
    with pytest.raises(ValueError):
        ln.conv2d(X, W, algorithm="kn2row-aa-ab", stride=2)
    assert capfd.readouterr().err == ""
