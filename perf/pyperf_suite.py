"""pyperf suite: one benchmark per network x layer x algorithm x thread count.

Each benchmark times ``lowmem_numba.conv2d(x, w, algorithm=A, threads=T, out=out)``
on one layer of a network table, in pyperf's worker processes (pyperf's own
options work as usual: ``--fast``, ``--rigorous``, ``-p``, ``--affinity``,
``-o FILE``, ``--append FILE`` ...).  Requires the ``bench`` extra
(``pip install 'lowmem-numba[bench]'``).

Run::

    python perf/pyperf_suite.py --network alexnet --threads 1,2 -o alexnet.json
    python perf/pyperf_suite.py --network vgg16 --layers conv3_2 \\
        --algorithms kn2row-aa-ab,im2col-copy-self-ab-ki --threads 1 --fast -o vgg16-quick.json

Compare two runs of the same selection (before and after a change, on the same
quiet machine)::

    python -m pyperf compare_to before.json after.json --table
    python -m pyperf show --metadata after.json   # algorithm, threads, workspace_bytes, flops, gflops...
    python perf/pyperf_suite.py gflops after.json # GFLOP/s of every benchmark

Benchmarks are named ``<network>/<layer>/<algorithm>/t<threads>``.  Algorithms
that do not support a layer are left out, and so is the direct loop nest
(``direct-sum2d``, seconds per call on large layers) unless ``--algorithms``
names it.

Threads: each benchmark sets its own count through ``conv2d(threads=...)``.
pyperf starts workers with a cleaned environment, so this script adds every
thread-related variable that is set (``NUMBA_NUM_THREADS``,
``NUMBA_THREADING_LAYER``, ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
``MKL_NUM_THREADS``) and the cache locations (``NUMBA_CACHE_DIR``,
``LOWMEM_NUMBA_CACHE_DIR``, ``XDG_CACHE_HOME``) to ``--inherit-environ``.  Each
benchmark's metadata records what its worker saw (``numba_num_threads``,
``env_<NAME>``), so a run shows whether they arrived.

Metadata per benchmark: network, layer, algorithm, threads, layout,
workspace_bytes, flops; after the run the parent process adds ``gflops``
(flops / mean time) to the ``-o`` file.
"""

from __future__ import annotations

import os
import sys
import time

THREAD_ENVIRONMENT = ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                      "MKL_NUM_THREADS")
CACHE_ENVIRONMENT = ("NUMBA_CACHE_DIR", "LOWMEM_NUMBA_CACHE_DIR", "XDG_CACHE_HOME")

#: Left out unless named: the loop nest takes seconds per call on large layers.
SLOW_BY_DEFAULT = ("direct-sum2d",)


def add_options(parser):
    """This suite's selection options, on pyperf's argument parser."""
    parser.add_argument("--network", default="alexnet", help="layer table (default alexnet)")
    parser.add_argument("--layers", default=None, help="comma-separated layer names (default: all)")
    parser.add_argument("--algorithms", default=None,
                        help="comma-separated algorithm names (default: all but direct-sum2d)")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all)")
    parser.add_argument("--layout", default="NCHW", choices=("NCHW", "NHWC"), help="layout of the calls")


def pass_options(cmd, args):
    """Hand the selection to pyperf's worker processes (they re-run this script)."""
    for option in ("network", "layers", "algorithms", "threads", "layout"):
        value = getattr(args, option)
        if value is not None:
            cmd.extend([f"--{option}", value])


def selection(args):
    """(layer, algorithm, threads) of every benchmark, in a fixed order.

    Every process (parent and workers) computes the same list: pyperf runs the
    n-th benchmark of it in the n-th worker task.
    """
    from lowmem_numba import algorithms, describe, supports
    from lowmem_numba.bench import NETWORKS
    from lowmem_numba.bench._suite import select_layers
    from lowmem_numba.bench import max_threads

    if args.network not in NETWORKS:
        raise ValueError(f"unknown network {args.network!r}; choose from {', '.join(NETWORKS)}")
    chosen = select_layers(args.network, args.layers.split(",") if args.layers else None)
    if args.algorithms:
        names = args.algorithms.split(",")
        for name in names:
            describe(name)
    else:
        names = [name for name in algorithms() if name not in SLOW_BY_DEFAULT]
    try:
        counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, max_threads()})
    except ValueError:
        raise ValueError(f"invalid thread list {args.threads!r}; e.g. 1,2") from None
    for count in counts:
        if not 1 <= count <= max_threads():
            raise ValueError(f"thread count {count} is out of range 1..{max_threads()} (NUMBA_NUM_THREADS)")
    jobs = []
    for layer in chosen:
        for name in names:
            if supports(name, layer.x_shape(), layer.w_shape, **layer.conv_args):
                jobs.extend((layer, name, threads) for threads in counts)
    return jobs


