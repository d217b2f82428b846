"""Every hand-derived mHC VJP of the reference against float64 central differences along random
directions (hcref.checks.directional_check): Sinkhorn iterations 1, 3 and 20, the paper
(eps = 0) and DeepSeek-V4 (eps = 1e-6), n = 1..8, static and dynamic parameters; then the whole
site, a stack with its ends, and the numpy backend's tape over the same VJPs."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hcref_numpy import backend
from hypothesis import given, settings
from hypothesis import strategies as st

import hcref
from hcref.checks import check_op, directional_check, random_inputs, random_params
from hcref.network import init_mlp, mlp, mlp_vjp, stack, stack_vjp
from hcref.optable import MHC_OPS
from hcref.site import site, site_vjp

FD_TOL = 1e-7
"""Normalised directional error allowed (the worst measured over this file is about 1e-10)."""

ITERS = (1, 3, 20)
EPS = (0.0, 1e-6)
NS = range(1, 9)
LEADS = ((), (3,), (2, 3))


def _grid(name: str) -> list[tuple[int, int, float, bool]]:
    """(n, iters, eps, dynamic) cases of op ``name``; options an op lacks are not varied."""
    options = MHC_OPS[name].options
    iters = ITERS if "iters" in options else (20,)
    eps = EPS if "eps" in options else (0.0,)
    dynamic = (True, False) if name == "mhc_coeffs" else (True,)
    return list(itertools.product(NS, iters, eps, dynamic))


@pytest.mark.parametrize("name", sorted(MHC_OPS))
def test_mhc_vjp_matches_finite_differences(name: str) -> None:
    rng = np.random.default_rng(sorted(MHC_OPS).index(name))
    worst = 0.0
    for (n, iters, eps, dynamic), lead in itertools.product(_grid(name), LEADS):
        d = int(rng.integers(1, 9))
        primals = random_inputs(name, rng, lead, n, d, dynamic=dynamic)
        options = {key: value for key, value in (("iters", iters), ("eps", eps)) if key in MHC_OPS[name].options}
        result = check_op(name, primals, rng, **options)
        assert result.error < FD_TOL, (name, n, d, options, dynamic, result)
        worst = max(worst, result.error)
    print(f"{name}: worst normalised FD error {worst:.2e} over {len(_grid(name)) * len(LEADS)} cases")


@pytest.mark.parametrize("name", sorted(MHC_OPS))
def test_mhc_vjp_on_drawn_cases(name: str) -> None:
    """Hypothesis draws shapes (n 1..8, d 1..16, up to 3 leading axes), iters 1..25, eps in
    {0, 1e-6, 1e-3} and static or dynamic parameters."""
    options_of = MHC_OPS[name].options

    @settings(max_examples=100)
    @given(n=st.integers(1, 8), d=st.integers(1, 16), lead=st.lists(st.integers(1, 3), max_size=3).map(tuple),
           iters=st.integers(1, 25), eps=st.sampled_from([0.0, 1e-6, 1e-3]), dynamic=st.booleans(),
           seed=st.integers(0, 2**32 - 1))
    def check(n: int, d: int, lead: tuple[int, ...], iters: int, eps: float, dynamic: bool, seed: int) -> None:
        rng = np.random.default_rng(seed)
        primals = random_inputs(name, rng, lead, n, d, dynamic=dynamic)
        options = {key: value for key, value in (("iters", iters), ("eps", eps)) if key in options_of}
        result = check_op(name, primals, rng, **options)
        assert result.error < FD_TOL, (name, options, result)

    check()


def test_self_check_report_covers_mhc(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m hcref`` checks the mHC VJPs and mHC's Pre-Norm equivalence at init too."""
    from hcref.__main__ import main

    assert main(["--examples", "5"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name} " in out for name in MHC_OPS) and "mHC n=4 hc_like" in out and "mHC n=4 zero" in out


@pytest.mark.parametrize("scale", [5.0, 40.0])
@pytest.mark.parametrize("eps", EPS)
def test_sinkhorn_vjp_with_spread_logits(scale: float, eps: float) -> None:
    """Logits spread over +-``scale`` (up to 80 apart): some entries of P are ~1e-35, the gradient
    is still the unrolled one."""
    rng = np.random.default_rng(int(scale))
    for n in (2, 4, 8):
        Z = scale * rng.uniform(-1, 1, (3, n, n))
        result = check_op("sinkhorn", (Z,), rng, iters=20, eps=eps)
        assert result.error < FD_TOL, (n, result)


def test_sinkhorn_vjp_is_not_the_implicit_gradient() -> None:
    """D7: the gradient is unrolled. The implicit (converged) gradient of a 3-iteration Sinkhorn
    is a different function's gradient and the directional check tells them apart."""
    rng = np.random.default_rng(7)
    Z = 2.0 * rng.standard_normal((4, 4))

    def implicit_vjp(Z: np.ndarray, g: np.ndarray) -> tuple[np.ndarray]:
        return hcref.sinkhorn_vjp(Z, g, iters=200)  # the gradient at convergence

    result = directional_check(lambda Z: hcref.sinkhorn(Z, iters=3), implicit_vjp, (Z,), (0,), rng)
    assert result.error > 1e-3
    exact = directional_check(
        lambda Z: hcref.sinkhorn(Z, iters=3), lambda Z, g: hcref.sinkhorn_vjp(Z, g, iters=3), (Z,), (0,), rng
    )
    assert exact.error < FD_TOL


def _sublayer(d: int, rng: np.random.Generator) -> tuple[Any, Any]:
    weights = init_mlp(d, 2 * d, rng)
    return (lambda h: mlp(weights, h)), (lambda h, g: mlp_vjp(weights, h, g))


def _check_site_and_stack(n: int, options: dict[str, Any], dynamic: bool, rng: np.random.Generator) -> None:
    d = int(rng.integers(2, 7))
    subs = [_sublayer(d, rng) for _ in range(3)]
    fns, vjps = [s[0] for s in subs], [s[1] for s in subs]
    conns = [random_params("mhc", n, d, rng, dynamic=dynamic) for _ in range(3)]
    H = rng.standard_normal((2, n, d))
    result = directional_check(
        lambda H, P: site("mhc", H, P, fns[0], **options),
        lambda H, P, g: site_vjp("mhc", H, P, fns[0], vjps[0], g, **options),
        (H, conns[0]), (0, 1), rng)
    assert result.error < FD_TOL, ("site", n, result)

    def net(x: np.ndarray, *conns: dict[str, np.ndarray]) -> np.ndarray:
        return stack(x, fns, mode="mhc", connections=list(conns), rate=n, **options)

    def net_vjp(x: np.ndarray, *args: Any) -> tuple[Any, ...]:
        *conns, g = args
        g_x, g_conns = stack_vjp(x, fns, vjps, g, mode="mhc", connections=conns, rate=n, **options)
        return (g_x, *g_conns)

    result = directional_check(net, net_vjp, (rng.standard_normal((2, d)), *conns), (0, 1, 2, 3), rng)
    assert result.error < FD_TOL, ("stack", n, result)


@pytest.mark.parametrize(("iters", "eps", "dynamic"), list(itertools.product(ITERS, EPS, (True, False))))
def test_mhc_site_and_stack_vjp_match_finite_differences(iters: int, eps: float, dynamic: bool) -> None:
    """Whole site (coeffs -> pre -> MLP -> post) and a 3-site stack with expand / reduce (A15)."""
    rng = np.random.default_rng(iters * 10 + int(dynamic))
    for n in (1, 2, 4):
        _check_site_and_stack(n, {"iters": iters, "eps": eps}, dynamic, rng)


def test_numpy_backend_tape_over_the_mhc_ops() -> None:
    """The numpy backend runs a whole mHC site with a V4 head from its own ops, and its tape
    gives the reference's VJPs (checked here against finite differences)."""
    rng = np.random.default_rng(3)
    n, d = 3, 4
    params = random_params("mhc", n, d, rng)
    head = random_params("mhc_head", n, d, rng)

    def fn(H: np.ndarray, params: dict[str, np.ndarray], head: dict[str, np.ndarray]) -> np.ndarray:
        h_pre, h_post, h_res = backend.mhc_coeffs(H, params, iters=5, eps=1e-6)
        h0 = backend.mhc_pre(H, h_pre)
        H_out = backend.mhc_post(h0, H, h_post, h_res)  # the sublayer is the identity here
        return backend.mhc_head(H_out, head, eps=1e-6)

    H = rng.standard_normal((2, n, d))
    assert np.array_equal(fn(H, params, head), hcref.mhc_head(
        hcref.mhc_site(H, params, lambda h: h, iters=5, eps=1e-6), head, eps=1e-6))
    result = directional_check(fn, lambda H, P, Q, g: backend.vjp(fn, (H, P, Q), (g,)), (H, params, head),
                               (0, 1, 2), rng)
    assert result.error < FD_TOL, result
    Z = rng.standard_normal((2, n, n))
    (g_Z,) = backend.vjp(lambda Z: backend.sinkhorn(Z, iters=3), (Z,), (np.ones_like(Z),))
    np.testing.assert_array_equal(g_Z, hcref.sinkhorn_vjp(Z, np.ones_like(Z), iters=3)[0])
