"""Rounding error of the Winograd algorithms against direct and im2col, on every 3x3/5x5 layer.

Every stride-1 3x3 and 5x5 layer of the five layer tables (distinct shapes,
batch 1, groups 1), on two inputs: standard normal data and weights
(``random``), and ``ones-and-ramps`` (every other channel all ones, the others
a ramp from -1 to 1 across the image; weights a constant 1/(C k^2) with every
third output channel a ramp over its taps), the latter being where
cancellation inside the transforms hurts most.  Error = |ours - reference| /
max |reference|, with the reference in float64 (one float64 GEMM per tap);
max and mean over the layer's outputs.

Writes ``perf/results/winograd_accuracy.md``.  Usage::

    python perf/winograd_accuracy.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import lowmem_numba as ln
import lowmem_numba.bench  # noqa: F401

RESULTS = Path(__file__).resolve().parent / "results" / "winograd_accuracy.md"
NETWORKS = ("alexnet", "vgg16", "googlenet", "resnet50", "mobilenet")
BASELINES = ("direct-ukernel", "im2col-copy-self-ab-ki")
VARIANTS = {3: ("winograd-2x2-3x3", "winograd-4x4-3x3"), 5: ("winograd-2x2-5x5",)}


def reference(x, w, pad):
    """float64 correlation: one GEMM per tap."""
    n, c, h, wd = x.shape
    m, _, k, _ = w.shape
    padded = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    padded[:, :, pad:pad + h, pad:pad + wd] = x
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    out = np.zeros((n, m, ho, wo))
    w64 = w.astype(np.float64)
    for i in range(k):
        for j in range(k):
            window = padded[:, :, i:i + ho, j:j + wo]
            out += np.einsum("mc,nchw->nmhw", w64[:, :, i, j], window, optimize=True)
    return out


def data(kind, layer):
    rng = np.random.default_rng(0)
    c, h, wd, m, k = layer.in_channels, layer.height, layer.width, layer.out_channels, layer.kernel_h
    if kind == "random":
        return (rng.standard_normal((1, c, h, wd)).astype(np.float32),
                rng.standard_normal((m, c, k, k)).astype(np.float32))
    ramp = np.linspace(-1, 1, h * wd, dtype=np.float32).reshape(h, wd)
    x = np.broadcast_to(ramp, (1, c, h, wd)).copy()
    x[:, ::2] = 1.0
    w = np.full((m, c, k, k), 1.0 / (c * k * k), np.float32)
    w[::3] = np.linspace(0.1, 1.3, k * k, dtype=np.float32).reshape(k, k)
    return x, w


def layers():
    seen, chosen = set(), []
    for net in NETWORKS:
        for layer in ln.bench.layers(net):
            if layer.kernel_h == layer.kernel_w and layer.kernel_h in VARIANTS and layer.stride == 1 \
                    and layer.groups == 1:
                key = (layer.x_shape(1), layer.w_shape, layer.padding)
                if key not in seen:
                    seen.add(key)
                    chosen.append(layer)
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows, worst = [], {}
    for layer in layers():
        names = BASELINES + VARIANTS[layer.kernel_h]
        for kind in ("random", "ones-and-ramps"):
            x, w = data(kind, layer)
            expected = reference(x, w, layer.padding)
            scale = np.abs(expected).max()
            cells = []
            errors = {}
            for name in names:
                got = ln.conv2d(x, w, padding=layer.padding, algorithm=name, threads=1)
                error = np.abs(got - expected) / scale
                errors[name] = (float(error.max()), float(error.mean()))
                cells.append(f"{errors[name][0]:.1e} / {errors[name][1]:.1e}")
            for name in VARIANTS[layer.kernel_h]:
                im2col, direct = errors["im2col-copy-self-ab-ki"], errors["direct-ukernel"]
                old = worst.get(name, (0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
                worst[name] = (max(old[0], errors[name][0]), max(old[1], errors[name][1]),
                               max(old[2], errors[name][1] / im2col[1]), max(old[3], errors[name][0] / im2col[0]),
                               max(old[4], errors[name][1] / direct[1]), max(old[5], errors[name][0] / direct[0]))
            rows.append((layer, kind, names, cells))
            print(layer.label, kind, " | ".join(cells), flush=True)
    lines = ["# Winograd rounding error against direct summation and im2col", "",
             "`python perf/winograd_accuracy.py`: every stride-1 3x3 and 5x5 layer of the five tables "
             "(distinct shapes, batch 1), error = |ours - float64 reference| / max |reference|, "
             "**max / mean** over the outputs, one thread.", "",
             "| algorithm | largest max error | largest mean error | worst mean / im2col's | "
             "worst max / im2col's | worst mean / direct's | worst max / direct's |",
             "|---|---|---|---|---|---|---|"]
    for name, values in worst.items():
        lines.append(f"| {name} | {values[0]:.1e} | {values[1]:.1e} | " + " | ".join(
            f"{v:.2f}" for v in values[2:]) + " |")
    lines += ["", "| layer | C→M, HxW, k | data | " + " | ".join(
        ["direct-ukernel", "im2col", "F(2x2) / F(2x2,5x5)", "F(4x4,3x3)"]) + " |", "|---|---|---|---|---|---|---|"]
    for layer, kind, names, cells in rows:
        cells = cells + ["-"] * (4 - len(cells))
        lines.append(f"| {layer.label} | {layer.in_channels}→{layer.out_channels}, {layer.height}x{layer.width}, "
                     f"{layer.kernel_h} | {kind} | " + " | ".join(cells) + " |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
