"""A float64 stand-in for a low-precision backend: the reference ops with every output rounded
to the test dtype, as a backend that stores each op's result in that dtype must do.

The suite runs a site or network on it to tell a case the dtype cannot resolve from a
backend bug: when even this ideal backend (exact arithmetic inside each op, rounding only
between ops) uses most of the tolerance, the case is rejected as ill-conditioned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hcref_numpy import NumpyBackend, _Record

import hcref
from hcref.optable import OpSpec


def round_to(dtype: str, x: np.ndarray) -> np.ndarray:
    """``x`` rounded to ``dtype`` (to nearest, ties to even) and returned as float64."""
    if dtype == "float64":
        return np.asarray(x, dtype=np.float64)
    if dtype in ("float32", "float16"):
        return np.asarray(x).astype(dtype).astype(np.float64)
    if dtype == "bfloat16":
        bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
        rounded = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) & np.uint64(0xFFFF0000)
        return np.asarray(rounded.astype(np.uint32).view(np.float32), dtype=np.float64)
    raise ValueError(f"dtype: expected one of float64, float32, bfloat16, float16, got {dtype!r}")


class RoundingBackend(NumpyBackend):  # type: ignore[misc]
    """The NumPy reference in float64, every op output rounded to ``dtype`` (VJPs stay exact)."""

    def __init__(self, dtype: str) -> None:
        super().__init__()
        self.dtype = dtype

    def _call(self, spec: OpSpec, *args: Any, **kwargs: Any) -> Any:
        out = getattr(hcref, spec.name)(*args, **kwargs)
        outs = tuple(round_to(self.dtype, o) for o in (out if isinstance(out, tuple) else (out,)))
        if self._tape is not None:
            self._tape.append(_Record(spec, args, kwargs, outs))
        return outs if isinstance(out, tuple) else outs[0]
