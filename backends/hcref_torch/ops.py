"""The ops of the hcref contract on torch tensors (functional, differentiable through autograd).

Every function has the name, arguments, shapes and errors of the reference function of the
same name in :mod:`hcref` (the specification; see its docstrings for the formulas). Inputs are
checked with :mod:`hcref.validation`, so error messages are word for word the reference's.

Precision (decision D12): float64 and float32 inputs are computed in their own dtype; for
bfloat16/float16 inputs the coefficient path (norm, projections, tanh) and the mixing are
accumulated in float32 and the results cast back. Autocast is switched off inside the ops so a
surrounding ``torch.autocast`` region cannot lower that precision. The result dtype is the
promotion of the input dtypes (the input dtype when they share one).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from hcref import validation as v
from hcref.norms import LAYERNORM_EPS, RMSNORM_EPS
from hcref.validation import ArrayMeta

Tensor = torch.Tensor

_NAMES = {
    torch.float64: "float64",
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}
_LOW = (torch.bfloat16, torch.float16)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (other dtypes by their torch name without ``torch.``)."""
    return _NAMES.get(dtype, str(dtype).removeprefix("torch."))


def meta(name: str, x: Any) -> ArrayMeta:
    """The :class:`hcref.validation.ArrayMeta` of a tensor; anything else is a ``TypeError``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return ArrayMeta(tuple(x.shape), dtype_name(x.dtype), x.is_floating_point())


def _param_metas(params: Any) -> dict[str, ArrayMeta]:
    if not isinstance(params, Mapping):
        return {}
    return {key: meta(f"params[{key!r}]", value) for key, value in params.items()}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of D12: float32 for half types, the dtype itself otherwise."""
    return torch.float32 if dtype in _LOW else dtype


