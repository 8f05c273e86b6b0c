"""Fuzz the public API with arbitrary argument values.

Whatever the arguments, only TypeError or ValueError may escape (never an
IndexError, ZeroDivisionError, OverflowError, SystemError from a kernel...),
the input arrays are never modified, and a failed call leaves ``out`` alone.
Calls that succeed are checked against the float64 reference.

Arrays stay tiny, so the examples run the real kernels in milliseconds; the
examples are derandomized and no database is kept, so CI is reproducible.
Out of scope: ``mode="measure"`` (it times every candidate), read-only arrays
(each kernel would compile a read-only specialisation), and sizes that are
valid but merely too large for this machine's memory (a MemoryError there is
the honest answer).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowmem_numba as ln
from naive import conv2d_reference

ALGORITHMS = ln.algorithms()
MAX_THREADS = ln._threads.max_threads()

pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=400,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------------ values

#: Integers every size, stride, dilation and padding check must refuse.
HUGE_INTS = [2**60 + 1, 2**63, 2**64, 10**400, -(2**63)]
#: Valid but beyond the 32-bit BLAS interface.  Used for strides, dilations,
#: thread counts, budgets and image sizes; a padding or kernel this large is
#: left to test_planning_huge_padding_terminates (run apart with a timeout).
BLAS_INTS = [2**31, 2**31 - 1]

numpy_ints = st.one_of(st.builds(lambda v, t: t(v), st.integers(-2, 4),
                                 st.sampled_from([np.int64, np.int32, np.int8, np.intp])),
                       st.builds(np.uint8, st.integers(0, 4)))
numbers = st.one_of(
    st.integers(-3, 5), st.sampled_from(HUGE_INTS), numpy_ints,
    st.sampled_from([0.0, 1.0, 2.5, -1.0, math.nan, math.inf, np.float32(1), np.float64(2)]),
    st.booleans(), st.sampled_from([np.bool_(True), np.bool_(False), 1 + 0j]),
)
junk = st.one_of(
    st.none(), numbers, st.text(max_size=4), st.sampled_from(["1", "same", "valid", "full", "auto", b"x"]),
    st.lists(st.one_of(st.integers(-2, 4), numpy_ints, st.none(), st.floats(allow_nan=True)),
             max_size=4).map(tuple),
    st.lists(st.integers(-1, 3), max_size=3),
    st.tuples(st.tuples(st.integers(-1, 3)), st.tuples(st.integers(-1, 3), st.integers(-1, 3))),
    st.sampled_from([{}, {1: 2}, object(), np.array([1, 1]), np.array(2), slice(1)]),
)


def mostly(valid, other=junk):
    """Valid values three times in four, else anything."""
    return st.one_of(valid, valid, valid, other)


pairs = st.one_of(st.integers(1, 3), numpy_ints.filter(lambda v: 1 <= v <= 3),
                  st.tuples(st.integers(1, 3), st.integers(1, 3)), st.lists(st.integers(1, 2), min_size=2,
                                                                              max_size=2))
strides = st.one_of(st.just(1), st.just(1), pairs, st.sampled_from(BLAS_INTS + HUGE_INTS[:3]))
dilations = st.one_of(st.just(1), st.just(1), pairs)
paddings = st.one_of(
    st.integers(0, 2), st.sampled_from(["same", "valid", np.int64(1)]),
    st.tuples(st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 2), st.integers(0, 2))),
)
layouts = mostly(st.sampled_from(["NCHW", "NHWC"]), st.one_of(junk, st.sampled_from(["nchw", "CHWN", ""])))
algorithms = mostly(st.sampled_from(ALGORITHMS + ("auto",)),
                    st.one_of(junk, st.sampled_from(["AUTO", "im2col", "", "kn2row-aa-ab "])))
threads_values = mostly(st.sampled_from([None] + list(range(1, MAX_THREADS + 1))),
                        st.one_of(junk, st.sampled_from([0, MAX_THREADS + 1, -1] + BLAS_INTS)))
memory_limits = mostly(st.sampled_from([None, 0, 1, 4096, 2**20, np.int64(2**16), 2**70]),
                       st.one_of(junk, st.sampled_from([-1, 10**400, math.inf, 1e6])))

# ------------------------------------------------------------------ arrays

USABLE = ["plain", "plain", "plain", "fortran", "strided", "zero-stride", "nan"]
UNUSABLE = ["masked", "matrix", "float64", "float16", "int32", "object", "bool", "big-endian", "list",
            "scalar", "None"]


def make_array(shape, variant):
    """A small array of ``shape`` in one of many (mostly unusable) forms."""
    size = int(np.prod(shape))
    base = (np.arange(size) % 5 - 2).astype(np.float32).reshape(shape)
    if variant == "plain":
        return base
    if variant == "fortran":
        return np.asfortranarray(base)
    if variant == "strided":
        wide = np.zeros(shape[:-1] + (2 * shape[-1],), np.float32) if shape else np.zeros(2, np.float32)
        view = wide[..., ::2] if shape else wide[::2]
        view[...] = base
        return view
    if variant == "zero-stride":
        return np.lib.stride_tricks.as_strided(np.ones(1, np.float32), shape=shape,
                                               strides=(0,) * len(shape))
    if variant == "nan":
        out = base.copy()
        if size:
            out.flat[size // 2] = np.nan
        return out
    if variant == "masked":
        return np.ma.MaskedArray(base, mask=np.arange(size).reshape(shape) % 3 == 0)
    if variant == "matrix":
        return np.asmatrix(base.reshape(1, -1)) if size else np.asmatrix(np.zeros((1, 0), np.float32))
    if variant in ("float64", "float16", "int32", "object", "bool"):
        return base.astype(variant)
    if variant == "big-endian":
        return base.astype(">f4")
    if variant == "list":
        return base.tolist()
    if variant == "scalar":
        return np.float32(1.0)
    return None


@st.composite
def arrays_of(draw, shape, usable=True):
    """An array of ``shape`` in a form the API accepts (``usable``), or of a
    wrong number of dimensions or in a form it must refuse."""
    if usable:
        return make_array(shape, draw(st.sampled_from(USABLE)))
    ndim_change = draw(st.sampled_from([0, 0, -1, 1, "zero"]))
    if ndim_change == -1:
        shape = shape[1:]
    elif ndim_change == 1:
        shape = (1,) + shape
    elif ndim_change == "zero":
        shape = ()
    return make_array(shape, draw(st.sampled_from(USABLE + UNUSABLE if ndim_change else UNUSABLE)))


def snapshot(value):
    """Everything about an argument's contents that a call must not change."""
    if isinstance(value, np.ma.MaskedArray):
        return ("masked", np.ma.getdata(value).tobytes(), np.ma.getmaskarray(value).tobytes())
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, np.array(value, copy=True).tobytes())
    if isinstance(value, list):
        return ("list", repr(value))
    return ("other", repr(value))


