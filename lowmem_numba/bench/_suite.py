"""The measurements behind ``lowmem-numba`` and ``lowmem-numba bench``.

For every layer of a network table, every thread count and every algorithm:
the best of a few in-process timings (:func:`lowmem_numba._timing.measure`),
the declared workspace, the cost model's prediction and the scheduler's pick;
optionally the baselines of :mod:`lowmem_numba.bench._baselines` and the OS-measured
peak memory of :func:`lowmem_numba.bench.memory.peak_added_bytes`.  The result is a
JSON-ready dict that ``lowmem-numba report`` turns into a table and a plot.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import stat
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Callable, Optional

import numpy as np

from .. import _registry as registry
from .._version import __version__
from .._api import conv2d, workspace_bytes
from ._baselines import (NUMPY_IM2COL, TORCH, numpy_im2col_conv2d, numpy_im2col_workspace_bytes,
                        torch_available, torch_runs)
from .._cache import machine_id
from .._geometry import make_geometry
from ._networks import Layer, layers
from .._scheduler import plan
from .._threads import max_threads
from .._timing import measure

SCHEMA = "lowmem-numba-bench/1"

#: The algorithm every other is compared with ("speed vs reference").
REFERENCE = "im2col-copy-self-ab-ki"

#: ``native`` runs each algorithm in its kernel's input layout, so no layout
#: conversion is timed.
LAYOUTS = ("NCHW", "NHWC", "native")

#: Calls of one measurement go on until they took this long in all, so the best of
#: a small layer's sub-millisecond calls is not one noisy sample.
MIN_TIMED_SECONDS = 0.02

#: Layers a ``--quick`` run keeps (spread over the network).
QUICK_LAYERS = 4

#: Environment variables that change how many threads anything runs on.
THREAD_ENVIRONMENT = ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OMP_NUM_THREADS",
                      "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class BenchConfig:
    """What a benchmark run measures.

    Attributes
    ----------
    network : str
        One of :data:`lowmem_numba.NETWORKS`.
    threads : tuple of int
        Thread counts, each timed separately.
    algorithms : tuple of str
        Registered algorithm names.
    layer_names : tuple of str, optional
        Layers of the network to keep (default: all, or a spread of
        :data:`QUICK_LAYERS` with ``quick``).
    quick : bool
        Fewer layers (unless named) and one timed call per measurement.
    repeats : int
        Timed calls per measurement (the best counts) when not ``quick``.
    max_seconds : float
        Skip a measurement the cost model predicts slower than this per call
        (the direct loop nest on large layers).
    layout : {"NCHW", "NHWC", "native"}
    baselines : bool
        Also time torch (if installed) and the numpy im2col baseline.
    memory : bool
        Also measure each call's peak memory in a fresh process (slow).
    """

    network: str = "alexnet"
    threads: tuple = (1,)
    algorithms: tuple = ()
    layer_names: Optional[tuple] = None
    quick: bool = False
    repeats: int = 3
    max_seconds: float = 0.25
    layout: str = "NCHW"
    baselines: bool = True
    memory: bool = False

    @property
    def timed_repeats(self) -> int:
        return 1 if self.quick else self.repeats


def select_layers(network, names=None, quick=False) -> tuple[Layer, ...]:
    """The layers of ``network`` a run covers.

    Parameters
    ----------
    network : str
    names : iterable of str, optional
        Layer names to keep, in the table's order.
    quick : bool, default False
        Without ``names``: keep :data:`QUICK_LAYERS` layers spread evenly over
        the network, first and last included.

    Returns
    -------
    tuple of Layer

    Raises
    ------
    ValueError
        For an unknown network or layer name.
    """
    table = layers(network)
    if names:
        known = {layer.name: layer for layer in table}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"unknown layer {unknown[0]!r} of {network}; its layers are: "
                             f"{', '.join(known)}")
        return tuple(layer for layer in table if layer.name in set(names))
    if quick and len(table) > QUICK_LAYERS:
        picks = sorted({round(i * (len(table) - 1) / (QUICK_LAYERS - 1)) for i in range(QUICK_LAYERS)})
        return tuple(table[i] for i in picks)
    return table


class Progress:
    """A plain-text progress bar on a stream (stderr).

    On a terminal the bar is redrawn in place; otherwise a line is written at
    every tenth of the work, so logs stay short.
    """

    def __init__(self, total, stream=None, width=24):
        self.total = max(1, total)
        self.done = 0
        self.stream = stream
        self.width = width
        self.start = time.perf_counter()
        self.tty = stream is not None and hasattr(stream, "isatty") and stream.isatty()
        self._shown = ""
        self._last_tenth = -1

    def step(self, label):
        """Count one unit of work as started, described by ``label``."""
        self.done = min(self.total, self.done + 1)
        if self.stream is None:
            return
        elapsed = time.perf_counter() - self.start
        fraction = self.done / self.total
        if self.tty:
            filled = int(self.width * fraction)
            line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                    f"{elapsed:5.0f}s {label}")[:119]
            self.stream.write("\r" + line.ljust(len(self._shown)))
            self._shown = line
        elif int(fraction * 10) > self._last_tenth:
            self._last_tenth = int(fraction * 10)
            self.stream.write(f"[{fraction:4.0%}] {elapsed:.0f}s {label}\n")
        self.stream.flush()

    def clear(self):
        """Erase the bar (before other output goes to the terminal)."""
        if self.tty and self._shown:
            self.stream.write("\r" + " " * len(self._shown) + "\r")
            self.stream.flush()
            self._shown = ""


def machine_info() -> dict:
    """What the timings are only valid for."""
    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = None
    return {
        "cpu": machine_id(),
        "cores": os.cpu_count(),
        "numba_threads": max_threads(),
        "threading_layer": layer,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: version(name) for name in ("numpy", "scipy", "numba", "torch")},
        "environment": {name: os.environ[name] for name in THREAD_ENVIRONMENT if name in os.environ},
    }


def count_steps(config: BenchConfig, n_layers: int) -> int:
    """Units of work :func:`run_bench` reports to its progress bar."""
    per_layer = len(config.algorithms) + (1 if config.baselines else 0)
    if config.memory:
        per_layer += len(config.algorithms) + ((2 if torch_available() else 1) if config.baselines else 0)
    torch_steps = len(config.threads) if config.baselines and torch_available() else 0
    return torch_steps + n_layers * len(config.threads) * per_layer


def _empty_record(layer, name, kind, threads, layout):
    return {"layer": layer.label, "algorithm": name, "kind": kind, "threads": threads, "layout": layout,
            "seconds": None, "median_seconds": None, "runs": [], "gflops": None, "workspace_bytes": None,
            "predicted_seconds": None, "peak_added_bytes": None, "transient_bytes": None, "skipped": ""}


def _timed(record, runs, flops):
    record["runs"] = list(runs)
    record["seconds"] = min(runs)
    record["median_seconds"] = float(np.median(runs))
    record["gflops"] = flops / record["seconds"] / 1e9
    return record


class _LayerInputs:
    """One layer's random input (in both layouts, made on demand), weights and outputs."""

    def __init__(self, layer):
        rng = np.random.default_rng(0)
        self.layer = layer
        self.x = {"NCHW": rng.standard_normal(layer.x_shape()).astype(np.float32)}
        self.w = rng.standard_normal(layer.w_shape).astype(np.float32)
        self.geometry = make_geometry(layer.x_shape(), layer.w_shape, **layer.conv_args)

    def input(self, layout):
        if layout not in self.x:
            self.x[layout] = np.ascontiguousarray(self.x["NCHW"].transpose(0, 2, 3, 1))
        return self.x[layout]


