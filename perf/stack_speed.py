"""direct-ukernel with the images stacked into its walk, against one image at a time.

On small planes with a border, the micro-kernel may walk each output row of a
rectangle over all the images of the call (``ukernel._stacks``).  This script
times a prepacked ``direct-ukernel`` layer both ways on every distinct layer of
the five tables that the rule considers (at most ``UKERNEL_STACK_PIXELS``
outputs, a border, one group), alternately in one process, and reports the
measured ratio (stacked / per image, < 1: stacking is faster) beside the
priced one the rule compares with ``UKERNEL_STACK_MARGIN``: the numbers behind
those two constants in ``lowmem_numba/_tuning.py``.

Writes ``perf/results/stack_speed.md``.

Usage::

    python perf/stack_speed.py [--batch 8] [--threads 1 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from unittest import mock

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def candidate_layers(batch):
    """Distinct (C, M, H, W, k, stride, padding) of the tables' one-group
    layers that the stacking rule considers at ``batch``, with a layer naming
    each (depthwise layers have their own families)."""
    from lowmem_numba._algorithms import ukernel
    from lowmem_numba._geometry import make_geometry
    from lowmem_numba.bench import NETWORKS, layers

    seen = {}
    for layer in (layer for network in NETWORKS for layer in layers(network)):
        key = (layer.in_channels, layer.out_channels, layer.height, layer.width, layer.kernel_h, layer.stride,
               layer.padding)
        if layer.groups != 1 or key in seen:
            continue
        g = make_geometry((batch, *key[:1], *key[2:4]), (key[1], key[0], key[4], key[4]), key[5], key[6])
        if ukernel._stacking_ratio(g) is not None:
            seen[key] = f"{layer.network}/{layer.name}"
    return seen


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import lowmem_numba as ln
    from lowmem_numba import _memo
    from lowmem_numba._algorithms import ukernel
    from lowmem_numba._geometry import make_geometry
    from lowmem_numba._tuning import UKERNEL_STACK_MARGIN
    from lowmem_numba.bench import measure

    rule = ukernel._stacks
    rows = []
    for (c, m, h, w, k, stride, padding), name in candidate_layers(args.batch).items():
        x_shape, w_shape = (args.batch, c, h, w), (m, c, k, k)
        g = make_geometry(x_shape, w_shape, stride, padding)
        priced = ukernel._stacking_ratio(g)
        rng = np.random.default_rng(0)
        x = rng.standard_normal(x_shape, dtype=np.float32)
        weight = rng.standard_normal(w_shape, dtype=np.float32)
        for threads in args.threads:
            best = {True: np.inf, False: np.inf}
            for _ in range(args.rounds):  # alternately: the machine's phase moves both alike
                for stacked in (True, False):
                    _memo.clear_all()
                    with mock.patch.object(ukernel, "_stacks", lambda g, s=stacked: s):
                        layer = ln.Conv2d(weight, stride=stride, padding=padding, threads=threads,
                                          algorithm="direct-ukernel")
                        out = layer(x)
                        best[stacked] = min(best[stacked], measure(lambda: layer(x, out=out), repeats=5,
                                                                   warmup=1, min_seconds=0.05).best)
            _memo.clear_all()
            ratio = best[True] / best[False]
            rows.append((name, f"{c}→{m}, {h}x{w}, {k}/{stride}", threads, best[True], best[False], ratio, priced,
                         rule(g)))
            print(f"{name:34s} t{threads} stacked {best[True] * 1e3:8.3f} ms, per image {best[False] * 1e3:8.3f} ms,"
                  f" measured {ratio:.2f}, priced {priced:.2f}, rule stacks: {rule(g)}", flush=True)

    lines = ["# direct-ukernel: images stacked into the walk, against one image at a time", "",
             f"`python perf/stack_speed.py --batch {args.batch} --threads {' '.join(map(str, args.threads))} "
             f"--rounds {args.rounds}` on {platform.machine()}: prepacked layers, best of {args.rounds} alternating "
             f"rounds each way. Measured = stacked time / per-image time (< 1: stacking is faster); priced = the "
             f"same ratio of the rule's prices; the rule stacks where priced < {UKERNEL_STACK_MARGIN:g}.", "",
             "| layer | C→M, HxW, k/s | threads | stacked ms | per image ms | measured | priced | rule stacks |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {shape} | {threads} | {a * 1e3:.3f} | {b * 1e3:.3f} | {ratio:.2f} | {priced:.2f} | "
              f"{'yes' if stacks else 'no'} |" for name, shape, threads, a, b, ratio, priced, stacks in rows]
    wrong = [row for row in rows if (row[5] < 1) != row[7]]
    lines += ["", f"The rule's choice was the slower one on {len(wrong)} of {len(rows)} rows"
              + (": " + ", ".join(f"{row[0]} t{row[2]} ({row[5]:.2f})" for row in wrong) if wrong else "") + ".", ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stack_speed.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'stack_speed.md'}")


if __name__ == "__main__":
    main()
