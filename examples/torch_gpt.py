"""A tiny character-level GPT on examples/data/tiny.txt whose residual connections are plain
residuals, Hyper-Connections, Frac-Connections or Manifold-Constrained Hyper-Connections
(hcref_torch), trained on CPU.

    python examples/torch_gpt.py --mode hc --rate 4 --steps 300
    python examples/torch_gpt.py --mode fc --rate 2
    python examples/torch_gpt.py --mode mhc --rate 4            # add --mhc-head for V4's learned reduce
    python examples/torch_gpt.py --mode residual
    python examples/torch_gpt.py --mode residual hc mhc --seeds 3 --plot curves.png   # mean +- spread
    python examples/torch_gpt.py --mode hc --save hc.safetensors && python -m hcref.viz hc.safetensors

Every attention and every MLP sublayer is one residual site (Pre-Norm: the sublayer carries its
own LayerNorm). ``hc``: ``Expand(n)`` after the embedding, one ``HyperConnections`` per sublayer
with ``layer_index`` counting sublayers, ``Reduce()`` before the final norm. ``fc``: ``FracSplit(m)``,
one ``FracConnections`` per sublayer, ``FracMerge()``. ``mhc``: ``Expand(n)``, one
``ManifoldHyperConnections`` per sublayer (preset ``hc_like``, 20 Sinkhorn iterations), ``Reduce()``
(the mHC paper names no final reduce; hcref's default is HC's sum, math.md A15) or, with
``--mhc-head``, DeepSeek-V4's learned ``MHCHead``. At init hc and mhc compute the residual model's
logits (each stream is the Pre-Norm stream; the final LayerNorm removes the factor n). The last 10%
of the text is held out: the validation loss on it is printed every ``--eval-every`` steps (see
examples/_gpt_common.py).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import hcref_torch
import hcref_torch.checkpoint
import torch
import torch.nn.functional as F
from hcref_torch.mhc_modules import ManifoldHyperConnections, MHCHead
from torch import nn

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """Pre-Norm MLP sublayer: x (batch, time, d) -> (batch, time, d)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        self.sublayers = nn.ModuleList(m for _ in range(layers) for m in (Attention(d, heads), MLP(d)))
        self.connections = nn.ModuleList()
        if mode == "hc":
            self.connections.extend(hcref_torch.HyperConnections(rate, d, k) for k in range(len(self.sublayers)))
            self.begin: nn.Module = hcref_torch.Expand(rate)
            self.end: nn.Module = hcref_torch.Reduce()
        elif mode == "fc":
            self.connections.extend(hcref_torch.FracConnections(rate, d) for _ in range(len(self.sublayers)))
            self.begin, self.end = hcref_torch.FracSplit(rate), hcref_torch.FracMerge()
        elif mode == "mhc":
            self.connections.extend(ManifoldHyperConnections(rate, d, k) for k in range(len(self.sublayers)))
            self.begin = hcref_torch.Expand(rate)
            self.end = MHCHead(rate, d) if mhc_head else hcref_torch.Reduce()
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        if self.mode == "residual":
            for sublayer in self.sublayers:
                x = x + sublayer(x)
        else:
            H = self.begin(x)  # (batch, time, n, d) or (batch, time, m, d/m)
            for connection, sublayer in zip(self.connections, self.sublayers, strict=True):
                H = connection(H, sublayer)
            x = self.end(H)
        return self.head(self.norm(x))


def evaluate(model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean cross-entropy over the fixed held-out batches."""
    with torch.no_grad():
        return sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in batches) / len(batches)


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
    torch.manual_seed(seed)
    chars, train_ids, val_ids = common.load_data()
    data = torch.from_numpy(train_ids).long()
    val = [(torch.from_numpy(x).long(), torch.from_numpy(y).long())
           for x, y in common.val_windows(val_ids, context=context, batch=batch, batches=eval_batches)]
    model = GPT(len(chars), d=d, layers=layers, heads=heads, context=context, mode=mode, rate=rate,
                mhc_head=mhc_head)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    run = common.Run(mode, rate, seed, params=sum(p.numel() for p in model.parameters()))
    start = time.perf_counter()
    for step in range(steps):
        ix = torch.randint(len(data) - context - 1, (batch,), generator=gen)
        xb = torch.stack([data[i : i + context] for i in ix.tolist()])
        yb = torch.stack([data[i + 1 : i + context + 1] for i in ix.tolist()])
        loss = F.cross_entropy(model(xb).flatten(0, 1), yb.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.train.append(loss.item())
        if common.is_eval_step(step, steps, eval_every):
            run.val.append((step, evaluate(model, val)))
        if verbose and (step % log_every == 0 or step == steps - 1):
            shown = f"  val {run.val[-1][1]:.4f}" if run.val and run.val[-1][0] == step else ""
            print(f"step {step:4d}  loss {loss.item():.4f}{shown}  ({time.perf_counter() - start:.1f}s)")
    run.seconds = time.perf_counter() - start
    if save is not None and mode != "residual":
        save.parent.mkdir(parents=True, exist_ok=True)
        recorder = hcref_torch.checkpoint.record(model, lambda: model(val[0][0]))
        meta = {"example": "torch_gpt", "mode": mode, "seed": str(seed), "steps": str(steps),
                "val_loss": f"{run.final_val:.6f}"}
        hcref_torch.checkpoint.save(save, model, recorder=recorder, metadata=meta)
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
        print(f"loss curves: {common.plot(runs, args.plot, 'torch_gpt')}")
    return runs


if __name__ == "__main__":
    main()
