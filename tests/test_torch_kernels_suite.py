"""hcref_torch.kernels through public commands, each in its own process: the conformance suite
against the kernel backend under the Triton interpreter (bounded: float32, 2 examples per
test), the CUDA benchmark's ``--quick`` smoke run, the ahead-of-time CUDA compilation of the
kernels (no GPU needed), and ``import hcref_torch`` where triton is missing or broken (the
kernels must fall back to the generic path, never fail)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from hcref.optable import MHC_OPS, OPS

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def test_conformance_suite_on_the_kernel_backend(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "hcref_conformance", "--backend", "hcref_torch.kernels:backend",
               "--dtypes", "float32", "--max-examples", "2", "--report-json", str(report), "-q"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1200,
                          env=_env(TRITON_INTERPRET="1"))
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["failures"] == [] and result["exitstatus"] == 0
    rows = {(row["op"], row["dtype"]): row["status"] for row in result["rows"]}
    for op in OPS:
        assert rows.get((op, "float32")) == "pass", f"{op}: {rows.get((op, 'float32'))}"
    # the mHC ops, as soon as the suite's op table runs them (hcref.optable.MHC_OPS joining OPS):
    # the kernel backend has sinkhorn, mhc_coeffs, mhc_pre, mhc_post on the kernels (mhc_head generic)
    for op in MHC_OPS:
        if any(name == op for name, _ in rows):
            assert rows.get((op, "float32")) == "pass", f"{op}: {rows.get((op, 'float32'))}"


def test_cuda_benchmark_quick_smoke_run() -> None:
    pytest.importorskip("triton")
    pytest.importorskip("hyper_connections")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cuda.py"), "--quick"],
                          capture_output=True, text=True, check=False, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    out = done.stdout
    for expected in ("device copy", "site bwd (passes 1 + 2)", "fused depth fwd (from H)", "plain residual",
                     "lucidrains", "goal: HC site fwd+bwd", "fused site vs eager generic path", "mhc coeffs bwd",
                     "mhc post fwd", "mHC site fwd+bwd", "mhc float32", "mhc_coeffs "):
        assert expected in out, expected
    errors = [float(part.split()[-1]) for line in out.splitlines() if line.startswith(("  hc float32", "  mhc float32"))
              for part in line.split(":", 1)[1].split(",")]
    assert errors and max(errors) < 1e-5, out[-2000:]


def test_kernels_compile_for_a_gpu_without_one() -> None:
    """Every kernel of the bfloat16 HC and mHC training paths goes through Triton's whole CUDA pipeline to
    an sm_90 cubin (ptxas included) with the GPU's block sizes: the GPU code paths compile here,
    where none can run (hcref_torch.kernels.compile_check)."""
    pytest.importorskip("triton")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "hcref_torch.kernels.compile_check", "--quick"],
                          capture_output=True, text=True, check=False, timeout=900, env=env)
    if "No such file" in done.stderr and "ptxas" in done.stderr:
        pytest.skip("this triton install has no ptxas")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "22 kernels compiled for sm_90, 0 failed" in done.stdout, done.stdout[-3000:]


_NO_TRITON = """
import sys
{setup}
import torch
import hcref, hcref_torch, hcref_torch.kernels as K
assert not K.available() and not K.supported(torch.ones(2, 3, 4))
H = torch.randn(2, 3, 4, dtype=torch.float64)
alpha = torch.randn(2, 3, 4, dtype=torch.float64)
got = K.hc_width(H, alpha)
ref = hcref.hc_width(H.numpy(), alpha.numpy())
assert all(abs(g.numpy() - r).max() < 1e-13 for g, r in zip(got, ref))
params = {{k: torch.tensor(v) for k, v in hcref.init_hc(3, 4, 0).items()}}
h0, state = K.hc_site_width(H, params)
K.site_depth(h0, state)
print("fallback ok", "triton" in sys.modules and sys.modules["triton"] is not None)
"""


@pytest.mark.parametrize("how", ["missing", "broken"])
def test_import_and_fallback_without_triton(tmp_path: Path, how: str) -> None:
    if how == "missing":
        setup = "sys.modules['triton'] = None  # import triton raises ImportError"
    else:
        (tmp_path / "triton").mkdir()
        (tmp_path / "triton" / "__init__.py").write_text("raise ImportError('a broken triton install')\n")
        setup = f"sys.path.insert(0, {str(tmp_path)!r})"
    done = subprocess.run([sys.executable, "-c", _NO_TRITON.format(setup=setup)], capture_output=True, text=True,
                          check=False, timeout=300, env=_env(TRITON_INTERPRET="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "fallback ok False" in done.stdout
