"""conv2d semantics: shapes, out=, layouts, inputs untouched, non-finite values."""

import numpy as np
import pytest

import lowmem_numba as ln
from lowmem_numba._geometry import make_geometry
from naive import assert_matches_integer_reference, conv2d_reference, supported_configuration

ALGORITHMS = ln.algorithms()
RNG = np.random.default_rng(7)


def integers(shape):
    return RNG.integers(-3, 4, size=shape).astype(np.float32)


def conv_or_skip(name, x, w, *args, layout="NCHW", **kwargs):
    """conv2d, skipping the test when ``name`` does not claim the configuration."""
    shape_args = dict(kwargs)
    for key in ("algorithm", "out", "threads"):
        shape_args.pop(key, None)
    if name != "auto" and not ln.supports(name, x.shape, w.shape, *args[1:], layout=layout, **shape_args):
        pytest.skip(f"{name} does not claim this configuration")
    return ln.conv2d(x, w, *args, algorithm=name, layout=layout, **kwargs)


def test_algorithm_names_are_the_papers():
    names = ln.algorithms()
    assert isinstance(names, tuple)
    for expected in ("direct-sum2d", "im2col-copy-self-ab-ki", "kn2row-aa-ab"):
        assert expected in names


@pytest.mark.parametrize("name", ALGORITHMS + ("auto",))
def test_unbatched_input_gives_unbatched_output(name):
    x = integers((3, 7, 6))
    w = integers((5, 3, 3, 3))
    got = conv_or_skip(name, x, w, padding=1)
    assert got.shape == (5, 7, 6)
    picked = ln.plan(x.shape, w.shape, padding=1).algorithm if name == "auto" else name
    assert_matches_integer_reference(got, conv2d_reference(x[None], w, padding=((1, 1), (1, 1)))[0], picked)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_out_is_written_and_returned(name):
    x = integers((2, 3, 7, 6))
    w = integers((5, 3, 3, 3))
    out = np.full((2, 5, 7, 6), np.nan, np.float32)
    got = conv_or_skip(name, x, w, padding="same", out=out)
    assert got is out
    assert_matches_integer_reference(out, conv2d_reference(x, w, padding=((1, 1), (1, 1))), name)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_inputs_are_not_modified(name):
    x = integers((2, 4, 9, 8))
    w = integers((6, 2, 3, 3))
    b = integers((6,))
    copies = [a.copy() for a in (x, w, b)]
    conv_or_skip(name, x, w, b, padding=((2, 0), (1, 2)), groups=2)
    for before, after in zip(copies, (x, w, b)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_non_contiguous_and_fortran_inputs(name):
    x = np.asfortranarray(integers((2, 4, 9, 8)))
    w = integers((6, 8, 3, 3))[:, ::2]
    b = integers((12,))[::2]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous and not b.flags.c_contiguous
    got = conv_or_skip(name, x, w, b, padding=1)
    assert_matches_integer_reference(got, conv2d_reference(x, w, b, padding=((1, 1), (1, 1))), name)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_empty_batch(name):
    got = conv_or_skip(name, np.ones((0, 3, 5, 5), np.float32), np.ones((4, 3, 3, 3), np.float32))
    assert got.shape == (0, 4, 3, 3) and got.dtype == np.float32


@pytest.mark.parametrize(
    "kernel, dilation, expected",
    [(3, 1, ((1, 1), (1, 1))), (4, 1, ((1, 2), (1, 2))), (2, 3, ((1, 2), (1, 2))), (5, 2, ((4, 4), (4, 4)))],
)
def test_same_padding_follows_torch(kernel, dilation, expected):
    # torch puts the odd extra pixel of "same" padding at the bottom/right.
    g = ln._geometry.make_geometry((1, 2, 9, 10), (3, 2, kernel, kernel), padding="same", dilation=dilation)
    assert g.padding == expected
    assert (g.out_height, g.out_width) == (9, 10)
    assert ln._geometry.make_geometry((1, 2, 9, 10), (3, 2, 3, 3), padding="valid").padding == ((0, 0), (0, 0))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_nan_and_inf_propagate_to_their_receptive_field_only(name):
    if name.startswith("winograd-"):
        pytest.skip("Winograd also spreads them within a tile: test_winograd.py checks the documented set")
    x = integers((1, 2, 9, 9))
    w = np.abs(integers((3, 2, 3, 3))) + 1  # no zero weight to hide a NaN
    x[0, 1, 4, 0] = np.nan
    x[0, 0, 0, 8] = np.inf
    got = conv_or_skip(name, x, w, padding=1)
    # Receptive fields: NaN at (4, 0) reaches outputs rows 3-5, cols 0-1; inf
    # at (0, 8) reaches rows 0-1, cols 7-8 (positive weights keep it +inf).
    assert np.isnan(got[0, :, 3:6, 0:2]).all()
    assert np.isposinf(got[0, :, 0:2, 7:9]).all()
    finite = np.ones((9, 9), bool)
    finite[3:6, 0:2] = False
    finite[0:2, 7:9] = False
    assert np.isfinite(got[0][:, finite]).all()


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_torch_agrees_when_installed():
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((2, 6, 11, 9)).astype(np.float32)
    w = RNG.standard_normal((8, 3, 3, 4)).astype(np.float32)
    b = RNG.standard_normal(8).astype(np.float32)
    for name in ALGORITHMS:
        for padding in ("same", 1, (2, 0)):
            expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                                  padding=padding, groups=2).numpy()
            if ln.supports(name, x.shape, w.shape, padding=padding, groups=2):
                got = ln.conv2d(x, w, b, padding=padding, groups=2, algorithm=name)
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_nhwc_shapes_out_and_workspace(name):
    # 24x23 pixels: more than WINOGRAD_IN_KERNEL_TILES tiles at batch 2, so
    # that Winograd transforms the weights first both natively and converted.
    x = integers((2, 24, 23, 3))  # N, H, W, C
    w = integers((5, 3, 3, 3))
    expected = conv2d_reference(x.transpose(0, 3, 1, 2), w, padding=((1, 1), (1, 1))).transpose(0, 2, 3, 1)
    out = np.empty((2, 24, 23, 5), np.float32)
    assert conv_or_skip(name, x, w, padding=1, layout="NHWC", out=out) is out
    assert_matches_integer_reference(out, expected, name)
    assert_matches_integer_reference(ln.conv2d(x[0], w, padding=1, algorithm=name, layout="NHWC"), expected[0], name)
    native = ln._registry.get(name)
    converted_in = native.input_layout != "NHWC"
    converted_out = native.output_layout != "NHWC"
    nchw = ln.workspace_bytes(name, (2, 3, 24, 23), w.shape, padding=1, threads=1)
    nhwc = ln.workspace_bytes(name, x.shape, w.shape, padding=1, threads=1, layout="NHWC")
    extra = 4 * (3 * 24 * 23 * converted_in + 5 * 24 * 23 * converted_out)
    if native.input_layout == native.output_layout == "NCHW":
        # Converted, the kernel runs one image at a time: its own scratch is
        # that of batch 1 (direct-ukernel stages both images at once at batch 2).
        def kernel_scratch(batch):
            g = make_geometry((batch, 3, 24, 23), w.shape, padding=1)
            return 4 * native.plan(g, 1, "NCHW", prepacked=True).workspace_elements
        assert nhwc - nchw == extra + kernel_scratch(1) - kernel_scratch(2)


