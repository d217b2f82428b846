"""hcref_jax's Flax NNX modules: parameter keys and initial values, agreement with the functional
ops (outputs and gradients, eager, ``nnx.jit`` and ``jax.jit`` over a split module), bfloat16
streams with float32 coefficient math, and the Pre-Norm equivalence at init."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
jax.config.update("jax_enable_x64", True)

import hcref_jax
import jax.numpy as jnp
from hcref_jax import Expand, FracConnections, FracMerge, FracSplit, HyperConnections, Reduce

import hcref


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "none"])
@pytest.mark.parametrize("dynamic", [True, False])
def test_parameters_are_the_contract_keys_at_the_reference_init(norm: str, dynamic: bool) -> None:
    modules: list[tuple[Any, dict[str, np.ndarray]]] = [
        (HyperConnections(4, 8, k, dynamic=dynamic, norm=norm), hcref.init_hc(4, 8, k, dynamic=dynamic, norm=norm))
        for k in (0, 5)
    ]
    modules.append((FracConnections(2, 8, dynamic=dynamic, norm=norm), hcref.init_fc(2, 8, dynamic=dynamic, norm=norm)))
    for module, expected in modules:
        assert list(module.params()) == list(expected)
        state = nnx.to_pure_dict(nnx.state(module, nnx.Param))
        assert set(state) == set(expected)
        for key, value in expected.items():
            assert state[key].dtype == jnp.float32, key
            np.testing.assert_array_equal(np.asarray(state[key]), value.astype(np.float32), err_msg=key)


def _perturb(module: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for key in module.param_keys:
        p = getattr(module, key)
        p[...] = p[...] + jnp.asarray(0.3 * rng.normal(size=p[...].shape), dtype=p[...].dtype)


class _Branch(nnx.Module):
    def __init__(self, d: int) -> None:
        rngs = nnx.Rngs(0)
        self.l1 = nnx.Linear(d, 2 * d, rngs=rngs, param_dtype=jnp.float64)
        self.l2 = nnx.Linear(2 * d, d, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(jnp.tanh(self.l1(x)))


@pytest.mark.parametrize("family", ["hc", "fc"])
def test_module_equals_functional_ops(family: str) -> None:
    """Outputs and gradients (H, every parameter, the branch's weights) of ``module(H, branch)``,
    of the two-step use and of the ``nnx.jit`` / ``jax.jit`` forms equal those of the functional ops
    on the same parameters."""
    d = 12
    rng = np.random.default_rng(0)
    if family == "hc":
        conn: Any = HyperConnections(3, d, 1, norm="rmsnorm", param_dtype=jnp.float64)
        H = jnp.asarray(rng.normal(size=(2, 5, 3, d)))
        coeffs, width, depth = hcref_jax.hc_coeffs, hcref_jax.hc_width, hcref_jax.hc_depth
    else:
        conn = FracConnections(3, d, param_dtype=jnp.float64)
        H = jnp.asarray(rng.normal(size=(2, 5, 3, d // 3)))
        coeffs, width, depth = hcref_jax.fc_coeffs, hcref_jax.fc_width, hcref_jax.fc_depth
    _perturb(conn, 1)
    branch = _Branch(d)
    G = jnp.asarray(rng.normal(size=H.shape))

    def one_call(conn: Any, branch: Any, H: jax.Array) -> jax.Array:
        return jnp.sum(conn(H, branch) * G)

    def two_step(conn: Any, branch: Any, H: jax.Array) -> jax.Array:
        h0, state = conn.width(H)
        return jnp.sum(conn.depth(branch(h0), state) * G)

    graphdef, branch_state = nnx.split(branch)

    def functional(params: dict[str, jax.Array], branch_state: Any, H: jax.Array) -> jax.Array:
        b = nnx.merge(graphdef, branch_state)
        alpha, beta = coeffs(H, params, norm=conn.norm)
        h0, H_res = width(H, alpha)
        return jnp.sum(depth(b(h0), H_res, beta) * G)

    loss_fn, (g_params, g_branch, g_H) = jax.value_and_grad(functional, argnums=(0, 1, 2))(
        conn.params(), branch_state, H
    )
    g_branch = nnx.to_pure_dict(g_branch)
    assert any(float(jnp.abs(g).max()) > 0 for g in g_params.values())

    runs = {
        "module": nnx.value_and_grad(one_call, argnums=(0, 1, 2)),
        "two-step": nnx.value_and_grad(two_step, argnums=(0, 1, 2)),
        "nnx.jit": nnx.jit(nnx.value_and_grad(one_call, argnums=(0, 1, 2))),
    }
    for what, run in runs.items():
        loss, (gc, gb, gH) = run(conn, branch, H)
        np.testing.assert_allclose(float(loss), float(loss_fn), rtol=1e-13, err_msg=what)
        np.testing.assert_allclose(np.asarray(gH), np.asarray(g_H), rtol=1e-12, atol=1e-13, err_msg=what)
        gc = nnx.to_pure_dict(gc)
        assert set(gc) == set(g_params), what
        for key in g_params:
            np.testing.assert_allclose(np.asarray(gc[key]), np.asarray(g_params[key]), rtol=1e-12, atol=1e-13,
                                       err_msg=f"{what} {key}")
        for (path, a), (_, b) in zip(
            jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(gb)), jax.tree_util.tree_leaves_with_path(g_branch)
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-13, err_msg=f"{what} {path}")

    # a pure function over the split connection module, under jax.jit
    conn_def, conn_state = nnx.split(conn)

    @jax.jit
    def pure(conn_state: Any, H: jax.Array) -> jax.Array:
        return nnx.merge(conn_def, conn_state)(H, branch)

    h0, H_res = width(H, coeffs(H, conn.params(), norm=conn.norm)[0])
    expected = depth(branch(h0), H_res, coeffs(H, conn.params(), norm=conn.norm)[1])
    np.testing.assert_allclose(np.asarray(pure(conn_state, H)), np.asarray(expected), rtol=1e-13, atol=1e-13)


def test_ends_modules_match_the_reference() -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 8))
    xj = jnp.asarray(x)
    np.testing.assert_array_equal(np.asarray(Expand(4)(xj)), hcref.expand(x, 4))
    np.testing.assert_array_equal(np.asarray(Reduce()(Expand(4)(xj))), hcref.reduce(hcref.expand(x, 4)))
    np.testing.assert_array_equal(np.asarray(FracSplit(2)(xj)), hcref.frac_split(x, 2))
    np.testing.assert_array_equal(np.asarray(FracMerge()(FracSplit(2)(xj))), x)


def test_bfloat16_streams_keep_coefficients_in_float32() -> None:
    """bfloat16 streams with float32 parameters: the coefficients come out float32 and
    float32-accurate against the float64 reference on the same values (not bfloat16-accurate);
    with bfloat16 parameters every result is bfloat16, within one bfloat16 rounding of the reference."""
    rng = np.random.default_rng(0)
    hc = HyperConnections(4, 32, 2)
    _perturb(hc, 0)
    Hb = jnp.asarray(rng.normal(size=(16, 4, 32)), dtype=jnp.bfloat16)
    H64 = np.asarray(Hb, np.float64)
    ref_alpha, ref_beta = hcref.hc_coeffs(H64, {k: np.asarray(v, np.float64) for k, v in hc.params().items()})
    alpha, beta = jax.jit(hcref_jax.hc_coeffs)(Hb, hc.params())
    assert alpha.dtype == jnp.float32 and beta.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(alpha, np.float64), ref_alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(beta, np.float64), ref_beta, rtol=1e-5, atol=1e-6)

    hcb = HyperConnections(4, 32, 2, param_dtype=jnp.bfloat16)
    _perturb(hcb, 0)
    h0, state = nnx.jit(lambda m, H: m.width(H))(hcb, Hb)
    assert h0.dtype == state.H_res.dtype == state.beta.dtype == jnp.bfloat16
    params64 = {k: np.asarray(v, np.float64) for k, v in hcb.params().items()}
    ref_alpha, ref_beta = hcref.hc_coeffs(H64, params64)
    eps = float(jnp.finfo(jnp.bfloat16).eps)
    np.testing.assert_allclose(np.asarray(state.beta, np.float64), ref_beta, rtol=eps, atol=eps)
    # the mixing is float32-accumulated from the (rounded) bfloat16 alpha, then rounded once
    alpha_b = np.asarray(jnp.asarray(hcref_jax.hc_coeffs(Hb, hcb.params())[0]), np.float64)
    ref_h0, _ = hcref.hc_width(H64, alpha_b)
    np.testing.assert_allclose(np.asarray(h0, np.float64), ref_h0, rtol=eps, atol=eps)


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
    d = 12
    rngs = nnx.Rngs(0)
    blocks = [
        nnx.Sequential(
            nnx.LayerNorm(d, rngs=rngs, param_dtype=jnp.float64), nnx.Linear(d, d, rngs=rngs, param_dtype=jnp.float64)
        )
        for _ in range(3)
    ]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, d)))
    residual = x
    for block in blocks:
        residual = residual + block(residual)
    H = Expand(n)(x)
    for k, block in enumerate(blocks):
        H = HyperConnections(n, d, k, param_dtype=jnp.float64)(H, block)
    np.testing.assert_allclose(np.asarray(Reduce()(H)), n * np.asarray(residual), rtol=1e-12, atol=1e-12)
    F = FracSplit(3)(x)
    for block in blocks:
        F = FracConnections(3, d, norm="rmsnorm", param_dtype=jnp.float64)(F, block)
    np.testing.assert_allclose(np.asarray(FracMerge()(F)), np.asarray(residual), rtol=1e-12, atol=1e-12)


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
        nnx.jit(lambda m, H: m(H, jnp.tanh))(hc, jnp.ones((2, 10, 32)))
    with pytest.raises(ValueError, match=r"^FracConnections\(m=4, d=32\): expected H of shape \(\.\.\., 4, 8\)"
                                         r".*FracSplit\(4\)"):
        fc(jnp.ones((2, 10, 32)), jnp.tanh)
    h0, state = hc.width(jnp.ones((2, 4, 32)))
    assert h0.shape == (2, 32)
    assert isinstance(state, connections.SiteState)
    with pytest.raises(ValueError, match=r"^HyperConnections\(n=4, d=32, layer_index=0\)\.depth: expected the "
                                         r"branch output y of shape \(2, 32\)"):
        hc.depth(jnp.ones((2, 31)), state)
