"""The suite's own pieces, in process: the sublayer's hand-derived VJP against finite differences,
the suite's composition of sites and networks against :func:`hcref.site` and
:func:`hcref.network.stack` (and a declared norm epsilon against finite differences), the
distributions of the draws, and the declared capabilities of :mod:`hcref.interface`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hcref_conformance import sublayer as sub
from hcref_conformance.cases import Case
from hcref_conformance.families import (
    FAMILIES,
    ReferenceOps,
    network_backward,
    network_forward,
    site_backward,
    site_forward,
)
from hcref_conformance.strategies import PROFILES, draw_case, special_cases
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import hcref
from hcref import network
from hcref.checks import directional_check, random_params
from hcref.interface import END_OPS, OP_NAMES, Support, missing_members, support_of


@pytest.mark.parametrize("kind", sub.KINDS)
@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_sublayer_vjp_matches_finite_differences(kind: str, scale: float) -> None:
    rng = np.random.default_rng(0)
    d = 6
    T = sub.build(kind, sub.random_params(kind, d, rng), lambda x: x)
    h = scale * rng.standard_normal((3, d))
    check = directional_check(T, lambda x, g: (T.vjp(x, g),), [h], [0], rng, eps=1e-6 * scale)
    assert check.error < 1e-7, check


def _site_case(family: str, norm: str, dynamic: bool) -> tuple[Any, ...]:
    rng = np.random.default_rng(1)
    k, w = 3, 4
    fam = FAMILIES[family]
    H = rng.standard_normal((2, k, w))
    params = random_params(family, k, w, rng, dynamic=dynamic, norm=norm)
    T = sub.build("mlp", sub.random_params("mlp", fam.model_width(k, w), rng), lambda x: x)
    if family == "mhc":
        return fam, H, params, T, {"iters": 3 if norm == "rmsnorm" else 20, "eps": 1e-6 if norm == "none" else 0.0}
    return fam, H, params, T, {"norm": norm, "use_tanh": True, "use_norm": True, "use_scale": True}


@pytest.mark.parametrize("family", ["hc", "fc", "mhc"])
@pytest.mark.parametrize(("norm", "dynamic"), [("layernorm", True), ("rmsnorm", True), ("none", False)])
def test_composition_equals_the_reference(family: str, norm: str, dynamic: bool) -> None:
    fam, H, params, T, options = _site_case(family, norm, dynamic)
    ns = ReferenceOps()
    out, tape = site_forward(ns, fam, H, params, T, options)
    np.testing.assert_array_equal(out, hcref.site(family, H, params, T, **options))
    g = np.random.default_rng(2).standard_normal(out.shape)
    g_H, g_params = site_backward(ns, fam, T.vjp, tape, g, options)
    ref_H, ref_params = hcref.site_vjp(family, H, params, T, T.vjp, g, **options)
    np.testing.assert_allclose(g_H, ref_H, rtol=1e-12, atol=1e-12)
    for key in params:
        np.testing.assert_allclose(g_params[key], ref_params[key], rtol=1e-12, atol=1e-12)
    x = np.random.default_rng(3).standard_normal((2, fam.model_width(3, 4)))
    connections = [params, params]
    out, tape = network_forward(ns, fam, 3, x, connections, [T, T], options)
    np.testing.assert_allclose(out, network.stack(x, [T, T], mode=family, connections=connections, rate=3, **options),
                               rtol=1e-13, atol=1e-13)
    grads = network_backward(ns, fam, [T, T], tape, out, options)
    g_x, g_connections = network.stack_vjp(x, [T, T], [T.vjp, T.vjp], out, mode=family, connections=connections,
                                           rate=3, **options)
    np.testing.assert_allclose(grads[0], g_x, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads[1:], g_connections, strict=True):
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["hc", "fc"])
@pytest.mark.parametrize(("norm", "eps"), [("rmsnorm", 0.0), ("layernorm", 1e-3), ("rmsnorm", 1e-2)])
def test_declared_norm_epsilon(family: str, norm: str, eps: float) -> None:
    """A port's declared epsilon: its coefficients are the reference's function at that epsilon (a
    finite-difference check of the VJP), and at D1's epsilon exactly the plain reference's."""
    fam, H, params, _, options = _site_case(family, norm, True)
    H = 1e-2 * H
    ns = ReferenceOps({norm: eps})
    check = directional_check(lambda h, p: ns.call(fam.coeffs, h, p, **options),
                              lambda h, p, ga, gb: ns.vjp(fam.coeffs, (h, p), (ga, gb), **options),
                              [H, params], [0, 1], np.random.default_rng(4), eps=1e-8)
    assert check.error < 1e-6, check
    plain = ReferenceOps({norm: {"layernorm": 1e-5, "rmsnorm": 1e-6}[norm]})
    for a, b in zip(plain.call(fam.coeffs, H, params, **options), getattr(hcref, fam.coeffs)(H, params, **options),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    differs = ns.call(fam.coeffs, H, params, **options)[0] - getattr(hcref, fam.coeffs)(H, params, **options)[0]
    assert np.max(np.abs(differs)) > 1e-6


def _drawn(op: str, profile: str, n: int = 300) -> list[Case]:
    cases: list[Case] = []

    @seed(0)
    @settings(max_examples=n, database=None, suppress_health_check=list(HealthCheck), deadline=None)
    @given(data=st.data())
    def body(data: Any) -> None:
        cases.append(draw_case(data, op, "float64", PROFILES[profile], Support(), ["float64", "float32"]))

    body()
    return cases


@pytest.mark.parametrize("profile", ["default", "thorough"])
@pytest.mark.parametrize("op", ["hc_coeffs", "fc_site"])
def test_draw_distributions(profile: str, op: str) -> None:
    """At least half the coefficient draws are dynamic with random weights, every switch is on
    often, more than 4 rows and size-0 leading axes are drawn, k stays within the profile."""
    cases = _drawn(op, profile)
    n = len(cases)
    dynamic_random = sum(c.dynamic and not c.init for c in cases) / n
    all_on = sum(c.use_tanh and c.use_norm and c.use_scale for c in cases) / n
    assert dynamic_random >= 0.5, dynamic_random
    assert all_on >= 0.35, all_on
    assert sum(c.k > 4 for c in cases) / n >= 0.1
    assert sum(0 in c.lead for c in cases) / n >= 0.03
    assert max(c.k for c in cases) == (8 if profile == "default" else 16)
    for switch in ("use_tanh", "use_norm", "use_scale"):
        assert any(not getattr(c, switch) for c in cases), switch
    assert {c.norm for c in cases} == {"layernorm", "rmsnorm", "none"}


def test_fixed_cases_cover_the_issues() -> None:
    """More than 4 streams, size-0 leading axes, extreme scales, small activations per norm with
    random dynamic weights, and each switch off with random dynamic weights."""
    cases = dict(special_cases("hc_coeffs", "float32", ["float64", "float32"], PROFILES["default"], Support()))
    assert cases["k8"].k == 8 and cases["empty"].lead == (0,)
    assert {c.scale for c in cases.values()} >= {1e-30, 1e15, 1e20, 1e-2, 1e-3}
    for norm in ("layernorm", "rmsnorm"):
        small = [c for c in cases.values() if c.scale == 1e-3 and c.norm == norm]
        assert small and all(c.dynamic and not c.init and c.use_tanh and c.use_scale for c in small)
    precise = dict(special_cases("hc_coeffs", "float64", ["float64", "float32"], PROFILES["default"], Support()))
    for switch in ("use_tanh", "use_norm", "use_scale"):
        assert any(not getattr(c, switch) and c.dynamic and not c.init for c in precise.values()), switch
    half = dict(special_cases("hc_coeffs", "bfloat16", ["float64", "bfloat16"], PROFILES["default"], Support()))
    assert len(half) < len(precise)  # structure cases run in the precise dtypes only


@pytest.mark.parametrize("op", ["mhc_coeffs", "mhc_site", "sinkhorn"])
def test_mhc_draws(op: str) -> None:
    """mHC draws: its options (20, 3 and 1 iterations, V4's eps), more than 4 streams, dynamic with
    random weights in at least half, size-0 leading axes; the free draws too."""
    for profile in ("default", "thorough"):
        cases = _drawn(op, profile, 200)
        assert {c.iters for c in cases} == {1, 3, 20} and {c.eps for c in cases} == {0.0, 1e-6}
        assert sum(c.k > 4 for c in cases) / len(cases) >= 0.1
        if op != "sinkhorn":
            assert sum(c.dynamic and not c.init for c in cases) / len(cases) >= 0.5
        assert all(set(c.options) == ({"iters", "eps"}) for c in cases)


def test_mhc_fixed_cases_and_conditioning() -> None:
    """The logit patterns (above 88, spread 160, a row or a column 1e4 below) are fixed cases of
    sinkhorn and mhc_coeffs, and their tolerance carries Sinkhorn's conditioning max(1, max|Z|)."""
    from hcref_conformance.cases import sinkhorn_conditioning, sinkhorn_logits
    from hcref_conformance.checks import op_conditioning

    for op in ("sinkhorn", "mhc_coeffs"):
        cases = dict(special_cases(op, "float32", ["float64", "float32"], PROFILES["default"], Support()))
        assert {c.logits for c in cases.values()} >= {"big90", "spread160", "row-1e4", "col-1e4"}
        assert any(c.logits == "big90" and c.k == 8 for c in cases.values())
        big = next(c for c in cases.values() if c.logits == "big90")
        assert 90 < op_conditioning(op, big.inputs()) < 100
        row = next(c for c in cases.values() if c.logits == "row-1e4")
        assert 9e3 < op_conditioning(op, row.inputs()) < 1.1e4
    assert sinkhorn_conditioning(np.array([[0.5, -0.2]])) == 1.0
    rng = np.random.default_rng(0)
    H = rng.standard_normal((3, 2, 4))
    p = random_params("mhc", 2, 4, rng)
    z = hcref.norms.rms_normalize(H.reshape(3, 8), 1e-6)[0] @ p["phi"]
    np.testing.assert_allclose(sinkhorn_logits(H, p), (p["gates"][2] * z[:, 4:] + p["b"][4:]).reshape(3, 2, 2))
    pattern = dict(special_cases("sinkhorn", "float64", ["float64"], PROFILES["default"], Support()))
    assert all(c.scale == 1.0 for c in pattern.values())  # logits are not activations


def test_support_defaults_and_validation() -> None:
    assert Support().op_names == END_OPS + tuple(op for op in OP_NAMES if op not in END_OPS)
    assert Support().site_entry("hc") == "ops" and Support(sites=("hc",)).site_entry("hc") == "module"
    assert Support(ops=END_OPS).site_entry("fc") is None
    assert support_of(object()) == Support()
    assert support_of(type("M", (), {"sinkhorn": None})()).families == ("hc", "fc", "mhc")
    assert Support(families=("mhc",)).site_entry("mhc") == "ops"
    assert Support(families=("mhc",), ops=("mhc_coeffs", "mhc_pre", "mhc_post")).site_entry("mhc") == "ops"
    with pytest.raises(ValueError, match="iters"):
        Support(iters=(0,))
    with pytest.raises(ValueError, match="mhc_variants"):
        Support(mhc_variants=("v5",))
    with pytest.raises(ValueError, match="norms"):
        Support(norms=("batchnorm",))
    with pytest.raises(ValueError, match="sites"):
        Support(families=("hc",), sites=("fc",))
    with pytest.raises(ValueError, match="norm_eps"):
        Support(norms=("rmsnorm",), norm_eps={"layernorm": 1e-6})
    with pytest.raises(ValueError, match="max_rows"):
        Support(max_rows=0)
    with pytest.raises(ValueError, match="unknown fields"):
        support_of(type("P", (), {"supports": lambda self: {"dtypes": ["float32"]}})())

    class ModulePort:
        name = version = framework_version = ""

        def supports(self) -> Support:
            return Support(ops=END_OPS, sites=("hc", "fc"), initialisers=("fc",))

    missing = missing_members(ModulePort())
    assert "site" in missing and "init_fc" in missing and "expand" in missing and "hc_coeffs" not in missing
