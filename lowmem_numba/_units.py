"""Byte counts for people: formatting and parsing sizes such as ``1.5 MiB``."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np


_BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(count) -> str:
    """``count`` bytes in B, KiB, MiB, ... EiB, e.g. ``"110.2 MiB"``.

    Integers are formatted with integer arithmetic, so any int works (a budget
    of ``10**400`` bytes must not overflow a float); the tenths are rounded
    half to even, as ``f"{x:.1f}"`` does.  Beyond a million EiB the count is
    shown in scientific notation.
    """
    if isinstance(count, bool) or not isinstance(count, (int, float, np.integer, np.floating)):
        raise TypeError(f"count must be a number of bytes; got {count!r}")
    if isinstance(count, (float, np.floating)):
        if not math.isfinite(count):
            return f"{count} B"
        if count != int(count):  # a fractional count: keep float formatting
            return _format_float_bytes(float(count))
        count = int(count)
    count = int(count)
    if count < 0:
        return "-" + format_bytes(-count)
    if count < 1024:
        return f"{count} B"
    for power, unit in enumerate(_BINARY_UNITS, start=1):
        if count < 1024 ** (power + 1) or unit == _BINARY_UNITS[-1]:
            tenths, rest = divmod(count * 10, 1024 ** power)
            if 2 * rest > 1024 ** power or (2 * rest == 1024 ** power and tenths % 2):
                tenths += 1
            if tenths >= 10**7:  # more than a million of the largest unit
                digits = str(tenths)
                return f"{digits[0]}.{digits[1:4]}e+{len(digits) - 2} {unit}"
            return f"{tenths // 10}.{tenths % 10} {unit}"
    raise AssertionError("unreachable")


def _format_float_bytes(count: float) -> str:
    if count < 0:
        return "-" + _format_float_bytes(-count)
    if count < 1024:
        return f"{count} B"
    for unit in _BINARY_UNITS:
        count /= 1024
        if count < 1024 or unit == _BINARY_UNITS[-1]:
            return f"{count:.1f} {unit}"
    raise AssertionError("unreachable")


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

#: The largest size :func:`parse_size` accepts (just under 8 EiB, the largest int64).
MAX_SIZE = 2**63 - 1

#: Digits of a size's number beyond which it is refused before any arithmetic.
_MAX_DIGITS = 100


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
        If the text is not a size, not a whole number of bytes, or larger
        than :data:`MAX_SIZE` (checked before the number is computed, so
        ``1e999999999`` fails at once).
    """
    cleaned = text.strip()
    if cleaned.lower() == "none":
        return None
    match = re.fullmatch(r"(\d*)(?:\.(\d*))?(?:[eE](\d+))?\s*([A-Za-z]*)", cleaned, flags=re.ASCII)
    if (not match or not (match.group(1) or match.group(2))
            or match.group(4).lower() not in _SIZE_UNITS):
        raise ValueError(f"invalid size {text!r}: give bytes with an optional unit, e.g. 1000, 512KiB, "
                         f"1MiB, 2GB, or none")
    whole, fraction, exponent = match.group(1), match.group(2) or "", match.group(3) or "0"
    digits = (whole + fraction).lstrip("0")
    if not digits:
        return 0
    if len(whole) + len(fraction) > _MAX_DIGITS:
        raise ValueError(f"invalid size {text!r}: too many digits")
    # The number has at most len(digits) - len(fraction) + exponent digits before the point: more than
    # 20 is too large (> MAX_SIZE) whatever the unit, known before 10**exponent is computed.
    exponent = exponent.lstrip("0")
    if len(exponent) > 4 or len(digits) - len(fraction) + int(exponent or 0) > 20:
        raise ValueError(f"invalid size {text!r}: too large (at most {MAX_SIZE} bytes)")
    value = Fraction(int(whole + fraction), 10 ** len(fraction)) * 10 ** int(exponent or 0)
    value *= _SIZE_UNITS[match.group(4).lower()]
    if value > MAX_SIZE:
        raise ValueError(f"invalid size {text!r}: too large (at most {MAX_SIZE} bytes)")
    if value.denominator != 1:
        raise ValueError(f"invalid size {text!r}: not a whole number of bytes")
    return int(value)
