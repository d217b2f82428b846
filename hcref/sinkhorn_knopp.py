"""Sinkhorn-Knopp projection of mHC's residual logits onto (nearly) doubly stochastic
matrices (mHC paper, arXiv 2512.24880, Eq. 9 and section 4.2; math.md 4.3, 4.5, 5.6;
decision D7).

Orientation: ``Z`` and the result are ``h_res[out, in]`` (rows = output streams), the mHC
paper's, so a row-stochastic result makes every output stream a convex combination of the
input streams.

Paper (``eps = 0``)::

    M_0 = exp(Z);   M_t = T_r(T_c(M_{t-1})), t = 1..iters;   P = M_iters

with ``T_c`` dividing every column by its sum and ``T_r`` every row by its sum (columns
first, rows last, so the rows of ``P`` sum to 1). The reference computes it in the log
domain with potentials (the classic scaling vectors in logs), ``r_0 = 0`` and::

    c_t[j] = logsumexp_i (Z[i, j] - r_{t-1}[i])          column step
    r_t[i] = logsumexp_j (Z[i, j] - c_t[j])              row step
    P      = exp(Z - r_iters - c_iters)                  then each row divided by its sum

which is the same function (``T_c(M_{t-1}) = exp(Z - r_{t-1} - c_t)`` and
``M_t = exp(Z - r_t - c_t)`` exactly in real arithmetic), with two advantages: a max-shifted
logsumexp never divides 0 by 0, so a row or a column of logits 1e4 below the others gives
the exact finite answer (a plain ``exp`` underflows that row to 0 and the first ``T_r``
computes 0/0; decision D7), and the state of iteration t is two n-vectors rather than an
n x n matrix. The closing division by the row sums changes the result only by rounding (the
rows of ``exp(Z - r - c)`` already sum to 1) and makes them sum to 1 to a few ulps.

DeepSeek-V4 (``eps > 0``), exactly as its inference code does it (decision D7, in this
orientation)::

    P = softmax(Z, over out = axis -2) + eps             (every entry)
    P = P / (rowsum(P) + eps)
    repeat iters - 1 times:  P = P / (colsum(P) + eps);  P = P / (rowsum(P) + eps)

The gradient is unrolled through every iteration (math.md 5.6), never the implicit
gradient of the converged projection (a different function's gradient).
"""

from __future__ import annotations

import numpy as np

from . import validation as v
from ._arrays import Array, meta
from ._dtypes import compute_dtype

ITERS = 20
"""Default number of Sinkhorn iterations ``t_max`` (mHC paper section 4.2 and Table 5; V4)."""


def _logsumexp(X: Array, axis: int) -> Array:
    """``log(sum(exp(X), axis))`` with the axis removed, shifted by the max (never 0/0)."""
    m = np.max(X, axis=axis, keepdims=True)
    return np.squeeze(m + np.log(np.sum(np.exp(X - m), axis=axis, keepdims=True)), axis=axis)


def _scaled(Z: Array, r: Array, c: Array) -> Array:
    """``exp(Z[i, j] - r[i] - c[j])``, the iterate given its row and column potentials."""
    return np.exp((Z - r[..., :, None]) - c[..., None, :])


def _potentials(Z: Array, iters: int) -> tuple[list[Array], list[Array]]:
    """``([r_0, ..., r_iters], [c_1, ..., c_iters])``: every potential of the log-domain iteration
    (module docstring), ``r_0 = 0``; 2 * iters n-vectors per token."""
    rs = [np.zeros(Z.shape[:-1], Z.dtype)]
    cs: list[Array] = []
    for _ in range(iters):
        cs.append(_logsumexp(Z - rs[-1][..., :, None], axis=-2))
        rs.append(_logsumexp(Z - cs[-1][..., None, :], axis=-1))
    return rs, cs


def _paper(Z: Array, iters: int) -> Array:
    rs, cs = _potentials(Z, iters)
    P = _scaled(Z, rs[-1], cs[-1])
    return P / P.sum(axis=-1, keepdims=True)


def _paper_vjp(Z: Array, g_P: Array, iters: int) -> Array:
    """Unrolled VJP of the log-domain iteration (math.md 5.6, log form).

    With ``L_t = log M_t`` and ``A_t = log T_c(M_{t-1})``, each step subtracts a logsumexp,
    whose VJP is ``g - softmax * sum(g)`` along its axis; the softmaxes are ``M_t`` (rows) and
    ``Q_t = T_c(M_{t-1})`` (columns)::

        g_L = g_P * P
        for t = iters..1:   g_A = g_L - M_t * rowsum(g_L);   g_L = g_A - Q_t * colsum(g_A)
        g_Z = g_L

    ``M_t = exp(Z - r_t - c_t)`` and ``Q_t = exp(Z - r_{t-1} - c_t)`` are recomputed from the
    stored potentials (2 * iters n-vectors per token, never 2 * iters matrices). The closing
    row division of the forward is the identity on a row-stochastic matrix, and its VJP
    composed with that of the last row step is the latter's: it adds nothing here.
    """
    rs, cs = _potentials(Z, iters)
    g = g_P * _scaled(Z, rs[-1], cs[-1])
    for t in range(iters, 0, -1):
        g = g - _scaled(Z, rs[t], cs[t - 1]) * g.sum(axis=-1, keepdims=True)
        g = g - _scaled(Z, rs[t - 1], cs[t - 1]) * g.sum(axis=-2, keepdims=True)
    return g


