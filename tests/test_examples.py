"""The example notebooks and the quickstart script run top to bottom.

Notebooks run without Jupyter: their code cells are executed in order in one
namespace, under matplotlib's non-interactive Agg backend, and the figures of
each cell are drawn at its end (as the inline backend would), so plotting
errors surface too.  The notebooks assert their own results.
"""

from __future__ import annotations

import importlib.util
import json
import linecache
import subprocess
import sys
from pathlib import Path

import numba
import pytest

import lowmem_numba as ln

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOK_NAMES = ("01_algorithms.ipynb", "02_memory_vs_speed.ipynb", "03_scheduler.ipynb")


def load(name):
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def code_cells(notebook):
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def run_notebook(name):
    """Execute the code cells of ``name`` in order in one fresh namespace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    namespace = {"__name__": "__main__"}
    for index, source in enumerate(code_cells(load(name))):
        filename = f"<{name} code cell {index}>"
        # Lets tracebacks quote the failing cell's lines.
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        try:
            exec(compile(source, filename, "exec"), namespace)
            for number in plt.get_fignums():
                plt.figure(number).canvas.draw()
        finally:
            plt.close("all")


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_is_stored_without_outputs(name):
    notebook = load(name)
    assert notebook["nbformat"] == 4
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert cells
    for cell in cells:
        assert cell["outputs"] == [] and cell["execution_count"] is None


def test_notebooks_match_their_source():
    spec = importlib.util.spec_from_file_location("make_notebooks", EXAMPLES / "make_notebooks.py")
    make_notebooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_notebooks)
    assert tuple(make_notebooks.NOTEBOOKS) == NOTEBOOK_NAMES
    stale = [name for name in NOTEBOOK_NAMES
             if (EXAMPLES / name).read_text(encoding="utf-8") != make_notebooks.render(name)]
    assert not stale, f"regenerate with `python examples/make_notebooks.py`: {stale} differ from their source"


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_runs(name):
    pytest.importorskip("matplotlib")
    run_notebook(name)


def test_quickstart_runs():
    result = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    stated = ln.workspace_bytes("kn2row-aa-ab", (2, 16, 28, 28), (32, 16, 3, 3), padding=1, threads=threads)
    assert f"workspace of kn2row-aa-ab on {threads} thread(s): {stated} bytes" in result.stdout
    assert "kn2row-aa-ab supports stride 2: False" in result.stdout