def _algorithm_layout(name, layout):
    return registry.get(name).input_layout if layout == "native" else layout


def _measure_algorithm(inputs, name, threads, config, predicted):
    layer, g = inputs.layer, inputs.geometry
    layout = _algorithm_layout(name, config.layout)
    record = _empty_record(layer, name, "algorithm", threads, layout)
    reason = registry.get(name).unsupported(g)
    if reason is not None:
        record["skipped"] = f"unsupported: {reason}"
        return record
    x = inputs.input(layout)
    record["workspace_bytes"] = workspace_bytes(name, x.shape, inputs.w.shape, threads=threads, layout=layout,
                                                **layer.conv_args)
    record["predicted_seconds"] = predicted
    if predicted is not None and predicted > config.max_seconds:
        record["skipped"] = f"predicted {predicted:.2g} s per call > --max-seconds {config.max_seconds:g}"
        return record
    kwargs = dict(algorithm=name, threads=threads, layout=layout, **layer.conv_args)
    out = conv2d(x, inputs.w, **kwargs)  # compiles or loads the kernels: not timed
    timing = measure(lambda: conv2d(x, inputs.w, out=out, **kwargs), repeats=config.timed_repeats, warmup=1,
                     min_seconds=MIN_TIMED_SECONDS)
    return _timed(record, timing.runs, g.flops)


