"""Speed of the micro-kernel algorithms against torch (oneDNN), layer by layer.

Layers: every 1x1 layer of ResNet-50, MobileNet-v1 and GoogLeNet
(pointwise-ukernel), every 3x3/5x5 layer of VGG-16, ResNet-50 (stride 1 and 2)
and GoogLeNet whose input is 14x14 or larger, and AlexNet conv1 (11x11 stride 4)
(direct-ukernel); identical shapes are timed once.  Batch 1 and 8, 1 and 2
threads, NCHW.  Ours runs as a ``Conv2d`` layer (weights packed once, as torch's
oneDNN primitive caches its reordered weights) writing into ``out=``; torch runs
in a separate process launched right before and right after ours for the same
thread count (its best of the two kept), so the two see the same machine load.  Each figure is the best of N timed calls.

Also reports the machine's single-thread sgemm peak (2048^3 through scipy) and
large 1x1 shapes as a fraction of it.

Usage::

    python perf/ukernel_speed.py            # full sweep (tens of minutes on 2 cores)
    python perf/ukernel_speed.py --quick    # a handful of layers, batch 1, about a minute
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

import lowmem_numba as ln
import lowmem_numba.bench  # noqa: F401  (ln.bench)
from lowmem_numba.bench._baselines import torch_available, torch_runs

RESULTS = Path(__file__).resolve().parent / "results" / "ukernel_speed.md"

QUICK = ("resnet50/layer2_1x1_in", "resnet50/layer3_3x3", "resnet50/layer2_3x3_stride2", "vgg16/conv3_2",
         "googlenet/inception3a_5x5", "alexnet/conv1", "mobilenet/pw6")


def select_layers():
    """(label, layer, algorithm) for every layer the benchmark covers, shapes deduplicated."""
    chosen, seen = [], {}
    for net in ("resnet50", "mobilenet", "googlenet"):
        for layer in ln.bench.layers(net):
            if (layer.kernel_h, layer.kernel_w) == (1, 1) and layer.groups == 1:
                chosen.append((layer, "pointwise-ukernel"))
    for net in ("vgg16", "resnet50", "googlenet"):
        for layer in ln.bench.layers(net):
            if (layer.kernel_h, layer.kernel_w) in ((3, 3), (5, 5)) and layer.groups == 1 \
                    and min(layer.height, layer.width) >= 14:
                chosen.append((layer, "direct-ukernel"))
    chosen += [(layer, "direct-ukernel") for layer in ln.bench.layers("alexnet") if layer.name == "conv1"]
    result = []
    for layer, algorithm in chosen:
        key = (layer.x_shape(1), layer.w_shape, layer.stride, layer.padding)
        if key in seen:
            seen[key][0].append(layer.label)
            continue
        seen[key] = ([layer.label], layer, algorithm)
        result.append(seen[key])
    return [(" = ".join(labels), layer, algorithm) for labels, layer, algorithm in result]


def best_seconds(call, repeats, min_seconds=0.2):
    call()
    best, spent, runs = float("inf"), 0.0, 0
    while runs < repeats or spent < min_seconds:
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
    return best


def flops(layer, batch):
    return layer.flops(batch)


def time_ours(layer, algorithm, batch, threads, repeats):
    rng = np.random.default_rng(0)
    x = rng.random(layer.x_shape(batch), dtype=np.float32)
    w = rng.random(layer.w_shape, dtype=np.float32)
    conv = ln.Conv2d(w, np.zeros(layer.out_channels, np.float32), algorithm=algorithm, threads=threads,
                     **layer.conv_args)
    out = conv(x)
    return best_seconds(lambda: conv(x, out=out), repeats)


def torch_seconds(selected, batch, threads, repeats):
    jobs = [dict(label=label, x_shape=layer.x_shape(batch), w_shape=layer.w_shape,
                 args=dict(stride=layer.stride, padding=layer.padding, groups=layer.groups),
                 warmup=2, repeats=repeats, min_seconds=0.2) for label, layer, _ in selected]
    version, runs = torch_runs(jobs, threads)
    return version, {label: min(times) for label, times in runs.items()}


def sgemm_peak(repeats):
    """Single-thread GFLOP/s of a 2048^3 sgemm through the engine's scipy binding."""
    n = 2048
    return 2 * n**3 / ln.bench.sgemm_seconds(n, n, n, 1, repeats) / 1e9


