"""A tiny character-level GPT on examples/data/tiny.txt whose residual connections are plain
residuals, Hyper-Connections, Frac-Connections or Manifold-Constrained Hyper-Connections
(hcref_mlx), trained with MLX on its default device (tested on the Linux CPU build, `mlx[cpu]`).

    python examples/mlx_gpt.py --mode hc --rate 4 --steps 300
    python examples/mlx_gpt.py --mode fc --rate 2
    python examples/mlx_gpt.py --mode mhc --rate 4            # add --mhc-head for V4's learned reduce
    python examples/mlx_gpt.py --mode residual
    python examples/mlx_gpt.py --mode residual hc mhc --seeds 3 --plot curves.png   # mean +- spread
    python examples/mlx_gpt.py --mode hc --save hc.safetensors && python -m hcref.viz hc.safetensors

The same model as examples/torch_gpt.py. Every attention and every MLP sublayer is one residual site
(Pre-Norm: the sublayer carries its own LayerNorm). ``hc``: ``Expand(n)`` after the embedding, one
``HyperConnections`` per sublayer with ``layer_index`` counting sublayers, ``Reduce()`` before the
final norm. ``fc``: ``FracSplit(m)``, one ``FracConnections`` per sublayer, ``FracMerge()``.
``mhc``: ``Expand(n)``, one ``ManifoldHyperConnections`` per sublayer (preset ``hc_like``, 20
Sinkhorn iterations), ``Reduce()`` (the mHC paper names no final reduce; hcref's default is HC's
sum, math.md A15) or, with ``--mhc-head``, DeepSeek-V4's learned ``MHCHead``. The training step
(forward, backward, AdamW update) is one ``mx.compile``d function. The last 10% of the text is held
out: the validation loss on it is printed every ``--eval-every`` steps (see
examples/_gpt_common.py).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import hcref_mlx
import hcref_mlx.checkpoint
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from hcref_mlx.mhc_modules import ManifoldHyperConnections, MHCHead
from mlx.utils import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gpt_common as common


class Attention(nn.Module):
    """Pre-Norm causal self-attention sublayer: x (batch, time, d) -> (batch, time, d)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.heads = heads

    def __call__(self, x: mx.array) -> mx.array:
        b, t, d = x.shape
        q, k, v = mx.split(self.qkv(self.norm(x)), 3, axis=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(0, 2, 1, 3) for z in (q, k, v))
        scale = 1.0 / math.sqrt(d // self.heads)
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
        return self.out(y.transpose(0, 2, 1, 3).reshape(b, t, d))


class MLP(nn.Module):
    """Pre-Norm MLP sublayer: x (batch, time, d) -> (batch, time, d)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def __call__(self, x: mx.array) -> mx.array:
        return self.net(x)


class GPT(nn.Module):
    """idx (batch, time) -> logits (batch, time, vocab); ``mode`` is residual, hc (rate = n), fc (rate = m)
    or mhc (rate = n; ``mhc_head``: end with ``MHCHead`` instead of ``Reduce()``)."""

    def __init__(
        self, vocab: int, *, d: int, layers: int, heads: int, context: int, mode: str, rate: int, mhc_head: bool = False
    ) -> None:
        super().__init__()
        if mode not in common.MODES:
            raise ValueError(f"mode: expected one of {', '.join(map(repr, common.MODES))}, got {mode!r}")
        self.mode, self.rate = mode, rate
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        # torch's N(0, 1) embedding init (MLX's default is N(0, 1/d)), as in examples/torch_gpt.py
        self.tok.weight = mx.random.normal(self.tok.weight.shape)
        self.pos.weight = mx.random.normal(self.pos.weight.shape)
        self.sublayers = [m for _ in range(layers) for m in (Attention(d, heads), MLP(d))]
        self.connections: list[Any] = []
        if mode == "hc":
            self.connections = [hcref_mlx.HyperConnections(rate, d, k) for k in range(len(self.sublayers))]
            self.begin: nn.Module = hcref_mlx.Expand(rate)
            self.end: nn.Module = hcref_mlx.Reduce()
        elif mode == "fc":
            self.connections = [hcref_mlx.FracConnections(rate, d) for _ in range(len(self.sublayers))]
            self.begin, self.end = hcref_mlx.FracSplit(rate), hcref_mlx.FracMerge()
        elif mode == "mhc":
            self.connections = [ManifoldHyperConnections(rate, d, k) for k in range(len(self.sublayers))]
            self.begin = hcref_mlx.Expand(rate)
            self.end = MHCHead(rate, d) if mhc_head else hcref_mlx.Reduce()
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def __call__(self, idx: mx.array) -> mx.array:
        x = self.tok(idx) + self.pos(mx.arange(idx.shape[1]))
        if self.mode == "residual":
            for sublayer in self.sublayers:
                x = x + sublayer(x)
        else:
            H = self.begin(x)  # (batch, time, n, d) or (batch, time, m, d/m)
            for connection, sublayer in zip(self.connections, self.sublayers, strict=True):
                H = connection(H, sublayer)
            x = self.end(H)
        return self.head(self.norm(x))


def train(
    mode: str = "hc",
    *,
    steps: int = 300,
    rate: int | None = None,
    seed: int = 0,
    d: int = 64,
    layers: int = 2,
    heads: int = 4,
    context: int = 64,
    batch: int = 16,
    lr: float = 3e-3,
    log_every: int = 50,
    eval_every: int = 50,
    eval_batches: int = 4,
    mhc_head: bool = False,
    save: Path | None = None,
    verbose: bool = True,
) -> common.Run:
    """Train for ``steps`` steps; returns the run (training loss of every step, validation loss at
    steps ``0, eval_every, 2 eval_every, ...`` and the last). ``save``: write the connections
    (hc/fc/mhc, and the ``MHCHead`` with ``mhc_head``) as an hcref checkpoint, with their mean
    coefficients recorded on one held-out batch."""
    rate = common.default_rate(mode, rate)
    mx.random.seed(seed)
    chars, data, val_ids = common.load_data()
    val = [(mx.array(x), mx.array(y))
           for x, y in common.val_windows(val_ids, context=context, batch=batch, batches=eval_batches)]
    model = GPT(len(chars), d=d, layers=layers, heads=heads, context=context, mode=mode, rate=rate,
                mhc_head=mhc_head)
    mx.eval(model.parameters())
    opt = optim.AdamW(learning_rate=lr, weight_decay=0.0, bias_correction=True)  # as torch.optim.AdamW

    def loss_fn(model: GPT, xb: mx.array, yb: mx.array) -> mx.array:
        return nn.losses.cross_entropy(model(xb), yb, reduction="mean")

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, opt.state]

    def step(xb: mx.array, yb: mx.array) -> mx.array:
        loss, grads = loss_and_grad(model, xb, yb)
        opt.update(model, grads)
        return loss

    step = mx.compile(step, inputs=state, outputs=state)
    evaluate = mx.compile(lambda xb, yb: loss_fn(model, xb, yb), inputs=state)
    rng = np.random.default_rng(seed)
    offsets = np.arange(context)
    run = common.Run(mode, rate, seed, params=sum(p.size for _, p in tree_flatten(model.parameters())))
    start = time.perf_counter()
    for i in range(steps):
        ix = rng.integers(0, len(data) - context - 1, size=batch)
        xb = mx.array(data[ix[:, None] + offsets])
        yb = mx.array(data[ix[:, None] + offsets + 1])
        loss = step(xb, yb)
        mx.eval(loss, state)
        run.train.append(loss.item())
        if common.is_eval_step(i, steps, eval_every):
            run.val.append((i, sum(evaluate(x, y).item() for x, y in val) / len(val)))
        if verbose and (i % log_every == 0 or i == steps - 1):
            shown = f"  val {run.val[-1][1]:.4f}" if run.val and run.val[-1][0] == i else ""
            print(f"step {i:4d}  loss {run.train[-1]:.4f}{shown}  ({time.perf_counter() - start:.1f}s)")
    run.seconds = time.perf_counter() - start
    if save is not None and mode != "residual":
        save.parent.mkdir(parents=True, exist_ok=True)
        recorder = hcref_mlx.checkpoint.record(model, lambda: mx.eval(model(val[0][0])))
        meta = {"example": "mlx_gpt", "mode": mode, "seed": str(seed), "steps": str(steps),
                "val_loss": f"{run.final_val:.6f}"}
        hcref_mlx.checkpoint.save(save, model, recorder=recorder, metadata=meta)
    if verbose:
        uniform = math.log(len(chars))
        print(f"mode={mode} rate={rate} seed={seed} params={run.params} final loss {run.train[-1]:.4f} "
              f"val loss {run.final_val:.4f} (uniform: {uniform:.4f}) {run.seconds:.1f}s"
              + (f", checkpoint {save}" if save is not None and mode != "residual" else ""))
    return run


def main(argv: list[str] | None = None) -> list[common.Run]:
    args = common.parser(__doc__).parse_args(argv)
    several = len(args.mode) * args.seeds > 1
    runs = []
    for mode in args.mode:
        for seed in range(args.seed, args.seed + args.seeds):
            save = common.checkpoint_path(args.save, mode, seed, several) if args.save else None
            runs.append(train(mode, steps=args.steps, rate=args.rate, seed=seed, eval_every=args.eval_every,
                              mhc_head=args.mhc_head, log_every=args.steps if several else 50, save=save))
    print(common.summarize(runs))
    if args.plot:
        print(f"loss curves: {common.plot(runs, args.plot, 'mlx_gpt')}")
    return runs


if __name__ == "__main__":
    main()
