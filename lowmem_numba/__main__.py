"""Command line: ``lowmem-numba`` or ``python -m lowmem_numba``.

With no arguments: time every algorithm on AlexNet's conv2 layer and print
time, speed and workspace.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from . import algorithms, conv2d, workspace_bytes
from .geometry import make_geometry
from .threads import max_threads

# AlexNet conv2: 96 -> 256 channels, 27x27, 5x5 kernel, padding 2.
DEMO_LAYER = dict(name="AlexNet conv2", x_shape=(1, 96, 27, 27), w_shape=(256, 96, 5, 5), padding=2)


def _median_seconds(call, repeats):
    call()  # loads (or compiles) the kernels, warms the caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _format_bytes(count):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


def demo(threads, repeats, out=sys.stdout):
    layer = DEMO_LAYER
    rng = np.random.default_rng(0)
    x = rng.standard_normal(layer["x_shape"]).astype(np.float32)
    w = rng.standard_normal(layer["w_shape"]).astype(np.float32)
    geometry = make_geometry(x.shape, w.shape, padding=layer["padding"])
    result = np.empty(geometry.output_shape, np.float32)
    print(f"{layer['name']}: x {x.shape}, weight {w.shape}, padding {layer['padding']}, "
          f"{threads} thread(s), median of {repeats}", file=out)
    print(f"{'algorithm':<26} {'ms':>9} {'GFLOP/s':>9} {'workspace':>12}", file=out)
    for name in algorithms():
        seconds = _median_seconds(
            lambda: conv2d(x, w, padding=layer["padding"], algorithm=name, threads=threads, out=result),
            repeats)
        space = workspace_bytes(name, x.shape, w.shape, padding=layer["padding"], threads=threads)
        print(f"{name:<26} {seconds * 1e3:9.2f} {geometry.flops / seconds / 1e9:9.1f} "
              f"{_format_bytes(space):>12}", file=out, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lowmem-numba", description=__doc__.split("\n\n")[1])
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all of Numba's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per algorithm (default 5)")
    args = parser.parse_args(argv)
    threads = args.threads if args.threads is not None else max_threads()
    if not 1 <= threads <= max_threads():
        parser.error(f"--threads must be between 1 and {max_threads()}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    demo(threads, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
