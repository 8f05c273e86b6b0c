"""What the two command lines (``lowmem-numba`` and the memory tool) share:
one-line usage errors and the ``LOWMEM_NUMBA_DEBUG`` switch."""

from __future__ import annotations

import argparse
import os


def printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped, so it stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (no usage dump), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")


def debug() -> bool:
    """Whether ``LOWMEM_NUMBA_DEBUG`` asks for full tracebacks instead of one-line errors."""
    return os.environ.get("LOWMEM_NUMBA_DEBUG", "").strip().lower() not in ("", "0", "no", "false")
