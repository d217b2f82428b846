"""Hyper-Connections and Frac-Connections under ``torch.distributed``: the plans, one per kind of sharding.

Named dims: ``...`` token axes (batch, time), ``k`` rows of the state (HC: n streams, FC: m fractions),
``w`` their width (HC: d, FC: e = d/m), ``c`` coefficient columns (HC: n+1, FC: 2m), ``T`` ranks.

Tokens sharded (DDP, FSDP2, sequence parallelism). Every coefficient, mixing and write of a site acts
on one token at a time (math.md 1: "all connection maths is per token"), so a rank holding a slice of
the tokens computes its slice exactly and nothing crosses ranks but the parameter gradients, which are
sums over tokens. The modules therefore run unchanged:

- ``DistributedDataParallel(model)``: nothing to do.
- ``fully_shard`` (FSDP2) refuses 0-dim parameters ("fully_shard doesn't support scalar parameters"),
  and the contract's gates ``s_alpha`` / ``s_beta`` have shape ``()``. Leave them to FSDP's
  ``ignored_params`` and average their gradients DDP-style::

      scalars = scalar_parameters(model)              # s_alpha, s_beta of every dynamic site
      for block in blocks: fully_shard(block, mesh=mesh, ignored_params=scalars)
      fully_shard(model, mesh=mesh, ignored_params=scalars)
      average_gradients(scalars, mesh)                # one all-reduce of 4 bytes per gate per step

- sequence parallelism with DTensor: ``distribute_module(connection, mesh)`` (parameters
  ``Replicate()``) and ``H`` a DTensor with ``Shard(1)`` (the time axis). Forward and backward issue
  no collective at all; the parameter gradients come out ``Partial()`` and are summed where they are
  consumed (the optimizer step, ``full_tensor()``, gradient clipping).

Width sharded (tensor parallelism): :class:`WidthParallel`, a ``ParallelStyle`` for
``parallelize_module``. The state ``H (..., k, w)`` is a DTensor sharded on its last axis
(``Shard(-1)``: d for HC, e for FC, so the n-fold HC state costs ``n d / T`` per token and rank). The
width-sized parameters (``W_alpha``, ``W_beta``, ``norm_weight``, ``norm_bias``: dim 0 is ``w``) become
``Shard(0)`` DTensors, the rest ``Replicate()``. Mixing (``alpha^T H``) and writing
(``beta y + H_res``) act column by column, so they run on the local columns with no communication.
The coefficient step reduces over ``w`` and is computed by :class:`_WidthShardedCoeffs` with explicit
collectives on the mesh's process group (per token, per site; ``k (.)`` floats each)::

    forward   all-reduce MAX   row max|H|          k            scale-safe norm (D12); no backward
              all-reduce SUM   row sum of H/s      k            layernorm only (the mean)
              all-reduce SUM   [H_hat W | sum H_c^2]  k (c+2)   projections and the second moment,
                                                              with 2 (c+1) parameter floats per step
    backward  all-reduce SUM   [g_alpha | g_beta]  k (c+1)   the only one: the norm's backward is
                                                              closed-form from replicated values

``norm="rmsnorm"`` skips the mean, ``norm="none"`` (or ``use_norm=False``) needs only the projection.
``width`` all-gathers ``h0`` for the sublayer (d per token) and ``depth`` reduce-scatters the sublayer's
partial sums ``y`` into the width shards (d per token): the two collectives a Megatron-style
sequence-parallel block has per sublayer anyway, so the HC/FC state adds only the small statistics above.
``h0`` is handed to the sublayer as a ``Replicate()`` DTensor; ``y`` may come back ``Partial()`` (the
cheapest: ``RowwiseParallel(output_layouts=Partial(), use_local_output=False)``), ``Replicate()`` or,
for HC, ``Shard(-1)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle
from torch.utils.hooks import RemovableHandle

from hcref.norms import LAYERNORM_EPS, RMSNORM_EPS

from . import ops
from .modules import FracConnections, HyperConnections, SiteState, _Connection

Tensor = torch.Tensor

__all__ = [
    "FAMILIES",
    "FamilyPlan",
    "WidthParallel",
    "average_gradients",
    "gather_width",
    "scalar_parameters",
    "shard_width",
    "width_sharded_coeffs",
]


# --- data parallel: FSDP2 and the 0-dim gates ------------------------------------------------------


def scalar_parameters(module: nn.Module) -> set[nn.Parameter]:
    """The 0-dim parameters of ``module`` (the gates ``s_alpha``, ``s_beta`` of every dynamic HC/FC site).

    ``fully_shard`` raises ``ValueError`` on 0-dim parameters; pass this set as its ``ignored_params``
    (in every ``fully_shard`` call that would otherwise manage them) and reduce their gradients with
    :func:`average_gradients`.
    """
    return {p for p in module.parameters() if p.ndim == 0}


def average_gradients(
    params: Iterable[nn.Parameter], mesh: DeviceMesh | dist.ProcessGroup | None = None
) -> list[RemovableHandle]:
    """Average the gradient of each parameter over the ranks of ``mesh`` (a 1-D mesh or a process group;
    default: the world) as it is computed in backward, as DDP and FSDP do for their parameters.

    The hook acts on the incoming gradient, before it is accumulated into ``.grad``, so gradient
    accumulation over micro-batches stays correct. A DTensor gradient (a parameter that is also tensor
    parallel) is averaged shard by shard. Returns the hook handles.
    """
    group = mesh.get_group() if isinstance(mesh, DeviceMesh) else mesh
    world = dist.get_world_size(group)

    def hook(grad: Tensor) -> Tensor:
        grad = grad.clone()
        local = grad.to_local() if isinstance(grad, DTensor) else grad
        dist.all_reduce(local, group=group)
        local.div_(world)
        return grad

    return [p.register_hook(hook) for p in params]  # type: ignore[no-untyped-call]


# --- tensor parallel: the width sharded --------------------------------------------------------------


@dataclass(frozen=True)
class FamilyPlan:
    """How one connection family runs with its width sharded (one entry of :data:`FAMILIES`).

    ``width_keys``: parameters whose dim 0 is the width ``w`` (placed ``Shard(0)``); every other key is
    replicated. ``static``: the static ``(alpha, beta)`` of the family from its parameters. ``coeffs``,
    ``width``, ``depth``: the per-rank computation on local shards (see :class:`WidthParallel`).
    A further family (mHC) joins as one more entry.
    """

    width_keys: tuple[str, ...]
    static: Callable[[Mapping[str, Tensor]], tuple[Tensor, Tensor]]
    width: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    depth: Callable[[Tensor, Tensor, Tensor], Tensor]
    merges_h0: bool
    """FC: h0 is the concatenation of the m fractions, so its d-layout interleaves the width shards
    and it is handed to the sublayer gathered; HC: h0 is sharded like one stream."""


FAMILIES: dict[str, FamilyPlan] = {
    "hc": FamilyPlan(
        width_keys=("W_alpha", "W_beta", "norm_weight", "norm_bias"),
        static=lambda p: (torch.cat([p["A_m"].unsqueeze(-1), p["A_r"]], dim=-1), p["B"]),
        width=ops.hc_width,
        depth=ops.hc_depth,
        merges_h0=False,
    ),
    "fc": FamilyPlan(
        width_keys=("W_alpha", "W_beta", "norm_weight", "norm_bias"),
        static=lambda p: (torch.cat([p["Y"], p["A"]], dim=-1), p["B"]),
        width=ops.fc_width,
        depth=ops.fc_depth,
        merges_h0=True,
    ),
}
"""The width-parallel plan of each connection family, keyed by the module's ``family``."""


