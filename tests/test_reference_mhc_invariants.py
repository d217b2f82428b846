"""The mHC paper's claims and the invariants of decisions D7-D10, checked on the reference (math.md
4.2-4.5, 8), each against a computation written here independently of hcref's mHC code."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

import hcref
from hcref.checks import random_params
from hcref.network import init_mlp, mlp, stack

# --- independent transcriptions (plain Python / plain NumPy, not hcref's code) ---------------


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(math.fsum(math.exp(x - m) for x in values))


def sinkhorn_python(Z: np.ndarray, iters: int) -> np.ndarray:
    """The paper's Sinkhorn in the log domain, one matrix, plain Python floats: alternately
    subtract every column's logsumexp, then every row's; output exp."""
    L = [[float(x) for x in row] for row in Z]
    n = len(L)
    for _ in range(iters):
        for j in range(n):
            c = _logsumexp([L[i][j] for i in range(n)])
            for i in range(n):
                L[i][j] -= c
        for i in range(n):
            r = _logsumexp(L[i])
            L[i] = [x - r for x in L[i]]
    return np.array([[math.exp(x) for x in row] for row in L])


def sinkhorn_linear(Z: np.ndarray, iters: int) -> np.ndarray:
    """The paper's Eq. 9 as printed: ``M = exp(Z)``, then ``iters`` x (columns, rows)."""
    M = np.exp(Z)
    for _ in range(iters):
        M = M / M.sum(axis=-2, keepdims=True)
        M = M / M.sum(axis=-1, keepdims=True)
    return M


