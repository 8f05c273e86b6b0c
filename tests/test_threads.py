"""Threads: several Python threads at once, BLAS held at one thread and restored."""

import threading
import types

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

import lowmem_numba as ln
from lowmem_numba import _threads as threads_module
from lowmem_numba._algorithms import depthwise_blocked, pixels, ukernel
from lowmem_numba._geometry import make_geometry
from lowmem_numba._threads import single_threaded_blas
from naive import conv2d_reference
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


FIRST_CALLS = """
    import sys
    import threading
    import numba
    import numpy as np
    import lowmem_numba as ln

    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, (2, 16, 40, 40)).astype(np.float32)
    w = rng.integers(-3, 4, (16, 16, 3, 3)).astype(np.float32)
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    # Every thread's first call is also this process's first parallel kernel:
    # the threading layer is not chosen yet when they start.
    jobs = [
        lambda: ln.conv2d(x, w, padding=1, algorithm="kn2row-aa-ab"),
        lambda: ln.conv2d(x, w, padding=1, algorithm="im2col-copy-self-ab-ki"),
        # NHWC into an NCHW kernel: layout conversions run parallel kernels too.
        lambda: ln.conv2d(x_nhwc, w, padding=1, algorithm="kn2row-as", layout="NHWC").transpose(0, 3, 1, 2),
        # A layer packs its weights (a parallel kernel) outside any conv2d call.
        lambda: ln.Conv2d(w, padding=1, algorithm="mec-col", layout="NHWC")(x_nhwc).transpose(0, 3, 1, 2),
        # Image by image on one thread: a serial kernel, run without setting thread counts.
        lambda: np.concatenate([ln.conv2d(x[n:n + 1], w, padding=1, algorithm="direct-ukernel", threads=1)
                                for n in range(len(x))]),
    ]
    barrier = threading.Barrier(len(jobs))
    results = [None] * len(jobs)

    def worker(k):
        barrier.wait()
        results[k] = jobs[k]()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = ln.conv2d(x, w, padding=1, algorithm="direct-sum2d")
    print("layer", numba.threading_layer())
    print("failures", [k for k, got in enumerate(results) if got is None or not np.array_equal(got, expected)])
"""


@pytest.mark.parametrize("env", [{"NUMBA_THREADING_LAYER_PRIORITY": "workqueue omp tbb"},
                                 {"NUMBA_THREADING_LAYER": "workqueue"}, {}],
                         ids=["workqueue-by-priority", "workqueue-by-name", "default"])