def _rows(module: _Connection) -> tuple[int, int]:
    """(k, w) of a connection module: (n, d) for HC, (m, d/m) for FC."""
    if isinstance(module, HyperConnections):
        return module.n, module.d
    if isinstance(module, FracConnections):
        return module.m, module.d // module.m
    raise TypeError(f"module: expected a HyperConnections or FracConnections, got {type(module).__name__}")


def shard_width(H: Tensor, mesh: DeviceMesh) -> DTensor:
    """A state ``H (..., k, w)`` that every rank holds in full (e.g. computed from a replicated embedding)
    as a DTensor sharded on its last axis: each rank keeps its columns, no communication. Differentiable."""
    return DTensor.from_local(H, mesh, [Replicate()], run_check=False).redistribute(mesh, [Shard(H.ndim - 1)])


def gather_width(H: DTensor) -> Tensor:
    """The full state on every rank (all-gather of the last axis; differentiable). Use before ``Reduce`` /
    ``FracMerge`` and the model's final norm."""
    return H.redistribute(H.device_mesh, [Replicate()]).to_local()


@dataclass(frozen=True)
class _Config:
    group: Any
    w: int
    norm: str  # "layernorm", "rmsnorm" or "none" (use_norm off)
    use_tanh: bool
    use_scale: bool
    ct: torch.dtype
    out_dtype: torch.dtype


