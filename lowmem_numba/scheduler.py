"""Choosing an algorithm for ``algorithm="auto"``.

For now a fixed rule; it only ever returns an algorithm that supports the
configuration.
"""

from __future__ import annotations

from . import registry
from .geometry import ConvGeometry


def default_algorithm(g: ConvGeometry) -> str:
    """The algorithm ``"auto"`` runs for a geometry."""
    depthwise = g.channels_per_group == 1 and g.out_channels_per_group == 1
    if depthwise:
        # One-row GEMMs per tap waste BLAS; the loop nest is the better fit.
        return "direct-sum2d"
    if registry.get("kn2row-aa-ab").unsupported(g) is None:
        return "kn2row-aa-ab"
    return "im2col-copy-self-ab-ki"
