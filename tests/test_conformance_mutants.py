"""The conformance suite catches broken backends: every mutant in ``tests/mutants`` fails,
a failure names the broken op (with a repro snippet) and, where a named property covers the
mistake, that property departs; the exact D12 port the newer mutants start from passes.

Every mutant runs through ``hcref_conformance.run`` in one interpreter (started once), in the
dtype that shows its mistake (float64 for most), with the quick profile, few examples, no
shrinking, and only the checks of its own family (HC/FC or mHC, the ends included; the others
are skipped by pattern). The exact port runs everything.
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

RUNNER = """
import json, sys
sys.path.insert(0, {tests!r})
import hcref_conformance, mutants
codes = {{}}
OTHER = {{"mhc": ["hc_* * *", "fc_* * *", "hc-* * *", "fc-* * *", "frac_* * *"],
          "hc,fc": ["mhc_* * *", "sinkhorn * *", "mhc-* * *"]}}
for name in {names!r}:
    mutant = getattr(mutants, name)
    print(f"=== MUTANT {{name}} ===", flush=True)
    skips = {{p: "another family than the mutant's" for p in OTHER.get(getattr(mutant, "family", ""), [])}}
    codes[name] = hcref_conformance.run(
        f"mutants:{{name}}", dtypes=mutant.dtypes.split(","), profile="quick", max_examples=4, skips=skips,
        report_json=f"{{sys.argv[1]}}/{{name}}.json", pytest_args=["-q", "--no-shrink", "-p", "no:warnings"])
    print(f"=== END {{name}} ===", flush=True)
json.dump(codes, open(f"{{sys.argv[1]}}/codes.json", "w"))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, dict]]:
    """Every mutant (and the exact port) through the suite, one interpreter for all (startup once):
    ``{name: (exit status, its terminal output, its JSON report)}``."""
    out = tmp_path_factory.mktemp("mutants")
    names = sorted(MUTANTS) + ["exact"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCREF_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", RUNNER.format(tests=str(TESTS), names=names), str(out)],
                          capture_output=True, text=True, check=False, env=env, cwd=TESTS.parent, timeout=1800)
    assert (out / "codes.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    codes = json.loads((out / "codes.json").read_text())
    result = {}
    for name in names:
        text = done.stdout.split(f"=== MUTANT {name} ===", 1)[1].split(f"=== END {name} ===", 1)[0]
        report = out / f"{name}.json"
        result[name] = (codes[name], text, json.loads(report.read_text()) if report.exists() else {})
    return result


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught(name: str, runs: dict[str, tuple[int, str, dict]]) -> None:
    mutant = MUTANTS[name]
    code, stdout, report = runs[name]
    assert code == 1, f"{name} ({mutant.description}) was not caught:\n{stdout[-3000:]}"
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
    assert f"op {mutant.broken_op}" in stdout, "the terminal output does not name the broken op"
    row = [r for r in report["rows"] if r["op"] == mutant.broken_op and r["dtype"] == mutant.dtypes]
    assert row and row[0]["status"] == "FAIL"
    if mutant.broken_property:
        verdicts = {p["id"]: p["verdict"] for p in report["properties"]}
        assert verdicts[mutant.broken_property] in ("departs", "error"), verdicts
    assert "Falsifying example" not in stdout and "Recorder(" not in stdout  # no fixture reprs


def test_exact_port_passes_the_new_cases(runs: dict[str, tuple[int, str, dict]]) -> None:
    """The ideal D12 port the newer mutants start from fails none of the cases they are caught by."""
    code, stdout, report = runs["exact"]
    assert code == 0, stdout[-6000:]
    assert report["dtypes"] == ["float64", "float32", "float16"]
    assert all(p["verdict"] in ("holds", "n/a") for p in report["properties"]), report["properties"]
    assert {p["verdict"] for p in report["properties"] if p["id"].endswith("-mixed")} == {"holds"}


def test_there_are_enough_distinct_mutants() -> None:
    assert len(MUTANTS) >= 30
    assert sum(m.family == "mhc" for m in MUTANTS.values()) >= 8
    assert len({m.description for m in MUTANTS.values()}) == len(MUTANTS)
    assert len({type(m) for m in MUTANTS.values()}) == len(MUTANTS)
