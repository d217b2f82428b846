"""The MLX example trains in every residual mode (a few steps on CPU)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("mlx.core")
ROOT = Path(__file__).resolve().parents[1]


def _load(relpath: str) -> ModuleType:
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("mode", "rate"), [("residual", None), ("hc", 4), ("hc", 2), ("fc", 2), ("mhc", 2)])
def test_gpt_loss_is_finite_and_decreases(mode: str, rate: int | None) -> None:
    gpt = _load("examples/mlx_gpt.py")
    run = gpt.train(mode, steps=20, rate=rate, seed=0, d=32, context=32, verbose=False, eval_every=10, eval_batches=1)
    assert len(run.train) == 20
    assert all(math.isfinite(x) for x in run.train)
    assert sum(run.train[-5:]) / 5 < run.train[0] - 0.3
    assert [step for step, _ in run.val] == [0, 10, 19]
    assert all(math.isfinite(x) for _, x in run.val)
    assert run.val[-1][1] < run.val[0][1] - 0.3


def test_gpt_connections_are_hcref_modules_with_contract_keys() -> None:
    gpt = _load("examples/mlx_gpt.py")
    import hcref_mlx

    model = gpt.GPT(10, d=16, layers=1, heads=2, context=8, mode="hc", rate=2)
    assert [type(c) for c in model.connections] == [hcref_mlx.HyperConnections] * 2
    assert [c.layer_index for c in model.connections] == [0, 1]
    assert "A_m" in model.parameters()["connections"][1]
    model = gpt.GPT(10, d=16, layers=1, heads=2, context=8, mode="fc", rate=2)
    assert isinstance(model.begin, hcref_mlx.FracSplit) and isinstance(model.end, hcref_mlx.FracMerge)
    from hcref_mlx.mhc_modules import ManifoldHyperConnections, MHCHead

    model = gpt.GPT(10, d=16, layers=1, heads=2, context=8, mode="mhc", rate=2, mhc_head=True)
    assert [type(c) for c in model.connections] == [ManifoldHyperConnections] * 2
    assert [c.layer_index for c in model.connections] == [0, 1]
    assert "phi" in model.parameters()["connections"][1] and isinstance(model.end, MHCHead)
    assert isinstance(gpt.GPT(10, d=16, layers=1, heads=2, context=8, mode="mhc", rate=2).end, hcref_mlx.Reduce)
    with pytest.raises(ValueError, match="mode: expected one of 'residual', 'hc', 'fc', 'mhc', got 'dense'"):
        gpt.GPT(10, d=16, layers=1, heads=2, context=8, mode="dense", rate=2)


def test_gpt_main_prints_the_loss_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hcref.checkpoint

    gpt = _load("examples/mlx_gpt.py")
    path = tmp_path / "hc.safetensors"
    runs = gpt.main(["--mode", "hc", "--steps", "3", "--rate", "3", "--seed", "1", "--save", str(path)])
    assert len(runs) == 1 and len(runs[0].train) == 3
    out = capsys.readouterr().out
    assert "step    0  loss" in out and "val" in out and "mode=hc rate=3" in out
    sites = hcref.checkpoint.load(path)
    expected = [(f"connections.{k}", "hc", 3, k) for k in range(4)]
    assert [(s.name, s.family, s.rate, s.layer_index) for s in sites] == expected
    assert all(s.stats_tokens == 16 * 64 for s in sites)


def test_gpt_mhc_main_saves_sites_and_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--mode mhc --mhc-head --save``: a couple of steps, then a checkpoint holding the four mHC
    sites (with their mean coefficients) and the learned head."""
    import hcref.checkpoint

    gpt = _load("examples/mlx_gpt.py")
    path = tmp_path / "mhc.safetensors"
    runs = gpt.main(["--mode", "mhc", "--mhc-head", "--steps", "2", "--rate", "3", "--save", str(path)])
    assert len(runs) == 1 and len(runs[0].train) == 2 and all(math.isfinite(x) for x in runs[0].train)
    assert "mode=mhc rate=3" in capsys.readouterr().out
    sites = hcref.checkpoint.load(path)
    expected = [(f"connections.{k}", "mhc", 3, k) for k in range(4)] + [("end", "mhc_head", 3, None)]
    assert [(s.name, s.family, s.rate, s.layer_index) for s in sites] == expected
    assert all(s.stats_tokens == 16 * 64 and s.stats["mean_h_res"].shape == (3, 3) for s in sites[:4])
