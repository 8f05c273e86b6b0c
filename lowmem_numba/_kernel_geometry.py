"""The geometry as compiled kernels receive it: :class:`KernelGeometry`.

A leaf module (it imports nothing from the package and no Numba), so that
planning code can build the record without importing any kernel.

Kernels read the fields by name (``d.height``).  Every field is a Python
``int``, typed by Numba as int64, so the record has one Numba type
(``KernelGeometry(int64 x 21)``) whatever the shape, and each kernel compiles
one specialisation that serves every geometry.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple


class KernelGeometry(NamedTuple):
    """Sizes of one convolution, in NCHW terms, as plain ints (see
    :class:`lowmem_numba._geometry.ConvGeometry`, whose names it keeps)."""

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
    out_height: int
    out_width: int
    # Derived, so that kernels need not recompute them.
    channels_per_group: int      # C / groups
    out_channels_per_group: int  # M / groups
    kernel_taps: int             # kh * kw


@lru_cache(maxsize=1024)
def kernel_geometry(g) -> KernelGeometry:
    """The record of a :class:`~lowmem_numba._geometry.ConvGeometry` ``g``.

    Each field is taken by name and converted with ``int()``, so that a NumPy
    integer (or a bool) never gives the record another Numba type, which
    would compile every kernel again.  Memoised (geometries are immutable):
    building the record took 2.6 us of every call.
    """
    return KernelGeometry(*[int(getattr(g, name)) for name in KernelGeometry._fields])
