"""Threads: several Python threads at once, BLAS held at one thread and restored."""

import threading

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

import lowmem_numba as ln
from lowmem_numba import threads as threads_module
from lowmem_numba.threads import single_threaded_blas
from subprocess_helper import run_python


def blas_threads():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


CONCURRENT_CALLS = """
    import threading
    import numpy as np
    import lowmem_numba as ln

    rng = np.random.default_rng(0)
    jobs = []
    for i, name in enumerate(ln.algorithms()):
        x = rng.integers(-3, 4, (2, 8, 13 + i, 11)).astype(np.float32)
        w = rng.integers(-3, 4, (16, 8, 3, 3)).astype(np.float32)
        jobs.append((name, x, w, ln.conv2d(x, w, padding=1, algorithm="direct-sum2d", threads=1)))
    failures = []

    def worker(job):
        name, x, w, expected = job
        for _ in range(25):
            got = ln.conv2d(x, w, padding=1, algorithm=name)
            if not np.array_equal(got, expected):
                failures.append(name)

    threads = [threading.Thread(target=worker, args=(jobs[k % len(jobs)],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("failures", failures)
"""


@pytest.mark.parametrize("layer", ["default", "workqueue"])
def test_four_python_threads_at_once(layer):
    # In a fresh process: an abort must fail this test, not kill the suite.
    env = {} if layer == "default" else {"NUMBA_THREADING_LAYER": "workqueue"}
    result = run_python(CONCURRENT_CALLS, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "failures []" in result.stdout, result.stdout


def test_four_python_threads_in_process():
    rng = np.random.default_rng(1)
    x = rng.integers(-3, 4, (1, 8, 20, 20)).astype(np.float32)
    w = rng.integers(-3, 4, (8, 8, 3, 3)).astype(np.float32)
    expected = ln.conv2d(x, w, padding=1, algorithm="direct-sum2d")
    results = []

    def worker(name):
        for _ in range(10):
            results.append(np.array_equal(ln.conv2d(x, w, padding=1, algorithm=name), expected))

    threads = [threading.Thread(target=worker, args=(name,))
               for name in ("kn2row-aa-ab", "im2col-copy-self-ab-ki") * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 40 and all(results)


def test_thread_settings_are_restored():
    before_blas = blas_threads()
    numba.set_num_threads(1)
    try:
        x = np.ones((1, 4, 9, 9), np.float32)
        w = np.ones((4, 4, 3, 3), np.float32)
        for name in ln.algorithms():
            if ln.supports(name, x.shape, w.shape):
                ln.conv2d(x, w, algorithm=name, threads=numba.config.NUMBA_NUM_THREADS)
            assert numba.get_num_threads() == 1
        with pytest.raises(ValueError):
            ln.conv2d(x, w, algorithm="kn2row-aa-ab", stride=2)
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert blas_threads() == before_blas


def test_blas_is_single_threaded_inside_and_restored_after():
    before = blas_threads()
    with single_threaded_blas():
        assert set(blas_threads()) == {1}
        with single_threaded_blas():
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {1}
    assert blas_threads() == before


def test_blas_limit_is_held_until_the_last_concurrent_holder_leaves():
    # OpenBLAS ignores thread-count changes made from a non-main thread once
    # the main thread has set one, so this checks the library's own holder
    # count, which decides when the limit is set and restored.
    first_in = threading.Event()
    second_in = threading.Event()
    first_out = threading.Event()
    seen = {}

    def first():
        with single_threaded_blas():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with single_threaded_blas():
            second_in.set()
            first_out.wait(10)
            seen["holders"] = threads_module._blas_depth
            seen["limited"] = threads_module._blas_limiter is not None

    workers = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert seen == {"holders": 1, "limited": True}
    assert threads_module._blas_depth == 0 and threads_module._blas_limiter is None
