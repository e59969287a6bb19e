"""The notebooks in notebooks/ run top to bottom (stored without outputs; public API only)."""

import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 4
    assert FAST_NOTEBOOKS <= {p.stem for p in NOTEBOOKS}


# Each notebook starts its own kernel and compiles afresh (20-120 s each on 2 cores, 02 and 05 the
# dearest; the quickstart ~25 s): all of them run with the slow tests (.ci/run runs both suites).
FAST_NOTEBOOKS: set[str] = set()


@pytest.mark.parametrize("path", [p if p.stem in FAST_NOTEBOOKS else pytest.param(p, marks=pytest.mark.slow)
                                  for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "store notebooks without outputs"
    source = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert "owidth." not in source.replace("import owidth as ow", ""), "notebooks use the public API (ow.*) only"
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("JAX_ENABLE_X64", raising=False)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()
