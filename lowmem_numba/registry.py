"""The algorithm registry: what each algorithm is, supports, needs and runs.

An :class:`Algorithm` is an operator description; its ``compute`` calls the
micro-kernels in its family module.  Workspace is split in two parts so that a
layer object can keep packed weights across calls while the functional API
repacks per call: ``packed_weight_elements`` (zero when the kernel reads the
weights as given) and ``scratch_elements`` (per call, for a thread count).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .geometry import ConvGeometry
from .layout import transpose_blocks
from .threads import kernel_threads

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Algorithm:
    """One registered convolution algorithm.

    Attributes
    ----------
    name : str
        Registered name, spelled as in the paper's library.
    family : str
        Family it belongs to (``"direct"``, ``"im2col"``, ``"kn2row"``...).
    summary : str
        One line on what it does.
    workspace_formula : str
        The order of its workspace in elements, for documentation.
    unsupported : callable
        ``unsupported(geometry) -> str or None``: why this configuration is not
        handled, or None when it is.
    packed_weight_elements : callable
        ``(geometry) -> int``: float32 elements of the repacked weights (0 if none).
    pack_weights : callable or None
        ``(weight_flat, geometry, dest_flat)``: write the packed weights.
    scratch_elements : callable
        ``(geometry, threads) -> int``: float32 scratch elements for one call.
    compute : callable
        ``(x_flat, weights_flat, bias, out_flat, scratch, geometry, threads)``:
        run the convolution; ``weights_flat`` is packed when packing is used.
    """

    name: str
    family: str
    summary: str
    workspace_formula: str
    unsupported: Callable[[ConvGeometry], Optional[str]]
    packed_weight_elements: Callable[[ConvGeometry], int]
    pack_weights: Optional[Callable]
    scratch_elements: Callable[[ConvGeometry, int], int]
    compute: Callable
    input_layout: str = "NCHW"
    output_layout: str = "NCHW"

    def transform_elements(self, geometry: ConvGeometry, layout: str) -> tuple[int, int]:
        """Per-image buffers for converting input and output from/to ``layout``."""
        g = geometry
        into = g.in_channels * g.height * g.width if layout != self.input_layout else 0
        back = g.out_channels * g.out_height * g.out_width if layout != self.output_layout else 0
        return into, back

    def workspace_elements(self, geometry: ConvGeometry, threads: int, layout: str = "NCHW",
                           prepacked: bool = False) -> int:
        """Temporary float32 elements of one call: scratch, layout buffers and,
        unless the weights come prepacked, the packed weights.

        An empty batch (N = 0) needs none: such a call computes nothing, so it
        neither packs weights nor touches scratch (see :meth:`run`).
        """
        if geometry.batch == 0:
            return 0
        into, back = self.transform_elements(geometry, layout)
        packed = 0 if prepacked else self.packed_weight_elements(geometry)
        return packed + self._scratch(geometry, threads, into or back) + into + back

    def _scratch(self, geometry, threads, per_image):
        # Converting layouts runs the kernel one image at a time.
        if per_image:
            geometry = dataclasses.replace(geometry, batch=1)
        return self.scratch_elements(geometry, threads)

    def prepare_weights(self, weight_flat, geometry: ConvGeometry):
        """The weights as ``compute`` reads them: packed into a new array, or a
        contiguous copy when the algorithm reads them as given."""
        packed = self.packed_weight_elements(geometry)
        if not packed:
            return np.array(weight_flat, dtype=np.float32, copy=True)
        dest = np.empty(packed, dtype=np.float32)
        # Packing may run a parallel kernel, and callers (layers, the
        # scheduler, calibration) are outside any kernel call.
        with kernel_threads():
            self.pack_weights(weight_flat, geometry, dest)
        return dest

    def run(self, x_flat, weight_flat, bias, out_flat, geometry, threads, layout="NCHW",
            workspace=None, prepacked=False):
        """Pack weights if needed and compute, carving every buffer from ``workspace``.

        ``x_flat`` and ``out_flat`` are in ``layout``; when that differs from the
        kernel's own layouts, images are converted one at a time through
        per-image buffers.  With ``prepacked`` the weights are already what
        :meth:`prepare_weights` returns.  An empty batch returns at once,
        allocating nothing (its workspace is 0 elements).
        """
        g = geometry
        if g.batch == 0:
            return
        packed = 0 if prepacked else self.packed_weight_elements(g)
        into, back = self.transform_elements(g, layout)
        scratch = self._scratch(g, threads, into or back)
        if workspace is None:
            workspace = np.empty(packed + scratch + into + back, dtype=np.float32)
        weights = weight_flat
        if packed:
            weights = workspace[:packed]
            self.pack_weights(weight_flat, g, weights)
        scratch_buffer = workspace[packed:packed + scratch]
        if not (into or back):
            self.compute(x_flat, weights, bias, out_flat, scratch_buffer, g, threads)
            return
        x_image = workspace[packed + scratch:packed + scratch + into]
        out_image = workspace[packed + scratch + into:packed + scratch + into + back]
        image = dataclasses.replace(g, batch=1)
        in_size = g.in_channels * g.height * g.width
        out_size = g.out_channels * g.out_height * g.out_width
        for n in range(g.batch):
            x_n = x_flat[n * in_size:(n + 1) * in_size]
            out_n = out_flat[n * out_size:(n + 1) * out_size]
            if into:
                _convert(x_n, x_image, layout, g.in_channels, g.height * g.width)
            self.compute(x_image if into else x_n, weights, bias, out_image if back else out_n,
                         scratch_buffer, image, threads)
            if back:
                _convert(out_image, out_n, self.output_layout, g.out_channels,
                         g.out_height * g.out_width)


def _convert(src, dst, src_layout, channels, pixels):
    """Convert one image from ``src_layout`` to the other layout."""
    if src_layout == "NCHW":
        transpose_blocks(src, 0, dst, 0, 1, channels, pixels)
    else:
        transpose_blocks(src, 0, dst, 0, 1, pixels, channels)


_REGISTRY: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    if algorithm.name in _REGISTRY:
        raise ValueError(f"algorithm {algorithm.name!r} is already registered")
    _REGISTRY[algorithm.name] = algorithm
    return algorithm


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name) -> Algorithm:
    """Look up a registered algorithm by name.

    Raises
    ------
    TypeError
        If ``name`` is not a string.
    ValueError
        If no algorithm has that name; the message lists the valid names.
    """
    if not isinstance(name, str):
        raise TypeError(f"algorithm must be a string; got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(repr(n) for n in _REGISTRY)
        raise ValueError(f"unknown algorithm {name!r}; valid names are: {valid}") from None
