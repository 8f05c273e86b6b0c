"""Kernels compiled in one process load from Numba's cache in another."""

from subprocess_helper import run_python

RUN_ALL = """
    import sys
    import numpy as np
    from numba.core.dispatcher import Dispatcher
    import lowmem_numba as ln

    x = np.ones((2, 4, 9, 9), np.float32)
    w = np.ones((6, 2, 3, 3), np.float32)
    for name in ln.algorithms():
        for layout in ("NCHW", "NHWC"):
            xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            if ln.supports(name, xl.shape, w.shape, padding=1, groups=2, layout=layout):
                ln.conv2d(xl, w, np.ones(6, np.float32), padding=1, groups=2, algorithm=name, layout=layout)
    hits = misses = 0
    modules = [m for name, m in sys.modules.items() if name.startswith("lowmem_numba")]
    for module in modules:
        for obj in vars(module).values():
            if isinstance(obj, Dispatcher) and obj.signatures:
                hits += sum(obj.stats.cache_hits.values())
                misses += sum(obj.stats.cache_misses.values())
    print("hits", hits, "misses", misses)
"""


def test_kernels_compiled_by_one_process_load_in_another(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    first = run_python(RUN_ALL, env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert " misses 0" not in first.stdout  # the first process compiled
    second = run_python(RUN_ALL, env)
    assert second.returncode == 0, second.stderr[-2000:]
    hits = int(second.stdout.split()[1])
    assert hits > 0 and second.stdout.strip().endswith("misses 0"), second.stdout


RUN_TWO = """
    import numpy as np
    import lowmem_numba as ln

    x = np.ones((1, 4, 9, 9), np.float32)
    w = np.ones((4, 4, 3, 3), np.float32)
    for name in ("direct-sum2d", "kn2row-aa-ab"):
        ln.conv2d(x, w, padding=1, algorithm=name)
    from lowmem_numba.algorithms import direct
    print("hits", sum(direct._direct_sum2d.stats.cache_hits.values()))
"""


def test_clear_compiled_removes_only_our_kernels(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    assert run_python(RUN_TWO, env).returncode == 0
    (tmp_path / "someone_else.f-1.py311.nbi").write_text("not ours")
    ours = [p for p in tmp_path.rglob("*.nb[ic]") if p.name != "someone_else.f-1.py311.nbi"]
    assert ours
    cleared = run_python("from lowmem_numba.cache import clear_compiled; print(clear_compiled())", env)
    assert cleared.returncode == 0, cleared.stderr[-2000:]
    assert int(cleared.stdout.split()[-1]) == len(ours)
    assert [p.name for p in tmp_path.rglob("*.nb[ic]")] == ["someone_else.f-1.py311.nbi"]
    recompiled = run_python(RUN_TWO, env)
    assert recompiled.returncode == 0 and recompiled.stdout.split()[-1] == "0", recompiled.stdout