def test_first_calls_from_four_threads_at_once(env):
    # The abort is a race: repeat to make a regression show.
    for _ in range(3):
        result = run_python(FIRST_CALLS, env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "failures []" in result.stdout, result.stdout
        if env:
            assert "layer workqueue" in result.stdout, result.stdout


EVERY_LAUNCH = """
    import sys
    import numpy as np
    from numba.core.dispatcher import Dispatcher
    import lowmem_numba as ln
    from lowmem_numba import _costmodel as costmodel, _threads as threads

    def exercise():
        rng = np.random.default_rng(0)
        x = rng.random((2, 4, 9, 9), dtype=np.float32)
        w = rng.random((6, 2, 3, 3), dtype=np.float32)
        for name in ln.algorithms():
            for layout in ("NCHW", "NHWC"):
                xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
                options = dict(padding=1, groups=2, layout=layout)
                if ln.supports(name, xl.shape, w.shape, **options):
                    ln.conv2d(xl, w, algorithm=name, **options)
                    ln.Conv2d(w, algorithm=name, **options)(xl)
        ln.Conv2d(w, padding=1, groups=2)(x)
        ln.plan(x.shape, w.shape, padding=1, groups=2, mode="measure")
        costmodel.calibrate()

    exercise()  # compile (or load) everything with the real dispatchers first
    outside = set()

    def watched(dispatcher):
        def call(*args, **kwargs):
            # Serial kernels (a call's plan says when one runs alone) need no thread counts.
            if dispatcher.targetoptions.get("parallel") and not threads.inside_kernel_threads():
                outside.add(f"{dispatcher.py_func.__module__}.{dispatcher.__name__}")
            return dispatcher(*args, **kwargs)
        return call

    # Compiled callers are bound to the real dispatchers; Python callers look
    # the module globals up at each call and now meet the watchers.
    watchers = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("lowmem_numba"):
            for attribute, value in list(vars(module).items()):
                if isinstance(value, Dispatcher):
                    setattr(module, attribute, watchers.setdefault(id(value), watched(value)))
    exercise()
    print("outside", sorted(outside))
"""


def test_every_parallel_kernel_launch_from_python_is_inside_kernel_threads(tmp_path):
    # Numba's workqueue layer aborts on concurrent launches only by chance;
    # this finds any launch path that skips kernel_threads deterministically.
    result = run_python(EVERY_LAUNCH, {"LOWMEM_NUMBA_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "outside []" in result.stdout, result.stdout


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
    # Checks the library's own holder count, which decides when the limit
    # is set and restored (the counts themselves: the test below).
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
            seen["limited"] = threads_module._blas_restore is not None

    workers = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert seen == {"holders": 1, "limited": True}
    assert threads_module._blas_depth == 0 and threads_module._blas_restore is None


def test_kernel_threads_holds_blas_only_when_asked():
    before = blas_threads()
    with threads_module.kernel_threads(1, blas=False):
        assert blas_threads() == before
        assert threads_module.inside_kernel_threads()
    with threads_module.kernel_threads(1):
        assert set(blas_threads()) == {1}
    assert blas_threads() == before
    assert not threads_module.inside_kernel_threads()


def test_kernel_threads_restores_after_an_exception():
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    before = blas_threads()
    with pytest.raises(KeyError):
        with threads_module.kernel_threads(1):
            assert numba.get_num_threads() == 1
            raise KeyError("inside")
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    assert blas_threads() == before
    assert not threads_module.inside_kernel_threads()
    assert threads_module._blas_depth == 0


@pytest.mark.parametrize("through", ["C functions", "numba's own"])
def test_kernel_threads_sets_and_restores_the_callers_numba_count(monkeypatch, through):
    """Both ways of setting the count: the threading layer's C functions
    (found once), and numba.set_num_threads where they are missing."""
    if through == "numba's own":
        monkeypatch.setattr(threads_module, "_thread_functions", None)
        monkeypatch.setattr(threads_module, "_numba_parallel", types.SimpleNamespace())
    maximum = numba.config.NUMBA_NUM_THREADS
    for caller in {1, maximum}:
        numba.set_num_threads(caller)
        try:
            for count in {1, maximum}:
                with threads_module.kernel_threads(count, blas=False):
                    assert numba.get_num_threads() == count
                assert numba.get_num_threads() == caller
        finally:
            numba.set_num_threads(maximum)
    assert (threads_module._numba_thread_functions() is None) == (through == "numba's own")


def test_calls_blas_says_which_kernels_call_blas():
    """An algorithm may skip the BLAS hold only if its module reaches no
    sgemm: neither the binding nor the batched helper is among its names."""
    import sys

    from lowmem_numba import _blas
    from lowmem_numba._algorithms import _common
    from lowmem_numba import _registry as registry

    engines = {id(_blas.gemm), id(_common.batched_gemm)}
    for name in ln.algorithms():
        algorithm = registry.get(name)
        module = sys.modules[algorithm.plan_kernel.__module__]
        reaches_blas = any(id(value) in engines for value in vars(module).values())
        assert algorithm.calls_blas == reaches_blas, name


def test_a_kernel_threads_instance_is_entered_once():
    context = threads_module.kernel_threads(1)
    with context:
        with pytest.raises(RuntimeError, match="entered once"):
            with context:
                pass
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    assert not threads_module.inside_kernel_threads()


BLAS_HELD_FROM_ANY_THREAD = """
    import threading
    from threadpoolctl import ThreadpoolController, threadpool_info
    from lowmem_numba import _threads

    def counts():
        return sorted({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})

    controller = ThreadpoolController()
    before = counts()
    taken, finish = threading.Event(), threading.Event()

    def controlling_thread():
        # threadpoolctl (3.6+) lets only this thread change an OpenBLAS pool
        # from now on, and silently ignores the others.
        controller.select(user_api="blas").limit(limits=before[-1])
        taken.set()
        finish.wait(60)

    helper = threading.Thread(target=controlling_thread)
    helper.start()
    taken.wait(60)
    seen = {}
    with _threads.kernel_threads(1):
        seen["main"] = counts()

    def other():
        with _threads.kernel_threads(1):
            seen["other"] = counts()

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    finish.set()
    helper.join()
    print("before", before, "held", seen["main"], seen["other"], "after", counts())
"""


def test_blas_is_held_whichever_python_thread_controls_threadpoolctl():
    result = run_python(BLAS_HELD_FROM_ANY_THREAD)
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    before = line.split(" held ")[0]
    assert "held [1] [1]" in line, line
    assert line.endswith("after " + before.split("before ")[1]), line


OPENMP_COUNT_KEPT = """
    import ctypes
    import ctypes.util
    import numpy as np

    name = ctypes.util.find_library("gomp")
    if name is None:
        print("no libgomp")
        raise SystemExit
    gomp = ctypes.CDLL(name)  # loaded first, as torch or scikit-learn load it
    gomp.omp_set_num_threads(1)
    import numba
    import lowmem_numba as ln

    x = np.ones((1, 4, 9, 9), np.float32)
    w = np.ones((4, 4, 3, 3), np.float32)
    ln.conv2d(x, w, padding=1, algorithm="direct-ukernel")
    print("openmp", gomp.omp_get_max_threads(), "numba", numba.get_num_threads(), numba.threading_layer())
"""


def test_starting_numbas_openmp_layer_keeps_the_callers_openmp_thread_count():
    # Numba's omp layer set the caller's OpenMP count to NUMBA_NUM_THREADS
    # when it started: a torch.set_num_threads(1) before the first call was lost.
    result = run_python(OPENMP_COUNT_KEPT, {"NUMBA_THREADING_LAYER": "omp", "NUMBA_NUM_THREADS": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    if "no libgomp" in result.stdout:
        pytest.skip("GNU OpenMP not found")
    assert result.stdout.strip().splitlines()[-1] == "openmp 1 numba 3 omp", result.stdout


SERIAL_CASES = [  # algorithm, kernel module, batch, in and out channels, size, kernel, stride, groups, threads, serial
    ("direct-ukernel", ukernel, 1, 5, 11, 9, 3, 1, 1, 1, True),
    ("direct-ukernel", ukernel, 1, 5, 11, 9, 3, 1, 1, 2, False),
    ("direct-ukernel", ukernel, 2, 5, 11, 9, 3, 1, 1, 1, False),
    ("direct-ukernel", ukernel, 1, 5, 11, 9, 3, 2, 1, 1, False),
    ("direct-pixels", pixels, 1, 300, 50, 13, 1, 1, 1, 1, True),     # copies, on a small plane
    ("direct-pixels", pixels, 8, 300, 200, 13, 1, 1, 1, 1, False),   # ... over PIXELS_SERIAL_MAX_MACS
    ("direct-pixels", pixels, 2, 64, 11, 56, 1, 1, 1, 1, True),      # the plain sweep
    ("direct-pixels", pixels, 1, 300, 50, 57, 1, 1, 1, 1, False),    # copies, on a large split plane
    ("direct-pixels", pixels, 1, 64, 11, 56, 1, 1, 1, 2, False),
    ("direct-pixels", pixels, 1, 5, 11, 9, 3, 1, 1, 1, False),       # staged
    ("depthwise-blocked", depthwise_blocked, 2, 40, 40, 9, 3, 1, 40, 1, True),
    ("depthwise-blocked", depthwise_blocked, 1, 40, 40, 12, 3, 2, 40, 2, False),
]


@pytest.mark.parametrize("name, module, batch, channels, out_channels, size, k, stride, groups, threads, serial",
                         SERIAL_CASES)
def test_only_serial_calls_run_alone_outside_kernel_threads(monkeypatch, name, module, batch, channels, out_channels,
                                                            size, k, stride, groups, threads, serial):
    """Where its plan says the call is serial, the kernel's serial twin runs
    without setting any thread count; every other call runs the parallel
    kernel inside kernel_threads."""
    from lowmem_numba import _execute

    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs two Numba threads")
    kernel = {ukernel: "_ukernel_conv", pixels: "_pixels_conv", depthwise_blocked: "_depthwise_blocked"}[module]
    entered, ran = [], []
    real_threads = _execute.kernel_threads

    def recording_threads(*args, **kwargs):
        entered.append(args)
        return real_threads(*args, **kwargs)

    def recording(dispatcher, label):
        return lambda *args: ran.append(label) or dispatcher(*args)

    monkeypatch.setattr(_execute, "kernel_threads", recording_threads)
    monkeypatch.setattr(module, kernel, recording(getattr(module, kernel), "parallel"))
    monkeypatch.setattr(module, kernel + "_serial", recording(getattr(module, kernel + "_serial"), "serial"))
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, (batch, channels, size, size + 1)).astype(np.float32)
    w = rng.integers(-3, 4, (out_channels, channels // groups, k, k)).astype(np.float32)
    b = rng.integers(-3, 4, out_channels).astype(np.float32)
    padding = k // 2
    layer = ln.Conv2d(w, b, stride=stride, padding=padding, groups=groups, algorithm=name, threads=threads)
    entered.clear()  # the weights' packing at construction
    got = layer(x)
    g = make_geometry(x.shape, w.shape, stride, padding, groups=groups)
    assert ln._registry.get(name).plan(g, threads, prepacked=True).sets_threads is not serial
    pad = ((padding, padding), (padding, padding))
    np.testing.assert_array_equal(got, conv2d_reference(x, w, b, (stride, stride), pad, groups=groups))
    assert set(ran) == {"serial" if serial else "parallel"}
    assert (entered == []) is serial
