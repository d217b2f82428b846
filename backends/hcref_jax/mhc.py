"""The mHC ops of the hcref contract as pure functions on jax arrays: ``sinkhorn``, ``mhc_coeffs``,
``mhc_pre``, ``mhc_post``, ``mhc_head`` (mHC paper, arXiv 2512.24880, Eqs. 3, 7-9; decisions D7-D10,
D12). They jit, vmap and differentiate (``jax.grad`` / ``jax.vjp``, also under ``jit`` and ``vmap``).

Every function has the name, arguments, defaults, shapes and errors of the reference function
of the same name in :mod:`hcref` (the specification; its docstrings give the formulas). Inputs
are checked with :mod:`hcref.validation` on shapes and dtypes only, which are static under
``jax.jit`` / ``jax.vmap``: the checks run once, at trace time, and raise word for word the
reference's errors. ``iters`` and ``eps`` are Python values: mark them static when jitting,
``jax.jit(mhc_coeffs, static_argnames=("iters", "eps"))``.

Precision (decision D12). Every op computes in the promoted dtype of its inputs raised to at
least float32 (bfloat16/float16 inputs: the RMS scaling, the projection, the sigmoids and
Sinkhorn all run in float32) and rounds its results once: ``sinkhorn`` to Z's dtype, the
coefficients of ``mhc_coeffs`` to the promoted dtype of H and the parameters (float32
coefficients for float32 parameters on a bfloat16 state), ``mhc_pre`` and ``mhc_head`` to H's
dtype, ``mhc_post`` to ``promote(y, H)``. Contractions run at ``Precision.HIGHEST``.

RMS scaling of the flattened state, folded after the projection (mHC paper Eqs. 14-15 reorder
it so), scale-safe as the backend's norms (D12, :mod:`hcref_jax.ops`): with ``v = vec(H)`` (n*d)
and the power-of-two row scale ``s = 2^floor(log2(max(max|v|, 1)))`` (exponent bits, capped at
2^126 / 2^1022 so that ``1/s`` is a normal number), ``v' = v / s`` (exact),
``r' = (mean(v'^2) + 1e-6/s/s)^(-1/2)`` and ``z = (r'/s) (v phi)`` while ``v phi`` cannot
overflow (``2 max(s) max_k sum_i |phi[i, k]|`` below a quarter of the dtype's largest number),
else ``z = r' (v' phi)``; equal to the reference's ``rms(v) phi`` in real arithmetic, bit for bit
between the two forms, and finite, forward and VJP, for any finite H whose exact result is
finite (inputs of 1e-30 to 3e38 in float32). The VJP is the hand-written one of the rmsnorm
projection (``hcref_jax.ops._rms_proj``).

Pallas kernels (issue 15). Each op asks :func:`hcref_jax.ops.pallas_op` after validating its inputs:
an op that :mod:`hcref_jax.pallas` lists in ``OPS`` and provides in ``Forced`` runs on its kernel on
a TPU (or with ``set_mode("pallas")``) for the inputs ``hcref_jax.pallas.supported`` takes, the XLA
path below otherwise (and always, while the kernel package has no mHC kernels), exactly as for HC/FC.

Sinkhorn (decision D7): the log-domain iteration with potentials of :mod:`hcref.sinkhorn_knopp`
for ``eps = 0`` (finite wherever the math is), DeepSeek-V4's recipe for ``eps > 0``; both are
``jax.custom_vjp`` functions with the reference's unrolled backward (math.md 5.6), the
iterations a ``lax.scan`` each way. Residuals kept for the backward, per token of n x n logits
and K = iters: ``eps = 0``: Z and the 2K potentials ``r_1..r_K, c_1..c_K`` (n-vectors; every
iterate is recomputed from them), ``eps > 0``: Z, the output P and the 2K - 1 divisors, never the
2K n x n iterates (n = 4, K = 20: 176 / 188 numbers instead of 640). Forward mode
(``jax.jvp``) is not available for Sinkhorn (a ``custom_vjp``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from hcref import validation as v
from hcref.mhc import RMS_EPS
from hcref.sinkhorn_knopp import ITERS

from .ops import _rms_proj, compute_dtype, meta, pallas_op, promote

Array = jax.Array

_HIGHEST = lax.Precision.HIGHEST


def _param_metas(params: Any) -> dict[str, v.ArrayMeta]:
    if not isinstance(params, Mapping):
        return {}
    return {key: meta(f"params[{key!r}]", value) for key, value in params.items()}


def _arrays(params: Mapping[str, Any]) -> dict[str, Array]:
    return {key: jnp.asarray(value) for key, value in params.items()}


# --- Sinkhorn -------------------------------------------------------------------------------------


def _logsumexp(X: Array, axis: int) -> Array:
    """``log(sum(exp(X), axis))`` with the axis removed, shifted by the max (never 0/0)."""
    m = jnp.max(X, axis=axis, keepdims=True)
    return jnp.squeeze(m + jnp.log(jnp.sum(jnp.exp(X - m), axis=axis, keepdims=True)), axis=axis)


def _scaled(Z: Array, r: Array, c: Array) -> Array:
    """``exp(Z[i, j] - r[i] - c[j])``: an iterate from its row and column potentials."""
    return jnp.exp((Z - r[..., :, None]) - c[..., None, :])


# The scan bodies are module-level functions (Z travels in the carry, not in a closure), so that
# eager calls hit jax's trace cache instead of compiling the loop anew on every call.


def _log_step(carry: tuple[Array, Array], _: Any) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    Z, r = carry
    c = _logsumexp(Z - r[..., :, None], axis=-2)
    r = _logsumexp(Z - c[..., None, :], axis=-1)
    return (Z, r), (r, c)


def _log_back_step(
    carry: tuple[Array, Array], rc: tuple[Array, Array, Array]
) -> tuple[tuple[Array, Array], None]:
    Z, g = carry
    r, c, r_prev = rc
    g = g - _scaled(Z, r, c) * jnp.sum(g, axis=-1, keepdims=True)
    return (Z, g - _scaled(Z, r_prev, c) * jnp.sum(g, axis=-2, keepdims=True)), None


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _sinkhorn_log(Z: Array, iters: int) -> Array:
    """The paper's Sinkhorn in the log domain (``hcref.sinkhorn_knopp``, eps = 0)."""
    return _sinkhorn_log_fwd(Z, iters)[0]


