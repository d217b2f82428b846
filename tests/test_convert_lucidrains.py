"""Converters between lucidrains' hyper-connections (0.4.11) and hcref (hcref.lucidrains, hcref_torch.lucidrains).

HC: converted weights give lucidrains' own outputs up to its missing RMSNorm epsilon (and exactly,
to float64 roundoff, against an oracle with that epsilon set to 0); hcref -> lucidrains -> hcref
returns the same bits. FC: read and mix agree, the write is refused unless asked for, and then
differs by exactly the off-diagonal terms the docs name. Everything that does not map is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hyper_connections = pytest.importorskip("hyper_connections")

import hcref_torch as ht
import hcref_torch.checkpoint as tc
import hcref_torch.lucidrains as lr
from hyper_connections import HyperConnections as LucidHC
from hyper_connections.hyper_connections import get_init_and_expand_reduce_stream_functions

import hcref
from hcref import checkpoint as ck
from hcref import lucidrains as core


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _lucid_site(lucid: torch.nn.Module, H: torch.Tensor, branch: torch.nn.Module) -> torch.Tensor:
    """lucidrains' site on hcref-layout streams (batch, time, n, d), returned in the same layout."""
    n = H.shape[-2]
    branch_input, add_residual = lucid(lr.streams_to_lucidrains(H))
    return lr.streams_from_lucidrains(add_residual(branch(branch_input)), n)


def _oracle_eps0(H: np.ndarray, params: dict[str, np.ndarray], y_fn, *, tanh: bool) -> np.ndarray:
    """HC paper Eqs. 10-13 (tanh, two scales) with lucidrains' norm x / ||x|| * sqrt(d) * w (no epsilon)."""
    Hbar = H / np.sqrt((H * H).mean(axis=-1, keepdims=True)) * params["norm_weight"]
    act = np.tanh if tanh else (lambda a: a)
    alpha = params["s_alpha"] * act(Hbar @ params["W_alpha"]) + np.concatenate(
        [params["A_m"][:, None], params["A_r"]], 1
    )
    beta = params["s_beta"] * act(Hbar @ params["W_beta"]) + params["B"]
    mix = np.swapaxes(alpha, -1, -2) @ H
    return beta[..., :, None] * y_fn(mix[..., 0, :])[..., None, :] + mix[..., 1:, :]


