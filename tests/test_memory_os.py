"""Workspace claims against the operating system's peak resident memory.

Each measurement runs in a fresh process (see lowmem_numba.bench.memory), so machine
load does not affect it: only the pages a call touches count.
"""

import sys

import pytest

import lowmem_numba as ln
from lowmem_numba.bench.memory import peak_added_bytes
from naive import supported_configuration

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux-only")

# VGG-16 conv1_2: 64 -> 64 channels at 224 x 224, where im2col needs 110 MiB.
X_SHAPE, W_SHAPE, PADDING = (1, 64, 224, 224), (64, 64, 3, 3), 1
MiB = 2**20


def shapes_for(name):
    """(x_shape, w_shape, padding, groups): VGG-16 conv1_2 or the nearest
    configuration the algorithm claims (5x5, 1x1 or depthwise)."""
    w_shape, padding, groups = supported_configuration(name, X_SHAPE, 64)
    return X_SHAPE, w_shape, padding, groups


def native_layout(name):
    algorithm = ln._registry.get(name)
    return algorithm.input_layout if algorithm.input_layout == algorithm.output_layout else "NCHW"


def declared_and_measured(name, layout):
    x_shape, w_shape, padding, groups = shapes_for(name)
    call_shape = x_shape if layout == "NCHW" else (x_shape[0],) + x_shape[2:] + (x_shape[1],)
    declared = ln.workspace_bytes(name, call_shape, w_shape, padding=padding, groups=groups, layout=layout)
    measured = peak_added_bytes(name, x_shape, w_shape, padding=padding, groups=groups, layout=layout,
                                repeats=2)
    assert measured.method == "VmHWM", measured.reason
    return declared, measured.peak_added_bytes


@pytest.mark.parametrize("name", ln.algorithms())
def test_measured_peak_stays_within_declared_workspace(name):
    declared, measured = declared_and_measured(name, native_layout(name))
    assert measured <= declared + 2 * MiB, (measured, declared)
    if name.startswith("kn2row-aa"):
        assert measured < 1 * MiB, measured


def test_layout_conversion_is_within_declared_workspace():
    # kn2row-aa-abt reads and writes NHWC; an NCHW call converts through
    # per-image buffers that the declared workspace includes.
    declared, measured = declared_and_measured("kn2row-aa-abt", "NCHW")
    assert 2 * 4 * 64 * 224 * 224 <= declared
    assert measured <= declared + 2 * MiB


def test_the_measurement_sees_a_large_workspace():
    # A measurement that always read 0 would pass the test above: im2col's
    # 110 MiB patch matrix must show up.
    measured = peak_added_bytes("im2col-copy-self-ab-ki", X_SHAPE, W_SHAPE, padding=PADDING, repeats=1)
    assert measured.peak_added_bytes > 100 * MiB


def test_layer_with_prepacked_weights_adds_next_to_nothing():
    measured = peak_added_bytes("layer:kn2row-aa-ab", X_SHAPE, W_SHAPE, padding=PADDING, repeats=2)
    assert measured.peak_added_bytes < 256 * 1024, measured
