"""Flax NNX modules for Hyper-Connections and Frac-Connections.

Named dims: ``...`` any leading (token) axes, ``n`` streams, ``m`` fractions, ``d`` model width,
``e = d/m`` fraction width. One connection module per residual site (sublayer)::

    H = Expand(n)(x)                      # (..., d) -> (..., n, d)
    for k, block in enumerate(blocks):    # hcs[k] = HyperConnections(n, d, layer_index=k)
        H = hcs[k](H, block)              # or: h0, state = hcs[k].width(H); H = hcs[k].depth(block(h0), state)
    x = Reduce()(H)                       # (..., n, d) -> (..., d), before the final norm

Parameters are ``nnx.Param`` attributes named by the contract's keys (``A_m``, ``A_r``, ``B``,
``W_alpha``, ...), so ``nnx.state(module, nnx.Param)`` is hcref's checkpoint mapping, and start at
``hcref.init_hc`` / ``hcref.init_fc``. The modules call the functional ops of :mod:`hcref_jax.ops`
(same precision policy, D12: float32 coefficient math and mixing for bfloat16/float16 inputs; a
float32 module on a bfloat16 stream gives float32 coefficients and keeps the stream bfloat16) and
work under ``nnx.jit`` / ``nnx.grad`` and, split into a pure function, ``jax.jit`` / ``jax.grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

import hcref

from . import ops


class SiteState(NamedTuple):
    """What ``depth`` needs from ``width``: the mixed residual streams and the write weights."""

    H_res: jax.Array
    """(..., n, d) for HC, (..., m, e) for FC."""
    beta: jax.Array
    """(..., n) for HC, (..., m) for FC."""


class _Connection(nnx.Module):
    family = ""

    def __init__(
        self,
        init: dict[str, Any],
        *,
        norm: str,
        use_tanh: bool,
        use_norm: bool,
        use_scale: bool,
        param_dtype: Any,
    ) -> None:
        hcref.validation.check_options(norm, use_tanh, use_norm, use_scale)
        self.norm, self.use_tanh, self.use_norm, self.use_scale = norm, use_tanh, use_norm, use_scale
        self.param_keys = tuple(init)
        for key, value in init.items():
            setattr(self, key, nnx.Param(jnp.asarray(value, dtype=param_dtype)))

    def params(self) -> dict[str, jax.Array]:
        """The parameters as the contract's flat mapping (for the functional ops)."""
        return {key: getattr(self, key)[...] for key in self.param_keys}

    def _options(self) -> dict[str, Any]:
        return {"norm": self.norm, "use_tanh": self.use_tanh, "use_norm": self.use_norm, "use_scale": self.use_scale}

    def width(self, H: jax.Array) -> tuple[jax.Array, SiteState]:
        raise NotImplementedError

    def depth(self, y: jax.Array, state: SiteState) -> jax.Array:
        raise NotImplementedError

    def __call__(self, H: jax.Array, branch: Callable[..., jax.Array], *args: Any, **kwargs: Any) -> jax.Array:
        """One whole site: ``depth(branch(h0, *args, **kwargs), state)`` with ``h0, state = width(H)``."""
        h0, state = self.width(H)
        return self.depth(branch(h0, *args, **kwargs), state)


class HyperConnections(_Connection):
    """One HC residual site (see :func:`hcref.hc_coeffs`, :func:`hcref.hc_width`, :func:`hcref.hc_depth`).

    ``width``: H (..., n, d) -> h0 (..., d), state (H_res (..., n, d), beta (..., n));
    ``depth``: y (..., d), state -> H_out (..., n, d); ``__call__(H, branch)`` does both around ``branch``.
    ``layer_index`` counts attention and MLP sublayers separately, from 0. Parameters (``param_dtype``,
    default float32): ``A_m`` (n), ``A_r`` (n, n), ``B`` (n); dynamic adds ``W_alpha`` (d, n+1),
    ``W_beta`` (d), ``s_alpha`` (), ``s_beta`` (), ``norm_weight`` (d), ``norm_bias`` (d, layernorm).
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
        init = hcref.init_hc(n, d, layer_index, dynamic=dynamic, norm=norm)
        super().__init__(
            init, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale, param_dtype=param_dtype
        )
        self.n, self.d, self.layer_index, self.dynamic = n, d, layer_index, dynamic

    def width(self, H: jax.Array) -> tuple[jax.Array, SiteState]:
        alpha, beta = ops.hc_coeffs(H, self.params(), **self._options())
        h0, H_res = ops.hc_width(H, alpha)
        return h0, SiteState(H_res, beta)

    def depth(self, y: jax.Array, state: SiteState) -> jax.Array:
        return ops.hc_depth(y, state.H_res, state.beta)


class FracConnections(_Connection):
    """One FC residual site (see :func:`hcref.fc_coeffs`, :func:`hcref.fc_width`, :func:`hcref.fc_depth`).

    ``width``: H (..., m, e) -> h0 (..., d), state (H_res (..., m, e), beta (..., m));
    ``depth``: y (..., d), state -> H_out (..., m, e); ``__call__(H, branch)`` does both around ``branch``.
    Parameters: ``Y`` (m, m), ``A`` (m, m), ``B`` (m); dynamic adds ``W_alpha`` (e, 2m), ``W_beta`` (e),
    ``s_alpha`` (), ``s_beta`` (), ``norm_weight`` (e), ``norm_bias`` (e, layernorm).
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
        init = hcref.init_fc(m, d, dynamic=dynamic, norm=norm)
        super().__init__(
            init, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale, param_dtype=param_dtype
        )
        self.m, self.d, self.dynamic = m, d, dynamic

    def width(self, H: jax.Array) -> tuple[jax.Array, SiteState]:
        alpha, beta = ops.fc_coeffs(H, self.params(), **self._options())
        h0, H_res = ops.fc_width(H, alpha)
        return h0, SiteState(H_res, beta)

    def depth(self, y: jax.Array, state: SiteState) -> jax.Array:
        return ops.fc_depth(y, state.H_res, state.beta)


class Expand(nnx.Module):
    """x (..., d) -> H (..., n, d): n copies of the embedding (:func:`hcref.expand`)."""

    def __init__(self, n: int) -> None:
        hcref.validation.check_count("n", n)
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
        hcref.validation.check_count("m", m)
        self.m = m

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.frac_split(x, self.m)


class FracMerge(nnx.Module):
    """H (..., m, e) -> x (..., d = m*e): concatenated fractions (:func:`hcref.frac_merge`)."""

    def __call__(self, H: jax.Array) -> jax.Array:
        return ops.frac_merge(H)
