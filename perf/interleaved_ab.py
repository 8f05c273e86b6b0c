"""Another revision's code against this tree's, interleaved call by call in one process.

The shared machines drift by 10-50 % over seconds.  Timed in alternating
processes, two versions see different moments: one such comparison showed a
change 1.03-1.23x faster on seven layers, twice, where this script, on the
same layers an hour later, found medians of 0.98-1.02x.  Here the package at
``BASE`` (a git revision) is exported under another name (``lowmem_numba``
imports itself only relatively), both copies are imported into one process,
and each layer is called by both alternately, in shuffled order, ``--calls``
times: both see the same drift, and the medians compare.  The same code on
both sides (``HEAD`` against an unchanged tree, five layers of 40 us to 2 ms)
gave median ratios of 0.999-1.009 and best-call ratios of 0.94-1.01: the
medians are the measure.

The base copy compiles its kernels once into its own directory (kept per
revision in the temporary directory, so a second run starts at once).

Usage::

    python perf/interleaved_ab.py BASE (--network NAME | --layer C,M,H[,K[,S[,P]]] ...)
        [--algorithm auto] [--batch 1] [--threads 1] [--calls 200] [--objects [--memory-limit BYTES]]

With ``--objects`` each version calls a ``Conv2d`` layer (weights packed
once, as ``perf/vs_torch.py``'s layer table; ``--memory-limit`` as there,
1 MiB = 1048576) instead of ``conv2d``.

Prints, per layer, each version's best and median call and their ratios
(base / this tree: > 1 means this tree is faster).
"""

from __future__ import annotations

import argparse
import importlib
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BASE_NAME = "lowmem_numba_base"


def export_base(revision: str) -> Path:
    """The package at ``revision``, exported as ``lowmem_numba_base`` into a
    directory of its own (reused when it exists); the directory is returned."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{revision}^{{commit}}"],
                         check=True, capture_output=True, text=True).stdout.strip()
    home = Path(tempfile.gettempdir()) / f"lowmem_numba_ab_{sha[:12]}"
    if not (home / BASE_NAME / "__init__.py").exists():
        home.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "lowmem_numba"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(home)], input=archive, check=True)
        (home / "lowmem_numba").rename(home / BASE_NAME)
    return home


def parse_layer(text: str):
    """``C,M,H[,K[,S[,P]]]`` -> (label, x shape without batch, w shape, conv arguments)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not 3 <= len(values) <= 6 or min(values) < 0:
        raise argparse.ArgumentTypeError(f"a layer is C,M,H[,K[,S[,P]]] (integers); got {text!r}")
    c, m, h = values[:3]
    k, s, p = (values[3:] + [1, 1, 0][len(values) - 3:])[:3]
    return f"{c}->{m} {h}x{h} k{k} s{s} p{p}", (c, h, h), (m, c, k, k), dict(stride=s, padding=p)


def table_layers(network: str):
    from lowmem_numba.bench import layers

    return [(layer.label, (layer.in_channels, layer.height, layer.width), layer.w_shape, layer.conv_args)
            for layer in layers(network)]


def interleave(calls, count):
    """Each of ``calls`` (name -> function) ``count`` times, in shuffled order each round: name -> sorted seconds."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    items = list(calls.items())
    for _ in range(count):
        random.shuffle(items)
        for name, call in items:
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(values) for name, values in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the git revision to compare this tree with (e.g. HEAD~1, a tag)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--network", help="every layer of this table (alexnet, vgg16, googlenet, resnet50, mobilenet)")
    which.add_argument("--layer", action="append", type=parse_layer, help="C,M,H[,K[,S[,P]]]; repeatable")
    parser.add_argument("--algorithm", default="auto")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=200, help="calls per version and layer (default 200)")
    parser.add_argument("--objects", action="store_true", help="call Conv2d layers instead of conv2d")
    parser.add_argument("--memory-limit", type=int, help="the layers' memory_limit in bytes (with --objects)")
    args = parser.parse_args(argv)
    if args.memory_limit is not None and not args.objects:
        parser.error("--memory-limit applies to --objects")

    sys.path.insert(0, str(export_base(args.base)))
    sys.path.insert(0, str(ROOT))
    base = importlib.import_module(BASE_NAME)
    current = importlib.import_module("lowmem_numba")
    jobs = table_layers(args.network) if args.network else args.layer

    print(f"`python perf/interleaved_ab.py {' '.join(argv if argv is not None else sys.argv[1:])}`: "
          f"base = {args.base}, this tree = {current.__file__}; batch {args.batch}, {args.threads} thread(s), "
          f"{args.calls} calls each, interleaved, {'Conv2d layers' if args.objects else 'conv2d'}\n")
    print("| layer | base best | this best | base median | this median | best ratio | median ratio |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    ratios = []
    for label, x_shape, w_shape, conv_args in jobs:
        x = rng.standard_normal((args.batch, *x_shape), dtype=np.float32)
        w = rng.standard_normal(w_shape, dtype=np.float32)
        options = dict(algorithm=args.algorithm, threads=args.threads, **conv_args)
        if args.objects:
            layers = {name: package.Conv2d(w, memory_limit=args.memory_limit, **options)
                      for name, package in (("base", base), ("this", current))}
            calls = {name: (lambda layer=layer: layer(x)) for name, layer in layers.items()}
        else:
            calls = {name: (lambda package=package: package.conv2d(x, w, **options))
                     for name, package in (("base", base), ("this", current))}
        expected = calls["base"]()  # the two may pick different algorithms: compared to the output's scale
        if np.abs(calls["this"]() - expected).max() > 1e-3 * max(1.0, float(np.abs(expected).max())):
            raise SystemExit(f"{label}: this tree's output differs from the base's")
        times = interleave(calls, args.calls)
        (b, t), mid = (times["base"], times["this"]), args.calls // 2
        ratios.append(b[mid] / t[mid])
        print(f"| {label} | {b[0] * 1e6:.1f} us | {t[0] * 1e6:.1f} us | {b[mid] * 1e6:.1f} us | {t[mid] * 1e6:.1f} us "
              f"| {b[0] / t[0]:.3f} | {b[mid] / t[mid]:.3f} |", flush=True)
    geomean = float(np.exp(np.mean(np.log(ratios))))
    print(f"\nGeometric mean of the median ratios: {geomean:.3f} ({len(ratios)} layers)")


if __name__ == "__main__":
    main()
