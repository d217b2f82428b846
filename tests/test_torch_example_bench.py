"""The PyTorch example trains in every residual mode (held-out loss, seeds, plot, checkpoint), and the
benchmark script runs (smoke only: no timing or memory figure is asserted)."""

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


@pytest.mark.parametrize(("mode", "rate"), [("residual", None), ("hc", 4), ("hc", 2), ("fc", 2), ("mhc", 2)])
def test_gpt_loss_is_finite_and_decreases(mode: str, rate: int | None) -> None:
    gpt = _load("examples/torch_gpt.py")
    run = gpt.train(mode, steps=20, rate=rate, seed=0, verbose=False, eval_every=10, eval_batches=1)
    assert len(run.train) == 20
    assert all(math.isfinite(x) for x in run.train)
    assert sum(run.train[-5:]) / 5 < run.train[0] - 0.3
    # held-out loss at steps 0, 10 and the last, on text the model never trains on
    assert [step for step, _ in run.val] == [0, 10, 19]
    assert all(math.isfinite(x) for _, x in run.val)
    assert run.val[-1][1] < run.val[0][1] - 0.3


def test_gpt_main_prints_the_loss(capsys: pytest.CaptureFixture[str]) -> None:
    gpt = _load("examples/torch_gpt.py")
    runs = gpt.main(["--mode", "fc", "--steps", "3", "--rate", "4", "--seed", "1"])
    assert len(runs) == 1 and len(runs[0].train) == 3
    out = capsys.readouterr().out
    assert "step    0  loss" in out and "val" in out and "mode=fc rate=4" in out


def test_gpt_hc_and_mhc_at_init_match_the_residual_model() -> None:
    """With the same sublayer weights, the HC and mHC models at init compute the residual model's
    logits (HC paper Eq. 14; math.md 4.4: with equal streams a row-stochastic h_res keeps them equal
    and h_post = 2 sigmoid(0) = 1; the final LayerNorm removes the factor n of the sum reduce, and the
    sigmoid(0) = 1/2 weights of MHCHead)."""
    import torch

    gpt = _load("examples/torch_gpt.py")
    kw = {"d": 32, "layers": 1, "heads": 2, "context": 8}
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    expected = gpt.GPT(11, mode="residual", rate=1, **kw)(idx)
    for mode, rate, head in [("hc", 3, False), ("mhc", 4, False), ("mhc", 3, True)]:
        torch.manual_seed(0)  # connection modules draw no random numbers: the same sublayer weights
        model = gpt.GPT(11, mode=mode, rate=rate, mhc_head=head, **kw)
        torch.testing.assert_close(model(idx), expected, rtol=1e-4, atol=1e-4)
    model = gpt.GPT(11, mode="mhc", rate=4, mhc_head=True, **kw)
    from hcref_torch.mhc_modules import ManifoldHyperConnections, MHCHead

    assert [type(c) for c in model.connections] == [ManifoldHyperConnections] * 2
    assert [c.layer_index for c in model.connections] == [0, 1]
    assert isinstance(model.end, MHCHead)
    with pytest.raises(ValueError, match="mode: expected one of 'residual', 'hc', 'fc', 'mhc', got 'dense'"):
        gpt.GPT(11, mode="dense", rate=2, **kw)


def test_gpt_mhc_main_saves_sites_and_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--mode mhc --mhc-head --save``: a couple of steps, then a checkpoint holding the four mHC
    sites (with their mean coefficients) and the learned head."""
    import hcref.checkpoint

    gpt = _load("examples/torch_gpt.py")
    path = tmp_path / "mhc.safetensors"
    runs = gpt.main(["--mode", "mhc", "--mhc-head", "--steps", "2", "--rate", "3", "--save", str(path)])
    assert len(runs) == 1 and len(runs[0].train) == 2 and all(math.isfinite(x) for x in runs[0].train)
    assert "mode=mhc rate=3" in capsys.readouterr().out
    sites = hcref.checkpoint.load(path)
    expected = [(f"connections.{k}", "mhc", 3, k) for k in range(4)] + [("end", "mhc_head", 3, None)]
    assert [(s.name, s.family, s.rate, s.layer_index) for s in sites] == expected
    assert all(s.stats_tokens == 16 * 64 and s.stats["mean_h_res"].shape == (3, 3) for s in sites[:4])


def test_gpt_seeds_plot_and_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Several modes and seeds: a summary line per mode (mean +- spread), the loss-curve picture,
    and one hcref checkpoint per hc/fc run that loads with its recorded mean coefficients."""
    import hcref.checkpoint

    gpt = _load("examples/torch_gpt.py")
    argv = ["--mode", "residual", "hc", "--seeds", "2", "--steps", "2", "--eval-every", "1", "--rate", "2",
            "--plot", str(tmp_path / "curves.png"), "--save", str(tmp_path / "ckpt.safetensors")]
    runs = gpt.main(argv)
    assert [(run.mode, run.seed) for run in runs] == [("residual", 0), ("residual", 1), ("hc", 0), ("hc", 1)]
    assert runs[2].train != runs[3].train  # the seeds differ
    out = capsys.readouterr().out
    for mode in ("residual", "hc"):
        line = next(line for line in out.splitlines() if line.startswith(f"{mode} ") and "seeds=2" in line)
        vals = [run.final_val for run in runs if run.mode == mode]
        assert f"val loss {sum(vals) / 2:.4f} +- " in line
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert not list(tmp_path.glob("ckpt-residual-*"))
    for seed in (0, 1):
        sites = hcref.checkpoint.load(tmp_path / f"ckpt-hc-seed{seed}.safetensors")
        assert [s.name for s in sites] == [f"connections.{k}" for k in range(4)]
        assert [s.layer_index for s in sites] == [0, 1, 2, 3]
        assert all(s.stats_tokens == 16 * 64 and s.stats["mean_alpha"].shape == (2, 3) for s in sites)


def test_bench_quick_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("benchmarks/bench_torch.py")
    results = bench.main(["--quick"])
    candidates = {"residual", "hcref eager", "hcref compiled", "lucidrains", "hcref mHC eager"}
    assert {key[2] for key in results} == candidates
    assert {(key[0], key[1]) for key in results} == {(b, m) for b in ("identity", "mlp") for m in ("fwd", "fwd+bwd")}
    assert all(r["seconds"] > 0 for r in results.values())
    out = capsys.readouterr().out
    assert "lucidrains/x" in out and "peak MiB" in out
    if bench.memory_probe_available():
        assert all(r["peak_mib"] >= 0 for r in results.values())


@pytest.mark.skipif(sys.platform != "linux", reason="the peak-memory probe reads Linux /proc and uses glibc")
def test_bench_memory_probe_measures_a_known_allocation() -> None:
    """The probe behind the 'peak MiB' column sees a 48 MiB buffer that lives only inside the call,
    a 16 MiB one kept alive by the caller, and not the 32 MiB freed before the call."""
    import torch

    bench = _load("benchmarks/bench_torch.py")
    if not bench.memory_probe_available():
        pytest.skip("no /proc/self/clear_refs or glibc mallopt on this machine")
    bench._release_freed_memory()
    kept: list[torch.Tensor] = []
    freed = torch.ones(8 * 2**20)  # 32 MiB, then freed: its pages must not count
    del freed

    def call() -> None:
        scratch = torch.ones(12 * 2**20)  # 48 MiB, freed at return
        kept.append(scratch[: 4 * 2**20] * 2)  # 16 MiB, kept

    peak = bench._peak_extra_mib(call)
    assert 63 <= peak <= 67, peak
