"""The numbers that docs/spec/public-implementations.md quotes are what the described
computations give: recomputed here in plain NumPy from the page's descriptions (the paper's side
from the reference where it exists), and the lucidrains examples against the library itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import hcref

PAGE = (Path(__file__).resolve().parents[1] / "docs" / "spec" / "public-implementations.md").read_text()
Z = np.array([[((4 * i + j) % 5) - 2 for j in range(4)] for i in range(4)], dtype=np.float64)
X = np.array([1.541, -0.293, -2.179, 0.568])


def _sinkhorn(Z: np.ndarray, iters: int, columns_first: bool) -> np.ndarray:
    P = np.exp(Z - Z.max())
    first, last = (0, 1) if columns_first else (1, 0)  # axis 0 sums a column, axis 1 a row
    for _ in range(iters):
        P = P / P.sum(axis=first, keepdims=True)
        P = P / P.sum(axis=last, keepdims=True)
    return P


def _fmt(values: np.ndarray) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def _page_row(iters: int) -> str:
    (row,) = [line for line in PAGE.splitlines() if line.startswith(f"| {iters} |")]
    return row


def test_the_page_shows_the_input_it_describes() -> None:
    assert "Z_{ij} = ((4i + j) \\bmod 5) - 2" in PAGE
    rows = [" & ".join(str(int(v)) for v in row) for row in Z]
    assert " \\\\ ".join(rows) in PAGE


@pytest.mark.parametrize("iters", [1, 3])
def test_sinkhorn_order_table(iters: int) -> None:
    paper, rows_first = _sinkhorn(Z, iters, True), _sinkhorn(Z, iters, False)
    np.testing.assert_allclose(paper.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(rows_first.sum(axis=0), 1.0, rtol=0, atol=1e-15)
    row = _page_row(iters)
    assert _fmt(paper.sum(axis=0)) in row and _fmt(rows_first.sum(axis=1)) in row, row
    assert f"| {np.abs(paper - rows_first).max():.4f} |" in row, row


def test_sinkhorn_orders_after_20_iterations() -> None:
    paper, rows_first = _sinkhorn(Z, 20, True), _sinkhorn(Z, 20, False)
    assert np.abs(paper.sum(axis=0) - 1).max() < 1e-7 and np.abs(rows_first.sum(axis=1) - 1).max() < 1e-7
    assert f"| {np.abs(paper - rows_first).max():.1e} |".replace("e-08", "e-8") in _page_row(20)


def test_rmsnorm_with_and_without_eps() -> None:
    x = np.full((1, 8), 1e-4)
    with_eps = hcref.rmsnorm(x, np.ones(8), eps=1e-6)
    without = x / max(np.linalg.norm(x), 1e-12) * np.sqrt(8)
    assert f"{with_eps[0, 0]:.4f}" == "0.0995" and "\\approx 0.0995" in PAGE
    np.testing.assert_allclose(without, 1.0)


def test_fc_paper_side_from_the_reference() -> None:
    H = hcref.frac_split(X, 2)
    alpha, beta = hcref.fc_coeffs(H, hcref.init_fc(2, 4, dynamic=True))
    h0, H_res = hcref.fc_width(H, alpha)
    np.testing.assert_array_equal(h0, X)
    added = hcref.frac_merge(hcref.fc_depth(np.ones(4), H_res, beta)) - X
    np.testing.assert_allclose(added, 1.0, atol=1e-15)
    assert "$(1.541, -0.293, -2.179, 0.568)$: $Y = I$" in PAGE and "$(1, 1, 1, 1)$" in PAGE


def test_fc_lucidrains_side_against_the_library() -> None:
    torch = pytest.importorskip("torch")
    lucidrains = pytest.importorskip("hyper_connections.hyper_connections", reason="lucidrains' library (dev extra)")
    site = lucidrains.HyperConnections(1, dim=4, num_fracs=2, layer_index=0)
    x = torch.tensor(X, dtype=torch.float64).reshape(1, 1, 4)
    site = site.double()
    branch_input, add_residual = site(x)
    np.testing.assert_allclose(branch_input.detach().numpy().ravel(), [1.541, -0.293, 1.541, -0.293])
    added = (add_residual(torch.ones_like(branch_input)) - x).detach().numpy().ravel()
    np.testing.assert_allclose(added, 2.0)
    assert "$(1.541, -0.293, 1.541, -0.293)$" in PAGE and "$(2, 2, 2, 2)$" in PAGE
    rms = lucidrains.RMSNorm(8).double()(torch.full((1, 8), 1e-4, dtype=torch.float64))
    np.testing.assert_allclose(rms.detach().numpy(), 1.0)
