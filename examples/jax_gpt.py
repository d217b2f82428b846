"""A tiny character-level GPT on examples/data/tiny.txt whose residual connections are plain
residuals, Hyper-Connections, Frac-Connections or Manifold-Constrained Hyper-Connections
(hcref_jax, Flax NNX), trained on CPU with optax.

    python examples/jax_gpt.py --mode hc --rate 4 --steps 300
    python examples/jax_gpt.py --mode fc --rate 2
    python examples/jax_gpt.py --mode mhc --rate 4            # add --mhc-head for V4's learned reduce
    python examples/jax_gpt.py --mode residual
    python examples/jax_gpt.py --mode residual hc mhc --seeds 3 --plot curves.png   # mean +- spread
    python examples/jax_gpt.py --mode hc --save hc.safetensors && python -m hcref.viz hc.safetensors

The same model as examples/torch_gpt.py. Every attention and every MLP sublayer is one residual site
(Pre-Norm: the sublayer carries its own LayerNorm). ``hc``: ``Expand(n)`` after the embedding, one
``HyperConnections`` per sublayer with ``layer_index`` counting sublayers, ``Reduce()`` before the
final norm. ``fc``: ``FracSplit(m)``, one ``FracConnections`` per sublayer, ``FracMerge()``.
``mhc``: ``Expand(n)``, one ``ManifoldHyperConnections`` per sublayer (preset ``hc_like``, 20
Sinkhorn iterations), ``Reduce()`` (the mHC paper names no final reduce; hcref's default is HC's
sum, math.md A15) or, with ``--mhc-head``, DeepSeek-V4's learned ``MHCHead``. The training step is
one ``jax.jit``-ed pure function of the model's split state (``nnx.split`` / ``nnx.merge``) and the
optax state. The last 10% of the text is held out: the validation loss on it is printed every
``--eval-every`` steps (see examples/_gpt_common.py).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import hcref_jax
import hcref_jax.checkpoint
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from hcref_jax.mhc_modules import ManifoldHyperConnections, MHCHead

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gpt_common as common


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
    """idx (batch, time) -> logits (batch, time, vocab); ``mode`` is residual, hc (rate = n), fc (rate = m)
    or mhc (rate = n; ``mhc_head``: end with ``MHCHead`` instead of ``Reduce()``)."""

    def __init__(
        self,
        vocab: int,
        *,
        d: int,
        layers: int,
        heads: int,
        context: int,
        mode: str,
        rate: int,
        rngs: nnx.Rngs,
        mhc_head: bool = False,
    ) -> None:
        if mode not in common.MODES:
            raise ValueError(f"mode: expected one of {', '.join(map(repr, common.MODES))}, got {mode!r}")
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
        elif mode == "mhc":
            connections = [ManifoldHyperConnections(rate, d, k) for k in range(len(self.sublayers))]
            begin, end = hcref_jax.Expand(rate), MHCHead(rate, d) if mhc_head else hcref_jax.Reduce()
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
    chars, data, val_ids = common.load_data()
    val = common.val_windows(val_ids, context=context, batch=batch, batches=eval_batches)
    model = GPT(len(chars), d=d, layers=layers, heads=heads, context=context, mode=mode, rate=rate,
                rngs=nnx.Rngs(seed), mhc_head=mhc_head)
    graphdef, params = nnx.split(model)
    tx = optax.adamw(lr, weight_decay=0.0)
    opt_state = tx.init(params)

    def loss_fn(params: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        logits = nnx.merge(graphdef, params)(xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def step_fn(params: Any, opt_state: Any, xb: jax.Array, yb: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    eval_fn = jax.jit(loss_fn)
    rng = np.random.default_rng(seed)
    offsets = np.arange(context)
    run = common.Run(mode, rate, seed, params=sum(x.size for x in jax.tree_util.tree_leaves(params)))
    start = time.perf_counter()
    for step in range(steps):
        ix = rng.integers(0, len(data) - context - 1, size=batch)
        xb, yb = data[ix[:, None] + offsets], data[ix[:, None] + offsets + 1]
        params, opt_state, loss = step_fn(params, opt_state, xb, yb)
        run.train.append(float(loss))
        if common.is_eval_step(step, steps, eval_every):
            run.val.append((step, sum(float(eval_fn(params, x, y)) for x, y in val) / len(val)))
        if verbose and (step % log_every == 0 or step == steps - 1):
            shown = f"  val {run.val[-1][1]:.4f}" if run.val and run.val[-1][0] == step else ""
            print(f"step {step:4d}  loss {run.train[-1]:.4f}{shown}  ({time.perf_counter() - start:.1f}s)")
    run.seconds = time.perf_counter() - start
    if save is not None and mode != "residual":
        save.parent.mkdir(parents=True, exist_ok=True)
        trained = nnx.merge(graphdef, params)
        recorder = hcref_jax.checkpoint.record(trained, lambda: jax.jit(lambda x: trained(x))(val[0][0]))
        meta = {"example": "jax_gpt", "mode": mode, "seed": str(seed), "steps": str(steps),
                "val_loss": f"{run.final_val:.6f}"}
        hcref_jax.checkpoint.save(save, trained, recorder=recorder, metadata=meta)
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
        print(f"loss curves: {common.plot(runs, args.plot, 'jax_gpt')}")
    return runs


if __name__ == "__main__":
    main()
