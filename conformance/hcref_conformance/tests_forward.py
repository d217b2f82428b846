"""Forward agreement: every output of every op against the float64 reference, with the
output's shape and dtype (a dtype is preserved: float32 in, float32 out)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .cases import Case
from .checks import run_in_test
from .strategies import OP_NAMES, draw_case, special_params


@pytest.mark.parametrize("op", OP_NAMES)
@given(data=st.data())
def test_forward(backend: Any, device: str, dtype: str, op: str, recorder: Any, data: Any) -> None:
    case = draw_case(data, op, dtype)
    ratio = run_in_test("forward", backend, case, dtype=dtype, device=device, hypothesis=True)
    recorder.record(op, dtype, "forward", ratio)


@pytest.mark.parametrize(("op", "case"), special_params(OP_NAMES))
def test_forward_special(backend: Any, device: str, dtype: str, op: str, case: Case, recorder: Any) -> None:
    ratio = run_in_test("forward", backend, case, dtype=dtype, device=device, hypothesis=False)
    recorder.record(op, dtype, "forward", ratio)
