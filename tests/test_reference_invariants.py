"""The papers' claims about HC and FC, checked end to end on the reference (math.md 2.5, 2.7,
2.8, 3.4, 8), each against a network computed independently of the connection ops."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hcref
from hcref.checks import random_params
from hcref.network import init_mlp, mlp, stack

seeds = st.integers(0, 2**32 - 1)
norms = st.sampled_from(["layernorm", "rmsnorm", "none"])


def _sublayers(d: int, count: int, rng: np.random.Generator) -> list[Any]:
    weights = [init_mlp(d, 2 * d, rng) for _ in range(count)]
    return [lambda h, w=w: mlp(w, h) for w in weights]


def _residual(x: np.ndarray, sublayers: list[Any]) -> np.ndarray:
    """The Pre-Norm residual stack ``h <- h + T(h)``, written out here rather than taken from hcref."""
    for sublayer in sublayers:
        x = x + sublayer(x)
    return x


@settings(max_examples=30)
@given(seed=seeds, n=st.integers(1, 6), sites=st.integers(1, 7), dynamic=st.booleans(), norm=norms)
def test_hc_at_init_is_n_times_the_prenorm_residual(seed: int, n: int, sites: int, dynamic: bool, norm: str) -> None:
    """HC Eq. 14: at init every stream is the Pre-Norm stream, so ``reduce / n`` equals it."""
    rng = np.random.default_rng(seed)
    d = 8
    x = rng.standard_normal((3, d))
    subs = _sublayers(d, sites, rng)
    conns = [hcref.init_hc(n, d, k, dynamic=dynamic, norm=norm) for k in range(sites)]
    out = stack(x, subs, mode="hc", connections=conns, rate=n, norm=norm)
    np.testing.assert_allclose(out / n, _residual(x, subs), rtol=1e-13, atol=1e-13)


@settings(max_examples=30)
@given(seed=seeds, m=st.integers(1, 4), e=st.integers(1, 4), sites=st.integers(1, 7), dynamic=st.booleans(),
       norm=norms)
def test_fc_at_init_is_exactly_the_prenorm_residual(
    seed: int, m: int, e: int, sites: int, dynamic: bool, norm: str
) -> None:
    """FC Eq. 15: ``Y = A = I``, ``B = 1`` and zero projections reproduce Pre-Norm bit for bit."""
    rng = np.random.default_rng(seed)
    d = m * e
    x = rng.standard_normal((2, 3, d))
    subs = _sublayers(d, sites, rng)
    conns = [hcref.init_fc(m, d, dynamic=dynamic, norm=norm) for _ in range(sites)]
    out = stack(x, subs, mode="fc", connections=conns, rate=m, norm=norm)
    np.testing.assert_array_equal(out, _residual(x, subs))


def test_n1_prenorm_matrix_gives_h_plus_T_of_h() -> None:
    """HC section 3: ``HC = [[0, 1], [1, 1]]`` with n = 1 is ``h + T(h)``."""
    rng = np.random.default_rng(0)
    d = 5
    h = rng.standard_normal((4, d))
    (T,) = _sublayers(d, 1, rng)
    params = {"A_m": np.ones(1), "A_r": np.ones((1, 1)), "B": np.ones(1)}
    out = hcref.hc_site(h[:, None, :], params, T)
    np.testing.assert_array_equal(out[:, 0, :], h + T(h))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_sequential_arrangement_is_a_residual_stack(n: int) -> None:
    """HC Eq. 42: ``A_m = e_0``, ``A_r = I``, ``B = 1`` at every site keep the streams equal."""
    rng = np.random.default_rng(n)
    d, sites = 6, 5
    x = rng.standard_normal((2, d))
    subs = _sublayers(d, sites, rng)
    sequential = {"A_m": np.eye(n)[0], "A_r": np.eye(n), "B": np.ones(n)}
    H = hcref.expand(x, n)
    for T in subs:
        H = hcref.hc_site(H, sequential, T)
    for stream in range(n):
        np.testing.assert_allclose(H[:, stream], _residual(x, subs), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_parallel_arrangement_sums_the_group(n: int) -> None:
    """HC Eqs. 53-55 (math.md 2.7): a group of n sites computes ``S' = sum_i (S + T_i(S))``.

    Site 0 of a group reads the sum of the streams, resets every stream to it and writes to
    stream 0; site i reads stream i, keeps the streams and writes to stream i.
    """
    rng = np.random.default_rng(10 + n)
    d, groups = 6, 3
    subs = _sublayers(d, n * groups, rng)
    first = {"A_m": np.ones(n), "A_r": np.ones((n, n)), "B": np.eye(n)[0]}
    others = [{"A_m": np.eye(n)[i], "A_r": np.eye(n), "B": np.eye(n)[i]} for i in range(1, n)]
    H = rng.standard_normal((2, n, d))
    S = H.sum(axis=-2)
    for g in range(groups):
        group = subs[g * n:(g + 1) * n]
        for T, params in zip(group, [first, *others], strict=True):
            H = hcref.hc_site(H, params, T)
        S = sum(S + T(S) for T in group)
        np.testing.assert_allclose(hcref.reduce(H), S, rtol=1e-12, atol=1e-12)


@settings(max_examples=40)
@given(seed=seeds, family=st.sampled_from(["hc", "fc"]), k=st.integers(1, 4), w=st.integers(1, 6), norm=norms,
       use_tanh=st.booleans(), use_norm=st.booleans(), use_scale=st.booleans())
def test_dynamic_with_zero_projections_equals_static(
    seed: int, family: str, k: int, w: int, norm: str, use_tanh: bool, use_norm: bool, use_scale: bool
) -> None:
    """Zero ``W_alpha``, ``W_beta`` leave only the static part, whatever the gates and the norm."""
    rng = np.random.default_rng(seed)
    params = random_params(family, k, w, rng, dynamic=True, norm=norm)
    params["W_alpha"] = np.zeros_like(params["W_alpha"])
    params["W_beta"] = np.zeros_like(params["W_beta"])
    static = {key: params[key] for key in (("A_m", "A_r", "B") if family == "hc" else ("Y", "A", "B"))}
    H = rng.standard_normal((3, k, w))
    coeffs = hcref.hc_coeffs if family == "hc" else hcref.fc_coeffs
    options = {"norm": norm, "use_tanh": use_tanh, "use_norm": use_norm, "use_scale": use_scale}
    for dyn, stat in zip(coeffs(H, params, **options), coeffs(H, static), strict=True):
        np.testing.assert_array_equal(dyn, stat)
    d = w if family == "hc" else k * w
    (T,) = _sublayers(d, 1, rng)
    # the mixing may take another summation order for broadcast static coefficients: ulps only
    np.testing.assert_allclose(
        hcref.site(family, H, params, T, **options), hcref.site(family, H, static, T), rtol=1e-14, atol=1e-15
    )


@settings(max_examples=40)
@given(seed=seeds, n=st.integers(1, 5), d=st.integers(1, 6), dynamic=st.booleans())
def test_hc_site_is_eq_2(seed: int, n: int, d: int, dynamic: bool) -> None:
    """HC Eq. 2 per token, ``H_out = B^T T(H^T A_m)^T + A_r^T H``, with A_m, A_r, B from Eqs. 10-13."""
    rng = np.random.default_rng(seed)
    params = random_params("hc", n, d, rng, dynamic=dynamic, norm="layernorm")
    H = rng.standard_normal((4, n, d))
    (T,) = _sublayers(d, 1, rng)
    expected = np.empty_like(H)
    for t in range(H.shape[0]):
        A_m, A_r, B = params["A_m"], params["A_r"], params["B"]
        if dynamic:
            mu = H[t].mean(-1, keepdims=True)
            var = H[t].var(-1, keepdims=True)
            H_bar = (H[t] - mu) / np.sqrt(var + 1e-5) * params["norm_weight"] + params["norm_bias"]
            alpha = params["s_alpha"] * np.tanh(H_bar @ params["W_alpha"])
            A_m = A_m + alpha[:, 0]
            A_r = A_r + alpha[:, 1:]
            B = B + params["s_beta"] * np.tanh(H_bar @ params["W_beta"])
        expected[t] = np.outer(B, T(H[t].T @ A_m)) + A_r.T @ H[t]
    np.testing.assert_allclose(hcref.hc_site(H, params, T), expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=40)
@given(seed=seeds, m=st.integers(1, 4), e=st.integers(1, 4))
def test_fc_site_is_eq_8(seed: int, m: int, e: int) -> None:
    """FC Eq. 8 per token: ``h0 = concat_k (Y^T H)[k]``, ``H_out[j] = B_j y[j-th fraction] + (A^T H)[j]``."""
    rng = np.random.default_rng(seed)
    params = random_params("fc", m, e, rng, dynamic=False)
    H = rng.standard_normal((3, m, e))
    (T,) = _sublayers(m * e, 1, rng)
    expected = np.empty_like(H)
    for t in range(H.shape[0]):
        h0 = np.concatenate([params["Y"][:, k] @ H[t] for k in range(m)])
        y = T(h0)
        for j in range(m):
            expected[t, j] = params["B"][j] * y[j * e:(j + 1) * e] + params["A"][:, j] @ H[t]
    np.testing.assert_allclose(hcref.fc_site(H, params, T), expected, rtol=1e-12, atol=1e-12)


def test_fc_with_one_fraction_is_hc_with_one_stream() -> None:
    """FC section 3.1: m = 1 is HC x1 (same static and dynamic parameters)."""
    rng = np.random.default_rng(3)
    params = random_params("hc", 1, 6, rng, norm="rmsnorm")
    renamed = {"A_m": "Y", "A_r": "A"}  # W_alpha is (d, 2) with columns [read | mix] in both papers
    fc_params = {renamed.get(key, key): value for key, value in params.items()}
    fc_params["Y"] = params["A_m"].reshape(1, 1)
    H = rng.standard_normal((4, 1, 6))
    (T,) = _sublayers(6, 1, rng)
    np.testing.assert_allclose(
        hcref.fc_site(H, fc_params, T, norm="rmsnorm"), hcref.hc_site(H, params, T, norm="rmsnorm"), rtol=1e-14
    )


def _count(params: dict[str, np.ndarray]) -> int:
    return sum(int(np.size(value)) for value in params.values())


def test_parameter_counts_match_the_papers() -> None:
    """HC App. B: OLMo-1B (d = 2048, 16 layers = 32 sites, parameter-free norm) x4 gives
    768 extra parameters static and 394,048 dynamic; FC Eq. 19 counts ``m(2m+1)`` static and
    ``|norm| + (d/m)(2m+1) + m(2m+1) + 2`` dynamic per site."""
    d, sites = 2048, 32
    assert sum(_count(hcref.init_hc(4, d, k, dynamic=False)) for k in range(sites)) == 768
    assert sum(_count(hcref.init_hc(4, d, k, dynamic=True, norm="none")) for k in range(sites)) == 394_048
    for m in (1, 2, 4):
        e = d // m
        assert _count(hcref.init_fc(m, d, dynamic=False)) == m * (2 * m + 1)
        assert _count(hcref.init_fc(m, d, norm="rmsnorm")) == e + e * (2 * m + 1) + m * (2 * m + 1) + 2


@pytest.mark.parametrize(("n", "layer_index", "stream"), [(1, 0, 0), (4, 0, 0), (4, 1, 1), (4, 5, 1), (3, 7, 1)])
def test_init_values_are_the_papers(n: int, layer_index: int, stream: int) -> None:
    """HC Eq. 14 with a 0-based site index (``A_m = e_(k mod n)``), FC Eq. 15, gates 0.01 (D2, D3)."""
    hc = hcref.init_hc(n, 6, layer_index, norm="layernorm")
    np.testing.assert_array_equal(hc["A_m"], np.eye(n)[stream])
    np.testing.assert_array_equal(hc["A_r"], np.eye(n))
    np.testing.assert_array_equal(hc["B"], np.ones(n))
    fc = hcref.init_fc(2, 6, norm="layernorm")
    for params, cols in ((hc, n + 1), (fc, 4)):
        assert params["W_alpha"].shape[1] == cols
        assert not params["W_alpha"].any() and not params["W_beta"].any() and not params["norm_bias"].any()
        assert params["s_alpha"] == params["s_beta"] == 0.01 and params["s_alpha"].shape == ()
        np.testing.assert_array_equal(params["norm_weight"], 1.0)
    np.testing.assert_array_equal(fc["Y"], np.eye(2))
    np.testing.assert_array_equal(fc["A"], np.eye(2))
    assert set(hcref.init_hc(n, 6, 0, dynamic=False)) == {"A_m", "A_r", "B"}
    assert set(hcref.init_fc(2, 6, norm="rmsnorm")) == {"Y", "A", "B", "W_alpha", "W_beta", "s_alpha", "s_beta",
                                                          "norm_weight"}
