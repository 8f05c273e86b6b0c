"""A bounded, thread-safe memo: the one cache of planned work in a process.

The scheduler memoises its plans here and the API its validated calls, so a
repeated call with the same shapes and arguments costs a dictionary lookup
instead of validation and planning again (about 30 us of a 60 us call on a
7x7 1x1 layer before this memo, measured with ``perf/call_overhead.py``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


_ALL: list = []


def clear_all() -> None:
    """Empty every memo of the process (after recalibrating, or in tests that
    change what planning sees)."""
    for memo in _ALL:
        memo.clear()


class Memo:
    """At most ``size`` entries; the least recently used is dropped first.

    Parameters
    ----------
    size : int
        Capacity (an attribute: it may be changed, and applies from the next
        insertion).
    """

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        _ALL.append(self)

    def get(self, key):
        """The value stored under ``key`` (now the most recently used), or None.

        Without the lock: each OrderedDict method is one C call under the
        GIL (memory-safe whatever other threads do), and a hit is what every
        memoised call does (the lock cost 0.2 us of them).  An entry another
        thread evicts or moves meanwhile (keys whose ``__eq__`` is Python
        code can let it run mid-call) is simply not moved."""
        value = self._entries.get(key)
        if value is not None:
            try:
                self._entries.move_to_end(key)
            except (KeyError, RuntimeError):
                pass
        return value

    def put(self, key, value) -> None:
        """Store ``value`` (not None) under ``key``, dropping the oldest entries over ``size``."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        with self._lock:
            return iter(list(self._entries))


class Uncacheable(Exception):
    """An argument that :func:`frozen` cannot turn into a key: the caller takes
    the unmemoised path, which validates it (and usually rejects it)."""


def frozen(value, _depth=0):
    """A hashable key for an argument as given, type included.

    ``1``, ``True``, ``1.0`` and ``np.int64(1)`` compare equal but validate
    differently (a bool is not an int here), so everything but a Python int,
    a string or None is keyed with its type; lists and tuples (at most four
    items, two levels: a weight shape, a padding pair of pairs) are keyed
    element by element.  Anything else raises :class:`Uncacheable`, and the
    caller takes the validating path, whose error names the argument.
    """
    kind = type(value)
    if kind is int or kind is str or value is None:
        return value
    if kind is tuple or kind is list:
        if _depth >= 2 or len(value) > 4:
            raise Uncacheable
        return (kind, tuple(frozen(v, _depth + 1) for v in value))
    if kind is bool or kind is float:
        return (kind, value)
    if isinstance(value, (np.integer, np.floating, np.bool_, np.str_)):
        return (kind, value.item())
    raise Uncacheable


def array_signature(value):
    """What validation reads of an optional array argument: its type, dtype and shape."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return (type(value), value.dtype, value.shape)
    raise Uncacheable