@pytest.mark.parametrize(("n", "tanh"), [(4, True), (2, False), (3, True)])
def test_hc_from_lucidrains_gives_lucidrains_outputs(n: int, tanh: bool) -> None:
    d = 16
    lucid = LucidHC(n, dim=d, layer_index=1, tanh=tanh).double()
    _randomise(lucid, seed=n)
    branch = torch.nn.Linear(d, d).double()
    hc = lr.from_lucidrains(lucid)["0"]
    assert isinstance(hc, ht.HyperConnections) and (hc.n, hc.d, hc.norm, hc.use_tanh) == (n, d, "rmsnorm", tanh)
    assert hc.A_r.dtype == torch.float64
    H = torch.randn(2, 7, n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = hc(H, branch), _lucid_site(lucid, H, branch)
    # the only difference is lucidrains' missing epsilon: rows of mean square ~1 move by ~5e-7 relative
    rel = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert rel < 3e-6, rel
    params = {k: v.detach().numpy() for k, v in hc.params().items()}
    with torch.no_grad():
        oracle = _oracle_eps0(H.numpy(), params, lambda h: branch(torch.from_numpy(h)).numpy(), tanh=tanh)
    np.testing.assert_allclose(theirs.numpy(), oracle, rtol=1e-12, atol=1e-12)


def test_hc_round_trip_hcref_lucidrains_hcref_is_exact() -> None:
    n, d = 4, 32
    hc = ht.HyperConnections(n, d, layer_index=2, norm="rmsnorm")
    _randomise(hc, seed=5, scale=0.2)  # norm_weight stays in [0.5, 2], where gamma = w - 1 is exact
    assert 0.5 <= hc.norm_weight.min().item() and hc.norm_weight.max().item() <= 2
    lucid = LucidHC(n, dim=d, layer_index=0)
    lr.load_into_lucidrains(lucid, {"0": hc})
    back = lr.from_lucidrains(lucid, layer_indices={"0": 2})["0"]
    for key, value in hc.params().items():
        assert torch.equal(back.params()[key], value), key
    assert back.layer_index == 2
    H = torch.randn(3, n, d)
    branch = torch.nn.Linear(d, d)
    with torch.no_grad():
        ours, theirs = hc(H, branch), _lucid_site(lucid, H[None], branch)[0]
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 3e-6


def test_static_hc_round_trips_through_zero_dynamic_weights() -> None:
    params = {k: v + 0.1 for k, v in hcref.init_hc(3, 8, 1, dynamic=False).items()}
    state, kwargs = core.hc_to_lucidrains(params, d=8, norm="layernorm")  # a static site has no norm to refuse
    assert kwargs == {"num_residual_streams": 3, "dim": 8, "tanh": True}
    assert not state["dynamic_alpha_fn"].any() and not state["dynamic_beta_fn"].any()
    back, _ = core.hc_from_lucidrains(state, dynamic=False)
    assert all(np.array_equal(back[k], params[k]) for k in params) and set(back) == set(params)
    state["dynamic_beta_fn"][0] = 1.0
    with pytest.raises(ValueError, match=r"dynamic=False needs state\['dynamic_beta_fn'\] == 0"):
        core.hc_from_lucidrains(state, dynamic=False)


def test_lucidrains_model_to_checkpoint_to_hcref_stack(tmp_path: Path) -> None:
    """A lucidrains stack (its factory, expand and reduce) -> hcref checkpoint -> hcref_torch modules."""
    n, d, depth = 4, 16, 3
    init_hc, expand, reduce = get_init_and_expand_reduce_stream_functions(n)
    lucid_sites = torch.nn.ModuleList(init_hc(dim=d, layer_index=i) for i in range(depth))
    _randomise(lucid_sites, seed=3)
    branches = [torch.nn.Sequential(torch.nn.LayerNorm(d), torch.nn.Linear(d, d)) for _ in range(depth)]
    x = torch.randn(2, 5, d)
    with torch.no_grad():
        h = expand(x)
        for site, branch in zip(lucid_sites, branches):
            branch_input, add = site(h)
            h = add(branch(branch_input))
        theirs = reduce(h)
    sites = lr.sites(lucid_sites)
    assert [(s.name, s.layer_index) for s in sites] == [("0", 0), ("1", 1), ("2", 2)]
    ck.save(tmp_path / "lucid.safetensors", sites)
    ours_sites = list(tc.load(tmp_path / "lucid.safetensors").values())
    with torch.no_grad():
        H = ht.Expand(n)(x)
        for site, branch in zip(ours_sites, branches):
            H = site(H, branch)
        ours = ht.Reduce()(H)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-5


def test_what_does_not_map_is_refused() -> None:
    d = 8
    with pytest.raises(ValueError, match=r"norm='layernorm' does not map: lucidrains normalises with its RMSNorm"):
        lr.to_lucidrains([ht.HyperConnections(2, d, 0)])
    with pytest.raises(ValueError, match=r"use_scale=False does not map"):
        lr.to_lucidrains([ht.HyperConnections(2, d, 0, norm="rmsnorm", use_scale=False)])
    with pytest.raises(ValueError, match=r"num_input_views=2: hcref sites have one branch input"):
        lr.from_lucidrains(LucidHC(2, dim=d, layer_index=0, num_input_views=2))
    with pytest.raises(ValueError, match=r"add_branch_out_to_residual=False"):
        lr.from_lucidrains(LucidHC(2, dim=d, layer_index=0, add_branch_out_to_residual=False))
    with pytest.raises(ValueError, match=r"num_residual_streams=2 and num_fracs=2: .* no hybrid"):
        lr.from_lucidrains(LucidHC(2, dim=d, layer_index=0, num_fracs=2))
    with pytest.raises(ValueError, match=r"a custom depth_residual_fn"):
        lr.from_lucidrains(LucidHC(2, dim=d, layer_index=0, depth_residual_fn=lambda a, b: a * b))
    with pytest.raises(ValueError, match=r"stream embeddings \['expand.stream_embed'\]"):
        core.split_state_dict({"expand.stream_embed": np.zeros((2, d)), "hc.static_alpha": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"tanh: given False, but the lucidrains modules have tanh=\{'0': True\}"):
        lr.sites(LucidHC(2, dim=d, layer_index=0), tanh=False)
    with pytest.raises(
        ValueError, match=r"site '0': lucidrains static_alpha has shape \(3, 4\), the hcref site gives \(2, 3\)"
    ):
        lr.load_into_lucidrains(LucidHC(3, dim=d, layer_index=0), [ht.HyperConnections(2, d, 0, norm="rmsnorm")])
    with pytest.raises(ValueError, match=r"the lucidrains module has tanh=False"):
        lr.load_into_lucidrains(
            LucidHC(2, dim=d, layer_index=0, tanh=False), [ht.HyperConnections(2, d, 0, norm="rmsnorm")]
        )
    with pytest.raises(ValueError, match=r"expected lucidrains keys .* missing \['norm.gamma'\]"):
        core.hc_from_lucidrains(
            {
                k: v
                for k, v in core.hc_to_lucidrains(hcref.init_hc(2, d, 0, norm="rmsnorm"))[0].items()
                if k != "norm.gamma"
            }
        )
    with pytest.warns(UserWarning, match=r"dropout=0.1 is not part of hcref's sites"):
        lr.sites(LucidHC(2, dim=d, layer_index=0, dropout=0.1))


def test_mhc_is_a_hook_that_says_why() -> None:
    from hyper_connections.manifold_constrained_hyper_connections import ManifoldConstrainedHyperConnections

    with pytest.raises(NotImplementedError, match=r"normalises each stream on its own .*decision D9"):
        lr.from_lucidrains(ManifoldConstrainedHyperConnections(2, dim=8, layer_index=0))
    with pytest.raises(NotImplementedError, match=r"hcref mHC -> lucidrains mHC is not offered"):
        core.sites_to_state_dict([ck.Site("m", "mhc", hcref.init_mhc(2, 4, 0))])


# --- Frac-Connections ---------------------------------------------------------------------------


def _lucid_fc(m: int, d: int, seed: int) -> torch.nn.Module:
    lucid = LucidHC(1, dim=d, num_fracs=m, layer_index=0).double()
    _randomise(lucid, seed)
    with torch.no_grad():  # equal write columns: the one case where the paper's diagonal exists
        lucid.dynamic_beta_fn.copy_(lucid.dynamic_beta_fn[:, :1].expand(-1, m))
    return lucid


@pytest.mark.parametrize("m", [2, 4])
def test_fc_read_and_mix_agree_and_the_write_differs_by_its_off_diagonal(m: int) -> None:
    d = 16
    lucid = _lucid_fc(m, d, seed=m)
    with pytest.raises(ValueError, match=r"the FC write does not map: lucidrains writes all to all"):
        lr.from_lucidrains(lucid)
    with pytest.warns(UserWarning, match=r"lucidrains -> hcref: the FC write does not map"):
        fc = lr.from_lucidrains(lucid, write="diagonal")["0"]
    assert isinstance(fc, ht.FracConnections) and (fc.m, fc.d, fc.norm) == (m, d, "rmsnorm")
    x = torch.randn(3, 5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    branch = torch.nn.Linear(d, d).double()
    with torch.no_grad():
        branch_input, residuals, extra = lucid.width_connection(x)
        h0, state = fc.width(ht.FracSplit(m)(x))
        assert ((h0 - branch_input).abs().max() / branch_input.abs().max()).item() < 3e-6
        assert ((ht.FracMerge()(state.H_res) - residuals).abs().max() / residuals.abs().max()).item() < 3e-6
        y = branch(branch_input)
        theirs = lucid.depth_connection(y, residuals, **extra)
        ours = ht.FracMerge()(fc.depth(branch(h0), state))
        beta = extra["beta"][..., 0, :]  # (batch, time, f1, f2): lucidrains' all-to-all write
        y_f = y.reshape(3, 5, m, d // m)
        off_diagonal = torch.einsum("btij,btie->btje", beta * (1 - torch.eye(m, dtype=beta.dtype)), y_f)
    np.testing.assert_allclose((theirs - ours).numpy(), off_diagonal.reshape(3, 5, d).numpy(), atol=5e-6)
    assert off_diagonal.abs().max().item() > 0.1  # and the difference is not small


def test_fc_refusals_and_round_trip() -> None:
    m, d = 2, 8
    lucid = LucidHC(1, dim=d, num_fracs=m, layer_index=0)
    _randomise(lucid, seed=7)  # unequal write columns
    with pytest.raises(ValueError, match=r"dynamic_beta_fn'\] has unequal columns"):
        lr.from_lucidrains(lucid, write="diagonal")
    fc = ht.FracConnections(m, d, norm="rmsnorm")
    _randomise(fc, seed=8, scale=0.2)
    with pytest.raises(ValueError, match=r"pass write='diagonal' to convert anyway"):
        lr.to_lucidrains([fc])
    with pytest.raises(ValueError, match=r"norm='layernorm' does not map"):
        lr.to_lucidrains([ht.FracConnections(m, d)], write="diagonal")
    with pytest.warns(UserWarning, match=r"hcref -> lucidrains"):
        lr.load_into_lucidrains(lucid, [fc], write="diagonal")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        back = lr.from_lucidrains(lucid, write="diagonal")["0"]
    for key, value in fc.params().items():
        assert torch.equal(back.params()[key], value), key
    # lucidrains' columns: [Y[:, 0], A[:, 0], Y[:, 1], A[:, 1], ...]
    assert torch.equal(lucid.static_alpha[:, 0::2], fc.Y) and torch.equal(lucid.static_alpha[:, 1::2], fc.A)
