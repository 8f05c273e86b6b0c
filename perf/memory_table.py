"""Declared workspace against OS-measured peak memory, every algorithm, one layer.

Each measurement is one warm call in a fresh process (lowmem_numba.bench.memory).  The
functional conv2d counts per-call weight repacking; the Conv2d layer (prepacked
weights) column shows what a network layer needs per call.  torch and the
numpy im2col baseline are measured the same way, when available.

    python perf/memory_table.py --out perf/results/memory.md     # VGG-16 conv1_2
"""

from __future__ import annotations

import argparse

import numpy as np

import lowmem_numba as ln
import lowmem_numba.bench  # noqa: F401  (ln.bench)
from lowmem_numba.bench._baselines import torch_available
from lowmem_numba.bench.memory import peak_added_bytes
from lowmem_numba.bench import format_bytes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="vgg16")
    parser.add_argument("--layer", default="conv1_2")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    layer = next(l for l in ln.bench.layers(args.network) if l.name == args.layer)
    lines = [f"Peak memory added by one warm call, {layer.label} (x {layer.x_shape()}, w {layer.w_shape}), "
             f"measured as VmHWM growth in a fresh process.", "",
             "| algorithm | native layout | declared (conv2d) | measured (conv2d) | declared (Conv2d layer) "
             "| measured (Conv2d layer) |", "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in ln.algorithms():
        if not ln.supports(name, layer.x_shape(), layer.w_shape, **layer.conv_args):
            continue
        algorithm = ln.describe(name)
        layout = algorithm.input_layout if algorithm.input_layout == algorithm.output_layout else "NCHW"
        shape = layer.x_shape() if layout == "NCHW" else (1, layer.height, layer.width, layer.in_channels)
        declared = ln.workspace_bytes(name, shape, layer.w_shape, threads=args.threads, layout=layout,
                                      **layer.conv_args)
        measured = peak_added_bytes(name, layer.x_shape(), layer.w_shape, threads=args.threads, layout=layout,
                                    **layer.conv_args)
        conv = ln.Conv2d(np.ones(layer.w_shape, np.float32), algorithm=name, threads=args.threads, layout=layout, **layer.conv_args)
        layer_declared = conv.workspace_bytes_for(shape)
        layer_measured = peak_added_bytes(f"layer:{name}", layer.x_shape(), layer.w_shape, threads=args.threads,
                                          layout=layout, **layer.conv_args)
        row = (f"| {name} | {layout} | {format_bytes(declared)} | {format_bytes(measured.peak_added_bytes)} "
               f"| {format_bytes(layer_declared)} | {format_bytes(layer_measured.peak_added_bytes)} |")
        lines.append(row)
        print(row, flush=True)
    baselines = ["numpy-im2col"] + (["torch"] if torch_available() else [])
    for target in baselines:
        measured = peak_added_bytes(target, layer.x_shape(), layer.w_shape, threads=args.threads,
                                    **layer.conv_args)
        row = (f"| {target} (baseline) | NCHW | - | {format_bytes(measured.transient_bytes)} transient "
               f"(+ {format_bytes(measured.output_bytes)} output it allocates) | - | - |")
        lines.append(row)
        print(row, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
