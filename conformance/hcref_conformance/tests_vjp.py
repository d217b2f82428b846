"""VJP agreement: the backend's ``vjp`` of every op against the hand-derived reference
``<op>_vjp`` for the same random cotangents (analytic against analytic, no finite
differences on the backend)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .cases import Case
from .checks import run_check
from .strategies import OP_NAMES, draw_case, special_params


@pytest.mark.parametrize("op", OP_NAMES)
@given(data=st.data())
def test_vjp(backend: Any, device: str, dtype: str, op: str, recorder: Any, data: Any) -> None:
    case = draw_case(data, op, dtype)
    recorder.record(op, dtype, "vjp", run_check("vjp", backend, case, dtype=dtype, device=device))


@pytest.mark.parametrize(("op", "case"), special_params(OP_NAMES))
def test_vjp_special(backend: Any, device: str, dtype: str, op: str, case: Case, recorder: Any) -> None:
    recorder.record(op, dtype, "vjp", run_check("vjp", backend, case, dtype=dtype, device=device))
