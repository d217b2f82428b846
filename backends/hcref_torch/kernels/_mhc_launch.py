"""Launchers of the mHC kernels: pack the coefficient columns, pick block sizes, run
:mod:`._mhc_kernels` (coefficients, Sinkhorn) and the mixing kernels of :mod:`._kernels`
(``mhc_pre``, ``mhc_post``). Imported lazily (it imports triton); every function takes and
returns plain tensors and is wrapped by a custom op in :mod:`._mhc_ops`.

Block sizes (fixed heuristics, no autotuning; GPU figures need a GPU): the coefficient forward
32 tokens x 64 columns of ``v`` per step; the projection backward 32 tokens x 64 columns with
about four programs per SM; the epilogue kernels 32 tokens (16 under the interpreter).
"""

from __future__ import annotations

import torch
import triton

from . import _launch as hc
from . import _mhc_kernels as k
from ._mhc_ops import layout

Tensor = torch.Tensor

GPU_CONFIG: dict[str, tuple[int, int, int]] = {
    # kernel: (tokens per block, columns per block, warps)
    "mhc_fwd": (32, 64, 4),
    "mhc_fwd_fp64": (16, 16, 4),
    "mhc_epi_bwd": (32, 1, 4),
    "mhc_proj_bwd": (32, 64, 8),
    "mhc_proj_bwd_fp64": (16, 16, 4),
}
"""Block shapes on a GPU; the interpreter uses 16 tokens and up to 128 columns."""


_DEST: dict[tuple[int, str], Tensor] = {}


def _dest(n: int, device: torch.device) -> Tensor:
    """Packed column of each of the 2n+n^2 contract columns [pre | post | res (out, in)]."""
    key = (n, str(device))
    if key not in _DEST:
        NP, _ = layout(n)
        cols = [NP * NP + j for j in range(n)] + [NP * NP + NP + j for j in range(n)]
        cols += [i * NP + j for i in range(n) for j in range(n)]
        _DEST[key] = torch.tensor(cols, dtype=torch.long, device=device)
    return _DEST[key]


def pack(x: Tensor, n: int) -> Tensor:
    """(..., 2n+n^2) -> (..., CP) contiguous, zero padding."""
    _, CP = layout(n)
    out = x.new_zeros(*x.shape[:-1], CP)
    out[..., _dest(n, x.device)] = x
    return out


def unpack(x: Tensor, n: int) -> Tensor:
    """(..., CP) -> (..., 2n+n^2)."""
    return x[..., _dest(n, x.device)]


def _gate_columns(gates: Tensor, n: int) -> Tensor:
    return torch.repeat_interleave(gates, torch.tensor([n, n, n * n], device=gates.device))


def _blocks(kernel: str, L: int, is64: bool) -> tuple[int, int, int]:
    if is64 and kernel + "_fp64" in GPU_CONFIG:
        kernel += "_fp64"
    bt, bl, warps = GPU_CONFIG[kernel]
    if hc.FORCE_BLOCK_T is not None:
        bt = hc.FORCE_BLOCK_T
    elif hc.INTERPRET:
        bt = 16
    if hc.FORCE_BLOCK_W is not None:
        bl = hc.FORCE_BLOCK_W
    else:
        bl = max(16, min(128 if hc.INTERPRET else bl, hc._pow2(max(L, 1))))
    return bt, bl, warps


