"""The package's import structure: no cycles, kernels independent of layers, private names stay private.

Read from the source (``ast``), not by importing, so that imports inside functions count too: a
lazy import that closes a cycle is still a cycle in the design.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "owidth"


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str):
    """(target module, imported names or None, node) for every import statement of module ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield base, [a.name for a in node.names], node


def _edges(name: str) -> set[str]:
    """owidth modules that ``name`` imports. ``from P import m`` with ``P.m`` a module is an edge to ``P.m``;
    the root package (the public facade, which experiments import as users do) is left out, and so is
    the implicit import of a module's parent packages (Python runs a package's ``__init__`` first)."""
    out = set()
    for target, names, _ in _imports(name):
        if not target.startswith("owidth"):
            continue
        for n in names or [None]:
            full = f"{target}.{n}" if n and f"{target}.{n}" in MODULES else target
            if full in MODULES and full != "owidth" and full != name:
                out.add(full)
    return out


GRAPH = {name: _edges(name) for name in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    """The reader sees known edges (so that the tests below cannot pass on an empty graph)."""
    assert "owidth.layers._base" in GRAPH["owidth.layers.dense"]
    assert "owidth.kernels.quadrature" in GRAPH["owidth.layers.activations"]
    assert "owidth.flax_bridge" in GRAPH["owidth._finite"]
    assert len(GRAPH) > 40


def test_no_import_cycle():
    assert _cycles() == []


def test_cycle_detector_finds_a_cycle():
    GRAPH["owidth.kernels.dual"].add("owidth.layers.activations")  # activations imports dual
    try:
        assert any("owidth.kernels.dual" in c for c in _cycles())
    finally:
        GRAPH["owidth.kernels.dual"].discard("owidth.layers.activations")


def test_kernels_are_pure_mathematics():
    """``owidth.kernels`` imports no layer module, no finite-network or training module."""
    for name, edges in GRAPH.items():
        if name.startswith("owidth.kernels"):
            bad = {e for e in edges if not e.startswith(("owidth.kernels", "owidth._checks", "owidth._progress"))}
            assert not bad, f"{name} imports {sorted(bad)}"


def _private_uses(name: str) -> list[str]:
    """Private names of other modules that ``name`` uses: ``from M import _x`` (unless ``M._x`` is a
    submodule of a package that ``name`` belongs to) and ``m._x`` attribute reads on an imported module."""
    bad, aliases = [], {}
    for target, names, node in _imports(name):
        if not target.startswith("owidth"):
            continue
        if names is None:
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
            continue
        for alias in node.names:
            n = alias.name
            full = f"{target}.{n}"
            if full in MODULES:
                aliases[alias.asname or n] = full
                if n.startswith("_") and name != target and not name.startswith(target + "."):
                    bad.append(f"from {target} import {n}")
            elif n.startswith("_") and target != name:
                bad.append(f"from {target} import {n}")
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            attr = node.attr
            if attr.startswith("_") and not attr.startswith("__") and f"{aliases[node.value.id]}.{attr}" not in MODULES:
                bad.append(f"{node.value.id}.{attr}")
    return bad


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_names_across_modules(name):
    """Modules talk through each other's public (``__all__``) names; private modules (``_base``, ``_checks``)
    are the package's internal API and are imported by their public names."""
    assert _private_uses(name) == []


def test_private_name_detector_works(tmp_path, monkeypatch):
    path = tmp_path / "probe.py"
    path.write_text("from owidth.kernels.quadrature import _counts\nfrom owidth.kernels import dual\ndual._x\n")
    monkeypatch.setitem(MODULES, "owidth.probe", path)
    assert _private_uses("owidth.probe") == ["from owidth.kernels.quadrature import _counts", "dual._x"]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith("__main__")))
def test_every_module_declares_all(name):
    tree = ast.parse(MODULES[name].read_text())
    declared = any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
                   for node in tree.body)
    assert declared or MODULES[name].stem in {"spec", "spec_quadrature", "spec_norm", "spec_seq", "spec_spatial"}, \
        f"{name} has no __all__"
