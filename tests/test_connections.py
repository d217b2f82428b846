"""hcref.connections, the framework-free part of every backend's connection modules: parameter plans
against ``hcref.init_*``, option checks with the reference's messages, the width/depth/head protocol
run on the NumPy reference as the ops namespace (equal to ``hcref.site`` / ``hcref.mhc_head``),
friendly module-level errors, and site numbering. NumPy and the standard library only."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import hcref
from hcref import connections as cn
from hcref._arrays import meta
from hcref.checks import random_params

REFERENCE_OPS = SimpleNamespace(
    meta=meta, **{name: getattr(hcref, name) for name in hcref.ALL_OPS}
)
"""The reference itself as an ops namespace (what a backend passes is its own ops module)."""


def _plans() -> list[tuple[cn.Plan, dict[str, np.ndarray]]]:
    return [
        (cn.hc_plan(4, 8, 5), hcref.init_hc(4, 8, 5)),
        (cn.hc_plan(3, 6, 0, dynamic=False, norm="rmsnorm"), hcref.init_hc(3, 6, 0, dynamic=False, norm="rmsnorm")),
        (cn.hc_plan(2, 4, 1, norm="rmsnorm"), hcref.init_hc(2, 4, 1, norm="rmsnorm")),
        (cn.fc_plan(2, 8, norm="none"), hcref.init_fc(2, 8, norm="none")),
        (cn.fc_plan(4, 8, dynamic=False), hcref.init_fc(4, 8, dynamic=False)),
        (cn.mhc_plan(4, 8, 6, preset="lucidrains"), hcref.init_mhc(4, 8, 6, preset="lucidrains")),
        (cn.mhc_plan(3, 5, 0, dynamic=False, preset="zero"), hcref.init_mhc(3, 5, 0, dynamic=False, preset="zero")),
        (cn.mhc_head_plan(4, 8, eps=1e-6), hcref.init_mhc_head(4, 8)),
    ]


@pytest.mark.parametrize(("plan", "expected"), _plans(), ids=lambda x: x.family if isinstance(x, cn.Plan) else "")
def test_plans_hold_the_contract_keys_shapes_and_init_values(plan: cn.Plan, expected: dict[str, np.ndarray]) -> None:
    params = plan.init_params()
    assert list(params) == list(expected) == list(plan.keys) == list(plan.param_shapes())
    for key, value in expected.items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)
        assert plan.param_shapes()[key] == value.shape, key
    assert plan.init_params(np.float32)[plan.keys[0]].dtype == np.float32
    assert hash(plan) == hash(type(plan)(**{f: getattr(plan, f) for f in plan.__dataclass_fields__}))


def test_extra_repr_spells_the_constructor() -> None:
    """HC/FC text is the one the existing modules print (so moving them onto the plan keeps it)."""
    assert cn.hc_plan(4, 8, 2).extra_repr() == (
        "n=4, d=8, layer_index=2, dynamic=True, norm='layernorm', use_tanh=True, use_norm=True, use_scale=True"
    )
    assert cn.fc_plan(2, 8, dynamic=False, use_tanh=False).extra_repr() == (
        "m=2, d=8, dynamic=False, norm='layernorm', use_tanh=False, use_norm=True, use_scale=True"
    )
    assert cn.mhc_plan(4, 8, 0, eps=1e-6).extra_repr() == (
        "n=4, d=8, layer_index=0, dynamic=True, preset='hc_like', iters=20, eps=1e-06"
    )
    assert cn.mhc_head_plan(4, 8).extra_repr() == "n=4, d=8, eps=0.0"
    assert cn.mhc_plan(4, 8, 3).name == "ManifoldHyperConnections(n=4, d=8, layer_index=3)"
    assert cn.fc_plan(2, 8).name == "FracConnections(m=2, d=8)"


def _raises_like(reference: Any, plan: Any) -> None:
    with pytest.raises((ValueError, TypeError)) as ref:
        reference()
    with pytest.raises(ref.type) as got:
        plan()
    assert str(got.value) == str(ref.value)


@pytest.mark.parametrize(
    ("reference", "plan"),
    [
        (lambda: hcref.init_hc(0, 8, 0), lambda: cn.hc_plan(0, 8, 0)),
        (lambda: hcref.init_hc(4, 8, -1), lambda: cn.hc_plan(4, 8, -1)),
        (lambda: hcref.init_hc(4, 8, 0, dynamic=1), lambda: cn.hc_plan(4, 8, 0, dynamic=1)),  # type: ignore[arg-type]
        (lambda: hcref.init_hc(4, 8, 0, norm="batchnorm"), lambda: cn.hc_plan(4, 8, 0, norm="batchnorm")),
        (lambda: hcref.validation.check_options("layernorm", 1, True, True),
         lambda: cn.hc_plan(4, 8, 0, use_tanh=1)),  # type: ignore[arg-type]
        (lambda: hcref.init_fc(3, 8), lambda: cn.fc_plan(3, 8)),
        (lambda: hcref.init_fc(2, 8, norm=None), lambda: cn.fc_plan(2, 8, norm=None)),  # type: ignore[arg-type]
        (lambda: hcref.init_mhc(4, 8, 0, preset="identity"), lambda: cn.mhc_plan(4, 8, 0, preset="identity")),
        (lambda: hcref.init_mhc(4, 0, 0), lambda: cn.mhc_plan(4, 0, 0)),
        (lambda: hcref.sinkhorn(np.zeros((2, 2)), iters=0), lambda: cn.mhc_plan(4, 8, 0, iters=0)),
        (lambda: hcref.sinkhorn(np.zeros((2, 2)), eps=-1.0), lambda: cn.mhc_plan(4, 8, 0, eps=-1.0)),
        (lambda: hcref.mhc_head(np.zeros((2, 2)), {}, eps=float("nan")),
         lambda: cn.mhc_head_plan(2, 2, eps=float("nan"))),
        (lambda: hcref.init_mhc_head(2, True), lambda: cn.mhc_head_plan(2, True)),  # type: ignore[arg-type]
    ],
)
def test_option_checks_raise_the_reference_messages(reference: Any, plan: Any) -> None:
    _raises_like(reference, plan)


def _site_inputs(
    family: str, rng: np.random.Generator
) -> tuple[cn.Plan, np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    if family == "hc":
        plan = cn.hc_plan(3, 4, 1, norm="rmsnorm", use_scale=False)
        return plan, rng.standard_normal((2, 5, 3, 4)), random_params("hc", 3, 4, rng, norm="rmsnorm"), plan.kwargs
    if family == "fc":
        plan = cn.fc_plan(2, 6)
        return plan, rng.standard_normal((5, 2, 3)), random_params("fc", 2, 3, rng), plan.kwargs
    plan = cn.mhc_plan(3, 4, 0, iters=4, eps=1e-6)
    return plan, rng.standard_normal((5, 3, 4)), random_params("mhc", 3, 4, rng), plan.kwargs


@pytest.mark.parametrize("family", ["hc", "fc", "mhc"])
def test_width_depth_and_site_equal_the_reference_site(family: str) -> None:
    rng = np.random.default_rng(0)
    plan, H, params, options = _site_inputs(family, rng)
    W = rng.standard_normal((plan.d, plan.d)) / plan.d

    def branch(h: np.ndarray, scale: float = 1.0) -> np.ndarray:
        return scale * np.tanh(h @ W)

    expected = hcref.site(family, H, params, branch, **options)
    h0, state = cn.width(REFERENCE_OPS, plan, H, params)
    assert isinstance(state, cn.MHCState if family == "mhc" else cn.SiteState)
    np.testing.assert_array_equal(cn.depth(REFERENCE_OPS, plan, branch(h0), state), expected)
    np.testing.assert_array_equal(cn.site(REFERENCE_OPS, plan, H, params, branch, scale=1.0), expected)
    if family == "mhc":
        np.testing.assert_array_equal(state.H, H)
        h_pre, h_post, h_res = hcref.mhc_coeffs(H, params, **options)
        np.testing.assert_array_equal(state.h_res, h_res)
        np.testing.assert_array_equal(state.h_post, h_post)
        np.testing.assert_array_equal(h0, hcref.mhc_pre(H, h_pre))


def test_head_equals_the_reference_head() -> None:
    rng = np.random.default_rng(1)
    plan = cn.mhc_head_plan(3, 4, eps=1e-6)
    H, params = rng.standard_normal((5, 3, 4)), random_params("mhc_head", 3, 4, rng)
    np.testing.assert_array_equal(cn.head(REFERENCE_OPS, plan, H, params), hcref.mhc_head(H, params, eps=1e-6))
    with pytest.raises(ValueError, match="a head is applied with head"):
        cn.width(REFERENCE_OPS, plan, H, params)


def test_forgetting_expand_or_frac_split_is_named() -> None:
    """Issue 16 item 4: the module says which module, what n and d it expected, what it got, and
    the likely fix; the functional op would have said ``params['A_m']: expected shape (10,) from H``."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 10, 32))
    hc = cn.hc_plan(4, 32, 0)
    with pytest.raises(ValueError) as err:
        cn.width(REFERENCE_OPS, hc, x, hcref.init_hc(4, 32, 0))
    assert str(err.value) == (
        "HyperConnections(n=4, d=32, layer_index=0): expected H of shape (..., 4, 32) (n=4 streams of width "
        "d=32), got shape (2, 10, 32); this looks like the embedding x (..., d=32) rather than n=4 streams: "
        "expand it first, H = Expand(4)(x), and reduce the streams at the end with Reduce()"
    )
    with pytest.raises(ValueError, match=r"params\['A_m'\]: expected shape \(10,\)"):
        hcref.hc_coeffs(x, hcref.init_hc(4, 32, 0))  # what the op alone says
    fc = cn.fc_plan(4, 32)
    with pytest.raises(ValueError) as err:
        cn.width(REFERENCE_OPS, fc, x, hcref.init_fc(4, 32))
    assert str(err.value) == (
        "FracConnections(m=4, d=32): expected H of shape (..., 4, 8) (m=4 fractions of width e=d/m=8), got shape "
        "(2, 10, 32); this looks like the unsplit input x (..., d=32): split it into fractions first, "
        "H = FracSplit(4)(x), and merge them at the end with FracMerge()"
    )
    mhc = cn.mhc_plan(4, 32, 1)
    with pytest.raises(ValueError, match=r"Expand\(4\)\(x\), and reduce the streams at the end with Reduce\(\) or "):
        cn.width(REFERENCE_OPS, mhc, x[0, 0], hcref.init_mhc(4, 32, 1))
    with pytest.raises(ValueError, match=r"got shape \(2, 4, 31\); the last axis must be d=32$"):
        cn.width(REFERENCE_OPS, mhc, rng.standard_normal((2, 4, 31)), hcref.init_mhc(4, 32, 1))
    with pytest.raises(ValueError, match=r"^MHCHead\(n=4, d=32\): .*MHCHead reduces the streams of H = Expand\(4\)"):
        cn.head(REFERENCE_OPS, cn.mhc_head_plan(4, 32), x, hcref.init_mhc_head(4, 32))


