"""Small helpers the test modules share: what a test needs declared, its draws, and recording."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytest

from hcref.optable import ALL_OPS

from .cases import MIXED, Case
from .compare import ConformanceError
from .properties import Property, Verdict
from .runner import Context
from .strategies import draw_case
from .subject import NotApplicable

F = TypeVar("F", bound=Callable[..., Any])


def fixed_cases(ops: Sequence[str]) -> Callable[[F], F]:
    """Mark a test to be parametrized by the plugin over ``(dtype, op, case)``: the fixed cases of
    each op in each dtype of the run (they depend on the dtypes selected and the port's support)."""
    def mark(function: F) -> F:
        function.hcref_fixed = tuple(ops)  # type: ignore[attr-defined]
        return function
    return mark


def mixed(ops: Sequence[str]) -> Callable[[F], F]:
    """Mark a test to be parametrized by the plugin over ``(op, case)``: the mixed-precision cases."""
    def mark(function: F) -> F:
        function.hcref_mixed = tuple(ops)  # type: ignore[attr-defined]
        return function
    return mark


def need(suite: Context, op: str, dtype: str) -> None:
    """Skip as n/a when the port does not declare ``op`` (or its family's site), or the mixed cases."""
    subject = suite.subject
    if dtype == MIXED:
        reason = subject.mixed_reason()
        if reason:
            pytest.skip(f"n/a: {reason}")
    if op in ALL_OPS:
        if not subject.support.has_op(op):
            pytest.skip(f"n/a: op {op} not declared")
        return
    family = op.split("_", 1)[0]
    if family not in subject.support.families:
        pytest.skip(f"n/a: family {family} not declared")
    try:
        subject.entry(family)
    except NotApplicable as exc:
        pytest.skip(f"n/a: {exc}")


def draw_for(suite: Context, op: str, dtype: str) -> Callable[[Any], Case]:
    """The draw of ``op`` for ``dtype`` within the run's profile and the port's support."""
    return lambda data: draw_case(data, op, dtype, suite.profile, suite.subject.support, suite.dtypes)


def record_property(suite: Context, prop: Property, verdict: Verdict | None, reason: str = "") -> None:
    """Keep a property's verdict for the report (``None``: n/a, with ``reason``)."""
    suite.recorder.properties.append({
        "id": prop.id, "family": prop.family, "name": prop.name, "source": prop.source,
        "verdict": verdict.verdict if verdict else "n/a", "input": verdict.input if verdict else "",
        "detail": verdict.detail if verdict else reason, "dtype": verdict.dtype if verdict else "",
    })


def record_error_failure(suite: Context, op: str, dtype: str, case_id: str, error: ConformanceError,
                         nodeid: str) -> None:
    """Keep one error-contract failure for the report."""
    suite.recorder.failure({
        "nodeid": nodeid, "op": op, "dtype": dtype, "check": "errors", "reason": error.reason,
        "label": f"bad input {case_id}", "magnitude": "-", "count": 1, "worst_ratio": float("inf"),
        "worst_case": case_id, "case": case_id, "message": str(error),
    })
