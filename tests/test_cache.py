"""Kernels compiled in one process load from Numba's cache in another, and the
package imports and runs wherever it cannot write."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lowmem_numba as ln
from subprocess_helper import run_python

# Every algorithm on every kind of layer it claims (grouped 3x3 and 1x1, depthwise
# at stride 1 and 2), in both layouts, at batch 1 on one thread (where the
# micro-kernel packs weights itself) and batch 2 on two: the kernels a user's
# first calls compile.  A kernel that was not cached counts as "uncached".
RUN_ALL = """
    import sys
    import numpy as np
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher
    import lowmem_numba as ln

    layers = [((6, 4, 3, 3), dict(padding=1, groups=2)), ((6, 4, 1, 1), dict(groups=2)),
              ((16, 1, 3, 3), dict(padding=1, groups=8)), ((16, 1, 3, 3), dict(stride=2, padding=1, groups=8))]
    for name in ln.algorithms():
        for w_shape, args in layers:
            w = np.ones(w_shape, np.float32)
            for batch, threads in ((1, 1), (2, 2)):
                x = np.ones((batch, 8, 9, 9), np.float32)
                for layout in ("NCHW", "NHWC"):
                    xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
                    if ln.supports(name, xl.shape, w.shape, layout=layout, **args):
                        ln.conv2d(xl, w, np.ones(w_shape[0], np.float32), algorithm=name, layout=layout,
                                  threads=threads, **args)
    hits = misses = uncached = 0
    modules = [m for name, m in sys.modules.items() if name.startswith("lowmem_numba")]
    for module in modules:
        for obj in vars(module).values():
            if isinstance(obj, Dispatcher) and obj.signatures:
                hits += sum(obj.stats.cache_hits.values())
                misses += sum(obj.stats.cache_misses.values())
                uncached += isinstance(obj._cache, NullCache)
    print("hits", hits, "misses", misses, "uncached", uncached)
"""


def _counts(stdout):
    words = stdout.split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}


def test_kernels_compiled_by_one_process_load_in_another(capsys):
    """This process compiles (or loads) every kernel of the workload, which
    writes them to its cache; a fresh process then runs the same workload
    without compiling anything.  (The test suite's own cache is the writer, so
    the kernels are compiled once for all tests rather than again here.)"""
    if ln._compile.CACHE_MODE == "none":
        pytest.skip("this process cannot cache: " + ln._compile.CACHE_REASON)
    exec(textwrap.dedent(RUN_ALL), {})
    first = _counts(capsys.readouterr().out)
    assert first["hits"] + first["misses"] > 0 and first["uncached"] == 0, first
    second = run_python(RUN_ALL)
    assert second.returncode == 0, second.stderr[-2000:]
    counts = _counts(second.stdout)
    assert counts["hits"] > 0 and counts["misses"] == 0 and counts["uncached"] == 0, second.stdout


RUN_TWO = """
    import numpy as np
    import lowmem_numba as ln

    x = np.ones((1, 4, 9, 9), np.float32)
    w = np.ones((4, 4, 3, 3), np.float32)
    for name in ("direct-sum2d", "kn2row-aa-ab"):
        ln.conv2d(x, w, padding=1, algorithm=name)
    from lowmem_numba._algorithms import direct
    print("hits", sum(direct._direct_sum2d.stats.cache_hits.values()))
"""


def test_clear_compiled_removes_only_our_kernels(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    assert run_python(RUN_TWO, env).returncode == 0
    (tmp_path / "someone_else.f-1.py311.nbi").write_text("not ours")
    ours = [p for p in tmp_path.rglob("*.nb[ic]") if p.name != "someone_else.f-1.py311.nbi"]
    assert ours
    cleared = run_python("from lowmem_numba._cache import clear_compiled; print(clear_compiled())", env)
    assert cleared.returncode == 0, cleared.stderr[-2000:]
    assert int(cleared.stdout.split()[-1]) == len(ours)
    assert [p.name for p in tmp_path.rglob("*.nb[ic]")] == ["someone_else.f-1.py311.nbi"]
    recompiled = run_python(RUN_TWO, env)
    assert recompiled.returncode == 0 and recompiled.stdout.split()[-1] == "0", recompiled.stdout


# --------------------------------------------------------------- where kernels are cached
#
# As root, permissions do not bite, so these run Python as a user who cannot
# write the package directory or $HOME: `nobody` when it can run this
# interpreter, else root without capabilities (uid 0 then obeys permissions
# like any user) on a copy of the package owned by `nobody`.  The interpreter
# often lives under /root (mode 700), which `nobody` cannot enter.

NOBODY = 65534

CACHED_CALL = """
    import sys
    import tempfile
    import warnings
    if len(sys.argv) > 1:  # simulate a machine whose temporary directory is unusable
        tempfile.tempdir = sys.argv[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import numpy as np
        from numba.core.dispatcher import Dispatcher
        import lowmem_numba as ln
        from lowmem_numba import _compile
        x = np.arange(2 * 8 * 5 * 5, dtype=np.float32).reshape(2, 8, 5, 5) % 7
        w = np.arange(4 * 8, dtype=np.float32).reshape(4, 8, 1, 1) % 5
        got = ln.conv2d(x, w, algorithm="conv-1x1-gemm")  # a prange kernel calling BLAS
    print("correct", np.array_equal(got, np.einsum("nchw,mc->nmhw", x, w[:, :, 0, 0])))
    print("package", ln.__file__)
    print("mode", _compile.CACHE_MODE)
    print("dir", _compile.CACHE_DIR)
    print("warnings", [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)])
    hits = misses = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("lowmem_numba"):
            for obj in vars(module).values():
                if isinstance(obj, Dispatcher) and obj.signatures:
                    hits += sum(obj.stats.cache_hits.values())
                    misses += sum(obj.stats.cache_misses.values())
    print("hits", hits, "misses", misses)
