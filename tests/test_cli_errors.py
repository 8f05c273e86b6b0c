"""Every command-line error is one line on stderr and a non-zero exit: no traceback, no hang.

Covers ``lowmem-numba`` (bench, plan, report) and ``python -m lowmem_numba.bench.memory``:
sizes too large to compute, damaged result files, unwritable outputs, reports
that must not truncate an earlier one, interrupts, closed pipes, and a fuzz of
the argument parsing.
"""

import contextlib
import copy
import io
import json
import math
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowmem_numba import __main__ as cli
from lowmem_numba import _costmodel as costmodel
from lowmem_numba.bench import _suite as cli_bench, _report as cli_report, _scale as cli_scale, memory as memory
from lowmem_numba._units import MAX_SIZE, parse_size


def one_line_error(err, prefix="lowmem-numba"):
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(prefix) and "Traceback" not in err, err
    return err


# -- sizes --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["1e400", "1e999999999", "1e99999999999999999999", "9223372036854775808",
                                  "8388608TiB", "0.00000000001e999999", "100000000000000000000000"])
def test_parse_size_refuses_huge_sizes_at_once(text):
    start = time.perf_counter()
    with pytest.raises(ValueError, match="invalid size .*too large"):
        parse_size(text)
    assert time.perf_counter() - start < 0.5


def test_parse_size_limits():
    assert parse_size(str(MAX_SIZE)) == MAX_SIZE == 2**63 - 1
    assert parse_size("0e999999999") == 0 and parse_size("0.5e1") == 5 and parse_size("1e18") == 10**18
    assert parse_size("0." + "0" * 10 + "1e11") == 1
    with pytest.raises(ValueError, match="too many digits"):
        parse_size("1" * 5000)  # beyond Python's int-from-string limit


