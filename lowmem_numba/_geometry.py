"""Convolution geometry and argument validation.

Every check on the arguments of a convolution lives here, and runs before any
allocation or kernel.  The result is a :class:`ConvGeometry`, an immutable record
of the sizes every other module works from.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ._kernel_geometry import kernel_record
from ._memo import Memo, Uncacheable, frozen

#: Largest dimension the 32-bit (LP64) BLAS interface accepts.
BLAS_INT_MAX = 2**31 - 1

#: Largest size, stride, dilation or padding accepted.  The kernels take the
#: geometry as 64-bit ints and add up to three such values (a padded size), so
#: this keeps their index arithmetic far from overflow.
SIZE_MAX = 2**60

_PADDING_HELP = (
    'an int, (pad_h, pad_w), ((top, bottom), (left, right)), "valid" or "same"'
)


@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one 2-D convolution, in NCHW terms.

    Padding is explicit and possibly asymmetric; output sizes are derived.
    """

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel_h: int
    kernel_w: int
    groups: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int

    @property
    def out_height(self) -> int:
        span = self.dilation_h * (self.kernel_h - 1) + 1
        return (self.height + self.pad_top + self.pad_bottom - span) // self.stride_h + 1

    @property
    def out_width(self) -> int:
        span = self.dilation_w * (self.kernel_w - 1) + 1
        return (self.width + self.pad_left + self.pad_right - span) // self.stride_w + 1

    @property
    def channels_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_channels_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def kernel_taps(self) -> int:
        return self.kernel_h * self.kernel_w

    @property
    def reduction_size(self) -> int:
        """Length of each output element's dot product: C/groups * kh * kw."""
        return self.channels_per_group * self.kernel_taps

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.channels_per_group, self.kernel_h, self.kernel_w)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @property
    def flops(self) -> int:
        """Multiply-adds counted as two flops, for the whole batch."""
        return (
            2
            * self.batch
            * self.out_channels
            * self.reduction_size
            * self.out_height
            * self.out_width
        )

    @property
    def stride(self) -> tuple[int, int]:
        return (self.stride_h, self.stride_w)

    @property
    def dilation(self) -> tuple[int, int]:
        return (self.dilation_h, self.dilation_w)

    @property
    def padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return ((self.pad_top, self.pad_bottom), (self.pad_left, self.pad_right))

    @cached_property
    def kernel_record(self) -> tuple:
        """The plain tuple of ints compiled kernels are launched with
        (:func:`~lowmem_numba._kernel_geometry.kernel_record`), built once."""
        return kernel_record(self)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    """Parse an int or a pair of ints, each at least ``minimum``."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(_is_int(v) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (h, w); got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}")
    if max(pair) > SIZE_MAX:
        raise ValueError(f"{name} must be <= 2**60; got {value!r}")
    return pair


def _same_padding(kernel: int, dilation: int) -> tuple[int, int]:
    # torch's rule: the odd extra pixel goes after (bottom/right).
    total = dilation * (kernel - 1)
    return (total // 2, total - total // 2)


def _parse_padding(padding, kernel_hw, stride, dilation) -> tuple[int, int, int, int]:
    """Return (top, bottom, left, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(
                    f'padding="same" requires stride 1 (as in torch); got stride {stride}'
                )
            top, bottom = _same_padding(kernel_hw[0], dilation[0])
            left, right = _same_padding(kernel_hw[1], dilation[1])
            return (top, bottom, left, right)
        raise ValueError(f"padding must be {_PADDING_HELP}; got the string {padding!r}")
    if _is_int(padding):
        pads = (int(padding),) * 4
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(_is_int(p) for p in padding):
            pads = (int(padding[0]), int(padding[0]), int(padding[1]), int(padding[1]))
        elif all(
            isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(q) for q in p)
            for p in padding
        ):
            (top, bottom), (left, right) = padding
            pads = (int(top), int(bottom), int(left), int(right))
        else:
            raise TypeError(f"padding must be {_PADDING_HELP}; got {padding!r}")
    else:
        raise TypeError(f"padding must be {_PADDING_HELP}; got {padding!r}")
    if min(pads) < 0:
        raise ValueError(f"padding must be non-negative; got {padding!r}")
    if max(pads) > SIZE_MAX:
        raise ValueError(f"padding must be <= 2**60; got {padding!r}")
    return pads


def _shape(shape, name: str, ndims: tuple[int, ...]) -> tuple[int, ...]:
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a shape (a tuple of ints); got {shape!r}") from None
    if not all(_is_int(s) for s in shape):
        raise TypeError(f"{name} must contain ints; got {shape!r}")
    if len(shape) not in ndims:
        dims = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must have {dims} dimensions; got shape {shape}")
    if min(shape) < 0:
        raise ValueError(f"{name} must not have negative sizes; got {shape}")
    if max(shape) > SIZE_MAX:
        raise ValueError(f"{name} must not have sizes over 2**60; got {shape}")
    return tuple(int(s) for s in shape)


