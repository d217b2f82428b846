"""VJP agreement: the port's ``vjp`` of every op against the hand-derived reference ``<op>_vjp``
for the same random cotangents (analytic against analytic, no finite differences on the port), on
drawn cases, the fixed special cases and the mixed-precision cases; with a leading axis of size
0 every parameter gradient must be exactly 0."""

from __future__ import annotations

from typing import Any

import pytest

from .cases import MIXED, Case
from .runner import Context, explore, run_one
from .strategies import OP_NAMES
from .suite import draw_for, fixed_cases, mixed, need


@pytest.mark.parametrize("op", OP_NAMES)
def test_vjp(suite: Context, dtype: str, op: str, request: Any) -> None:
    need(suite, op, dtype)
    explore(suite, "vjp", op, dtype, draw_for(suite, op, dtype), request.node.nodeid)


@fixed_cases(OP_NAMES)
def test_vjp_special(suite: Context, dtype: str, op: str, case: Case, request: Any) -> None:
    need(suite, op, dtype)
    run_one(suite, "vjp", case, dtype, request.node.nodeid)


@mixed(OP_NAMES)
def test_vjp_mixed(suite: Context, op: str, case: Case, request: Any) -> None:
    need(suite, op, MIXED)
    run_one(suite, "vjp", case, MIXED, request.node.nodeid)
