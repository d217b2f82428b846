"""The math HC and FC share, written once.

Both compute their coefficients as ``static + s * tanh(norm(H) W)`` row by row (HC paper
Eqs. 10-13, FC paper Eqs. 11-14) and both read and mix their state with one product
``mix = alpha^T H`` (HC paper Alg. 2, FC paper Alg. 2). They differ only in how the static
matrix is packed, in how ``mix`` is split, and in the write step; see ``hyper.py`` / ``frac.py``.

Shapes: ``k`` rows (HC: n streams, FC: m fractions) of width ``w`` (HC: d, FC: e = d/m);
``c`` coefficient columns (HC: n+1, FC: 2m).

Precision (decision D12). Every op computes in :func:`compute_dtype_of` its inputs, the promoted
dtype but at least float32 (half-precision inputs accumulate in float32), and rounds its results
once: coefficients to the promoted dtype of ``H`` and the parameters (float32 for float32
parameters on a bfloat16/float16 state), the mixed state to the dtype of ``H`` (the state's
dtype, whatever the coefficients' dtype). VJPs return each cotangent in the dtype of its primal.
Float32 and float64 inputs are computed exactly as before (their compute dtype is their own).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._arrays import Array, sum_tokens
from ._dtypes import compute_dtype, promoted
from .norms import apply_norm, apply_norm_vjp
from .validation import norm_keys


def result_dtype(H: Array, params: Mapping[str, Array]) -> np.dtype:
    """The dtype of the coefficients: the promotion of ``H`` and every parameter."""
    return promoted(H, *params.values())


def compute_dtype_of(*arrays: Array) -> np.dtype:
    """The dtype an op on ``arrays`` computes in (D12, :mod:`hcref._dtypes`): their promotion, at
    least float32 (``float16, float32 -> float32``; ``float32, float64 -> float64``)."""
    return compute_dtype(promoted(*arrays))


def _cast(params: Mapping[str, Array], dtype: np.dtype) -> dict[str, Array]:
    return {key: value.astype(dtype, copy=False) for key, value in params.items()}


def coeffs(
    H: Array,
    static_alpha: Array,
    static_beta: Array,
    params: Mapping[str, Array],
    *,
    dynamic: bool,
    norm: str,
    use_tanh: bool,
    use_norm: bool,
    use_scale: bool,
) -> tuple[Array, Array]:
    """``alpha = s_alpha u(H_bar W_alpha) + static_alpha``, ``beta = s_beta u(H_bar W_beta) + static_beta``.

    ``H_bar = norm(H)`` row-wise over w (identity when ``use_norm`` is off), ``u = tanh``
    (identity when ``use_tanh`` is off), ``s = 1`` when ``use_scale`` is off. Static sites use
    only the static terms. Row i of alpha and beta depends on row i of H only.

    Computed in :func:`compute_dtype_of` the inputs (at least float32), returned in :func:`result_dtype`.

    Shapes: H (..., k, w), static_alpha (k, c), static_beta (k,) -> alpha (..., k, c), beta (..., k).
    """
    lead = H.shape[:-2]
    dtype = result_dtype(H, params)
    if not dynamic:
        alpha = np.broadcast_to(static_alpha, lead + static_alpha.shape).astype(dtype, copy=True)
        beta = np.broadcast_to(static_beta, lead + static_beta.shape).astype(dtype, copy=True)
        return alpha, beta
    ct = compute_dtype(dtype)
    H, params = H.astype(ct, copy=False), _cast(params, ct)
    static_alpha, static_beta = static_alpha.astype(ct, copy=False), static_beta.astype(ct, copy=False)
    H_bar = apply_norm(norm, H, params) if use_norm else H
    u_alpha = H_bar @ params["W_alpha"]
    u_beta = H_bar @ params["W_beta"]
    if use_tanh:
        u_alpha, u_beta = np.tanh(u_alpha), np.tanh(u_beta)
    if use_scale:
        u_alpha, u_beta = params["s_alpha"] * u_alpha, params["s_beta"] * u_beta
    return (u_alpha + static_alpha).astype(dtype, copy=False), (u_beta + static_beta).astype(dtype, copy=False)


def coeffs_vjp(
    H: Array,
    params: Mapping[str, Array],
    g_alpha: Array,
    g_beta: Array,
    *,
    dynamic: bool,
    norm: str,
    use_tanh: bool,
    use_norm: bool,
    use_scale: bool,
) -> tuple[Array, Array, Array, dict[str, Array]]:
    """VJP of :func:`coeffs` (math.md 5.3).

    Returns ``(g_H, g_static_alpha, g_static_beta, g_dynamic)`` where ``g_dynamic`` maps every
    dynamic parameter key (``W_alpha``, ``W_beta``, ``s_alpha``, ``s_beta``, norm keys) to its
    gradient. Parameter gradients are summed over all tokens. Switched-off parts (norm,
    scales) get zero gradients; a static site returns ``g_H = 0``. Computed in
    :func:`compute_dtype_of` the inputs; ``g_H`` and every parameter gradient in the dtype of its primal, the
    static gradients in the compute dtype (the caller casts them to each static key's dtype).
    """
    ct = compute_dtype_of(H, g_alpha, g_beta, *params.values())
    g_alpha, g_beta = g_alpha.astype(ct, copy=False), g_beta.astype(ct, copy=False)
    g_static_alpha = sum_tokens(g_alpha, 2)
    g_static_beta = sum_tokens(g_beta, 1)
    if not dynamic:
        return np.zeros_like(H), g_static_alpha, g_static_beta, {}
    H_dtype, dtypes = H.dtype, {key: value.dtype for key, value in params.items()}
    H, params = H.astype(ct, copy=False), _cast(params, ct)
    W_alpha, W_beta = params["W_alpha"], params["W_beta"]
    H_bar = apply_norm(norm, H, params) if use_norm else H
    a_alpha, a_beta = H_bar @ W_alpha, H_bar @ W_beta
    u_alpha, u_beta = (np.tanh(a_alpha), np.tanh(a_beta)) if use_tanh else (a_alpha, a_beta)
    grads: dict[str, Array] = {}
    if use_scale:
        grads["s_alpha"] = np.asarray((g_alpha * u_alpha).sum(), dtype=params["s_alpha"].dtype)
        grads["s_beta"] = np.asarray((g_beta * u_beta).sum(), dtype=params["s_beta"].dtype)
        g_u_alpha, g_u_beta = params["s_alpha"] * g_alpha, params["s_beta"] * g_beta
    else:
        grads["s_alpha"] = np.zeros_like(params["s_alpha"])
        grads["s_beta"] = np.zeros_like(params["s_beta"])
        g_u_alpha, g_u_beta = g_alpha, g_beta
    if use_tanh:
        g_a_alpha, g_a_beta = g_u_alpha * (1 - u_alpha**2), g_u_beta * (1 - u_beta**2)
    else:
        g_a_alpha, g_a_beta = g_u_alpha, g_u_beta
    k, w = H.shape[-2:]
    H_bar_tokens = H_bar.reshape(-1, k, w)
    grads["W_alpha"] = np.einsum("tkw,tkc->wc", H_bar_tokens, g_a_alpha.reshape(-1, k, g_a_alpha.shape[-1]))
    grads["W_beta"] = np.einsum("tkw,tk->w", H_bar_tokens, g_a_beta.reshape(-1, k))
    g_H_bar = g_a_alpha @ W_alpha.T + g_a_beta[..., None] * W_beta
    if use_norm:
        g_H, g_norm = apply_norm_vjp(norm, H, params, g_H_bar)
        grads.update(g_norm)
    else:
        g_H = g_H_bar
        grads.update({key: np.zeros_like(params[key]) for key in norm_keys(norm)})
    grads = {key: g.astype(dtypes[key], copy=False) for key, g in grads.items()}
    return g_H.astype(H_dtype, copy=False), g_static_alpha, g_static_beta, grads


def mix(H: Array, alpha: Array) -> Array:
    """``mix = alpha^T H``: ``mix[..., t, :] = sum_i alpha[..., i, t] H[..., i, :]``.

    Computed in :func:`compute_dtype_of` H and alpha and rounded once to the dtype of ``H`` (the state's dtype;
    ``alpha`` may be float32 coefficients on a bfloat16 state).

    Shapes: H (..., k, w), alpha (..., k, c) -> mix (..., c, w).
    """
    ct = compute_dtype_of(H, alpha)
    mixed = np.swapaxes(alpha.astype(ct, copy=False), -1, -2) @ H.astype(ct, copy=False)
    return mixed.astype(H.dtype, copy=False)


def mix_vjp(H: Array, alpha: Array, g_mix: Array) -> tuple[Array, Array]:
    """VJP of :func:`mix`: ``g_H = alpha g_mix``, ``g_alpha = H g_mix^T`` (math.md 5.3), computed in
    :func:`compute_dtype_of` the inputs; ``g_H`` in the dtype of ``H``, ``g_alpha`` in the dtype of ``alpha``."""
    ct = compute_dtype_of(H, alpha, g_mix)
    H_c, alpha_c, g_c = (a.astype(ct, copy=False) for a in (H, alpha, g_mix))
    g_H = alpha_c @ g_c
    g_alpha = H_c @ np.swapaxes(g_c, -1, -2)
    return g_H.astype(H.dtype, copy=False), g_alpha.astype(alpha.dtype, copy=False)
