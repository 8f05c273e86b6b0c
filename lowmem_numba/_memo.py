"""A bounded, thread-safe memo: the one cache of planned work in a process.

The scheduler memoises its plans here and the API its validated calls, so a
repeated call with the same shapes and arguments costs a dictionary lookup
instead of validation and planning again (about 30 us of a 60 us call on a
7x7 1x1 layer before this memo, measured with ``perf/call_overhead.py``).
"""

from __future__ import annotations

import threading

import numpy as np


_ALL: list = []


def clear_all() -> None:
    """Empty every memo of the process (after recalibrating, or in tests that
    change what planning sees)."""
    for memo in _ALL:
        memo.clear()


class Memo:
    """At most ``size`` entries, the recently used ones kept.

    Two generations: new entries go to the young one, and when it holds
    half of ``size`` (rounded up) it becomes the old one, the old one
    dropped (the oldest old entries go first if both together would exceed
    ``size``).  A hit in the old generation moves the entry back into the
    young one, so what is used at least once per generation stays.  A hit in
    the young one, what every repeated call does, is a single dict lookup:
    an OrderedDict's least-recently-used order cost a second lookup
    (``move_to_end``), 0.5 us of a 28 us call after a kernel has evicted the
    interpreter's data (GoogLeNet's 480->16, one thread).

    Parameters
    ----------
    size : int
        Capacity (an attribute: it may be changed, and applies from the next
        insertion).
    """

    def __init__(self, size: int):
        self.size = size
        self._young: dict = {}
        self._old: dict = {}
        self._lock = threading.Lock()
        _ALL.append(self)

    def get(self, key):
        """The value stored under ``key``, or None.

        Without the lock on a hit in the young generation: a dict lookup is
        one C call under the GIL, memory-safe whatever other threads do (the
        lock cost 0.2 us of every memoised call)."""
        value = self._young.get(key)
        if value is None:
            value = self._old.get(key)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key, value) -> None:
        """Store ``value`` (not None) under ``key`` in the young generation."""
        with self._lock:
            self._old.pop(key, None)
            if key not in self._young and len(self._young) >= max(1, (self.size + 1) // 2):
                self._old, self._young = self._young, {}
            self._young[key] = value
            while self._old and len(self._young) + len(self._old) > self.size:
                del self._old[next(iter(self._old))]

    def clear(self) -> None:
        with self._lock:
            self._young, self._old = {}, {}

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def __iter__(self):
        with self._lock:
            return iter(list(self._old) + list(self._young))


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