def v4_port(Z: np.ndarray, iters: int, eps: float) -> np.ndarray:
    """DeepSeek-V4's ``hc_split_sinkhorn`` as the ports write it, on ``comb[in, out] = Z^T``
    (math.md 4.5): softmax over out (-1) + eps, divide by sums over in (-2) + eps, then
    (iters - 1) x [sums over out + eps, sums over in + eps]. Returned as ``h_res = comb^T``."""
    comb = np.swapaxes(Z, -1, -2)
    comb = np.exp(comb - comb.max(axis=-1, keepdims=True))
    comb = comb / comb.sum(axis=-1, keepdims=True) + eps
    comb = comb / (comb.sum(axis=-2, keepdims=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(axis=-1, keepdims=True) + eps)
        comb = comb / (comb.sum(axis=-2, keepdims=True) + eps)
    return np.swapaxes(comb, -1, -2)


def coeffs_per_token(H: np.ndarray, params: dict[str, np.ndarray], iters: int) -> tuple[np.ndarray, ...]:
    """mHC paper Eqs. 7-9 for one token (n, d), textbook RMS without weight (eps 1e-6)."""
    n = H.shape[0]
    if "phi" in params:
        v = H.reshape(-1)
        z = (v / np.sqrt(np.mean(v * v) + 1e-6)) @ params["phi"]
        a_pre, a_post, a_res = params["gates"]
        logits = np.concatenate([a_pre * z[:n], a_post * z[n:2 * n], a_res * z[2 * n:]]) + params["b"]
    else:
        logits = params["b"]
    h_pre = 1 / (1 + np.exp(-logits[:n]))
    h_post = 2 / (1 + np.exp(-logits[n:2 * n]))
    return h_pre, h_post, sinkhorn_linear(logits[2 * n:].reshape(n, n), iters)


def _invariant_sublayers(d: int, count: int, rng: np.random.Generator) -> list[Any]:
    """Pre-Norm MLPs whose RMSNorm has eps = 0: ``T(c h) = T(h)`` for every c > 0 (math.md 4.4)."""
    weights = [init_mlp(d, 2 * d, rng) for _ in range(count)]
    return [lambda h, w=w: mlp(w, h, eps=0.0) for w in weights]


def _residual(x: np.ndarray, sublayers: list[Any]) -> np.ndarray:
    for sublayer in sublayers:
        x = x + sublayer(x)
    return x


# --- Sinkhorn ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_rows_sum_to_one(dtype: type) -> None:
    """Paper order ends with the row step: rows sum to 1 after any iters (to rounding: 2 ulps),
    also with a row 1e4 below the others."""
    rng = np.random.default_rng(0)
    Z = (5 * rng.standard_normal((60, 8, 8))).astype(dtype)
    if dtype != np.float16:
        Z[::3, 2, :] -= dtype(1e4)
    for iters in (1, 2, 3, 20):
        P = hcref.sinkhorn(Z, iters=iters)
        assert P.dtype == dtype
        row_error = np.abs(P.astype(np.float64).sum(axis=-1) - 1).max()
        assert row_error <= 2 * np.finfo(dtype).eps, (iters, row_error)


def test_columns_approach_one_as_iters_grows() -> None:
    """Column sums are only approximately 1; on 64 random 4x4 N(0, 1) logits their worst error
    was 0.378, 0.0693, 3.2e-6, 6.7e-14, 4.4e-16 after 1, 3, 20, 50, 100 iterations."""
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((64, 4, 4))
    errors = [np.abs(hcref.sinkhorn(Z, iters=k).sum(axis=-2) - 1).max() for k in (1, 3, 20, 50, 100)]
    assert all(a > b for a, b in itertools.pairwise(errors[:4])), errors
    assert errors[0] > 0.1 and 1e-7 < errors[2] < 1e-4 and errors[4] < 4 * np.finfo(float).eps


def test_invariant_to_a_per_column_constant_not_to_a_per_row_one() -> None:
    """Adding c_j to column j of the logits is cancelled by the first column step (math.md 4.3);
    adding a per-row constant is not (only in the limit)."""
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((20, 5, 5))
    shift = 30 * rng.standard_normal((20, 1, 5))
    for iters in (1, 3, 20):
        for eps in (0.0, 1e-6):  # V4 starts with a softmax over out: per column, so alike
            np.testing.assert_allclose(
                hcref.sinkhorn(Z + shift, iters=iters, eps=eps), hcref.sinkhorn(Z, iters=iters, eps=eps),
                rtol=1e-13, atol=1e-15)
    row_shift = np.swapaxes(shift, -1, -2)
    assert np.abs(hcref.sinkhorn(Z + row_shift, iters=3) - hcref.sinkhorn(Z, iters=3)).max() > 1e-3


def test_paper_n4_values_for_identity_logits() -> None:
    """math.md 4.4 / 8.4: Sinkhorn(exp(I)) for n = 4 has diagonal e/(e+3) = 0.47536 and
    off-diagonal 1/(e+3) = 0.17488 (five decimals as quoted; e/(e+3) = 0.4753669,
    1/(e+3) = 0.1748777), already doubly stochastic after one step."""
    for iters in (1, 20):
        P = hcref.sinkhorn(np.eye(4), iters=iters)
        assert abs(P[0, 0] - 0.47536) < 1e-5 and abs(P[0, 1] - 0.17488) < 1e-5
        np.testing.assert_allclose(np.diag(P), math.e / (math.e + 3), rtol=1e-15)
        np.testing.assert_allclose(P[~np.eye(4, dtype=bool)], 1 / (math.e + 3), rtol=1e-15)


def test_log_domain_equals_the_linear_iteration_at_ordinary_logits() -> None:
    """D7: the log domain is the same function as Eq. 9 computed with exp and divisions."""
    rng = np.random.default_rng(2)
    Z = 3 * rng.standard_normal((30, 6, 6))
    for iters in (1, 3, 20):
        np.testing.assert_allclose(hcref.sinkhorn(Z, iters=iters), sinkhorn_linear(Z, iters), rtol=1e-13)


def _extreme_cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    spread = rng.uniform(-80, 80, (4, 4))  # 160 apart: exp of the spread overflows float32 and float64's 1/x
    row = rng.standard_normal((4, 4))
    row[1] -= 1e4  # a plain exp underflows this row to 0 and T_r divides 0 by 0
    column = rng.standard_normal((4, 4))
    column[:, 2] -= 1e4
    both = rng.standard_normal((5, 5))
    both[0] -= 1e4
    both[:, 3] += 1e4
    return [("spread 160", spread), ("row 1e4 below", row), ("column 1e4 below", column), ("row and column", both)]


@pytest.mark.parametrize(("label", "Z"), _extreme_cases(), ids=[c[0] for c in _extreme_cases()])
def test_extreme_logits_are_finite_and_exact(label: str, Z: np.ndarray) -> None:
    """Finite and equal, entry by entry, to a plain-Python log-domain computation in float64.
    Relative error allowed: the conditioning of the input, |Z| * 2^-52 (2e-12 at 1e4), times 8."""
    rtol = 8 * np.abs(Z).max() * np.finfo(float).eps
    for iters in (1, 3, 20):
        P = hcref.sinkhorn(Z, iters=iters)
        assert np.all(np.isfinite(P)) and np.all(P >= 0)
        np.testing.assert_allclose(P, sinkhorn_python(Z, iters), rtol=rtol, atol=0)
        (g_Z,) = hcref.sinkhorn_vjp(Z, np.ones_like(Z) + np.arange(Z.size).reshape(Z.shape), iters=iters)
        assert np.all(np.isfinite(g_Z))


def test_extreme_logits_in_float32_stay_close_to_float64() -> None:
    """In float32 a logit of 1e4 carries an absolute error of 1e-3 (its ulp), so P is only that
    accurate relative to the float64 answer on the same rounded input; it is finite and its rows
    sum to 1."""
    for label, Z in _extreme_cases():
        Z32 = Z.astype(np.float32)
        P = hcref.sinkhorn(Z32, iters=20)
        assert np.all(np.isfinite(P)), label
        np.testing.assert_allclose(P, sinkhorn_python(Z32.astype(np.float64), 20),
                                   rtol=4 * np.abs(Z).max() * np.finfo(np.float32).eps, atol=1e-30, err_msg=label)


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_v4_recipe_is_the_ports_transcription_transposed(eps: float) -> None:
    """eps > 0 is DeepSeek-V4's hc_split_sinkhorn on comb[in, out] = h_res^T (math.md 4.5);
    eps = 1e-2 makes a misplaced eps term visible."""
    rng = np.random.default_rng(4)
    Z = 2 * rng.standard_normal((10, 4, 4))
    for iters in (1, 2, 20):
        np.testing.assert_allclose(hcref.sinkhorn(Z, iters=iters, eps=eps), v4_port(Z, iters, eps),
                                   rtol=1e-14, atol=0)


def test_v4_and_the_paper_differ_by_the_eps_terms_only() -> None:
    """math.md 4.5: V4's recipe (eps = 1e-6) and the paper differ by a few eps (measured 2.6e-6
    on these logits), and not at all in the limit eps -> 0."""
    rng = np.random.default_rng(5)
    Z = rng.standard_normal((10, 4, 4))
    gap = np.abs(hcref.sinkhorn(Z, eps=1e-6) - hcref.sinkhorn(Z)).max()
    assert 1e-7 < gap < 1e-5, gap
    assert np.abs(hcref.sinkhorn(Z, eps=1e-14) - hcref.sinkhorn(Z)).max() < 1e-13


# --- coefficients, sites, head -------------------------------------------------------------


@pytest.mark.parametrize(("n", "dynamic", "iters"), [(1, True, 20), (2, False, 3), (3, True, 1), (4, True, 20),
                                                     (4, False, 20), (6, True, 5)])
def test_mhc_coeffs_is_eqs_7_to_9_per_token(n: int, dynamic: bool, iters: int) -> None:
    rng = np.random.default_rng(n)
    d = 5
    params = random_params("mhc", n, d, rng, dynamic=dynamic)
    H = rng.standard_normal((2, 3, n, d))
    got = hcref.mhc_coeffs(H, params, iters=iters)
    for t in itertools.product(range(2), range(3)):
        for value, expected in zip((g[t] for g in got), coeffs_per_token(H[t], params, iters), strict=True):
            np.testing.assert_allclose(value, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_mhc_site_is_eq_3_per_token(n: int) -> None:
    """``x_{l+1} = H_res x_l + H_post^T F(H_pre x_l)``, mHC paper Eq. 3, for one token at a time."""
    rng = np.random.default_rng(10 + n)
    d = 6
    params = random_params("mhc", n, d, rng)
    (F,) = _invariant_sublayers(d, 1, rng)
    H = rng.standard_normal((4, n, d))
    got = hcref.mhc_site(H, params, F, iters=7)
    for t in range(4):
        h_pre, h_post, h_res = coeffs_per_token(H[t], params, 7)
        expected = h_res @ H[t] + np.outer(h_post, F(h_pre @ H[t]))
        np.testing.assert_allclose(got[t], expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_mhc_head_is_a_per_token_weighted_sum(eps: float) -> None:
    """V4's hc_head: ``w = sigmoid(gate (v' phi) + b) + eps``, ``x = sum_i w_i H[i]``, per token."""
    rng = np.random.default_rng(6)
    n, d = 4, 3
    params = random_params("mhc_head", n, d, rng)
    H = rng.standard_normal((5, n, d))
    got = hcref.mhc_head(H, params, eps=eps)
    for t in range(5):
        v = H[t].reshape(-1)
        z = v / np.sqrt(np.mean(v * v) + 1e-6) @ params["phi"]
        w = 1 / (1 + np.exp(-(params["gate"] * z + params["b"]))) + eps
        np.testing.assert_allclose(got[t], sum(w[i] * H[t, i] for i in range(n)), rtol=1e-13, atol=1e-15)


def test_static_equals_dynamic_with_zero_phi() -> None:
    """phi = 0 leaves the logits ``gates * 0 + b = b``: bit for bit the static site, whatever the gates."""
    rng = np.random.default_rng(7)
    for n, iters, eps in itertools.product((1, 3, 4), (1, 20), (0.0, 1e-6)):
        params = random_params("mhc", n, 4, rng)
        params["phi"] = np.zeros_like(params["phi"])
        H = rng.standard_normal((3, n, 4))
        for dyn, stat in zip(hcref.mhc_coeffs(H, params, iters=iters, eps=eps),
                             hcref.mhc_coeffs(H, {"b": params["b"]}, iters=iters, eps=eps), strict=True):
            np.testing.assert_array_equal(dyn, stat)


@pytest.mark.parametrize(("preset", "dynamic"), list(itertools.product(("hc_like", "zero"), (True, False))))
def test_site_at_init_is_a_prenorm_step(preset: str, dynamic: bool) -> None:
    """math.md 4.4: equal streams, b_post = 0 and phi = 0: ``h_res x = x`` (rows sum to 1) and
    ``F((sum h_pre) h) = F(h)`` for a scale-invariant F, so every stream becomes ``h + F(h)``."""
    rng = np.random.default_rng(8)
    d = 6
    for n, layer_index in itertools.product(range(1, 7), (0, 1, 5)):
        x = rng.standard_normal((3, d))
        (F,) = _invariant_sublayers(d, 1, rng)
        params = hcref.init_mhc(n, d, layer_index, preset=preset, dynamic=dynamic)
        out = hcref.mhc_site(hcref.expand(x, n), params, F)
        for stream in range(n):
            np.testing.assert_allclose(out[:, stream], x + F(x), rtol=1e-14, atol=1e-14)


def test_network_at_init_is_n_times_the_prenorm_stack() -> None:
    """Every site stays Pre-Norm, so ``reduce / n`` of an mHC stack (sum reduce, A15) is the
    Pre-Norm stack's output; the lucidrains preset is not (its branch is scaled by 2 sigmoid(1))."""
    rng = np.random.default_rng(9)
    d = 8
    for n, sites in ((1, 3), (2, 5), (4, 6), (5, 2)):
        x = rng.standard_normal((2, 3, d))
        subs = _invariant_sublayers(d, sites, rng)
        for preset in ("hc_like", "zero"):
            conns = [hcref.init_mhc(n, d, k, preset=preset) for k in range(sites)]
            out = stack(x, subs, mode="mhc", connections=conns, rate=n)
            np.testing.assert_allclose(out / n, _residual(x, subs), rtol=1e-13, atol=1e-13)
    (F,) = subs[:1]
    out = hcref.mhc_site(hcref.expand(x, 4), hcref.init_mhc(4, d, 0, preset="lucidrains"), F)
    np.testing.assert_allclose(out[..., 0, :], x + 2 / (1 + math.exp(-1)) * F(x), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_init_presets_give_the_documented_coefficients(n: int) -> None:
    """D10 presets: hc_like ``h_pre = sigmoid(1) = 0.7311`` on stream k mod n and 1/2 elsewhere,
    ``h_post = 1``, ``h_res = sinkhorn(I)`` (diagonal e/(e+n-1)); zero ``h_res = J/n``; lucidrains
    ``h_post = 2 sigmoid(1) = 1.4621``. Gates 0.01, phi 0, static = ``{b}``."""
    d, k = 3, 6
    H = np.random.default_rng(n).standard_normal((2, n, d))
    for preset in ("hc_like", "zero", "lucidrains"):
        params = hcref.init_mhc(n, d, k, preset=preset)
        assert sorted(params) == ["b", "gates", "phi"]
        assert params["phi"].shape == (n * d, 2 * n + n * n) and not params["phi"].any()
        np.testing.assert_array_equal(params["gates"], [0.01, 0.01, 0.01])
        assert list(hcref.init_mhc(n, d, k, preset=preset, dynamic=False)) == ["b"]
        h_pre, h_post, h_res = hcref.mhc_coeffs(H, params)
        expected_pre = np.full(n, 0.5)
        if preset != "zero":
            expected_pre[k % n] = 1 / (1 + math.exp(-1))
        np.testing.assert_allclose(h_pre[0], expected_pre, rtol=1e-15)
        np.testing.assert_allclose(h_post[1], 2 / (1 + math.exp(-1)) if preset == "lucidrains" else 1.0, rtol=1e-15)
        if preset == "zero":
            np.testing.assert_allclose(h_res[0], np.full((n, n), 1 / n), rtol=1e-15)
        else:
            np.testing.assert_allclose(np.diag(h_res[1]), math.e / (math.e + n - 1), rtol=1e-15)


def test_init_mhc_head_is_half_the_sum_reduce() -> None:
    """Our head init (phi = 0, b = 0, gate = 0.01) weighs every stream sigmoid(0) = 1/2."""
    rng = np.random.default_rng(11)
    for n in (1, 2, 4):
        head = hcref.init_mhc_head(n, 5)
        assert {key: value.shape for key, value in head.items()} == {"phi": (5 * n, n), "b": (n,), "gate": ()}
        H = rng.standard_normal((3, n, 5))
        np.testing.assert_array_equal(hcref.mhc_head(H, head), hcref.reduce(H) / 2)


# --- precision (D12) and extreme values ------------------------------------------------------


def test_float32_logits_of_1e4_give_no_nan() -> None:
    """Stable sigmoid and log-domain Sinkhorn: float32 logits of +-1e4 (a plain exp overflows
    above 88) give finite coefficients, head weights and gradients."""
    n, d = 4, 3
    b = np.where(np.arange(2 * n + n * n) % 2, 1e4, -1e4).astype(np.float32)
    H = np.random.default_rng(12).standard_normal((2, n, d)).astype(np.float32)
    dynamic = {"phi": np.full((n * d, b.size), 3e3, np.float32), "b": b, "gates": np.full(3, 1.0, np.float32)}
    for params in ({"b": b}, dynamic):
        for eps in (0.0, 1e-6):
            out = hcref.mhc_coeffs(H, params, eps=eps)
            assert all(o.dtype == np.float32 and np.all(np.isfinite(o)) for o in out)
            grads = hcref.mhc_coeffs_vjp(H, params, *(np.ones_like(o) for o in out), eps=eps)
            assert np.all(np.isfinite(grads[0])) and all(np.all(np.isfinite(g)) for g in grads[1].values())
        h_pre = hcref.mhc_coeffs(H, params)[0]
        np.testing.assert_array_equal(h_pre[0], np.where(b[:n] > 0, 1.0, 0.0))
    head = {"phi": np.zeros((n * d, n), np.float32), "b": b[:n], "gate": np.float32(1)}
    x = hcref.mhc_head(H, head)
    np.testing.assert_array_equal(x, H[:, 1] + H[:, 3])
    Z = np.array([[1e4, -1e4], [-1e4, 89.0]], np.float32)
    assert np.all(np.isfinite(hcref.sinkhorn(Z))) and np.all(np.isfinite(hcref.sinkhorn_vjp(Z, Z)[0]))


def test_mixed_precision_dtypes() -> None:
    """D12: coefficients in the promoted dtype; mhc_pre and mhc_head in H's dtype; mhc_post in
    promote(y, H); half inputs computed in float32 and rounded once; cotangents in their inputs' dtypes."""
    rng = np.random.default_rng(13)
    n, d = 4, 8
    H16 = rng.standard_normal((3, n, d)).astype(np.float16)
    y16 = rng.standard_normal((3, d)).astype(np.float16)
    params = {key: value.astype(np.float32) for key, value in random_params("mhc", n, d, rng).items()}
    coeffs = hcref.mhc_coeffs(H16, params)
    assert [c.dtype for c in coeffs] == [np.float32] * 3
    exact = hcref.mhc_coeffs(H16.astype(np.float64), {k: v.astype(np.float64) for k, v in params.items()})
    for c, e in zip(coeffs, exact, strict=True):
        np.testing.assert_allclose(c, e, rtol=2e-6, atol=1e-6)
    h_pre, h_post, h_res = coeffs
    h0 = hcref.mhc_pre(H16, h_pre)
    assert h0.dtype == np.float16
    h0_exact = np.einsum("...i,...ic->...c", h_pre.astype(np.float64), H16.astype(np.float64))
    assert np.abs(h0.astype(np.float64) - h0_exact).max() <= np.abs(h0_exact).max() * 2.0**-11
    out = hcref.mhc_post(y16, H16, h_post, h_res)
    assert out.dtype == np.float16
    assert hcref.mhc_post(y16.astype(np.float32), H16, h_post, h_res).dtype == np.float32
    out_exact = h_res.astype(np.float64) @ H16.astype(np.float64) + h_post[..., None] * y16[..., None, :]
    assert np.abs(out.astype(np.float64) - out_exact).max() <= np.abs(out_exact).max() * 2.0**-11
    head = {key: value.astype(np.float32) for key, value in random_params("mhc_head", n, d, rng).items()}
    assert hcref.mhc_head(H16, head).dtype == np.float16
    assert hcref.sinkhorn(h_res.astype(np.float16)).dtype == np.float16
    g_H, g_p = hcref.mhc_coeffs_vjp(H16, params, *(np.ones_like(c) for c in coeffs))
    assert g_H.dtype == np.float16 and all(g.dtype == np.float32 for g in g_p.values())
    grads = hcref.mhc_post_vjp(y16, H16, h_post, h_res, np.ones_like(out))
    assert [g.dtype for g in grads] == [np.float16, np.float16, np.float32, np.float32]
    assert [g.dtype for g in hcref.mhc_pre_vjp(H16, h_pre, np.ones_like(h0))] == [np.float16, np.float32]
