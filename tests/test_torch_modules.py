"""hcref_torch's modules: parameter keys and initial values, agreement with the functional ops
(outputs and gradients), precision under bfloat16 autocast, and torch.compile(fullgraph=True)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hcref_torch
from hcref_torch import Expand, FracConnections, FracMerge, FracSplit, HyperConnections, Reduce

import hcref


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "none"])
@pytest.mark.parametrize("dynamic", [True, False])
def test_parameters_are_the_contract_keys_at_the_reference_init(norm: str, dynamic: bool) -> None:
    for layer_index in (0, 5):
        hc = HyperConnections(4, 8, layer_index, dynamic=dynamic, norm=norm)
        expected = hcref.init_hc(4, 8, layer_index, dynamic=dynamic, norm=norm)
        state = hc.state_dict()
        assert list(state) == list(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(state[key].numpy(), value.astype(np.float32), err_msg=key)
    fc = FracConnections(2, 8, dynamic=dynamic, norm=norm)
    expected = hcref.init_fc(2, 8, dynamic=dynamic, norm=norm)
    state = fc.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key].numpy(), value.astype(np.float32), err_msg=key)


def _perturb(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("family", ["hc", "fc"])
def test_module_equals_functional_ops(family: str) -> None:
    """Outputs and gradients (H, every parameter, the branch's weights) of ``module(H, branch)``
    and of the two-step use equal those of the functional ops on the same parameters."""
    torch.manual_seed(0)
    d = 12
    if family == "hc":
        conn: Any = HyperConnections(3, d, 1, norm="rmsnorm", dtype=torch.float64)
        H0 = torch.randn(2, 5, 3, d, dtype=torch.float64)
        coeffs, width, depth = hcref_torch.hc_coeffs, hcref_torch.hc_width, hcref_torch.hc_depth
    else:
        conn = FracConnections(3, d, dtype=torch.float64)
        H0 = torch.randn(2, 5, 3, d // 3, dtype=torch.float64)
        coeffs, width, depth = hcref_torch.fc_coeffs, hcref_torch.fc_width, hcref_torch.fc_depth
    _perturb(conn, 1)
    branch = torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.Tanh(), torch.nn.Linear(2 * d, d)).double()
    G = torch.randn_like(H0)

    def grads(out: torch.Tensor, H: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(torch.autograd.grad((out * G).sum(), [H, *params, *branch.parameters()]))

    H = H0.clone().requires_grad_(True)
    out_module = conn(H, branch)
    g_module = grads(out_module, H, list(conn.parameters()))

    H = H0.clone().requires_grad_(True)
    h0, state = conn.width(H)
    out_two_step = conn.depth(branch(h0), state)
    g_two_step = grads(out_two_step, H, list(conn.parameters()))

    H = H0.clone().requires_grad_(True)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in conn.state_dict().items()}
    alpha, beta = coeffs(H, params, norm=conn.norm)
    h0, H_res = width(H, alpha)
    out_fn = depth(branch(h0), H_res, beta)
    g_fn = grads(out_fn, H, list(params.values()))

    torch.testing.assert_close(out_module, out_fn, rtol=0, atol=0)
    torch.testing.assert_close(out_two_step, out_fn, rtol=0, atol=0)
    assert len(g_module) == len(g_fn)
    for a, b, c in zip(g_module, g_two_step, g_fn):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
        torch.testing.assert_close(b, c, rtol=0, atol=0)
    assert any(float(g.abs().max()) > 0 for g in g_fn[1:])


def test_ends_modules_match_the_reference() -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 8))
    xt = torch.tensor(x)
    np.testing.assert_array_equal(Expand(4)(xt).numpy(), hcref.expand(x, 4))
    np.testing.assert_array_equal(Reduce()(Expand(4)(xt)).numpy(), hcref.reduce(hcref.expand(x, 4)))
    np.testing.assert_array_equal(FracSplit(2)(xt).numpy(), hcref.frac_split(x, 2))
    np.testing.assert_array_equal(FracMerge()(FracSplit(2)(xt)).numpy(), x)


def test_bfloat16_autocast_keeps_coefficients_and_mixing_in_float32() -> None:
    """Under CPU bfloat16 autocast the matmuls of the coefficient path and the mixing are not
    lowered: the results are float32 and equal (bit for bit) those computed without autocast."""
    torch.manual_seed(0)
    hc = HyperConnections(4, 32, 2)
    _perturb(hc, 0)
    H = torch.randn(16, 4, 32)
    h0_ref, state_ref = hc.width(H)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probe = H[0] @ H[0].T
        h0, state = hc.width(H)
    assert probe.dtype == torch.bfloat16  # autocast is really on
    for got, ref in ((h0, h0_ref), (state.H_res, state_ref.H_res), (state.beta, state_ref.beta)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # bfloat16 streams under autocast: coefficients still float32-accurate against float64.
    Hb = H.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        alpha, beta = hcref_torch.hc_coeffs(Hb, hc.params())
    ref_alpha, ref_beta = hcref.hc_coeffs(
        Hb.double().numpy(), {k: v.detach().double().numpy() for k, v in hc.params().items()}
    )
    np.testing.assert_allclose(alpha.detach().double().numpy(), ref_alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(beta.detach().double().numpy(), ref_beta, rtol=1e-5, atol=1e-6)


def test_torch_compile_fullgraph() -> None:
    """A small HC + FC stack compiles without graph breaks and matches eager, forward and backward."""
    torch.manual_seed(0)
    d = 16
    hcs = torch.nn.ModuleList([HyperConnections(2, d, k) for k in range(2)])
    fc = FracConnections(2, d, norm="rmsnorm")
    for m in (*hcs, fc):
        _perturb(m, 3)
    branch = torch.nn.Linear(d, d)

    def net(x: torch.Tensor) -> torch.Tensor:
        H = hcref_torch.expand(x, 2)
        for hc in hcs:
            H = hc(H, branch)
        h0, state = hcs[0].width(H)
        H = hcs[0].depth(torch.tanh(h0), state)
        F = fc(hcref_torch.frac_split(hcref_torch.reduce(H), 2), branch)
        return hcref_torch.frac_merge(F)

    compiled = torch.compile(net, fullgraph=True)
    x = torch.randn(3, d, requires_grad=True)
    out_eager = net(x)
    (g_eager,) = torch.autograd.grad(out_eager.square().sum(), [x])
    out_compiled = compiled(x)
    (g_compiled,) = torch.autograd.grad(out_compiled.square().sum(), [x])
    torch.testing.assert_close(out_compiled, out_eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-5)


def test_module_options_are_validated() -> None:
    with pytest.raises(ValueError, match="norm: expected one of"):
        HyperConnections(2, 4, 0, norm="batchnorm")
    with pytest.raises(ValueError, match="d: expected a multiple of m=3"):
        FracConnections(3, 4)
    with pytest.raises(ValueError, match="n: expected an int >= 1"):
        Expand(0)


@pytest.mark.parametrize("n", [1, 3])
def test_at_init_hc_is_n_times_the_prenorm_residual_and_fc_is_equal(n: int) -> None:
    """HC paper Eq. 14 / FC paper Eq. 15: at the initial parameters every HC stream carries the
    Pre-Norm residual stream (so ``reduce`` gives n times it) and FC reproduces it exactly."""
    torch.manual_seed(0)
    d = 12
    blocks = [torch.nn.Sequential(torch.nn.LayerNorm(d), torch.nn.Linear(d, d)).double() for _ in range(3)]
    x = torch.randn(4, d, dtype=torch.float64)
    residual = x
    for block in blocks:
        residual = residual + block(residual)
    H = Expand(n)(x)
    for k, block in enumerate(blocks):
        H = HyperConnections(n, d, k, dtype=torch.float64)(H, block)
    torch.testing.assert_close(Reduce()(H), n * residual)
    F = FracSplit(3)(x)
    for block in blocks:
        F = FracConnections(3, d, norm="rmsnorm", dtype=torch.float64)(F, block)
    torch.testing.assert_close(FracMerge()(F), residual)


def test_modules_are_built_on_the_framework_free_plans() -> None:
    """Issue 11's structure: each HC/FC module holds the plan of hcref.connections (same keys,
    repr and options as the constructor), its parameters in the plan's order."""
    from hcref import connections

    hc = HyperConnections(3, 8, 2, norm="rmsnorm", use_tanh=False)
    assert hc.plan == connections.hc_plan(3, 8, 2, norm="rmsnorm", use_tanh=False)
    assert repr(hc) == (
        "HyperConnections(n=3, d=8, layer_index=2, dynamic=True, norm='rmsnorm', use_tanh=False, use_norm=True, "
        "use_scale=True)"
    )
    assert list(hc.state_dict()) == list(hc.keys) == list(hc.plan.keys)
    assert (hc.n, hc.d, hc.layer_index, hc.dynamic, hc.norm, hc.use_tanh, hc.use_norm, hc.use_scale) == (
        3, 8, 2, True, "rmsnorm", False, True, True,
    )
    fc = FracConnections(2, 8, dynamic=False)
    assert fc.plan == connections.fc_plan(2, 8, dynamic=False)
    assert repr(fc) == (
        "FracConnections(m=2, d=8, dynamic=False, norm='layernorm', use_tanh=True, use_norm=True, use_scale=True)"
    )
    assert list(fc.state_dict()) == ["Y", "A", "B"]
    assert hcref_torch.SiteState is connections.SiteState


