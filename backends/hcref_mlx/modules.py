"""``mlx.nn`` modules for Hyper-Connections and Frac-Connections.

Named dims: ``...`` any leading (token) axes, ``n`` streams, ``m`` fractions, ``d`` model width,
``e = d/m`` fraction width. One connection module per residual site (sublayer)::

    H = Expand(n)(x)                      # (..., d) -> (..., n, d)
    for k, block in enumerate(blocks):    # hcs[k] = HyperConnections(n, d, layer_index=k)
        H = hcs[k](H, block)              # or: h0, state = hcs[k].width(H); H = hcs[k].depth(block(h0), state)
    x = Reduce()(H)                       # (..., n, d) -> (..., d), before the final norm

Parameters are the module's array attributes under the contract's keys (``A_m``, ``A_r``, ``B``,
``W_alpha``, ...), so ``module.parameters()`` is hcref's checkpoint mapping, and start at
``hcref.init_hc`` / ``hcref.init_fc``. Everything framework-free (the parameter plan and its initial
values, the option checks, the width/depth protocol, the module-level errors, the repr text) is the
module's :class:`hcref.connections.Plan` (``hc_plan`` / ``fc_plan``), as for the mHC modules of
:mod:`hcref_mlx.mhc_modules`. The modules hold no other arrays, so ``mx.compile`` with
``inputs=model.state`` and ``nn.value_and_grad`` work as for any ``mlx.nn`` layer. Precision (D12):
a float32 module on a bfloat16/float16 stream computes float32 coefficients and keeps the stream
(``h0``, ``H_out``) in the stream's dtype.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from hcref import connections, validation
from hcref.connections import SiteState

from . import ops
from .mhc_modules import PlannedSite


class _Connection(PlannedSite):
    """An HC or FC site on its plan: ``width`` / ``depth`` / ``__call__`` of
    :class:`hcref_mlx.mhc_modules.PlannedSite` with the ops of :mod:`hcref_mlx.ops`."""

    ops = ops
    family = ""


class HyperConnections(_Connection):
    """One HC residual site (see :func:`hcref.hc_coeffs`, :func:`hcref.hc_width`, :func:`hcref.hc_depth`).

    ``width``: H (..., n, d) -> h0 (..., d), state (H_res (..., n, d), beta (..., n)) with
    ``alpha, beta = hc_coeffs(H)``, ``h0 = A_m^T H``, ``H_res = A_r^T H``;
    ``depth``: y (..., d), state -> ``H_out = beta^T y^T + H_res`` (..., n, d);
    ``__call__(H, branch)`` does both around ``branch``.
    ``layer_index`` counts attention and MLP sublayers separately, from 0 (``A_m = e_(k mod n)``).
    Parameters are float32 unless ``dtype`` says otherwise. Raises the reference's
    ValueError/TypeError for bad sizes or options, and a ValueError naming this module and
    suggesting ``Expand(n)`` when H is not (..., n, d).
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
        dtype: mx.Dtype = mx.float32,
    ) -> None:
        plan = connections.hc_plan(
            n, d, layer_index, dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale
        )
        super().__init__(plan, dtype=dtype)
        self.n, self.d, self.layer_index, self.dynamic = n, d, layer_index, dynamic
        self.norm, self.use_tanh, self.use_norm, self.use_scale = norm, use_tanh, use_norm, use_scale


class FracConnections(_Connection):
    """One FC residual site (see :func:`hcref.fc_coeffs`, :func:`hcref.fc_width`, :func:`hcref.fc_depth`).

    ``width``: H (..., m, e) -> h0 (..., d), state (H_res (..., m, e), beta (..., m)) with
    ``alpha, beta = fc_coeffs(H)``, ``h0 = concat_k (Y^T H)[k]``, ``H_res = A^T H``;
    ``depth``: y (..., d), state -> ``H_out[j] = beta[j] y_j + H_res[j]`` (..., m, e);
    ``__call__(H, branch)`` does both around ``branch``. Parameters are float32 unless ``dtype`` says
    otherwise. Raises the reference's errors for bad sizes or options, and a ValueError naming this
    module and suggesting ``FracSplit(m)`` when H is not (..., m, e).
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
        dtype: mx.Dtype = mx.float32,
    ) -> None:
        plan = connections.fc_plan(
            m, d, dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale
        )
        super().__init__(plan, dtype=dtype)
        self.m, self.d, self.dynamic = m, d, dynamic
        self.norm, self.use_tanh, self.use_norm, self.use_scale = norm, use_tanh, use_norm, use_scale


class Expand(nn.Module):
    """x (..., d) -> H (..., n, d): n copies of the embedding (:func:`hcref.expand`)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        validation.check_count("n", n)
        self.n = n

    def __call__(self, x: mx.array) -> mx.array:
        return ops.expand(x, self.n)

    def _extra_repr(self) -> str:
        return f"n={self.n}"


class Reduce(nn.Module):
    """H (..., n, d) -> x (..., d): sum of the streams (:func:`hcref.reduce`)."""

    def __call__(self, H: mx.array) -> mx.array:
        return ops.reduce(H)


class FracSplit(nn.Module):
    """x (..., d) -> H (..., m, e): contiguous fractions (:func:`hcref.frac_split`)."""

    def __init__(self, m: int) -> None:
        super().__init__()
        validation.check_count("m", m)
        self.m = m

    def __call__(self, x: mx.array) -> mx.array:
        return ops.frac_split(x, self.m)

    def _extra_repr(self) -> str:
        return f"m={self.m}"


class FracMerge(nn.Module):
    """H (..., m, e) -> x (..., d = m*e): concatenated fractions (:func:`hcref.frac_merge`)."""

    def __call__(self, H: mx.array) -> mx.array:
        return ops.frac_merge(H)


__all__ = ["Expand", "FracConnections", "FracMerge", "FracSplit", "HyperConnections", "Reduce", "SiteState"]
