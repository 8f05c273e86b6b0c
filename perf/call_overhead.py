"""The fixed cost of one call: what a tiny layer pays besides its arithmetic.

Times, in microseconds per call (best of several batches of calls):

* ``empty``: a 1x1 convolution of a 1x1 image with one channel, which does
  no arithmetic to speak of: the pure fixed cost of a call;
* three small layers of the tables where the fixed cost is a large part of
  the call (GoogLeNet's 7x7 1x1 reductions, MobileNet's last depthwise);

each as a functional ``conv2d(algorithm="auto")`` call, as a ``Conv2d`` layer
call into a preallocated output, and as ``torch.nn.functional.conv2d`` in its
own process (when torch is installed).  A second table splits a small layer's
time into fixed cost and arithmetic: 1x1 layers from 480 channels to M = 8
to 64 on 14x14 (GoogLeNet's 4a 5x5 reduction has M = 16), each engine's
times fitted by a line in M (intercept: what a call costs besides its
channel blocks; slope: each block of 8 output channels); ours all run by
``direct-pixels`` (what "auto" picks up to M = 24 here) so that one kernel's
line is fitted.

Writes ``perf/results/call_overhead.md``.

Usage::

    python perf/call_overhead.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

#: (label, x shape, w shape, groups)
LAYERS = (
    ("empty (1x1x1x1)", (1, 1, 1, 1), (1, 1, 1, 1), 1),
    ("1x1, 96->16 at 7x7", (1, 96, 7, 7), (16, 96, 1, 1), 1),
    ("googlenet 5a 5x5_reduce (832->32 at 7x7)", (1, 832, 7, 7), (32, 832, 1, 1), 1),
    ("mobilenet dw13 (1024 at 7x7)", (1, 1024, 7, 7), (1024, 1, 3, 3), 1024),
)
#: Output channels of the fixed-cost / arithmetic split, 480 -> M at 14x14.
SWEEP_CHANNELS = (8, 16, 24, 32, 48, 64)
SWEEP = tuple((f"1x1, 480->{m} at 14x14", (1, 480, 14, 14), (m, 480, 1, 1), 1) for m in SWEEP_CHANNELS)
SWEEP_ALGORITHM = "direct-pixels"


def run_ours(threads: int) -> dict:
    import lowmem_numba as ln
    from lowmem_numba.bench import measure

    result = {}
    jobs = [(*layer, "auto") for layer in LAYERS] + [(*layer, SWEEP_ALGORITHM) for layer in SWEEP]
    for label, x_shape, w_shape, groups, algorithm in jobs:
        rng = np.random.default_rng(0)
        x = rng.random(x_shape, dtype=np.float32)
        w = rng.random(w_shape, dtype=np.float32)
        padding = (w_shape[2] - 1) // 2
        layer = ln.Conv2d(w, padding=padding, groups=groups, threads=threads, algorithm=algorithm,
                          input_shape=x_shape)
        out = layer(x)
        functional = measure(lambda: ln.conv2d(x, w, padding=padding, groups=groups, threads=threads,
                                               algorithm=algorithm),
                             repeats=2000, warmup=50, min_seconds=0.2).best
        layered = measure(lambda: layer(x, out=out), repeats=2000, warmup=50, min_seconds=0.2).best
        shown = algorithm
        if algorithm == "auto":  # the functional call's pick, and the layer's if it differs (prepacked)
            functional_plan = ln.plan(x_shape, w_shape, padding=padding, groups=groups, threads=threads)
            layer_plan = layer.plan_for(x_shape)
            shown = f"{functional_plan.algorithm} t{functional_plan.threads}"
            if (layer_plan.algorithm, layer_plan.threads) != (functional_plan.algorithm, functional_plan.threads):
                shown += f" (layer: {layer_plan.algorithm} t{layer_plan.threads})"
        result[label] = dict(functional=functional, layer=layered, algorithm=shown)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS / "call_overhead.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_ours(args.threads)))
        return
    from lowmem_numba.bench import torch_available, torch_runs

    process = subprocess.run([sys.executable, __file__, "--worker", "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
    ours = json.loads(process.stdout.strip().splitlines()[-1])
    theirs, version = {}, None
    if torch_available():
        jobs = [dict(label=label, x_shape=x_shape, w_shape=w_shape,
                     args=dict(stride=1, padding=(w_shape[2] - 1) // 2, groups=groups),
                     warmup=50, repeats=2000, min_seconds=0.2)
                for label, x_shape, w_shape, groups in LAYERS + SWEEP]
        version, runs = torch_runs(jobs, args.threads)
        theirs = {label: min(times) for label, times in runs.items()}
    command = "python perf/call_overhead.py" + (f" --threads {args.threads}" if args.threads != 1 else "")
    lines = [f"# Fixed cost of a call, {args.threads} thread(s)", "",
             f"`{command}` on {platform.machine()}, Python {platform.python_version()}; "
             f"torch {version or 'not installed'} in its own process.", "",
             "| layer | ours: conv2d | ours: Conv2d layer | torch | plan |",
             "|---|---|---|---|---|"]
    for label, *_ in LAYERS:
        o = ours[label]
        t = f"{theirs[label] * 1e6:.1f} us" if label in theirs else "-"
        lines.append(f"| {label} | {o['functional'] * 1e6:.1f} us | {o['layer'] * 1e6:.1f} us | {t} | "
                     f"{o['algorithm']} |")
    lines += ["", "## Fixed cost against arithmetic", "",
              f"1x1 layers 480 -> M on 14x14, ours run by `{SWEEP_ALGORITHM}`, a line fitted to each engine's times "
              "in M (least squares): "
              "the intercept is what a call costs besides its blocks of output channels, the slope what "
              "each block of 8 costs.", "",
              "| engine | " + " | ".join(f"M = {m}" for m in SWEEP_CHANNELS) + " | intercept | per 8 channels |",
              "|---" * (len(SWEEP_CHANNELS) + 3) + "|"]
    engines = [("ours: conv2d", {label: ours[label]["functional"] for label, *_ in SWEEP}),
               ("ours: Conv2d layer", {label: ours[label]["layer"] for label, *_ in SWEEP})]
    if theirs:
        engines.append(("torch", {label: theirs[label] for label, *_ in SWEEP}))
    for name, times in engines:
        seconds = [times[label] for label, *_ in SWEEP]
        slope, intercept = np.polyfit(SWEEP_CHANNELS, seconds, 1)
        lines.append(f"| {name} | " + " | ".join(f"{t * 1e6:.1f} us" for t in seconds)
                     + f" | {intercept * 1e6:.1f} us | {slope * 8 * 1e6:.2f} us |")
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
