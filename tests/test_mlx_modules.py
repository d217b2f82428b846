"""hcref_mlx's modules: parameter keys and initial values, agreement with the functional ops
(outputs and gradients), float32 accumulation for half inputs, and ``mx.compile``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

import hcref_mlx
from hcref_mlx import Expand, FracConnections, FracMerge, FracSplit, HyperConnections, Reduce, backend
from mlx.utils import tree_flatten, tree_map

import hcref


def _np(x: Any) -> np.ndarray:
    return backend.to_numpy(x).astype(np.float64)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "none"])
@pytest.mark.parametrize("dynamic", [True, False])
def test_parameters_are_the_contract_keys_at_the_reference_init(norm: str, dynamic: bool) -> None:
    for layer_index in (0, 5):
        hc = HyperConnections(4, 8, layer_index, dynamic=dynamic, norm=norm)
        expected = hcref.init_hc(4, 8, layer_index, dynamic=dynamic, norm=norm)
        params = hc.parameters()
        assert list(params) == list(expected)
        assert [k for k, _ in tree_flatten(hc.trainable_parameters())] == list(expected)
        for key, value in expected.items():
            assert params[key].dtype == mx.float32, key
            np.testing.assert_array_equal(np.array(params[key]), value.astype(np.float32), err_msg=key)
    fc = FracConnections(2, 8, dynamic=dynamic, norm=norm, dtype=mx.float64)
    expected = hcref.init_fc(2, 8, dynamic=dynamic, norm=norm)
    params = fc.parameters()
    assert list(params) == list(expected)
    for key, value in expected.items():
        assert params[key].dtype == mx.float64, key
        np.testing.assert_array_equal(np.array(params[key]), value, err_msg=key)


def _perturb(module: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    module.update(
        tree_map(lambda p: p + mx.array(0.3 * rng.normal(size=p.shape), dtype=p.dtype), module.parameters())
    )


class _Site(nn.Module):
    """A connection around an MLP branch, called one-step (``conn(H, branch)``) or two-step."""

    def __init__(self, conn: Any, d: int, two_step: bool) -> None:
        super().__init__()
        self.conn = conn
        self.branch = nn.Sequential(nn.Linear(d, 2 * d), nn.Tanh(), nn.Linear(2 * d, d))
        self.two_step = two_step

    def __call__(self, H: Any) -> Any:
        if self.two_step:
            h0, state = self.conn.width(H)
            return self.conn.depth(self.branch(h0), state)
        return self.conn(H, self.branch)


@pytest.mark.parametrize("family", ["hc", "fc"])
def test_module_equals_functional_ops(family: str) -> None:
    """Outputs and gradients (H, every parameter, the branch's weights) of ``module(H, branch)``
    and of the two-step use equal those of the functional ops on the same parameters."""
    mx.random.seed(0)
    rng = np.random.default_rng(0)
    d = 12
    if family == "hc":
        conn: Any = HyperConnections(3, d, 1, norm="rmsnorm", dtype=mx.float64)
        H0 = rng.normal(size=(2, 5, 3, d))
        coeffs, width, depth = hcref_mlx.hc_coeffs, hcref_mlx.hc_width, hcref_mlx.hc_depth
    else:
        conn = FracConnections(3, d, dtype=mx.float64)
        H0 = rng.normal(size=(2, 5, 3, d // 3))
        coeffs, width, depth = hcref_mlx.fc_coeffs, hcref_mlx.fc_width, hcref_mlx.fc_depth
    _perturb(conn, 1)
    site = _Site(conn, d, two_step=False)
    site.branch.set_dtype(mx.float64)
    H = backend.asarray(H0, "float64", "cpu")
    G = backend.asarray(rng.normal(size=H0.shape), "float64", "cpu")

    def module_loss(model: Any, H: Any) -> Any:
        return (model(H) * G).sum()

    grad_fn = nn.value_and_grad(site, module_loss)
    out_module = site(H)
    _, g_module = grad_fn(site, H)
    g_H_module = mx.grad(lambda H: module_loss(site, H))(H)
    site.two_step = True
    out_two_step = site(H)
    _, g_two_step = grad_fn(site, H)
    site.two_step = False

    def fn_loss(params: dict[str, Any], branch_params: Any, H: Any) -> Any:
        site.branch.update(branch_params)
        alpha, beta = coeffs(H, params, norm=conn.norm)
        h0, H_res = width(H, alpha)
        return (depth(site.branch(h0), H_res, beta) * G).sum()

    params = dict(conn.parameters())
    branch_params = site.branch.parameters()
    alpha, beta = coeffs(H, params, norm=conn.norm)
    h0, H_res = width(H, alpha)
    out_fn = depth(site.branch(h0), H_res, beta)
    g_params, g_branch, g_H = mx.grad(fn_loss, argnums=(0, 1, 2))(params, branch_params, H)

    for out in (out_module, out_two_step):
        assert out.dtype == mx.float64
        np.testing.assert_array_equal(np.array(out), np.array(out_fn))
    np.testing.assert_array_equal(np.array(g_H_module), np.array(g_H))
    expected = dict(tree_flatten({"conn": g_params, "branch": g_branch}))
    for got in (g_module, g_two_step):
        flat = dict(tree_flatten(got))
        assert set(flat) == set(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(np.array(flat[key]), np.array(value), err_msg=key)
    assert all(float(mx.abs(g).max()) > 0 for g in g_params.values())


def test_ends_modules_match_the_reference() -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 8))
    xm = backend.asarray(x, "float64", "cpu")
    np.testing.assert_array_equal(np.array(Expand(4)(xm)), hcref.expand(x, 4))
    np.testing.assert_array_equal(np.array(Reduce()(Expand(4)(xm))), hcref.reduce(hcref.expand(x, 4)))
    np.testing.assert_array_equal(np.array(FracSplit(2)(xm)), hcref.frac_split(x, 2))
    np.testing.assert_array_equal(np.array(FracMerge()(FracSplit(2)(xm))), x)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_module_accumulates_in_float32(dtype: str) -> None:
    """A half-precision site keeps its input dtype, and its coefficients and mixed streams are the
    float64 reference on the same rounded values up to one final rounding (float32 accumulation);
    a float32 module given half inputs computes float32 coefficients and keeps the stream's dtype (D12)."""
    mdt = getattr(mx, dtype)
    u = {"bfloat16": 2.0**-8, "float16": 2.0**-11}[dtype]
    n, d = 4, 64
    hc = HyperConnections(n, d, 2, dtype=mdt)
    _perturb(hc, 0)
    H = backend.asarray(np.random.default_rng(1).normal(size=(8, 4, n, d)), dtype, "cpu")
    h0, state = hc.width(H)
    assert h0.dtype == mdt and state.H_res.dtype == mdt and state.beta.dtype == mdt
    params64 = {k: _np(v) for k, v in hc.params().items()}
    ref_alpha, ref_beta = hcref.hc_coeffs(_np(H), params64)
    np.testing.assert_allclose(_np(state.beta), ref_beta, rtol=2 * u, atol=2 * u)
    # mixing with the module's own (rounded) coefficients: one rounding from the float64 result
    alpha, _ = hcref_mlx.hc_coeffs(H, hc.params())
    ref_h0, ref_res = hcref.hc_width(_np(H), _np(alpha))
    for got, ref in ((h0, ref_h0), (state.H_res, ref_res)):
        assert np.all(np.abs(_np(got) - ref) <= 2 * u * np.maximum(np.abs(ref), 1e-3))
    np.testing.assert_allclose(_np(alpha), ref_alpha, rtol=2 * u, atol=2 * u)
    out = hc.depth(h0, state)
    assert out.dtype == mdt
    hc32 = HyperConnections(n, d, 2)
    hc32.update(tree_map(lambda p: p.astype(mx.float32), hc.parameters()))
    h0_32, state32 = hc32.width(H)
    assert h0_32.dtype == mdt and state32.H_res.dtype == mdt and state32.beta.dtype == mx.float32
    np.testing.assert_allclose(_np(state32.beta), ref_beta, rtol=1e-5, atol=1e-6)
    assert hc32.depth(h0_32, state32).dtype == mdt


def test_mx_compile_of_a_module_stack_matches_eager() -> None:
    """A small HC + FC stack compiles (``mx.compile`` with the model state as input) and matches
    eager, forward and backward (``nn.value_and_grad``), and a compiled training step updates it."""
    mx.random.seed(0)
    d = 16

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hcs = [HyperConnections(2, d, k) for k in range(2)]
            self.fc = FracConnections(2, d, norm="rmsnorm")
            self.branch = nn.Linear(d, d)

        def __call__(self, x: Any) -> Any:
            H = hcref_mlx.expand(x, 2)
            for hc in self.hcs:
                H = hc(H, self.branch)
            h0, state = self.hcs[0].width(H)
            H = self.hcs[0].depth(mx.tanh(h0), state)
            F = self.fc(hcref_mlx.frac_split(hcref_mlx.reduce(H), 2), self.branch)
            return hcref_mlx.frac_merge(F)

    def make() -> Net:
        mx.random.seed(0)
        net = Net()
        for m in (*net.hcs, net.fc):
            _perturb(m, 3)
        return net

    net = make()
    x = mx.random.normal((3, d))

    def loss(model: Any, x: Any) -> Any:
        return (model(x) ** 2).sum()

    eager = nn.value_and_grad(net, loss)
    # nn.value_and_grad writes the traced parameters into the model, so the state is an output too
    compiled = mx.compile(lambda x: eager(net, x), inputs=net.state, outputs=net.state)
    out_eager = net(x)
    out_compiled = mx.compile(lambda x: net(x), inputs=net.state)(x)
    np.testing.assert_allclose(np.array(out_compiled), np.array(out_eager), rtol=1e-5, atol=1e-5)
    (l_eager, g_eager), (l_comp, g_comp) = eager(net, x), compiled(x)
    np.testing.assert_allclose(l_comp.item(), l_eager.item(), rtol=1e-5)
    flat_e, flat_c = dict(tree_flatten(g_eager)), dict(tree_flatten(g_comp))
    assert set(flat_e) == set(flat_c) and "hcs.0.W_alpha" in flat_e and "fc.s_beta" in flat_e
    for key in flat_e:
        np.testing.assert_allclose(np.array(flat_c[key]), np.array(flat_e[key]), rtol=1e-4, atol=1e-5, err_msg=key)

    import mlx.optimizers as optim

    def train(net: Net, compile_step: bool) -> tuple[list[float], np.ndarray]:
        opt = optim.SGD(learning_rate=1e-3)
        grad_fn = nn.value_and_grad(net, loss)

        def step(x: Any) -> Any:
            value, grads = grad_fn(net, x)
            opt.update(net, grads)
            return value

        if compile_step:
            state = [net.state, opt.state]
            step = mx.compile(step, inputs=state, outputs=state)
        losses = []
        for _ in range(3):
            losses.append(step(x).item())
            mx.eval(net.state)
        return losses, np.array(net.hcs[0].A_r)

    losses_c, A_r_c = train(make(), True)
    losses_e, A_r_e = train(make(), False)
    assert all(np.isfinite(losses_c)) and losses_c[2] < losses_c[0], losses_c
    np.testing.assert_allclose(losses_c, losses_e, rtol=1e-4)
    np.testing.assert_allclose(A_r_c, A_r_e, rtol=1e-4, atol=1e-6)
    assert not np.array_equal(A_r_c, np.array(make().hcs[0].A_r))


def test_module_options_are_validated() -> None:
    with pytest.raises(ValueError, match="norm: expected one of"):
        HyperConnections(2, 4, 0, norm="batchnorm")
    with pytest.raises(ValueError, match="d: expected a multiple of m=3"):
        FracConnections(3, 4)
    with pytest.raises(ValueError, match="n: expected an int >= 1"):
        Expand(0)
    with pytest.raises(TypeError, match="use_tanh: expected a bool"):
        FracConnections(2, 4, use_tanh=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [1, 3])
def test_at_init_hc_is_n_times_the_prenorm_residual_and_fc_is_equal(n: int) -> None:
    """HC paper Eq. 14 / FC paper Eq. 15: at the initial parameters every HC stream carries the
    Pre-Norm residual stream (so ``reduce`` gives n times it) and FC reproduces it exactly."""
    mx.random.seed(0)
    d = 12
    blocks = [nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d)) for _ in range(3)]
    for block in blocks:
        block.set_dtype(mx.float64)
    x = backend.asarray(np.random.default_rng(0).normal(size=(4, d)), "float64", "cpu")
    residual = x
    for block in blocks:
        residual = residual + block(residual)
    H = Expand(n)(x)
    for k, block in enumerate(blocks):
        H = HyperConnections(n, d, k, dtype=mx.float64)(H, block)
    np.testing.assert_allclose(np.array(Reduce()(H)), n * np.array(residual), rtol=1e-12, atol=1e-12)
    F = FracSplit(3)(x)
    for block in blocks:
        F = FracConnections(3, d, norm="rmsnorm", dtype=mx.float64)(F, block)
    np.testing.assert_allclose(np.array(FracMerge()(F)), np.array(residual), rtol=1e-12, atol=1e-12)


