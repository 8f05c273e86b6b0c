"""Summarise `lowmem-numba bench` JSON files against the project's targets.

Per network and thread count (geometric means over layers):

* pick / torch: speed of the scheduler's pick relative to torch's conv2d;
* best / torch: the fastest of our algorithms relative to torch;
* pick / best: how close the pick is to our fastest;
* aa / patch: kn2row-aa-ab relative to the best patch-building algorithm
  (im2col-*, im2row-*), on the layers kn2row-aa supports;
* pick ws / im2col ws: the pick's workspace relative to im2col-copy-self-ab-ki's
  (geometric mean, zero workspace counted as 1e-4), first for a Conv2d layer
  (packed weights persistent, as in a network), then for the functional call
  (which also repacks the weights), and the layers where the layer's is above 1 %.

    python perf/summarize.py perf/results/alexnet.json perf/results/vgg16.json
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np

import lowmem_numba as ln


def geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summarise(path):
    data = json.load(open(path))
    timed = {}
    for r in data["results"]:
        if r["seconds"]:
            timed[(r["layer"], r["algorithm"], r["threads"])] = r
    rows = []
    for budget in sorted({p["thread_budget"] for p in data["plans"]}):
        pick_torch, best_torch, pick_best, aa_patch, ws_ratio, ws_functional, over = [], [], [], [], [], [], []
        for layer in data["layers"]:
            label = layer["label"]
            plan = next(p for p in data["plans"] if p["layer"] == label and p["thread_budget"] == budget)
            ours = {k[1]: v["seconds"] for k, v in timed.items()
                    if k[0] == label and k[2] == budget and v["kind"] == "algorithm"}
            pick = timed.get((label, plan["algorithm"], plan["threads"]))
            torch = timed.get((label, "torch", budget))
            best = min(ours.values())
            if pick and torch:
                pick_torch.append(torch["seconds"] / pick["seconds"])
            if torch:
                best_torch.append(torch["seconds"] / best)
            if pick:
                pick_best.append(best / pick["seconds"])
            patch = [s for n, s in ours.items() if n.startswith(("im2col", "im2row"))]
            if "kn2row-aa-ab" in ours and patch:
                aa_patch.append(min(patch) / ours["kn2row-aa-ab"])
            im2col = timed.get((label, "im2col-copy-self-ab-ki", budget))
            if im2col and im2col["workspace_bytes"]:
                x_shape = layer["x_shape"]
                if plan["layout"] == "NHWC":
                    x_shape = (x_shape[0], *x_shape[2:], x_shape[1])
                held = ln.Conv2d(np.ones(layer["w_shape"], np.float32), stride=layer["stride"],
                                 padding=layer["padding"], groups=layer["groups"], algorithm=plan["algorithm"],
                                 threads=plan["threads"], layout=plan["layout"]).workspace_bytes_for(x_shape)
                ratio = held / im2col["workspace_bytes"]
                ws_ratio.append(max(ratio, 1e-4))
                ws_functional.append(max(plan["workspace_bytes"] / im2col["workspace_bytes"], 1e-4))
                if ratio > 0.01:
                    over.append(f"{layer['name']} ({plan['algorithm']})")
        rows.append(f"| {data['layers'][0]['network']} | {budget} | {len(data['layers'])} | "
                    f"{geomean(pick_torch):.2f} | {geomean(best_torch):.2f} | {geomean(pick_best):.2f} | "
                    f"{geomean(aa_patch):.2f} ({min(aa_patch):.2f}-{max(aa_patch):.2f}) | "
                    f"{geomean(ws_ratio):.4f} / {geomean(ws_functional):.3f}; layer > 1 %: "
                    f"{', '.join(over) or 'none'} |")
    return rows


def main(paths):
    print("| network | threads | layers | pick / torch | best / torch | pick / best | aa / patch (range) "
          "| pick ws / im2col ws (layer / functional) |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        print("\n".join(summarise(path)))


if __name__ == "__main__":
    main(sys.argv[1:])
