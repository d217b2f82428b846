"""The conformance suite catches broken backends: every mutant in ``tests/mutants`` fails,
a failure names the broken op (with a repro snippet) and, where a named property covers the
mistake, that property departs; the exact D12 port the newer mutants start from passes.

Each mutant runs in a fresh interpreter (``python -m hcref_conformance``) in the dtype that
shows its mistake (float64 for most), few examples and no shrinking.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from mutants import MUTANTS


def run_suite(backend: str, tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run the suite on ``backend`` in a subprocess; return the process and its JSON report."""
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env = {k: v for k, v in env.items() if not k.startswith("HCREF_")}
    done = subprocess.run(
        [sys.executable, "-m", "hcref_conformance", "--backend", backend, "--report-json", str(report), "-q",
         *options, "--", "-p", "no:warnings"],
        capture_output=True, text=True, check=False, env=env, cwd=TESTS.parent, timeout=600,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return done, data


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught(name: str, tmp_path: Path) -> None:
    mutant = MUTANTS[name]
    done, report = run_suite(f"mutants:{name}", tmp_path, "--dtypes", mutant.dtypes, "--max-examples", "4",
                             "--no-shrink")
    assert done.returncode == 1, f"{name} ({mutant.description}) was not caught:\n{done.stdout[-3000:]}"
    assert report["totals"]["failed"] > 0
    blamed = [f for f in report["failures"] if f["op"] == mutant.broken_op]
    assert blamed, (f"{name}: no failure names {mutant.broken_op}; failing ops: "
                    f"{sorted({f['op'] for f in report['failures']})}")
    message = blamed[0]["message"]
    assert f"op {mutant.broken_op} " in message, message
    assert f"on backend {mutant.name} " in message.splitlines()[0]
    assert f"dtype {mutant.dtypes}, device cpu" in message and "inputs: " in message
    if "max abs error" in message:  # a value mismatch: the worst index and the tolerance in force
        assert "at index" in message and "max rel error" in message and "tolerance: rtol" in message
    assert f"load_backend('mutants:{name}')" in message, "the repro snippet does not load the backend under test"
    assert f"op {mutant.broken_op}" in done.stdout, "the terminal output does not name the broken op"
    row = [r for r in report["rows"] if r["op"] == mutant.broken_op and r["dtype"] == mutant.dtypes]
    assert row and row[0]["status"] == "FAIL"
    if mutant.broken_property:
        verdicts = {p["id"]: p["verdict"] for p in report["properties"]}
        assert verdicts[mutant.broken_property] in ("departs", "error"), verdicts
    assert "Falsifying example" not in done.stdout and "Recorder(" not in done.stdout  # no fixture reprs


def test_exact_port_passes_the_new_cases(tmp_path: Path) -> None:
    """The ideal D12 port the newer mutants start from fails none of the cases they are caught by."""
    done, report = run_suite("mutants:exact", tmp_path, "--dtypes", "float64,float32,float16,mixed",
                             "--max-examples", "3", "--no-shrink")
    assert done.returncode == 0, done.stdout[-6000:]
    assert all(p["verdict"] in ("holds", "n/a") for p in report["properties"]), report["properties"]


def test_there_are_enough_distinct_mutants() -> None:
    assert len(MUTANTS) >= 22
    assert len({m.description for m in MUTANTS.values()}) == len(MUTANTS)
    assert len({type(m) for m in MUTANTS.values()}) == len(MUTANTS)
