"""hcref_mlx's functional ops against the NumPy reference: forward, ``mx.vjp`` against the
reference's hand-derived ``<op>_vjp``, the half-precision policy (D12), input errors, the
backend object, and ``mx.compile``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

import hcref_mlx
from hcref_mlx import backend
from op_cases import ALL_CASES, IDS, LOW_CASES, LOW_IDS, check_lower_precision
from op_cases import bad_cases as _bad_cases
from op_cases import outs as _outs
from op_cases import params as _params

import hcref
from hcref.optable import OPS


def _to_mx(x: Any, dtype: str = "float64") -> Any:
    if isinstance(x, dict):
        return {key: backend.asarray(value, dtype, "cpu") for key, value in x.items()}
    if isinstance(x, np.ndarray):
        return backend.asarray(x, dtype, "cpu")
    return x


def _np(x: Any) -> Any:
    return backend.to_numpy(x).astype(np.float64)




@pytest.mark.parametrize(("name", "inputs", "options"), ALL_CASES, ids=IDS)
def test_forward_matches_reference(name: str, inputs: tuple[Any, ...], options: dict[str, Any]) -> None:
    expected = _outs(getattr(hcref, name)(*inputs, **options))
    got = _outs(getattr(hcref_mlx, name)(*(_to_mx(x) for x in inputs), **options))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == mx.float64
        assert tuple(g.shape) == e.shape
        np.testing.assert_allclose(backend.to_numpy(g), e, rtol=1e-12, atol=1e-12)


def _vjp_fn(name: str, m_inputs: list[Any], options: dict[str, Any]) -> Any:
    spec = OPS[name]
    diff_idx = [spec.inputs.index(arg) for arg in spec.differentiable]

    def fn(*primals: Any) -> Any:
        args = list(m_inputs)
        for i, p in zip(diff_idx, primals):
            args[i] = p
        return getattr(hcref_mlx, name)(*args, **options)

    return fn, [m_inputs[i] for i in diff_idx]


@pytest.mark.parametrize(("name", "inputs", "options"), ALL_CASES, ids=IDS)
def test_vjp_matches_reference(name: str, inputs: tuple[Any, ...], options: dict[str, Any]) -> None:
    spec = OPS[name]
    rng = np.random.default_rng(7)
    outs = _outs(getattr(hcref, name)(*inputs, **options))
    cots = [rng.normal(size=o.shape) for o in outs]
    expected = getattr(hcref, spec.vjp_name)(*inputs, *cots, **options)
    fn, primals = _vjp_fn(name, [_to_mx(x) for x in inputs], options)
    got = backend.vjp(fn, primals, [_to_mx(c) for c in cots])
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if isinstance(e, dict):
            assert set(g) == set(e)
            for key in e:
                assert g[key].dtype == mx.float64, key
                np.testing.assert_allclose(backend.to_numpy(g[key]), e[key], rtol=1e-10, atol=1e-12, err_msg=key)
        else:
            assert g.dtype == mx.float64
            np.testing.assert_allclose(backend.to_numpy(g), e, rtol=1e-10, atol=1e-12)


def test_vjp_gives_zeros_for_unused_primals_and_checks_cotangents() -> None:
    x = _to_mx(np.random.default_rng(0).normal(size=(3, 4)))
    unused = _to_mx(np.ones(2))
    g_x, g_unused = backend.vjp(lambda a, b: hcref_mlx.expand(a, 2), [x, unused], [mx.ones((3, 2, 4))])
    np.testing.assert_array_equal(backend.to_numpy(g_x), np.full((3, 4), 2.0))
    assert g_x.dtype == mx.float64
    np.testing.assert_array_equal(backend.to_numpy(g_unused), np.zeros(2))
    with pytest.raises(ValueError, match="cotangents: expected 1 arrays"):
        backend.vjp(lambda a: hcref_mlx.expand(a, 2), [x], [mx.ones((3, 2, 4)), mx.ones(1)])
    with pytest.raises(ValueError, match="cotangents: expected shape"):
        backend.vjp(lambda a: hcref_mlx.expand(a, 2), [x], [mx.ones((3, 4))])


def test_mx_grad_differentiates_the_ops_directly() -> None:
    """The ops are plain MLX code: ``mx.grad`` over a parameter mapping gives the reference's VJP."""
    rng = np.random.default_rng(4)
    H = rng.normal(size=(5, 3, 8))
    params = _params("hc", 3, 8, rng, dynamic=True, norm="layernorm")
    G = rng.normal(size=(5, 3, 8))

    def loss(p: dict[str, Any], H: Any) -> Any:
        alpha, beta = hcref_mlx.hc_coeffs(H, p)
        h0, H_res = hcref_mlx.hc_width(H, alpha)
        return (hcref_mlx.hc_depth(mx.tanh(h0), H_res, beta) * _to_mx(G)).sum()

    g_params, g_H = mx.grad(loss, argnums=(0, 1))(_to_mx(params), _to_mx(H))
    alpha, beta = hcref.hc_coeffs(H, params)
    h0, H_res = hcref.hc_width(H, alpha)
    g_y, g_H_res, g_beta = hcref.hc_depth_vjp(np.tanh(h0), H_res, beta, G)
    g_h0 = g_y * (1 - np.tanh(h0) ** 2)
    g_H_w, g_alpha = hcref.hc_width_vjp(H, alpha, g_h0, g_H_res)
    g_H_c, g_p = hcref.hc_coeffs_vjp(H, params, g_alpha, g_beta)
    np.testing.assert_allclose(_np(g_H), g_H_w + g_H_c, rtol=1e-10, atol=1e-12)
    for key, value in g_p.items():
        np.testing.assert_allclose(_np(g_params[key]), value, rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mx_compile_matches_eager_forward_and_gradient(dtype: str) -> None:
    """A function of every op compiles with ``mx.compile`` (also its gradient) and gives the eager
    results; the validation runs at trace time and still raises on a new bad shape."""
    rng = np.random.default_rng(6)
    d, n, m = 12, 3, 2
    p_hc = _to_mx(_params("hc", n, d, rng, dynamic=True, norm="rmsnorm"), dtype)
    p_fc = _to_mx(_params("fc", m, d, rng, dynamic=True, norm="layernorm"), dtype)
    x = _to_mx(rng.normal(size=(4, d)), dtype)

    def net(x: Any, p_hc: dict[str, Any], p_fc: dict[str, Any]) -> Any:
        H = hcref_mlx.expand(x, n)
        alpha, beta = hcref_mlx.hc_coeffs(H, p_hc, norm="rmsnorm")
        h0, H_res = hcref_mlx.hc_width(H, alpha)
        H = hcref_mlx.hc_depth(mx.sin(h0), H_res, beta)
        F = hcref_mlx.frac_split(hcref_mlx.reduce(H), m)
        alpha, beta = hcref_mlx.fc_coeffs(F, p_fc)
        h0, F_res = hcref_mlx.fc_width(F, alpha)
        return hcref_mlx.frac_merge(hcref_mlx.fc_depth(mx.tanh(h0), F_res, beta))

    def loss(x: Any, p_hc: dict[str, Any], p_fc: dict[str, Any]) -> Any:
        return (net(x, p_hc, p_fc) ** 2).sum()

    grad = mx.grad(loss, argnums=(0, 1, 2))
    compiled, compiled_grad = mx.compile(net), mx.compile(grad)
    tol = {"float64": 1e-12, "float32": 1e-5}[dtype]
    np.testing.assert_allclose(_np(compiled(x, p_hc, p_fc)), _np(net(x, p_hc, p_fc)), rtol=tol, atol=tol)
    eager_g, comp_g = grad(x, p_hc, p_fc), compiled_grad(x, p_hc, p_fc)
    np.testing.assert_allclose(_np(comp_g[0]), _np(eager_g[0]), rtol=tol, atol=tol)
    for e_p, c_p in zip(eager_g[1:], comp_g[1:]):
        for key in e_p:
            np.testing.assert_allclose(_np(c_p[key]), _np(e_p[key]), rtol=tol, atol=tol, err_msg=key)
    # float64 reference on the same values
    ref = _np(net(x, p_hc, p_fc))
    assert np.all(np.isfinite(ref)) and np.abs(ref).max() > 0
    with pytest.raises(ValueError, match="x: last axis d=12 is not divisible by m=5"):
        mx.compile(lambda x: hcref_mlx.frac_split(x, 5))(x)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_inputs_accumulate_in_float32(dtype: str) -> None:
    """D12: the mixing of half inputs is float32-accumulated then rounded once, so it equals the
    float64 reference on the same (rounded) values rounded to the half dtype, up to one rounding;
    the coefficients are float32-accurate before their final rounding."""
    rng = np.random.default_rng(3)
    n, d = 4, 64
    mdt = getattr(mx, dtype)
    eps = {"bfloat16": 2.0**-8, "float16": 2.0**-11}[dtype]  # unit roundoff of the dtype
    H = backend.asarray(rng.normal(size=(32, n, d)), dtype, "cpu")
    alpha = backend.asarray(rng.normal(size=(32, n, n + 1)), dtype, "cpu")
    h0, H_res = hcref_mlx.hc_width(H, alpha)
    assert h0.dtype == mdt and H_res.dtype == mdt
    ref_h0, ref_res = hcref.hc_width(_np(H), _np(alpha))
    for got, ref in ((h0, ref_h0), (H_res, ref_res)):
        ref_rounded = _np(backend.asarray(ref, dtype, "cpu"))
        ulp = 2 * eps * np.maximum(np.abs(ref_rounded), 1e-3)
        assert np.all(np.abs(_np(got) - ref_rounded) <= ulp)

    params = _to_mx(_params("hc", n, d, rng, dynamic=True, norm="layernorm"), dtype)
    alpha2, beta2 = hcref_mlx.hc_coeffs(H, params)
    assert alpha2.dtype == mdt and beta2.dtype == mdt
    ref_a, ref_b = hcref.hc_coeffs(_np(H), {k: _np(v) for k, v in params.items()})
    tol = 2 * eps
    np.testing.assert_allclose(_np(alpha2), ref_a, rtol=tol, atol=tol)
    np.testing.assert_allclose(_np(beta2), ref_b, rtol=tol, atol=tol)

    # the VJP of the write: g_beta = sum_c g y over d = 64 terms, float32-accumulated
    y = backend.asarray(rng.normal(size=(32, d)), dtype, "cpu")
    beta = backend.asarray(rng.normal(size=(32, n)), dtype, "cpu")
    g = backend.asarray(rng.normal(size=(32, n, d)), dtype, "cpu")
    _, _, g_beta = backend.vjp(hcref_mlx.hc_depth, [y, H_res, beta], [g])
    _, _, ref_g_beta = hcref.hc_depth_vjp(_np(y), _np(H_res), _np(beta), _np(g))
    ref_rounded = _np(backend.asarray(ref_g_beta, dtype, "cpu"))
    assert g_beta.dtype == mdt
    assert np.all(np.abs(_np(g_beta) - ref_rounded) <= 2 * eps * np.maximum(np.abs(ref_rounded), 1e-3))


def _native(x: Any) -> Any:
    """numpy -> mlx keeping the dtype (float64 stays float64, int32 stays int32)."""
    if isinstance(x, dict):
        return {k: _native(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return mx.array(x, dtype=mx.float64) if x.dtype == np.float64 else mx.array(x)
    return x


@pytest.mark.parametrize(("name", "inputs", "options"), _bad_cases(), ids=lambda x: x if isinstance(x, str) else "")
def test_bad_inputs_raise_the_reference_errors(name: str, inputs: tuple[Any, ...], options: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)) as ref:
        getattr(hcref, name)(*inputs, **options)
    with pytest.raises(ref.type) as got:
        getattr(hcref_mlx, name)(*(_native(x) for x in inputs), **options)
    assert str(got.value) == str(ref.value)


def test_non_mlx_input_names_the_argument() -> None:
    with pytest.raises(TypeError, match=r"^H: expected an mlx.core.array, got ndarray$"):
        hcref_mlx.reduce(np.ones((2, 3)))  # type: ignore[arg-type]


def test_backend_satisfies_the_interface() -> None:
    from hcref.interface import Backend, missing_members

    assert missing_members(backend) == []
    assert isinstance(backend, Backend)
    assert backend.name == "hcref_mlx" and backend.framework_version.startswith("mlx ")
    caps = backend.capabilities()
    assert [pair for pair in caps if pair[0] == "cpu"] == [
        ("cpu", "float64"), ("cpu", "float32"), ("cpu", "bfloat16"), ("cpu", "float16")
    ]
    assert ("gpu", "float64") not in caps  # MLX has float64 on the CPU only
    gpu = [pair for pair in caps if pair[0] == "gpu"]
    assert gpu == ([("gpu", "float32"), ("gpu", "bfloat16"), ("gpu", "float16")] if mx.is_available(mx.gpu) else [])
    x = np.array([1.0, 1.0 + 2.0**-10, 3.5])
    t = backend.asarray(x, "bfloat16", "cpu")
    assert backend.dtype_name(t) == "bfloat16"
    back = backend.to_numpy(t)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, np.array([1.0, 1.0, 3.5], dtype=np.float32))
    x64 = backend.asarray(x, "float64", "cpu")
    assert backend.dtype_name(x64) == "float64"
    np.testing.assert_array_equal(backend.to_numpy(x64), x)
    with pytest.raises(ValueError, match="device/dtype"):
        backend.asarray(x, "int8", "cpu")
    with pytest.raises(ValueError, match="device/dtype"):
        backend.asarray(x, "float64", "gpu")


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(("name", "inputs", "options"), LOW_CASES, ids=LOW_IDS)
def test_lower_precision_against_float64_reference(
    dtype_name: str, name: str, inputs: tuple[Any, ...], options: dict[str, Any]
) -> None:
    """Forward and VJP in float32/bfloat16/float16 against the float64 reference on the same rounded
    values (see op_cases.check_lower_precision)."""
    check_lower_precision(backend, name, inputs, options, dtype_name)


@pytest.mark.skipif(not mx.is_available(mx.gpu), reason="no MLX GPU device (Metal or CUDA) on this machine")
def test_gpu_matches_cpu_and_float64_stays_on_the_cpu() -> None:
    """On a machine with an MLX GPU: float32 coefficients on the GPU stream equal the CPU's, and
    float64 ops and VJPs still run (on the CPU stream) while the GPU is the default device."""
    rng = np.random.default_rng(0)
    H = rng.normal(size=(8, 4, 16))
    params = _params("hc", 4, 16, rng, dynamic=True, norm="layernorm")
    H32, p32 = _to_mx(H, "float32"), _to_mx(params, "float32")
    with mx.stream(mx.cpu):
        cpu = hcref_mlx.hc_coeffs(H32, p32)
    with mx.stream(mx.gpu):
        gpu = hcref_mlx.hc_coeffs(H32, p32)
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-6)
    previous = mx.default_device()
    mx.set_default_device(mx.gpu)
    try:
        H64, p64 = _to_mx(H), _to_mx(params)
        alpha, beta = hcref_mlx.hc_coeffs(H64, p64)
        ref_alpha, ref_beta = hcref.hc_coeffs(H, params)
        np.testing.assert_allclose(backend.to_numpy(alpha), ref_alpha, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(backend.to_numpy(beta), ref_beta, rtol=1e-12, atol=1e-12)
        g = rng.normal(size=ref_beta.shape)
        (g_p,) = backend.vjp(lambda p: hcref_mlx.hc_coeffs(H64, p)[1], [p64], [_to_mx(g)])
        _, ref_g = hcref.hc_coeffs_vjp(H, params, np.zeros_like(ref_alpha), g)
        for key in ref_g:
            np.testing.assert_allclose(backend.to_numpy(g_p[key]), ref_g[key], rtol=1e-10, atol=1e-12, err_msg=key)
    finally:
        mx.set_default_device(previous)


def test_import_loads_mlx_and_no_other_framework_or_backend() -> None:
    """Backends never import each other, and hcref_mlx is where mlx comes in (spec README section 3)."""
    import json
    import subprocess
    import sys

    code = "import json, sys, hcref_mlx; print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "mlx" in loaded
    others = {"torch", "jax", "jaxlib", "flax", "tensorflow", "hcref_torch", "hcref_jax", "hcref_numpy"}
    assert not loaded & others, sorted(loaded & others)
