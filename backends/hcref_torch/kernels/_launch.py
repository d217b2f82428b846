"""Launchers: allocate outputs, pack the small parameter tensors, pick block sizes, run the
kernels of :mod:`._kernels`. Imported lazily (it imports triton); every function takes and
returns plain tensors and is wrapped by a custom op in :mod:`._ops`.

Block sizes are fixed heuristics (no autotuning: the interpreter cannot autotune, and the
figures that would justify other choices need a GPU). On a GPU: the coefficient forward takes
64 rows (tokens x padded streams) by 64 columns per step (16 rows when it also writes the mix,
so that a token block is still in L2 when it is read the second time); the coefficient
backward 64 x 64 with about four programs per SM; the width/depth kernels 16 rows by 256
columns. Under the interpreter, blocks are as large as the (small) test shapes allow, to keep
grids to a few programs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import triton

from hcref.norms import LAYERNORM_EPS, RMSNORM_EPS

from . import _kernels as k

Tensor = torch.Tensor

INTERPRET = k.INTERPRET
LAUNCHES: Counter[str] = Counter()
"""Kernel launches by kernel name (tests use it to prove the kernel path ran)."""

FORCE_BLOCK_W: int | None = None
"""Tests: force this column block (a power of two >= 16) to exercise several blocks and masks."""
FORCE_BLOCK_T: int | None = None
"""Tests: force this many tokens per block (a power of two) to exercise several programs."""
FORCE_GROUPS: int | None = None
"""Tests: force this many token-block groups in the coefficient backward (several partial sums)."""
FORCE_MODE: int | None = None
"""Tests: force the forward projection mode of the coefficient kernel (2: split dot, see _kernels)."""

BWD_HALF_PRECISION = "tf32"
"""``input_precision`` of the coefficient backward's two dots for half-precision data on a GPU:
TF32 (10-bit mantissa, relative error about 5e-4 per product) is well inside the half types'
own precision and keeps the kernel at one dot each ("tf32x3" triples them and the registers)."""

NONE, RMS, LAYER = 0, 1, 2
"""Norm kinds as the kernels number them."""


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 4


GPU_CONFIG: dict[str, tuple[int, int, int]] = {
    # kernel: (rows per block = tokens x padded streams, columns per block, warps)
    "coeffs_fwd": (64, 64, 8),
    "coeffs_fwd_mix": (16, 64, 4),
    "coeffs_bwd": (32, 64, 8),
    "coeffs_fp64": (16, 16, 4),
    "mix_fwd": (16, 256, 8),
    "mix_bwd": (16, 128, 8),
    "write_fwd": (16, 256, 8),
    "write_bwd": (16, 256, 8),
}
"""Block shapes on a GPU (see the module docstring); the interpreter uses larger blocks."""


def _config(kernel: str, KP: int, w: int, *, dot: bool) -> tuple[int, int, int]:
    """(tokens per block, columns per block, warps) of ``kernel`` for K rows padded to KP."""
    rows, cols, warps = GPU_CONFIG[kernel]
    return _rows_block(KP, rows, dot=dot), _col_block(w, cols), warps


def _rows_block(KP: int, target_rows: int, *, dot: bool) -> int:
    """Tokens per block: ``target_rows`` rows of the padded (token, stream) grid, at least 16
    rows when the block enters ``tl.dot``."""
    if FORCE_BLOCK_T is not None:
        bt = FORCE_BLOCK_T
    elif INTERPRET:
        bt = 16
    else:
        bt = max(1, target_rows // KP)
    if dot:
        bt = max(bt, -(-16 // KP))
    return bt


def _col_block(w: int, gpu: int, *, minimum: int = 16) -> int:
    if FORCE_BLOCK_W is not None:
        return FORCE_BLOCK_W
    if INTERPRET:
        return max(minimum, min(128, _pow2(w)))
    return max(minimum, min(gpu, _pow2(w)))


def _fwd_mode(dtype: torch.dtype, acc: torch.dtype) -> tuple[int, str]:
    if acc == torch.float64:
        return 0, "ieee"
    if FORCE_MODE is not None:
        return FORCE_MODE, "ieee"
    if dtype == torch.bfloat16 and not INTERPRET:
        return 2, "ieee"
    if dtype in (torch.bfloat16, torch.float16) and not INTERPRET:
        return 1, "tf32x3"
    return 1, "ieee"


def _bwd_mode(dtype: torch.dtype, acc: torch.dtype) -> tuple[int, str]:
    if acc == torch.float64:
        return 0, "ieee"
    if dtype in (torch.bfloat16, torch.float16) and not INTERPRET:
        return 1, BWD_HALF_PRECISION
    return 1, "ieee"


def _cp(c1: int, mode: int) -> int:
    return _pow2(c1) if mode == 0 else max(16, _pow2(c1))


def _launch(name: str, kernel: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    LAUNCHES[name] += 1
    device = args[0].device
    if device.type == "cuda":  # Triton launches on the current device: make it the tensors' one
        with torch.cuda.device(device):
            kernel[grid](*args, **meta)
    else:
        kernel[grid](*args, **meta)


def _tokens(x: Tensor, trailing: int) -> tuple[Tensor, int]:
    """``x`` (..., *trailing axes) as (T, *trailing) memory with one token stride (0 for a
    tensor broadcast over the tokens, such as a static site's coefficients); the last axis
    must be unit-stride. Copies only when the leading axes do not collapse."""
    tail = tuple(x.shape[x.dim() - trailing:])
    try:
        flat = x.view(-1, *tail)
    except RuntimeError:
        flat = x.reshape(-1, *tail).contiguous()
    if flat.shape[-1] > 1 and flat.stride(-1) != 1:
        flat = flat.contiguous()
    stride_t = flat.stride(0) if flat.shape[0] > 1 else 0
    return flat, stride_t


# --- the packed small parameters of a coefficient call ------------------------------------


class _Pack:
    """``W = [W_alpha | W_beta]`` (w, c+1) with the norm weight folded in (``W'``), padded to CP
    columns; PK rows: colsum(W'), ``norm_bias @ W``, the gate per column, [eps]; ST: the
    static terms ``[static_alpha | static_beta]`` (K, CP)."""

    def __init__(
        self,
        W_alpha: Tensor, W_beta: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None,
        s_alpha: Tensor | None, s_beta: Tensor | None, static_alpha: Tensor, static_beta: Tensor,
        norm: int, use_scale: bool, acc: torch.dtype, CP: int,
    ) -> None:
        C = W_alpha.shape[-1]
        C1 = C + 1
        self.W = torch.cat([W_alpha, W_beta.unsqueeze(-1)], dim=-1).to(acc)
        self.Wp = self.W * norm_weight.to(acc).unsqueeze(-1) if norm != NONE and norm_weight is not None else self.W
        pad = CP - C1
        self.Wpad = torch.nn.functional.pad(self.Wp, (0, pad)).contiguous()
        zeros = self.W.new_zeros(C1)
        colsum = self.Wp.sum(0) if norm == LAYER else zeros
        bw = norm_bias.to(acc) @ self.W if norm == LAYER and norm_bias is not None else zeros
        if use_scale and s_alpha is not None and s_beta is not None:
            gates = torch.cat([s_alpha.to(acc).reshape(1).expand(C), s_beta.to(acc).reshape(1)])
        else:
            gates = self.W.new_ones(C1)
        eps = self.W.new_zeros(C1)
        eps[0] = LAYERNORM_EPS if norm == LAYER else RMSNORM_EPS
        self.PK = torch.nn.functional.pad(torch.stack([colsum, bw, gates, eps]), (0, pad)).contiguous()
        static = torch.cat([static_alpha.to(acc), static_beta.to(acc).unsqueeze(-1)], dim=-1)
        self.ST = torch.nn.functional.pad(static, (0, pad)).contiguous()


# --- coefficients -------------------------------------------------------------------------


def coeffs_forward(
    H: Tensor, W_alpha: Tensor, W_beta: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None,
    s_alpha: Tensor | None, s_beta: Tensor | None, static_alpha: Tensor, static_beta: Tensor,
    *, norm: int, use_tanh: bool, use_scale: bool, split: int, mix: int, out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Dynamic coefficients of H (..., K, w): alpha (..., K, C), beta (..., K) in ``out_dtype``;
    the saved pre-activations ``a`` (T*K, C+1) and row statistics (T*K, 4: mu', r', s) in the
    accumulation dtype; with ``mix`` 1 or 2 also h0 (..., SPLIT*w) and (mix 2) H_res (..., K, w)
    in H's dtype (empty tensors otherwise)."""
    lead = H.shape[:-2]
    K, w = H.shape[-2], H.shape[-1]
    C = static_alpha.shape[-1]
    C1 = C + 1
    H3 = H.reshape(-1, K, w).contiguous()
    T = H3.shape[0]
    acc = _acc_dtype(out_dtype, H.dtype)
    mode, prec = _fwd_mode(H.dtype, acc)
    CP = _cp(C1, mode)
    KP = _pow2(K)
    pk = _Pack(W_alpha, W_beta, norm_weight, norm_bias, s_alpha, s_beta, static_alpha, static_beta,
               norm, use_scale, acc, CP)
    if mode == 2:
        whi = pk.Wpad.to(H.dtype)
        wlo = (pk.Wpad - whi.to(acc)).to(H.dtype)
    else:
        whi = wlo = pk.Wpad
    dev = H.device
    alpha = torch.empty(T, K, C, dtype=out_dtype, device=dev)
    beta = torch.empty(T, K, dtype=out_dtype, device=dev)
    a = torch.empty(T * K, C1, dtype=acc, device=dev)
    stats = torch.zeros(T * K, 4, dtype=acc, device=dev)
    first = torch.empty(T, split * w, dtype=H.dtype, device=dev) if mix else H.new_empty(0)
    rest = torch.empty(T, K, w, dtype=H.dtype, device=dev) if mix == 2 else H.new_empty(0)
    if T > 0:
        if acc == torch.float64:
            bt, bw, warps = _config("coeffs_fp64", KP, w, dot=False)
        else:
            bt, bw, warps = _config("coeffs_fwd_mix" if mix else "coeffs_fwd", KP, w, dot=True)
        _launch(
            "coeffs_fwd", k.coeffs_fwd_kernel, (triton.cdiv(T, bt),),
            H3, pk.Wpad, whi, wlo, pk.PK, pk.ST, alpha, beta, a, stats, first, rest, T, w,
            K=K, KP=KP, C=C, CP=CP, SPLIT=split, BLOCK_T=bt, BLOCK_W=bw, NORM=norm, TANH=use_tanh,
            MODE=mode, PREC=prec, MIX=mix, IS64=acc == torch.float64, num_warps=warps,
        )
    first_out = first.reshape(*lead, split * w) if mix else first
    rest_out = rest.reshape(*lead, K, w) if mix == 2 else rest
    return alpha.reshape(*lead, K, C), beta.reshape(*lead, K), a, stats, first_out, rest_out


def coeffs_backward(
    H: Tensor, a: Tensor, stats: Tensor, g_alpha: Tensor | None, g_beta: Tensor | None,
    g_first: Tensor | None, g_rest: Tensor | None,
    W_alpha: Tensor, W_beta: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None,
    s_alpha: Tensor | None, s_beta: Tensor | None, static_alpha: Tensor, static_beta: Tensor,
    *, norm: int, use_tanh: bool, use_scale: bool, split: int,
) -> dict[str, Tensor]:
    """VJP of :func:`coeffs_forward`; with ``g_first``/``g_rest`` (the fused site) the mix's
    contribution too: ``g_alpha += H G_mix^T`` first (one pass of :func:`mix_backward` without
    G_H), then one pass writing ``G_H = alpha G_mix + (coefficient VJP)``.

    Returns ``H`` and the parameter names (``W_alpha``, ..., ``static_alpha``, ``static_beta``)
    mapped to their gradients; ``norm_weight``/``norm_bias``/``s_alpha``/``s_beta`` only when
    given (zeros when switched off)."""
    K, w = H.shape[-2], H.shape[-1]
    C = static_alpha.shape[-1]
    C1 = C + 1
    H3 = H.reshape(-1, K, w).contiguous()
    T = H3.shape[0]
    acc = a.dtype
    mode, prec = _bwd_mode(H.dtype, acc)
    CP = _cp(C1, mode)
    KP = _pow2(K)
    pk = _Pack(W_alpha, W_beta, norm_weight, norm_bias, s_alpha, s_beta, static_alpha, static_beta,
               norm, use_scale, acc, CP)
    gf = g_first.reshape(T, split, w).contiguous() if g_first is not None else None
    gr = g_rest.reshape(T, K, w).contiguous() if g_rest is not None else None
    ga = g_alpha.reshape(T, K, C).contiguous() if g_alpha is not None else None
    if gf is not None or gr is not None:
        g_mix_alpha = mix_backward(H3, None, gf, gr, split=split, write_gh=False, g_alpha_dtype=acc)[1]
        ga = g_mix_alpha if ga is None else g_mix_alpha + ga
    gb = g_beta.reshape(T, K).contiguous() if g_beta is not None else None

    dev = H.device
    GH = torch.empty(T, K, w, dtype=H.dtype, device=dev)
    if acc == torch.float64:
        bt, bw, warps = _config("coeffs_fp64", KP, w, dot=False)
    else:
        bt, bw, warps = _config("coeffs_bwd", KP, w, dot=True)
    nwb = triton.cdiv(w, bw)
    nblocks = triton.cdiv(T, bt)
    target = 1 if INTERPRET else 4 * _num_sms(dev)
    groups = max(1, min(nblocks, -(-target // nwb)))
    if FORCE_GROUPS is not None:
        groups = max(1, min(nblocks, FORCE_GROUPS))
    per_group = max(1, triton.cdiv(nblocks, groups))
    groups = max(1, triton.cdiv(nblocks, per_group))
    QP = torch.zeros(groups, w, CP, dtype=acc, device=dev)
    SP = torch.zeros(groups, KP + 2, CP, dtype=acc, device=dev)
    if T > 0:
        dummy = H3
        _launch(
            "coeffs_bwd", k.coeffs_bwd_kernel, (nwb, groups),
            H3, a, stats, ga if ga is not None else dummy, gb if gb is not None else dummy, pk.Wpad, pk.PK, pk.ST,
            gf if gf is not None else dummy, gr if gr is not None else dummy, GH, QP, SP,
            T, w, per_group, nblocks,
            K=K, KP=KP, C=C, CP=CP, SPLIT=split, BLOCK_T=bt, BLOCK_W=bw, NORM=norm, TANH=use_tanh,
            MODE=mode, PREC=prec, HAS_GA=ga is not None, HAS_GB=gb is not None,
            HAS_GF=gf is not None, HAS_GR=gr is not None, IS64=acc == torch.float64, num_warps=warps,
        )
    else:
        GH.zero_()
    Q = QP.sum(0)[:, :C1]
    S = SP.sum(0)
    s_static, s_ga, s_gu = S[:K, :C1], S[KP, :C1], S[KP + 1, :C1]
    W = pk.W
    if norm == NONE:
        G_W = Q
    elif norm == RMS:
        G_W = Q * norm_weight.to(acc).unsqueeze(-1)  # type: ignore[union-attr]
    else:
        G_W = Q * norm_weight.to(acc).unsqueeze(-1) + norm_bias.to(acc).unsqueeze(-1) * s_ga  # type: ignore[union-attr]
    out: dict[str, Tensor] = {
        "H": GH.reshape(H.shape),
        # separate tensors (custom ops may not return views of one another)
        "W_alpha": G_W[:, :C].to(W_alpha.dtype, copy=True),
        "W_beta": G_W[:, C].to(W_beta.dtype, copy=True),
        "static_alpha": s_static[:, :C].to(static_alpha.dtype, copy=True),
        "static_beta": s_static[:, C].to(static_beta.dtype, copy=True),
    }
    if norm_weight is not None:
        out["norm_weight"] = ((W * Q).sum(1) if norm != NONE else torch.zeros_like(Q[:, 0])).to(norm_weight.dtype)
    if norm_bias is not None:
        out["norm_bias"] = (W @ s_ga if norm == LAYER else torch.zeros_like(Q[:, 0])).to(norm_bias.dtype)
    if s_alpha is not None and s_beta is not None:
        g_sa = s_gu[:C].sum() if use_scale else s_gu.new_zeros(())
        g_sb = s_gu[C] if use_scale else s_gu.new_zeros(())
        out["s_alpha"] = g_sa.to(s_alpha.dtype, copy=True).reshape(s_alpha.shape)
        out["s_beta"] = g_sb.to(s_beta.dtype, copy=True).reshape(s_beta.shape)
    return out


# --- width, depth -------------------------------------------------------------------------


def mix_forward(
    H: Tensor, alpha: Tensor, y: Tensor | None, beta: Tensor | None, *,
    split: int, write_first: bool, write_rest: bool, fc: bool, rest_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """``mix = alpha^T H`` (H (..., K, w), alpha (..., K, C)): FIRST (..., SPLIT*w) in H's dtype
    and/or REST (..., K, w) in ``rest_dtype``; with y and beta REST is the fused depth step
    ``A_r^T H + beta y`` (HC) or its diagonal-write FC form. Unwritten results are empty."""
    lead = H.shape[:-2]
    K, w = H.shape[-2], H.shape[-1]
    C = alpha.shape[-1]
    H3 = H.reshape(-1, K, w).contiguous()
    T = H3.shape[0]
    al, sa_t = _tokens(alpha, 2)
    dev = H.device
    first = torch.empty(T, split * w, dtype=H.dtype, device=dev) if write_first else H.new_empty(0)
    rest = torch.empty(T, K, w, dtype=rest_dtype, device=dev) if write_rest else H.new_empty(0)
    add_y = y is not None and beta is not None
    if add_y:
        yy, sy_t = _tokens(y, 1)  # type: ignore[arg-type]
        bb, sb_t = _tokens(beta, 1)  # type: ignore[arg-type]
    else:
        yy, sy_t, bb, sb_t = H3, 0, H3, 0
    if T > 0:
        KP = _pow2(K)
        bt, bw, warps = _config("mix_fwd", KP, w, dot=False)
        _launch(
            "mix_fwd", k.mix_fwd_kernel, (triton.cdiv(T, bt),),
            H3, al, yy, bb, first, rest, T, w, sa_t, al.stride(-2), sb_t, sy_t, w if fc else 0,
            K=K, KP=KP, C=C, SPLIT=split, BLOCK_T=bt, BLOCK_W=bw, WRITE_FIRST=write_first,
            WRITE_REST=write_rest, ADD_Y=add_y, IS64=_acc_dtype(H.dtype, alpha.dtype, rest_dtype) == torch.float64,
            num_warps=warps,
        )
    return (first.reshape(*lead, split * w) if write_first else first,
            rest.reshape(*lead, K, w) if write_rest else rest)


def mix_backward(
    H: Tensor, alpha: Tensor | None, g_first: Tensor | None, g_rest: Tensor | None, *,
    split: int, write_gh: bool, g_alpha_dtype: torch.dtype,
) -> tuple[Tensor | None, Tensor]:
    """VJP of the mix: (G_H (..., K, w) in H's dtype when ``write_gh`` (needs alpha), else None;
    G_alpha (..., K, C) in ``g_alpha_dtype``). G_mix rows: g_first (..., SPLIT*w), g_rest (..., K, w)."""
    lead = H.shape[:-2]
    K, w = H.shape[-2], H.shape[-1]
    H3 = H.reshape(-1, K, w).contiguous()
    T = H3.shape[0]
    C = split + K
    if alpha is not None:
        al, sa_t = _tokens(alpha, 2)
        sa_i = al.stride(-2)
    else:
        al, sa_t, sa_i = H3, 0, 0
    gf = g_first.reshape(T, split, w).contiguous() if g_first is not None else None
    gr = g_rest.reshape(T, K, w).contiguous() if g_rest is not None else None
    dev = H.device
    GH = torch.empty(T, K, w, dtype=H.dtype, device=dev) if write_gh else None
    GAL = torch.empty(T, K, C, dtype=g_alpha_dtype, device=dev)
    if T > 0 and (gf is not None or gr is not None):
        KP = _pow2(K)
        CP = _pow2(C)
        bt, bw, warps = _config("mix_bwd", KP, w, dot=False)
        _launch(
            "mix_bwd", k.mix_bwd_kernel, (triton.cdiv(T, bt),),
            H3, al, gf if gf is not None else H3, gr if gr is not None else H3,
            GH if GH is not None else H3, GAL, T, w, sa_t, sa_i,
            K=K, KP=KP, C=C, CP=CP, SPLIT=split, BLOCK_T=bt, BLOCK_W=bw, HAS_GF=gf is not None,
            HAS_GR=gr is not None, WRITE_GH=write_gh,
            IS64=_acc_dtype(H.dtype, g_alpha_dtype, al.dtype) == torch.float64, num_warps=warps,
        )
    else:
        GAL.zero_()
        if GH is not None:
            GH.zero_()
    return (GH.reshape(H.shape) if GH is not None else None), GAL.reshape(*lead, K, C)


def write_forward(y: Tensor, H_res: Tensor, beta: Tensor, *, fc: bool, out_dtype: torch.dtype) -> Tensor:
    """``H_out = H_res + beta y`` (HC: y (..., d) to every stream; FC: fraction j of y to row j)."""
    K, w = H_res.shape[-2], H_res.shape[-1]
    HR = H_res.reshape(-1, K, w).contiguous()
    T = HR.shape[0]
    out = torch.empty(T, K, w, dtype=out_dtype, device=H_res.device)
    if T > 0:
        yy, sy_t = _tokens(y, 1)
        bb, sb_t = _tokens(beta, 1)
        KP = _pow2(K)
        bt, bw, warps = _config("write_fwd", KP, w, dot=False)
        _launch(
            "write_fwd", k.write_fwd_kernel, (triton.cdiv(T, bt),),
            HR, yy, bb, out, T, w, sb_t, sy_t, w if fc else 0,
            K=K, KP=KP, BLOCK_T=bt, BLOCK_W=bw, FC=fc,
            IS64=_acc_dtype(out_dtype, beta.dtype) == torch.float64, num_warps=warps,
        )
    return out.reshape(H_res.shape)


def write_backward(G: Tensor, y: Tensor, beta: Tensor, *, fc: bool) -> tuple[Tensor, Tensor]:
    """VJP of :func:`write_forward`: (G_y in y's dtype, G_beta in beta's dtype)."""
    K, w = G.shape[-2], G.shape[-1]
    G3 = G.reshape(-1, K, w).contiguous()
    T = G3.shape[0]
    GY = torch.empty(T, y.shape[-1], dtype=y.dtype, device=G.device)
    GB = torch.empty(T, K, dtype=beta.dtype, device=G.device)
    if T > 0:
        yy, sy_t = _tokens(y, 1)
        bb, sb_t = _tokens(beta, 1)
        KP = _pow2(K)
        bt, bw, warps = _config("write_bwd", KP, w, dot=False)
        _launch(
            "write_bwd", k.write_bwd_kernel, (triton.cdiv(T, bt),),
            G3, yy, bb, GY, GB, T, w, sb_t, sy_t, w if fc else 0,
            K=K, KP=KP, BLOCK_T=bt, BLOCK_W=bw, FC=fc,
            IS64=_acc_dtype(G.dtype, y.dtype, beta.dtype) == torch.float64, num_warps=warps,
        )
    return GY.reshape(y.shape), GB.reshape(beta.shape)


__all__ = ["LAUNCHES", "coeffs_backward", "coeffs_forward", "mix_backward", "mix_forward", "write_backward",
           "write_forward"]
