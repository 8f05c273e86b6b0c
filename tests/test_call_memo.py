"""Repeated calls reuse their validated plan, and still validate everything per call.

The API memoises what depends only on shapes and arguments (``_memo``), and a
``Conv2d`` repeats its last call on an input of the same shape without even
that lookup; these tests make sure a memoised or repeated call never lets
through what a first call would refuse, and that anything that changes
planning is part of the key.
"""

from __future__ import annotations

import numpy as np
import pytest

import lowmem_numba as ln
from lowmem_numba import _api, _memo
from lowmem_numba import _registry as registry

X = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
W = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)


@pytest.fixture(autouse=True)
def warm():
    """Every test starts with this call memoised."""
    ln.conv2d(X, W, padding=1)
    yield


@pytest.mark.parametrize("value", [True, 1.0, "1", None, [1.5, 1], np.float32(1), np.bool_(True)])
def test_a_bad_stride_is_refused_after_a_good_one(value):
    ln.conv2d(X, W, stride=1, padding=1)
    with pytest.raises((TypeError, ValueError), match="stride"):
        ln.conv2d(X, W, stride=value, padding=1)


def test_equal_arguments_of_other_types_are_keyed_apart():
    reference = ln.conv2d(X, W, stride=1, padding=1)
    for stride in (np.int64(1), (1, 1), [1, 1], (np.int32(1), 1)):
        np.testing.assert_array_equal(ln.conv2d(X, W, stride=stride, padding=1), reference)
    with pytest.raises(TypeError, match="winograd"):
        ln.conv2d(X, W, padding=1, winograd=1)
    with pytest.raises(TypeError, match="threads"):
        ln.conv2d(X, W, padding=1, threads=True)
    with pytest.raises(TypeError, match="groups"):
        ln.conv2d(X, W, padding=1, groups=True)


def test_arrays_are_checked_on_every_call():
    with pytest.raises(TypeError, match="x must have dtype float32"):
        ln.conv2d(X.astype(np.float64), W, padding=1)
    with pytest.raises(TypeError, match="weight"):
        ln.conv2d(X, W.astype(np.float64), padding=1)
    with pytest.raises(TypeError, match="MaskedArray"):
        ln.conv2d(np.ma.masked_array(X), W, padding=1)
    ln.conv2d(X, W, np.zeros(4, np.float32), padding=1)
    with pytest.raises(ValueError, match="bias must have shape"):
        ln.conv2d(X, W, np.zeros(5, np.float32), padding=1)
    with pytest.raises(TypeError, match="bias"):
        ln.conv2d(X, W, np.zeros(4, np.float64), padding=1)
    with pytest.raises(TypeError, match="bias"):
        ln.conv2d(X, W, [0.0] * 4, padding=1)


def test_out_and_workspace_are_checked_on_every_call():
    out = ln.conv2d(X, W, padding=1)
    ln.conv2d(X, W, padding=1, out=out)
    with pytest.raises(ValueError, match="out must have shape"):
        ln.conv2d(X, W, padding=1, out=out[:, :2])
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        ln.conv2d(X, W, padding=1, out=np.empty((1, 4, 6, 12), np.float32)[..., ::2])
    shared = np.zeros(X.size + out.size, np.float32)
    x_in_shared = shared[:X.size].reshape(X.shape)
    with pytest.raises(ValueError, match="overlap"):
        ln.conv2d(x_in_shared, W, padding=1, out=shared[X.size - 1:-1].reshape(out.shape))
    needed = ln.workspace_bytes("im2col-copy-long-ab-ki", X.shape, W.shape, padding=1)
    ln.conv2d(X, W, padding=1, algorithm="im2col-copy-long-ab-ki")
    with pytest.raises(ValueError, match="workspace is fixed"):
        ln.conv2d(X, W, padding=1, algorithm="im2col-copy-long-ab-ki",
                  workspace=ln.Workspace(needed - 4, fixed=True))
    with pytest.raises(TypeError, match="workspace"):
        ln.conv2d(X, W, padding=1, workspace=bytearray(10))


