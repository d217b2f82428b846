"""The mHC kernels as ``torch.library`` custom ops (namespace ``hcref_kernels``), each with a
fake (meta) implementation and an autograd formula whose backward is another custom op, so
``torch.compile(fullgraph=True)`` sees one opaque node per op, forward and backward.
Registering them imports no triton (:mod:`._mhc_launch` is imported on the first call).

* ``mhc_coeffs(H, phi, b, gates, Z, n, src, iters, eps, out_dtype)`` -> h_pre (T, n),
  h_post (T, n), h_res (T, n, n), z (T, CP), stats (T, 2). ``src`` 1: dynamic site, H (T, n, d);
  0: static site (T = 1, logits = b; the caller broadcasts); 2: the bare Sinkhorn of
  Z (T, n, n) (only h_res is meaningful). z and stats (saved for the backward) only for 1.
* ``mhc_coeffs_bwd`` -> g_H, g_phi, g_b, g_gates, g_Z (empty where ``src`` has none).
* ``mhc_pre(H, h_pre)`` -> h0; ``mhc_pre_bwd`` -> g_H, g_h_pre.
* ``mhc_post(y, H, h_post, h_res)`` -> H_out; ``mhc_post_bwd`` -> g_y, g_H, g_h_post, g_h_res.

Double backward is not supported (the backward ops have no autograd formula).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_NS = "hcref_kernels"


def layout(n: int) -> tuple[int, int]:
    """``(NP, CP)``: padded stream count (power of two >= max(n, 4)) and packed coefficient
    columns ``2 NP^2`` (see :mod:`._mhc_kernels`)."""
    NP = max(4, 1 << max(0, (n - 1).bit_length()))
    return NP, 2 * NP * NP


def _launch() -> Any:
    from . import _mhc_launch as launch

    return launch


def _like(x: Tensor) -> Tensor:
    """A contiguous tensor of x's shape and dtype: every op here returns contiguous results
    (``empty_like`` would copy the strides of a permuted input, and a fake whose strides differ
    from the real output's misleads the compiled graph)."""
    return x.new_empty(x.shape)


def _acc(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _tokens(H: Tensor, Z: Tensor, src: int) -> int:
    return H.shape[0] if src == 1 else (Z.shape[0] if src == 2 else 1)


# --- coefficients and Sinkhorn ------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::mhc_coeffs", mutates_args=())
def mhc_coeffs(
    H: Tensor, phi: Tensor, b: Tensor, gates: Tensor, Z: Tensor, n: int, src: int, iters: int, eps: float,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    launch = _launch()
    zin = Z
    if src == 2:
        T = Z.shape[0]
        full = torch.cat([Z.new_zeros(T, 2 * n), Z.reshape(T, n * n)], dim=1).to(_acc(out_dtype))
        zin = launch.pack(full, n)
    result: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] = launch.coeffs_forward(
        H, phi, b, gates, zin, n=n, src=src, iters=iters, eps=eps, out_dtype=out_dtype
    )
    return result


@mhc_coeffs.register_fake
def _mhc_coeffs_fake(
    H: Tensor, phi: Tensor, b: Tensor, gates: Tensor, Z: Tensor, n: int, src: int, iters: int, eps: float,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    T = _tokens(H, Z, src)
    _, CP = layout(n)
    acc = _acc(out_dtype)
    saved = T if src == 1 else 0
    return (
        b.new_empty(T, n, dtype=out_dtype), b.new_empty(T, n, dtype=out_dtype), b.new_empty(T, n, n, dtype=out_dtype),
        b.new_empty(saved, CP, dtype=acc), b.new_empty(saved, 2, dtype=acc),
    )


def _mhc_coeffs_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    H, phi, b, gates, Z, n, src, iters, eps, _ = inputs
    ctx.save_for_backward(H, phi, b, gates, Z, output[3], output[4])
    ctx.opts = (n, src, iters, eps)
    ctx.mark_non_differentiable(output[3], output[4])
    ctx.set_materialize_grads(False)


def _mhc_coeffs_backward(ctx: Any, g_pre: Tensor | None, g_post: Tensor | None, g_res: Tensor | None,
                         _gz: Any, _gs: Any) -> tuple[Any, ...]:
    H, phi, b, gates, Z, z, stats = ctx.saved_tensors
    n, src, iters, eps = ctx.opts
    if src == 2:
        g_pre = g_post = None
    if g_pre is None and g_post is None and g_res is None:
        return (None,) * 10
    gH, gphi, gb, ggates, gZ = mhc_coeffs_bwd(
        H, z, stats, None if g_pre is None else g_pre.contiguous(), None if g_post is None else g_post.contiguous(),
        None if g_res is None else g_res.contiguous(), phi, b, gates, Z, n, src, iters, eps,
    )
    dyn = src == 1
    return (gH if dyn else None, gphi if dyn else None, gb if src != 2 else None, ggates if dyn else None,
            gZ if src == 2 else None, None, None, None, None, None)


mhc_coeffs.register_autograd(_mhc_coeffs_backward, setup_context=_mhc_coeffs_setup)


@torch.library.custom_op(f"{_NS}::mhc_coeffs_bwd", mutates_args=())
def mhc_coeffs_bwd(
    H: Tensor, z: Tensor, stats: Tensor, g_pre: Tensor | None, g_post: Tensor | None, g_res: Tensor | None,
    phi: Tensor, b: Tensor, gates: Tensor, Z: Tensor, n: int, src: int, iters: int, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    launch = _launch()
    zs = z
    if src == 2:
        T = Z.shape[0]
        zs = launch.pack(torch.cat([Z.new_zeros(T, 2 * n), Z.reshape(T, n * n)], dim=1).to(z.dtype), n)
    gH, gphi, gb, ggates, gl = launch.coeffs_backward(
        H, zs, stats, g_pre, g_post, g_res, phi, b, gates, n=n, src=src, iters=iters, eps=eps
    )
    if src == 2:
        gZ = gl[:, 2 * n:].reshape(Z.shape).to(Z.dtype).contiguous()
        return b.new_empty(0), b.new_empty(0), b.new_empty(0), b.new_empty(0), gZ
    if src == 0:
        return b.new_empty(0), b.new_empty(0), gb, b.new_empty(0), b.new_empty(0)
    return gH.contiguous(), gphi.contiguous(), gb.contiguous(), ggates.contiguous(), b.new_empty(0)


@mhc_coeffs_bwd.register_fake
def _mhc_coeffs_bwd_fake(
    H: Tensor, z: Tensor, stats: Tensor, g_pre: Tensor | None, g_post: Tensor | None, g_res: Tensor | None,
    phi: Tensor, b: Tensor, gates: Tensor, Z: Tensor, n: int, src: int, iters: int, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    e = b.new_empty(0)
    if src == 2:
        return e, b.new_empty(0), b.new_empty(0), b.new_empty(0), _like(Z)
    if src == 0:
        return e, b.new_empty(0), _like(b), b.new_empty(0), b.new_empty(0)
    return _like(H), _like(phi), _like(b), _like(gates), b.new_empty(0)


# --- pre-apply ----------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::mhc_pre", mutates_args=())
def mhc_pre(H: Tensor, h_pre: Tensor) -> Tensor:
    out: Tensor = _launch().pre_forward(H, h_pre, _acc(H.dtype, h_pre.dtype))
    return out.contiguous()


@mhc_pre.register_fake
def _mhc_pre_fake(H: Tensor, h_pre: Tensor) -> Tensor:
    return H.new_empty(*H.shape[:-2], H.shape[-1])


def _mhc_pre_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.save_for_backward(*inputs)
    ctx.set_materialize_grads(False)


def _mhc_pre_backward(ctx: Any, g: Tensor | None) -> tuple[Any, ...]:
    if g is None:
        return None, None
    H, h_pre = ctx.saved_tensors
    gH, gpre = mhc_pre_bwd(g, H, h_pre)
    return gH, gpre


mhc_pre.register_autograd(_mhc_pre_backward, setup_context=_mhc_pre_setup)


@torch.library.custom_op(f"{_NS}::mhc_pre_bwd", mutates_args=())
def mhc_pre_bwd(g: Tensor, H: Tensor, h_pre: Tensor) -> tuple[Tensor, Tensor]:
    gH, gpre = _launch().pre_backward(g, H, h_pre, _acc(H.dtype, h_pre.dtype, g.dtype))
    return gH.contiguous(), gpre.contiguous()


@mhc_pre_bwd.register_fake
def _mhc_pre_bwd_fake(g: Tensor, H: Tensor, h_pre: Tensor) -> tuple[Tensor, Tensor]:
    return _like(H), _like(h_pre)


# --- post-apply and residual mix ----------------------------------------------------------


@torch.library.custom_op(f"{_NS}::mhc_post", mutates_args=())
def mhc_post(y: Tensor, H: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    ct = _acc(y.dtype, H.dtype, h_post.dtype, h_res.dtype)
    out: Tensor = _launch().post_forward(y, H, h_post, h_res, ct, torch.promote_types(y.dtype, H.dtype))
    return out.contiguous()


@mhc_post.register_fake
def _mhc_post_fake(y: Tensor, H: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    return H.new_empty(H.shape, dtype=torch.promote_types(y.dtype, H.dtype))


def _mhc_post_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.save_for_backward(*inputs)
    ctx.set_materialize_grads(False)


def _mhc_post_backward(ctx: Any, G: Tensor | None) -> tuple[Any, ...]:
    if G is None:
        return None, None, None, None
    y, H, h_post, h_res = ctx.saved_tensors
    gy, gH, gpost, gres = mhc_post_bwd(G, y, H, h_post, h_res)
    return gy, gH, gpost, gres


mhc_post.register_autograd(_mhc_post_backward, setup_context=_mhc_post_setup)


@torch.library.custom_op(f"{_NS}::mhc_post_bwd", mutates_args=())
def mhc_post_bwd(
    G: Tensor, y: Tensor, H: Tensor, h_post: Tensor, h_res: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    ct = _acc(G.dtype, y.dtype, H.dtype, h_post.dtype, h_res.dtype)
    gy, gH, gpost, gres = _launch().post_backward(G, y, H, h_post, h_res, ct)
    return gy.contiguous(), gH.contiguous(), gpost.contiguous(), gres.contiguous()


@mhc_post_bwd.register_fake
def _mhc_post_bwd_fake(
    G: Tensor, y: Tensor, H: Tensor, h_post: Tensor, h_res: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _like(y), _like(H), _like(h_post), _like(h_res)
