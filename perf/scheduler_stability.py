"""Are the scheduler's model-mode picks stable across independent calibrations?

Runs ``--runs`` calibrations (default 5), each in a fresh process with a fresh
``LOWMEM_NUMBA_CACHE_DIR``, and plans every layer of the five layer tables
(``lowmem_numba.layers``) at each thread budget with ``mode="model"``.  A layer
agrees when every calibration picks the same algorithm and thread count; the
target is agreement on at least 95 % of (layer, budget) pairs.  Writes a
markdown report: the constants of each calibration, the agreement per network
and budget, and every disagreement.

Run it on a quiet machine (other processes distort the calibrations, which is
what it is meant to expose, not to measure):

    python perf/scheduler_stability.py --runs 5 --threads 1,2 --out perf/results/scheduler_stability.md
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

TARGET = 0.95


def child(networks, budgets):
    """One calibration in this (fresh) process, then every pick; JSON on stdout."""
    import dataclasses

    import lowmem_numba as ln
    import lowmem_numba.bench

    run, _ = lowmem_numba.bench.recalibrate()
    picks = {}
    for network in networks:
        for layer in ln.bench.layers(network):
            for budget in budgets:
                p = ln.plan(layer.x_shape(), layer.w_shape, threads=budget, **layer.conv_args)
                picks[f"{layer.label}@{budget}"] = f"{p.algorithm}/{p.threads}"
    json.dump({"calibration": dataclasses.asdict(run.calibration), "fallbacks": list(run.fallbacks),
               "fit_rms": run.fit_rms, "picks": picks}, sys.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="independent calibrations (default 5)")
    parser.add_argument("--networks", default="alexnet,vgg16,googlenet,resnet50,mobilenet")
    parser.add_argument("--threads", default="1,2", help="thread budgets (default 1,2)")
    parser.add_argument("--out", default=None, help="markdown report to write")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    networks = args.networks.split(",")
    budgets = [int(t) for t in args.threads.split(",")]
    if args.child:
        child(networks, budgets)
        return 0

    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="lowmem-numba-stability-") as fresh:
            env = dict(os.environ, LOWMEM_NUMBA_CACHE_DIR=fresh)
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--networks",
                                   args.networks, "--threads", args.threads], env=env, capture_output=True,
                                  text=True, check=False)
        if done.returncode:
            sys.exit(f"calibration {i + 1} failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout))
        print(f"calibration {i + 1}/{args.runs} done", file=sys.stderr, flush=True)

    lines = ["# Scheduler stability across independent calibrations", "",
             f"{args.runs} calibrations, each in a fresh process and cache directory; model-mode picks of every "
             f"layer of {', '.join(networks)} at thread budgets {args.threads}.", "",
             "| run | " + " | ".join(runs[0]["calibration"]) + " | fit rms | fallbacks |",
             "|---" * (len(runs[0]["calibration"]) + 3) + "|"]
    for i, run in enumerate(runs, 1):
        lines.append(f"| {i} | " + " | ".join(f"{v:.4g}" for v in run["calibration"].values())
                     + f" | {run['fit_rms']:.3f} | {', '.join(run['fallbacks']) or '-'} |")
    keys = list(runs[0]["picks"])
    disagree = {k: [run["picks"][k] for run in runs] for k in keys if len({run["picks"][k] for run in runs}) > 1}
    groups = collections.defaultdict(lambda: [0, 0])
    for key in keys:
        label, budget = key.rsplit("@", 1)
        group = (label.split("/")[0], budget)
        groups[group][0] += 1
        groups[group][1] += key not in disagree
    share = 1 - len(disagree) / len(keys)
    lines += ["", "| network | threads | layers | same pick in every run |", "|---|---|---|---|"]
    for (network, budget), (total, same) in groups.items():
        lines.append(f"| {network} | {budget} | {total} | {same} ({same / total:.0%}) |")
    verdict = "meets" if share >= TARGET else "MISSES"
    lines += ["", f"**All: {len(keys) - len(disagree)} of {len(keys)} (layer, budget) pairs ({share:.1%}) get "
                  f"the same pick in every run; this {verdict} the {TARGET:.0%} target.**"]
    if disagree:
        lines += ["", "Disagreements (pick of each run, algorithm/threads):", "",
                  "| layer @ budget | picks |", "|---|---|"]
        for key, picks in disagree.items():
            counted = collections.Counter(picks)
            lines.append(f"| {key} | " + ", ".join(f"{p} x{n}" for p, n in counted.most_common()) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    return 0 if share >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