def _sinkhorn_log_fwd(Z: Array, iters: int) -> tuple[Array, tuple[Array, Array, Array]]:
    # zeros_like(Z[..., 0]): the carry keeps Z's varying axes inside shard_map
    _, (R, C) = lax.scan(_log_step, (Z, jnp.zeros_like(Z[..., 0])), None, length=iters)
    P = _scaled(Z, R[-1], C[-1])
    return P / jnp.sum(P, axis=-1, keepdims=True), (Z, R, C)


def _sinkhorn_log_bwd(iters: int, res: tuple[Array, Array, Array], g_P: Array) -> tuple[Array]:
    # g_L = g_P * M_K; per step t = K..1: g -= M_t rowsum(g), g -= Q_t colsum(g) with
    # M_t = exp(Z - r_t - c_t), Q_t = exp(Z - r_{t-1} - c_t), r_0 = 0 (math.md 5.6, log form).
    Z, R, C = res
    R_prev = jnp.concatenate([jnp.zeros_like(R[:1]), R[:-1]])
    (_, g), _ = lax.scan(_log_back_step, (Z, g_P * _scaled(Z, R[-1], C[-1])), (R, C, R_prev), reverse=True)
    return (g,)


_sinkhorn_log.defvjp(_sinkhorn_log_fwd, _sinkhorn_log_bwd)


def _softmax_out(Z: Array) -> Array:
    """Softmax over the output axis (-2): every column sums to 1."""
    E = jnp.exp(Z - jnp.max(Z, axis=-2, keepdims=True))
    return E / jnp.sum(E, axis=-2, keepdims=True)


def _v4_step(carry: tuple[Array, Array], _: Any) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    P, eps = carry
    c = jnp.sum(P, axis=-2, keepdims=True) + eps
    P = P / c
    r = jnp.sum(P, axis=-1, keepdims=True) + eps
    return (P / r, eps), (c, r)


def _v4_back_step(carry: tuple[Array, Array], rc: tuple[Array, Array]) -> tuple[tuple[Array, Array], None]:
    g, P = carry
    r, c = rc
    Q = P * r
    g = (g - jnp.sum(g * P, axis=-1, keepdims=True)) / r
    g = (g - jnp.sum(g * Q, axis=-2, keepdims=True)) / c
    return (g, Q * c), None


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _sinkhorn_v4(Z: Array, iters: int, eps: float) -> Array:
    """DeepSeek-V4's recipe (``hcref.sinkhorn_knopp``, eps > 0)."""
    return _sinkhorn_v4_fwd(Z, iters, eps)[0]


def _sinkhorn_v4_fwd(Z: Array, iters: int, eps: float) -> tuple[Array, tuple[Array, ...]]:
    P = _softmax_out(Z) + eps
    r1 = jnp.sum(P, axis=-1, keepdims=True) + eps
    P = P / r1
    (P, _), (C, R) = lax.scan(_v4_step, (P, jnp.asarray(eps, Z.dtype)), None, length=iters - 1)
    return P, (Z, P, r1, R, C)