# ------------------------------------------------------------------ calls


CALL_ARGUMENTS = ("x", "weight", "bias", "stride", "padding", "dilation", "groups", "algorithm",
                  "threads", "layout", "memory_limit", "workspace", "out")


@st.composite
def conv_calls(draw):
    """Arguments of a conv2d call: a coherent configuration with up to two
    arguments garbled (anything at all), and sometimes a channel mismatch."""
    garbled = draw(st.sets(st.sampled_from(CALL_ARGUMENTS), max_size=2))

    def pick(name, valid, bad=junk):
        return draw(bad if name in garbled else valid)

    groups = pick("groups", st.sampled_from([1, 1, 2, np.int64(2), 3]))
    g = int(groups) if isinstance(groups, (int, np.integer)) and not isinstance(groups, (bool, np.bool_)) \
        and 1 <= groups <= 3 else 1
    c_per_group, m_per_group = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n, h, w = draw(st.sampled_from([0, 1, 2])), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    layout = pick("layout", st.sampled_from(["NCHW", "NHWC"]), layouts)
    c = c_per_group * g + draw(st.sampled_from([0, 0, 0, 0, 0, 0, 1]))  # sometimes a mismatch
    x_shape = (n, h, w, c) if is_nhwc(layout) else (n, c, h, w)
    if draw(st.booleans()):
        x_shape = x_shape[1:]  # unbatched
    m = m_per_group * g
    bias_shape = (m,) if "bias" not in garbled else (m + 1,)
    args = dict(
        x=draw(arrays_of(x_shape, "x" not in garbled)),
        weight=draw(arrays_of((m, c_per_group, kh, kw), "weight" not in garbled)),
        bias=draw(st.one_of(st.none(), arrays_of(bias_shape, "bias" not in garbled))),
        stride=pick("stride", strides),
        padding=pick("padding", paddings),
        dilation=pick("dilation", dilations),
        groups=groups,
        algorithm=pick("algorithm", st.sampled_from(ALGORITHMS + ("auto", "auto")), algorithms),
        threads=pick("threads", st.sampled_from([None] + list(range(1, MAX_THREADS + 1))), threads_values),
        layout=layout,
        memory_limit=pick("memory_limit", st.sampled_from([None, None, 0, 4096, 2**20, np.int64(2**16), 2**70]),
                          memory_limits),
    )
    args["workspace"] = pick("workspace", st.sampled_from(["none", "growable", "fixed-large"]),
                             st.one_of(st.just("fixed-empty"), junk))
    args["out"] = pick("out", st.sampled_from(["none", "none", "right", "right-fortran"]),
                       st.one_of(st.sampled_from(["wrong-shape", "wrong-dtype", "masked", "overlaps-x"]), junk))
    return args


