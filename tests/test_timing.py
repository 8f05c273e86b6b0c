import sys
import time

import pytest

from lowmem_numba._timing import Timing, measure
from lowmem_numba.bench import TimingWorker


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


# ------------------------------------------------------------------ TimingWorker

#: A worker that says who it is, then answers each job with its label doubled,
#: exits on the label "die" (after a line on standard error) and sleeps on "sleep".
_ECHO = """
import json, sys, time
print(json.dumps({"version": "echo 1"}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    if job["label"] == "die":
        print("dying as asked", file=sys.stderr, flush=True)
        sys.exit(3)
    if job["label"] == "sleep":
        time.sleep(30)
    print(json.dumps({"label": job["label"] * 2}), flush=True)
"""


def test_worker_answers_each_job_in_turn():
    with TimingWorker([sys.executable, "-c", _ECHO]) as worker:
        assert worker.version == "echo 1"
        assert [worker.ask({"label": label})["label"] for label in ("a", "b", "a")] == ["aa", "bb", "aa"]


def test_worker_that_exits_is_reported_with_its_last_error_line():
    with TimingWorker([sys.executable, "-c", _ECHO]) as worker:
        with pytest.raises(RuntimeError, match="job 'die'.*dying as asked"):
            worker.ask({"label": "die"})
    with pytest.raises(RuntimeError, match="starting.*worker exited"):
        TimingWorker([sys.executable, "-c", "import sys; sys.exit(1)"])


def test_worker_that_does_not_answer_times_out_and_is_ended():
    """Stuck, the worker is killed at once: closing its input would leave it
    sleeping 30 s, and close() would wait 10 s for it before killing it."""
    start = time.monotonic()
    with TimingWorker([sys.executable, "-c", _ECHO], timeout=0.5) as worker:
        with pytest.raises(RuntimeError, match="job 'sleep': no answer after 0.5 s"):
            worker.ask({"label": "sleep"})
    assert time.monotonic() - start < 8
