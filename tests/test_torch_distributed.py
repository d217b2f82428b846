"""HC, FC and mHC modules under torch.distributed on CPU (gloo): DDP, FSDP2, sequence parallelism (tokens
sharded, DTensor) and tensor parallelism (width sharded, ``hcref_torch.parallel.WidthParallel``).

Every case runs one training step (forward, backward, SGD update) of a two-site stack (each site an MLP
sublayer; mHC ends with the learned ``MHCHead``) sharded over 4 processes and compares it with the same
step in one process: the outputs, every parameter gradient and every updated parameter, to float32
rounding. The collectives each plan issues are recorded and checked against the plan (hcref_torch.parallel's
docstring).

The processes are this file run as a script (``--worker``), started once per module with a file store
(no ports to pick), a timeout on every wait, and their results returned as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

WORLD = 4  # the 1-D plans over 4 ranks; FSDP2 x tensor parallelism on a 2 x 2 mesh
BATCH, TIME = 4, 8
TIMEOUT_S = 240
ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("hc", "fc", "mhc")
GRADS = {"hc": 2 * 9 + 2 * 6, "fc": 2 * 9 + 2 * 6, "mhc": 2 * 3 + 3 + 2 * 6}  # sites, MHCHead, two MLPs
PLANS = ("ddp", "fsdp", "sp", "tp", "fsdp_tp")

# "Equal to float32 rounding": both the sharded and the single-process float32 step are measured against
# the same step in float64. Per tensor, the sharded step's error may exceed the single-process step's own
# error (``base``) by the factor SLACK, plus SLACK ulps of the largest value of its kind (all gradients, all
# parameters): a normwise bound, since a gradient that cancels to ~0 (e.g. A_m at the first site, where all
# streams are equal) carries rounding errors of the size of its terms, not of its value. A missing or
# doubled reduction gives errors of the order of the values themselves.
EPS32 = 2.0**-23
SLACK = 16


# ----------------------------------------------------------------------------------------------------
# worker side (runs in each of the WORLD processes)
# ----------------------------------------------------------------------------------------------------


def _err(a: Any, b: Any) -> tuple[float, float]:
    """(max abs error, max abs error / max |b|) of two tensors."""

    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    return diff, diff / scale if scale > 0 else diff


def _full(t: Any) -> Any:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


class _CommLog:
    """Records every collective (c10d and functional) with the shapes of its tensor arguments."""

    def __init__(self) -> None:
        import torch
        from torch.distributed.tensor.debug._comm_mode import NATIVE_TO_PY_MAPPING, c10d_collective_ops
        from torch.utils._python_dispatch import TorchDispatchMode

        # the set torch.distributed.tensor.debug.CommDebugMode counts
        collectives = set(c10d_collective_ops) | set(NATIVE_TO_PY_MAPPING) | set(NATIVE_TO_PY_MAPPING.values())
        collectives.add(torch.ops._dtensor.shard_dim_alltoall)
        log = self.log = []  # type: list[tuple[str, list[list[int]]]]

        from torch.distributed.tensor import DTensor

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                if any(issubclass(t, DTensor) for t in types):
                    return NotImplemented  # let DTensor dispatch (and redistribute) with this mode active
                if func._overloadpacket in collectives:
                    shapes = []
                    for a in args:
                        for t in a if isinstance(a, (list, tuple)) else [a]:
                            if isinstance(t, torch.Tensor):
                                shapes.append(list(t.shape))
                    log.append((func._overloadpacket.__name__, shapes))
                return func(*args, **(kwargs or {}))

        self.mode = Mode()

    def __enter__(self) -> _CommLog:
        self.log.clear()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)


def _build(family: str, norm: str = "layernorm", seed: int = 0) -> Any:
    """A two-site stack: x (batch, time, d) -> (batch, time, d), MLP sublayers, random dynamic parameters."""
    import hcref_torch as ht
    import torch
    from hcref_torch.mhc_modules import ManifoldHyperConnections, MHCHead
    from torch import nn

    d = 16
    torch.manual_seed(seed)

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.family = family
            if family == "hc":
                self.connections = nn.ModuleList(ht.HyperConnections(4, d, k, norm=norm) for k in range(2))
                self.begin: nn.Module = ht.Expand(4)
                self.end: nn.Module = ht.Reduce()
            elif family == "mhc":
                self.connections = nn.ModuleList(ManifoldHyperConnections(4, d, k) for k in range(2))
                self.begin, self.end = ht.Expand(4), MHCHead(4, d)
            else:
                self.connections = nn.ModuleList(ht.FracConnections(2, d, norm=norm) for _ in range(2))
                self.begin, self.end = ht.FracSplit(2), ht.FracMerge()
            self.sublayers = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) for _ in range(2)
            )
            with torch.no_grad():  # leave the Pre-Norm-equivalent init so that every path carries gradient
                for p in [*self.connections.parameters(), *self.end.parameters()]:
                    p.add_(0.3 * torch.randn_like(p))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            H = self.begin(x)
            for connection, sublayer in zip(self.connections, self.sublayers):
                H = connection(H, sublayer)
            return self.end(H)

    return Stack()


def _data(seed: int = 1) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, TIME, 16, generator=g), torch.randn(BATCH, TIME, 16, generator=g)


class _Reference:
    """The single-process step in float32 (the baseline) and in float64 (the exact values the sharded and
    the single-process float32 steps are both measured against)."""

    def __init__(self, model: Any, x: Any, target: Any, lr: float, rows: slice = slice(None)) -> None:
        import torch

        self.out, self.grads, self.params = {}, {}, {}
        for dtype in (torch.float32, torch.float64):
            m = copy.deepcopy(model).to(dtype)
            out = m(x.to(dtype))
            ((out - target.to(dtype)) ** 2).mean().backward()
            self.out[dtype] = out.detach()[rows]
            self.grads[dtype] = {k: p.grad.clone() for k, p in m.named_parameters()}
            torch.optim.SGD(m.parameters(), lr=lr).step()
            self.params[dtype] = {k: p.detach().clone() for k, p in m.named_parameters()}


def _metrics(a: Any, ref32: Any, ref64: Any) -> dict[str, float]:
    """``rel``: max|a - ref32| / max|ref32|; ``err``: max|a - ref64|; ``base``: max|ref32 - ref64| (the
    single-process step's own float32 error); ``scale``: max|ref64|."""
    import torch

    a, ref32, ref64 = (t.detach().double() for t in (a, ref32, ref64))
    assert a.shape == ref64.shape, (a.shape, ref64.shape)
    scale = float(ref64.abs().max())
    diff32 = float((a - ref32).abs().max())
    return {
        "abs": diff32,
        "rel": diff32 / max(float(ref32.abs().max()), torch.finfo(torch.float64).tiny),
        "err": float((a - ref64).abs().max()),
        "base": float((ref32 - ref64).abs().max()),
        "scale": scale,
    }


def _compare(out: Any, model: Any, ref: _Reference, local: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """``local(key)``: None, or for a parameter to compare shard by shard the map from the full reference
    tensor to this rank's part of it (compared with the parameter's local shard, not its full_tensor())."""
    import torch

    f32, f64 = torch.float32, torch.float64
    grads, params = {}, {}
    for k, p in model.named_parameters():
        key = k.removeprefix("module.")  # DDP's wrapper
        part = local(key) if local is not None else None
        mine, pick = (_full, lambda t: t) if part is None else (lambda t: t.to_local(), part)
        grads[key] = _metrics(mine(p.grad), pick(ref.grads[f32][key]), pick(ref.grads[f64][key]))
        params[key] = _metrics(mine(p.detach()), pick(ref.params[f32][key]), pick(ref.params[f64][key]))
    missing = sorted(set(ref.grads[f32]) - set(grads))
    return {"out": _metrics(out, ref.out[f32], ref.out[f64]), "grads": grads, "params": params, "missing": missing}


def _case_ddp(family: str, rank: int, world: int, mesh: Any) -> dict[str, Any]:
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = _build(family)
    model_ref = copy.deepcopy(model)
    x, target = _data()
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)  # the batch axis
    ref = _Reference(model_ref, x, target, 0.1, rows)
    ddp = DDP(model)
    out = ddp(x[rows])
    ((out - target[rows]) ** 2).mean().backward()  # DDP averages: equal shards give the global mean's gradient
    torch.optim.SGD(ddp.parameters(), lr=0.1).step()
    return _compare(out, ddp, ref)


def _case_fsdp(family: str, rank: int, world: int, mesh: Any) -> dict[str, Any]:
    import torch
    from hcref_torch.parallel import average_gradients, scalar_parameters
    from torch.distributed.fsdp import fully_shard

    model = _build(family)
    model_ref = copy.deepcopy(model)
    x, target = _data()
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    ref = _Reference(model_ref, x, target, 0.1, rows)
    scalars = scalar_parameters(model)
    assert len(scalars) == (1 if family == "mhc" else 4)  # s_alpha and s_beta of two dynamic sites; MHCHead's gate
    for connection, sublayer in zip(model.connections, model.sublayers):
        fully_shard([connection, sublayer], mesh=mesh, ignored_params=scalars)
    fully_shard(model, mesh=mesh, ignored_params=scalars)
    average_gradients(scalars, mesh)
    out = model(x[rows])
    ((out - target[rows]) ** 2).mean().backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    result = _compare(out, model, ref)
    result["sharded"] = sorted(
        k for k, p in model.named_parameters() if type(p).__name__ == "DTensor" or hasattr(p, "placements")
    )
    return result


def _case_sp(family: str, rank: int, world: int, mesh: Any) -> dict[str, Any]:
    import torch
    from torch.distributed.tensor import DTensor, Shard, distribute_module

    model = _build(family)
    model_ref = copy.deepcopy(model)
    x, target = _data()
    ref = _Reference(model_ref, x, target, 0.1)
    distribute_module(model, mesh)  # every parameter Replicate()
    cols = slice(rank * TIME // world, (rank + 1) * TIME // world)  # the time axis
    xs = DTensor.from_local(x[:, cols], mesh, [Shard(1)], run_check=False)
    ts = DTensor.from_local(target[:, cols], mesh, [Shard(1)], run_check=False)
    log = _CommLog()
    with log:
        out = model(xs)
    forward = list(log.log)
    with log:
        ((out - ts) ** 2).mean().backward()
    backward = list(log.log)
    placements = sorted({str(p.grad.placements) for p in model.parameters()})
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    result = _compare(out.full_tensor(), model, ref)
    result.update(forward=forward, backward=backward, grad_placements=placements)
    return result


def _tp_model(family: str, norm: str, mesh: Any) -> tuple[Any, Any]:
    import torch
    from hcref_torch.parallel import WidthParallel
    from torch.distributed.tensor import Partial, distribute_module
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    model = _build(family, norm)
    model_ref = copy.deepcopy(model)
    for connection in model.connections:
        parallelize_module(connection, mesh, WidthParallel())
    if family == "mhc":
        parallelize_module(model.end, mesh, WidthParallel())
    for sublayer in model.sublayers:  # Megatron-style: norm replicated, column- then row-parallel linear
        distribute_module(sublayer[0], mesh)
        parallelize_module(
            sublayer,
            mesh,
            {"1": ColwiseParallel(), "3": RowwiseParallel(output_layouts=Partial(), use_local_output=False)},
        )
    del torch
    return model, model_ref


def _tp_forward(model: Any, x: Any, mesh: Any, log: _CommLog | None = None) -> Any:
    """The stack's forward with the state sharded on its width: x replicated -> out replicated."""
    from hcref_torch.parallel import gather_width, shard_width
    from torch.distributed.tensor import Replicate

    H = shard_width(model.begin(x), mesh)
    for i, (connection, sublayer) in enumerate(zip(model.connections, model.sublayers)):
        if log is not None and i == 0:
            with log:
                h0, state = connection.width(H)
            width_log = list(log.log)
            y = sublayer(h0)
            with log:
                H = connection.depth(y, state)
            model.site_log = (width_log, list(log.log))
        else:
            H = connection(H, sublayer)
    if model.family == "mhc":  # the learned head on the local columns; x (..., d) sharded like one stream
        if log is not None:
            with log:
                x = model.end(H)
            model.head_log = list(log.log)
        else:
            x = model.end(H)
        return x.redistribute(x.device_mesh, [Replicate()]).to_local()
    return model.end(gather_width(H))


def _case_tp(family: str, rank: int, world: int, mesh: Any) -> dict[str, Any]:
    import torch

    model, model_ref = _tp_model(family, "layernorm", mesh)
    x, target = _data()
    ref = _Reference(model_ref, x, target, 0.1)
    log = _CommLog()
    out = _tp_forward(model, x, mesh, log)
    loss = ((out - target) ** 2).mean()
    # the backward collectives of the first site's coefficient step: hook its mixing inputs
    with log:
        loss.backward()
    backward = list(log.log)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    result = _compare(out, model, ref)
    width_log, depth_log = model.site_log
    result.update(width=width_log, depth=depth_log, backward=backward, head=getattr(model, "head_log", None))
    result["placements"] = {k: str(p.placements) for k, p in model.connections[0].named_parameters()}
    return result


def _case_fsdp_tp(family: str, rank: int, world: int, mesh: Any) -> dict[str, Any]:
    """FSDP2 over "dp" composed with WidthParallel over "tp" on a 2 x 2 mesh (the batch split over dp)."""
    import torch
    from hcref_torch.parallel import average_gradients, scalar_parameters
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh2 = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))
    model, model_ref = _tp_model(family, "layernorm", mesh2["tp"])
    x, target = _data()
    dp = mesh2["dp"].get_local_rank()
    rows = slice(dp * BATCH // 2, (dp + 1) * BATCH // 2)
    ref = _Reference(model_ref, x, target, 0.1, rows)

    class Root(nn.Module):  # FSDP's root: the forward enters through it
        def __init__(self, stack: nn.Module) -> None:
            super().__init__()
            self.stack = stack

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _tp_forward(self.stack, x, mesh2["tp"])

    scalars = scalar_parameters(model)
    for connection, sublayer in zip(model.connections, model.sublayers):
        fully_shard([connection, sublayer], mesh=mesh2["dp"], ignored_params=scalars)
    root = Root(model)
    fully_shard(root, mesh=mesh2["dp"], ignored_params=scalars)
    average_gradients(scalars, mesh2["dp"])
    out = root(x[rows])
    ((out - target[rows]) ** 2).mean().backward()
    torch.optim.SGD(model.parameters(), lr=0.1, foreach=False).step()
    tp, n = mesh2["tp"].get_local_rank(), 4

    def phi_local(key: str) -> Any:
        """mHC's phi: FSDP2 labels the 2-D placement of a _StridedShard TP parameter (_StridedShard(0, sf=2),
        _StridedShard(0, sf=4)), which full_tensor() reassembles in the wrong row order (the local shards and
        the computation are right). Compare this rank's rows: its tp columns of every stream, then its dp half."""
        if not key.endswith("phi"):
            return None
        return lambda t: t.reshape(n, 2, -1, t.shape[-1])[:, tp].reshape(-1, t.shape[-1]).chunk(2)[dp]

    result = _compare(out, model, ref, phi_local if family == "mhc" else None)
    result["placements"] = {k: str(p.placements) for k, p in model.connections[0].named_parameters()}
    return result


def _site_options() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("layernorm", {}),
        ("rmsnorm", {"norm": "rmsnorm"}),
        ("none", {"norm": "none"}),
        ("no-tanh-no-scale", {"use_tanh": False, "use_scale": False}),
        ("no-norm", {"use_norm": False}),
        ("static", {"dynamic": False}),
    ]


