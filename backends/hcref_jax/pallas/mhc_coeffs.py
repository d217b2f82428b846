"""mHC kernel 1: the coefficients, the RMS scaling folded after the projection and the whole
epilogue (gates, bias, sigmoid, 2 sigmoid, Sinkhorn) in one kernel (mHC paper Eqs. 7-9, 14-19;
math.md 4.2, 5.5, 5.6; decisions D7, D9, D12).

Per token, ``v = vec(H)`` (one row of n*d lanes: the free reshape of H (..., n, d) to (N, n*d)),
scale-safe as :func:`hcref.norms.rms_normalize` (D12)::

    s      = 2^floor(log2(max(max|v|, 1)))       v' = v / s  (exact)     eps' = 1e-6 / s / s
    r'     = (mean(v'^2) + eps')^(-1/2)
    z      = (v' phi) r'                          one MXU matmul of the block, norm after it
    logits = gates_col z + b                      gates_col = [g_pre]*n + [g_post]*n + [g_res]*n^2
    h_pre  = sigmoid(logits_pre) + eps            h_post = 2 sigmoid(logits_post)
    h_res  = sinkhorn(mat(logits_res), iters, eps)    in VMEM/registers (:mod:`.sinkhorn`)

One read of the row gives the statistics and the 2n+n^2 projections; the normalised row is never
written; the logits never leave the kernel. Outputs h_pre (N, n), h_post (N, n), h_res (N, n^2)
in the promoted dtype of H and the parameters; for the backward also z (N, 2n+n^2) and (s, r')
(N, 2) in float32 (the Sinkhorn iterates are recomputed, never stored in HBM).

Backward (math.md 5.5, 5.6), per token, from z and (s, r'), v_hat = v' r'::

    g_logits = [g_h_pre sigmoid'(pre) | g_h_post 2 sigmoid'(post) | sinkhorn_vjp(g_h_res)]
    g_z      = gates_col g_logits
    g_v_hat  = g_z phi^T                          (MXU)
    g_v      = (r'/s) (g_v_hat - v_hat mean(g_v_hat v_hat))
    g_phi^T += g_z^T v_hat,  g_b += sum g_logits,  g_gates_col += sum g_logits z   (over tokens)

The three parameter sums accumulate in VMEM-resident output blocks along the "arbitrary" inner
grid axis, one partial sum per outer "parallel" index (per TensorCore), added by XLA: no atomics,
deterministic. Rows past the last token of a partial last block are masked out of the sums.
``gates_col`` and ``phi^T`` are prepared in XLA; JAX's autodiff of that preparation turns the
kernel's gradients into those of ``gates`` and ``phi``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from hcref.mhc import RMS_EPS

from . import blocks, mode, sinkhorn
from ._batching import fold_tokens
from ._common import F32, call, compiler_params, shape
from .coeffs import PRECISION, _dot_nt, _dot_tn, _pow2_floor

Array = jax.Array


@dataclass(frozen=True)
class MhcSpec:
    """Static description of the mHC coefficient kernel (hashable: a ``nondiff`` argument)."""

    n: int
    iters: int
    eps: float
    out_dtype: str
    """dtype of the coefficients: the promotion of H's and the parameters' dtypes."""

    @property
    def cols(self) -> int:
        return 2 * self.n + self.n * self.n


def _sigmoid(x: Array) -> Array:
    """``1 / (1 + exp(-x))`` from ``exp(-|x|)``, as :func:`hcref.mhc.sigmoid` (finite for any x)."""
    e = jnp.exp(-jnp.abs(x))
    return jnp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _stats(x: Array) -> tuple[Array, Array, Array]:
    """(v', s, r') of the module docstring for rows x (tn, n*d) float32; s, r' (tn, 1)."""
    s = _pow2_floor(jnp.maximum(jnp.max(jnp.abs(x), axis=-1, keepdims=True), 1.0))
    xs = x / s
    r = jax.lax.rsqrt(jnp.mean(xs * xs, axis=-1, keepdims=True) + RMS_EPS / s / s)
    return xs, s, r


