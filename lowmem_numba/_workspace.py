"""A reusable workspace arena.

A :class:`Workspace` owns one float32 buffer.  Every call given the workspace
carves its packed weights, per-thread scratch and layout buffers from it, so a
sequence of convolutions (a network) needs one arena as large as its largest
workspace, not the sum, and repeated calls allocate nothing.
"""

from __future__ import annotations

import ctypes
import math
import threading

import numpy as np

from ._geometry import check_flag
from ._plan import CACHE_LINE_BYTES, FLOAT32_BYTES


def aligned_empty(elements: int, line_offset: int = 0) -> np.ndarray:
    """An uninitialised 1-D float32 array of ``elements`` whose data starts
    on a cache line, or ``line_offset`` bytes past one (rounded down to
    whole floats).

    numpy's allocator guarantees 16 bytes: a buffer of a few MiB (mapped
    pages, 16 bytes past a page) or any heap block may start 16, 32 or 48
    bytes into a line, and every 64-byte vector load of packed weights or
    scratch carved from it then straddles two lines.  On the Intel Xeon kind,
    one thread, batch 8, functional calls (weights packed into the workspace
    inside the kernel), ``direct-ukernel`` ran GoogLeNet's 4e 5x5 layer in
    1.58 ms from a line-aligned workspace and 1.80 from one 16 bytes off, and
    ResNet-50's layer4 3x3 in 9.7 against 11.0 ms (any whole-line offset
    alike).  The address comes from ``ctypes`` (a quarter of a microsecond, a
    third of ``ndarray.ctypes.data``).
    """
    raw = np.empty(elements + CACHE_LINE_BYTES // FLOAT32_BYTES, dtype=np.float32)
    skip = (line_offset - ctypes.addressof(ctypes.c_char.from_buffer(raw))) % CACHE_LINE_BYTES // FLOAT32_BYTES
    return raw[skip:skip + elements]


def empty_at_offset_of(array: np.ndarray, shape) -> np.ndarray:
    """An uninitialised C-contiguous float32 array of ``shape`` whose data
    starts as far from a cache line as ``array``'s (a view into an array a
    line longer: :func:`aligned_empty`)."""
    return aligned_empty(math.prod(shape), array.ctypes.data % CACHE_LINE_BYTES).reshape(shape)


class Workspace:
    """One float32 buffer that convolution calls carve their scratch from.

    Parameters
    ----------
    nbytes : int, default 0
        Initial size in bytes (rounded up to whole float32 elements).
    fixed : bool, default False
        If True the buffer never grows: a call needing more raises ValueError.
        If False a call needing more replaces the buffer by one of the size it
        needs (so the arena grows once, to the largest call it serves).

    Notes
    -----
    A workspace serves one call at a time: calls from several Python threads
    sharing it take turns.  Give each thread its own workspace to overlap them.
    Its buffer starts on a 64-byte cache line (``nbytes`` counts the usable
    bytes; the allocation is up to 64 bytes larger).
    """

    def __init__(self, nbytes: int = 0, *, fixed: bool = False):
        if not isinstance(nbytes, (int, np.integer)) or isinstance(nbytes, (bool, np.bool_)):
            raise TypeError(f"nbytes must be an int number of bytes; got {nbytes!r}")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0; got {nbytes!r}")
        self.fixed = check_flag(fixed, "fixed")
        self._buffer = aligned_empty(-(-int(nbytes) // FLOAT32_BYTES))
        self._lock = threading.Lock()
        self.grow_count = 0

    @property
    def nbytes(self) -> int:
        """Current size of the buffer in bytes."""
        return self._buffer.nbytes

    def __repr__(self) -> str:
        kind = "fixed" if self.fixed else "growable"
        return f"Workspace({self.nbytes} bytes, {kind})"

    def check_fits(self, elements: int) -> None:
        """Raise now, before a call allocates anything, if a fixed arena is too small.

        Raises
        ------
        ValueError
            If the workspace is fixed and holds fewer than ``elements`` floats.
        """
        if self.fixed and elements > self._buffer.size:
            needed = elements * FLOAT32_BYTES
            raise ValueError(
                f"workspace is fixed at {self.nbytes} bytes but this call needs {needed} "
                f"bytes; create Workspace({needed}) or let it grow (fixed=False)")

    def lease(self, elements: int) -> "_Lease":
        """Hold the arena for one call: ``with workspace.lease(n) as buffer``
        gives its first ``n`` floats, grown to them first if need be.

        Raises
        ------
        ValueError
            If the workspace is fixed and smaller than the call needs.
        """
        return _Lease(self, elements)

    def _take(self, elements: int) -> np.ndarray:
        """The first ``elements`` floats, the buffer grown to them first (the
        caller holds the lock)."""
        if elements > self._buffer.size:
            self.check_fits(elements)
            self._buffer = aligned_empty(elements)
            self.grow_count += 1
        return self._buffer[:elements]

    @classmethod
    def shared_by(cls, layers, input_shapes, *, fixed: bool = True) -> "Workspace":
        """One arena for layers that run one after another, and make them use it.

        Its size is the largest workspace among the layers' calls (not the sum).

        Parameters
        ----------
        layers : sequence of Conv2d
        input_shapes : sequence of tuple of int
            The input shape each layer will be called with (in its layout).
        fixed : bool, default True
            Whether the arena may grow later (False) or raises instead (True).

        Returns
        -------
        Workspace

        Raises
        ------
        TypeError, ValueError
            If an argument is of the wrong kind, the counts differ, or a shape
            is invalid for its layer (as a call on it would raise).
        """
        fixed = check_flag(fixed, "fixed")
        layers = _as_list(layers, "layers")
        input_shapes = _as_list(input_shapes, "input_shapes")
        for layer in layers:
            # Duck-typed: this module sits below the layer object's.
            if not (hasattr(layer, "workspace_bytes_for") and hasattr(layer, "workspace")):
                raise TypeError(f"layers must hold lowmem_numba.Conv2d objects; got {type(layer).__name__}")
        if len(layers) != len(input_shapes):
            raise ValueError(f"got {len(layers)} layers but {len(input_shapes)} input shapes")
        largest = max((layer.workspace_bytes_for(shape) for layer, shape in zip(layers, input_shapes)),
                      default=0)
        arena = cls(largest, fixed=fixed)
        for layer in layers:
            layer.workspace = arena
        return arena


class _Lease:
    """The context of :meth:`Workspace.lease`: a class rather than a
    generator-based context manager, whose entering and leaving cost about
    1 us of a layer call's 9 (``perf/call_overhead.py``)."""

    __slots__ = ("_workspace", "_elements")

    def __init__(self, workspace, elements):
        self._workspace = workspace
        self._elements = elements

    def __enter__(self) -> np.ndarray:
        workspace = self._workspace
        workspace._lock.acquire()
        try:
            return workspace._take(self._elements)
        except BaseException:
            workspace._lock.release()
            raise

    def __exit__(self, *exc_info):
        self._workspace._lock.release()
        return False


def _as_list(values, name):
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence; got {type(values).__name__}")
    return list(values)


def check_workspace(workspace):
    """Require None or a :class:`Workspace`."""
    if workspace is not None and not isinstance(workspace, Workspace):
        raise TypeError(f"workspace must be a lowmem_numba.Workspace or None; got {type(workspace).__name__}")
    return workspace
