"""``lowmem-numba scale``: the stack, the in-process baseline, a local Dask cluster, one-line errors."""

import json

import numpy as np
import pytest

from lowmem_numba import __main__ as cli
from lowmem_numba.bench import _scale as scale
from lowmem_numba.bench._networks import NETWORKS
from subprocess_helper import run_python

TINY = ["--network", "vgg16", "--image-size", "32", "--images", "3", "--chunk", "2"]


def one_line_error(err):
    assert err.count("\n") == 1 and err.startswith("lowmem-numba") and "Traceback" not in err, err
    return err


def test_chain_networks_and_their_pools():
    assert scale.SCALE_NETWORKS == tuple(n for n in NETWORKS if n not in ("googlenet", "resnet50"))
    pools = {name: [pool for _, pool in scale.conv_stack(name)[0]] for name in scale.SCALE_NETWORKS}
    assert pools == {"alexnet": [(3, 2), (3, 2), None], "vgg16": [(2, 2)] * 4 + [None], "mobilenet": [None]}
    for name in ("googlenet", "resnet50"):
        with pytest.raises(ValueError, match="not a chain"):
            scale.conv_stack(name)
    segments, shape = scale.conv_stack("vgg16", 32)
    assert shape == (3, 32, 32) and scale.image_shapes(segments, shape)[1] == (512, 2, 2)


def test_relu_pool():
    y = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5) - 70
    pooled = scale.relu_pool(y.copy(), 3, 2)
    assert pooled.shape == (2, 3, 2, 2)
    assert pooled[0, 0, 0, 0] == 0 and pooled[1, 2, 1, 1] == y[1, 2, 4, 4]


def test_images_do_not_depend_on_the_chunking():
    whole = scale.images_chunk(0, 4, (3, 4, 4), 5)
    np.testing.assert_array_equal(whole[2:], scale.images_chunk(2, 2, (3, 4, 4), 5))


def test_in_process_baseline(tmp_path, capsys):
    path = tmp_path / "local.json"
    assert cli.main(["scale", *TINY, "--workers", "0", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "this process, no Dask" in out and "images/s" in out and "conv5_3" in out
    result = json.loads(path.read_text())
    (worker,) = result["workers"]
    assert result["images_per_second"] > 0 and worker["images"] == 3 and worker["tasks"] == 2
    assert len(worker["plans"]) == 13 and worker["peak_rss_bytes"] is None or worker["peak_rss_bytes"] > 0


def test_local_cluster(tmp_path, capsys):
    pytest.importorskip("distributed")
    path = tmp_path / "cluster.json"
    assert cli.main(["scale", *TINY, "--workers", "2", "--threads-per-worker", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "LocalCluster: 2 worker(s) x 1 thread(s)" in out and "images/s" in out and "plan (" in out
    result = json.loads(path.read_text())
    assert len(result["workers"]) == 2 and sum(w["images"] for w in result["workers"]) == 3
    local = scale.run_scale(scale.ScaleConfig(network="vgg16", image_size=32, images=3, chunk=2, workers=0))
    assert result["checksum"] == pytest.approx(local["checksum"], rel=1e-3)
    for worker in result["workers"]:
        if worker["tasks"]:
            assert worker["task_threads"] and worker["weight_loads"] <= 5 and worker["stack_builds"] <= 5
            assert {p["layer"] for p in worker["plans"]} == set(result["layers"])


@pytest.mark.parametrize("argv, words", [
    (["scale", "--network", "googlenet"], ["invalid choice: 'googlenet'"]),
    (["scale", "--scheduler", "tcp://127.0.0.1:8786", "--workers", "2"], ["--scheduler", "--workers"]),
    (["scale", "--workers", "0", "--threads-per-worker", "2"], ["--threads-per-worker"]),
    (["scale", "--workers", "100000"], ["workers"]),
    (["scale", "--images", "0"], ["--images"]),
    (["scale", "--algorithm", "nope"], ["unknown algorithm 'nope'"]),
    (["scale", "--memory-limit", "lots"], ["invalid size"]),
])
def test_usage_errors_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = one_line_error(capsys.readouterr().err)
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("argv, words", [
    (["scale", "--network", "vgg16", "--image-size", "8", "--workers", "0"], ["too small"]),
    (["scale", "--network", "alexnet", "--algorithm", "kn2row-aa-ab", "--workers", "0"],
     ["alexnet/conv1", "does not support"]),
    (["scale", *TINY, "--json", "/nonexistent-dir/x.json"], ["cannot write"]),
])
def test_runtime_errors_are_one_line(argv, words, capsys):
    assert cli.main(argv) == 1
    err = one_line_error(capsys.readouterr().err)
    for word in words:
        assert word in err, err


def test_without_dask_is_one_line():
    code = f"""
        import sys
        sys.modules["dask"] = sys.modules["distributed"] = None   # as if not installed
        from lowmem_numba.__main__ import main
        sys.exit(main(["scale", *{TINY!r}, "--workers", "1"]))
    """
    done = run_python(code, {"LOWMEM_NUMBA_DEBUG": ""})
    assert done.returncode == 1, done.stderr
    err = one_line_error(done.stderr)
    assert "needs dask" in err and 'pip install "lowmem-numba[dask]"' in err