def test_a_layout_or_shape_change_is_planned_again():
    nhwc = np.ascontiguousarray(X.transpose(0, 2, 3, 1))
    got = ln.conv2d(nhwc, W, padding=1, layout="NHWC")
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), ln.conv2d(X, W, padding=1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        ln.conv2d(X[:, :2], W, padding=1)
    with pytest.raises(ValueError, match="layout"):
        ln.conv2d(X, W, padding=1, layout="nchw ")


def test_registering_an_algorithm_replans():
    """The registry's generation is part of the key: a plan memoised before
    an algorithm was registered does not hide it."""
    base = registry.get("direct-sum2d")
    extra = registry.Algorithm(**{**base.__dict__, "name": "test-memo-extra"})
    before = len(_api._planned_calls)
    registry.register(extra)
    try:
        ln.conv2d(X, W, padding=1)
        assert len(_api._planned_calls) == min(before + 1, _api._planned_calls.size)
        np.testing.assert_array_equal(ln.conv2d(X, W, padding=1, algorithm="test-memo-extra"),
                                      ln.conv2d(X, W, padding=1, algorithm="direct-sum2d"))
    finally:
        registry.unregister("test-memo-extra")
    with pytest.raises(ValueError, match="unknown algorithm"):
        ln.conv2d(X, W, padding=1, algorithm="test-memo-extra")


def test_memo_is_bounded_and_cleared(monkeypatch):
    monkeypatch.setattr(_api._planned_calls, "size", 2)
    for width in (3, 4, 5):
        ln.conv2d(X[..., :width], W, padding=1)
    assert len(_api._planned_calls) == 2
    assert {key[0] for key in _api._planned_calls} == {(1, 3, 6, 4), (1, 3, 6, 5)}
    _memo.clear_all()
    assert len(_api._planned_calls) == 0


def test_frozen_keys():
    assert _memo.frozen(1) != _memo.frozen(True)
    assert _memo.frozen(1) != _memo.frozen(1.0)
    assert _memo.frozen(1) != _memo.frozen(np.int64(1))
    assert _memo.frozen((1, 1)) != _memo.frozen([1, 1])
    assert _memo.frozen(((0, 1), (1, 0))) == _memo.frozen(((0, 1), (1, 0)))
    for value in (np.ones(2), {1: 2}, object(), {1}):
        with pytest.raises(_memo.Uncacheable):
            _memo.frozen(value)


def test_uncacheable_arguments_take_the_validating_path():
    with pytest.raises(TypeError, match="stride"):
        ln.conv2d(X, W, stride={1: 1}, padding=1)
    with pytest.raises(TypeError, match="stride"):
        ln.conv2d(X, W, stride=np.ones(2, np.int64), padding=1)


def test_bad_arguments_are_refused_before_any_calibration(monkeypatch):
    """In a process without a calibration yet, bad arguments raise at once
    (the memo key must not load or measure one), and a named algorithm
    never needs one."""
    from lowmem_numba import _costmodel

    def refuse(*args, **kwargs):
        raise AssertionError("calibration requested")

    monkeypatch.setattr(_costmodel, "_loaded", {})  # as in a fresh process
    monkeypatch.setattr(_costmodel, "stored_calibration", refuse)
    monkeypatch.setattr(_costmodel, "calibrate_run", refuse)
    _memo.clear_all()
    with pytest.raises(TypeError, match="bias"):
        ln.conv2d(X, W, np.zeros(4, np.float64), padding=1)
    for bad, match in ((dict(threads=0), "threads"), (dict(layout="XYZ"), "layout"),
                       (dict(memory_limit=-1), "memory_limit"), (dict(winograd="no"), "winograd")):
        with pytest.raises((TypeError, ValueError), match=match):
            ln.conv2d(X, W, padding=1, **bad)
    ln.conv2d(X, W, padding=1, algorithm="direct-sum2d")
    ln.conv2d(X, W, padding=1, algorithm="direct-sum2d")
    with pytest.raises(AssertionError, match="calibration requested"):
        ln.conv2d(X, W, padding=1)
    _memo.clear_all()


def test_odd_arguments_get_the_validating_error():
    """Arguments the memo cannot key (a structured numpy scalar, a list that
    contains itself, a long list) take the validating path and its error."""
    structured = np.zeros(1, dtype=[("a", "i8", (2,))])[0]
    looped = []
    looped.append(looped)
    for name in ("stride", "padding", "dilation"):
        for value in (structured, looped, list(range(100))):
            with pytest.raises((TypeError, ValueError), match=name):
                ln.conv2d(X, W, **{"padding": 1, name: value})
    with pytest.raises(TypeError, match="threads"):
        ln.conv2d(X, W, padding=1, threads=structured)


def test_a_layer_repeats_its_last_call_without_planning_again(monkeypatch):
    """A Conv2d called again on the same shape skips prepare_call (counted
    here), with or without an out, with the same result; another shape
    still goes through it."""
    from lowmem_numba import _layer

    layer = ln.Conv2d(W, padding=1)
    first = layer(X)
    calls = []
    monkeypatch.setattr(_layer, "prepare_call", lambda *a, **k: calls.append(1) or _api.prepare_call(*a, **k))
    np.testing.assert_array_equal(layer(X), first)
    np.testing.assert_array_equal(layer(X.copy()), first)
    out = np.empty_like(first)
    assert layer(X, out=out) is out
    np.testing.assert_array_equal(out, first)
    assert calls == []
    layer(np.concatenate([X, X]))                 # another shape
    assert len(calls) == 1


def test_a_repeated_layer_call_still_refuses_what_a_first_call_would():
    layer = ln.Conv2d(W, padding=1)
    layer(X)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        layer(X.astype(np.float64))
    with pytest.raises(TypeError, match="float32"):
        layer(X.astype(">f4"))
    with pytest.raises(TypeError, match="MaskedArray"):
        layer(np.ma.masked_array(X))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        layer(X.tolist())
    out = layer(X)
    with pytest.raises(ValueError, match="out must have shape"):
        layer(X, out=out[:, :2])
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        layer(X, out=np.empty(out.shape[:-1] + (2 * out.shape[-1],), np.float32)[..., ::2])
    with pytest.raises(TypeError, match="out must have dtype float32"):
        layer(X, out=out.astype(np.float64))
    shared = np.zeros(X.size + out.size, np.float32)
    x_in_shared = shared[:X.size].reshape(X.shape)
    x_in_shared[...] = X
    layer(x_in_shared)
    with pytest.raises(ValueError, match="overlap"):
        layer(x_in_shared, out=shared[X.size - 1:-1].reshape(out.shape))


def test_a_repeated_layer_call_sees_reassigned_attributes():
    """Attributes a user may reassign between calls (the workspace, the
    algorithm, the threads) are part of what a repeated call checks."""
    layer = ln.Conv2d(W, padding=1, algorithm="im2col-copy-long-ab-ki")
    reference = layer(X)
    needed = layer.workspace_bytes
    layer.workspace = ln.Workspace(needed - 4, fixed=True)
    with pytest.raises(ValueError, match="workspace is fixed"):
        layer(X)
    layer.workspace = ln.Workspace(needed, fixed=True)
    np.testing.assert_array_equal(layer(X), reference)
    layer.threads = 1
    np.testing.assert_array_equal(layer(X), reference)
    assert layer._repeat.plan.threads == 1
    layer.bias = np.ones(4, np.float32)
    np.testing.assert_allclose(layer(X), reference + 1, rtol=1e-6, atol=1e-5)
    layer.bias = np.full(4, 2, np.float32)        # another array: compared by identity, not by value
    np.testing.assert_allclose(layer(X), reference + 2, rtol=1e-6, atol=1e-5)
    layer.bias = np.ones(5, np.float32)
    with pytest.raises(ValueError, match="bias must have shape"):
        layer(X)


def test_assigning_any_planning_attribute_plans_the_next_call_again(monkeypatch):
    """Even the value it had: a layer's repeat is dropped on assignment, not
    compared with the attributes on every call."""
    from lowmem_numba import _layer

    layer = ln.Conv2d(W, np.ones(4, np.float32), padding=1)
    layer(X)
    calls = []
    monkeypatch.setattr(_layer, "prepare_call", lambda *a, **k: calls.append(1) or _api.prepare_call(*a, **k))
    names = ("algorithm", "threads", "layout", "memory_limit", "winograd", "bias", "workspace")
    for count, name in enumerate(names, 1):
        setattr(layer, name, getattr(layer, name))
        layer(X)
        layer(X)
        assert len(calls) == count, name
    layer.weight_shape = layer.weight_shape  # not planned from
    layer(X)
    assert len(calls) == len(names)


def test_a_repeated_layer_call_plans_again_when_the_algorithms_change(monkeypatch):
    from lowmem_numba import _layer

    layer = ln.Conv2d(W, padding=1)
    layer(X)
    calls = []
    monkeypatch.setattr(_layer, "prepare_call", lambda *a, **k: calls.append(1) or _api.prepare_call(*a, **k))
    base = registry.get("direct-sum2d")
    registry.register(registry.Algorithm(**{**base.__dict__, "name": "test-memo-layer-extra"}))
    try:
        layer(X)
    finally:
        registry.unregister("test-memo-layer-extra")
    layer(X)
    assert len(calls) == 2


def test_memo_keeps_what_is_used_and_drops_the_rest():
    """A memo of size 4 (two generations of 2): an entry looked up at least
    once per generation stays however many others come and go; one not used
    since two generations were filled is gone; never more than ``size``."""
    memo = _memo.Memo(4)
    memo.put("hot", 1)
    for i in range(20):
        memo.put(i, i)
        assert memo.get("hot") == 1
        assert len(memo) <= 4
    assert memo.get(0) is None and memo.get(19) == 19
    assert set(memo) == {"hot", 18, 19}
    memo.put("a", 2)
    memo.put("b", 3)
    memo.put("c", 4)
    memo.put("d", 5)
    assert memo.get("hot") is None and len(memo) == 4
    memo.clear()
    assert len(memo) == 0 and memo.get("a") is None
