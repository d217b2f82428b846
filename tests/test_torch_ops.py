"""hcref_torch's functional ops against the NumPy reference: forward, autograd against the
reference's hand-derived ``<op>_vjp``, the half-precision policy (D12), and input errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hcref_torch
from hcref_torch import backend
from op_cases import ALL_CASES, IDS, LOW_CASES, LOW_IDS, check_lower_precision
from op_cases import bad_cases as _bad_cases
from op_cases import outs as _outs
from op_cases import params as _params

import hcref
from hcref.optable import OPS


def _to_torch(x: Any, dtype: Any = None) -> Any:
    dtype = dtype or torch.float64
    if isinstance(x, dict):
        return {key: torch.tensor(value, dtype=dtype) for key, value in x.items()}
    if isinstance(x, np.ndarray):
        return torch.tensor(x, dtype=dtype)
    return x




@pytest.mark.parametrize(("name", "inputs", "options"), ALL_CASES, ids=IDS)
def test_forward_matches_reference(name: str, inputs: tuple[Any, ...], options: dict[str, Any]) -> None:
    expected = _outs(getattr(hcref, name)(*inputs, **options))
    got = _outs(getattr(hcref_torch, name)(*(_to_torch(x) for x in inputs), **options))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float64
        assert tuple(g.shape) == e.shape
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "inputs", "options"), ALL_CASES, ids=IDS)
def test_vjp_matches_reference(name: str, inputs: tuple[Any, ...], options: dict[str, Any]) -> None:
    spec = OPS[name]
    rng = np.random.default_rng(7)
    outs = _outs(getattr(hcref, name)(*inputs, **options))
    cots = [rng.normal(size=o.shape) for o in outs]
    expected = getattr(hcref, spec.vjp_name)(*inputs, *cots, **options)
    diff_idx = [spec.inputs.index(arg) for arg in spec.differentiable]
    t_inputs = [_to_torch(x) for x in inputs]

    def fn(*primals: Any) -> Any:
        args = list(t_inputs)
        for i, p in zip(diff_idx, primals):
            args[i] = p
        return getattr(hcref_torch, name)(*args, **options)

    got = backend.vjp(fn, [t_inputs[i] for i in diff_idx], [torch.tensor(c) for c in cots])
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if isinstance(e, dict):
            assert set(g) == set(e)
            for key in e:
                np.testing.assert_allclose(g[key].numpy(), e[key], rtol=1e-10, atol=1e-12, err_msg=key)
        else:
            np.testing.assert_allclose(g.numpy(), e, rtol=1e-10, atol=1e-12)


def test_vjp_gives_zeros_for_unused_primals_and_checks_cotangents() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    unused = torch.randn(2, dtype=torch.float64)
    g_x, g_unused = backend.vjp(lambda a, b: hcref_torch.expand(a, 2), [x, unused], [torch.ones(3, 2, 4)])
    assert torch.equal(g_x, torch.full((3, 4), 2.0, dtype=torch.float64))
    assert torch.equal(g_unused, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="cotangents: expected 1 arrays"):
        backend.vjp(lambda a: hcref_torch.expand(a, 2), [x], [torch.ones(3, 2, 4), torch.ones(1)])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(dtype: Any) -> None:
    """D12: the mixing of half inputs is float32-accumulated then rounded once, so it equals the
    float64 reference on the same (rounded) values rounded to the half dtype, up to one rounding."""
    rng = np.random.default_rng(3)
    n, d = 4, 64
    H = torch.tensor(rng.normal(size=(32, n, d))).to(dtype)
    alpha = torch.tensor(rng.normal(size=(32, n, n + 1))).to(dtype)
    h0, H_res = hcref_torch.hc_width(H, alpha)
    assert h0.dtype == dtype and H_res.dtype == dtype
    ref_h0, ref_res = hcref.hc_width(H.double().numpy(), alpha.double().numpy())
    for got, ref in ((h0, ref_h0), (H_res, ref_res)):
        ref_rounded = torch.tensor(ref).to(dtype).double()
        ulp = torch.finfo(dtype).eps * ref_rounded.abs().clamp_min(1e-3)
        assert bool(((got.double() - ref_rounded).abs() <= ulp + 1e-30).all())

    params = _to_torch(_params("hc", n, d, rng, dynamic=True, norm="layernorm"), dtype)
    alpha2, beta2 = hcref_torch.hc_coeffs(H, params)
    assert alpha2.dtype == dtype and beta2.dtype == dtype
    ref_a, ref_b = hcref.hc_coeffs(H.double().numpy(), {k: v.double().numpy() for k, v in params.items()})
    tol = 2 * torch.finfo(dtype).eps
    np.testing.assert_allclose(alpha2.double().numpy(), ref_a, rtol=tol, atol=tol)
    np.testing.assert_allclose(beta2.double().numpy(), ref_b, rtol=tol, atol=tol)


@pytest.mark.parametrize(("name", "inputs", "options"), _bad_cases(), ids=lambda x: x if isinstance(x, str) else "")
def test_bad_inputs_raise_the_reference_errors(name: str, inputs: tuple[Any, ...], options: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)) as ref:
        getattr(hcref, name)(*inputs, **options)
    def native(x: Any) -> Any:  # keeps each array's dtype (an int parameter must stay int)
        if isinstance(x, dict):
            return {key: torch.from_numpy(value) for key, value in x.items()}
        return torch.from_numpy(x) if isinstance(x, np.ndarray) else x

    t_inputs = [native(x) for x in inputs]
    with pytest.raises(ref.type) as got:
        getattr(hcref_torch, name)(*t_inputs, **options)
    assert str(got.value) == str(ref.value)


def test_non_tensor_input_names_the_argument() -> None:
    with pytest.raises(TypeError, match=r"^H: expected a torch.Tensor, got ndarray$"):
        hcref_torch.reduce(np.ones((2, 3)))  # type: ignore[arg-type]


def test_backend_satisfies_the_interface() -> None:
    from hcref.interface import Backend, missing_members

    assert missing_members(backend) == []
    assert isinstance(backend, Backend)
    assert ("cpu", "bfloat16") in backend.capabilities()
    x = np.array([1.0, 1.0 + 2.0**-10, 3.5])
    t = backend.asarray(x, "bfloat16", "cpu")
    assert backend.dtype_name(t) == "bfloat16"
    back = backend.to_numpy(t)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, np.array([1.0, 1.0, 3.5], dtype=np.float32))
    assert backend.dtype_name(backend.asarray(x, "float64", "cpu")) == "float64"
    with pytest.raises(ValueError, match="device/dtype"):
        backend.asarray(x, "int8", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(0)
    H = rng.normal(size=(8, 4, 16))
    params = _params("hc", 4, 16, rng, dynamic=True, norm="layernorm")
    cpu = hcref_torch.hc_coeffs(_to_torch(H), _to_torch(params))
    cuda = hcref_torch.hc_coeffs(_to_torch(H).cuda(), {k: v.cuda() for k, v in _to_torch(params).items()})
    for a, b in zip(cpu, cuda):
        torch.testing.assert_close(a, b.cpu())


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(("name", "inputs", "options"), LOW_CASES, ids=LOW_IDS)
def test_lower_precision_against_float64_reference(
    dtype_name: str, name: str, inputs: tuple[Any, ...], options: dict[str, Any]
) -> None:
    """Forward and VJP in float32/bfloat16/float16 against the float64 reference on the same rounded
    values (see op_cases.check_lower_precision)."""
    check_lower_precision(backend, name, inputs, options, dtype_name)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_scale_safe_norm_functions_against_finite_differences(norm: str) -> None:
    """The hand-written VJPs of the scale-safe norms (layernorm, and rmsnorm folded into the
    projection) against float64 finite differences, and their double backward (recorded through the
    same formula in plain torch ops), on rows with max|x| from 0.5 to 6 (s = 1, 2, 4)."""
    from hcref_torch import ops

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 2, 6, generator=gen, dtype=torch.float64) * torch.tensor([0.2, 1.0, 2.5]).reshape(3, 1, 1))
    x.requires_grad_(True)
    Wn = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    if norm == "rmsnorm":
        inputs: tuple[Any, ...] = (x, Wn)
        fn = ops._RmsProj.apply
    else:
        inputs = (x,)
        fn = ops._LayerNormHat.apply
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_backend_and_package_carry_every_reference_op() -> None:
    """The backend object and the package export every op of ``hcref.optable.ALL_OPS`` (mHC
    included) with the reference's arguments, kinds and defaults."""
    import inspect

    from hcref.optable import ALL_OPS

    for name in ALL_OPS:
        reference = inspect.signature(getattr(hcref, name)).parameters
        for owner in (backend, hcref_torch):
            ported = inspect.signature(getattr(owner, name)).parameters
            assert list(ported) == list(reference), name
            for arg, param in reference.items():
                assert (ported[arg].kind, ported[arg].default) == (param.kind, param.default), (name, arg)
        assert name in hcref_torch.__all__
    for cls in ("ManifoldHyperConnections", "MHCHead"):
        assert cls in hcref_torch.__all__ and isinstance(getattr(hcref_torch, cls), type)
