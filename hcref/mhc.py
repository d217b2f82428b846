"""Manifold-Constrained Hyper-Connections (mHC paper, arXiv 2512.24880; math.md section 4;
decisions D7-D10, D12).

One residual site with n streams of width d (the paper's C), per token::

    h_pre, h_post, h_res = mhc_coeffs(H, params)     (n), (n), (n, n)    paper Eqs. 7-9
    h0    = mhc_pre(H, h_pre)                        h0 = sum_i h_pre[i] H[i]       (d)
    y     = F(h0)                                    the sublayer, with its own pre-norm
    H_out = mhc_post(y, H, h_post, h_res)            H_out = h_res H + h_post y^T   (n, d)

which is the paper's Eq. 3, ``x_{l+1} = H_res x_l + H_post^T F(H_pre x_l)``, at the
granularity of the fused kernels (pre-apply; post-apply and residual mix in one step).
``h_res[i, j]`` is the weight from input stream j into output stream i (the paper's
orientation; HC's ``A_r`` is its transpose, decision D8). The final reduce is the HC sum
(``hcref.reduce``, A15) or DeepSeek-V4's learned :func:`mhc_head`.

Coefficients (decision D9), with every coefficient seeing all n streams::

    v      = vec(H)                        (n*d), row-major: v[i*d + c] = H[i, c]
    v'     = v (mean(v^2) + 1e-6)^(-1/2)   RMS scaling without weight, scale-safe (D12)
    z      = v' phi                        phi (n*d, 2n+n^2), columns [pre (n) | post (n) | res (n^2)]
    logits = gates[k] * z_k + b_k          gates (3) = (pre, post, res), b (2n+n^2)
    h_pre  = sigmoid(logits_pre) (+ eps)   h_post = 2 sigmoid(logits_post)
    h_res  = sinkhorn(mat(logits_res))     mat: row-major (out, in)

No tanh. A static site has only ``b`` (the logits are ``b``). ``eps > 0`` is DeepSeek-V4's
mode: ``+ eps`` on h_pre and in every Sinkhorn denominator (math.md 4.5).

Precision (decision D12): every op computes in the promoted dtype of its inputs, at least
float32; the coefficients and ``mhc_head``'s weights are returned in the promoted dtype,
``mhc_pre`` and ``mhc_head`` in H's dtype, ``mhc_post`` in ``promote(y, H)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import validation as v
from ._arrays import Array, meta, param_metas, sum_tokens
from ._dtypes import compute_dtype, promoted
from .norms import rms_normalize, rmsnorm_vjp
from .sinkhorn_knopp import ITERS, project, project_vjp

RMS_EPS = 1e-6
"""Epsilon of mHC's RMS scaling of the flattened n*d vector (decision D9; DeepSeek-V4's
value; the mHC paper's Eq. 15 has none). Not the ``eps`` option."""


def sigmoid(x: Array) -> Array:
    """``1 / (1 + exp(-x))`` from ``exp(-|x|)``: finite and correct for logits of either sign
    and any size (a plain ``exp(x) / (1 + exp(x))`` is ``inf / inf = NaN`` above 88 in float32)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _sigmoid_grad(x: Array) -> Array:
    """``sigmoid'(x) = sigmoid(x) sigmoid(-x)`` (no cancellation in ``1 - sigmoid(x)``)."""
    return sigmoid(x) * sigmoid(-x)


def _project(H: Array, phi: Array) -> Array:
    """``z = rms(vec(H)) phi``, the projection of the flattened, RMS-scaled state.

    Shapes: H (..., n, d), phi (n*d, k) -> z (..., k).
    """
    v_hat, _ = rms_normalize(H.reshape(H.shape[:-2] + (H.shape[-2] * H.shape[-1],)), RMS_EPS)
    return v_hat @ phi


def _project_vjp(H: Array, phi: Array, g_z: Array) -> tuple[Array, Array]:
    """VJP of :func:`_project` (math.md 5.5): ``g_phi = sum_tokens v'^T g_z``,
    ``g_v' = g_z phi^T``, then the weightless RMSNorm's VJP. Returns (g_H, g_phi)."""
    vec = H.reshape(H.shape[:-2] + (H.shape[-2] * H.shape[-1],))
    v_hat, _ = rms_normalize(vec, RMS_EPS)
    g_phi = v_hat.reshape(-1, v_hat.shape[-1]).T @ g_z.reshape(-1, g_z.shape[-1])
    g_vec, _ = rmsnorm_vjp(vec, np.ones((), vec.dtype), g_z @ phi.T, RMS_EPS)
    return g_vec.reshape(H.shape), g_phi


