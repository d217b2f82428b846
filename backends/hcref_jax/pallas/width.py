"""Kernel 2: the width step, ``mix = alpha^T H`` per token (HC Alg. 2, FC Alg. 2; math.md 2.3, 3.2).

Per token, with streams ``H_i`` (rows of width w) and ``alpha`` (k, c)::

    mix_col = sum_i alpha[i, col] H_i                  col < split: h0 (HC: one row; FC: m rows,
                                                       concatenated by the caller's reshape)
                                                       col >= split: H_res (k rows)

One read of H, one write of h0 and (``spec.rest``) H_res: ``c * k`` lane-dense multiply-adds per
element of a ``(tn, tw)`` tile, in float32, rounded once to H's dtype (D12). Grid: token blocks x
lane blocks, both "parallel".

Without ``rest`` (the fused site path for a static site; a dynamic site computes h0 in the
coefficient kernel) only h0 is written and H is passed through to the depth kernel, which does the
mixing of the residual itself; the backward adds the cotangent of the passed-on H. Without
``rest`` and ``pass_state`` only h0 is written (mHC's ``mhc_pre``: k = n streams, c = 1 column
``h_pre``).

Backward (math.md 5.3): ``g_H_i = sum_col alpha[i, col] g_mix_col (+ g_passed)``,
``g_alpha[i, col] = <H_i, g_mix_col>`` summed over the lane blocks along the "arbitrary" inner grid
axis into a VMEM-resident block (per token: no reduction across tokens).
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
class MixSpec:
    k: int
    c: int
    split: int
    rest: bool
    """Write H_res = alpha[:, :, split:]^T H (the contract op); off in the site path."""
    pass_state: bool = True
    """Without ``rest``: pass H on (the site path) or not (``mhc_pre``: h0 only)."""

    @property
    def passes(self) -> bool:
        return not self.rest and self.pass_state


def fits(spec: MixSpec, tokens: int, w: int, x_bytes: int, a_bytes: int) -> bool:
    """Whether the smallest blocks of the forward and backward kernels fit VMEM."""
    multiple = blocks.sublanes(x_bytes, a_bytes)
    return all(blocks.fits(tokens, _per_token(spec, w, x_bytes, a_bytes, b), 0, multiple) for b in (False, True))


def _tiles(spec: MixSpec, tokens: int, w: int, x_bytes: int, a_bytes: int, backward: bool) -> tuple[int, int]:
    per = _per_token(spec, w, x_bytes, a_bytes, backward)
    return blocks.token_block(tokens, per, 0, blocks.sublanes(x_bytes, a_bytes)), blocks.lane_block(w)


def _per_token(spec: MixSpec, w: int, x_bytes: int, a_bytes: int, backward: bool) -> int:
    tw = blocks.lane_block(w)
    k, c = spec.k, spec.c
    g_rows = spec.split + (k if spec.rest else 0)
    block = [(k, tw, x_bytes), (1, k * c, a_bytes), (g_rows, tw, x_bytes)]
    temps = k + 1
    if backward:
        block += [(k, tw, x_bytes), (1, k * c, 4)] + ([(k, tw, x_bytes)] if spec.passes else [])
        temps = g_rows + 2
    return blocks.per_token_bytes(block, temps, tw)


def _fwd_kernel(a_ref: Any, x_ref: Any, *out_refs: Any, spec: MixSpec) -> None:
    k, c, split = spec.k, spec.c, spec.split
    tn = a_ref.shape[0]
    a = a_ref[...].astype(F32)
    xs = [rows(x_ref, i, tn, k) for i in range(k)]
    for col in range(c if spec.rest else split):
        acc = column(a, col) * xs[0]
        for i in range(1, k):
            acc = acc + column(a, i * c + col) * xs[i]
        if col < split:
            store_rows(out_refs[0], col, tn, split, acc)
        else:
            store_rows(out_refs[1], col - split, tn, k, acc)


def _fwd_call(spec: MixSpec) -> Any:
    return _fwd_build(spec, (*blocks.current(), mode.compiled()))


@functools.cache
def _fwd_build(spec: MixSpec, key: tuple[int, int, bool]) -> Any:
    def run(A: Array, X: Array) -> tuple[Array, ...]:
        tokens, w = A.shape[0], X.shape[1]
        tn, tw = _tiles(spec, tokens, w, X.dtype.itemsize, A.dtype.itemsize, False)
        k, c = spec.k, spec.c
        block = lambda t, j: (t, j)  # noqa: E731
        out_shape = [shape((tokens * spec.split, w), X.dtype)]
        out_specs = [pl.BlockSpec((tn * spec.split, tw), block)]
        if spec.rest:
            out_shape.append(shape((tokens * k, w), X.dtype))
            out_specs.append(pl.BlockSpec((tn * k, tw), block))
        return tuple(
            call(
                functools.partial(_fwd_kernel, spec=spec),
                name="hcref_width_fwd",
                out_shape=tuple(out_shape),
                grid=(pl.cdiv(tokens, tn), w // tw),
                in_specs=[pl.BlockSpec((tn, k * c), lambda t, j: (t, 0)), pl.BlockSpec((tn * k, tw), block)],
                out_specs=tuple(out_specs),
                compiler_params=compiler_params("parallel", "parallel"),
            )(A, X)
        )

    return fold_tokens(jax.jit(run), (True, True), (True,) * (1 + int(spec.rest)))


def _bwd_kernel(a_ref: Any, x_ref: Any, *refs: Any, spec: MixSpec) -> None:
    k, c, split = spec.k, spec.c, spec.split
    gfirst_ref, refs = refs[0], refs[1:]
    if spec.rest:
        grest_ref, refs = refs[0], refs[1:]
    elif spec.passes:
        gpass_ref, refs = refs[0], refs[1:]
    gx_ref, ga_ref = refs
    tn = a_ref.shape[0]

    @pl.when(pl.program_id(1) == 0)
    def _init() -> None:
        ga_ref[...] = jnp.zeros(ga_ref.shape, F32)

    a = a_ref[...].astype(F32)
    g = [rows(gfirst_ref, col, tn, split) for col in range(split)]
    if spec.rest:
        g += [rows(grest_ref, j, tn, k) for j in range(k)]
    for i in range(k):
        x_i = rows(x_ref, i, tn, k)
        g_x = rows(gpass_ref, i, tn, k) if spec.passes else None
        for col, g_col in enumerate(g):
            term = column(a, i * c + col) * g_col
            g_x = term if g_x is None else g_x + term
            lane = slice(i * c + col, i * c + col + 1)
            ga_ref[:, lane] += jnp.sum(x_i * g_col, axis=-1, keepdims=True)
        store_rows(gx_ref, i, tn, k, g_x)


def _bwd_call(spec: MixSpec) -> Any:
    return _bwd_build(spec, (*blocks.current(), mode.compiled()))


@functools.cache
def _bwd_build(spec: MixSpec, key: tuple[int, int, bool]) -> Any:
    def run(*args: Array) -> tuple[Array, Array]:
        A, X = args[:2]
        tokens, w = A.shape[0], X.shape[1]
        tn, tw = _tiles(spec, tokens, w, X.dtype.itemsize, A.dtype.itemsize, True)
        k, c = spec.k, spec.c
        block = lambda t, j: (t, j)  # noqa: E731
        coeff = lambda t, j: (t, 0)  # noqa: E731
        in_specs = [
            pl.BlockSpec((tn, k * c), coeff),
            pl.BlockSpec((tn * k, tw), block),
            pl.BlockSpec((tn * spec.split, tw), block),
        ] + ([pl.BlockSpec((tn * k, tw), block)] if spec.rest or spec.passes else [])
        outs = call(
            functools.partial(_bwd_kernel, spec=spec),
            name="hcref_width_bwd",
            out_shape=(shape(X.shape, X.dtype), shape((tokens, k * c), F32)),
            grid=(pl.cdiv(tokens, tn), w // tw),
            in_specs=in_specs,
            out_specs=(pl.BlockSpec((tn * k, tw), block), pl.BlockSpec((tn, k * c), coeff)),
            compiler_params=compiler_params("parallel", "arbitrary"),
        )(*args)
        return outs[0], outs[1]

    return fold_tokens(jax.jit(run), (True,) * (4 if spec.rest or spec.passes else 3), (True, True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def mix_rows(spec: MixSpec, A: Array, X: Array) -> tuple[Array, ...]:
    """Rows of ``alpha^T H`` for A = alpha (N, k*c) and X = H rows (N*k, w): (h0 rows (N*split, w),
    H_res rows (N*k, w)) with ``spec.rest``, else (h0 rows, X) (X passed on to the depth kernel),
    or (h0 rows,) when neither (``spec.pass_state`` off)."""
    outs = _fwd_call(spec)(A, X)
    return (*outs, X) if spec.passes else outs


def _mix_fwd(spec: MixSpec, A: Array, X: Array) -> tuple[Any, Any]:
    return mix_rows(spec, A, X), (A, X)


def _mix_bwd(spec: MixSpec, res: Any, g: Any) -> tuple[Array, Array]:
    A, X = res
    g_X, g_A = _bwd_call(spec)(A, X, *(x.astype(X.dtype) for x in g))
    return g_A.astype(A.dtype), g_X


mix_rows.defvjp(_mix_fwd, _mix_bwd)
