"""Pictures of a checkpoint (hcref.viz): the matrices behind them against hand computations (the
HC paper's unfolded connectivity, the mHC paper's Amax gain), and every picture renders from a
small checkpoint (matplotlib's Agg canvas, no display)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hcref
from hcref import checkpoint as ck
from hcref import viz

pytest.importorskip("safetensors")


def _hc_maps(A_m: list[float], A_r: list[list[float]], B: list[float]) -> viz.Maps:
    return viz.Maps("hc", np.array(A_m, float)[:, None], np.array(A_r, float), np.array(B, float)[None, :])


def test_connection_matrix_layouts() -> None:
    maps = viz.site_maps(ck.Site("s", "hc", hcref.init_hc(3, 4, 1)))
    assert maps is not None
    np.testing.assert_array_equal(viz.connection_matrix(maps), [[0, 1, 1, 1], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]])
    fc = {**hcref.init_fc(2, 4), "B": np.array([2.0, 3.0]), "Y": np.array([[1.0, 4.0], [5.0, 6.0]])}
    fc_maps = viz.site_maps(ck.Site("f", "fc", fc))
    assert fc_maps is not None
    np.testing.assert_array_equal(viz.connection_matrix(fc_maps), [[0, 0, 2, 3], [1, 4, 1, 0], [5, 6, 0, 1]])


def test_unfolded_connectivity_at_init_is_the_dense_pre_norm_pattern() -> None:
    n, L = 3, 4
    stack = [viz.site_maps(ck.Site(str(k), "hc", hcref.init_hc(n, 4, k))) for k in range(L)]
    C = viz.unfolded_connectivity([m for m in stack if m is not None])[..., 0, 0]
    # every sublayer reads the embedding and every earlier output once; the sum of n equal streams gives n
    expected = np.tril(np.ones((L + 1, L + 1)))
    expected[L] = n
    np.testing.assert_array_equal(C, expected)
    fc = [viz.site_maps(ck.Site(str(k), "fc", hcref.init_fc(2, 4))) for k in range(3)]
    Cf = viz.unfolded_connectivity([m for m in fc if m is not None])
    for t in range(4):
        for s in range(4):
            np.testing.assert_array_equal(Cf[t, s], np.eye(2) if s <= t else np.zeros((2, 2)))


def test_unfolded_connectivity_of_the_parallel_arrangement() -> None:
    """HC paper Eqs. 53-55 for n = 2 (math.md 2.7): the second site of a group does not see the first."""
    first = _hc_maps([1, 1], [[1, 1], [1, 1]], [1, 0])  # reads the sum, resets to it, writes stream 0
    second = _hc_maps([0, 1], [[1, 0], [0, 1]], [0, 1])  # reads stream 1, keeps, writes stream 1
    C = viz.unfolded_connectivity([first, second, first, second])[..., 0, 0]
    assert C[1, 1] == 0 and C[3, 3] == 0  # parallel pairs
    assert C[2, 1] == 1 and C[2, 2] == 1  # the next group reads both outputs of the previous one
    assert C[0, 0] == 2 and C[1, 0] == 2  # the embedding sits in both streams


def test_unfolded_connectivity_matches_the_papers_formula_on_random_matrices() -> None:
    rng = np.random.default_rng(0)
    n, L = 3, 5
    A_m, A_r, B = rng.standard_normal((L, n)), rng.standard_normal((L, n, n)), rng.standard_normal((L, n))
    C = viz.unfolded_connectivity([_hc_maps(A_m[k], A_r[k], B[k]) for k in range(L)])[..., 0, 0]
    for k in range(L):
        for j in range(k):  # c_kj = B^j (prod_{t=j+1}^{k-1} A_r^t) A_m^k
            row = B[j]
            for t in range(j + 1, k):
                row = row @ A_r[t]
            np.testing.assert_allclose(C[k, j + 1], row @ A_m[k], rtol=1e-12)
        assert all(C[k, s] == 0 for s in range(k + 2, L + 1))


def test_residual_gains() -> None:
    doubled = [_hc_maps([1, 0], [[2, 0], [0, 2]], [1, 1]) for _ in range(4)]
    gains = viz.residual_gains(doubled)
    np.testing.assert_array_equal(gains["composite_forward"], [2, 4, 8, 16])
    np.testing.assert_array_equal(gains["single_backward"], [2, 2, 2, 2])
    rng = np.random.default_rng(1)
    mats = [rng.standard_normal((3, 3)) for _ in range(3)]
    gains = viz.residual_gains([_hc_maps([1, 0, 0], m, [1, 1, 1]) for m in mats])
    P = mats[2].T @ mats[1].T @ mats[0].T  # R_l = A_r^T, composite R_3 R_2 R_1
    assert gains["composite_forward"][2] == pytest.approx(np.abs(P).sum(axis=1).max(), rel=1e-12)
    assert gains["composite_backward"][2] == pytest.approx(np.abs(P).sum(axis=0).max(), rel=1e-12)


def _sinkhorn(logits: np.ndarray, iters: int) -> np.ndarray:
    """The mHC paper's Sinkhorn-Knopp (columns, then rows, per iteration; math.md 4.3), for the test only."""
    M = np.exp(logits - logits.max(axis=0, keepdims=True))
    for _ in range(iters):
        M = M / M.sum(axis=0, keepdims=True)
        M = M / M.sum(axis=1, keepdims=True)
    return M


