"""VJP agreement: the backend's ``vjp`` of every op against the hand-derived reference
``<op>_vjp`` for the same random cotangents (analytic against analytic, no finite
differences on the backend)."""

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
def test_vjp(backend: Any, device: str, dtype: str, op: str, recorder: Any, data: Any) -> None:
    case = draw_case(data, op, dtype)
    ratio = run_in_test("vjp", backend, case, dtype=dtype, device=device, hypothesis=True)
    recorder.record(op, dtype, "vjp", ratio)


@pytest.mark.parametrize(("op", "case"), special_params(OP_NAMES))
def test_vjp_special(backend: Any, device: str, dtype: str, op: str, case: Case, recorder: Any) -> None:
    ratio = run_in_test("vjp", backend, case, dtype=dtype, device=device, hypothesis=False)
    recorder.record(op, dtype, "vjp", ratio)
