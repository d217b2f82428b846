"""Sinkhorn-Knopp inside a kernel, forward and unrolled backward, on the values of a token block
(mHC paper Eq. 9; math.md 4.3, 4.5, 5.6; decision D7). The same functions as
:mod:`hcref.sinkhorn_knopp`, operation for operation.

Layout: the n x n logits of the ``tn`` tokens of a block are held as the list of their n rows,
``Z[i]`` a ``(tn, n)`` float32 value (tokens along sublanes, the input stream j along lanes), so a
row step (over j) is a lane reduction of one value and a column step (over i) an elementwise
combination of the n values. Potentials and divisors are ``(tn, n)`` values too: the row
potentials ``r`` with stream i in lane i (``column(r, i)`` broadcasts it over the row's lanes),
the column potentials ``c`` with j in lane j. Iterations are ``lax.fori_loop``s (``scf.for`` on
a TPU), their state the potentials only; the backward stores the ``2 iters`` potentials of a
recomputed forward in VMEM scratch of shape ``(iters (+1), tn, n)`` (indexed on the leading,
untiled axis) and rebuilds every iterate from them, as the reference does.

Paper (``eps = 0``), in the log domain, ``r_0 = 0``::

    c_t[j] = logsumexp_i (Z[i, j] - r_{t-1}[i]);   r_t[i] = logsumexp_j (Z[i, j] - c_t[j])
    P      = exp(Z - r_iters - c_iters), each row divided by its sum
    backward: g = g_P * exp(Z - r_K - c_K); for t = K..1:
              g -= exp(Z - r_t - c_t) rowsum(g);  g -= exp(Z - r_{t-1} - c_t) colsum(g)

DeepSeek-V4 (``eps > 0``)::

    P = softmax_over_i(Z) + eps;  P /= rowsum(P) + eps
    (iters - 1) x [P /= colsum(P) + eps;  P /= rowsum(P) + eps]
    backward from the stored divisors, the iterates rebuilt by multiplying the divisions out.

Lane use on a TPU: n of 128 lanes per vreg (the epilogue costs O(iters n^2) per token against
the projection's O(n d (2n + n^2)) on the MXU; a token-along-lanes layout would use the lanes
fully but needs in-kernel transposes; unmeasured).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ._common import column


def _i32(value: int) -> Any:
    """A loop bound as an int32 array: with ``jax_enable_x64`` a Python int makes ``fori_loop``'s
    index int64, which Mosaic rejects when it meets the int32 scratch indexing (``arith.addi`` on
    i32 and i64)."""
    return jnp.int32(value)

Array = jax.Array
Rows = list[Array]


def _lse_lanes(X: Array) -> Array:
    """``logsumexp`` over the lanes of ``X`` (tn, n) -> (tn, 1), shifted by the max (never 0/0)."""
    m = jnp.max(X, axis=-1, keepdims=True)
    return m + jnp.log(jnp.sum(jnp.exp(X - m), axis=-1, keepdims=True))


def _lse_list(Xs: Rows) -> Array:
    """``logsumexp`` over the list (the matrix rows), elementwise -> (tn, n)."""
    m = Xs[0]
    for X in Xs[1:]:
        m = jnp.maximum(m, X)
    total = jnp.exp(Xs[0] - m)
    for X in Xs[1:]:
        total = total + jnp.exp(X - m)
    return m + jnp.log(total)


def _sum_list(Xs: Rows) -> Array:
    total = Xs[0]
    for X in Xs[1:]:
        total = total + X
    return total


def _lane_vector(parts: Rows) -> Array:
    """``(tn, n)`` with lane i = ``parts[i]`` (each ``(tn, 1)``): selects, no lane concatenation."""
    lane = jax.lax.broadcasted_iota(jnp.int32, (parts[0].shape[0], len(parts)), 1)
    out = jnp.broadcast_to(parts[0], (parts[0].shape[0], len(parts)))
    for i, part in enumerate(parts[1:], start=1):
        out = jnp.where(lane == i, part, out)
    return out


def _scaled(Z: Rows, r: Array, c: Array) -> Rows:
    """The iterate ``exp(Z[i, j] - r[i] - c[j])`` as rows."""
    return [jnp.exp((Z_i - column(r, i)) - c) for i, Z_i in enumerate(Z)]


def _log_step(Z: Rows, r: Array) -> tuple[Array, Array]:
    """One iteration (columns, then rows) on the potentials: ``r_{t-1} -> (r_t, c_t)``."""
    c = _lse_list([Z_i - column(r, i) for i, Z_i in enumerate(Z)])
    return _lane_vector([_lse_lanes(Z_i - c) for Z_i in Z]), c


def _softmax_over_rows(Z: Rows) -> Rows:
    """Softmax over the output axis i (each column j sums to 1)."""
    m = Z[0]
    for Z_i in Z[1:]:
        m = jnp.maximum(m, Z_i)
    E = [jnp.exp(Z_i - m) for Z_i in Z]
    total = _sum_list(E)
    return [E_i / total for E_i in E]


def _row_divisors(P: Rows, eps: float) -> Array:
    return _lane_vector([jnp.sum(P_i, axis=-1, keepdims=True) + eps for P_i in P])


def _divide_rows(P: Rows, r: Array) -> Rows:
    return [P_i / column(r, i) for i, P_i in enumerate(P)]


def _v4_step(P: Rows, eps: float) -> tuple[Rows, Array, Array]:
    c = _sum_list(P) + eps
    P = [P_i / c for P_i in P]
    r = _row_divisors(P, eps)
    return _divide_rows(P, r), c, r


def forward(Z: Rows, iters: int, eps: float) -> Rows:
    """``sinkhorn(Z, iters=iters, eps=eps)`` of :mod:`hcref.sinkhorn_knopp`, rows in, rows out."""
    if eps == 0:
        zero = jnp.zeros_like(Z[0])

        def body(_: Any, rc: tuple[Array, Array]) -> tuple[Array, Array]:
            return _log_step(Z, rc[0])

        r, c = jax.lax.fori_loop(jnp.int32(0), _i32(iters), body, (zero, zero))
        P = _scaled(Z, r, c)
        return [P_i / jnp.sum(P_i, axis=-1, keepdims=True) for P_i in P]
    P = [S_i + eps for S_i in _softmax_over_rows(Z)]
    P = _divide_rows(P, _row_divisors(P, eps))

    def v4_body(_: Any, rows: tuple[Array, ...]) -> tuple[Array, ...]:
        return tuple(_v4_step(list(rows), eps)[0])

    return list(jax.lax.fori_loop(jnp.int32(0), _i32(iters - 1), v4_body, tuple(P)))


def backward(Z: Rows, g_P: Rows, iters: int, eps: float, r_ref: Any, c_ref: Any) -> Rows:
    """The unrolled VJP of :func:`forward` (``hcref.sinkhorn_knopp.sinkhorn_vjp``): ``g_Z`` as rows.

    ``r_ref`` (iters + 1, tn, n) and ``c_ref`` (iters, tn, n): VMEM scratch for the potentials
    (``eps = 0``) or the divisors (``eps > 0``) of the recomputed forward."""
    if eps == 0:
        zero = jnp.zeros_like(Z[0])
        r_ref[0] = zero

        def store(t: Any, r: Array) -> Array:
            r, c = _log_step(Z, r)
            r_ref[t + 1] = r
            c_ref[t] = c
            return r

        jax.lax.fori_loop(jnp.int32(0), _i32(iters), store, zero)
        g = [g_i * M_i for g_i, M_i in zip(g_P, _scaled(Z, r_ref[iters], c_ref[iters - 1]))]

        def back(k: Any, g: tuple[Array, ...]) -> tuple[Array, ...]:
            t = iters - k
            c_t = c_ref[t - 1]
            M = _scaled(Z, r_ref[t], c_t)
            rows = [g_i - M_i * jnp.sum(g_i, axis=-1, keepdims=True) for g_i, M_i in zip(g, M)]
            Q = _scaled(Z, r_ref[t - 1], c_t)
            col = _sum_list(rows)
            return tuple(g_i - Q_i * col for g_i, Q_i in zip(rows, Q))

        return list(jax.lax.fori_loop(jnp.int32(0), _i32(iters), back, tuple(g)))

    P = [S_i + eps for S_i in _softmax_over_rows(Z)]
    r = _row_divisors(P, eps)
    r_ref[0] = r
    P = _divide_rows(P, r)

    def v4_store(t: Any, rows: tuple[Array, ...]) -> tuple[Array, ...]:
        P, c, r = _v4_step(list(rows), eps)
        c_ref[t + 1] = c
        r_ref[t + 1] = r
        return tuple(P)

    P = list(jax.lax.fori_loop(jnp.int32(0), _i32(iters - 1), v4_store, tuple(P)))

    def row_back(P: Rows, g: Rows, r: Array) -> tuple[Rows, Rows]:
        Q = [P_i * column(r, i) for i, P_i in enumerate(P)]
        g = [(g_i - jnp.sum(g_i * P_i, axis=-1, keepdims=True)) / column(r, i) for i, (g_i, P_i) in
             enumerate(zip(g, P))]
        return Q, g

    def v4_back(k: Any, carry: tuple[tuple[Array, ...], tuple[Array, ...]]) -> tuple[tuple[Array, ...], ...]:
        t = iters - 1 - k
        Q, g = row_back(list(carry[0]), list(carry[1]), r_ref[t])
        c = c_ref[t]
        col = _sum_list([g_i * Q_i for g_i, Q_i in zip(g, Q)])
        return tuple(Q_i * c for Q_i in Q), tuple((g_i - col) / c for g_i in g)

    P_t, g_t = jax.lax.fori_loop(jnp.int32(0), _i32(iters - 1), v4_back, (tuple(P), tuple(g_P)))
    _, g = row_back(list(P_t), list(g_t), r_ref[0])
    S = _softmax_over_rows(Z)
    col = _sum_list([g_i * S_i for g_i, S_i in zip(g, S)])
    return [S_i * (g_i - col) for g_i, S_i in zip(g, S)]
