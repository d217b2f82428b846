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
from hcref.checks import random_inputs
from hcref.connections import SiteNumbering
from hcref.optable import MHC_OPS
from hcref.tolerances import tolerance

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


# --- numerics (issue 13): extreme scales, mixed precision, empty batches --------------------------

SCALES = (-100, 0, 50, 66)
"""States scaled by 2^k: about 1e-30, 1, 1e15 and 1e20, exactly (powers of two) in every dtype."""

TINY = 1e-36
"""Absolute error allowed on top of the relative bounds: 100 times float32's smallest normal number.
Exact values below it are outside float32's normal range and flushed to 0 by XLA (at 1e-30 the
head's gradients of ``phi`` and ``gate`` are about 1e-58: 0 in float32, rightly)."""


def _scale_inputs(name: str, state: str, rng: np.random.Generator) -> list[Any]:
    """Inputs of ``name`` with the state (H, y) in ``state`` with entries in [-1, 1), everything else
    float32 (D12 mixed precision for a half state); ``phi`` times 4, so that ``vec(H) phi`` of the
    unnormalised state exceeds float32 at 2^127."""
    inputs = random_inputs(name, rng, (5,), 3, 4)
    out: list[Any] = []
    for arg, x in zip(MHC_OPS[name].inputs, inputs):
        if arg in ("H", "y"):
            out.append(backend.asarray(rng.uniform(-1, 1, size=x.shape), state, "cpu"))
        elif arg == "params":
            out.append({k: backend.asarray(v * (4 if k == "phi" else 1), "float32", "cpu") for k, v in x.items()})
        else:
            out.append(backend.asarray(x, "float32", "cpu"))
    return out


def _at_scale(name: str, inputs: list[Any], k: int) -> list[Any]:
    return [x * 2.0**k if arg in ("H", "y") else x for arg, x in zip(MHC_OPS[name].inputs, inputs)]


def _grads_flat(grads: Any) -> list[np.ndarray]:
    """Cotangents as float64 arrays, a mapping's by sorted key (as ``mhc_cases``)."""
    return [a for g in grads for a in mc._flat(mc.f64(backend, g))]


@pytest.mark.parametrize("state", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["mhc_coeffs", "mhc_head", "mhc_pre", "mhc_post"])
def test_state_scales_give_finite_right_and_scale_exact_results(name: str, state: str) -> None:
    """Issue 13 per op: states scaled by 2^k (k in SCALES, and 2^127 at the top of float32 and
    bfloat16 for the coefficient ops, where the unnormalised ``vec(H) phi`` overflows): outputs and
    gradients finite and within the suite's tolerances of the float64 reference on the same values;
    the coefficients (mhc_coeffs, the head's weights) bit for bit the same at 2^50, 2^66 and 2^127
    (scale-safe RMS, D12), and the linear ops (mhc_pre, mhc_post, the head's reduce) exactly 2^k
    times their value at 1."""
    rng = np.random.default_rng(41)
    base = _scale_inputs(name, state, rng)
    options = {"eps": 1e-6} if name == "mhc_head" else {"iters": 6} if name == "mhc_coeffs" else {}
    first = mc.outs(getattr(backend, name)(*base, **options))
    cots = [backend.asarray(rng.standard_normal(o.shape), backend.dtype_name(o), "cpu") for o in first]
    k_contract = 12 if name in ("mhc_coeffs", "mhc_head") else 3
    results = {}
    for k in (*SCALES, 127) if name in ("mhc_coeffs", "mhc_head") else SCALES:
        inputs = _at_scale(name, base, k)
        outs = mc.outs(getattr(backend, name)(*inputs, **options))
        ref_inputs = [mc.f64(backend, x) for x in inputs]
        ref = mc.outs(getattr(hcref, name)(*ref_inputs, **options))
        for o, r in zip(outs, ref, strict=True):
            got = mc.f64(backend, o)
            assert np.isfinite(got).all(), (name, k)
            tol = tolerance(backend.dtype_name(o), "forward", contraction=k_contract)
            assert mc.error_ratio([got], [r], tol.rtol, TINY) <= 1, (name, k)
        results[k] = [mc.f64(backend, o) for o in outs]
        if k > 66:
            continue  # the exact gradients at 2^127 leave float32's range
        grads = mc.backend_vjp(backend, backend, name, inputs, cots, options)
        expected = mc.reference_vjp(name, tuple(ref_inputs), [mc.f64(backend, c) for c in cots], options)
        ref_flat = [a for e in expected for a in mc._flat(e)]
        for got, r in zip(_grads_flat(grads), ref_flat, strict=True):
            assert np.isfinite(got).all(), (name, k)
            gtol = tolerance("float32" if state == "float32" else state, "gradient", contraction=k_contract)
            assert mc.error_ratio([got], [r], gtol.rtol, TINY) <= 1, (name, k)
    if name == "mhc_coeffs":
        for k in (66, 127):
            for a, b in zip(results[k], results[50], strict=True):
                np.testing.assert_array_equal(a, b)
    else:
        top = (66, 127) if name == "mhc_head" else (-100, 50, 66)
        origin = 50 if name == "mhc_head" else 0
        for k in top:
            np.testing.assert_array_equal(results[k][0], results[origin][0] * 2.0 ** (k - origin))