def test_depth_names_a_wrong_branch_output() -> None:
    rng = np.random.default_rng(3)
    plan = cn.mhc_plan(3, 4, 0)
    H = rng.standard_normal((5, 3, 4))
    _, state = cn.width(REFERENCE_OPS, plan, H, hcref.init_mhc(3, 4, 0))
    with pytest.raises(ValueError) as err:
        cn.depth(REFERENCE_OPS, plan, rng.standard_normal((5, 8)), state)
    assert str(err.value) == (
        "ManifoldHyperConnections(n=3, d=4, layer_index=0).depth: expected the branch output y of shape (5, 4) "
        "(the state's leading axes, then d=4), got shape (5, 8)"
    )


def test_layer_indices_number_every_sublayer() -> None:
    assert cn.layer_indices(3) == [(0, 1), (2, 3), (4, 5)]
    assert cn.layer_indices(2, sublayers_per_layer=1) == [(0,), (1,)]
    with pytest.raises(ValueError, match="num_layers: expected an int >= 1, got 0"):
        cn.layer_indices(0)
    with pytest.raises(TypeError, match="sublayers_per_layer: expected an int >= 1"):
        cn.layer_indices(2, sublayers_per_layer=2.0)  # type: ignore[arg-type]


def test_site_numbering_passes_consecutive_layer_indices() -> None:
    made: list[tuple[Any, ...]] = []

    def factory(n: int, d: int, layer_index: int, **kwargs: Any) -> cn.Plan:
        made.append((n, d, layer_index, kwargs))
        return cn.mhc_plan(n, d, layer_index, **kwargs)

    make = cn.SiteNumbering(factory, 4, 8, start=2, preset="zero")
    plans = [make(), make(iters=3)]
    assert [p.layer_index for p in plans] == [2, 3] and make.next_index == 4
    assert made[1] == (4, 8, 3, {"preset": "zero", "iters": 3})
    np.testing.assert_array_equal(plans[0].init_params()["b"], hcref.init_mhc(4, 8, 2, preset="zero")["b"])
    with pytest.raises(ValueError, match="layer_index: SiteNumbering passes it"):
        make(layer_index=0)
    with pytest.raises(ValueError, match="layer_index: SiteNumbering passes it"):
        cn.SiteNumbering(factory, 4, 8, layer_index=0)
    with pytest.raises(TypeError, match="factory: expected a callable"):
        cn.SiteNumbering(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start: expected an int >= 0"):
        cn.SiteNumbering(factory, start=-1)