def _split(logits: Array, n: int) -> tuple[Array, Array, list[Array]]:
    """(pre (tn, n), post (tn, n), the n rows of mat(res), each (tn, n))."""
    res = [logits[:, 2 * n + i * n : 2 * n + (i + 1) * n] for i in range(n)]
    return logits[:, :n], logits[:, n : 2 * n], res


# --- forward ----------------------------------------------------------------------------------


def _fwd_kernel(x_ref: Any, pt_ref: Any, vec_ref: Any, *out_refs: Any, spec: MhcSpec, save: bool) -> None:
    pre_ref, post_ref, res_ref = out_refs[:3]
    n = spec.n
    xs, s, r = _stats(x_ref[...].astype(F32))
    z = _dot_nt(xs, pt_ref[...]) * r
    vec = vec_ref[...]
    pre, post, res = _split(z * vec[0:1, :] + vec[1:2, :], n)
    pre_ref[...] = (_sigmoid(pre) + spec.eps).astype(pre_ref.dtype)
    post_ref[...] = (2 * _sigmoid(post)).astype(post_ref.dtype)
    for i, P_i in enumerate(sinkhorn.forward(res, spec.iters, spec.eps)):
        res_ref[:, i * n : (i + 1) * n] = P_i.astype(res_ref.dtype)
    if save:
        z_ref, st_ref = out_refs[3:]
        z_ref[...] = z
        st_ref[:, 0:1] = s
        st_ref[:, 1:2] = r


def _multiple(spec: MhcSpec, x_bytes: int) -> int:
    return blocks.sublanes(x_bytes, int(jnp.dtype(spec.out_dtype).itemsize))


