"""The contract ops on the fused kernels, and the fused site entry.

Every contract function here has the name, signature, shapes, dtypes and errors of the op of
the same name in :mod:`hcref_torch.ops` (and so of the reference, :mod:`hcref`): inputs are
checked with :mod:`hcref.validation` first, word for word the reference's messages. A call the
kernels do not take (:func:`hcref_torch.kernels.supported` is False: CPU tensors outside the
interpreter, K > 16 rows, an integer dtype, mixed devices...) runs :mod:`hcref_torch.ops`
instead, so it never fails where the generic path works.

Dtypes (D12, COMMON.md): ``*_coeffs`` return the promoted dtype of H and the parameters;
``*_width`` return H's dtype; ``*_depth`` return ``promote(y, H_res)``. Everything is computed
in float32 (float64 when a float64 tensor is involved) and rounded once.

The fused site (``hc_site_width`` / ``fc_site_width`` then :func:`site_depth`) computes the
coefficients, h0 and the mixed residual in one kernel that reads each token block of H twice
(the second read normally from L2), so the coefficients never leave the kernel. For training
it writes ``H_res`` and its backward is two passes over H (``g_alpha = H G_mix^T``, then
``G_H = alpha G_mix + coefficient VJP`` in one pass). Without gradients (``fuse_depth``) it
writes only h0 and the depth kernel mixes the residual itself: ``H_out = A_r^T H + B^T y^T``
(HC) in one pass, H_res is never written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from hcref import validation as v
from hcref.sinkhorn_knopp import ITERS
from hcref.validation import ArrayMeta

from ._switch import TORCH_OK, generic_path, supported

if TORCH_OK:  # registers the custom ops (torch >= 2.4); imports no triton
    from . import _mhc_ops, _ops

Tensor = torch.Tensor

_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_NORM_KIND = {"none": 0, "rmsnorm": 1, "layernorm": 2}


def _meta(name: str, x: Any) -> ArrayMeta:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    dtype = _NAMES.get(x.dtype, str(x.dtype).removeprefix("torch."))
    return ArrayMeta(tuple(x.shape), dtype, x.is_floating_point())


def _param_metas(params: Any) -> dict[str, ArrayMeta]:
    if not isinstance(params, Mapping):
        return {}
    return {key: _meta(f"params[{key!r}]", value) for key, value in params.items()}


def _generic() -> Any:
    from .. import ops

    return ops


def _promote(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _static(family: str, params: Mapping[str, Tensor]) -> Tensor:
    if family == "hc":
        return torch.cat([params["A_m"].unsqueeze(-1), params["A_r"]], dim=-1)
    return torch.cat([params["Y"], params["A"]], dim=-1)


def _check_coeffs(family: str, H: Any, params: Any, norm: Any, use_tanh: Any, use_norm: Any, use_scale: Any) -> bool:
    _, _, dynamic = v.check_coeffs(family, _meta("H", H), params, _param_metas(params), norm, use_tanh, use_norm,
                                   use_scale)
    return dynamic


def _coeffs(
    family: str, H: Tensor, params: Mapping[str, Tensor], dynamic: bool, norm: str, use_tanh: bool,
    use_norm: bool, use_scale: bool, mix: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(alpha, beta, first, rest) of the kernels for validated input (first/rest empty when
    ``mix`` does not write them)."""
    K = H.shape[-2]
    split = 1 if family == "hc" else K
    static_alpha = _static(family, params)
    out_dtype = _promote(H, *params.values())
    lead = H.shape[:-2]
    if not dynamic:
        alpha = static_alpha.to(out_dtype).expand(*lead, *static_alpha.shape)
        beta = params["B"].to(out_dtype).expand(*lead, K)
        if mix:
            first, rest = _ops.width(H, alpha, split, mix == 2)
        else:
            first = rest = H.new_empty(0)
        return alpha, beta, first, rest
    kind = _NORM_KIND[norm] if use_norm else 0
    alpha, beta, _, _, first, rest = _ops.coeffs(
        H, params["W_alpha"], params["W_beta"], params.get("norm_weight"), params.get("norm_bias"),
        params["s_alpha"], params["s_beta"], static_alpha, params["B"],
        kind, use_tanh, use_scale, split, mix, out_dtype,
    )
    return alpha, beta, first, rest


