"""``lowmem-numba scale``: a network's convolution stack over a synthetic image set, on Dask.

The stack is the network's convolution layers in table order, each followed by
a ReLU, with the max-pools that bring one layer's output to the next layer's
input size (AlexNet's 3x3 stride 2, VGG-16's 2x2 stride 2; MobileNet-v1 needs
none).  Networks whose tables branch (GoogLeNet, ResNet-50) are not chains and
are refused.  Images are generated on the workers (image ``i`` from seed
``(seed, i)``, whatever the chunking), run through the stack with
:func:`lowmem_numba.dask.map_layers` (one fused task per chunk) and reduced to
one checksum per chunk, so only numbers come back.

Each worker first runs one chunk of a separate warm-up image set (loading
compiled kernels, packing weights); then each worker's peak resident size is
reset and the timed run starts.  ``workers=0`` runs the same stack in this
process, chunk after chunk, on all threads, without Dask: the baseline.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .._cache import machine_id
from .._geometry import make_geometry
from .._threads import max_threads
from .._units import format_bytes
from .._version import __version__
from ._networks import NETWORKS, check_network, layers as network_layers

#: Networks whose convolution tables form a chain (with max-pools between).
SCALE_NETWORKS = ("alexnet", "vgg16", "mobilenet")
#: Max-pools tried between consecutive layers: (window, stride).  AlexNet's
#: overlapping 3x3 stride 2 first (55 -> 27 fits 2x2 too); VGG-16's 2x2 stride 2
#: fits where it does not (224 -> 112).
POOLS = ((3, 2), (2, 2))

DASK_EXTRA_HINT = 'python -m pip install "lowmem-numba[dask]"'


@dataclass(frozen=True)
class ScaleConfig:
    """Settings of one ``scale`` run (see ``lowmem-numba scale --help``)."""

    network: str = "vgg16"
    images: int = 64
    chunk: int = 4
    workers: Optional[int] = 1         # 0: no Dask, this process; None with scheduler
    threads_per_worker: Optional[int] = 1
    threads: Optional[int] = None      # kernel threads per task (default: lowmem_numba.dask's rule)
    algorithm: str = "auto"
    memory_limit: Optional[int] = None
    scheduler: Optional[str] = None
    image_size: Optional[int] = None
    seed: int = 0


# -- the stack ---------------------------------------------------------------------------------------------

def _pooled(size, window, stride):
    return (size - window) // stride + 1


def conv_stack(network, image_size=None):
    """The stack of ``network`` as segments ``(layers, pool)``.

    ``layers`` are the table's :class:`Layer` rows run one after another
    (ReLU between and after), ``pool`` the ``(window, stride)`` max-pool
    after them, or None.

    Returns
    -------
    segments : list of (list of Layer, tuple or None)
    input_shape : tuple of int
        (C, H, W) of one image.

    Raises
    ------
    ValueError
        For a network whose table is not a chain, or an ``image_size`` too
        small for the stack.
    """
    table = network_layers(check_network(network))
    segments, current = [], []
    shape = (table[0].in_channels, table[0].height, table[0].width)
    for layer in table:
        wanted = (layer.in_channels, layer.height, layer.width)
        if current and shape != wanted:
            pool = next(((k, s) for k, s in POOLS if shape[0] == wanted[0]
                         and (_pooled(shape[1], k, s), _pooled(shape[2], k, s)) == wanted[1:]), None)
            if pool is None:
                raise ValueError(
                    f"{network}'s layer table is not a chain ({current[-1].name} gives {'x'.join(map(str, shape))}, "
                    f"{layer.name} takes {'x'.join(map(str, wanted))}); scale runs {', '.join(SCALE_NETWORKS)}")
            segments.append((current, pool))
            current = []
        current.append(layer)
        g = make_geometry((1,) + wanted, layer.w_shape, **layer.conv_args)
        shape = (g.out_channels, g.out_height, g.out_width)
    segments.append((current, None))
    first = table[0]
    input_shape = (first.in_channels, first.height, first.width)
    if image_size is not None:
        input_shape = (first.in_channels, image_size, image_size)
        image_shapes(segments, input_shape)  # raises if too small
    return segments, input_shape


def image_shapes(segments, input_shape):
    """The (C, H, W) each layer gets, per segment, for images of ``input_shape``."""
    shape, shapes = tuple(input_shape), []
    for seg_layers, pool in segments:
        inner = []
        for layer in seg_layers:
            inner.append(shape)
            try:
                g = make_geometry((1,) + shape, layer.w_shape, **layer.conv_args)
            except ValueError:
                raise ValueError(f"images of {input_shape[1]}x{input_shape[2]} pixels are too small for "
                                 f"{layer.network}/{layer.name} (it would get {shape[1]}x{shape[2]})") from None
            shape = (g.out_channels, g.out_height, g.out_width)
        shapes.append(inner)
        if pool is not None:
            shape = (shape[0], _pooled(shape[1], *pool), _pooled(shape[2], *pool))
            if min(shape[1:]) < 1:
                raise ValueError(f"images of {input_shape[1]}x{input_shape[2]} pixels are too small for "
                                 f"the {network_name(segments)} stack")
    return shapes, shape


def network_name(segments):
    return segments[0][0][0].network


def layer_weights(segments, seed):
    """(weight, bias) of every layer, per segment: He-initialised (std sqrt(2 / fan-in)), zero bias."""
    weights, index = [], 0
    for seg_layers, _ in segments:
        row = []
        for layer in seg_layers:
            rng = np.random.default_rng([seed, 1_000_003, index])
            fan_in = layer.w_shape[1] * layer.w_shape[2] * layer.w_shape[3]
            w = rng.standard_normal(layer.w_shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
            row.append((w, np.zeros(layer.out_channels, np.float32)))
            index += 1
        weights.append(row)
    return weights


def build_layers(segments, algorithm, memory_limit, seed, threads=None):
    """Conv2d layers of the stack (weights from :func:`layer_weights`), per segment."""
    from .._layer import Conv2d

    built = []
    for (seg_layers, _), row in zip(segments, layer_weights(segments, seed)):
        layers = []
        for layer, (w, b) in zip(seg_layers, row):
            try:
                layers.append(Conv2d(w, b, algorithm=algorithm, memory_limit=memory_limit, threads=threads,
                                     **layer.conv_args))
            except ValueError as error:
                raise ValueError(f"{layer.label}: {error}") from None
        built.append(layers)
    return built


def relu(y):
    """ReLU in place (the activation between layers)."""
    np.maximum(y, 0, out=y)
    return y


def relu_pool(y, window, stride):
    """ReLU, then a (window, stride) max-pool over H and W of an NCHW chunk."""
    relu(y)
    windows = np.lib.stride_tricks.sliding_window_view(y, (window, window), axis=(2, 3))
    return np.ascontiguousarray(windows[:, :, ::stride, ::stride].max(axis=(-2, -1)))


def image(seed, index, shape):
    """Synthetic image ``index`` (standard normal float32), the same whatever the chunking."""
    return np.random.default_rng([seed, index]).standard_normal(shape, dtype=np.float32)


def images_chunk(start, count, shape, seed):
    out = np.empty((count,) + tuple(shape), np.float32)
    for i in range(count):
        out[i] = image(seed, start + i, shape)
    return out


def _checksum(y):
    return np.array([float(y.sum(dtype=np.float64))])


# -- memory, as the OS sees it ------------------------------------------------------------------------------

def _reset_peak():
    """Release freed heap, reset this process's peak resident size; its resident size now (None: unavailable)."""
    from .memory import _status_bytes, _trim_heap

    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return _status_bytes("VmRSS")
    except OSError:
        return None