def test_modules_are_built_on_the_framework_free_plan() -> None:
    """HC/FC modules hold their :class:`hcref.connections.Plan` (keys, init, options, repr text) and
    keep the constructor's arguments as attributes; a state of the wrong shape gets the plan's error
    naming the module and the fix (the ops would only name ``H``)."""
    from hcref import connections

    hc = HyperConnections(4, 32, 0, norm="rmsnorm", use_tanh=False)
    assert hc.plan == connections.hc_plan(4, 32, 0, norm="rmsnorm", use_tanh=False)
    assert (hc.n, hc.d, hc.layer_index, hc.dynamic, hc.norm, hc.use_tanh, hc.use_norm, hc.use_scale) == (
        4, 32, 0, True, "rmsnorm", False, True, True)
    fc = FracConnections(4, 32, dynamic=False)
    assert fc.plan == connections.fc_plan(4, 32, dynamic=False)
    assert (fc.m, fc.d, fc.dynamic, fc.norm) == (4, 32, False, "layernorm")
    assert list(fc.params()) == ["Y", "A", "B"]
    with pytest.raises(ValueError, match=r"^HyperConnections\(n=4, d=32, layer_index=0\): expected H of shape "
                                         r"\(\.\.\., 4, 32\).*got shape \(2, 10, 32\).*Expand\(4\)"):
        hc(mx.ones((2, 10, 32)), mx.tanh)
    with pytest.raises(ValueError, match=r"^FracConnections\(m=4, d=32\): expected H of shape \(\.\.\., 4, 8\)"
                                         r".*FracSplit\(4\)"):
        fc(mx.ones((2, 10, 32)), mx.tanh)
    h0, state = hc.width(mx.ones((2, 4, 32)))
    assert h0.shape == (2, 32)
    assert isinstance(state, connections.SiteState)
    with pytest.raises(ValueError, match=r"^HyperConnections\(n=4, d=32, layer_index=0\)\.depth: expected the "
                                         r"branch output y of shape \(2, 32\)"):
        hc.depth(mx.ones((2, 31)), state)
