"""Hyper-Connections (HC paper, arXiv 2409.19606; math.md section 2).

One residual site with n streams of width d, per token:

    alpha, beta = hc_coeffs(H, params)         alpha = [A_m | A_r] (n, n+1), beta = B (n)
    h0, H_res   = hc_width(H, alpha)           h0 = A_m^T H (d), H_res = A_r^T H (n, d)
    y           = T(h0)                        the sublayer, with its own pre-norm
    H_out       = hc_depth(y, H_res, beta)     H_out = B^T y^T + H_res

which is the HC paper's Eq. 2, ``H_out = B^T T(H^T A_m)^T + A_r^T H``, computed as in its
Alg. 2. ``A_r[i, j]`` is the weight from input stream i to output stream j (decision D8).
All arrays carry any number of leading (token) axes ``...``, including axes of size 0 (no
tokens: empty results and zero parameter gradients).

Precision (decision D12): ``hc_coeffs`` returns the promoted dtype of ``H`` and the parameters;
``hc_width`` returns the dtype of ``H`` and ``hc_depth`` the promoted dtype of ``y`` and ``H_res``
(the state's dtype, whatever the coefficients' dtype, e.g. float32 ``alpha``/``beta`` on a
bfloat16 state); every op computes in at least float32 and rounds once (``hcref._core``).
VJPs return each cotangent in the dtype of its primal.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import _core
from . import validation as v
from ._arrays import Array, meta, param_metas


def _static_alpha(params: Mapping[str, Array]) -> Array:
    return np.concatenate([params["A_m"][:, None], params["A_r"]], axis=1)


def hc_coeffs(
    H: Array,
    params: Mapping[str, Array],
    *,
    norm: str = "layernorm",
    use_tanh: bool = True,
    use_norm: bool = True,
    use_scale: bool = True,
) -> tuple[Array, Array]:
    """Static or dynamic HC coefficients (HC paper Eqs. 10-13, Alg. 2).

    Static (params ``A_m`` (n), ``A_r`` (n, n), ``B`` (n)): ``alpha = [A_m | A_r]``, ``beta = B``,
    broadcast over the tokens. Dynamic (params add ``W_alpha`` (d, n+1), ``W_beta`` (d),
    ``s_alpha`` (), ``s_beta`` () and the norm's ``norm_weight`` (d), ``norm_bias`` (d))::

        H_bar = norm(H)                                       row-wise over d, shared weights
        alpha = s_alpha * tanh(H_bar W_alpha) + [A_m | A_r]   (..., n, n+1)
        beta  = s_beta  * tanh(H_bar W_beta)  + B             (..., n)

    ``use_norm`` / ``use_tanh`` / ``use_scale`` = False give the papers' "W/O Norm", "W/O tanh",
    "W/O Rescale" variants (the switched-off part is the identity; its parameters stay in
    ``params`` and get zero gradient). Whether a site is dynamic is read from ``params``.

    Shapes: H (..., n, d) -> alpha (..., n, n+1), beta (..., n).
    """
    _, _, dynamic = v.check_coeffs("hc", meta("H", H), params, param_metas(params), norm, use_tanh, use_norm, use_scale)
    return _core.coeffs(
        H, _static_alpha(params), params["B"], params,
        dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale,
    )


def hc_coeffs_vjp(
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
    """VJP of :func:`hc_coeffs` (math.md 5.3).

    ``g_A_m = sum_tokens g_alpha[..., :, 0]``, ``g_A_r = sum_tokens g_alpha[..., :, 1:]``,
    ``g_B = sum_tokens g_beta``; with ``a = H_bar W`` and ``u = tanh(a)``:
    ``g_a = s g (1 - u^2)``, ``g_s = sum g u``, ``g_W = sum_tokens H_bar^T g_a``,
    ``g_H_bar = g_a_alpha W_alpha^T + g_a_beta W_beta^T``, then the norm's VJP.

    Shapes: g_alpha (..., n, n+1), g_beta (..., n) -> (g_H (..., n, d), g_params {key: shape of key}).
    """
    n, _, dynamic = v.check_coeffs("hc", meta("H", H), params, param_metas(params), norm, use_tanh, use_norm, use_scale)
    lead = H.shape[:-2]
    v.check_cotangent("g_alpha", meta("g_alpha", g_alpha), lead + (n, n + 1))
    v.check_cotangent("g_beta", meta("g_beta", g_beta), lead + (n,))
    g_H, g_static_alpha, g_B, grads = _core.coeffs_vjp(
        H, params, g_alpha, g_beta,
        dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale,
    )
    g_params = {"A_m": g_static_alpha[:, 0], "A_r": g_static_alpha[:, 1:], "B": g_B, **grads}
    return g_H, {key: g_params[key].astype(params[key].dtype, copy=False) for key in params}


def hc_width(H: Array, alpha: Array) -> tuple[Array, Array]:
    """Width connection: read the layer input and mix the streams (HC paper Alg. 2).

    ``mix = alpha^T H`` (n+1, d); ``h0 = mix[0] = A_m^T H``, ``H_res = mix[1:] = A_r^T H``,
    i.e. ``h0[c] = sum_i A_m[i] H[i, c]`` and ``H_res[j, c] = sum_i A_r[i, j] H[i, c]``.

    Shapes: H (..., n, d), alpha (..., n, n+1) -> h0 (..., d), H_res (..., n, d).
    """
    v.check_width("hc", meta("H", H), meta("alpha", alpha))
    mixed = _core.mix(H, alpha)
    return mixed[..., 0, :], mixed[..., 1:, :]


def hc_width_vjp(H: Array, alpha: Array, g_h0: Array, g_H_res: Array) -> tuple[Array, Array]:
    """VJP of :func:`hc_width` (math.md 5.3): with ``g_mix = [g_h0 ; g_H_res]`` (n+1, d),
    ``g_H = alpha g_mix`` and ``g_alpha = H g_mix^T``.

    Shapes: g_h0 (..., d), g_H_res (..., n, d) -> (g_H (..., n, d), g_alpha (..., n, n+1)).
    """
    v.check_width("hc", meta("H", H), meta("alpha", alpha))
    v.check_cotangent("g_h0", meta("g_h0", g_h0), H.shape[:-2] + H.shape[-1:])
    v.check_cotangent("g_H_res", meta("g_H_res", g_H_res), H.shape)
    g_mix = np.concatenate([g_h0[..., None, :], g_H_res], axis=-2)
    return _core.mix_vjp(H, alpha, g_mix)


def hc_depth(y: Array, H_res: Array, beta: Array) -> Array:
    """Depth connection: write the sublayer output to every stream, scaled.

    ``H_out[j, c] = beta[j] y[c] + H_res[j, c]``, i.e. ``H_out = B^T y^T + H_res`` (HC paper Eq. 2),
    computed in at least float32 and rounded once to the promoted dtype of ``y`` and ``H_res``.

    Shapes: y (..., d), H_res (..., n, d), beta (..., n) -> H_out (..., n, d).
    """
    v.check_depth("hc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    ct = _core.compute_dtype_of(y, H_res, beta)
    y_c, H_res_c, beta_c = (a.astype(ct, copy=False) for a in (y, H_res, beta))
    return (beta_c[..., :, None] * y_c[..., None, :] + H_res_c).astype(np.result_type(y, H_res), copy=False)


def hc_depth_vjp(y: Array, H_res: Array, beta: Array, g_H_out: Array) -> tuple[Array, Array, Array]:
    """VJP of :func:`hc_depth` (math.md 5.3): ``g_y = beta^T g``, ``g_H_res = g``, ``g_beta = g y``.

    Shapes: g_H_out (..., n, d) -> (g_y (..., d), g_H_res (..., n, d), g_beta (..., n)).
    """
    v.check_depth("hc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    v.check_cotangent("g_H_out", meta("g_H_out", g_H_out), H_res.shape)
    ct = _core.compute_dtype_of(y, H_res, beta, g_H_out)
    y_c, beta_c, g_c = (a.astype(ct, copy=False) for a in (y, beta, g_H_out))
    g_y = np.einsum("...j,...jc->...c", beta_c, g_c)
    g_beta = np.einsum("...jc,...c->...j", g_c, y_c)
    g_H_res = g_H_out.astype(H_res.dtype, copy=True)
    return g_y.astype(y.dtype, copy=False), g_H_res, g_beta.astype(beta.dtype, copy=False)
