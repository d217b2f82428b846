"""hcref_jax's functional ops against the NumPy reference: forward, ``jax.vjp`` (jitted) against the
reference's hand-derived ``<op>_vjp``, jit / vmap / grad with no shape branching on traced values,
the half-precision policy (D12), and input errors (raised at trace time, word for word the
reference's)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)  # float64 tier; affects this process only (no other test uses jax)

import hcref_jax
import jax.numpy as jnp
from hcref_jax import backend
from op_cases import ALL_CASES, IDS, LOW_CASES, LOW_IDS, check_lower_precision
from op_cases import bad_cases as _bad_cases
from op_cases import outs as _outs
from op_cases import params as _params

import hcref
from hcref.optable import OPS


def _to_jax(x: Any, dtype: Any = None) -> Any:
    dtype = dtype or jnp.float64
    if isinstance(x, dict):
        return {key: jnp.asarray(value, dtype=dtype) for key, value in x.items()}
    if isinstance(x, np.ndarray):
        return jnp.asarray(x, dtype=dtype)
    return x




@pytest.mark.parametrize(("name", "inputs", "options"), ALL_CASES, ids=IDS)
def test_forward_matches_reference(name: str, inputs: tuple[Any, ...], options: dict[str, Any]) -> None:
    """Eager functional op and the backend's jitted op both equal the float64 reference."""
    expected = _outs(getattr(hcref, name)(*inputs, **options))
    j_inputs = [_to_jax(x) for x in inputs]
    for op in (getattr(hcref_jax, name), getattr(backend, name)):
        got = _outs(op(*j_inputs, **options))
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert isinstance(g, jax.Array)
            assert g.dtype == jnp.float64
            assert tuple(g.shape) == e.shape
            np.testing.assert_allclose(np.asarray(g), e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "inputs", "options"), ALL_CASES, ids=IDS)
def test_vjp_matches_reference(name: str, inputs: tuple[Any, ...], options: dict[str, Any]) -> None:
    spec = OPS[name]
    rng = np.random.default_rng(7)
    outs = _outs(getattr(hcref, name)(*inputs, **options))
    cots = [rng.normal(size=o.shape) for o in outs]
    expected = getattr(hcref, spec.vjp_name)(*inputs, *cots, **options)
    diff_idx = [spec.inputs.index(arg) for arg in spec.differentiable]
    j_inputs = [_to_jax(x) for x in inputs]

    def fn(*primals: Any) -> Any:
        args = list(j_inputs)
        for i, p in zip(diff_idx, primals):
            args[i] = p
        return getattr(hcref_jax, name)(*args, **options)

    got = backend.vjp(fn, [j_inputs[i] for i in diff_idx], [jnp.asarray(c) for c in cots])
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if isinstance(e, dict):
            assert set(g) == set(e)
            for key in e:
                assert g[key].dtype == jnp.float64
                np.testing.assert_allclose(np.asarray(g[key]), e[key], rtol=1e-10, atol=1e-12, err_msg=key)
        else:
            assert g.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(g), e, rtol=1e-10, atol=1e-12)


def test_vjp_gives_zeros_for_unused_primals_none_for_non_arrays_and_checks_cotangents() -> None:
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)))
    unused = jnp.asarray(np.random.default_rng(1).normal(size=(2,)))
    g_x, g_unused, g_n = backend.vjp(lambda a, b, n: hcref_jax.expand(a, n), [x, unused, 2], [jnp.ones((3, 2, 4))])
    np.testing.assert_array_equal(np.asarray(g_x), np.full((3, 4), 2.0))
    np.testing.assert_array_equal(np.asarray(g_unused), np.zeros(2))
    assert g_n is None
    with pytest.raises(ValueError, match="cotangents: expected 1 arrays"):
        backend.vjp(lambda a: hcref_jax.expand(a, 2), [x], [jnp.ones((3, 2, 4)), jnp.ones(1)])
    with pytest.raises(ValueError, match=r"cotangents: expected shape \(3, 2, 4\)"):
        backend.vjp(lambda a: hcref_jax.expand(a, 2), [x], [jnp.ones((3, 4))])


