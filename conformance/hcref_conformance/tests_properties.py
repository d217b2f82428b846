"""Properties of the papers that hold for any correct port.

Pre-Norm equivalence at init (HC paper Eq. 14 and section 2.3, FC paper Eq. 15): a network of
sites at their initial parameters (the port's own initialiser when it declares one)
reproduces the Pre-Norm residual stack ``h <- h + T(h)``; HC up to the factor n of ``reduce``
(every stream carries the residual), FC exactly. Checked against the float64 residual stack
for every layer index, norm and switch.

The named structural properties of :mod:`hcref_conformance.properties`, each on the smallest
input that shows it, with a verdict per property in the report.
"""

from __future__ import annotations

from typing import Any

import pytest

from .cases import Case
from .properties import PROPERTIES, Property, run_property
from .runner import Context, explore, run_one
from .subject import NotApplicable
from .suite import draw_for, fixed_cases, need, record_property

PRENORM_OPS = ("hc_prenorm", "fc_prenorm", "mhc_prenorm")


@pytest.mark.parametrize("op", PRENORM_OPS)
def test_prenorm(suite: Context, dtype: str, op: str, request: Any) -> None:
    need(suite, op, dtype)
    explore(suite, "prenorm", op, dtype, draw_for(suite, op, dtype), request.node.nodeid)


@fixed_cases(PRENORM_OPS)
def test_prenorm_special(suite: Context, dtype: str, op: str, case: Case, request: Any) -> None:
    need(suite, op, dtype)
    run_one(suite, "prenorm", case, dtype, request.node.nodeid)


@pytest.mark.parametrize("prop", [pytest.param(p, id=p.id) for p in PROPERTIES])
def test_property(suite: Context, prop: Property, request: Any) -> None:
    try:
        verdict = run_property(suite.subject, prop, suite.dtypes, suite.mixed)
    except NotApplicable as exc:
        record_property(suite, prop, None, str(exc))
        pytest.skip(f"n/a: {exc}")
    record_property(suite, prop, verdict)
    if verdict.verdict.startswith("departs (declared"):
        pytest.skip(f"n/a: a declared variant departs from {prop.source}")
    if verdict.failed:
        message = (f"property departs: {prop.name} ({prop.source})\n  on backend {suite.subject.label}, "
                   f"dtype {verdict.dtype}\n  input: {verdict.input}\n  {verdict.verdict}: {verdict.detail}")
        reason = "exception" if verdict.verdict == "error" else "dtype" if "dtype" in verdict.detail else "value"
        suite.recorder.failure({
            "nodeid": request.node.nodeid, "op": prop.id, "dtype": verdict.dtype, "check": "property",
            "reason": reason, "label": prop.name, "magnitude": "-", "count": 1, "worst_ratio": verdict.ratio,
            "worst_case": verdict.input, "case": verdict.input, "message": message})
        pytest.fail(message, pytrace=False)
