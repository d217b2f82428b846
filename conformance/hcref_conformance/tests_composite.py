"""Whole-site and small-network agreement, forward and VJP.

A site is ``coeffs -> width -> T -> depth`` composed from the port's ops, or the port's own
``site`` (module-level entry); a network is ``expand``/``frac_split``, two sites and
``reduce``/``frac_merge``. The sublayer ``T`` is the suite's, written with Python operators
only (:mod:`hcref_conformance.sublayer`). These run after the per-op checks, so a failing op
is reported before the sites and networks it breaks.
"""

from __future__ import annotations

from typing import Any

import pytest

from .cases import MIXED, Case
from .runner import Context, explore, run_one
from .suite import draw_for, fixed_cases, mixed, need

COMPOSITE_OPS = ("hc_site", "fc_site", "mhc_site", "hc_network", "fc_network", "mhc_network")


@pytest.mark.parametrize("op", COMPOSITE_OPS)
def test_composite(suite: Context, dtype: str, op: str, request: Any) -> None:
    need(suite, op, dtype)
    explore(suite, op.split("_", 1)[1], op, dtype, draw_for(suite, op, dtype), request.node.nodeid)


@fixed_cases(COMPOSITE_OPS)
def test_composite_special(suite: Context, dtype: str, op: str, case: Case, request: Any) -> None:
    need(suite, op, dtype)
    check = op.split("_", 1)[1]
    run_one(suite, check, case, dtype, request.node.nodeid)


@mixed(COMPOSITE_OPS)
def test_composite_mixed(suite: Context, op: str, case: Case, request: Any) -> None:
    need(suite, op, MIXED)
    check = op.split("_", 1)[1]
    run_one(suite, check, case, MIXED, request.node.nodeid)
