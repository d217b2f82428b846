"""The ops of the hcref contract as pure functions on jax arrays (jit, vmap and grad through them).

Every function has the name, arguments, shapes and errors of the reference function of the
same name in :mod:`hcref` (the specification; see its docstrings for the formulas). Inputs are
checked with :mod:`hcref.validation` on shapes and dtypes only, which are static under
``jax.jit`` / ``jax.vmap``: the checks run once, at trace time, with no Python branching on
traced values, and raise word for word the reference's errors. Parameters are a flat mapping
(a dict pytree) with the contract's keys. ``n`` / ``m`` and the keyword options (``norm``,
``use_tanh``, ``use_norm``, ``use_scale``) are Python values: mark them static when jitting,
e.g. ``jax.jit(hc_coeffs, static_argnames=("norm", "use_tanh", "use_norm", "use_scale"))``.

Precision (decision D12). Every op computes in at least float32: float64 and float32 inputs in
their promoted dtype; for bfloat16/float16 inputs the coefficient path (norm, projections, tanh,
scales) is computed in float32, the mixing ``alpha^T H`` is a ``dot_general`` with
``preferred_element_type=float32``, the write ``beta y + H_res`` and the stream sum accumulate in
float32, and results are rounded once (so their VJPs accumulate in float32 too). Mixed precision
as production runs it: ``*_coeffs`` return the promoted dtype of ``H`` and the parameters
(float32 coefficients for float32 parameters on a bfloat16 state); ``*_width`` return the dtype
of ``H`` and ``*_depth`` the promoted dtype of ``y`` and ``H_res`` (the state's dtype, whatever the
coefficients' dtype). Gradients come back in each input's dtype. The small contractions of the
coefficient path and of the mixing run at ``Precision.HIGHEST`` (no TF32/bf16 passes on GPUs).

Scale-safe norms (D12, :mod:`hcref.norms`). Per row of width ``w``,
``s = 2^floor(log2(max(max|x|, 1)))`` (exactly: the exponent bits of ``max(max|x|, 1)``, by
``lax.bitcast_convert_type``), capped at 2^126 (float32) / 2^1022 (float64) so that ``1/s`` is a normal number
(flush-to-zero cannot touch it), ``x' = x * (1/s)`` (exact) and ``eps' = eps / s / s``:

    layernorm: x_hat = (x' - mean(x')) r',  r' = max(mean((x' - mean(x'))^2) + eps', tiny)^(-1/2),
               out = weight * x_hat + bias
    rmsnorm:   r' = (mean(x'^2) + eps')^(-1/2),
               rmsnorm(x) W = r' (x' (diag(weight) W))  =  r (x (diag(weight) W)),  r = r' / s

(``tiny``: the compute dtype's smallest normal number; the reference floors at the smallest
subnormal, which differs only in the gradient of a row of equal entries beyond about 3e16 in
float32, where ``x_hat = 0`` either way, and a normal floor is immune to flush-to-zero). They
equal the textbook forms in real arithmetic and bit for bit at ordinary scales (``s = 1``). The
rmsnorm stays folded into the coefficient projection (``_rms_proj``, the normalised H is never
materialised): ``(r' / s) (x Wn)`` while ``2 max(s) max_j sum_i |Wn_ij|`` is below a quarter of the
dtype's largest number (so ``x Wn`` cannot overflow: for float32 and weights of order 1 that is
activations up to about 1e35 / w), else ``r' (x' Wn)`` on ``x'`` (entries in ``[-4, 4)``); the
two are equal bit for bit where both are finite, so any finite input with finite weights gives
finite coefficients and gradients.

Pallas kernels (issue 15). On a TPU (``jax.default_backend() == "tpu"``) every HC/FC op runs on the
Pallas kernels of :mod:`hcref_jax.pallas` for the inputs they take (:func:`hcref_jax.pallas.supported`:
float32/bfloat16, at least one token, up to 16 streams, rows that fit VMEM; a static site's
coefficients stay a broadcast) and on the XLA path below otherwise; so do the NNX modules, whose
one-call ``module(H, branch)`` takes the fused site path (``hc_site_width`` / ``hc_site_depth``).
The switch is :func:`hcref_jax.pallas.set_mode` / ``use_mode`` or the environment variable
``HCREF_JAX_PALLAS``: ``"auto"`` (default, the above), ``"pallas"`` (the kernels wherever they take
the input, in TPU interpret mode off a TPU: slow, for tests) or ``"xla"`` (never). The choice is
made when an op is traced: a function jitted before the switch keeps its path. Validation (and so
every error) comes first and is the same on both paths. :func:`pallas_op` makes the choice.

Differentiation: the mixing (``*_width``), the write (``*_depth``) and the rmsnorm-folded projection
of ``*_coeffs`` are ``jax.custom_vjp`` functions with hand-written VJPs (reverse mode, also nested,
under jit and vmap; forward mode, ``jax.jvp`` / ``jax.jacfwd``, is not available for them). For
float32/float64 the mixing is written as unrolled broadcast multiply-adds over the k streams, which
XLA fuses with its consumers: on a 2-core CPU (n=4, 4096 tokens, d=1024) this halves the site's
forward+backward time against batched per-token ``dot_general``s, whose (k x c) matrices are too
small for a matmul kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from functools import partial
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


def promote(*arrays: Any) -> Any:
    """The promoted dtype of ``arrays`` (jax's rules: bfloat16 with float16 gives float32)."""
    return jnp.result_type(*(a.dtype for a in arrays))


_EXPONENT_BITS = {
    jnp.dtype(jnp.float32): (jnp.int32, 0x7F800000, 2.0**126),
    jnp.dtype(jnp.float64): (jnp.int64, 0x7FF0000000000000, 2.0**1022),
}
"""The integer type and exponent mask of each compute dtype (an IEEE number with its mantissa
bits cleared is the largest power of two not above it), and the cap of ``s``: the largest power
of two whose reciprocal is a normal number (XLA on CPU flushes subnormals to zero)."""


def _row_scale(x: Array) -> Array:
    """``s = 2^floor(log2(max(max|x|, 1)))`` over the last axis (keepdims), exact and without
    gradient (:func:`hcref.norms.row_scale`), capped at 2^126 (float32) / 2^1022 (float64) so that
    ``1/s`` is a normal number; ``x / s`` then lies in ``[-4, 4)``. x (..., w) float32/float64 -> s (..., 1)."""
    x = jax.lax.stop_gradient(x)
    bits, mask, cap = _EXPONENT_BITS[jnp.dtype(x.dtype)]
    amax = jnp.clip(jnp.maximum(jnp.max(x, axis=-1, keepdims=True), -jnp.min(x, axis=-1, keepdims=True)), 1.0, cap)
    exponent = jax.lax.bitcast_convert_type(amax.astype(x.dtype), bits) & jnp.asarray(mask, bits)
    return jax.lax.bitcast_convert_type(exponent, x.dtype)


# --- Pallas dispatch (module docstring) -------------------------------------------------------

_IN_KERNEL_OP: ContextVar[bool] = ContextVar("hcref_jax_in_kernel_op", default=False)
"""Set while a kernel op runs: any op it falls back to (hcref_jax.pallas calls these ops for inputs
its kernels do not take) takes the XLA path, so the two never call each other in a loop."""


def pallas_op(name: str, *args: Any) -> Callable[..., Any] | None:
    """The Pallas kernel op ``hcref_jax.pallas.Forced.<name>`` when the mode asks for the kernels here
    (``"auto"`` on a TPU, or ``"pallas"``) and :func:`hcref_jax.pallas.supported` takes ``args`` (the
    op's positional inputs, already validated); ``None`` for the XLA path. Any name the kernel
    package lists in ``hcref_jax.pallas.OPS`` and ``Forced`` provides is dispatched (the mHC ops
    join when it adds them); a package that does not import (no Pallas in this jax) means XLA."""
    if _IN_KERNEL_OP.get():
        return None
    try:
        from . import pallas  # deferred: hcref_jax.pallas imports this module
    except ImportError:  # pragma: no cover - a jax without Pallas
        return None
    kernel = getattr(pallas.Forced, name, None)
    if kernel is None or name not in pallas.OPS or not pallas.mode.want_kernels():
        return None
    if not pallas.supported(name, *args):
        return None

    def run(*call_args: Any, **kwargs: Any) -> Any:
        token = _IN_KERNEL_OP.set(True)
        try:
            return kernel(*call_args, **kwargs)
        finally:
            _IN_KERNEL_OP.reset(token)

    return run


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
    out_dtype = promote(H, *params.values())
    ct = compute_dtype(out_dtype)
    lead = H.shape[:-2]
    if not dynamic:
        alpha = jnp.broadcast_to(static_alpha.astype(out_dtype), (*lead, *static_alpha.shape))
        beta = jnp.broadcast_to(static_beta.astype(out_dtype), (*lead, *static_beta.shape))
        return alpha, beta
    x = jnp.asarray(H).astype(ct)
    W = jnp.concatenate([params["W_alpha"].astype(ct), params["W_beta"].astype(ct)[:, None]], axis=-1)
    if use_norm and norm == "rmsnorm":
        # rmsnorm(x) W = r' * (x' (diag(weight) W)), scale-safe (module docstring): the
        # normalised H is never materialised (one reduction pass and one matmul pass over H; on a
        # 2-core CPU this is 6x faster than normalising first, as in hcref_torch).
        u = _rms_proj(x, params["norm_weight"].astype(ct)[:, None] * W, RMSNORM_EPS)
    else:
        if use_norm and norm == "layernorm":
            s = _row_scale(x)
            xs = x * (1 / s)
            xc = xs - jnp.mean(xs, axis=-1, keepdims=True)
            var = jnp.mean(xc * xc, axis=-1, keepdims=True) + LAYERNORM_EPS / s / s
            r = jax.lax.rsqrt(jnp.maximum(var, float(np.finfo(ct).tiny)))
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


def _lin(coef: Array, rows: Array) -> Array:
    """``sum_i coef[..., i, :, None] * rows[..., i, None, :]``: coef (..., k, c), rows (..., k, w) -> (..., c, w).

    Unrolled over the (static) k as broadcast multiply-adds rather than a batched ``dot_general``:
    with k and c of a few units, XLA fuses this into one elementwise pass that its consumers can
    absorb (on CPU a batched (k x c)^T (k x w) ``dot_general`` per token is 2x slower and always
    writes its result to memory)."""
    out = coef[..., 0, :, None] * rows[..., 0, None, :]
    for i in range(1, coef.shape[-2]):
        out = out + coef[..., i, :, None] * rows[..., i, None, :]
    return out


def _rows_dot(A: Array, B: Array) -> Array:
    """``out[..., i, j] = sum_w A[..., i, w] B[..., j, w]`` as one batched ``dot_general`` (a
    matrix-vector product when B has one row)."""
    if B.shape[-2] == 1:
        return jnp.einsum("...iw,...w->...i", A, B[..., 0, :], precision=_HIGHEST)[..., None]
    return jnp.einsum("...iw,...jw->...ij", A, B, precision=_HIGHEST)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _rms_proj(x: Array, Wn: Array, eps: float) -> Array:
    """``rmsnorm(x) W = r' (x' Wn)``, ``Wn = diag(weight) W``, per row ``x' = x / s`` and
    ``r' = (mean(x'^2) + eps / s / s)^(-1/2)`` (module docstring; equal to ``r (x Wn)`` with
    ``r = r' / s = (mean(x^2) + eps)^(-1/2)``, the form computed while ``x Wn`` cannot overflow).
    ``eps``: 1e-6 for HC/FC's rmsnorm (D1) and for mHC's RMS scaling of the flattened state (D9).
    No floor is needed under ``r'``: for ``s = 1`` the sum holds ``eps``, for ``s > 1`` some
    ``|x'_i| >= 1``, so ``mean(x'^2) >= 1/w``.

    Shapes: x (..., w), Wn (w, o) -> (..., o). Hand-written VJP (``_rms_proj_bwd``)."""
    return _rms_proj_fwd(x, Wn, eps)[0]


def _rms_proj_fwd(x: Array, Wn: Array, eps: float) -> tuple[Array, tuple[Array, ...]]:
    s = _row_scale(x)
    inv_s = 1 / s  # an exact power of two
    r = jax.lax.rsqrt(jnp.mean(jnp.square(x * inv_s), axis=-1, keepdims=True) + eps / s / s)
    # r' (x' Wn) and (r' / s) (x Wn) are equal bit for bit (power-of-two scalings are exact) unless
    # x Wn overflows. The second form lets XLA fuse x' into the reduction only (6x faster on CPU); it
    # is used when |x Wn| <= 2 max(s) max_j sum_i |Wn_ij| is safely finite, the first otherwise.
    bound = 2 * jnp.max(s, initial=1.0) * jnp.max(jnp.sum(jnp.abs(Wn), axis=0), initial=0.0)
    u = jax.lax.cond(
        bound < float(np.finfo(x.dtype).max) / 4,
        lambda: (r * inv_s) * jnp.matmul(x, Wn, precision=_HIGHEST),
        lambda: r * jnp.matmul(x * inv_s, Wn, precision=_HIGHEST),
    )
    return u, (x, Wn, r, inv_s, u)


def _rms_proj_bwd(eps: float, res: tuple[Array, ...], g: Array) -> tuple[Array, Array]:
    # u = r p, p = x' Wn, dr/dx' = -r^3 x' / w:  g_x' = (r g) Wn^T - (r^2 / w) <g, u> x', g_x = g_x' / s,
    # g_Wn = x'^T (r g) = x^T (r g / s) summed over all rows (every intermediate of the order of g).
    # g_x is written as o outer-product terms so that it fuses with the other contributions to g_H
    # (one pass over H, no (rows, w) matmul result).
    x, Wn, r, inv_s, u = res
    w = x.shape[-1]
    gr = r * g
    c = jnp.sum(g * u, axis=-1, keepdims=True) * (r * r / w)
    g_x = (_lin(gr[..., :, None], Wn.T)[..., 0, :] - x * (c * inv_s)) * inv_s
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    g_Wn = jax.lax.dot_general(
        x.reshape(rows, w), (gr * inv_s).reshape(rows, gr.shape[-1]), (((0,), (0,)), ((), ())), precision=_HIGHEST
    )
    return g_x, g_Wn


_rms_proj.defvjp(_rms_proj_fwd, _rms_proj_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mix2(H: Array, alpha: Array, split: int) -> tuple[Array, Array]:
    """``(alpha[..., :split]^T H, alpha[..., split:]^T H)`` (see ``hcref._core.mix``), in H's dtype.

    Shapes: H (..., k, w), alpha (..., k, c) -> (..., split, w), (..., c - split, w). Hand-written VJP:
    ``g_H = alpha g_mix`` as one elementwise pass (the two cotangents are never concatenated) and
    ``g_alpha = H g_mix^T`` as batched ``dot_general``s. Half inputs (same dtype) give float32
    results: a ``dot_general`` with ``preferred_element_type=float32`` (D12), and a VJP computed in
    float32 and rounded once to the input dtypes."""
    if H.dtype in _LOW:
        parts = (alpha[..., :split], alpha[..., split:])
        return tuple(  # type: ignore[return-value]
            jnp.einsum("...kc,...kw->...cw", a, H, precision=_HIGHEST, preferred_element_type=jnp.float32)
            for a in parts
        )
    return _lin(alpha[..., :split], H), _lin(alpha[..., split:], H)


def _mix2_fwd(H: Array, alpha: Array, split: int) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    return _mix2(H, alpha, split), (H, alpha)


def _mix2_bwd(split: int, res: tuple[Array, Array], g: tuple[Array, Array]) -> tuple[Array, Array]:
    H_in, alpha_in = res
    ct = compute_dtype(H_in.dtype)
    H, alpha = H_in.astype(ct), alpha_in.astype(ct)
    g_first, g_rest = (jnp.asarray(x).astype(ct) for x in g)
    # g_H[k] = sum_t alpha[k, t] g_mix[t]: _lin over t with coef alpha^T (..., c, k).
    g_H = _lin(jnp.swapaxes(alpha[..., :split], -1, -2), g_first) + _lin(
        jnp.swapaxes(alpha[..., split:], -1, -2), g_rest
    )
    g_alpha = jnp.concatenate([_rows_dot(H, g_first), _rows_dot(H, g_rest)], axis=-1)
    return g_H.astype(H_in.dtype), g_alpha.astype(alpha_in.dtype)


_mix2.defvjp(_mix2_fwd, _mix2_bwd)


def _mix(H: Array, alpha: Array, split: int) -> tuple[Array, Array]:
    """``mix = alpha^T H`` (see ``hcref._core.mix``) split after column ``split``:
    ``mix[..., t, :] = sum_i alpha[..., i, t] H[..., i, :]``.

    Shapes: H (..., k, w), alpha (..., k, c) -> (..., split, w), (..., c - split, w), in the dtype
    of ``H`` (the state's). Computed in the promotion of H and alpha (half inputs accumulate in
    float32 through ``preferred_element_type``) and rounded once; the VJP accumulates in float32 too.
    """
    H, alpha = jnp.asarray(H), jnp.asarray(alpha)
    common = promote(H, alpha)
    first, rest = _mix2(H.astype(common), alpha.astype(common), split)
    return first.astype(H.dtype), rest.astype(H.dtype)


@jax.custom_vjp
def _write_ct(y: Array, H_res: Array, beta: Array) -> Array:
    return beta[..., :, None] * y + H_res


def _write_fwd(y: Array, H_res: Array, beta: Array) -> tuple[Array, tuple[Array, Array]]:
    return _write_ct(y, H_res, beta), (y, beta)


def _write_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array, Array]:
    y, beta = res
    if y.shape[-2] == 1:  # HC: g_y = beta^T g (one elementwise pass), g_beta = g y (matrix-vector)
        g_y = _lin(beta[..., :, None], g)
        g_beta = _rows_dot(g, y)[..., 0]
    else:  # FC: diagonal write, same shapes
        g_y = beta[..., :, None] * g
        g_beta = jnp.sum(g * y, axis=-1)
    return g_y, g, g_beta


_write_ct.defvjp(_write_fwd, _write_bwd)


def _write(y: Array, H_res: Array, beta: Array) -> Array:
    """``H_out = beta[..., None] * y + H_res`` with y broadcastable to H_res (HC: (..., 1, w), FC:
    (..., k, w)), computed in the accumulation dtype and rounded once, so that the VJP's
    reductions (``g_beta = sum_c g y``, HC's ``g_y = beta^T g``) accumulate in float32 for half inputs.
    Hand-written VJP (HC's ``g_beta`` as a matrix-vector ``dot_general``, not a reduction of a broadcast).
    The result has the promoted dtype of ``y`` and ``H_res`` (the state's; ``beta`` may be float32
    coefficients on a bfloat16 state)."""
    out_dtype = promote(y, H_res)
    ct = compute_dtype(promote(y, H_res, beta))
    y, H_res, beta = (jnp.asarray(a).astype(ct) for a in (y, H_res, beta))
    return _write_ct(y, H_res, beta).astype(out_dtype)


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
    kernel = pallas_op("hc_coeffs", H, params)
    if kernel is not None:
        return kernel(H, params, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale)  # type: ignore[no-any-return]
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
    kernel = pallas_op("hc_width", H, alpha)
    if kernel is not None:
        return kernel(H, alpha)  # type: ignore[no-any-return]
    h0, H_res = _mix(H, alpha, 1)
    return h0[..., 0, :], H_res


def hc_depth(y: Array, H_res: Array, beta: Array) -> Array:
    """See :func:`hcref.hc_depth`: ``H_out[j, c] = beta[j] y[c] + H_res[j, c]`` (HC paper Eq. 2).

    Shapes: y (..., d), H_res (..., n, d), beta (..., n) -> H_out (..., n, d).
    """
    v.check_depth("hc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    kernel = pallas_op("hc_depth", y, H_res, beta)
    if kernel is not None:
        return kernel(y, H_res, beta)  # type: ignore[no-any-return]
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
    kernel = pallas_op("fc_coeffs", H, params)
    if kernel is not None:
        return kernel(H, params, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale)  # type: ignore[no-any-return]
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
    kernel = pallas_op("fc_width", H, alpha)
    if kernel is not None:
        return kernel(H, alpha)  # type: ignore[no-any-return]
    first, H_res = _mix(H, alpha, m)
    return first.reshape(*H.shape[:-2], m * e), H_res


def fc_depth(y: Array, H_res: Array, beta: Array) -> Array:
    """See :func:`hcref.fc_depth` (diagonal write, decision D6): ``H_out[j, c] = beta[j] y[j*e + c] + H_res[j, c]``.

    Shapes: y (..., d = m*e), H_res (..., m, e), beta (..., m) -> H_out (..., m, e).
    """
    v.check_depth("fc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    kernel = pallas_op("fc_depth", y, H_res, beta)
    if kernel is not None:
        return kernel(y, H_res, beta)  # type: ignore[no-any-return]
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
    "pallas_op",
    "promote",
    "reduce",
]
