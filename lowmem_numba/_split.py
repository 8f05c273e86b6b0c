"""The one rule that cuts a kernel's work into parallel items.

Every family's kernel runs ``count`` independent outputs of ``rows x cols``
elements (GEMM outputs, output-row bands, channel blocks...) and hands them to
Numba's ``prange``, which gives each thread an equal contiguous share of the
items.  Wall time then follows ``ceil(items / threads)`` items of the largest
size (``ceil(rows / row_blocks) x ceil(cols / col_tiles)``), so the rule picks
the cut that minimises that against a perfect share (:meth:`Split.imbalance`),
keeps every tile at least ``min_rows x min_cols`` (below that a single-threaded
tile loses more efficiency than balance gains: each family states its own
minimums), and among equally balanced cuts prefers the fewest tiles, cutting
the dimension the family says is cheaper to cut first.

The kernels decode item ``i`` with :func:`lowmem_numba._algorithms._common.tile_bounds`.
"""

from __future__ import annotations

from typing import NamedTuple

from ._tuning import SPLIT_COL_PRICE, SPLIT_MAX_TILES_PER_THREAD, SPLIT_ROW_PRICE


class Split(NamedTuple):
    """How ``count`` outputs of ``rows x cols`` are cut into parallel items."""

    count: int
    row_blocks: int
    col_tiles: int

    @property
    def items(self) -> int:
        """Number of parallel items (``count * row_blocks * col_tiles``)."""
        return self.count * self.row_blocks * self.col_tiles

    def imbalance(self, threads: int, rows: int, cols: int) -> float:
        """Wall time relative to a perfect split on ``threads`` threads (>= 1)
        of ``count`` outputs of ``rows x cols``: each thread's equal run of
        items at the largest item's size.  Parts that do not divide a
        dimension evenly differ by one row or column, and with few rows that
        matters: 3 channel blocks cut in 2 are 2 + 1, a 4/3 imbalance although
        the 2 items split evenly over 2 threads."""
        items = self.items
        if items == 0 or rows == 0 or cols == 0:
            return 1.0
        largest = -(-rows // self.row_blocks) * -(-cols // self.col_tiles)
        return -(-items // threads) * largest * threads / (self.count * rows * cols)


def split_work(count: int, rows: int, cols: int, threads: int, *, min_rows: int, min_cols: int,
               prefer: str = "cols") -> Split:
    """Cut ``count`` equal ``rows x cols`` outputs into parallel tiles.

    Parameters
    ----------
    count : int
        Independent outputs (images x groups, GEMMs...), >= 0.
    rows, cols : int
        Size of each output, >= 0.
    threads : int
        Threads that will run the items, >= 1.
    min_rows, min_cols : int
        Smallest tile the family accepts along each dimension (>= 1).  A
        dimension shorter than twice its minimum is never cut.
    prefer : {"cols", "rows"}, default "cols"
        Which cut is cheaper when two cuts balance equally well.

    Returns
    -------
    Split
        ``row_blocks`` and ``col_tiles`` per output; ``(1, 1)`` on one thread
        or when nothing may be cut.

    Raises
    ------
    ValueError
        If an argument is out of range.
    """
    if min(count, rows, cols) < 0 or threads < 1 or min(min_rows, min_cols) < 1:
        raise ValueError(f"split_work: invalid arguments count={count}, rows={rows}, cols={cols}, "
                         f"threads={threads}, min_rows={min_rows}, min_cols={min_cols}")
    if prefer not in ("cols", "rows"):
        raise ValueError(f"split_work: prefer must be 'cols' or 'rows'; got {prefer!r}")
    if threads == 1 or count == 0:
        return Split(count, 1, 1)
    limit = SPLIT_MAX_TILES_PER_THREAD * threads
    max_cols = max(1, min(cols // min_cols, limit))
    max_rows = max(1, min(rows // min_rows, limit))
    col_price, row_price = ((SPLIT_COL_PRICE, SPLIT_ROW_PRICE) if prefer == "cols"
                            else (SPLIT_ROW_PRICE, SPLIT_COL_PRICE))
    best, best_cost = Split(count, 1, 1), None
    for col_tiles in range(1, max_cols + 1):
        for row_blocks in range(1, max_rows + 1):
            split = Split(count, row_blocks, col_tiles)
            # A small price per extra tile (each tile repacks its operands)
            # breaks ties between equally balanced cuts.
            cost = split.imbalance(threads, rows, cols) * (1 + col_price * (col_tiles - 1)
                                               + row_price * (row_blocks - 1))
            if best_cost is None or cost < best_cost - 1e-12:
                best, best_cost = split, cost
    return best
