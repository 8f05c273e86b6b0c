"""Reference convolutions the benchmarks compare the library against.

Two baselines, neither used by the library itself:

- ``numpy-im2col``: the naive patch-matrix convolution written with numpy
  alone (a strided view of the padded input, copied into the patch matrix by
  ``reshape``, then ``matmul``); runs in-process on numpy's own BLAS.
- ``torch``: ``torch.nn.functional.conv2d``, timed in a subprocess so that
  torch's thread pool never shares a process with Numba's.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .._geometry import ConvGeometry, make_geometry

FLOAT32_BYTES = 4

NUMPY_IM2COL = "numpy-im2col"
TORCH = "torch"


def numpy_im2col_conv2d(x, weight, stride=1, padding=0, dilation=1, groups=1, *, out=None):
    """Convolve NCHW float32 ``x`` the naive way: im2col by stride tricks, then matmul.

    Parameters
    ----------
    x : numpy.ndarray
        Input, shape (N, C, H, W).
    weight : numpy.ndarray
        Kernels, shape (M, C/groups, kh, kw).
    stride, padding, dilation, groups
        As for :func:`lowmem_numba.conv2d`.
    out : numpy.ndarray, optional
        C-contiguous float32 array of the output shape to write into.

    Returns
    -------
    numpy.ndarray
        Shape (N, M, Ho, Wo); ``out`` if given.

    Notes
    -----
    numpy's BLAS threads follow ``threadpoolctl`` limits; the caller sets them.
    """
    g = make_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    if out is None:
        out = np.empty(g.output_shape, np.float32)
    if any(p for pair in g.padding for p in pair):
        x = np.pad(x, ((0, 0), (0, 0)) + g.padding)
    sn, sc, sh, sw = x.strides
    windows = as_strided(x, shape=(g.batch, g.in_channels, g.kernel_h, g.kernel_w, g.out_height, g.out_width),
                         strides=(sn, sc, sh * g.dilation_h, sw * g.dilation_w, sh * g.stride_h, sw * g.stride_w),
                         writeable=False)
    cg, mg = g.channels_per_group, g.out_channels_per_group
    kernels = weight.reshape(g.groups, mg, g.reduction_size)
    for n in range(g.batch):
        for group in range(g.groups):
            patches = windows[n, group * cg:(group + 1) * cg].reshape(g.reduction_size, -1)
            np.matmul(kernels[group], patches, out=out[n, group * mg:(group + 1) * mg].reshape(mg, -1))
    return out


def numpy_im2col_workspace_bytes(g: ConvGeometry) -> int:
    """Temporary memory of :func:`numpy_im2col_conv2d`: padded input plus one patch matrix."""
    padded = 0
    if any(p for pair in g.padding for p in pair):
        padded = g.batch * g.in_channels * (g.height + g.pad_top + g.pad_bottom) * (
            g.width + g.pad_left + g.pad_right)
    return FLOAT32_BYTES * (padded + g.reduction_size * g.out_height * g.out_width)


def torch_available() -> bool:
    """Whether torch can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


_TORCH_SCRIPT = """
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
jobs = json.loads(sys.stdin.read())
runs = {}
with torch.no_grad():
    for job in jobs:
        x = torch.rand(*job["x_shape"])
        w = torch.rand(*job["w_shape"])
        call = lambda: torch.nn.functional.conv2d(x, w, **job["args"])
        for _ in range(job["warmup"]):
            call()
        times = []
        while len(times) < job["repeats"] or sum(times) < job["min_seconds"]:
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        runs[job["label"]] = times
print(json.dumps({"version": torch.__version__, "runs": runs}))
"""


def torch_runs(jobs, threads, timeout=900):
    """Time ``torch.nn.functional.conv2d`` on several layers in one fresh process.

    Parameters
    ----------
    jobs : list of dict
        Each with ``label``, ``x_shape``, ``w_shape``, ``args`` (stride,
        padding, dilation, groups), ``warmup``, ``repeats`` and
        ``min_seconds`` (time calls until at least ``repeats`` were made and
        they took this long in all).
    threads : int
        ``torch.set_num_threads`` of the process.
    timeout : float, default 900
        Seconds before the process is abandoned.

    Returns
    -------
    tuple of (str, dict)
        torch's version and, per label, the timed runs in seconds.

    Raises
    ------
    RuntimeError
        If the process fails or times out.
    """
    try:
        process = subprocess.run([sys.executable, "-c", _TORCH_SCRIPT, str(threads)], input=json.dumps(jobs),
                                 capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"torch baseline timed out after {timeout} s") from None
    if process.returncode != 0:
        last = (process.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"torch baseline failed: {last}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    return result["version"], result["runs"]