def test_modules_on_half_states_extreme_scales_and_empty_batches() -> None:
    """The mHC modules with float32 parameters (D12): on a bfloat16 state h0 and H_out stay bfloat16,
    the coefficients float32 (float32-accurate), the head's output bfloat16; coefficients equal bit
    for bit at 2^50 and 2^127 times the state and gradients finite at 1e-30 and 1e20; size-0 leading
    axes give empty outputs and exactly zero parameter gradients."""
    n, d = 3, 4
    site = ManifoldHyperConnections(n, d, 1, iters=6)
    head = MHCHead(n, d)
    _perturb(site, 3)
    _perturb(head, 4)
    rng = np.random.default_rng(42)
    H = jnp.asarray(rng.uniform(-1, 1, size=(5, n, d)), jnp.bfloat16)

    def run(site: Any, head: Any, H: jax.Array) -> tuple[jax.Array, Any, jax.Array, jax.Array]:
        h0, state = site.width(H)
        H_out = site.depth(jnp.tanh(h0), state)
        return h0, state, H_out, head(H_out)

    h0, state, H_out, x = nnx.jit(run)(site, head, H)
    assert h0.dtype == H_out.dtype == x.dtype == jnp.bfloat16
    assert state.h_post.dtype == state.h_res.dtype == jnp.float32 and state.H.dtype == jnp.bfloat16
    p64 = {k: np.asarray(v, np.float64) for k, v in site.params().items()}
    ref = hcref.mhc_coeffs(np.asarray(H, np.float64), p64, iters=6)
    tol = tolerance("float32", "forward", contraction=n * d)
    for got, r in zip((state.h_post, state.h_res), ref[1:]):
        assert mc.error_ratio([np.asarray(got, np.float64)], [r], tol.rtol, tol.atol) <= 1
    width = nnx.jit(lambda site, H: site.width(H)[1])
    coeffs = {k: width(site, H * 2.0**k) for k in (50, 127)}
    np.testing.assert_array_equal(np.asarray(coeffs[50].h_res), np.asarray(coeffs[127].h_res))
    np.testing.assert_array_equal(np.asarray(coeffs[50].h_post), np.asarray(coeffs[127].h_post))

    def loss(site: Any, head: Any, H: jax.Array) -> jax.Array:
        return jnp.sum(head(site(H, jnp.tanh)).astype(jnp.float32))

    grad = nnx.jit(nnx.grad(loss, argnums=(0, 1)))
    for k in (-100, 66):
        for g in jax.tree.leaves(nnx.to_pure_dict(nnx.state(grad(site, head, H * 2.0**k), nnx.Param))):
            assert np.isfinite(np.asarray(g, np.float64)).all(), k
    for lead in ((0,), (2, 0)):
        empty = jnp.zeros((*lead, n, d), jnp.bfloat16)
        _, _, H_out, x = run(site, head, empty)
        assert H_out.shape == (*lead, n, d) and x.shape == (*lead, d)
        g_site, g_head = grad(site, head, empty)
        for g in (*jax.tree.leaves(nnx.to_pure_dict(g_site)), *jax.tree.leaves(nnx.to_pure_dict(g_head))):
            assert not np.any(np.asarray(g, np.float64)), lead