def _coeffs_op(family: str, H: Any, params: Any, norm: Any, use_tanh: Any, use_norm: Any, use_scale: Any,
               strict: bool) -> tuple[Tensor, Tensor]:
    dynamic = _check_coeffs(family, H, params, norm, use_tanh, use_norm, use_scale)
    if not strict and not supported(H, *params.values()):
        fn = getattr(_generic(), f"{family}_coeffs")
        result: tuple[Tensor, Tensor] = fn(H, params, norm=norm, use_tanh=use_tanh, use_norm=use_norm,
                                           use_scale=use_scale)
        return result
    alpha, beta, _, _ = _coeffs(family, H, params, dynamic, norm, use_tanh, use_norm, use_scale, 0)
    return alpha, beta


def _width_op(family: str, H: Any, alpha: Any, strict: bool) -> tuple[Tensor, Tensor]:
    v.check_width(family, _meta("H", H), _meta("alpha", alpha))
    if not strict and not supported(H, alpha):
        result: tuple[Tensor, Tensor] = getattr(_generic(), f"{family}_width")(H, alpha)
        return result
    split = 1 if family == "hc" else H.shape[-2]
    first, rest = _ops.width(H, alpha, split, True)
    return first, rest


def _depth_op(family: str, y: Any, H_res: Any, beta: Any, strict: bool) -> Tensor:
    v.check_depth(family, _meta("y", y), _meta("H_res", H_res), _meta("beta", beta))
    if not strict and not supported(H_res, y, beta):
        result: Tensor = getattr(_generic(), f"{family}_depth")(y, H_res, beta)
        return result
    out: Tensor = _ops.depth(y, H_res, beta, family == "fc")
    return out


# --- the contract ops ---------------------------------------------------------------------


def hc_coeffs(
    H: Tensor, params: Mapping[str, Tensor], *, norm: str = "layernorm", use_tanh: bool = True,
    use_norm: bool = True, use_scale: bool = True,
) -> tuple[Tensor, Tensor]:
    """:func:`hcref.hc_coeffs` (HC paper Eqs. 10-13) on the coefficient kernel: one pass over H
    per token block for the norm statistics and ``H [W_alpha | W_beta]`` together, the norm
    folded after the matmul (mHC paper Eqs. 14-15 order; layernorm also folds its mean,
    ``(x - mu) W = x W - mu 1^T W``), then tanh, gates and static terms in registers.

    Shapes: H (..., n, d) -> alpha (..., n, n+1), beta (..., n); dtype: promoted of H and params.
    Static sites (no dynamic keys) broadcast ``[A_m | A_r]`` and ``B`` without a kernel.
    Errors: those of :func:`hcref.hc_coeffs`.
    """
    return _coeffs_op("hc", H, params, norm, use_tanh, use_norm, use_scale, strict=False)