def test_vjp_jitted_as_one_program_agrees() -> None:
    """``JaxBackend(jit_vjp=True)`` jits the whole pullback; it gives the same cotangents."""
    rng = np.random.default_rng(4)
    H = jnp.asarray(rng.normal(size=(5, 3, 4)))
    params = _to_jax(_params("hc", 3, 4, rng, dynamic=True, norm="layernorm"))
    cots = [jnp.asarray(rng.normal(size=(5, 3, 4))), jnp.asarray(rng.normal(size=(5, 3)))]
    eager = backend.vjp(hcref_jax.hc_coeffs, [H, params], cots)
    jitted = hcref_jax.JaxBackend(jit_vjp=True).vjp(hcref_jax.hc_coeffs, [H, params], cots)
    np.testing.assert_allclose(np.asarray(jitted[0]), np.asarray(eager[0]), rtol=1e-13, atol=1e-14)
    for key in params:
        np.testing.assert_allclose(np.asarray(jitted[1][key]), np.asarray(eager[1][key]), rtol=1e-13, atol=1e-14)


def test_jit_vmap_and_grad_compose() -> None:
    """A whole HC site and an FC site written with the ops: jitted equals eager, vmap over a batch
    axis equals the batched call (the checks see per-example shapes), and ``jax.grad`` of the jitted
    site equals the reference's chained VJPs."""
    rng = np.random.default_rng(0)
    n, d = 3, 6
    p = _params("hc", n, d, rng, dynamic=True, norm="rmsnorm")
    W = rng.normal(size=(d, d)) / d**0.5
    H = rng.normal(size=(4, 5, n, d))

    def site(H: Any, params: Any) -> Any:
        alpha, beta = hcref_jax.hc_coeffs(H, params, norm="rmsnorm")
        h0, H_res = hcref_jax.hc_width(H, alpha)
        return hcref_jax.hc_depth(jnp.tanh(h0 @ W), H_res, beta)

    jp = _to_jax(p)
    eager = site(jnp.asarray(H), jp)
    jitted = jax.jit(site)(jnp.asarray(H), jp)
    vmapped = jax.vmap(site, in_axes=(0, None))(jnp.asarray(H), jp)
    vmapped2 = jax.vmap(jax.vmap(site, in_axes=(0, None)), in_axes=(0, None))(jnp.asarray(H), jp)
    for got in (jitted, vmapped, vmapped2):
        np.testing.assert_allclose(np.asarray(got), np.asarray(eager), rtol=1e-13, atol=1e-13)

    G = rng.normal(size=H.shape)
    g_H, g_p = jax.jit(jax.grad(lambda H, params: jnp.sum(site(H, params) * G), argnums=(0, 1)))(jnp.asarray(H), jp)
    # reference: chain the hand-derived VJPs
    alpha, beta = hcref.hc_coeffs(H, p, norm="rmsnorm")
    h0, H_res = hcref.hc_width(H, alpha)
    pre = h0 @ W
    y = np.tanh(pre)
    g_y, g_res, g_beta = hcref.hc_depth_vjp(y, H_res, beta, G)
    g_h0 = ((1 - y**2) * g_y) @ W.T
    g_H1, g_alpha = hcref.hc_width_vjp(H, alpha, g_h0, g_res)
    g_H2, g_params = hcref.hc_coeffs_vjp(H, p, g_alpha, g_beta, norm="rmsnorm")
    np.testing.assert_allclose(np.asarray(g_H), g_H1 + g_H2, rtol=1e-10, atol=1e-12)
    for key in p:
        np.testing.assert_allclose(np.asarray(g_p[key]), g_params[key], rtol=1e-10, atol=1e-12, err_msg=key)

    x = rng.normal(size=(7, 6))
    fc = _to_jax(_params("fc", 2, 6, rng, dynamic=True, norm="layernorm"))

    def fc_site(x: Any) -> Any:
        F = hcref_jax.frac_split(x, 2)
        alpha, beta = hcref_jax.fc_coeffs(F, fc)
        h0, F_res = hcref_jax.fc_width(F, alpha)
        return hcref_jax.frac_merge(hcref_jax.fc_depth(jnp.sin(h0), F_res, beta))

    np.testing.assert_allclose(
        np.asarray(jax.vmap(fc_site)(jnp.asarray(x))), np.asarray(jax.jit(fc_site)(jnp.asarray(x))), rtol=1e-13
    )


