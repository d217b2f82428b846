"""The tiny GPT of examples/torch_gpt.py trained with FSDP2 (``fully_shard``) on CPU processes (gloo).

    python examples/torch_gpt_fsdp.py --mode hc --procs 2 --steps 300
    python examples/torch_gpt_fsdp.py --mode fc --procs 2
    python examples/torch_gpt_fsdp.py --mode mhc --procs 2          # add --mhc-head for DeepSeek-V4's MHCHead
    python examples/torch_gpt_fsdp.py --mode hc --procs 1          # the same loop in one process, no FSDP
    torchrun --nproc-per-node 2 examples/torch_gpt_fsdp.py --mode hc

Every rank draws the same global batch and trains on its share of it; the loss printed is the global
mean, so ``--procs 1`` and ``--procs 2`` print the same losses up to float32 rounding. Each residual site
(one connection module and its sublayer) is one FSDP group; the model is the root group. FSDP2 cannot
shard 0-dim parameters, so the gates ``s_alpha`` / ``s_beta`` (HC, FC) and ``MHCHead``'s ``gate`` stay
replicated and their gradients are averaged by ``hcref_torch.parallel.average_gradients``; mHC sites
(``phi``, ``b``, ``gates (3)``) are sharded like any other parameter. The training text is the first 90%
of examples/data/tiny.txt, as in examples/torch_gpt.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gpt_common as common
from torch_gpt import GPT


def shard(model: GPT, mesh: Any) -> None:
    """FSDP2 over ``mesh``: one group per residual site, the root for the rest (embeddings, final norm, head)."""
    from hcref_torch.parallel import average_gradients, scalar_parameters
    from torch.distributed.fsdp import fully_shard

    # the root returns the head's output, a view (nn.Linear on 3-D input); nothing here writes to it in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")

    scalars = scalar_parameters(model)  # the gates of the dynamic sites: fully_shard refuses 0-dim parameters
    connections = list(model.connections) or [None] * len(model.sublayers)
    for connection, sublayer in zip(connections, model.sublayers):
        fully_shard([connection, sublayer] if connection is not None else sublayer, mesh=mesh, ignored_params=scalars)
    fully_shard(model, mesh=mesh, ignored_params=scalars)
    average_gradients(scalars, mesh)


def run(
    rank: int,
    world: int,
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
    mhc_head: bool = False,
    verbose: bool = True,
) -> list[float]:
    """Train on this rank's share of each batch (FSDP2 when ``world > 1``); returns the global loss of every step.
    ``mhc_head``: end an mhc model with ``MHCHead`` instead of ``Reduce()``."""
    rate = common.default_rate("hc" if mode == "mhc" else mode, rate)  # mhc: n = 4 as hc
    if batch % world:
        raise ValueError(f"batch: {batch} is not divisible by the number of processes {world}")
    torch.manual_seed(seed)
    chars, train_ids, _ = common.load_data()
    data = torch.from_numpy(train_ids).long()
    head = {"mhc_head": True} if mhc_head else {}  # GPT's option for mhc only
    model = GPT(len(chars), d=d, layers=layers, heads=heads, context=context, mode=mode, rate=rate, **head)
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh

        shard(model, init_device_mesh("cpu", (world,)))
    # foreach=False: the replicated gates are plain tensors next to FSDP's DTensors
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, foreach=False)
    gen = torch.Generator().manual_seed(seed)
    rows = slice(rank * batch // world, (rank + 1) * batch // world)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        ix = torch.randint(len(data) - context - 1, (batch,), generator=gen)[rows]
        xb = torch.stack([data[i : i + context] for i in ix.tolist()])
        yb = torch.stack([data[i + 1 : i + context + 1] for i in ix.tolist()])
        loss = F.cross_entropy(model(xb).flatten(0, 1), yb.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        losses.append(float(value))
        if verbose and rank == 0 and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}  ({time.perf_counter() - start:.1f}s)")
    if verbose and rank == 0:
        print(
            f"mode={mode} rate={rate} procs={world} final loss {losses[-1]:.4f} (uniform: {math.log(len(chars)):.4f})"
        )
    return losses


def _spawned(rank: int, world: int, store: str, out: str, kwargs: dict[str, Any]) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    try:
        losses = run(rank, world, **kwargs)
        if rank == 0:
            Path(out).write_text(json.dumps(losses))
        dist.barrier()  # no rank tears gloo down while another still talks to it (an abort at exit otherwise)
    finally:
        dist.destroy_process_group()


def train(mode: str = "hc", *, procs: int = 2, **kwargs: Any) -> list[float]:
    """Train with ``procs`` processes (spawned here, gloo, a file store); returns rank 0's global losses."""
    if procs == 1:
        return run(0, 1, mode, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "losses.json")
        mp.spawn(_spawned, args=(procs, os.path.join(tmp, "store"), out, {"mode": mode, **kwargs}), nprocs=procs)
        return list(json.loads(Path(out).read_text()))


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("residual", "hc", "fc", "mhc"), default="hc")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rate", type=int, default=None, help="n for hc and mhc (default 4), m for fc (default 2)")
    parser.add_argument("--mhc-head", action="store_true", help="mhc: end with DeepSeek-V4's MHCHead, not Reduce()")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--procs", type=int, default=2, help="processes (ignored under torchrun)")
    parser.add_argument("--losses", default=None, help="write the losses of every step here (JSON)")
    args = parser.parse_args(argv)
    kwargs = {"steps": args.steps, "rate": args.rate, "seed": args.seed, "mhc_head": args.mhc_head}
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
        dist.init_process_group("gloo")
        try:
            losses = run(dist.get_rank(), dist.get_world_size(), args.mode, **kwargs)  # type: ignore[arg-type]
            dist.barrier()
        finally:
            dist.destroy_process_group()
    else:
        losses = train(args.mode, procs=args.procs, **kwargs)
    if args.losses:
        Path(args.losses).write_text(json.dumps(losses))
    return losses


if __name__ == "__main__":
    main()
