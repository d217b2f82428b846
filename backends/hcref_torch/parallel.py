"""Hyper-Connections, Frac-Connections and mHC under ``torch.distributed``: the plans, one per kind of sharding.

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

mHC (``ManifoldHyperConnections``, ``MHCHead``; mHC paper Eqs. 7-9). Tokens sharded: as above (DDP,
FSDP2, sequence parallelism). mHC sites have no 0-dim parameter (``gates`` is (3)), so ``fully_shard``
takes them whole; ``MHCHead``'s ``gate`` is 0-dim and goes to :func:`scalar_parameters`. Importing this
module registers DTensor sharding rules for the Sinkhorn custom ops (token axes sharded, no
collective), which sequence parallelism on DTensors needs. Width sharded: ``WidthParallel`` places
``phi (n*d, k)`` by :func:`mhc_phi_placement` (each rank's rows are its d-slice of every stream, n
interleaved blocks: ``_StridedShard(0, split_factor=n)``), ``b``, ``gates``, ``gate`` replicated. The
coefficient step reduces over the flattened ``n*d`` vector; with ``k = 2n + n^2``, per token and site::

    forward   all-reduce MAX   max|vec(H)|                      1        scale-safe RMS (D12); no backward
              all-reduce SUM   [vec(H) phi | sum (vec(H)/s)^2]  k + 1    the projection and the sum of squares
              then every rank: gates, bias, sigmoid, 2 sigmoid, Sinkhorn (identical, replicated results)
    backward  all-reduce SUM   [g_h_pre | g_h_post | g_h_res]   k        partial sums of the local pre/post;
                                                                         the rest acts on replicated values

(n = 4: 1 + 25 floats forward, 24 backward: 104 and 96 bytes per token in float32.) ``mhc_pre`` and
``mhc_post`` act on the local columns; h0 is all-gathered and y reduce-scattered as for HC (d per
token). ``MHCHead``: MAX 1 and SUM n + 1 forward, SUM n backward; its output x (..., d) is sharded like
one stream. Static sites: the coefficients come from ``b`` alone (no per-token collective); ``b``'s
gradient is all-reduced once per step (k floats).

FSDP2 composed with ``WidthParallel`` runs mHC correctly (local shards and gradients), but FSDP2 labels
``phi``'s 2-D placement ``(_StridedShard(0, sf=T_tp), _StridedShard(0, sf=n))``, which
``full_tensor()`` reassembles in the wrong row order (torch 2.13): gather phi for a checkpoint from the
local shards (rank (dp, tp) holds rows ``(i, tp-slice)`` of every stream i, split over dp).
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
from torch.distributed.tensor.experimental import register_sharding
from torch.distributed.tensor.parallel import ParallelStyle
from torch.distributed.tensor.placement_types import _StridedShard
from torch.utils.hooks import RemovableHandle

from hcref.connections import MHCState
from hcref.mhc import RMS_EPS
from hcref.norms import LAYERNORM_EPS, RMSNORM_EPS

from . import mhc, ops
from .modules import FracConnections, HyperConnections, SiteState, _Connection

Tensor = torch.Tensor

__all__ = [
    "FAMILIES",
    "FamilyPlan",
    "WidthParallel",
    "average_gradients",
    "gather_width",
    "mhc_phi_placement",
    "scalar_parameters",
    "shard_width",
    "width_sharded_coeffs",
    "width_sharded_mhc_coeffs",
    "width_sharded_mhc_head",
]


# --- data parallel: FSDP2 and the 0-dim gates ------------------------------------------------------


def scalar_parameters(module: nn.Module) -> set[nn.Parameter]:
    """The 0-dim parameters of ``module`` (the gates ``s_alpha``, ``s_beta`` of every dynamic HC/FC site,
    ``MHCHead``'s ``gate``).

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
    mHC (a state mixed in one step, a coefficient step over the flattened n*d vector) has its own mixins.
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


# --- mHC: the flattened n*d vector sharded over d ----------------------------------------------------


def _mhc_plan(module: nn.Module) -> Any:
    """The :class:`hcref.connections.Plan` of an mHC site or head, else None."""
    plan = getattr(module, "plan", None)
    return plan if getattr(plan, "family", None) in ("mhc", "mhc_head") else None


def mhc_phi_placement(n: int) -> Placement:
    """Where each rank's rows of an mHC projection ``phi (n*d, k)`` are, with d sharded over the ranks.

    ``phi``'s rows follow ``vec(H)`` stream-major (row ``i*d + c`` reads ``H[i, c]``), so the rows of one
    rank's columns ``c`` of every stream are n interleaved blocks of d/T rows: n chunks (the streams),
    each split over the T ranks. That is torch's ``_StridedShard(0, split_factor=n)`` (the placement
    FSDP2 + TP use for a dim sharded twice), so ``full_tensor()`` and state dicts give the contract's
    ``phi`` and the local block is exactly the rows that multiply the local ``vec(H_local)``.
    """
    return _StridedShard(0, split_factor=n)


class _AllReduceSum(torch.autograd.Function):
    """All-reduce (sum) forward; identity backward: the result is replicated and every consumer is
    replicated too, so its cotangent is the full one, identical on every rank (Megatron's ``g``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        return _all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        return g, None


def _sharded_rms_project(H_local: Tensor, phi_local: Tensor, d: int, group: Any) -> Tensor:
    """``z = rms(vec(H)) phi`` from the local columns ``H_local (..., n, d/T)`` and the matching rows
    ``phi_local (n*d/T, k)`` (one dtype), folded and scale-safe as ``hcref_torch.mhc`` (D12)::

        s     = row_scale(allreduce_max(max|v_local|))          one float per token, no backward
        [P|Q] = allreduce_sum([v_local phi_local | sum (v_local/s)^2])   k+1 floats per token
        z     = P / s * (Q / (n d) + 1e-6 / s / s)^(-1/2)

    computed identically on every rank (z is replicated; its cotangent must be the full one).
    """
    n, w = H_local.shape[-2], H_local.shape[-1]
    vec = H_local.reshape(*H_local.shape[:-2], n * w)
    with torch.no_grad():
        amax = _all_reduce(vec.detach().abs().amax(dim=-1, keepdim=True), group, dist.ReduceOp.MAX)
        s = _row_scale(amax)
    xs = vec / s
    parts = torch.cat([torch.matmul(vec, phi_local), (xs * xs).sum(dim=-1, keepdim=True)], dim=-1)
    total: Tensor = _apply(_AllReduceSum, parts, group)
    r = torch.rsqrt(total[..., -1:] / (n * d) + RMS_EPS / s / s)
    return total[..., :-1] / s * r


def _split_coeffs(flat: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    return flat[..., :n], flat[..., n : 2 * n], flat[..., 2 * n :].reshape(*flat.shape[:-1], n, n)


def width_sharded_mhc_coeffs(
    H_local: Tensor, params: Mapping[str, Tensor], *, d: int, group: Any, iters: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``h_pre (..., n)``, ``h_post (..., n)``, ``h_res (..., n, n)`` of ``hcref_torch.mhc.mhc_coeffs``
    (mHC paper Eqs. 7-9) from the local columns ``H_local (..., n, d/T)`` of a state whose width ``d`` is
    sharded over ``group``, and the local parameters (``phi``: this rank's rows, placed by
    :func:`mhc_phi_placement`; ``b``, ``gates``: whole).

    The reductions over the flattened ``n*d`` vector are completed by :func:`_sharded_rms_project`'s two
    all-reduces; the epilogue (gates, bias, sigmoid, 2 sigmoid, Sinkhorn) then runs redundantly on every
    rank, so the coefficients are replicated. Backward: the coefficients' cotangents arrive as partial
    sums over the width shards (their consumers, ``mhc_pre`` / ``mhc_post`` on the local columns,
    contract over the local columns) and are all-reduced once, fused (``2n + n^2`` floats per token);
    everything after that (the epilogue's and the norm's VJPs) acts on replicated values, and ``phi``'s
    gradient is the local row block. Static sites (``params`` exactly ``b``): no reduction over ``d``;
    ``b``'s gradient is all-reduced once per step (``2n + n^2`` floats). Dtypes as ``mhc_coeffs`` (D12).
    """
    n = H_local.shape[-2]
    out = ops._promote(H_local, *params.values())
    ct = ops._compute_dtype(out)
    with ops._no_autocast(H_local):
        if "phi" not in params:
            b = _apply(_SumGradients, params["b"], group)
            return mhc.mhc_coeffs(H_local, {"b": b}, iters=iters, eps=eps)
        z = _sharded_rms_project(H_local.to(ct), params["phi"].to(ct), d, group)
        b, gates = params["b"].to(ct), params["gates"].to(ct)
        pre = z[..., :n] * gates[0] + b[:n]
        post = z[..., n : 2 * n] * gates[1] + b[n : 2 * n]
        res = z[..., 2 * n :] * gates[2] + b[2 * n :]
        h_res = mhc.sinkhorn(res.reshape(*res.shape[:-1], n, n), iters=iters, eps=eps)
        flat = torch.cat([torch.sigmoid(pre) + eps, 2 * torch.sigmoid(post), h_res.flatten(-2)], dim=-1)
        flat = _apply(_SumGradients, flat, group)
    return tuple(c.to(out) for c in _split_coeffs(flat, n))  # type: ignore[return-value]


def width_sharded_mhc_head(H_local: Tensor, params: Mapping[str, Tensor], *, d: int, group: Any, eps: float) -> Tensor:
    """``x (..., d/T)``: the local columns of ``hcref_torch.mhc.mhc_head`` (DeepSeek-V4's learned reduce,
    ``x = sum_i w_i H[i]``, ``w = sigmoid(gate z + b) + eps``) from the local columns ``H_local`` and the
    local parameters (``phi``'s rows as :func:`mhc_phi_placement`). Collectives as the site's coefficient
    step: MAX (1) and SUM (n+1 floats per token) forward, SUM of ``w``'s cotangent (n) backward."""
    out = ops._promote(H_local, *params.values())
    ct = ops._compute_dtype(out)
    with ops._no_autocast(H_local):
        Hc = H_local.to(ct)
        z = _sharded_rms_project(Hc, params["phi"].to(ct), d, group)
        w = torch.sigmoid(z * params["gate"].to(ct) + params["b"].to(ct)) + eps
        w = _apply(_SumGradients, w, group)
        x = torch.matmul(w.unsqueeze(-2), Hc).squeeze(-2)
    return x.to(H_local.dtype)


def _local_params(module: Any) -> dict[str, Tensor]:
    return {key: p.to_local() if isinstance(p, DTensor) else p for key, p in module.params().items()}


def _require_sharded(H: Any, mesh: DeviceMesh) -> DTensor:
    if not isinstance(H, DTensor):
        raise TypeError(
            f"H: expected a DTensor sharded on its last axis over the module's mesh, got {type(H).__name__} "
            "(hcref_torch.parallel.shard_width makes one from a replicated tensor)"
        )
    last = H.ndim - 1
    return H if H.placements == (Shard(last),) else H.redistribute(mesh, [Shard(last)])


class _WidthParallelMHC:
    """Mixin that replaces ``width`` / ``depth`` of a ``ManifoldHyperConnections`` whose width is sharded."""

    _tp_mesh: DeviceMesh

    def width(self, H: Tensor) -> tuple[Tensor, MHCState]:
        module: Any = self
        plan, mesh = module.plan, self._tp_mesh
        plan.check_state(ops.meta("H", H))
        H = _require_sharded(H, mesh)
        H_local = H.to_local()
        kwargs = plan.kwargs
        h_pre, h_post, h_res = width_sharded_mhc_coeffs(
            H_local, _local_params(module), d=plan.d, group=mesh.get_group(), iters=kwargs["iters"], eps=kwargs["eps"]
        )
        h0_local = mhc.mhc_pre(H_local, h_pre)
        h0 = DTensor.from_local(h0_local, mesh, [Shard(h0_local.ndim - 1)], run_check=False)
        return h0.redistribute(mesh, [Replicate()]), MHCState(H, h_post, h_res)

    def depth(self, y: Tensor, state: MHCState) -> Tensor:
        module: Any = self
        mesh = self._tp_mesh
        H = state.H
        if not isinstance(y, DTensor):
            raise TypeError(
                f"y: expected a DTensor (Partial, Replicate or Shard) on the module's mesh, got {type(y).__name__}"
            )
        module.plan.check_branch_output(ops.meta("y", y), tuple(H.shape[:-2]))
        y_local = y.redistribute(mesh, [Shard(y.ndim - 1)]).to_local()
        H_out = mhc.mhc_post(y_local, H.to_local(), state.h_post, state.h_res)
        return DTensor.from_local(H_out, mesh, [Shard(H_out.ndim - 1)], run_check=False)


class _WidthParallelMHCHead:
    """Mixin that replaces ``forward`` of an ``MHCHead`` whose input's width is sharded."""

    _tp_mesh: DeviceMesh

    def forward(self, H: Tensor) -> DTensor:
        module: Any = self
        plan, mesh = module.plan, self._tp_mesh
        plan.check_state(ops.meta("H", H))
        H_local = _require_sharded(H, mesh).to_local()
        x = width_sharded_mhc_head(
            H_local, _local_params(module), d=plan.d, group=mesh.get_group(), eps=plan.kwargs["eps"]
        )
        return DTensor.from_local(x, mesh, [Shard(x.ndim - 1)], run_check=False)


# --- sequence parallelism: DTensor strategies for the Sinkhorn custom ops -------------------------------


def _register_sinkhorn_strategies() -> None:
    """Sinkhorn acts on the last two axes of ``Z (..., n, n)``, token by token: every output (and the
    stacked potentials / divisors, one leading axis more) is sharded like Z's token axes. Registered for
    the custom ops of :mod:`hcref_torch.mhc` so that the plain modules run on DTensors sharded over tokens
    (sequence parallelism) with no collective."""
    lib = getattr(torch.ops, "hcref", None)
    if lib is None or not hasattr(lib, "sinkhorn_log"):  # torch < 2.4: autograd.Functions, no custom ops
        return

    def token_shardings(ndim: int, outputs: tuple[int, ...], inputs: tuple[int | None, ...]) -> list[Any]:
        """Replicate, and Shard(i) of every token axis i; each entry of outputs/inputs is the shift of its
        token axes (1 for the stacked potentials), None for a non-tensor argument."""
        found: list[Any] = [([Replicate()] * len(outputs), [None if o is None else Replicate() for o in inputs])]
        for i in range(ndim - 2):
            found.append(([Shard(i + o) for o in outputs], [None if o is None else Shard(i + o) for o in inputs]))
        return found

    @register_sharding(lib.sinkhorn_log.default)  # type: ignore[untyped-decorator]
    def _log(Z: Any, iters: int) -> list[Any]:
        return token_shardings(Z.ndim, (0, 1, 1), (0, None))

    @register_sharding(lib.sinkhorn_log_backward.default)  # type: ignore[untyped-decorator]
    def _log_bwd(g_P: Any, Z: Any, R: Any, C: Any) -> list[Any]:
        return token_shardings(Z.ndim, (0,), (0, 0, 1, 1))

    @register_sharding(lib.sinkhorn_v4.default)  # type: ignore[untyped-decorator]
    def _v4(Z: Any, iters: int, eps: float) -> list[Any]:
        return token_shardings(Z.ndim, (0, 1, 1), (0, None, None))

    @register_sharding(lib.sinkhorn_v4_backward.default)  # type: ignore[untyped-decorator]
    def _v4_bwd(g_P: Any, Z: Any, P: Any, R: Any, C: Any) -> list[Any]:
        return token_shardings(Z.ndim, (0,), (0, 0, 0, 1, 1))


_register_sinkhorn_strategies()


_TP_CLASSES: dict[type, type] = {}


class WidthParallel(ParallelStyle):
    """Tensor parallelism for one ``HyperConnections`` / ``FracConnections`` / ``ManifoldHyperConnections`` /
    ``MHCHead`` module: the width sharded (mHC: see the module docstring).

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
    - ``ManifoldHyperConnections``: ``width(H)`` -> ``h0`` as above and ``MHCState(H, h_post, h_res)``
      (coefficients replicated local tensors); ``depth`` as above. ``MHCHead``: ``forward(H)`` -> ``x``
      ``(..., d)`` a DTensor sharded on its last axis. ``phi`` is placed by :func:`mhc_phi_placement`.

    Collectives per site: see the module docstring of :mod:`hcref_torch.parallel`. State dicts hold the
    DTensors (``full_tensor()`` gives the contract's arrays).
    """

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if device_mesh.ndim != 1:
            raise ValueError(
                f"device_mesh: expected a 1-D mesh (the tensor-parallel dimension), got {device_mesh.ndim} dims"
            )
        mhc_plan = _mhc_plan(module)
        width_keys: tuple[str, ...]
        mixin: type
        if mhc_plan is not None:
            w, width_keys, mixin = (
                mhc_plan.d,
                ("phi",),
                (_WidthParallelMHC if mhc_plan.family == "mhc" else _WidthParallelMHCHead),
            )
        elif isinstance(module, _Connection) and module.family in FAMILIES:
            _, w = _rows(module)
            width_keys, mixin = FAMILIES[module.family].width_keys, _WidthParallelConnection
        else:
            raise TypeError(
                f"module: expected a connection module of a family in {sorted(FAMILIES)}, a "
                f"ManifoldHyperConnections or an MHCHead, got {type(module).__name__}"
            )
        size = device_mesh.size()
        if w % size:
            raise ValueError(f"module: the sharded width w={w} is not divisible by the mesh size {size}")
        for key in module.keys:  # type: ignore[union-attr]
            param = getattr(module, key)
            placements: list[Placement] = [Replicate()]
            if key in width_keys:
                placements = [mhc_phi_placement(mhc_plan.rows) if mhc_plan is not None else Shard(0)]
            dt = distribute_tensor(param.detach(), device_mesh, placements)
            module.register_parameter(key, nn.Parameter(dt, requires_grad=param.requires_grad))
        cls = type(module)
        if cls not in _TP_CLASSES:
            _TP_CLASSES[cls] = type(f"WidthParallel{cls.__name__}", (mixin, cls), {})
        module.__class__ = _TP_CLASSES[cls]
        module._tp_mesh = device_mesh  # type: ignore[assignment]
        return module

    def __repr__(self) -> str:
        return "WidthParallel()"
