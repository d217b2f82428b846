"""hcref_torch's mHC ops and modules against the NumPy reference: forward and autograd in float64,
float32 and bfloat16 (tests/mhc_cases.py), extreme logits, mixed precision, bad inputs, size-0
leading axes, what Sinkhorn's backward stores, the modules (against the functional ops, Pre-Norm at
init, friendly errors, site numbering) and torch.compile(fullgraph=True)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mhc_cases as mc
from hcref_torch import Expand, Reduce, backend
from hcref_torch import mhc as ops
from hcref_torch.mhc_modules import ManifoldHyperConnections, MHCHead

import hcref
from hcref.connections import MHCState, SiteNumbering


@pytest.mark.parametrize("case", mc.CASES, ids=mc.IDS)
def test_float64_matches_the_reference(case: mc.Case) -> None:
    mc.check_float64(backend, ops, case)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", mc.LOW_CASES, ids=mc.LOW_IDS)
def test_lower_precision_within_the_suite_tolerances(case: mc.Case, dtype: str) -> None:
    mc.check_lower(backend, ops, case, dtype)


@pytest.mark.parametrize("case", mc.extreme_cases(), ids=lambda c: c[0] if isinstance(c, tuple) else "")
def test_extreme_logits_and_states_are_finite_and_right(case: Any) -> None:
    mc.check_extreme(backend, ops, case)


@pytest.mark.parametrize("state", ["bfloat16", "float16"])
def test_mixed_precision_dtypes(state: str) -> None:
    mc.check_mixed(backend, ops, state)


@pytest.mark.parametrize("case", mc.bad_cases(), ids=mc.BAD_IDS)
def test_bad_inputs_raise_the_reference_errors(case: mc.Case) -> None:
    mc.check_bad(ops, torch.from_numpy, case)


@pytest.mark.parametrize("lead", [(0,), (2, 0)])
def test_size_zero_leading_axes(lead: tuple[int, ...]) -> None:
    mc.check_empty(backend, ops, lead)


def test_half_inputs_run_sinkhorn_in_float32() -> None:
    """A bfloat16 Z gives the float64 reference of the rounded Z rounded once (float32 inside)."""
    Z = torch.randn(64, 4, 4).to(torch.bfloat16)
    P = ops.sinkhorn(Z)
    ref = torch.tensor(hcref.sinkhorn(Z.double().numpy())).to(torch.bfloat16)
    assert P.dtype == torch.bfloat16
    assert (P.double() - ref.double()).abs().max() <= 2**-8 * ref.double().abs().max()


@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_sinkhorn_backward_stores_potentials_not_iterates(eps: float) -> None:
    """What autograd keeps for Sinkhorn's backward, per token of n x n logits and K iterations:
    eps = 0: Z and 2K n-vectors (the potentials); eps > 0: Z, P and 2K - 1 n-vectors (the divisors);
    never the 2K n x n iterates. Also the torch < 2.4 autograd.Function gives the same gradients."""
    tokens, n, iters = 6, 4, 20
    Z = torch.randn(tokens, n, n, dtype=torch.float64, requires_grad=True)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        P = ops.sinkhorn(Z, iters=iters, eps=eps)
    matrices = 1 if eps == 0 else 2
    vectors = 2 * iters if eps == 0 else 2 * iters - 1
    assert sum(saved) == tokens * (matrices * n * n + vectors * n)
    G = torch.randn_like(P)
    (g,) = torch.autograd.grad(P, Z, G)
    Zd = Z.detach().requires_grad_()
    fallback = (
        ops._SinkhornLog.apply(Zd, iters) if eps == 0 else ops._SinkhornV4.apply(Zd, iters, eps)
    )
    (g_fallback,) = torch.autograd.grad(fallback, Zd, G)
    torch.testing.assert_close(fallback, P.detach(), rtol=0, atol=0)
    torch.testing.assert_close(g_fallback, g, rtol=0, atol=0)
    expected = hcref.sinkhorn_vjp(Z.detach().numpy(), G.numpy(), iters=iters, eps=eps)[0]
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-10, atol=1e-13)


# --- modules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("dynamic", "preset"), [(True, "hc_like"), (True, "lucidrains"), (False, "zero")])
def test_parameters_are_the_contract_keys_at_the_reference_init(dynamic: bool, preset: str) -> None:
    m = ManifoldHyperConnections(4, 8, 5, dynamic=dynamic, preset=preset)
    expected = hcref.init_mhc(4, 8, 5, dynamic=dynamic, preset=preset)
    state = m.state_dict()
    assert list(state) == list(expected) == list(m.keys)
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key].numpy(), value.astype(np.float32), err_msg=key)
    head = MHCHead(4, 8, dtype=torch.float64)
    expected = hcref.init_mhc_head(4, 8)
    assert list(head.state_dict()) == ["phi", "b", "gate"]
    for key, value in expected.items():
        np.testing.assert_array_equal(head.state_dict()[key].numpy(), value, err_msg=key)
    assert repr(m).startswith(f"ManifoldHyperConnections(n=4, d=8, layer_index=5, dynamic={dynamic}, preset=")
    assert "MHCHead(n=4, d=8, eps=0.0)" in repr(head)


def _perturb(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_modules_equal_the_functional_ops() -> None:
    """Outputs and gradients (H, every parameter, the branch's weights) of ``module(H, branch)``,
    of the two-step use and of the head equal those of the functional ops on the same parameters."""
    torch.manual_seed(0)
    n, d = 3, 8
    site = ManifoldHyperConnections(n, d, 1, eps=1e-6, iters=5, dtype=torch.float64)
    head = MHCHead(n, d, dtype=torch.float64)
    _perturb(site, 1)
    _perturb(head, 2)
    branch = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.Tanh()).double()
    H = torch.randn(2, 5, n, d, dtype=torch.float64, requires_grad=True)
    weights = [H, *site.parameters(), *head.parameters(), *branch.parameters()]

    def functional() -> torch.Tensor:
        h_pre, h_post, h_res = ops.mhc_coeffs(H, site.params(), iters=5, eps=1e-6)
        H_out = ops.mhc_post(branch(ops.mhc_pre(H, h_pre)), H, h_post, h_res)
        return ops.mhc_head(H_out, head.params())

    def two_step() -> torch.Tensor:
        h0, state = site.width(H)
        assert isinstance(state, MHCState)
        return head(site.depth(branch(h0), state))

    G = torch.randn(2, 5, d, dtype=torch.float64)
    expected = torch.autograd.grad((functional() * G).sum(), weights)
    for run in (two_step, lambda: head(site(H, branch))):
        got = torch.autograd.grad((run() * G).sum(), weights)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-13, atol=1e-13)


class _ScaleInvariantBlock(torch.nn.Module):
    """A Pre-Norm sublayer whose norm has no epsilon: ``T(c h) = T(h)`` for c > 0 (math.md 4.4)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(1 + 0.1 * torch.randn(d, dtype=torch.float64))
        self.lin = torch.nn.Linear(d, d).double()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.tanh(self.w * h * torch.rsqrt(h.square().mean(-1, keepdim=True))))