def _promote(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _apply(fn: type[torch.autograd.Function], *args: Any) -> Any:
    return fn.apply(*args)  # type: ignore[no-untyped-call]


def _autocast_on(device: str) -> bool:
    try:
        return torch.is_autocast_enabled(device)
    except TypeError:  # torch < 2.4: no per-device query
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _no_autocast(x: Tensor) -> AbstractContextManager[Any]:
    device = x.device.type
    if _autocast_on(device):
        return torch.autocast(device_type=device, enabled=False)
    return nullcontext()


# --- ends ---------------------------------------------------------------------------------


def expand(x: Tensor, n: int) -> Tensor:
    """See :func:`hcref.expand`. Shapes: x (..., d) -> H (..., n, d) (a contiguous copy)."""
    v.check_expand(meta("x", x), n)
    return x.unsqueeze(-2).expand(*x.shape[:-1], n, x.shape[-1]).contiguous()


def reduce(H: Tensor) -> Tensor:
    """See :func:`hcref.reduce`. Shapes: H (..., n, d) -> x (..., d)."""
    v.check_reduce(meta("H", H))
    return H.sum(dim=-2)


def frac_split(x: Tensor, m: int) -> Tensor:
    """See :func:`hcref.frac_split`. Shapes: x (..., d) -> H (..., m, e)."""
    v.check_frac_split(meta("x", x), m)
    return x.reshape(*x.shape[:-1], m, x.shape[-1] // m)


def frac_merge(H: Tensor) -> Tensor:
    """See :func:`hcref.frac_merge`. Shapes: H (..., m, e) -> x (..., m*e)."""
    v.check_frac_merge(meta("H", H))
    return H.reshape(*H.shape[:-2], H.shape[-2] * H.shape[-1])


# --- shared coefficient and mixing math (hcref._core) -----------------------------------------


def _coeffs(
    H: Tensor,
    static_alpha: Tensor,
    static_beta: Tensor,
    params: Mapping[str, Tensor],
    *,
    dynamic: bool,
    norm: str,
    use_tanh: bool,
    use_norm: bool,
    use_scale: bool,
) -> tuple[Tensor, Tensor]:
    """See ``hcref._core.coeffs``. H (..., k, w) -> alpha (..., k, c), beta (..., k).

    The two projections run as one matmul against ``[W_alpha | W_beta]`` (w, c+1).
    """
    out_dtype = _promote(H, *params.values())
    ct = _compute_dtype(out_dtype)
    lead = H.shape[:-2]
    if not dynamic:
        alpha = static_alpha.to(out_dtype).expand(*lead, *static_alpha.shape)
        beta = static_beta.to(out_dtype).expand(*lead, *static_beta.shape)
        return alpha, beta
    with _no_autocast(H):
        x = H.to(ct)
        w = H.shape[-1]
        W = torch.cat([params["W_alpha"].to(ct), params["W_beta"].to(ct).unsqueeze(-1)], dim=-1)
        if use_norm and norm == "rmsnorm":
            # rmsnorm(x) W = r * (x (diag(weight) W)) with r = (mean(x^2) + eps)^(-1/2) per row:
            # the normalised H is never materialised (one reduction pass and one matmul pass over H).
            r = torch.rsqrt(_apply(_SumSquares, x) / w + RMSNORM_EPS)
            u = r * (x @ (params["norm_weight"].to(ct).unsqueeze(-1) * W))
        else:
            if use_norm and norm == "layernorm":
                x = F.layer_norm(x, (w,), params["norm_weight"].to(ct), params["norm_bias"].to(ct), LAYERNORM_EPS)
            u = x @ W  # (..., k, c+1)
        if use_tanh:
            u = torch.tanh(u)
        c = static_alpha.shape[-1]
        u_alpha, u_beta = u[..., :c], u[..., c]
        if use_scale:
            alpha = torch.addcmul(static_alpha.to(ct), params["s_alpha"].to(ct), u_alpha)
            beta = torch.addcmul(static_beta.to(ct), params["s_beta"].to(ct), u_beta)
        else:
            alpha = u_alpha + static_alpha.to(ct)
            beta = u_beta + static_beta.to(ct)
    return alpha.to(out_dtype), beta.to(out_dtype)


class _SumSquares(torch.autograd.Function):
    """``sum(x^2)`` over the last axis (keepdim) in one reduction pass; VJP ``2 g x``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        norm: Tensor = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        return norm.square()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        x: Tensor = ctx.saved_tensors[0]
        return x * (2 * g)


def _mix(H: Tensor, alpha: Tensor, split: int) -> tuple[Tensor, Tensor]:
    """``mix = alpha^T H`` (see ``hcref._core.mix``) split into rows ``[:split]`` and ``[split:]``.

    Shapes: H (..., k, w), alpha (..., k, c) -> (..., split, w), (..., c - split, w).
    """
    out_dtype = _promote(H, alpha)
    ct = _compute_dtype(out_dtype)
    with _no_autocast(H):
        first, rest = _apply(_Mix, H.to(ct), alpha.to(ct), split)
    return first.to(out_dtype), rest.to(out_dtype)


class _Mix(torch.autograd.Function):
    """``mix = alpha^T H`` split after row ``split``, with the reference's VJP (``hcref._core.mix_vjp``):
    ``g_H = alpha g_mix``, ``g_alpha = H g_mix^T``, ``g_mix = [g_first ; g_rest]``. One batched matmul
    each way; no zero-filled gradient buffers for the two views."""

    @staticmethod
    def forward(ctx: Any, H: Tensor, alpha: Tensor, split: int) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(H, alpha)
        ctx.split = split
        mixed = torch.matmul(alpha.transpose(-1, -2), H)
        return mixed[..., :split, :], mixed[..., split:, :]

    @staticmethod
    def backward(ctx: Any, g_first: Tensor | None, g_rest: Tensor | None) -> tuple[Tensor | None, Tensor | None, None]:
        H, alpha = ctx.saved_tensors
        c, w = alpha.shape[-1], H.shape[-1]
        lead = H.shape[:-2]
        if g_first is None:
            g_first = H.new_zeros(*lead, ctx.split, w)
        if g_rest is None:
            g_rest = H.new_zeros(*lead, c - ctx.split, w)
        g_mix = torch.cat([g_first, g_rest], dim=-2)
        with _no_autocast(H):
            g_H = torch.matmul(alpha, g_mix) if ctx.needs_input_grad[0] else None
            g_alpha = torch.matmul(H, g_mix.transpose(-1, -2)) if ctx.needs_input_grad[1] else None
        return g_H, g_alpha, None


def _coeff_check(family: str, H: Any, params: Any, norm: Any, use_tanh: Any, use_norm: Any, use_scale: Any) -> bool:
    metas = _param_metas(params)
    _, _, dynamic = v.check_coeffs(family, meta("H", H), params, metas, norm, use_tanh, use_norm, use_scale)
    return dynamic


# --- HC -------------------------------------------------------------------------------------


def hc_coeffs(
    H: Tensor,
    params: Mapping[str, Tensor],
    *,
    norm: str = "layernorm",
    use_tanh: bool = True,
    use_norm: bool = True,
    use_scale: bool = True,
) -> tuple[Tensor, Tensor]:
    """See :func:`hcref.hc_coeffs`. Shapes: H (..., n, d) -> alpha (..., n, n+1), beta (..., n)."""
    dynamic = _coeff_check("hc", H, params, norm, use_tanh, use_norm, use_scale)
    static_alpha = torch.cat([params["A_m"].unsqueeze(-1), params["A_r"]], dim=-1)
    return _coeffs(
        H, static_alpha, params["B"], params,
        dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale,
    )


def hc_width(H: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """See :func:`hcref.hc_width`. Shapes: H (..., n, d), alpha (..., n, n+1) -> h0 (..., d), H_res (..., n, d).

    Both results are views of one mixed tensor (..., n+1, d).
    """
    v.check_width("hc", meta("H", H), meta("alpha", alpha))
    first, H_res = _mix(H, alpha, 1)
    return first.squeeze(-2), H_res


def hc_depth(y: Tensor, H_res: Tensor, beta: Tensor) -> Tensor:
    """See :func:`hcref.hc_depth`. Shapes: y (..., d), H_res (..., n, d), beta (..., n) -> H_out (..., n, d)."""
    v.check_depth("hc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    return _write(y.unsqueeze(-2), H_res, beta)


def _write(y: Tensor, H_res: Tensor, beta: Tensor) -> Tensor:
    """``H_out = beta[..., None] * y + H_res`` with y broadcastable to H_res, in the promoted dtype."""
    out_dtype = _promote(y, H_res, beta)
    out: Tensor = _apply(_Write, y.to(out_dtype), H_res.to(out_dtype), beta.to(out_dtype))
    return out


class _Write(torch.autograd.Function):
    """``H_out = beta[..., None] * y + H_res`` (y (..., 1 or k, w)) with the reference's VJP
    (``hcref.hc_depth_vjp`` / ``hcref.fc_depth_vjp``) as contractions, without materialising ``g * y``."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, H_res: Tensor, beta: Tensor) -> Tensor:
        ctx.save_for_backward(y, beta)
        return torch.addcmul(H_res, beta.unsqueeze(-1), y)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        y, beta = ctx.saved_tensors
        dtype = g.dtype
        ct = _compute_dtype(dtype)  # D12: the reductions over w of half inputs accumulate in float32
        g_y = g_beta = None
        with _no_autocast(g):
            if y.shape[-2] == 1:  # HC: one y written to every stream
                if ctx.needs_input_grad[0]:
                    g_y = torch.matmul(beta.to(ct).unsqueeze(-2), g.to(ct)).to(dtype)
                if ctx.needs_input_grad[2]:
                    g_beta = torch.matmul(g.to(ct), y.to(ct).transpose(-1, -2)).squeeze(-1).to(dtype)
            else:  # FC: fraction j of y to fraction j of the state
                if ctx.needs_input_grad[0]:
                    g_y = beta.unsqueeze(-1) * g
                if ctx.needs_input_grad[2]:
                    g_beta = torch.einsum("...jc,...jc->...j", g.to(ct), y.to(ct)).to(dtype)
        return g_y, g if ctx.needs_input_grad[1] else None, g_beta


# --- FC -------------------------------------------------------------------------------------


def fc_coeffs(
    H: Tensor,
    params: Mapping[str, Tensor],
    *,
    norm: str = "layernorm",
    use_tanh: bool = True,
    use_norm: bool = True,
    use_scale: bool = True,
) -> tuple[Tensor, Tensor]:
    """See :func:`hcref.fc_coeffs`. Shapes: H (..., m, e) -> alpha (..., m, 2m), beta (..., m)."""
    dynamic = _coeff_check("fc", H, params, norm, use_tanh, use_norm, use_scale)
    static_alpha = torch.cat([params["Y"], params["A"]], dim=-1)
    return _coeffs(
        H, static_alpha, params["B"], params,
        dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale,
    )


def fc_width(H: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """See :func:`hcref.fc_width`. Shapes: H (..., m, e), alpha (..., m, 2m) -> h0 (..., m*e), H_res (..., m, e)."""
    m, e = v.check_width("fc", meta("H", H), meta("alpha", alpha))
    first, H_res = _mix(H, alpha, m)
    return first.reshape(*H.shape[:-2], m * e), H_res


def fc_depth(y: Tensor, H_res: Tensor, beta: Tensor) -> Tensor:
    """See :func:`hcref.fc_depth`. Shapes: y (..., m*e), H_res (..., m, e), beta (..., m) -> H_out (..., m, e)."""
    v.check_depth("fc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    return _write(y.reshape(H_res.shape), H_res, beta)


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