def test_reverse_over_reverse_matches_finite_differences() -> None:
    """The hand-written VJPs (custom_vjp) are themselves differentiable: a Hessian-vector product of
    a dynamic HC site (grad of <grad, v>) equals central differences of the jitted gradient, float64."""
    rng = np.random.default_rng(3)
    n, d = 3, 5
    p = _to_jax(_params("hc", n, d, rng, dynamic=True, norm="rmsnorm"))
    W = jnp.asarray(rng.normal(size=(d, d)) / d**0.5)
    G = jnp.asarray(rng.normal(size=(4, n, d)))

    def loss(H: Any) -> Any:
        alpha, beta = hcref_jax.hc_coeffs(H, p, norm="rmsnorm")
        h0, H_res = hcref_jax.hc_width(H, alpha)
        return jnp.sum(hcref_jax.hc_depth(jnp.tanh(h0 @ W), H_res, beta) * G)

    H = jnp.asarray(rng.normal(size=(4, n, d)))
    direction = jnp.asarray(rng.normal(size=H.shape))
    grad = jax.jit(jax.grad(loss))
    hvp = jax.jit(jax.grad(lambda H: jnp.vdot(jax.grad(loss)(H), direction)))(H)
    eps = 1e-5
    fd = (grad(H + eps * direction) - grad(H - eps * direction)) / (2 * eps)
    assert float(jnp.abs(hvp).max()) > 1e-2  # a non-trivial second derivative
    np.testing.assert_allclose(np.asarray(hvp), np.asarray(fd), rtol=1e-6, atol=1e-8)


def test_forward_mode_is_refused_not_wrong() -> None:
    """Documented limitation: width/depth are custom_vjp functions, so forward mode raises a
    TypeError rather than returning anything."""
    rng = np.random.default_rng(4)
    H = jnp.asarray(rng.normal(size=(2, 3, 4)))
    alpha = jnp.asarray(rng.normal(size=(2, 3, 4)))
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda H: hcref_jax.hc_width(H, alpha)[1], (H,), (H,))


def test_ops_trace_once_per_shape() -> None:
    """Validation runs in Python at trace time only: a jitted op is traced once per shape/dtype and
    later calls (new values) never re-run the checks or retrace."""
    traces = []

    def counted(H: Any, alpha: Any) -> Any:
        traces.append(H.shape)
        return hcref_jax.hc_width(H, alpha)

    f = jax.jit(counted)
    rng = np.random.default_rng(0)
    for _ in range(3):
        f(jnp.asarray(rng.normal(size=(5, 2, 4))), jnp.asarray(rng.normal(size=(5, 2, 3))))
    assert traces == [(5, 2, 4)]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_inputs_accumulate_in_float32(dtype: Any) -> None:
    """D12: the mixing of half inputs is float32-accumulated then rounded once, so it equals the
    float64 reference on the same (rounded) values rounded to the half dtype, up to one rounding."""
    rng = np.random.default_rng(3)
    n, d = 4, 64
    H = jnp.asarray(rng.normal(size=(32, n, d)), dtype=dtype)
    alpha = jnp.asarray(rng.normal(size=(32, n, n + 1)), dtype=dtype)
    h0, H_res = jax.jit(hcref_jax.hc_width)(H, alpha)
    assert h0.dtype == dtype and H_res.dtype == dtype
    ref_h0, ref_res = hcref.hc_width(np.asarray(H, np.float64), np.asarray(alpha, np.float64))
    eps = float(jnp.finfo(dtype).eps)
    for got, ref in ((h0, ref_h0), (H_res, ref_res)):
        ref_rounded = np.asarray(jnp.asarray(ref).astype(dtype), np.float64)
        ulp = eps * np.maximum(np.abs(ref_rounded), 1e-3)
        assert np.all(np.abs(np.asarray(got, np.float64) - ref_rounded) <= ulp + 1e-30)

    params = _to_jax(_params("hc", n, d, rng, dynamic=True, norm="layernorm"), dtype)
    alpha2, beta2 = jax.jit(hcref_jax.hc_coeffs)(H, params)
    assert alpha2.dtype == dtype and beta2.dtype == dtype
    ref_a, ref_b = hcref.hc_coeffs(np.asarray(H, np.float64), {k: np.asarray(v, np.float64) for k, v in params.items()})
    tol = 2 * eps
    np.testing.assert_allclose(np.asarray(alpha2, np.float64), ref_a, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(beta2, np.float64), ref_b, rtol=tol, atol=tol)


