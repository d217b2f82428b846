"""``mlx.nn`` modules for Manifold-Constrained Hyper-Connections (mHC paper, arXiv 2512.24880) and
DeepSeek-V4's learned reduce, built on the framework-free plans of :mod:`hcref.connections`.

Named dims: ``...`` any leading (token) axes, ``n`` streams, ``d`` model width. One connection
module per residual site (sublayer)::

    make = SiteNumbering(ManifoldHyperConnections, 4, d)   # layer_index 0, 1, 2, ... (D2)
    mhcs = [make() for _ in blocks]
    H = Expand(4)(x)                                       # (..., d) -> (..., n, d)
    for mhc, block in zip(mhcs, blocks):
        H = mhc(H, block)        # or: h0, state = mhc.width(H); H = mhc.depth(block(h0), state)
    x = MHCHead(4, d)(H)                                   # or Reduce()(H); then the final norm

Parameters are the module's array attributes under the contract's keys (site: ``phi``, ``b``,
``gates``; static: ``b``; head: ``phi``, ``b``, ``gate``), so ``module.parameters()`` is hcref's
checkpoint mapping, and start at ``hcref.init_mhc`` / ``hcref.init_mhc_head`` (float32 unless
``dtype`` says otherwise). The math is in :mod:`hcref_mlx.mhc` (D12: float32 coefficient path and
Sinkhorn for half states). The modules hold no other arrays, so ``mx.compile`` with
``inputs=model.state`` and ``nn.value_and_grad`` work as for any ``mlx.nn`` layer.

:class:`PlannedModule` is family-generic (any :class:`hcref.connections.Plan`): the HC and FC
modules can be written on it as well.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from hcref import connections
from hcref.connections import MHCState, Plan, SiteState
from hcref.sinkhorn_knopp import ITERS

from . import mhc


class PlannedModule(nn.Module):  # type: ignore[misc]  # mlx.nn is Any to mypy (star imports)
    """A module whose parameters, options, checks and ``_extra_repr`` come from a
    :class:`hcref.connections.Plan`; ``ops`` (a class attribute) is the namespace of functional
    ops it calls. One array attribute per contract key, in ``dtype``."""

    ops: ModuleType = mhc

    def __init__(self, plan: Plan, *, dtype: mx.Dtype) -> None:
        super().__init__()
        self.plan = plan
        for key, value in plan.init_params().items():
            if dtype == mx.float64:
                setattr(self, key, mx.array(value, dtype=mx.float64))
            else:
                setattr(self, key, mx.array(value.astype(np.float32)).astype(dtype))

    def param_keys(self) -> tuple[str, ...]:
        """The contract's parameter keys, in the order of ``hcref.init_*``."""
        return self.plan.keys

    def params(self) -> dict[str, mx.array]:
        """The parameters as the contract's flat mapping (for the functional ops)."""
        return {key: self[key] for key in self.plan.keys}

    def _extra_repr(self) -> str:
        return self.plan.extra_repr()


class PlannedSite(PlannedModule):
    """A residual site: ``width`` / ``depth`` (:func:`hcref.connections.width` / ``depth``) and one call."""

    def width(self, H: mx.array) -> tuple[mx.array, SiteState | MHCState]:
        return connections.width(self.ops, self.plan, H, self.params())

    def depth(self, y: mx.array, state: SiteState | MHCState) -> mx.array:
        out: mx.array = connections.depth(self.ops, self.plan, y, state)
        return out

    def __call__(self, H: mx.array, branch: Callable[..., mx.array], *args: Any, **kwargs: Any) -> mx.array:
        """One whole site: ``depth(branch(h0, *args, **kwargs), state)`` with ``h0, state = width(H)``."""
        h0, state = self.width(H)
        return self.depth(branch(h0, *args, **kwargs), state)


class ManifoldHyperConnections(PlannedSite):
    """One mHC residual site (mHC paper Eq. 3; :func:`hcref.mhc_coeffs`, :func:`hcref.mhc_pre`,
    :func:`hcref.mhc_post`).

    ``width``: H (..., n, d) -> h0 = sum_i h_pre[i] H[i] (..., d), state
    ``MHCState(H, h_post (..., n), h_res (..., n, n))``; ``depth``: y (..., d), state ->
    ``H_out = h_res H + h_post y^T`` (..., n, d); ``__call__(H, branch)`` does both around ``branch``.

    ``layer_index`` counts attention and MLP sublayers separately, from 0 (decision D2; it places
    ``b_pre``'s one-hot). ``preset``: ``hc_like`` (default), ``zero``, ``lucidrains`` (decision D10);
    ``dynamic=False`` keeps only ``b``. ``iters``: Sinkhorn iterations (20); ``eps > 0``:
    DeepSeek-V4 mode (it uses 1e-6). Parameters: ``phi`` (n*d, 2n+n^2), ``b`` (2n+n^2), ``gates`` (3).
    Raises ValueError/TypeError for bad sizes or options (the reference's messages), and a
    ValueError naming this module and suggesting ``Expand(n)`` when H is not (..., n, d).
    """

    def __init__(
        self,
        n: int,
        d: int,
        layer_index: int,
        *,
        dynamic: bool = True,
        preset: str = "hc_like",
        iters: int = ITERS,
        eps: float = 0.0,
        dtype: mx.Dtype = mx.float32,
    ) -> None:
        plan = connections.mhc_plan(n, d, layer_index, dynamic=dynamic, preset=preset, iters=iters, eps=eps)
        super().__init__(plan, dtype=dtype)
        self.n, self.d, self.layer_index, self.dynamic = n, d, layer_index, dynamic
        self.preset, self.iters, self.eps = preset, iters, plan.kwargs["eps"]


class MHCHead(PlannedModule):
    """DeepSeek-V4's learned reduce of the n streams (:func:`hcref.mhc_head`): H (..., n, d) -> x (..., d),
    ``x = sum_i w_i H[i]``, ``w = sigmoid(gate * z + b) + eps`` with ``z`` the projection of the
    flattened, RMS-scaled state. Starts as half the sum reduce (:func:`hcref.init_mhc_head`).
    Parameters: ``phi`` (n*d, n), ``b`` (n), ``gate`` ()."""

    def __init__(self, n: int, d: int, *, eps: float = 0.0, dtype: mx.Dtype = mx.float32) -> None:
        plan = connections.mhc_head_plan(n, d, eps=eps)
        super().__init__(plan, dtype=dtype)
        self.n, self.d, self.eps = n, d, plan.kwargs["eps"]

    def __call__(self, H: mx.array) -> mx.array:
        out: mx.array = connections.head(self.ops, self.plan, H, self.params())
        return out


__all__ = ["MHCHead", "ManifoldHyperConnections", "PlannedModule", "PlannedSite"]
