"""The scheduler: feasible, budget-respecting, explainable, cached, deterministic."""

import json
import multiprocessing
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lowmem_numba as ln
from lowmem_numba import _scheduler as scheduler
from lowmem_numba._cache import read_store, update_store
from lowmem_numba._geometry import make_geometry
from lowmem_numba._costmodel import Calibration
from lowmem_numba.bench._networks import NETWORKS, layers
from strategies import cases

FIXED = Calibration(gemm_peak=1.5e11, half_m=30.0, half_n=15.0, half_k=12.0, copy_rate=3e9,
                    direct_rate=3e9, thread_efficiency=0.9, launch_seconds=2e-5)


@pytest.fixture(autouse=True)
def fixed_calibration(monkeypatch):
    monkeypatch.setattr(scheduler, "calibration", lambda: FIXED)
    scheduler._memo.clear()
    yield
    scheduler._memo.clear()


def assert_feasible(plan, x_shape, w_shape, limit, **kwargs):
    assert ln.supports(plan.algorithm, x_shape, w_shape, **kwargs)
    # Under a limit a family may shrink its tiling: the call's workspace is
    # the one planned under the same limit.
    declared = ln.workspace_bytes(plan.algorithm, x_shape, w_shape, threads=plan.threads, memory_limit=limit,
                                  **kwargs)
    assert declared == plan.workspace_bytes
    assert limit is None or declared <= limit
    assert 1 <= plan.threads <= ln._threads.max_threads()


@pytest.mark.parametrize("limit", [None, 2**20, 0])
@pytest.mark.parametrize("network", NETWORKS)
def test_every_layer_gets_a_feasible_plan(network, limit):
    for layer in layers(network):
        kwargs = layer.conv_args
        try:
            plan = ln.plan(layer.x_shape(), layer.w_shape, memory_limit=limit, **kwargs)
        except ValueError as error:
            # Only a zero budget may leave nothing (no zero-workspace algorithm
            # handles a 3x3 convolution except the loop nest, which handles all).
            raise AssertionError(f"{layer.label}: {error}")
        assert_feasible(plan, layer.x_shape(), layer.w_shape, limit, **kwargs)
        if limit == 0:
            assert plan.workspace_bytes == 0


@given(case=cases(), limit=st.sampled_from([None, 0, 4096, 2**20]), budget=st.sampled_from([None, 1]))
def test_random_shapes_get_feasible_plans(case, limit, budget):
    plan = ln.plan(case.x_shape, case.w_shape, memory_limit=limit, threads=budget, **case.args)
    assert_feasible(plan, case.x_shape, case.w_shape, limit, **case.args)
    if budget == 1:
        assert plan.threads == 1


def test_explain_names_every_rejection():
    plan = ln.plan((1, 64, 56, 56), (64, 64, 3, 3), stride=2, padding=1, memory_limit=2**20)
    text = plan.explain()
    assert plan.algorithm in text and "CHOSEN" in text
    assert "unsupported: stride (2, 2)" in text            # the kn2row family
    assert "over budget" in text                           # im2col's patch matrix
    assert "slower:" in text
    rejected = [c for c in plan.candidates if c.rejected.startswith("over budget")]
    assert rejected and all(c.workspace_bytes > 2**20 for c in rejected)


def test_model_mode_is_deterministic():
    first = ln.plan((1, 96, 27, 27), (256, 96, 5, 5), padding=2)
    scheduler._memo.clear()
    second = ln.plan((1, 96, 27, 27), (256, 96, 5, 5), padding=2)
    assert first == second


def test_zero_budget_leaves_only_zero_workspace_algorithms():
    x = np.ones((1, 8, 12, 12), np.float32)
    w = np.ones((4, 8, 3, 3), np.float32)
    plan = ln.plan(x.shape, w.shape, padding=1, memory_limit=0)
    assert plan.workspace_bytes == 0
    np.testing.assert_allclose(ln.conv2d(x, w, padding=1, memory_limit=0),
                               ln.conv2d(x, w, padding=1, algorithm="direct-sum2d"))


def test_named_algorithm_over_the_limit_is_an_error():
    with pytest.raises(ValueError, match="over memory_limit"):
        ln.conv2d(np.ones((1, 8, 12, 12), np.float32), np.ones((4, 8, 3, 3), np.float32), padding=1,
                  algorithm="im2col-copy-self-ab-ki", memory_limit=1000)
    with pytest.raises(ValueError, match="memory_limit"):
        ln.plan((1, 8, 12, 12), (4, 8, 3, 3), memory_limit=-1)
    with pytest.raises(ValueError, match="mode"):
        ln.plan((1, 8, 12, 12), (4, 8, 3, 3), mode="guess")


def test_network_plan_bounds_the_shared_arena():
    net = ln.plan_network(layers("vgg16"), memory_limit=2**20)
    assert net.arena_bytes == max(p.workspace_bytes for _, p in net.plans) <= 2**20
    assert len(net.plans) == 13 and "conv1_1" in net.explain()


