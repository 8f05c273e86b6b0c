"""The geometry as compiled kernels receive it: :class:`KernelGeometry`.

A leaf module (it imports nothing from the package and no Numba), so that
planning code can build the record without importing any kernel.

Kernels read the fields by name (``d.height``).  Every field is a Python
``int``, typed by Numba as int64, so the record has one Numba type whatever
the shape, and each kernel compiles one specialisation that serves every
geometry.

Kernels are launched with the record as a plain tuple (what
:func:`kernel_geometry` returns) and rebuild it on entry
(``d = KernelGeometry(*geometry)``, free in compiled code): Numba types a
plain tuple of ints from a fast C fingerprint, but a named tuple through its
Python ``typeof``, which cost 2.4 us more per launch (0.9 against 3.3 us
for a call of an empty function, timeit), once per kernel launch of every
call.
"""

from __future__ import annotations

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


def kernel_geometry(g) -> tuple:
    """The record of a :class:`~lowmem_numba._geometry.ConvGeometry` ``g``,
    as the plain tuple kernels are launched with (``KernelGeometry(*t)``
    gives the named record): ``g.kernel_record``, built once per geometry
    (see :func:`kernel_record`)."""
    return g.kernel_record


def kernel_record(g) -> tuple:
    """Build the record of ``g``.  Each field is taken by name and converted
    with ``int()``, so that a NumPy integer (or a bool) never gives the
    record another Numba type, which would compile every kernel again.
    Geometries cache it (they are immutable): building it took 2.6 us of
    every call, and an ``lru_cache`` lookup, which hashes the geometry's 17
    fields, still 0.5 us."""
    return tuple(int(getattr(g, name)) for name in KernelGeometry._fields)
