"""The ``>>>`` examples in owidth's docstrings run, one test per docstring, under the strict conftest
(float64, rank promotion raising, warnings as errors).

Every owidth module is searched but the deprecated ``owidth.spec*`` shims (importing them warns) and
``__main__`` entry points. Examples print shapes or rounded values so that they read the same in
float32 and float64 and on any platform; ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE`` are on.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import numpy as np
import pytest

import owidth

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names() -> list[str]:
    names = ["owidth"]
    for info in pkgutil.walk_packages(owidth.__path__, prefix="owidth."):
        last = info.name.rsplit(".", 1)[-1]
        if last.startswith("spec") or last == "__main__" or info.name == "owidth._deprecated":
            continue
        names.append(info.name)
    return sorted(names)


def _doctests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    out = []
    for name in _module_names():
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            if test.examples:
                out.append(pytest.param(test, id=test.name))
    return out


DOCTESTS = _doctests()


def test_docstrings_have_examples():
    """The collector sees the examples (so the test below cannot pass on an empty list)."""
    names = {p.values[0].name for p in DOCTESTS}
    assert {"owidth._kernel.kernel", "owidth._caches.clear_caches"} <= names


@pytest.mark.slow  # ~37 s for the ~80 docstrings, each compiling its example: with the slow tests in CI
@pytest.mark.parametrize("test", DOCTESTS)
def test_docstring_examples(test):
    np_options = np.get_printoptions()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    try:
        test.globs = dict(test.globs)
        result = runner.run(test, out=report.append, clear_globs=True)
    finally:
        np.set_printoptions(**np_options)
    assert result.failed == 0, "".join(report)