def test_measure_mode_caches_its_winner(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWMEM_NUMBA_CACHE_DIR", str(tmp_path))
    shape = dict(x_shape=(1, 8, 10, 10), w_shape=(8, 8, 3, 3), padding=1)
    plan = ln.plan(**shape, mode="measure")
    assert plan.mode == "measure" and plan.predicted_seconds > 0
    assert_feasible(plan, (1, 8, 10, 10), (8, 8, 3, 3), None, padding=1)
    stored = read_store(tmp_path / "plans.json")
    assert len(stored) == 1
    # A second process-level lookup reads the file instead of timing again.
    scheduler._memo.clear()
    monkeypatch.setattr(ln._timing, "measure", lambda *a, **k: pytest.fail("timed again"))
    assert ln.plan(**shape, mode="measure") == plan


@pytest.mark.parametrize("content", ["{not json", json.dumps({"schema": 99, "entries": {}}),
                                     json.dumps([1, 2]), json.dumps({"schema": 1, "entries": {"k": "junk"}})])
def test_corrupted_or_foreign_cache_is_ignored_and_rewritten(tmp_path, monkeypatch, content):
    monkeypatch.setenv("LOWMEM_NUMBA_CACHE_DIR", str(tmp_path))
    (tmp_path / "plans.json").write_text(content)
    plan = ln.plan((1, 4, 6, 6), (4, 4, 3, 3), padding=1, mode="measure")
    assert plan.algorithm in ln.algorithms()
    stored = read_store(tmp_path / "plans.json")
    assert any(entry.get("algorithm") == plan.algorithm for entry in stored.values() if isinstance(entry, dict))


def _write_many(path, worker):
    for i in range(50):
        update_store(path, f"worker{worker}-{i}", {"i": i})


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "plans.json"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_many, args=(path, w)) for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    assert all(p.exitcode == 0 for p in processes)
    assert len(read_store(path)) == 200
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_layers_plan_without_their_persistent_weights():
    # On AlexNet conv3 the repacked weights alone (3.4 MiB) exceed 1 MiB, so a
    # functional call at batch 2 must run an algorithm that reads them as
    # given (direct-pixels, which stages one image at a time, or the loop
    # nest); a layer keeps them packed.  At batch 1 the micro-kernel packs
    # them block by block inside the kernel, in well under 1 MiB.
    layer = next(l for l in layers("alexnet") if l.name == "conv3")
    functional = ln.plan(layer.x_shape(2), layer.w_shape, memory_limit=2**20, **layer.conv_args)
    assert functional.algorithm in ("direct-pixels", "direct-sum2d") and functional.workspace_bytes <= 2**20
    g = make_geometry(layer.x_shape(2), layer.w_shape, **layer.conv_args)
    assert ln._registry.get(functional.algorithm).packed_weight_elements(g) == 0
    single = ln.plan(layer.x_shape(), layer.w_shape, memory_limit=2**20, **layer.conv_args)
    assert single.algorithm.startswith("direct-ukernel") and single.workspace_bytes <= 2**20
    packed = ln.plan(layer.x_shape(), layer.w_shape, memory_limit=2**20, prepacked=True, **layer.conv_args)
    assert packed.algorithm != "direct-sum2d" and packed.workspace_bytes <= 2**20
    conv = ln.Conv2d(np.ones(layer.w_shape, np.float32), memory_limit=2**20, **layer.conv_args)
    assert conv.plan_for(layer.x_shape()) == packed
    with pytest.raises(ValueError, match="plan_for"):
        ln.Conv2d(np.ones(layer.w_shape, np.float32), algorithm="kn2row-aa-ab", padding=1).plan_for((1, 256, 13, 13))


def test_near_ties_go_to_the_smaller_workspace():
    for layer in layers("alexnet")[1:]:
        plan = ln.plan(layer.x_shape(), layer.w_shape, **layer.conv_args)
        timed = [c for c in plan.candidates if c.seconds is not None]
        assert plan.predicted_seconds <= min(c.seconds for c in timed) * (1 + scheduler.MEMORY_PREFERENCE)
        for c in timed:
            if c.seconds <= plan.predicted_seconds and (c.algorithm, c.threads) != (plan.algorithm, plan.threads):
                assert c.workspace_bytes >= plan.workspace_bytes and "more workspace" in c.rejected, c


def test_smaller_workspace_wins_only_when_it_saves_a_quarter():
    from lowmem_numba._scheduler import MEMORY_PREFERENCE, MEMORY_SAVING, Candidate, _rank

    def rank(*candidates):
        best, explained = _rank([Candidate(name, 1, ws, None) for name, ws, _ in candidates],
                                lambda c: ({n: s for n, _, s in candidates}[c.algorithm], ""))
        return best.algorithm, {c.algorithm: c.rejected for c in explained}

    slower = 1 + MEMORY_PREFERENCE * 0.8
    # A few percent less workspace is not worth a slower candidate...
    best, notes = rank(("fast", 1000, 1.0), ("lean-ish", 990, slower))
    assert best == "fast" and f"less than {MEMORY_SAVING:.0%} less workspace" in notes["lean-ish"]
    # ...a quarter or more is, and orders of magnitude certainly.
    assert rank(("fast", 1000, 1.0), ("lean", int(1000 * (1 - MEMORY_SAVING)), slower))[0] == "lean"
    assert rank(("fast", 10**6, 1.0), ("tiny", 0, slower), ("lean-ish", 990000, 1.0))[0] == "tiny"
    # Beyond the preference, speed decides whatever the workspace.
    assert rank(("fast", 1000, 1.0), ("lean", 0, 1 + 2 * MEMORY_PREFERENCE))[0] == "fast"