LARGE_1X1 = (  # (C, H, W, M): large single-image pointwise shapes
    (1024, 32, 32, 1024),
    (2048, 14, 14, 512),
    (512, 28, 28, 2048),
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few layers, batch 1 only")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    selected = select_layers()
    if args.quick:
        selected = [s for s in selected if any(q in s[0].split(" = ") for q in QUICK)]
    batches = args.batches or ([1] if args.quick else [1, 8])
    repeats = args.repeats or (3 if args.quick else 7)
    threads_list = [t for t in args.threads if t <= ln.bench.max_threads()]
    have_torch = torch_available()

    lines = ["# Micro-kernel algorithms against torch", "",
             f"`python perf/ukernel_speed.py{' --quick' if args.quick else ''}` on "
             f"{platform.processor() or platform.machine()}, "
             "tile {}x{} ({}); ".format(*ln.bench.microkernel_tile()) +
             "best of N calls; torch in a separate process right before and after ours (best kept). "
             "Machines are shared and noisy (5-10 %).", ""]
    peak = sgemm_peak(repeats)
    lines.append(f"sgemm 2048^3 through scipy, 1 thread: **{peak:.1f} GFLOP/s** (the peak below).")
    lines.append("")
    lines.append("| large 1x1 shape (C, HxW, M), batch 1, 1 thread | GFLOP/s | fraction of sgemm peak |")
    lines.append("|---|---|---|")
    from lowmem_numba.bench._networks import Layer

    for c, h, w, m in LARGE_1X1 if not args.quick else LARGE_1X1[:1]:
        layer = Layer("large", f"{c}x{h}x{w}->{m}", c, h, w, m, 1, 1, 1, 0, 1)
        seconds = time_ours(layer, "pointwise-ukernel", 1, 1, repeats)
        rate = flops(layer, 1) / seconds / 1e9
        lines.append(f"| {c}, {h}x{w}, {m} | {rate:.1f} | {rate / peak:.0%} |")
        print(lines[-1], flush=True)
    lines.append("")

    version = None
    for batch in batches:
        for threads in threads_list:
            # torch runs right before and right after ours and keeps its best
            # per layer, so a burst of load from elsewhere on the shared
            # machine is less likely to land on one side only.
            theirs = {}
            if have_torch:
                version, theirs = torch_seconds(selected, batch, threads, repeats)
            ours = {}
            for label, layer, algorithm in selected:
                ours[label] = time_ours(layer, algorithm, batch, threads, repeats)
            if have_torch:
                version, again = torch_seconds(selected, batch, threads, repeats)
                theirs = {label: min(seconds, again.get(label, seconds)) for label, seconds in theirs.items()}
            lines.append(f"## batch {batch}, {threads} thread{'s' if threads > 1 else ''}")
            lines.append("")
            lines.append("| layer | C→M, HxW, k/s | algorithm | ms | GFLOP/s | torch GFLOP/s | ours / torch |")
            lines.append("|---|---|---|---|---|---|---|")
            ratios = []
            for label, layer, algorithm in selected:
                fl = flops(layer, batch)
                rate = fl / ours[label] / 1e9
                t_rate = fl / theirs[label] / 1e9 if label in theirs else float("nan")
                ratio = rate / t_rate if label in theirs else float("nan")
                if label in theirs:
                    ratios.append(ratio)
                lines.append(f"| {label} | {layer.in_channels}→{layer.out_channels}, {layer.height}x{layer.width}, "
                             f"{layer.kernel_h}/{layer.stride} | {algorithm} | {ours[label] * 1e3:.3f} | "
                             f"{rate:.1f} | {t_rate:.1f} | {ratio:.2f} |")
                print(f"b{batch} t{threads} " + lines[-1], flush=True)
            if ratios:
                geo = float(np.exp(np.mean(np.log(ratios))))
                lines.append("")
                lines.append(f"Geometric mean ours / torch: **{geo:.2f}** "
                             f"(min {min(ratios):.2f}, max {max(ratios):.2f}).")
            lines.append("")
    if version:
        lines.insert(3, f"torch {version}.")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