def _case_tp_options(family: str, rank: int, world: int, mesh: Any) -> dict[str, Any]:
    """One site (coefficients, width, a tanh sublayer, depth) under every option, sharded vs one process."""
    if family == "mhc":
        return _case_tp_options_mhc(rank, world, mesh)
    import hcref_torch as ht
    import torch
    from hcref_torch.parallel import WidthParallel, gather_width, shard_width
    from torch.distributed.tensor.parallel import parallelize_module

    results: dict[str, Any] = {}
    g = torch.Generator().manual_seed(3)
    for name, options in _site_options():
        torch.manual_seed(0)
        site = ht.HyperConnections(4, 16, 1, **options) if family == "hc" else ht.FracConnections(2, 16, **options)
        with torch.no_grad():
            for p in site.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        refs = {dtype: copy.deepcopy(site).to(dtype) for dtype in (torch.float32, torch.float64)}
        shape = (3, 5, 4, 16) if family == "hc" else (3, 5, 2, 8)
        H = torch.randn(shape, generator=g)
        cot = torch.randn(shape, generator=g)
        ref_out, ref_H = {}, {}
        for dtype, ref in refs.items():
            H_ref = H.to(dtype, copy=True).requires_grad_()
            ref_out[dtype] = ref(H_ref, torch.tanh)
            (ref_out[dtype] * cot.to(dtype)).sum().backward()
            ref_H[dtype] = H_ref.grad
        parallelize_module(site, mesh, WidthParallel())
        H_tp = H.clone().requires_grad_()
        out = gather_width(site(shard_width(H_tp, mesh), lambda h: torch.tanh(h)))
        (out * cot).sum().backward()
        f32, f64 = torch.float32, torch.float64
        errs: dict[str, Any] = {
            "out": _metrics(out, ref_out[f32], ref_out[f64]),
            "H": _metrics(H_tp.grad, ref_H[f32], ref_H[f64]),
        }
        for k, p in site.named_parameters():
            grad32, grad64 = getattr(refs[f32], k).grad, getattr(refs[f64], k).grad
            if grad32 is None:
                errs[k] = "none" if p.grad is None else "extra"
            else:
                errs[k] = _metrics(_full(p.grad), grad32, grad64)
        results[name] = errs
    return results


