"""The mHC ops in the op table (``MHC_OPS``, kept apart from ``OPS`` until every first-party
backend has them): names, arguments and options match the reference functions and the numpy
backend, and the self-check helpers of ``hcref.checks`` drive them."""

from __future__ import annotations

import inspect

import numpy as np
from hcref_numpy import backend

import hcref
from hcref.checks import check_op, op_function, random_inputs
from hcref.optable import ALL_OPS, MHC_OPS, OPS


def test_mhc_ops_are_apart_from_ops_and_in_all_ops() -> None:
    assert set(MHC_OPS) == {"sinkhorn", "mhc_coeffs", "mhc_pre", "mhc_post", "mhc_head"}
    assert not set(MHC_OPS) & set(OPS) and ALL_OPS == {**OPS, **MHC_OPS}
    assert all(spec.family == "mhc" for spec in MHC_OPS.values())


def test_reference_and_numpy_backend_signatures_match_the_table() -> None:
    for name, spec in MHC_OPS.items():
        reference = inspect.signature(getattr(hcref, name)).parameters
        assert list(reference) == [*spec.inputs, *spec.options], name
        assert all(reference[o].kind == inspect.Parameter.KEYWORD_ONLY for o in spec.options), name
        assert op_function(name) is getattr(hcref, name) and op_function(spec.vjp_name) is getattr(hcref, spec.vjp_name)
        ported = inspect.signature(getattr(backend, name)).parameters
        assert list(ported) == list(reference) and all(
            ported[a].default == p.default and ported[a].kind == p.kind for a, p in reference.items()
        ), name
    assert inspect.signature(hcref.sinkhorn).parameters["iters"].default == 20
    assert inspect.signature(hcref.mhc_coeffs).parameters["eps"].default == 0.0


def test_random_inputs_have_the_contract_shapes_and_check_op_runs() -> None:
    rng = np.random.default_rng(0)
    n, d, lead = 3, 5, (2,)
    shapes = {
        "sinkhorn": [(2, 3, 3)],
        "mhc_pre": [(2, 3, 5), (2, 3)],
        "mhc_post": [(2, 5), (2, 3, 5), (2, 3), (2, 3, 3)],
    }
    for name in MHC_OPS:
        primals = random_inputs(name, rng, lead, n, d)
        if name in shapes:
            assert [p.shape for p in primals] == shapes[name], name
        else:
            keys = {"mhc_coeffs": ["b", "gates", "phi"], "mhc_head": ["b", "gate", "phi"]}[name]
            assert sorted(primals[1]) == keys
        assert check_op(name, primals, rng).error < 1e-7
    static = random_inputs("mhc_coeffs", rng, lead, n, d, dynamic=False)[1]
    assert list(static) == ["b"]