def _sinkhorn_v4_bwd(iters: int, eps: float, res: tuple[Array, ...], g_P: Array) -> tuple[Array]:
    # P = Q / r has VJP g_Q = (g - rowsum(g P)) / r (columns alike); the iterates are rebuilt
    # backwards as Q = P r, P = Q c; the softmax over out gives g_Z = S (g - colsum(g S)).
    Z, P, r1, R, C = res
    (g, P), _ = lax.scan(_v4_back_step, (g_P, P), (R, C), reverse=True)
    g = (g - jnp.sum(g * P, axis=-1, keepdims=True)) / r1
    S = _softmax_out(Z)
    return (S * (g - jnp.sum(g * S, axis=-2, keepdims=True)),)


_sinkhorn_v4.defvjp(_sinkhorn_v4_fwd, _sinkhorn_v4_bwd)


def _project(Z: Array, iters: int, eps: float) -> Array:
    """Sinkhorn without validation, in Z's (compute) dtype."""
    return _sinkhorn_log(Z, iters) if eps == 0 else _sinkhorn_v4(Z, iters, eps)


def sinkhorn(Z: Array, *, iters: int = ITERS, eps: float = 0.0) -> Array:
    """See :func:`hcref.sinkhorn` (mHC paper Eq. 9; decision D7): ``iters`` x (columns, then rows)
    from ``exp(Z)``, in the log domain (``eps = 0``) or DeepSeek-V4's recipe (``eps > 0``).

    Shapes: Z (..., n, n) -> P (..., n, n) in ``h_res[out, in]`` orientation. Dtype: Z's (half
    dtypes computed in float32). Raises ValueError for a non-square Z, ``iters < 1``, ``eps < 0``;
    TypeError for a non-floating Z, a non-int ``iters`` or a non-real ``eps``.
    """
    v.check_sinkhorn(meta("Z", Z), iters, eps)
    kernel = pallas_op("sinkhorn", Z)
    if kernel is not None:
        return kernel(Z, iters=iters, eps=eps)  # type: ignore[no-any-return]
    Z = jnp.asarray(Z)
    return _project(Z.astype(compute_dtype(Z.dtype)), iters, float(eps)).astype(Z.dtype)


# --- coefficients -------------------------------------------------------------------------------


def _rms_project(H: Array, phi: Array) -> Array:
    """``z = rms(vec(H)) phi`` folded after the projection, scale-safe (module docstring): the
    rmsnorm projection of :mod:`hcref_jax.ops` with mHC's epsilon (1e-6, D9) and its hand-written VJP.

    Shapes: H (..., n, d), phi (n*d, k) -> z (..., k), in the dtype of H and phi (one dtype).
    """
    vec = H.reshape(*H.shape[:-2], H.shape[-2] * H.shape[-1])
    return _rms_proj(vec, phi, RMS_EPS)


def mhc_coeffs(
    H: Array, params: Mapping[str, Array], *, iters: int = ITERS, eps: float = 0.0
) -> tuple[Array, Array, Array]:
    """See :func:`hcref.mhc_coeffs` (mHC paper Eqs. 7-9; decision D9). With ``v = vec(H)``::

        z      = v (mean(v^2) + 1e-6)^(-1/2) phi              folded: ((v phi) / s) r'
        h_pre  = sigmoid(gates[0] z_pre  + b_pre) + eps
        h_post = 2 sigmoid(gates[1] z_post + b_post)
        h_res  = sinkhorn(gates[2] mat(z_res) + mat(b_res), iters=iters, eps=eps)

    Static (params exactly ``b``): the logits are ``b``; the coefficients are computed once and
    broadcast over the tokens.

    Shapes: H (..., n, d); phi (n*d, 2n+n^2), b (2n+n^2), gates (3) -> h_pre (..., n),
    h_post (..., n), h_res (..., n, n). Dtype: promoted dtype of H and params (computed in at
    least float32). Raises the reference's ValueError/TypeError for bad keys, shapes, options.
    """
    n, _, dynamic = v.check_mhc_coeffs(meta("H", H), params, _param_metas(params), iters, eps)
    kernel = pallas_op("mhc_coeffs", H, params)
    if kernel is not None:
        return kernel(H, params, iters=iters, eps=eps)  # type: ignore[no-any-return]
    H, p = jnp.asarray(H), _arrays(params)
    out = promote(H, *p.values())
    ct = compute_dtype(out)
    lead = H.shape[:-2]
    b = p["b"].astype(ct)
    if dynamic:
        z = _rms_project(H.astype(ct), p["phi"].astype(ct))
        gates = p["gates"].astype(ct)
        pre = z[..., :n] * gates[0] + b[:n]
        post = z[..., n:2 * n] * gates[1] + b[n:2 * n]
        res = z[..., 2 * n:] * gates[2] + b[2 * n:]
    else:
        pre, post, res = b[:n], b[n:2 * n], b[2 * n:]
    h_pre = jax.nn.sigmoid(pre) + eps
    h_post = 2 * jax.nn.sigmoid(post)
    h_res = _project(res.reshape(*res.shape[:-1], n, n), iters, float(eps))
    if not dynamic:
        h_pre, h_post = jnp.broadcast_to(h_pre, (*lead, n)), jnp.broadcast_to(h_post, (*lead, n))
        h_res = jnp.broadcast_to(h_res, (*lead, n, n))
    return h_pre.astype(out), h_post.astype(out), h_res.astype(out)