def _measure_numpy(inputs, threads, config):
    from threadpoolctl import threadpool_limits

    layer, g = inputs.layer, inputs.geometry
    record = _empty_record(layer, NUMPY_IM2COL, "baseline", threads, "NCHW")
    record["workspace_bytes"] = numpy_im2col_workspace_bytes(g)
    x, out = inputs.input("NCHW"), np.empty(g.output_shape, np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        timing = measure(lambda: numpy_im2col_conv2d(x, inputs.w, out=out, **layer.conv_args),
                         repeats=config.timed_repeats, warmup=1, min_seconds=MIN_TIMED_SECONDS)
    return _timed(record, timing.runs, g.flops)


def _torch_record(layer, threads, runs, flops):
    record = _empty_record(layer, TORCH, "baseline", threads, "NCHW")
    if runs is None:
        record["skipped"] = "torch baseline unavailable"
        return record
    return _timed(record, runs, flops)


def _add_memory(record, layer):
    from .memory import peak_added_bytes

    if record["skipped"]:
        return
    target = record["algorithm"]
    measured = peak_added_bytes(target, layer.x_shape(), layer.w_shape, threads=record["threads"],
                                layout=record["layout"], repeats=2, **layer.conv_args)
    record["peak_added_bytes"] = measured.peak_added_bytes
    record["transient_bytes"] = measured.transient_bytes


def _torch_baseline(chosen, config, progress, notes):
    """Per (label, threads): torch's timed runs, from one subprocess per thread count."""
    if not (config.baselines and torch_available()):
        if config.baselines:
            notes.append("torch is not installed: no torch baseline")
        return {}, None
    jobs = [{"label": layer.label, "x_shape": list(layer.x_shape()), "w_shape": list(layer.w_shape),
             "args": layer.conv_args, "warmup": 1, "repeats": config.timed_repeats,
             "min_seconds": MIN_TIMED_SECONDS} for layer in chosen]
    found, version = {}, None
    for threads in config.threads:
        progress.step(f"torch baseline on {threads} thread(s)")
        try:
            version, runs = torch_runs(jobs, threads)
        except RuntimeError as error:
            notes.append(str(error))
            continue
        found.update({(label, threads): times for label, times in runs.items()})
    return found, version


def run_bench(config: BenchConfig, *, progress: Optional[Progress] = None,
              on_layer: Optional[Callable[[dict, Layer], None]] = None) -> dict:
    """Measure every layer, thread count and algorithm of ``config``.

    Parameters
    ----------
    config : BenchConfig
    progress : Progress, optional
        Told about each unit of work (see :func:`count_steps`).
    on_layer : callable, optional
        ``on_layer(result, layer)`` after each layer, with the result so far.

    Returns
    -------
    dict
        JSON-ready: ``schema``, ``version``, ``created``, ``machine``,
        ``settings``, ``layers``, ``results`` (one record per layer,
        algorithm or baseline, and thread count: seconds, gflops,
        workspace_bytes, ...), ``plans`` (the scheduler's pick per layer and
        thread budget) and ``notes``.

    Raises
    ------
    ValueError
        For an unknown network or layer, or an invalid thread count.
    """
    chosen = select_layers(config.network, config.layer_names, config.quick)
    progress = progress or Progress(count_steps(config, len(chosen)))
    result = {"schema": SCHEMA, "version": __version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {}, "settings": {**asdict(config), "reference": REFERENCE,
                                          "timed_repeats": config.timed_repeats,
                                          "min_timed_seconds": MIN_TIMED_SECONDS},
              "layers": [], "results": [], "plans": [], "notes": []}
    torch_times, torch_version = _torch_baseline(chosen, config, progress, result["notes"])
    result["settings"]["torch_version"] = torch_version
    plan_layout = "NCHW" if config.layout == "native" else config.layout
    for layer in chosen:
        inputs = _LayerInputs(layer)
        g = inputs.geometry
        result["layers"].append({"label": layer.label, "network": layer.network, "name": layer.name,
                                 "x_shape": list(layer.x_shape()), "w_shape": list(layer.w_shape),
                                 **layer.conv_args, "flops": g.flops})
        records = []
        for threads in config.threads:
            choice = plan(inputs.input(plan_layout).shape, layer.w_shape, threads=threads, layout=plan_layout,
                          **layer.conv_args)
            result["plans"].append({"layer": layer.label, "thread_budget": threads, "layout": plan_layout,
                                    "algorithm": choice.algorithm, "threads": choice.threads,
                                    "workspace_bytes": choice.workspace_bytes,
                                    "predicted_seconds": choice.predicted_seconds})
            predicted = {c.algorithm: c.seconds for c in choice.candidates if c.threads == threads}
            for name in config.algorithms:
                progress.step(f"{layer.label} {name} on {threads} thread(s)")
                records.append(_measure_algorithm(inputs, name, threads, config, predicted.get(name)))
            if config.baselines:
                progress.step(f"{layer.label} {NUMPY_IM2COL} on {threads} thread(s)")
                records.append(_measure_numpy(inputs, threads, config))
                if torch_version is not None:
                    records.append(_torch_record(layer, threads, torch_times.get((layer.label, threads)),
                                                 g.flops))
        if config.memory:
            for record in records:
                progress.step(f"{layer.label} {record['algorithm']} on {record['threads']} thread(s): memory")
                _add_memory(record, layer)
        result["results"].extend(records)
        if on_layer is not None:
            on_layer(result, layer)
    result["machine"] = machine_info()  # after the kernels ran, so the threading layer is known
    return result


def check_writable(path) -> None:
    """Raise now if a result file could not be written at ``path`` later.

    Checks that ``path`` names a file (not a directory), that its directory
    exists, and that a file can really be created there (permission bits say
    nothing to root, nor about a read-only file system).

    Raises
    ------
    ValueError
        For an empty path.
    OSError
        If the file could not be written.
    """
    if not path:
        raise ValueError("cannot write to an empty file name")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise IsADirectoryError(f"cannot write {path}: that is a directory path; give a file name")
    full = os.path.realpath(path)
    if os.path.isdir(full):
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    if os.path.exists(full):
        if not os.access(full, os.W_OK):
            raise PermissionError(f"cannot write {path}: permission denied")
        if not os.path.isfile(full):  # a device or pipe such as /dev/stdout is written in place
            return
    parent = os.path.dirname(full)
    if not os.path.exists(parent):
        raise FileNotFoundError(f"cannot write {path}: directory {parent} does not exist")
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"cannot write {path}: {parent} is not a directory")
    try:
        descriptor, probe = tempfile.mkstemp(dir=parent, prefix=".lowmem-numba-probe-")
    except OSError as error:
        raise OSError(f"cannot write {path}: {error.strerror or error}") from None
    os.close(descriptor)
    os.unlink(probe)


def _new_file_mode(path):
    """Permission bits for a file replacing ``path``: its own, or what umask gives a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


@contextlib.contextmanager
def replacing(path, mode="w"):
    """Open a file that replaces ``path`` only once it is completely written.

    The data goes to a temporary file in the same directory, renamed over
    ``path`` (:func:`os.replace`) when the block ends without an error; after
    an error the temporary file is removed and ``path`` is left as it was.  An
    existing device or pipe (``/dev/stdout``) is written in place.
    """
    full = os.path.realpath(path)
    if os.path.exists(full) and not os.path.isfile(full):
        with open(full, mode) as handle:
            yield handle
        return
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(full), prefix=f".{os.path.basename(full)}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
        os.chmod(temporary, _new_file_mode(full))
        os.replace(temporary, full)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_json(path, result) -> None:
    """Write a benchmark result to ``path`` (replacing it only when complete)."""
    text = json.dumps(result, indent=1)
    with replacing(path) as handle:
        handle.write(text)
