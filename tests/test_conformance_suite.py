"""The conformance suite itself: the NumPy backend passes, the command line and the pytest
plugin fail hard without a loadable backend, the options' ``HCREF_*`` twins work, skip patterns
apply, the JSON and Markdown reports are complete and honest (worst error over failing examples
too, every distinct failure, n/a for what a port does not declare), per-op failures come before
the composites they break, the main job honours its report paths and shows progress, a missing
pytest or hypothesis gives a friendly message, and importing the suite loads no ML framework."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hcref.interface import OP_NAMES
from hcref.tolerances import FORWARD, GRADIENT, tolerance

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
FRAMEWORKS = ("torch", "jax", "jaxlib", "flax", "mlx", "tensorflow")
COMPOSITES = ("hc_site", "fc_site", "hc_network", "fc_network", "hc_prenorm", "fc_prenorm")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCREF_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False, cwd=cwd,
                          env=env or clean_env(), timeout=900)


def suite(backend: str, tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    report = tmp_path / "r.json"
    done = run(["-m", "hcref_conformance", "--backend", backend, "--report-json", str(report), "-q", *options])
    return done, (json.loads(report.read_text()) if report.exists() else {})


def test_numpy_backend_passes(tmp_path: Path) -> None:
    done, data = suite("hcref_numpy", tmp_path, "--dtypes", "float64,float32", "--profile", "quick")
    assert done.returncode == 0, done.stdout[-6000:]
    assert data["totals"]["failed"] == 0 and data["totals"]["passed"] > 900
    assert data["name"] == "hcref_numpy" and data["dtypes"] == ["float64", "float32"] and data["profile"] == "quick"
    rows = {(r["op"], r["dtype"]) for r in data["rows"]}
    for op in (*OP_NAMES, *COMPOSITES):
        for dtype in data["dtypes"]:
            assert (op, dtype) in rows
    assert all(r["status"] in ("pass", "n/a") and r["worst_error_over_tolerance"] <= 1 for r in data["rows"])
    assert all(p["verdict"] in ("holds", "n/a") for p in data["properties"]) and len(data["properties"]) >= 20
    assert "hcref conformance summary" in done.stdout and "worst err/tol" in done.stdout
    assert "chained" in data["composite_vjp"]  # hcref_numpy's tape cannot differentiate the sublayer
    markdown = (tmp_path / "r.md").read_text()
    assert "## Summary" in markdown and "## Named properties" in markdown and "hcref_numpy" in markdown


def test_no_backend_is_a_hard_error() -> None:
    done = run(["-m", "hcref_conformance"])
    assert done.returncode != 0
    assert "no backend given" in done.stderr
    done = run(["-m", "hcref_conformance", "--all", "--backend", "hcref_numpy"])
    assert done.returncode == 2 and "exclude each other" in done.stderr


@pytest.mark.parametrize("spec", ["no_such_backend_module", "hcref_numpy:no_such_attr", "hcref:__version__",
                                  "tests/no_such_file.py:port"])
def test_unloadable_backend_is_a_hard_error(spec: str) -> None:
    done = run(["-m", "hcref_conformance", "--backend", spec])
    assert done.returncode == 4, done.stdout + done.stderr
    assert spec in done.stderr and "hcref conformance" in done.stderr


def test_plugin_without_backend_is_a_usage_error() -> None:
    done = run(["-m", "pytest", "-p", "hcref_conformance.plugin", "--pyargs", "hcref_conformance", "-q"])
    assert done.returncode == 4
    assert "no backend given" in done.stderr


def test_missing_pytest_or_hypothesis_names_the_extra() -> None:
    for module in ("pytest", "hypothesis"):
        code = (f"import sys; sys.modules[{module!r}] = None\n"
                "from hcref_conformance.cli import main\n"
                "sys.exit(main(['--backend', 'hcref_numpy']))")
        done = run(["-c", code])
        assert done.returncode == 2, done.stderr
        assert module in done.stderr and 'pip install "hcref[conformance]"' in done.stderr
        assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr
    code = ("import sys; sys.modules['hypothesis'] = None\nimport hcref_conformance\n"
            "try:\n    hcref_conformance.run('hcref_numpy')\nexcept ImportError as e:\n    print('ImportError:', e)")
    done = run(["-c", code])
    assert 'ImportError: the hcref conformance suite needs hypothesis: pip install "hcref[conformance]"' in done.stdout


def test_plugin_without_hypothesis_names_the_extra_and_main_job_needs_the_framework() -> None:
    """The pytest plugin loaded without hypothesis names the extra; ``--all`` counts a first-party
    backend as installed only when its framework is (``hcref_torch`` without torch is not)."""
    done = run(["-c", "import sys; sys.modules['hypothesis'] = None\nimport hcref_conformance.plugin"])
    assert 'needs hypothesis: pip install "hcref[conformance]"' in done.stderr
    code = ("import sys; sys.modules['torch'] = None\nfrom hcref_conformance.loading import is_installed\n"
            "print(is_installed('hcref_torch'), is_installed('hcref_numpy'), is_installed('no_such_backend'))")
    assert run(["-c", code]).stdout.split() == ["False", "True", "False"]


def test_plugin_reads_environment_twins(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    progress = tmp_path / "progress"
    env = clean_env(HCREF_BACKEND="hcref_numpy", HCREF_DTYPES="float32", HCREF_MAX_EXAMPLES="2",
                    HCREF_SEED="7", HCREF_REPORT_JSON=str(report), HCREF_PROFILE="quick",
                    HCREF_PROGRESS_FILE=str(progress))
    done = run(["-m", "pytest", "-p", "hcref_conformance.plugin", "--pyargs", "hcref_conformance",
                "-k", "expand or reduce"], env)
    assert done.returncode == 0, done.stdout[-3000:]
    data = json.loads(report.read_text())
    assert data["dtypes"] == ["float32"] and data["max_examples"] == 2 and data["seed"] == 7
    assert "HCREF_BACKEND=hcref_numpy" in done.stdout  # the report header lists the environment
    done_count, total = (int(v) for v in progress.read_text().split())
    assert done_count == total > 0  # the progress the main job shows
    assert (tmp_path / "r.md").exists()


def test_only_unsupported_dtypes_is_a_usage_error() -> None:
    """Asking only for dtypes the port lacks would check nothing: an error (exit 4), not a pass."""
    done = subprocess.run([sys.executable, "-m", "hcref_conformance", "--backend", "hcref_numpy", "--dtypes",
                           "bfloat16", "-q"], capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    assert "nothing would be checked" in done.stdout + done.stderr


def test_skip_patterns_and_unsupported_dtype(tmp_path: Path) -> None:
    skips = tmp_path / "skips.txt"
    skips.write_text("# known problems, by op, check and dtype\n"
                     "hc_coeffs  forward  float64   # a reason that is kept\n"
                     "fc_*/vjp/*\n"
                     "hc_site composite float64\n"
                     "tests_forward.py::test_forward[float64-expand]   # an old test-id prefix still works\n"
                     "no_such_op forward float64\n")
    done, data = suite("hcref_numpy", tmp_path, "--dtypes", "float64,bfloat16", "--max-examples", "2",
                       "--skips-file", str(skips), "--", "-k", "forward or vjp or composite")
    assert done.returncode == 0, done.stdout[-3000:]
    assert data["unsupported_dtypes"] == ["bfloat16"]
    cells = {(r["op"], r["dtype"]): r["checks"] for r in data["rows"]}
    assert cells[("hc_coeffs", "float64")]["forward"]["status"] == "skip"
    assert cells[("hc_coeffs", "float64")]["vjp"]["status"] == "pass"
    assert all(cells[(op, "float64")]["vjp"]["status"] == "skip" for op in ("fc_coeffs", "fc_width", "fc_depth"))
    assert cells[("hc_site", "float64")]["composite"]["status"] == "skip"
    assert cells[("hc_network", "float64")]["composite"]["status"] == "pass"
    assert cells[("expand", "float64")]["forward"]["skipped"] == 1
    assert any("a reason that is kept" in reason for reason in data["skips"])
    assert "no_such_op forward float64" in done.stdout + done.stderr  # a stale entry is reported


def test_run_api_takes_a_backend_object(tmp_path: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests'); import hcref_conformance, mutants; "
        "sys.exit(hcref_conformance.run(mutants.reduce_mean, dtypes=['float64'], max_examples=2, "
        "pytest_args=['-q', '--no-shrink', '-k', 'reduce']))"
    )
    done = run(["-c", code])
    assert done.returncode == 1, done.stdout[-3000:]
    assert "op reduce " in done.stdout


def test_report_keeps_failing_examples_and_every_distinct_failure(tmp_path: Path) -> None:
    """A port whose hc_depth errs by one part in 1e9 everywhere and by O(1) for more than 4 streams:
    both failures are kept (not only one counterexample per test), the worst error/tolerance counts the
    failing examples, and the per-op failures come before the composite failures they cause."""
    port = tmp_path / "two_bugs.py"
    port.write_text(textwrap.dedent("""
        import numpy as np
        import hcref
        from hcref_numpy import NumpyBackend, _Record
        from hcref.optable import OPS

        class TwoBugs(NumpyBackend):
            name = "two_bugs"

            def hc_depth(self, y, H_res, beta):
                out = hcref.hc_depth(y, H_res, beta) * (1 + 1e-9)
                if H_res.shape[-2] > 4:
                    out = out + 1.0
                if self._tape is not None:
                    self._tape.append(_Record(OPS["hc_depth"], (y, H_res, beta), {}, (out,)))
                return out

        port = TwoBugs()
    """))
    done, data = suite(f"{port}:port", tmp_path, "--dtypes", "float64", "--profile", "quick")
    assert done.returncode == 1
    forward = [f for f in data["failures"] if f["op"] == "hc_depth" and f["check"] == "forward"]
    assert {f["magnitude"] for f in forward} >= {"tiny (<1e-6)", "O(1)"}, [(f["magnitude"], f["case"]) for f in forward]
    row = next(r for r in data["rows"] if r["op"] == "hc_depth" and r["dtype"] == "float64")
    assert row["status"] == "FAIL" and row["worst_error_over_tolerance"] > 1e10  # an O(1) error over 2e-14
    big = next(f for f in forward if f["magnitude"] == "O(1)")
    assert "k=5" in big["case"] or "k=6" in big["case"] or "k=8" in big["case"]  # shrunk to just above 4 streams
    assert "Recorder(" not in done.stdout and "Falsifying example" not in done.stdout  # no fixture reprs
    first_op = done.stdout.index("test_forward")
    first_composite = done.stdout.index("test_composite")
    assert first_op < first_composite  # per-op failures print before the sites they break
    assert len(done.stdout.splitlines()) < 3000


def test_undeclared_is_na_and_never_drawn(tmp_path: Path) -> None:
    """A port declaring HC only, rmsnorm only, dynamic only and no switch: everything else is n/a
    with counts, and the suite never calls it with what it does not declare (it raises if so)."""
    port = tmp_path / "narrow.py"
    port.write_text(textwrap.dedent("""
        from hcref_numpy import NumpyBackend
        from hcref.interface import Support

        class Narrow(NumpyBackend):
            name = "narrow"

            def supports(self):
                return {"families": ["hc"], "norms": ["rmsnorm"], "modes": ["dynamic"], "switches": [],
                        "max_rows": 5}

            def hc_coeffs(self, H, params, **options):
                # what the port does not declare must never reach it (a bad value may, to be rejected)
                assert options.get("norm", "layernorm") not in ("layernorm", "none"), options
                assert all(options.get(s) is not False for s in ("use_tanh", "use_norm", "use_scale")), options
                assert H.shape[-2] <= 5 or H.ndim < 2
                return super().hc_coeffs(H, params, **options)

        port = Narrow()
    """))
    done, data = suite(f"{port}:port", tmp_path, "--dtypes", "float64", "--profile", "quick")
    assert done.returncode == 0, done.stdout[-4000:]
    status = {(r["op"], r["dtype"]): r["status"] for r in data["rows"]}
    for op in ("fc_coeffs", "fc_width", "fc_depth", "fc_site", "fc_network", "fc_prenorm"):
        assert status[(op, "float64")] == "n/a", (op, status.get((op, "float64")))
    assert status[("hc_coeffs", "float64")] == "pass" and status[("hc_site", "float64")] == "pass"
    assert data["na"]["total"] > 50 and any("not declared" in reason for reason in data["na"]["reasons"])
    verdicts = {p["id"]: p["verdict"] for p in data["properties"]}
    assert all(v == "n/a" for k, v in verdicts.items() if k.startswith("fc-"))
    assert verdicts["hc-beyond-4"] == "n/a"  # max_rows 5 < 8
    assert "n/a (not declared by the port" in done.stdout


def test_invalid_declaration_is_a_usage_error(tmp_path: Path) -> None:
    port = tmp_path / "bad_support.py"
    port.write_text("from hcref_numpy import NumpyBackend\n\n"
                    "class Bad(NumpyBackend):\n    def supports(self):\n        return {'norms': ['batchnorm']}\n\n"
                    "port = Bad()\n")
    done = run(["-m", "hcref_conformance", "--backend", f"{port}:port"])
    assert done.returncode == 4 and "norms" in done.stderr and "batchnorm" in done.stderr


def test_main_job_honours_report_paths(tmp_path: Path) -> None:
    report = tmp_path / "out" / "all.json"
    report.parent.mkdir()
    done = run(["-m", "hcref_conformance", "--all", "--only", "hcref_numpy", "--dtypes", "float64",
                "--report-json", str(report)], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["summary"] == [{"backend": "hcref_numpy", "status": "passed", "exitstatus": 0,
                                "seconds": data["summary"][0]["seconds"]}]
    assert data["backends"]["hcref_numpy"]["profile"] == "quick"  # the main job's default profile
    markdown = report.with_suffix(".md").read_text()
    assert "hcref_numpy" in markdown and "Named properties" in markdown
    assert "started hcref_numpy" in done.stdout and f"reports: {report}" in done.stdout
    assert not (tmp_path / "conformance-report.json").exists()
    done = run(["-m", "hcref_conformance", "--all", "--only", "hcref_numpy", "--dtypes", "float64", "--", "-k",
                "expand"], cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "conformance-report.json").exists()
    assert (tmp_path / "conformance-report.md").exists()


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
        assert table["float64"].rtol < table["float32"].rtol < table["float16"].rtol <= table["bfloat16"].rtol
    for dtype in FORWARD:
        assert GRADIENT[dtype].rtol >= FORWARD[dtype].rtol
        assert tolerance(dtype, "forward", contraction=64).rtol == pytest.approx(2 * FORWARD[dtype].rtol)
        assert tolerance(dtype, composite=True).rtol > FORWARD[dtype].rtol
    with pytest.raises(ValueError, match="dtype"):
        tolerance("int8")
    with pytest.raises(ValueError, match="kind"):
        tolerance("float32", "backward")
