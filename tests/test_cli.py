"""The command line (lowmem_numba.__main__): arguments, errors, bench, plan, report."""

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest

import lowmem_numba as ln
import lowmem_numba.bench  # noqa: F401  (ln.bench)
from lowmem_numba import __main__ as cli
from lowmem_numba.bench import _suite as cli_bench
from lowmem_numba.bench._baselines import numpy_im2col_conv2d, numpy_im2col_workspace_bytes
from lowmem_numba._threads import max_threads

TINY = ["--network", "alexnet", "--layers", "conv3", "--algorithms", "im2col-copy-self-ab-ki,kn2row-aa-ab",
        "--threads", "1", "--quick"]


@pytest.mark.parametrize("text, expected", [
    ("1000", 1000), ("0", 0), ("512KiB", 512 * 1024), ("1MiB", 2**20), ("1 mib", 2**20), ("2GB", 2 * 10**9),
    ("1.5KiB", 1536), ("4kB", 4000), ("1e3", 1000), ("none", None),
])
def test_parse_size(text, expected):
    assert cli.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "-1", "1XB", "0.5", "1.1KiB", "one", "1 MiB MiB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="invalid size"):
        cli.parse_size(text)


def test_parse_threads():
    assert cli.parse_threads("1") == (1,)
    assert cli.parse_threads("1,all,1") == tuple(dict.fromkeys((1, max_threads())))
    for bad in ("0", "x", "1,,2", str(max_threads() + 1), "-1"):
        with pytest.raises(ValueError):
            cli.parse_threads(bad)


def test_parse_algorithms():
    assert cli.parse_algorithms("all") == ln.algorithms()
    assert cli.parse_algorithms("kn2row, kn2row") == ("kn2row",)
    with pytest.raises(ValueError, match="unknown algorithm 'nope'"):
        cli.parse_algorithms("kn2row,nope")


def assert_one_line_error(capsys, *words):
    """Check stderr is one error line containing ``words``; return stdout."""
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("lowmem-numba"), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return out