def test_module_state_errors_name_the_module() -> None:
    """A state of the wrong shape fails with the module's own message (hcref.connections), before any op."""
    hc, fc = HyperConnections(4, 32, 0), FracConnections(4, 32)
    with pytest.raises(ValueError) as err:
        hc.width(torch.zeros(2, 32))
    assert str(err.value) == (
        "HyperConnections(n=4, d=32, layer_index=0): expected H of shape (..., 4, 32) (n=4 streams of width d=32), "
        "got shape (2, 32); this looks like the embedding x (..., d=32) rather than n=4 streams: expand it first, "
        "H = Expand(4)(x), and reduce the streams at the end with Reduce()"
    )
    with pytest.raises(ValueError, match=r"^FracConnections\(m=4, d=32\): expected H of shape \(\.\.\., 4, 8\)"):
        fc(torch.zeros(2, 32), torch.nn.Identity())
    _, state = hc.width(torch.zeros(2, 4, 32))
    with pytest.raises(ValueError, match=r"^HyperConnections\(n=4, d=32, layer_index=0\)\.depth: expected the "
                                         r"branch output y of shape \(2, 32\)"):
        hc.depth(torch.zeros(3, 32), state)
    with pytest.raises(TypeError, match=r"^H: expected a torch\.Tensor, got ndarray$"):
        hc.width(np.zeros((2, 4, 32)))  # type: ignore[arg-type]
