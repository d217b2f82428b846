# mypy: disable-error-code="untyped-decorator,no-untyped-def"
"""The Triton kernels of mHC's coefficients (mHC paper, arXiv 2512.24880, Eqs. 7-9 and 14-19;
math.md 4.2-4.5, 5.5-5.6) and the backward of ``mhc_post``; ``mhc_pre``, and ``mhc_post``'s
forward, run on the mixing kernels of :mod:`._kernels`.

Layout. A token is one row ``v = vec(H[t])`` of length ``L = n*d`` (H contiguous as (T, L)).
The ``2n + n^2`` coefficient columns are packed by the launcher into ``CP = 2 NP^2`` columns,
``NP`` the power of two >= max(n, 4), so that a token's packed logits reshape to a
(2, NP, NP) tile: ``[0, i, j]`` = res[i, j] (row-major (out, in), the paper's ``H_res``),
``[1, 0, j]`` = pre[j], ``[1, 1, j]`` = post[j], every other entry padding (zero weights).
The Sinkhorn iteration then runs on (BLOCK_T, NP, NP) register tiles with padded rows and
columns masked out.

Precision (D12): ``ACC`` float32 (float64 for float64 data); the RMS statistics are
scale-safe (hcref.norms: ``s = 2^floor(log2(max(max|v|, 1)))`` kept as a running value over
the column blocks, exact power-of-two rescaling of the partial sums when it grows) and the
norm is applied after the projection: ``z = ((v / s) phi) r'`` with
``r' = (mean((v/s)^2) + 1e-6/s^2)^(-1/2)``.

Sinkhorn (hcref.sinkhorn_knopp, decision D7), the reference's exact order: ``eps = 0`` the
log-domain iteration with potentials (``c_t = lse_i(Z - r_{t-1})``, ``r_t = lse_j(Z - c_t)``,
``P = exp(Z - r - c)`` then each row divided by its sum); ``eps > 0`` DeepSeek-V4's recipe
(softmax over out + eps, then divisions by row / column sums + eps). The backward recomputes
the forward iteration on chip, writing only its 2 * iters n-vectors per token (potentials or
divisors) to a scratch buffer that the same program reads back in reverse order (never the
n x n iterates, nothing kept from the forward call).

No atomics: parameter gradients are per-program partial sums that the launcher adds in a
fixed order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._kernels import _mm, _mm_tn, _pow2_floor, _recip, _rsqrt_floored, _to_acc

_NEG = tl.constexpr(-1.0e30)
"""Stand-in for -inf in masked maxima (finite, so padded lanes never produce inf - inf)."""


@triton.jit
def _lse(X, vm, line_ok, AXIS: tl.constexpr):
    """``log(sum(exp(X), AXIS))`` over the valid entries, shifted by their max (hcref's
    ``_logsumexp``); 0 on lines without valid entries."""
    Xm = tl.where(vm, X, _NEG)
    m = tl.max(Xm, axis=AXIS)
    e = tl.where(vm, tl.exp(tl.where(vm, Xm - tl.expand_dims(m, AXIS), 0.0)), 0.0)
    s = tl.sum(e, axis=AXIS)
    return tl.where(line_ok, m + tl.log(tl.where(line_ok, s, 1.0)), 0.0)


@triton.jit
def _scaled(Z, r, c, vm):
    """``exp(Z[i, j] - r[i] - c[j])`` (hcref's ``_scaled``), 0 on padded entries."""
    return tl.where(vm, tl.exp(tl.where(vm, (Z - r[:, :, None]) - c[:, None, :], 0.0)), 0.0)


@triton.jit
def _sigmoid(x):
    """``1 / (1 + exp(-x))`` from ``exp(-|x|)`` (hcref.mhc.sigmoid: finite for any x)."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _split_logits(lg, BLOCK_T: tl.constexpr, NP: tl.constexpr):
    """(BLOCK_T, CP) packed logits -> res (BLOCK_T, NP, NP), pre (BLOCK_T, NP), post (BLOCK_T, NP)."""
    x4 = tl.reshape(lg, (BLOCK_T, 2, NP, NP))
    a = tl.arange(0, 2)[None, :, None, None]
    res = tl.sum(tl.where(a == 0, x4, 0.0), axis=1)
    ext = tl.sum(tl.where(a == 1, x4, 0.0), axis=1)
    rho = tl.arange(0, NP)[None, :, None]
    pre = tl.sum(tl.where(rho == 0, ext, 0.0), axis=1)
    post = tl.sum(tl.where(rho == 1, ext, 0.0), axis=1)
    return res, pre, post


@triton.jit
def _join_logits(res, pre, post, BLOCK_T: tl.constexpr, NP: tl.constexpr, CP: tl.constexpr):
    """Inverse of :func:`_split_logits` (padding entries 0)."""
    rho = tl.arange(0, NP)[None, :, None]
    ext = tl.where(rho == 0, pre[:, None, :], tl.where(rho == 1, post[:, None, :], 0.0))
    a = tl.arange(0, 2)[None, :, None, None]
    x4 = tl.where(a == 0, res[:, None, :, :], ext[:, None, :, :])
    return tl.reshape(x4, (BLOCK_T, CP))


@triton.jit
def _sinkhorn_fwd(Z, vm, iok, jok, iters, eps, POT, tok, tm, NP: tl.constexpr, EPS_POS: tl.constexpr,
                  STORE: tl.constexpr):
    """Sinkhorn of the (BLOCK_T, NP, NP) logits tile Z (module docstring); with ``STORE`` the
    per-step n-vectors go to ``POT[t, step, 0 (rows) / 1 (columns), :]``."""
    jj = tl.arange(0, NP)
    pm = tm[:, None] & (jj < NP)[None, :]
    if EPS_POS:
        m = tl.max(tl.where(vm, Z, _NEG), axis=1)
        E = tl.where(vm, tl.exp(tl.where(vm, Z - m[:, None, :], 0.0)), 0.0)
        S = E / tl.where(jok, tl.sum(E, axis=1), 1.0)[:, None, :]
        P = tl.where(vm, S + eps, 0.0)
        r = tl.sum(P, axis=2) + eps
        P = P / r[:, :, None]
        if STORE:
            tl.store(POT + (tok[:, None] * iters * 2) * NP + jj[None, :], r, mask=pm)
        for step in range(1, iters):
            c = tl.sum(P, axis=1) + eps
            P = P / c[:, None, :]
            r = tl.sum(P, axis=2) + eps
            P = P / r[:, :, None]
            if STORE:
                base = (tok[:, None] * iters + step) * 2
                tl.store(POT + base * NP + jj[None, :], r, mask=pm)
                tl.store(POT + (base + 1) * NP + jj[None, :], c, mask=pm)
    else:
        r = tl.sum(Z * 0.0, axis=2)
        c = tl.sum(Z * 0.0, axis=1)
        for step in range(0, iters):
            c = _lse(Z - r[:, :, None], vm, jok, 1)
            r = _lse(Z - c[:, None, :], vm, iok, 2)
            if STORE:
                base = (tok[:, None] * iters + step) * 2
                tl.store(POT + base * NP + jj[None, :], r, mask=pm)
                tl.store(POT + (base + 1) * NP + jj[None, :], c, mask=pm)
        P = _scaled(Z, r, c, vm)
        P = P / tl.where(iok, tl.sum(P, axis=2), 1.0)[:, :, None]
    return P


@triton.jit
def _sinkhorn_bwd(Z, G, vm, iok, jok, iters, eps, POT, tok, tm, NP: tl.constexpr, EPS_POS: tl.constexpr):
    """VJP of :func:`_sinkhorn_fwd` (hcref.sinkhorn_knopp ``_paper_vjp`` / ``_v4_vjp``, unrolled):
    the forward is recomputed into ``POT`` first, then read back from the last step."""
    P = _sinkhorn_fwd(Z, vm, iok, jok, iters, eps, POT, tok, tm, NP, EPS_POS, True)
    tl.debug_barrier()
    jj = tl.arange(0, NP)
    pm = tm[:, None] & (jj < NP)[None, :]
    G = tl.where(vm, G, 0.0)
    if EPS_POS:
        for k in range(0, iters - 1):
            step = iters - 1 - k
            base = (tok[:, None] * iters + step) * 2
            r = tl.load(POT + base * NP + jj[None, :], mask=pm, other=1.0)
            c = tl.load(POT + (base + 1) * NP + jj[None, :], mask=pm, other=1.0)
            Q = P * r[:, :, None]
            # padded entries kept at 0: the broadcast sums would make them nonzero, and the
            # divisions by eps of padded lines would then overflow (inf * 0 = NaN)
            G = tl.where(vm, (G - tl.sum(G * P, axis=2)[:, :, None]) / r[:, :, None], 0.0)
            P = Q * c[:, None, :]
            G = tl.where(vm, (G - tl.sum(G * Q, axis=1)[:, None, :]) / c[:, None, :], 0.0)
        r = tl.load(POT + (tok[:, None] * iters * 2) * NP + jj[None, :], mask=pm, other=1.0)
        G = tl.where(vm, (G - tl.sum(G * P, axis=2)[:, :, None]) / r[:, :, None], 0.0)
        m = tl.max(tl.where(vm, Z, _NEG), axis=1)
        E = tl.where(vm, tl.exp(tl.where(vm, Z - m[:, None, :], 0.0)), 0.0)
        S = E / tl.where(jok, tl.sum(E, axis=1), 1.0)[:, None, :]
        G = S * (G - tl.sum(G * S, axis=1)[:, None, :])
    else:
        base = (tok[:, None] * iters + iters - 1) * 2
        r = tl.load(POT + base * NP + jj[None, :], mask=pm, other=0.0)
        c = tl.load(POT + (base + 1) * NP + jj[None, :], mask=pm, other=0.0)
        G = G * _scaled(Z, r, c, vm)
        for k in range(0, iters):
            step = iters - 1 - k
            base = (tok[:, None] * iters + step) * 2
            r = tl.load(POT + base * NP + jj[None, :], mask=pm, other=0.0)
            c = tl.load(POT + (base + 1) * NP + jj[None, :], mask=pm, other=0.0)
            M = _scaled(Z, r, c, vm)
            G = G - M * tl.sum(G, axis=2)[:, :, None]
            later = (jj * 0 + step) > 0  # r_0 = 0 before the first step
            prev = tl.maximum(base - 2, 0) * NP + jj[None, :]
            r_prev = tl.load(POT + prev, mask=pm & later[None, :], other=0.0)
            Q = _scaled(Z, r_prev, c, vm)
            G = G - Q * tl.sum(G, axis=1)[:, None, :]
    return G


# --- coefficients: forward ----------------------------------------------------------------


@triton.jit
def coeffs_fwd_kernel(
    H, WP, WHI, WLO, ZIN, GC, BC,
    HPRE, HPOST, HRES, ZOUT, STATS,
    T, L, iters, eps,
    N: tl.constexpr, NP: tl.constexpr, CP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_L: tl.constexpr,
    SRC: tl.constexpr, MODE: tl.constexpr, PREC: tl.constexpr, EPS_POS: tl.constexpr, IS64: tl.constexpr,
):
    """Per token: ``z = rms(v) phi`` in one pass over v (``SRC`` 1), or ``z = 0`` (0: static
    site, logits = b), or ``z`` loaded from ``ZIN`` (2: the bare Sinkhorn); then
    ``logits = GC * z + BC`` and the epilogue in registers: ``h_pre = sigmoid + eps``,
    ``h_post = 2 sigmoid``, ``h_res = sinkhorn``. Writes the coefficients and, for ``SRC`` 1,
    z (T, CP) and the statistics (T, 2: r', s) for the backward."""
    pid = tl.program_id(0)
    tok = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    tm = tok < T
    cc = tl.arange(0, CP)
    if SRC == 1:
        jr = tl.arange(0, BLOCK_L)
        zero = _to_acc(tl.zeros((BLOCK_T,), tl.float32), IS64)
        amax = zero
        s = zero + 1.0
        sum2 = zero
        acc = _to_acc(tl.zeros((BLOCK_T, CP), tl.float32), IS64)
        for j0 in range(0, L, BLOCK_L):
            jj = j0 + jr
            jm = jj < L
            m2 = tm[:, None] & jm[None, :]
            x = tl.load(H + tok[:, None] * L + jj[None, :], mask=m2, other=0.0)
            xf = _to_acc(x, IS64)
            amax = tl.maximum(amax, tl.max(tl.abs(xf), axis=1))
            s_new = _pow2_floor(tl.maximum(amax, 1.0), IS64)
            inv = _recip(s_new, IS64)
            f = s * inv
            sum2 = sum2 * (f * f)
            acc = acc * f[:, None]
            xs = xf * inv[:, None]
            sum2 += tl.sum(xs * xs, axis=1)
            s = s_new
            if MODE == 2:
                xl = xs.to(x.dtype)
                whi = tl.load(WHI + jj[:, None] * CP + cc[None, :], mask=jm[:, None], other=0.0)
                wlo = tl.load(WLO + jj[:, None] * CP + cc[None, :], mask=jm[:, None], other=0.0)
                acc = tl.dot(xl, whi, acc)
                acc = tl.dot(xl, wlo, acc)
            else:
                wt = tl.load(WP + jj[:, None] * CP + cc[None, :], mask=jm[:, None], other=0.0)
                acc = _mm(xs, wt, acc, MODE, PREC)
        inv = _recip(s, IS64)
        rs = _rsqrt_floored(sum2 / L + 1e-6 * inv * inv, IS64)
        z = acc * rs[:, None]
        zm = tm[:, None] & (cc < CP)[None, :]
        tl.store(ZOUT + tok[:, None] * CP + cc[None, :], z, mask=zm)
        tl.store(STATS + tok * 2, rs, mask=tm)
        tl.store(STATS + tok * 2 + 1, s, mask=tm)
    elif SRC == 2:
        z = _to_acc(tl.load(ZIN + tok[:, None] * CP + cc[None, :], mask=tm[:, None], other=0.0), IS64)
    else:
        z = _to_acc(tl.zeros((BLOCK_T, CP), tl.float32), IS64)
    gc = _to_acc(tl.load(GC + cc), IS64)
    bc = _to_acc(tl.load(BC + cc), IS64)
    lg = z * gc[None, :] + bc[None, :]
    res, pre, post = _split_logits(lg, BLOCK_T, NP)

    ii = tl.arange(0, NP)
    iok = (ii < N)[None, :]
    jok = iok
    vm = (ii < N)[None, :, None] & (ii < N)[None, None, :]
    P = _sinkhorn_fwd(res, vm, iok, jok, iters, eps, ZOUT, tok, tm, NP, EPS_POS, False)
    h_pre = _sigmoid(pre) + eps
    h_post = 2.0 * _sigmoid(post)
    om = tm[:, None] & iok
    tl.store(HPRE + tok[:, None] * N + ii[None, :], h_pre.to(HPRE.dtype.element_ty), mask=om)
    tl.store(HPOST + tok[:, None] * N + ii[None, :], h_post.to(HPOST.dtype.element_ty), mask=om)
    m3 = tm[:, None, None] & vm
    tl.store(HRES + (tok[:, None, None] * N + ii[None, :, None]) * N + ii[None, None, :],
             P.to(HRES.dtype.element_ty), mask=m3)


# --- coefficients: backward ---------------------------------------------------------------


@triton.jit
def coeffs_epi_bwd_kernel(
    ZS, GC, BC, GPRE, GPOST, GRES, POT,
    GL, GZ, C2, SB, SG,
    T, L, iters, eps,
    N: tl.constexpr, NP: tl.constexpr, CP: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_PRE: tl.constexpr, HAS_POST: tl.constexpr, HAS_RES: tl.constexpr, SRC: tl.constexpr,
    EPS_POS: tl.constexpr, IS64: tl.constexpr,
):
    """VJP of the epilogue per token (math.md 5.5-5.6): from the saved z, ``g_logits`` =
    [g_pre sigmoid' | 2 g_post sigmoid' | sinkhorn_vjp(g_res)] (Sinkhorn recomputed), written to
    ``GL`` (T, CP); for ``SRC`` 1 (as in :func:`coeffs_fwd_kernel`) also ``g_z = GC g_logits``
    (GZ) and ``c2 = g_z . z / L`` (the RMS VJP's per-token dot). Partial sums of this program:
    ``SB`` = sum g_logits (bias), ``SG`` = sum g_logits z (gates)."""
    pid = tl.program_id(0)
    tok = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    tm = tok < T
    cc = tl.arange(0, CP)
    z = _to_acc(tl.load(ZS + tok[:, None] * CP + cc[None, :], mask=tm[:, None], other=0.0), IS64)
    if SRC == 0:
        z = z * 0.0
    gc = _to_acc(tl.load(GC + cc), IS64)
    bc = _to_acc(tl.load(BC + cc), IS64)
    lg = z * gc[None, :] + bc[None, :]
    res, pre, post = _split_logits(lg, BLOCK_T, NP)

    ii = tl.arange(0, NP)
    iok = (ii < N)[None, :]
    jok = iok
    vm = (ii < N)[None, :, None] & (ii < N)[None, None, :]
    om = tm[:, None] & iok
    zero = pre * 0.0
    if HAS_PRE:
        g = _to_acc(tl.load(GPRE + tok[:, None] * N + ii[None, :], mask=om, other=0.0), IS64)
        g_pre = g * (_sigmoid(pre) * _sigmoid(-pre))
    else:
        g_pre = zero
    if HAS_POST:
        g = _to_acc(tl.load(GPOST + tok[:, None] * N + ii[None, :], mask=om, other=0.0), IS64)
        g_post = g * 2.0 * (_sigmoid(post) * _sigmoid(-post))
    else:
        g_post = zero
    if HAS_RES:
        m3 = tm[:, None, None] & vm
        g = _to_acc(tl.load(GRES + (tok[:, None, None] * N + ii[None, :, None]) * N + ii[None, None, :],
                            mask=m3, other=0.0), IS64)
        g_res = _sinkhorn_bwd(res, g, vm, iok, jok, iters, eps, POT, tok, tm, NP, EPS_POS)
    else:
        g_res = res * 0.0
    gl = _join_logits(g_res, tl.where(iok, g_pre, 0.0), tl.where(iok, g_post, 0.0), BLOCK_T, NP, CP)
    gl = tl.where(tm[:, None], gl, 0.0)
    tl.store(GL + tok[:, None] * CP + cc[None, :], gl, mask=tm[:, None])
    tl.store(SB + pid * CP + cc, tl.sum(gl, axis=0))
    if SRC == 1:
        tl.store(SG + pid * CP + cc, tl.sum(gl * z, axis=0))
        gz = gl * gc[None, :]
        tl.store(GZ + tok[:, None] * CP + cc[None, :], gz, mask=tm[:, None])
        tl.store(C2 + tok, tl.sum(gz * z, axis=1) / L, mask=tm)


@triton.jit
def coeffs_proj_bwd_kernel(
    H, GZ, C2, STATS, WP, GH, QP,
    T, L, blocks_per_group, nblocks,
    CP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_L: tl.constexpr, MODE: tl.constexpr,
    PREC: tl.constexpr, IS64: tl.constexpr,
):
    """VJP of ``z = rms(v) phi`` for column block ``program_id(0)`` and token-block group
    ``program_id(1)``: ``g_v' = g_z phi^T``, ``v' = (v / s) r'`` and
    ``g_v = (r' / s) (g_v' - v' c2)`` (the weightless RMS VJP; ``c2 = g_v' . v' / L = g_z . z / L``
    from the epilogue kernel), one pass over H; ``QP[group]`` = sum over the group's tokens of
    ``v'^T g_z`` (the phi gradient's partial sum)."""
    pid_w = tl.program_id(0)
    pid_g = tl.program_id(1)
    cc = tl.arange(0, CP)
    jj = pid_w * BLOCK_L + tl.arange(0, BLOCK_L)
    jm = jj < L
    wt = tl.load(WP + jj[None, :] * CP + cc[:, None], mask=jm[None, :], other=0.0)  # (CP, BLOCK_L) = phi^T
    q_acc = _to_acc(tl.zeros((BLOCK_L, CP), tl.float32), IS64)
    b0 = pid_g * blocks_per_group
    b1 = tl.minimum(b0 + blocks_per_group, nblocks)
    for blk in range(b0, b1):
        tok = (blk * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        tm = tok < T
        m2 = tm[:, None] & jm[None, :]
        gz = tl.load(GZ + tok[:, None] * CP + cc[None, :], mask=tm[:, None], other=0.0)
        c2 = tl.load(C2 + tok, mask=tm, other=0.0)
        rs = tl.load(STATS + tok * 2, mask=tm, other=0.0)
        inv = _recip(tl.load(STATS + tok * 2 + 1, mask=tm, other=1.0), IS64)
        x = _to_acc(tl.load(H + tok[:, None] * L + jj[None, :], mask=m2, other=0.0), IS64)
        ghat = _mm(gz, wt, _to_acc(tl.zeros((BLOCK_T, BLOCK_L), tl.float32), IS64), MODE, PREC)
        q = (x * inv[:, None]) * rs[:, None]
        gx = (rs * inv)[:, None] * (ghat - q * c2[:, None])
        tl.store(GH + tok[:, None] * L + jj[None, :], gx.to(GH.dtype.element_ty), mask=m2)
        q = tl.where(m2, q, 0.0)
        q_acc = _mm_tn(q, gz, q_acc, MODE, PREC)
    tl.store(QP + (pid_g * L + jj[:, None]) * CP + cc[None, :], q_acc, mask=jm[:, None])


# --- post-apply backward ------------------------------------------------------------------


@triton.jit
def post_bwd_kernel(
    G, Y, H, HPOST, HRES, GY, GH, GPOST, GRES,
    T, w, sp_t, sr_t,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr, IS64: tl.constexpr,
):
    """VJP of ``H_out = h_res H + h_post y^T`` (math.md 5.5) in one pass over G, H and y:
    ``g_y = sum_o h_post[o] G[o]``, ``G_H[i] = sum_o h_res[o, i] G[o]``, ``g_h_post[o] = G[o] . y``,
    ``g_h_res[o, i] = G[o] . H[i]`` (the last two reduced over the width in registers). The
    coefficients may be broadcast over the tokens (token strides ``sp_t``, ``sr_t``; 0 for a
    static site's)."""
    pid = tl.program_id(0)
    t3 = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    tmask = t3 < T
    i3 = tl.arange(0, NP)
    imask = i3 < N
    am = tmask[:, None] & imask[None, :]
    hp = _to_acc(tl.load(HPOST + t3[:, None] * sp_t + i3[None, :], mask=am, other=0.0), IS64)
    g_post = hp * 0.0
    g_res = _to_acc(tl.zeros((BLOCK_T, NP, NP), tl.float32), IS64)
    o3 = tl.arange(0, NP)[None, :, None]
    jr = tl.arange(0, BLOCK_W)
    for j0 in range(0, w, BLOCK_W):
        jj = j0 + jr
        jm = jj < w
        om = tmask[:, None] & jm[None, :]
        m3 = am[:, :, None] & jm[None, None, :]
        h3 = _to_acc(tl.load(H + (t3[:, None, None] * N + i3[None, :, None]) * w + jj[None, None, :],
                             mask=m3, other=0.0), IS64)
        yv = _to_acc(tl.load(Y + t3[:, None] * w + jj[None, :], mask=om, other=0.0), IS64)
        gy = yv * 0.0
        gh = h3 * 0.0
        for o in tl.static_range(N):
            g_o = _to_acc(tl.load(G + (t3[:, None] * N + o) * w + jj[None, :], mask=om, other=0.0), IS64)
            hp_o = tl.sum(tl.where(i3[None, :] == o, hp, 0.0), axis=1)
            gy += hp_o[:, None] * g_o
            g_post += tl.where(i3[None, :] == o, tl.sum(g_o * yv, axis=1)[:, None], 0.0)
            g_res += tl.where(o3 == o, tl.sum(h3 * g_o[:, None, :], axis=2)[:, None, :], 0.0)
            hr_o = _to_acc(tl.load(HRES + t3[:, None] * sr_t + o * N + i3[None, :], mask=am, other=0.0), IS64)
            gh += hr_o[:, :, None] * g_o[:, None, :]
        tl.store(GY + t3[:, None] * w + jj[None, :], gy.to(GY.dtype.element_ty), mask=om)
        tl.store(GH + (t3[:, None, None] * N + i3[None, :, None]) * w + jj[None, None, :],
                 gh.to(GH.dtype.element_ty), mask=m3)
    tl.store(GPOST + t3[:, None] * N + i3[None, :], g_post.to(GPOST.dtype.element_ty), mask=am)
    tl.store(GRES + (t3[:, None, None] * N + o3) * N + i3[None, None, :], g_res.to(GRES.dtype.element_ty),
             mask=tmask[:, None, None] & (o3 < N) & imask[None, None, :])
