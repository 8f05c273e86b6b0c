"""The package is layered, and nothing imports upwards or in a cycle.

Layers, bottom to top (a module may import its own layer or lower ones, at
module level or inside a function alike):

0. leaves: geometry and validation, layouts, the BLAS binding and the
   micro-kernel, threads, caches and memos, units, tuning constants, plans,
   the splitter;
1. kernels (``algorithms``), the registry, the workspace arena;
2. the execution layer, which prepares and launches a call from its plan;
3. the cost model and the scheduler;
4. the public API and the layer object;
5. the package namespace, the command line and the benchmarks.
"""

from __future__ import annotations

import ast
import concurrent.futures
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import lowmem_numba

PACKAGE = Path(lowmem_numba.__file__).parent

LAYERS = {
    0: ["_version", "_compile", "_tuning", "_caches", "_plan", "_split", "_kernel_geometry", "_microkernel",
        "_units", "_geometry", "_layout", "_blas", "_threads", "_cache", "_memo", "_timing"],
    1: ["_registry", "_workspace", "_algorithms"],
    2: ["_execute"],
    3: ["_costmodel", "_scheduler"],
    4: ["_api", "_layer"],
    5: ["__init__", "__main__", "bench", "dask"],
}
RANK = {name: rank for rank, names in LAYERS.items() for name in names}


def _modules():
    """Every module of the package as (dotted name, path)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts), path


def _top(dotted: str) -> str:
    """The layer key of a module: its first component under the package."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(dotted: str, path: Path):
    """Package modules ``dotted`` imports, anywhere in its source."""
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("lowmem_numba") and any(
                    target == name for name, _ in _modules()):
                yield target


def test_every_module_has_a_layer():
    unknown = sorted({_top(name) for name, _ in _modules()} - set(RANK))
    assert not unknown, f"modules without a layer in this test: {unknown}"


def test_no_module_imports_a_higher_layer():
    upward = []
    for name, path in _modules():
        for target in _imports(name, path):
            if RANK[_top(target)] > RANK[_top(name)]:
                upward.append(f"{name} (layer {RANK[_top(name)]}) imports {target} "
                              f"(layer {RANK[_top(target)]})")
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = {name: set(_imports(name, path)) - {name} for name, path in _modules()}
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if nxt.startswith(node + "."):
                continue  # a package importing its own submodules is no cycle
            if state.get(nxt) == "open":
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_every_module_imports_first_in_a_fresh_process():
    # Each module imported first, on its own: a cycle shows as an ImportError
    # on a partially initialised module.
    names = [name for name, _ in _modules() if not name.endswith("__main__")]
    if importlib.util.find_spec("dask") is None:  # the optional extra: its module needs it
        names.remove("lowmem_numba.dask")

    def run(name):
        code = f"import importlib; importlib.import_module({name!r})"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        return name, done.returncode, done.stderr.strip().splitlines()[-1:] or [""]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        failures = [f"{name}: {err[0]}" for name, code, err in pool.map(run, names) if code]
    assert not failures, "\n".join(failures)