def coeffs_forward(
    H: Tensor, phi: Tensor, b: Tensor, gates: Tensor, zin: Tensor, *, n: int, src: int, iters: int, eps: float,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(h_pre (T, n), h_post (T, n), h_res (T, n, n), z (T, CP), stats (T, 2))``.

    ``src`` 1: dynamic, H (T, n, d) and phi (n*d, 2n+n^2); 0: static (one token, logits = b);
    2: bare Sinkhorn of ``zin`` (T, CP) packed logits (b = 0, gates = 1). z and stats are
    written for ``src`` 1 only (empty otherwise). Accumulation in float64 when out_dtype is."""
    acc = hc._acc_dtype(out_dtype)
    NP, CP = layout(n)
    dev = b.device
    if src == 1:
        H2 = H.reshape(H.shape[0], H.shape[-2] * H.shape[-1]).contiguous()
        T, L = H2.shape
        mode, prec = hc._fwd_mode(H.dtype, acc)
        WP = pack(phi.to(acc), n)
        if mode == 2:
            whi = WP.to(H.dtype)
            wlo = (WP - whi.to(acc)).to(H.dtype)
        else:
            whi = wlo = WP
        GC = pack(_gate_columns(gates.to(acc), n), n)
    else:
        T = zin.shape[0] if src == 2 else 1
        L, mode, prec = 0, 1, "ieee"
        H2 = WP = whi = wlo = b.new_empty(0, dtype=acc)
        GC = pack(b.new_full((2 * n + n * n,), 1.0 if src == 2 else 0.0, dtype=acc), n)
    BC = pack(b.to(acc), n)
    h_pre = torch.empty(T, n, dtype=out_dtype, device=dev)
    h_post = torch.empty(T, n, dtype=out_dtype, device=dev)
    h_res = torch.empty(T, n, n, dtype=out_dtype, device=dev)
    z = torch.empty(T if src == 1 else 0, CP, dtype=acc, device=dev)
    stats = torch.empty(T if src == 1 else 0, 2, dtype=acc, device=dev)
    if T > 0:
        bt, bl, warps = _blocks("mhc_fwd", L, acc == torch.float64)
        if acc == torch.float64:
            mode, prec = 0, "ieee"
        elif src == 1 and mode != 2:
            bt = max(bt, 16)  # tl.dot needs 16 rows
        hc._launch(
            "mhc_coeffs_fwd", k.coeffs_fwd_kernel, (triton.cdiv(T, bt),),
            H2 if src == 1 else BC, WP if src == 1 else BC, whi if src == 1 else BC, wlo if src == 1 else BC,
            zin if src == 2 else BC, GC, BC, h_pre, h_post, h_res, z if src == 1 else BC, stats if src == 1 else BC,
            T, max(L, 1), iters, float(eps),
            N=n, NP=NP, CP=CP, BLOCK_T=bt, BLOCK_L=bl, SRC=src, MODE=mode, PREC=prec, EPS_POS=eps > 0,
            IS64=acc == torch.float64, num_warps=warps,
        )
    return h_pre, h_post, h_res, z, stats


def coeffs_backward(
    H: Tensor, z: Tensor, stats: Tensor, g_pre: Tensor | None, g_post: Tensor | None, g_res: Tensor | None,
    phi: Tensor, b: Tensor, gates: Tensor, *, n: int, src: int, iters: int, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """VJP of :func:`coeffs_forward`: ``(g_H, g_phi, g_b, g_gates, g_logits (T, 2n+n^2))``.

    Dynamic (``src`` 1): the epilogue kernel (``g_logits``, ``g_z``, ``c2``, bias/gate partial
    sums), then the projection kernel (``g_H`` and the phi partial sums), one pass over H.
    Static/bare (0, 2): the epilogue kernel only (``g_H``, ``g_phi``, ``g_gates`` empty). The
    cotangents are (T, n), (T, n), (T, n, n) or None; the logits come from ``z`` (src 1), from
    ``b`` (src 0) or from ``z`` as packed logits (src 2)."""
    acc = z.dtype
    NP, CP = layout(n)
    dev = b.device
    if src == 0:
        T = 1
    elif src == 2:
        T = z.shape[0]
    else:
        T = H.shape[0]
    L = H.shape[-2] * H.shape[-1] if src == 1 else 1
    if src == 1:
        GC = pack(_gate_columns(gates.to(acc), n), n)
    elif src == 2:
        GC = pack(b.new_ones(2 * n + n * n, dtype=acc), n)
    else:
        GC = pack(b.new_zeros(2 * n + n * n, dtype=acc), n)
    BC = pack(b.to(acc), n)
    bt, _, warps = _blocks("mhc_epi_bwd", 1, acc == torch.float64)
    nblocks = triton.cdiv(T, bt)
    GL = torch.zeros(T, CP, dtype=acc, device=dev)
    GZ = torch.empty(T if src == 1 else 0, CP, dtype=acc, device=dev)
    C2 = torch.empty(T if src == 1 else 0, dtype=acc, device=dev)
    SB = torch.zeros(max(nblocks, 1), CP, dtype=acc, device=dev)
    SG = torch.zeros(max(nblocks, 1), CP, dtype=acc, device=dev)
    POT = torch.empty(T * iters * 2 * NP if g_res is not None else 0, dtype=acc, device=dev)
    zs = z if src != 0 else BC.reshape(1, CP)
    if T > 0:
        hc._launch(
            "mhc_coeffs_epi_bwd", k.coeffs_epi_bwd_kernel, (nblocks,),
            zs, GC, BC, g_pre if g_pre is not None else BC, g_post if g_post is not None else BC,
            g_res if g_res is not None else BC, POT if g_res is not None else BC,
            GL, GZ if src == 1 else BC, C2 if src == 1 else BC, SB, SG, T, max(L, 1), iters, float(eps),
            N=n, NP=NP, CP=CP, BLOCK_T=bt, HAS_PRE=g_pre is not None, HAS_POST=g_post is not None,
            HAS_RES=g_res is not None, SRC=src, EPS_POS=eps > 0, IS64=acc == torch.float64, num_warps=warps,
        )
    g_b = unpack(SB.sum(0), n)
    empty = b.new_empty(0)
    if src != 1:
        return empty, empty, g_b.to(b.dtype), empty, unpack(GL, n)
    per_column = unpack(SG.sum(0), n)
    g_gates = torch.stack([per_column[:n].sum(), per_column[n:2 * n].sum(), per_column[2 * n:].sum()])

    H2 = H.reshape(T, L).contiguous()
    GH = torch.empty(T, L, dtype=H.dtype, device=dev)
    mode, prec = hc._bwd_mode(H.dtype, acc)
    bt, bl, warps = _blocks("mhc_proj_bwd", L, acc == torch.float64)
    if acc == torch.float64:
        mode, prec = 0, "ieee"
    else:
        bt = max(bt, 16)
    nwb = triton.cdiv(L, bl)
    nb = triton.cdiv(T, bt)
    target = 1 if hc.INTERPRET else 4 * hc._num_sms(dev)
    groups = max(1, min(nb, -(-target // nwb)))
    if hc.FORCE_GROUPS is not None:
        groups = max(1, min(nb, hc.FORCE_GROUPS))
    per_group = max(1, triton.cdiv(nb, groups))
    groups = max(1, triton.cdiv(nb, per_group))
    QP = torch.zeros(groups, L, CP, dtype=acc, device=dev)
    if T > 0:
        WP = pack(phi.to(acc), n)
        hc._launch(
            "mhc_coeffs_proj_bwd", k.coeffs_proj_bwd_kernel, (nwb, groups),
            H2, GZ, C2, stats, WP, GH, QP, T, L, per_group, nb,
            CP=CP, BLOCK_T=bt, BLOCK_L=bl, MODE=mode, PREC=prec, IS64=acc == torch.float64, num_warps=warps,
        )
    else:
        GH.zero_()
    g_phi = unpack(QP.sum(0), n)
    return (GH.reshape(H.shape), g_phi.to(phi.dtype), g_b.to(b.dtype), g_gates.to(gates.dtype),
            unpack(GL, n))


# --- apply steps on the mixing kernels ----------------------------------------------------


def pre_forward(H: Tensor, h_pre: Tensor, ct: torch.dtype) -> Tensor:
    """``h0 = sum_i h_pre[i] H[i]`` (H read once), in H's dtype, computed in ``ct``."""
    h0, _ = hc.mix_forward(H, h_pre.to(ct).unsqueeze(-1), None, None, split=1, write_first=True,
                           write_rest=False, fc=False, rest_dtype=H.dtype)
    return h0


def pre_backward(g_h0: Tensor, H: Tensor, h_pre: Tensor, ct: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(g_H = h_pre g_h0^T, g_h_pre = H g_h0)`` in one pass over H and g_h0."""
    gH, gal = hc.mix_backward(H, h_pre.to(ct).unsqueeze(-1), g_h0, None, split=1, write_gh=True,
                              g_alpha_dtype=ct)
    assert gH is not None
    return gH, gal[..., 0].to(h_pre.dtype)  # column 0: the h0 row (the kernel's G_alpha has n + 1)


def post_forward(y: Tensor, H: Tensor, h_post: Tensor, h_res: Tensor, ct: torch.dtype, out: torch.dtype) -> Tensor:
    """``H_out = h_res H + h_post y^T`` in one pass (H, y and the coefficients read once)."""
    alpha = h_res.to(ct).transpose(-1, -2).contiguous()  # alpha[i, o] = h_res[o, i]
    _, rest = hc.mix_forward(H, alpha, y, h_post.to(ct), split=0, write_first=False, write_rest=True, fc=False,
                             rest_dtype=out)
    return rest


def post_backward(
    G: Tensor, y: Tensor, H: Tensor, h_post: Tensor, h_res: Tensor, ct: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(g_y = h_post^T G, g_H = h_res^T G, g_h_post = G y, g_h_res = G H^T)`` in one pass over
    G, H and y (:func:`._mhc_kernels.post_bwd_kernel`), each in its input's dtype."""
    lead = H.shape[:-2]
    n, d = H.shape[-2], H.shape[-1]
    G3 = G.reshape(-1, n, d).contiguous()
    H3 = H.reshape(-1, n, d).contiguous()
    T = H3.shape[0]
    y2 = y.reshape(T, d).contiguous()
    hp, sp_t = hc._tokens(h_post.to(ct), 1)
    hr, sr_t = hc._tokens(h_res.to(ct), 2)
    if hr.shape[0] > 0 and hr.stride(-2) != n:  # the kernel takes rows of h_res n apart
        hr = hr.contiguous()
        sr_t = hr.stride(0) if hr.shape[0] > 1 else 0
    dev = H.device
    GY = torch.empty(T, d, dtype=y.dtype, device=dev)
    GH = torch.empty(T, n, d, dtype=H.dtype, device=dev)
    GP = torch.empty(T, n, dtype=ct, device=dev)
    GR = torch.empty(T, n, n, dtype=ct, device=dev)
    if T > 0:
        NP = hc._pow2(n)
        bt, bw, warps = hc._config("mix_bwd", NP, d, dot=False)
        hc._launch(
            "mhc_post_bwd", k.post_bwd_kernel, (triton.cdiv(T, bt),),
            G3, y2, H3, hp, hr, GY, GH, GP, GR, T, d, sp_t, sr_t,
            N=n, NP=NP, BLOCK_T=bt, BLOCK_W=bw, IS64=ct == torch.float64, num_warps=warps,
        )
    return (GY.reshape(y.shape), GH.reshape(H.shape), GP.reshape(*lead, n).to(h_post.dtype),
            GR.reshape(*lead, n, n).to(h_res.dtype))