def _softmax_out(Z: Array) -> Array:
    """Softmax over the output axis (-2): every column of ``Z`` sums to 1."""
    E = np.exp(Z - np.max(Z, axis=-2, keepdims=True))
    return E / E.sum(axis=-2, keepdims=True)


def _v4(Z: Array, iters: int, eps: float) -> tuple[Array, list[tuple[Array | None, Array]]]:
    """DeepSeek-V4's recipe; returns P and the divisors ``[(c_t or None, r_t), ...]``."""
    P = _softmax_out(Z) + eps
    r = P.sum(axis=-1, keepdims=True) + eps
    P = P / r
    divisors: list[tuple[Array | None, Array]] = [(None, r)]
    for _ in range(iters - 1):
        c = P.sum(axis=-2, keepdims=True) + eps
        P = P / c
        r = P.sum(axis=-1, keepdims=True) + eps
        P = P / r
        divisors.append((c, r))
    return P, divisors


def _v4_vjp(Z: Array, g_P: Array, iters: int, eps: float) -> Array:
    """Unrolled VJP of the V4 recipe (math.md 5.6 with the eps terms and the V4 first step).

    ``P = Q / (rowsum(Q) + eps)`` has VJP ``g_Q = (g - rowsum(g * P)) / r`` (columns alike);
    the ``+ eps`` on every entry has zero gradient; the softmax over out has VJP
    ``g_Z = S * (g_S - colsum(g_S * S))``. Stored: the divisors (2 * iters n-vectors per
    token); the matrices are rebuilt backwards by multiplying each division out again (one
    rounding per step), and ``S`` is recomputed from ``Z``.
    """
    P, divisors = _v4(Z, iters, eps)
    g = g_P
    for c, r in reversed(divisors):
        Q = P * r
        g = (g - np.sum(g * P, axis=-1, keepdims=True)) / r
        if c is not None:
            P = Q * c
            g = (g - np.sum(g * Q, axis=-2, keepdims=True)) / c
    S = _softmax_out(Z)
    return S * (g - np.sum(g * S, axis=-2, keepdims=True))


def project(Z: Array, iters: int, eps: float) -> Array:
    """:func:`sinkhorn` without validation, in ``Z``'s dtype (for the other mHC ops)."""
    return _paper(Z, iters) if eps == 0 else _v4(Z, iters, eps)[0]


def project_vjp(Z: Array, g_P: Array, iters: int, eps: float) -> Array:
    """:func:`sinkhorn_vjp` without validation, in ``Z``'s dtype (for the other mHC ops)."""
    return _paper_vjp(Z, g_P, iters) if eps == 0 else _v4_vjp(Z, g_P, iters, eps)


def sinkhorn(Z: Array, *, iters: int = ITERS, eps: float = 0.0) -> Array:
    """Sinkhorn-Knopp of ``exp(Z)``, columns then rows in every iteration (mHC paper Eq. 9).

    ``eps = 0``: the paper, computed in the log domain (module docstring); the rows of the
    result sum to 1 (to rounding) after any ``iters``, the columns approach 1 as ``iters``
    grows. ``eps > 0``: DeepSeek-V4's recipe with its ``+ eps`` terms (module docstring;
    V4 uses ``eps = 1e-6``). ``Z`` is in ``h_res[out, in]`` orientation (V4 and lucidrains
    store the transpose, ``comb[in, out]``).

    Shapes: Z (..., n, n) -> P (..., n, n). Dtype: Z's (float16 is computed in float32).
    Raises ValueError for a non-square Z, ``iters < 1``, ``eps < 0``; TypeError for a
    non-floating Z, a non-int ``iters`` or a non-real ``eps``.
    """
    v.check_sinkhorn(meta("Z", Z), iters, eps)
    return project(Z.astype(compute_dtype(Z.dtype)), iters, eps).astype(Z.dtype, copy=False)


def sinkhorn_vjp(Z: Array, g_P: Array, *, iters: int = ITERS, eps: float = 0.0) -> tuple[Array]:
    """VJP of :func:`sinkhorn`, unrolled through all ``iters`` iterations (math.md 5.6).

    Paper: the VJP of the log-domain iteration, ``g_A = g_L - M_t rowsum(g_L)``,
    ``g_L = g_A - Q_t colsum(g_A)`` from ``g_L = g_P * P`` (equal to the linear form
    ``g_Q = (g - rowsum(g * P)) / r`` of math.md 5.6). V4: the linear form with ``r + eps``
    and ``c + eps`` and the softmax VJP for its first step. Intermediates are recomputed
    from 2 * iters stored n-vectors per token.

    Shapes: g_P (..., n, n) -> (g_Z (..., n, n),) in Z's dtype.
    """
    v.check_sinkhorn(meta("Z", Z), iters, eps)
    v.check_cotangent("g_P", meta("g_P", g_P), Z.shape)
    dtype = compute_dtype(Z.dtype)
    return (project_vjp(Z.astype(dtype), g_P.astype(dtype), iters, eps).astype(Z.dtype, copy=False),)