def _gate_per_column(gates: Array, n: int) -> Array:
    """The three gates spread over the 2n+n^2 logit columns (pre, post, res)."""
    return np.repeat(gates, [n, n, n * n])


def _cast(params: Mapping[str, Array], dtype: np.dtype) -> dict[str, Array]:
    return {key: np.asarray(value, dtype) for key, value in params.items()}


def _logits(H: Array, p: Mapping[str, Array], n: int, dynamic: bool) -> tuple[Array, Array | None]:
    """``(logits (..., 2n+n^2), z or None)`` of a site, in the dtype of ``H`` and ``p``."""
    if not dynamic:
        return np.broadcast_to(p["b"], H.shape[:-2] + p["b"].shape), None
    z = _project(H, p["phi"])
    return z * _gate_per_column(p["gates"], n) + p["b"], z


def _split(logits: Array, n: int) -> tuple[Array, Array, Array]:
    """``(pre (..., n), post (..., n), res (..., n, n))``; res row-major (out, in)."""
    res = logits[..., 2 * n:].reshape(logits.shape[:-1] + (n, n))
    return logits[..., :n], logits[..., n:2 * n], res


def mhc_coeffs(
    H: Array, params: Mapping[str, Array], *, iters: int = ITERS, eps: float = 0.0
) -> tuple[Array, Array, Array]:
    """mHC coefficients from the whole token's state (mHC paper Eqs. 7-9; decision D9).

    Dynamic (params ``phi`` (n*d, 2n+n^2), ``b`` (2n+n^2), ``gates`` (3)), with ``v = vec(H)``::

        z      = v (mean(v^2) + 1e-6)^(-1/2) phi
        h_pre  = sigmoid(gates[0] z_pre  + b_pre) + eps
        h_post = 2 sigmoid(gates[1] z_post + b_post)
        h_res  = sinkhorn(gates[2] mat(z_res) + mat(b_res), iters=iters, eps=eps)

    Static (params exactly ``b``): the same with ``b`` as the logits, broadcast over tokens.
    ``eps = 0`` is the paper; ``eps > 0`` is DeepSeek-V4 (it uses 1e-6; math.md 4.5). Columns
    of ``phi`` and entries of ``b``: ``[pre (n) | post (n) | res (n^2, row-major (out, in))]``
    (V4 stores res as ``comb[in, out]``: transpose it to import V4 weights).

    Shapes: H (..., n, d) -> h_pre (..., n), h_post (..., n), h_res (..., n, n). Dtype: the
    promoted dtype of H and params (computed in at least float32).
    Raises ValueError/TypeError for missing or extra keys (static = ``{b}``, dynamic =
    ``{phi, b, gates}``), wrong parameter shapes, ``iters < 1``, ``eps < 0``, non-floating arrays.
    """
    n, _, dynamic = v.check_mhc_coeffs(meta("H", H), params, param_metas(params), iters, eps)
    out = promoted(H, *params.values())
    dtype = compute_dtype(out)
    logits, _ = _logits(H.astype(dtype), _cast(params, dtype), n, dynamic)
    pre, post, res = _split(logits, n)
    h_pre = sigmoid(pre) + eps
    h_post = 2 * sigmoid(post)
    h_res = project(res, iters, eps)
    return h_pre.astype(out), h_post.astype(out), h_res.astype(out)


