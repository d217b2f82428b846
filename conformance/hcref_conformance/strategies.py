"""Every input the suite draws, in one place.

Hypothesis draws only the *structure* of a case (leading axes, rows ``k``, width ``w``,
options, a value scale) and one integer ``seed``; the values come from
``numpy.random.default_rng(seed)`` (:meth:`Case.inputs`). Draws are labelled so that a
falsifying example names each field, and a failing case is rebuilt from its ``repr``.

The special cases that must always run (initial parameters with several layer indices,
``n = 1`` / ``m = 1``, one token without leading axes, static sites, every switch off) are
the explicit list :func:`special_cases`, parametrized by the test modules.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from hcref.optable import OPS
from hcref.validation import NORMS

from .cases import Case

MAX_LEAD_AXES = 2
MAX_LEAD = 3
MAX_ROWS = 4
MAX_WIDTH = 16
"""Caps on the drawn shapes: (..., k, w) with at most 2 leading axes of at most 3 tokens,
k <= 4 streams or fractions, w <= 16 (HC: d, FC: e = d/m)."""

SCALES = (1.0, 0.01, 100.0)
"""Scales applied to the state (H or x): units, small and large activations (float16 leaves
out 100, whose squares overflow its range of 65504)."""

MIN_COMPOSITE_WIDTH = 4
"""Sites and networks draw w >= 4: a norm over one or two values is ill-conditioned (the
sign of x - mean flips under rounding), so its error says nothing about the backend."""

leads = st.lists(st.integers(1, MAX_LEAD), max_size=MAX_LEAD_AXES).map(tuple)
rows = st.integers(1, MAX_ROWS)
widths = st.integers(1, MAX_WIDTH)
seeds = st.integers(0, 2**32 - 1)
norms = st.sampled_from(NORMS)
scales = st.sampled_from(SCALES)


def has_coefficients(op: str) -> bool:
    """Whether op (or composite check) ``op`` takes a site's parameters and options."""
    return op.endswith(("_coeffs", "_site", "_network", "_prenorm"))


def is_composite(op: str) -> bool:
    """Whether ``op`` names a site, network or Pre-Norm check rather than an op."""
    return op.endswith(("_site", "_network", "_prenorm"))


def draw_case(data: Any, op: str, dtype: str = "float64") -> Case:
    """Draw one :class:`Case` of ``op`` for ``dtype`` from ``data`` (``hypothesis.strategies.data()``)."""
    fields: dict[str, Any] = {
        "lead": data.draw(leads, label="lead"),
        "k": data.draw(rows, label="k (n or m)"),
        "w": data.draw(st.integers(MIN_COMPOSITE_WIDTH, MAX_WIDTH) if is_composite(op) else widths, label="w (d or e)"),
        "seed": data.draw(seeds, label="seed"),
        "scale": data.draw(st.sampled_from(SCALES[:2]) if dtype == "float16" else scales, label="scale"),
    }
    if has_coefficients(op):
        prenorm = op.endswith("_prenorm")
        fields["dynamic"] = data.draw(st.booleans(), label="dynamic")
        fields["norm"] = data.draw(norms, label="norm")
        fields["use_tanh"] = data.draw(st.booleans(), label="use_tanh")
        fields["use_norm"] = data.draw(st.booleans(), label="use_norm")
        fields["use_scale"] = data.draw(st.booleans(), label="use_scale")
        fields["init"] = prenorm or data.draw(st.booleans(), label="init")
        if op.startswith("hc") and fields["init"]:
            fields["layer_index"] = data.draw(st.integers(0, 2 * MAX_ROWS), label="layer_index")
    return Case(op=op, **fields)


def special_cases(op: str) -> list[tuple[str, Case]]:
    """``(id, case)`` pairs of ``op`` that run on every backend, every time."""
    out = [
        ("one-token", Case(op=op, lead=(), k=3, w=5, seed=1)),
        ("k1", Case(op=op, lead=(2,), k=1, w=4, seed=2)),
    ]
    if not is_composite(op):
        out.append(("k1-w1", Case(op=op, lead=(3,), k=1, w=1, seed=3)))
    if not has_coefficients(op):
        return out
    for norm in NORMS:
        out.append((f"init-{norm}", Case(op=op, lead=(2, 3), k=3, w=4, seed=4, norm=norm, init=True)))
    if op.startswith("hc"):
        out.append(("init-layer5", Case(op=op, lead=(2,), k=3, w=4, seed=5, init=True, layer_index=5)))
        out.append(("init-n1", Case(op=op, lead=(2,), k=1, w=4, seed=6, init=True, layer_index=3)))
    else:
        out.append(("init-m1", Case(op=op, lead=(2,), k=1, w=4, seed=6, init=True)))
    out += [
        ("static", Case(op=op, lead=(2, 2), k=3, w=4, seed=7, dynamic=False)),
        ("static-init", Case(op=op, lead=(2,), k=2, w=3, seed=8, dynamic=False, init=True)),
        ("switches-off", Case(op=op, lead=(2,), k=3, w=4, seed=9, use_tanh=False, use_norm=False, use_scale=False,
                              scale=0.5)),
        ("rmsnorm", Case(op=op, lead=(4,), k=4, w=8, seed=10, norm="rmsnorm")),
    ]
    return out


def special_params(ops: tuple[str, ...] | list[str]) -> list[Any]:
    """``pytest.param(op, case, id=...)`` for every special case of every op in ``ops``."""
    import pytest

    return [pytest.param(op, case, id=f"{op}-{name}") for op in ops for name, case in special_cases(op)]


OP_NAMES = tuple(OPS)
"""The ops under test, in the op table's order."""
