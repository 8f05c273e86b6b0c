"""Fit the micro-kernel's store and stacking prices to measured direct-ukernel calls.

The cost model prices ``direct-ukernel`` from its plan.  Two of the plan's
terms are fitted here, on small-plane layers where they matter:

* ``UKERNEL_GENERAL_STORE_COST``: copies per output the tile kernel stores
  through its general path (edge tiles; in NCHW, tiles whose pixels are not
  consecutive in the output: spanning two rows, or two images of a stacked
  walk);
* ``UKERNEL_STACK_SEGMENT_COST``: copies per further image a stacked NCHW tile
  reads, per channel block, input channel and kernel row.

For each layer and batch, functional ``direct-ukernel`` calls (weights packed
per call, as ``auto`` prices them) are timed best-of, interleaved over
rounds.  The plan is made with both constants at zero (the prediction the
rest of the model gives) and with each at one (the number of general outputs
and of segment steps, as the plan counts them); a least-squares fit of the
relative error then gives ``time = scale * prediction + a * general + b *
segments``, the scale absorbing the machine's phase against its calibration.
``a`` and ``b`` are reported in plain-copy elements at the calibrated copy
rate divided by that scale.

Writes ``perf/results/ukernel_model_fit.md``.

Usage::

    python perf/ukernel_model_fit.py [--batches 1 2 4 8] [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from unittest import mock

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

#: Small-plane layers whose direct-ukernel walks have many general-store tiles
#: (14x14 and 7x7 5x5 and 3x3, stacked at batch > 2), and larger ones whose
#: tiles are mostly whole rows, to anchor the scale.
LAYERS = ("googlenet/inception4a_5x5", "googlenet/inception4b_5x5", "googlenet/inception4d_5x5",
          "googlenet/inception4e_5x5", "googlenet/inception5a_5x5", "googlenet/inception5b_5x5",
          "googlenet/inception5a_3x3", "googlenet/inception5b_3x3", "googlenet/inception4a_3x3",
          "googlenet/inception4e_3x3", "googlenet/inception3a_5x5", "resnet50/layer3_3x3",
          "resnet50/layer4_3x3", "resnet50/layer4_3x3_stride2", "alexnet/conv3")


def plan_terms(g, threads):
    """``(prediction without the two terms, general outputs, segment steps)``
    of a functional direct-ukernel call, in seconds and in counts."""
    from lowmem_numba import _costmodel, _memo, _registry
    from lowmem_numba._algorithms import ukernel

    calibration = _costmodel.calibration()
    algorithm = _registry.get("direct-ukernel")

    def planned(general, segment):
        _memo.clear_all()
        with mock.patch.object(ukernel, "UKERNEL_GENERAL_STORE_COST", general), \
                mock.patch.object(ukernel, "UKERNEL_STACK_SEGMENT_COST", segment):
            return algorithm.plan(g, threads, "NCHW")

    base = planned(0, 0)
    general = planned(1, 0).kernel.moved_elements - base.kernel.moved_elements
    segments = planned(0, 1).kernel.moved_elements - base.kernel.moved_elements
    _memo.clear_all()
    return _costmodel.predict_seconds(base, calibration), general, segments


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import lowmem_numba as ln
    from lowmem_numba import _costmodel
    from lowmem_numba._geometry import make_geometry
    from lowmem_numba.bench import layers, measure

    copy_seconds = 1 / _costmodel.calibration().copy_rate
    rows = []
    for name in LAYERS:
        network, layer_name = name.split("/")
        layer = next(layer for layer in layers(network) if layer.name == layer_name)
        for batch in args.batches:
            x_shape = (batch, layer.in_channels, layer.height, layer.width)
            rng = np.random.default_rng(0)
            x = rng.standard_normal(x_shape, dtype=np.float32)
            w = rng.standard_normal(layer.w_shape, dtype=np.float32)
            g = make_geometry(x_shape, layer.w_shape, layer.stride, layer.padding)
            predicted, general, segments = plan_terms(g, args.threads)
            call = lambda: ln.conv2d(x, w, algorithm="direct-ukernel", threads=args.threads, **layer.conv_args)
            seconds = min(measure(call, repeats=5, warmup=1, min_seconds=0.05).best for _ in range(args.rounds))
            rows.append((name, batch, seconds, predicted, general, segments))
            print(f"{name:34s} b{batch} {seconds * 1e3:8.3f} ms, predicted without the terms "
                  f"{predicted * 1e3:8.3f}, general outputs {general:8d}, segment steps {segments:8d}", flush=True)

    measured = np.array([row[2] for row in rows])
    terms = np.array([[row[3], row[4] * copy_seconds, row[5] * copy_seconds] for row in rows])
    weights = 1 / measured  # relative error
    (scale, general_cost, segment_cost), *_ = np.linalg.lstsq(terms * weights[:, None], measured * weights,
                                                              rcond=None)
    fitted = terms @ np.array([scale, general_cost, segment_cost])
    lines = ["# direct-ukernel's store and stacking prices, fitted", "",
             f"`python perf/ukernel_model_fit.py --batches {' '.join(map(str, args.batches))} --threads "
             f"{args.threads} --rounds {args.rounds}` on {platform.machine()}: functional calls, best of "
             f"{args.rounds} rounds. Fit: time = {scale:.3f} x prediction + {general_cost:.2f} copies per general "
             f"output + {segment_cost:.2f} copies per segment step at the calibrated copy rate "
             f"({general_cost / scale:.2f} and {segment_cost / scale:.2f} after the scale).", "",
             "| layer | batch | measured ms | predicted without ms | general outputs | segment steps | "
             "measured / (scale x predicted without) | measured / fit |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {batch} | {seconds * 1e3:.3f} | {predicted * 1e3:.3f} | {general} | {segments} | "
              f"{seconds / (scale * predicted):.2f} | {seconds / fit:.2f} |"
              for (name, batch, seconds, predicted, general, segments), fit in zip(rows, fitted)]
    lines.append("")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ukernel_model_fit.md").write_text("\n".join(lines))
    print("\n".join(lines[:3]))
    print(f"wrote {RESULTS / 'ukernel_model_fit.md'}")


if __name__ == "__main__":
    main()
