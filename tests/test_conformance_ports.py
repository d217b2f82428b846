"""Public implementations through their adapters in ``conformance/ports/``: lucidrains'
``hyper-connections`` at its pinned version keeps its known verdicts (HC agrees once its norm
epsilon is declared; the FC write and the FC initialisation depart, named by property; its mHC
runs Sinkhorn rows then columns and starts with ``h_post = 2 sigmoid(1)``), and the
module-level entry over ``hcref_torch``'s own modules reports no false failure. The adapters over
the mHC packages on PyPI are not run here (documented with their commands in
``docs/conformance-of-public-implementations.md``); their import is checked when installed.

Each port runs in a fresh interpreter through the public command, in float64 (where an
epsilon-sized departure is as visible as an O(1) one) with the quick profile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PORTS = ROOT / "conformance" / "ports"


def run_port(file: str, tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCREF_")}
    done = subprocess.run(
        [sys.executable, "-m", "hcref_conformance", "--backend", f"{PORTS / file}:port", "--profile", "quick",
         "--report-json", str(report), "-q", *options, "--", "-p", "no:warnings"],
        capture_output=True, text=True, check=False, cwd=ROOT, env=env, timeout=1200)
    return done, json.loads(report.read_text()) if report.exists() else {}


def test_lucidrains_known_verdicts(tmp_path: Path) -> None:
    pytest.importorskip("hyper_connections")
    done, report = run_port("lucidrains_hyper_connections.py", tmp_path, "--dtypes", "float64")
    assert report, done.stdout[-4000:] + done.stderr[-2000:]
    assert report["name"] == "hyper-connections" and report["version"] == "0.4.11"
    verdicts = {p["id"]: p["verdict"] for p in report["properties"]}
    # HC agrees with the specification once its RMSNorm's epsilon (0) is declared ...
    for prop in ("hc-write", "hc-mixing", "hc-read", "hc-beyond-4", "hc-ends", "hc-init-read", "hc-init-residual",
                 "hc-init-prenorm", "hc-empty"):
        assert verdicts[prop] == "holds", (prop, verdicts[prop])
    assert verdicts["hc-norm-eps"] == "departs (declared)"
    status = {(r["op"], r["dtype"]): r["status"] for r in report["rows"]}
    assert status[("hc_prenorm", "float64")] == "pass"
    hc_failures = [f for f in report["failures"] if f["op"] in ("hc_site", "hc_network")]
    assert all(f["case"].count("scale=1e-30") or "scale=1e+20" in f["case"] or "scale=1e15" in f["case"]
               or "scale=1000000000000000.0" in f["case"] for f in hc_failures), hc_failures
    # ... its one HC departure is its norm's clamp at ||x|| = 1e-12 (activations of 1e-30)
    scale = next(p for p in report["properties"] if p["id"] == "hc-scale-safe")
    assert scale["verdict"] == "departs" and "1e-30" in scale["detail"]
    # FC: the write goes to every fraction, and the initialisation is not the identity
    assert verdicts["fc-write"] == "departs"
    write = next(p for p in report["properties"] if p["id"] == "fc-write")
    assert "expected [[1.], [0.]]" in write["detail"] and "got [[1.], [2.]]" in write["detail"]
    for prop in ("fc-init-read", "fc-init-residual", "fc-init-prenorm"):
        assert verdicts[prop] == "departs", (prop, verdicts[prop])
    init_read = next(p for p in report["properties"] if p["id"] == "fc-init-read")
    assert "got [1., 1.], expected [1., 2.]" in init_read["detail"]  # m = 2, x = [1, 2]: it reads [1, 1]
    init_residual = next(p for p in report["properties"] if p["id"] == "fc-init-residual")
    assert "m=3" in init_residual["input"] and "got [[1.], [1.], [3.]]" in init_residual["detail"]
    # ... while its read, mixing, fractions beyond the fourth and split/merge agree
    for prop in ("fc-mixing", "fc-read", "fc-beyond-4", "fc-ends", "fc-empty"):
        assert verdicts[prop] == "holds", (prop, verdicts[prop])
    assert status[("fc_prenorm", "float64")] == "FAIL" and status[("fc_site", "float64")] == "FAIL"
    # what it does not declare is n/a, never FAIL
    assert verdicts["hc-mixed"] == verdicts["fc-mixed"] == "n/a"
    for op in ("hc_coeffs", "hc_width", "hc_depth", "fc_coeffs", "fc_width", "fc_depth"):
        assert status[(op, "float64")] == "n/a"
    assert report["na"]["total"] > 0


def test_lucidrains_mhc_known_verdicts(tmp_path: Path) -> None:
    pytest.importorskip("hyper_connections")
    done, report = _run_attr("lucidrains_hyper_connections.py", "mhc_port", tmp_path, "--dtypes", "float32")
    assert report, done.stdout[-4000:] + done.stderr[-2000:]
    assert report["version"] == "0.4.11"
    verdicts = {p["id"]: p["verdict"] for p in report["properties"] if p["family"] == "mhc"}
    order = next(p for p in report["properties"] if p["id"] == "mhc-sinkhorn-order")
    assert order["verdict"] == "departs" and "got [[1.017882], [0.982118]]" in order["detail"]  # rows, then columns
    assert verdicts["mhc-init-prenorm"] == "departs"  # b_post = 1: h_post = 2 sigmoid(1) = 1.462 at init
    for prop in ("mhc-mixing", "mhc-read", "mhc-write", "mhc-large-logits", "mhc-beyond-4", "mhc-ends",
                 "mhc-init-read", "mhc-empty"):
        assert verdicts[prop] == "holds", (prop, verdicts[prop])
    for prop in ("mhc-flattened", "mhc-rms-eps", "mhc-scale-safe", "mhc-mixed"):  # dynamic / mixed not declared
        assert verdicts[prop] == "n/a", (prop, verdicts[prop])
    status = {(r["op"], r["dtype"]): r["status"] for r in report["rows"]}
    assert status[("mhc_prenorm", "float32")] == "FAIL" and status[("mhc_coeffs", "float32")] == "n/a"
    assert all(p["verdict"] == "n/a" for p in report["properties"] if p["family"] != "mhc")


def _run_attr(file: str, attr: str, tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    report = tmp_path / f"{attr}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCREF_")}
    done = subprocess.run(
        [sys.executable, "-m", "hcref_conformance", "--backend", f"{PORTS / file}:{attr}", "--profile", "quick",
         "--report-json", str(report), "-q", *options, "--", "-p", "no:warnings"],
        capture_output=True, text=True, check=False, cwd=ROOT, env=env, timeout=1200)
    return done, json.loads(report.read_text()) if report.exists() else {}


@pytest.mark.parametrize(("file", "module"), [("pypi_mhc.py", "mhc.constraints.matrix"),
                                              ("pypi_mhc_mlx.py", "mhc_mlx.reference"),
                                              ("pypi_mlx_mhc.py", "mlx_mhc.sinkhorn")])
def test_pypi_mhc_adapters_load(file: str, module: str) -> None:
    """Each PyPI mHC adapter loads and declares the mHC family (where its library is installed)."""
    pytest.importorskip(module)
    from hcref_conformance.loading import load_backend

    port = load_backend(f"{PORTS / file}:port")
    from hcref.interface import support_of

    assert support_of(port).families == ("mhc",) and "sinkhorn" in support_of(port).op_names


def test_module_entry_reports_no_false_failure(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    done, report = run_port("hcref_torch_modules.py", tmp_path, "--dtypes", "float64")
    assert done.returncode == 0, done.stdout[-6000:]
    assert "autodiff" in report["composite_vjp"]
    assert all(p["verdict"] in ("holds", "n/a") for p in report["properties"]), report["properties"]
    status = {(r["op"], r["dtype"]): r["status"] for r in report["rows"]}
    for op in ("hc_site", "fc_site", "hc_network", "fc_network", "hc_prenorm", "fc_prenorm"):
        assert status[(op, "float64")] == "pass"


def test_public_implementations_page_is_current() -> None:
    """The committed page names the pinned version and each known departure by property."""
    page = (ROOT / "docs" / "conformance-of-public-implementations.md").read_text()
    assert "hyper-connections 0.4.11" in page
    for name in ("FC: the write sends fraction j of y to fraction j only",
                 "FC: at init the read is the layer input", "FC: at init the residual path is the identity"):
        line = next(line for line in page.splitlines() if line.startswith(f"| {name}"))
        assert "**departs**" in line
    assert "python conformance/ports/regenerate.py" in page
    # lucidrains' mHC: Sinkhorn rows then columns, shown on the issue's input
    line = next(line for line in page.splitlines() if line.startswith("| mHC: Sinkhorn normalises columns then rows"))
    assert "**departs**" in line and "[[1.017882], [0.982118]]" in line
    for library in ("PyPI `mhc-mlx`", "PyPI `mlx-mhc`", "PyPI `mhc`", "`mhc-pytorch`"):
        assert library in page, library


def _regenerate() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "conformance" / "ports" / "regenerate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["regenerate"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_regenerate_refuses_to_lose_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --only name is an error naming the known adapters; rewriting the committed page
    with a port not run (not selected, or not installed) is refused, and the page is left as it is."""
    regenerate = _regenerate()
    with pytest.raises(SystemExit) as exit_info:
        regenerate.main(["--only", "nonsense"])
    assert exit_info.value.code == 2
    assert "lucidrains_hyper_connections.py:port" in capsys.readouterr().err
    page = ROOT / "docs" / "conformance-of-public-implementations.md"
    before = page.read_text()
    assert regenerate.main(["--only", "lucidrains_hyper_connections.py:port"]) == 2
    assert "their verdicts would be lost" in capsys.readouterr().err
    assert page.read_text() == before
