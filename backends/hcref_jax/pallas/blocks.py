"""Block shapes of the kernels (the TPU memory model) and the VMEM estimate behind ``supported``.

Layout. Every kernel sees the state as rows: ``H (..., k, w)`` is viewed (a free reshape) as
``X (N*k, w)``, row ``t*k + i`` holding stream (fraction) ``i`` of token ``t``; per-token
coefficients as ``alpha (N, k*c)``, ``beta (N, k)``, ``ab`` rows ``(N*k, c+1)``. A block holds
``tn`` whole tokens: ``(tn*k, tw)`` rows of the state (the k streams of a token are always in one
block), ``(tn, k*c)`` coefficients. Stream ``i`` of the block is the strided sublane slice
``X[pl.ds(i, tn, stride=k)]`` (a ``(tn, tw)`` tile, lanes along the width), so the per-token
``k x c`` mixing is ``c * k`` lane-dense multiply-adds with the coefficient broadcast along lanes.

Block sizes. ``tn`` is a multiple of 8 (a float32 vreg's sublanes), of 16 when a bfloat16 operand is blocked
by tokens (it packs 16 rows per vreg), or the whole token axis when that is smaller (a block dim
equal to the array dim is always legal);
``tw`` is the whole width, or, for a width that is a multiple of 128 and wider than
:data:`MAX_LANES`, the widest multiple of 128 that divides it (the mixing and write kernels tile the
width; the coefficient kernels need whole rows for the norm statistics). ``tn`` is the largest
such count whose blocks (double-buffered by the Pallas pipeline) and float32 temporaries fit
:data:`VMEM_BUDGET`; the kernels ask Mosaic for :data:`VMEM_LIMIT`. A shape whose smallest block does
not fit is not supported (the XLA path takes it). These budgets are estimates: interpret mode does
not model VMEM capacity, so they are unchecked on hardware (no TPU ran them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

SUBLANES = 16
LANES = 128
MAX_LANES = 2048
MAX_TOKENS = 1024
VMEM_BUDGET = 16 * 1024 * 1024
VMEM_LIMIT = 32 * 1024 * 1024
MAX_ROWS = 16
"""Largest k (streams or fractions) the kernels take: their loops over k and c are unrolled."""


def _padded_lanes(lanes: int) -> int:
    return -(-lanes // LANES) * LANES


def lane_block(w: int) -> int:
    """``tw``: the whole width, or the widest multiple of 128 dividing ``w`` up to :data:`MAX_LANES`."""
    if w % LANES or w <= MAX_LANES:
        return w
    return next(tw for tw in range(MAX_LANES, 0, -LANES) if w % tw == 0)


def per_token_bytes(blocks: Sequence[tuple[int, int, int]], temps: int, tw: int) -> int:
    """VMEM bytes one token costs in a grid step: ``blocks`` are (rows per token, lanes, itemsize)
    of the token-blocked operands (lanes ``None``-like 0 means ``tw``), double-buffered and padded
    to 128 lanes; ``temps`` float32 rows of width ``tw`` held as values."""
    total = 0
    for rows, lanes, itemsize in blocks:
        total += 2 * rows * _padded_lanes(lanes or tw) * itemsize
    return total + temps * _padded_lanes(tw) * 4


def sublanes(*itemsizes: int) -> int:
    """The token multiple of a block: 8 rows (one float32 vreg) or 16 when a 2-byte operand (packed
    two rows per sublane) has a block of ``tn`` rows."""
    return SUBLANES if min(itemsizes) < 4 else SUBLANES // 2


def token_block(tokens: int, per_token: int, fixed: int = 0, multiple: int = SUBLANES) -> int:
    """``tn`` for ``tokens`` tokens costing ``per_token`` bytes each plus ``fixed`` bytes per step:
    at most :data:`MAX_TOKENS`, a multiple of ``multiple`` (:func:`sublanes`), or all the tokens."""
    fit = max(VMEM_BUDGET - fixed, 0) // max(per_token, 1)
    tn = max(multiple, min(MAX_TOKENS, fit) // multiple * multiple)
    return tokens if tokens <= tn else tn


def fits(tokens: int, per_token: int, fixed: int = 0, multiple: int = SUBLANES) -> bool:
    """Whether the smallest block (``multiple`` tokens, or all of them when fewer) fits :data:`VMEM_BUDGET`."""
    return min(tokens, multiple) * per_token + fixed <= VMEM_BUDGET


def partial_sums(blocks: int) -> int:
    """Partial sums of a reduction over ``blocks`` token blocks: 2 (one per TensorCore of a megacore
    chip, the outer "parallel" grid axis) when the count is even, else 1."""
    return 2 if blocks >= 2 and blocks % 2 == 0 else 1


def current() -> tuple[int, int]:
    """The limits in force (part of the kernels' trace-cache key with ``mode.compiled()``, so that
    :func:`limits` takes effect)."""
    return MAX_TOKENS, MAX_LANES


@contextlib.contextmanager
def limits(max_tokens: int = MAX_TOKENS, max_lanes: int = MAX_LANES) -> Iterator[None]:
    """Smaller blocks inside the block (for tests: several token and lane blocks on small inputs,
    partial last blocks); read when a kernel is traced."""
    global MAX_TOKENS, MAX_LANES
    saved = MAX_TOKENS, MAX_LANES
    MAX_TOKENS, MAX_LANES = max_tokens, max_lanes
    try:
        yield
    finally:
        MAX_TOKENS, MAX_LANES = saved
