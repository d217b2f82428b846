"""One whole residual site and its VJP: ``width -> sublayer -> depth`` (HC, FC) or
``coeffs -> pre -> sublayer -> post`` (mHC).

The sublayer ``T`` (which carries its own pre-norm, math.md 1) is supplied by the caller,
with its VJP ``T_vjp(h0, g_y) -> g_h0``; its own parameter gradients are the caller's
business. HC (HC paper Alg. 2/3, math.md 5.3) and FC (FC paper Alg. 2, math.md 5.4) share
one composition and differ only in their ops; mHC (mHC paper Eq. 3, math.md 5.5) reads and
writes with its own two apply steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._arrays import Array
from .frac import fc_coeffs, fc_coeffs_vjp, fc_depth, fc_depth_vjp, fc_width, fc_width_vjp
from .hyper import hc_coeffs, hc_coeffs_vjp, hc_depth, hc_depth_vjp, hc_width, hc_width_vjp
from .mhc import mhc_coeffs, mhc_coeffs_vjp, mhc_post, mhc_post_vjp, mhc_pre, mhc_pre_vjp

Sublayer = Callable[[Array], Array]
SublayerVJP = Callable[[Array, Array], Array]

FAMILIES = ("hc", "fc", "mhc")

_OPS = {
    "hc": (hc_coeffs, hc_width, hc_depth, hc_coeffs_vjp, hc_width_vjp, hc_depth_vjp),
    "fc": (fc_coeffs, fc_width, fc_depth, fc_coeffs_vjp, fc_width_vjp, fc_depth_vjp),
}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family: expected 'hc', 'fc' or 'mhc', got {family!r}")


def site(family: str, H: Array, params: Mapping[str, Array], sublayer: Sublayer, **options: Any) -> Array:
    """One residual site of ``family``.

    HC/FC: ``H_out = depth(T(h0), H_res, beta)`` with ``h0, H_res = width(H, alpha)`` and
    ``alpha, beta = coeffs(H, params, **options)``. mHC: ``H_out = mhc_post(T(h0), H, h_post, h_res)``
    with ``h0 = mhc_pre(H, h_pre)`` and ``h_pre, h_post, h_res = mhc_coeffs(H, params, **options)``
    (options ``iters``, ``eps``).

    Shapes: H (..., n, d) for 'hc' and 'mhc', (..., m, e) for 'fc' -> H_out of the same shape.
    """
    _check_family(family)
    if family == "mhc":
        h_pre, h_post, h_res = mhc_coeffs(H, params, **options)
        return mhc_post(sublayer(mhc_pre(H, h_pre)), H, h_post, h_res)
    coeffs, width, depth = _OPS[family][:3]
    alpha, beta = coeffs(H, params, **options)
    h0, H_res = width(H, alpha)
    return depth(sublayer(h0), H_res, beta)


def _mhc_site_vjp(
    H: Array,
    params: Mapping[str, Array],
    sublayer: Sublayer,
    sublayer_vjp: SublayerVJP,
    g_H_out: Array,
    **options: Any,
) -> tuple[Array, dict[str, Array]]:
    h_pre, h_post, h_res = mhc_coeffs(H, params, **options)
    h0 = mhc_pre(H, h_pre)
    y = sublayer(h0)
    g_y, g_H_post, g_h_post, g_h_res = mhc_post_vjp(y, H, h_post, h_res, g_H_out)
    g_H_pre, g_h_pre = mhc_pre_vjp(H, h_pre, sublayer_vjp(h0, g_y))
    g_H_coeffs, g_params = mhc_coeffs_vjp(H, params, g_h_pre, g_h_post, g_h_res, **options)
    return g_H_post + g_H_pre + g_H_coeffs, g_params


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

    HC/FC: ``g_y, g_H_res, g_beta = depth_vjp``; ``g_h0 = T_vjp(h0, g_y)``;
    ``g_H1, g_alpha = width_vjp``; ``g_H2, g_params = coeffs_vjp``; ``g_H = g_H1 + g_H2``.
    mHC: ``g_y, g_H1, g_h_post, g_h_res = mhc_post_vjp``; ``g_h0 = T_vjp(h0, g_y)``;
    ``g_H2, g_h_pre = mhc_pre_vjp``; ``g_H3, g_params = mhc_coeffs_vjp``; ``g_H = g_H1 + g_H2 + g_H3``.
    """
    _check_family(family)
    if family == "mhc":
        return _mhc_site_vjp(H, params, sublayer, sublayer_vjp, g_H_out, **options)
    coeffs, width, _, coeffs_vjp, width_vjp, depth_vjp = _OPS[family]
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


def mhc_site(H: Array, params: Mapping[str, Array], sublayer: Sublayer, **options: Any) -> Array:
    """:func:`site` for mHC (options ``iters``, ``eps``). Shapes: H (..., n, d) -> (..., n, d)."""
    return site("mhc", H, params, sublayer, **options)
