"""One whole residual site, ``width -> sublayer -> depth``, and its VJP.

The sublayer ``T`` (which carries its own pre-norm, math.md 1) is supplied by the caller,
with its VJP ``T_vjp(h0, g_y) -> g_h0``; its own parameter gradients are the caller's
business. HC (HC paper Alg. 2/3, math.md 5.3) and FC (FC paper Alg. 2, math.md 5.4) share
this composition and differ only in their ops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._arrays import Array
from .frac import fc_coeffs, fc_coeffs_vjp, fc_depth, fc_depth_vjp, fc_width, fc_width_vjp
from .hyper import hc_coeffs, hc_coeffs_vjp, hc_depth, hc_depth_vjp, hc_width, hc_width_vjp

Sublayer = Callable[[Array], Array]
SublayerVJP = Callable[[Array, Array], Array]

_OPS = {
    "hc": (hc_coeffs, hc_width, hc_depth, hc_coeffs_vjp, hc_width_vjp, hc_depth_vjp),
    "fc": (fc_coeffs, fc_width, fc_depth, fc_coeffs_vjp, fc_width_vjp, fc_depth_vjp),
}


def _family(family: str) -> tuple[Any, ...]:
    if family not in _OPS:
        raise ValueError(f"family: expected 'hc' or 'fc', got {family!r}")
    return _OPS[family]


def site(family: str, H: Array, params: Mapping[str, Array], sublayer: Sublayer, **options: Any) -> Array:
    """``H_out = depth(T(h0), H_res, beta)`` with ``h0, H_res = width(H, alpha)`` and
    ``alpha, beta = coeffs(H, params, **options)``.

    Shapes: H (..., n, d) for ``family='hc'`` or (..., m, e) for ``'fc'`` -> H_out of the same shape.
    """
    coeffs, width, depth = _family(family)[:3]
    alpha, beta = coeffs(H, params, **options)
    h0, H_res = width(H, alpha)
    return depth(sublayer(h0), H_res, beta)


def site_vjp(
    family: str,
    H: Array,
    params: Mapping[str, Array],
    sublayer: Sublayer,
    sublayer_vjp: SublayerVJP,
    g_H_out: Array,
    **options: Any,
) -> tuple[Array, dict[str, Array]]:
    """VJP of :func:`site`: ``(g_H, g_params)``.

    ``g_y, g_H_res, g_beta = depth_vjp``; ``g_h0 = T_vjp(h0, g_y)``;
    ``g_H1, g_alpha = width_vjp``; ``g_H2, g_params = coeffs_vjp``; ``g_H = g_H1 + g_H2``.
    """
    coeffs, width, _, coeffs_vjp, width_vjp, depth_vjp = _family(family)
    alpha, beta = coeffs(H, params, **options)
    h0, H_res = width(H, alpha)
    y = sublayer(h0)
    g_y, g_H_res, g_beta = depth_vjp(y, H_res, beta, g_H_out)
    g_H_width, g_alpha = width_vjp(H, alpha, sublayer_vjp(h0, g_y), g_H_res)
    g_H_coeffs, g_params = coeffs_vjp(H, params, g_alpha, g_beta, **options)
    return g_H_width + g_H_coeffs, g_params


def hc_site(H: Array, params: Mapping[str, Array], sublayer: Sublayer, **options: Any) -> Array:
    """:func:`site` for HC. Shapes: H (..., n, d) -> (..., n, d)."""
    return site("hc", H, params, sublayer, **options)


def fc_site(H: Array, params: Mapping[str, Array], sublayer: Sublayer, **options: Any) -> Array:
    """:func:`site` for FC. Shapes: H (..., m, e) -> (..., m, e)."""
    return site("fc", H, params, sublayer, **options)
