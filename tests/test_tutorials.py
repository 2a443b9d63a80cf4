"""The tutorials run top to bottom, and the committed notebooks match their sources.

Every ``tutorials/NN_*.ipynb`` is executed with ``nbclient`` on a kernel of the current
interpreter, with ``CAPTUM_CLIP_TUTORIAL_FAST=1`` (the notebooks shrink their sizes); a
cell that raises fails the test. The ``.ipynb`` files are committed without outputs and
must hold exactly the cells of their jupytext ``.py`` source (regenerate with
``jupytext --to ipynb tutorials/*.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
SOURCES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 900  # seconds per cell: a guard against hangs, not a speed claim


def _ids(path: Path) -> str:
    return path.stem


def test_every_source_has_a_notebook():
    assert len(SOURCES) == 8, [p.name for p in SOURCES]
    assert [p.stem for p in SOURCES] == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a tutorial without code cells"
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [], f"code cell {i} has outputs"
        assert cell.get("execution_count") is None, f"code cell {i} has an execution count"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_in_sync_with_source(path):
    jupytext = pytest.importorskip("jupytext")
    source = jupytext.read(path.with_suffix(".py"))
    nb = nbformat.read(path, as_version=4)
    expected = [(c.cell_type, c.source) for c in source.cells]
    got = [(c.cell_type, c.source) for c in nb.cells]
    assert got == expected, (
        f"{path.name} is out of sync with {path.with_suffix('.py').name}; run "
        "`jupytext --to ipynb tutorials/*.py`"
    )
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "CAPTUM_CLIP_TUTORIAL_FAST" in text, "the notebook must read the fast-mode switch"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.manager import KernelManager

    monkeypatch.setenv("CAPTUM_CLIP_TUTORIAL_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the kernel is a subprocess: no socket guard
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="python3")
    km.kernel_spec.argv[0] = sys.executable  # this interpreter, whatever the kernelspec says
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError (with the traceback) if a cell fails
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "not every cell ran"
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    printed = "".join(
        o.get("text", "") for c in code for o in c.outputs if o.get("output_type") == "stream"
    )
    assert printed.strip(), "the tutorial printed no numbers"
    figures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert figures, "the tutorial's figures were not rendered"