@pytest.mark.parametrize("size", ["1e400", "1e999999999"])
def test_plan_memory_limit_too_large_is_one_line(size, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plan", "--memory-limit", size])
    assert exit_info.value.code == 2
    assert "too large" in one_line_error(capsys.readouterr().err)


# -- report: damaged result files ---------------------------------------------------------------------------

def _record(algorithm, kind, threads, seconds=None, workspace=4096, skipped=""):
    runs = [] if seconds is None else [seconds, seconds * 1.1]
    return {"layer": "alexnet/conv3", "algorithm": algorithm, "kind": kind, "threads": threads, "layout": "NCHW",
            "seconds": seconds, "median_seconds": None if seconds is None else seconds * 1.05, "runs": runs,
            "gflops": None if seconds is None else 0.3 / seconds, "workspace_bytes": workspace,
            "predicted_seconds": None if kind == "baseline" else 0.002, "peak_added_bytes": None,
            "transient_bytes": None, "skipped": skipped}


#: A complete result as bench --json writes it: a timed and a skipped algorithm, both baselines, two thread
#: counts.  (tests/test_cli.py reports on a real one.)
VALID = {
    "schema": cli_bench.SCHEMA, "version": "0.1.0", "created": "2024-01-01T00:00:00+00:00",
    "machine": {"cpu": "Test CPU x2", "cores": 2, "numba_threads": 2, "threading_layer": "omp",
                "platform": "Linux", "python": "3.11.7", "packages": {"numpy": "1.26.4", "torch": None},
                "environment": {"OMP_NUM_THREADS": "2"}},
    "settings": {"network": "alexnet", "threads": [1, 2], "algorithms": ["kn2row-aa-ab", "direct-sum2d"],
                 "layer_names": ["conv3"], "quick": True, "repeats": 3, "max_seconds": 0.25, "layout": "NCHW",
                 "baselines": True, "memory": False, "reference": "kn2row-aa-ab", "timed_repeats": 1,
                 "min_timed_seconds": 0.02, "torch_version": "2.2.0"},
    "layers": [{"label": "alexnet/conv3", "network": "alexnet", "name": "conv3", "x_shape": [1, 256, 13, 13],
                "w_shape": [384, 256, 3, 3], "stride": 1, "padding": 1, "groups": 1, "flops": 299040768}],
    "results": [_record("kn2row-aa-ab", "algorithm", 1, 0.002),
                _record("direct-sum2d", "algorithm", 1, skipped="predicted 3 s per call > --max-seconds 0.25"),
                _record("numpy-im2col", "baseline", 1, 0.003),
                _record("torch", "baseline", 1, 0.001, workspace=None),
                _record("kn2row-aa-ab", "algorithm", 2, 0.0012)],
    "plans": [{"layer": "alexnet/conv3", "thread_budget": budget, "layout": "NCHW", "algorithm": "kn2row-aa-ab",
               "threads": budget, "workspace_bytes": 4096, "predicted_seconds": 0.002 / budget}
              for budget in (1, 2)],
    "notes": ["a note"],
}

DELETE = object()
NAN = float("nan")


def _paths(value, path=()):
    """Every field of a JSON document (not the document itself)."""
    if path:
        yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _paths(child, path + (key,))


def _where(path):
    return "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).lstrip(".")


def _nullable(path):
    return (path[-1] in ("layer_names", "torch_version", "threading_layer", "cores")
            or (path[0] == "results" and path[-1] in ("workspace_bytes", "predicted_seconds", "peak_added_bytes",
                                                      "transient_bytes"))
            or path[:2] == ("machine", "packages"))


def _mutations():
    """(path, replacement) pairs that each make VALID invalid: delete, null, a string, -1, NaN, a wrong type."""
    cases = []
    for path in _paths(VALID):
        parent = VALID
        for key in path[:-1]:
            parent = parent[key]
        original = parent[path[-1]]
        arbitrary_keys = path[:2] in (("machine", "packages"), ("machine", "environment")) and len(path) == 3
        for replacement in (DELETE, None, "garbage", -1, NAN, {} if isinstance(original, list) else []):
            if replacement is DELETE and (isinstance(path[-1], int) or arbitrary_keys):
                continue  # a shorter list, or one package fewer, is still a valid result
            if replacement is None and (original is None or _nullable(path)):
                continue
            if isinstance(replacement, str) and (isinstance(original, str) or path[:2] == ("machine", "packages")):
                continue  # another string is a valid string field (a package version may be null or a string)
            shown = "delete" if replacement is DELETE else repr(replacement)
            cases.append(pytest.param(path, replacement, id=f"{_where(path)}={shown}"))
    return cases


def _mutated(path, replacement):
    document = copy.deepcopy(VALID)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if replacement is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return document


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    pytest.importorskip("matplotlib")
    return tmp_path_factory.mktemp("report")


def test_the_valid_document_reports(report_dir, capsys):
    path = report_dir / "valid.json"
    path.write_text(json.dumps(VALID))
    assert cli.main(["report", str(path)]) == 0
    assert "| kn2row-aa-ab | 2 |" in (report_dir / "valid.md").read_text()
    assert (report_dir / "valid.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("path, replacement", _mutations())
def test_report_of_a_damaged_field_is_one_line(path, replacement, report_dir, capsys, monkeypatch):
    monkeypatch.setattr(cli_report, "plot", lambda *args: pytest.fail("a damaged result was plotted"))
    target = report_dir / "damaged.json"
    target.write_text(json.dumps(_mutated(path, replacement)))  # NaN is written as NaN, as json.dump does
    assert cli.main(["report", str(target)]) == 1
    err = one_line_error(capsys.readouterr().err)
    assert _where(path) in err or (path == ("schema",) and "schema" in err), err


@pytest.mark.parametrize("change, words", [
    (lambda d: d["results"][0].update(layer="alexnet/conv9"), ["results[0].layer"]),
    (lambda d: d["plans"][1].update(layer="nope"), ["plans[1].layer"]),
    (lambda d: d["results"][0].update(seconds=None), ["results[0].seconds", "median_seconds"]),
    (lambda d: d["results"][0].update(runs=[]), ["results[0].runs"]),
    (lambda d: d["results"][0].update(seconds=0), ["results[0].seconds"]),
    (lambda d: d["results"][0].update(threads=True), ["results[0].threads"]),
    (lambda d: d["settings"].update(threads=[]), ["settings.threads"]),
    (lambda d: d.update(layers=[]), ["layers"]),
    (lambda d: d["layers"].append(dict(d["layers"][0])), ["alexnet/conv3", "repeated"]),
    (lambda d: d["layers"][0].update(x_shape=[1, 256, 13]), ["layers[0].x_shape"]),
    (lambda d: d["results"][0].update(workspace_bytes=2**64), ["results[0].workspace_bytes"]),
    (lambda d: d["settings"].update(max_seconds=math.inf) or d["results"][0].update(gflops=math.inf),
     ["results[0].gflops"]),
])
def test_report_checks_consistency(change, words, report_dir, capsys):
    document = copy.deepcopy(VALID)
    change(document)
    target = report_dir / "inconsistent.json"
    target.write_text(json.dumps(document))
    assert cli.main(["report", str(target)]) == 1
    err = one_line_error(capsys.readouterr().err)
    for word in words:
        assert word in err


@pytest.mark.parametrize("content", [b"", b"[1, 2]", b"\xff\xfe not text", b"[" * 100000 + b"]" * 100000,
                                     b'{"schema": "lowmem-numba-bench/1"}', b"NaN", b"1" * 5000])
def test_report_of_a_file_that_is_no_result_is_one_line(content, report_dir, capsys):
    target = report_dir / "junk.json"
    target.write_bytes(content)
    assert cli.main(["report", str(target)]) == 1
    one_line_error(capsys.readouterr().err)


def test_report_of_a_directory_or_into_a_file_is_one_line(report_dir, tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 1
    one_line_error(capsys.readouterr().err)
    good = report_dir / "good.json"
    good.write_text(json.dumps(VALID))
    (tmp_path / "file").write_text("")
    assert cli.main(["report", str(good), "--out-dir", str(tmp_path / "file")]) == 1
    one_line_error(capsys.readouterr().err)
    (tmp_path / "good.md").mkdir()
    assert cli.main(["report", str(good), "--out-dir", str(tmp_path)]) == 1
    assert "directory" in one_line_error(capsys.readouterr().err)


def test_a_failing_report_leaves_the_earlier_one_intact(report_dir, tmp_path, capsys, monkeypatch):
    source = tmp_path / "run.json"
    source.write_text(json.dumps(VALID))
    (tmp_path / "run.md").write_bytes(b"# the earlier report\n")
    (tmp_path / "run.png").write_bytes(b"\x89PNG earlier plot")
    before = sorted(os.listdir(tmp_path)), (tmp_path / "run.md").read_bytes(), (tmp_path / "run.png").read_bytes()

    def plot_fails_half_way(result, target):
        if isinstance(target, str):
            target = open(target, "wb")  # noqa: SIM115 (as a path-taking plot would)
        target.write(b"\x89PNG half")
        target.flush()
        raise RuntimeError("disk full")

    monkeypatch.setattr(cli_report, "plot", plot_fails_half_way)
    assert cli.main(["report", str(source)]) == 1
    assert "disk full" in one_line_error(capsys.readouterr().err)
    after = sorted(os.listdir(tmp_path)), (tmp_path / "run.md").read_bytes(), (tmp_path / "run.png").read_bytes()
    assert after == before  # byte-identical, and no temporary file left behind

    source.write_text(json.dumps(_mutated(("results", 0, "seconds"), -1)))
    monkeypatch.undo()
    assert cli.main(["report", str(source)]) == 1
    one_line_error(capsys.readouterr().err)
    assert (sorted(os.listdir(tmp_path)), (tmp_path / "run.md").read_bytes(),
            (tmp_path / "run.png").read_bytes()) == before


def test_report_keeps_file_permissions(report_dir, tmp_path, capsys):
    source = tmp_path / "run.json"
    source.write_text(json.dumps(VALID))
    (tmp_path / "run.md").write_text("old")
    os.chmod(tmp_path / "run.md", 0o640)
    assert cli.main(["report", str(source)]) == 0
    assert (tmp_path / "run.md").stat().st_mode & 0o777 == 0o640
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "run.png").stat().st_mode & 0o777 == 0o666 & ~mask


# -- bench --json: refused before anything is measured ------------------------------------------------------

@pytest.fixture
def no_measuring(monkeypatch):
    monkeypatch.setattr(cli, "run_bench", lambda *a, **k: pytest.fail("measured before checking --json"))


@pytest.mark.parametrize("make_path, words", [
    (lambda tmp: str(tmp / "file" / "out.json"), ["not a directory"]),
    (lambda tmp: str(tmp / "missing" / "out.json"), ["does not exist"]),
    (lambda tmp: str(tmp), ["is a directory"]),
    (lambda tmp: str(tmp / "new") + os.sep, ["directory path"]),
    (lambda tmp: "", ["empty file name"]),
    pytest.param(lambda tmp: "/proc/out.json", ["cannot write"],
                 marks=pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs procfs")),
])
def test_bench_json_unwritable_fails_before_measuring(make_path, words, tmp_path, no_measuring, capsys):
    (tmp_path / "file").write_text("")
    assert cli.main(["bench", "--json", make_path(tmp_path), "--layers", "conv3", "--threads", "1"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    for word in words:
        assert word in one_line_error(err)


def test_bench_json_is_replaced_only_when_complete(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    path.write_text("earlier")

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        cli_bench.write_json(str(path), {"x": Unserialisable()})
    assert path.read_text() == "earlier" and os.listdir(tmp_path) == ["out.json"]
    cli_bench.write_json(str(path), {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1} and os.listdir(tmp_path) == ["out.json"]


# -- the top-level handler ----------------------------------------------------------------------------------

def _plan_raising(monkeypatch, error):
    def raise_it(*args, **kwargs):
        raise error
    monkeypatch.setattr(cli, "plan_network", raise_it)
    monkeypatch.setattr(cli, "plan", raise_it)


@pytest.mark.parametrize("error, status, words", [
    (KeyboardInterrupt(), 130, ["interrupted"]),
    (MemoryError(), 1, ["out of memory"]),
    (OSError(28, "No space left on device"), 1, ["No space left"]),
    (RuntimeError("first line\nsecond line\nlast line"), 1, ["first line last line"]),
    (TypeError("weights must be float32"), 1, ["float32"]),
])
def test_expected_failures_are_one_line(error, status, words, capsys, monkeypatch):
    monkeypatch.delenv("LOWMEM_NUMBA_DEBUG", raising=False)
    _plan_raising(monkeypatch, error)
    assert cli.main(["plan", "--layers", "conv3"]) == status
    err = one_line_error(capsys.readouterr().err)
    for word in words:
        assert word in err


@pytest.mark.parametrize("error", [KeyError("bug"), AttributeError("bug"), IndexError("bug"), AssertionError()])
def test_bugs_keep_their_traceback(error, monkeypatch):
    monkeypatch.delenv("LOWMEM_NUMBA_DEBUG", raising=False)
    _plan_raising(monkeypatch, error)
    with pytest.raises(type(error)):
        cli.main(["plan", "--layers", "conv3"])


@pytest.mark.parametrize("error", [ValueError("detail"), KeyboardInterrupt(), BrokenPipeError()])
def test_debug_variable_shows_the_traceback(error, monkeypatch):
    monkeypatch.setenv("LOWMEM_NUMBA_DEBUG", "1")
    _plan_raising(monkeypatch, error)
    with pytest.raises(type(error)):
        cli.main(["plan", "--layers", "conv3"])


def test_a_type_error_in_an_argument_parser_is_not_a_usage_error(monkeypatch):
    # argparse turns a TypeError of a type= function into "invalid value": a bug would look like a user error.
    def broken(text):
        raise TypeError("bug")
    monkeypatch.setattr(cli, "parse_threads", broken)
    with pytest.raises(cli._ParsingBug):
        cli.main(["bench", "--threads", "1"])


@pytest.mark.parametrize("args", [["plan", "--layers", "conv3,conv4", "-v"], ["--help"]])
def test_closed_stdout_stops_quietly(args, tmp_path):
    with open(tmp_path / "stderr", "w") as err:
        process = subprocess.Popen([sys.executable, "-m", "lowmem_numba", *args], stdout=subprocess.PIPE,
                                   stderr=err)
        process.stdout.close()  # as `| head -1` does once it has its line
        status = process.wait(timeout=300)
    assert (tmp_path / "stderr").read_text() == ""
    assert status == (141 if args[0] == "plan" else 0)  # argparse ignores an OSError printing help


# -- python -m lowmem_numba.bench.memory --------------------------------------------------------------------------

SMALL = ["--x-shape", "1,4,8,8", "--w-shape", "4,4,3,3"]


def run_memory(*args, env=None):
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("LOWMEM_NUMBA_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "lowmem_numba.bench.memory", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


@pytest.mark.parametrize("args, status, words", [
    (["nope"] + SMALL, 2, ["unknown algorithm 'nope'"]),
    (["layer:nope"] + SMALL, 2, ["unknown algorithm 'nope'"]),
    (["kn2row", "--x-shape", "1,a"], 2, ["--x-shape", "1,a"]),
    (["kn2row", "--x-shape", "1,4,8"], 2, ["--x-shape"]),
    (["kn2row"] + SMALL + ["--threads", "0"], 2, ["--threads"]),
    (["kn2row"] + SMALL + ["--threads", "100000"], 2, ["out of range"]),
    (["kn2row", "--x-shape", "1,4,8,8", "--w-shape", "4,5,3,3"], 2, ["channels"]),
    (["kn2row", "--x-shape", "1,4,8,8", "--w-shape", "4,4,3,3", "--padding", "-1"], 2, ["--padding"]),
    ([], 2, ["give a target"]),
])
def test_memory_cli_errors_are_one_line(args, status, words):
    process = run_memory(*args)
    assert process.returncode == status
    err = one_line_error(process.stderr, prefix="python -m lowmem_numba.bench.memory")
    for word in words:
        assert word in err


def test_memory_cli_without_torch_is_one_line(tmp_path):
    (tmp_path / "torch.py").write_text("raise ImportError('torch is missing (test shim)')\n")
    process = run_memory("torch", *SMALL, env={"PYTHONPATH": str(tmp_path)})
    assert process.returncode == 1
    err = one_line_error(process.stderr, prefix="python -m lowmem_numba.bench.memory")
    assert "torch is missing (test shim)" in err and "measuring torch failed" in err


def test_memory_cli_checks_torch_before_starting_a_process(monkeypatch, capsys):
    monkeypatch.setattr(memory, "torch_available", lambda: False)
    monkeypatch.setattr(memory, "peak_added_bytes", lambda *a, **k: pytest.fail("a process was started"))
    assert memory.main(["torch"] + SMALL) == 1
    assert "torch is not installed" in one_line_error(capsys.readouterr().err, prefix="python -m lowmem_numba")


def test_a_failing_measuring_process_relays_one_line():
    with pytest.raises(RuntimeError) as info:
        memory.peak_added_bytes("nope", (1, 4, 8, 8), (4, 4, 3, 3))
    assert "\n" not in str(info.value) and "unknown algorithm 'nope'" in str(info.value)


def test_memory_cli_interrupt_is_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(memory, "peak_added_bytes", interrupted)
    assert memory.main(["kn2row"] + SMALL) == 130
    one_line_error(capsys.readouterr().err, prefix="python -m lowmem_numba.bench.memory")


# -- fuzz of the argument parsing ---------------------------------------------------------------------------

class Reached(Exception):
    """A stubbed action ran: parsing and validation accepted the arguments."""


def _reached(*args, **kwargs):
    raise Reached


TOKENS = ["bench", "plan", "report", "calibrate", "--show", "--network", "alexnet", "vgg16", "mobilenet", "lenet",
          "--layers", "conv1", "conv3", "conv9", "conv1,conv9", ",", "--threads", "1", "2", "all", "0", "-1", "1,2", "1,,2", "99",
          "--algorithms", "kn2row", "all", "nope", "kn2row,kn2row", "--quick", "--repeats", "3", "0", "1e3",
          "--max-seconds", "inf", "nan", "-0.5", "--layout", "NCHW", "NHWC", "native", "--no-baselines",
          "--memory", "--json", "/nonexistent-dir/x.json", ".", "", "--memory-limit", "1MiB", "1e400",
          "1e999999999", "none", "-1", "--mode", "model", "measure", "-v", "--verbose", "--out-dir",
          "result.json", "--", "-", "-h", "--version", "--help", "\n", "²", "٣", "1" * 30,
          "scale", "--workers", "--threads-per-worker", "--images", "--chunk", "--image-size", "--scheduler",
          "--algorithm", "--seed", "tcp://127.0.0.1:1"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)), max_size=8))
def test_fuzz_argument_parsing(argv):
    caught = []
    stderr, stdout = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr), \
            contextlib.redirect_stdout(stdout):
        for name in ("run_bench", "plan", "plan_network"):
            patch.setattr(cli, name, _reached)
        patch.setattr(cli_report, "write_report", _reached)
        patch.setattr(cli_scale, "run_scale", _reached)
        patch.setattr(costmodel, "calibrate_command", _reached)
        patch.setattr(cli, "_one_line", lambda error, real=cli._one_line: caught.append(error) or real(error))
        patch.delenv("LOWMEM_NUMBA_DEBUG", raising=False)
        try:
            status = cli.main(argv)
        except Reached:
            return
        except SystemExit as exit_info:
            status = exit_info.code
            if status == 0:  # --help or --version
                assert stderr.getvalue() == "" and stdout.getvalue(), argv
                return
    assert status in (1, 2), (argv, status)
    one_line_error(stderr.getvalue())
    # Only expected failures were shortened: a TypeError (say) here would be a bug shown as a one-liner.
    assert all(isinstance(error, (ValueError, OSError)) for error in caught), caught
