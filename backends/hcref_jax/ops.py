"""The ops of the hcref contract as pure functions on jax arrays (jit, vmap and grad through them).

Every function has the name, arguments, shapes and errors of the reference function of the
same name in :mod:`hcref` (the specification; see its docstrings for the formulas). Inputs are
checked with :mod:`hcref.validation` on shapes and dtypes only, which are static under
``jax.jit`` / ``jax.vmap``: the checks run once, at trace time, with no Python branching on
traced values, and raise word for word the reference's errors. Parameters are a flat mapping
(a dict pytree) with the contract's keys. ``n`` / ``m`` and the keyword options (``norm``,
``use_tanh``, ``use_norm``, ``use_scale``) are Python values: mark them static when jitting,
e.g. ``jax.jit(hc_coeffs, static_argnames=("norm", "use_tanh", "use_norm", "use_scale"))``.

Precision (decision D12): float64 and float32 inputs are computed in their own dtype; for
bfloat16/float16 inputs the coefficient path (norm, projections, tanh, scales) is computed in
float32, the mixing ``alpha^T H`` is a ``dot_general`` with ``preferred_element_type=float32``,
the write ``beta y + H_res`` and the stream sum accumulate in float32, and results are rounded
once to the input dtype (so their VJPs accumulate in float32 too). The small contractions of the
coefficient path and of the mixing run at ``Precision.HIGHEST`` (no TF32/bf16 passes on GPUs).
The result dtype is the promotion of the input dtypes (the input dtype when they share one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hcref import validation as v
from hcref.norms import LAYERNORM_EPS, RMSNORM_EPS
from hcref.validation import ArrayMeta

Array = jax.Array

_LOW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_HIGHEST = jax.lax.Precision.HIGHEST


def dtype_name(dtype: Any) -> str:
    """``jnp.float32`` (or an array's ``dtype``) -> ``"float32"``; ``bfloat16`` -> ``"bfloat16"``."""
    return str(jnp.dtype(dtype).name)


def meta(name: str, x: Any) -> ArrayMeta:
    """The :class:`hcref.validation.ArrayMeta` of a jax array (a tracer under jit/vmap/grad, or a
    NumPy array, which jnp accepts); anything else is a ``TypeError`` naming ``name``."""
    if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
        raise TypeError(f"{name}: expected a jax.Array, got {type(x).__name__}")
    return ArrayMeta(tuple(x.shape), dtype_name(x.dtype), bool(jnp.issubdtype(x.dtype, jnp.floating)))


def _param_metas(params: Any) -> dict[str, ArrayMeta]:
    if not isinstance(params, Mapping):
        return {}
    return {key: meta(f"params[{key!r}]", value) for key, value in params.items()}


def compute_dtype(dtype: Any) -> Any:
    """The accumulation dtype of D12: float32 for bfloat16/float16, the dtype itself otherwise."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype in _LOW else dtype


def _promote(*arrays: Any) -> Any:
    return jnp.result_type(*(a.dtype for a in arrays))


# --- ends ---------------------------------------------------------------------------------


def expand(x: Array, n: int) -> Array:
    """See :func:`hcref.expand`: ``H[..., i, :] = x``. Shapes: x (..., d) -> H (..., n, d)."""
    v.check_expand(meta("x", x), n)
    x = jnp.asarray(x)
    return jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], n, x.shape[-1]))


def reduce(H: Array) -> Array:
    """See :func:`hcref.reduce`: ``x = sum_i H[..., i, :]`` (float32-accumulated for half inputs).

    Shapes: H (..., n, d) -> x (..., d).
    """
    v.check_reduce(meta("H", H))
    H = jnp.asarray(H)
    return jnp.sum(H, axis=-2, dtype=compute_dtype(H.dtype)).astype(H.dtype)


def frac_split(x: Array, m: int) -> Array:
    """See :func:`hcref.frac_split`: contiguous fractions. Shapes: x (..., d) -> H (..., m, e = d/m)."""
    v.check_frac_split(meta("x", x), m)
    x = jnp.asarray(x)
    return x.reshape(*x.shape[:-1], m, x.shape[-1] // m)


def frac_merge(H: Array) -> Array:
    """See :func:`hcref.frac_merge`: concatenated fractions. Shapes: H (..., m, e) -> x (..., m*e)."""
    v.check_frac_merge(meta("H", H))
    H = jnp.asarray(H)
    return H.reshape(*H.shape[:-2], H.shape[-2] * H.shape[-1])


# --- shared coefficient and mixing math (hcref._core) -----------------------------------------


def _coeffs(
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
    """See ``hcref._core.coeffs``: ``alpha = s_alpha u(H_bar W_alpha) + static_alpha``,
    ``beta = s_beta u(H_bar W_beta) + static_beta``, ``H_bar = norm(H)`` row-wise, ``u = tanh``.

    Shapes: H (..., k, w), static_alpha (k, c), static_beta (k,) -> alpha (..., k, c), beta (..., k).
    The two projections run as one contraction against ``[W_alpha | W_beta]`` (w, c+1).
    """
    out_dtype = _promote(H, *params.values())
    ct = compute_dtype(out_dtype)
    lead = H.shape[:-2]
    if not dynamic:
        alpha = jnp.broadcast_to(static_alpha.astype(out_dtype), (*lead, *static_alpha.shape))
        beta = jnp.broadcast_to(static_beta.astype(out_dtype), (*lead, *static_beta.shape))
        return alpha, beta
    x = jnp.asarray(H).astype(ct)
    W = jnp.concatenate([params["W_alpha"].astype(ct), params["W_beta"].astype(ct)[:, None]], axis=-1)
    if use_norm and norm == "rmsnorm":
        # rmsnorm(x) W = r * (x (diag(weight) W)) with r = (mean(x^2) + eps)^(-1/2) per row: the
        # normalised H is never materialised (one reduction pass and one matmul pass over H; on a
        # 2-core CPU this is 6x faster than normalising first, as in hcref_torch).
        r = jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + RMSNORM_EPS)
        u = r * jnp.matmul(x, params["norm_weight"].astype(ct)[:, None] * W, precision=_HIGHEST)
    else:
        if use_norm and norm == "layernorm":
            mu = jnp.mean(x, axis=-1, keepdims=True)
            xc = x - mu
            r = jax.lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + LAYERNORM_EPS)
            x = params["norm_weight"].astype(ct) * (xc * r) + params["norm_bias"].astype(ct)
        u = jnp.matmul(x, W, precision=_HIGHEST)  # (..., k, c+1)
    if use_tanh:
        u = jnp.tanh(u)
    c = static_alpha.shape[-1]
    u_alpha, u_beta = u[..., :c], u[..., c]
    if use_scale:
        u_alpha = params["s_alpha"].astype(ct) * u_alpha
        u_beta = params["s_beta"].astype(ct) * u_beta
    alpha = u_alpha + static_alpha.astype(ct)
    beta = u_beta + static_beta.astype(ct)
    return alpha.astype(out_dtype), beta.astype(out_dtype)


def _mix(H: Array, alpha: Array) -> Array:
    """``mix = alpha^T H`` (see ``hcref._core.mix``): ``mix[..., t, :] = sum_i alpha[..., i, t] H[..., i, :]``.

    Shapes: H (..., k, w), alpha (..., k, c) -> mix (..., c, w). One batched ``dot_general`` that
    accumulates in float32 for half inputs (``preferred_element_type``), rounded once.
    """
    out_dtype = _promote(H, alpha)
    mixed = jnp.einsum(
        "...kc,...kw->...cw",
        jnp.asarray(alpha).astype(out_dtype),
        jnp.asarray(H).astype(out_dtype),
        precision=_HIGHEST,
        preferred_element_type=compute_dtype(out_dtype),
    )
    return mixed.astype(out_dtype)


def _write(y: Array, H_res: Array, beta: Array) -> Array:
    """``H_out = beta[..., None] * y + H_res`` with y broadcastable to H_res (HC: (..., 1, w), FC:
    (..., k, w)), computed in the accumulation dtype and rounded once, so that the VJP's
    reductions (``g_beta = sum_c g y``, HC's ``g_y = beta^T g``) accumulate in float32 for half inputs."""
    out_dtype = _promote(y, H_res, beta)
    ct = compute_dtype(out_dtype)
    out = jnp.asarray(beta).astype(ct)[..., :, None] * jnp.asarray(y).astype(ct) + jnp.asarray(H_res).astype(ct)
    return out.astype(out_dtype)


def _coeff_check(family: str, H: Any, params: Any, norm: Any, use_tanh: Any, use_norm: Any, use_scale: Any) -> bool:
    metas = _param_metas(params)
    _, _, dynamic = v.check_coeffs(family, meta("H", H), params, metas, norm, use_tanh, use_norm, use_scale)
    return dynamic


def _p(params: Mapping[str, Any]) -> dict[str, Array]:
    return {key: jnp.asarray(value) for key, value in params.items()}


# --- HC -------------------------------------------------------------------------------------


def hc_coeffs(
    H: Array,
    params: Mapping[str, Array],
    *,
    norm: str = "layernorm",
    use_tanh: bool = True,
    use_norm: bool = True,
    use_scale: bool = True,
) -> tuple[Array, Array]:
    """See :func:`hcref.hc_coeffs` (HC paper Eqs. 10-13, Alg. 2)::

        H_bar = norm(H)                                       row-wise over d, shared weights
        alpha = s_alpha * tanh(H_bar W_alpha) + [A_m | A_r]   (..., n, n+1)
        beta  = s_beta  * tanh(H_bar W_beta)  + B             (..., n)

    Static params (no dynamic keys): ``alpha = [A_m | A_r]``, ``beta = B`` broadcast over tokens.

    Shapes: H (..., n, d); params A_m (n,), A_r (n, n), B (n,), W_alpha (d, n+1), W_beta (d,),
    s_alpha (), s_beta (), norm_weight (d,), norm_bias (d,) -> alpha (..., n, n+1), beta (..., n).
    """
    dynamic = _coeff_check("hc", H, params, norm, use_tanh, use_norm, use_scale)
    params = _p(params)
    static_alpha = jnp.concatenate([params["A_m"][:, None], params["A_r"]], axis=-1)
    return _coeffs(
        jnp.asarray(H), static_alpha, params["B"], params,
        dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale,
    )


def hc_width(H: Array, alpha: Array) -> tuple[Array, Array]:
    """See :func:`hcref.hc_width`: ``mix = alpha^T H`` (n+1, d), ``h0 = mix[0] = A_m^T H``,
    ``H_res = mix[1:] = A_r^T H``.

    Shapes: H (..., n, d), alpha (..., n, n+1) -> h0 (..., d), H_res (..., n, d).
    """
    v.check_width("hc", meta("H", H), meta("alpha", alpha))
    mixed = _mix(H, alpha)
    return mixed[..., 0, :], mixed[..., 1:, :]


def hc_depth(y: Array, H_res: Array, beta: Array) -> Array:
    """See :func:`hcref.hc_depth`: ``H_out[j, c] = beta[j] y[c] + H_res[j, c]`` (HC paper Eq. 2).

    Shapes: y (..., d), H_res (..., n, d), beta (..., n) -> H_out (..., n, d).
    """
    v.check_depth("hc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    return _write(jnp.asarray(y)[..., None, :], H_res, beta)


# --- FC -------------------------------------------------------------------------------------


def fc_coeffs(
    H: Array,
    params: Mapping[str, Array],
    *,
    norm: str = "layernorm",
    use_tanh: bool = True,
    use_norm: bool = True,
    use_scale: bool = True,
) -> tuple[Array, Array]:
    """See :func:`hcref.fc_coeffs` (FC paper Eqs. 11-14, Alg. 2)::

        H_bar = norm(H)                                     per fraction over e, shared weights
        alpha = s_alpha * tanh(H_bar W_alpha) + [Y | A]     (..., m, 2m)
        beta  = s_beta  * tanh(H_bar W_beta)  + B           (..., m)

    Shapes: H (..., m, e); params Y (m, m), A (m, m), B (m,), W_alpha (e, 2m), W_beta (e,),
    s_alpha (), s_beta (), norm_weight (e,), norm_bias (e,) -> alpha (..., m, 2m), beta (..., m).
    """
    dynamic = _coeff_check("fc", H, params, norm, use_tanh, use_norm, use_scale)
    params = _p(params)
    static_alpha = jnp.concatenate([params["Y"], params["A"]], axis=-1)
    return _coeffs(
        jnp.asarray(H), static_alpha, params["B"], params,
        dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale,
    )


def fc_width(H: Array, alpha: Array) -> tuple[Array, Array]:
    """See :func:`hcref.fc_width`: ``mix = alpha^T H`` (2m, e), ``h0 = concat_k (Y^T H)[k]``,
    ``H_res = A^T H``; i.e. ``h0[k*e + c] = sum_i Y[i, k] H[i, c]``.

    Shapes: H (..., m, e), alpha (..., m, 2m) -> h0 (..., d = m*e), H_res (..., m, e).
    """
    m, e = v.check_width("fc", meta("H", H), meta("alpha", alpha))
    mixed = _mix(H, alpha)
    return mixed[..., :m, :].reshape(*H.shape[:-2], m * e), mixed[..., m:, :]


def fc_depth(y: Array, H_res: Array, beta: Array) -> Array:
    """See :func:`hcref.fc_depth` (diagonal write, decision D6): ``H_out[j, c] = beta[j] y[j*e + c] + H_res[j, c]``.

    Shapes: y (..., d = m*e), H_res (..., m, e), beta (..., m) -> H_out (..., m, e).
    """
    v.check_depth("fc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    return _write(jnp.asarray(y).reshape(H_res.shape), H_res, beta)


__all__ = [
    "compute_dtype",
    "dtype_name",
    "expand",
    "fc_coeffs",
    "fc_depth",
    "fc_width",
    "frac_merge",
    "frac_split",
    "hc_coeffs",
    "hc_depth",
    "hc_width",
    "meta",
    "reduce",
]