@pytest.mark.parametrize("argv, words", [
    (["bench", "--network", "lenet"], ["invalid choice: 'lenet'"]),
    (["bench", "--threads", "1,x"], ["invalid thread list"]),
    (["bench", "--threads", str(max_threads() + 1)], ["out of range"]),
    (["bench", "--algorithms", "im2col,kn2row"], ["unknown algorithm 'im2col'"]),
    (["bench", "--repeats", "0"], ["--repeats"]),
    (["plan", "--memory-limit", "lots"], ["invalid size 'lots'"]),
    (["plan", "--threads", "1,2"], ["one thread budget"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_usage_errors_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert_one_line_error(capsys, *words)


@pytest.mark.parametrize("argv, words", [
    (["bench", "--json", "/nonexistent-dir/out.json"] + TINY, ["cannot write", "does not exist"]),
    (["bench", "--json", "."] + TINY, ["directory"]),
    (["bench", "--layers", "conv9"], ["unknown layer 'conv9'", "conv1"]),
    (["plan", "--layers", "conv9"], ["unknown layer 'conv9'"]),
    (["report", "/nonexistent-dir/result.json"], ["No such file"]),
])
def test_runtime_errors_are_one_line(argv, words, capsys):
    assert cli.main(argv) == 1
    assert assert_one_line_error(capsys, *words) == ""  # nothing was measured before the error


def test_entry_point_error_has_no_traceback():
    process = subprocess.run([sys.executable, "-m", "lowmem_numba", "bench", "--network", "nope"],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert process.stderr.count("\n") == 1 and "Traceback" not in process.stderr


def test_no_arguments_is_the_alexnet_bench(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "_run_bench", lambda args: seen.setdefault("args", args) and 0)
    cli.main([])
    args = seen["args"]
    assert (args.network, args.threads, args.algorithms, args.quick, args.json) == ("alexnet", None, None,
                                                                                   False, None)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """A quick bench of one small layer, without the torch subprocess: (JSON path, stdout)."""
    path = tmp_path_factory.mktemp("bench") / "tiny.json"
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(cli_bench, "torch_available", lambda: False)
        assert cli.main(["bench", "--json", str(path)] + TINY) == 0
    return path, out.getvalue()


@pytest.fixture
def bench_json(bench_run):
    return bench_run[0]


def test_bench_writes_json(bench_json):
    result = json.loads(bench_json.read_text())
    assert result["schema"] == cli_bench.SCHEMA and result["version"] == ln.__version__
    assert result["machine"]["numba_threads"] == max_threads() and result["machine"]["cpu"]
    assert [layer["label"] for layer in result["layers"]] == ["alexnet/conv3"]
    rows = {(r["algorithm"], r["threads"]): r for r in result["results"]}
    assert set(rows) == {("im2col-copy-self-ab-ki", 1), ("kn2row-aa-ab", 1), ("numpy-im2col", 1)}
    flops = result["layers"][0]["flops"]
    for r in rows.values():
        assert r["seconds"] == min(r["runs"]) and sum(r["runs"]) >= cli_bench.MIN_TIMED_SECONDS
        assert r["gflops"] == pytest.approx(flops / r["seconds"] / 1e9)
        assert r["workspace_bytes"] > 0
    assert rows["kn2row-aa-ab", 1]["workspace_bytes"] == ln.workspace_bytes(
        "kn2row-aa-ab", (1, 256, 13, 13), (384, 256, 3, 3), padding=1, threads=1)
    assert rows["numpy-im2col", 1]["kind"] == "baseline"
    (pick,) = result["plans"]
    assert pick["algorithm"] == ln.plan((1, 256, 13, 13), (384, 256, 3, 3), padding=1, threads=1).algorithm
    assert any("torch" in note for note in result["notes"])


def test_bench_prints_the_table(bench_run):
    path, out = bench_run
    for word in ("alexnet/conv3", "im2col-copy-self-ab-ki", "kn2row-aa-ab", "numpy-im2col (baseline)",
                 "GFLOP/s", "workspace", "1.00x", "scheduler pick", "torch is not installed", f"wrote {path}"):
        assert word in out


def test_bench_output_and_progress(capsys, monkeypatch):
    monkeypatch.setattr(cli_bench, "torch_available", lambda: False)
    assert cli.main(["bench", "--network", "mobilenet", "--layers", "pw13", "--algorithms",
                     "conv-1x1-gemm,kn2row", "--threads", "1", "--quick", "--no-baselines"]) == 0
    out, err = capsys.readouterr()
    assert "mobilenet/pw13" in out and "conv-1x1-gemm" in out and "unsupported" not in out
    assert "[100%]" in err  # the plain-text progress bar (stderr is not a terminal here)


def test_bench_skips_predicted_slow_calls(capsys, monkeypatch):
    monkeypatch.setattr(cli_bench, "torch_available", lambda: False)
    assert cli.main(["bench", "--layers", "conv1", "--algorithms", "direct-sum2d,kn2row", "--threads", "1",
                     "--quick", "--no-baselines", "--max-seconds", "0"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("direct-sum2d"))
    assert "skipped" in row
    assert "unsupported" in next(line for line in out.splitlines() if line.startswith("kn2row"))


def test_report_writes_markdown_and_png(bench_json, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert cli.main(["report", str(bench_json), "--out-dir", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out" / "tiny.md").read_text()
    assert "## alexnet/conv3" in markdown and "| kn2row-aa-ab | 1 |" in markdown
    assert "![time against workspace per layer](tiny.png)" in markdown
    assert (tmp_path / "out" / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_report_without_matplotlib_names_the_extra(bench_json, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" fail
    assert cli.main(["report", str(bench_json), "--out-dir", str(tmp_path)]) == 1
    assert_one_line_error(capsys, "matplotlib", "lowmem-numba[bench]")
    assert not list(tmp_path.iterdir())


def test_report_rejects_other_json(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "other.json"
    path.write_text('{"benchmarks": []}')
    assert cli.main(["report", str(path)]) == 1
    assert_one_line_error(capsys, "not a lowmem-numba bench result")


def test_plan_names_algorithms_and_reasons(capsys):
    assert cli.main(["plan", "--network", "alexnet", "--memory-limit", "1MiB", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    expected = ln.plan_network(ln.bench.layers("alexnet"), memory_limit=2**20, threads=1)
    assert expected.explain() in out
    for name, p in expected.plans:
        assert f"{name}: {p.algorithm} on {p.threads} thread(s)" in out
    assert "over budget:" in out  # im2col's patch matrix does not fit 1 MiB
    assert "unsupported: " in out and "stride" in out  # conv1 has stride 4: no kn2row


def test_plan_verbose_lists_every_candidate(capsys):
    assert cli.main(["plan", "--network", "vgg16", "--layers", "conv1_1", "--memory-limit", "none", "-v"]) == 0
    out = capsys.readouterr().out
    assert "network plan: shared arena" in out and "limit none" in out
    for name in ln.algorithms():
        assert name in out


def test_numpy_baseline_matches_conv2d():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 11, 13)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    args = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2)
    np.testing.assert_allclose(numpy_im2col_conv2d(x, w, **args), ln.conv2d(x, w, algorithm="direct-sum2d",
                                                                            **args), rtol=1e-4, atol=1e-4)
    g = ln._geometry.make_geometry(x.shape, w.shape, **args)
    padded = 2 * 6 * 12 * 16
    assert numpy_im2col_workspace_bytes(g) == 4 * (padded + 3 * 3 * 2 * g.out_height * g.out_width)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is measured on Linux")
def test_bench_memory_measures_algorithms_and_numpy_baseline(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_bench, "torch_available", lambda: False)
    path = tmp_path / "memory.json"
    assert cli.main(["bench", "--layers", "conv3", "--algorithms", "im2col-copy-self-ab-ki", "--threads", "1",
                     "--quick", "--memory", "--json", str(path)]) == 0
    rows = {r["algorithm"]: r for r in json.loads(path.read_text())["results"]}
    for name in ("im2col-copy-self-ab-ki", "numpy-im2col"):
        measured = rows[name]["transient_bytes"]
        # The patch matrix (1.5 MiB) is touched; nothing much beyond the declared workspace is.
        assert 0.5 * rows[name]["workspace_bytes"] < measured < rows[name]["workspace_bytes"] + 2**21
