"""Families describe their own work as plans, and adding one is one module.

A toy family registered here (a numpy loop nest) must be seen by every layer
above the registry without any change to them: plan, workspace, cost model,
scheduler and explain().
"""

from __future__ import annotations

import numpy as np
import pytest

import lowmem_numba as ln
from lowmem_numba import _registry as registry
from lowmem_numba._plan import CallPlan, KernelPlan
from lowmem_numba._costmodel import calibration, predict_seconds
from lowmem_numba._geometry import make_geometry

from naive import conv2d_reference

SHAPES = [((1, 8, 12, 12), (16, 8, 3, 3), dict(padding=1)),
          ((2, 6, 9, 7), (6, 2, 3, 1), dict(groups=3, stride=(2, 1))),
          ((1, 4, 5, 5), (4, 4, 1, 1), {}),
          ((2, 6, 10, 10), (12, 1, 3, 3), dict(groups=6, stride=2, padding=1))]  # depthwise, multiplier 2


def _supported(name, x_shape, w_shape, args):
    g = make_geometry(x_shape, w_shape, **args)
    return g, registry.get(name).unsupported(g) is None


@pytest.mark.parametrize("name", ln.algorithms())
def test_every_family_describes_its_work(name):
    # The cost model prices plans without knowing families: a family whose
    # plan leaves out its arithmetic (no GEMMs, no own flops) would be priced
    # as free and always chosen.
    for x_shape, w_shape, args in SHAPES:
        g, ok = _supported(name, x_shape, w_shape, args)
        if not ok:
            continue
        for threads in (1, 2):
            plan = registry.get(name).plan(g, threads)
            assert isinstance(plan, CallPlan) and plan.algorithm == name
            work = sum(gemm.flops for gemm in plan.gemms) + plan.direct_flops + plan.vector_flops
            # At least the convolution's arithmetic (Winograd: a quarter of
            # it at best, F(4x4,3x3)).  Tiles are rounded up and padded vector
            # lanes cost full FMAs (2 channels per group padded to a 16-lane
            # vector: 8x, times a partial pixel tile).
            least = g.flops / 4 if registry.get(name).family == "winograd" else g.flops
            assert least <= work <= 32 * g.flops, (name, work, g.flops)
            assert plan.parallel_items >= 1 and plan.launches >= 1
            assert predict_seconds(plan, calibration()) > 0


@pytest.mark.parametrize("name", ln.algorithms())
def test_workspace_bytes_is_the_plan(name):
    for x_shape, w_shape, args in SHAPES:
        g, ok = _supported(name, x_shape, w_shape, args)
        if not ok:
            continue
        for layout in ("NCHW", "NHWC"):
            shape = x_shape if layout == "NCHW" else (x_shape[0], *x_shape[2:], x_shape[1])
            plan = registry.get(name).plan(g, 2, layout)
            assert ln.workspace_bytes(name, shape, w_shape, threads=2, layout=layout, **args) \
                == plan.workspace_bytes


def _toy_plan(g, threads):
    return KernelPlan(direct_flops=g.flops // 1000 + 1, parallel_items=1)


def _toy_compute(x, weights, bias, out, scratch, g, kernel):
    xs = x.reshape(g.input_shape).astype(np.float64)
    ws = weights.reshape(g.weight_shape).astype(np.float64)
    result = conv2d_reference(xs, ws, bias if bias.size else None, stride=g.stride, padding=g.padding,
                              dilation=g.dilation, groups=g.groups)
    out[:] = result.reshape(-1)


@pytest.fixture
def toy_family():
    algorithm = registry.register(registry.Algorithm(
        name="toy-numpy", family="toy", summary="A numpy loop nest registered by a test.",
        workspace_formula="0", unsupported=lambda g: None, packed_weight_elements=lambda g: 0,
        pack_weights=None, plan_kernel=_toy_plan, compute=_toy_compute))
    yield algorithm
    registry.unregister("toy-numpy")


def test_a_toy_family_is_seen_by_every_layer(toy_family):
    from lowmem_numba import _scheduler as scheduler

    scheduler.clear_memo()
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((5, 4, 3, 3)).astype(np.float32)
    assert "toy-numpy" in ln.algorithms()
    assert ln.supports("toy-numpy", x.shape, w.shape, padding=1)
    assert ln.workspace_bytes("toy-numpy", x.shape, w.shape, padding=1) == 0
    # Priced as 1/1000 of the loop nest's arithmetic, it wins "auto".
    chosen = ln.plan(x.shape, w.shape, padding=1, threads=1)
    assert chosen.algorithm == "toy-numpy"
    assert "toy-numpy" in chosen.explain()
    expected = conv2d_reference(x, w, padding=((1, 1), (1, 1)))
    np.testing.assert_allclose(ln.conv2d(x, w, padding=1), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ln.Conv2d(w, padding=1, algorithm="toy-numpy")(x), expected,
                               rtol=1e-5, atol=1e-5)
    info = ln.describe("toy-numpy")
    assert info.family == "toy" and info.workspace_formula == "0"
    scheduler.clear_memo()


def test_a_plan_without_work_is_refused():
    with pytest.raises(ValueError, match="parallel_items"):
        KernelPlan(parallel_items=-1)
    bad = registry.Algorithm(
        name="toy-bad", family="toy", summary="", workspace_formula="0", unsupported=lambda g: None,
        packed_weight_elements=lambda g: 0, pack_weights=None, plan_kernel=lambda g, t: (1, 1),
        compute=_toy_compute)
    with pytest.raises(TypeError, match="KernelPlan"):
        bad.plan(make_geometry((1, 1, 3, 3), (1, 1, 1, 1)), 1)
