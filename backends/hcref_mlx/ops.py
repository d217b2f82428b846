"""The ops of the hcref contract on ``mlx.core`` arrays (functional; differentiable with
``mx.grad`` / ``mx.vjp``; traceable by ``mx.compile``).

Every function has the name, arguments, shapes and errors of the reference function of the
same name in :mod:`hcref` (the specification; see its docstrings for the formulas). Inputs are
checked with :mod:`hcref.validation`, so error messages are word for word the reference's. The
checks read only shapes and dtypes, which ``mx.compile`` knows while tracing, so they cost
nothing in a compiled function after the first call.

Precision (decision D12). Every op computes in at least float32: float64 and float32 inputs in
their promoted dtype; for bfloat16/float16 inputs the coefficient path (norm, projections, tanh),
the mixing and the write are accumulated in float32 and the results rounded once. Gradients
flow back through the same casts, so the backward contractions accumulate in float32 too and
every gradient comes back in its input's dtype. Mixed precision as production runs it:
``*_coeffs`` return the promoted dtype of ``H`` and the parameters (float32 coefficients for
float32 parameters on a bfloat16 state); ``*_width`` return the dtype of ``H`` and ``*_depth`` the
promoted dtype of ``y`` and ``H_res`` (the state's dtype, whatever the coefficients' dtype).

Scale-safe norms (D12, :mod:`hcref.norms`). Per row of width ``w``,
``s = 2^floor(log2(max(max|x|, 1)))`` (exactly: the exponent bits of ``max(max|x|, 1)``, read
with ``mx.view``), capped at 2^126 (float32) / 2^1022 (float64) so that ``1/s`` is a normal number
(flush-to-zero cannot touch it), ``x' = x * (1/s)`` (exact) and ``eps' = eps / s / s``:

    layernorm: out = weight * (x' - mean(x')) r' + bias,
               r' = max(mean((x' - mean(x'))^2) + eps', tiny)^(-1/2)
    rmsnorm:   out = weight * x' r',  r' = (mean(x'^2) + eps')^(-1/2)

(``tiny``: the compute dtype's smallest normal number; the reference floors at the smallest
subnormal, which differs only in the gradient of a row of equal entries beyond about 3e16 in
float32, where ``x_hat = 0`` either way, and a normal floor is immune to flush-to-zero). They
equal the textbook forms in real arithmetic and bit for bit at ordinary scales (``s = 1``); finite
and correct, forward and VJP, for any finite input.

Empty token sets. MLX (0.32) returns uninitialised memory from a sum over a zero-size axis of
a non-contiguous array, or does not return at all (``mx.swapaxes(mx.zeros((0, 3, 4)), -1,
-2).sum(axis=0)``); the VJP of ``alpha^T H`` with ``alpha`` broadcast from a parameter produces
exactly that sum. So every op whose leading axes hold no element returns its (empty) results
as constants: nothing flows back through them, and MLX's autodiff gives every input, and every
parameter upstream, an exact zero gradient, which is the sum over no tokens.

Devices: MLX arrays live in unified memory and ops run on a stream. MLX supports float64 on
the CPU only, so any op that sees a float64 input runs on the CPU stream (``mx.cpu``) whatever
the default device is; other dtypes run on the default device. No Metal-specific kernels are
used.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import mlx.core as mx

from hcref import validation as v
from hcref.norms import LAYERNORM_EPS, RMSNORM_EPS
from hcref.validation import ArrayMeta

Array = mx.array

_NAMES = {
    mx.float64: "float64",
    mx.float32: "float32",
    mx.bfloat16: "bfloat16",
    mx.float16: "float16",
}
_LOW = (mx.bfloat16, mx.float16)


def dtype_name(dtype: mx.Dtype) -> str:
    """``mx.float32`` -> ``"float32"`` (other dtypes by their MLX name without ``mlx.core.``)."""
    return _NAMES.get(dtype, str(dtype).removeprefix("mlx.core."))


def meta(name: str, x: Any) -> ArrayMeta:
    """The :class:`hcref.validation.ArrayMeta` of an MLX array; anything else is a ``TypeError``."""
    if not isinstance(x, mx.array):
        raise TypeError(f"{name}: expected an mlx.core.array, got {type(x).__name__}")
    return ArrayMeta(tuple(x.shape), dtype_name(x.dtype), bool(mx.issubdtype(x.dtype, mx.floating)))


def _param_metas(params: Any) -> dict[str, ArrayMeta]:
    if not isinstance(params, Mapping):
        return {}
    return {key: meta(f"params[{key!r}]", value) for key, value in params.items()}


def _promote(*arrays: Array) -> mx.Dtype:
    """NumPy/torch-style promotion of floating dtypes (bfloat16 with float16 gives float32)."""
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) == 1:
        return arrays[0].dtype
    for wide in (mx.float64, mx.float32):
        if wide in dtypes:
            return wide
    return mx.float32  # bfloat16 and float16 together


def _compute_dtype(dtype: mx.Dtype) -> mx.Dtype:
    """The accumulation dtype of D12: float32 for half types, the dtype itself otherwise."""
    return mx.float32 if dtype in _LOW else dtype


def _no_tokens(lead: tuple[int, ...]) -> bool:
    """Whether the leading (token) axes hold no element (module docstring, empty token sets)."""
    return 0 in lead


_EXPONENT_BITS = {
    mx.float32: (mx.int32, 0x7F800000, 2.0**126),
    mx.float64: (mx.int64, 0x7FF0000000000000, 2.0**1022),
}
"""The integer view and exponent mask of each compute dtype (an IEEE number with its mantissa
bits cleared is the largest power of two not above it), and the cap of ``s``: the largest power
of two whose reciprocal is a normal number (Metal flushes subnormals to zero)."""


def _row_scale(x: Array) -> Array:
    """``s = 2^floor(log2(max(max|x|, 1)))`` over the last axis (keepdims), exact and without
    gradient (:func:`hcref.norms.row_scale`), capped at 2^126 (float32) / 2^1022 (float64) so that
    ``1/s`` is a normal number; ``x / s`` then lies in ``[-4, 4)``. x (..., w) float32/float64 -> s (..., 1)."""
    x = mx.stop_gradient(x)
    bits, mask, cap = _EXPONENT_BITS[x.dtype]
    amax = mx.clip(mx.maximum(x.max(axis=-1, keepdims=True), -x.min(axis=-1, keepdims=True)), 1.0, cap)
    return mx.view(mx.view(amax, bits) & mx.array(mask, dtype=bits), x.dtype)


def _stream(dtype: mx.Dtype) -> AbstractContextManager[Any]:
    """The CPU stream for float64 (MLX has no float64 on the GPU); the default stream otherwise."""
    if dtype == mx.float64 and mx.default_device().type != mx.cpu:
        return mx.stream(mx.cpu)
    return nullcontext()


# --- ends ---------------------------------------------------------------------------------


def expand(x: Array, n: int) -> Array:
    """See :func:`hcref.expand`: ``H[..., i, :] = x``. Shapes: x (..., d) -> H (..., n, d)."""
    v.check_expand(meta("x", x), n)
    with _stream(x.dtype):
        return mx.broadcast_to(mx.expand_dims(x, -2), (*x.shape[:-1], n, x.shape[-1]))


def reduce(H: Array) -> Array:
    """See :func:`hcref.reduce`: ``x = sum_i H[..., i, :]``. Shapes: H (..., n, d) -> x (..., d)."""
    v.check_reduce(meta("H", H))
    with _stream(H.dtype):
        return H.sum(axis=-2)


def frac_split(x: Array, m: int) -> Array:
    """See :func:`hcref.frac_split`: ``H[..., i, :] = x[..., i*e:(i+1)*e]``. Shapes: x (..., d) -> H (..., m, e)."""
    v.check_frac_split(meta("x", x), m)
    with _stream(x.dtype):
        return x.reshape(*x.shape[:-1], m, x.shape[-1] // m)


def frac_merge(H: Array) -> Array:
    """See :func:`hcref.frac_merge`: ``x[..., i*e + c] = H[..., i, c]``. Shapes: H (..., m, e) -> x (..., m*e)."""
    v.check_frac_merge(meta("H", H))
    with _stream(H.dtype):
        return H.reshape(*H.shape[:-2], H.shape[-2] * H.shape[-1])


# --- shared coefficient and mixing math (hcref._core) -----------------------------------------


def _norm(kind: str, x: Array, params: Mapping[str, Array], ct: mx.Dtype) -> Array:
    """The shared norm of D1 over the last axis, in ``ct``, scale-safe (module docstring,
    :mod:`hcref.norms`): on ``x' = x / s`` with ``eps / s / s``,

    layernorm: ``weight * (x' - mean(x')) r' + bias``, ``r' = max(var(x') + eps', tiny)^(-1/2)``
    (eps 1e-5); rmsnorm: ``weight * x' r'``, ``r' = (mean(x'^2) + eps')^(-1/2)`` (eps 1e-6); none: ``x``.
    """
    if kind == "none":
        return x
    s = _row_scale(x)
    xs = x * (1 / s)  # exact: 1/s is a power of two
    if kind == "layernorm":
        xc = xs - xs.mean(axis=-1, keepdims=True)
        var = (xc * xc).mean(axis=-1, keepdims=True) + LAYERNORM_EPS / s / s
        r = mx.rsqrt(mx.maximum(var, mx.finfo(ct).smallest_normal))
        return params["norm_weight"].astype(ct) * (xc * r) + params["norm_bias"].astype(ct)
    r = mx.rsqrt((xs * xs).mean(axis=-1, keepdims=True) + RMSNORM_EPS / s / s)
    return params["norm_weight"].astype(ct) * (xs * r)


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
    """See ``hcref._core.coeffs``::

        H_bar = norm(H)                                      (identity without use_norm)
        alpha = s_alpha * tanh(H_bar W_alpha) + static_alpha (tanh, s: identity / 1 when switched off)
        beta  = s_beta  * tanh(H_bar W_beta)  + static_beta

    Shapes: H (..., k, w), static_alpha (k, c), static_beta (k,) -> alpha (..., k, c), beta (..., k).
    The two projections run as one matmul against ``[W_alpha | W_beta]`` (w, c+1).
    """
    out_dtype = _promote(H, *params.values())
    ct = _compute_dtype(out_dtype)
    lead = tuple(H.shape[:-2])
    with _stream(out_dtype):
        if _no_tokens(lead):
            return mx.zeros((*lead, *static_alpha.shape), out_dtype), mx.zeros((*lead, *static_beta.shape), out_dtype)
        if not dynamic:
            alpha = mx.broadcast_to(static_alpha.astype(out_dtype), (*lead, *static_alpha.shape))
            beta = mx.broadcast_to(static_beta.astype(out_dtype), (*lead, *static_beta.shape))
            return alpha, beta
        x = H.astype(ct)
        if use_norm:
            x = _norm(norm, x, params, ct)
        W = mx.concatenate([params["W_alpha"].astype(ct), params["W_beta"].astype(ct)[:, None]], axis=-1)
        u = x @ W  # (..., k, c+1)
        if use_tanh:
            u = mx.tanh(u)
        c = static_alpha.shape[-1]
        u_alpha, u_beta = u[..., :c], u[..., c]
        if use_scale:
            u_alpha = params["s_alpha"].astype(ct) * u_alpha
            u_beta = params["s_beta"].astype(ct) * u_beta
        alpha = u_alpha + static_alpha.astype(ct)
        beta = u_beta + static_beta.astype(ct)
        return alpha.astype(out_dtype), beta.astype(out_dtype)


def _mix(H: Array, alpha: Array) -> Array:
    """``mix = alpha^T H`` (``hcref._core.mix``): ``mix[..., t, :] = sum_i alpha[..., i, t] H[..., i, :]``.

    Shapes: H (..., k, w), alpha (..., k, c) -> mix (..., c, w), in the dtype of ``H`` (the state's),
    computed in at least float32 (the promotion of H and alpha) and rounded once.
    """
    ct = _compute_dtype(_promote(H, alpha))
    lead = tuple(H.shape[:-2])
    with _stream(ct):
        if _no_tokens(lead):
            return mx.zeros((*lead, alpha.shape[-1], H.shape[-1]), H.dtype)
        mixed = mx.swapaxes(alpha.astype(ct), -1, -2) @ H.astype(ct)
        return mixed.astype(H.dtype)


def _write(y: Array, H_res: Array, beta: Array) -> Array:
    """``H_out = beta[..., None] * y + H_res`` with y (..., 1 or k, w) broadcast to H_res (..., k, w).

    The result has the promoted dtype of ``y`` and ``H_res`` (the state's; ``beta`` may be float32
    coefficients on a bfloat16 state). Half inputs are written in float32 and rounded once; the
    VJP's reduction ``g_beta = sum_c g y`` then accumulates in float32 as well.
    """
    out_dtype = _promote(y, H_res)
    ct = _compute_dtype(_promote(y, H_res, beta))
    with _stream(ct):
        if _no_tokens(tuple(H_res.shape[:-2])):
            return mx.zeros(H_res.shape, out_dtype)
        out = beta.astype(ct)[..., None] * y.astype(ct) + H_res.astype(ct)
        return out.astype(out_dtype)


def _coeff_check(family: str, H: Any, params: Any, norm: Any, use_tanh: Any, use_norm: Any, use_scale: Any) -> bool:
    metas = _param_metas(params)
    _, _, dynamic = v.check_coeffs(family, meta("H", H), params, metas, norm, use_tanh, use_norm, use_scale)
    return dynamic


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
    """See :func:`hcref.hc_coeffs` (HC paper Eqs. 10-13)::

        alpha = s_alpha * tanh(norm(H) W_alpha) + [A_m | A_r]     (..., n, n+1)
        beta  = s_beta  * tanh(norm(H) W_beta)  + B               (..., n)

    Static params (``A_m``, ``A_r``, ``B`` only) give ``alpha = [A_m | A_r]``, ``beta = B`` broadcast.

    Shapes: H (..., n, d) -> alpha (..., n, n+1), beta (..., n).
    """
    dynamic = _coeff_check("hc", H, params, norm, use_tanh, use_norm, use_scale)
    with _stream(_promote(H, *params.values())):
        static_alpha = mx.concatenate([params["A_m"][:, None], params["A_r"]], axis=-1)
    return _coeffs(
        H, static_alpha, params["B"], params,
        dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale,
    )


def hc_width(H: Array, alpha: Array) -> tuple[Array, Array]:
    """See :func:`hcref.hc_width`: ``mix = alpha^T H``, ``h0 = mix[0] = A_m^T H``, ``H_res = mix[1:] = A_r^T H``.

    Shapes: H (..., n, d), alpha (..., n, n+1) -> h0 (..., d), H_res (..., n, d).
    """
    v.check_width("hc", meta("H", H), meta("alpha", alpha))
    mixed = _mix(H, alpha)
    with _stream(mixed.dtype):
        return mixed[..., 0, :], mixed[..., 1:, :]


def hc_depth(y: Array, H_res: Array, beta: Array) -> Array:
    """See :func:`hcref.hc_depth`: ``H_out[j, c] = beta[j] y[c] + H_res[j, c]`` (HC paper Eq. 2).

    Shapes: y (..., d), H_res (..., n, d), beta (..., n) -> H_out (..., n, d).
    """
    v.check_depth("hc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    with _stream(_promote(y, H_res, beta)):
        y1 = mx.expand_dims(y, -2)
    return _write(y1, H_res, beta)


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
    """See :func:`hcref.fc_coeffs` (FC paper Eqs. 11-14)::

        alpha = s_alpha * tanh(norm(H) W_alpha) + [Y | A]     (..., m, 2m)
        beta  = s_beta  * tanh(norm(H) W_beta)  + B           (..., m)

    Shapes: H (..., m, e) -> alpha (..., m, 2m), beta (..., m).
    """
    dynamic = _coeff_check("fc", H, params, norm, use_tanh, use_norm, use_scale)
    with _stream(_promote(H, *params.values())):
        static_alpha = mx.concatenate([params["Y"], params["A"]], axis=-1)
    return _coeffs(
        H, static_alpha, params["B"], params,
        dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale,
    )


def fc_width(H: Array, alpha: Array) -> tuple[Array, Array]:
    """See :func:`hcref.fc_width`: ``mix = alpha^T H``, ``h0 = concat_k (Y^T H)[k]``, ``H_res = A^T H``.

    Shapes: H (..., m, e), alpha (..., m, 2m) -> h0 (..., d = m*e), H_res (..., m, e).
    """
    m, e = v.check_width("fc", meta("H", H), meta("alpha", alpha))
    mixed = _mix(H, alpha)
    with _stream(mixed.dtype):
        return mixed[..., :m, :].reshape(*H.shape[:-2], m * e), mixed[..., m:, :]


def fc_depth(y: Array, H_res: Array, beta: Array) -> Array:
    """See :func:`hcref.fc_depth`: ``H_out[j, c] = beta[j] y[j*e + c] + H_res[j, c]`` (diagonal write, D6).

    Shapes: y (..., d = m*e), H_res (..., m, e), beta (..., m) -> H_out (..., m, e).
    """
    v.check_depth("fc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    with _stream(_promote(y, H_res, beta)):
        y2 = y.reshape(H_res.shape)
    return _write(y2, H_res, beta)


__all__ = [
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
