"""Which dtype an mHC op computes in and which it returns (decision D12, mixed precision).

The reference computes in the dtype it receives, except that half-precision inputs
(float16; bfloat16 in the backends) are always accumulated in float32: an op computes in
``compute_dtype`` = the promoted dtype of its inputs, raised to at least float32, and rounds
its results once to the dtype the contract names (coefficients: the promoted dtype; the
apply steps: the state's dtype).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def promoted(*arrays: Any) -> np.dtype:
    """The promoted dtype of ``arrays`` (NumPy's type promotion of their dtypes)."""
    return np.result_type(*(np.asarray(a).dtype for a in arrays))


def compute_dtype(dtype: Any) -> np.dtype:
    """``dtype`` raised to at least float32 (float16 -> float32; float32, float64 unchanged)."""
    return np.promote_types(dtype, np.float32)
