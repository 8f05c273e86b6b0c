"""The execution layer: run a call exactly as its plan says.

Below the scheduler and the public API, above the kernels: it carves the plan's
buffers (packed weights, scratch, per-image layout buffers) from a workspace or
one fresh array, packs the weights when the call brings them unpacked, converts
images when the call's layout is not the kernel's, and launches the kernel
with Numba owning the cores and BLAS held at one thread (or, when the plan
says the call is serial, on the calling thread without touching either
thread count).  Everything that runs
a kernel (the API, layer objects, measure-mode planning, calibration) comes
through here.
"""

from __future__ import annotations

import numpy as np

from . import _registry as registry
from ._plan import CallPlan
from ._layout import transpose_blocks
from ._threads import kernel_threads, max_threads
from ._workspace import aligned_empty


#: The buffer of a plan without workspace (every slice of it is empty).
_NO_BUFFER = np.empty(0, dtype=np.float32)


def prepare_weights(algorithm: registry.Algorithm, weight_flat, geometry) -> np.ndarray:
    """The weights as ``algorithm``'s kernel reads them: packed into a new array,
    or a contiguous copy when the kernel reads them as given."""
    packed = algorithm.packed_weight_elements(geometry)
    if not packed:
        dest = aligned_empty(weight_flat.size)
        dest[:] = weight_flat
        return dest
    dest = aligned_empty(packed)
    with kernel_threads():  # packing may run a parallel kernel
        _pack(algorithm, weight_flat, geometry, dest, max_threads(), None)
    return dest


def _pack(algorithm, weight_flat, geometry, dest, threads, scratch):
    """Pack with ``threads`` threads, giving the packing its scratch if it
    needs some (a fresh buffer when ``scratch`` is None)."""
    if algorithm.pack_scratch_elements is None:
        algorithm.pack_weights(weight_flat, geometry, dest)
        return
    if scratch is None:
        scratch = aligned_empty(algorithm.pack_scratch_elements(geometry, threads))
    algorithm.pack_weights(weight_flat, geometry, dest, scratch)


def execute(plan: CallPlan, x_flat, weight_flat, bias, out_flat, workspace=None) -> None:
    """Run one planned call.

    Parameters
    ----------
    plan : CallPlan
        From ``registry.get(name).plan(...)``.
    x_flat, out_flat : numpy.ndarray, float32, 1-D
        Input and output in ``plan.layout``, C order.
    weight_flat : numpy.ndarray, float32, 1-D
        The weights as given, or as :func:`prepare_weights` returns them when
        ``plan.prepacked``.
    bias : numpy.ndarray, float32
        Shape (M,), or empty for no bias.
    workspace : Workspace, optional
        Arena the plan's buffers are carved from; default one fresh array.
    """
    if plan.runs == 0:
        return
    elements = plan.workspace_elements
    if not elements or workspace is None:
        # No allocation for plans without workspace (0.8 us of a call), nor a
        # lease of no memory.
        _execute_in(plan, x_flat, weight_flat, bias, out_flat, aligned_empty(elements) if elements else _NO_BUFFER)
        return
    with workspace.lease(elements) as buffer:
        _execute_in(plan, x_flat, weight_flat, bias, out_flat, buffer)


def _execute_in(plan, x_flat, weight_flat, bias, out_flat, buffer):
    algorithm = registry.get(plan.algorithm)
    if not plan.sets_threads:
        # A serial kernel alone: the thread counts it would set and restore
        # cost 2.6 us of a 30 us layer (GoogLeNet's 480->16 on 14x14, one thread).
        _run(plan, algorithm, x_flat, weight_flat, bias, out_flat, buffer)
        return
    with kernel_threads(plan.threads, blas=algorithm.calls_blas):
        _run(plan, algorithm, x_flat, weight_flat, bias, out_flat, buffer)


def _run(plan, algorithm, x_flat, weight_flat, bias, out_flat, buffer):
    g, kernel = plan.geometry, plan.kernel
    packed, scratch = plan.packed_weight_elements + plan.packing_scratch_elements, kernel.scratch_elements
    into, back = plan.convert_in_elements, plan.convert_out_elements
    weights = weight_flat
    if packed:
        weights = buffer[:plan.packed_weight_elements]
        _pack(algorithm, weight_flat, g, weights, plan.threads, buffer[plan.packed_weight_elements:packed])
    scratch_buffer = buffer[packed:packed + scratch]
    if plan.runs == 1 and not (into or back):
        algorithm.compute(x_flat, weights, bias, out_flat, scratch_buffer, plan.run_geometry, kernel)
        return
    x_image = buffer[packed + scratch:packed + scratch + into]
    out_image = buffer[packed + scratch + into:packed + scratch + into + back]
    in_size = g.in_channels * g.height * g.width
    out_size = g.out_channels * g.out_height * g.out_width
    for n in range(plan.runs):
        x_n = x_flat[n * in_size:(n + 1) * in_size]
        out_n = out_flat[n * out_size:(n + 1) * out_size]
        if into:
            _convert(x_n, x_image, plan.layout, g.in_channels, g.height * g.width)
        algorithm.compute(x_image if into else x_n, weights, bias, out_image if back else out_n,
                          scratch_buffer, plan.run_geometry, kernel)
        if back:
            _convert(out_image, out_n, algorithm.output_layout, g.out_channels, g.out_height * g.out_width)


def _convert(src, dst, src_layout, channels, pixels):
    """Convert one image from ``src_layout`` to the other layout."""
    if src_layout == "NCHW":
        transpose_blocks(src, 0, dst, 0, 1, channels, pixels)
    else:
        transpose_blocks(src, 0, dst, 0, 1, pixels, channels)
