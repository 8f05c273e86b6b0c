"""The public namespace is small and pinned: a change to it is a decision, not an accident."""

import importlib
import pkgutil

import pytest

import lowmem_numba
import lowmem_numba.bench
from subprocess_helper import run_python

PUBLIC = {
    "AlgorithmInfo", "Conv2d", "NetworkPlan", "Plan", "Workspace", "__version__", "algorithms", "conv2d",
    "describe", "plan", "plan_network", "supports", "workspace_bytes",
}
BENCH = {"Layer", "NETWORKS", "Timing", "TimingWorker", "forget_plans", "recalibrate", "format_bytes", "layers",
         "max_threads", "measure", "microkernel_tile", "numpy_im2col_conv2d", "parse_size", "peak_added_bytes",
         "sgemm_seconds", "torch_available", "torch_runs", "torch_worker"}
DASK = {"conv2d", "map_layers", "task_threads"}
#: Public modules: the package, the benchmark subpackage, the command line,
#: the memory tool (run with ``python -m``) and the Dask front end (optional
#: extra, never imported by the package); every other module is private.
PUBLIC_MODULES = {"lowmem_numba", "lowmem_numba.bench", "lowmem_numba.__main__", "lowmem_numba.bench.memory",
                  "lowmem_numba.dask"}


def test_top_level_namespace():
    assert set(lowmem_numba.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(lowmem_numba, name), name
    assert set(lowmem_numba.bench.__all__) == BENCH


def test_every_other_module_is_private():
    found = set()
    for info in pkgutil.walk_packages(lowmem_numba.__path__, "lowmem_numba."):
        parts = info.name.split(".")[1:]
        if info.name in PUBLIC_MODULES or any(part.startswith("_") for part in parts):
            continue
        found.add(info.name)
    assert not found, f"public-looking modules: {sorted(found)}"


def test_public_callables_have_numpydoc_docstrings():
    for name in ("conv2d", "plan", "plan_network", "supports", "workspace_bytes", "describe"):
        doc = getattr(lowmem_numba, name).__doc__
        assert doc and "Parameters" in doc and "Returns" in doc, name
    assert "Raises" in lowmem_numba.conv2d.__doc__


def test_describe_names_every_algorithm():
    for name in lowmem_numba.algorithms():
        info = lowmem_numba.describe(name)
        assert info.name == name and info.family and info.claims and info.workspace_formula
        assert info.input_layout in ("NCHW", "NHWC") and name in str(info)


def test_the_memory_tool_runs_as_a_module():
    assert importlib.util.find_spec("lowmem_numba.bench.memory") is not None


def test_the_dask_module_namespace():
    pytest.importorskip("dask.array")
    import lowmem_numba.dask as lnd

    assert set(lnd.__all__) == DASK
    for name in DASK:
        doc = getattr(lnd, name).__doc__
        assert doc and "Parameters" in doc and "Returns" in doc, name
    assert "Raises" in lnd.conv2d.__doc__ and "Raises" in lnd.map_layers.__doc__


def test_importing_the_package_never_imports_dask():
    code = """
        import sys
        import lowmem_numba, lowmem_numba.bench, lowmem_numba.__main__
        import lowmem_numba.bench.memory
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")
                     or m == "lowmem_numba.dask"))
    """
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
