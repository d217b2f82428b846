"""The PyTorch example trains in every residual mode, and the benchmark script runs (smoke only:
no timing is asserted)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


def _load(relpath: str) -> ModuleType:
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("mode", "rate"), [("residual", None), ("hc", 4), ("hc", 2), ("fc", 2)])
def test_gpt_loss_is_finite_and_decreases(mode: str, rate: int | None) -> None:
    gpt = _load("examples/torch_gpt.py")
    losses = gpt.train(mode, steps=20, rate=rate, seed=0, verbose=False)
    assert len(losses) == 20
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.3


def test_gpt_main_prints_the_loss(capsys: pytest.CaptureFixture[str]) -> None:
    gpt = _load("examples/torch_gpt.py")
    losses = gpt.main(["--mode", "fc", "--steps", "3", "--rate", "4", "--seed", "1"])
    assert len(losses) == 3
    out = capsys.readouterr().out
    assert "step    0  loss" in out and "mode=fc rate=4" in out


def test_bench_quick_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("benchmarks/bench_torch.py")
    medians = bench.main(["--quick"])
    candidates = {"residual", "hcref eager", "hcref compiled", "lucidrains"}
    assert {key[2] for key in medians} == candidates
    assert {(key[0], key[1]) for key in medians} == {(b, m) for b in ("identity", "mlp") for m in ("fwd", "fwd+bwd")}
    assert all(t > 0 for t in medians.values())
    assert "lucidrains/x" in capsys.readouterr().out