def is_nhwc(layout):
    return isinstance(layout, str) and layout == "NHWC"


def workspace_for(kind):
    if not isinstance(kind, str):
        return kind
    return {"none": None, "growable": ln.Workspace(), "fixed-empty": ln.Workspace(0, fixed=True),
            "fixed-large": ln.Workspace(2**20, fixed=True)}.get(kind, kind)


def expected_geometry(args):
    """The geometry conv2d should use, or None when the arguments are invalid."""
    try:
        x, weight = args["x"], args["weight"]
        if not (type(x) is np.ndarray and type(weight) is np.ndarray and x.dtype == weight.dtype == np.float32):
            return None
        shape = x.shape
        if is_nhwc(args["layout"]) and len(shape) in (3, 4):
            shape = shape[:-3] + (shape[-1],) + shape[-3:-1]
        return ln._geometry.make_geometry(shape, weight.shape, args["stride"], args["padding"], args["dilation"],
                                args["groups"])
    except (TypeError, ValueError):
        return None


def out_for(kind, args):
    g = expected_geometry(args)
    if not isinstance(kind, str):
        return kind
    if kind == "none":
        return None
    if kind == "overlaps-x":
        return args["x"]
    small = g is not None and np.prod([max(1, s) for s in g.output_shape], dtype=object) < 10**6
    shape = g.output_shape if small else (1, 1, 1, 1)
    if is_nhwc(args["layout"]):
        shape = (shape[0], shape[2], shape[3], shape[1])
    if g is not None and isinstance(args["x"], np.ndarray) and args["x"].ndim == 3:
        shape = shape[1:]
    out = np.full(shape, 7.0, np.float32)
    if kind == "right-fortran":
        return np.asfortranarray(out) if out.ndim > 1 and min(out.shape) > 1 else out
    if kind == "wrong-shape":
        return np.full(tuple(s + 1 for s in shape), 7.0, np.float32)
    if kind == "wrong-dtype":
        return out.astype(np.float64)
    if kind == "masked":
        return np.ma.MaskedArray(out, mask=np.zeros(shape, bool))
    return out


