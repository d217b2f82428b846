"""Flax NNX modules for Hyper-Connections and Frac-Connections.

Named dims: ``...`` any leading (token) axes, ``n`` streams, ``m`` fractions, ``d`` model width,
``e = d/m`` fraction width. One connection module per residual site (sublayer)::

    H = Expand(n)(x)                      # (..., d) -> (..., n, d)
    for k, block in enumerate(blocks):    # hcs[k] = HyperConnections(n, d, layer_index=k)
        H = hcs[k](H, block)              # or: h0, state = hcs[k].width(H); H = hcs[k].depth(block(h0), state)
    x = Reduce()(H)                       # (..., n, d) -> (..., d), before the final norm

Parameters are ``nnx.Param`` attributes named by the contract's keys (``A_m``, ``A_r``, ``B``,
``W_alpha``, ...), so ``nnx.state(module, nnx.Param)`` is hcref's checkpoint mapping, and start at
``hcref.init_hc`` / ``hcref.init_fc``. Everything framework-free (the parameter plan and its initial
values, the option checks, the width/depth protocol, the module-level errors, the repr text) is
the module's :class:`hcref.connections.Plan` (``hc_plan`` / ``fc_plan``), as for the mHC modules of
:mod:`hcref_jax.mhc_modules`. The modules call the functional ops of :mod:`hcref_jax.ops`
(same precision policy, D12: float32 coefficient math and mixing for bfloat16/float16 inputs; a
float32 module on a bfloat16 stream gives float32 coefficients and keeps the stream bfloat16) and
work under ``nnx.jit`` / ``nnx.grad`` and, split into a pure function, ``jax.jit`` / ``jax.grad``.
On a TPU those ops run on the Pallas kernels (see :mod:`hcref_jax.ops`, "Pallas kernels").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hcref import connections, validation
from hcref.connections import SiteState

from . import ops
from .mhc_modules import PlannedSite


class _Connection(PlannedSite):
    """An HC or FC site on its plan: ``width`` / ``depth`` / ``__call__`` of
    :class:`hcref_jax.mhc_modules.PlannedSite` with the ops of :mod:`hcref_jax.ops`."""

    ops = ops
    family = ""

    def _options(self) -> dict[str, Any]:
        """The coefficient op's keyword options (``norm``, ``use_tanh``, ``use_norm``, ``use_scale``)."""
        return self.plan.kwargs


class HyperConnections(_Connection):
    """One HC residual site (see :func:`hcref.hc_coeffs`, :func:`hcref.hc_width`, :func:`hcref.hc_depth`).

    ``width``: H (..., n, d) -> h0 (..., d), state (H_res (..., n, d), beta (..., n));
    ``depth``: y (..., d), state -> H_out (..., n, d); ``__call__(H, branch)`` does both around ``branch``.
    ``layer_index`` counts attention and MLP sublayers separately, from 0. Parameters (``param_dtype``,
    default float32): ``A_m`` (n), ``A_r`` (n, n), ``B`` (n); dynamic adds ``W_alpha`` (d, n+1),
    ``W_beta`` (d), ``s_alpha`` (), ``s_beta`` (), ``norm_weight`` (d), ``norm_bias`` (d, layernorm).
    Raises the reference's ValueError/TypeError for bad sizes or options, and a ValueError naming
    this module and suggesting ``Expand(n)`` when H is not (..., n, d).
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
        param_dtype: Any = jnp.float32,
    ) -> None:
        plan = connections.hc_plan(
            n, d, layer_index, dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale
        )
        super().__init__(plan, param_dtype=param_dtype)
        self.n, self.d, self.layer_index, self.dynamic = n, d, layer_index, dynamic
        self.norm, self.use_tanh, self.use_norm, self.use_scale = norm, use_tanh, use_norm, use_scale


class FracConnections(_Connection):
    """One FC residual site (see :func:`hcref.fc_coeffs`, :func:`hcref.fc_width`, :func:`hcref.fc_depth`).

    ``width``: H (..., m, e) -> h0 (..., d), state (H_res (..., m, e), beta (..., m));
    ``depth``: y (..., d), state -> H_out (..., m, e); ``__call__(H, branch)`` does both around ``branch``.
    Parameters: ``Y`` (m, m), ``A`` (m, m), ``B`` (m); dynamic adds ``W_alpha`` (e, 2m), ``W_beta`` (e),
    ``s_alpha`` (), ``s_beta`` (), ``norm_weight`` (e), ``norm_bias`` (e, layernorm). Raises the
    reference's errors for bad sizes or options, and a ValueError naming this module and suggesting
    ``FracSplit(m)`` when H is not (..., m, e).
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
        param_dtype: Any = jnp.float32,
    ) -> None:
        plan = connections.fc_plan(
            m, d, dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale
        )
        super().__init__(plan, param_dtype=param_dtype)
        self.m, self.d, self.dynamic = m, d, dynamic
        self.norm, self.use_tanh, self.use_norm, self.use_scale = norm, use_tanh, use_norm, use_scale


class Expand(nnx.Module):
    """x (..., d) -> H (..., n, d): n copies of the embedding (:func:`hcref.expand`)."""

    def __init__(self, n: int) -> None:
        validation.check_count("n", n)
        self.n = n

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.expand(x, self.n)


class Reduce(nnx.Module):
    """H (..., n, d) -> x (..., d): sum of the streams (:func:`hcref.reduce`)."""

    def __call__(self, H: jax.Array) -> jax.Array:
        return ops.reduce(H)


class FracSplit(nnx.Module):
    """x (..., d) -> H (..., m, e): contiguous fractions (:func:`hcref.frac_split`)."""

    def __init__(self, m: int) -> None:
        validation.check_count("m", m)
        self.m = m

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.frac_split(x, self.m)


class FracMerge(nnx.Module):
    """H (..., m, e) -> x (..., d = m*e): concatenated fractions (:func:`hcref.frac_merge`)."""

    def __call__(self, H: jax.Array) -> jax.Array:
        return ops.frac_merge(H)


__all__ = ["Expand", "FracConnections", "FracMerge", "FracSplit", "HyperConnections", "Reduce", "SiteState"]
