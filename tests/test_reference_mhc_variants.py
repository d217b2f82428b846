"""Where public mHC implementations differ from the paper (decision D14): one small input per
difference, the reference against a few-line transcription of the variant written here. The
numbers asserted are the ones README quotes; each expected value is derived by hand in the
docstring (or by the variant's transcription), never read from hcref."""

from __future__ import annotations

import math

import numpy as np

import hcref


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def sinkhorn_paper(Z: np.ndarray, iters: int) -> np.ndarray:
    """mHC Eq. 9: exp, then iters x (columns, rows); rows exact."""
    M = np.exp(Z)
    for _ in range(iters):
        M = M / M.sum(axis=-2, keepdims=True)
        M = M / M.sum(axis=-1, keepdims=True)
    return M


def sinkhorn_rows_first(Z: np.ndarray, iters: int) -> np.ndarray:
    """lucidrains (and the mHC packages on PyPI): on ``comb[in, out] = Z^T`` it normalises dim -2
    then dim -1, i.e. in ``h_res[out, in]`` orientation rows first, columns last."""
    comb = np.swapaxes(Z, -1, -2)
    A = np.exp(comb - comb.max(axis=-2, keepdims=True))
    for _ in range(iters):
        A = A / A.sum(axis=-2, keepdims=True)
        A = A / A.sum(axis=-1, keepdims=True)
    return np.swapaxes(A, -1, -2)


