"""The algorithm registry: what each algorithm is, supports, needs and runs.

An :class:`Algorithm` is an operator description; its ``compute`` calls the
micro-kernels in its family module.  Workspace is split in two parts so that a
layer object can keep packed weights across calls while the functional API
repacks per call: ``packed_weight_elements`` (zero when the kernel reads the
weights as given) and ``scratch_elements`` (per call, for a thread count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .geometry import ConvGeometry

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

    def workspace_elements(self, geometry: ConvGeometry, threads: int) -> int:
        """Temporary float32 elements of one functional call (packing included)."""
        return self.packed_weight_elements(geometry) + self.scratch_elements(geometry, threads)

    def run(self, x_flat, weight_flat, bias, out_flat, geometry, threads, workspace=None):
        """Pack weights if needed and compute, carving scratch from ``workspace``."""
        packed = self.packed_weight_elements(geometry)
        needed = packed + self.scratch_elements(geometry, threads)
        if workspace is None:
            workspace = np.empty(needed, dtype=np.float32)
        weights = weight_flat
        if packed:
            weights = workspace[:packed]
            self.pack_weights(weight_flat, geometry, weights)
        self.compute(x_flat, weights, bias, out_flat, workspace[packed:needed], geometry, threads)


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
