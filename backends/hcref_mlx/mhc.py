"""The mHC ops of the hcref contract on ``mlx.core`` arrays: ``sinkhorn``, ``mhc_coeffs``,
``mhc_pre``, ``mhc_post``, ``mhc_head`` (mHC paper, arXiv 2512.24880, Eqs. 3, 7-9; decisions D7-D10,
D12). Differentiable with ``mx.grad`` / ``mx.vjp``, traceable by ``mx.compile``.

Every function has the name, arguments, defaults, shapes and errors of the reference function
of the same name in :mod:`hcref` (the specification; its docstrings give the formulas). Inputs
are checked with :mod:`hcref.validation`, so error messages are word for word the reference's.

Precision (decision D12). Every op computes in the promoted dtype of its inputs raised to at
least float32 (bfloat16/float16 inputs: the RMS scaling, the projection, the sigmoids and
Sinkhorn all run in float32) and rounds its results once: ``sinkhorn`` to Z's dtype, the
coefficients of ``mhc_coeffs`` to the promoted dtype of H and the parameters (float32
coefficients for float32 parameters on a bfloat16 state), ``mhc_pre`` and ``mhc_head`` to H's
dtype, ``mhc_post`` to ``promote(y, H)``. The RMS scaling of the flattened state is the
reference's, scale-safe as the backend's norms (D12, :mod:`hcref_mlx.ops`):
``v' = v / s``, ``z = (v' (mean(v'^2) + 1e-6/s/s)^(-1/2)) phi`` with ``v = vec(H)`` and the
power-of-two row scale ``s = 2^floor(log2(max(max|v|, 1)))`` read from the exponent bits and
capped at 2^126 (float32) / 2^1022 (float64) so that ``1/s`` is a normal number (flush-to-zero
cannot touch it); ``v'`` lies in [-4, 4), so nothing overflows and results are finite, forward and
VJP, for any finite H (1e-30 to 3e38 in float32). No floor is needed under the root: for ``s = 1``
the sum holds the epsilon, for ``s > 1`` some ``|v'_i| >= 1``.

float64. MLX's CPU ``exp`` (and so ``sigmoid`` and ``logsumexp``) is accurate to only about
1.7e-6 relative in float64 (it is computed at float32 accuracy), which alone puts every mHC op
outside the float64 tolerances (2e-14 forward). Here float64 ``exp`` is therefore computed from
operations that MLX does to float64 accuracy: ``exp(x) = 2^k (1 + t) / (1 - t)`` with
``k = round(x / ln 2)``, ``r = x - k ln 2`` (Cody-Waite, two-part ln 2), ``t = tanh(r / 2)``
(``|t| <= 0.18``, no cancellation) and ``2^k`` built exactly from its exponent bits; the
sigmoid is the stable ``1 / (1 + exp(-x))`` / ``exp(x) / (1 + exp(x))`` pair on it. Both are
``mx.custom_function``s with exact derivatives (``exp``, ``sigmoid(x) sigmoid(-x)``).
float64 runs on the CPU stream (MLX has no float64 on the GPU).

Sinkhorn (decision D7): the log-domain iteration with potentials of :mod:`hcref.sinkhorn_knopp`
for ``eps = 0`` (finite wherever the math is), DeepSeek-V4's recipe for ``eps > 0``; both are
``mx.custom_function``s whose forward also returns what the backward needs, so the custom VJP
reads it from the outputs: ``eps = 0``: the 2K potentials ``r_1..r_K, c_1..c_K`` (n-vectors per
token of n x n logits, K = iters; every iterate recomputed from them and Z); ``eps > 0``: the output
P and the 2K - 1 divisors; never the 2K n x n iterates.

Empty token sets. MLX (0.32) hangs or returns uninitialised memory when a VJP sums a
non-contiguous array over a zero-size axis (a parameter broadcast over no tokens), so every op
whose leading axes hold no element returns its (empty) results as constants: nothing flows back
through them and every input and parameter gets an exact zero gradient, the sum over no tokens
(the workaround of ``hcref_mlx.ops``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, cast

import mlx.core as mx

from hcref import validation as v
from hcref.mhc import RMS_EPS
from hcref.sinkhorn_knopp import ITERS

from .ops import _compute_dtype, _no_tokens, _param_metas, _promote, _row_scale, _stream, meta

Array = mx.array

# --- float64-accurate exp and sigmoid ----------------------------------------------------------------

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # 32 significant bits: k * _LN2_HI is exact for |k| < 2^21
_LN2_LO = 1.90821492927058770002e-10


def _pow2(k: Array) -> Array:
    """``2^k`` exactly for integer-valued float64 ``k`` in [-1022, 1023] (its exponent bits)."""
    return mx.view(mx.left_shift(k.astype(mx.int64) + 1023, mx.array(52, mx.int64)), mx.float64)


def _exp64_value(x: Array) -> Array:
    k = mx.clip(mx.round(x * _LOG2E), -1100, 1100)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    t = mx.tanh(r * 0.5)
    half = mx.floor(k * 0.5)
    return ((1 + t) / (1 - t)) * _pow2(half) * _pow2(k - half)


@mx.custom_function
def _exp64(x: Array) -> Array:
    """float64 ``exp`` to about 2 ulp (module docstring); derivative ``exp``."""
    return _exp64_value(x)


@_exp64.vjp
def _exp64_vjp(x: Array, cotangent: Array, output: Array) -> Array:
    return cotangent * output


def _sigmoid64_value(x: Array) -> Array:
    e = _exp64_value(-mx.abs(x))
    return mx.where(x >= 0, 1 / (1 + e), e / (1 + e))


@mx.custom_function
def _sigmoid64(x: Array) -> Array:
    """float64 sigmoid from :func:`_exp64`, stable for either sign; derivative ``s(x) s(-x)``."""
    return _sigmoid64_value(x)


@_sigmoid64.vjp
def _sigmoid64_vjp(x: Array, cotangent: Array, output: Array) -> Array:
    return cotangent * output * _sigmoid64_value(-x)


def _exp(x: Array) -> Array:
    return cast(Array, _exp64(x)) if x.dtype == mx.float64 else mx.exp(x)


def _sigmoid(x: Array) -> Array:
    return cast(Array, _sigmoid64(x)) if x.dtype == mx.float64 else mx.sigmoid(x)


# --- Sinkhorn -------------------------------------------------------------------------------------


def _logsumexp(X: Array, axis: int) -> Array:
    """``log(sum(exp(X), axis))`` with the axis removed, shifted by the max (never 0/0)."""
    m = mx.max(X, axis=axis, keepdims=True)
    return mx.squeeze(m + mx.log(mx.sum(_exp(X - m), axis=axis, keepdims=True)), axis=axis)


def _scaled(Z: Array, r: Array, c: Array) -> Array:
    """``exp(Z[i, j] - r[i] - c[j])``: an iterate from its row and column potentials."""
    return _exp((Z - mx.expand_dims(r, -1)) - mx.expand_dims(c, -2))


def _log_forward(Z: Array, iters: int) -> tuple[Array, Array, Array]:
    """``(P, R, C)``: the paper's Sinkhorn in the log domain (``hcref.sinkhorn_knopp``, eps = 0) and
    its potentials ``R = [r_1..r_K]`` (K, ..., n), ``C = [c_1..c_K]`` (K, ..., n), ``r_0 = 0``."""
    r = mx.zeros(Z.shape[:-1], Z.dtype)
    rs, cs = [], []
    for _ in range(iters):
        c = _logsumexp(Z - mx.expand_dims(r, -1), axis=-2)
        r = _logsumexp(Z - mx.expand_dims(c, -2), axis=-1)
        cs.append(c)
        rs.append(r)
    P = _scaled(Z, r, c)
    return P / mx.sum(P, axis=-1, keepdims=True), mx.stack(rs), mx.stack(cs)


def _log_backward(g_P: Array, Z: Array, R: Array, C: Array) -> Array:
    """Unrolled VJP from the stored potentials (math.md 5.6, log form): ``g_L = g_P * M_K``; per step
    t = K..1: ``g -= M_t rowsum(g)``, ``g -= Q_t colsum(g)`` with ``M_t = exp(Z - r_t - c_t)``,
    ``Q_t = exp(Z - r_{t-1} - c_t)`` recomputed."""
    iters = R.shape[0]
    g = g_P * _scaled(Z, R[iters - 1], C[iters - 1])
    for t in range(iters - 1, -1, -1):
        g = g - _scaled(Z, R[t], C[t]) * mx.sum(g, axis=-1, keepdims=True)
        r_prev = R[t - 1] if t > 0 else mx.zeros_like(R[0])
        g = g - _scaled(Z, r_prev, C[t]) * mx.sum(g, axis=-2, keepdims=True)
    return g


def _softmax_out(Z: Array) -> Array:
    """Softmax over the output axis (-2): every column sums to 1."""
    E = _exp(Z - mx.max(Z, axis=-2, keepdims=True))
    return E / mx.sum(E, axis=-2, keepdims=True)


def _v4_forward(Z: Array, iters: int, eps: float) -> tuple[Array, ...]:
    """``(P, r_1, ..., r_K, c_2, ..., c_K)``: DeepSeek-V4's recipe (``hcref.sinkhorn_knopp``,
    eps > 0) and its divisors (r (..., n, 1), c (..., 1, n))."""
    P = _softmax_out(Z) + eps
    r = mx.sum(P, axis=-1, keepdims=True) + eps
    P = P / r
    rs, cs = [r], []
    for _ in range(iters - 1):
        c = mx.sum(P, axis=-2, keepdims=True) + eps
        P = P / c
        r = mx.sum(P, axis=-1, keepdims=True) + eps
        P = P / r
        cs.append(c)
        rs.append(r)
    return (P, *rs, *cs)


def _v4_backward(g_P: Array, Z: Array, P: Array, rs: tuple[Array, ...], cs: tuple[Array, ...]) -> Array:
    """Unrolled VJP of the V4 recipe: ``P = Q / r`` has VJP ``g_Q = (g - rowsum(g P)) / r`` (columns
    alike), the iterates rebuilt backwards as ``Q = P r``; the softmax over out gives
    ``g_Z = S (g - colsum(g S))``."""
    g = g_P
    for t in range(len(rs) - 1, -1, -1):
        Q = P * rs[t]
        g = (g - mx.sum(g * P, axis=-1, keepdims=True)) / rs[t]
        if t > 0:
            P = Q * cs[t - 1]
            g = (g - mx.sum(g * Q, axis=-2, keepdims=True)) / cs[t - 1]
    S = _softmax_out(Z)
    return S * (g - mx.sum(g * S, axis=-2, keepdims=True))


@cache
def _sinkhorn_fn(iters: int, eps: float) -> Callable[[Array], Any]:
    """The Sinkhorn of (iters, eps) as an ``mx.custom_function`` whose extra outputs are its residuals."""
    if eps == 0:

        @mx.custom_function
        def log_domain(Z: Array) -> tuple[Array, Array, Array]:
            return _log_forward(Z, iters)

        @log_domain.vjp
        def log_domain_vjp(Z: Array, cotangents: tuple[Array, ...], outputs: tuple[Array, ...]) -> Array:
            return _log_backward(cotangents[0], Z, outputs[1], outputs[2])

        return log_domain

    @mx.custom_function
    def v4(Z: Array) -> tuple[Array, ...]:
        return _v4_forward(Z, iters, eps)

    @v4.vjp
    def v4_vjp(Z: Array, cotangents: tuple[Array, ...] | Array, outputs: tuple[Array, ...] | Array) -> Array:
        g_P = cotangents[0] if isinstance(cotangents, (tuple, list)) else cotangents
        outs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
        return _v4_backward(g_P, Z, outs[0], outs[1:iters + 1], outs[iters + 1:])

    return v4


def _project(Z: Array, iters: int, eps: float) -> Array:
    """Sinkhorn without validation, in Z's (compute) dtype."""
    out = _sinkhorn_fn(iters, eps)(Z)
    return cast(Array, out[0] if isinstance(out, (tuple, list)) else out)


