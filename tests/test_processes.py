"""Worker processes: fork after the OpenMP layer started fails fast; spawn and forkserver work."""

import sys

import pytest

from subprocess_helper import run_python

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GNU OpenMP and fork: Linux")

POOL = """
    import multiprocessing
    import sys
    import numpy as np
    import lowmem_numba as ln

    x = np.ones((1, 4, 9, 9), np.float32)
    w = np.ones((4, 4, 3, 3), np.float32)
    options = dict(padding=1, algorithm="kn2row-aa-ab")
    expected = float(ln.conv2d(x, w, **options).sum())  # the parent starts the threading layer
    with multiprocessing.get_context(sys.argv[1]).Pool(1) as pool:
        try:
            got = pool.apply_async(ln.conv2d, (x, w), options).get(timeout=60)
            print("result", float(got.sum()) == expected)
        except RuntimeError as error:
            print("error", error)
        except multiprocessing.TimeoutError:
            print("hung")
"""


def run_pool(method, layer):
    code = POOL.replace("sys.argv[1]", repr(method))
    return run_python(code, {"NUMBA_THREADING_LAYER": layer}, timeout=240)


def test_fork_after_openmp_started_fails_fast_with_advice():
    result = run_pool("fork", "omp")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "error lowmem_numba: this process was forked after the OpenMP" in result.stdout, result.stdout
    assert "get_context('spawn')" in result.stdout and "forkserver" in result.stdout


def test_fork_works_under_a_fork_safe_layer():
    # workqueue re-creates its threads in a forked child: no reason to refuse.
    result = run_pool("fork", "workqueue")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "result True" in result.stdout, result.stdout


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawn_and_forkserver_pools_work_after_openmp_started(method):
    result = run_pool(method, "omp")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "result True" in result.stdout, result.stdout


FORK_WHILE_ANOTHER_THREAD_RUNS = """
    import os
    import signal
    import threading
    import time
    import numpy as np
    import lowmem_numba as ln
    from lowmem_numba import _threads as threads

    x = np.ones((1, 4, 9, 9), np.float32)
    w = np.ones((4, 4, 3, 3), np.float32)
    ln.conv2d(x, w, padding=1, algorithm="direct-sum2d")
    entered, release = threading.Event(), threading.Event()

    def busy():  # another thread is inside a kernel call when the fork happens
        with threads.kernel_threads(1):
            entered.set()
            release.wait(60)

    t = threading.Thread(target=busy)
    t.start()
    entered.wait(60)
    pid = os.fork()
    if pid == 0:
        ok = ln.conv2d(x, w, padding=1, algorithm="direct-sum2d").sum() == 10000
        os._exit(0 if ok else 1)
    release.set()
    t.join()
    for _ in range(600):  # a hung child is killed, not left behind
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("child", os.waitstatus_to_exitcode(status))
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print("child hung")
"""


def test_fork_while_another_thread_holds_the_launch_lock_does_not_hang():
    # Under workqueue launches are serialised by a lock; a child forked while
    # another thread held it must not wait for a thread it does not have.
    result = run_python(FORK_WHILE_ANOTHER_THREAD_RUNS, {"NUMBA_THREADING_LAYER": "workqueue"},
                        timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "child 0" in result.stdout, result.stdout