def _all_reduce(t: Tensor, group: Any, op: Any = dist.ReduceOp.SUM) -> Tensor:
    t = t.contiguous()
    dist.all_reduce(t, op=op, group=group)
    return t


def _row_scale(amax: Tensor) -> Tensor:
    """``s = 2^floor(log2(max(amax, 1)))`` (``hcref.norms.row_scale`` of the row max-abs ``amax``)."""
    _, exponent = torch.frexp(amax)
    return torch.ldexp(torch.ones_like(amax), (exponent - 1).clamp_min(0))


def _sum_tokens(x: Tensor, keep: int) -> Tensor:
    """Sum over every axis but the last ``keep`` (parameter gradients are sums over tokens)."""
    return x.reshape(-1, *x.shape[x.ndim - keep :]).sum(0)


class _WidthShardedCoeffs(torch.autograd.Function):
    """``alpha = static_alpha + s_alpha u(norm(H) W_alpha)``, ``beta = static_beta + s_beta u(norm(H) W_beta)``
    (``hcref._core.coeffs``) with ``H``, ``W_*`` and the norm's weights sharded over the width.

    Forward (x = H_local, s the scale-safe row scale, D12)::

        s     = row_scale(allreduce_max(max|x|))              x' = x / s
        mu    = allreduce_sum(sum x') / w                     (layernorm; 0 for rmsnorm)
        [P|Q] = allreduce_sum([((x'-mu) nw) W | sum (x'-mu)^2]),  with wW = nw W, bW = nb W (one buffer)
        r'    = (max(Q / w + eps / s / s, subnormal))^(-1/2),  x_hat = (x' - mu) r',  v = r' P
        u     = v + bW                                        (= (x_hat nw + nb) W, the projections)

    Backward. The cotangents of alpha and beta arrive as partial sums over the width shards (their only
    consumers, the local mixing and write, contract over the local columns) and are all-reduced once.
    The norm's VJP (math.md 5.1) ``g_x = r (g_hat - mean(g_hat) - x_hat mean(g_hat x_hat))`` with
    ``g_hat = nw (g_u W^T)`` needs two row means over the whole width, both available without
    communication: ``mean(g_hat x_hat) = <g_u, v> / w`` and ``mean(g_hat) = <g_u, wW> / w``.
    Parameter gradients of the sharded keys are local row blocks; those of the replicated keys are
    computed from all-reduced values and are identical on every rank.
    """

    @staticmethod
    def forward(
        ctx: Any,
        H: Tensor,
        W_alpha: Tensor,
        W_beta: Tensor,
        norm_weight: Tensor | None,
        norm_bias: Tensor | None,
        s_alpha: Tensor,
        s_beta: Tensor,
        static_alpha: Tensor,
        static_beta: Tensor,
        cfg: _Config,
    ) -> tuple[Tensor, Tensor]:
        ct, w = cfg.ct, cfg.w
        x = H.to(ct)
        W = torch.cat([W_alpha.to(ct), W_beta.to(ct).unsqueeze(-1)], dim=-1)  # (w_local, c+1)
        x_hat = r = v = wW = None
        if cfg.norm == "none":
            u = _all_reduce(x @ W, cfg.group)
        else:
            s = _row_scale(_all_reduce(x.abs().amax(dim=-1, keepdim=True), cfg.group, dist.ReduceOp.MAX))
            xc = x / s
            if cfg.norm == "layernorm":
                xc = xc - _all_reduce(xc.sum(dim=-1, keepdim=True), cfg.group) / w
            assert norm_weight is not None
            nw = norm_weight.to(ct)
            tokens = torch.cat([(xc * nw) @ W, (xc * xc).sum(dim=-1, keepdim=True)], dim=-1)  # (..., k, c+2)
            per_param = [nw @ W] + ([norm_bias.to(ct) @ W] if cfg.norm == "layernorm" else [])  # type: ignore[union-attr]
            flat = _all_reduce(torch.cat([tokens.reshape(-1), *per_param]), cfg.group)
            c1 = W.shape[-1]
            tokens = flat[: tokens.numel()].view(tokens.shape)
            wW = flat[tokens.numel() : tokens.numel() + c1]
            eps = LAYERNORM_EPS if cfg.norm == "layernorm" else RMSNORM_EPS
            a = tokens[..., c1:] / w + eps / s / s
            # floored at the smallest subnormal, as hcref.norms (only a zero variance with eps/s^2 underflowed)
            r_scaled = torch.rsqrt(a.clamp_min(torch.finfo(ct).tiny * torch.finfo(ct).eps))
            x_hat = xc * r_scaled
            r = r_scaled / s
            v = r_scaled * tokens[..., :c1]
            u = v + flat[tokens.numel() + c1 :] if cfg.norm == "layernorm" else v
        t = torch.tanh(u) if cfg.use_tanh else u
        c = static_alpha.shape[-1]
        sa = s_alpha.to(ct) if cfg.use_scale else torch.ones((), dtype=ct, device=x.device)
        sb = s_beta.to(ct) if cfg.use_scale else torch.ones((), dtype=ct, device=x.device)
        alpha = static_alpha.to(ct) + sa * t[..., :c]
        beta = static_beta.to(ct) + sb * t[..., c]
        ctx.cfg = cfg
        ctx.dtypes = (H.dtype, W_alpha.dtype, W_beta.dtype, s_alpha.dtype, s_beta.dtype, static_alpha.dtype)
        ctx.save_for_backward(x if cfg.norm == "none" else x_hat, r, v, wW, t, W, sa, sb, norm_weight, norm_bias)
        return alpha.to(cfg.out_dtype), beta.to(cfg.out_dtype)

    @staticmethod
    def backward(ctx: Any, g_alpha: Tensor, g_beta: Tensor) -> tuple[Tensor | None, ...]:
        cfg: _Config = ctx.cfg
        ct, w = cfg.ct, cfg.w
        x_or_hat, r, v, wW, t, W, sa, sb, norm_weight, norm_bias = ctx.saved_tensors
        H_dtype, Wa_dtype, Wb_dtype, sa_dtype, sb_dtype, static_dtype = ctx.dtypes
        c = t.shape[-1] - 1
        g = _all_reduce(torch.cat([g_alpha.to(ct), g_beta.to(ct).unsqueeze(-1)], dim=-1), cfg.group)
        g_static_alpha = _sum_tokens(g[..., :c], 2).to(static_dtype)
        g_static_beta = _sum_tokens(g[..., c], 1).to(static_dtype)
        g_sa = g_sb = None
        if cfg.use_scale:
            g_sa = (g[..., :c] * t[..., :c]).sum().to(sa_dtype)
            g_sb = (g[..., c] * t[..., c]).sum().to(sb_dtype)
            g = torch.cat([g[..., :c] * sa, (g[..., c] * sb).unsqueeze(-1)], dim=-1)
        if cfg.use_tanh:
            g = g * (1 - t * t)
        g_rows = g.reshape(-1, g.shape[-1])  # (tokens * k, c+1)
        g_weight = g_bias = None
        if cfg.norm == "none":
            x = x_or_hat
            g_W = x.reshape(-1, x.shape[-1]).transpose(0, 1) @ g_rows
            g_x = g @ W.transpose(0, 1)
        else:
            x_hat = x_or_hat
            nw = norm_weight.to(ct)
            proj_in = x_hat * nw + (norm_bias.to(ct) if cfg.norm == "layernorm" else 0)
            g_W = proj_in.reshape(-1, proj_in.shape[-1]).transpose(0, 1) @ g_rows
            g_in = g @ W.transpose(0, 1)  # (..., k, w_local): cotangent of the normalised, affine row
            g_weight = _sum_tokens(g_in * x_hat, 1).to(norm_weight.dtype)
            g_hat = g_in * nw
            mean_gx = (g * v).sum(dim=-1, keepdim=True) / w
            if cfg.norm == "layernorm":
                g_bias = _sum_tokens(g_in, 1).to(norm_bias.dtype)
                g_x = r * (g_hat - (g @ wW).unsqueeze(-1) / w - x_hat * mean_gx)
            else:
                g_x = r * (g_hat - x_hat * mean_gx)
        return (
            g_x.to(H_dtype),
            g_W[:, :c].to(Wa_dtype),
            g_W[:, c].to(Wb_dtype),
            g_weight,
            g_bias,
            g_sa,
            g_sb,
            g_static_alpha,
            g_static_beta,
            None,
        )


