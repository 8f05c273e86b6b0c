"""Convolution geometry and argument validation.

Every check on the arguments of a convolution lives here, and runs before any
allocation or kernel.  The result is a :class:`ConvGeometry`, an immutable record
of the sizes every other module works from.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

#: Largest dimension the 32-bit (LP64) BLAS interface accepts.
BLAS_INT_MAX = 2**31 - 1

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
    return tuple(int(s) for s in shape)


def make_geometry(
    x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1
) -> ConvGeometry:
    """Validate the shapes and hyper-parameters of a convolution.

    Parameters
    ----------
    x_shape : tuple of int
        Input shape, (N, C, H, W) or unbatched (C, H, W).
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
    """
    x_shape = _shape(x_shape, "x", (3, 4))
    if len(x_shape) == 3:
        x_shape = (1,) + x_shape
    w_shape = _shape(w_shape, "weight", (4,))
    n, c, h, w = x_shape
    m, c_per_group, kh, kw = w_shape

    if not _is_int(groups):
        raise TypeError(f"groups must be an int; got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1; got {groups}")
    if min(c, h, w) < 1:
        raise ValueError(f"x must have C, H and W >= 1; got shape {x_shape}")
    if min(m, kh, kw) < 1 or c_per_group < 1:
        raise ValueError(f"weight must have every dimension >= 1; got shape {w_shape}")
    if c % groups:
        raise ValueError(f"groups={groups} must divide the input channels C={c}")
    if m % groups:
        raise ValueError(f"groups={groups} must divide the output channels M={m}")
    if c_per_group * groups != c:
        raise ValueError(
            f"weight has {c_per_group} input channels per group, so with groups={groups} "
            f"x must have C={c_per_group * groups} channels; got C={c}"
        )

    stride = _pair(stride, "stride", 1)
    dilation = _pair(dilation, "dilation", 1)
    top, bottom, left, right = _parse_padding(padding, (kh, kw), stride, dilation)

    geometry = ConvGeometry(
        n, c, h, w, m, kh, kw, groups, *stride, *dilation, top, bottom, left, right
    )
    span_h = dilation[0] * (kh - 1) + 1
    span_w = dilation[1] * (kw - 1) + 1
    if h + top + bottom < span_h or w + left + right < span_w:
        raise ValueError(
            f"the kernel ({kh}x{kw}, dilation {dilation}, spanning {span_h}x{span_w}) is "
            f"larger than the padded input ({h + top + bottom}x{w + left + right})"
        )
    _check_blas_limits(geometry)
    return geometry


def _check_blas_limits(g: ConvGeometry) -> None:
    # Per-image GEMM dimensions and leading dimensions of every algorithm are
    # bounded by these products; BLAS takes 32-bit ints.
    sizes = {
        "C*kh*kw": g.in_channels * g.kernel_taps,
        "M*kh*kw": g.out_channels * g.kernel_taps,
        "H*W": g.height * g.width,
        "Ho*Wo": g.out_height * g.out_width,
        "padded H*W": (g.height + g.pad_top + g.pad_bottom)
        * (g.width + g.pad_left + g.pad_right),
    }
    for label, size in sizes.items():
        if size > BLAS_INT_MAX:
            raise ValueError(
                f"the convolution is too large for the 32-bit BLAS interface: {label} = "
                f"{size} exceeds {BLAS_INT_MAX}; split the input into smaller tiles"
            )


def check_array(value, name: str) -> np.ndarray:
    """Require a float32 ndarray, without casting."""
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
