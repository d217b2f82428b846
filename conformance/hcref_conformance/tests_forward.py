"""Forward agreement: every output of every op against the float64 reference, with the
output's shape and dtype (decision D12), on drawn cases, the fixed special cases (extreme
activation scales and size-0 leading axes among them) and the mixed-precision cases."""

from __future__ import annotations

from typing import Any

import pytest

from .cases import MIXED, Case
from .runner import Context, explore, run_one
from .strategies import OP_NAMES
from .suite import draw_for, fixed_cases, mixed, need


@pytest.mark.parametrize("op", OP_NAMES)
def test_forward(suite: Context, dtype: str, op: str, request: Any) -> None:
    need(suite, op, dtype)
    explore(suite, "forward", op, dtype, draw_for(suite, op, dtype), request.node.nodeid)


@fixed_cases(OP_NAMES)
def test_forward_special(suite: Context, dtype: str, op: str, case: Case, request: Any) -> None:
    need(suite, op, dtype)
    run_one(suite, "forward", case, dtype, request.node.nodeid)


@mixed(OP_NAMES)
def test_forward_mixed(suite: Context, op: str, case: Case, request: Any) -> None:
    need(suite, op, MIXED)
    run_one(suite, "forward", case, MIXED, request.node.nodeid)