def mhc_coeffs_vjp(
    H: Array,
    params: Mapping[str, Array],
    g_h_pre: Array,
    g_h_post: Array,
    g_h_res: Array,
    *,
    iters: int = ITERS,
    eps: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
    """VJP of :func:`mhc_coeffs` (math.md 5.5, 5.6).

    ``g_pre = g_h_pre sigmoid'``, ``g_post = g_h_post 2 sigmoid'``, ``g_res = sinkhorn_vjp(g_h_res)``
    (unrolled); ``g_b = sum_tokens [g_pre | g_post | vec(g_res)]``; dynamic adds
    ``g_gates[k] = sum_tokens sum(g_k z_k)``, ``g_z = gates g``, ``g_phi = sum_tokens v'^T g_z``
    and the RMS scaling's VJP of ``g_v' = g_z phi^T`` into ``g_H`` (a static site gives
    ``g_H = 0``). The ``+ eps`` of V4 has zero gradient.

    Shapes: g_h_pre (..., n), g_h_post (..., n), g_h_res (..., n, n) -> (g_H (..., n, d),
    {key: gradient of the key's shape}). Dtypes: those of H and of each parameter.
    """
    n, _, dynamic = v.check_mhc_coeffs(meta("H", H), params, param_metas(params), iters, eps)
    lead = H.shape[:-2]
    v.check_cotangent("g_h_pre", meta("g_h_pre", g_h_pre), lead + (n,))
    v.check_cotangent("g_h_post", meta("g_h_post", g_h_post), lead + (n,))
    v.check_cotangent("g_h_res", meta("g_h_res", g_h_res), lead + (n, n))
    dtype = compute_dtype(promoted(H, *params.values()))
    Hc, p = H.astype(dtype), _cast(params, dtype)
    logits, z = _logits(Hc, p, n, dynamic)
    pre, post, res = _split(logits, n)
    g_pre = g_h_pre.astype(dtype) * _sigmoid_grad(pre)
    g_post = g_h_post.astype(dtype) * 2 * _sigmoid_grad(post)
    g_res = project_vjp(res, g_h_res.astype(dtype), iters, eps)
    g_logits = np.concatenate([g_pre, g_post, g_res.reshape(lead + (n * n,))], axis=-1)
    grads: dict[str, Array] = {"b": sum_tokens(g_logits, 1)}
    if not dynamic:
        g_H = np.zeros_like(H)
    else:
        assert z is not None
        per_column = sum_tokens(g_logits * z, 1)
        grads["gates"] = np.array([per_column[:n].sum(), per_column[n:2 * n].sum(), per_column[2 * n:].sum()])
        g_H, grads["phi"] = _project_vjp(Hc, p["phi"], g_logits * _gate_per_column(p["gates"], n))
    return g_H.astype(H.dtype, copy=False), {key: grads[key].astype(params[key].dtype) for key in params}


def mhc_pre(H: Array, h_pre: Array) -> Array:
    """Pre-apply: the sublayer's input ``h0 = sum_i h_pre[i] H[i]`` (mHC paper Eq. 3, ``H_pre x_l``).

    Shapes: H (..., n, d), h_pre (..., n) -> h0 (..., d). Dtype: H's (computed in the promoted
    dtype, at least float32, rounded once). Raises ValueError when h_pre is not (..., n) of H.
    """
    v.check_mhc_pre(meta("H", H), meta("h_pre", h_pre))
    dtype = compute_dtype(promoted(H, h_pre))
    h0 = np.einsum("...i,...ic->...c", h_pre.astype(dtype), H.astype(dtype))
    return h0.astype(H.dtype, copy=False)


def mhc_pre_vjp(H: Array, h_pre: Array, g_h0: Array) -> tuple[Array, Array]:
    """VJP of :func:`mhc_pre` (math.md 5.5): ``g_H[i] = h_pre[i] g_h0``, ``g_h_pre[i] = <H[i], g_h0>``.

    Shapes: g_h0 (..., d) -> (g_H (..., n, d), g_h_pre (..., n)), in the dtypes of H and h_pre.
    """
    v.check_mhc_pre(meta("H", H), meta("h_pre", h_pre))
    v.check_cotangent("g_h0", meta("g_h0", g_h0), H.shape[:-2] + H.shape[-1:])
    dtype = compute_dtype(promoted(H, h_pre))
    Hc, pre, g = H.astype(dtype), h_pre.astype(dtype), g_h0.astype(dtype)
    g_H = pre[..., :, None] * g[..., None, :]
    g_h_pre = np.einsum("...ic,...c->...i", Hc, g)
    return g_H.astype(H.dtype, copy=False), g_h_pre.astype(h_pre.dtype, copy=False)


def mhc_post(y: Array, H: Array, h_post: Array, h_res: Array) -> Array:
    """Post-apply and residual mix in one step (mHC paper Eq. 3):
    ``H_out = h_res H + h_post y^T``, i.e. ``H_out[i] = sum_j h_res[i, j] H[j] + h_post[i] y``.

    Shapes: y (..., d), H (..., n, d), h_post (..., n), h_res (..., n, n) -> H_out (..., n, d).
    Dtype: ``promote(y, H)`` (computed in the promoted dtype of all four, at least float32).
    Raises ValueError when y, h_post or h_res do not match H (no broadcasting).
    """
    v.check_mhc_post(meta("y", y), meta("H", H), meta("h_post", h_post), meta("h_res", h_res))
    dtype = compute_dtype(promoted(y, H, h_post, h_res))
    yc, post = y.astype(dtype), h_post.astype(dtype)
    H_out = h_res.astype(dtype) @ H.astype(dtype) + post[..., :, None] * yc[..., None, :]
    return H_out.astype(promoted(y, H), copy=False)


def mhc_post_vjp(
    y: Array, H: Array, h_post: Array, h_res: Array, g_H_out: Array
) -> tuple[Array, Array, Array, Array]:
    """VJP of :func:`mhc_post` (math.md 5.5): ``g_y = sum_i h_post[i] g[i]``, ``g_H = h_res^T g``,
    ``g_h_post = g y``, ``g_h_res = g H^T``.

    Shapes: g_H_out (..., n, d) -> (g_y (..., d), g_H (..., n, d), g_h_post (..., n),
    g_h_res (..., n, n)), each in its input's dtype.
    """
    v.check_mhc_post(meta("y", y), meta("H", H), meta("h_post", h_post), meta("h_res", h_res))
    v.check_cotangent("g_H_out", meta("g_H_out", g_H_out), H.shape)
    dtype = compute_dtype(promoted(y, H, h_post, h_res))
    yc, Hc, post, res, g = (a.astype(dtype) for a in (y, H, h_post, h_res, g_H_out))
    g_y = np.einsum("...i,...ic->...c", post, g)
    g_H = np.swapaxes(res, -1, -2) @ g
    g_h_post = np.einsum("...ic,...c->...i", g, yc)
    g_h_res = g @ np.swapaxes(Hc, -1, -2)
    return (
        g_y.astype(y.dtype, copy=False),
        g_H.astype(H.dtype, copy=False),
        g_h_post.astype(h_post.dtype, copy=False),
        g_h_res.astype(h_res.dtype, copy=False),
    )


def _head_weights(H: Array, p: Mapping[str, Array], eps: float) -> tuple[Array, Array, Array]:
    """``(w, a, z)``: ``z = rms(vec(H)) phi``, ``a = gate z + b``, ``w = sigmoid(a) + eps``."""
    z = _project(H, p["phi"])
    a = p["gate"] * z + p["b"]
    return sigmoid(a) + eps, a, z


def mhc_head(H: Array, params: Mapping[str, Array], *, eps: float = 0.0) -> Array:
    """DeepSeek-V4's learned final reduce of the n streams (math.md 4.5; contract row ``mhc_head``).

    With params ``phi`` (n*d, n), ``b`` (n), ``gate`` () and ``v = vec(H)``::

        z = v (mean(v^2) + 1e-6)^(-1/2) phi          as in mhc_coeffs
        w = sigmoid(gate * z + b) + eps               (n), computed in the promoted dtype
        x = sum_i w_i H[i]

    The mHC paper does not say how it reduces the streams (the sum of ``hcref.reduce`` is the
    default, A15); this op is V4's ``hc_head`` (V4: eps = 1e-6).

    Shapes: H (..., n, d) -> x (..., d). Dtype: H's. Raises ValueError/TypeError for keys other
    than exactly ``{phi, b, gate}``, wrong shapes, ``eps < 0``, non-floating arrays.
    """
    v.check_mhc_head(meta("H", H), params, param_metas(params), eps)
    dtype = compute_dtype(promoted(H, *params.values()))
    Hc = H.astype(dtype)
    w, _, _ = _head_weights(Hc, _cast(params, dtype), eps)
    return np.einsum("...i,...ic->...c", w, Hc).astype(H.dtype, copy=False)


def mhc_head_vjp(
    H: Array, params: Mapping[str, Array], g_x: Array, *, eps: float = 0.0
) -> tuple[Array, dict[str, Array]]:
    """VJP of :func:`mhc_head`: ``g_w = H g_x``, ``g_a = g_w sigmoid'(a)``, ``g_b = sum_tokens g_a``,
    ``g_gate = sum_tokens sum(g_a z)``, ``g_z = gate g_a``; ``g_H = w g_x^T`` plus the projection's
    VJP (``g_phi = sum_tokens v'^T g_z`` and the RMS scaling's VJP).

    Shapes: g_x (..., d) -> (g_H (..., n, d), {"phi": (n*d, n), "b": (n,), "gate": ()}), in the
    dtypes of H and of each parameter.
    """
    v.check_mhc_head(meta("H", H), params, param_metas(params), eps)
    v.check_cotangent("g_x", meta("g_x", g_x), H.shape[:-2] + H.shape[-1:])
    dtype = compute_dtype(promoted(H, *params.values()))
    Hc, p, g = H.astype(dtype), _cast(params, dtype), g_x.astype(dtype)
    w, a, z = _head_weights(Hc, p, eps)
    g_a = np.einsum("...ic,...c->...i", Hc, g) * _sigmoid_grad(a)
    g_H, g_phi = _project_vjp(Hc, p["phi"], p["gate"] * g_a)
    g_H = g_H + w[..., :, None] * g[..., None, :]
    grads: dict[str, Any] = {"phi": g_phi, "b": sum_tokens(g_a, 1), "gate": np.sum(g_a * z)}
    return g_H.astype(H.dtype, copy=False), {key: np.asarray(grads[key], params[key].dtype) for key in params}
