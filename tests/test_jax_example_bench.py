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


@pytest.mark.parametrize(("mode", "rate"), [("residual", None), ("hc", 4), ("hc", 2), ("fc", 2), ("mhc", 2)])
def test_gpt_loss_is_finite_and_decreases(mode: str, rate: int | None) -> None:
    gpt = _load("examples/jax_gpt.py")
    run = gpt.train(mode, steps=20, rate=rate, seed=0, verbose=False, d=32, context=32, eval_every=10, eval_batches=1)
    assert len(run.train) == 20
    assert all(math.isfinite(x) for x in run.train)
    assert sum(run.train[-5:]) / 5 < run.train[0] - 0.3
    assert [step for step, _ in run.val] == [0, 10, 19]
    assert all(math.isfinite(x) for _, x in run.val)
    assert run.val[-1][1] < run.val[0][1] - 0.3


def test_gpt_main_prints_the_loss_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hcref.checkpoint

    gpt = _load("examples/jax_gpt.py")
    path = tmp_path / "fc.safetensors"
    runs = gpt.main(["--mode", "fc", "--steps", "3", "--rate", "4", "--seed", "1", "--save", str(path)])
    assert len(runs) == 1 and len(runs[0].train) == 3
    out = capsys.readouterr().out
    assert "step    0  loss" in out and "val" in out and "mode=fc rate=4" in out
    sites = hcref.checkpoint.load(path)
    assert [(s.name, s.family, s.rate, s.d) for s in sites] == [(f"connections.{k}", "fc", 4, 64) for k in range(4)]
    assert all(s.stats_tokens == 16 * 64 for s in sites)
    assert hcref.checkpoint.user_metadata(path)["example"] == "jax_gpt"


def test_gpt_hc_at_init_matches_the_residual_model() -> None:
    """With the same sublayer weights, the HC and mHC models at init compute the residual model's logits
    (HC paper Eq. 14; math.md 4.4: with equal streams a row-stochastic h_res keeps them equal and
    h_post = 2 sigmoid(0) = 1; the final LayerNorm removes the factor n of the sum reduce and the
    sigmoid(0) = 1/2 weights of MHCHead)."""
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
    for rate, head in [(4, False), (3, True)]:
        mhc = gpt.GPT(11, mode="mhc", rate=rate, rngs=nnx.Rngs(0), mhc_head=head, **kw)
        np.testing.assert_allclose(np.asarray(mhc(idx)), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="mode: expected one of 'residual', 'hc', 'fc', 'mhc', got 'dense'"):
        gpt.GPT(11, mode="dense", rate=2, rngs=nnx.Rngs(0), **kw)


def test_bench_quick_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("benchmarks/bench_jax.py")
    medians = bench.main(["--quick"])
    assert {key[2] for key in medians} == {"residual", "hcref ops", "hcref module", "hcref mHC module"}
    assert {(key[0], key[1]) for key in medians} == {(b, m) for b in ("identity", "mlp") for m in ("fwd", "fwd+bwd")}
    assert all(t > 0 for t in medians.values())
    out = capsys.readouterr().out
    assert "vs residual" in out and "max |hcref module - hcref ops|" in out