@pytest.mark.parametrize("n", [1, 4])
def test_at_init_hc_like_mhc_is_the_prenorm_residual(n: int) -> None:
    """mHC at its hc_like init on equal streams (Expand) with scale-invariant sublayers: every stream
    carries the Pre-Norm residual stream, so Reduce gives n times it and MHCHead (half the sum at
    init) n/2 times it (math.md 4.4, hcref.init_mhc_head)."""
    torch.manual_seed(0)
    d = 8
    blocks = [_ScaleInvariantBlock(d) for _ in range(4)]
    x = torch.randn(3, d, dtype=torch.float64)
    residual = x
    for block in blocks:
        residual = residual + block(residual)
    make = SiteNumbering(ManifoldHyperConnections, n, d, dtype=torch.float64)
    H = Expand(n)(x)
    for block in blocks:
        H = make()(H, block)
    assert make.next_index == 4
    torch.testing.assert_close(Reduce()(H), n * residual, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(MHCHead(n, d, dtype=torch.float64)(H), n / 2 * residual, rtol=1e-13, atol=1e-13)


def test_module_errors_name_the_module_and_the_fix() -> None:
    site = ManifoldHyperConnections(4, 32, 0)
    with pytest.raises(ValueError) as err:
        site(torch.randn(2, 10, 32), torch.nn.Identity())
    assert str(err.value).startswith(
        "ManifoldHyperConnections(n=4, d=32, layer_index=0): expected H of shape (..., 4, 32) "
        "(n=4 streams of width d=32), got shape (2, 10, 32)"
    )
    assert "H = Expand(4)(x)" in str(err.value)
    _, state = site.width(torch.randn(2, 4, 32))
    with pytest.raises(ValueError, match=r"\.depth: expected the branch output y of shape \(2, 32\)"):
        site.depth(torch.randn(2, 16), state)
    with pytest.raises(ValueError, match=r"^MHCHead\(n=4, d=32\): expected H of shape \(\.\.\., 4, 32\)"):
        MHCHead(4, 32)(torch.randn(2, 32))
    with pytest.raises(ValueError, match="preset: expected one of"):
        ManifoldHyperConnections(4, 32, 0, preset="identity")
    with pytest.raises(ValueError, match="iters: expected an int >= 1"):
        ManifoldHyperConnections(4, 32, 0, iters=0)
    with pytest.raises(ValueError, match="eps: expected a finite real number >= 0"):
        MHCHead(4, 32, eps=-1.0)


def test_torch_compile_fullgraph_matches_eager() -> None:
    """A small mHC network (two sites and the head) under torch.compile(fullgraph=True): output and
    input gradient equal eager's. Sinkhorn is a custom op, opaque to the compiler (no unrolled graph)."""
    torch.manual_seed(0)
    n, d = 4, 8
    sites = [ManifoldHyperConnections(n, d, k) for k in range(2)]
    head = MHCHead(n, d)
    lin = torch.nn.Linear(d, d)

    def net(x: torch.Tensor) -> torch.Tensor:
        H = Expand(n)(x)
        h0, state = sites[0].width(H)
        H = sites[1](sites[0].depth(lin(h0), state), lin)
        return head(H)

    x = torch.randn(3, d, requires_grad=True)
    eager = net(x)
    (g_eager,) = torch.autograd.grad(eager.square().sum(), [x])
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")(x)
    (g_compiled,) = torch.autograd.grad(compiled.square().sum(), [x])
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-6, atol=1e-6)


