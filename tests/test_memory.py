"""Memory: kernels allocate nothing per item of work, and a call's Python-side
allocations stay within the declared workspace."""

import os
import tracemalloc

import numpy as np
import pytest

import lowmem_numba as ln
from lowmem_numba._geometry import make_geometry
from lowmem_numba._threads import max_threads
from naive import supported_configuration
from subprocess_helper import run_python

ALGORITHMS = ln.algorithms()

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

NRT_COUNTS = """
    import numpy as np
    from numba.core.runtime import rtsys
    import sys
    import lowmem_numba as ln
    sys.path.insert(0, TESTS_DIR)
    from naive import supported_configuration

    def allocations(name, n, size):
        w_shape, padding, groups = supported_configuration(name, (1, 8, 9, 9), 8)
        layout = ln._registry.get(name).input_layout  # native: nothing converted per image
        x = np.ones((n, 8, size, size) if layout == "NCHW" else (n, size, size, 8), np.float32)
        w = np.ones(w_shape, np.float32)
        out = ln.conv2d(x, w, padding=padding, groups=groups, algorithm=name, layout=layout)
        before = rtsys.get_allocation_stats().alloc
        ln.conv2d(x, w, padding=padding, groups=groups, algorithm=name, out=out, layout=layout)
        return rtsys.get_allocation_stats().alloc - before

    for name in ln.algorithms():
        print(name, allocations(name, 1, 12), allocations(name, 3, 12), allocations(name, 1, 40),
              allocations(name, 1, 16), allocations(name, 6, 12))
    # 7x7 images: direct-ukernel stages the images zero-padded, a chunk at a time.
    print("staged", allocations("direct-ukernel", 1, 7), allocations("direct-ukernel", 3, 7))
"""


def prepares_weights_first(name, n, size):
    """Whether ``allocations(name, n, size)``'s call (on all the process's
    threads, as it runs) packs or transforms the weights before its kernel,
    a launch with array arguments of its own, rather than not at all or
    inside the kernel (Winograd's kernel transforms them on few tiles, the
    micro-kernel packs them at batch 1)."""
    w_shape, padding, groups = supported_configuration(name, (1, 8, 9, 9), 8)
    algorithm = ln._registry.get(name)
    g = make_geometry((n, 8, size, size), w_shape, 1, padding, 1, groups)
    return algorithm.plan(g, max_threads(), algorithm.input_layout).packed_weight_elements > 0


def test_kernel_allocations_do_not_grow_with_the_work():
    # Numba counts one allocation per array argument it unboxes (a wrapper
    # around the caller's buffer); anything allocated per tile or tap would make
    # the count grow with image size, and per image with the batch.  The
    # exceptions are calls that run an image or a chunk of images at a time:
    # an algorithm whose input and output layouts differ (it converts each
    # image), direct-ukernel on small images (it stages chunks of images
    # zero-padded) and direct-pixels
    # unless 1x1 at stride 1 (it stages each image split by column phase).
    result = run_python(NRT_COUNTS.replace("TESTS_DIR", repr(TESTS_DIR)), {"NUMBA_NRT_STATS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split("\n")
    for name in ALGORITHMS:
        [counts] = [line.split()[1:] for line in lines if line.startswith(name + " ")]
        single, batch_of_3, larger, medium, batch_of_6 = map(int, counts)
        # <= 24: the array arguments, plus the depthwise kernels' few small
        # index tables per thread (tens of bytes, not per tile).
        assert single == medium and larger <= 24, (name, counts)
        # When the batch has at most WINOGRAD_IN_KERNEL_TILES tiles (batch 1
        # at 12 and 16 pixels a side, not 40; batch 3 at 12 on F(4x4,3x3)),
        # Winograd's kernel transforms the weights itself, and at batch 1 the
        # micro-kernel packs them itself: no preparing launch, fewer array
        # arguments.  Each path is compared with itself on more work.
        paths = {(n, size): prepares_weights_first(name, n, size) for n, size in ((1, 12), (3, 12), (1, 40), (6, 12))}
        same = paths[1, 12] == paths[1, 40]
        assert single == larger if same else single <= larger, (name, counts, paths)
        algorithm = ln._registry.get(name)
        one_at_a_time = algorithm.input_layout != algorithm.output_layout or name == "direct-pixels"
        if one_at_a_time:
            assert batch_of_3 <= 3 * single, (name, counts)
        elif paths[3, 12] in (paths[1, 12], paths[1, 40]):
            assert batch_of_3 == (single if paths[3, 12] == paths[1, 12] else larger), (name, counts)
        if not one_at_a_time and paths[6, 12] == paths[3, 12]:
            assert batch_of_6 == batch_of_3, (name, counts)  # nothing per image
    [staged] = [line.split()[1:] for line in lines if line.startswith("staged ")]
    single, batch_of_3 = map(int, staged)
    assert single <= 24 and batch_of_3 <= 3 * single, staged


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_python_allocations_stay_within_declared_workspace(name, layout):
    w_shape, padding, groups = supported_configuration(name, (1, 16, 40, 40), 32)
    m = w_shape[0]
    x = np.ones((1, 16, 40, 40) if layout == "NCHW" else (1, 40, 40, 16), np.float32)
    w = np.ones(w_shape, np.float32)
    out = np.empty((1, m, 40, 40) if layout == "NCHW" else (1, 40, 40, m), np.float32)
    ln.conv2d(x, w, padding=padding, groups=groups, algorithm=name, out=out, layout=layout)
    declared = ln.workspace_bytes(name, x.shape, w.shape, padding=padding, groups=groups, layout=layout)
    tracemalloc.start()
    try:
        ln.conv2d(x, w, padding=padding, groups=groups, algorithm=name, out=out, layout=layout)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= declared + 32 * 1024, (peak, declared)


def test_workspace_orders_follow_the_paper():
    x_shape, w_shape = (1, 64, 56, 56), (64, 64, 3, 3)
    im2col = ln.workspace_bytes("im2col-copy-self-ab-ki", x_shape, w_shape, padding=1)
    assert im2col == 4 * 64 * 9 * 56 * 56
    assert ln.workspace_bytes("direct-sum2d", x_shape, w_shape, padding=1) == 0
    kn2row = ln.workspace_bytes("kn2row-aa-ab", x_shape, w_shape, padding=1)
    weights = 4 * 64 * 64 * 9
    assert kn2row - weights < 4 * 64 * 56 * 56 / 8  # far below M*H*W
