"""Every hand-derived VJP of the reference against float64 central differences along random
directions (hcref.checks), on drawn shapes and random parameters, driven by the op table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hcref
from hcref.checks import check_op, directional_check, random_inputs
from hcref.network import init_mlp, mlp, mlp_vjp, stack, stack_vjp
from hcref.optable import OPS
from hcref.site import site, site_vjp

FD_TOL = 1e-7
"""Normalised directional error allowed (observed worst is near 1e-10; see the closing note)."""

leads = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)
norms = st.sampled_from(["layernorm", "rmsnorm", "none"])
flags = st.booleans()


@st.composite
def cases(draw: st.DrawFn, name: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional inputs and options for op ``name``: n in 1..8, m in 1..4, d <= 64."""
    family = OPS[name].family
    fc_like = family == "fc" or name.startswith("frac")
    k = draw(st.integers(1, 4 if fc_like else 8), label="n or m")
    w = draw(st.integers(1, 64 // k if fc_like else 64), label="d or e")
    lead = draw(leads, label="leading axes")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    options: dict[str, Any] = {}
    param_kw: dict[str, Any] = {}
    if name.endswith("_coeffs"):
        norm = draw(norms, label="norm")
        options = {"norm": norm, "use_tanh": draw(flags, label="use_tanh"),
                   "use_norm": draw(flags, label="use_norm"), "use_scale": draw(flags, label="use_scale")}
        param_kw = {"dynamic": draw(st.booleans(), label="dynamic"), "norm": norm}
    return random_inputs(name, rng, lead, k, w, **param_kw), options


@pytest.mark.parametrize("name", sorted(OPS))
def test_vjp_matches_finite_differences(name: str) -> None:
    @settings(max_examples=200)
    @given(case=cases(name), seed=st.integers(0, 2**32 - 1))
    def check(case: tuple[tuple[Any, ...], dict[str, Any]], seed: int) -> None:
        primals, options = case
        result = check_op(name, primals, np.random.default_rng(seed), **options)
        assert result.error < FD_TOL, f"{name}: finite differences {result.lhs!r} vs VJP {result.rhs!r} ({options})"

    check()


@pytest.mark.parametrize("family", ["hc", "fc"])
def test_site_and_stack_vjp_match_finite_differences(family: str) -> None:
    """Whole site (width -> MLP sublayer -> depth) and a 3-site stack with its ends."""
    @settings(max_examples=50)
    @given(seed=st.integers(0, 2**32 - 1), rate=st.integers(1, 4), e=st.integers(1, 8), norm=norms)
    def check(seed: int, rate: int, e: int, norm: str) -> None:
        rng = np.random.default_rng(seed)
        d = rate * e
        k, w = (rate, d) if family == "hc" else (rate, e)
        weights = [init_mlp(d, 2 * d, rng) for _ in range(3)]
        subs = [lambda h, p=p: mlp(p, h) for p in weights]
        sub_vjps = [lambda h, g, p=p: mlp_vjp(p, h, g) for p in weights]
        conns = [random_inputs(f"{family}_coeffs", rng, (), k, w, norm=norm)[1] for _ in range(3)]
        H = rng.standard_normal((2, k, w))
        result = directional_check(
            lambda H, P: site(family, H, P, subs[0], norm=norm),
            lambda H, P, g: site_vjp(family, H, P, subs[0], sub_vjps[0], g, norm=norm),
            (H, conns[0]), (0, 1), rng)
        assert result.error < FD_TOL, f"site: {result}"
        x = rng.standard_normal((2, d))

        def net(x: np.ndarray, *conns: dict[str, np.ndarray]) -> np.ndarray:
            return stack(x, subs, mode=family, connections=list(conns), rate=rate, norm=norm)

        def net_vjp(x: np.ndarray, *args: Any) -> tuple[Any, ...]:
            *conns, g = args
            g_x, g_conns = stack_vjp(x, subs, sub_vjps, g, mode=family, connections=conns, rate=rate, norm=norm)
            return (g_x, *g_conns)

        result = directional_check(net, net_vjp, (x, *conns), (0, 1, 2, 3), rng)
        assert result.error < FD_TOL, f"stack: {result}"

    check()


def test_directional_check_catches_a_wrong_vjp() -> None:
    """The checker itself can fail: a VJP missing the static-matrix term of hc_width is caught."""
    rng = np.random.default_rng(0)
    H, alpha = random_inputs("hc_width", rng, (3,), 4, 8)

    def wrong_vjp(H: np.ndarray, alpha: np.ndarray, g_h0: np.ndarray, g_H_res: np.ndarray) -> tuple[Any, ...]:
        g_H, g_alpha = hcref.hc_width_vjp(H, alpha, g_h0, g_H_res)
        return g_H, np.zeros_like(g_alpha)

    result = directional_check(hcref.hc_width, wrong_vjp, (H, alpha), (0, 1), rng)
    assert result.error > 1e-3


def test_self_check_report_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m hcref`` checks every op and exits 0 on the correct reference."""
    from hcref.__main__ import main

    assert main(["--examples", "10"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name} " in out for name in OPS) and "all checks pass" in out
