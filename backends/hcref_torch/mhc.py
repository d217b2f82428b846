"""The mHC ops of the hcref contract on torch tensors: ``sinkhorn``, ``mhc_coeffs``, ``mhc_pre``,
``mhc_post``, ``mhc_head`` (mHC paper, arXiv 2512.24880, Eqs. 3, 7-9; decisions D7-D10, D12).

Every function has the name, arguments, defaults, shapes and errors of the reference function
of the same name in :mod:`hcref` (the specification; its docstrings give the formulas). Inputs
are checked with :mod:`hcref.validation`, so error messages are word for word the reference's.

Precision (decision D12). Every op computes in the promoted dtype of its inputs raised to at
least float32 (bfloat16/float16 inputs: the RMS scaling, the projection, the sigmoids and
Sinkhorn all run in float32) and rounds its results once: ``sinkhorn`` to Z's dtype, the
coefficients of ``mhc_coeffs`` to the promoted dtype of H and the parameters (float32
coefficients for float32 parameters on a bfloat16 state), ``mhc_pre`` and ``mhc_head`` to H's
dtype, ``mhc_post`` to ``promote(y, H)``. Autocast is switched off inside the ops.

RMS scaling of the flattened state, folded after the projection (mHC paper Eqs. 14-15 reorder
it so; decision D12's scale-safe norm): with ``v = vec(H)`` (n*d) and the power-of-two scale
``s = 2^floor(log2(max(max|v|, 1)))`` of :func:`hcref.norms.row_scale` (capped at 2^126 in
float32, 2^1022 in float64, as :mod:`hcref_torch.ops`),
``r' = (mean((v/s)^2) + 1e-6/s/s)^(-1/2)`` and ``z = ((v/s) phi) r'``, which equals the
reference's ``rms(v) phi`` in real arithmetic, bit for bit at ordinary scales (``s = 1``).
``v / s`` is exact with entries in ``[-4, 4)``, so neither the sum of squares nor the
projection can overflow: any finite H (1e-30 to 3e38 in float32 and bfloat16) gives finite
coefficients and gradients, whenever the parameters are finite. No floor is needed: with
``s >= 1`` the mean of ``(v/s)^2`` is at least ``1/(n d)`` whenever ``eps/s/s`` underflows.

Sinkhorn (decision D7): the log-domain iteration with potentials of
:mod:`hcref.sinkhorn_knopp` for ``eps = 0`` (finite wherever the math is: a row or column of
logits 1e4 below the rest gives the exact answer), DeepSeek-V4's recipe for ``eps > 0``. Both
are ``torch.autograd.Function``s with the reference's unrolled backward (math.md 5.6). What the
backward keeps, per token (n x n logits, K = iters): ``eps = 0``: the logits Z and the 2K
potentials ``r_1..r_K, c_1..c_K`` (2K n-vectors; every iterate ``exp(Z - r - c)`` is recomputed
from them in the backward), not the 2K n x n iterates; ``eps > 0``: Z, the output P and the
2K - 1 divisors (n-vectors), the iterates being rebuilt backwards by multiplying each division
out. For n = 4, K = 20 that is 176 and 188 numbers per token instead of 640. The backward is
not itself differentiable (no double backward through Sinkhorn).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hcref import validation as v
from hcref.mhc import RMS_EPS
from hcref.sinkhorn_knopp import ITERS

from .ops import _apply, _compute_dtype, _no_autocast, _param_metas, _promote, _row_scale, meta

Tensor = torch.Tensor


# --- fused kernels (hook) -------------------------------------------------------------------------


def _kernel_op(name: str, H: Any, *others: Any) -> Any:
    """The fused kernel op ``hcref_torch.kernels.<name>`` (``mhc_coeffs``, ``mhc_pre``,
    ``mhc_post``) when the automatic dispatch takes this call, else ``None``: H is the
    (..., n, d) state and ``others`` the call's other tensors, as ``kernels.use_for`` takes them
    (CUDA tensors only, the switch ``HCREF_TORCH_KERNELS`` / ``kernels.set_enabled``, a supported
    shape, ``op=name``: the mHC coefficients take fewer streams than pre/post). CPU tensors never
    import the kernels package."""
    from . import ops

    if not isinstance(H, torch.Tensor) or H.device.type not in ops._KERNEL_DEVICES:
        return None
    from . import kernels

    return getattr(kernels, name) if kernels.use_for(H, *others, op=name) else None


# --- Sinkhorn -------------------------------------------------------------------------------------


def _scaled(Z: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """``exp(Z[i, j] - r[i] - c[j])``: an iterate from its row and column potentials."""
    return torch.exp((Z - r.unsqueeze(-1)) - c.unsqueeze(-2))


def _log_forward(Z: Tensor, iters: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(P, R, C)``: the paper's Sinkhorn in the log domain (``hcref.sinkhorn_knopp``, eps = 0) and
    its potentials ``R = [r_1..r_K]`` (K, ..., n), ``C = [c_1..c_K]`` (K, ..., n), ``r_0 = 0``."""
    r = Z.new_zeros(Z.shape[:-1])
    rs, cs = [], []
    for _ in range(iters):
        c = torch.logsumexp(Z - r.unsqueeze(-1), dim=-2)
        r = torch.logsumexp(Z - c.unsqueeze(-2), dim=-1)
        cs.append(c)
        rs.append(r)
    P = _scaled(Z, r, c)
    return P / P.sum(dim=-1, keepdim=True), torch.stack(rs), torch.stack(cs)


