"""A tiny character-level GPT on examples/data/tiny.txt whose residual connections are plain
residuals, Hyper-Connections or Frac-Connections (hcref_jax, Flax NNX), trained on CPU with optax.

    python examples/jax_gpt.py --mode hc --rate 4 --steps 300
    python examples/jax_gpt.py --mode fc --rate 2
    python examples/jax_gpt.py --mode residual

The same model as examples/torch_gpt.py. Every attention and every MLP sublayer is one residual
site (Pre-Norm: the sublayer carries its own LayerNorm). ``hc``: ``Expand(n)`` after the embedding,
one ``HyperConnections`` per sublayer with ``layer_index`` counting sublayers, ``Reduce()`` before
the final norm. ``fc``: ``FracSplit(m)``, one ``FracConnections`` per sublayer, ``FracMerge()``.
The training step is one ``jax.jit``-ed pure function of the model's split state (``nnx.split`` /
``nnx.merge``) and the optax state.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import hcref_jax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

DATA = Path(__file__).resolve().parent / "data" / "tiny.txt"


class Attention(nnx.Module):
    """Pre-Norm causal self-attention sublayer: x (batch, time, d) -> (batch, time, d)."""

    def __init__(self, d: int, heads: int, *, rngs: nnx.Rngs) -> None:
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
        self.out = nnx.Linear(d, d, rngs=rngs)
        self.heads = heads

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.norm(x)), 3, axis=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads) for z in (q, k, v))
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # (batch, time, heads, d/heads)
        return self.out(y.reshape(b, t, d))


class MLP(nnx.Module):
    """Pre-Norm MLP sublayer: x (batch, time, d) -> (batch, time, d)."""

    def __init__(self, d: int, *, rngs: nnx.Rngs) -> None:
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.up = nnx.Linear(d, 4 * d, rngs=rngs)
        self.down = nnx.Linear(4 * d, d, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.gelu(self.up(self.norm(x))))


class GPT(nnx.Module):
    """idx (batch, time) -> logits (batch, time, vocab); ``mode`` is residual, hc (rate = n) or fc (rate = m)."""

    def __init__(
        self, vocab: int, *, d: int, layers: int, heads: int, context: int, mode: str, rate: int, rngs: nnx.Rngs
    ) -> None:
        if mode not in ("residual", "hc", "fc"):
            raise ValueError(f"mode: expected 'residual', 'hc' or 'fc', got {mode!r}")
        self.mode, self.rate = mode, rate
        self.tok = nnx.Embed(vocab, d, rngs=rngs)
        self.pos = nnx.Embed(context, d, rngs=rngs)
        self.sublayers = nnx.List(
            [m for _ in range(layers) for m in (Attention(d, heads, rngs=rngs), MLP(d, rngs=rngs))]
        )
        connections: list[nnx.Module] = []
        begin: nnx.Module | None = None
        end: nnx.Module | None = None
        if mode == "hc":
            connections = [hcref_jax.HyperConnections(rate, d, k) for k in range(len(self.sublayers))]
            begin, end = hcref_jax.Expand(rate), hcref_jax.Reduce()
        elif mode == "fc":
            connections = [hcref_jax.FracConnections(rate, d) for _ in range(len(self.sublayers))]
            begin, end = hcref_jax.FracSplit(rate), hcref_jax.FracMerge()
        self.connections = nnx.List(connections)
        self.begin, self.end = nnx.data(begin), nnx.data(end)
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, idx: jax.Array) -> jax.Array:
        x = self.tok(idx) + self.pos(jnp.arange(idx.shape[1]))
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
    text = DATA.read_text()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    data = np.array([lookup[c] for c in text], dtype=np.int32)
    model = GPT(len(chars), d=d, layers=layers, heads=heads, context=context, mode=mode, rate=rate,
                rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    tx = optax.adamw(lr, weight_decay=0.0)
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params: Any, opt_state: Any, xb: jax.Array, yb: jax.Array) -> tuple[Any, Any, jax.Array]:
        def loss_fn(params: Any) -> jax.Array:
            logits = nnx.merge(graphdef, params)(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    offsets = np.arange(context)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        ix = rng.integers(0, len(data) - context - 1, size=batch)
        xb, yb = data[ix[:, None] + offsets], data[ix[:, None] + offsets + 1]
        params, opt_state, loss = step_fn(params, opt_state, xb, yb)
        losses.append(float(loss))
        if verbose and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}  ({time.perf_counter() - start:.1f}s)")
    if verbose:
        count = sum(x.size for x in jax.tree_util.tree_leaves(params))
        uniform = math.log(len(chars))
        print(f"mode={mode} rate={rate} params={count} final loss {losses[-1]:.4f} (uniform: {uniform:.4f})")
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