def sinkhorn(Z: Array, *, iters: int = ITERS, eps: float = 0.0) -> Array:
    """See :func:`hcref.sinkhorn` (mHC paper Eq. 9; decision D7): ``iters`` x (columns, then rows)
    from ``exp(Z)``, in the log domain (``eps = 0``) or DeepSeek-V4's recipe (``eps > 0``).

    Shapes: Z (..., n, n) -> P (..., n, n) in ``h_res[out, in]`` orientation. Dtype: Z's (half
    dtypes computed in float32). Raises ValueError for a non-square Z, ``iters < 1``, ``eps < 0``;
    TypeError for a non-floating Z, a non-int ``iters`` or a non-real ``eps``.
    """
    v.check_sinkhorn(meta("Z", Z), iters, eps)
    with _stream(Z.dtype):
        if _no_tokens(tuple(Z.shape[:-2])):
            return mx.zeros(Z.shape, Z.dtype)
        return _project(Z.astype(_compute_dtype(Z.dtype)), iters, float(eps)).astype(Z.dtype)


# --- coefficients -------------------------------------------------------------------------------

def _rms_project(H: Array, phi: Array) -> Array:
    """``z = rms(vec(H)) phi`` with the reference's scale-safe RMS scaling (module docstring).

    Shapes: H (..., n, d), phi (n*d, k) -> z (..., k), in the dtype of H and phi (one dtype).
    """
    vec = H.reshape(*H.shape[:-2], H.shape[-2] * H.shape[-1])
    s = _row_scale(vec)
    xs = vec * (1 / s)  # exact: 1/s is a power of two, a normal number
    r = mx.rsqrt(mx.mean(xs * xs, axis=-1, keepdims=True) + RMS_EPS / s / s)
    return (xs * r) @ phi


