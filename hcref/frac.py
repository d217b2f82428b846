"""Frac-Connections (FC paper, arXiv 2503.14125; math.md section 3; decision D6).

One residual site with m fractions of width e = d/m, per token:

    alpha, beta = fc_coeffs(H, params)         alpha = [Y | A] (m, 2m), beta = B (m)
    h0, H_res   = fc_width(H, alpha)           h0 = concat_k (Y^T H)[k] (d), H_res = A^T H (m, e)
    y           = T(h0)                        the sublayer, with its own pre-norm, on all of d
    H_out       = fc_depth(y, H_res, beta)     H_out[j] = B[j] y_j + H_res[j], y_j = fraction j of y

which is the FC paper's Eq. 8 with the reshapes of its Alg. 1/2 made explicit. The layer
input is the *concatenation* of m read fractions and the write is diagonal: fraction j of
``y`` goes to fraction j of the state only.

Precision and empty token sets: as in :mod:`hcref.hyper` (``fc_coeffs`` returns the promoted
dtype, ``fc_width`` the dtype of ``H``, ``fc_depth`` the promoted dtype of ``y`` and ``H_res``;
computed in at least float32, rounded once; VJPs in the primals' dtypes).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import _core
from . import validation as v
from ._arrays import Array, meta, param_metas


def fc_coeffs(
    H: Array,
    params: Mapping[str, Array],
    *,
    norm: str = "layernorm",
    use_tanh: bool = True,
    use_norm: bool = True,
    use_scale: bool = True,
) -> tuple[Array, Array]:
    """Static or dynamic FC coefficients (FC paper Eqs. 11-14, Alg. 2).

    Static (params ``Y`` (m, m), ``A`` (m, m), ``B`` (m)): ``alpha = [Y | A]``, ``beta = B``.
    Dynamic (params add ``W_alpha`` (e, 2m) with columns ``[W_Y | W_A]``, ``W_beta`` (e),
    ``s_alpha`` (), ``s_beta`` (), ``norm_weight`` (e), ``norm_bias`` (e))::

        H_bar = norm(H)                                     per fraction over e, shared weights
        alpha = s_alpha * tanh(H_bar W_alpha) + [Y | A]     (..., m, 2m)
        beta  = s_beta  * tanh(H_bar W_beta)  + B           (..., m)

    The switches are as in :func:`hcref.hc_coeffs`.

    Shapes: H (..., m, e) -> alpha (..., m, 2m), beta (..., m).
    """
    _, _, dynamic = v.check_coeffs("fc", meta("H", H), params, param_metas(params), norm, use_tanh, use_norm, use_scale)
    static_alpha = np.concatenate([params["Y"], params["A"]], axis=1)
    return _core.coeffs(
        H, static_alpha, params["B"], params,
        dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale,
    )


def fc_coeffs_vjp(
    H: Array,
    params: Mapping[str, Array],
    g_alpha: Array,
    g_beta: Array,
    *,
    norm: str = "layernorm",
    use_tanh: bool = True,
    use_norm: bool = True,
    use_scale: bool = True,
) -> tuple[Array, dict[str, Array]]:
    """VJP of :func:`fc_coeffs` (math.md 5.4; the HC formulas with n -> m, d -> e).

    ``g_Y = sum_tokens g_alpha[..., :, :m]``, ``g_A = sum_tokens g_alpha[..., :, m:]``,
    ``g_B = sum_tokens g_beta``; dynamic and norm terms as in :func:`hcref.hc_coeffs_vjp`.

    Shapes: g_alpha (..., m, 2m), g_beta (..., m) -> (g_H (..., m, e), g_params).
    """
    m, _, dynamic = v.check_coeffs("fc", meta("H", H), params, param_metas(params), norm, use_tanh, use_norm, use_scale)
    lead = H.shape[:-2]
    v.check_cotangent("g_alpha", meta("g_alpha", g_alpha), lead + (m, 2 * m))
    v.check_cotangent("g_beta", meta("g_beta", g_beta), lead + (m,))
    g_H, g_static_alpha, g_B, grads = _core.coeffs_vjp(
        H, params, g_alpha, g_beta,
        dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale,
    )
    g_params = {"Y": g_static_alpha[:, :m], "A": g_static_alpha[:, m:], "B": g_B, **grads}
    return g_H, {key: g_params[key].astype(params[key].dtype, copy=False) for key in params}


def fc_width(H: Array, alpha: Array) -> tuple[Array, Array]:
    """Width connection: read m layer-input fractions, concatenate them, mix the fractions.

    ``mix = alpha^T H`` (2m, e); ``X = mix[:m] = Y^T H``, ``h0 = concat_k X[k]``,
    ``H_res = mix[m:] = A^T H``; i.e. ``h0[k*e + c] = sum_i Y[i, k] H[i, c]``.

    Shapes: H (..., m, e), alpha (..., m, 2m) -> h0 (..., d = m*e), H_res (..., m, e).
    """
    m, e = v.check_width("fc", meta("H", H), meta("alpha", alpha))
    mixed = _core.mix(H, alpha)
    return mixed[..., :m, :].reshape(H.shape[:-2] + (m * e,)), mixed[..., m:, :]


def fc_width_vjp(H: Array, alpha: Array, g_h0: Array, g_H_res: Array) -> tuple[Array, Array]:
    """VJP of :func:`fc_width` (math.md 5.4): ``g_mix = [reshape(g_h0, (m, e)) ; g_H_res]``,
    ``g_H = alpha g_mix``, ``g_alpha = H g_mix^T``.

    Shapes: g_h0 (..., d), g_H_res (..., m, e) -> (g_H (..., m, e), g_alpha (..., m, 2m)).
    """
    m, e = v.check_width("fc", meta("H", H), meta("alpha", alpha))
    lead = H.shape[:-2]
    v.check_cotangent("g_h0", meta("g_h0", g_h0), lead + (m * e,))
    v.check_cotangent("g_H_res", meta("g_H_res", g_H_res), H.shape)
    g_mix = np.concatenate([g_h0.reshape(lead + (m, e)), g_H_res], axis=-2)
    return _core.mix_vjp(H, alpha, g_mix)


def fc_depth(y: Array, H_res: Array, beta: Array) -> Array:
    """Depth connection with a diagonal write (FC paper Eq. 8, decision D6).

    ``H_out[j, c] = beta[j] y[j*e + c] + H_res[j, c]``.

    Computed in at least float32 and rounded once to the promoted dtype of ``y`` and ``H_res``.

    Shapes: y (..., d = m*e), H_res (..., m, e), beta (..., m) -> H_out (..., m, e).
    """
    v.check_depth("fc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    ct = _core.compute_dtype_of(y, H_res, beta)
    y_c, H_res_c, beta_c = (a.astype(ct, copy=False) for a in (y, H_res, beta))
    out = beta_c[..., :, None] * y_c.reshape(H_res.shape) + H_res_c
    return out.astype(np.result_type(y, H_res), copy=False)


def fc_depth_vjp(y: Array, H_res: Array, beta: Array, g_H_out: Array) -> tuple[Array, Array, Array]:
    """VJP of :func:`fc_depth` (math.md 5.4): ``g_y[j*e + c] = beta[j] g[j, c]``,
    ``g_H_res = g``, ``g_beta[j] = sum_c g[j, c] y[j*e + c]``.

    Shapes: g_H_out (..., m, e) -> (g_y (..., d), g_H_res (..., m, e), g_beta (..., m)).
    """
    v.check_depth("fc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    v.check_cotangent("g_H_out", meta("g_H_out", g_H_out), H_res.shape)
    ct = _core.compute_dtype_of(y, H_res, beta, g_H_out)
    y_c, beta_c, g_c = (a.astype(ct, copy=False) for a in (y, beta, g_H_out))
    g_y = (beta_c[..., :, None] * g_c).reshape(y.shape)
    g_beta = (g_c * y_c.reshape(H_res.shape)).sum(axis=-1)
    g_H_res = g_H_out.astype(H_res.dtype, copy=True)
    return g_y.astype(y.dtype, copy=False), g_H_res, g_beta.astype(beta.dtype, copy=False)
