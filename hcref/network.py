"""A tiny reference network: a stack of Pre-Norm MLP sublayers joined by residual, HC, FC or mHC.

It exists so the papers' end-to-end claims can be checked (math.md 8): HC at its init
equals the Pre-Norm stack up to the factor n of ``reduce``; FC at its init equals it exactly;
mHC at its ``hc_like`` or ``zero`` init equals it up to the factor n when the sublayers start
with a scale-invariant norm (math.md 4.4).

    residual:  h <- h + T_k(h)                                   (Pre-Norm residual stack)
    hc:        H = expand(x, n);  H <- hc_site(H, P_k, T_k);  out = reduce(H)
    fc:        H = frac_split(x, m);  H <- fc_site(H, P_k, T_k);  out = frac_merge(H)
    mhc:       H = expand(x, n);  H <- mhc_site(H, P_k, T_k);  out = reduce(H)   (A15: sum)

The model's final norm and unembedding are not part of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import validation as v
from ._arrays import Array
from .ends import expand, expand_vjp, frac_merge, frac_merge_vjp, frac_split, frac_split_vjp, reduce, reduce_vjp
from .norms import RMSNORM_EPS, rmsnorm, rmsnorm_vjp
from .site import Sublayer, SublayerVJP, site, site_vjp

MODES = ("residual", "hc", "fc", "mhc")
STREAMS = ("hc", "mhc")
"""The modes whose ends are ``expand`` / ``reduce`` (replicated streams); FC splits and merges."""


def init_mlp(d: int, hidden: int, rng: np.random.Generator, *, scale: float = 0.5) -> dict[str, Array]:
    """Random Pre-Norm MLP weights: ``w1`` (d, hidden), ``w2`` (hidden, d), ``norm_weight`` (d)."""
    return {
        "w1": rng.normal(0, scale / np.sqrt(d), (d, hidden)),
        "w2": rng.normal(0, scale / np.sqrt(hidden), (hidden, d)),
        "norm_weight": 1 + 0.1 * rng.normal(size=d),
    }


def mlp(weights: Mapping[str, Array], h: Array, *, eps: float = RMSNORM_EPS) -> Array:
    """Pre-Norm MLP sublayer ``T(h) = tanh(rmsnorm(h) w1) w2``. Shapes: h (..., d) -> (..., d).

    ``eps = 0`` makes the norm, and so ``T``, scale-invariant (``T(c h) = T(h)`` for c > 0),
    which mHC's Pre-Norm equivalence at init needs (math.md 4.4).
    """
    return np.tanh(rmsnorm(h, weights["norm_weight"], eps) @ weights["w1"]) @ weights["w2"]


def mlp_vjp(weights: Mapping[str, Array], h: Array, g_y: Array, *, eps: float = RMSNORM_EPS) -> Array:
    """VJP of :func:`mlp` with respect to ``h`` (its weights are fixed here)."""
    a = np.tanh(rmsnorm(h, weights["norm_weight"], eps) @ weights["w1"])
    g_z = (g_y @ weights["w2"].T) * (1 - a**2)
    return rmsnorm_vjp(h, weights["norm_weight"], g_z @ weights["w1"].T, eps)[0]


def _check_mode(mode: str, rate: int, n_sites: int, connections: Sequence[Any] | None) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: expected 'residual', 'hc', 'fc' or 'mhc', got {mode!r}")
    v.check_count("rate", rate)
    if mode != "residual" and (connections is None or len(connections) != n_sites):
        got = None if connections is None else len(connections)
        raise ValueError(f"connections: expected one parameter mapping per sublayer ({n_sites}), got {got}")


def stack(
    x: Array,
    sublayers: Sequence[Sublayer],
    *,
    mode: str,
    connections: Sequence[Mapping[str, Array]] | None = None,
    rate: int = 1,
    **options: Any,
) -> Array:
    """Run ``x`` (..., d) through the sublayers joined as ``mode``; ``rate`` is n (HC, mHC) or m (FC).

    ``options`` go to every site (HC/FC: ``norm`` and the switches; mHC: ``iters``, ``eps``).
    Returns (..., d): the residual stream, ``reduce`` of the HC/mHC streams, or the merged fractions.
    """
    _check_mode(mode, rate, len(sublayers), connections)
    if mode == "residual":
        for sublayer in sublayers:
            x = x + sublayer(x)
        return x
    assert connections is not None
    H = expand(x, rate) if mode in STREAMS else frac_split(x, rate)
    for sublayer, params in zip(sublayers, connections, strict=True):
        H = site(mode, H, params, sublayer, **options)
    return reduce(H) if mode in STREAMS else frac_merge(H)


def stack_vjp(
    x: Array,
    sublayers: Sequence[Sublayer],
    sublayer_vjps: Sequence[SublayerVJP],
    g_out: Array,
    *,
    mode: str,
    connections: Sequence[Mapping[str, Array]],
    rate: int,
    **options: Any,
) -> tuple[Array, list[dict[str, Array]]]:
    """VJP of :func:`stack` for ``mode`` 'hc', 'fc' or 'mhc': ``(g_x, [g_params of each site])``."""
    _check_mode(mode, rate, len(sublayers), connections)
    if mode == "residual":
        raise ValueError(
            "mode: stack_vjp covers 'hc', 'fc' and 'mhc'; the residual stack has no connection parameters"
        )
    states = [expand(x, rate) if mode in STREAMS else frac_split(x, rate)]
    for sublayer, params in zip(sublayers[:-1], connections[:-1], strict=True):
        states.append(site(mode, states[-1], params, sublayer, **options))
    H_last = site(mode, states[-1], connections[-1], sublayers[-1], **options)
    (g_H,) = reduce_vjp(H_last, g_out) if mode in STREAMS else frac_merge_vjp(H_last, g_out)
    g_connections: list[dict[str, Array]] = []
    for H, sublayer, sub_vjp, params in reversed(list(zip(states, sublayers, sublayer_vjps, connections, strict=True))):
        g_H, g_params = site_vjp(mode, H, params, sublayer, sub_vjp, g_H, **options)
        g_connections.insert(0, g_params)
    (g_x,) = expand_vjp(x, rate, g_H) if mode in STREAMS else frac_split_vjp(x, rate, g_H)
    return g_x, g_connections
