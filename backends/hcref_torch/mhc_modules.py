"""``torch.nn`` modules for Manifold-Constrained Hyper-Connections (mHC paper, arXiv 2512.24880)
and DeepSeek-V4's learned reduce, built on the framework-free plans of :mod:`hcref.connections`.

Named dims: ``...`` any leading (token) axes, ``n`` streams, ``d`` model width. One connection
module per residual site (sublayer)::

    make = SiteNumbering(ManifoldHyperConnections, 4, d)   # layer_index 0, 1, 2, ... (D2)
    mhcs = [make() for _ in blocks]
    H = Expand(4)(x)                                       # (..., d) -> (..., n, d)
    for mhc, block in zip(mhcs, blocks):
        H = mhc(H, block)        # or: h0, state = mhc.width(H); H = mhc.depth(block(h0), state)
    x = MHCHead(4, d)(H)                                   # or Reduce()(H); then the final norm

Parameters are registered under the contract's keys (site: ``phi``, ``b``, ``gates``; static:
``b``; head: ``phi``, ``b``, ``gate``), so ``state_dict()`` is hcref's checkpoint mapping, and
start at ``hcref.init_mhc`` / ``hcref.init_mhc_head``. The math is in :mod:`hcref_torch.mhc`
(precision policy of D12: float32 coefficient path and Sinkhorn for half states; float32
parameters on a bfloat16 state keep the state in bfloat16). ``torch.compile(fullgraph=True)``
compiles them.

:class:`PlannedModule` / :class:`PlannedSite` (:mod:`hcref_torch.modules`) are family-generic
(any :class:`hcref.connections.Plan`): the HC and FC modules are written on them as well.
"""

from __future__ import annotations

from types import ModuleType

import torch

from hcref import connections
from hcref.sinkhorn_knopp import ITERS

from . import mhc
from .modules import PlannedModule, PlannedSite


class ManifoldHyperConnections(PlannedSite):
    """One mHC residual site (mHC paper Eq. 3; :func:`hcref.mhc_coeffs`, :func:`hcref.mhc_pre`,
    :func:`hcref.mhc_post`).

    ``width``: H (..., n, d) -> h0 = sum_i h_pre[i] H[i] (..., d), state
    ``MHCState(H, h_post (..., n), h_res (..., n, n))``; ``depth``: y (..., d), state ->
    ``H_out = h_res H + h_post y^T`` (..., n, d); ``forward(H, branch)`` does both around ``branch``.

    ``layer_index`` counts attention and MLP sublayers separately, from 0 (decision D2; it places
    ``b_pre``'s one-hot). ``preset``: ``hc_like`` (default), ``zero``, ``lucidrains`` (decision D10);
    ``dynamic=False`` keeps only ``b``. ``iters``: Sinkhorn iterations (20); ``eps > 0``:
    DeepSeek-V4 mode (it uses 1e-6). Parameters: ``phi`` (n*d, 2n+n^2), ``b`` (2n+n^2), ``gates`` (3).
    Raises ValueError/TypeError for bad sizes or options (the reference's messages), and a
    ValueError naming this module and suggesting ``Expand(n)`` when H is not (..., n, d).
    """

    ops: ModuleType = mhc

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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        plan = connections.mhc_plan(n, d, layer_index, dynamic=dynamic, preset=preset, iters=iters, eps=eps)
        super().__init__(plan, device=device, dtype=dtype)
        self.n, self.d, self.layer_index, self.dynamic = n, d, layer_index, dynamic
        self.preset, self.iters, self.eps = preset, iters, plan.kwargs["eps"]


class MHCHead(PlannedModule):
    """DeepSeek-V4's learned reduce of the n streams (:func:`hcref.mhc_head`): H (..., n, d) -> x (..., d),
    ``x = sum_i w_i H[i]``, ``w = sigmoid(gate * z + b) + eps`` with ``z`` the projection of the
    flattened, RMS-scaled state. Starts as half the sum reduce (:func:`hcref.init_mhc_head`).
    Parameters: ``phi`` (n*d, n), ``b`` (n), ``gate`` ()."""

    ops: ModuleType = mhc

    def __init__(
        self,
        n: int,
        d: int,
        *,
        eps: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        plan = connections.mhc_head_plan(n, d, eps=eps)
        super().__init__(plan, device=device, dtype=dtype)
        self.n, self.d, self.eps = n, d, plan.kwargs["eps"]

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = connections.head(self.ops, self.plan, H, self.params())
        return out


__all__ = ["MHCHead", "ManifoldHyperConnections", "PlannedModule", "PlannedSite"]
