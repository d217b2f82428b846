"""``jax.vmap`` of the kernel calls: the batch axis is folded into the token axis.

Tokens are independent in every kernel, so a vmapped call on token-major operands is the same
kernel on ``batch * tokens`` tokens (one launch, the blocks unchanged). This is done with
``jax.custom_batching.custom_vmap`` rather than ``pallas_call``'s own batching rule, which adds a
grid axis: on a TPU that would work too, but in TPU interpret mode (jax 0.10.2) it fails for any
kernel with ``dimension_semantics`` (the interpreter does not extend them to the vmapped grid axis:
``safe_zip() argument 1 has length 1 but argument 0 has length 2``). When an operand shared by all
tokens is batched (per-example weights), or a result is a reduction over tokens (parameter-gradient
partial sums), folding would mix the examples: then the call runs once per example (``lax.map``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp


def fold_tokens(
    fn: Callable[..., tuple[jax.Array, ...]], token_in: Sequence[bool], token_out: Sequence[bool]
) -> Callable[..., tuple[jax.Array, ...]]:
    """``fn(*arrays) -> tuple of arrays`` with a vmap rule. ``token_in[i]`` / ``token_out[j]``: whether
    argument i / result j is token-major (tokens, or rows of whole tokens, on axis 0)."""
    token_in, token_out = tuple(token_in), tuple(token_out)
    wrapped = jax.custom_batching.custom_vmap(fn)

    def rule(axis_size: int, in_batched: Sequence[bool], *args: Any) -> tuple[Any, Any]:
        foldable = all(token_out) and axis_size > 0 and not any(
            batched and not token for batched, token in zip(in_batched, token_in)
        )
        if not foldable:
            batched_args = tuple(a for a, b in zip(args, in_batched) if b)

            def one(xs: tuple[Any, ...]) -> Any:
                it = iter(xs)
                return wrapped(*(next(it) if b else a for a, b in zip(args, in_batched)))

            outs = jax.lax.map(one, batched_args)
            return outs, tuple(True for _ in outs)
        folded = []
        for a, batched, token in zip(args, in_batched, token_in):
            if token:
                if not batched:
                    a = jnp.broadcast_to(a, (axis_size, *a.shape))
                a = a.reshape(axis_size * a.shape[1], *a.shape[2:])
            folded.append(a)
        outs = wrapped(*folded)
        outs = tuple(o.reshape(axis_size, o.shape[0] // axis_size, *o.shape[1:]) for o in outs)
        return outs, tuple(True for _ in outs)

    wrapped.def_vmap(rule)
    return wrapped
