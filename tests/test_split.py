"""The one work splitter: tiles cover the work once, respect minimums, balance."""

import itertools

import pytest
from hypothesis import given, strategies as st

from lowmem_numba._split import Split, split_work
from lowmem_numba._tuning import SPLIT_COL_PRICE, SPLIT_ROW_PRICE
from lowmem_numba._algorithms._common import tile_bounds


def _tiles(split, rows, cols):
    return [tile_bounds(item, rows, cols, split.row_blocks, split.col_tiles)
            for item in range(split.items)]


@given(count=st.integers(0, 6), rows=st.integers(0, 300), cols=st.integers(0, 3000),
       threads=st.integers(1, 8), min_rows=st.integers(1, 32), min_cols=st.integers(1, 512),
       prefer=st.sampled_from(["cols", "rows"]))
def test_tiles_cover_every_element_exactly_once(count, rows, cols, threads, min_rows, min_cols, prefer):
    split = split_work(count, rows, cols, threads, min_rows=min_rows, min_cols=min_cols, prefer=prefer)
    covered = {}
    for index, r0, r1, c0, c1 in _tiles(split, rows, cols):
        assert 0 <= index < count and 0 <= r0 <= r1 <= rows and 0 <= c0 <= c1 <= cols
        for cell in itertools.product([index], range(r0, r1), range(c0, c1)):
            covered[cell] = covered.get(cell, 0) + 1
    assert len(covered) == count * rows * cols
    assert set(covered.values()) <= {1}


@given(count=st.integers(1, 6), rows=st.integers(1, 300), cols=st.integers(1, 3000),
       threads=st.integers(2, 8), min_rows=st.integers(1, 32), min_cols=st.integers(1, 512))
def test_tiles_respect_the_minimums(count, rows, cols, threads, min_rows, min_cols):
    split = split_work(count, rows, cols, threads, min_rows=min_rows, min_cols=min_cols)
    if split.row_blocks > 1:
        assert rows // split.row_blocks >= min_rows
    if split.col_tiles > 1:
        assert cols // split.col_tiles >= min_cols


@given(count=st.integers(1, 6), rows=st.integers(1, 300), cols=st.integers(1, 3000),
       threads=st.integers(2, 8))
def test_the_cut_balances_best_for_its_tiles(count, rows, cols, threads):
    # No allowed cut balances better at its price per extra tile (the rule),
    # and cutting never balances worse than not cutting.
    split = split_work(count, rows, cols, threads, min_rows=16, min_cols=128)

    def cost(s):
        return s.imbalance(threads, rows, cols) * (1 + SPLIT_ROW_PRICE * (s.row_blocks - 1)
                                       + SPLIT_COL_PRICE * (s.col_tiles - 1))

    allowed = [Split(count, r, c) for r in range(1, max(1, min(rows // 16, 4 * threads)) + 1)
               for c in range(1, max(1, min(cols // 128, 4 * threads)) + 1)]
    assert cost(split) <= min(cost(s) for s in allowed) + 1e-9
    assert split.imbalance(threads, rows, cols) <= Split(count, 1, 1).imbalance(threads, rows, cols)


def test_examples():
    # One thread or nothing to cut: one tile per output.
    assert split_work(3, 512, 4096, 1, min_rows=16, min_cols=128) == Split(3, 1, 1)
    # Two outputs on two threads are already balanced.
    assert split_work(2, 512, 4096, 2, min_rows=16, min_cols=128) == Split(2, 1, 1)
    # One output on two threads: columns are cut first by default, rows on request.
    assert split_work(1, 512, 4096, 2, min_rows=16, min_cols=128) == Split(1, 1, 2)
    assert split_work(1, 512, 4096, 2, min_rows=16, min_cols=128, prefer="rows") == Split(1, 2, 1)
    # Too narrow to cut columns: rows instead.
    assert split_work(1, 512, 100, 2, min_rows=16, min_cols=128) == Split(1, 2, 1)
    # Three outputs on two threads: cutting each in two removes the 4/3 imbalance.
    assert split_work(3, 512, 4096, 2, min_rows=16, min_cols=128).imbalance(2, 512, 4096) == 1.0
    # Three rows on two threads: not 2 + 1 (which the even count of items hid).
    assert split_work(1, 3, 4096, 2, min_rows=1, min_cols=128, prefer="rows") == Split(1, 1, 2)
    assert Split(1, 2, 1).imbalance(2, 3, 4096) == 4 / 3


@pytest.mark.parametrize("bad", [dict(count=-1), dict(threads=0), dict(min_rows=0), dict(prefer="x")])
def test_rejects_bad_arguments(bad):
    args = dict(count=1, rows=8, cols=8, threads=2, min_rows=1, min_cols=1) | bad
    with pytest.raises(ValueError):
        split_work(args.pop("count"), args.pop("rows"), args.pop("cols"), args.pop("threads"), **args)