def _log_backward(g_P: Tensor, Z: Tensor, R: Tensor, C: Tensor) -> Tensor:
    """Unrolled VJP from the stored potentials (math.md 5.6, log form): ``g_L = g_P * M_K``; per step
    t = K..1: ``g -= M_t rowsum(g)``, ``g -= Q_t colsum(g)`` with ``M_t = exp(Z - r_t - c_t)``,
    ``Q_t = exp(Z - r_{t-1} - c_t)`` recomputed."""
    g = g_P * _scaled(Z, R[-1], C[-1])
    for t in range(R.shape[0] - 1, -1, -1):
        g = g - _scaled(Z, R[t], C[t]) * g.sum(dim=-1, keepdim=True)
        r_prev = R[t - 1] if t > 0 else torch.zeros_like(R[0])
        g = g - _scaled(Z, r_prev, C[t]) * g.sum(dim=-2, keepdim=True)
    return g


def _v4_forward(Z: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(P, R, C)``: DeepSeek-V4's recipe (``hcref.sinkhorn_knopp``, eps > 0) and its divisors
    ``R = [r_1..r_K]`` (K, ..., n, 1), ``C = [c_2..c_K]`` (K-1, ..., 1, n)."""
    P = torch.softmax(Z, dim=-2) + eps
    r = P.sum(dim=-1, keepdim=True) + eps
    P = P / r
    rs, cs = [r], []
    for _ in range(iters - 1):
        c = P.sum(dim=-2, keepdim=True) + eps
        P = P / c
        r = P.sum(dim=-1, keepdim=True) + eps
        P = P / r
        cs.append(c)
        rs.append(r)
    C = torch.stack(cs) if cs else Z.new_zeros((0, *Z.shape[:-2], 1, Z.shape[-1]))
    return P, torch.stack(rs), C


def _v4_backward(g_P: Tensor, Z: Tensor, P: Tensor, R: Tensor, C: Tensor) -> Tensor:
    """Unrolled VJP of the V4 recipe: ``P = Q / r`` has VJP ``g_Q = (g - rowsum(g P)) / r`` (columns
    alike), the iterates rebuilt backwards as ``Q = P r``; the softmax over out gives
    ``g_Z = S (g - colsum(g S))``."""
    g = g_P
    for t in range(R.shape[0] - 1, -1, -1):
        Q = P * R[t]
        g = (g - (g * P).sum(dim=-1, keepdim=True)) / R[t]
        if t > 0:
            P = Q * C[t - 1]
            g = (g - (g * Q).sum(dim=-2, keepdim=True)) / C[t - 1]
    S = torch.softmax(Z, dim=-2)
    return S * (g - (g * S).sum(dim=-2, keepdim=True))


def _zeros_if_none(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


if hasattr(torch.library, "custom_op"):  # torch >= 2.4: opaque to torch.compile (no unrolled graph)

    @torch.library.custom_op("hcref::sinkhorn_log", mutates_args=())
    def _sinkhorn_log(Z: Tensor, iters: int) -> tuple[Tensor, Tensor, Tensor]:
        return _log_forward(Z, iters)

    @_sinkhorn_log.register_fake
    def _(Z: Tensor, iters: int) -> tuple[Tensor, Tensor, Tensor]:
        lead = Z.shape[:-1]
        return Z.new_empty(Z.shape), Z.new_empty((iters, *lead)), Z.new_empty((iters, *Z.shape[:-2], Z.shape[-1]))

    @torch.library.custom_op("hcref::sinkhorn_log_backward", mutates_args=())
    def _sinkhorn_log_backward(g_P: Tensor, Z: Tensor, R: Tensor, C: Tensor) -> Tensor:
        return _log_backward(g_P, Z, R, C)

    @_sinkhorn_log_backward.register_fake
    def _(g_P: Tensor, Z: Tensor, R: Tensor, C: Tensor) -> Tensor:
        return Z.new_empty(Z.shape)

    def _log_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        ctx.save_for_backward(inputs[0], output[1], output[2])

    def _log_grad(ctx: Any, g_P: Tensor | None, g_R: Any, g_C: Any) -> tuple[Tensor, None]:
        Z, R, C = ctx.saved_tensors
        return _sinkhorn_log_backward(_zeros_if_none(g_P, Z), Z, R, C), None

    _sinkhorn_log.register_autograd(_log_grad, setup_context=_log_setup)

    @torch.library.custom_op("hcref::sinkhorn_v4", mutates_args=())
    def _sinkhorn_v4(Z: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        return _v4_forward(Z, iters, eps)

    @_sinkhorn_v4.register_fake
    def _(Z: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        lead, n = Z.shape[:-2], Z.shape[-1]
        return Z.new_empty(Z.shape), Z.new_empty((iters, *lead, n, 1)), Z.new_empty((iters - 1, *lead, 1, n))

    @torch.library.custom_op("hcref::sinkhorn_v4_backward", mutates_args=())
    def _sinkhorn_v4_backward(g_P: Tensor, Z: Tensor, P: Tensor, R: Tensor, C: Tensor) -> Tensor:
        return _v4_backward(g_P, Z, P, R, C)

    @_sinkhorn_v4_backward.register_fake
    def _(g_P: Tensor, Z: Tensor, P: Tensor, R: Tensor, C: Tensor) -> Tensor:
        return Z.new_empty(Z.shape)

    def _v4_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        ctx.save_for_backward(inputs[0], *output)

    def _v4_grad(ctx: Any, g_P: Tensor | None, g_R: Any, g_C: Any) -> tuple[Tensor, None, None]:
        Z, P, R, C = ctx.saved_tensors
        return _sinkhorn_v4_backward(_zeros_if_none(g_P, Z), Z, P, R, C), None, None

    _sinkhorn_v4.register_autograd(_v4_grad, setup_context=_v4_setup)

    def _project(Z: Tensor, iters: int, eps: float) -> Tensor:
        """Sinkhorn without validation, in Z's (compute) dtype."""
        out: Tensor = _sinkhorn_log(Z, iters)[0] if eps == 0 else _sinkhorn_v4(Z, iters, eps)[0]
        return out

else:  # pragma: no cover - torch < 2.4: the autograd.Functions below

    def _project(Z: Tensor, iters: int, eps: float) -> Tensor:
        """Sinkhorn without validation, in Z's (compute) dtype."""
        if eps == 0:
            out: Tensor = _apply(_SinkhornLog, Z, iters)
        else:
            out = _apply(_SinkhornV4, Z, iters, eps)
        return out


class _SinkhornLog(torch.autograd.Function):
    """The same forward and backward as ``hcref::sinkhorn_log`` for torch < 2.4 (no custom ops)."""

    @staticmethod
    def forward(ctx: Any, Z: Tensor, iters: int) -> Tensor:
        P, R, C = _log_forward(Z, iters)
        ctx.save_for_backward(Z, R, C)
        return P

    @staticmethod
    def backward(ctx: Any, g_P: Tensor) -> tuple[Tensor, None]:
        return _log_backward(g_P, *ctx.saved_tensors), None


class _SinkhornV4(torch.autograd.Function):
    """The same forward and backward as ``hcref::sinkhorn_v4`` for torch < 2.4 (no custom ops)."""

    @staticmethod
    def forward(ctx: Any, Z: Tensor, iters: int, eps: float) -> Tensor:
        P, R, C = _v4_forward(Z, iters, eps)
        ctx.save_for_backward(Z, P, R, C)
        return P

    @staticmethod
    def backward(ctx: Any, g_P: Tensor) -> tuple[Tensor, None, None]:
        return _v4_backward(g_P, *ctx.saved_tensors), None, None


def sinkhorn(Z: Tensor, *, iters: int = ITERS, eps: float = 0.0) -> Tensor:
    """See :func:`hcref.sinkhorn` (mHC paper Eq. 9; decision D7): ``iters`` x (columns, then rows)
    from ``exp(Z)``, in the log domain (``eps = 0``) or DeepSeek-V4's recipe (``eps > 0``).

    Shapes: Z (..., n, n) -> P (..., n, n) in ``h_res[out, in]`` orientation. Dtype: Z's (half
    dtypes computed in float32). Raises ValueError for a non-square Z, ``iters < 1``, ``eps < 0``;
    TypeError for a non-floating Z, a non-int ``iters`` or a non-real ``eps``.
    """
    v.check_sinkhorn(meta("Z", Z), iters, eps)
    kernel = _kernel_op("sinkhorn", Z)
    if kernel is not None:
        return kernel(Z, iters=iters, eps=eps)  # type: ignore[no-any-return]
    with _no_autocast(Z):
        return _project(Z.to(_compute_dtype(Z.dtype)), iters, float(eps)).to(Z.dtype)


# --- coefficients -------------------------------------------------------------------------------


def _rms_project(H: Tensor, phi: Tensor) -> Tensor:
    """``z = rms(vec(H)) phi`` folded after the projection, scale-safe (module docstring):
    ``z = ((v / s) phi) r'`` with ``r' = (mean((v/s)^2) + 1e-6/s/s)^(-1/2)``.

    Shapes: H (..., n, d), phi (n*d, k) -> z (..., k), in the dtype of H and phi (one dtype,
    float32 or float64).
    """
    vec = H.reshape(*H.shape[:-2], H.shape[-2] * H.shape[-1])
    s = _row_scale(vec)
    xs = vec / s  # exact: s is a power of two
    r = torch.rsqrt((xs * xs).mean(dim=-1, keepdim=True) + RMS_EPS / s / s)
    return torch.matmul(xs, phi) * r


def _coeff_dtypes(H: Tensor, params: Mapping[str, Tensor]) -> tuple[torch.dtype, torch.dtype]:
    out = _promote(H, *params.values())
    return out, _compute_dtype(out)


def mhc_coeffs(
    H: Tensor, params: Mapping[str, Tensor], *, iters: int = ITERS, eps: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`hcref.mhc_coeffs` (mHC paper Eqs. 7-9; decision D9). With ``v = vec(H)``::

        z      = v (mean(v^2) + 1e-6)^(-1/2) phi              folded: ((v phi) / s) r'
        h_pre  = sigmoid(gates[0] z_pre  + b_pre) + eps
        h_post = 2 sigmoid(gates[1] z_post + b_post)
        h_res  = sinkhorn(gates[2] mat(z_res) + mat(b_res), iters=iters, eps=eps)

    Static (params exactly ``b``): the logits are ``b``; the coefficients are computed once and
    broadcast over the tokens (views).

    Shapes: H (..., n, d); phi (n*d, 2n+n^2), b (2n+n^2), gates (3) -> h_pre (..., n),
    h_post (..., n), h_res (..., n, n). Dtype: promoted dtype of H and params (computed in at
    least float32). Raises the reference's ValueError/TypeError for bad keys, shapes, options.
    """
    n, _, dynamic = v.check_mhc_coeffs(meta("H", H), params, _param_metas(params), iters, eps)
    kernel = _kernel_op("mhc_coeffs", H, *params.values())
    if kernel is not None:
        return kernel(H, params, iters=iters, eps=eps)  # type: ignore[no-any-return]
    out, ct = _coeff_dtypes(H, params)
    lead = H.shape[:-2]
    with _no_autocast(H):
        b = params["b"].to(ct)
        if dynamic:
            z = _rms_project(H.to(ct), params["phi"].to(ct))
            gates = params["gates"].to(ct)
            pre = z[..., :n] * gates[0] + b[:n]
            post = z[..., n:2 * n] * gates[1] + b[n:2 * n]
            res = z[..., 2 * n:] * gates[2] + b[2 * n:]
        else:
            pre, post, res = b[:n], b[n:2 * n], b[2 * n:]
        h_pre = torch.sigmoid(pre) + eps
        h_post = 2 * torch.sigmoid(post)
        h_res = _project(res.reshape(*res.shape[:-1], n, n), iters, float(eps))
        if not dynamic:
            h_pre, h_post, h_res = h_pre.expand(*lead, n), h_post.expand(*lead, n), h_res.expand(*lead, n, n)
    return h_pre.to(out), h_post.to(out), h_res.to(out)


# --- apply steps --------------------------------------------------------------------------------


def mhc_pre(H: Tensor, h_pre: Tensor) -> Tensor:
    """See :func:`hcref.mhc_pre` (mHC paper Eq. 3, ``H_pre x_l``): ``h0 = sum_i h_pre[i] H[i]``.

    Shapes: H (..., n, d), h_pre (..., n) -> h0 (..., d). Dtype: H's (computed in the promoted
    dtype, at least float32, rounded once).
    """
    v.check_mhc_pre(meta("H", H), meta("h_pre", h_pre))
    kernel = _kernel_op("mhc_pre", H, h_pre)
    if kernel is not None:
        return kernel(H, h_pre)  # type: ignore[no-any-return]
    ct = _compute_dtype(_promote(H, h_pre))
    with _no_autocast(H):
        h0 = torch.matmul(h_pre.to(ct).unsqueeze(-2), H.to(ct)).squeeze(-2)
    return h0.to(H.dtype)


def mhc_post(y: Tensor, H: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    """See :func:`hcref.mhc_post` (mHC paper Eq. 3): ``H_out = h_res H + h_post y^T``, i.e.
    ``H_out[i] = sum_j h_res[i, j] H[j] + h_post[i] y``.

    Shapes: y (..., d), H (..., n, d), h_post (..., n), h_res (..., n, n) -> H_out (..., n, d).
    Dtype: ``promote(y, H)`` (computed in the promoted dtype of all four, at least float32).
    """
    v.check_mhc_post(meta("y", y), meta("H", H), meta("h_post", h_post), meta("h_res", h_res))
    kernel = _kernel_op("mhc_post", H, y, h_post, h_res)
    if kernel is not None:
        return kernel(y, H, h_post, h_res)  # type: ignore[no-any-return]
    ct = _compute_dtype(_promote(y, H, h_post, h_res))
    with _no_autocast(H):
        mixed = torch.matmul(h_res.to(ct), H.to(ct))
        H_out = torch.addcmul(mixed, h_post.to(ct).unsqueeze(-1), y.to(ct).unsqueeze(-2))
    return H_out.to(_promote(y, H))


def mhc_head(H: Tensor, params: Mapping[str, Tensor], *, eps: float = 0.0) -> Tensor:
    """See :func:`hcref.mhc_head` (DeepSeek-V4's learned reduce; contract row ``mhc_head``)::

        z = v (mean(v^2) + 1e-6)^(-1/2) phi         v = vec(H), folded as in mhc_coeffs
        w = sigmoid(gate * z + b) + eps             (n), in the promoted dtype
        x = sum_i w_i H[i]

    Shapes: H (..., n, d); phi (n*d, n), b (n), gate () -> x (..., d). Dtype: H's.
    """
    v.check_mhc_head(meta("H", H), params, _param_metas(params), eps)
    _, ct = _coeff_dtypes(H, params)
    with _no_autocast(H):
        Hc = H.to(ct)
        z = _rms_project(Hc, params["phi"].to(ct))
        w = torch.sigmoid(z * params["gate"].to(ct) + params["b"].to(ct)) + eps
        x = torch.matmul(w.unsqueeze(-2), Hc).squeeze(-2)
    return x.to(H.dtype)


__all__ = ["mhc_coeffs", "mhc_head", "mhc_post", "mhc_pre", "sinkhorn"]
