"""The functional API: conv2d, algorithms, supports, workspace_bytes."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import numpy as np

from . import _algorithms  # noqa: F401  (registers every algorithm)
from . import _registry as registry
from ._geometry import (
    ConvGeometry,
    ConvParams,
    check_array,
    check_bias,
    check_flag,
    check_memory_limit,
    check_out,
    check_threads,
    geometry_for,
    make_geometry,
    parse_params,
)
from ._layout import check_layout, from_nchw_shape, to_nchw_shape
from ._execute import execute
from ._plan import FLOAT32_BYTES, CallPlan
from ._scheduler import MEMO_SIZE, WINOGRAD_FAMILY, plan_geometry
from ._costmodel import loaded_calibration
from ._memo import Memo, Uncacheable, array_signature, frozen
from ._threads import max_threads
from ._workspace import Workspace, check_workspace, empty_at_offset_of

_NO_BIAS = np.empty(0, dtype=np.float32)


def algorithms() -> tuple[str, ...]:
    """Names of the registered algorithms, spelled as in the paper's library.

    Returns
    -------
    tuple of str
    """
    return registry.names()


@dataclasses.dataclass(frozen=True)
class AlgorithmInfo:
    """What :func:`describe` tells about an algorithm.

    Attributes
    ----------
    name : str
    family : str
        The family module it comes from (``"im2col"``, ``"kn2row"``, ``"ukernel"``...).
    summary : str
        One line on what it does.
    claims : str
        The configurations it supports, in words (:func:`supports` decides
        for a given shape).
    input_layout, output_layout : {"NCHW", "NHWC"}
        Its kernel's own layouts; calls in the other layout convert one image
        at a time through buffers :func:`workspace_bytes` counts.
    workspace_formula : str
        Its workspace in float32 elements, as a formula.
    """

    name: str
    family: str
    summary: str
    claims: str
    input_layout: str
    output_layout: str
    workspace_formula: str

    def __str__(self) -> str:
        return (f"{self.name} ({self.family}): {self.summary}\n  supports: {self.claims}\n"
                f"  layouts: {self.input_layout} -> {self.output_layout}\n"
                f"  workspace (float32 elements): {self.workspace_formula}")


def describe(name) -> AlgorithmInfo:
    """Describe a registered algorithm.

    Parameters
    ----------
    name : str
        A name from :func:`algorithms`.

    Returns
    -------
    AlgorithmInfo
        Family, summary, supported configurations, layouts and workspace
        formula; ``print()`` it for a readable form.

    Raises
    ------
    TypeError, ValueError
        If ``name`` is not a string or not a registered algorithm.
    """
    a = registry.get(name)
    return AlgorithmInfo(a.name, a.family, a.summary, a.claims, a.input_layout, a.output_layout,
                         a.workspace_formula)


def resolve_algorithm(name, geometry, winograd=True):
    """The Algorithm ``name`` names; raises if it does not support ``geometry``
    or is a Winograd algorithm while ``winograd`` is False."""
    algorithm = registry.get(name)
    reason = algorithm.unsupported(geometry)
    if reason is not None:
        able = [n for n in registry.names() if registry.get(n).unsupported(geometry) is None]
        raise ValueError(
            f"algorithm {name!r} does not support {reason}; algorithms that support this "
            f"configuration: {', '.join(able)}"
        )
    if not winograd and algorithm.family == WINOGRAD_FAMILY:
        raise ValueError(f"algorithm {name!r} is a Winograd algorithm, which winograd=False excludes")
    return algorithm


def choose_algorithm(name, geometry, threads, layout, memory_limit, prepacked=False, winograd=True):
    """(Algorithm, threads) for a call: planned for "auto", else as asked."""
    prepacked = check_flag(prepacked, "prepacked")
    winograd = check_flag(winograd, "winograd")
    if isinstance(name, str) and name == "auto":
        chosen = plan_geometry(geometry, memory_limit=memory_limit, threads=threads, layout=layout,
                               prepacked=prepacked, winograd=winograd)
        return registry.get(chosen.algorithm), chosen.threads
    algorithm = resolve_algorithm(name, geometry, winograd)
    if memory_limit is not None:
        needed = algorithm.plan(geometry, threads, layout, prepacked, memory_limit).workspace_bytes
        if needed > memory_limit:
            raise ValueError(f"algorithm {name!r} needs {needed} bytes of workspace here, over "
                             f"memory_limit={memory_limit}; use algorithm=\"auto\" to pick one that fits")
    return algorithm, threads


def supports(name, x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, *,
             layout="NCHW") -> bool:
    """Whether an algorithm handles a convolution configuration.

    Parameters
    ----------
    name : str
        A registered algorithm name (see :func:`algorithms`).
    x_shape : tuple of int
        Input shape, (N, C, H, W) or (C, H, W).
    w_shape : tuple of int
        Weight shape (M, C/groups, kh, kw).
    stride, padding, dilation, groups
        As for :func:`conv2d`.
    layout : {"NCHW", "NHWC"}, default "NCHW"
        Layout ``x_shape`` is given in.  Support does not depend on it: every
        algorithm runs in both layouts.

    Returns
    -------
    bool

    Raises
    ------
    TypeError, ValueError
        If ``name`` is unknown or the configuration itself is invalid (for
        example a channel mismatch); an unsupported but valid configuration
        returns False.
    """
    algorithm = registry.get(name)
    layout = check_layout(layout)
    geometry = make_geometry(to_nchw_shape(x_shape, layout), w_shape, stride, padding, dilation, groups)
    return algorithm.unsupported(geometry) is None


def workspace_bytes(name, x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1,
                    *, threads=None, layout="NCHW", memory_limit=None, winograd=True) -> int:
    """Temporary memory one :func:`conv2d` call with this algorithm uses.

    That is everything beyond x, weight, bias and the output: scratch buffers
    and any per-call weight repacking or layout conversion.  It depends on the
    thread count because threads get disjoint scratch.  Non-contiguous inputs
    are additionally copied to contiguous ones, which this does not count.

    Parameters
    ----------
    name : str
        A registered algorithm name, or ``"auto"``.
    x_shape, w_shape, stride, padding, dilation, groups
        As for :func:`supports`; ``x_shape`` is in ``layout``.
    threads : int, optional
        Thread count of the call (for "auto": the thread budget); default all
        of Numba's threads.
    layout : {"NCHW", "NHWC"}, default "NCHW"
        Layout of the call's input and output.
    memory_limit : int, optional
        For "auto": the budget the choice is made under.
    winograd : bool, default True
        For "auto": whether Winograd algorithms may be chosen.

    Returns
    -------
    int
        Bytes.

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d` would for the same arguments.
    """
    layout = check_layout(layout)
    geometry = make_geometry(to_nchw_shape(x_shape, layout), w_shape, stride, padding, dilation, groups)
    threads = check_threads(threads, max_threads())
    memory_limit = check_memory_limit(memory_limit)
    algorithm, threads = choose_algorithm(name, geometry, threads, layout, memory_limit, False, winograd)
    return algorithm.plan(geometry, threads, layout, memory_limit=memory_limit).workspace_bytes


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algorithm="auto", threads=None, out=None, layout="NCHW", workspace=None,
           memory_limit=None, winograd=True) -> np.ndarray:
    """2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``).

    Parameters
    ----------
    x : numpy.ndarray, float32
        Input, shape (N, C, H, W) or (C, H, W) for a single image; with
        ``layout="NHWC"``, (N, H, W, C) or (H, W, C).  Any strides and
        alignment; an input that is not C-contiguous, or not aligned to 4
        bytes, is copied first.  N may be 0 (the result is then empty, and
        nothing is computed or allocated besides it).
    weight : numpy.ndarray, float32
        Kernels, shape (M, C/groups, kh, kw).
    bias : numpy.ndarray, float32, optional
        Shape (M,).  Default: no bias.
    stride : int or (int, int), default 1
        Step between output pixels, each >= 1.
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same", default 0
        Zero padding: both sides alike, per dimension (pad_h, pad_w), or
        ((top, bottom), (left, right)).  ``"same"`` follows torch (the odd
        extra pixel goes bottom/right) and requires stride 1.
    dilation : int or (int, int), default 1
        Spacing between kernel taps, each >= 1.
    groups : int, default 1
        Number of channel groups; must divide C and M.
    algorithm : str, default "auto"
        A name from :func:`algorithms`, or ``"auto"``: the scheduler picks the
        fastest algorithm and thread count (see :func:`lowmem_numba.plan`)
        whose workspace fits ``memory_limit``.
    threads : int, optional
        Threads to run on (for "auto": at most this many), 1 to
        ``numba.config.NUMBA_NUM_THREADS``; default all.
    out : numpy.ndarray, float32, optional
        C-contiguous array of the output shape to write into; it must not
        overlap the inputs.  When given, no output is allocated.
    layout : {"NCHW", "NHWC"}, default "NCHW"
        Layout of ``x`` and of the result (weights stay (M, C/groups, kh, kw)).
        Algorithms whose kernels use the other layout convert one image at a
        time through a buffer that :func:`workspace_bytes` counts.
    workspace : Workspace, optional
        Arena to carve temporary memory from (grown once if too small, unless
        it is fixed).  Default: a fresh buffer for this call.
    memory_limit : int, optional
        Largest workspace in bytes the call may use: None for no limit, 0 for
        zero-workspace algorithms only.  A named algorithm over the limit is
        an error.
    winograd : bool, default True
        Whether "auto" may choose a Winograd algorithm (3x3 and 5x5, stride
        1): fewer multiplications, but rounding errors up to several times
        those of direct summation (measured in the README).  False keeps to
        algorithms that sum every product; naming a Winograd algorithm then
        is an error.

    Returns
    -------
    numpy.ndarray, float32
        Shape (N, M, Ho, Wo), or (M, Ho, Wo) for unbatched input; in NHWC,
        (N, Ho, Wo, M) or (Ho, Wo, M).  ``out`` if given.

    Raises
    ------
    TypeError
        If an array is not a float32 ndarray (no silent casting; masked arrays
        and ``numpy.matrix`` are refused too), or an argument has the wrong
        type (Python and numpy integers are both ints; bools are not).
    ValueError
        If shapes or hyper-parameters are inconsistent or out of range, ``out``
        is unusable, the algorithm is unknown or does not support the
        configuration (which includes any of its GEMM sizes exceeding the
        32-bit BLAS interface), or a fixed ``workspace`` is too small.  All
        of these are raised before anything is allocated.

    Notes
    -----
    The inputs are never modified.  NaN and inf propagate to the outputs whose
    receptive field holds them.  Safe to call from several Python threads at once.
    """
    check_array(x, "x")
    check_array(weight, "weight")
    # Parsed only when the call is not memoised (see planned_call).  The steps
    # written out rather than through prepare_call, a Call and a launch
    # helper: each Python call costs 0.2-0.5 us after a kernel has evicted the
    # interpreter's data, and this path (with the memo key built inline) took
    # 2.6-3.0 us less of GoogLeNet's 480->16 and 192->16 layers (26.7 against
    # 29.7 us, timed between calls).
    plan, _, out_shape = planned_call(x.shape, (weight.shape, stride, padding, dilation, groups), bias, algorithm,
                                      threads, layout, memory_limit, False, winograd)
    if out is None and workspace is None:
        out = new_output(plan, out_shape, x)
    else:
        out = provide_out(out, out_shape, workspace, plan, x, {"bias": bias, "weight": weight})
    if out.size:
        execute(plan, kernel_input(x), np.ascontiguousarray(weight).reshape(-1), flat_bias(bias), out.reshape(-1),
                workspace)
    return out


class Call(NamedTuple):
    """A validated convolution call, ready to launch (a named tuple: built on
    every functional call, in a third of a frozen dataclass's 0.5 us)."""

    plan: CallPlan
    algorithm: registry.Algorithm
    out: np.ndarray
    workspace: Optional[Workspace]

    @property
    def geometry(self) -> ConvGeometry:
        return self.plan.geometry


def prepare_call(x, params, bias, algorithm, threads, out, layout, workspace, other_inputs,
                 memory_limit=None, prepacked=False, winograd=True) -> Call:
    """Validate everything about a call and provide its output array.

    ``params`` as for :func:`planned_call`; ``other_inputs`` names further
    arrays ``out`` must not overlap.  Every check runs before anything is
    allocated, including whether a fixed ``workspace`` is large enough.
    """
    check_array(x, "x")
    plan, chosen, out_shape = planned_call(x.shape, params, bias, algorithm, threads, layout, memory_limit,
                                           prepacked, winograd)
    out = provide_out(out, out_shape, workspace, plan, x, {"bias": bias, **other_inputs})
    return Call(plan, chosen, out, workspace)


def planned_call(x_shape, params, bias, algorithm, threads, layout, memory_limit, prepacked, winograd):
    """``(plan, algorithm, output shape)`` of a call whose input has
    ``x_shape``, every shape-dependent argument validated.

    ``params`` are the call's parsed hyper-parameters (:func:`parse_params`,
    the one parser :func:`conv2d` and :class:`Conv2d` share), or, from
    :func:`conv2d`, the raw ``(weight.shape, stride, padding, dilation,
    groups)``, parsed only when the call is not memoised yet (a second memo
    lookup, for the parsing, cost 1.3 us of a 15 us call).

    What depends only on the shapes and arguments (the geometry, the choice of
    algorithm and its plan) is memoised per process, keyed on the arguments as
    given (:func:`~lowmem_numba._memo.frozen`, written out for the plain
    ints, strings and None of most calls); the arrays themselves (``x``'s
    type and dtype, ``out``, the workspace) are checked by the caller on
    every call.
    """
    try:
        # The calibration in force steers "auto": plans made under another one
        # are not reused.  Read without loading or measuring it, so that bad
        # arguments are refused before any calibration (the first valid call
        # then plans under the one it loads, and is memoised under it).
        auto = isinstance(algorithm, str) and algorithm == "auto"
        key = (x_shape, _params_key(params), None if bias is None else array_signature(bias),
               algorithm if type(algorithm) is str else frozen(algorithm),
               threads if threads is None or type(threads) is int else frozen(threads),
               layout if type(layout) is str else frozen(layout),
               memory_limit if memory_limit is None or type(memory_limit) is int else frozen(memory_limit),
               frozen(prepacked), _TRUE_KEY if winograd is True else frozen(winograd), max_threads(),
               loaded_calibration() if auto else None, registry.generation())
    except Uncacheable:
        key = None
    planned = None if key is None else _planned_calls.get(key)
    if planned is None:
        planned = _plan_call(x_shape, params, bias, algorithm, threads, layout, memory_limit, prepacked,
                             winograd)
        if key is not None:
            _planned_calls.put(key, planned)
    return planned


def provide_out(out, out_shape, workspace, plan, x, other_inputs) -> np.ndarray:
    """Check a call's ``workspace`` (large enough for ``plan``) and ``out``
    (of ``out_shape``, not overlapping ``x`` nor ``other_inputs``), then
    return ``out``, or a new array (:func:`new_output`) when it is None."""
    check_workspace(workspace)
    if workspace is not None:
        workspace.check_fits(plan.workspace_elements)
    if out is None:
        return new_output(plan, out_shape, x)
    check_out(out, out_shape, {"x": x, **other_inputs})
    return out


def new_output(plan, out_shape, x) -> np.ndarray:
    """A new output array for ``plan``'s call on ``x``: starting as far from
    a cache line as ``x`` where the plan's stores then line up with its
    loads (:attr:`~lowmem_numba._plan.CallPlan.aligns_output`), else where
    numpy puts it."""
    if plan.aligns_output:
        return empty_at_offset_of(x, out_shape)
    return np.empty(out_shape, dtype=np.float32)


#: The key of a ``True`` argument (not ``True``, which equals ``1``).
_TRUE_KEY = frozen(True)
#: Validated calls: (plan, algorithm, output shape) per shapes and arguments.
_planned_calls = Memo(MEMO_SIZE)


def _params_key(params):
    """The memo key of parsed or raw hyper-parameters (see :func:`prepare_call`):
    raw ones keyed as given, types included (the weight shape is an array's,
    a tuple of ints)."""
    if isinstance(params, ConvParams):
        return params
    w_shape, stride, padding, dilation, groups = params
    return (w_shape, stride if type(stride) is int else frozen(stride),
            padding if type(padding) is int else frozen(padding),
            dilation if type(dilation) is int else frozen(dilation), groups if type(groups) is int else frozen(groups))


def _plan_call(x_shape, params, bias, algorithm, threads, layout, memory_limit, prepacked, winograd):
    """Validate the shape-dependent arguments of a call and plan it:
    (CallPlan, Algorithm, output shape in the call's layout)."""
    if not isinstance(params, ConvParams):
        params = parse_params(*params)
    prepacked = check_flag(prepacked, "prepacked")
    layout = check_layout(layout)
    geometry = geometry_for(to_nchw_shape(x_shape, layout), params)
    check_bias(bias, geometry)
    threads = check_threads(threads, max_threads())
    memory_limit = check_memory_limit(memory_limit)
    chosen, threads = choose_algorithm(algorithm, geometry, threads, layout, memory_limit, prepacked, winograd)
    plan = chosen.plan(geometry, threads, layout, prepacked, memory_limit)
    out_shape = from_nchw_shape(geometry.output_shape, layout)
    if len(x_shape) == 3:
        out_shape = out_shape[1:]
    # numpy refuses such a shape even with a zero in it (an empty batch).
    if FLOAT32_BYTES * int(np.prod([max(1, s) for s in out_shape], dtype=object)) > np.iinfo(np.intp).max:
        raise ValueError(f"the output, of shape {out_shape}, would be too large to allocate")
    return plan, chosen, out_shape


def kernel_input(x) -> np.ndarray:
    """A validated input as the kernels read it: flat, C-contiguous and
    starting on a float boundary (the plans of direct-pixels' 1x1 layers
    read it in place without asking where it lies).  A view when it is so
    already, else a copy (a float32 array off a 4-byte boundary can only be
    built on purpose, from a buffer at an odd offset)."""
    x = np.ascontiguousarray(x)
    if not x.flags.aligned:
        x = x.copy()
    return x.reshape(-1)


def flat_bias(bias) -> np.ndarray:
    """A validated bias as the kernels read it: contiguous, empty for none."""
    return _NO_BIAS if bias is None else np.ascontiguousarray(bias)
