"""lowmem-numba: DNN convolutions on the CPU, fast and in small, stated memory.

Every algorithm of the family of Anderson, Vasudevan, Keane and Gregg
("Low-memory GEMM-based convolution algorithms for deep neural networks",
arXiv 1709.03395) as a Numba kernel calling scipy's BLAS, plus algorithms on
an own register-tiled micro-kernel, a scheduler that picks algorithm and
threads per layer under a memory budget, and a layer object with a reusable
workspace.  Benchmarks, layer tables and measurement helpers live in
:mod:`lowmem_numba.bench`.
"""

# First: refuses NUMBA_DISABLE_JIT and decides where kernels are cached, which
# must happen before any kernel module is imported (decorated).
from . import _compile  # noqa: F401  (isort: skip)
from ._version import __version__
from ._api import AlgorithmInfo, algorithms, conv2d, describe, supports, workspace_bytes
from ._layer import Conv2d
from ._scheduler import NetworkPlan, Plan, plan, plan_network
from ._workspace import Workspace

__all__ = [
    "AlgorithmInfo",
    "Conv2d",
    "NetworkPlan",
    "Plan",
    "Workspace",
    "__version__",
    "algorithms",
    "conv2d",
    "describe",
    "plan",
    "plan_network",
    "supports",
    "workspace_bytes",
]
