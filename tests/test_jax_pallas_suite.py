"""The conformance suite against the Pallas kernel backend (TPU interpret mode on this CPU), and the
``bench_jax.py --pallas --quick`` smoke run.

CI runs a bounded part of the suite: the kernel ops (coefficients, width, depth of HC and FC, and
``mhc_coeffs``, ``mhc_pre``, ``mhc_post`` once the suite's op table has them),
forward, VJP and input errors, in float32 with every special case (n = 1, one token, static sites,
switches off, each norm at init) and in bfloat16 on the drawn examples only, 2 examples per test.
Each new shape compiles the interpreted kernels (about a second each), so the whole suite
(composite sites and networks too) takes several minutes; run it with::

    python -m hcref_conformance --backend hcref_jax.pallas:backend --dtypes float32,bfloat16 --max-examples 2
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("flax.nnx")

ROOT = Path(__file__).resolve().parents[1]
HC_FC_OPS = ("hc_coeffs", "hc_width", "hc_depth", "fc_coeffs", "fc_width", "fc_depth")
MHC_KERNEL_OPS = ("mhc_coeffs", "mhc_pre", "mhc_post")


def _suite_ops() -> set[str]:
    """The ops the suite draws cases for (its op table); the mHC ops join it when the suite's mHC
    work lands (until then tests/test_jax_pallas_mhc.py checks the mHC kernels against the reference)."""
    from hcref_conformance import strategies

    return set(getattr(strategies, "OP_NAMES", ()))


KERNEL_OPS = HC_FC_OPS + tuple(op for op in MHC_KERNEL_OPS if op in _suite_ops())


def test_kernel_backend_passes_the_suite_on_the_kernel_ops(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    selection = f"({' or '.join(KERNEL_OPS)}) and (float32 or not special)"
    command = [sys.executable, "-m", "hcref_conformance", "--backend", "hcref_jax.pallas:backend",
               "--dtypes", "float32,bfloat16", "--max-examples", "2", "--report-json", str(report), "-q",
               "--", "-k", selection]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["failures"] == [] and result["exitstatus"] == 0
    assert result["backend"] == "hcref_jax.pallas:backend" and result["name"] == "hcref_jax.pallas"
    rows = {(row["op"], row["dtype"]): row for row in result["rows"]}
    for dtype in ("float32", "bfloat16"):
        for op in KERNEL_OPS:
            row = rows.get((op, dtype))
            assert row is not None and row["status"] == "pass", f"{op} {dtype}: {row}"
            for check in ("forward", "vjp"):
                cell = row["checks"][check]
                assert cell["status"] == "pass" and cell["passed"] >= 1, f"{op} {dtype} {check}: {cell}"


def test_bench_pallas_quick_smoke_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """Off a TPU, ``--pallas`` runs every kernel once in interpret mode against the XLA path and
    prints no timing (interpret mode says nothing about a TPU's speed)."""
    path = ROOT / "benchmarks" / "bench_jax.py"
    spec = importlib.util.spec_from_file_location("bench_jax_pallas", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_jax_pallas"] = bench
    spec.loader.exec_module(bench)
    import jax

    result = bench.main(["--pallas", "--quick"])
    out = capsys.readouterr().out
    if jax.default_backend() == "tpu":
        assert ("copy", "state") in result and "of copy" in out
        return
    (key, worst), = result.items()
    assert key == ("interpret smoke", "max |pallas - xla|")
    assert 0.0 <= worst < 1e-4
    assert "No timing" in out and "GB/s" not in out
