"""docs/from_neural_tangents.md: its python snippets run, top to bottom, in one namespace (public API only)."""

import pathlib
import re

import matplotlib
import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "from_neural_tangents.md"


@pytest.mark.slow  # ~16 s: every snippet compiles its kernels and one Monte Carlo estimate
def test_migration_snippets_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 4
    source = "\n".join(blocks)
    assert "owidth." not in source.replace("import owidth as ow", ""), "snippets use the public API (ow.*) only"
    matplotlib.use("Agg")
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}[python block {i}]", "exec"), namespace)  # noqa: S102
