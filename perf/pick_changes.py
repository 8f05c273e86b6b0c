"""Which of ``algorithm="auto"``'s picks a change moves, and whether the moved ones got faster.

A cost-model change (or a new calibration) moves some of the picks over the
layer tables.  Network sums on the shared machine move by more than the few
layers such a change touches, so this times the moved picks themselves: each
layer's old and new pick, functional calls alternating in one process (best
of ``--rounds`` rounds of a few calls each), at the batch and thread budget of
the pick.

Usage::

    python perf/pick_changes.py --dump before.json   # at the old code / calibration
    python perf/pick_changes.py --dump after.json    # at the new one
    python perf/pick_changes.py --compare before.json after.json [--output perf/results/pick_changes.md]

``--dump`` writes the pick (algorithm and threads) of every layer of the five
tables at batch 1 and 8 and thread budgets 1 and 2; ``--compare`` times every
layer whose pick differs and writes a table (old time / new time per layer,
and over all of them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import lowmem_numba as ln
from lowmem_numba import bench

BATCHES = (1, 8)
THREADS = (1, 2)


def _shapes(layer, batch):
    x_shape = (batch, layer.in_channels, layer.height, layer.width)
    w_shape = (layer.out_channels, layer.in_channels // layer.groups, layer.kernel_h, layer.kernel_w)
    return x_shape, w_shape, dict(stride=layer.stride, padding=layer.padding, groups=layer.groups)


def dump(path):
    picks = {}
    for network in bench.NETWORKS:
        for layer in bench.layers(network):
            for batch in BATCHES:
                x_shape, w_shape, args = _shapes(layer, batch)
                for threads in THREADS:
                    plan = ln.plan(x_shape, w_shape, threads=threads, **args)
                    picks[f"{network}/{layer.name}|{batch}|{threads}"] = [plan.algorithm, plan.threads]
    Path(path).write_text(json.dumps(picks, indent=0))
    print(f"{len(picks)} picks written to {path}")


def compare(before, after, rounds, output):
    old, new = json.loads(Path(before).read_text()), json.loads(Path(after).read_text())
    layers = {f"{layer.network}/{layer.name}": layer for network in bench.NETWORKS for layer in bench.layers(network)}
    rows, total_old, total_new = [], 0.0, 0.0
    rng = np.random.default_rng(0)
    for key in sorted(k for k in old if k in new and old[k] != new[k]):
        name, batch, _ = key.split("|")
        x_shape, w_shape, args = _shapes(layers[name], int(batch))
        x = rng.random(x_shape, dtype=np.float32)
        w = rng.random(w_shape, dtype=np.float32)
        seconds = {}
        for _ in range(rounds):  # alternating, so that both see the machine's drift
            for side, (algorithm, threads) in (("old", old[key]), ("new", new[key])):
                call = lambda: ln.conv2d(x, w, algorithm=algorithm, threads=threads, **args)  # noqa: E731
                best = bench.measure(call, repeats=3, min_seconds=0.1).best
                seconds[side] = min(seconds.get(side, float("inf")), best)
        total_old += seconds["old"]
        total_new += seconds["new"]
        rows.append((key, old[key], seconds["old"], new[key], seconds["new"]))
        print(f"{key:40s} {seconds['old'] / seconds['new']:5.2f}", flush=True)
    lines = [f"# Moved picks: `{before}` -> `{after}`", "",
             f"`python perf/pick_changes.py --compare {before} {after}`: {len(rows)} of {len(old)} picks moved; "
             "old / new time > 1 means the new pick is faster (functional calls, alternating, best of "
             f"{rounds} rounds).", "",
             "| layer, batch, threads | old pick | ms | new pick | ms | old / new |", "|---|---|---|---|---|---|"]
    for key, (old_alg, old_t), old_s, (new_alg, new_t), new_s in rows:
        lines.append(f"| {key.replace('|', ', b', 1).replace('|', ', t')} | {old_alg} t{old_t} | {old_s * 1e3:.3f} "
                     f"| {new_alg} t{new_t} | {new_s * 1e3:.3f} | {old_s / new_s:.2f} |")
    if rows:
        ratios = [o / n for _, _, o, _, n in rows]
        lines += ["", f"Summed: {total_old / total_new:.3f}; moved picks faster than 1.03x: "
                      f"{sum(r > 1.03 for r in ratios)}, slower than 0.97x: {sum(r < 0.97 for r in ratios)}; "
                      f"range {min(ratios):.2f}-{max(ratios):.2f}."]
    Path(output).write_text("\n".join(lines) + "\n")
    print(f"wrote {output}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--dump", metavar="FILE", help="write every pick to FILE")
    group.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="time the picks that moved")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per moved pick (default 3)")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "pick_changes.md"))
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.dump:
        dump(args.dump)
    else:
        compare(*args.compare, args.rounds, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
