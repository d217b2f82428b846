"""hcref_jax's mHC ops and Flax NNX modules against the NumPy reference: forward and ``jax.vjp`` in
float64, float32 and bfloat16 (tests/mhc_cases.py, ops jitted as the backend jits them), extreme
logits, mixed precision, bad inputs (raised at trace time), size-0 leading axes, jit / vmap / grad,
and the modules (against the functional ops, ``nnx.jit`` / ``nnx.grad``, Pre-Norm at init, friendly
errors)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import mhc_cases as mc
from hcref_jax import Expand, Reduce, backend
from hcref_jax import mhc as eager_ops
from hcref_jax.mhc_modules import ManifoldHyperConnections, MHCHead

import hcref
from hcref.connections import SiteNumbering

_OPTIONS = {"sinkhorn": ("iters", "eps"), "mhc_coeffs": ("iters", "eps"), "mhc_head": ("eps",)}
ops = SimpleNamespace(
    **{
        name: jax.jit(getattr(eager_ops, name), static_argnames=_OPTIONS.get(name, ()))
        for name in ("sinkhorn", "mhc_coeffs", "mhc_pre", "mhc_post", "mhc_head")
    }
)
"""The ops jitted with static options, as the backend object serves them."""

F64_CASES = [c for i, c in enumerate(mc.CASES) if i in (0, 1, 2, 4, 5, 6, 8, 9, 11)]
F64_IDS = [i for i, _ in zip(mc.IDS, mc.CASES) if i.split("-")[1] in ("0", "1", "2", "4", "5", "6", "8", "9", "11")]


@pytest.mark.parametrize("case", F64_CASES, ids=F64_IDS)
def test_float64_matches_the_reference(case: mc.Case) -> None:
    mc.check_float64(backend, ops, case)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", mc.LOW_CASES, ids=mc.LOW_IDS)
def test_lower_precision_within_the_suite_tolerances(case: mc.Case, dtype: str) -> None:
    mc.check_lower(backend, ops, case, dtype)


@pytest.mark.parametrize("case", mc.extreme_cases(), ids=lambda c: c[0] if isinstance(c, tuple) else "")
def test_extreme_logits_and_states_are_finite_and_right(case: Any) -> None:
    mc.check_extreme(backend, ops, case)


def test_mixed_precision_dtypes() -> None:
    mc.check_mixed(backend, ops, "bfloat16")


@pytest.mark.parametrize("case", mc.bad_cases(), ids=mc.BAD_IDS)
def test_bad_inputs_raise_the_reference_errors_at_trace_time(case: mc.Case) -> None:
    mc.check_bad(ops, jnp.asarray, case)


def test_size_zero_leading_axes() -> None:
    mc.check_empty(backend, ops, (2, 0))


def test_jit_vmap_and_grad_compose() -> None:
    """A whole mHC site written with the ops: vmap over tokens (params shared) equals the batched
    call; per-token parameter gradients (vmap of grad, under jit) sum to the batched gradient and
    equal the reference's VJP token by token."""
    rng = np.random.default_rng(0)
    H, params = (jnp.asarray(x) if not isinstance(x, dict) else {k: jnp.asarray(v) for k, v in x.items()}
                 for x in hcref.checks.random_inputs("mhc_coeffs", rng, (5,), 3, 4))
    G = jnp.asarray(rng.standard_normal((5, 3, 4)))

    def site(H: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
        h_pre, h_post, h_res = eager_ops.mhc_coeffs(H, p, iters=4, eps=1e-6)
        return eager_ops.mhc_post(jnp.tanh(eager_ops.mhc_pre(H, h_pre)), H, h_post, h_res)

    batched = site(H, params)
    np.testing.assert_allclose(np.asarray(jax.vmap(site, in_axes=(0, None))(H, params)), np.asarray(batched),
                               rtol=1e-14, atol=1e-14)

    def loss(p: dict[str, jax.Array], H: jax.Array, G: jax.Array) -> jax.Array:
        return jnp.sum(site(H, p) * G)

    per_token = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(params, H, G)
    total = jax.grad(loss)(params, H, G)
    for key in params:
        np.testing.assert_allclose(np.asarray(per_token[key].sum(0)), np.asarray(total[key]), rtol=1e-12, atol=1e-13)
    # token 2 against the reference chain of hand-derived VJPs
    H2, G2 = np.asarray(H[2]), np.asarray(G[2])
    p64 = {k: np.asarray(v) for k, v in params.items()}
    h_pre, h_post, h_res = hcref.mhc_coeffs(H2, p64, iters=4, eps=1e-6)
    h0 = hcref.mhc_pre(H2, h_pre)
    g_y, _, g_post, g_res = hcref.mhc_post_vjp(np.tanh(h0), H2, h_post, h_res, G2)
    _, g_pre = hcref.mhc_pre_vjp(H2, h_pre, g_y * (1 - np.tanh(h0) ** 2))
    _, g_p = hcref.mhc_coeffs_vjp(H2, p64, g_pre, g_post, g_res, iters=4, eps=1e-6)
    for key in params:
        np.testing.assert_allclose(np.asarray(per_token[key][2]), g_p[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_backend_object_serves_every_op_of_the_table() -> None:
    """``hcref_jax.backend`` carries every op of :data:`hcref.optable.ALL_OPS` (HC, FC and mHC) under
    the reference's parameter names, and its jitted mHC ops (static ``iters`` / ``eps``) give the
    reference's values and gradients; the package exports the mHC ops and modules."""
    import inspect

    import hcref_jax

    from hcref.optable import ALL_OPS

    for name in ALL_OPS:
        assert callable(getattr(backend, name)), name
        assert list(inspect.signature(getattr(backend, name)).parameters) == list(
            inspect.signature(getattr(hcref, name)).parameters
        ), name
        assert name in hcref_jax.__all__ and getattr(hcref_jax, name) is not None, name
    assert hcref_jax.ManifoldHyperConnections is ManifoldHyperConnections and hcref_jax.MHCHead is MHCHead
    for case in (mc.CASES[1], mc.CASES[5], mc.CASES[8], mc.CASES[9], mc.CASES[11]):
        mc.check_float64(backend, backend, case)


def test_eager_sinkhorn_traces_once_per_shape() -> None:
    """The scan bodies are module-level functions: a second eager call of the same shape does not
    trace Sinkhorn's loop again (no recompilation per call)."""
    Z = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4, 4)))
    eager_ops.sinkhorn(Z)
    traced: list[int] = []
    original = eager_ops._logsumexp

    def counting(X: jax.Array, axis: int) -> jax.Array:
        traced.append(axis)
        return original(X, axis)

    eager_ops._logsumexp = counting
    try:
        eager_ops.sinkhorn(Z)
        assert traced == []
        eager_ops.sinkhorn(Z[:2])  # a new shape is traced (the counter sees tracing)
    finally:
        eager_ops._logsumexp = original
    assert traced == [-2, -1]