class _SumGradients(torch.autograd.Function):
    """Identity forward; backward all-reduces the cotangent (partial sums over the width shards)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        return x.clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        return _all_reduce(g.clone(), ctx.group), None


def _apply(fn: type[torch.autograd.Function], *args: Any) -> Any:
    return fn.apply(*args)  # type: ignore[no-untyped-call]


def width_sharded_coeffs(
    module: _Connection, H_local: Tensor, params: Mapping[str, Tensor], group: Any
) -> tuple[Tensor, Tensor]:
    """The coefficients ``alpha (..., k, c)``, ``beta (..., k)`` of ``module`` (replicated on every rank)
    from the local columns ``H_local (..., k, w/T)`` and the local parameter shards ``params``.

    Same math, options and dtypes as ``ops.hc_coeffs`` / ``ops.fc_coeffs`` (scale-safe norm, D12);
    collectives as in the module docstring. The cotangents of the results must be partial sums over
    the width shards (true for the site's own mixing and write).
    """
    _, w = _rows(module)
    out_dtype = ops._promote(H_local, *params.values())
    ct = ops._compute_dtype(out_dtype)
    static_alpha, static_beta = FAMILIES[module.family].static(params)
    if not getattr(module, "dynamic", True) or "W_alpha" not in params:
        lead = H_local.shape[:-2]
        alpha = _apply(_SumGradients, static_alpha, group).to(out_dtype).expand(*lead, *static_alpha.shape)
        beta = _apply(_SumGradients, static_beta, group).to(out_dtype).expand(*lead, *static_beta.shape)
        return alpha, beta
    norm = module.norm if module.use_norm else "none"
    cfg = _Config(group, w, norm, module.use_tanh, module.use_scale, ct, out_dtype)
    with ops._no_autocast(H_local):
        out: tuple[Tensor, Tensor] = _apply(
            _WidthShardedCoeffs,
            H_local,
            params["W_alpha"],
            params["W_beta"],
            params.get("norm_weight"),
            params.get("norm_bias"),
            params["s_alpha"],
            params["s_beta"],
            static_alpha,
            static_beta,
            cfg,
        )
    return out


class _WidthParallelConnection:
    """Mixin that replaces ``width`` / ``depth`` of a connection module whose width is sharded."""

    _tp_mesh: DeviceMesh

    def width(self, H: Tensor) -> tuple[Tensor, SiteState]:
        module: Any = self
        plan = FAMILIES[module.family]
        mesh = self._tp_mesh
        last = H.ndim - 1
        if not isinstance(H, DTensor):
            raise TypeError(
                f"H: expected a DTensor sharded on its last axis over the module's mesh, got {type(H).__name__} "
                "(hcref_torch.parallel.shard_width makes one from a replicated tensor)"
            )
        if H.placements != (Shard(last),):
            H = H.redistribute(mesh, [Shard(last)])
        H_local = H.to_local()
        params = {key: p.to_local() if isinstance(p, DTensor) else p for key, p in module.params().items()}
        alpha, beta = width_sharded_coeffs(module, H_local, params, mesh.get_group())
        first, H_res_local = plan.width(H_local, alpha)
        H_res = DTensor.from_local(H_res_local, mesh, [Shard(last)], run_check=False)
        if plan.merges_h0:
            k = H_local.shape[-2]
            parts = DTensor.from_local(first.reshape(*first.shape[:-1], k, -1), mesh, [Shard(last)], run_check=False)
            h0 = parts.redistribute(mesh, [Replicate()]).reshape(*H.shape[:-2], k * H.shape[-1])
        else:
            h0 = DTensor.from_local(first, mesh, [Shard(last - 1)], run_check=False).redistribute(mesh, [Replicate()])
        return h0, SiteState(H_res, beta)

    def depth(self, y: Tensor, state: SiteState) -> Tensor:
        module: Any = self
        plan = FAMILIES[module.family]
        mesh = self._tp_mesh
        H_res = state.H_res
        if not isinstance(y, DTensor) or not isinstance(H_res, DTensor):
            raise TypeError(
                f"y: expected a DTensor (Partial, Replicate or Shard) on the module's mesh, got {type(y).__name__}"
            )
        last = H_res.ndim - 1
        if plan.merges_h0:
            if any(isinstance(p, Shard) for p in y.placements):  # a d-sharding does not match the fraction columns
                y = y.redistribute(mesh, [Replicate()])
            y_fractions: Any = y.reshape(H_res.shape)  # a DTensor: views keep Partial / Replicate
            y_local = y_fractions.redistribute(mesh, [Shard(last)]).to_local()
            y_local = y_local.reshape(*y_local.shape[:-2], -1)
        else:
            y_local = y.redistribute(mesh, [Shard(y.ndim - 1)]).to_local()
        H_out = plan.depth(y_local, H_res.to_local(), state.beta)
        return DTensor.from_local(H_out, mesh, [Shard(last)], run_check=False)


_TP_CLASSES: dict[type, type] = {}


class WidthParallel(ParallelStyle):
    """Tensor parallelism for one ``HyperConnections`` / ``FracConnections`` module: the width sharded.

    ``parallelize_module(connection, tp_mesh, WidthParallel())`` (1-D mesh of T ranks, T dividing the
    width w: d for HC, d/m for FC) places ``W_alpha``, ``W_beta``, ``norm_weight``, ``norm_bias`` as
    ``Shard(0)`` DTensors (rows = the width) and every other parameter as ``Replicate()`` (rank 0's
    values), and switches the module to width-sharded ``width`` / ``depth`` (the module's class becomes a
    subclass, as ``fully_shard`` does):

    - ``width(H)``: ``H`` a DTensor ``(..., k, w)`` sharded on its last axis -> ``h0`` a ``Replicate()``
      DTensor ``(..., d)`` (all-gathered for the sublayer) and ``SiteState(H_res, beta)`` with ``H_res``
      sharded like ``H`` and ``beta`` the replicated local tensor ``(..., k)``.
    - ``depth(y, state)``: ``y`` a DTensor ``(..., d)``, ``Partial()`` (reduce-scattered into the width
      shards), ``Replicate()`` (sliced) or, for HC, ``Shard(-1)`` -> ``H_out`` sharded like ``H``.
    - ``forward(H, branch)`` is ``depth(branch(h0), state)`` as before.

    Collectives per site: see the module docstring of :mod:`hcref_torch.parallel`. State dicts hold the
    DTensors (``full_tensor()`` gives the contract's arrays).
    """

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if device_mesh.ndim != 1:
            raise ValueError(
                f"device_mesh: expected a 1-D mesh (the tensor-parallel dimension), got {device_mesh.ndim} dims"
            )
        if not isinstance(module, _Connection) or module.family not in FAMILIES:
            raise TypeError(
                f"module: expected a connection module of a family in {sorted(FAMILIES)}, got {type(module).__name__}"
            )
        _, w = _rows(module)
        size = device_mesh.size()
        if w % size:
            raise ValueError(f"module: the sharded width w={w} is not divisible by the mesh size {size}")
        plan = FAMILIES[module.family]
        for key in module.keys:
            param = getattr(module, key)
            placements: list[Placement] = [Shard(0)] if key in plan.width_keys else [Replicate()]
            dt = distribute_tensor(param.detach(), device_mesh, placements)
            module.register_parameter(key, nn.Parameter(dt, requires_grad=param.requires_grad))
        cls = type(module)
        if cls not in _TP_CLASSES:
            _TP_CLASSES[cls] = type(f"WidthParallel{cls.__name__}", (_WidthParallelConnection, cls), {})
        module.__class__ = _TP_CLASSES[cls]
        module._tp_mesh = device_mesh  # type: ignore[assignment]
        return module

    def __repr__(self) -> str:
        return "WidthParallel()"
