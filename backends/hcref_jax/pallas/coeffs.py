"""Kernel 1: the dynamic coefficients, the norm folded after the projection (HC Eqs. 10-13, FC Eqs. 11-14).

Per row ``x`` (one stream or fraction of one token, width w), scale-safe as ``hcref.norms`` (D12)::

    s  = 2^floor(log2(max(max|x|, 1)))      x' = x / s        eps' = eps / s / s
    rmsnorm:   xc = x'                      r' = max(mean(xc^2) + eps', tiny)^(-1/2)
    layernorm: xc = x' - mean(x')           r' = max(mean(xc^2) + eps', tiny)^(-1/2)
    none:      xc = x, r' = 1
    (tiny: float32's smallest normal number; TPUs flush subnormals, and eps' is far above it
    wherever it matters)
    a  = r' (xc Wg) + b W                   Wg = diag(norm_weight) [W_alpha | W_beta]   (w, c+1)
    ab = scale * u(a) + [static_alpha | static_beta]     u = tanh or identity

so one read of the row gives the statistics and the ``c+1`` projections (the normalised row is never
written; the projection is one MXU matmul ``xc Wg`` of the block). ``b W`` (layernorm's bias
through the projection), the scales ``scale = [s_alpha]*c + [s_beta]`` (ones when ``use_scale``
is off) and ``Wg`` are prepared once per call in XLA, and their gradients follow from the
kernel's by JAX's autodiff of that preparation. The layernorm mean is subtracted from the
VMEM-resident row before the projection rather than folded as
``r'(x'Wg - mean(x') 1^T Wg)``: the folded form cancels when ``|mean| >> std`` (float32 rows of
mean 1, std 1e-3, w = 4096: relative error 2.2e-3 folded, 1.0e-4 centred), and centring in VMEM
costs no HBM traffic. The matmuls run at float32 precision (:data:`PRECISION`).

Site path (``spec.site``): the same kernel also writes ``h0 = alpha[:, :, :split]^T H`` from the rows
still in VMEM, so a site reads H once for its coefficients and its branch input; the backward then
takes the cotangent of the state passed on to the depth kernel and adds everything to ``g_H`` in
one pass (the width backward moves ``(3n+1)d`` per token).

Backward (math.md 5.1, 5.3), per row, from the saved ``a`` and the statistics ``(s, r', mean)``::

    g_a   = scale g_ab (1 - u^2)            (no tanh: scale g_ab)
    g_hat = g_a Wg^T                         (w)
    g_x   = (r'/s) (g_hat - mean(g_hat) - x_hat mean(g_hat x_hat))      x_hat = xc r'   (layernorm)
    g_x   = (r'/s) (g_hat - x_hat mean(g_hat x_hat))                                    (rmsnorm)
    g_Wg^T += g_a^T x_hat,  g_(bW) += sum g_a,  g_scale += sum g_ab u     (sums over all rows)

``g_Wg^T`` is one MXU matmul contracting the block's rows (``g_a^T x_hat``), ``g_hat`` another
(``g_a Wg^T``). The three parameter sums are accumulated in VMEM-resident output blocks along the "arbitrary" inner
grid axis and written as one partial sum per outer "parallel" index (one per TensorCore), which
XLA then adds: no atomics, the same order on every run (deterministic). Rows past the last token
(a partial last block) are masked out of the sums.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from . import blocks, mode
from ._batching import fold_tokens
from ._common import F32, call, column, compiler_params, rows, shape, store_rows

Array = jax.Array
PRECISION = jax.lax.Precision.HIGHEST
"""Of the kernels' matmuls (projection, its transpose, the weight-gradient sum): float32 products.
On a TPU, HIGH (bf16x3) or DEFAULT (one bf16 pass) would make the coefficient kernel cheaper on
the MXU (the c+1 <= 17 output columns pad to 128) at the cost of accuracy; unmeasured."""


@dataclass(frozen=True)
class CoeffSpec:
    """Static description of one coefficient kernel (hashable: a ``nondiff`` argument)."""

    k: int
    """Rows per token: n streams (HC) or m fractions (FC)."""
    c: int
    """alpha columns: n+1 (HC) or 2m (FC); ``ab`` has c+1 (beta last)."""
    split: int
    """alpha columns that mix into h0: 1 (HC) or m (FC)."""
    norm: str
    """The norm in force: "layernorm", "rmsnorm" or "none" (also when ``use_norm`` is off)."""
    eps: float
    use_tanh: bool
    out_dtype: str
    """dtype of ``ab`` (the promotion of H's and the parameters' dtypes)."""
    site: bool = False
    """Also write h0 and pass H through (the fused site path)."""


def _pow2_floor(v: Array) -> Array:
    """The largest power of two not above ``v`` (v >= 1, float32): the exponent bits of v."""
    bits = jax.lax.bitcast_convert_type(v, jnp.int32)
    out: Array = jax.lax.bitcast_convert_type(bits & 0x7F800000, F32)
    return out


def _normalize(x: Array, norm: str, eps: float) -> tuple[Array, Array, Array, Array]:
    """(xc, s, r', mean) of the module docstring for rows x (tr, w) float32; s, r', mean (tr, 1)."""
    ones = jnp.ones((x.shape[0], 1), F32)
    if norm == "none":
        return x, ones, ones, jnp.zeros_like(ones)
    s = _pow2_floor(jnp.maximum(jnp.max(jnp.abs(x), axis=-1, keepdims=True), 1.0))
    inv = 1.0 / s
    xs = x * inv
    if norm == "layernorm":
        mu = jnp.mean(xs, axis=-1, keepdims=True)
        xc = xs - mu
    else:
        mu = jnp.zeros_like(ones)
        xc = xs
    var = jnp.mean(xc * xc, axis=-1, keepdims=True)
    r = jax.lax.rsqrt(jnp.maximum(var + eps * inv * inv, np.finfo(np.float32).tiny))
    return xc, s, r, mu


def _dot_nt(a: Array, b: Array) -> Array:
    """``a b^T`` on the MXU in float32 (HIGHEST: the full float32 product, as the reference's)."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=PRECISION, preferred_element_type=F32)


def _dot_tn(a: Array, b: Array) -> Array:
    """``a^T b`` (contracting the rows: a sum over tokens) on the MXU in float32."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=PRECISION, preferred_element_type=F32)


def _centred(x: Array, stats: Array, norm: str) -> Array:
    """xc of :func:`_normalize` from the saved statistics (no reductions)."""
    if norm == "none":
        return x
    out: Array = x * (1.0 / column(stats, 0)) - column(stats, 2)
    return out


# --- forward ----------------------------------------------------------------------------------


def _fwd_kernel(
    x_ref: Any, wt_ref: Any, vec_ref: Any, st_ref: Any, *out_refs: Any, spec: CoeffSpec, save: bool
) -> None:
    ab_ref, *more = out_refs
    first_ref = more.pop(0) if spec.site else None
    x = x_ref[...].astype(F32)
    xc, s, r, mu = _normalize(x, spec.norm, spec.eps)
    vec = vec_ref[...]
    a = _dot_nt(xc, wt_ref[...]) * r + vec[1:2, :]
    u = jnp.tanh(a) if spec.use_tanh else a
    ab_ref[...] = (vec[0:1, :] * u + st_ref[...]).astype(ab_ref.dtype)
    if save:
        more[0][...] = a
        stats_ref = more[1]
        stats_ref[:, 0:1] = s
        stats_ref[:, 1:2] = r
        stats_ref[:, 2:3] = mu
    if first_ref is not None:
        k, tn = spec.k, x_ref.shape[0] // spec.k
        xs = [rows(x_ref, i, tn, k) for i in range(k)]
        for col in range(spec.split):
            acc = rows(ab_ref, 0, tn, k, slice(col, col + 1)) * xs[0]
            for i in range(1, k):
                acc = acc + rows(ab_ref, i, tn, k, slice(col, col + 1)) * xs[i]
            store_rows(first_ref, col, tn, spec.split, acc)


def _fwd_tiles(spec: CoeffSpec, w: int, x_bytes: int, save: bool) -> tuple[int, int]:
    cols, k = spec.c + 1, spec.k
    out_bytes = int(jnp.dtype(spec.out_dtype).itemsize)
    block = [(k, w, x_bytes), (k, cols, out_bytes)]
    if spec.site:
        block.append((spec.split, w, x_bytes))
    if save:
        block += [(k, cols, 4), (k, 3, 4)]
    per = blocks.per_token_bytes(block, 3 * k + (k + 1 if spec.site else 0), w)
    fixed = 2 * (-(-cols // 8) * 8) * (-(-w // 128) * 128) * 4
    return per, fixed


def _fwd_call(spec: CoeffSpec, save: bool) -> Any:
    return _fwd_build(spec, save, (*blocks.current(), mode.compiled()))


@functools.cache
def _fwd_build(spec: CoeffSpec, save: bool, key: tuple[int, int, bool]) -> Any:
    def run(X: Array, Wt: Array, vec: Array, static: Array) -> tuple[Array, ...]:
        R, w = X.shape
        k, cols = spec.k, spec.c + 1
        tokens = R // k
        per, fixed = _fwd_tiles(spec, w, X.dtype.itemsize, save)
        tn = blocks.token_block(tokens, per, fixed, _multiple(spec, X.dtype.itemsize))
        tr = tn * k
        row_block = lambda b: (b, 0)  # noqa: E731
        whole = lambda b: (0, 0)  # noqa: E731
        out_shape = [shape((R, cols), jnp.dtype(spec.out_dtype))]
        out_specs = [pl.BlockSpec((tr, cols), row_block)]
        if spec.site:
            out_shape.append(shape((tokens * spec.split, w), X.dtype))
            out_specs.append(pl.BlockSpec((tn * spec.split, w), row_block))
        if save:
            out_shape += [shape((R, cols), F32), shape((R, 3), F32)]
            out_specs += [pl.BlockSpec((tr, cols), row_block), pl.BlockSpec((tr, 3), row_block)]
        return tuple(
            call(
                functools.partial(_fwd_kernel, spec=spec, save=save),
                name="hcref_coeffs_fwd" + ("_site" if spec.site else ""),
                out_shape=tuple(out_shape),
                grid=(pl.cdiv(tokens, tn),),
                in_specs=[
                    pl.BlockSpec((tr, w), row_block),
                    pl.BlockSpec((cols, w), whole),
                    pl.BlockSpec((2, cols), whole),
                    pl.BlockSpec((tr, cols), whole),
                ],
                out_specs=tuple(out_specs),
                compiler_params=compiler_params("parallel"),
            )(X, Wt, vec, jnp.tile(static, (tn, 1)))
        )

    n_out = 1 + int(spec.site) + 2 * int(save)
    return fold_tokens(jax.jit(run), (True, False, False, False), (True,) * n_out)


# --- backward ---------------------------------------------------------------------------------


def _bwd_kernel(*refs: Any, spec: CoeffSpec, total_rows: int, inner: int) -> None:
    x_ref, wt_ref, vec_ref, a_ref, stats_ref, gab_ref = refs[:6]
    refs = refs[6:]
    if spec.site:
        ab_ref, gfirst_ref, gpass_ref = refs[:3]
        refs = refs[3:]
    gx_ref, m_ref, misc_ref = refs[:3]
    if spec.site:
        gab_full_ref, acc_ref = refs[3:5]
    k = spec.k
    tr = x_ref.shape[0]
    tn = tr // k
    p, q = pl.program_id(0), pl.program_id(1)

    @pl.when(q == 0)
    def _init() -> None:
        m_ref[...] = jnp.zeros(m_ref.shape, F32)
        misc_ref[...] = jnp.zeros(misc_ref.shape, F32)

    if spec.site:
        # g_alpha[:, i, col] += <H_i, g_h0_col> and the mixing's share of g_H, stream by stream.
        gab_full_ref[...] = gab_ref[...]
        g_first = [rows(gfirst_ref, col, tn, spec.split) for col in range(spec.split)]
        for i in range(k):
            x_i = rows(x_ref, i, tn, k)
            acc = None
            for col in range(spec.split):
                dot = jnp.sum(x_i * g_first[col], axis=-1, keepdims=True)
                lane = slice(col, col + 1)
                store_rows(gab_full_ref, i, tn, k, rows(gab_full_ref, i, tn, k, lane) + dot, lane)
                term = rows(ab_ref, i, tn, k, slice(col, col + 1)) * g_first[col]
                acc = term if acc is None else acc + term
            store_rows(acc_ref, i, tn, k, acc)
        g_ab = gab_full_ref[...]
    else:
        g_ab = gab_ref[...]

    x = x_ref[...].astype(F32)
    stats, a, wt, vec = stats_ref[...], a_ref[...], wt_ref[...], vec_ref[...]
    row_id = (p * inner + q) * tr + jax.lax.broadcasted_iota(jnp.int32, (tr, 1), 0)
    valid = row_id < total_rows
    r = column(stats, 1)
    x_hat = _centred(x, stats, spec.norm) * r
    u = jnp.tanh(a) if spec.use_tanh else a
    g_a = vec[0:1, :] * g_ab
    if spec.use_tanh:
        g_a = g_a * (1.0 - u * u)
    g_a = jnp.where(valid, g_a, 0.0)
    misc_ref[0, 0:1, :] += jnp.sum(g_a, axis=0, keepdims=True)
    misc_ref[0, 1:2, :] += jnp.sum(jnp.where(valid, g_ab * u, 0.0), axis=0, keepdims=True)
    m_ref[0] += _dot_tn(g_a, jnp.where(valid, x_hat, 0.0))
    g_hat = jnp.dot(g_a, wt, precision=PRECISION, preferred_element_type=F32)
    if spec.norm == "none":
        g_x = g_hat
    else:
        inner_terms = g_hat - x_hat * jnp.mean(g_hat * x_hat, axis=-1, keepdims=True)
        if spec.norm == "layernorm":
            inner_terms = inner_terms - jnp.mean(g_hat, axis=-1, keepdims=True)
        g_x = (r / column(stats, 0)) * inner_terms
    if spec.site:
        g_x = g_x + acc_ref[...] + gpass_ref[...].astype(F32)
    gx_ref[...] = g_x.astype(gx_ref.dtype)


def _bwd_tiles(spec: CoeffSpec, w: int, xb: int) -> tuple[int, int]:
    k, cols = spec.k, spec.c + 1
    block = [(k, w, xb), (k, w, xb), (k, cols, 4), (k, 3, 4), (k, cols, 4)]
    temps = 5 * k
    if spec.site:
        block += [(k, cols, 4), (spec.split, w, xb), (k, w, xb), (k, cols, 4)]
        temps += 2 * k + spec.split
    fixed = 4 * (-(-cols // 8) * 8) * (-(-w // 128) * 128) * 4
    return blocks.per_token_bytes(block, temps, w), fixed


def fits(spec: CoeffSpec, tokens: int, w: int, x_bytes: int) -> bool:
    """Whether the smallest blocks of the forward and backward kernels fit VMEM (whole rows of w)."""
    multiple = _multiple(spec, x_bytes)
    return blocks.fits(tokens, *_fwd_tiles(spec, w, x_bytes, True), multiple) and blocks.fits(
        tokens, *_bwd_tiles(spec, w, x_bytes), multiple
    )


def _multiple(spec: CoeffSpec, x_bytes: int) -> int:
    return blocks.sublanes(x_bytes, int(jnp.dtype(spec.out_dtype).itemsize))


def _bwd_call(spec: CoeffSpec) -> Any:
    return _bwd_build(spec, (*blocks.current(), mode.compiled()))


@functools.cache
def _bwd_build(spec: CoeffSpec, key: tuple[int, int, bool]) -> Any:
    def run(*args: Array) -> tuple[Array, ...]:
        X = args[0]
        R, w = X.shape
        k, cols = spec.k, spec.c + 1
        tokens = R // k
        tn = blocks.token_block(tokens, *_bwd_tiles(spec, w, X.dtype.itemsize), _multiple(spec, X.dtype.itemsize))
        tr = tn * k
        nb = pl.cdiv(tokens, tn)
        parts = blocks.partial_sums(nb)
        inner = nb // parts
        row_block = lambda p, q: (p * inner + q, 0)  # noqa: E731
        whole = lambda p, q: (0, 0)  # noqa: E731
        part = lambda p, q: (p, 0, 0)  # noqa: E731
        in_specs = [
            pl.BlockSpec((tr, w), row_block),
            pl.BlockSpec((cols, w), whole),
            pl.BlockSpec((2, cols), whole),
            pl.BlockSpec((tr, cols), row_block),
            pl.BlockSpec((tr, 3), row_block),
            pl.BlockSpec((tr, cols), row_block),
        ]
        out_shape = [
            shape((R, w), X.dtype),
            shape((parts, cols, w), F32),
            shape((parts, 2, cols), F32),
        ]
        out_specs = [
            pl.BlockSpec((tr, w), row_block),
            pl.BlockSpec((1, cols, w), part),
            pl.BlockSpec((1, 2, cols), part),
        ]
        scratch = []
        if spec.site:
            in_specs += [
                pl.BlockSpec((tr, cols), row_block),
                pl.BlockSpec((tn * spec.split, w), row_block),
                pl.BlockSpec((tr, w), row_block),
            ]
            out_shape.append(shape((R, cols), F32))
            out_specs.append(pl.BlockSpec((tr, cols), row_block))
            scratch.append(pltpu.VMEM((tr, w), F32))
        return tuple(
            call(
                functools.partial(_bwd_kernel, spec=spec, total_rows=R, inner=inner),
                name="hcref_coeffs_bwd" + ("_site" if spec.site else ""),
                out_shape=tuple(out_shape),
                grid=(parts, inner),
                in_specs=in_specs,
                out_specs=tuple(out_specs),
                scratch_shapes=scratch,
                compiler_params=compiler_params("parallel", "arbitrary"),
            )(*args)
        )

    token_in = (True, False, False, True, True, True) + ((True, True, True) if spec.site else ())
    token_out = (True, False, False) + ((True,) if spec.site else ())
    return fold_tokens(jax.jit(run), token_in, token_out)


# --- the differentiable function ----------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def coeff_rows(spec: CoeffSpec, X: Array, Wt: Array, vec: Array, static: Array) -> tuple[Array, ...]:
    """``ab`` (N*k, c+1) of the module docstring for rows X (N*k, w); the site path also returns
    h0 rows (N*split, w) and X itself (passed on to the depth kernel).

    Wt (c+1, w) = Wg^T, vec (2, c+1) = [scale; b W], static (k, c+1), all float32."""
    outs = _fwd_call(spec, False)(X, Wt, vec, static)
    return (*outs, X) if spec.site else outs


def _coeff_fwd(spec: CoeffSpec, X: Array, Wt: Array, vec: Array, static: Array) -> tuple[Any, Any]:
    outs = _fwd_call(spec, True)(X, Wt, vec, static)
    if spec.site:
        ab, first, a, stats = outs
        return (ab, first, X), (X, Wt, vec, a, stats, ab)
    ab, a, stats = outs
    return (ab,), (X, Wt, vec, a, stats, None)


def _coeff_bwd(spec: CoeffSpec, res: Any, g: Any) -> tuple[Array, Array, Array, Array]:
    X, Wt, vec, a, stats, ab = res
    g_ab = g[0].astype(F32)
    args = [X, Wt, vec, a, stats, g_ab]
    if spec.site:
        args += [ab, g[1].astype(X.dtype), g[2].astype(X.dtype)]
    outs = _bwd_call(spec)(*args)
    g_X, m, misc = outs[:3]
    g_rows = outs[3] if spec.site else g_ab
    g_vec = jnp.stack([misc[:, 1].sum(axis=0), misc[:, 0].sum(axis=0)])
    g_static = g_rows.reshape(-1, spec.k, spec.c + 1).sum(axis=0)
    return g_X, m.sum(axis=0), g_vec, g_static


coeff_rows.defvjp(_coeff_fwd, _coeff_bwd)