"""


def _unprivileged_runner(tmp_path):
    """(command prefix, preexec_fn, uid of the runner, uid of files it must not write)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")

    def as_nobody():
        os.setgid(NOBODY)
        os.setgroups([])
        os.setuid(NOBODY)

    try:
        probe = subprocess.run([sys.executable, "-c", "import numba"], preexec_fn=as_nobody,
                               capture_output=True, timeout=120)
        if probe.returncode == 0:
            return [], as_nobody, NOBODY, 0
    except (OSError, subprocess.SubprocessError):
        pass  # nobody cannot run this interpreter, or setuid failed
    setpriv = shutil.which("setpriv")
    if setpriv:
        prefix = [setpriv, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]
        probe = subprocess.run(prefix + [sys.executable, "-c", "import numba"], capture_output=True,
                               timeout=120)
        if probe.returncode == 0:
            return prefix, None, 0, NOBODY
    pytest.skip("cannot run this interpreter without privileges")


def _owned_tree(path, uid, file_mode=0o644, dir_mode=0o755):
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, uid)
        os.chmod(root, dir_mode)
        for name in files:
            os.chown(os.path.join(root, name), uid, uid)
            os.chmod(os.path.join(root, name), file_mode)


@pytest.fixture
def unprivileged(tmp_path):
    """Run CACHED_CALL as a user who can write neither the package nor $HOME."""
    prefix, preexec, uid, foreign = _unprivileged_runner(tmp_path)
    os.chmod(tmp_path, 0o755)  # so that nobody can reach what is below
    os.chmod(tmp_path.parent, 0o755)
    site = tmp_path / "site"
    shutil.copytree(Path(ln.__file__).parent, site / "lowmem_numba",
                    ignore=shutil.ignore_patterns("__pycache__"))
    _owned_tree(site, foreign)
    home = tmp_path / "home"
    home.mkdir()
    _owned_tree(home, foreign)
    shared_tmp = tmp_path / "tmp"  # like /tmp: everyone may create entries
    shared_tmp.mkdir()
    os.chown(shared_tmp, foreign, foreign)
    os.chmod(shared_tmp, 0o1777)

    def run(env, *args):
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "LOWMEM_NUMBA_CACHE_DIR")}
        full_env.update({"PYTHONPATH": str(site), "HOME": str(home), "TMPDIR": str(shared_tmp)})
        full_env.update(env)
        result = subprocess.run(prefix + [sys.executable, "-c", textwrap.dedent(CACHED_CALL), *args],
                                preexec_fn=preexec, env=full_env, capture_output=True, text=True,
                                cwd=str(home), timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "correct True" in result.stdout, result.stdout
        assert f"package {site / 'lowmem_numba' / '__init__.py'}" in result.stdout, result.stdout
        return result.stdout

    run.uid, run.foreign, run.home, run.shared_tmp = uid, foreign, home, shared_tmp
    return run


def _line(stdout, key):
    return next(line for line in stdout.splitlines() if line.startswith(key + " "))[len(key) + 1:]


def test_unwritable_package_and_home_cache_in_a_private_temporary_directory(unprivileged):
    first = unprivileged({})
    private = unprivileged.shared_tmp / f"lowmem_numba-numba-{unprivileged.uid}"
    assert _line(first, "mode") == "fallback" and _line(first, "dir") == str(private), first
    assert _line(first, "warnings") == "[]", first
    info = private.lstat()
    assert info.st_uid == unprivileged.uid and info.st_mode & 0o777 == 0o700
    assert list(private.rglob("*.nbi")), "nothing was cached"
    second = unprivileged({})  # a new process loads what the first compiled
    assert _line(second, "hits") != "0 misses 0" and second.rstrip().endswith("misses 0"), second


def test_a_planted_temporary_directory_is_never_used(unprivileged):
    # Someone else created the directory this user would cache in: cached
    # machine code from there would be theirs, so nothing is cached.
    planted = unprivileged.shared_tmp / f"lowmem_numba-numba-{unprivileged.uid}"
    planted.mkdir()
    os.chown(planted, unprivileged.foreign, unprivileged.foreign)
    os.chmod(planted, 0o777)
    out = unprivileged({})
    assert _line(out, "mode") == "none", out
    assert not list(planted.rglob("*.nb[ic]"))


def test_no_writable_location_runs_uncached_with_one_warning(unprivileged):
    out = unprivileged({"XDG_CACHE_HOME": str(unprivileged.home / "cache")}, str(unprivileged.home))
    assert _line(out, "mode") == "none" and _line(out, "dir") == "None", out
    warned = eval(_line(out, "warnings"))
    assert len(warned) == 1 and "will not be cached" in warned[0] and "no writable cache directory" in warned[0]
    assert _line(out, "hits").startswith("0 misses"), out  # every kernel compiled, none loaded
    assert not list(unprivileged.home.parent.rglob("*.nb[ic]"))


def test_an_explicit_numba_cache_dir_is_used(tmp_path):
    result = run_python("import lowmem_numba._compile as c; print(c.CACHE_MODE)",
                        {"NUMBA_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.split() == ["numba"], result.stderr[-2000:]
    assert list(tmp_path.iterdir()), "Numba's locator did not use NUMBA_CACHE_DIR"


def test_disabled_jit_is_refused_at_import_with_advice():
    result = run_python("import lowmem_numba", {"NUMBA_DISABLE_JIT": "1"})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: lowmem_numba needs Numba's JIT"), result.stderr[-2000:]
    assert "Unset NUMBA_DISABLE_JIT" in last


def test_every_kernel_module_compiles_through_the_cache_policy():
    # A kernel decorated with numba's own njit(cache=True) would make the
    # import fail again where nothing is writable.
    import re

    package = Path(ln.__file__).parent
    direct = re.compile(r"^\s*from numba import [^\n]*\b(njit|jit)\b|\bnumba\.(njit|jit)\(|^\s*@(numba\.)?jit\b",
                        re.MULTILINE)
    offenders = [str(path.relative_to(package)) for path in package.rglob("*.py")
                 if path.name != "_compile.py" and direct.search(path.read_text())]
    assert offenders == [], "use `from lowmem_numba._compile import njit` in " + ", ".join(offenders)


RUN_INLINING = """
    import numpy as np
    import lowmem_numba as ln
    from lowmem_numba._algorithms import depthwise_blocked

    print(ln.__file__)
    x = np.ones((1, 4, 8, 8), np.float32)
    w = np.ones((4, 1, 3, 3), np.float32)
    assert (ln.conv2d(x, w, groups=4, algorithm="depthwise-blocked", threads=1)[:, :, 1:-1, 1:-1] == 9).all()
    # On one thread the kernel's serial twin runs: count both.
    stats = [kernel.stats for kernel in (depthwise_blocked._depthwise_blocked,
                                         depthwise_blocked._depthwise_blocked_serial)]
    print("hits", sum(sum(s.cache_hits.values()) for s in stats),
          "misses", sum(sum(s.cache_misses.values()) for s in stats))
"""


def test_an_edit_to_another_module_of_the_package_invalidates_cached_kernels(tmp_path):
    # direct-pixels' kernel inlines _microkernel's tile: Numba alone checks
    # only pixels.py, and kept running the old tile from its cache.  The
    # depthwise-blocked kernel inlines _microkernel's depthwise tiles the same
    # way and compiles in 5 s against direct-pixels' 36 (AMD Zen 3).
    site = tmp_path / "site"
    shutil.copytree(Path(ln.__file__).parent, site / "lowmem_numba",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(site), "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def run():  # from tmp_path: `python -c` puts the working directory first on the path
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN_INLINING)], capture_output=True,
                                text=True, env={**os.environ, **env}, cwd=str(tmp_path), timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        package, counts = result.stdout.split("\n", 1)
        assert package == str(site / "lowmem_numba" / "__init__.py"), package
        return _counts(counts)

    assert run() == {"hits": 0, "misses": 1}
    assert run() == {"hits": 1, "misses": 0}
    microkernel = site / "lowmem_numba" / "_microkernel.py"
    microkernel.write_text(microkernel.read_text() + "\n# edited\n")
    assert run() == {"hits": 0, "misses": 1}
    assert run() == {"hits": 1, "misses": 0}