def _fixed(spec: MhcSpec, nd: int, copies: int) -> int:
    """VMEM of ``copies`` (cols, n*d) float32 blocks (phi^T, double-buffered; the g_phi^T partial sum)."""
    return copies * (-(-spec.cols // 8) * 8) * (-(-nd // 128) * 128) * 4


def _fwd_tiles(spec: MhcSpec, nd: int, x_bytes: int, save: bool) -> tuple[int, int]:
    n, cols = spec.n, spec.cols
    out_bytes = int(jnp.dtype(spec.out_dtype).itemsize)
    block = [(1, nd, x_bytes), (1, n, out_bytes), (1, n, out_bytes), (1, n * n, out_bytes)]
    if save:
        block += [(1, cols, 4), (1, 2, 4)]
    epilogue = -(-(cols + 4 * n + 8) * 128 // max(nd, 1))  # logits, rows, potentials: rows of 128 lanes
    return blocks.per_token_bytes(block, 3 + epilogue, nd), _fixed(spec, nd, 2)


def _bwd_tiles(spec: MhcSpec, nd: int, x_bytes: int) -> tuple[int, int]:
    n, cols = spec.n, spec.cols
    block = [(1, nd, x_bytes), (1, nd, x_bytes), (1, cols, 4), (1, 2, 4), (1, n, 4), (1, n, 4), (1, n * n, 4)]
    scratch = (2 * spec.iters + 1) * 128 * 4 + (-(-cols // 128) * 128) * 4  # potentials, g_logits
    epilogue = -(-(cols + 8 * n + 8) * 128 // max(nd, 1))
    return blocks.per_token_bytes(block, 5 + epilogue, nd) + scratch, _fixed(spec, nd, 4)


def fits(spec: MhcSpec, tokens: int, nd: int, x_bytes: int) -> bool:
    """Whether the smallest blocks of the forward and backward kernels fit VMEM (whole rows of n*d)."""
    multiple = _multiple(spec, x_bytes)
    return blocks.fits(tokens, *_fwd_tiles(spec, nd, x_bytes, True), multiple) and blocks.fits(
        tokens, *_bwd_tiles(spec, nd, x_bytes), multiple
    )


def _fwd_call(spec: MhcSpec, save: bool) -> Any:
    return _fwd_build(spec, save, (*blocks.current(), mode.compiled()))


@functools.cache
def _fwd_build(spec: MhcSpec, save: bool, key: tuple[int, int, bool]) -> Any:
    def run(X: Array, Pt: Array, vec: Array) -> tuple[Array, ...]:
        tokens, nd = X.shape
        n, cols = spec.n, spec.cols
        tn = blocks.token_block(tokens, *_fwd_tiles(spec, nd, X.dtype.itemsize, save),
                                _multiple(spec, X.dtype.itemsize))
        row_block = lambda b: (b, 0)  # noqa: E731
        whole = lambda b: (0, 0)  # noqa: E731
        out = jnp.dtype(spec.out_dtype)
        out_shape = [shape((tokens, n), out), shape((tokens, n), out), shape((tokens, n * n), out)]
        out_specs = [pl.BlockSpec((tn, n), row_block), pl.BlockSpec((tn, n), row_block),
                     pl.BlockSpec((tn, n * n), row_block)]
        if save:
            out_shape += [shape((tokens, cols), F32), shape((tokens, 2), F32)]
            out_specs += [pl.BlockSpec((tn, cols), row_block), pl.BlockSpec((tn, 2), row_block)]
        return tuple(
            call(
                functools.partial(_fwd_kernel, spec=spec, save=save),
                name="hcref_mhc_coeffs_fwd",
                out_shape=tuple(out_shape),
                grid=(pl.cdiv(tokens, tn),),
                in_specs=[
                    pl.BlockSpec((tn, nd), row_block),
                    pl.BlockSpec((cols, nd), whole),
                    pl.BlockSpec((2, cols), whole),
                ],
                out_specs=tuple(out_specs),
                compiler_params=compiler_params("parallel"),
            )(X, Pt, vec)
        )

    return fold_tokens(jax.jit(run), (True, False, False), (True,) * (5 if save else 3))


# --- backward ---------------------------------------------------------------------------------


def _bwd_kernel(*refs: Any, spec: MhcSpec, tokens: int, inner: int) -> None:
    x_ref, pt_ref, vec_ref, z_ref, st_ref, gpre_ref, gpost_ref, gres_ref = refs[:8]
    gx_ref, m_ref, misc_ref, gl_ref, r_ref, c_ref = refs[8:]
    n = spec.n
    tn = x_ref.shape[0]
    p, q = pl.program_id(0), pl.program_id(1)

    @pl.when(q == 0)
    def _init() -> None:
        m_ref[...] = jnp.zeros(m_ref.shape, F32)
        misc_ref[...] = jnp.zeros(misc_ref.shape, F32)

    z, st, vec = z_ref[...], st_ref[...], vec_ref[...]
    s, r = st[:, 0:1], st[:, 1:2]
    pre, post, res = _split(z * vec[0:1, :] + vec[1:2, :], n)
    gl_ref[:, :n] = gpre_ref[...] * (_sigmoid(pre) * _sigmoid(-pre))
    gl_ref[:, n : 2 * n] = gpost_ref[...] * 2 * (_sigmoid(post) * _sigmoid(-post))
    g_res = [gres_ref[:, i * n : (i + 1) * n] for i in range(n)]
    for i, g_i in enumerate(sinkhorn.backward(res, g_res, spec.iters, spec.eps, r_ref, c_ref)):
        gl_ref[:, 2 * n + i * n : 2 * n + (i + 1) * n] = g_i

    token = (p * inner + q) * tn + jax.lax.broadcasted_iota(jnp.int32, (tn, 1), 0)
    valid = token < tokens
    g_logits = jnp.where(valid, gl_ref[...], 0.0)
    misc_ref[0, 0:1, :] += jnp.sum(g_logits * jnp.where(valid, z, 0.0), axis=0, keepdims=True)
    misc_ref[0, 1:2, :] += jnp.sum(g_logits, axis=0, keepdims=True)
    g_z = g_logits * vec[0:1, :]
    x_hat = (x_ref[...].astype(F32) / s) * r
    m_ref[0] += _dot_tn(g_z, jnp.where(valid, x_hat, 0.0))
    g_hat = jnp.dot(g_z, pt_ref[...], precision=PRECISION, preferred_element_type=F32)
    g_x = (r / s) * (g_hat - x_hat * jnp.mean(g_hat * x_hat, axis=-1, keepdims=True))
    gx_ref[...] = g_x.astype(gx_ref.dtype)


def _bwd_call(spec: MhcSpec) -> Any:
    return _bwd_build(spec, (*blocks.current(), mode.compiled()))


@functools.cache
def _bwd_build(spec: MhcSpec, key: tuple[int, int, bool]) -> Any:
    def run(*args: Array) -> tuple[Array, ...]:
        X = args[0]
        tokens, nd = X.shape
        n, cols = spec.n, spec.cols
        tn = blocks.token_block(tokens, *_bwd_tiles(spec, nd, X.dtype.itemsize), _multiple(spec, X.dtype.itemsize))
        nb = pl.cdiv(tokens, tn)
        parts = blocks.partial_sums(nb)
        inner = nb // parts
        row_block = lambda p, q: (p * inner + q, 0)  # noqa: E731
        whole = lambda p, q: (0, 0)  # noqa: E731
        part = lambda p, q: (p, 0, 0)  # noqa: E731
        in_specs = [
            pl.BlockSpec((tn, nd), row_block),
            pl.BlockSpec((cols, nd), whole),
            pl.BlockSpec((2, cols), whole),
            pl.BlockSpec((tn, cols), row_block),
            pl.BlockSpec((tn, 2), row_block),
            pl.BlockSpec((tn, n), row_block),
            pl.BlockSpec((tn, n), row_block),
            pl.BlockSpec((tn, n * n), row_block),
        ]
        return tuple(
            call(
                functools.partial(_bwd_kernel, spec=spec, tokens=tokens, inner=inner),
                name="hcref_mhc_coeffs_bwd",
                out_shape=(shape((tokens, nd), X.dtype), shape((parts, cols, nd), F32), shape((parts, 2, cols), F32)),
                grid=(parts, inner),
                in_specs=in_specs,
                out_specs=(
                    pl.BlockSpec((tn, nd), row_block),
                    pl.BlockSpec((1, cols, nd), part),
                    pl.BlockSpec((1, 2, cols), part),
                ),
                scratch_shapes=[
                    pltpu.VMEM((tn, cols), F32),
                    pltpu.VMEM((spec.iters + 1, tn, n), F32),
                    pltpu.VMEM((spec.iters, tn, n), F32),
                ],
                compiler_params=compiler_params("parallel", "arbitrary"),
            )(*args)
        )

    return fold_tokens(jax.jit(run), (True, False, False, True, True, True, True, True), (True, False, False))


# --- the differentiable function ----------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def mhc_coeff_rows(spec: MhcSpec, X: Array, Pt: Array, vec: Array) -> tuple[Array, Array, Array]:
    """(h_pre (N, n), h_post (N, n), h_res (N, n*n) row-major (out, in)) of the module docstring
    for rows X = vec(H) (N, n*d); Pt = phi^T (2n+n^2, n*d), vec = [gates_col; b] (2, 2n+n^2),
    both float32."""
    pre, post, res = _fwd_call(spec, False)(X, Pt, vec)
    return pre, post, res


def _mhc_fwd(spec: MhcSpec, X: Array, Pt: Array, vec: Array) -> tuple[Any, Any]:
    pre, post, res, z, st = _fwd_call(spec, True)(X, Pt, vec)
    return (pre, post, res), (X, Pt, vec, z, st)


def _mhc_bwd(spec: MhcSpec, saved: Any, g: Any) -> tuple[Array, Array, Array]:
    X, Pt, vec, z, st = saved
    g_pre, g_post, g_res = (x.astype(F32) for x in g)
    g_X, m, misc = _bwd_call(spec)(X, Pt, vec, z, st, g_pre, g_post, g_res)
    return g_X, m.sum(axis=0), misc.sum(axis=0)


mhc_coeff_rows.defvjp(_mhc_fwd, _mhc_bwd)
