"""Each first-party backend passes the conformance suite on this machine's CPU, in the dtypes
its issue names, through the public command (a subprocess, as a user runs it).

The examples per test are kept small here because CI runs everything on 2 cores; jax's jit
compiles once per drawn shape, so it gets fewer. Deeper runs: ``bash scripts/conformance.sh
--max-examples 200`` (figures in the closing notes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hcref.optable import OPS

CASES = [
    ("hcref_numpy", "float64,float32,float16", 10),
    ("hcref_torch", "float64,float32,bfloat16", 10),
    ("hcref_mlx", "float64,float32,bfloat16", 10),
    ("hcref_jax", "float64,float32,bfloat16", 3),
]


@pytest.mark.parametrize(("backend", "dtypes", "examples"), CASES, ids=[c[0] for c in CASES])
def test_backend_passes_the_suite(backend: str, dtypes: str, examples: int, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "hcref_conformance", "--backend", backend, "--dtypes", dtypes,
               "--max-examples", str(examples), "--report-json", str(report), "-q"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["failures"] == [] and result["exitstatus"] == 0
    rows = {(row["op"], row["dtype"]): row["status"] for row in result["rows"]}
    for dtype in dtypes.split(","):
        for op in OPS:
            assert rows.get((op, dtype)) == "pass", f"{backend} {op} {dtype}: {rows.get((op, dtype))}"
