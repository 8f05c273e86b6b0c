"""Speed of every algorithm on the issue's layer set, at 1 and 2 threads.

For each layer and thread count: GFLOP/s of every algorithm that supports the
layer, the best patch-building (im2col/im2row) algorithm, kn2row-aa-ab relative
to it, the fastest GEMM-based algorithm relative to ONE sgemm of the same total
shape (M x C*kh*kw x Ho*Wo) through the same binding, and torch's conv2d when
torch is installed (in a subprocess per thread count, so the pools never mix).

    python perf/family_speed.py --threads 1,2 --out perf/results/family_speed.md
"""

from __future__ import annotations

import argparse

import numpy as np

import lowmem_numba as ln
from lowmem_numba import bench
from lowmem_numba.bench import layers, measure, torch_available, torch_runs

LAYERS = [("vgg16", n) for n in ("conv2_2", "conv3_2", "conv4_2")] + \
         [("alexnet", n) for n in ("conv2", "conv3", "conv4", "conv5")] + \
         [("googlenet", n) for n in ("inception3a_3x3", "inception3a_5x5")]

def find_layer(network, name):
    return next(layer for layer in layers(network) if layer.name == name)


def sgemm_seconds(layer, threads, repeats):
    """One GEMM of the convolution's total shape (M x Ho·Wo x C/g·kh·kw), parallel as the kernels do it."""
    plane = layer.flops() // (2 * layer.out_channels * (layer.in_channels // layer.groups) * layer.kernel_h
                               * layer.kernel_w)
    return bench.sgemm_seconds(layer.out_channels, plane, layer.in_channels // layer.groups * layer.kernel_h
                               * layer.kernel_w, threads, repeats)


def torch_seconds(chosen, threads, repeats):
    """Best time per layer label of torch's conv2d (empty without torch)."""
    if not torch_available():
        return {}
    jobs = [{"label": layer.label, "x_shape": list(layer.x_shape()), "w_shape": list(layer.w_shape),
             "args": dict(layer.conv_args, dilation=1), "warmup": 1, "repeats": repeats, "min_seconds": 0.02}
            for layer in chosen]
    _, runs = torch_runs(jobs, threads)
    return {label: min(times) for label, times in runs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--algorithms", default=None, help="comma-separated (default: all)")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    names = args.algorithms.split(",") if args.algorithms else list(ln.algorithms())
    chosen = [find_layer(*key) for key in LAYERS]
    lines = []

    def emit(text=""):
        print(text, flush=True)
        lines.append(text)

    for threads in (int(t) for t in args.threads.split(",")):
        torch_times = torch_seconds(chosen, threads, args.repeats)
        emit(f"\n### {threads} thread(s): GFLOP/s (best of {args.repeats})\n")
        columns = [n for n in names if n != "direct-sum2d"] + ["direct-sum2d"]
        emit("| layer | sgemm | " + " | ".join(columns) + " | best patch | kn2row-aa-ab / best patch "
             "| fastest GEMM-based / sgemm | torch |")
        emit("|---" * (len(columns) + 6) + "|")
        for layer in chosen:
            flops = layer.flops()
            rng = np.random.default_rng(0)
            x = rng.random(layer.x_shape(), dtype=np.float32)
            x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            w = rng.random(layer.w_shape, dtype=np.float32)
            speeds = {}
            for name in columns:
                if not ln.supports(name, x.shape, w.shape, **layer.conv_args):
                    continue
                # Each algorithm in its native input layout, so no conversion is timed.
                layout = ln.describe(name).input_layout
                xin = x if layout == "NCHW" else x_nhwc
                out = ln.conv2d(xin, w, algorithm=name, threads=threads, layout=layout, **layer.conv_args)
                repeats = 2 if name == "direct-sum2d" else args.repeats
                t = measure(lambda: ln.conv2d(xin, w, algorithm=name, threads=threads, layout=layout,
                                              out=out, **layer.conv_args), repeats=repeats).best
                speeds[name] = flops / t / 1e9
            sgemm = flops / sgemm_seconds(layer, threads, args.repeats) / 1e9
            patch = {n: v for n, v in speeds.items() if n.startswith(("im2col", "im2row"))}
            best_patch = max(patch, key=patch.get)
            gemm_based = {n: v for n, v in speeds.items() if n != "direct-sum2d"}
            fastest = max(gemm_based, key=gemm_based.get)
            aa = speeds.get("kn2row-aa-ab")
            torch_cell = f"{flops / torch_times[layer.label] / 1e9:.1f}" if layer.label in torch_times else "-"
            cells = [f"{speeds[n]:.1f}" if n in speeds else "-" for n in columns]
            emit(f"| {layer.label} | {sgemm:.1f} | " + " | ".join(cells)
                 + f" | {best_patch} | " + (f"{aa / patch[best_patch]:.2f}x" if aa else "-")
                 + f" | {fastest}: {gemm_based[fastest] / sgemm:.0%} | {torch_cell} |")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