# --- apply steps --------------------------------------------------------------------------------


def mhc_pre(H: Array, h_pre: Array) -> Array:
    """See :func:`hcref.mhc_pre` (mHC paper Eq. 3, ``H_pre x_l``): ``h0 = sum_i h_pre[i] H[i]``.

    Shapes: H (..., n, d), h_pre (..., n) -> h0 (..., d). Dtype: H's (computed in the promoted
    dtype, at least float32, rounded once).
    """
    v.check_mhc_pre(meta("H", H), meta("h_pre", h_pre))
    kernel = pallas_op("mhc_pre", H, h_pre)
    if kernel is not None:
        return kernel(H, h_pre)  # type: ignore[no-any-return]
    H, h_pre = jnp.asarray(H), jnp.asarray(h_pre)
    ct = compute_dtype(promote(H, h_pre))
    h0 = jnp.einsum("...i,...ic->...c", h_pre.astype(ct), H.astype(ct), precision=_HIGHEST)
    return h0.astype(H.dtype)


def mhc_post(y: Array, H: Array, h_post: Array, h_res: Array) -> Array:
    """See :func:`hcref.mhc_post` (mHC paper Eq. 3): ``H_out = h_res H + h_post y^T``, i.e.
    ``H_out[i] = sum_j h_res[i, j] H[j] + h_post[i] y``.

    Shapes: y (..., d), H (..., n, d), h_post (..., n), h_res (..., n, n) -> H_out (..., n, d).
    Dtype: ``promote(y, H)`` (computed in the promoted dtype of all four, at least float32).
    """
    v.check_mhc_post(meta("y", y), meta("H", H), meta("h_post", h_post), meta("h_res", h_res))
    kernel = pallas_op("mhc_post", y, H, h_post, h_res)
    if kernel is not None:
        return kernel(y, H, h_post, h_res)  # type: ignore[no-any-return]
    y, H, h_post, h_res = (jnp.asarray(a) for a in (y, H, h_post, h_res))
    ct = compute_dtype(promote(y, H, h_post, h_res))
    mixed = jnp.einsum("...ij,...jc->...ic", h_res.astype(ct), H.astype(ct), precision=_HIGHEST)
    H_out = mixed + h_post.astype(ct)[..., :, None] * y.astype(ct)[..., None, :]
    return H_out.astype(promote(y, H))


def mhc_head(H: Array, params: Mapping[str, Array], *, eps: float = 0.0) -> Array:
    """See :func:`hcref.mhc_head` (DeepSeek-V4's learned reduce; contract row ``mhc_head``)::

        z = v (mean(v^2) + 1e-6)^(-1/2) phi         v = vec(H), folded as in mhc_coeffs
        w = sigmoid(gate * z + b) + eps             (n), in the promoted dtype
        x = sum_i w_i H[i]

    Shapes: H (..., n, d); phi (n*d, n), b (n), gate () -> x (..., d). Dtype: H's.
    """
    v.check_mhc_head(meta("H", H), params, _param_metas(params), eps)
    kernel = pallas_op("mhc_head", H, params)
    if kernel is not None:
        return kernel(H, params, eps=eps)  # type: ignore[no-any-return]
    H, p = jnp.asarray(H), _arrays(params)
    ct = compute_dtype(promote(H, *p.values()))
    Hc = H.astype(ct)
    z = _rms_project(Hc, p["phi"].astype(ct))
    w = jax.nn.sigmoid(z * p["gate"].astype(ct) + p["b"].astype(ct)) + eps
    return jnp.einsum("...i,...ic->...c", w, Hc, precision=_HIGHEST).astype(H.dtype)


__all__ = ["mhc_coeffs", "mhc_head", "mhc_post", "mhc_pre", "sinkhorn"]
