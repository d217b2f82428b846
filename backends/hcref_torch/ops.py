"""The ops of the hcref contract on torch tensors (functional, differentiable through autograd).

Every function has the name, arguments, shapes and errors of the reference function of the
same name in :mod:`hcref` (the specification; see its docstrings for the formulas). Inputs are
checked with :mod:`hcref.validation`, so error messages are word for word the reference's.

Precision (decision D12). Every op computes in at least float32: float64 and float32 inputs in
their promoted dtype, bfloat16/float16 inputs (the coefficient path: norm, projections, tanh;
the mixing; the write and its reductions) in float32, rounded once. Mixed precision as
production runs it: float32 parameters on a bfloat16/float16 state are fine. ``*_coeffs`` return
the promoted dtype of ``H`` and the parameters (float32 coefficients for float32 parameters);
``*_width`` return the dtype of ``H`` and ``*_depth`` the promoted dtype of ``y`` and ``H_res``
(the state's dtype, whatever the coefficients' dtype), so a bfloat16 stream stays bfloat16.
Gradients come back in each input's dtype. Autocast is switched off inside the ops (on devices
autocast knows; never asked about ``meta``) so a surrounding ``torch.autocast`` region cannot
lower that precision.

Scale-safe norms (D12, :mod:`hcref.norms`). Per row of width ``w``,
``s = 2^floor(log2(max(max|x|, 1)))`` (read exactly from the exponent bits of ``max(max|x|, 1)``),
capped at 2^126 (float32) / 2^1022 (float64) so that ``1/s`` is a normal number
(flush-to-zero cannot touch it), ``x' = x * (1/s)`` (exact) and ``eps' = eps / s / s``:

    layernorm: x_hat = (x' - mean(x')) r',  r' = max(mean((x' - mean(x'))^2) + eps', sub)^(-1/2)
               layernorm(x) W = x_hat (diag(weight) W) + bias W
    rmsnorm:   r' = (mean(x'^2) + eps')^(-1/2)
               rmsnorm(x) W = r' (x' (diag(weight) W))  =  r (x (diag(weight) W)),  r = r' / s

(``sub``: the compute dtype's smallest subnormal number, as :mod:`hcref.norms`: it only acts on a
zero variance whose ``eps'`` underflowed, and gives the exact ``x_hat = 0``). They
equal the textbook forms exactly in real arithmetic and bit for bit at ordinary scales (``s = 1``).
Both norms are folded into the coefficient projection ``W = [W_alpha | W_beta]``: rmsnorm never
stores the normalised H (one custom autograd function with a hand-written VJP), layernorm applies
its affine weights to the small ``W``. The folded product is formed on ``x'`` (entries in
``[-4, 4)``), so it stays finite whenever the weights are: any finite input gives finite
coefficients and gradients.

Tensors on the ``meta`` device work (shapes and dtypes only): ops and modules can be built and
traced before weights are loaded.

Fused kernels (issue 14). On CUDA tensors the HC/FC contract ops run the fused Triton kernels of
:mod:`hcref_torch.kernels` (same results within the kernels' tolerance, same errors and dtypes)
when ``hcref_torch.kernels.use_for(...)`` holds: Triton importable, the switch on, the call
supported (n or m <= 16, float dtypes, one device). ``HCREF_TORCH_KERNELS=0`` (read at import) or
``hcref_torch.kernels.set_enabled(False)`` forces this generic path; every call the kernels do
not take runs here, so nothing fails that worked before. CPU tensors always run here, and never
import the kernels package (nor Triton).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

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


_EXPONENT_BITS = {
    torch.float32: (torch.int32, 0x7F800000, 2.0**126),
    torch.float64: (torch.int64, 0x7FF0000000000000, 2.0**1022),
}
"""The integer view and exponent mask of each compute dtype (an IEEE number with its mantissa
bits cleared is the largest power of two not above it), and the cap of ``s``: the largest power
of two whose reciprocal is a normal number (so ``x * (1/s)`` survives flush-to-zero)."""


def _smallest_subnormal(dtype: torch.dtype) -> float:
    """The smallest positive number of ``dtype`` (the floor of the layernorm variance, as :mod:`hcref.norms`)."""
    info = torch.finfo(dtype)
    return info.tiny * info.eps


def _row_scale(x: Tensor) -> Tensor:
    """``s = 2^floor(log2(max(max|x|, 1)))`` over the last axis (keepdim), exactly and without
    gradient: the exponent bits of ``max(max|x|, 1)`` (:func:`hcref.norms.row_scale`), capped at
    2^126 (float32) / 2^1022 (float64) so that ``1/s`` is a normal number; ``x / s`` then lies in
    ``[-4, 4)``. x (..., w) in float32/float64 -> s (..., 1)."""
    x = x.detach()
    bits, mask, cap = _EXPONENT_BITS[x.dtype]
    amax = torch.maximum(x.amax(dim=-1, keepdim=True), x.amin(dim=-1, keepdim=True).neg()).clamp(1.0, cap)
    return (amax.view(bits) & mask).view(x.dtype)


def _dot_rows(a: Tensor, b: Tensor) -> Tensor:
    """``sum_w a[..., w] b[..., w]`` (keepdim) as a batched matrix product (no (..., w) temporary)."""
    return torch.matmul(a.unsqueeze(-2), b.unsqueeze(-1)).squeeze(-1)


def _rms_proj_math(x: Tensor, Wn: Tensor) -> Tensor:
    """:class:`_RmsProj` in plain differentiable torch ops (what its double backward differentiates)."""
    s = _row_scale(x)
    xs = x * s.reciprocal()
    r_scaled = torch.rsqrt((xs * xs).mean(dim=-1, keepdim=True) + RMSNORM_EPS / s / s)
    return r_scaled * torch.matmul(xs, Wn)


def _layernorm_hat_math(x: Tensor) -> Tensor:
    """:class:`_LayerNormHat` in plain differentiable torch ops (what its double backward differentiates)."""
    s = _row_scale(x)
    xs = x * s.reciprocal()
    xc = xs - xs.mean(dim=-1, keepdim=True)
    var = (xc * xc).mean(dim=-1, keepdim=True) + LAYERNORM_EPS / s / s
    return xc * torch.rsqrt(var.clamp_min(_smallest_subnormal(x.dtype)))


def _recorded_vjp(
    fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], needs: tuple[bool, ...], g: Tensor
) -> tuple[Tensor | None, ...]:
    """The VJP of ``fn`` at ``inputs``, recorded by autograd: the backward of a custom function
    when it is itself differentiated (``create_graph=True``)."""
    wanted = [t for t, need in zip(inputs, needs) if need]
    with torch.enable_grad():
        grads = iter(torch.autograd.grad(fn(*inputs), wanted, g, create_graph=True))
    return tuple(next(grads) if need else None for need in needs)


class _RmsProj(torch.autograd.Function):
    """``rmsnorm(x) W = r' (x' @ Wn)`` with ``Wn = diag(weight) W`` (module docstring): per row
    ``x' = x / s``, ``r' = (mean(x'^2) + eps / s / s)^(-1/2)``; equal to ``r (x @ Wn)`` with
    ``r = r' / s = (mean(x^2) + eps)^(-1/2)``. The normalised H is never stored.

    VJP with ``u = r' p``, ``p = x' @ Wn``, ``c = <g, u> r'^2 / w``:
    ``g_x = ((r' g) Wn^T - c x') / s`` and ``g_Wn = x^T (r g)`` summed over all rows; every
    intermediate is of the order of ``g`` (the final ``/ s`` gives the true scale). Under
    ``create_graph=True`` the VJP of :func:`_rms_proj_math` is recorded instead (higher-order gradients).
    Shapes: x (..., w), Wn (w, o) -> u (..., o)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, Wn: Tensor) -> Tensor:
        s = _row_scale(x)
        inv_s = s.reciprocal()  # an exact power of two
        xs = x * inv_s
        mean_sq = torch.linalg.vector_norm(xs, dim=-1, keepdim=True).square_() / x.shape[-1]
        r_scaled = torch.rsqrt(mean_sq + RMSNORM_EPS / s / s)
        u = r_scaled * torch.matmul(xs, Wn)
        ctx.save_for_backward(x, Wn, r_scaled, inv_s, u)
        return u

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, Wn, r_scaled, inv_s, u = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _recorded_vjp(_rms_proj_math, (x, Wn), ctx.needs_input_grad, g)
        w, o = x.shape[-1], Wn.shape[-1]
        g_x = g_Wn = None
        if ctx.needs_input_grad[0]:
            c = (g * u).sum(dim=-1, keepdim=True) * (r_scaled * r_scaled / w)
            g_x = torch.addcmul(torch.matmul(r_scaled * g, Wn.transpose(0, 1)), x, c * inv_s, value=-1.0)
            g_x.mul_(inv_s)
        if ctx.needs_input_grad[1]:
            g_r = g * (r_scaled * inv_s)
            g_Wn = torch.matmul(x.reshape(-1, w).transpose(0, 1), g_r.reshape(-1, o))
        return g_x, g_Wn


class _LayerNormHat(torch.autograd.Function):
    """``x_hat = (x' - mu') r'`` on ``x' = x / s``, ``mu' = mean(x')``,
    ``r' = max(mean((x' - mu')^2) + eps / s / s, sub)^(-1/2)`` (:func:`hcref.norms.layernorm`
    without the affine part). ``F.layer_norm`` takes one scalar eps and cannot rescale it per row.

    VJP (``hcref.norms.layernorm_vjp``), with ``r = r' / s``:
    ``g_x = r (g_hat - mean(g_hat) - x_hat mean(g_hat x_hat))``; under ``create_graph=True`` the VJP
    of :func:`_layernorm_hat_math` is recorded instead. Shapes: x (..., w) -> (..., w)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        s = _row_scale(x)
        w = x.shape[-1]
        x_hat = x * s.reciprocal()  # x' (exact), then centred and scaled in place
        x_hat.sub_(x_hat.mean(dim=-1, keepdim=True))
        var = torch.linalg.vector_norm(x_hat, dim=-1, keepdim=True).square_() / w
        r_scaled = torch.rsqrt((var + LAYERNORM_EPS / s / s).clamp_min_(_smallest_subnormal(x.dtype)))
        x_hat.mul_(r_scaled)
        ctx.save_for_backward(x, x_hat, r_scaled / s)
        return x_hat

    @staticmethod
    def backward(ctx: Any, g_hat: Tensor) -> Tensor | None:
        x, x_hat, r = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _recorded_vjp(_layernorm_hat_math, (x,), ctx.needs_input_grad, g_hat)[0]
        w = x_hat.shape[-1]
        g_x = torch.addcmul(g_hat, x_hat, _dot_rows(g_hat, x_hat) / w, value=-1.0)
        return g_x.sub_(g_hat.mean(dim=-1, keepdim=True)).mul_(r)


def _promote(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _apply(fn: type[torch.autograd.Function], *args: Any) -> Any:
    return fn.apply(*args)  # type: ignore[no-untyped-call]


def _autocast_on(device: str) -> bool:
    """Whether autocast is on for ``device``; ``False`` for device types autocast does not know
    (``meta``, where asking raises ``RuntimeError: unknown device type for autocast``)."""
    available = getattr(getattr(torch, "amp", None), "is_autocast_available", None)
    if available is not None and not available(device):
        return False
    try:
        return torch.is_autocast_enabled(device)
    except TypeError:  # torch < 2.4: no per-device query
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()
    except RuntimeError:  # a device type autocast does not know
        return False


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
        W = torch.cat([params["W_alpha"].to(ct), params["W_beta"].to(ct).unsqueeze(-1)], dim=-1)
        if use_norm and norm == "rmsnorm":
            # rmsnorm(x) W = r' (x' (diag(weight) W)), scale-safe (module docstring): the
            # normalised H is never stored.
            u = _apply(_RmsProj, x, params["norm_weight"].to(ct).unsqueeze(-1) * W)
        elif use_norm and norm == "layernorm":
            # layernorm(x) W = x_hat (diag(weight) W) + bias W: the affine part acts on the small W.
            x_hat = _apply(_LayerNormHat, x)
            u = torch.matmul(x_hat, params["norm_weight"].to(ct).unsqueeze(-1) * W) + params["norm_bias"].to(ct) @ W
        else:
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


def _mix(H: Tensor, alpha: Tensor, split: int) -> tuple[Tensor, Tensor]:
    """``mix = alpha^T H`` (see ``hcref._core.mix``) split into rows ``[:split]`` and ``[split:]``.

    Shapes: H (..., k, w), alpha (..., k, c) -> (..., split, w), (..., c - split, w), in the dtype
    of ``H`` (the state's), computed in at least float32 (the promotion of H and alpha) and rounded once.
    """
    ct = _compute_dtype(_promote(H, alpha))
    with _no_autocast(H):
        first, rest = _apply(_Mix, H.to(ct), alpha.to(ct), split)
    return first.to(H.dtype), rest.to(H.dtype)


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


# --- dispatch to the fused kernels ---------------------------------------------------------


_KERNEL_DEVICES: tuple[str, ...] = ("cuda",)
"""Device types whose calls may go to :mod:`hcref_torch.kernels` (which then decides with
``use_for``); other devices never import it. Tests add ``"cpu"`` to run the dispatch under the
Triton interpreter."""


def _kernels(H: Any, *others: Any) -> Any:
    """:mod:`hcref_torch.kernels` when its automatic dispatch takes this call
    (``kernels.use_for(H, *others)``, H the (..., K, w) tensor), else ``None``. The package is
    imported on the first call from a device of :data:`_KERNEL_DEVICES` only."""
    if not isinstance(H, torch.Tensor) or H.device.type not in _KERNEL_DEVICES:
        return None
    from . import kernels

    return kernels if kernels.use_for(H, *others) else None


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
    """See :func:`hcref.hc_coeffs`. Shapes: H (..., n, d) -> alpha (..., n, n+1), beta (..., n).

    On CUDA: the fused coefficient kernel when ``hcref_torch.kernels.use_for`` holds (module docstring).
    """
    kernels = _kernels(H, *params.values()) if isinstance(params, Mapping) else None
    if kernels is not None:
        out: tuple[Tensor, Tensor] = kernels.hc_coeffs(
            H, params, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale
        )
        return out
    dynamic = _coeff_check("hc", H, params, norm, use_tanh, use_norm, use_scale)
    static_alpha = torch.cat([params["A_m"].unsqueeze(-1), params["A_r"]], dim=-1)
    return _coeffs(
        H, static_alpha, params["B"], params,
        dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale,
    )


def hc_width(H: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """See :func:`hcref.hc_width`. Shapes: H (..., n, d), alpha (..., n, n+1) -> h0 (..., d), H_res (..., n, d).

    Both results are views of one mixed tensor (..., n+1, d). On CUDA: the fused width kernel when
    ``hcref_torch.kernels.use_for`` holds.
    """
    kernels = _kernels(H, alpha)
    if kernels is not None:
        out: tuple[Tensor, Tensor] = kernels.hc_width(H, alpha)
        return out
    v.check_width("hc", meta("H", H), meta("alpha", alpha))
    first, H_res = _mix(H, alpha, 1)
    return first.squeeze(-2), H_res


def hc_depth(y: Tensor, H_res: Tensor, beta: Tensor) -> Tensor:
    """See :func:`hcref.hc_depth`. Shapes: y (..., d), H_res (..., n, d), beta (..., n) -> H_out (..., n, d).

    On CUDA: the fused depth kernel when ``hcref_torch.kernels.use_for`` holds."""
    kernels = _kernels(H_res, y, beta)
    if kernels is not None:
        out: Tensor = kernels.hc_depth(y, H_res, beta)
        return out
    v.check_depth("hc", meta("y", y), meta("H_res", H_res), meta("beta", beta))
    return _write(y.unsqueeze(-2), H_res, beta)


def _write(y: Tensor, H_res: Tensor, beta: Tensor) -> Tensor:
    """``H_out = beta[..., None] * y + H_res`` with y broadcastable to H_res, in the promoted dtype of
    ``y`` and ``H_res`` (the state's; ``beta`` may be float32 on a bfloat16 state). Computed in the
    promotion of all three (``addcmul`` accumulates half inputs in float32) and rounded once."""
    common = _promote(y, H_res, beta)
    with _no_autocast(H_res):
        out: Tensor = _apply(_Write, y.to(common), H_res.to(common), beta.to(common))
    return out.to(_promote(y, H_res))


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
    """See :func:`hcref.fc_coeffs`. Shapes: H (..., m, e) -> alpha (..., m, 2m), beta (..., m).

    On CUDA: the fused coefficient kernel when ``hcref_torch.kernels.use_for`` holds (module docstring).
    """
    kernels = _kernels(H, *params.values()) if isinstance(params, Mapping) else None
    if kernels is not None:
        out: tuple[Tensor, Tensor] = kernels.fc_coeffs(
            H, params, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale
        )
        return out
    dynamic = _coeff_check("fc", H, params, norm, use_tanh, use_norm, use_scale)
    static_alpha = torch.cat([params["Y"], params["A"]], dim=-1)
    return _coeffs(
        H, static_alpha, params["B"], params,
        dynamic=dynamic, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale,
    )


def fc_width(H: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """See :func:`hcref.fc_width`. Shapes: H (..., m, e), alpha (..., m, 2m) -> h0 (..., m*e), H_res (..., m, e).

    On CUDA: the fused width kernel when ``hcref_torch.kernels.use_for`` holds."""
    kernels = _kernels(H, alpha)
    if kernels is not None:
        out: tuple[Tensor, Tensor] = kernels.fc_width(H, alpha)
        return out
    m, e = v.check_width("fc", meta("H", H), meta("alpha", alpha))
    first, H_res = _mix(H, alpha, m)
    return first.reshape(*H.shape[:-2], m * e), H_res


def fc_depth(y: Tensor, H_res: Tensor, beta: Tensor) -> Tensor:
    """See :func:`hcref.fc_depth`. Shapes: y (..., m*e), H_res (..., m, e), beta (..., m) -> H_out (..., m, e).

    On CUDA: the fused depth kernel when ``hcref_torch.kernels.use_for`` holds."""
    kernels = _kernels(H_res, y, beta)
    if kernels is not None:
        out: Tensor = kernels.fc_depth(y, H_res, beta)
        return out
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