# --- numerics as production uses them (issue 13): extreme scales, mixed precision, size 0, meta ---

_SCALES = (1e-30, 1.0, 1e15, 1e20, 1e38)
_POW2_SCALES = (2.0**-100, 2.0**50, 2.0**66, 2.0**126)
"""About 1e-30, 1e15, 1e20 and 8.5e37 as powers of two: scaling by them commutes with rounding to
the state's dtype, so scale-invariant results must not change (but for eps = 1e-6 at scale 1)."""


def _scaled_inputs(name: str, n: int, d: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """H with max|H| = 1 and dynamic parameters whose projection columns sum to |phi| ~ 50: a state
    of 1e38 then has ``|v phi|`` far above float32's 3.4e38, so an unscaled folded projection overflows."""
    rng = np.random.default_rng(seed)
    H, params = hcref.checks.random_inputs(name, rng, (3,), n, d)
    params = {**params, "phi": 3.0 * rng.standard_normal(params["phi"].shape)}
    return H / np.abs(H).max(), params


@pytest.mark.parametrize("state", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["mhc_coeffs", "mhc_head"])
def test_flattened_rms_is_scale_safe(name: str, state: str) -> None:
    """D12: for H scaled by 1e-30 .. 1e38 (float32 parameters on a float32 or bfloat16 state) the
    outputs equal the float64 reference on the same rounded values within the float32 tolerances
    (coefficients: computed in float32; the head's x: rounded to the state's dtype), the parameter
    gradients equal the reference VJP, the state's gradient is finite, and the coefficients of
    every scale >= 1 equal those of scale 1 (they are scale-invariant but for eps = 1e-6)."""
    from hcref.tolerances import tolerance

    n, d = 4, 8
    H, params = _scaled_inputs(name, n, d, seed=70)
    bp = mc.native(backend, params, "float32")
    out_dtype = "float32" if name == "mhc_coeffs" else state
    tol = tolerance(out_dtype, "forward", contraction=n * d)
    gtol = tolerance("float32", "gradient", contraction=n * d)
    for scale in _SCALES:
        bH = mc.native(backend, H * scale, state)
        got = mc.outs(getattr(ops, name)(bH, bp))
        ref = mc.outs(getattr(hcref, name)(mc.f64(backend, bH), mc.f64(backend, bp)))
        assert all(backend.dtype_name(g) == out_dtype for g in got), (name, scale)
        got64 = [mc.f64(backend, g) for g in got]
        assert all(np.isfinite(g).all() for g in got64), (name, scale)
        assert mc.error_ratio(got64, list(ref), tol.rtol, tol.atol * scale) <= 1, (name, scale)
        rng = np.random.default_rng(71)
        cots = [mc.native(backend, rng.standard_normal(r.shape), out_dtype) for r in ref]
        g_H, g_p = backend.vjp(lambda H_, p_: getattr(ops, name)(H_, p_), [bH, bp], cots)
        assert backend.dtype_name(g_H) == state and np.isfinite(mc.f64(backend, g_H)).all(), (name, scale)
        expected = mc.reference_vjp(name, (mc.f64(backend, bH), mc.f64(backend, bp)),
                                    [mc.f64(backend, c) for c in cots], {})
        keys = sorted(expected[1])
        got_p = [mc.f64(backend, g_p[k]) for k in keys]
        assert all(np.isfinite(g).all() for g in got_p), (name, scale)
        assert mc.error_ratio(got_p, [expected[1][k] for k in keys], gtol.rtol, gtol.atol) <= 1, (name, scale)
    if name == "mhc_coeffs":
        at_one = [mc.f64(backend, g) for g in ops.mhc_coeffs(mc.native(backend, H, state), bp)]
        for scale in _POW2_SCALES[1:]:
            got64 = [mc.f64(backend, g) for g in ops.mhc_coeffs(mc.native(backend, H * scale, state), bp)]
            assert mc.error_ratio(got64, at_one, tol.rtol, tol.atol) <= 1, ("scale-invariance", scale)


def test_modules_keep_a_bfloat16_state_with_float32_parameters() -> None:
    """D12 / issue 13 case 3: a float32 mHC site and head on a bfloat16 stream with a bfloat16
    sublayer: h0, H_out and x stay bfloat16 (the sublayer sees its own dtype), the coefficients are
    float32, gradients come back in each input's dtype, and H_out equals the float64 reference site
    on the same rounded values within bfloat16's tolerance."""
    from hcref.tolerances import tolerance

    torch.manual_seed(8)
    n, d = 4, 8
    site, head = ManifoldHyperConnections(n, d, 2), MHCHead(n, d)
    _perturb(site, 3)
    _perturb(head, 4)
    branch = torch.nn.Linear(d, d).to(torch.bfloat16)
    H = torch.randn(2, 3, n, d).to(torch.bfloat16).requires_grad_(True)
    h0, state = site.width(H)
    assert h0.dtype == torch.bfloat16 and {c.dtype for c in state[1:]} == {torch.float32}
    y = branch(h0)
    H_out = site.depth(y, state)
    x = head(H_out)
    assert H_out.dtype == x.dtype == torch.bfloat16
    grads = torch.autograd.grad(x.float().square().sum(), [H, *site.parameters(), *head.parameters()])
    assert grads[0].dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads[1:])
    assert all(torch.isfinite(g).all() for g in grads)
    p64 = {k: v.detach().double().numpy() for k, v in site.params().items()}
    H64, y64 = H.detach().double().numpy(), y.detach().double().numpy()
    h_pre, h_post, h_res = hcref.mhc_coeffs(H64, p64)
    ref = hcref.mhc_post(y64, H64, h_post, h_res)
    tol = tolerance("bfloat16", "forward", contraction=n)
    assert mc.error_ratio([H_out.detach().double().numpy()], [ref], tol.rtol, tol.atol) <= 1
    ctol = tolerance("float32", "forward", contraction=n * d)
    for got, want in ((state.h_post, h_post), (state.h_res, h_res)):
        assert mc.error_ratio([got.detach().double().numpy()], [want], ctol.rtol, ctol.atol) <= 1
    np.testing.assert_allclose(h0.detach().double().numpy(), hcref.mhc_pre(H64, h_pre), rtol=2**-7, atol=2**-7)


