"""The norm applied before the dynamic projections of HC and FC (decision D1).

One norm acts on the last axis (width ``w``: ``d`` for HC, ``e = d/m`` for FC) and is shared
by every stream or fraction. HC paper Alg. 2 instantiates ``LayerNorm(d)``; FC paper Alg. 2
``LayerNorm(d/m)``; both papers' parameter counts assume RMSNorm (math.md A1).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._arrays import Array, sum_tokens

LAYERNORM_EPS = 1e-5
RMSNORM_EPS = 1e-6


def layernorm(x: Array, weight: Array, bias: Array, eps: float = LAYERNORM_EPS) -> Array:
    """LayerNorm over the last axis.

    ``mu = mean(x)``, ``r = (mean((x - mu)^2) + eps)^(-1/2)``, ``out = weight * (x - mu) * r + bias``.

    Shapes: x (..., w), weight (w,), bias (w,) -> (..., w).
    """
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    r = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    return weight * (xc * r) + bias


def layernorm_vjp(
    x: Array, weight: Array, bias: Array, g: Array, eps: float = LAYERNORM_EPS
) -> tuple[Array, Array, Array]:
    """VJP of :func:`layernorm` (math.md 5.1).

    With ``x_hat = (x - mu) r`` and ``g_hat = g * weight``:
    ``g_x = r (g_hat - mean(g_hat) - x_hat mean(g_hat x_hat))``,
    ``g_weight = sum_tokens(g x_hat)``, ``g_bias = sum_tokens(g)``.

    Returns (g_x (..., w), g_weight (w,), g_bias (w,)).
    """
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    r = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    x_hat = xc * r
    g_hat = g * weight
    g_x = r * (
        g_hat - g_hat.mean(axis=-1, keepdims=True) - x_hat * (g_hat * x_hat).mean(axis=-1, keepdims=True)
    )
    return g_x, sum_tokens(g * x_hat, 1), sum_tokens(g, 1)


def rmsnorm(x: Array, weight: Array, eps: float = RMSNORM_EPS) -> Array:
    """RMSNorm over the last axis: ``out = weight * x * (mean(x^2) + eps)^(-1/2)``.

    Shapes: x (..., w), weight (w,) -> (..., w).
    """
    r = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    return weight * (x * r)


def rmsnorm_vjp(x: Array, weight: Array, g: Array, eps: float = RMSNORM_EPS) -> tuple[Array, Array]:
    """VJP of :func:`rmsnorm` (math.md 5.1).

    With ``x_hat = x r`` and ``g_hat = g * weight``: ``g_x = r (g_hat - x_hat mean(g_hat x_hat))``,
    ``g_weight = sum_tokens(g x_hat)``. Returns (g_x (..., w), g_weight (w,)).
    """
    r = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    x_hat = x * r
    g_hat = g * weight
    g_x = r * (g_hat - x_hat * (g_hat * x_hat).mean(axis=-1, keepdims=True))
    return g_x, sum_tokens(g * x_hat, 1)


def apply_norm(kind: str, x: Array, params: Mapping[str, Array]) -> Array:
    """The norm named ``kind`` (``layernorm``, ``rmsnorm``, ``none``) with weights from ``params``."""
    if kind == "layernorm":
        return layernorm(x, params["norm_weight"], params["norm_bias"])
    if kind == "rmsnorm":
        return rmsnorm(x, params["norm_weight"])
    return x


def apply_norm_vjp(kind: str, x: Array, params: Mapping[str, Array], g: Array) -> tuple[Array, dict[str, Array]]:
    """VJP of :func:`apply_norm`: (g_x, {norm parameter key: gradient})."""
    if kind == "layernorm":
        g_x, g_w, g_b = layernorm_vjp(x, params["norm_weight"], params["norm_bias"], g)
        return g_x, {"norm_weight": g_w, "norm_bias": g_b}
    if kind == "rmsnorm":
        g_x, g_w = rmsnorm_vjp(x, params["norm_weight"], g)
        return g_x, {"norm_weight": g_w}
    return g, {}
