"""``mlx.nn`` modules for Hyper-Connections and Frac-Connections.

Named dims: ``...`` any leading (token) axes, ``n`` streams, ``m`` fractions, ``d`` model width,
``e = d/m`` fraction width. One connection module per residual site (sublayer)::

    H = Expand(n)(x)                      # (..., d) -> (..., n, d)
    for k, block in enumerate(blocks):    # hcs[k] = HyperConnections(n, d, layer_index=k)
        H = hcs[k](H, block)              # or: h0, state = hcs[k].width(H); H = hcs[k].depth(block(h0), state)
    x = Reduce()(H)                       # (..., n, d) -> (..., d), before the final norm

Parameters are the module's array attributes under the contract's keys (``A_m``, ``A_r``, ``B``,
``W_alpha``, ...), so ``module.parameters()`` is hcref's checkpoint mapping, and start at
``hcref.init_hc`` / ``hcref.init_fc``. The modules hold no other arrays, so ``mx.compile`` with
``inputs=model.state`` and ``nn.value_and_grad`` work as for any ``mlx.nn`` layer. Precision (D12):
a float32 module on a bfloat16/float16 stream computes float32 coefficients and keeps the stream
(``h0``, ``H_out``) in the stream's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

import hcref

from . import ops


class SiteState(NamedTuple):
    """What ``depth`` needs from ``width``: the mixed residual streams and the write weights."""

    H_res: mx.array
    """(..., n, d) for HC, (..., m, e) for FC."""
    beta: mx.array
    """(..., n) for HC, (..., m) for FC."""


class _Connection(nn.Module):
    family = ""

    def __init__(
        self,
        init: dict[str, np.ndarray],
        *,
        dynamic: bool,
        norm: str,
        use_tanh: bool,
        use_norm: bool,
        use_scale: bool,
        dtype: mx.Dtype,
    ) -> None:
        super().__init__()
        hcref.validation.check_options(norm, use_tanh, use_norm, use_scale)
        self.norm, self.use_tanh, self.use_norm, self.use_scale = norm, use_tanh, use_norm, use_scale
        self.dynamic = dynamic
        for key, value in init.items():
            if dtype == mx.float64:
                setattr(self, key, mx.array(value, dtype=mx.float64))
            else:
                setattr(self, key, mx.array(value.astype(np.float32)).astype(dtype))

    def param_keys(self) -> tuple[str, ...]:
        """The contract's keys of this site's parameters, in the order of ``hcref.init_*``."""
        return hcref.validation.param_keys(self.family, dynamic=self.dynamic, norm=self.norm)

    def params(self) -> dict[str, mx.array]:
        """The parameters as the contract's flat mapping (for the functional ops)."""
        return {key: self[key] for key in self.param_keys()}

    def _options(self) -> dict[str, Any]:
        return {"norm": self.norm, "use_tanh": self.use_tanh, "use_norm": self.use_norm, "use_scale": self.use_scale}

    def width(self, H: mx.array) -> tuple[mx.array, SiteState]:
        raise NotImplementedError

    def depth(self, y: mx.array, state: SiteState) -> mx.array:
        raise NotImplementedError

    def __call__(self, H: mx.array, branch: Callable[..., mx.array], *args: Any, **kwargs: Any) -> mx.array:
        """One whole site: ``depth(branch(h0, *args, **kwargs), state)`` with ``h0, state = width(H)``."""
        h0, state = self.width(H)
        return self.depth(branch(h0, *args, **kwargs), state)

    def _extra_repr(self) -> str:
        return (
            f"dynamic={self.dynamic}, norm={self.norm!r}, use_tanh={self.use_tanh}, "
            f"use_norm={self.use_norm}, use_scale={self.use_scale}"
        )


class HyperConnections(_Connection):
    """One HC residual site (see :func:`hcref.hc_coeffs`, :func:`hcref.hc_width`, :func:`hcref.hc_depth`).

    ``width``: H (..., n, d) -> h0 (..., d), state (H_res (..., n, d), beta (..., n)) with
    ``alpha, beta = hc_coeffs(H)``, ``h0 = A_m^T H``, ``H_res = A_r^T H``;
    ``depth``: y (..., d), state -> ``H_out = beta^T y^T + H_res`` (..., n, d);
    ``__call__(H, branch)`` does both around ``branch``.
    ``layer_index`` counts attention and MLP sublayers separately, from 0 (``A_m = e_(k mod n)``).
    Parameters are float32 unless ``dtype`` says otherwise.
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
        init = hcref.init_hc(n, d, layer_index, dynamic=dynamic, norm=norm)
        super().__init__(
            init, dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale, dtype=dtype
        )
        self.n, self.d, self.layer_index = n, d, layer_index

    def width(self, H: mx.array) -> tuple[mx.array, SiteState]:
        alpha, beta = ops.hc_coeffs(H, self.params(), **self._options())
        h0, H_res = ops.hc_width(H, alpha)
        return h0, SiteState(H_res, beta)

    def depth(self, y: mx.array, state: SiteState) -> mx.array:
        return ops.hc_depth(y, state.H_res, state.beta)

    def _extra_repr(self) -> str:
        return f"n={self.n}, d={self.d}, layer_index={self.layer_index}, " + super()._extra_repr()


class FracConnections(_Connection):
    """One FC residual site (see :func:`hcref.fc_coeffs`, :func:`hcref.fc_width`, :func:`hcref.fc_depth`).

    ``width``: H (..., m, e) -> h0 (..., d), state (H_res (..., m, e), beta (..., m)) with
    ``alpha, beta = fc_coeffs(H)``, ``h0 = concat_k (Y^T H)[k]``, ``H_res = A^T H``;
    ``depth``: y (..., d), state -> ``H_out[j] = beta[j] y_j + H_res[j]`` (..., m, e);
    ``__call__(H, branch)`` does both around ``branch``. Parameters are float32 unless ``dtype`` says otherwise.
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
        init = hcref.init_fc(m, d, dynamic=dynamic, norm=norm)
        super().__init__(
            init, dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale, dtype=dtype
        )
        self.m, self.d = m, d

    def width(self, H: mx.array) -> tuple[mx.array, SiteState]:
        alpha, beta = ops.fc_coeffs(H, self.params(), **self._options())
        h0, H_res = ops.fc_width(H, alpha)
        return h0, SiteState(H_res, beta)

    def depth(self, y: mx.array, state: SiteState) -> mx.array:
        return ops.fc_depth(y, state.H_res, state.beta)

    def _extra_repr(self) -> str:
        return f"m={self.m}, d={self.d}, " + super()._extra_repr()


class Expand(nn.Module):
    """x (..., d) -> H (..., n, d): n copies of the embedding (:func:`hcref.expand`)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        hcref.validation.check_count("n", n)
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
        hcref.validation.check_count("m", m)
        self.m = m

    def __call__(self, x: mx.array) -> mx.array:
        return ops.frac_split(x, self.m)

    def _extra_repr(self) -> str:
        return f"m={self.m}"


class FracMerge(nn.Module):
    """H (..., m, e) -> x (..., d = m*e): concatenated fractions (:func:`hcref.frac_merge`)."""

    def __call__(self, H: mx.array) -> mx.array:
        return ops.frac_merge(H)
