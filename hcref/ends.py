"""The two ends of a hyper/frac network (decision D11).

HC (math.md 2.2; HC paper section 2.1, Alg. 1): ``expand`` replicates the embedding into
n streams, ``reduce`` sums the streams before the model's final norm.
FC (math.md 3.1; FC paper Alg. 1): ``frac_split`` / ``frac_merge`` are contiguous reshapes
(fraction i is ``x[i*e:(i+1)*e]``); FC has no sum.

The sums (``reduce``, ``expand_vjp``) accumulate in at least float32 and are rounded once to the
input's dtype (decision D12); the rest are exact copies and reshapes.
"""

from __future__ import annotations

import numpy as np

from . import validation as v
from ._arrays import Array, meta
from ._dtypes import compute_dtype, promoted


def expand(x: Array, n: int) -> Array:
    """``H[..., i, :] = x`` for every stream i: ``H^0 = 1_{n x 1} h^T``.

    Shapes: x (..., d) -> H (..., n, d).
    """
    v.check_expand(meta("x", x), n)
    return np.repeat(x[..., None, :], n, axis=-2)


def expand_vjp(x: Array, n: int, g_H: Array) -> tuple[Array]:
    """``g_x = sum_i g_H[..., i, :]``. Shapes: g_H (..., n, d) -> (g_x (..., d),)."""
    v.check_expand(meta("x", x), n)
    v.check_cotangent("g_H", meta("g_H", g_H), x.shape[:-1] + (n, x.shape[-1]))
    return (g_H.sum(axis=-2, dtype=compute_dtype(promoted(x, g_H))).astype(x.dtype, copy=False),)


def reduce(H: Array) -> Array:
    """``x = sum_i H[..., i, :]`` (sum pooling of the streams).

    Shapes: H (..., n, d) -> x (..., d).
    """
    v.check_reduce(meta("H", H))
    return H.sum(axis=-2, dtype=compute_dtype(H.dtype)).astype(H.dtype, copy=False)


def reduce_vjp(H: Array, g_x: Array) -> tuple[Array]:
    """``g_H[..., i, :] = g_x`` for every stream i. Shapes: g_x (..., d) -> (g_H (..., n, d),)."""
    v.check_reduce(meta("H", H))
    v.check_cotangent("g_x", meta("g_x", g_x), H.shape[:-2] + H.shape[-1:])
    return (np.broadcast_to(g_x[..., None, :], H.shape).astype(H.dtype, copy=True),)


def frac_split(x: Array, m: int) -> Array:
    """``H[..., i, :] = x[..., i*e:(i+1)*e]`` with ``e = d/m`` (FC paper Alg. 1, line 1).

    Shapes: x (..., d) -> H (..., m, e).
    """
    v.check_frac_split(meta("x", x), m)
    return x.reshape(x.shape[:-1] + (m, x.shape[-1] // m))


def frac_split_vjp(x: Array, m: int, g_H: Array) -> tuple[Array]:
    """The inverse reshape. Shapes: g_H (..., m, e) -> (g_x (..., d),)."""
    v.check_frac_split(meta("x", x), m)
    v.check_cotangent("g_H", meta("g_H", g_H), x.shape[:-1] + (m, x.shape[-1] // m))
    return (g_H.reshape(x.shape).astype(x.dtype, copy=False),)


def frac_merge(H: Array) -> Array:
    """Concatenate the fractions: ``x[..., i*e + c] = H[..., i, c]`` (inverse of ``frac_split``).

    Shapes: H (..., m, e) -> x (..., d = m*e).
    """
    v.check_frac_merge(meta("H", H))
    return H.reshape(H.shape[:-2] + (H.shape[-2] * H.shape[-1],))


def frac_merge_vjp(H: Array, g_x: Array) -> tuple[Array]:
    """The inverse reshape. Shapes: g_x (..., d) -> (g_H (..., m, e),)."""
    v.check_frac_merge(meta("H", H))
    v.check_cotangent("g_x", meta("g_x", g_x), H.shape[:-2] + (H.shape[-2] * H.shape[-1],))
    return (g_x.reshape(H.shape).astype(H.dtype, copy=False),)