# --- modules -----------------------------------------------------------------------------------


def _perturb(module: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for key in module.param_keys:
        p = getattr(module, key)
        p[...] = p[...] + jnp.asarray(0.3 * rng.normal(size=p[...].shape), dtype=p[...].dtype)


def test_parameters_are_the_contract_keys_at_the_reference_init() -> None:
    for module, expected in (
        (ManifoldHyperConnections(4, 8, 5), hcref.init_mhc(4, 8, 5)),
        (ManifoldHyperConnections(4, 8, 1, dynamic=False, preset="lucidrains"),
         hcref.init_mhc(4, 8, 1, dynamic=False, preset="lucidrains")),
        (MHCHead(4, 8), hcref.init_mhc_head(4, 8)),
    ):
        assert list(module.params()) == list(expected)
        state = nnx.to_pure_dict(nnx.state(module, nnx.Param))
        assert set(state) == set(expected)
        for key, value in expected.items():
            assert state[key].dtype == jnp.float32, key
            np.testing.assert_array_equal(np.asarray(state[key]), value.astype(np.float32), err_msg=key)


def test_modules_equal_the_functional_ops_under_nnx_jit_and_grad() -> None:
    """Loss and gradients (H and every parameter) of ``head(site(H, branch))``, eager, two-step and
    under ``nnx.jit(nnx.value_and_grad)``, equal those of the functional ops; a split module runs
    under ``jax.jit``."""
    n, d = 3, 8
    site = ManifoldHyperConnections(n, d, 1, iters=5, eps=1e-6, param_dtype=jnp.float64)
    head = MHCHead(n, d, param_dtype=jnp.float64)
    _perturb(site, 1)
    _perturb(head, 2)
    rng = np.random.default_rng(0)
    H = jnp.asarray(rng.normal(size=(2, 5, n, d)))
    G = jnp.asarray(rng.normal(size=(2, 5, d)))

    def functional(p: dict[str, jax.Array], ph: dict[str, jax.Array], H: jax.Array) -> jax.Array:
        h_pre, h_post, h_res = eager_ops.mhc_coeffs(H, p, iters=5, eps=1e-6)
        H_out = eager_ops.mhc_post(jnp.tanh(eager_ops.mhc_pre(H, h_pre)), H, h_post, h_res)
        return jnp.sum(eager_ops.mhc_head(H_out, ph) * G)

    expected, (g_p, g_ph, g_H) = jax.value_and_grad(functional, argnums=(0, 1, 2))(site.params(), head.params(), H)

    def one_call(site: Any, head: Any, H: jax.Array) -> jax.Array:
        return jnp.sum(head(site(H, jnp.tanh)) * G)

    def two_step(site: Any, head: Any, H: jax.Array) -> jax.Array:
        h0, state = site.width(H)
        return jnp.sum(head(site.depth(jnp.tanh(h0), state)) * G)

    for what, run in (("two-step", nnx.value_and_grad(two_step, argnums=(0, 1, 2))),
                      ("nnx.jit", nnx.jit(nnx.value_and_grad(one_call, argnums=(0, 1, 2))))):
        loss, (gs, gh, gH) = run(site, head, H)
        np.testing.assert_allclose(float(loss), float(expected), rtol=1e-13, err_msg=what)
        np.testing.assert_allclose(np.asarray(gH), np.asarray(g_H), rtol=1e-12, atol=1e-13, err_msg=what)
        for got, want in ((nnx.to_pure_dict(gs), g_p), (nnx.to_pure_dict(gh), g_ph)):
            assert set(got) == set(want)
            for key in want:
                np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-12, atol=1e-13,
                                           err_msg=f"{what} {key}")
    graphdef, state = nnx.split(site)
    pure = jax.jit(lambda state, H: nnx.merge(graphdef, state)(H, jnp.tanh))
    h_pre, h_post, h_res = eager_ops.mhc_coeffs(H, site.params(), iters=5, eps=1e-6)
    want = eager_ops.mhc_post(jnp.tanh(eager_ops.mhc_pre(H, h_pre)), H, h_post, h_res)
    np.testing.assert_allclose(np.asarray(pure(state, H)), np.asarray(want), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("n", [1, 4])
def test_at_init_hc_like_mhc_is_the_prenorm_residual(n: int) -> None:
    """mHC at its hc_like init on equal streams with scale-invariant sublayers (RMSNorm without
    epsilon first): Reduce gives n times the Pre-Norm residual stream, MHCHead n/2 times it."""
    d = 8
    rng = np.random.default_rng(0)
    weights = [(jnp.asarray(1 + 0.1 * rng.normal(size=d)), jnp.asarray(rng.normal(size=(d, d)) / 3)) for _ in range(4)]

    def block(w: tuple[jax.Array, jax.Array]) -> Any:
        return lambda h: jnp.tanh(w[0] * h * jax.lax.rsqrt(jnp.mean(h * h, -1, keepdims=True))) @ w[1]

    x = jnp.asarray(rng.normal(size=(3, d)))
    residual = x
    for w in weights:
        residual = residual + block(w)(residual)
    make = SiteNumbering(ManifoldHyperConnections, n, d, param_dtype=jnp.float64)
    H = Expand(n)(x)
    for w in weights:
        H = make()(H, block(w))
    np.testing.assert_allclose(np.asarray(Reduce()(H)), n * np.asarray(residual), rtol=1e-13, atol=1e-13)
    head = MHCHead(n, d, param_dtype=jnp.float64)
    np.testing.assert_allclose(np.asarray(head(H)), n / 2 * np.asarray(residual), rtol=1e-13, atol=1e-13)


def test_module_errors_name_the_module_and_the_fix() -> None:
    site = ManifoldHyperConnections(4, 32, 0)
    with pytest.raises(ValueError, match=r"^ManifoldHyperConnections\(n=4, d=32, layer_index=0\): expected H "
                                         r"of shape \(\.\.\., 4, 32\).*got shape \(2, 10, 32\).*Expand\(4\)"):
        nnx.jit(lambda m, H: m(H, jnp.tanh))(site, jnp.ones((2, 10, 32)))
    with pytest.raises(ValueError, match="preset: expected one of"):
        ManifoldHyperConnections(4, 32, 0, preset="identity")
