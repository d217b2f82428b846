"""Bad input raises like the reference: the same ``ValueError``/``TypeError`` class, with a
message that names the argument, and never a silent broadcast (size-1 axes included). Any other
exception class is reported with the usual header and repro (see
:mod:`hcref_conformance.errors`)."""

from __future__ import annotations

from typing import Any

import pytest

from .compare import ConformanceError
from .errors import BAD_INPUTS, check_bad_input
from .runner import Context
from .subject import NotApplicable
from .suite import record_error_failure


@pytest.mark.parametrize(("op", "case_id"), [pytest.param(c[1], c[0], id=f"{c[1]}-{c[0]}") for c in BAD_INPUTS])
def test_errors(suite: Context, dtype: str, op: str, case_id: str, request: Any) -> None:
    failure: ConformanceError | None = None
    try:
        check_bad_input(suite.subject.backend, op, case_id, dtype=dtype, device=suite.subject.device)
    except NotApplicable as exc:
        pytest.skip(f"n/a: {exc}")
    except ConformanceError as error:
        failure = error
    if failure is not None:
        record_error_failure(suite, op, dtype, case_id, failure, request.node.nodeid)
        pytest.fail(str(failure), pytrace=False)
