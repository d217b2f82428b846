"""The norm applied before the dynamic projections of HC and FC (decision D1), scale-safe (D12).

One norm acts on the last axis (width ``w``: ``d`` for HC, ``e = d/m`` for FC) and is shared
by every stream or fraction. HC paper Alg. 2 instantiates ``LayerNorm(d)``; FC paper Alg. 2
``LayerNorm(d/m)``; both papers' parameter counts assume RMSNorm (math.md A1).

Scale safety (decision D12). The textbook forms square ``x``: in float32 a row of 1e20 has
squares of 1e40, which overflow, so the norm returns 0 or NaN where the exact result is an
ordinary number. Every norm here first divides the row by a power of two,

    s  = 2^floor(log2(max(max_i |x_i|, 1)))        (per row; the largest power of two <= max(|x|, 1))
    x' = x / s                                     (exact: a power-of-two scaling loses no bits)

and rescales the epsilon to match, ``eps' = eps / s^2`` (computed as ``eps / s / s`` so that
``s^2`` itself never overflows), so that

    rmsnorm:   r' = (mean(x'^2) + eps')^(-1/2),              x_hat = x' r'
    layernorm: r' = (mean((x' - mean(x'))^2) + eps')^(-1/2),  x_hat = (x' - mean(x')) r'

equal the textbook ``x_hat`` exactly in real arithmetic (``r = r' / s``). Because ``s`` is a
power of two, they are also equal *bit for bit* in floating point wherever the textbook form
neither overflows nor underflows: results at ordinary scales do not change at all. With
``s >= 1`` nothing is scaled up, so tiny inputs (1e-30) keep the textbook behaviour (their
squares underflow to 0 and ``eps`` dominates, which is the exact answer to working precision).
``mean(x'^2) >= 1/w`` whenever ``s > 1``, so nothing underflows to 0 that matters; the
variance of layernorm can be exactly 0 (all entries equal), where ``eps'`` may underflow too:
``r'`` is then computed from ``max(var' + eps', smallest_subnormal)`` (the smallest positive
number of the dtype), which gives the exact ``x_hat = 0`` instead of ``0 * inf`` and changes
no positive value (a floor at the smallest *normal* number would: in float16, ``eps = 1e-5``
itself is below it). Any finite input whose
exact result is finite gives a finite, correct result, forward and VJP, in every dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._arrays import Array, sum_tokens

LAYERNORM_EPS = 1e-5
RMSNORM_EPS = 1e-6


def row_scale(x: Array) -> Array:
    """``s = 2^floor(log2(max(max|x|, 1)))`` over the last axis (keepdims), in ``x``'s dtype.

    The largest power of two not above ``max(max_i |x_i|, 1)``: dividing by it is exact and
    brings the row into ``[-2, 2)`` so that sums of squares cannot overflow. Shapes: x (..., w)
    -> s (..., 1).
    """
    amax = np.max(np.abs(x), axis=-1, keepdims=True, initial=0.0)
    _, exponent = np.frexp(amax)  # amax = f * 2^exponent with f in [0.5, 1)
    return np.ldexp(np.ones_like(amax), np.maximum(exponent - 1, 0))


def _rsqrt(a: Array) -> Array:
    """``a^(-1/2)`` with ``a`` floored at the dtype's smallest positive number (never ``inf``)."""
    return 1.0 / np.sqrt(np.maximum(a, np.finfo(a.dtype).smallest_subnormal))


def _layernorm_hat(x: Array, eps: float) -> tuple[Array, Array]:
    """(x_hat, r) of LayerNorm, scale-safe: ``x_hat = (x - mu) r`` with ``r = r' / s``."""
    s = row_scale(x)
    xs = x / s
    xc = xs - xs.mean(axis=-1, keepdims=True)
    r_scaled = _rsqrt((xc * xc).mean(axis=-1, keepdims=True) + eps / s / s)
    return xc * r_scaled, r_scaled / s


def rms_normalize(x: Array, eps: float) -> tuple[Array, Array]:
    """``(x_hat, r)`` of RMSNorm without weight, scale-safe: ``x_hat = x r`` with
    ``r = (mean(x^2) + eps)^(-1/2)`` computed as ``r' / s`` (module docstring).

    Also the mHC RMS scaling of the flattened ``n*d`` vector (decision D9). Shapes: x (..., w)
    -> x_hat (..., w), r (..., 1).
    """
    s = row_scale(x)
    xs = x / s
    r_scaled = _rsqrt((xs * xs).mean(axis=-1, keepdims=True) + eps / s / s)
    return xs * r_scaled, r_scaled / s


def layernorm(x: Array, weight: Array, bias: Array, eps: float = LAYERNORM_EPS) -> Array:
    """LayerNorm over the last axis, scale-safe (module docstring).

    ``mu = mean(x)``, ``r = (mean((x - mu)^2) + eps)^(-1/2)``, ``out = weight * (x - mu) * r + bias``,
    computed on ``x / s`` with ``eps / s^2`` (``s`` of :func:`row_scale`).

    Shapes: x (..., w), weight (w,), bias (w,) -> (..., w).
    """
    x_hat, _ = _layernorm_hat(x, eps)
    return weight * x_hat + bias


def layernorm_vjp(
    x: Array, weight: Array, bias: Array, g: Array, eps: float = LAYERNORM_EPS
) -> tuple[Array, Array, Array]:
    """VJP of :func:`layernorm` (math.md 5.1).

    With ``x_hat = (x - mu) r`` and ``g_hat = g * weight``:
    ``g_x = r (g_hat - mean(g_hat) - x_hat mean(g_hat x_hat))``,
    ``g_weight = sum_tokens(g x_hat)``, ``g_bias = sum_tokens(g)``.

    ``x_hat`` and ``r`` are the scale-safe ones of :func:`layernorm`.

    Returns (g_x (..., w), g_weight (w,), g_bias (w,)).
    """
    x_hat, r = _layernorm_hat(x, eps)
    g_hat = g * weight
    g_x = r * (
        g_hat - g_hat.mean(axis=-1, keepdims=True) - x_hat * (g_hat * x_hat).mean(axis=-1, keepdims=True)
    )
    return g_x, sum_tokens(g * x_hat, 1), sum_tokens(g, 1)


def rmsnorm(x: Array, weight: Array, eps: float = RMSNORM_EPS) -> Array:
    """RMSNorm over the last axis: ``out = weight * x * (mean(x^2) + eps)^(-1/2)``, scale-safe
    (computed on ``x / s`` with ``eps / s^2``, module docstring).

    Shapes: x (..., w), weight (w,) -> (..., w).
    """
    x_hat, _ = rms_normalize(x, eps)
    return weight * x_hat


def rmsnorm_vjp(x: Array, weight: Array, g: Array, eps: float = RMSNORM_EPS) -> tuple[Array, Array]:
    """VJP of :func:`rmsnorm` (math.md 5.1).

    With ``x_hat = x r`` and ``g_hat = g * weight``: ``g_x = r (g_hat - x_hat mean(g_hat x_hat))``,
    ``g_weight = sum_tokens(g x_hat)``; ``x_hat`` and ``r`` are the scale-safe ones of
    :func:`rmsnorm`. Returns (g_x (..., w), g_weight (w,)).
    """
    x_hat, r = rms_normalize(x, eps)
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