def mhc_coeffs(
    H: Array, params: Mapping[str, Array], *, iters: int = ITERS, eps: float = 0.0
) -> tuple[Array, Array, Array]:
    """See :func:`hcref.mhc_coeffs` (mHC paper Eqs. 7-9; decision D9). With ``v = vec(H)``::

        z      = v (mean(v^2) + 1e-6)^(-1/2) phi
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
    out = _promote(H, *params.values())
    ct = _compute_dtype(out)
    lead = tuple(H.shape[:-2])
    with _stream(out):
        if _no_tokens(lead):
            return mx.zeros((*lead, n), out), mx.zeros((*lead, n), out), mx.zeros((*lead, n, n), out)
        b = params["b"].astype(ct)
        if dynamic:
            z = _rms_project(H.astype(ct), params["phi"].astype(ct))
            gates = params["gates"].astype(ct)
            pre = z[..., :n] * gates[0] + b[:n]
            post = z[..., n:2 * n] * gates[1] + b[n:2 * n]
            res = z[..., 2 * n:] * gates[2] + b[2 * n:]
        else:
            pre, post, res = b[:n], b[n:2 * n], b[2 * n:]
        h_pre = _sigmoid(pre) + eps
        h_post = 2 * _sigmoid(post)
        h_res = _project(res.reshape(*res.shape[:-1], n, n), iters, float(eps))
        if not dynamic:
            h_pre, h_post = mx.broadcast_to(h_pre, (*lead, n)), mx.broadcast_to(h_post, (*lead, n))
            h_res = mx.broadcast_to(h_res, (*lead, n, n))
        return h_pre.astype(out), h_post.astype(out), h_res.astype(out)


# --- apply steps --------------------------------------------------------------------------------


def mhc_pre(H: Array, h_pre: Array) -> Array:
    """See :func:`hcref.mhc_pre` (mHC paper Eq. 3, ``H_pre x_l``): ``h0 = sum_i h_pre[i] H[i]``.

    Shapes: H (..., n, d), h_pre (..., n) -> h0 (..., d). Dtype: H's (computed in the promoted
    dtype, at least float32, rounded once).
    """
    v.check_mhc_pre(meta("H", H), meta("h_pre", h_pre))
    ct = _compute_dtype(_promote(H, h_pre))
    with _stream(ct):
        if _no_tokens(tuple(H.shape[:-2])):
            return mx.zeros((*H.shape[:-2], H.shape[-1]), H.dtype)
        h0 = mx.expand_dims(h_pre.astype(ct), -2) @ H.astype(ct)
        return mx.squeeze(h0, -2).astype(H.dtype)


def mhc_post(y: Array, H: Array, h_post: Array, h_res: Array) -> Array:
    """See :func:`hcref.mhc_post` (mHC paper Eq. 3): ``H_out = h_res H + h_post y^T``, i.e.
    ``H_out[i] = sum_j h_res[i, j] H[j] + h_post[i] y``.

    Shapes: y (..., d), H (..., n, d), h_post (..., n), h_res (..., n, n) -> H_out (..., n, d).
    Dtype: ``promote(y, H)`` (computed in the promoted dtype of all four, at least float32).
    """
    v.check_mhc_post(meta("y", y), meta("H", H), meta("h_post", h_post), meta("h_res", h_res))
    ct = _compute_dtype(_promote(y, H, h_post, h_res))
    out = _promote(y, H)
    with _stream(ct):
        if _no_tokens(tuple(H.shape[:-2])):
            return mx.zeros(H.shape, out)
        mixed = h_res.astype(ct) @ H.astype(ct)
        H_out = mixed + mx.expand_dims(h_post.astype(ct), -1) * mx.expand_dims(y.astype(ct), -2)
        return H_out.astype(out)


def mhc_head(H: Array, params: Mapping[str, Array], *, eps: float = 0.0) -> Array:
    """See :func:`hcref.mhc_head` (DeepSeek-V4's learned reduce; contract row ``mhc_head``)::

        z = v (mean(v^2) + 1e-6)^(-1/2) phi         v = vec(H), as in mhc_coeffs
        w = sigmoid(gate * z + b) + eps             (n), in the promoted dtype
        x = sum_i w_i H[i]

    Shapes: H (..., n, d); phi (n*d, n), b (n), gate () -> x (..., d). Dtype: H's.
    """
    v.check_mhc_head(meta("H", H), params, _param_metas(params), eps)
    ct = _compute_dtype(_promote(H, *params.values()))
    with _stream(ct):
        if _no_tokens(tuple(H.shape[:-2])):
            return mx.zeros((*H.shape[:-2], H.shape[-1]), H.dtype)
        Hc = H.astype(ct)
        z = _rms_project(Hc, params["phi"].astype(ct))
        w = _sigmoid(z * params["gate"].astype(ct) + params["b"].astype(ct)) + eps
        return mx.squeeze(mx.expand_dims(w, -2) @ Hc, -2).astype(H.dtype)


__all__ = ["mhc_coeffs", "mhc_head", "mhc_post", "mhc_pre", "sinkhorn"]