def _read_peak():
    """(peak resident size since the reset, resident size now), or Nones."""
    from .memory import _status_bytes

    try:
        return _status_bytes("VmHWM"), _status_bytes("VmRSS")
    except OSError:
        return None, None


# -- runs ---------------------------------------------------------------------------------------------------

def _chunks(images, chunk):
    return tuple([chunk] * (images // chunk) + ([images % chunk] if images % chunk else [])) or (0,)


def run_scale(config: ScaleConfig, progress=None) -> dict:
    """Run the stack over the image set as ``config`` says; the result as a JSON-able dict.

    Raises
    ------
    ValueError
        For an unusable configuration (network, sizes, algorithm).
    RuntimeError
        When Dask is needed but not installed.
    OSError
        When the scheduler cannot be reached.
    """
    segments, input_shape = conv_stack(config.network, config.image_size)
    shapes, out_shape = image_shapes(segments, input_shape)
    chunks = _chunks(config.images, config.chunk)
    base = {"version": __version__, "settings": asdict(config), "input_shape": list(input_shape),
            "output_shape": list(out_shape), "chunks": len(chunks),
            "layers": [layer.name for seg, _ in segments for layer in seg],
            "pools": [list(pool) for _, pool in segments if pool is not None],
            "machine": {"cpu": machine_id(), "cores": os.cpu_count(), "numba_threads": max_threads()}}
    if config.workers == 0:
        return {**base, **_run_here(config, segments, input_shape, chunks, progress)}
    with warnings.catch_warnings():
        # The weights travel in the graph once (one key all tasks share); for a
        # large network distributed warns about the graph's size: those weights.
        warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
        return {**base, **_run_dask(config, segments, input_shape, chunks, progress)}


def _run_here(config, segments, input_shape, chunks, progress):
    from .._workspace import Workspace

    threads = config.threads or max_threads()
    built = build_layers(segments, config.algorithm, config.memory_limit, config.seed, threads)
    arena = Workspace()
    for row in built:
        for layer in row:
            layer.workspace = arena

    def run(x):
        y = x
        for row, (_, pool) in zip(built, segments):
            for index, layer in enumerate(row):
                y = layer(y)
                if index < len(row) - 1:
                    relu(y)
            y = relu_pool(y, *pool) if pool is not None else relu(y)
        return float(y.sum(dtype=np.float64))

    warm = time.perf_counter()
    run(images_chunk(0, max(1, chunks[0]), input_shape, config.seed + 1))
    warmup_seconds = time.perf_counter() - warm
    before = _reset_peak()
    if progress is not None:
        progress.start = time.perf_counter()  # the bar times the run, not the warm-up
    start = time.perf_counter()
    total, offset = 0.0, 0
    for count in chunks:
        total += run(images_chunk(offset, count, input_shape, config.seed))
        offset += count
        if progress is not None:
            progress.step(f"{offset}/{config.images} images")
    seconds = time.perf_counter() - start
    peak, now = _read_peak()
    plans = []
    names = [layer.name for seg, _ in segments for layer in seg]
    flat = [layer for row in built for layer in row]
    shapes, _ = image_shapes(segments, input_shape)
    flat_shapes = [s for inner in shapes for s in inner]
    for name, layer, shape in zip(names, flat, flat_shapes):
        x_shape = (chunks[0],) + shape
        if isinstance(layer.algorithm, str) and layer.algorithm == "auto":
            chosen = layer.plan_for(x_shape)
            algorithm, t = chosen.algorithm, chosen.threads
        else:
            algorithm, t = layer.algorithm, layer.threads
        plans.append({"layer": name, "input_shape": list(x_shape), "algorithm": algorithm, "threads": t,
                      "workspace_bytes": layer.workspace_bytes_for(x_shape)})
    worker = {"address": "this process", "pid": os.getpid(), "images": config.images, "tasks": len(chunks),
              "task_threads": [threads], "rss_before_bytes": before, "peak_rss_bytes": peak,
              "peak_added_bytes": None if peak is None or before is None else max(0, peak - before),
              "arena_bytes": [arena.nbytes], "weight_loads": 0, "stack_builds": 1, "plans": plans}
    return {"scheduler": "none (this process)", "workers": [worker], "seconds": seconds,
            "warmup_seconds": warmup_seconds, "images_per_second": config.images / seconds if seconds else None,
            "checksum": total}


def _import_dask():
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as error:
        raise RuntimeError(f"scale needs dask and distributed ({error}); install them with "
                           f"{DASK_EXTRA_HINT}") from None
    from .. import dask as lnd

    return lnd


def _run_dask(config, segments, input_shape, chunks, progress):
    lnd = _import_dask()
    import dask
    import dask.array as da
    import distributed

    built = build_layers(segments, config.algorithm, config.memory_limit, config.seed, config.threads)
    names = {}
    for row, (seg_layers, _) in zip(built, segments):
        token = lnd._Stack.of(row).token
        for index, layer in enumerate(seg_layers):
            names[(token, index)] = layer.name

    def graph(count_chunks, seed):
        # Images as tasks of their own (an image set read from storage looks the
        # same): the scheduler spreads them over the workers, and each chunk's
        # fused stack runs where its images are.
        pieces, start = [], 0
        name = "x".join(map(str, input_shape))
        for count in count_chunks:
            task = dask.delayed(images_chunk, pure=True)(start, count, tuple(input_shape), seed,
                                                         dask_key_name=f"lowmem-images-{name}-{seed}-{start}-{count}")
            pieces.append(da.from_delayed(task, shape=(count,) + tuple(input_shape), dtype=np.float32,
                                          meta=np.empty((0, 0, 0, 0), np.float32)))
            start += count
        x = da.concatenate(pieces)
        y = x
        for row, (_, pool) in zip(built, segments):
            y = lnd.map_layers(y, row, activation=relu, threads=config.threads)
            if pool is not None:
                _, c, h, w = y.shape
                y = y.map_blocks(relu_pool, *pool, dtype=np.float32,
                                 chunks=(y.chunks[0], (c,), (_pooled(h, *pool),), (_pooled(w, *pool),)))
            else:
                y = y.map_blocks(relu, dtype=np.float32)
        sums = y.map_blocks(_checksum, drop_axis=[1, 2, 3], dtype=np.float64, chunks=((1,) * len(count_chunks),))
        return sums.to_delayed().ravel().tolist()

    cluster = None
    if config.scheduler is not None:
        client = distributed.Client(config.scheduler, timeout="20s")
        scheduler = config.scheduler
    else:
        cluster = distributed.LocalCluster(n_workers=config.workers, threads_per_worker=config.threads_per_worker,
                                           processes=True, dashboard_address=None, silence_logs=logging.ERROR)
        client = distributed.Client(cluster)
        scheduler = f"LocalCluster ({config.workers} worker(s) x {config.threads_per_worker} thread(s))"
    try:
        info = lnd._all_workers(client)
        if not info:
            raise RuntimeError(f"the scheduler at {config.scheduler} has no workers")
        addresses = sorted(info)
        # Warm-up: one chunk on every worker (kernels loaded, weights there and packed).
        warm = time.perf_counter()
        warm_parts = graph((max(1, chunks[0]),) * len(addresses), config.seed + 1)
        warm_futures = [client.compute(part, workers=[address], allow_other_workers=False)
                        for part, address in zip(warm_parts, addresses)]
        distributed.wait(warm_futures)
        for future in warm_futures:
            future.result()  # raises a task's error here
        del warm_futures
        warmup_seconds = time.perf_counter() - warm
        before = client.run(_reset_peak)
        client.run(lnd._reset_process_report)
        if progress is not None:
            progress.start = time.perf_counter()  # the bar times the run, not the warm-up
        start = time.perf_counter()  # building the graph (hashing the weights) counts
        futures = client.compute(graph(chunks, config.seed))
        sizes = {future.key: count for future, count in zip(futures, chunks)}
        done = 0
        for future in distributed.as_completed(futures):
            future.result()  # raises a task's error here
            done += sizes[future.key]
            if progress is not None:
                progress.step(f"{done}/{config.images} images")
        seconds = time.perf_counter() - start
        total = float(sum(part[0] for part in client.gather(futures)))
        placed = {}
        for key, holders in client.who_has(futures).items():
            if holders:
                images, tasks = placed.get(holders[0], (0, 0))
                placed[holders[0]] = (images + sizes[key], tasks + 1)
        peaks = client.run(_read_peak)
        reports = client.run(lnd._process_report)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    workers = []
    for address in sorted(reports):
        report = reports[address]
        peak, _ = peaks.get(address, (None, None))
        rss_before = before.get(address)
        plans = sorted(({"layer": names.get((p["stack"], p["layer"]), f"layer {p['layer']}"),
                         "input_shape": list(p["input_shape"]), "algorithm": p["algorithm"],
                         "threads": p["threads"], "workspace_bytes": p["workspace_bytes"]}
                        for p in report["plans"]), key=lambda p: (_order(names, p["layer"]), p["input_shape"]))
        images, tasks = placed.get(address, (0, 0))
        workers.append({"address": address, "pid": report["pid"], "images": images, "tasks": tasks,
                        "task_threads": report["task_threads"],
                        "rss_before_bytes": rss_before, "peak_rss_bytes": peak,
                        "peak_added_bytes": None if peak is None or rss_before is None else max(0, peak - rss_before),
                        "arena_bytes": report["arena_bytes"], "weight_loads": report["weight_loads"],
                        "stack_builds": report["stack_builds"], "plans": plans})
    return {"scheduler": scheduler, "workers": workers, "seconds": seconds, "warmup_seconds": warmup_seconds,
            "images_per_second": config.images / seconds if seconds else None, "checksum": total}


def _order(names, layer_name):
    order = list(dict.fromkeys(names.values()))
    return order.index(layer_name) if layer_name in order else len(order)


# -- the report ---------------------------------------------------------------------------------------------

def _mib(value):
    return "unavailable" if value is None else format_bytes(value)


def format_result(result) -> str:
    """The printed report of a :func:`run_scale` result."""
    s = result["settings"]
    shape = "x".join(map(str, result["input_shape"]))
    lines = [f"{result['images_per_second']:.2f} images/s: {s['images']} images in {result['seconds']:.2f} s "
             f"(warm-up {result['warmup_seconds']:.1f} s, checksum {result['checksum']:.6g})", ""]
    lines.append("per worker (peak resident size measured by the OS during the timed run; added = peak minus "
                 "the size at its start):")
    for w in result["workers"]:
        threads = ",".join(map(str, w["task_threads"])) or "-"
        arenas = " + ".join(format_bytes(a) for a in w["arena_bytes"]) or "none"
        lines.append(f"  {w['address']} (pid {w['pid']}): {w['images']} images in {w['tasks']} task(s) on {threads} "
                     f"kernel thread(s); peak {_mib(w['peak_rss_bytes'])}, added {_mib(w['peak_added_bytes'])}; "
                     f"arena(s) {arenas}")
    groups = {}
    for w in result["workers"]:
        key = tuple((p["layer"], tuple(p["input_shape"]), p["algorithm"], p["threads"], p["workspace_bytes"])
                    for p in w["plans"])
        groups.setdefault(key, []).append(w["address"])
    for key, addresses in groups.items():
        who = "every worker" if len(groups) == 1 and len(addresses) > 1 else ", ".join(addresses)
        lines.append("")
        lines.append(f"plan ({who}), input {shape} per image:")
        lines.append(f"  {'layer':<10} {'chunk input':<18} {'algorithm':<26} {'threads':>7} {'workspace':>11}")
        for name, x_shape, algorithm, threads, space in key:
            lines.append(f"  {name:<10} {'x'.join(map(str, x_shape)):<18} {algorithm:<26} {threads:>7} "
                         f"{_mib(space):>11}")
    return "\n".join(lines)


def describe_run(config: ScaleConfig) -> str:
    """The header line of a run."""
    segments, input_shape = conv_stack(config.network, config.image_size)
    count = sum(len(seg) for seg, _ in segments)
    pools = sum(1 for _, pool in segments if pool is not None)
    stack = f"{count} conv layers + ReLU" + (f" + {pools} max-pool(s)" if pools else "")
    if config.workers == 0:
        where = f"this process, no Dask, {config.threads or max_threads()} kernel thread(s)"
    elif config.scheduler is not None:
        where = f"scheduler {config.scheduler}"
    else:
        where = f"LocalCluster: {config.workers} worker(s) x {config.threads_per_worker} thread(s)"
    per_task = (f", {config.threads} kernel thread(s) per task" if config.threads and config.workers != 0 else "")
    return (f"lowmem-numba {__version__} scale: {config.network} ({stack}), {config.images} images of "
            f"{'x'.join(map(str, input_shape))} in chunks of {config.chunk}; {where}{per_task}; "
            f"algorithm {config.algorithm}"
            + ("" if config.memory_limit is None else f", workspace <= {format_bytes(config.memory_limit)} per task"))


__all__ = ["NETWORKS", "SCALE_NETWORKS", "ScaleConfig", "conv_stack", "format_result", "run_scale"]
