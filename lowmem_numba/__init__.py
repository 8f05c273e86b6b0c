"""lowmem-numba: GEMM-based DNN convolutions on the CPU in small, provable memory.

Every algorithm of the family of Anderson, Vasudevan, Keane and Gregg
("Low-memory GEMM-based convolution algorithms for deep neural networks",
arXiv 1709.03395) as a Numba kernel calling scipy's BLAS.
"""

# First: refuses NUMBA_DISABLE_JIT and decides where kernels are cached, which
# must happen before any kernel module is imported (decorated).
from . import _compile  # noqa: F401  (isort: skip)
from ._version import __version__
from . import registry
from .api import AlgorithmInfo, algorithms, conv2d, describe, supports, workspace_bytes
from .geometry import ConvGeometry, make_geometry
from .layer import Conv2d
from .networks import NETWORKS, Layer, layers
from .scheduler import NetworkPlan, Plan, plan, plan_network
from .timing import Timing, measure
from .workspace import Workspace


__all__ = [
    "NETWORKS",
    "Conv2d",
    "ConvGeometry",
    "Layer",
    "Plan",
    "Timing",
    "algorithms",
    "conv2d",
    "layers",
    "make_geometry",
    "measure",
    "plan",
    "plan_network",
    "supports",
    "Workspace",
    "workspace_bytes",
]
