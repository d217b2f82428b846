"""Properties of the papers that hold for any correct backend.

Pre-Norm equivalence at init (HC paper Eq. 14 and section 2.3, FC paper Eq. 15): a network
of sites at their initial parameters reproduces the Pre-Norm residual stack
``h <- h + T(h)``; HC up to the factor n of ``reduce`` (every stream carries the residual),
FC exactly. Checked against the float64 residual stack for every layer index, norm and
switch.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .cases import Case
from .checks import run_in_test
from .strategies import draw_case

PRENORM_OPS = ("hc_prenorm", "fc_prenorm")


@pytest.mark.parametrize("op", PRENORM_OPS)
@given(data=st.data())
def test_prenorm(backend: Any, device: str, dtype: str, op: str, recorder: Any, data: Any) -> None:
    case = draw_case(data, op, dtype)
    ratio = run_in_test("prenorm", backend, case, dtype=dtype, device=device, hypothesis=True)
    recorder.record(op, dtype, "prenorm", ratio)


@pytest.mark.parametrize(
    ("op", "case"),
    [
        pytest.param(op, Case(op=op, lead=lead, k=k, w=4, seed=k, init=True, layer_index=i), id=f"{op}-k{k}-index{i}")
        for op in PRENORM_OPS
        for lead, k, i in (((2,), 1, 0), ((2, 3), 3, 0), ((2,), 3, 1), ((), 4, 7))
    ],
)
def test_prenorm_special(backend: Any, device: str, dtype: str, op: str, case: Case, recorder: Any) -> None:
    ratio = run_in_test("prenorm", backend, case, dtype=dtype, device=device, hypothesis=False)
    recorder.record(op, dtype, "prenorm", ratio)
