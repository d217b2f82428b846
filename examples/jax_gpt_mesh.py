"""The tiny GPT of examples/jax_gpt.py trained on a 2 x 4 mesh of host devices: the batch on "data", the
width of the residual state (d for HC, d/m for FC) on "model".

    python examples/jax_gpt_mesh.py --mode hc --rate 4 --steps 300
    python examples/jax_gpt_mesh.py --mode fc --rate 2
    python examples/jax_gpt_mesh.py --mode mhc --rate 4          # add --mhc-head for DeepSeek-V4's MHCHead
    python examples/jax_gpt_mesh.py --mode hc --mesh none        # one device, the plain model: the same losses

Run as a script it asks XLA for 8 host (CPU) devices itself (``--xla_force_host_platform_device_count=8``).
The connections run through ``hcref_jax.sharding.MeshPlan`` (``shard_map``: the coefficient step's
reductions over the sharded width are explicit collectives, the mixing and the write act on the local
columns, h0 is gathered for the sublayer; mHC's projection reads the flattened n*d state, so its
statistics are completed over "model" and the gates and Sinkhorn run on every shard). The sublayers are
sharded Megatron-style with ``NamedSharding`` (qkv / up column-sharded, out / down row-sharded over
"model") and partitioned by XLA. The step is one ``jax.jit``-ed function, as in examples/jax_gpt.py; the
training text is the first 90% of examples/data/tiny.txt, as there.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from hcref_jax.sharding import MeshPlan
from jax.sharding import NamedSharding, PartitionSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gpt_common as common
from jax_gpt import GPT, MLP, Attention

P = PartitionSpec


class MeshGPT(GPT):
    """``GPT`` whose residual sites run through a :class:`MeshPlan` (``plan=None``: exactly ``GPT``)."""

    def __call__(self, idx: jax.Array, plan: MeshPlan | None = None) -> jax.Array:
        if plan is None or self.mode == "residual":
            return super().__call__(idx)
        x = self.tok(idx) + self.pos(jnp.arange(idx.shape[1]))
        H = plan.frac_split(x, self.rate) if self.mode == "fc" else plan.expand(x, self.rate)
        for connection, sublayer in zip(self.connections, self.sublayers, strict=True):
            H = plan.site(connection, H, sublayer)
        if self.mode == "fc":
            x = plan.frac_merge(H)
        elif getattr(getattr(self.end, "plan", None), "family", None) == "mhc_head":  # mhc with the MHCHead
            x = plan.head(self.end, H)
        else:
            x = plan.reduce(H)
        return self.head(self.norm(x))


def shard(model: MeshGPT, plan: MeshPlan) -> None:
    """Place every parameter: the connections by the plan, the sublayers Megatron-style, the rest replicated."""
    mesh, m = plan.mesh, plan.model

    def put(param: Any, spec: PartitionSpec) -> None:
        param.set_value(jax.device_put(param.get_value(), NamedSharding(mesh, spec)))

    for _, param in nnx.iter_graph(model):
        if isinstance(param, nnx.Param):
            put(param, P())
    plan.shard_module(model)
    for sublayer in model.sublayers:
        assert isinstance(sublayer, (Attention, MLP))
        column, row = (sublayer.qkv, sublayer.out) if isinstance(sublayer, Attention) else (sublayer.up, sublayer.down)
        put(column.kernel, P(None, m))
        put(column.bias, P(m))
        put(row.kernel, P(m, None))


def train(
    mode: str = "hc",
    *,
    mesh_shape: tuple[int, int] | None = (2, 4),
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
    mhc_head: bool = False,
    verbose: bool = True,
) -> list[float]:
    """Train for ``steps`` steps on a (data, model) mesh of ``mesh_shape`` (None: one device, the plain model).
    ``mhc_head``: end an mhc model with ``MHCHead`` instead of ``Reduce()``."""
    rate = common.default_rate("hc" if mode == "mhc" else mode, rate)  # mhc: n = 4 as hc
    chars, data, _ = common.load_data()
    head = {"mhc_head": True} if mhc_head else {}  # GPT's option for mhc only
    model = MeshGPT(
        len(chars), d=d, layers=layers, heads=heads, context=context, mode=mode, rate=rate, rngs=nnx.Rngs(seed), **head
    )
    plan = None
    if mesh_shape is not None:
        mesh = jax.make_mesh(mesh_shape, ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
        plan = MeshPlan(mesh, data="data", model="model")
        shard(model, plan)
    graphdef, params = nnx.split(model)
    tx = optax.adamw(lr, weight_decay=0.0)
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params: Any, opt_state: Any, xb: jax.Array, yb: jax.Array) -> tuple[Any, Any, jax.Array]:
        def loss_fn(params: Any) -> jax.Array:
            logits = nnx.merge(graphdef, params)(xb, plan)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    tokens = NamedSharding(plan.mesh, P("data")) if plan is not None else None
    rng = np.random.default_rng(seed)
    offsets = np.arange(context)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        ix = rng.integers(0, len(data) - context - 1, size=batch)
        xb, yb = data[ix[:, None] + offsets], data[ix[:, None] + offsets + 1]
        if tokens is not None:
            xb, yb = jax.device_put(xb, tokens), jax.device_put(yb, tokens)
        params, opt_state, loss = step_fn(params, opt_state, xb, yb)
        losses.append(float(loss))
        if verbose and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}  ({time.perf_counter() - start:.1f}s)")
    if verbose:
        where = "x".join(map(str, mesh_shape)) + " mesh" if mesh_shape else "one device"
        print(f"mode={mode} rate={rate} on {where}: final loss {losses[-1]:.4f} (uniform: {math.log(len(chars)):.4f})")
    return losses


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("residual", "hc", "fc", "mhc"), default="hc")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rate", type=int, default=None, help="n for hc and mhc (default 4), m for fc (default 2)")
    parser.add_argument("--mhc-head", action="store_true", help="mhc: end with DeepSeek-V4's MHCHead, not Reduce()")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mesh", default="2x4", help="DATAxMODEL (the product of the two at most the device count), or none"
    )
    args = parser.parse_args(argv)
    mesh_shape = None if args.mesh == "none" else tuple(int(s) for s in args.mesh.split("x"))
    if mesh_shape is not None and len(mesh_shape) != 2:
        parser.error(f"--mesh: expected DATAxMODEL or none, got {args.mesh!r}")
    return train(
        args.mode,
        mesh_shape=mesh_shape,  # type: ignore[arg-type]
        steps=args.steps,
        rate=args.rate,
        seed=args.seed,
        mhc_head=args.mhc_head,
    )


if __name__ == "__main__":
    main()
