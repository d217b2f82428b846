"""What the three GPT examples share, framework-free: the data and its held-out split, the
validation windows, the command line, the summary over seeds and the loss-curve picture.

Data: ``examples/data/tiny.txt`` as characters; the first 90% is the training text, the last 10%
the held-out text (never sampled for training). Validation loss is the mean cross-entropy over
``eval_batches`` fixed batches of windows spread evenly over the held-out text: the same windows
for every mode, seed and framework.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "tiny.txt"
MODES = ("residual", "hc", "fc", "mhc")
VAL_FRACTION = 0.1


@dataclass
class Run:
    """One training run: per-step training loss, validation loss at intervals, wall time."""

    mode: str
    rate: int
    seed: int
    train: list[float] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    params: int = 0

    @property
    def final_val(self) -> float:
        return self.val[-1][1] if self.val else math.nan


def default_rate(mode: str, rate: int | None) -> int:
    return rate if rate is not None else {"hc": 4, "mhc": 4, "fc": 2}.get(mode, 1)


def load_data() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(vocabulary, training ids, held-out ids) of tiny.txt, split 90/10 by position."""
    text = DATA.read_text()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.array([lookup[c] for c in text], dtype=np.int32)
    split = int(len(ids) * (1 - VAL_FRACTION))
    return chars, ids[:split], ids[split:]


def val_windows(val: np.ndarray, *, context: int, batch: int, batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``batches`` fixed (inputs, targets) batches of ``context``-long windows over the held-out ids."""
    starts = np.linspace(0, len(val) - context - 1, batches * batch).astype(np.int64)
    offsets = np.arange(context)
    out = []
    for b in range(batches):
        ix = starts[b * batch : (b + 1) * batch]
        out.append((val[ix[:, None] + offsets], val[ix[:, None] + offsets + 1]))
    return out


def is_eval_step(step: int, steps: int, every: int) -> bool:
    return step % every == 0 or step == steps - 1


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=MODES, nargs="+", default=["hc"], help="one or more of residual, hc, fc, mhc")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rate", type=int, default=None, help="n for hc and mhc (default 4), m for fc (default 2)")
    p.add_argument(
        "--mhc-head",
        action="store_true",
        help="end mhc with DeepSeek-V4's learned MHCHead instead of the sum Reduce() (the mHC paper names "
        "no reduce; hcref's default is the sum, as HC: math.md A15)",
    )
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (seed, seed+1, ...): mean and spread")
    p.add_argument("--eval-every", type=int, default=50, help="validation loss every this many steps")
    p.add_argument("--plot", type=Path, default=None, help="save the train/validation loss curves (PNG)")
    p.add_argument(
        "--save",
        type=Path,
        default=None,
        help="save the connections of each hc/fc/mhc run as an hcref checkpoint (.safetensors); "
        "with several modes or seeds '-<mode>-seed<k>' is added to the name",
    )
    return p


def checkpoint_path(path: Path, mode: str, seed: int, several: bool) -> Path:
    return path.with_name(f"{path.stem}-{mode}-seed{seed}{path.suffix}") if several else path


def summarize(runs: Sequence[Run]) -> str:
    """One line per mode: final validation and training loss, mean +- sample std over seeds, time."""
    lines = []
    for mode in dict.fromkeys(run.mode for run in runs):
        group = [run for run in runs if run.mode == mode]
        val = [run.final_val for run in group]
        train = [statistics.fmean(run.train[-10:]) for run in group]
        spread = statistics.stdev(val) if len(val) > 1 else 0.0
        lines.append(
            f"{mode:8} rate={group[0].rate} seeds={len(group)}  val loss {statistics.fmean(val):.4f} +- {spread:.4f} "
            f"(min {min(val):.4f}, max {max(val):.4f})  train loss (last 10 steps) {statistics.fmean(train):.4f}  "
            f"{statistics.fmean(run.seconds for run in group):.1f} s/run"
        )
    return "\n".join(lines)


def plot(runs: Sequence[Run], path: Path, title: str) -> Path:
    """Training (smoothed over 10 steps) and validation loss per mode: mean over seeds, band min..max."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from err
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for i, mode in enumerate(dict.fromkeys(run.mode for run in runs)):
        group = [run for run in runs if run.mode == mode]
        color = f"C{i}"
        train = np.array([run.train for run in group])
        kernel = np.ones(min(10, train.shape[1])) / min(10, train.shape[1])
        smooth = np.array([np.convolve(t, kernel, mode="valid") for t in train])
        steps = np.arange(smooth.shape[1]) + len(kernel) - 1
        ax.plot(steps, smooth.mean(axis=0), color=color, alpha=0.6, lw=1, label=f"{mode} train")
        ax.fill_between(steps, smooth.min(axis=0), smooth.max(axis=0), color=color, alpha=0.1)
        val_steps = [s for s, _ in group[0].val]
        val = np.array([[x for _, x in run.val] for run in group])
        ax.plot(val_steps, val.mean(axis=0), "o-", color=color, lw=2, ms=3, label=f"{mode} validation")
        ax.fill_between(val_steps, val.min(axis=0), val.max(axis=0), color=color, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.set_title(
        f"{title}: mean over {len(runs) // max(1, len(set(r.mode for r in runs)))} seed(s), band = min..max", fontsize=9
    )
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
