"""The kernels as ``torch.library`` custom ops (namespace ``hcref_kernels``), each with a fake
(meta) implementation and, for the forward ops, an autograd formula whose backward is another
custom op. ``torch.compile(fullgraph=True)`` sees every op as one opaque node, forward and
backward, so there is no graph break. Registering the ops does not import triton: each
implementation imports :mod:`._launch` (and with it triton) on its first call.

Ops (shapes with T = prod of the leading axes, K rows of width w, C coefficient columns):

* ``coeffs(H, W_alpha, W_beta, norm_weight?, norm_bias?, s_alpha, s_beta, static_alpha,
  static_beta, norm, use_tanh, use_scale, split, mix, out_dtype)`` -> alpha, beta, a, stats,
  first, rest; ``mix`` 0 is the contract's coefficient op, 1 also writes h0, 2 also H_res.
* ``coeffs_bwd`` -> the gradients of H and of the nine parameters (empty when absent).
* ``width(H, alpha, split, write_rest)`` -> h0 (..., split*w), H_res (..., K, w) or empty.
* ``width_bwd(H, alpha, g_first?, g_rest?, split)`` -> G_H, G_alpha.
* ``depth(y, H_res, beta, fc)`` -> H_out; ``depth_bwd(G, y, beta, fc)`` -> G_y, G_beta.
* ``mix_depth(y, H, alpha, beta, fc)`` -> H_out = A_r^T H + beta y (the fused depth step).

Double backward is not supported (the backward ops have no autograd formula).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

_NS = "hcref_kernels"


def _launch() -> Any:
    from . import _launch as launch

    return launch


def _acc(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _empty(x: Tensor) -> Tensor:
    return x.new_empty(0)


# --- coefficients -------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::coeffs", mutates_args=())
def coeffs(
    H: Tensor, W_alpha: Tensor, W_beta: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None,
    s_alpha: Tensor, s_beta: Tensor, static_alpha: Tensor, static_beta: Tensor,
    norm: int, use_tanh: bool, use_scale: bool, split: int, mix: int, out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    result: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor] = _launch().coeffs_forward(
        H, W_alpha, W_beta, norm_weight, norm_bias, s_alpha, s_beta, static_alpha, static_beta,
        norm=norm, use_tanh=use_tanh, use_scale=use_scale, split=split, mix=mix, out_dtype=out_dtype,
    )
    return result


@coeffs.register_fake
def _coeffs_fake(
    H: Tensor, W_alpha: Tensor, W_beta: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None,
    s_alpha: Tensor, s_beta: Tensor, static_alpha: Tensor, static_beta: Tensor,
    norm: int, use_tanh: bool, use_scale: bool, split: int, mix: int, out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    lead = H.shape[:-2]
    K, w = H.shape[-2], H.shape[-1]
    C = static_alpha.shape[-1]
    T = math.prod(lead)
    acc = _acc(out_dtype, H.dtype)
    return (
        H.new_empty(*lead, K, C, dtype=out_dtype),
        H.new_empty(*lead, K, dtype=out_dtype),
        H.new_empty(T * K, C + 1, dtype=acc),
        H.new_empty(T * K, 4, dtype=acc),
        H.new_empty(*lead, split * w) if mix else _empty(H),
        H.new_empty(*lead, K, w) if mix == 2 else _empty(H),
    )


def _coeffs_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    H, W_alpha, W_beta, nw, nb, sa, sb, st_a, st_b, norm, use_tanh, use_scale, split, mix, _ = inputs
    _, _, a, stats, _, _ = output
    ctx.save_for_backward(H, W_alpha, W_beta, nw, nb, sa, sb, st_a, st_b, a, stats)
    ctx.opts = (norm, use_tanh, use_scale, split, mix)
    ctx.mark_non_differentiable(a, stats)
    ctx.set_materialize_grads(False)


def _coeffs_backward(ctx: Any, g_alpha: Tensor | None, g_beta: Tensor | None, _ga: Any, _gs: Any,
                     g_first: Tensor | None, g_rest: Tensor | None) -> tuple[Any, ...]:
    H, W_alpha, W_beta, nw, nb, sa, sb, st_a, st_b, a, stats = ctx.saved_tensors
    norm, use_tanh, use_scale, split, mix = ctx.opts
    grads = coeffs_bwd(
        H, a, stats, g_alpha, g_beta, g_first if mix else None, g_rest if mix == 2 else None,
        W_alpha, W_beta, nw, nb, sa, sb, st_a, st_b, norm, use_tanh, use_scale, split,
    )
    gH, gWa, gWb, gnw, gnb, gsa, gsb, gsta, gstb = grads
    return (gH, gWa, gWb, None if nw is None else gnw, None if nb is None else gnb, gsa, gsb, gsta, gstb,
            None, None, None, None, None, None)


coeffs.register_autograd(_coeffs_backward, setup_context=_coeffs_setup)


@torch.library.custom_op(f"{_NS}::coeffs_bwd", mutates_args=())
def coeffs_bwd(
    H: Tensor, a: Tensor, stats: Tensor, g_alpha: Tensor | None, g_beta: Tensor | None,
    g_first: Tensor | None, g_rest: Tensor | None,
    W_alpha: Tensor, W_beta: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None,
    s_alpha: Tensor, s_beta: Tensor, static_alpha: Tensor, static_beta: Tensor,
    norm: int, use_tanh: bool, use_scale: bool, split: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    g = _launch().coeffs_backward(
        H, a, stats, g_alpha, g_beta, g_first, g_rest, W_alpha, W_beta, norm_weight, norm_bias,
        s_alpha, s_beta, static_alpha, static_beta, norm=norm, use_tanh=use_tanh, use_scale=use_scale, split=split,
    )
    return (
        g["H"], g["W_alpha"], g["W_beta"],
        g["norm_weight"] if norm_weight is not None else _empty(H),
        g["norm_bias"] if norm_bias is not None else _empty(H),
        g["s_alpha"], g["s_beta"], g["static_alpha"], g["static_beta"],
    )


@coeffs_bwd.register_fake
def _coeffs_bwd_fake(
    H: Tensor, a: Tensor, stats: Tensor, g_alpha: Tensor | None, g_beta: Tensor | None,
    g_first: Tensor | None, g_rest: Tensor | None,
    W_alpha: Tensor, W_beta: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None,
    s_alpha: Tensor, s_beta: Tensor, static_alpha: Tensor, static_beta: Tensor,
    norm: int, use_tanh: bool, use_scale: bool, split: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return (
        torch.empty_like(H), torch.empty_like(W_alpha), torch.empty_like(W_beta),
        torch.empty_like(norm_weight) if norm_weight is not None else _empty(H),
        torch.empty_like(norm_bias) if norm_bias is not None else _empty(H),
        torch.empty_like(s_alpha), torch.empty_like(s_beta), torch.empty_like(static_alpha),
        torch.empty_like(static_beta),
    )


# --- width --------------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::width", mutates_args=())
def width(H: Tensor, alpha: Tensor, split: int, write_rest: bool) -> tuple[Tensor, Tensor]:
    result: tuple[Tensor, Tensor] = _launch().mix_forward(
        H, alpha, None, None, split=split, write_first=True, write_rest=write_rest, fc=False, rest_dtype=H.dtype
    )
    return result


@width.register_fake
def _width_fake(H: Tensor, alpha: Tensor, split: int, write_rest: bool) -> tuple[Tensor, Tensor]:
    lead = H.shape[:-2]
    K, w = H.shape[-2], H.shape[-1]
    return H.new_empty(*lead, split * w), (H.new_empty(*lead, K, w) if write_rest else _empty(H))


def _width_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    H, alpha, split, _ = inputs
    ctx.save_for_backward(H, alpha)
    ctx.split = split
    ctx.set_materialize_grads(False)


def _width_backward(ctx: Any, g_first: Tensor | None, g_rest: Tensor | None) -> tuple[Any, ...]:
    H, alpha = ctx.saved_tensors
    if g_rest is not None and g_rest.numel() == 0 and g_rest.dim() == 1:
        g_rest = None
    if g_first is None and g_rest is None:
        return None, None, None, None
    gH, galpha = width_bwd(H, alpha, g_first, g_rest, ctx.split)
    return gH, galpha, None, None


width.register_autograd(_width_backward, setup_context=_width_setup)


@torch.library.custom_op(f"{_NS}::width_bwd", mutates_args=())
def width_bwd(
    H: Tensor, alpha: Tensor, g_first: Tensor | None, g_rest: Tensor | None, split: int
) -> tuple[Tensor, Tensor]:
    gH, galpha = _launch().mix_backward(
        H, alpha, g_first, g_rest, split=split, write_gh=True, g_alpha_dtype=alpha.dtype
    )
    return gH, galpha


@width_bwd.register_fake
def _width_bwd_fake(
    H: Tensor, alpha: Tensor, g_first: Tensor | None, g_rest: Tensor | None, split: int
) -> tuple[Tensor, Tensor]:
    return torch.empty_like(H), H.new_empty(alpha.shape, dtype=alpha.dtype)


# --- depth --------------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::depth", mutates_args=())
def depth(y: Tensor, H_res: Tensor, beta: Tensor, fc: bool) -> Tensor:
    out: Tensor = _launch().write_forward(y, H_res, beta, fc=fc, out_dtype=torch.promote_types(y.dtype, H_res.dtype))
    return out


@depth.register_fake
def _depth_fake(y: Tensor, H_res: Tensor, beta: Tensor, fc: bool) -> Tensor:
    return H_res.new_empty(H_res.shape, dtype=torch.promote_types(y.dtype, H_res.dtype))


def _depth_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    y, H_res, beta, fc = inputs
    ctx.save_for_backward(y, beta)
    ctx.fc = fc
    ctx.res_dtype = H_res.dtype
    ctx.set_materialize_grads(False)


def _depth_backward(ctx: Any, G: Tensor | None) -> tuple[Any, ...]:
    if G is None:
        return None, None, None, None
    y, beta = ctx.saved_tensors
    gy, gbeta = depth_bwd(G, y, beta, ctx.fc)
    return gy, G.to(ctx.res_dtype), gbeta, None


depth.register_autograd(_depth_backward, setup_context=_depth_setup)


@torch.library.custom_op(f"{_NS}::depth_bwd", mutates_args=())
def depth_bwd(G: Tensor, y: Tensor, beta: Tensor, fc: bool) -> tuple[Tensor, Tensor]:
    result: tuple[Tensor, Tensor] = _launch().write_backward(G, y, beta, fc=fc)
    return result


@depth_bwd.register_fake
def _depth_bwd_fake(G: Tensor, y: Tensor, beta: Tensor, fc: bool) -> tuple[Tensor, Tensor]:
    return torch.empty_like(y), torch.empty_like(beta)


# --- fused depth (the mixing done by the depth step; H_res never written) ------------------


@torch.library.custom_op(f"{_NS}::mix_depth", mutates_args=())
def mix_depth(y: Tensor, H: Tensor, alpha: Tensor, beta: Tensor, fc: bool) -> Tensor:
    K = H.shape[-2]
    out_dtype = torch.promote_types(y.dtype, H.dtype)
    _, rest = _launch().mix_forward(
        H, alpha, y, beta, split=alpha.shape[-1] - K, write_first=False, write_rest=True, fc=fc, rest_dtype=out_dtype
    )
    return rest  # type: ignore[no-any-return]


@mix_depth.register_fake
def _mix_depth_fake(y: Tensor, H: Tensor, alpha: Tensor, beta: Tensor, fc: bool) -> Tensor:
    return H.new_empty(H.shape, dtype=torch.promote_types(y.dtype, H.dtype))


def _mix_depth_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    y, H, alpha, beta, fc = inputs
    ctx.save_for_backward(y, H, alpha, beta)
    ctx.fc = fc
    ctx.set_materialize_grads(False)


def _mix_depth_backward(ctx: Any, G: Tensor | None) -> tuple[Any, ...]:
    if G is None:
        return None, None, None, None, None
    y, H, alpha, beta = ctx.saved_tensors
    gy, gbeta = depth_bwd(G, y, beta, ctx.fc)
    gH, galpha = width_bwd(H, alpha, None, G, alpha.shape[-1] - H.shape[-2])
    return gy, gH, galpha, gbeta, None


mix_depth.register_autograd(_mix_depth_backward, setup_context=_mix_depth_setup)
