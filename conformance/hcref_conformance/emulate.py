"""A float64 stand-in for an ideal backend of a given dtype: the reference ops, each output
with a few roundoffs of error and rounded to the test dtype, as a good backend that stores
each op's result in that dtype does.

The suite runs a site or network on it to tell a case the dtype cannot resolve from a
backend bug: when even this ideal backend uses most of the tolerance, the case is rejected
as ill-conditioned.
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


UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "bfloat16": 2.0**-9, "float16": 2.0**-11}
"""Half the distance from 1 to the next number of each dtype."""

OP_ERROR_ULPS = 4.0
"""Error of one op of the ideal backend, in units of roundoff of ``max|out|`` (a good backend's
ops measured within a few; see hcref.tolerances)."""


class RoundedSublayer:
    """A float64 reference sublayer as an ideal ``dtype`` port runs it: outputs with
    :data:`OP_ERROR_ULPS` roundoffs of error, rounded to ``dtype`` (its VJP too)."""

    def __init__(self, reference: Any, backend: RoundingBackend) -> None:
        self.reference, self.backend = reference, backend

    def __call__(self, h: np.ndarray) -> np.ndarray:
        return self.backend._perturb(np.asarray(self.reference(h)))

    def vjp(self, h: np.ndarray, g: np.ndarray) -> np.ndarray:
        return self.backend._perturb(np.asarray(self.reference.vjp(h, g)))


class RoundingBackend(NumpyBackend):
    """The NumPy reference in float64 as an ideal ``dtype`` backend: every op output gets a random
    error of :data:`OP_ERROR_ULPS` roundoffs of its largest value and is rounded to ``dtype``
    (VJPs stay exact, on those rounded intermediates)."""

    def __init__(self, dtype: str, seed: int = 0) -> None:
        super().__init__()
        self.dtype = dtype
        self.rng = np.random.default_rng([seed, 3])

    def _perturb(self, x: np.ndarray) -> np.ndarray:
        size = OP_ERROR_ULPS * UNIT_ROUNDOFF[self.dtype] * (float(np.max(np.abs(x))) if x.size else 0.0)
        return round_to(self.dtype, x + size * self.rng.uniform(-1, 1, x.shape))

    def _call(self, spec: OpSpec, *args: Any, **kwargs: Any) -> Any:
        out = getattr(hcref, spec.name)(*args, **kwargs)
        outs = tuple(self._perturb(np.asarray(o)) for o in (out if isinstance(out, tuple) else (out,)))
        if self._tape is not None:
            self._tape.append(_Record(spec, args, kwargs, outs))
        return outs if isinstance(out, tuple) else outs[0]
