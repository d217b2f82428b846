"""The conformance suite's tolerances: one table per dtype, forward and gradient kept apart.

A backend result ``out`` passes against the float64 reference ``ref`` (run on the inputs
already rounded to the test dtype) when

    error = max|out - ref| / (atol + rtol * scale)  <=  1

for every output array, where ``scale`` is ``max|ref|`` of that output (forward) or the
largest ``max|ref|`` over all cotangents of the VJP (gradients, one vector). The norm-wise
scale makes the metric robust to the scale of the data and to cancellation inside one
element, which an element-wise ``allclose`` would punish in low precision.

Calibration (``python -m hcref_conformance.calibrate``): every op (forward and VJP), site,
network and Pre-Norm check ran on 200 random cases drawn like the suite's (same shape caps,
options, scales; seed 0) plus the suite's special cases, per dtype, on hcref_numpy (float64,
float32, float16), hcref_torch 2.13 CPU and hcref_mlx (CPU; all four dtypes), and on
hcref_jax (8 random cases plus the special cases: its ops are jitted and compile per shape).
The worst ``max|out - ref| / scale`` (``scale``: ``max|ref|`` of the output; for a VJP the
largest over all its cotangents) over all backends, 2026-11-25 (``MEASURED``):

    dtype      op forward   op gradient   composite forward   composite gradient
    float64    1.9e-15      4.5e-14       5.2e-15             2.1e-14
    float32    6.7e-7       1.5e-5        2.6e-6              1.4e-5
    bfloat16   3.8e-3       4.3e-3        5.4e-2              1.4e-1
    float16    1.4e-3       1.8e-3        1.7e-2              1.4e-2

(the worst cases came from torch, mlx and the NumPy reference computing in float16 itself;
jax's were below them). ``rtol`` is 5-10x the worst op value, rounded to a readable number:
float64 2e-14 / 4e-13, float32 5e-6 / 1e-4, bfloat16 3e-2 / 3e-2 (its output rounding alone
is 2^-8 = 3.9e-3 of ``max|ref|``), float16 1e-2 / 1e-2. Sites and networks multiply both by
``COMPOSITE`` (4-6x their worst values; bfloat16 gradients 2x, because a parameter gradient
summed with cancellation after several rounded ops is the least accurate quantity). float64
and float32 use 10: Hypothesis found float64 networks without norm, tanh or gate scale at
activations of 100 with a relative error of 3.7e-14 (hcref_torch), 7x the uniform draws'
worst. ``atol``
only matters when the reference is exactly zero (e.g. ``g_H`` of a norm over one value).

Two guards keep the measurement about the backend: float16 cases whose reference exceeds
2^10 are rejected (products overflow float16's range), and a site or network case is
rejected when an ideal backend that only rounds each op's output to the test dtype
(``hcref_conformance.emulate``) already reaches half the tolerance (an ill-conditioned
case, e.g. no norm, no tanh and activations of 100). VJPs are compared as one vector
because a cotangent that is a small sum with cancellation (``g_H`` of a norm over large
inputs) is only as accurate as the whole gradient.

Contraction length: the suite's shapes are small and capped (rows k <= 4, width w <= 16), so
the errors were measured at the cap and no further scaling is applied; :func:`tolerance`
takes the contraction length and grows ``rtol`` like its square root beyond the measured cap,
so larger custom shapes (``contraction`` > 16) keep a fair bound.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple


class Tolerance(NamedTuple):
    """Relative (to ``max|ref|``) and absolute parts of a bound."""

    rtol: float
    atol: float


FORWARD: Final[dict[str, Tolerance]] = {
    "float64": Tolerance(2e-14, 1e-15),
    "float32": Tolerance(5e-6, 1e-7),
    "bfloat16": Tolerance(3e-2, 1e-4),
    "float16": Tolerance(1e-2, 1e-5),
}
"""Forward outputs of every op (about 8x the worst measured error, see the module doc)."""

GRADIENT: Final[dict[str, Tolerance]] = {
    "float64": Tolerance(4e-13, 1e-14),
    "float32": Tolerance(1e-4, 1e-6),
    "bfloat16": Tolerance(3e-2, 1e-3),
    "float16": Tolerance(1e-2, 1e-4),
}
"""Cotangents of every differentiable input of an op, judged as one vector (VJP against the
hand-derived reference VJP; about 7x the worst measured error)."""

COMPOSITE: Final[dict[str, float]] = {
    "float64": 10.0,
    "float32": 10.0,
    "bfloat16": 10.0,
    "float16": 8.0,
}
"""Factor on both tables for whole sites and networks, whose intermediate values are rounded
to the test dtype between ops while the reference keeps float64 throughout."""

MEASURED: Final[dict[str, dict[str, float]]] = {
    "forward": {"float64": 1.9e-15, "float32": 6.7e-7, "bfloat16": 3.8e-3, "float16": 1.4e-3},
    "gradient": {"float64": 4.5e-14, "float32": 1.5e-5, "bfloat16": 4.3e-3, "float16": 1.8e-3},
    "composite forward": {"float64": 5.2e-15, "float32": 2.6e-6, "bfloat16": 5.4e-2, "float16": 1.7e-2},
    "composite gradient": {"float64": 2.1e-14, "float32": 1.4e-5, "bfloat16": 1.4e-1, "float16": 1.4e-2},
}
"""Worst measured ``max|out - ref| / scale`` when the table was calibrated (module doc)."""

CALIBRATED_CONTRACTION: Final[int] = 16
"""Largest contraction length (width ``w`` or rows ``k``) the calibration drew."""


def tolerance(dtype: str, kind: str = "forward", *, contraction: int = 1, composite: bool = False) -> Tolerance:
    """The bound for ``dtype`` (``"float64"``, ``"float32"``, ``"bfloat16"``, ``"float16"``).

    ``kind`` is ``"forward"`` or ``"gradient"``; ``contraction`` is the longest sum inside the
    checked computation (e.g. the width ``w`` of a coefficient projection). Up to
    :data:`CALIBRATED_CONTRACTION` the table applies as measured; beyond it ``rtol`` grows
    like ``sqrt(contraction / CALIBRATED_CONTRACTION)`` (random-walk accumulation of rounding).
    ``composite`` (a whole site or network) multiplies both parts by :data:`COMPOSITE`.
    """
    table = {"forward": FORWARD, "gradient": GRADIENT}.get(kind)
    if table is None:
        raise ValueError(f"kind: expected 'forward' or 'gradient', got {kind!r}")
    if dtype not in table:
        raise ValueError(f"dtype: expected one of {sorted(table)}, got {dtype!r}")
    base = table[dtype]
    factor = math.sqrt(max(1.0, contraction / CALIBRATED_CONTRACTION))
    if composite:
        factor *= COMPOSITE[dtype]
    return Tolerance(base.rtol * factor, base.atol * factor)