def reference(args, g):
    x = np.asarray(args["x"], dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    if is_nhwc(args["layout"]):
        x = x.transpose(0, 3, 1, 2)
    y = conv2d_reference(x, np.asarray(args["weight"]), args["bias"], g.stride, g.padding, g.dilation,
                         g.groups)
    if is_nhwc(args["layout"]):
        y = y.transpose(0, 2, 3, 1)
    return y if np.ndim(args["x"]) == 4 else y[0]


def run_and_check(call, arrays, out):
    """Run ``call``: only TypeError/ValueError may escape; ``arrays`` stay unchanged,
    and so does ``out`` when the call fails.  Returns the result or the error."""
    before = [snapshot(a) for a in arrays]
    out_before = snapshot(out)
    try:
        result = call()
    except (TypeError, ValueError) as error:
        assert snapshot(out) == out_before, "a failed call wrote into out"
        result = error
    for value, earlier in zip(arrays, before):
        assert snapshot(value) == earlier, "an input array was modified"
    return result


def check_result(result, args, out):
    if isinstance(result, Exception):
        return
    g = expected_geometry(args)
    assert g is not None, "a call with invalid arguments succeeded"
    assert isinstance(result, np.ndarray) and result.dtype == np.float32
    if out is not None:
        assert result is out
    if not (np.isfinite(args["weight"]).all() and (args["bias"] is None or np.isfinite(args["bias"]).all())):
        return  # a NaN weight times zero padding is NaN in the reference, skipped padding in ours
    np.testing.assert_allclose(result, reference(args, g), rtol=1e-5, atol=1e-4, equal_nan=True)


@FUZZ
@given(conv_calls())
def test_conv2d_raises_only_type_or_value_errors(args):
    args = dict(args)
    args["workspace"] = workspace_for(args["workspace"])
    out = args["out"] = out_for(args["out"], args)
    inputs = [args["x"], args["weight"], args["bias"]]
    result = run_and_check(lambda: ln.conv2d(**args), inputs, out)
    check_result(result, args, out)


@FUZZ
@given(conv_calls(), st.sampled_from(["none", "at-construction", "junk"]), junk)
def test_layer_raises_only_type_or_value_errors(args, input_shape_kind, junk_shape):
    args = dict(args)
    workspace = workspace_for(args["workspace"])
    out = args["out"] = out_for(args["out"], args)
    x = args["x"]
    input_shape = {"none": None, "at-construction": getattr(x, "shape", x), "junk": junk_shape}[input_shape_kind]
    inputs = [x, args["weight"], args["bias"]]
    layer_args = {k: args[k] for k in ("weight", "bias", "stride", "padding", "dilation", "groups",
                                      "algorithm", "threads", "layout", "memory_limit")}
    layer = run_and_check(lambda: ln.Conv2d(**layer_args, workspace=workspace, input_shape=input_shape),
                          inputs, out)
    if isinstance(layer, Exception):
        return
    assert isinstance(layer, ln.Conv2d)
    result = run_and_check(lambda: layer(x, out=out), inputs, out)
    check_result(result, args, out)
    shape = getattr(x, "shape", x)
    for query in (lambda: layer.workspace_bytes_for(shape), lambda: layer.plan_for(shape),
                  lambda: ln.Workspace.shared_by([layer], [shape], fixed=args["groups"]),
                  lambda: repr(layer), lambda: layer.persistent_bytes):
        run_and_check(query, inputs, None)


shapes = st.one_of(
    st.lists(st.one_of(st.integers(-2, 9), st.sampled_from(HUGE_INTS), numpy_ints), max_size=5).map(tuple),
    junk,
)
w_shapes = st.one_of(
    st.lists(st.one_of(st.integers(-2, 5), st.sampled_from(HUGE_INTS), numpy_ints), max_size=5).map(tuple),
    junk,
)


SHAPE_ARGUMENTS = ("name", "x_shape", "w_shape", "stride", "padding", "dilation", "groups", "layout",
                   "threads", "memory_limit", "mode", "prepacked")


@st.composite
def shape_queries(draw):
    """Arguments of the shape-only functions, up to three of them garbled."""
    garbled = draw(st.sets(st.sampled_from(SHAPE_ARGUMENTS), max_size=3))

    def pick(name, valid, bad=junk):
        return draw(bad if name in garbled else valid)

    groups = pick("groups", st.sampled_from([1, 2, np.int64(2)]))
    g = int(groups) if isinstance(groups, (int, np.integer)) and groups in (1, 2) else 1
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    c_per_group, m = draw(st.integers(1, 3)), g * draw(st.integers(1, 3))
    n, h, w = draw(st.integers(0, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    layout = pick("layout", st.sampled_from(["NCHW", "NHWC"]), layouts)
    x_shape = (n, h, w, c_per_group * g) if is_nhwc(layout) else (n, c_per_group * g, h, w)
    return dict(
        name=pick("name", st.sampled_from(ALGORITHMS + ("auto",)), algorithms),
        x_shape=pick("x_shape", st.sampled_from([x_shape, x_shape[1:], x_shape[:2] + (2**31,) + x_shape[3:],
                                                 x_shape[:3] + (2**31 - 1,)]), shapes),
        w_shape=pick("w_shape", st.just((m, c_per_group, kh, kw)), w_shapes),
        stride=pick("stride", strides), padding=pick("padding", paddings), dilation=pick("dilation", dilations),
        groups=groups, layout=layout,
        threads=pick("threads", st.sampled_from([None] + list(range(1, MAX_THREADS + 1))), threads_values),
        memory_limit=pick("memory_limit", st.sampled_from([None, 0, 4096, 2**20, 2**70]), memory_limits),
        mode=pick("mode", st.just("model")),
        prepacked=pick("prepacked", st.booleans()),
    )


@FUZZ
@given(shape_queries())
def test_shape_functions_raise_only_type_or_value_errors(query):
    q = query
    conv = (q["stride"], q["padding"], q["dilation"], q["groups"])
    assert isinstance(ln.algorithms(), tuple)
    supported = run_and_check(lambda: ln.supports(q["name"], q["x_shape"], q["w_shape"], *conv,
                                                  layout=q["layout"]), [], None)
    assert isinstance(supported, (bool, Exception))
    size = run_and_check(lambda: ln.workspace_bytes(q["name"], q["x_shape"], q["w_shape"], *conv,
                                                    threads=q["threads"], layout=q["layout"],
                                                    memory_limit=q["memory_limit"]), [], None)
    assert isinstance(size, (int, Exception)) and not isinstance(size, bool)
    if isinstance(size, int):
        assert size >= 0
    chosen = run_and_check(lambda: ln.plan(q["x_shape"], q["w_shape"], *conv, memory_limit=q["memory_limit"],
                                           threads=q["threads"], layout=q["layout"], mode=q["mode"],
                                           prepacked=q["prepacked"]), [], None)
    if not isinstance(chosen, Exception):
        assert chosen.algorithm in ALGORITHMS
        run_and_check(chosen.explain, [], None)


@pytest.mark.parametrize("memory_limit", [0, 2**70, 10**400])
def test_extreme_memory_limits_plan_and_explain(memory_limit):
    # Example-based companions of the fuzz, for the values it finds hardest.
    chosen = ln.plan((1, 4, 8, 8), (4, 4, 3, 3), padding=1, memory_limit=memory_limit)
    assert chosen.algorithm in ALGORITHMS and "plan" in chosen.explain()


def test_planning_huge_padding_terminates():
    # A valid but enormous padding is a shape-only question: planning it must
    # answer at once, not loop over its border rows (run apart, with a timeout,
    # so a regression fails instead of hanging the suite).
    import subprocess

    from subprocess_helper import run_python

    code = """
        import lowmem_numba as ln
        for padding in (2**16, 2**31):
            print(ln.plan((1, 1, 4, 4), (1, 1, 3, 3), padding=padding, threads=1).algorithm)
            print(ln.workspace_bytes("auto", (1, 1, 4, 4), (1, 1, 3, 3), padding=padding, threads=1))
    """
    try:
        result = run_python(code, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("planning a convolution with padding 2**16 or 2**31 took over a minute")
    assert result.returncode == 0, result.stderr
