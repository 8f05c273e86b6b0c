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


# Shapes whose GEMMs overflow the 32-bit BLAS interface in some families only:
# (x shape, w shape, conv kwargs, {algorithm: the size its refusal names}).
# Every algorithm of the audited families not listed must still support it.
_IM2COL_ATBT = [f"im2col-{b}-atbt-ik" for b in ("scan", "copy-short", "copy-long", "copy-self")]
BLAS_CASES = [
    pytest.param((1, 1, 2**30, 1), (1, 1, 1, 3), dict(padding=((0, 0), (1, 1))),
                 {"mec-col": "lda = H*kw*C/g", "mec-row-partition": "lda = H*kw*C/g"},
                 id="mec-lowered-leading-dimension"),
    pytest.param((1, 1, 1, 1), (2**28, 1, 3, 3), dict(padding=1),
                 {"kn2row": "m = kh*kw*M/g", "kn2col": "n = kh*kw*M/g", "kn2col-as": "ldb = kh*kw*M/g"},
                 id="kn2row-all-taps-rows"),
    pytest.param((1, 2, 1, 1), (2**31, 1, 1, 1), dict(groups=2),
                 {**{name: "ldc = M" for name in _IM2COL_ATBT + [
                     "im2row-scan-ab-ik", "im2row-copy-short-ab-ik", "mec-col", "mec-row-partition",
                     "kn2col-as", "kn2row-aa-abt", "kn2row-aa-atbt"]},
                  "kn2col": "ldc = kh*kw*M"},
                 id="channels-last-output-leading-dimension"),
    pytest.param((1, 2**31, 1, 1), (2, 2**30, 1, 1), dict(groups=2),
                 {"im2row-scan-ab-ik": "lda = kh*kw*C", "im2row-copy-short-ab-ik": "lda = kh*kw*C",
                  "im2row-scan-abt-ki": "ldb = kh*kw*C", "im2row-copy-short-abt-ki": "ldb = kh*kw*C",
                  "kn2col": "lda = C", "kn2col-as": "lda = C", "kn2row-aa-abt": "lda = C",
                  "kn2row-aa-atbt": "lda = C"},
                 id="channels-last-input-leading-dimension"),
    pytest.param((2**12, 1, 1, 2**20), (1, 1, 1, 1), {}, {"mec-row-partition": "m = N*Wo"},
                 id="mec-whole-batch-rows"),
    pytest.param((1, 1, 50000, 50000), (1, 1, 1, 1), {},
                 {name: "" for name in ln.algorithms() if ln._registry.get(name).family in
                  ("im2col", "im2row", "kn2row", "conv-1x1-gemm")},
                 id="plane-beyond-all-but-mec"),  # MEC's GEMMs see one row of the plane at a time
]
_AUDITED = ("direct", "im2col", "im2row", "mec", "kn2row", "conv-1x1-gemm")


@pytest.mark.parametrize("x_shape, w_shape, kwargs, refused", BLAS_CASES)
def test_every_gemm_dimension_is_checked_against_32_bit_blas(x_shape, w_shape, kwargs, refused):
    # Shape-only: nothing here allocates.  A refusal is an unsupported
    # configuration (supports() False, "auto" skips it) and a named call
    # raises ValueError naming the dimension, before any allocation.
    for name in ln.algorithms():
        if ln._registry.get(name).family not in _AUDITED:
            continue
        claimed = ln.supports(name, x_shape, w_shape, **kwargs)
        other_reason = ln._registry.get(name).unsupported(ln._geometry.make_geometry(x_shape, w_shape, **kwargs))
        if name in refused:
            assert not claimed, name
            with pytest.raises(ValueError) as info:
                ln.workspace_bytes(name, x_shape, w_shape, threads=1, **kwargs)
            assert "32-bit BLAS" in str(info.value) and refused[name] in str(info.value), str(info.value)
        elif other_reason is None or "32-bit BLAS" in other_reason:
            assert claimed, (name, other_reason)
    chosen = ln.plan(x_shape, w_shape, threads=1, **kwargs)
    assert chosen.algorithm not in refused
    for candidate in chosen.candidates:
        if candidate.algorithm in refused:
            assert "32-bit BLAS" in candidate.rejected


