"""Sizes of this machine's caches, from sysfs, and of its memory pages, for
the plans' tiling rules and the cost model's (each with a default where
sysfs does not tell)."""

from __future__ import annotations

import functools
import mmap


def _cache_bytes(index, default, smallest=64 * 2**10):
    """Bytes of cpu0's cache ``index`` (sysfs numbering: 0 is the core's L1
    data cache, 2 its L2, 3 the shared L3), or ``default`` when unknown or
    under ``smallest``."""
    try:
        with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
            text = f.read().strip().upper()
        scale = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
        value = int(text.rstrip("KM")) * scale
        return value if value >= smallest else default
    except (OSError, ValueError):
        return default


@functools.lru_cache(maxsize=None)
def l1_geometry() -> tuple:
    """(bytes per way, ways) of cpu0's L1 data cache, from sysfs ((4096, 8),
    that of most x86 cores, when unknown)."""
    size = _cache_bytes(0, 0, smallest=1)
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index0/ways_of_associativity") as f:
            ways = int(f.read())
    except (OSError, ValueError):
        ways = 0
    if size > 0 and ways > 0 and size % (64 * ways) == 0:
        return size // ways, ways
    return 4096, 8


@functools.lru_cache(maxsize=None)
def l1_bytes() -> int:
    """Bytes of one core's L1 data cache (32 KiB when unknown)."""
    way, ways = l1_geometry()
    return way * ways


@functools.lru_cache(maxsize=None)
def l2_bytes() -> int:
    """Bytes of one core's L2 cache, from sysfs (1 MiB when unknown)."""
    return _cache_bytes(2, 2**20)


@functools.lru_cache(maxsize=None)
def l3_bytes() -> int:
    """Bytes of the last-level (L3) cache, from sysfs (8 MiB when unknown:
    transformed weights larger than that are then priced as read from
    memory)."""
    return _cache_bytes(3, 8 * 2**20)


def page_bytes() -> int:
    """Bytes of a memory page (``mmap.PAGESIZE``)."""
    return mmap.PAGESIZE