@pytest.mark.parametrize("lead", [(0,), (2, 0)])
def test_modules_on_size_zero_leading_axes(lead: tuple[int, ...]) -> None:
    """Empty batches: empty outputs and exactly zero parameter gradients (a sum over no tokens)."""
    n, d = 3, 4
    site, head = ManifoldHyperConnections(n, d, 0), MHCHead(n, d, eps=1e-6)
    branch = torch.nn.Linear(d, d)
    H = torch.randn(*lead, n, d, requires_grad=True)
    x = head(site(H, branch))
    assert tuple(x.shape) == (*lead, d)
    params = [*site.parameters(), *head.parameters(), *branch.parameters()]
    grads = torch.autograd.grad(x.sum(), [H, *params])
    assert tuple(grads[0].shape) == tuple(H.shape)
    assert all(g.shape == p.shape and not g.any() for g, p in zip(grads[1:], params, strict=True))


def test_ops_and_modules_on_the_meta_device() -> None:
    """Issue 13 case 4: shapes and dtypes (D12) on ``device="meta"``, ops and modules, forward and backward."""
    meta = torch.device("meta")
    n, d = 4, 8
    H = torch.empty(2, 3, n, d, device=meta, dtype=torch.bfloat16)
    p = {k: torch.empty(v.shape, device=meta) for k, v in hcref.init_mhc(n, d, 0).items()}
    static = {"b": p["b"]}
    for params in (p, static):
        h_pre, h_post, h_res = ops.mhc_coeffs(H, params, eps=1e-6)
        assert (h_pre.shape, h_post.shape, h_res.shape) == ((2, 3, n), (2, 3, n), (2, 3, n, n))
        assert {h_pre.dtype, h_post.dtype, h_res.dtype} == {torch.float32} and h_res.device == meta
    assert ops.sinkhorn(torch.empty(5, n, n, device=meta, dtype=torch.float16)).dtype == torch.float16
    h0 = ops.mhc_pre(H, h_pre)
    assert h0.shape == (2, 3, d) and h0.dtype == torch.bfloat16 and h0.device == meta
    H_out = ops.mhc_post(h0, H, h_post, h_res)
    assert H_out.shape == H.shape and H_out.dtype == torch.bfloat16
    ph = {k: torch.empty(v.shape, device=meta) for k, v in hcref.init_mhc_head(n, d).items()}
    x = ops.mhc_head(H, ph)
    assert x.shape == (2, 3, d) and x.dtype == torch.bfloat16
    site, head = ManifoldHyperConnections(n, d, 1, device=meta), MHCHead(n, d, device=meta)
    assert all(t.device == meta for t in (*site.parameters(), *head.parameters()))
    Hg = H.clone().requires_grad_(True)
    out = head(site(Hg, lambda h: h * 2))
    assert out.shape == (2, 3, d) and out.dtype == torch.bfloat16 and out.device == meta
    out.float().sum().backward()
    assert Hg.grad is not None and Hg.grad.shape == H.shape and Hg.grad.dtype == torch.bfloat16
    assert site.phi.grad is not None and site.phi.grad.shape == site.phi.shape and site.phi.grad.device == meta


def test_module_coefficients_are_scale_invariant_at_extreme_states() -> None:
    """A site at states of about 1e-30, 1e15 and 1e20 (bfloat16 state, float32 module): H_out and
    every gradient finite; the coefficients (MHCState) at scales >= 1 equal those at scale 1. (Near
    1e38 the exact gradient of h_res, a sum of d products with H, itself exceeds float32's range.)"""
    torch.manual_seed(9)
    n, d = 4, 8
    site = ManifoldHyperConnections(n, d, 0)
    _perturb(site, 5)
    H = torch.randn(3, n, d)
    _, base = site.width(H.to(torch.bfloat16))
    for scale in _POW2_SCALES[:3]:
        Hs = (H / H.abs().max() * scale).to(torch.bfloat16).requires_grad_(True)
        h0, state = site.width(Hs)
        out = site.depth(h0, state)
        grads = torch.autograd.grad(out.float().sum(), [Hs, *site.parameters()])
        assert torch.isfinite(out.float()).all() and all(torch.isfinite(g.float()).all() for g in grads), scale
        if scale > 1:
            _, ref = site.width((H / H.abs().max()).to(torch.bfloat16))
            for got, want in zip(state[1:], ref[1:], strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert base.h_res.dtype == torch.float32