def hc_width(H: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`hcref.hc_width`: ``h0 = A_m^T H``, ``H_res = A_r^T H`` (HC paper Alg. 2), H read once.

    Shapes: H (..., n, d), alpha (..., n, n+1) -> h0 (..., d), H_res (..., n, d), both in H's dtype.
    """
    return _width_op("hc", H, alpha, strict=False)


def hc_depth(y: Tensor, H_res: Tensor, beta: Tensor) -> Tensor:
    """:func:`hcref.hc_depth`: ``H_out = B^T y^T + H_res`` (HC paper Eq. 2), one pass.

    Shapes: y (..., d), H_res (..., n, d), beta (..., n) -> H_out (..., n, d) in promote(y, H_res).
    """
    return _depth_op("hc", y, H_res, beta, strict=False)


def fc_coeffs(
    H: Tensor, params: Mapping[str, Tensor], *, norm: str = "layernorm", use_tanh: bool = True,
    use_norm: bool = True, use_scale: bool = True,
) -> tuple[Tensor, Tensor]:
    """:func:`hcref.fc_coeffs` (FC paper Eqs. 11-14) on the coefficient kernel (as :func:`hc_coeffs`
    with rows of width e = d/m).

    Shapes: H (..., m, e) -> alpha (..., m, 2m), beta (..., m).
    """
    return _coeffs_op("fc", H, params, norm, use_tanh, use_norm, use_scale, strict=False)


def fc_width(H: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`hcref.fc_width`: ``h0 = concat_k (Y^T H)[k]``, ``H_res = A^T H`` (FC paper Eq. 8).

    Shapes: H (..., m, e), alpha (..., m, 2m) -> h0 (..., m*e), H_res (..., m, e), in H's dtype.
    """
    return _width_op("fc", H, alpha, strict=False)


def fc_depth(y: Tensor, H_res: Tensor, beta: Tensor) -> Tensor:
    """:func:`hcref.fc_depth`: ``H_out[j] = B[j] y_j + H_res[j]`` (the diagonal write, FC paper Eq. 8).

    Shapes: y (..., m*e), H_res (..., m, e), beta (..., m) -> H_out (..., m, e) in promote(y, H_res).
    """
    return _depth_op("fc", y, H_res, beta, strict=False)


# --- the fused site -----------------------------------------------------------------------


class FusedState(NamedTuple):
    """What :func:`site_depth` needs from a fused width step."""

    H_res: Tensor | None
    """The mixed residual (..., k, w) when it was written (training), else None."""
    beta: Tensor
    """Write weights (..., k)."""
    H: Tensor | None
    """The site's input state when the depth step does the mixing (no H_res), else None."""
    alpha: Tensor | None
    """The coefficients (..., k, c) that go with ``H``, else None."""
    fc: bool
    """Frac-Connections (diagonal write) rather than Hyper-Connections."""


def _needs_grad(H: Tensor, params: Mapping[str, Tensor]) -> bool:
    return torch.is_grad_enabled() and (H.requires_grad or any(p.requires_grad for p in params.values()))


def _site_width(
    family: str, H: Any, params: Any, norm: Any, use_tanh: Any, use_norm: Any, use_scale: Any,
    fuse_depth: bool | None,
) -> tuple[Tensor, FusedState]:
    dynamic = _check_coeffs(family, H, params, norm, use_tanh, use_norm, use_scale)
    fc = family == "fc"
    if not supported(H, *params.values()):
        ops = _generic()
        alpha, beta = getattr(ops, f"{family}_coeffs")(H, params, norm=norm, use_tanh=use_tanh, use_norm=use_norm,
                                                       use_scale=use_scale)
        h0, H_res = getattr(ops, f"{family}_width")(H, alpha)
        return h0, FusedState(H_res, beta, None, None, fc)
    if fuse_depth is None:
        fuse_depth = not _needs_grad(H, params)
    mix = 1 if fuse_depth else 2
    alpha, beta, first, rest = _coeffs(family, H, params, dynamic, norm, use_tanh, use_norm, use_scale, mix)
    if fuse_depth:
        return first, FusedState(None, beta, H, alpha, fc)
    return first, FusedState(rest, beta, None, None, fc)


def hc_site_width(
    H: Tensor, params: Mapping[str, Tensor], *, norm: str = "layernorm", use_tanh: bool = True,
    use_norm: bool = True, use_scale: bool = True, fuse_depth: bool | None = None,
) -> tuple[Tensor, FusedState]:
    """The width half of one HC site, fused: ``alpha, beta = hc_coeffs(H, params)`` and
    ``h0 = A_m^T H`` (and ``H_res = A_r^T H`` unless ``fuse_depth``) in one kernel.

    ``fuse_depth`` (default: when no gradient is needed) leaves the residual mixing to
    :func:`site_depth` (``H_out = A_r^T H + B^T y^T`` in one pass). Options and errors are
    those of :func:`hcref.hc_coeffs`. Shapes: H (..., n, d) -> h0 (..., d), state.
    """
    return _site_width("hc", H, params, norm, use_tanh, use_norm, use_scale, fuse_depth)


def fc_site_width(
    H: Tensor, params: Mapping[str, Tensor], *, norm: str = "layernorm", use_tanh: bool = True,
    use_norm: bool = True, use_scale: bool = True, fuse_depth: bool | None = None,
) -> tuple[Tensor, FusedState]:
    """The width half of one FC site, fused (see :func:`hc_site_width`).

    Shapes: H (..., m, e) -> h0 (..., m*e), state.
    """
    return _site_width("fc", H, params, norm, use_tanh, use_norm, use_scale, fuse_depth)


def site_depth(y: Tensor, state: FusedState) -> Tensor:
    """The depth half of a fused site: ``H_out = H_res + beta y`` (written H_res), or
    ``H_out = A_r^T H + beta y`` (HC) / ``A^T H + diag-write(beta, y)`` (FC) from the input
    state in one pass. Shapes: y (..., d) -> H_out (..., k, w) in promote(y, state dtype).
    Errors: those of :func:`hcref.hc_depth` / :func:`hcref.fc_depth` for y.
    """
    family = "fc" if state.fc else "hc"
    if state.H_res is not None:
        return _depth_op(family, y, state.H_res, state.beta, strict=False)
    H, alpha = state.H, state.alpha
    assert H is not None and alpha is not None
    v.check_depth(family, _meta("y", y), _meta("H_res", H), _meta("beta", state.beta))
    if not supported(H, y, alpha, state.beta):
        ops = _generic()
        H_res = getattr(ops, f"{family}_width")(H, alpha)[1]
        result: Tensor = getattr(ops, f"{family}_depth")(y, H_res, state.beta)
        return result
    out: Tensor = _ops.mix_depth(y, H, alpha, state.beta, state.fc)
    return out


def hc_site(
    H: Tensor, params: Mapping[str, Tensor], branch: Callable[[Tensor], Tensor], *, norm: str = "layernorm",
    use_tanh: bool = True, use_norm: bool = True, use_scale: bool = True,
) -> Tensor:
    """One whole HC site: ``site_depth(branch(h0), state)`` with ``h0, state = hc_site_width(H, ...)``."""
    h0, state = hc_site_width(H, params, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale)
    return site_depth(branch(h0), state)


def fc_site(
    H: Tensor, params: Mapping[str, Tensor], branch: Callable[[Tensor], Tensor], *, norm: str = "layernorm",
    use_tanh: bool = True, use_norm: bool = True, use_scale: bool = True,
) -> Tensor:
    """One whole FC site: ``site_depth(branch(h0), state)`` with ``h0, state = fc_site_width(H, ...)``."""
    h0, state = fc_site_width(H, params, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale)
    return site_depth(branch(h0), state)


# --- mHC (mHC paper, arXiv 2512.24880; decisions D7-D10, D12) -----------------------------


def _generic_mhc() -> Any:
    from .. import mhc

    return mhc


def _mhc_coeffs_op(H: Any, params: Any, iters: Any, eps: Any, strict: bool) -> tuple[Tensor, Tensor, Tensor]:
    n, _, dynamic = v.check_mhc_coeffs(_meta("H", H), params, _param_metas(params), iters, eps)
    if not strict and not supported(H, *params.values(), op="mhc_coeffs"):
        with generic_path():
            result: tuple[Tensor, Tensor, Tensor] = _generic_mhc().mhc_coeffs(H, params, iters=iters, eps=eps)
        return result
    out_dtype = _promote(H, *params.values())
    lead = H.shape[:-2]
    b = params["b"]
    e = b.new_empty(0)
    if not dynamic:  # one token from b, broadcast (views); g_b sums the cotangents over the tokens
        h_pre, h_post, h_res, _, _ = _mhc_ops.mhc_coeffs(e, e, b, e, e, n, 0, iters, float(eps), out_dtype)
        return h_pre[0].expand(*lead, n), h_post[0].expand(*lead, n), h_res[0].expand(*lead, n, n)
    H3 = H.reshape(-1, n, H.shape[-1])
    h_pre, h_post, h_res, _, _ = _mhc_ops.mhc_coeffs(
        H3, params["phi"], b, params["gates"], e, n, 1, iters, float(eps), out_dtype
    )
    return h_pre.reshape(*lead, n), h_post.reshape(*lead, n), h_res.reshape(*lead, n, n)


def _sinkhorn_op(Z: Any, iters: Any, eps: Any, strict: bool) -> Tensor:
    v.check_sinkhorn(_meta("Z", Z), iters, eps)
    if not strict and not supported(Z, op="sinkhorn"):
        with generic_path():
            result: Tensor = _generic_mhc().sinkhorn(Z, iters=iters, eps=eps)
        return result
    n = Z.shape[-1]
    e = Z.new_empty(0)
    _, _, P, _, _ = _mhc_ops.mhc_coeffs(e, e, Z.new_zeros(2 * n + n * n), e, Z.reshape(-1, n, n), n, 2, iters,
                                        float(eps), Z.dtype)
    out: Tensor = P.reshape(Z.shape)
    return out


def _mhc_pre_op(H: Any, h_pre: Any, strict: bool) -> Tensor:
    v.check_mhc_pre(_meta("H", H), _meta("h_pre", h_pre))
    if not strict and not supported(H, h_pre, op="mhc_pre"):
        with generic_path():
            result: Tensor = _generic_mhc().mhc_pre(H, h_pre)
        return result
    out: Tensor = _mhc_ops.mhc_pre(H, h_pre)
    return out


def _mhc_post_op(y: Any, H: Any, h_post: Any, h_res: Any, strict: bool) -> Tensor:
    v.check_mhc_post(_meta("y", y), _meta("H", H), _meta("h_post", h_post), _meta("h_res", h_res))
    if not strict and not supported(H, y, h_post, h_res, op="mhc_post"):
        with generic_path():
            result: Tensor = _generic_mhc().mhc_post(y, H, h_post, h_res)
        return result
    out: Tensor = _mhc_ops.mhc_post(y, H, h_post, h_res)
    return out


def mhc_coeffs(
    H: Tensor, params: Mapping[str, Tensor], *, iters: int = ITERS, eps: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`hcref.mhc_coeffs` (mHC paper Eqs. 7-9, 14-15; decision D9) on one kernel: per token
    one pass over ``v = vec(H)`` (n*d) for the scale-safe RMS statistics and ``v phi`` together,
    the norm applied after the matmul (``z = ((v / s) phi) r'``), then in registers::

        logits = gates[k] z_k + b_k
        h_pre  = sigmoid(logits_pre) + eps,   h_post = 2 sigmoid(logits_post)
        h_res  = sinkhorn(mat(logits_res), iters, eps)   (log domain; V4's recipe for eps > 0)

    The backward recomputes the Sinkhorn iterates on chip (nothing but z (2n+n^2 numbers) and
    two statistics per token is kept from the forward) and reads H once more. A static site
    (params exactly ``{b}``) runs the same epilogue once and broadcasts it (views).

    Shapes: H (..., n, d), phi (n*d, 2n+n^2), b (2n+n^2), gates (3) -> h_pre (..., n),
    h_post (..., n), h_res (..., n, n), in the promoted dtype of H and the parameters
    (computed in float32, float64 for float64). Kernel for n <= 8 (``MHC_MAX_N``), the generic
    path otherwise. Errors: those of :func:`hcref.mhc_coeffs`.
    """
    return _mhc_coeffs_op(H, params, iters, eps, strict=False)


def sinkhorn(Z: Tensor, *, iters: int = ITERS, eps: float = 0.0) -> Tensor:
    """:func:`hcref.sinkhorn` (mHC paper Eq. 9; decision D7) on the coefficient kernel's
    epilogue: ``iters`` x (columns, then rows) from ``exp(Z)`` in the log domain (``eps = 0``)
    or DeepSeek-V4's recipe (``eps > 0``), unrolled backward with the iterates recomputed.

    Shapes: Z (..., n, n) -> P (..., n, n) in Z's dtype (half dtypes computed in float32).
    Errors: those of :func:`hcref.sinkhorn`.
    """
    return _sinkhorn_op(Z, iters, eps, strict=False)


def mhc_pre(H: Tensor, h_pre: Tensor) -> Tensor:
    """:func:`hcref.mhc_pre` (mHC paper Eq. 3, ``H_pre x_l``): ``h0 = sum_i h_pre[i] H[i]``, H read
    once; backward ``g_H = h_pre g^T``, ``g_h_pre = H g`` in one pass.

    Shapes: H (..., n, d), h_pre (..., n) -> h0 (..., d) in H's dtype.
    """
    return _mhc_pre_op(H, h_pre, strict=False)


def mhc_post(y: Tensor, H: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    """:func:`hcref.mhc_post` (mHC paper Eq. 3): ``H_out = h_res H + h_post y^T`` in one pass
    (H, y and the coefficients read once, H_out written once). Backward in one pass over G, H
    and y: ``g_y = h_post^T G``, ``g_H = h_res^T G``, ``g_h_post = G y``, ``g_h_res = G H^T``.

    Shapes: y (..., d), H (..., n, d), h_post (..., n), h_res (..., n, n) -> H_out (..., n, d) in
    ``promote(y, H)``.
    """
    return _mhc_post_op(y, H, h_post, h_res, strict=False)
