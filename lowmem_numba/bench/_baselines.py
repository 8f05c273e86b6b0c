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
import queue
import subprocess
import sys
import tempfile
import threading

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


_TORCH_SERVER = """
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
print(json.dumps({"version": torch.__version__}), flush=True)
with torch.no_grad():
    for line in sys.stdin:
        job = json.loads(line)
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
        print(json.dumps({"label": job["label"], "times": times}), flush=True)
"""


class TimingWorker:
    """A process that times jobs one at a time, as the caller hands them over.

    The process reads one JSON job per line on its standard input and answers
    each with one JSON line; its first line says who it is (``version``).
    Two workers asked in turn, layer by layer, time both engines within a
    second of each other, in separate processes: on a shared machine whose
    speed drifts by a quarter over seconds, a ratio of two timings taken
    minutes apart measures the drift as much as the engines.

    Parameters
    ----------
    argv : list of str
        The command that starts the process.
    timeout : float, default 900
        Seconds to wait for any one answer (the first line included).

    Attributes
    ----------
    version : str or None
        What the process said it is, from its first line.

    Raises
    ------
    RuntimeError
        If the process exits, or does not answer within ``timeout``, while
        starting or answering a job (with its last line of standard error).

    Examples
    --------
    >>> with torch_worker(threads=1) as torch:  # doctest: +SKIP
    ...     torch.ask(job)["times"]
    """

    def __init__(self, argv, timeout=900.0):
        self.timeout = timeout
        self._errors = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._errors, text=True, bufsize=1)
        self._lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.version = self._answer("starting")["version"]

    def _read(self):
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _answer(self, doing):
        try:
            line = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            self._process.kill()  # stuck: it would not read its closed input either
            self.close()
            raise RuntimeError(f"{doing}: no answer after {self.timeout} s") from None
        if line is None:
            self._process.wait()
            self._errors.seek(0)
            last = (self._errors.read().strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{doing}: the worker exited ({last})")
        return json.loads(line)

    def ask(self, job: dict) -> dict:
        """Hand over ``job`` and return the worker's answer."""
        try:
            self._process.stdin.write(json.dumps(job) + "\n")
            self._process.stdin.flush()
        except OSError:
            pass  # the worker is gone; _answer reports why
        return self._answer(f"job {job.get('label', '?')!r}")

    def close(self):
        """End the process (it finishes the job it is on)."""
        if self._process.poll() is None:
            try:
                self._process.stdin.close()
                self._process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._errors.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def torch_worker(threads: int, timeout: float = 900.0) -> TimingWorker:
    """A :class:`TimingWorker` timing ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    threads : int
        ``torch.set_num_threads`` of the process.
    timeout : float, default 900
        Seconds to wait for any one answer.

    Returns
    -------
    TimingWorker
        Its ``version`` is torch's; :meth:`TimingWorker.ask` takes a job as
        :func:`torch_runs` does and answers ``{"label": ..., "times": [...]}``.
    """
    return TimingWorker([sys.executable, "-c", _TORCH_SERVER, str(threads)], timeout=timeout)


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
        Seconds to wait for the process to start, or to time any one job.

    Returns
    -------
    tuple of (str, dict)
        torch's version and, per label, the timed runs in seconds.

    Raises
    ------
    RuntimeError
        If the process fails or times out.
    """
    with torch_worker(threads, timeout) as worker:
        return worker.version, {job["label"]: worker.ask(job)["times"] for job in jobs}
