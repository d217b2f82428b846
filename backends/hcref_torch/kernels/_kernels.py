# mypy: disable-error-code="untyped-decorator,no-untyped-def"
"""The Triton kernels of HC and FC (this is the only module that imports triton).

Layout (decision D13): the state is ``(T, K, w)`` contiguous after the leading axes are
flattened into T tokens; ``K`` rows (HC: n streams, FC: m fractions) of width ``w`` (HC: d,
FC: e = d/m); ``C`` coefficient columns (HC: n+1, FC: 2m); ``SPLIT`` of them read the layer
input (HC: 1, FC: m), the other ``K`` mix the residual. Grids are token-major: one program
owns ``BLOCK_T`` whole tokens (all K rows, padded to the power of two ``KP``) and walks the
width in ``BLOCK_W`` columns, except the coefficient backward, which owns one column block
and a group of token blocks so that its weight-gradient partial sums stay in registers.

Precision (D12): everything accumulates in ``ACC`` = float32 (float64 for float64 data);
half-precision data are converted on load and results are rounded once on store.

Projection modes (``MODE``, a constexpr chosen by the launcher):

* 0 ``fma``: broadcast multiply and sum, any dtype (float64 uses it);
* 1 ``dot``: ``tl.dot`` on float32 operands with ``input_precision=PREC`` ("ieee" for float32
  data, "tf32x3" for half data on a GPU; the interpreter computes all of them exactly);
* 2 ``split``: the scaled rows stay in the data's half dtype and the weights are split into a
  high and a low half-precision part, two tensor-core dots with float32 accumulation (about 16
  bits of the weights kept). Used for bfloat16 on a GPU; the interpreter computes bfloat16
  ``tl.dot`` wrongly (triton-lang/triton#11584), so it runs this path in float16 only.

No kernel here uses atomics: every parameter-gradient reduction writes per-program partial
sums that the launcher adds in a fixed order, so results are bit-identical run to run.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton import knobs

INTERPRET: bool = bool(knobs.runtime.interpret)
"""Whether the kernels below were built for the Triton interpreter (``TRITON_INTERPRET=1``
when this module was imported)."""


# --- scalar helpers -----------------------------------------------------------------------


@triton.jit
def _pow2_floor(v, IS64: tl.constexpr):
    """Largest power of two <= v for normal v >= 1 (the mantissa bits cleared)."""
    if IS64:
        return (v.to(tl.int64, bitcast=True) & 0x7FF0000000000000).to(tl.float64, bitcast=True)
    else:
        return (v.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)


@triton.jit
def _recip(v, IS64: tl.constexpr):
    """Correctly rounded 1/v (exact for the powers of two it is used on)."""
    if IS64:
        return 1.0 / v
    else:
        return tl.math.div_rn(1.0, v)


@triton.jit
def _rsqrt_floored(v, IS64: tl.constexpr):
    """``max(v, tiny)^(-1/2)`` with tiny the smallest positive subnormal number of the compute
    dtype (hcref.norms._rsqrt), built from its bit pattern (1); correctly rounded sqrt and
    division, which keep subnormals."""
    if IS64:
        tiny = tl.full([], 1, tl.int64).to(tl.float64, bitcast=True)
        return 1.0 / tl.sqrt(tl.maximum(v, tiny))
    else:
        tiny = tl.full([], 1, tl.int32).to(tl.float32, bitcast=True)
        return tl.math.div_rn(1.0, tl.math.sqrt_rn(tl.maximum(v, tiny)))


@triton.jit
def _tanh(a, IS64: tl.constexpr):
    """tanh without libdevice (which the interpreter lacks): an odd Taylor polynomial below a
    threshold (no cancellation near 0), ``(1 - t) / (1 + t)`` with ``t = exp(-2|a|)`` above it
    (never overflows). Relative error a few ulps in float32 and float64 (thresholds 0.3 and 0.05
    keep the polynomial's truncation below the dtype's rounding and the exp form's cancellation
    to a few ulps)."""
    x = tl.abs(a)
    z = a * a
    p = -929569.0 / 638512875.0
    p = p * z + 21844.0 / 6081075.0
    p = p * z - 1382.0 / 155925.0
    p = p * z + 62.0 / 2835.0
    p = p * z - 17.0 / 315.0
    p = p * z + 2.0 / 15.0
    p = p * z - 1.0 / 3.0
    p = p * z + 1.0
    small = a * p
    t = tl.exp(-2.0 * x)
    big = (1.0 - t) / (1.0 + t)
    big = tl.where(a < 0, -big, big)
    if IS64:
        thr = 0.05
    else:
        thr = 0.3
    return tl.where(x < thr, small, big)


@triton.jit
def _dtanh(a, u, IS64: tl.constexpr):
    """``1 - tanh(a)^2`` without the cancellation of ``1 - u^2`` where tanh saturates:
    ``4 t / (1 + t)^2`` with ``t = exp(-2|a|)`` for |a| >= 0.5."""
    t = tl.exp(-2.0 * tl.abs(a))
    return tl.where(tl.abs(a) < 0.5, 1.0 - u * u, 4.0 * t / ((1.0 + t) * (1.0 + t)))


@triton.jit
def _to_acc(x, IS64: tl.constexpr):
    if IS64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _mm(a, b, acc, MODE: tl.constexpr, PREC: tl.constexpr):
    """``acc + a @ b`` for float32/float64 operands: a (M, K), b (K, N)."""
    if MODE == 0:
        return acc + tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:
        return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _mm_tn(a, b, acc, MODE: tl.constexpr, PREC: tl.constexpr):
    """``acc + a^T @ b``: a (K, M), b (K, N) -> (M, N)."""
    if MODE == 0:
        return acc + tl.sum(a[:, :, None] * b[:, None, :], axis=0)
    else:
        return tl.dot(tl.trans(a), b, acc, input_precision=PREC)


# --- coefficients: forward ----------------------------------------------------------------


@triton.jit
def coeffs_fwd_kernel(
    H, WP, WHI, WLO, PK, ST,
    ALPHA, BETA, A, STATS, FIRST, REST,
    T, w,
    K: tl.constexpr, KP: tl.constexpr, C: tl.constexpr, CP: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr,
    NORM: tl.constexpr, TANH: tl.constexpr, MODE: tl.constexpr, PREC: tl.constexpr,
    MIX: tl.constexpr, IS64: tl.constexpr,
):
    """Per row x = H[t, i, :]: norm statistics and ``x_s W'`` in one pass over the width, then
    ``a = r' (x_s W' - mu' 1^T W') + b W`` (the norm folded after the matmul), ``u = tanh(a)``,
    ``coef = s * u + static``; ``MIX`` > 0 re-reads the token block and writes
    ``mix = alpha^T H`` rows ``[0, SPLIT)`` (h0) and, for ``MIX == 2``, ``[SPLIT, C)`` (H_res).

    Scale safety (hcref.norms): ``s = 2^floor(log2(max(max|x|, 1)))`` is kept as a running value
    over the column blocks; when it grows, the partial sums are rescaled by the exact power of
    two ``s_old / s_new`` (squared for the sum of squares), so the result equals scaling by the
    final ``s`` up front. LayerNorm sums are shifted by the first block's row mean (no
    cancellation in the variance). PK rows: colsum(W'), b W, scales per column, [eps].
    """
    BLOCK_R: tl.constexpr = BLOCK_T * KP
    C1: tl.constexpr = C + 1
    pid = tl.program_id(0)
    rr = tl.arange(0, BLOCK_R)
    ii = rr % KP
    tok = (pid * BLOCK_T + rr // KP).to(tl.int64)
    rvalid = (ii < K) & (tok < T)
    row = tok * K + ii
    cc = tl.arange(0, CP)
    jr = tl.arange(0, BLOCK_W)

    zero = _to_acc(tl.zeros((BLOCK_R,), tl.float32), IS64)
    amax = zero
    s = zero + 1.0
    sum1 = zero
    sum2 = zero
    shift = zero
    acc = tl.zeros((BLOCK_R, CP), tl.float32)
    if IS64:
        acc = acc.to(tl.float64)
    for j0 in range(0, w, BLOCK_W):
        jj = j0 + jr
        jm = jj < w
        m2 = rvalid[:, None] & jm[None, :]
        x = tl.load(H + row[:, None] * w + jj[None, :], mask=m2, other=0.0)
        xf = _to_acc(x, IS64)
        if NORM > 0:
            amax = tl.maximum(amax, tl.max(tl.abs(xf), axis=1))
            s_new = _pow2_floor(tl.maximum(amax, 1.0), IS64)
            inv = _recip(s_new, IS64)
            f = s * inv
            if NORM == 2:
                first = tl.sum(xf, axis=1) / tl.minimum(w, BLOCK_W)
                shift = tl.where(j0 == 0, first, shift)
            sum1 = sum1 * f
            sum2 = sum2 * (f * f)
            acc = acc * f[:, None]
            xs = xf * inv[:, None]
            if NORM == 2:
                dd = tl.where(m2, xs - (shift * inv)[:, None], 0.0)
                sum1 += tl.sum(dd, axis=1)
                sum2 += tl.sum(dd * dd, axis=1)
            else:
                sum2 += tl.sum(xs * xs, axis=1)
            s = s_new
        else:
            xs = xf
        if MODE == 2:
            xl = xs.to(x.dtype)
            whi = tl.load(WHI + jj[:, None] * CP + cc[None, :], mask=jm[:, None], other=0.0)
            wlo = tl.load(WLO + jj[:, None] * CP + cc[None, :], mask=jm[:, None], other=0.0)
            acc = tl.dot(xl, whi, acc)
            acc = tl.dot(xl, wlo, acc)
        else:
            wt = tl.load(WP + jj[:, None] * CP + cc[None, :], mask=jm[:, None], other=0.0)
            acc = _mm(xs, wt, acc, MODE, PREC)

    colsum = tl.load(PK + cc)
    bw = tl.load(PK + CP + cc)
    sv = tl.load(PK + 2 * CP + cc)
    if NORM > 0:
        inv = _recip(s, IS64)
        if NORM == 2:
            m1 = sum1 / w
            mu = shift * inv + m1
            var = tl.maximum(sum2 / w - m1 * m1, 0.0)
        else:
            mu = zero
            var = sum2 / w
        eps = tl.load(PK + 3 * CP)
        rs = _rsqrt_floored(var + eps * inv * inv, IS64)
        if NORM == 2:
            a = rs[:, None] * (acc - mu[:, None] * colsum[None, :]) + bw[None, :]
        else:
            a = rs[:, None] * acc
    else:
        mu = zero
        rs = zero + 1.0
        a = acc
    if TANH:
        u = _tanh(a, IS64)
    else:
        u = a
    st = tl.load(ST + ii[:, None] * CP + cc[None, :], mask=(ii < K)[:, None], other=0.0)
    coef = tl.where(rvalid[:, None], sv[None, :] * u + st, 0.0)

    tl.store(ALPHA + row[:, None] * C + cc[None, :], coef.to(ALPHA.dtype.element_ty),
             mask=rvalid[:, None] & (cc < C)[None, :])
    beta = tl.sum(tl.where(cc[None, :] == C, coef, 0.0), axis=1)
    tl.store(BETA + row, beta.to(BETA.dtype.element_ty), mask=rvalid)
    tl.store(A + row[:, None] * C1 + cc[None, :], a, mask=rvalid[:, None] & (cc < C1)[None, :])
    if NORM > 0:
        tl.store(STATS + row * 4, mu, mask=rvalid)
        tl.store(STATS + row * 4 + 1, rs, mask=rvalid)
        tl.store(STATS + row * 4 + 2, s, mask=rvalid)

    if MIX > 0:
        coef3 = tl.reshape(coef, (BLOCK_T, KP, CP))
        c3 = tl.arange(0, CP)[None, None, :]
        t3 = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        tmask = t3 < T
        i3 = tl.arange(0, KP)
        imask = i3 < K
        for j0 in range(0, w, BLOCK_W):
            jj = j0 + jr
            jm = jj < w
            m3 = tmask[:, None, None] & imask[None, :, None] & jm[None, None, :]
            x3 = tl.load(H + (t3[:, None, None] * K + i3[None, :, None]) * w + jj[None, None, :], mask=m3, other=0.0)
            x3 = _to_acc(x3, IS64)
            om = tmask[:, None] & jm[None, :]
            for o in tl.static_range(C):
                if o < SPLIT or MIX == 2:
                    col = tl.sum(tl.where(c3 == o, coef3, 0.0), axis=2)
                    out = tl.sum(col[:, :, None] * x3, axis=1)
                    if o < SPLIT:
                        tl.store(FIRST + (t3[:, None] * SPLIT + o) * w + jj[None, :],
                                 out.to(FIRST.dtype.element_ty), mask=om)
                    else:
                        tl.store(REST + (t3[:, None] * K + (o - SPLIT)) * w + jj[None, :],
                                 out.to(REST.dtype.element_ty), mask=om)


# --- coefficients: backward ---------------------------------------------------------------


@triton.jit
def coeffs_bwd_kernel(
    H, A, STATS, GA, GB, WP, PK, ST, GF, GR,
    GH, QP, SP,
    T, w, blocks_per_group, nblocks,
    K: tl.constexpr, KP: tl.constexpr, C: tl.constexpr, CP: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr,
    NORM: tl.constexpr, TANH: tl.constexpr, MODE: tl.constexpr, PREC: tl.constexpr,
    HAS_GA: tl.constexpr, HAS_GB: tl.constexpr, HAS_GF: tl.constexpr, HAS_GR: tl.constexpr,
    IS64: tl.constexpr,
):
    """VJP of :func:`coeffs_fwd_kernel` for column block ``program_id(0)`` and token-block group
    ``program_id(1)``.

    Per row, with ``g`` the cotangent of [alpha | beta], ``g_a = s g (1 - u^2)``,
    ``ghat = g_a W'^T`` (= G_H_bar * norm_weight) and ``q = x_hat`` (before the norm weight):
    ``G_x = r (ghat - mean(ghat) - q mean(ghat q))`` where both means are per-row dot products of
    ``g_a`` with saved quantities (``mean(ghat) = g_a . colsum(W') / w`` and
    ``mean(ghat q) = g_a . (a - b W) / w``), so one pass over H suffices. With ``GF``/``GR`` (the
    fused site) ``G_x += alpha G_mix`` as well. Partial sums written per group: ``QP`` =
    ``sum_rows q^T g_a`` (w, CP) — every weight and norm-parameter gradient follows from it and
    from ``sum_rows g_a`` — and ``SP`` = per-stream sums of ``g`` (static parameters), ``sum g_a``,
    ``sum g u`` (gate scales).
    """
    BLOCK_R: tl.constexpr = BLOCK_T * KP
    C1: tl.constexpr = C + 1
    pid_w = tl.program_id(0)
    pid_g = tl.program_id(1)
    rr = tl.arange(0, BLOCK_R)
    ii = rr % KP
    cc = tl.arange(0, CP)
    jj = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    jm = jj < w
    i3 = tl.arange(0, KP)

    wt = tl.load(WP + jj[None, :] * CP + cc[:, None], mask=jm[None, :], other=0.0)  # (CP, BLOCK_W) = W'^T
    colsum = tl.load(PK + cc)
    bw = tl.load(PK + CP + cc)
    sv = tl.load(PK + 2 * CP + cc)
    st = tl.load(ST + ii[:, None] * CP + cc[None, :], mask=(ii < K)[:, None], other=0.0)

    q_acc = _to_acc(tl.zeros((BLOCK_W, CP), tl.float32), IS64)
    s_static = _to_acc(tl.zeros((KP, CP), tl.float32), IS64)
    s_ga = _to_acc(tl.zeros((CP,), tl.float32), IS64)
    s_gu = _to_acc(tl.zeros((CP,), tl.float32), IS64)
    b0 = pid_g * blocks_per_group
    b1 = tl.minimum(b0 + blocks_per_group, nblocks)
    for blk in range(b0, b1):
        tok = (blk * BLOCK_T + rr // KP).to(tl.int64)
        rvalid = (ii < K) & (tok < T)
        row = tok * K + ii
        m2 = rvalid[:, None] & jm[None, :]
        a = tl.load(A + row[:, None] * C1 + cc[None, :], mask=rvalid[:, None] & (cc < C1)[None, :], other=0.0)
        g = a * 0.0
        if HAS_GA:
            g += _to_acc(tl.load(GA + row[:, None] * C + cc[None, :],
                                 mask=rvalid[:, None] & (cc < C)[None, :], other=0.0), IS64)
        if HAS_GB:
            gb = _to_acc(tl.load(GB + row, mask=rvalid, other=0.0), IS64)
            g = tl.where(cc[None, :] == C, gb[:, None], g)
        if TANH:
            u = _tanh(a, IS64)
        else:
            u = a
        s_gu += tl.sum(g * u, axis=0)
        s_static += tl.sum(tl.reshape(g, (BLOCK_T, KP, CP)), axis=0)
        ga = g * sv[None, :]
        if TANH:
            ga = ga * _dtanh(a, u, IS64)
        s_ga += tl.sum(ga, axis=0)

        x = _to_acc(tl.load(H + row[:, None] * w + jj[None, :], mask=m2, other=0.0), IS64)
        ghat = _mm(ga, wt, _to_acc(tl.zeros((BLOCK_R, BLOCK_W), tl.float32), IS64), MODE, PREC)
        if NORM > 0:
            mu = tl.load(STATS + row * 4, mask=rvalid, other=0.0)
            rs = tl.load(STATS + row * 4 + 1, mask=rvalid, other=0.0)
            inv = _recip(tl.load(STATS + row * 4 + 2, mask=rvalid, other=1.0), IS64)
            q = (x * inv[:, None] - mu[:, None]) * rs[:, None]
            c2 = tl.sum(ga * (a - bw[None, :]), axis=1) / w
            r = rs * inv
            if NORM == 2:
                c1 = tl.sum(ga * colsum[None, :], axis=1) / w
                gx = r[:, None] * (ghat - c1[:, None] - q * c2[:, None])
            else:
                gx = r[:, None] * (ghat - q * c2[:, None])
        else:
            q = x
            gx = ghat
        q = tl.where(m2, q, 0.0)

        if HAS_GF or HAS_GR:
            # G_H[(t, i)] += sum_o alpha[(t, i), o] G_mix[t, o]: every row loads its token's G_mix rows
            # (the K rows of one token read the same addresses, served by L1), no 3-D tile
            alpha = sv[None, :] * u + st
            for o in tl.static_range(C):
                if (o < SPLIT and HAS_GF) or (o >= SPLIT and HAS_GR):
                    col = tl.sum(tl.where(cc[None, :] == o, alpha, 0.0), axis=1)
                    if o < SPLIT:
                        g_o = tl.load(GF + (tok[:, None] * SPLIT + o) * w + jj[None, :], mask=m2, other=0.0)
                    else:
                        g_o = tl.load(GR + (tok[:, None] * K + (o - SPLIT)) * w + jj[None, :], mask=m2, other=0.0)
                    gx += col[:, None] * _to_acc(g_o, IS64)
        tl.store(GH + row[:, None] * w + jj[None, :], gx.to(GH.dtype.element_ty), mask=m2)
        q_acc = _mm_tn(q, ga, q_acc, MODE, PREC)

    tl.store(QP + (pid_g * w + jj[:, None]) * CP + cc[None, :], q_acc, mask=jm[:, None])
    if pid_w == 0:
        base = SP + pid_g * (KP + 2) * CP
        tl.store(base + i3[:, None] * CP + cc[None, :], s_static)
        tl.store(base + KP * CP + cc, s_ga)
        tl.store(base + (KP + 1) * CP + cc, s_gu)


# --- width (mix), depth (write) and their VJPs --------------------------------------------


@triton.jit
def mix_fwd_kernel(
    H, AL, Y, BE, FIRST, REST,
    T, w, sa_t, sa_i, sb_t, sy_t, sy_j,
    K: tl.constexpr, KP: tl.constexpr, C: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr,
    WRITE_FIRST: tl.constexpr, WRITE_REST: tl.constexpr, ADD_Y: tl.constexpr, IS64: tl.constexpr,
):
    """``mix[t, o, :] = sum_i alpha[t, i, o] H[t, i, :]``: rows ``o < SPLIT`` to FIRST (h0), the
    others to REST (H_res); ``ADD_Y`` adds ``beta[t, j] y_j[t, :]`` to REST row j (the fused
    depth step: H_out = A_r^T H + B^T y^T for HC, the diagonal write for FC, whose
    ``sy_j = e`` picks fraction j of y; HC has ``sy_j = 0``). H is read once per token block."""
    pid = tl.program_id(0)
    t3 = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    tmask = t3 < T
    i3 = tl.arange(0, KP)
    imask = i3 < K
    am = tmask[:, None] & imask[None, :]
    jr = tl.arange(0, BLOCK_W)
    for j0 in range(0, w, BLOCK_W):
        jj = j0 + jr
        jm = jj < w
        om = tmask[:, None] & jm[None, :]
        m3 = am[:, :, None] & jm[None, None, :]
        x3 = _to_acc(tl.load(H + (t3[:, None, None] * K + i3[None, :, None]) * w + jj[None, None, :],
                             mask=m3, other=0.0), IS64)
        for o in tl.static_range(C):
            if (o < SPLIT and WRITE_FIRST) or (o >= SPLIT and WRITE_REST):
                col = _to_acc(tl.load(AL + t3[:, None] * sa_t + i3[None, :] * sa_i + o, mask=am, other=0.0), IS64)
                out = tl.sum(col[:, :, None] * x3, axis=1)
                if o < SPLIT:
                    tl.store(FIRST + (t3[:, None] * SPLIT + o) * w + jj[None, :],
                             out.to(FIRST.dtype.element_ty), mask=om)
                else:
                    if ADD_Y:
                        b = _to_acc(tl.load(BE + t3 * sb_t + (o - SPLIT), mask=tmask, other=0.0), IS64)
                        yv = tl.load(Y + t3[:, None] * sy_t + (o - SPLIT) * sy_j + jj[None, :], mask=om, other=0.0)
                        out += b[:, None] * _to_acc(yv, IS64)
                    tl.store(REST + (t3[:, None] * K + (o - SPLIT)) * w + jj[None, :],
                             out.to(REST.dtype.element_ty), mask=om)


@triton.jit
def mix_bwd_kernel(
    H, AL, GF, GR, GH, GAL,
    T, w, sa_t, sa_i,
    K: tl.constexpr, KP: tl.constexpr, C: tl.constexpr, CP: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr,
    HAS_GF: tl.constexpr, HAS_GR: tl.constexpr, WRITE_GH: tl.constexpr, IS64: tl.constexpr,
):
    """VJP of ``mix = alpha^T H`` with ``G_mix = [GF ; GR]``: ``G_H = alpha G_mix`` (when
    ``WRITE_GH``) and ``G_alpha = H G_mix^T`` (per token, reduced over the width in registers).
    H and G_mix are read once."""
    pid = tl.program_id(0)
    t3 = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    tmask = t3 < T
    i3 = tl.arange(0, KP)
    imask = i3 < K
    am = tmask[:, None] & imask[None, :]
    c3 = tl.arange(0, CP)[None, None, :]
    jr = tl.arange(0, BLOCK_W)
    g_alpha = _to_acc(tl.zeros((BLOCK_T, KP, CP), tl.float32), IS64)
    for j0 in range(0, w, BLOCK_W):
        jj = j0 + jr
        jm = jj < w
        om = tmask[:, None] & jm[None, :]
        m3 = am[:, :, None] & jm[None, None, :]
        x3 = _to_acc(tl.load(H + (t3[:, None, None] * K + i3[None, :, None]) * w + jj[None, None, :],
                             mask=m3, other=0.0), IS64)
        gh = x3 * 0.0
        for o in tl.static_range(C):
            if (o < SPLIT and HAS_GF) or (o >= SPLIT and HAS_GR):
                if o < SPLIT:
                    g_o = tl.load(GF + (t3[:, None] * SPLIT + o) * w + jj[None, :], mask=om, other=0.0)
                else:
                    g_o = tl.load(GR + (t3[:, None] * K + (o - SPLIT)) * w + jj[None, :], mask=om, other=0.0)
                g_o = _to_acc(g_o, IS64)
                part = tl.sum(x3 * g_o[:, None, :], axis=2)
                g_alpha += tl.where(c3 == o, part[:, :, None], 0.0)
                if WRITE_GH:
                    col = _to_acc(tl.load(AL + t3[:, None] * sa_t + i3[None, :] * sa_i + o, mask=am, other=0.0), IS64)
                    gh += col[:, :, None] * g_o[:, None, :]
        if WRITE_GH:
            tl.store(GH + (t3[:, None, None] * K + i3[None, :, None]) * w + jj[None, None, :],
                     gh.to(GH.dtype.element_ty), mask=m3)
    tl.store(GAL + (t3[:, None, None] * K + i3[None, :, None]) * C + c3, g_alpha.to(GAL.dtype.element_ty),
             mask=am[:, :, None] & (c3 < C))


@triton.jit
def write_fwd_kernel(
    HR, Y, BE, OUT,
    T, w, sb_t, sy_t, sy_j,
    K: tl.constexpr, KP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr,
    FC: tl.constexpr, IS64: tl.constexpr,
):
    """``H_out[t, j, :] = H_res[t, j, :] + beta[t, j] y_j[t, :]`` with ``y_j = y`` (HC) or
    fraction j of y (FC), computed in ACC and rounded once."""
    pid = tl.program_id(0)
    t3 = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    tmask = t3 < T
    i3 = tl.arange(0, KP)
    am = tmask[:, None] & (i3 < K)[None, :]
    b = _to_acc(tl.load(BE + t3[:, None] * sb_t + i3[None, :], mask=am, other=0.0), IS64)
    jr = tl.arange(0, BLOCK_W)
    for j0 in range(0, w, BLOCK_W):
        jj = j0 + jr
        jm = jj < w
        m3 = am[:, :, None] & jm[None, None, :]
        offs = (t3[:, None, None] * K + i3[None, :, None]) * w + jj[None, None, :]
        hr = _to_acc(tl.load(HR + offs, mask=m3, other=0.0), IS64)
        if FC:
            yoffs = t3[:, None, None] * sy_t + i3[None, :, None] * sy_j + jj[None, None, :]
            y3 = _to_acc(tl.load(Y + yoffs, mask=m3, other=0.0), IS64)
        else:
            y2 = tl.load(Y + t3[:, None] * sy_t + jj[None, :], mask=tmask[:, None] & jm[None, :], other=0.0)
            y3 = _to_acc(y2, IS64)[:, None, :]
        tl.store(OUT + offs, (hr + b[:, :, None] * y3).to(OUT.dtype.element_ty), mask=m3)


@triton.jit
def write_bwd_kernel(
    G, Y, BE, GY, GB,
    T, w, sb_t, sy_t, sy_j,
    K: tl.constexpr, KP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr,
    FC: tl.constexpr, IS64: tl.constexpr,
):
    """VJP of :func:`write_fwd_kernel` (math.md 5.3/5.4): ``G_y = sum_j beta_j G_j`` (HC) or
    ``G_y_j = beta_j G_j`` (FC), ``G_beta_j = G_j . y_j`` (reduced over the width in registers);
    ``G_H_res = G`` needs no kernel."""
    pid = tl.program_id(0)
    t3 = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    tmask = t3 < T
    i3 = tl.arange(0, KP)
    am = tmask[:, None] & (i3 < K)[None, :]
    b = _to_acc(tl.load(BE + t3[:, None] * sb_t + i3[None, :], mask=am, other=0.0), IS64)
    g_beta = b * 0.0
    jr = tl.arange(0, BLOCK_W)
    for j0 in range(0, w, BLOCK_W):
        jj = j0 + jr
        jm = jj < w
        m3 = am[:, :, None] & jm[None, None, :]
        g3 = _to_acc(tl.load(G + (t3[:, None, None] * K + i3[None, :, None]) * w + jj[None, None, :],
                             mask=m3, other=0.0), IS64)
        if FC:
            yoffs = t3[:, None, None] * sy_t + i3[None, :, None] * sy_j + jj[None, None, :]
            y3 = _to_acc(tl.load(Y + yoffs, mask=m3, other=0.0), IS64)
            g_beta += tl.sum(g3 * y3, axis=2)
            # G_y is contiguous (T, K * w): the same offsets as y's when y is contiguous too
            gyoffs = t3[:, None, None] * (K * w) + i3[None, :, None] * w + jj[None, None, :]
            tl.store(GY + gyoffs, (b[:, :, None] * g3).to(GY.dtype.element_ty), mask=m3)
        else:
            om = tmask[:, None] & jm[None, :]
            y2 = _to_acc(tl.load(Y + t3[:, None] * sy_t + jj[None, :], mask=om, other=0.0), IS64)
            g_beta += tl.sum(g3 * y2[:, None, :], axis=2)
            gy = tl.sum(b[:, :, None] * g3, axis=1)
            tl.store(GY + t3[:, None] * w + jj[None, :], gy.to(GY.dtype.element_ty), mask=om)
    tl.store(GB + t3[:, None] * K + i3[None, :], g_beta.to(GB.dtype.element_ty), mask=am)
