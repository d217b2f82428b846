"""Whole-site and small-network agreement, forward and VJP.

A site is ``coeffs -> width -> T -> depth`` (``hcref.site``); a network is ``expand`` (HC) or
``frac_split`` (FC), two sites and ``reduce`` / ``frac_merge`` (``hcref.network.stack``).
The sublayer ``T`` is built from the backend's own ops (see :mod:`hcref_conformance.checks`).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .cases import Case
from .checks import run_in_test
from .strategies import draw_case, special_params

COMPOSITE_OPS = ("hc_site", "fc_site", "hc_network", "fc_network")


@pytest.mark.parametrize("op", COMPOSITE_OPS)
@given(data=st.data())
def test_composite(backend: Any, device: str, dtype: str, op: str, recorder: Any, data: Any) -> None:
    case = draw_case(data, op, dtype)
    check = op.split("_", 1)[1]
    ratio = run_in_test(check, backend, case, dtype=dtype, device=device, hypothesis=True)
    recorder.record(op, dtype, "composite", ratio)


@pytest.mark.parametrize(("op", "case"), special_params(COMPOSITE_OPS))
def test_composite_special(backend: Any, device: str, dtype: str, op: str, case: Case, recorder: Any) -> None:
    check = op.split("_", 1)[1]
    ratio = run_in_test(check, backend, case, dtype=dtype, device=device, hypothesis=False)
    recorder.record(op, dtype, "composite", ratio)
