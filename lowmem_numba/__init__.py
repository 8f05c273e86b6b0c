"""lowmem-numba: GEMM-based DNN convolutions on the CPU in small, provable memory.

Every algorithm of the family of Anderson, Vasudevan, Keane and Gregg
("Low-memory GEMM-based convolution algorithms for deep neural networks",
arXiv 1709.03395) as a Numba kernel calling scipy's BLAS.
"""

from . import registry
from .api import algorithms, conv2d, supports, workspace_bytes
from .geometry import ConvGeometry, make_geometry
from .layer import Conv2d
from .networks import NETWORKS, Layer, layers
from .timing import Timing, measure
from .workspace import Workspace

__version__ = "0.1.0"

__all__ = [
    "NETWORKS",
    "Conv2d",
    "ConvGeometry",
    "Layer",
    "Timing",
    "algorithms",
    "conv2d",
    "layers",
    "make_geometry",
    "measure",
    "supports",
    "Workspace",
    "workspace_bytes",
]
