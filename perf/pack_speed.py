"""Per-call weight packing: what it costs each family, in plain-copy elements.

A functional ``conv2d`` call packs (or transforms) the weights on every call;
the cost model prices that as the packed elements times the family's
``pack_cost`` copies each, at the calibrated copy rate.  This script measures
the packing of every distinct weight shape of the five layer tables for each
family that packs, on one thread, and reports the copies per packed element
it actually took (``seconds * copy_rate / packed elements``): the numbers
behind ``UKERNEL_PACK_COST``, ``WINOGRAD_PACK_COST`` and ``PACK_COST``
in ``lowmem_numba/_tuning.py``.  A second table measures packing inside the
kernel (functional batch-1 calls of the micro-kernel and of Winograd that pack
or transform block by block): a functional call's time minus a prepacked
layer's, timed alternately, behind ``UKERNEL_PACK_IN_KERNEL_COST`` and
``WINOGRAD_PACK_IN_KERNEL_COST``.

Writes ``perf/results/pack_speed.md``.

Usage::

    python perf/pack_speed.py [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import numpy as np

from lowmem_numba._tuning import UKERNEL_PACK_IN_KERNEL_COST, WINOGRAD_PACK_IN_KERNEL_COST

RESULTS = Path(__file__).resolve().parent / "results"

#: One algorithm per packing routine (the -nhwc twins pack alike).
ALGORITHMS = ("direct-ukernel", "winograd-2x2-3x3", "winograd-4x4-3x3", "winograd-2x2-5x5",
              "kn2row", "kn2col", "kn2row-aa-ab", "kn2row-aa-atb", "im2row-scan-ab-ik", "mec-col",
              "depthwise-nhwc")
#: The families that pack inside the kernel at batch 1, and the cost each is priced at.
IN_KERNEL = {"direct-ukernel": UKERNEL_PACK_IN_KERNEL_COST, **WINOGRAD_PACK_IN_KERNEL_COST}


def weight_shapes():
    """Distinct (C, M, kh, kw, stride, padding, groups) of the tables, with a layer naming each."""
    from lowmem_numba.bench import NETWORKS, layers

    seen = {}
    for layer in (layer for network in NETWORKS for layer in layers(network)):
        key = (layer.in_channels, layer.out_channels, layer.kernel_h, layer.kernel_w, layer.stride,
               layer.padding, layer.groups)
        seen.setdefault(key, f"{layer.network}/{layer.name}")
    return seen


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import numba

    import lowmem_numba as ln
    from lowmem_numba import _registry as registry
    from lowmem_numba._costmodel import calibration
    from lowmem_numba._execute import _pack
    from lowmem_numba._geometry import make_geometry
    from lowmem_numba._threads import kernel_threads
    from lowmem_numba.bench import measure

    numba.set_num_threads(args.threads)
    copy_rate = calibration().copy_rate
    rows, per_family = [], {}
    for (c, m, kh, kw, stride, padding, groups), name in weight_shapes().items():
        x_shape, w_shape = (1, c, 14, 14), (m, c // groups, kh, kw)
        weight = np.random.default_rng(0).standard_normal(w_shape, dtype=np.float32).reshape(-1)
        for algorithm_name in ALGORITHMS:
            if not ln.supports(algorithm_name, x_shape, w_shape, stride, padding, 1, groups):
                continue
            algorithm = registry.get(algorithm_name)
            g = make_geometry(x_shape, w_shape, stride, padding, 1, groups)
            packed = algorithm.packed_weight_elements(g)
            if not packed:
                continue
            dest = np.empty(packed, dtype=np.float32)
            scratch = (np.empty(algorithm.pack_scratch_elements(g, args.threads), dtype=np.float32)
                       if algorithm.pack_scratch_elements else None)
            with kernel_threads(args.threads, blas=False):
                seconds = measure(lambda: _pack(algorithm, weight, g, dest, args.threads, scratch),
                                  repeats=15, warmup=2, min_seconds=0.05).best
            copies = seconds * copy_rate / packed
            per_family.setdefault(algorithm_name, []).append(copies)
            rows.append((name, f"{m}x{c // groups}x{kh}x{kw}" + (f" g{groups}" if groups > 1 else ""),
                         algorithm_name, packed, seconds, copies, algorithm.pack_cost))
            print(f"{name:34s} {algorithm_name:20s} {seconds * 1e3:8.3f} ms {copies:5.2f} copies/element",
                  flush=True)

    in_kernel = {name: _in_kernel_rows(name, args.threads, copy_rate) for name in IN_KERNEL}

    lines = [
        "# Per-call weight packing, in plain-copy elements",
        "",
        f"`python perf/pack_speed.py --threads {args.threads}` on {platform.machine()}; copy rate "
        f"{copy_rate / 1e9:.2f} G float32/s (the calibrated one). Copies per element = best time x copy "
        "rate / packed elements; the cost model prices each packed element at the family's `pack_cost`.",
        "",
        "| algorithm | shapes | median copies/element | range | priced at |",
        "|---|---|---|---|---|",
    ]
    for algorithm_name, values in per_family.items():
        lines.append(f"| {algorithm_name} | {len(values)} | {statistics.median(values):.2f} | "
                     f"{min(values):.2f}-{max(values):.2f} | {registry.get(algorithm_name).pack_cost:g} |")
    lines += ["", "<details><summary>every shape</summary>", "",
              "| layer | weights | algorithm | packed elements | ms | copies/element |", "|---|---|---|---|---|---|"]
    for name, shape, algorithm_name, packed, seconds, copies, _ in rows:
        lines.append(f"| {name} | {shape} | {algorithm_name} | {packed} | {seconds * 1e3:.3f} | {copies:.2f} |")
    lines += ["", "</details>", ""]
    for algorithm_name, in_rows in in_kernel.items():
        if not in_rows:
            continue
        values = [row[-1] for row in in_rows]
        lines += [f"## {algorithm_name} packing inside the kernel (batch-1 functional calls)", "",
                  f"Median {statistics.median(values):.2f} copies/element, range {min(values):.2f}-"
                  f"{max(values):.2f}; priced at {IN_KERNEL[algorithm_name]:g}.",
                  "", "| layer | weights | packed elements | functional ms | prepacked ms | copies/element |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {shape} | {packed} | {functional * 1e3:.3f} | {prepacked * 1e3:.3f} | {copies:.2f} |"
                  for name, shape, packed, functional, prepacked, copies in in_rows]
        lines.append("")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pack_speed.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'pack_speed.md'}")


def _in_kernel_rows(algorithm_name, threads, copy_rate):
    """(layer, weights, packed elements, functional s, prepacked s, copies per
    element) of every weight shape whose batch-1 functional call of
    ``algorithm_name`` packs inside the kernel (input 14x14, as above)."""
    import lowmem_numba as ln
    from lowmem_numba import _registry as registry
    from lowmem_numba._geometry import make_geometry
    from lowmem_numba.bench import measure

    rows = []
    rng = np.random.default_rng(0)
    for (c, m, kh, kw, stride, padding, groups), name in weight_shapes().items():
        x_shape, w_shape = (1, c, 14, 14), (m, c // groups, kh, kw)
        args = dict(stride=stride, padding=padding, groups=groups, algorithm=algorithm_name, threads=threads)
        if not ln.supports(algorithm_name, x_shape, w_shape, stride, padding, 1, groups):
            continue
        if groups > 1 and c == groups:
            continue  # depthwise: a few KiB of weights, run by the depthwise families
        g = make_geometry(x_shape, w_shape, stride, padding, 1, groups)
        algorithm = registry.get(algorithm_name)
        if algorithm.plan(g, threads).packed_weight_elements:
            continue  # this call packs before the kernel
        x = rng.standard_normal(x_shape, dtype=np.float32)
        w = rng.standard_normal(w_shape, dtype=np.float32)
        layer = ln.Conv2d(w, **args)
        out = layer(x)
        best = {"functional": np.inf, "prepacked": np.inf}
        for _ in range(3):  # alternately: the machine's phase moves both alike
            best["functional"] = min(best["functional"], measure(
                lambda: ln.conv2d(x, w, out=out, **args), repeats=15, warmup=2, min_seconds=0.03).best)
            best["prepacked"] = min(best["prepacked"], measure(
                lambda: layer(x, out=out), repeats=15, warmup=2, min_seconds=0.03).best)
        packed = algorithm.packed_weight_elements(g)
        copies = max(0.0, best["functional"] - best["prepacked"]) * copy_rate / packed
        rows.append((name, f"{m}x{c // groups}x{kh}x{kw}" + (f" g{groups}" if groups > 1 else ""), packed,
                     best["functional"], best["prepacked"], copies))
        print(f"{name:34s} {algorithm_name:20s} in-kernel packing {copies:5.2f} copies/element", flush=True)
    return rows


if __name__ == "__main__":
    main()
