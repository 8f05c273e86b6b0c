import pytest

from lowmem_numba._timing import Timing, measure


def test_measure_counts_warmup_and_repeats():
    calls = []
    timing = measure(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and len(timing.runs) == 5
    assert timing.best <= timing.median


def test_min_seconds_extends_the_runs():
    timing = measure(lambda: sum(range(1000)), repeats=1, min_seconds=0.01)
    assert sum(timing.runs) >= 0.01 and len(timing.runs) > 1


def test_derived_figures():
    timing = Timing((0.5, 1.0, 2.0))
    assert timing.best == 0.5 and timing.median == 1.0 and timing.spread == 1.5
    assert timing.gflops(10**9) == 2.0


@pytest.mark.parametrize("kwargs", [dict(repeats=0), dict(warmup=-1)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        measure(lambda: None, **kwargs)
