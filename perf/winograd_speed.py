"""Issue 13's Winograd targets against torch, each engine in its own processes.

* VGG-16 conv3_2 with ``winograd-4x4-3x3`` (a ``Conv2d`` layer), effective
  speed = the direct convolution's flops over the time;
* sums over layer sets with ``algorithm="auto"``, as functional ``conv2d``
  calls (weights transformed per call) and as ``Conv2d`` layers (transformed
  once): VGG-16's 13 layers, ResNet-50's stride-1 3x3 layers, AlexNet conv3-5,
  GoogLeNet's 3x3 layers at 14x14;
* the workspace beyond the transformed weights at the default tile block.

Batch 1 and 8, 1 and 2 threads; torch's and our processes interleaved twice,
best call kept (see ``perf/vs_torch.py``).  Writes
``perf/results/winograd_speed.md``.  Usage::

    python perf/winograd_speed.py
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lowmem_numba as ln  # noqa: E402
import lowmem_numba.bench  # noqa: E402,F401
from lowmem_numba import _registry as registry  # noqa: E402
from lowmem_numba._geometry import make_geometry  # noqa: E402
from vs_torch import side_by_side, unique_jobs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "winograd_speed.md"


def layer_sets():
    def pick(net, keep):
        return [layer for layer in ln.bench.layers(net) if keep(layer)]

    def s1_3x3(layer):
        return (layer.kernel_h, layer.kernel_w, layer.stride, layer.groups) == (3, 3, 1, 1)

    return {
        "VGG-16 conv3_2": (pick("vgg16", lambda l: l.name == "conv3_2"), 2.0),
        "VGG-16, all 13 layers": (pick("vgg16", lambda l: True), 1.6),
        "ResNet-50 stride-1 3x3": (pick("resnet50", s1_3x3), 1.5),
        "AlexNet conv3-5": (pick("alexnet", lambda l: l.name in ("conv3", "conv4", "conv5")), 1.2),
        "GoogLeNet 3x3 at 14x14": (pick("googlenet", lambda l: s1_3x3(l) and l.height == 14), 1.2),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sets = layer_sets()
    every = list({layer.label: layer for layers, _ in sets.values() for layer in layers}.values())
    conv3_2 = sets["VGG-16 conv3_2"][0]
    rows = []
    for batch in args.batches:
        for threads in args.threads:
            jobs, label_of = unique_jobs(every, batch, 3, 0.05)
            runs = {mode: side_by_side(jobs, threads, mode) for mode in ("auto", "layer")}
            named_jobs, named_label = unique_jobs(conv3_2, batch, 3, 0.05)
            runs["named"] = side_by_side(named_jobs, threads, "named:winograd-4x4-3x3")
            for title, (layers, target) in sets.items():
                cells = []
                for mode in ("named", "auto", "layer") if title == "VGG-16 conv3_2" else ("auto", "layer"):
                    run = runs[mode]
                    table = named_label if mode == "named" else label_of
                    ours = sum(run["ours"][table[l.label]] for l in layers)
                    theirs = sum(run["torch"][table[l.label]] for l in layers)
                    picks = sorted({run["algorithm"][table[l.label]].split()[0] for l in layers})
                    cells.append((mode, theirs / ours, ours, picks))
                rows.append((batch, threads, title, target, cells))
                print(batch, threads, title, [(m, round(r, 2)) for m, r, _, _ in cells], flush=True)
    version = runs["auto"]["version"]
    lines = ["# Winograd targets against torch", "",
             f"`python perf/winograd_speed.py` on {platform.processor() or platform.machine()}, torch {version}. "
             "Ratio = torch's time / ours over the set (> 1: we are faster). `named`: a `Conv2d` running "
             "winograd-4x4-3x3; `auto`: functional `conv2d(algorithm=\"auto\")` (weights transformed per call); "
             "`layer`: `Conv2d(algorithm=\"auto\")` (weights transformed once). Each engine in its own "
             "processes, two interleaved rounds, best call kept.", "",
             "| batch | threads | layers | target | ratio (mode) | our ms | algorithms picked |", "|---|---|---|---|---|---|---|"]
    for batch, threads, title, target, cells in rows:
        for mode, ratio, ours, picks in cells:
            verdict = "met" if ratio >= target else f"missed by {target / ratio:.2f}x"
            lines.append(f"| {batch} | {threads} | {title} | {target} | **{ratio:.2f}** ({mode}, {verdict}) | "
                         f"{ours * 1e3:.2f} | {', '.join(picks)} |")
    lines += ["", "Workspace beyond the transformed weights at the default tile block (Conv2d, 2 threads):", "",
              "| layer | algorithm | workspace |", "|---|---|---|"]
    for layer in every:
        for name in ("winograd-2x2-3x3", "winograd-4x4-3x3"):
            g = make_geometry(layer.x_shape(1), layer.w_shape, layer.stride, layer.padding, 1, layer.groups)
            if registry.get(name).unsupported(g) is None:
                space = registry.get(name).plan(g, 2, prepacked=True).workspace_bytes
                lines.append(f"| {layer.label} | {name} | {ln.bench.format_bytes(space)} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
