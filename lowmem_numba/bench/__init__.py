"""Benchmarks and measurement: layer tables, timing, OS-measured memory, baselines.

Everything the command line (``lowmem-numba bench / report / plan``), the
``perf/`` scripts and the notebooks use to measure the library, apart from the
library itself.

- :func:`layers`, :data:`NETWORKS`, :class:`Layer`: the convolution layers of
  AlexNet, VGG-16, GoogLeNet, ResNet-50 and MobileNet-v1 (batch 1 shapes).
- :func:`measure`, :class:`Timing`: best-of-N timing of a callable (usable in
  notebooks, where pyperf's runner cannot run).
- :func:`peak_added_bytes`: the peak resident memory one call adds, measured by
  the operating system in a fresh process (``python -m lowmem_numba.bench.memory``).
- :func:`torch_runs`, :func:`torch_worker`, :func:`numpy_im2col_conv2d`: the
  baselines (torch in its own process); :class:`TimingWorker`, a process that
  times jobs as they are handed over (two of them, asked in turn, compare two
  engines within seconds of each other).
- :func:`sgemm_seconds`, :func:`microkernel_tile`, :func:`max_threads`: the
  engine's reference GEMM speed and this machine's tile and thread count.
- :func:`recalibrate`, :func:`forget_plans`: redo the cost model's calibration,
  drop memoised plans (for scheduler experiments).
"""

from .._timing import Timing, measure
from .._units import format_bytes, parse_size
from ._baselines import TimingWorker, numpy_im2col_conv2d, torch_available, torch_runs, torch_worker
from ._machine import forget_plans, max_threads, microkernel_tile, recalibrate, sgemm_seconds
from ._networks import NETWORKS, Layer, layers

def __getattr__(name):
    # The memory tool is also run as ``python -m lowmem_numba.bench.memory``;
    # importing it here eagerly would make runpy warn that it was imported twice.
    if name == "peak_added_bytes":
        from .memory import peak_added_bytes

        return peak_added_bytes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Layer", "NETWORKS", "Timing", "TimingWorker", "forget_plans", "format_bytes", "layers", "max_threads",
           "measure", "microkernel_tile", "numpy_im2col_conv2d", "parse_size", "peak_added_bytes", "recalibrate",
           "sgemm_seconds", "torch_available", "torch_runs", "torch_worker"]
