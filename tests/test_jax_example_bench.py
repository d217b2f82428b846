"""The JAX example trains in every residual mode, and the benchmark script runs (smoke only: no
timing is asserted)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("jax")
pytest.importorskip("flax.nnx")
pytest.importorskip("optax")
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
    gpt = _load("examples/jax_gpt.py")
    losses = gpt.train(mode, steps=20, rate=rate, seed=0, verbose=False, d=32, context=32)
    assert len(losses) == 20
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.3


def test_gpt_main_prints_the_loss(capsys: pytest.CaptureFixture[str]) -> None:
    gpt = _load("examples/jax_gpt.py")
    losses = gpt.main(["--mode", "fc", "--steps", "3", "--rate", "4", "--seed", "1"])
    assert len(losses) == 3
    out = capsys.readouterr().out
    assert "step    0  loss" in out and "mode=fc rate=4" in out


def test_gpt_hc_at_init_matches_the_residual_model() -> None:
    """With the same sublayer weights, the HC model at init computes the residual model's logits
    (HC paper Eq. 14: every stream is the Pre-Norm stream; the final LayerNorm removes the factor n)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    gpt = _load("examples/jax_gpt.py")
    kw = {"d": 32, "layers": 1, "heads": 2, "context": 8}
    residual = gpt.GPT(11, mode="residual", rate=1, rngs=nnx.Rngs(0), **kw)
    hc = gpt.GPT(11, mode="hc", rate=3, rngs=nnx.Rngs(0), **kw)
    fc = gpt.GPT(11, mode="fc", rate=2, rngs=nnx.Rngs(0), **kw)
    idx = jnp.asarray(np.random.default_rng(0).integers(0, 11, size=(2, 8)))
    expected = np.asarray(residual(idx))
    np.testing.assert_allclose(np.asarray(fc(idx)), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda i: hc(i))(idx)), expected, rtol=1e-3, atol=1e-3)


def test_bench_quick_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("benchmarks/bench_jax.py")
    medians = bench.main(["--quick"])
    assert {key[2] for key in medians} == {"residual", "hcref ops", "hcref module"}
    assert {(key[0], key[1]) for key in medians} == {(b, m) for b in ("identity", "mlp") for m in ("fwd", "fwd+bwd")}
    assert all(t > 0 for t in medians.values())
    out = capsys.readouterr().out
    assert "vs residual" in out and "max |hcref module - hcref ops|" in out