@dataclass(frozen=True)
class ConvParams:
    """The shape-independent part of a convolution: weight shape and hyper-parameters.

    Parsed and validated once by :func:`parse_params`; :func:`geometry_for` then
    combines it with an input shape.  A :class:`lowmem_numba.Conv2d` layer keeps
    one, so a layer and :func:`lowmem_numba.conv2d` accept and reject exactly the
    same argument values.

    Attributes
    ----------
    weight_shape : tuple of int
        (M, C/groups, kh, kw).
    stride, dilation : tuple of int
        (h, w), each >= 1.
    padding : tuple of int
        (top, bottom, left, right), each >= 0.
    groups : int
    """

    weight_shape: tuple
    stride: tuple
    dilation: tuple
    padding: tuple
    groups: int

    @property
    def padding_pairs(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Padding as ((top, bottom), (left, right)), a form every call accepts."""
        top, bottom, left, right = self.padding
        return ((top, bottom), (left, right))

    @property
    def kernel_span(self) -> tuple[int, int]:
        """(h, w) extent of the dilated kernel, in input pixels."""
        _, _, kh, kw = self.weight_shape
        return (self.dilation[0] * (kh - 1) + 1, self.dilation[1] * (kw - 1) + 1)

    def smallest_input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """The smallest valid NCHW input: C channels and H, W just covering the kernel."""
        m, c_per_group, _, _ = self.weight_shape
        top, bottom, left, right = self.padding
        span_h, span_w = self.kernel_span
        return (batch, c_per_group * self.groups, max(1, span_h - top - bottom),
                max(1, span_w - left - right))


def parse_params(w_shape, stride=1, padding=0, dilation=1, groups=1) -> ConvParams:
    """Validate the weight shape and hyper-parameters of a convolution.

    Memoised on the arguments as given (types included), so that a repeated
    functional call does not parse them again.

    Parameters
    ----------
    w_shape : tuple of int
        Weight shape (M, C/groups, kh, kw).
    stride, padding, dilation, groups
        As for :func:`lowmem_numba.conv2d`; Python or numpy integers.

    Returns
    -------
    ConvParams

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If a value is out of range or ``groups`` does not divide M.
    """
    try:
        key = (frozen(w_shape), frozen(stride), frozen(padding), frozen(dilation), frozen(groups))
    except Uncacheable:
        return _parse_params(w_shape, stride, padding, dilation, groups)
    params = _parsed.get(key)
    if params is None:
        params = _parse_params(w_shape, stride, padding, dilation, groups)
        _parsed.put(key, params)
    return params


#: Parsed parameters per distinct argument tuple (each a few hundred bytes).
_parsed = Memo(512)


def _parse_params(w_shape, stride, padding, dilation, groups) -> ConvParams:
    w_shape = _shape(w_shape, "weight", (4,))
    m, c_per_group, kh, kw = w_shape
    if not _is_int(groups):
        raise TypeError(f"groups must be an int; got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1; got {groups}")
    if min(m, kh, kw) < 1 or c_per_group < 1:
        raise ValueError(f"weight must have every dimension >= 1; got shape {w_shape}")
    if m % groups:
        raise ValueError(f"groups={groups} must divide the output channels M={m}")
    stride = _pair(stride, "stride", 1)
    dilation = _pair(dilation, "dilation", 1)
    pads = _parse_padding(padding, (kh, kw), stride, dilation)
    return ConvParams(w_shape, stride, dilation, pads, groups)


def geometry_for(x_shape, params: ConvParams) -> ConvGeometry:
    """Combine an input shape with parsed parameters into a :class:`ConvGeometry`.

    Parameters
    ----------
    x_shape : tuple of int
        Input shape, (N, C, H, W) or unbatched (C, H, W).  N may be 0.
    params : ConvParams

    Raises
    ------
    TypeError, ValueError
        As :func:`make_geometry`, for the input shape.
    """
    x_shape = _shape(x_shape, "x", (3, 4))
    if len(x_shape) == 3:
        x_shape = (1,) + x_shape
    return _combine(x_shape, params)


def _combine(x_shape, params: ConvParams) -> ConvGeometry:
    n, c, h, w = x_shape
    m, c_per_group, kh, kw = params.weight_shape
    groups = params.groups
    if min(c, h, w) < 1:
        raise ValueError(f"x must have C, H and W >= 1; got shape {x_shape}")
    if c % groups:
        raise ValueError(f"groups={groups} must divide the input channels C={c}")
    if c_per_group * groups != c:
        raise ValueError(
            f"weight has {c_per_group} input channels per group, so with groups={groups} "
            f"x must have C={c_per_group * groups} channels; got C={c}"
        )
    top, bottom, left, right = params.padding
    geometry = ConvGeometry(
        n, c, h, w, m, kh, kw, groups, *params.stride, *params.dilation, top, bottom, left, right
    )
    span_h, span_w = params.kernel_span
    if h + top + bottom < span_h or w + left + right < span_w:
        raise ValueError(
            f"the kernel ({kh}x{kw}, dilation {params.dilation}, spanning {span_h}x{span_w}) is "
            f"larger than the padded input ({h + top + bottom}x{w + left + right})"
        )
    return geometry


def make_geometry(
    x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1
) -> ConvGeometry:
    """Validate the shapes and hyper-parameters of a convolution.

    Parameters
    ----------
    x_shape : tuple of int
        Input shape, (N, C, H, W) or unbatched (C, H, W).  N may be 0.
    w_shape : tuple of int
        Weight shape (M, C/groups, kh, kw).
    stride, padding, dilation, groups
        As for :func:`lowmem_numba.conv2d`.

    Returns
    -------
    ConvGeometry

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If the shapes or hyper-parameters are inconsistent or out of range.

    Notes
    -----
    Whether an algorithm's GEMMs fit the 32-bit BLAS interface depends on the
    algorithm; each one's ``unsupported`` checks its own dimensions (see
    :func:`blas_limit_reason`).
    """
    x_shape = _shape(x_shape, "x", (3, 4))
    if len(x_shape) == 3:
        x_shape = (1,) + x_shape
    return _combine(x_shape, parse_params(w_shape, stride, padding, dilation, groups))


def blas_limit_reason(sizes) -> str | None:
    """Why GEMM sizes do not fit the 32-bit BLAS interface, or None if they do.

    Parameters
    ----------
    sizes : mapping of str to int
        The largest value each GEMM dimension or leading dimension (m, n, k,
        lda, ldb, ldc) of an algorithm takes, labelled by what it is, e.g.
        ``{"lda = H*kw*C/g": ...}``.

    Returns
    -------
    str or None
        A reason naming the first size over :data:`BLAS_INT_MAX`, phrased to
        follow "does not support" in an error message.
    """
    for label, size in sizes.items():
        if size > BLAS_INT_MAX:
            return (
                f"GEMM sizes beyond the 32-bit BLAS interface: {label} = {size} exceeds "
                f"{BLAS_INT_MAX}; split the input into smaller tiles"
            )
    return None


#: numpy's native float32 dtype (a singleton: other float32 dtypes, such as
#: big-endian ones, are other objects, and compare as the full check says).
_FLOAT32 = np.dtype(np.float32)


def check_array(value, name: str) -> np.ndarray:
    """Require a float32 ndarray, without casting.

    Subclasses whose meaning the kernels would drop are refused: a
    ``numpy.ma.MaskedArray`` (its mask would be silently ignored) and a
    ``numpy.matrix`` (its shape and operators follow other rules).  Other
    subclasses (``numpy.memmap``...) are read as plain arrays.

    Raises
    ------
    TypeError
        If ``value`` is not such an array, or its dtype is not float32.
    """
    if type(value) is np.ndarray and value.dtype is _FLOAT32:  # every valid call: 0.07 us against 0.22
        return value
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy.ma.MaskedArray; its mask would be silently ignored, so masked "
            f"arrays are not accepted (pass {name}.filled(0) or np.ma.getdata({name}))"
        )
    if isinstance(value, np.matrix):
        raise TypeError(
            f"{name} must be a numpy.ndarray of dtype float32, not a numpy.matrix "
            f"(convert with np.asarray({name}))"
        )
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray of dtype float32; got {type(value).__name__} "
            f"(convert with np.asarray({name}, dtype=np.float32))"
        )
    if value.dtype != np.float32:
        raise TypeError(
            f"{name} must have dtype float32; got {value.dtype} "
            f"(convert with {name}.astype(np.float32))"
        )
    return value


def check_bias(bias, g: ConvGeometry) -> None:
    if bias is None:
        return
    check_array(bias, "bias")
    if bias.shape != (g.out_channels,):
        raise ValueError(
            f"bias must have shape (M,) = ({g.out_channels},); got {bias.shape}"
        )


def check_out(out, expected_shape, inputs) -> None:
    """Validate a caller-provided output array."""
    check_array(out, "out")
    if out.shape != tuple(expected_shape):
        raise ValueError(f"out must have shape {tuple(expected_shape)}; got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous (np.empty(shape, dtype=np.float32))")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    for name, array in inputs.items():
        if array is not None and np.may_share_memory(out, array):
            raise ValueError(f"out must not overlap {name}")


def check_threads(threads, maximum: int) -> int:
    """Resolve ``threads`` (None = ``maximum``) to an int in [1, maximum]."""
    if threads is None:
        return maximum
    if not _is_int(threads):
        raise TypeError(f"threads must be an int or None; got {threads!r}")
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    if threads > maximum:
        raise ValueError(
            f"threads must be <= {maximum} (numba.config.NUMBA_NUM_THREADS); got {threads}"
        )
    return threads


def check_memory_limit(memory_limit):
    """Resolve a workspace budget: None (no limit) or an int number of bytes >= 0."""
    if memory_limit is None:
        return None
    if not _is_int(memory_limit):
        raise TypeError(f"memory_limit must be an int number of bytes or None; got {memory_limit!r}")
    if memory_limit < 0:
        raise ValueError(f"memory_limit must be >= 0 bytes; got {memory_limit}")
    return int(memory_limit)


def check_flag(value, name: str) -> bool:
    """Require a real boolean (``True``/``False`` or a numpy bool), not a truthy value.

    A string such as ``"no"`` is truthy; accepting it would silently do the opposite
    of what was meant.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)
