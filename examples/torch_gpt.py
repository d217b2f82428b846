"""A tiny character-level GPT on examples/data/tiny.txt whose residual connections are plain
residuals, Hyper-Connections or Frac-Connections (hcref_torch), trained on CPU.

    python examples/torch_gpt.py --mode hc --rate 4 --steps 300
    python examples/torch_gpt.py --mode fc --rate 2
    python examples/torch_gpt.py --mode residual

Every attention and every MLP sublayer is one residual site (Pre-Norm: the sublayer carries its
own LayerNorm). ``hc``: ``Expand(n)`` after the embedding, one ``HyperConnections`` per sublayer
with ``layer_index`` counting sublayers, ``Reduce()`` before the final norm. ``fc``: ``FracSplit(m)``,
one ``FracConnections`` per sublayer, ``FracMerge()``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import hcref_torch
import torch
import torch.nn.functional as F
from torch import nn

DATA = Path(__file__).resolve().parent / "data" / "tiny.txt"


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
    """idx (batch, time) -> logits (batch, time, vocab); ``mode`` is residual, hc (rate = n) or fc (rate = m)."""

    def __init__(self, vocab: int, *, d: int, layers: int, heads: int, context: int, mode: str, rate: int) -> None:
        super().__init__()
        if mode not in ("residual", "hc", "fc"):
            raise ValueError(f"mode: expected 'residual', 'hc' or 'fc', got {mode!r}")
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
    verbose: bool = True,
) -> list[float]:
    """Train for ``steps`` steps; returns the training loss of every step."""
    rate = rate if rate is not None else {"hc": 4, "fc": 2}.get(mode, 1)
    torch.manual_seed(seed)
    text = DATA.read_text()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    model = GPT(len(chars), d=d, layers=layers, heads=heads, context=context, mode=mode, rate=rate)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        ix = torch.randint(len(data) - context - 1, (batch,), generator=gen)
        xb = torch.stack([data[i : i + context] for i in ix.tolist()])
        yb = torch.stack([data[i + 1 : i + context + 1] for i in ix.tolist()])
        loss = F.cross_entropy(model(xb).flatten(0, 1), yb.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if verbose and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}  ({time.perf_counter() - start:.1f}s)")
    if verbose:
        params = sum(p.numel() for p in model.parameters())
        uniform = math.log(len(chars))
        print(f"mode={mode} rate={rate} params={params} final loss {losses[-1]:.4f} (uniform: {uniform:.4f})")
    return losses


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("residual", "hc", "fc"), default="hc")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rate", type=int, default=None, help="n for hc (default 4), m for fc (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return train(args.mode, steps=args.steps, rate=args.rate, seed=args.seed)


if __name__ == "__main__":
    main()