def test_unknown_layout_is_named():
    with pytest.raises(ValueError, match="layout"):
        ln.conv2d(np.ones((1, 3, 5, 5), np.float32), np.ones((2, 3, 3, 3), np.float32), layout="CHWN")


def kernel_size_for(name):
    """A kernel size the algorithm supports: 5 for the 5x5 Winograd, 1 otherwise."""
    return 5 if name.startswith("winograd-2x2-5x5") else 1 if not name.startswith("winograd-") else 3


def test_layout_conversion_sizes_scratch_for_one_image():
    # Converted calls run one image at a time, so the workspace must not grow
    # with the batch beyond what the native-layout kernel itself needs.
    for name in ALGORITHMS:
        algorithm = ln._registry.get(name)
        if algorithm.input_layout == algorithm.output_layout == "NCHW":
            continue
        k = kernel_size_for(name)
        if not ln.supports(name, (1, 8, 12, 12), (8, 8, k, k)):
            continue  # a family for other configurations (depthwise)
        # From batch 2 on, the kernel runs once per image.  (Batch 1 runs it
        # once, on weights it may pack itself: a workspace of its own.)
        two, eight = (ln.workspace_bytes(name, (n, 8, 12, 12), (8, 8, k, k), threads=1) for n in (2, 8))
        assert eight == two, name