def _case_tp_scale(family: str, rank: int, world: int, mesh: Any) -> dict[str, Any]:
    """Rows of magnitude 1e30 (float32) whose largest entries lie on one rank only: the scale-safe norm's
    cross-rank max. Coefficients and their VJP against the NumPy reference in float64."""
    if family == "mhc":
        return _case_tp_scale_mhc(rank, world, mesh)
    import hcref_torch as ht
    import numpy as np
    import torch
    from hcref_torch.parallel import WidthParallel, shard_width, width_sharded_coeffs
    from torch.distributed.tensor.parallel import parallelize_module

    import hcref

    results: dict[str, Any] = {}
    rng = np.random.default_rng(5)
    for norm in ("layernorm", "rmsnorm"):
        site = ht.HyperConnections(4, 16, 0, norm=norm) if family == "hc" else ht.FracConnections(2, 16, norm=norm)
        with torch.no_grad():
            for p in site.parameters():
                p.add_(torch.as_tensor(0.3 * rng.standard_normal(p.shape), dtype=p.dtype))
        params64 = {k: v.detach().double().numpy() for k, v in site.params().items()}
        shape = (2, 3, 4, 16) if family == "hc" else (2, 3, 2, 8)
        H64 = rng.standard_normal(shape)
        H64[..., : shape[-1] // 2] *= 1e30  # rank 0's columns hold the row maxima
        H64[..., shape[-1] // 2 :] *= 1e29
        g_alpha = rng.standard_normal((*shape[:-1], shape[-2] + 1 if family == "hc" else 2 * shape[-2]))
        g_beta = rng.standard_normal(shape[:-1])
        ref_coeffs = hcref.hc_coeffs if family == "hc" else hcref.fc_coeffs
        ref_vjp = hcref.hc_coeffs_vjp if family == "hc" else hcref.fc_coeffs_vjp
        alpha64, beta64 = ref_coeffs(H64, params64, norm=norm)
        g_H64, g_params64 = ref_vjp(H64, params64, g_alpha, g_beta, norm=norm)
        parallelize_module(site, mesh, WidthParallel())
        H = shard_width(torch.tensor(H64, dtype=torch.float32), mesh).to_local().requires_grad_()
        params = {k: p.to_local() for k, p in site.params().items()}
        alpha, beta = width_sharded_coeffs(site, H, params, mesh.get_group())
        # cotangents as partial sums over the two width shards, as the mixing and write produce them
        (
            torch.sum(alpha * torch.tensor(g_alpha / world, dtype=torch.float32))
            + torch.sum(beta * torch.tensor(g_beta / world, dtype=torch.float32))
        ).backward()
        cols = slice(rank * shape[-1] // world, (rank + 1) * shape[-1] // world)
        errs = {
            "finite": bool(torch.isfinite(alpha).all() and torch.isfinite(H.grad).all()),
            "alpha": _err(alpha, torch.tensor(alpha64)),
            "beta": _err(beta, torch.tensor(beta64)),
            "H": _err(H.grad, torch.tensor(g_H64[..., cols])),
        }
        for k, p in site.named_parameters():
            if k in g_params64:
                errs[k] = _err(_full(p.grad), torch.tensor(g_params64[k]))
        results[norm] = errs
    return results


def _case_tp_bf16(family: str, rank: int, world: int, mesh: Any) -> dict[str, Any]:
    """Mixed precision (D12): float32 parameters, bfloat16 state and sublayer output."""
    if family == "mhc":
        return _case_tp_bf16_mhc(rank, world, mesh)
    import hcref_torch as ht
    import torch
    from hcref_torch.parallel import WidthParallel, gather_width, shard_width
    from torch.distributed.tensor.parallel import parallelize_module

    torch.manual_seed(0)
    site = ht.HyperConnections(4, 16, 1) if family == "hc" else ht.FracConnections(2, 16)
    with torch.no_grad():
        for p in site.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref = copy.deepcopy(site)
    shape = (3, 5, 4, 16) if family == "hc" else (3, 5, 2, 8)
    H = torch.randn(shape).bfloat16()
    H_ref = H.clone().requires_grad_()
    out_ref = ref(H_ref, torch.tanh)
    out_ref.float().sum().backward()
    parallelize_module(site, mesh, WidthParallel())
    H_tp = H.clone().requires_grad_()
    out = gather_width(site(shard_width(H_tp, mesh), torch.tanh))
    out.float().sum().backward()
    result: dict[str, Any] = {"dtype": str(out.dtype), "ref_dtype": str(out_ref.dtype)}
    result["out"] = _err(out, out_ref)
    result["H"] = _err(H_tp.grad, H_ref.grad)
    result["grads"] = {k: _err(_full(p.grad), getattr(ref, k).grad) for k, p in site.named_parameters()}
    return result


# --- mHC: the cases whose inputs differ from HC/FC's ----------------------------------------------------


def _mhc_site_options() -> list[tuple[str, dict[str, Any]]]:
    return [("default", {}), ("v4", {"eps": 1e-6}), ("iters-1", {"iters": 1}), ("static", {"dynamic": False})]


def _mhc_pair(options: dict[str, Any], g: Any) -> tuple[Any, Any]:
    """An mHC site and an MHCHead (n=4, d=16), parameters moved off their init (every path carries gradient)."""
    import torch
    from hcref_torch.mhc_modules import ManifoldHyperConnections, MHCHead

    site = ManifoldHyperConnections(4, 16, 1, **options)
    head = MHCHead(4, 16, eps=options.get("eps", 0.0))
    with torch.no_grad():
        for p in [*site.parameters(), *head.parameters()]:
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return site, head


def _case_tp_options_mhc(rank: int, world: int, mesh: Any) -> dict[str, Any]:
    """An mHC site (coefficients, pre, a tanh sublayer, post) and the MHCHead under every option, sharded vs
    one process (float32 and float64)."""
    import torch
    from hcref_torch.parallel import WidthParallel, shard_width
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import parallelize_module

    results: dict[str, Any] = {}
    g = torch.Generator().manual_seed(3)
    f32, f64 = torch.float32, torch.float64
    for name, options in _mhc_site_options():
        site, head = _mhc_pair(options, g)
        refs = {
            dtype: (copy.deepcopy(site).to(dtype), copy.deepcopy(head).to(dtype))
            for dtype in (torch.float32, torch.float64)
        }
        H = torch.randn(3, 5, 4, 16, generator=g)
        cot = torch.randn(3, 5, 16, generator=g)
        ref_out, ref_H = {}, {}
        for dtype, (ref_site, ref_head) in refs.items():
            H_ref = H.to(dtype, copy=True).requires_grad_()
            ref_out[dtype] = ref_head(ref_site(H_ref, torch.tanh))
            (ref_out[dtype] * cot.to(dtype)).sum().backward()
            ref_H[dtype] = H_ref.grad
        parallelize_module(site, mesh, WidthParallel())
        parallelize_module(head, mesh, WidthParallel())
        H_tp = H.clone().requires_grad_()
        x = head(site(shard_width(H_tp, mesh), torch.tanh))
        out = x.redistribute(mesh, [Replicate()]).to_local()
        (out * cot).sum().backward()
        errs: dict[str, Any] = {
            "out": _metrics(out, ref_out[f32], ref_out[f64]),
            "H": _metrics(H_tp.grad, ref_H[f32], ref_H[f64]),
        }
        for part, module in (("site", site), ("head", head)):
            index = 0 if part == "site" else 1
            for k, p in module.named_parameters():
                grad32, grad64 = getattr(refs[f32][index], k).grad, getattr(refs[f64][index], k).grad
                errs[f"{part}.{k}"] = _metrics(_full(p.grad), grad32, grad64)
        errs["phi_placement"] = str(site.phi.placements) if "phi" in site.keys else "none"
        results[name] = errs
    return results


def _case_tp_scale_mhc(rank: int, world: int, mesh: Any) -> dict[str, Any]:
    """States of magnitude 1e30 (float32) whose largest entries lie on the first ranks' columns: the
    flattened-n*d RMS scaling's cross-rank max. Coefficients, head and their VJPs against the NumPy
    reference in float64."""
    import numpy as np
    import torch
    from hcref_torch.parallel import shard_width, width_sharded_mhc_coeffs, width_sharded_mhc_head

    import hcref

    rng = np.random.default_rng(5)
    results: dict[str, Any] = {}
    n, d = 4, 16
    group = mesh.get_group()
    cols = slice(rank * d // world, (rank + 1) * d // world)
    rows = np.concatenate([np.arange(i * d, (i + 1) * d)[cols] for i in range(n)])  # phi's rows of this rank
    for eps in (0.0,):  # eps > 0 changes Sinkhorn, not the reductions over the width (tp_options covers it)
        site = {k: v + 0.3 * rng.standard_normal(np.shape(v)) for k, v in hcref.init_mhc(n, d, 0).items()}
        head = {k: v + 0.3 * rng.standard_normal(np.shape(v)) for k, v in hcref.init_mhc_head(n, d).items()}
        H64 = rng.standard_normal((2, 3, n, d))
        H64[..., : d // 2] *= 1e30
        H64[..., d // 2 :] *= 1e29
        coeffs64 = hcref.mhc_coeffs(H64, site, eps=eps)
        g_coeffs = [rng.standard_normal(c.shape) for c in coeffs64]
        g_H64, g_site64 = hcref.mhc_coeffs_vjp(H64, site, *g_coeffs, eps=eps)
        x64 = hcref.mhc_head(H64, head, eps=eps)
        g_x = rng.standard_normal(x64.shape)
        g_Hh64, g_head64 = hcref.mhc_head_vjp(H64, head, g_x, eps=eps)

        def local(params: dict[str, Any]) -> dict[str, Any]:
            return {
                k: torch.tensor(v[rows] if k == "phi" else v, dtype=torch.float32, requires_grad=True)
                for k, v in params.items()
            }

        H = shard_width(torch.tensor(H64, dtype=torch.float32), mesh).to_local().requires_grad_()
        p_site, p_head = local(site), local(head)
        coeffs = width_sharded_mhc_coeffs(H, p_site, d=d, group=group, iters=20, eps=eps)
        x = width_sharded_mhc_head(H, p_head, d=d, group=group, eps=eps)
        # cotangents of the coefficients as partial sums over the shards, as mhc_pre / mhc_post produce them
        loss = sum(torch.sum(c * torch.tensor(gc / world, dtype=torch.float32)) for c, gc in zip(coeffs, g_coeffs))
        loss = loss + torch.sum(x * torch.tensor(g_x[..., cols], dtype=torch.float32))
        loss.backward()
        errs: dict[str, Any] = {
            "finite": bool(all(torch.isfinite(c).all() for c in coeffs) and torch.isfinite(H.grad).all()),
            **{f"coeff{i}": _err(c, torch.tensor(c64)) for i, (c, c64) in enumerate(zip(coeffs, coeffs64))},
            "x": _err(x, torch.tensor(x64[..., cols])),
            "H": _err(H.grad, torch.tensor((g_H64 + g_Hh64)[..., cols])),
        }
        for part, params, ref in (("site", p_site, g_site64), ("head", p_head, g_head64)):
            for k, p in params.items():
                errs[f"{part}.{k}"] = _err(p.grad, torch.tensor(ref[k][rows] if k == "phi" else ref[k]))
        results[f"eps={eps}"] = errs
    return results


def _case_tp_bf16_mhc(rank: int, world: int, mesh: Any) -> dict[str, Any]:
    """Mixed precision (D12): float32 parameters, bfloat16 state and sublayer output; site and head."""
    import torch
    from hcref_torch.parallel import WidthParallel, shard_width
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import parallelize_module

    g = torch.Generator().manual_seed(0)
    site, head = _mhc_pair({}, g)
    ref_site, ref_head = copy.deepcopy(site), copy.deepcopy(head)
    H = torch.randn(3, 5, 4, 16, generator=g).bfloat16()
    H_ref = H.clone().requires_grad_()
    out_ref = ref_head(ref_site(H_ref, torch.tanh))
    out_ref.float().sum().backward()
    parallelize_module(site, mesh, WidthParallel())
    parallelize_module(head, mesh, WidthParallel())
    H_tp = H.clone().requires_grad_()
    x = head(site(shard_width(H_tp, mesh), torch.tanh))
    out = x.redistribute(mesh, [Replicate()]).to_local()
    out.float().sum().backward()
    result: dict[str, Any] = {"dtype": str(out.dtype), "ref_dtype": str(out_ref.dtype)}
    result["out"] = _err(out, out_ref)
    result["H"] = _err(H_tp.grad, H_ref.grad)
    result["grads"] = {
        f"{part}.{k}": _err(_full(p.grad), getattr(ref, k).grad)
        for part, module, ref in (("site", site, ref_site), ("head", head, ref_head))
        for k, p in module.named_parameters()
    }
    return result


CASES: dict[str, Callable[[str, int, int, Any], dict[str, Any]]] = {
    "ddp": _case_ddp,
    "fsdp": _case_fsdp,
    "sp": _case_sp,
    "tp": _case_tp,
    "fsdp_tp": _case_fsdp_tp,
    "tp_options": _case_tp_options,
    "tp_scale": _case_tp_scale,
    "tp_bf16": _case_tp_bf16,
}


def _worker(rank: int, world: int, store: str, out_dir: str) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    results: dict[str, Any] = {}
    try:
        mesh = init_device_mesh("cpu", (world,))
        for name, case in CASES.items():
            for family in FAMILIES:
                start = time.perf_counter()
                try:
                    results[f"{name}/{family}"] = case(family, rank, world, mesh)
                except Exception:
                    results[f"{name}/{family}"] = {"error": traceback.format_exc()}
                results[f"{name}/{family}"]["seconds"] = time.perf_counter() - start
                dist.barrier()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results, default=str))
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------
# test side
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("torch")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    tmp = tmp_path_factory.mktemp("torch_dist")
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "backends"), str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--world",
        str(WORLD),
        "--store",
        str(tmp / "store"),
        "--out",
        str(tmp),
    ]
    procs = [
        subprocess.Popen([*cmd, "--rank", str(r)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(WORLD)
    ]
    logs = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            logs.append(out)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the {WORLD} gloo workers did not finish within {TIMEOUT_S} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    per_rank = []
    for r in range(WORLD):
        path = tmp / f"rank{r}.json"
        assert path.exists(), f"rank {r} wrote no results; its output:\n{logs[r][-4000:]}"
        per_rank.append(json.loads(path.read_text()))
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-4000:] for log in logs)
    return {"ranks": per_rank}


def _case(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    out = []
    for rank, res in enumerate(results["ranks"]):
        assert name in res, f"rank {rank} has no result for {name}"
        assert "error" not in res[name], f"rank {rank}, {name}:\n{res[name]['error']}"
        out.append(res[name])
    return out


def _within_rounding(m: dict[str, float], scale: float | None = None) -> bool:
    return m["err"] <= SLACK * (m["base"] + EPS32 * (m["scale"] if scale is None else scale))


def _check_step(res: dict[str, Any]) -> None:
    assert not res["missing"], f"no gradient compared for {res['missing']}"
    assert _within_rounding(res["out"]), res["out"]
    for kind in ("grads", "params"):
        scale = max(m["scale"] for m in res[kind].values())
        bad = {k: v for k, v in res[kind].items() if not _within_rounding(v, scale)}
        assert not bad, f"{kind} differ from the single-process step by more than float32 rounding: {bad}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("plan", PLANS)
def test_sharded_step_equals_single_process_step(results: dict[str, Any], plan: str, family: str) -> None:
    for res in _case(results, f"{plan}/{family}"):
        _check_step(res)
        assert len(res["grads"]) == GRADS[family]  # every parameter: the sites', MHCHead's, the MLPs'


@pytest.mark.parametrize("family", FAMILIES)
def test_sequence_parallel_communicates_only_gradients(results: dict[str, Any], family: str) -> None:
    for res in _case(results, f"sp/{family}"):
        assert res["forward"] == [] and res["backward"] == [], (res["forward"], res["backward"])
        assert res["grad_placements"] == ["(Partial(sum),)"]


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp_shards_all_but_the_gates(results: dict[str, Any], family: str) -> None:
    for res in _case(results, f"fsdp/{family}"):
        gates = [k for k in res["grads"] if k.endswith(("s_alpha", "s_beta")) or k == "end.gate"]
        assert len(gates) == (1 if family == "mhc" else 4) and not set(gates) & set(res["sharded"])
        assert len(res["sharded"]) == len(res["grads"]) - len(gates)


@pytest.mark.parametrize("family", ["hc", "fc"])
def test_tensor_parallel_collectives_per_site(results: dict[str, Any], family: str) -> None:
    """The collectives of hcref_torch.parallel's plan, and no other, for a layernorm site (2 ranks).

    width: MAX of the row max-abs (k per token), SUM of the row sums (k), one SUM of [projections | second
    moments] (k (c+2) per token and 2 (c+1) parameter floats), then the all-gather of h0 for the sublayer;
    depth: the reduce-scatter of y; backward: one SUM of [g_alpha | g_beta] (k (c+1)) per site, the rest
    (g_y, g_h0: d per token) belongs to the sublayer. No collective carries the state H.
    """
    k, c, w = (4, 5, 16) if family == "hc" else (2, 4, 8)
    batch, time_ = BATCH, TIME
    tokens = batch * time_
    for res in _case(results, f"tp/{family}"):
        width = res["width"]
        assert [op for op, _ in width] == ["allreduce_"] * 3 + ["all_gather_into_tensor"], width
        assert [shapes[0] for _, shapes in width[:3]] == [
            [batch, time_, k, 1],
            [batch, time_, k, 1],
            [tokens * k * (c + 2) + 2 * (c + 1)],
        ], width
        assert [op for op, _ in res["depth"]] == ["reduce_scatter_tensor"], res["depth"]
        coeff_grads = [shapes for op, shapes in res["backward"] if shapes == [[batch, time_, k, c + 1]]]
        assert len(coeff_grads) == 2, res["backward"]  # one per site
        sizes = [math.prod(shapes[0]) for _, shapes in res["backward"] if shapes != [[batch, time_, k, c + 1]]]
        assert len(sizes) == 4, res["backward"]
        assert max(sizes) <= tokens * 16, res["backward"]  # at most d per token: h0 and y, never H
        if family == "hc":
            assert max(sizes) < tokens * k * w  # the whole state
        assert "Shard(dim=0)" in res["placements"]["W_alpha"]
        assert "Replicate" in res["placements"]["A" if family == "fc" else "A_r"]


@pytest.mark.parametrize("family", ["hc", "fc"])
def test_tensor_parallel_every_option(results: dict[str, Any], family: str) -> None:
    for res in _case(results, f"tp_options/{family}"):
        assert len(res) == len(_site_options()) + 1  # and "seconds"
        for name, errs in res.items():
            if name == "seconds":
                continue
            scale = max(err["scale"] for key, err in errs.items() if isinstance(err, dict) and key not in ("out", "H"))
            for key, err in errs.items():
                own = key in ("out", "H")  # activations: their own scale; parameter gradients: normwise
                ok = err == "none" or (isinstance(err, dict) and _within_rounding(err, None if own else scale))
                assert ok, (name, key, err)


@pytest.mark.parametrize("family", FAMILIES)
def test_tensor_parallel_scale_safe_norm_uses_the_global_row_max(results: dict[str, Any], family: str) -> None:
    for res in _case(results, f"tp_scale/{family}"):
        for norm in ("eps=0.0",) if family == "mhc" else ("layernorm", "rmsnorm"):
            errs = res[norm]
            assert errs["finite"], errs
            bad = {k: v for k, v in errs.items() if k != "finite" and v[1] > 1e-4}
            assert not bad, (norm, bad)


@pytest.mark.parametrize("family", FAMILIES)
def test_tensor_parallel_mixed_precision(results: dict[str, Any], family: str) -> None:
    for res in _case(results, f"tp_bf16/{family}"):
        assert res["dtype"] == res["ref_dtype"]  # whatever ops.hc_depth / fc_depth return for a bfloat16 state
        assert res["out"][1] <= 2**-7 and res["H"][1] <= 2**-7, res
        assert all(v[1] <= 1e-2 for v in res["grads"].values()), res["grads"]


def test_mhc_tensor_parallel_collectives_per_site(results: dict[str, Any]) -> None:
    """hcref_torch.parallel's mHC plan (4 ranks), and no other collective.

    Site width: MAX of the token's max|vec(H)| (1 float per token), one SUM of [v phi | sum (v/s)^2]
    (k + 1 = 2n + n^2 + 1 floats per token), then the all-gather of h0 (d); depth: the reduce-scatter of y
    (d); backward: one SUM of the coefficients' cotangents (k per token) per site, and the sublayer's two (g_y,
    g_h0: d per token). MHCHead: MAX (1) and SUM (n + 1) forward, SUM of w's cotangent (n) backward; its output
    x (..., d) is sharded like one stream (gathering it costs d per token forward, nothing backward). No
    collective carries the state H (n d per token).
    """
    n, d = 4, 16
    k = 2 * n + n * n
    lead = [BATCH, TIME]
    tokens = BATCH * TIME
    for res in _case(results, "tp/mhc"):
        width = res["width"]
        assert [op for op, _ in width] == ["allreduce_", "allreduce_", "all_gather_into_tensor"], width
        assert [shapes[0] for _, shapes in width[:2]] == [[*lead, 1], [*lead, k + 1]], width
        assert [op for op, _ in res["depth"]] == ["reduce_scatter_tensor"], res["depth"]
        assert [(op, shapes[0]) for op, shapes in res["head"]] == [
            ("allreduce_", [*lead, 1]),
            ("allreduce_", [*lead, n + 1]),
        ], res["head"]
        backward = [(op, shapes[0]) for op, shapes in res["backward"]]
        assert backward.count(("allreduce_", [*lead, k])) == 2, backward  # one per site
        assert backward.count(("allreduce_", [*lead, n])) == 1, backward  # the head's
        mine = (("allreduce_", [*lead, k]), ("allreduce_", [*lead, n]))
        others = [math.prod(shape) for op, shape in backward if (op, shape) not in mine]
        assert len(others) == 4, backward  # per site the sublayer's: g_y (all-gather), g_h0 (all-reduce)
        assert max(others) <= tokens * d < tokens * n * d, backward  # at most d per token, never H
        assert res["placements"]["phi"] == "(_StridedShard(dim=0, sf=4),)", res["placements"]
        assert "Replicate" in res["placements"]["b"] and "Replicate" in res["placements"]["gates"]


def test_mhc_tensor_parallel_every_option(results: dict[str, Any]) -> None:
    for res in _case(results, "tp_options/mhc"):
        assert len(res) == len(_mhc_site_options()) + 1  # and "seconds"
        for name, errs in res.items():
            if name == "seconds":
                continue
            assert errs.pop("phi_placement") in ("(_StridedShard(dim=0, sf=4),)", "none"), name
            grads = [err for key, err in errs.items() if key not in ("out", "H")]
            assert len(grads) == (6 if name != "static" else 4), (name, errs)
            scale = max(err["scale"] for err in grads)
            for key, err in errs.items():
                assert _within_rounding(err, None if key in ("out", "H") else scale), (name, key, err)


def test_fsdp_gpt_example_matches_one_process(tmp_path: Path) -> None:
    """``python examples/torch_gpt_fsdp.py --procs 2`` (FSDP2, gloo) prints the losses of the same loop in
    one process, to float32 rounding. mHC with the learned MHCHead (whose 0-dim gate FSDP2 leaves to
    average_gradients) where examples/torch_gpt.py has an mhc mode, else HC (the step tests cover both)."""
    import importlib.util

    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("torch_gpt_fsdp", ROOT / "examples" / "torch_gpt_fsdp.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    try:
        example.GPT(8, d=8, layers=1, heads=1, context=4, mode="mhc", rate=2, mhc_head=True)
        mode = ["--mode", "mhc", "--mhc-head"]
    except (ValueError, TypeError):  # examples/torch_gpt.py without the mhc mode (issue 11's examples)
        mode = ["--mode", "hc"]
    losses_path = tmp_path / "losses.json"
    cmd = [sys.executable, str(ROOT / "examples" / "torch_gpt_fsdp.py"), *mode, "--procs", "2", "--steps", "2"]
    proc = subprocess.run(
        [*cmd, "--losses", str(losses_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sharded = json.loads(losses_path.read_text())
    single = example.run(0, 1, mode[1], steps=2, verbose=False, mhc_head=len(mode) == 3)
    assert len(sharded) == len(single) == 2
    assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(sharded, single)), (sharded, single)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    _worker(args.rank, args.world, args.store, args.out)


if __name__ == "__main__":
    main()
