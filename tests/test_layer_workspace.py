"""Conv2d layers, the Workspace arena, and allocation-free warm calls."""

import threading
import tracemalloc

import numpy as np
import pytest

import lowmem_numba as ln
from naive import assert_matches_integer_reference, conv2d_reference
from subprocess_helper import run_python

ALGORITHMS = ln.algorithms()
RNG = np.random.default_rng(3)


def integers(shape):
    return RNG.integers(-3, 4, size=shape).astype(np.float32)


def depthwise_only(name):
    """Whether the algorithm handles only one input channel per group."""
    return name != "auto" and ln._registry.get(name).family == "depthwise"


def kernel_size_for(name):
    """3, 5 or 1: the first kernel size the algorithm supports."""
    return next((k for k in (3, 5) if ln.supports(name, (1, 8, 9, 9), (8, 8, k, k), padding=k // 2)), 1)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", ALGORITHMS + ("auto",))
def test_layer_matches_reference_and_reuses_its_workspace(name, layout):
    k = kernel_size_for(name) if name != "auto" else 3
    m, groups = (6, 6) if depthwise_only(name) else (8, 2)
    x = integers((2, 6, 11, 10))
    w = integers((m, 6 // groups, k, k))
    b = integers((m,))
    expected = conv2d_reference(x, w, b, padding=((k // 2,) * 2,) * 2, groups=groups)
    if layout == "NHWC":
        x, expected = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), expected.transpose(0, 2, 3, 1)
    layer = ln.Conv2d(w, b, padding=k // 2, groups=groups, algorithm=name, layout=layout)
    w[...] = 0  # the layer packed or copied its weights: later changes do not leak in
    first = layer(x)
    picked = layer.plan_for(x.shape).algorithm if name == "auto" else name
    assert_matches_integer_reference(first, expected, picked)
    grown = layer.workspace.grow_count
    out = np.empty_like(first)
    assert layer(x, out=out) is out
    assert_matches_integer_reference(out, expected, picked)
    assert layer.workspace.grow_count == grown <= 1
    assert layer.workspace_bytes == layer.workspace_bytes_for(x.shape) <= layer.workspace.nbytes


def numpy_allocations_during(call):
    """Bytes numpy allocated for array data while ``call`` ran (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        call()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    domain = tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)
    stats = after.filter_traces([domain]).compare_to(before.filter_traces([domain]), "filename")
    return sum(stat.size_diff for stat in stats if stat.size_diff > 0), tracemalloc.get_traced_memory


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_warm_layer_call_with_out_allocates_no_array_memory(name, layout):
    k = kernel_size_for(name)
    shape = (2, 16, 20, 20) if layout == "NCHW" else (2, 20, 20, 16)
    x = np.ones(shape, np.float32)
    groups = 16 if depthwise_only(name) else 1
    layer = ln.Conv2d(np.ones((16, 16 // groups, k, k), np.float32), padding=k // 2, groups=groups,
                      algorithm=name, layout=layout)
    out = layer(x)
    tracemalloc.start()
    try:
        layer(x, out=out)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Python objects of the call itself (argument tuples, the validated
    # geometry) come to a few KiB; any array buffer would be >= 25 KiB here.
    assert peak < 16 * 1024, peak


NRT_LAYER = """
    import numpy as np
    from numba.core.runtime import rtsys
    import lowmem_numba as ln

    for name in ln.algorithms():
        k = next((k for k in (3, 5) if ln.supports(name, (1, 8, 9, 9), (8, 8, k, k), padding=k // 2)), 1)
        groups = 1 if ln.supports(name, (1, 8, 9, 9), (8, 8, k, k), padding=k // 2) else 8  # depthwise
        counts = []
        for batch, size in ((1, 12), (3, 12), (1, 30)):
            layer = ln.Conv2d(np.ones((8, 8 // groups, k, k), np.float32), padding=k // 2, groups=groups,
                              algorithm=name)
            x = np.ones((batch, 8, size, size), np.float32)
            out = layer(x)
            layer(x, out=out)
            before = rtsys.get_allocation_stats()
            layer(x, out=out)
            after = rtsys.get_allocation_stats()
            counts.append(after.alloc - before.alloc)
        print(name, *counts)
"""


def test_warm_layer_call_allocates_nothing_in_numba():
    # Numba's runtime counts one record per array argument it receives (a
    # wrapper around the caller's buffer, no data).  The count staying the same
    # for a larger image shows nothing is allocated per tile or tap; for batch
    # 3 it stays the same too, except where the call's layout differs from the
    # kernel's, or direct-pixels stages a copy of each image: those launch one
    # image at a time, to keep their buffer at one image.
    result = run_python(NRT_LAYER, {"NUMBA_NRT_STATS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    from lowmem_numba._algorithms._common import unpadded_1x1

    for line in result.stdout.strip().splitlines():
        name, *counts = line.split()
        single, batch_of_3, larger = map(int, counts)
        # <= 16: the array arguments, plus the depthwise kernels' few small
        # index tables per thread (tens of bytes, not per tile).
        assert single == larger and single <= 24, line
        native = ln._registry.get(name).input_layout == ln._registry.get(name).output_layout == "NCHW"
        staged = name == "direct-pixels" and not unpadded_1x1(
            ln._geometry.make_geometry((3, 8, 12, 12), (8, 8, 3, 3), padding=1))
        assert batch_of_3 == (3 * single if staged or not native else single), line


def test_persistent_and_workspace_bytes_are_reported_apart():
    w = np.ones((64, 32, 3, 3), np.float32)
    layer = ln.Conv2d(w, padding=1, algorithm="kn2row-aa-ab", input_shape=(1, 32, 28, 28), threads=1)
    assert layer.persistent_bytes == w.nbytes  # the packed taps, nothing else
    functional = ln.workspace_bytes("kn2row-aa-ab", (1, 32, 28, 28), w.shape, padding=1, threads=1)
    assert layer.workspace_bytes == functional - w.nbytes
    im2col = ln.Conv2d(w, padding=1, algorithm="im2col-copy-self-ab-ki", input_shape=(1, 32, 28, 28))
    assert im2col.workspace_bytes == 4 * 32 * 9 * 28 * 28
    assert ln.Conv2d(w, padding=1).workspace_bytes is None


def test_layer_rejects_bad_configuration_at_construction():
    w = np.ones((4, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match="stride"):
        ln.Conv2d(w, stride=2, algorithm="kn2row-aa-ab")
    with pytest.raises(TypeError, match="float32"):
        ln.Conv2d(w.astype(np.float64))
    with pytest.raises(ValueError, match="bias"):
        ln.Conv2d(w, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="unknown algorithm"):
        ln.Conv2d(w, algorithm="fast")
    with pytest.raises(ValueError, match="C=4"):
        ln.Conv2d(w)(np.ones((1, 3, 9, 9), np.float32))


def test_fixed_workspace_too_small_raises_and_growable_grows_once():
    x = np.ones((1, 8, 16, 16), np.float32)
    w = np.ones((8, 8, 3, 3), np.float32)
    needed = ln.workspace_bytes("im2col-copy-self-ab-ki", x.shape, w.shape, padding=1)
    with pytest.raises(ValueError, match=f"needs {needed} bytes"):
        ln.conv2d(x, w, padding=1, algorithm="im2col-copy-self-ab-ki", workspace=ln.Workspace(100, fixed=True))
    arena = ln.Workspace()
    for _ in range(3):
        ln.conv2d(x, w, padding=1, algorithm="im2col-copy-self-ab-ki", workspace=arena)
    assert arena.grow_count == 1 and arena.nbytes == needed
    with pytest.raises(TypeError, match="Workspace"):
        ln.conv2d(x, w, workspace=np.empty(10, np.float32))


def test_lease_grows_refuses_when_fixed_and_always_releases_the_arena():
    arena = ln.Workspace(16)
    with arena.lease(4) as buffer:
        assert buffer.size == 4 and buffer.dtype == np.float32
        assert not arena._lock.acquire(blocking=False)  # held while leased
    with arena.lease(40) as buffer:
        assert buffer.size == 40
    assert arena.grow_count == 1 and arena.nbytes == 160
    with pytest.raises(RuntimeError, match="inside"):
        with arena.lease(8):
            raise RuntimeError("inside")
    fixed = ln.Workspace(16, fixed=True)
    with pytest.raises(ValueError, match="fixed at 16 bytes"):
        with fixed.lease(5):
            pass
    for workspace in (arena, fixed):  # released after the errors
        assert workspace._lock.acquire(blocking=False)
        workspace._lock.release()


@pytest.mark.parametrize("elements", [1, 17, 1000, 300_000])  # 1.2 MB: mapped pages, 16 bytes past a page
def test_every_buffer_the_library_allocates_starts_on_a_cache_line(elements, monkeypatch):
    from lowmem_numba import _execute

    def line_offset(array):
        return array.ctypes.data % 64

    arena = ln.Workspace(4 * elements)
    assert arena.nbytes == 4 * elements and line_offset(arena._buffer) == 0
    with arena.lease(elements + 100) as grown:
        assert grown.size == elements + 100 and line_offset(grown) == 0
    g = ln._geometry.make_geometry((1, 16, 8, 8), (elements // 16 + 1, 16, 1, 1))
    for name in ("direct-ukernel", "direct-pixels"):  # packed, and a copy as given
        algorithm = ln._registry.get(name)
        weights = np.arange(16 * (elements // 16 + 1), dtype=np.float32)
        assert line_offset(_execute.prepare_weights(algorithm, weights, g)) == 0
    fresh = []
    run = _execute._execute_in
    monkeypatch.setattr(_execute, "_execute_in", lambda *args: (fresh.append(args[-1]), run(*args)))
    x = np.ones((1, 16, 8, 8), np.float32)
    ln.conv2d(x, np.ones((elements // 16 + 1, 16, 3, 3), np.float32), padding=1, algorithm="direct-ukernel")
    assert fresh and all(line_offset(buffer) == 0 for buffer in fresh)


def test_network_arena_is_the_largest_not_the_sum():
    shapes = [(1, 3, 32, 32), (1, 16, 32, 32), (1, 32, 16, 16)]
    layers = [ln.Conv2d(integers((16, 3, 3, 3)), padding=1, algorithm="im2col-copy-self-ab-ki"),
              ln.Conv2d(integers((32, 16, 3, 3)), padding=1, algorithm="kn2row-aa-ab"),
              ln.Conv2d(integers((8, 32, 5, 5)), padding=2, algorithm="im2col-copy-short-ab-ki")]
    needs = [layer.workspace_bytes_for(shape) for layer, shape in zip(layers, shapes)]
    arena = ln.Workspace.shared_by(layers, shapes)
    assert arena.nbytes == max(needs) < sum(needs)
    x = integers(shapes[0])
    for layer, shape in zip(layers, shapes):
        y = layer(x if x.shape == shape else integers(shape))
        assert y.shape[1] == layer.weight_shape[0]
    assert arena.grow_count == 0 and all(layer.workspace is arena for layer in layers)


def test_threads_sharing_one_workspace_take_turns():
    arena = ln.Workspace()
    x = integers((1, 8, 24, 24))
    w = integers((8, 8, 3, 3))
    expected = conv2d_reference(x, w, padding=((1, 1), (1, 1)))
    results = []

    def worker(name):
        for _ in range(10):
            results.append(np.array_equal(ln.conv2d(x, w, padding=1, algorithm=name, workspace=arena), expected))

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("kn2row-aa-ab", "im2col-copy-self-ab-ki") * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 40 and all(results)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", ALGORITHMS + ("auto",))
def test_layer_on_an_empty_batch(name, layout):
    # N = 0 works with and without a named algorithm, planned at construction
    # or not, and in a shared arena; it needs no workspace.
    k = kernel_size_for(name) if name != "auto" else 3
    m, groups = (6, 6) if depthwise_only(name) else (8, 1)
    w = integers((m, 6 // groups, k, k))
    shape = (0, 6, 9, 7) if layout == "NCHW" else (0, 9, 7, 6)
    expected = (0, m, 9, 7) if layout == "NCHW" else (0, 9, 7, m)
    for input_shape in (None, shape):
        layer = ln.Conv2d(w, padding=k // 2, groups=groups, algorithm=name, layout=layout,
                          input_shape=input_shape)
        assert layer.workspace_bytes in (None, 0)
        got = layer(np.ones(shape, np.float32))
        assert got.shape == expected and got.dtype == np.float32
        assert layer.workspace_bytes == layer.workspace_bytes_for(shape) == 0
        out = np.empty(expected, np.float32)
        assert layer(np.ones(shape, np.float32), out=out) is out
    arena = ln.Workspace.shared_by([layer, ln.Conv2d(w, padding=k // 2, groups=groups, algorithm=name,
                                                     layout=layout)], [shape, shape])
    assert arena.nbytes == 0 and arena.fixed


@pytest.mark.parametrize("groups", [2, np.int64(2), np.int32(2)])
@pytest.mark.parametrize("dilation", [2, np.int64(2), (np.int64(2), np.int8(1))])
def test_layer_takes_numpy_integer_hyperparameters_as_conv2d_does(groups, dilation):
    x = integers((2, 6, 11, 10))
    w = integers((4, 3, 3, 3))
    expected = ln.conv2d(x, w, padding=2, dilation=dilation, groups=groups, algorithm="direct-sum2d")
    layer = ln.Conv2d(w, padding=np.int64(2), dilation=dilation, groups=groups, algorithm="kn2row-aa-ab")
    assert type(layer.groups) is int and all(type(d) is int for d in layer.dilation)
    np.testing.assert_array_equal(layer(x), expected)
    np.testing.assert_array_equal(ln.Conv2d(w, padding=2, dilation=dilation, groups=groups)(x), expected)
