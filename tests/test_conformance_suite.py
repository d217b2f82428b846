"""The conformance suite itself: the NumPy backend passes, the command line and the pytest
plugin fail hard without a loadable backend, the options' ``HCREF_*`` twins work, skip files
apply, the JSON report is complete, and importing the suite loads no ML framework."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hcref.interface import OP_NAMES
from hcref.tolerances import FORWARD, GRADIENT, tolerance

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("torch", "jax", "jaxlib", "flax", "mlx", "tensorflow")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCREF_")}
    return {**env, **extra}


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False, cwd=ROOT,
                          env=env or clean_env(), timeout=600)


def test_numpy_backend_passes(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    done = run(["-m", "hcref_conformance", "--backend", "hcref_numpy", "--max-examples", "5",
                "--report-json", str(report), "-q"])
    assert done.returncode == 0, done.stdout[-4000:]
    data = json.loads(report.read_text())
    assert data["totals"]["failed"] == 0 and data["totals"]["passed"] > 300
    assert data["name"] == "hcref_numpy" and data["dtypes"] == ["float64", "float32", "float16"]
    rows = {(r["op"], r["dtype"]) for r in data["rows"]}
    for op in (*OP_NAMES, "hc_site", "fc_site", "hc_network", "fc_network", "hc_prenorm", "fc_prenorm"):
        for dtype in data["dtypes"]:
            assert (op, dtype) in rows
    assert all(r["status"] == "pass" and r["worst_error_over_tolerance"] <= 1 for r in data["rows"])
    assert "hcref conformance summary" in done.stdout and "worst err/tol" in done.stdout


def test_no_backend_is_a_hard_error() -> None:
    done = run(["-m", "hcref_conformance"])
    assert done.returncode != 0
    assert "no backend given" in done.stderr
    done = run(["-m", "hcref_conformance", "--all", "--backend", "hcref_numpy"])
    assert done.returncode == 2 and "exclude each other" in done.stderr


@pytest.mark.parametrize("spec", ["no_such_backend_module", "hcref_numpy:no_such_attr", "hcref:__version__"])
def test_unloadable_backend_is_a_hard_error(spec: str) -> None:
    done = run(["-m", "hcref_conformance", "--backend", spec])
    assert done.returncode == 4, done.stdout + done.stderr
    assert spec in done.stderr and "hcref conformance" in done.stderr


def test_plugin_without_backend_is_a_usage_error() -> None:
    done = run(["-m", "pytest", "-p", "hcref_conformance.plugin", "--pyargs", "hcref_conformance", "-q"])
    assert done.returncode == 4
    assert "no backend given" in done.stderr


def test_plugin_reads_environment_twins(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    env = clean_env(HCREF_BACKEND="hcref_numpy", HCREF_DTYPES="float32", HCREF_MAX_EXAMPLES="2",
                    HCREF_SEED="7", HCREF_REPORT_JSON=str(report))
    done = run(["-m", "pytest", "-p", "hcref_conformance.plugin", "--pyargs", "hcref_conformance",
                "-k", "expand or reduce"], env)
    assert done.returncode == 0, done.stdout[-3000:]
    data = json.loads(report.read_text())
    assert data["dtypes"] == ["float32"] and data["max_examples"] == 2 and data["seed"] == 7
    assert "HCREF_BACKEND=hcref_numpy" in done.stdout  # the report header lists the environment


def test_skips_file_and_unsupported_dtype(tmp_path: Path) -> None:
    skips = tmp_path / "skips.txt"
    skips.write_text("# known problems\ntests_forward.py::test_forward[float64-hc_coeffs]\ntest_vjp_special\n"
                     "test_does_not_exist\n")
    report = tmp_path / "r.json"
    done = run(["-m", "hcref_conformance", "--backend", "hcref_numpy", "--dtypes", "float64,bfloat16",
                "--max-examples", "2", "--skips-file", str(skips), "--report-json", str(report), "-q",
                "--", "-k", "forward or vjp"])
    assert done.returncode == 0, done.stdout[-3000:]
    data = json.loads(report.read_text())
    assert data["unsupported_dtypes"] == ["bfloat16"]
    assert data["totals"]["skipped"] > len(OP_NAMES)
    assert "test_does_not_exist" in done.stdout + done.stderr  # a stale entry is reported


def test_run_api_takes_a_backend_object(tmp_path: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests'); import hcref_conformance, mutants; "
        "sys.exit(hcref_conformance.run(mutants.reduce_mean, dtypes=['float64'], max_examples=2, "
        "pytest_args=['-q', '--no-shrink', '-k', 'reduce']))"
    )
    done = run(["-c", code])
    assert done.returncode == 1, done.stdout[-3000:]
    assert "op reduce " in done.stdout


@pytest.mark.parametrize("module", ["hcref_conformance", "hcref_conformance.plugin", "hcref_conformance.cli"])
def test_import_loads_no_framework(module: str) -> None:
    code = (
        f"import json, sys, importlib; importlib.import_module({module!r}); "
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    done = run(["-c", code])
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert not loaded & set(FRAMEWORKS), f"import {module} loaded {sorted(loaded & set(FRAMEWORKS))}"


def test_tolerance_table() -> None:
    for table in (FORWARD, GRADIENT):
        assert list(table) == ["float64", "float32", "bfloat16", "float16"]
        assert table["float64"].rtol < table["float32"].rtol < table["float16"].rtol < table["bfloat16"].rtol
    for dtype in FORWARD:
        assert GRADIENT[dtype].rtol >= FORWARD[dtype].rtol
        assert tolerance(dtype, "forward", contraction=64).rtol == pytest.approx(2 * FORWARD[dtype].rtol)
        assert tolerance(dtype, composite=True).rtol > FORWARD[dtype].rtol
    with pytest.raises(ValueError, match="dtype"):
        tolerance("int8")
    with pytest.raises(ValueError, match="kind"):
        tolerance("float32", "backward")
