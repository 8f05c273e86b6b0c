"""How good are the scheduler's picks?  Exhaustive timing against both modes.

For each layer and thread budget, every (algorithm, threads) candidate is timed
(the loop nest only on depthwise layers, where it can win); then

* model pick / best: the time of ``plan(mode="model")``'s choice over the best;
* measure pick / best: the same for ``plan(mode="measure")`` (which times again);
* 1 MiB / best: the model's choice for a network layer (packed weights held
  by the layer, ``prepacked=True``) under ``memory_limit=1 MiB``: what the
  budget costs.  Its time is that of a functional call, which also repacks the
  weights, so this slightly overstates the cost.

Ratios are summarised by their geometric mean per network and thread budget,
then over all sampled layers per thread budget: the model pick's geometric
mean and worst layer against the exhaustive best, with the targets (geometric
mean within 10 %, worst layer within 25 %).  On a quiet machine:

    python perf/scheduler_accuracy.py --networks alexnet,vgg16,googlenet,resnet50,mobilenet --threads 1,2 \
        --out perf/results/scheduler.md

    python perf/scheduler_accuracy.py --networks alexnet,vgg16 --threads 1,2 --out perf/results/scheduler.md
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

import numpy as np

import lowmem_numba as ln
import lowmem_numba.bench  # noqa: F401  (ln.bench)
from lowmem_numba.bench import forget_plans, measure

MiB = 2**20


def sample(network, every):
    table = ln.bench.layers(network)
    return table if every <= 1 else table[::every]


def time_all(layer, budget, repeats):
    rng = np.random.default_rng(0)
    x = rng.random(layer.x_shape(), dtype=np.float32)
    w = rng.random(layer.w_shape, dtype=np.float32)
    out = ln.conv2d(x, w, algorithm="im2col-copy-short-ab-ki", **layer.conv_args)
    times = {}
    depthwise = layer.groups > 1 and layer.groups == layer.in_channels
    for name in ln.algorithms():
        if name == "direct-sum2d" and not depthwise:
            continue
        if not ln.supports(name, x.shape, w.shape, **layer.conv_args):
            continue
        for threads in sorted({1, budget}):
            times[(name, threads)] = measure(
                lambda: ln.conv2d(x, w, algorithm=name, threads=threads, out=out, **layer.conv_args),
                repeats=repeats, warmup=1).best
    return times


def lookup(times, plan, layer, repeats):
    key = (plan.algorithm, plan.threads)
    if key not in times:  # e.g. the loop nest on a dense layer: time it now
        rng = np.random.default_rng(0)
        x = rng.random(layer.x_shape(), dtype=np.float32)
        w = rng.random(layer.w_shape, dtype=np.float32)
        times[key] = measure(lambda: ln.conv2d(x, w, algorithm=plan.algorithm, threads=plan.threads,
                                               **layer.conv_args), repeats=repeats).best
    return times[key]


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default=",".join(ln.bench.NETWORKS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every", type=int, default=0,
                        help="time every n-th layer (default: all of AlexNet and VGG-16, every 4th elsewhere)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    # Measured plans must be measured here, not read from an earlier run.
    os.environ["LOWMEM_NUMBA_CACHE_DIR"] = os.environ.get("LOWMEM_NUMBA_CACHE_DIR") or tempfile.mkdtemp()
    lines = []

    def emit(text=""):
        print(text, flush=True)
        lines.append(text)

    emit("| network | threads | layers | model pick / best | measure pick / best | 1 MiB pick / best "
         "| worst model layer |")
    emit("|---|---|---|---|---|---|---|")
    overall = {}  # budget -> ([model ratios], (worst ratio, label))
    for network in args.networks.split(","):
        every = args.every or (1 if network in ("alexnet", "vgg16") else 4)
        for budget in (int(t) for t in args.threads.split(",")):
            model_r, measure_r, budget_r = [], [], []
            worst = (0.0, "")
            for layer in sample(network, every):
                times = time_all(layer, budget, args.repeats)
                best = min(times.values())
                kwargs = dict(threads=budget, **layer.conv_args)
                model = ln.plan(layer.x_shape(), layer.w_shape, **kwargs)
                measured = ln.plan(layer.x_shape(), layer.w_shape, mode="measure", **kwargs)
                tight = ln.plan(layer.x_shape(), layer.w_shape, memory_limit=MiB, prepacked=True, **kwargs)
                ratio = lookup(times, model, layer, args.repeats) / best
                model_r.append(ratio)
                measure_r.append(lookup(times, measured, layer, args.repeats) / best)
                budget_r.append(lookup(times, tight, layer, args.repeats) / best)
                if ratio > worst[0]:
                    fastest = min(times, key=times.get)
                    worst = (ratio, f"{layer.name}: {model.algorithm}/{model.threads} vs {fastest[0]}/{fastest[1]}")
                ratios, overall_worst = overall.get(budget, ([], (0.0, "")))
                ratios.append(ratio)
                if ratio > overall_worst[0]:
                    overall_worst = (ratio, f"{network}/{worst[1]}")
                overall[budget] = (ratios, overall_worst)
                forget_plans()
            emit(f"| {network} | {budget} | {len(model_r)} | {geomean(model_r):.3f} | {geomean(measure_r):.3f} "
                 f"| {geomean(budget_r):.3f} | {worst[1]} ({worst[0]:.2f}x) |")
    emit()
    emit("| threads | layers | model pick / best (geomean) | target 1.10 | worst layer | target 1.25 |")
    emit("|---|---|---|---|---|---|")
    for budget, (ratios, (worst_ratio, label)) in overall.items():
        mean = geomean(ratios)
        emit(f"| {budget} | {len(ratios)} | {mean:.3f} | {'met' if mean <= 1.10 else 'MISSED'} "
             f"| {label} ({worst_ratio:.2f}x) | {'met' if worst_ratio <= 1.25 else 'MISSED'} |")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
