"""Shared glue of the adapters in this folder: a port's arrays and gradients are those of a
first-party backend (``hcref_torch`` or ``hcref_mlx``), so an adapter holds only what maps the
library onto the contract. Not an adapter itself (no ``port``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hcref import validation


class FrameworkArrays:
    """``capabilities``, ``asarray``, ``to_numpy``, ``dtype_name`` and ``vjp`` of ``backend``,
    with the dtypes in ``dtypes`` only (an adapter over a library that computes in float32 leaves
    float64 out, rather than report float32 rounding as a departure)."""

    def __init__(self, backend: Any, dtypes: Sequence[str]) -> None:
        self._backend, self._dtypes = backend, tuple(dtypes)

    def capabilities(self) -> list[tuple[str, str]]:
        return [(device, dtype) for device, dtype in self._backend.capabilities() if dtype in self._dtypes]

    def asarray(self, x: np.ndarray, dtype: str, device: str = "cpu") -> Any:
        return self._backend.asarray(x, dtype, device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(self._backend.to_numpy(x))

    def dtype_name(self, x: Any) -> str:
        return str(self._backend.dtype_name(x))

    def vjp(self, fn: Callable[..., Any], primals: Sequence[Any], cotangents: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(self._backend.vjp(fn, primals, cotangents))


def meta(x: Any) -> validation.ArrayMeta:
    """The validation metadata of a torch tensor or an mlx array (the contract's error messages)."""
    dtype = str(x.dtype).removeprefix("torch.").removeprefix("mlx.core.")
    return validation.ArrayMeta(tuple(x.shape), dtype, "float" in dtype)


def check_sinkhorn(Z: Any, iters: int, eps: float) -> None:
    """The contract's errors for ``sinkhorn`` (the libraries validate nothing)."""
    validation.check_sinkhorn(meta(Z), iters, eps)