def _mhc_checkpoint(path: Path, n: int = 3, d: int = 4, depth: int = 5) -> list[np.ndarray]:
    """Static mHC sites (logits b alone, decision D9) with the static maps recorded as their means."""
    rng = np.random.default_rng(2)
    sites, h_res_all = [], []
    for k in range(depth):
        b = rng.standard_normal(2 * n + n * n)
        b[2 * n :] += 3 * np.eye(n).ravel()  # near-identity residual mixing, as an hc_like init
        h_pre = 1 / (1 + np.exp(-b[:n]))
        h_post = 2 / (1 + np.exp(-b[n : 2 * n]))
        h_res = _sinkhorn(b[2 * n :].reshape(n, n), iters=20)  # row-major (out, in)
        h_res_all.append(h_res)
        stats = {"mean_h_pre": h_pre, "mean_h_post": h_post, "mean_h_res": h_res}
        sites.append(ck.Site(f"mhc.{k}", "mhc", {"b": b}, d=d, layer_index=k, stats=stats, stats_tokens=1))
    ck.save(path, sites)
    return h_res_all


def test_mhc_gain_from_a_hand_made_checkpoint(tmp_path: Path) -> None:
    h_res = _mhc_checkpoint(tmp_path / "mhc.safetensors")
    sites = ck.load(tmp_path / "mhc.safetensors")
    for mean in (True, False):  # the recorded means, and the static maps from hcref.mhc_coeffs of b
        stack = [viz.site_maps(s, mean=mean) for s in sites]
        assert all(m is not None for m in stack)
        gains = viz.residual_gains([m for m in stack if m is not None])
        P = np.eye(3)
        for l, H in enumerate(h_res):
            P = H @ P  # x_{l+1} = h_res x_l
            assert gains["composite_forward"][l] == pytest.approx(np.abs(P).sum(axis=1).max(), rel=1e-10)
            assert gains["composite_backward"][l] == pytest.approx(np.abs(P).sum(axis=0).max(), rel=1e-10)
        # Sinkhorn ends with the row step: rows sum to 1, so the forward gain is 1 at every depth
        np.testing.assert_allclose(gains["composite_forward"], 1, rtol=1e-12)
        assert gains["composite_backward"].max() > 1 + 1e-6
    written = viz.render(sites, tmp_path / "pics")
    assert {p.name for p in written} == {"static.png", "mean.png", "connectivity-mhc.png", "gain-mhc.png"}


def test_mhc_static_maps_are_the_references(tmp_path: Path) -> None:
    h_res = _mhc_checkpoint(tmp_path / "mhc.safetensors")
    for site, expected in zip(ck.load(tmp_path / "mhc.safetensors"), h_res):
        maps = viz.site_maps(site)
        assert maps is not None
        np.testing.assert_allclose(maps.mix.T, expected, rtol=1e-10, atol=1e-12)
        b = site.params["b"]
        np.testing.assert_allclose(maps.read[:, 0], 1 / (1 + np.exp(-b[:3])), rtol=1e-12)
        np.testing.assert_allclose(maps.write[0], 2 / (1 + np.exp(-b[3:6])), rtol=1e-12)
    dynamic = ck.Site("m", "mhc", {**hcref.init_mhc(3, 4, 1), "phi": np.ones((12, 15))})
    maps = viz.site_maps(dynamic)
    assert maps is not None  # phi is set aside: the static maps of hc_like are sinkhorn(I), e_1 read
    np.testing.assert_allclose(maps.mix.T, _sinkhorn(np.eye(3), 20), rtol=1e-10)


def _hc_fc_checkpoint(path: Path) -> None:
    rng = np.random.default_rng(3)
    sites = []
    for k in range(4):
        p = hcref.init_hc(3, 8, k)
        p["A_r"] = p["A_r"] + 0.3 * rng.standard_normal((3, 3))
        p["W_alpha"] = rng.standard_normal((8, 4))
        sites.append(ck.Site(f"hc.{k}", "hc", p, layer_index=k))
    for k in range(3):
        p = hcref.init_fc(2, 8)
        p["A"] = p["A"] + 0.3 * rng.standard_normal((2, 2))
        sites.append(ck.Site(f"fc.{k}", "fc", p))
    recorder = ck.Recorder(sites)
    for s in sites:
        recorder.add(s.name, rng.standard_normal((16, s.rate, 8 if s.family == "hc" else 4)))
    ck.save(path, recorder.sites())


def test_every_picture_renders(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    _hc_fc_checkpoint(tmp_path / "a.safetensors")
    written = viz.main([str(tmp_path / "a.safetensors"), "--out", str(tmp_path / "pics")])
    names = {"static.png", "mean.png", "connectivity-hc.png", "gain-hc.png", "connectivity-fc.png", "gain-fc.png"}
    assert {p.name for p in written} == names
    for path in written:
        assert path.stat().st_size > 10_000, path
        pixels = imread(path)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 300 and pixels[..., :3].std() > 0.05, path


def test_command_line_and_missing_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    ck.save(tmp_path / "a.safetensors", [ck.Site("hc.0", "hc", hcref.init_hc(2, 4, 0, dynamic=False), d=4)])
    command = [sys.executable, "-m", "hcref.viz", str(tmp_path / "a.safetensors")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    default_out = tmp_path / "a-pictures"
    names = ("static.png", "connectivity-hc.png", "gain-hc.png")
    assert done.stdout.split()[-3:] == [str(default_out / n) for n in names]
    assert "no recorded mean coefficients" in done.stdout
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "hcref\[viz\]"'):
        viz.render(ck.load(tmp_path / "a.safetensors"), tmp_path / "x")
    with pytest.raises(SystemExit) as exit_info:
        viz.main([str(tmp_path / "a.safetensors"), "--out", str(tmp_path / "y")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        viz.main([str(tmp_path / "nope.safetensors")])