def test_named_call_beyond_32_bit_blas_raises_before_allocating():
    # A zero-stride view stands in for a 4 GiB input: the call must refuse
    # before allocating its output or the 12 GiB lowered matrix.
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(1, 1, 2**30, 1),
                                        strides=(0, 0, 0, 0))
    w = np.ones((1, 1, 1, 3), np.float32)
    for name in ("mec-col", "mec-row-partition"):
        with pytest.raises(ValueError, match=r"lda = H\*kw\*C/g = 3221225472 exceeds"):
            ln.conv2d(x, w, padding=((0, 0), (1, 1)), algorithm=name)
        with pytest.raises(ValueError, match="32-bit BLAS"):
            ln.Conv2d(w, padding=((0, 0), (1, 1)), algorithm=name)(x)


def _masked(array):
    mask = np.zeros(array.shape, bool)
    mask.flat[0] = True
    return np.ma.MaskedArray(array.copy(), mask=mask)


@pytest.mark.parametrize("argument", ["x", "weight", "bias", "out"])
def test_masked_arrays_are_refused_not_unmasked(argument):
    # The kernels would read the data under the mask as if it were valid.
    args = dict(x=X, weight=W, bias=np.ones(6, np.float32), out=np.empty((1, 6, 6, 6), np.float32))
    args[argument] = _masked(args[argument])
    with pytest.raises(TypeError, match=f"{argument} is a numpy.ma.MaskedArray; its mask would be"):
        ln.conv2d(**args)
    layer_args = dict(weight=args["weight"], bias=args["bias"])
    if argument in layer_args:
        with pytest.raises(TypeError, match="MaskedArray"):
            ln.Conv2d(**layer_args)
    else:
        layer = ln.Conv2d(W, np.ones(6, np.float32))
        with pytest.raises(TypeError, match="MaskedArray"):
            layer(args["x"], out=args["out"])


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_matrix_and_object_arrays_are_refused_and_other_subclasses_read_plainly():
    with pytest.raises(TypeError, match="bias .*numpy.matrix"):
        ln.conv2d(X, W, np.asmatrix(np.ones(6, np.float32)))
    with pytest.raises(TypeError, match="x must have dtype float32; got object"):
        ln.conv2d(X.astype(object), W)
    with pytest.raises(TypeError, match="float32; got >f4"):
        ln.conv2d(X.astype(">f4"), W)

    class Tagged(np.ndarray):
        pass

    expected = ln.conv2d(X, W, algorithm="direct-sum2d")
    np.testing.assert_array_equal(ln.conv2d(X.view(Tagged), W.view(Tagged), algorithm="direct-sum2d"),
                                  expected)


def test_workspace_flags_must_be_real_booleans():
    with pytest.raises(TypeError, match="fixed must be True or False; got 'no'"):
        ln.Workspace(16, fixed="no")
    with pytest.raises(TypeError, match="fixed must be True or False"):
        ln.Workspace.shared_by([], [], fixed=0)
    assert ln.Workspace(16, fixed=np.bool_(True)).fixed is True
    with pytest.raises(TypeError, match="nbytes must be an int"):
        ln.Workspace(16.0)
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        ln.Workspace(-1)
    with pytest.raises(TypeError, match="layers must hold lowmem_numba.Conv2d"):
        ln.Workspace.shared_by(["conv"], [(1, 4, 8, 8)])
    with pytest.raises(TypeError, match="prepacked must be True or False"):
        ln._api.choose_algorithm("direct-sum2d", ln._geometry.make_geometry(X.shape, W.shape), 1, "NCHW", None,
                                prepacked="no")


def _peak_numpy_bytes(call):
    """Peak bytes numpy held for array data while ``call`` ran (it may raise)."""
    import tracemalloc

    tracemalloc.start()
    try:
        try:
            call()
        except (TypeError, ValueError):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_too_small_fixed_workspace_is_refused_before_allocating():
    x = np.ones((2, 16, 64, 64), np.float32)  # output and a contiguous copy: 512 KiB each
    xf = np.asfortranarray(x)
    w = np.ones((16, 16, 3, 3), np.float32)
    arena = ln.Workspace(4, fixed=True)
    with pytest.raises(ValueError, match="workspace is fixed"):
        ln.conv2d(xf, w, padding=1, algorithm="kn2row-aa-ab", workspace=arena)
    peak = _peak_numpy_bytes(lambda: ln.conv2d(xf, w, padding=1, algorithm="kn2row-aa-ab", workspace=arena))
    assert peak < 64 * 1024, peak
    layer = ln.Conv2d(w, padding=1, algorithm="kn2row-aa-ab", workspace=arena)
    assert _peak_numpy_bytes(lambda: layer(xf)) < 64 * 1024