def test_rows_then_columns_sinkhorn() -> None:
    """Z = [[8, 0], [8, -8]], 20 iterations: the paper's rows sum to 1 (forward gain 1); the
    rows-first variant's columns do and its rows sum to 1.0179 and 0.9821, 0.0177 away from the
    paper's matrix entry by entry."""
    Z = np.array([[8.0, 0.0], [8.0, -8.0]])
    paper = hcref.sinkhorn(Z, iters=20)
    np.testing.assert_allclose(paper, sinkhorn_paper(Z, 20), rtol=1e-13)
    variant = sinkhorn_rows_first(Z, 20)
    np.testing.assert_allclose(paper.sum(axis=-1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(variant.sum(axis=-2), 1.0, rtol=1e-15)
    np.testing.assert_allclose(variant.sum(axis=-1), [1.0179, 0.9821], atol=5e-5)
    assert abs(np.abs(paper - variant).max() - 0.0177) < 5e-5
    np.testing.assert_allclose(paper, [[0.0285, 0.9715], [0.9887, 0.0113]], atol=5e-5)
    np.testing.assert_allclose(variant, [[0.0290, 0.9889], [0.9710, 0.0111]], atol=5e-5)


def _probe_params(n: int, d: int) -> dict[str, np.ndarray]:
    """phi reads the first entry of the scaled state into the pre logit of stream 0; gates 1, b 0."""
    phi = np.zeros((n * d, 2 * n + n * n))
    phi[0, 0] = 1.0
    return {"phi": phi, "b": np.zeros(2 * n + n * n), "gates": np.ones(3)}


def test_rms_without_epsilon() -> None:
    """n = 2, d = 1, H = [[a], [a]]: ``h_pre[0] = sigmoid(a / sqrt(a^2 + 1e-6))``. a = 1e-3:
    sigmoid(1/sqrt(2)) = 0.6698 (without epsilon: sigmoid(1) = 0.7311); a = 0 (a padding token):
    sigmoid(0) = 0.5 (without epsilon: 0/0 = NaN in every coefficient)."""
    params = _probe_params(2, 1)

    def without_eps(H: np.ndarray) -> float:
        v = H.reshape(-1)
        with np.errstate(invalid="ignore"):
            z = (v / np.sqrt(np.mean(v * v))) @ params["phi"]
        return sigmoid(float(z[0]))

    H = np.full((2, 1), 1e-3)
    assert abs(hcref.mhc_coeffs(H, params)[0][0] - sigmoid(1 / math.sqrt(2))) < 1e-15
    assert round(sigmoid(1 / math.sqrt(2)), 4) == 0.6698 and round(without_eps(H), 4) == 0.7311
    zero = np.zeros((2, 1))
    assert all(np.all(np.isfinite(c)) for c in hcref.mhc_coeffs(zero, params))
    assert hcref.mhc_coeffs(zero, params)[0][0] == 0.5 and math.isnan(without_eps(zero))


def test_per_stream_instead_of_flattened_projection() -> None:
    """n = 2, d = 2, H = [[1, 1], [3, 3]]: the flattened RMS is sqrt(5), so ``h_pre[0] =
    sigmoid(1/sqrt(5)) = 0.6100``; a per-stream RMS scales each stream to 1 and gives
    sigmoid(1) = 0.7311, the same as for [[1, 1], [30, 30]]: it cannot see the streams' relative scale."""
    params = _probe_params(2, 2)

    def per_stream(H: np.ndarray) -> float:
        H_hat = H / np.sqrt(np.mean(H * H, axis=-1, keepdims=True) + 1e-6)
        return sigmoid(float((H_hat.reshape(-1) @ params["phi"])[0]))

    H = np.array([[1.0, 1.0], [3.0, 3.0]])
    got = hcref.mhc_coeffs(H, params)[0][0]
    assert abs(got - sigmoid(1 / math.sqrt(5 + 1e-6))) < 1e-15 and round(got, 4) == 0.6100
    assert round(per_stream(H), 4) == 0.7311 and per_stream(H) == per_stream(np.array([[1.0, 1.0], [30.0, 30.0]]))
    assert hcref.mhc_coeffs(np.array([[1.0, 1.0], [30.0, 30.0]]), params)[0][0] < 0.53


def test_pre_res_post_column_order() -> None:
    """The hc_like init of n = 2, site 0, ``b = [1, 0 | 0, 0 | 1, 0, 0, 1]`` (pre | post | res), read
    as [pre | res | post]: res = [[0, 0], [1, 0]] and post = [0, 1]. Paper: h_post = [1, 1] and
    h_res -> e/(1+e) = 0.7311 on the diagonal (exp(I) has cross ratio e^2); variant: h_post =
    [1, 2 sigmoid(1)] = [1, 1.4621] and h_res -> 1/(1+sqrt(e)) = 0.3775 on the diagonal (cross
    ratio 1/e): it mostly swaps the streams."""
    n = 2
    b = hcref.init_mhc(n, 1, 0, dynamic=False)["b"]
    np.testing.assert_array_equal(b, [1, 0, 0, 0, 1, 0, 0, 1])
    h_pre, h_post, h_res = hcref.mhc_coeffs(np.zeros((n, 1)), {"b": b})
    np.testing.assert_allclose(h_pre, [sigmoid(1.0), 0.5], rtol=1e-15)  # pre is read the same in both orders
    np.testing.assert_allclose(h_post, [1.0, 1.0], rtol=1e-15)
    np.testing.assert_allclose(np.diag(h_res), math.e / (1 + math.e), rtol=1e-12)
    res_wrong, post_wrong = b[n:n + n * n].reshape(n, n), b[n + n * n:]
    variant_post = 2 / (1 + np.exp(-post_wrong))
    variant_res = sinkhorn_paper(res_wrong, 20)
    np.testing.assert_allclose(variant_post, [1.0, 2 * sigmoid(1.0)], rtol=1e-15)
    np.testing.assert_allclose(np.diag(variant_res), 1 / (1 + math.sqrt(math.e)), rtol=1e-12)
    assert round(2 * sigmoid(1.0), 4) == 1.4621 and round(1 / (1 + math.sqrt(math.e)), 4) == 0.3775


def test_nan_above_88_from_a_plain_exp() -> None:
    """float32: exp(89) = inf. A sigmoid written exp(x) / (1 + exp(x)) gives inf/inf = NaN at x = 89
    (the reference: 1.0); a Sinkhorn started with a plain exp on Z = [[89, 0], [0, 0]] gives NaN
    after its first column step; the reference gives the exact answer, P[0, 1] = 1/(2 iters + 1)
    up to terms of e^-89 (1/41 = 0.02439 after 20 iterations: every iteration moves 1/(2t+1))."""
    x = np.float32(89.0)
    with np.errstate(over="ignore", invalid="ignore"):
        assert math.isnan(np.exp(x) / (1 + np.exp(x)))
        Z = np.array([[89.0, 0.0], [0.0, 0.0]], np.float32)
        assert np.isnan(sinkhorn_paper(Z, 1)).any()
    b = np.zeros(8, np.float32)
    b[0] = 89.0
    assert hcref.mhc_coeffs(np.zeros((2, 1), np.float32), {"b": b})[0][0] == 1.0
    for iters in (1, 3, 20):
        P = hcref.sinkhorn(Z, iters=iters)
        assert P.dtype == np.float32 and np.all(np.isfinite(P))
        # float32 logits of 89 carry an absolute error of about 89 * 2^-23 (their conditioning): rtol 4x that
        np.testing.assert_allclose(P[0], [1 - 1 / (2 * iters + 1), 1 / (2 * iters + 1)],
                                   rtol=4 * 89 * np.finfo(np.float32).eps)
