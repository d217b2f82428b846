"""``import hcref`` (and the suite, and the numpy backend) load no ML framework (spec README
section 3), checked in a fresh interpreter so that other tests' imports cannot hide a leak."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FRAMEWORKS = ("torch", "jax", "jaxlib", "flax", "mlx", "tensorflow")


@pytest.mark.parametrize("module", ["hcref", "hcref.checks", "hcref_numpy", "hcref_conformance"])
def test_import_loads_no_framework(module: str) -> None:
    code = (
        f"import json, sys, importlib; importlib.import_module({module!r}); "
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert module.split(".")[0] in loaded
    assert not loaded & set(FRAMEWORKS), f"import {module} loaded {sorted(loaded & set(FRAMEWORKS))}"
