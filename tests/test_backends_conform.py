"""Each first-party backend passes the conformance suite on this machine's CPU, in every dtype it
supports and the mixed-precision cases, through the public command (a subprocess, as a user
runs it), with the quick profile of the main job (``--all``): every drawn test 5 examples, every
fixed case (extreme scales, size-0 leading axes, more than 4 streams, each norm and switch), every
named property.

mHC (issue 11) is checked wherever the backend object carries the mHC ops (it then declares the
family): always for hcref_numpy; for torch, jax and mlx once their backend objects bind them
(``tests/test_interface.py::test_backend_carries_the_mhc_ops`` says which do not yet).

Deeper runs: ``python -m hcref_conformance --backend NAME`` (the default profile, 25 examples) or
``--profile thorough``; timings in the conformance report's notes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hcref.optable import MHC_OPS, OPS

COMPOSITES = ("hc_site", "fc_site", "hc_network", "fc_network", "hc_prenorm", "fc_prenorm")
MHC_COMPOSITES = ("mhc_site", "mhc_network", "mhc_prenorm")

CASES = [
    ("hcref_numpy", "float64,float32,float16,mixed"),
    ("hcref_torch", "float64,float32,bfloat16,float16,mixed"),
    ("hcref_mlx", "float64,float32,bfloat16,float16,mixed"),
    ("hcref_jax", "float64,float32,bfloat16,float16,mixed"),
]


@pytest.mark.parametrize(("backend", "dtypes"), CASES, ids=[c[0] for c in CASES])
def test_backend_passes_the_suite(backend: str, dtypes: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "hcref_conformance", "--backend", backend, "--dtypes", dtypes,
               "--profile", "quick", "--report-json", str(report), "-q"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["failures"] == [] and result["exitstatus"] == 0
    rows = {(row["op"], row["dtype"]): row["status"] for row in result["rows"]}
    mhc = "mhc" in result["families"]
    assert mhc or backend != "hcref_numpy"
    for dtype in dtypes.split(","):
        for op in (*OPS, *COMPOSITES, *((*MHC_OPS, *MHC_COMPOSITES) if mhc else ())):
            if dtype == "mixed" and op.endswith("_prenorm"):
                continue
            assert rows.get((op, dtype)) == "pass", f"{backend} {op} {dtype}: {rows.get((op, dtype))}"
    assert all(p["verdict"] == "holds" for p in result["properties"]), result["properties"]