def time_function(layer, name, threads, layout):
    """pyperf's time function: seconds of ``loops`` calls, after one untimed call.

    Inputs are made on the first call, so only the worker running this
    benchmark pays for them; that call also compiles or loads the kernels.
    """
    import numpy as np

    from lowmem_numba import conv2d

    state = {}

    def time_func(loops):
        if not state:
            rng = np.random.default_rng(0)
            x = rng.standard_normal(layer.x_shape()).astype(np.float32)
            if layout == "NHWC":
                x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            w = rng.standard_normal(layer.w_shape).astype(np.float32)
            kwargs = dict(algorithm=name, threads=threads, layout=layout, **layer.conv_args)
            out = conv2d(x, w, **kwargs)
            state["call"] = lambda: conv2d(x, w, out=out, **kwargs)
        call = state["call"]
        start = time.perf_counter()
        for _ in range(loops):
            call()
        return time.perf_counter() - start

    return time_func


def metadata_of(layer, name, threads, layout):
    """Custom pyperf metadata of one benchmark, as this (worker) process sees it."""
    import numba

    from lowmem_numba import workspace_bytes

    x_shape = layer.x_shape()
    if layout == "NHWC":
        x_shape = (x_shape[0],) + x_shape[2:] + (x_shape[1],)
    metadata = {"network": layer.network, "layer": layer.name, "algorithm": name, "threads": threads,
                "layout": layout, "flops": layer.flops(),
                "workspace_bytes": workspace_bytes(name, x_shape, layer.w_shape, threads=threads, layout=layout,
                                                   **layer.conv_args),
                "numba_num_threads": numba.config.NUMBA_NUM_THREADS}
    metadata.update({f"env_{key}": os.environ[key] for key in THREAD_ENVIRONMENT if os.environ.get(key)})
    return metadata


def add_gflops(path, names):
    """Add ``gflops`` (flops / mean) to the named benchmarks of a pyperf JSON file."""
    import pyperf

    suite = pyperf.BenchmarkSuite.load(path)
    for bench in suite:
        flops = bench.get_metadata().get("flops")
        if bench.get_name() in names and flops and "gflops" not in bench.get_metadata():
            bench.update_metadata({"gflops": round(flops / bench.mean() / 1e9, 3)})
    suite.dump(path, replace=True)


def gflops_table(path):
    """Print name, mean time and GFLOP/s of every benchmark in a pyperf JSON file."""
    import pyperf

    suite = pyperf.BenchmarkSuite.load(path)
    print(f"{'benchmark':<52} {'mean ms':>10} {'GFLOP/s':>9} {'workspace':>12}")
    for bench in suite:
        info = bench.get_metadata()
        gflops = info["flops"] / bench.mean() / 1e9 if "flops" in info else float("nan")
        print(f"{bench.get_name():<52} {bench.mean() * 1e3:>10.3f} {gflops:>9.1f} "
              f"{info.get('workspace_bytes', ''):>12}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "gflops":
        gflops_table(sys.argv[2])
        return
    import pyperf

    runner = pyperf.Runner(add_cmdline_args=pass_options)
    add_options(runner.argparser)
    args = runner.parse_args()
    # Workers get a cleaned environment: pass on what decides thread counts and caches.
    wanted = [key for key in THREAD_ENVIRONMENT + CACHE_ENVIRONMENT if key in os.environ]
    args.inherit_environ = list(dict.fromkeys((args.inherit_environ or []) + wanted))
    try:
        jobs = selection(args)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    names = []
    for layer, name, threads in jobs:
        bench_name = f"{layer.label}/{name}/t{threads}"
        names.append(bench_name)
        runner.bench_time_func(bench_name, time_function(layer, name, threads, args.layout),
                               metadata=metadata_of(layer, name, threads, args.layout))
    written = args.output or args.append
    if not args.worker and written and os.path.exists(written):
        add_gflops(written, set(names))


if __name__ == "__main__":
    main()