EMPTY_X = {"NCHW": (0, 3, 6, 5), "NHWC": (0, 6, 5, 3)}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_empty_batch_on_every_functional_path(layout):
    # N = 0 is a valid batch: every entry point answers with an empty float32
    # result of the right shape, and no path divides or tiles by the batch.
    x = np.ones(EMPTY_X[layout], np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    expected = (0, 4, 6, 5) if layout == "NCHW" else (0, 6, 5, 4)
    for kwargs in ({}, {"memory_limit": 0}, {"threads": 1}, {"bias": np.ones(4, np.float32)}):
        got = ln.conv2d(x, w, padding=1, layout=layout, **kwargs)
        assert got.shape == expected and got.dtype == np.float32
    for name in ALGORITHMS:
        # A configuration each family supports: 3x3, 5x5, 1x1, or depthwise.
        kernel, padding, groups = next(
            (shape, pad, groups) for shape, pad, groups in
            (((4, 3, 3, 3), 1, 1), ((4, 3, 5, 5), 2, 1), ((4, 3, 1, 1), 0, 1), ((3, 1, 3, 3), 1, 3))
            if ln.supports(name, x.shape, shape, padding=pad, groups=groups, layout=layout))
        got = ln.conv2d(x, np.ones(kernel, np.float32), padding=padding, groups=groups, algorithm=name,
                        layout=layout, memory_limit=0)
        channels = kernel[0]
        assert got.shape == (expected[:1] + (channels,) + expected[2:] if layout == "NCHW"
                             else expected[:3] + (channels,)) and got.dtype == np.float32
        for threads in range(1, ln._threads.max_threads() + 1):
            # An empty call computes nothing, so it needs no workspace at all.
            assert ln.workspace_bytes(name, x.shape, kernel, padding=padding, groups=groups, threads=threads,
                                      layout=layout) == 0
    for memory_limit in (None, 0):
        chosen = ln.plan(x.shape, w.shape, padding=1, layout=layout, memory_limit=memory_limit)
        assert chosen.workspace_bytes == 0 and chosen.algorithm in ALGORITHMS
        assert ln.workspace_bytes("auto", x.shape, w.shape, padding=1, layout=layout,
                                  memory_limit=memory_limit) == 0


def test_empty_batch_plans_do_not_divide_by_it():
    # The families' plans are total in the batch (the cost model and any
    # direct caller use them, not only conv2d's early return).
    from lowmem_numba._split import Split, split_work

    g = ln._geometry.make_geometry((0, 4, 9, 9), (6, 4, 3, 3), padding=1)
    for threads in (1, 2, 8):
        assert split_work(0, 64, 4096, threads, min_rows=16, min_cols=128) == Split(0, 1, 1)
        for name in ALGORITHMS:
            algorithm = ln._registry.get(name)
            if algorithm.unsupported(g) is None:
                kernel = algorithm.plan_kernel(g, threads)
                assert kernel.scratch_elements == 0 or name.startswith(("im2", "mec", "kn2"))
                assert algorithm.plan(g, threads).workspace_elements == 0


@pytest.mark.parametrize("name", ALGORITHMS)
def test_empty_batch_kernels_run_directly(name):
    # Below conv2d's early return, each algorithm's execution and compute
    # accept an empty batch too and write nothing.
    from lowmem_numba._execute import execute, prepare_weights

    algorithm = ln._registry.get(name)
    w_shape, padding, groups = supported_configuration(name, (0, 4, 9, 9), 6)
    g = ln._geometry.make_geometry((0, 4, 9, 9), w_shape, padding=padding, groups=groups)
    assert algorithm.unsupported(g) is None
    empty = np.empty(0, np.float32)
    w = np.ones(int(np.prod(w_shape)), np.float32)
    for threads in range(1, ln._threads.max_threads() + 1):
        execute(algorithm.plan(g, threads), empty, w, empty, empty)
        packed = prepare_weights(algorithm, w, g)
        kernel = algorithm.plan_kernel(g, threads)
        scratch = np.empty(kernel.scratch_elements, np.float32)
        algorithm.compute(empty, packed, empty, empty, scratch, g, kernel)
