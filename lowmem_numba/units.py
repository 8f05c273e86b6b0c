"""Byte counts for people: formatting and parsing sizes such as ``1.5 MiB``."""

from __future__ import annotations

import re
from fractions import Fraction


def format_bytes(count) -> str:
    """``count`` bytes in B, KiB, MiB or GiB, e.g. ``"110.2 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text):
    """Parse a byte count such as ``1MiB``, ``512KiB``, ``2GB``, ``1.5MiB`` or ``1000``.

    Parameters
    ----------
    text : str
        A number with an optional unit (B, KB, MB, GB, TB: powers of 1000;
        KiB, MiB, GiB, TiB: powers of 1024; case-insensitive), or ``none``
        for no limit.

    Returns
    -------
    int or None
        Bytes; None for ``none``.

    Raises
    ------
    ValueError
        If the text is not a size or not a whole number of bytes.
    """
    cleaned = text.strip()
    if cleaned.lower() == "none":
        return None
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(?:[eE](\d+))?\s*([A-Za-z]*)", cleaned)
    if not match or match.group(3).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: give bytes with an optional unit, e.g. 1000, 512KiB, "
                         f"1MiB, 2GB, or none")
    number = Fraction(match.group(1)) * 10 ** int(match.group(2) or 0)
    value = number * _SIZE_UNITS[match.group(3).lower()]
    if value.denominator != 1:
        raise ValueError(f"invalid size {text!r}: not a whole number of bytes")
    return int(value)
