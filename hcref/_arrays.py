"""NumPy helpers of the reference: array metadata for validation, summing over tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .validation import ArrayMeta

Array = np.ndarray


def meta(name: str, x: Any) -> ArrayMeta:
    """The :class:`ArrayMeta` of a NumPy array (a NumPy scalar counts as a 0-d array);
    anything else is a ``TypeError`` naming ``name``."""
    if not isinstance(x, (np.ndarray, np.generic)):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    return ArrayMeta(tuple(x.shape), str(x.dtype), bool(np.issubdtype(x.dtype, np.floating)))


def param_metas(params: Any) -> dict[str, ArrayMeta]:
    """Metadata of every entry of a parameter mapping (non-mappings are left to validation)."""
    if not isinstance(params, Mapping):
        return {}
    return {key: meta(f"params[{key!r}]", value) for key, value in params.items()}


def sum_tokens(g: Array, rank: int) -> Array:
    """Sum ``g`` over all leading (token) axes, keeping the trailing ``rank`` axes.

    Parameters are shared by every token, so their gradient is the sum over tokens.
    """
    lead = g.ndim - rank
    return g.sum(axis=tuple(range(lead))) if lead else g
