"""Drop-in ``torch.nn`` modules for Hyper-Connections and Frac-Connections.

Named dims: ``...`` any leading (token) axes, ``n`` streams, ``m`` fractions, ``d`` model width,
``e = d/m`` fraction width. One connection module per residual site (sublayer)::

    H = Expand(n)(x)                      # (..., d) -> (..., n, d)
    for k, block in enumerate(blocks):    # hc = HyperConnections(n, d, layer_index=k)
        H = hcs[k](H, block)              # or: h0, state = hcs[k].width(H); H = hcs[k].depth(block(h0), state)
    x = Reduce()(H)                       # (..., n, d) -> (..., d), before the final norm

Parameters are registered under the contract's keys (``A_m``, ``A_r``, ``B``, ``W_alpha``, ...),
so ``state_dict()`` is the checkpoint format of hcref, and start at ``hcref.init_hc`` /
``hcref.init_fc``. Precision (D12): a float32 module on a bfloat16/float16 stream computes float32
coefficients and keeps the stream (``h0``, ``H_out``) in the stream's dtype, so a half-precision
sublayer sees half-precision inputs. ``device="meta"`` builds the module without memory.

Everything framework-free (parameter keys, shapes and initial values, option checks, the
width/depth protocol, ``extra_repr`` and the module-level errors that name the module) is the
module's :class:`hcref.connections.Plan` (:func:`hcref.connections.hc_plan` /
:func:`~hcref.connections.fc_plan`); :class:`PlannedModule` / :class:`PlannedSite` (also the base
of the mHC modules) turn a plan into a ``torch.nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import nn

import hcref
from hcref import connections
from hcref.connections import MHCState, Plan
from hcref.connections import SiteState as SiteState  # re-exported: hcref_torch.SiteState

from . import ops


class PlannedModule(nn.Module):
    """A module whose parameters, options, checks and ``extra_repr`` come from a
    :class:`hcref.connections.Plan`; ``ops`` (a class attribute) is the namespace of functional
    ops it calls (:mod:`hcref_torch.ops` for HC/FC, :mod:`hcref_torch.mhc` for mHC). Parameters:
    one ``nn.Parameter`` per contract key, in ``dtype`` (default: torch's default dtype) on
    ``device``, at the plan's initial values (``hcref.init_*``)."""

    ops: ModuleType = ops

    def __init__(self, plan: Plan, *, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.plan = plan
        dtype = dtype or torch.get_default_dtype()
        for key, value in plan.init_params().items():
            self.register_parameter(key, nn.Parameter(torch.tensor(value, dtype=dtype, device=device)))

    @property
    def keys(self) -> tuple[str, ...]:
        """The contract's parameter keys, in the order of ``hcref.init_*``."""
        return self.plan.keys

    def params(self) -> dict[str, torch.Tensor]:
        """The parameters as the contract's flat mapping (for the functional ops)."""
        return {key: getattr(self, key) for key in self.plan.keys}

    def extra_repr(self) -> str:
        return self.plan.extra_repr()


class PlannedSite(PlannedModule):
    """A residual site: ``width`` / ``depth`` (:func:`hcref.connections.width` / ``depth``) and one call."""

    def width(self, H: torch.Tensor) -> tuple[torch.Tensor, SiteState | MHCState]:
        return connections.width(self.ops, self.plan, H, self.params())

    def depth(self, y: torch.Tensor, state: SiteState | MHCState) -> torch.Tensor:
        out: torch.Tensor = connections.depth(self.ops, self.plan, y, state)
        return out

    def forward(self, H: torch.Tensor, branch: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        """One whole site: ``depth(branch(h0, *args, **kwargs), state)`` with ``h0, state = width(H)``."""
        h0, state = self.width(H)
        return self.depth(branch(h0, *args, **kwargs), state)


class _Connection(PlannedSite):
    """HC / FC site: the plan's options as attributes (``norm``, ``use_tanh``, ``use_norm``, ``use_scale``).

    On CUDA, when ``hcref_torch.kernels.use_for`` holds for H and the parameters, ``width`` runs
    the fused site kernel (``hc_site_width`` / ``fc_site_width``: coefficients, h0 and, when a
    gradient is needed, H_res in one kernel) and ``depth`` the matching depth kernel. Without a
    gradient the fused width leaves the residual mixing to ``depth`` and returns a
    :class:`hcref_torch.kernels.FusedState` instead of a :class:`SiteState` (``H_res`` is then
    never written); pass it to ``depth`` unchanged.
    """

    family = ""

    def __init__(self, plan: Plan, *, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        super().__init__(plan, device=device, dtype=dtype)
        opts = plan.kwargs
        self.norm, self.use_tanh = opts["norm"], opts["use_tanh"]
        self.use_norm, self.use_scale = opts["use_norm"], opts["use_scale"]
        self.d, self.dynamic = plan.d, plan.dynamic

    def _options(self) -> dict[str, Any]:
        return self.plan.kwargs

    def width(self, H: torch.Tensor) -> tuple[torch.Tensor, Any]:
        params = self.params()
        kernels = ops._kernels(H, *params.values())
        if kernels is None:
            return connections.width(self.ops, self.plan, H, params)
        self.plan.check_state(ops.meta("H", H))
        fused_width = kernels.hc_site_width if self.family == "hc" else kernels.fc_site_width
        h0, state = fused_width(H, params, **self.plan.kwargs)
        if state.H_res is not None:  # training: the mixed residual was written, depth is a plain write
            return h0, SiteState(state.H_res, state.beta)
        return h0, state

    def depth(self, y: torch.Tensor, state: Any) -> torch.Tensor:
        if getattr(state, "H_res", None) is None and hasattr(state, "alpha"):  # a FusedState: mix and write
            from . import kernels  # the fused width made it, so this import is done

            self.plan.check_branch_output(ops.meta("y", y), tuple(state.H.shape[:-2]))
            fused: torch.Tensor = kernels.site_depth(y, state)
            return fused
        out: torch.Tensor = connections.depth(self.ops, self.plan, y, state)
        return out


class HyperConnections(_Connection):
    """One HC residual site (see :func:`hcref.hc_coeffs`, :func:`hcref.hc_width`, :func:`hcref.hc_depth`).

    ``width``: H (..., n, d) -> h0 (..., d), state (H_res (..., n, d), beta (..., n));
    ``depth``: y (..., d), state -> H_out (..., n, d); ``forward(H, branch)`` does both around ``branch``.
    ``layer_index`` counts attention and MLP sublayers separately, from 0. Parameters: ``A_m`` (n),
    ``A_r`` (n, n), ``B`` (n), and when ``dynamic`` ``W_alpha`` (d, n+1), ``W_beta`` (d),
    ``s_alpha``, ``s_beta`` () and the norm's ``norm_weight`` / ``norm_bias`` (d).
    Raises the reference's ValueError/TypeError for bad sizes or options, and a ValueError naming
    this module (and suggesting ``Expand(n)``) when H is not (..., n, d) or ``depth``'s y not (..., d).
    """

    family = "hc"

    def __init__(
        self,
        n: int,
        d: int,
        layer_index: int,
        *,
        dynamic: bool = True,
        norm: str = "layernorm",
        use_tanh: bool = True,
        use_norm: bool = True,
        use_scale: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        plan = connections.hc_plan(
            n, d, layer_index, dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale
        )
        super().__init__(plan, device=device, dtype=dtype)
        self.n, self.layer_index = n, layer_index


class FracConnections(_Connection):
    """One FC residual site (see :func:`hcref.fc_coeffs`, :func:`hcref.fc_width`, :func:`hcref.fc_depth`).

    ``width``: H (..., m, e) -> h0 (..., d), state (H_res (..., m, e), beta (..., m));
    ``depth``: y (..., d), state -> H_out (..., m, e); ``forward(H, branch)`` does both around ``branch``.
    Parameters: ``Y``, ``A`` (m, m), ``B`` (m), and when ``dynamic`` ``W_alpha`` (e, 2m), ``W_beta`` (e),
    ``s_alpha``, ``s_beta`` () and the norm's ``norm_weight`` / ``norm_bias`` (e), e = d/m.
    Raises the reference's ValueError/TypeError for bad sizes or options (``d`` not a multiple of
    ``m`` included), and a ValueError naming this module (and suggesting ``FracSplit(m)``) when H
    is not (..., m, e) or ``depth``'s y not (..., d).
    """

    family = "fc"

    def __init__(
        self,
        m: int,
        d: int,
        *,
        dynamic: bool = True,
        norm: str = "layernorm",
        use_tanh: bool = True,
        use_norm: bool = True,
        use_scale: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        plan = connections.fc_plan(
            m, d, dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale
        )
        super().__init__(plan, device=device, dtype=dtype)
        self.m = m


class Expand(nn.Module):
    """x (..., d) -> H (..., n, d): n copies of the embedding (:func:`hcref.expand`)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        hcref.validation.check_count("n", n)
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.expand(x, self.n)

    def extra_repr(self) -> str:
        return f"n={self.n}"


class Reduce(nn.Module):
    """H (..., n, d) -> x (..., d): sum of the streams (:func:`hcref.reduce`)."""

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        return ops.reduce(H)


class FracSplit(nn.Module):
    """x (..., d) -> H (..., m, e): contiguous fractions (:func:`hcref.frac_split`)."""

    def __init__(self, m: int) -> None:
        super().__init__()
        hcref.validation.check_count("m", m)
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.frac_split(x, self.m)

    def extra_repr(self) -> str:
        return f"m={self.m}"


class FracMerge(nn.Module):
    """H (..., m, e) -> x (..., d = m*e): concatenated fractions (:func:`hcref.frac_merge`)."""

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        return ops.frac_merge(H)