def test_layer_arguments_are_validated_before_copying_the_weights():
    w = np.ones((256, 64, 3, 3), np.float32)  # 576 KiB
    for bad in (dict(input_shape=(1, 65, 8, 8)), dict(input_shape=(1, 64, 8, 8), algorithm="kn2row-aa-ab",
                                                       memory_limit=0), dict(bias=np.ones(3, np.float32))):
        with pytest.raises(ValueError):
            ln.Conv2d(w, padding=1, **bad)
        assert _peak_numpy_bytes(lambda: ln.Conv2d(w, padding=1, **bad)) < 64 * 1024, bad


# Values for each hyper-parameter, valid and not, Python and numpy.
HYPER_VALUES = {
    "groups": [1, 2, np.int64(2), np.int32(2), np.uint8(2), 3, 0, -1, 2.0, np.float64(2), True,
               np.bool_(True), "2", None, (2,), 2**70],
    "dilation": [1, np.int64(2), np.int64(12), (np.int64(1), 12), (np.int64(1), 2), [2, np.int16(1)], 0, (1, 0), -1, 1.5, (1,), (1, 2, 3),
                 "1", None, True, (True, 1), 2**70],
    "stride": [1, np.int64(2), (np.int32(2), 1), [1, 2], 0, (0, 1), 1.5, (1,), "1", None, False, 2**70],
    "padding": [0, np.int64(1), (np.int64(1), 2), ((np.int64(0), 1), (2, np.int8(0))), "same", "valid",
                "full", -1, 1.0, (1, 2, 3), ((1,), (1, 1)), None, True, np.array([1, 1]), 2**70],
}


def _outcome(call):
    try:
        return call()
    except (TypeError, ValueError) as error:
        return type(error)


@pytest.mark.parametrize("argument, value", [(a, v) for a, values in HYPER_VALUES.items() for v in values])
def test_layer_and_function_accept_and_reject_the_same_values(argument, value):
    # One parser serves both: the same values are accepted (with the same
    # result) or rejected with the same error type.
    w = RNG_W[:, :2]  # (4, 2, 3, 3): groups must divide M = 4
    groups = value if argument == "groups" else 1
    channels = 2 * int(groups) if isinstance(groups, (int, np.integer)) and 0 < groups < 4 else 2
    x = np.arange(channels * 26 * 25, dtype=np.float32).reshape(1, channels, 26, 25) % 7
    kwargs = {argument: value}
    functional = _outcome(lambda: ln.conv2d(x, w, algorithm="direct-sum2d", **kwargs))
    layer = _outcome(lambda: ln.Conv2d(w, algorithm="direct-sum2d", **kwargs)(x))
    if isinstance(functional, np.ndarray):
        assert isinstance(layer, np.ndarray), (layer, functional)
        np.testing.assert_array_equal(layer, functional)
    else:
        assert layer is functional


RNG_W = np.random.default_rng(5).integers(-2, 3, size=(4, 4, 3, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(stride=2**61), ["stride", "2**60"]),
        (dict(dilation=(1, 2**64)), ["dilation", "2**60"]),
        (dict(padding=((0, 10**400), (0, 0))), ["padding", "2**60"]),
        (dict(padding=2**40), ["output", "too large to allocate"]),
        (dict(padding=2**31, x=np.ones((0, 4, 8, 8), np.float32)), ["output", "too large to allocate"]),
    ],
)
def test_sizes_beyond_64_bit_index_arithmetic_are_named(kwargs, words):
    # The kernels index with 64-bit ints; numpy refuses such output shapes
    # even with a zero batch.  Both are named errors, never an OverflowError.
    args = dict(x=X, weight=W, algorithm="direct-sum2d")
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        ln.conv2d(**args)
    for word in words:
        assert word in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="2\\*\\*60"):
        ln.workspace_bytes("direct-sum2d", (1, 1, 2**61, 1), (1, 1, 1, 1))
    with pytest.raises(TypeError, match="x must be a shape"):
        ln.workspace_bytes("direct-sum2d", 5, (1, 1, 1, 1), layout="NHWC")
