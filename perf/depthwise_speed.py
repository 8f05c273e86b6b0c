"""Speed of the depthwise family against torch on every MobileNet-v1 depthwise layer.

Layers: the 13 depthwise layers of MobileNet-v1 (3x3, padding 1, stride 1 and
2, 112x112 ... 7x7, 32 ... 1024 channels); dw7 ... dw11 share one shape and
are timed once.  Batch 1 and 8, 1 and 2 threads.  Ours runs as a ``Conv2d``
layer writing into ``out=``: ``depthwise`` and ``depthwise-blocked`` on NCHW
input, ``depthwise-nhwc`` on NHWC input.  torch is ``torch.nn.functional.conv2d`` on NCHW tensors (its
default layout), in a separate process (``lowmem_numba.bench.torch_runs``)
launched right before and right after ours for the same thread count, its best
of the two kept, so that both see the same machine load.  Each figure is the
best of at least ``repeats`` calls and 0.2 s.  "speed-up" is torch's time over
ours (above 1: ours is faster).

Usage::

    python perf/depthwise_speed.py             # everything (a few minutes)
    python perf/depthwise_speed.py --quick     # batch 1, a few layers
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np

import lowmem_numba as ln
import lowmem_numba.bench  # noqa: F401  (ln.bench)
from lowmem_numba.bench import torch_available, torch_runs

RESULTS = Path(__file__).resolve().parent / "results" / "depthwise_speed.md"
QUICK = ("dw1", "dw2", "dw7", "dw12", "dw13")


def select_layers(quick=False):
    """(label, layer) for MobileNet-v1's depthwise layers, identical shapes once."""
    chosen, seen = [], {}
    for layer in ln.bench.layers("mobilenet"):
        if layer.groups == 1 or (quick and layer.name not in QUICK):
            continue
        key = (layer.x_shape(1), layer.w_shape, layer.stride, layer.padding)
        if key in seen:
            seen[key][0].append(layer.name)
            continue
        seen[key] = ([layer.name], layer)
        chosen.append(seen[key])
    return [(" = ".join(names), layer) for names, layer in chosen]


#: (algorithm, layout of its input) timed on every layer.
VARIANTS = (("depthwise", "NCHW"), ("depthwise-blocked", "NCHW"), ("depthwise-nhwc", "NHWC"))


def time_ours(layer, batch, threads, name, layout, repeats):
    rng = np.random.default_rng(0)
    x = rng.random(layer.x_shape(batch), dtype=np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w = rng.random(layer.w_shape, dtype=np.float32)
    conv = ln.Conv2d(w, np.zeros(layer.out_channels, np.float32), algorithm=name, threads=threads,
                     layout=layout, **layer.conv_args)
    out = conv(x)
    return ln.bench.measure(lambda: conv(x, out=out), repeats=repeats, min_seconds=0.2).best


def torch_seconds(selected, batch, threads, repeats):
    jobs = [dict(label=label, x_shape=layer.x_shape(batch), w_shape=layer.w_shape,
                 args=dict(stride=layer.stride, padding=layer.padding, groups=layer.groups),
                 warmup=2, repeats=repeats, min_seconds=0.2) for label, layer in selected]
    version, runs = torch_runs(jobs, threads)
    return version, {label: min(times) for label, times in runs.items()}


def geometric_mean(values):
    return float(np.exp(np.mean(np.log(values))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 1, a few layers")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not torch_available():
        raise SystemExit("torch is not installed: nothing to compare against")
    selected = select_layers(args.quick)
    batches = args.batches or ([1] if args.quick else [1, 8])
    repeats = args.repeats or (5 if args.quick else 10)
    threads_list = [t for t in args.threads if t <= ln.bench.max_threads()]

    command = "python perf/depthwise_speed.py" + (" --quick" if args.quick else "")
    lines = ["# Depthwise family against torch (MobileNet-v1 depthwise layers)", "",
             f"`{command}` on {platform.processor() or platform.machine()}, "
             f"{ln.bench.max_threads()} cores; best of at least {repeats} calls and 0.2 s; torch "
             "(NCHW tensors) in a separate process right before and after ours, best kept. "
             "speed-up = torch's time / ours (above 1: ours faster). The machine is shared and noisy.", ""]
    summary = []
    version = None
    for batch in batches:
        for threads in threads_list:
            version, theirs = torch_seconds(selected, batch, threads, repeats)
            ours = {(label, name): time_ours(layer, batch, threads, name, layout, repeats)
                    for label, layer in selected for name, layout in VARIANTS}
            version, again = torch_seconds(selected, batch, threads, repeats)
            theirs = {label: min(seconds, again.get(label, seconds)) for label, seconds in theirs.items()}
            lines += [f"## batch {batch}, {threads} thread{'s' if threads > 1 else ''}", "",
                      "| layer | C, HxW, stride | torch ms | "
                      + " | ".join(f"{name} ({layout}) ms | speed-up" for name, layout in VARIANTS)
                      + " | best GFLOP/s |",
                      "|---|---|---|" + "---|---|" * len(VARIANTS) + "---|"]
            speedups = {name: [] for name, _ in VARIANTS}
            for label, layer in selected:
                torch_s = theirs[label]
                cells = []
                for name, _ in VARIANTS:
                    speedups[name].append(torch_s / ours[(label, name)])
                    cells.append(f"{ours[(label, name)] * 1e3:.3f} | {torch_s / ours[(label, name)]:.2f}")
                best = min(ours[(label, name)] for name, _ in VARIANTS)
                lines.append(f"| {label} | {layer.in_channels}, {layer.height}x{layer.width}, {layer.stride} | "
                             f"{torch_s * 1e3:.3f} | " + " | ".join(cells)
                             + f" | {layer.flops(batch) / best / 1e9:.1f} |")
                print(f"b{batch} t{threads} {lines[-1]}", flush=True)
            row = [f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}"]
            for name, _ in VARIANTS:
                values = speedups[name]
                row.append(f"{geometric_mean(values):.2f} ({min(values):.2f}-{max(values):.2f}), "
                           f"{sum(v >= 1.0 for v in values)}/{len(values)} >= 1")
            summary.append("| " + " | ".join(row) + " |")
            lines.append("")
    lines[4:4] = ([f"torch {version}. Speed-up per setting: geometric mean over the layers (min-max), "
                   "layers at or above 1.", "",
                   "| setting | " + " | ".join(f"{name} ({layout})" for name, layout in VARIANTS) + " |",
                   "|---|" + "---|" * len(VARIANTS)] + summary + [""])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
