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


@pytest.mark.parametrize(("mode", "rate"), [("residual", None), ("hc", 4), ("hc", 2), ("fc", 2)])
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
    candidates = {"residual", "hcref eager", "hcref compiled", "lucidrains"}
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
