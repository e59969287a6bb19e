"""Smoke test of the benchmark runner: ``benchmarks/run.py --quick`` without the peer.

Timings are never asserted (speed is measured in benchmarks/, not in tests); this checks that every
area runs end to end on this checkout and reports its numbers in the summary. Marked slow (about a
minute: a dozen fresh processes, each importing JAX and compiling), so it runs in CI's slow pass
and keeps the default suite under its 10-minute budget.
"""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--no-peer",
                           "--out-dir", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_quick_run(quick_run):
    """One test over the one quick run: with xdist's worksteal two tests of this module could land on two
    workers, each running the module fixture (measured in CI: the run twice, 68 s and 58 s)."""
    _reports_every_area(quick_run)
    _area_files_hold_raw_numbers(quick_run)


def _reports_every_area(quick_run):
    summary = json.loads((quick_run / "summary_cpu.json").read_text())
    assert summary["failed"] == {} and summary["quick"] and not summary["peer"]
    areas = {r["area"] for r in summary["rows"]}
    expected = {"kernels", "empirical", "ensembles", "import", "compile"}
    if (ROOT / "benchmarks" / "dmft.py").exists():
        expected.add("dmft")
    assert areas == expected
    for r in summary["rows"]:
        assert ("not run" in r["workload"] and r["met"] is False) if r["owidth_s"] is None else r["owidth_s"] > 0, r
    # without the peer there is no ratio to judge for the peer areas; the others are judged
    judged = {r["area"]: r["met"] for r in summary["rows"]}
    assert judged["kernels"] is None and judged["empirical"] is None
    assert isinstance(judged["import"], bool) and isinstance(judged["ensembles"], bool)
    md = (quick_run / "summary_cpu.md").read_text()
    assert md.count("\n| ") == len(summary["rows"]) + 1  # header + one line per row


def _area_files_hold_raw_numbers(quick_run):
    kernels = json.loads((quick_run / "kernels_cpu.json").read_text())
    assert kernels["peer"] is None and kernels["config"]["quick"]
    for r in kernels["results"]:
        stats = r["owidth"]
        assert 0 < stats["run_s_min"] <= stats["run_s"] and stats["compile_s"] > 0
    empirical = json.loads((quick_run / "empirical_ntk_cpu.json").read_text())
    assert [list(r["owidth"]) for r in empirical["results"]] == [["auto"]]
    compiles = json.loads((quick_run / "compile_cpu.json").read_text())["rows"]
    assert [(r["kind"], r["depth"]) for r in compiles] == [("kernel", 100), ("grad", 100)]
    assert all(r["compile_s"] > 0 and r["run_s"] > 0 for r in compiles)
    imports = json.loads((quick_run / "import_cpu.json").read_text())["import"]
    assert set(imports) == {"jax", "owidth"} and all(len(v["times_s"]) == 2 for v in imports.values())
