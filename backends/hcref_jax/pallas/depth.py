"""Kernel 3: the depth step, the write of the sublayer output into the state (HC Eq. 2, FC Eq. 8; D6).

Per token, for output row j (stream or fraction)::

    H_out_j = beta_j y_j + R_j        HC: y_j = y (the same d-vector for every stream, ``B^T y^T``)
                                      FC: y_j = fraction j of y (the diagonal write)
    R_j = H_res_j                     (the contract op: H_res from the width kernel), or
    R_j = sum_i alpha[i, split + j] H_i    (the fused site path: the depth kernel takes the mixing
                                            over, so H_res is never written: a site moves
                                            (3n+2)d per token for HC and 5d for FC)

computed in float32 and rounded once to ``promote(y, H_res)`` (D12). One read of y, H_res (or H and
alpha) and beta, one write of H_out; grid token blocks x lane blocks, both "parallel".

Backward (math.md 5.3, 5.4), G = g_H_out::

    g_y = sum_j beta_j G_j  (HC)   |   g_y_j = beta_j G_j  (FC)
    g_beta_j = <G_j, y_j>            g_H_res = G  (returned as is, no kernel)
    fused: g_H_i = sum_j alpha[i, split+j] G_j,  g_alpha[i, split+j] = <H_i, G_j>

with the per-token sums over the width accumulated along the "arbitrary" lane-block axis in
VMEM-resident blocks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from . import blocks, mode
from ._batching import fold_tokens
from ._common import F32, call, column, compiler_params, rows, shape, store_rows

Array = jax.Array


@dataclass(frozen=True)
class WriteSpec:
    k: int
    ry: int
    """Rows of y per token: 1 (HC, y broadcast over the streams) or k (FC, one fraction per row)."""
    fused: bool
    """R = alpha[:, :, split:]^T H computed here (site path) instead of read from H_res."""
    c: int
    split: int
    out_dtype: str
    """dtype of H_out: promote(y, H_res) (D12)."""
    r_dtype: str
    """dtype of H_res (or of H in the fused path): the dtype of its cotangent."""


def fits(spec: WriteSpec, tokens: int, w: int, itemsizes: list[int]) -> bool:
    """Whether the smallest blocks of the forward and backward kernels fit VMEM; ``itemsizes`` of
    (y, H_res or H, beta[, alpha])."""
    multiple = blocks.sublanes(*itemsizes, int(jnp.dtype(spec.out_dtype).itemsize))
    return all(blocks.fits(tokens, _per_token(spec, w, itemsizes, b), 0, multiple) for b in (False, True))


def _tiles(spec: WriteSpec, tokens: int, w: int, itemsizes: list[int], backward: bool) -> tuple[int, int]:
    per = _per_token(spec, w, itemsizes, backward)
    multiple = blocks.sublanes(*itemsizes, int(jnp.dtype(spec.out_dtype).itemsize))
    return blocks.token_block(tokens, per, 0, multiple), blocks.lane_block(w)


def _per_token(spec: WriteSpec, w: int, itemsizes: list[int], backward: bool) -> int:
    tw = blocks.lane_block(w)
    k, c = spec.k, spec.c
    y_b, r_b, b_b = itemsizes[:3]
    out_b = int(jnp.dtype(spec.out_dtype).itemsize)
    block = [(1, k, b_b), (spec.ry, tw, y_b)]
    fused = [(1, k * c, itemsizes[3])] if spec.fused else []
    if backward:
        block += [(k, tw, out_b), (spec.ry, tw, y_b), (1, k, 4)]
        if spec.fused:
            block += [(k, tw, r_b), (k, tw, r_b), (1, k * c, 4)] + fused
        return blocks.per_token_bytes(block, 2 * k + 2, tw)
    block += [(k, tw, r_b), (k, tw, out_b)] + fused
    return blocks.per_token_bytes(block, k + 2, tw)


def _y_row(y_ref: Any, j: int, tn: int, ry: int) -> Any:
    return rows(y_ref, j if ry > 1 else 0, tn, ry)


def _fwd_kernel(b_ref: Any, y_ref: Any, r_ref: Any, *refs: Any, spec: WriteSpec) -> None:
    k, c, split = spec.k, spec.c, spec.split
    tn = b_ref.shape[0]
    o_ref = refs[-1]
    beta = b_ref[...].astype(F32)
    y_hc = _y_row(y_ref, 0, tn, 1) if spec.ry == 1 else None
    if spec.fused:
        a = refs[0][...].astype(F32)
        xs = [rows(r_ref, i, tn, k) for i in range(k)]
    for j in range(k):
        y_j = y_hc if y_hc is not None else _y_row(y_ref, j, tn, spec.ry)
        if spec.fused:
            res = column(a, split + j) * xs[0]
            for i in range(1, k):
                res = res + column(a, i * c + split + j) * xs[i]
        else:
            res = rows(r_ref, j, tn, k)
        store_rows(o_ref, j, tn, k, column(beta, j) * y_j + res)


def _fwd_call(spec: WriteSpec) -> Any:
    return _fwd_build(spec, (*blocks.current(), mode.compiled()))


@functools.cache
def _fwd_build(spec: WriteSpec, key: tuple[int, int, bool]) -> Any:
    def run(*args: Array) -> tuple[Array]:
        Bt, y, R = args[:3]
        tokens, w = Bt.shape[0], R.shape[1]
        sizes = [y.dtype.itemsize, R.dtype.itemsize, Bt.dtype.itemsize] + [a.dtype.itemsize for a in args[3:]]
        tn, tw = _tiles(spec, tokens, w, sizes, False)
        k = spec.k
        block = lambda t, j: (t, j)  # noqa: E731
        coeff = lambda t, j: (t, 0)  # noqa: E731
        in_specs = [
            pl.BlockSpec((tn, k), coeff),
            pl.BlockSpec((tn * spec.ry, tw), block),
            pl.BlockSpec((tn * k, tw), block),
        ]
        if spec.fused:
            in_specs.append(pl.BlockSpec((tn, k * spec.c), coeff))
        out = call(
            functools.partial(_fwd_kernel, spec=spec),
            name="hcref_depth_fwd" + ("_fused" if spec.fused else ""),
            out_shape=shape(R.shape, jnp.dtype(spec.out_dtype)),
            grid=(pl.cdiv(tokens, tn), w // tw),
            in_specs=in_specs,
            out_specs=pl.BlockSpec((tn * k, tw), block),
            compiler_params=compiler_params("parallel", "parallel"),
        )(*args)
        return (out,)

    return fold_tokens(jax.jit(run), (True,) * (4 if spec.fused else 3), (True,))


def _bwd_kernel(b_ref: Any, y_ref: Any, g_ref: Any, *refs: Any, spec: WriteSpec) -> None:
    k, c, split = spec.k, spec.c, spec.split
    tn = b_ref.shape[0]
    if spec.fused:
        x_ref, a_ref, gy_ref, gb_ref, gx_ref, ga_ref = refs
    else:
        gy_ref, gb_ref = refs

    @pl.when(pl.program_id(1) == 0)
    def _init() -> None:
        gb_ref[...] = jnp.zeros(gb_ref.shape, F32)
        if spec.fused:
            ga_ref[...] = jnp.zeros(ga_ref.shape, F32)

    beta = b_ref[...].astype(F32)
    gs = [rows(g_ref, j, tn, k) for j in range(k)]
    y_hc = _y_row(y_ref, 0, tn, 1) if spec.ry == 1 else None
    g_y = None
    for j in range(k):
        y_j = y_hc if y_hc is not None else _y_row(y_ref, j, tn, spec.ry)
        gb_ref[:, j : j + 1] += jnp.sum(gs[j] * y_j, axis=-1, keepdims=True)
        term = column(beta, j) * gs[j]
        if spec.ry == 1:
            g_y = term if g_y is None else g_y + term
        else:
            store_rows(gy_ref, j, tn, k, term)
    if g_y is not None:
        store_rows(gy_ref, 0, tn, 1, g_y)
    if spec.fused:
        a = a_ref[...].astype(F32)
        for i in range(k):
            x_i = rows(x_ref, i, tn, k)
            g_x = None
            for j in range(k):
                lane = i * c + split + j
                term = column(a, lane) * gs[j]
                g_x = term if g_x is None else g_x + term
                ga_ref[:, lane : lane + 1] += jnp.sum(x_i * gs[j], axis=-1, keepdims=True)
            store_rows(gx_ref, i, tn, k, g_x)


def _bwd_call(spec: WriteSpec) -> Any:
    return _bwd_build(spec, (*blocks.current(), mode.compiled()))


@functools.cache
def _bwd_build(spec: WriteSpec, key: tuple[int, int, bool]) -> Any:
    def run(*args: Array) -> tuple[Array, ...]:
        Bt, y, G = args[:3]
        tokens, w = Bt.shape[0], G.shape[1]
        state = args[3] if spec.fused else G
        sizes = [y.dtype.itemsize, state.dtype.itemsize, Bt.dtype.itemsize] + [a.dtype.itemsize for a in args[4:]]
        tn, tw = _tiles(spec, tokens, w, sizes, True)
        k = spec.k
        block = lambda t, j: (t, j)  # noqa: E731
        coeff = lambda t, j: (t, 0)  # noqa: E731
        in_specs = [
            pl.BlockSpec((tn, k), coeff),
            pl.BlockSpec((tn * spec.ry, tw), block),
            pl.BlockSpec((tn * k, tw), block),
        ]
        out_shape = [shape(y.shape, y.dtype), shape((tokens, k), F32)]
        out_specs = [pl.BlockSpec((tn * spec.ry, tw), block), pl.BlockSpec((tn, k), coeff)]
        if spec.fused:
            X = args[3]
            in_specs += [pl.BlockSpec((tn * k, tw), block), pl.BlockSpec((tn, k * spec.c), coeff)]
            out_shape += [shape(X.shape, X.dtype), shape((tokens, k * spec.c), F32)]
            out_specs += [pl.BlockSpec((tn * k, tw), block), pl.BlockSpec((tn, k * spec.c), coeff)]
        return tuple(
            call(
                functools.partial(_bwd_kernel, spec=spec),
                name="hcref_depth_bwd" + ("_fused" if spec.fused else ""),
                out_shape=tuple(out_shape),
                grid=(pl.cdiv(tokens, tn), w // tw),
                in_specs=in_specs,
                out_specs=tuple(out_specs),
                compiler_params=compiler_params("parallel", "arbitrary"),
            )(*args)
        )

    n = 5 if spec.fused else 3
    return fold_tokens(jax.jit(run), (True,) * n, (True,) * (4 if spec.fused else 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def write_rows(spec: WriteSpec, y: Array, R: Array, Bt: Array) -> Array:
    """H_out rows (N*k, w) = beta y + H_res for y rows (N*ry, w), H_res rows R (N*k, w), beta Bt (N, k)."""
    return _fwd_call(spec)(Bt, y, R)[0]  # type: ignore[no-any-return]


def _write_fwd(spec: WriteSpec, y: Array, R: Array, Bt: Array) -> tuple[Array, Any]:
    return write_rows(spec, y, R, Bt), (y, Bt)


def _write_bwd(spec: WriteSpec, res: Any, G: Array) -> tuple[Array, Array, Array]:
    y, Bt = res
    g_y, g_B = _bwd_call(spec)(Bt, y, G)
    return g_y, G.astype(spec.r_dtype), g_B.astype(Bt.dtype)


write_rows.defvjp(_write_fwd, _write_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def write_fused_rows(spec: WriteSpec, y: Array, X: Array, A: Array, Bt: Array) -> Array:
    """H_out rows = beta y + alpha[:, :, split:]^T H for H rows X (N*k, w) and alpha A (N, k*c)."""
    return _fwd_call(spec)(Bt, y, X, A)[0]  # type: ignore[no-any-return]


def _fused_fwd(spec: WriteSpec, y: Array, X: Array, A: Array, Bt: Array) -> tuple[Array, Any]:
    return write_fused_rows(spec, y, X, A, Bt), (y, X, A, Bt)


def _fused_bwd(spec: WriteSpec, res: Any, G: Array) -> tuple[Array, Array, Array, Array]:
    y, X, A, Bt = res
    g_y, g_B, g_X, g_A = _bwd_call(spec)(Bt, y, G, X, A)
    return g_y, g_X, g_A.astype(A.dtype), g_B.astype(Bt.dtype)


write_fused_rows.defvjp(_fused_fwd, _fused_bwd)
