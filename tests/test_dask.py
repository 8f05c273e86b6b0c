"""lowmem_numba.dask: convolutions of dask arrays, on the threaded scheduler and a LocalCluster of processes.

One two-worker LocalCluster (processes, one thread each) serves the module; the
test that kills a worker runs last.  Skipped when dask or distributed is absent.
"""

import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402  (a dependency of distributed)
import dask  # noqa: E402

import lowmem_numba as ln  # noqa: E402
import lowmem_numba.dask as lnd  # noqa: E402
from lowmem_numba._threads import max_threads  # noqa: E402

# Workers cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

RNG = np.random.default_rng(7)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def client():
    ln.plan((1, 4, 8, 8), (4, 4, 3, 3), padding=1)  # calibrate here once; workers read the stored constants
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as c:
        yield c


def _local(x, w, b=None, chunks=None, **kwargs):
    """lowmem_numba.conv2d chunk by chunk, concatenated (what each task computes)."""
    parts, start = [], 0
    for n in chunks:
        parts.append(ln.conv2d(x[start:start + n], w, b, **kwargs))
        start += n
    return np.concatenate(parts)


def _forget(client):
    client.run(lnd._reset_process_report, forget=True)


def _reports(client):
    return client.run(lnd._process_report)


# -- results --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm, layout, kwargs", [
    ("kn2row-aa-ab", "NCHW", dict(padding=1)),
    ("direct-ukernel", "NHWC", dict(stride=2, padding=(1, 2))),
    ("im2col-copy-self-ab-ki", "NCHW", dict(dilation=2, groups=2)),
])
def test_equals_local_conv2d_with_the_same_algorithm_and_threads(client, algorithm, layout, kwargs):
    xn = _rand(7, 6, 11, 10)
    w, b = _rand(8, 6 // kwargs.get("groups", 1), 3, 3), _rand(8)
    if layout == "NHWC":
        xn = np.ascontiguousarray(xn.transpose(0, 2, 3, 1))
    chunks = (3, 3, 1)
    x = da.from_array(xn, chunks=(chunks,) + tuple((s,) for s in xn.shape[1:]))
    y = lnd.conv2d(x, w, b, algorithm=algorithm, threads=1, layout=layout, **kwargs)
    expected = _local(xn, w, b, chunks, algorithm=algorithm, threads=1, layout=layout, **kwargs)
    assert y.shape == expected.shape and y.dtype == np.float32 and y.chunks[0] == chunks
    got = y.compute()
    np.testing.assert_array_equal(got, expected)


def test_default_threads_follow_the_rule(client):
    _forget(client)
    xn, w = _rand(6, 4, 9, 9), _rand(5, 4, 3, 3)
    y = lnd.conv2d(da.from_array(xn, chunks=(2, -1, -1, -1)), w, padding=1)
    np.testing.assert_allclose(y.compute(), ln.conv2d(xn, w, padding=1), rtol=1e-4, atol=1e-4)
    cores = int(dask.system.CPU_COUNT)
    expected = max(1, min(max_threads(), cores // 2))  # two workers of one thread on this machine
    used = [r["task_threads"] for r in _reports(client).values() if r["runs"]]
    assert used and all(threads == [expected] for threads in used), used


def test_empty_batch(client):
    w = _rand(4, 3, 3, 3)
    x = da.zeros((0, 3, 8, 8), chunks=(2, -1, -1, -1), dtype=np.float32)
    y = lnd.conv2d(x, w, padding=1)
    assert y.shape == (0, 4, 8, 8) and y.dtype == np.float32
    got = y.compute()
    assert got.shape == (0, 4, 8, 8) and got.dtype == np.float32
    z = lnd.map_layers(x, [ln.Conv2d(w, padding=1), ln.Conv2d(_rand(2, 4, 1, 1))], np.tanh).compute()
    assert z.shape == (0, 2, 8, 8)


def test_uneven_chunks_and_chunked_image_axes_are_merged(client):
    xn, w = _rand(7, 3, 9, 9), _rand(4, 3, 3, 3)
    x = da.from_array(xn, chunks=((1, 4, 2), (2, 1), (5, 4), (9,)))
    y = lnd.conv2d(x, w, stride=2, algorithm="direct-ukernel", threads=1)
    assert y.chunks == ((1, 4, 2), (4,), (4,), (4,))
    np.testing.assert_array_equal(y.compute(), _local(xn, w, None, (1, 4, 2), stride=2, algorithm="direct-ukernel",
                                                      threads=1))


def test_threaded_and_synchronous_schedulers():
    xn, w = _rand(5, 4, 8, 8), _rand(6, 4, 3, 3)
    x = da.from_array(xn, chunks=(2, -1, -1, -1))
    y = lnd.conv2d(x, w, padding=1, algorithm="kn2row-aa-ab", threads=1)
    expected = _local(xn, w, None, (2, 2, 1), padding=1, algorithm="kn2row-aa-ab", threads=1)
    np.testing.assert_array_equal(y.compute(scheduler="threads"), expected)
    np.testing.assert_array_equal(y.compute(scheduler="sync"), expected)


# -- map_layers -----------------------------------------------------------------------------------------------

def test_map_layers_matches_the_local_stack_with_one_arena_per_worker(client):
    layers = [ln.Conv2d(_rand(8, 3, 3, 3), _rand(8), padding=1, algorithm="kn2row-aa-ab"),
              ln.Conv2d(_rand(8, 8, 3, 3), stride=2, algorithm="im2col-copy-self-ab-ki"),
              ln.Conv2d(_rand(4, 8, 1, 1), algorithm="auto")]
    xn = _rand(8, 3, 12, 12)
    _forget(client)
    y = lnd.map_layers(da.from_array(xn, chunks=(2, -1, -1, -1)), layers, activation=np.tanh, threads=1)
    assert y.shape == (8, 4, 5, 5) and y.chunks[0] == (2, 2, 2, 2)
    got = y.compute()
    # The same stack here, chunk by chunk, on one thread.
    expected, shapes = [], []
    for start in range(0, 8, 2):
        z = xn[start:start + 2]
        for index, layer in enumerate(layers):
            shapes.append((layer, z.shape))
            layer.threads = 1
            z = layer(z)
            if index < len(layers) - 1:
                z = np.tanh(z)
        expected.append(z)
    np.testing.assert_allclose(got, np.concatenate(expected), rtol=1e-5, atol=1e-5)
    largest = max(layer.workspace_bytes_for(shape) for layer, shape in shapes)
    for report in _reports(client).values():
        if report["runs"]:
            assert report["runs"] == report["images"] // 2 and report["stack_builds"] == 1
            assert report["arena_bytes"] == [largest], report  # one arena, sized to the largest layer
            algorithms = [p["algorithm"] for p in sorted(report["plans"], key=lambda p: p["layer"])]
            assert algorithms[:2] == ["kn2row-aa-ab", "im2col-copy-self-ab-ki"]


def test_an_activation_that_changes_the_shape_fails_when_it_runs():
    layers = [ln.Conv2d(_rand(4, 3, 3, 3), padding=1), ln.Conv2d(_rand(4, 4, 3, 3), padding=1)]
    x = da.zeros((2, 3, 8, 8), chunks=(1, -1, -1, -1), dtype=np.float32)
    y = lnd.map_layers(x, layers, activation=lambda z: z[:, :2])
    with pytest.raises(ValueError, match="activation must return a float32 array of the shape it gets"):
        y.compute(scheduler="sync")


# -- weights travel once ----------------------------------------------------------------------------------

def test_weights_travel_once_per_worker_and_layers_are_built_once(client):
    w = _rand(64, 32, 3, 3)  # 72 KiB
    x = da.from_array(_rand(12, 32, 10, 10), chunks=(1, -1, -1, -1))
    y = lnd.conv2d(x, w, padding=1, algorithm="kn2row-aa-ab")
    # One key holds the weights; no task carries them.
    (optimized,) = dask.optimize(y)
    graph = dict(optimized.__dask_graph__())
    weight_keys = [k for k in graph if str(k).startswith("lowmem-weights-")]
    assert len(weight_keys) == 1
    assert all(len(cloudpickle.dumps(task)) < w.nbytes / 4 for k, task in graph.items() if k not in weight_keys)

    _forget(client)
    y.compute()
    first = _reports(client)
    assert sum(r["runs"] for r in first.values()) == 12
    for report in first.values():
        # Once on every worker that ran tasks (the worker that made the weights' key may have run none).
        assert report["weight_loads"] <= 1 and report["weight_loads"] >= (1 if report["runs"] else 0), first
        assert report["stack_builds"] == (1 if report["runs"] else 0), first
    # A new graph on the same weights: they travel again (once per worker), the built layers are reused.
    lnd.conv2d(x[:6], w, padding=1, algorithm="kn2row-aa-ab").compute()
    second = _reports(client)
    for address, report in second.items():
        assert report["weight_loads"] - first[address]["weight_loads"] <= 1, second
        assert report["stack_builds"] <= 1, second  # a worker that had built them did not again


def test_the_weight_payload_counts_its_loads():
    stack = lnd._Stack.of([ln.Conv2d(_rand(2, 2, 1, 1))])
    before = lnd._process_report()["weight_loads"]
    copy = pickle.loads(pickle.dumps(stack))
    assert copy.token == stack.token and lnd._process_report()["weight_loads"] == before + 1


def test_layers_called_locally_travel_without_their_last_call():
    """A layer keeps its last call's plan (with its workspace and algorithm
    objects) to repeat it: that stays in its process.  The payload of a
    layer called before and after it was built pickles with plain pickle,
    has the same token, and its rebuilt layers run."""
    layer = ln.Conv2d(_rand(3, 2, 3, 3), padding=1)
    x = _rand(2, 2, 5, 5)
    expected = layer(x)
    stack = lnd._Stack.of([layer])
    layer(_rand(1, 2, 5, 5))
    again = lnd._Stack.of([layer])
    assert again.token == stack.token and all("_repeat" not in state for state in again.states)
    (rebuilt,) = pickle.loads(pickle.dumps(again)).build()
    np.testing.assert_array_equal(rebuilt(x), expected)


# -- validation when the graph is built ---------------------------------------------------------------------

def _poison(block):
    raise AssertionError("the graph ran")


POISON = da.zeros((4, 4, 8, 8), chunks=(2, -1, -1, -1), dtype=np.float32).map_blocks(_poison, dtype=np.float32)
W = np.ones((4, 4, 3, 3), np.float32)


@pytest.mark.parametrize("args, kwargs", [
    ((W.astype(np.float64),), {}),
    ((np.ones((4, 5, 3, 3), np.float32),), {}),
    ((W,), dict(stride=0)),
    ((W,), dict(stride=2, padding="same")),
    ((W,), dict(groups=3)),
    ((W, np.ones(3, np.float32)), {}),
    ((W,), dict(algorithm="nope")),
    ((W,), dict(algorithm="kn2row-aa-ab", stride=2)),
    ((W,), dict(threads=0)),
    ((W,), dict(threads=10**6)),
    ((W,), dict(memory_limit=-1)),
    ((W,), dict(algorithm="im2col-copy-self-ab-ki", memory_limit=16, threads=1)),
    ((W,), dict(layout="NCWH")),
    ((np.ones((4, 4, 9, 9), np.float32),), {}),  # kernel larger than the image
])
def test_bad_arguments_are_rejected_when_the_graph_is_built(args, kwargs):
    with pytest.raises((TypeError, ValueError)) as local:
        ln.conv2d(np.zeros((2, 4, 8, 8), np.float32), *args, **kwargs)
    with pytest.raises(type(local.value)) as lazy:
        lnd.conv2d(POISON, *args, **kwargs)
    assert str(lazy.value) == str(local.value)


@pytest.mark.parametrize("x, error, words", [
    (np.zeros((2, 4, 8, 8), np.float32), TypeError, "dask.array.Array"),
    (POISON.astype(np.float64), TypeError, "float32"),
    (POISON[0], ValueError, "4-D"),
    (POISON[POISON.sum(axis=(1, 2, 3)) > 0].transpose(1, 0, 2, 3), ValueError, "compute_chunk_sizes"),
])
def test_bad_inputs_are_rejected_when_the_graph_is_built(x, error, words):
    with pytest.raises(error, match=words):
        lnd.conv2d(x, W)


def test_map_layers_rejects_when_the_graph_is_built():
    good = ln.Conv2d(W, padding=1)
    with pytest.raises(ValueError, match=r"layers\[1\] on input shape \(2, 4, 8, 8\).*channels"):
        lnd.map_layers(POISON, [good, ln.Conv2d(np.ones((4, 3, 3, 3), np.float32))])
    with pytest.raises(TypeError, match=r"layers\[0\] must be a lowmem_numba.Conv2d"):
        lnd.map_layers(POISON, [W])
    with pytest.raises(ValueError, match="empty"):
        lnd.map_layers(POISON, [])
    with pytest.raises(TypeError, match="activation must be callable"):
        lnd.map_layers(POISON, [good], activation=1)
    with pytest.raises(ValueError, match="one layout"):
        lnd.map_layers(POISON, [good, ln.Conv2d(W, padding=1, layout="NHWC")])
    assert lnd.map_layers(POISON, [good, good]).shape == (4, 4, 8, 8)  # valid: still lazy, nothing ran


# -- threads and memory ---------------------------------------------------------------------------------------

def test_thread_rule():
    assert lnd._threads_rule(8, 2, 8) == 4
    assert lnd._threads_rule(2, 4, 2) == 1
    assert lnd._threads_rule(16, 1, 4) == 4
    assert lnd._threads_rule(3, 2, 8) == 1
    assert lnd.task_threads(1) == 1
    assert lnd.task_threads() == max(1, min(max_threads(), int(dask.system.CPU_COUNT)))  # synchronous: all cores


@pytest.mark.skipif(max_threads() < 2, reason="needs two Numba threads")
def test_a_named_algorithm_lowers_its_threads_to_fit_memory_limit():
    w, xn = _rand(16, 8, 3, 3), _rand(2, 8, 64, 64)
    layer = ln.Conv2d(w, padding=1, algorithm="kn2row-aa-ab", threads=1)
    limit = layer.workspace_bytes_for((1, 8, 64, 64))  # at one thread
    layer.threads = 2
    assert layer.workspace_bytes_for((1, 8, 64, 64)) > limit  # so two threads would not fit
    lnd._reset_process_report(forget=True)
    x = da.from_array(xn, chunks=(1, -1, -1, -1))
    y = lnd.conv2d(x, w, padding=1, algorithm="kn2row-aa-ab", memory_limit=limit)
    got = y.compute(scheduler="sync")  # the synchronous scheduler gives a task every core
    np.testing.assert_array_equal(got, _local(xn, w, None, (1, 1), padding=1, algorithm="kn2row-aa-ab", threads=1))
    assert {p["threads"] for p in lnd._process_report()["plans"]} == {1}


WORKQUEUE = """
    import logging
    import numpy as np
    import dask.array as da
    import distributed
    import numba
    import lowmem_numba as ln
    import lowmem_numba.dask as lnd

    if __name__ == "__main__":
        xn = np.random.default_rng(0).standard_normal((8, 4, 9, 9)).astype(np.float32)
        w = np.random.default_rng(1).standard_normal((4, 4, 3, 3)).astype(np.float32)
        expected = ln.conv2d(xn, w, padding=1, algorithm="kn2row-aa-ab", threads=1)
        y = lnd.conv2d(da.from_array(xn, chunks=(1, -1, -1, -1)), w, padding=1, algorithm="kn2row-aa-ab", threads=1)
        print("threads", np.array_equal(y.compute(scheduler="threads", num_workers=4), expected),
              numba.threading_layer())
        with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                                      silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as client:
            ok = np.array_equal(y.compute(), expected)
            (report,) = client.run(lnd._process_report).values()
            print("cluster", ok, report["threading_layer"], report["runs"])
"""


def test_workqueue_layer_does_not_abort(tmp_path):
    script = tmp_path / "workqueue_dask.py"  # a file: spawned workers re-import the main module
    script.write_text(textwrap.dedent(WORKQUEUE))
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "threads True workqueue" in done.stdout, done.stdout
    assert "cluster True workqueue 8" in done.stdout, done.stdout


# -- a worker dies (last: the cluster restarts it) -------------------------------------------------------------

def _slow(block):
    time.sleep(0.3)
    return block


def test_a_worker_killed_during_a_computation_still_gives_the_right_result(client):
    xn, w = _rand(12, 4, 9, 9), _rand(4, 4, 3, 3)
    x = da.from_array(xn, chunks=(1, -1, -1, -1)).map_blocks(_slow, dtype=np.float32)
    y = lnd.conv2d(x, w, padding=1, algorithm="kn2row-aa-ab", threads=1)
    expected = _local(xn, w, None, (1,) * 12, padding=1, algorithm="kn2row-aa-ab", threads=1)
    pids = client.run(os.getpid)
    parts = client.compute(y.to_delayed().ravel().tolist())
    first = next(iter(distributed.as_completed(parts)))
    holders = client.who_has([first])[first.key]
    victim = holders[0] if holders else sorted(pids)[0]
    os.kill(pids[victim], signal.SIGKILL)  # results it held and tasks it was running are lost
    got = np.concatenate(client.gather(parts))
    np.testing.assert_array_equal(got, expected)
    client.wait_for_workers(2, timeout=120)  # the nanny restarted it


def test_the_readme_example_is_the_example_script_and_runs():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = root / "examples" / "dask_quickstart.py"
    readme = (root / "README.md").read_text()
    start = readme.index("```python\nimport dask.array") + len("```python\n")
    assert readme[start:readme.index("```", start)].strip() == script.read_text().split("\n\n", 1)[1].strip()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("(64, 64, 56, 56) "), done.stdout
