"""What every kernel module shares: float32 accumulation, compiler parameters, strided stream slices."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from . import blocks, mode

F32 = jnp.float32
ALL = slice(None)


def shape(shape: tuple[int, ...], dtype: Any) -> Any:
    """``jax.ShapeDtypeStruct`` (an output of a kernel)."""
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))  # type: ignore[no-untyped-call]


def compiler_params(*semantics: Any) -> Any:
    """Mosaic parameters: the grid axes' semantics ("parallel" axes may be split over TensorCores and
    are visited in random order by TPU interpret mode; "arbitrary" axes run in order) and the VMEM limit."""
    return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=blocks.VMEM_LIMIT)


def call(kernel: Any, *, name: str, **kwargs: Any) -> Any:
    """``pl.pallas_call`` compiled by Mosaic on a TPU, in TPU interpret mode elsewhere."""
    return pl.pallas_call(kernel, name=name, interpret=mode.interpret(), **kwargs)


def _rows_index(i: int, tn: int, stride: int) -> Any:
    return pl.ds(i, tn, stride=stride) if stride > 1 else pl.ds(i, tn)


def rows(ref: Any, i: int, tn: int, stride: int, lanes: slice = ALL) -> Any:
    """Row ``i`` of every token in a block of ``tn`` tokens with ``stride`` rows each (a strided
    sublane load), in float32: stream ``i`` as a ``(tn, lanes)`` tile."""
    return ref[_rows_index(i, tn, stride), lanes].astype(F32)


def store_rows(ref: Any, i: int, tn: int, stride: int, value: Any, lanes: slice = ALL) -> None:
    """Write ``value`` (tn, lanes) to row ``i`` of every token (a strided sublane store), rounded once."""
    ref[_rows_index(i, tn, stride), lanes] = value.astype(ref.dtype)


def column(value: Any, j: int) -> Any:
    """Column ``j`` of a 2-D value as ``(rows, 1)`` (broadcasts along lanes)."""
    return value[:, j : j + 1]


def dtype_name(dtype: Any) -> str:
    return str(jnp.dtype(dtype).name)