def test_half_mixing_is_a_float32_dot_general() -> None:
    """The lowered mixing of bfloat16 inputs is a dot_general with a float32 result (preferred_element_type)."""
    H = jnp.ones((8, 4, 16), jnp.bfloat16)
    alpha = jnp.ones((8, 4, 5), jnp.bfloat16)
    jaxpr = str(jax.make_jaxpr(hcref_jax.hc_width)(H, alpha))
    assert "dot_general" in jaxpr and "preferred_element_type=float32" in jaxpr


def _jnp_inputs(inputs: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    for x in inputs:
        if isinstance(x, np.ndarray):
            out.append(jnp.asarray(x))
        elif isinstance(x, dict):
            out.append({k: jnp.asarray(v) for k, v in x.items()})
        else:
            out.append(x)
    return out


@pytest.mark.parametrize(("name", "inputs", "options"), _bad_cases(), ids=lambda x: x if isinstance(x, str) else "")
def test_bad_inputs_raise_the_reference_errors(name: str, inputs: tuple[Any, ...], options: dict[str, Any]) -> None:
    """Eagerly, under ``jax.jit`` (the backend's ops: raised at trace time) and inside a user's jit."""
    with pytest.raises((ValueError, TypeError)) as ref:
        getattr(hcref, name)(*inputs, **options)
    j_inputs = _jnp_inputs(inputs)
    with pytest.raises(ref.type) as got:
        getattr(hcref_jax, name)(*j_inputs, **options)
    assert str(got.value) == str(ref.value)
    with pytest.raises(ref.type) as got_jit:
        getattr(backend, name)(*j_inputs, **options)
    assert str(got_jit.value) == str(ref.value)
    arrays = [i for i, x in enumerate(j_inputs) if isinstance(x, jax.Array)]
    if arrays:

        def traced(*xs: Any) -> Any:
            args = list(j_inputs)
            for i, x in zip(arrays, xs):
                args[i] = x
            return getattr(hcref_jax, name)(*args, **options)

        with pytest.raises(ref.type) as got_traced:
            jax.jit(traced)(*(j_inputs[i] for i in arrays))
        assert str(got_traced.value) == str(ref.value)


def test_non_array_input_names_the_argument() -> None:
    with pytest.raises(TypeError, match=r"^H: expected a jax.Array, got list$"):
        hcref_jax.reduce([[1.0, 2.0]])  # type: ignore[arg-type]


def test_backend_satisfies_the_interface() -> None:
    import inspect

    from hcref.interface import OP_NAMES, Backend, missing_members

    assert missing_members(backend) == []
    assert isinstance(backend, Backend)
    assert backend.name == "hcref_jax" and backend.framework_version.startswith("jax ")
    for dtype in ("float64", "float32", "bfloat16", "float16"):
        assert ("cpu", dtype) in backend.capabilities()
    for name in OP_NAMES:
        assert list(inspect.signature(getattr(backend, name)).parameters) == list(
            inspect.signature(getattr(hcref, name)).parameters
        ), name
    x = np.array([1.0, 1.0 + 2.0**-10, 3.5])
    t = backend.asarray(x, "bfloat16", "cpu")
    assert backend.dtype_name(t) == "bfloat16"
    back = backend.to_numpy(t)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, np.array([1.0, 1.0, 3.5], dtype=np.float32))
    t64 = backend.asarray(x, "float64", "cpu")
    assert backend.dtype_name(t64) == "float64"
    np.testing.assert_array_equal(backend.to_numpy(t64), x)
    with pytest.raises(ValueError, match="device/dtype"):
        backend.asarray(x, "int8", "cpu")
    backend.prepare_for_conformance()
    assert jax.config.jax_enable_x64


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(("name", "inputs", "options"), LOW_CASES, ids=LOW_IDS)
def test_lower_precision_against_float64_reference(
    dtype_name: str, name: str, inputs: tuple[Any, ...], options: dict[str, Any]
) -> None:
    """Forward and VJP in float32/bfloat16/float16 against the float64 reference on the same rounded
    values (see op_cases.check_lower_precision)."""
    check_lower_precision(backend, name, inputs, options, dtype_name)
