"""Numerics as production uses them (issue 13, decision D12), on every first-party backend.

Driven by the op table (:data:`hcref.optable.OPS`) and the :class:`hcref.interface.Backend`
interface only, like ``op_cases.py``:

* extreme activations: every op with its state inputs (x, H, y, H_res) scaled by 1e-30, 1, 1e15
  and 1e20 in float32, bfloat16 and float64 gives finite outputs and gradients that match the
  float64 reference at the same scale within the suite's tolerances (:mod:`hcref.tolerances`);
  the dynamic coefficients of a normed site are scale-invariant (1e15 and 1e20 give the float64
  value at scale 1), and the issue's exact case 1 holds forward and backward;
* empty token sets: leading axes of size 0 give empty outputs and exactly zero parameter
  gradients, for every op and site (issue case 2), promptly (MLX runs in a child process with a
  time limit, since the failure it guards against was a hang);
* mixed precision: float32 coefficients/parameters on a bfloat16/float16 state give the dtypes
  of D12, the state computed in float32 and rounded once, every gradient in its primal's dtype
  (issue case 3), for the ops and for every framework's modules;
* meta tensors in ``hcref_torch``, also under autocast (issue case 4).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hcref
from hcref.optable import MHC_OPS, OPS
from hcref.tolerances import Tolerance, tolerance

BACKENDS = ("hcref_numpy", "hcref_torch", "hcref_jax", "hcref_mlx")
STATE = ("x", "H", "y", "H_res")
"""Inputs that carry the residual state (scaled in the extreme-scale tests, half in mixed precision)."""
SCALES = (1e-30, 1.0, 1e15, 1e20)
"""All within the range of float32, bfloat16 and float64 (float16, whose range ends at 65504,
is left out of the extreme-scale tests)."""
WIDE_DTYPES = ("float32", "bfloat16", "float64")
HALF_DTYPES = ("bfloat16", "float16")
N, D, M = 3, 8, 2
E = D // M


def _backend(name: str) -> Any:
    if name == "hcref_jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)  # as tests/test_jax_ops.py: the float64 tier
    module = pytest.importorskip(name)
    backend = module.backend
    prepare = getattr(backend, "prepare_for_conformance", None)  # an optional member of the interface
    if prepare is not None:
        prepare()
    return backend


def _dtypes(backend: Any, wanted: tuple[str, ...]) -> list[str]:
    return [dtype for dtype in wanted if ("cpu", dtype) in backend.capabilities()]


# --- cases: every op of the table, float64 inputs -------------------------------------------


def _params(family: str, rng: np.random.Generator, *, dynamic: bool, norm: str) -> dict[str, np.ndarray]:
    init = hcref.init_hc(N, D, 2, dynamic=dynamic, norm=norm) if family == "hc" else hcref.init_fc(
        M, D, dynamic=dynamic, norm=norm
    )
    return {key: value + 0.3 * rng.normal(size=value.shape) for key, value in init.items()}


def _variants(name: str) -> list[dict[str, Any]]:
    """Options of each op's cases: coefficient ops dynamic with each norm and static."""
    if OPS[name].options:
        return [{"dynamic": True, "norm": norm} for norm in ("layernorm", "rmsnorm", "none")] + [
            {"dynamic": False, "norm": "layernorm"}
        ]
    return [{}]


def _inputs(name: str, lead: tuple[int, ...], rng: np.random.Generator, variant: dict[str, Any]) -> tuple[Any, ...]:
    """float64 inputs of op ``name`` with leading axes ``lead`` (state entries of order 1)."""
    family = OPS[name].family
    k, w = (N, D) if family in ("hc", "ends") else (M, E)
    if family == "ends":
        k, w = (N, D) if name in ("expand", "reduce") else (M, E)
    c = k + 1 if family == "hc" else 2 * k
    r = rng.normal
    shapes = {"x": (*lead, k * w if name == "frac_split" else w), "H": (*lead, k, w), "alpha": (*lead, k, c),
              "y": (*lead, k * w if family == "fc" else w), "H_res": (*lead, k, w), "beta": (*lead, k)}
    values: list[Any] = []
    for arg in OPS[name].inputs:
        if arg == "params":
            values.append(_params(family, rng, dynamic=variant["dynamic"], norm=variant["norm"]))
        elif arg in ("n", "m"):
            values.append(k)
        else:
            values.append(r(size=shapes[arg]))
    return tuple(values)


def _options(name: str, variant: dict[str, Any]) -> dict[str, Any]:
    return {"norm": variant["norm"]} if OPS[name].options else {}


CASES = [(name, i, variant) for name in OPS for i, variant in enumerate(_variants(name))]
CASE_IDS = [f"{name}-{i}" for name, i, _ in CASES]


# --- running an op through the Backend interface ----------------------------------------------


def _f64(backend: Any, x: Any) -> np.ndarray:
    return np.asarray(backend.to_numpy(x), dtype=np.float64)


def _native(backend: Any, x: Any, dtype: str | dict[str, str]) -> Any:
    if isinstance(x, dict):
        return {k: backend.asarray(v, dtype if isinstance(dtype, str) else dtype[k], "cpu") for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return backend.asarray(x, dtype, "cpu")
    return x


def _outs(x: Any) -> tuple[Any, ...]:
    return x if isinstance(x, tuple) else (x,)


def _run(
    backend: Any, name: str, native: list[Any], options: dict[str, Any], cots: list[np.ndarray]
) -> tuple[list[Any], list[Any]]:
    """(outputs, cotangents of the differentiable inputs) of ``backend``'s op, as native arrays."""
    spec = OPS[name]
    diff = [spec.inputs.index(arg) for arg in spec.differentiable]
    outs = list(_outs(getattr(backend, name)(*native, **options)))

    def fn(*primals: Any) -> Any:
        args = list(native)
        for i, p in zip(diff, primals):
            args[i] = p
        return getattr(backend, name)(*args, **options)

    native_cots = [backend.asarray(c, backend.dtype_name(o), "cpu") for c, o in zip(cots, outs)]
    grads = list(backend.vjp(fn, [native[i] for i in diff], native_cots))
    return outs, grads


def _reference(name: str, inputs: list[Any], options: dict[str, Any], cots: list[np.ndarray]) -> tuple[list, list]:
    outs = list(_outs(getattr(hcref, name)(*inputs, **options)))
    grads = list(getattr(hcref, OPS[name].vjp_name)(*inputs, *cots, **options))
    return outs, grads


def _flat(grads: list[Any], names: tuple[str, ...]) -> list[tuple[str, Any]]:
    """(input name or params key, cotangent) of every differentiable input (parameter keys sorted,
    as a framework's pytree may order them)."""
    out: list[tuple[str, Any]] = []
    for arg, g in zip(names, grads):
        out.extend(sorted(g.items()) if isinstance(g, dict) else [(arg, g)])
    return out


def _ratio(got: np.ndarray, ref: np.ndarray, tol: Tolerance, scale: float, slack: float = 0.0) -> float:
    """``max|got - ref| / (atol + rtol * scale + slack)`` (the suite's metric, :mod:`hcref.tolerances`)."""
    err = float(np.max(np.abs(got - ref), initial=0.0))
    return err / (tol.atol + tol.rtol * scale + slack)


# --- extreme activations ----------------------------------------------------------------------


def _scaled(name: str, inputs: tuple[Any, ...], scale: float) -> list[Any]:
    return [x * scale if arg in STATE else x for arg, x in zip(OPS[name].inputs, inputs)]


def _contraction(name: str) -> int:
    return D if OPS[name].family in ("hc", "ends") else E


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize(("name", "index", "variant"), CASES, ids=CASE_IDS)
def test_extreme_scales_are_finite_and_match_the_reference(
    backend_name: str, name: str, index: int, variant: dict[str, Any]
) -> None:
    """Every op at state scales 1e-30, 1, 1e15, 1e20 in float32/bfloat16/float64: outputs and gradients
    are finite and match the float64 reference on the same (rounded) inputs at the same scale. Each
    gradient is judged after undoing the scale it carries (``g`` of a state input times ``s / s_out``,
    of a coefficient or parameter ``1 / s_out``), as one vector like the suite's VJP check."""
    backend = _backend(backend_name)
    spec = OPS[name]
    rng = np.random.default_rng(index)
    base = _inputs(name, (2,), rng, variant)
    options = _options(name, variant)
    out_shapes = [o.shape for o in _outs(getattr(hcref, name)(*base, **options))]
    cots = [rng.normal(size=shape) for shape in out_shapes]
    for dtype in _dtypes(backend, WIDE_DTYPES):
        for scale in SCALES:
            native = [_native(backend, x, dtype) for x in _scaled(name, base, scale)]
            rounded = [
                {k: _f64(backend, v) for k, v in x.items()} if isinstance(x, dict)
                else _f64(backend, x) if arg not in ("n", "m") else x
                for arg, x in zip(spec.inputs, native)
            ]
            cots_r = [_f64(backend, backend.asarray(c, dtype, "cpu")) for c in cots]
            outs, grads = _run(backend, name, native, options, cots_r)
            ref_outs, ref_grads = _reference(name, rounded, options, cots_r)
            where = f"{backend_name} {name} {dtype} scale {scale:g}"
            out_scale = 1.0 if spec.name.endswith("_coeffs") else scale
            for o, r in zip(outs, ref_outs):
                o64 = _f64(backend, o)
                assert np.isfinite(o64).all(), where
                tol = tolerance(dtype, "forward", contraction=_contraction(name))
                assert _ratio(o64, r, tol, float(np.max(np.abs(r), initial=0.0))) <= 1, where
            got = _flat(grads, spec.differentiable)
            ref = _flat(ref_grads, spec.differentiable)
            factors = [(scale if key in STATE else 1.0) / out_scale for key, _ in ref]
            got64 = [_f64(backend, g) * f for (_, g), f in zip(got, factors)]
            ref64 = [np.asarray(g) * f for (_, g), f in zip(ref, factors)]
            assert all(np.isfinite(g).all() for g in got64), where
            vec_scale = max(float(np.max(np.abs(g), initial=0.0)) for g in ref64)
            tol = tolerance(dtype, "gradient", contraction=_contraction(name))
            worst = max(_ratio(g, r, tol, vec_scale) for g, r in zip(got64, ref64))
            assert worst <= 1, (where, worst)


def _coeff_cases() -> list[tuple[str, str]]:
    return [(name, norm) for name in ("hc_coeffs", "fc_coeffs") for norm in ("layernorm", "rmsnorm")]


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize(("name", "norm"), _coeff_cases())
def test_normed_coefficients_are_scale_invariant(backend_name: str, name: str, norm: str) -> None:
    """The dynamic coefficients of a normed site at H scaled by 1e15 and 1e20 equal the float64
    reference at scale 1 (on the same input divided by the scale) within the dtype's tolerance plus
    the reference's own dependence on the scale through eps (negligible at 1e15 and 1e20, about
    1e-6 relative at scale 1); so do the parameter gradients and ``g_H`` times the scale."""
    backend = _backend(backend_name)
    rng = np.random.default_rng(11)
    H, params = _inputs(name, (3,), rng, {"dynamic": True, "norm": norm})
    options = {"norm": norm}
    out_shapes = [o.shape for o in hcref.__dict__[name](H, params, **options)]
    cots = [rng.normal(size=shape) for shape in out_shapes]
    w = H.shape[-1]
    for dtype in _dtypes(backend, WIDE_DTYPES):
        p_native = _native(backend, params, dtype)
        p64 = {k: _f64(backend, v) for k, v in p_native.items()}
        cots_r = [_f64(backend, backend.asarray(c, dtype, "cpu")) for c in cots]
        for scale in (1e15, 1e20):
            H_native = backend.asarray(H * scale, dtype, "cpu")
            H_at_scale = _f64(backend, H_native)
            outs, (g_H, g_p) = _run(backend, name, [H_native, p_native], options, cots_r)
            unit = _reference(name, [H_at_scale / scale, p64], options, cots_r)
            at_scale = _reference(name, [H_at_scale, p64], options, cots_r)
            where = f"{backend_name} {name} {norm} {dtype} scale {scale:g}"
            tol = tolerance(dtype, "forward", contraction=w)
            for o, r, r_s in zip(outs, unit[0], at_scale[0]):
                slack = float(np.max(np.abs(r_s - r)))
                assert _ratio(_f64(backend, o), r, tol, float(np.max(np.abs(r))), slack) <= 1, where
            got = [_f64(backend, g_H) * scale] + [_f64(backend, g_p[k]) for k in params]
            ref = [unit[1][0]] + [unit[1][1][k] for k in params]
            ref_s = [at_scale[1][0] * scale] + [at_scale[1][1][k] for k in params]
            vec_scale = max(float(np.max(np.abs(r))) for r in ref)
            slack = max(float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(ref, ref_s))
            tol = tolerance(dtype, "gradient", contraction=w)
            worst = max(_ratio(g, r, tol, vec_scale, slack) for g, r in zip(got, ref))
            assert worst <= 1, (where, worst)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_coefficients_near_the_top_of_the_float32_range(backend_name: str) -> None:
    """H of about 1e38 (float32's largest number is 3.4e38, bfloat16's 3.39e38): ``x W`` of the
    unscaled H would overflow, the normed coefficients must not. Forward equals the float64 value at
    scale 1; gradients are finite."""
    backend = _backend(backend_name)
    rng = np.random.default_rng(12)
    for name, norm in _coeff_cases():
        H, params = _inputs(name, (2,), rng, {"dynamic": True, "norm": norm})
        params["W_alpha"] = params["W_alpha"] + 2.0
        H = H / np.abs(H).max() * 3e38
        out_shapes = [o.shape for o in hcref.__dict__[name](H, params, norm=norm)]
        cots = [rng.normal(size=shape) for shape in out_shapes]
        for dtype in _dtypes(backend, ("float32", "bfloat16")):
            H_native = backend.asarray(H, dtype, "cpu")
            p_native = _native(backend, params, dtype)
            p64 = {k: _f64(backend, v) for k, v in p_native.items()}
            outs, (g_H, g_p) = _run(backend, name, [H_native, p_native], {"norm": norm}, cots)
            unit = _reference(name, [_f64(backend, H_native) / 1e38, p64], {"norm": norm}, cots)
            tol = tolerance(dtype, "forward", contraction=H.shape[-1])
            for o, r in zip(outs, unit[0]):
                assert _ratio(_f64(backend, o), r, tol, float(np.max(np.abs(r))), 1e-5) <= 1, (name, norm, dtype)
            assert np.isfinite(_f64(backend, g_H)).all()
            assert all(np.isfinite(_f64(backend, g)).all() for g in g_p.values())


H_CASE1 = np.array([[1.0, -2.0, 3.0, 0.5], [0.25, 1.0, -1.0, 2.0]])


def _case1_params(norm: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    params = hcref.init_hc(2, 4, 0, dynamic=True, norm=norm)
    params["W_alpha"] = rng.normal(size=(4, 3))
    params["W_beta"] = rng.normal(size=(4,))
    params["s_alpha"] = np.array(1.0)
    params["s_beta"] = np.array(1.0)
    return params


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_issue_case_1_activations_of_1e20(backend_name: str, norm: str) -> None:
    """Issue 13, case 1: one token, n = 2, d = 4, H = 1e20 * H_CASE1, random W_alpha / W_beta, gates 1,
    tanh on. alpha, beta and the VJP (g_H * 1e20, parameter gradients) equal the float64 reference
    at scale 1 (parameters rounded to the dtype) within the dtype's tolerance plus the eps effect;
    the dynamic term is not lost (alpha differs from the static [A_m | A_r]) and nothing is NaN."""
    backend = _backend(backend_name)
    params = _case1_params(norm)
    rng = np.random.default_rng(5)
    cots = [rng.normal(size=(2, 3)), rng.normal(size=(2,))]
    static = np.concatenate([params["A_m"][:, None], params["A_r"]], axis=1)
    for dtype in _dtypes(backend, WIDE_DTYPES):
        p_native = _native(backend, params, dtype)
        p64 = {k: _f64(backend, v) for k, v in p_native.items()}
        H_native = backend.asarray(1e20 * H_CASE1, dtype, "cpu")
        H1 = _f64(backend, H_native) / 1e20
        cots_r = [_f64(backend, backend.asarray(c, dtype, "cpu")) for c in cots]
        (alpha, beta), (g_H, g_p) = _run(backend, "hc_coeffs", [H_native, p_native], {"norm": norm}, cots_r)
        (ref_alpha, ref_beta), (ref_g_H, ref_g_p) = _reference("hc_coeffs", [H1, p64], {"norm": norm}, cots_r)
        _, (eps_g_H, eps_g_p) = _reference("hc_coeffs", [H1 * 1e20, p64], {"norm": norm}, cots_r)
        eps_alpha = hcref.hc_coeffs(H1 * 1e20, p64, norm=norm)[0]
        where = f"{backend_name} {norm} {dtype}"
        alpha64, beta64 = _f64(backend, alpha), _f64(backend, beta)
        assert np.isfinite(alpha64).all() and np.isfinite(beta64).all(), where
        assert np.max(np.abs(ref_alpha - static)) > 0.1  # the dynamic term matters in this case
        tol = tolerance(dtype, "forward", contraction=4)
        slack = float(np.max(np.abs(eps_alpha - ref_alpha)))
        assert _ratio(alpha64, ref_alpha, tol, float(np.max(np.abs(ref_alpha))), slack) <= 1, where
        assert _ratio(beta64, ref_beta, tol, float(np.max(np.abs(ref_beta))), slack) <= 1, where
        got = [_f64(backend, g_H) * 1e20] + [_f64(backend, g_p[k]) for k in params]
        ref = [ref_g_H] + [ref_g_p[k] for k in params]
        ref_eps = [eps_g_H * 1e20] + [eps_g_p[k] for k in params]
        assert all(np.isfinite(g).all() for g in got), where
        vec_scale = max(float(np.max(np.abs(r))) for r in ref)
        slack = max(float(np.max(np.abs(a - b))) for a, b in zip(ref, ref_eps))
        tol = tolerance(dtype, "gradient", contraction=4)
        worst = max(_ratio(g, r, tol, vec_scale, slack) for g, r in zip(got, ref))
        assert worst <= 1, (where, worst)


@settings(max_examples=15)
@given(
    exponent=st.integers(min_value=-30, max_value=30),
    seed=st.integers(min_value=0, max_value=2**16),
    norm=st.sampled_from(["layernorm", "rmsnorm"]),
)
@pytest.mark.parametrize("backend_name", ["hcref_numpy", "hcref_torch", "hcref_mlx"])
def test_float32_coefficients_at_any_scale_match_the_reference(
    backend_name: str, exponent: int, seed: int, norm: str
) -> None:
    """Random H at any power-of-ten scale from 1e-30 to 1e30 in float32: the coefficients and their
    VJP are finite and within the float32 tolerance of the float64 reference at that scale (the
    JAX backend runs the same cases in the fixed-scale tests; here its compile per example would
    dominate)."""
    backend = _backend(backend_name)
    rng = np.random.default_rng(seed)
    H, params = _inputs("hc_coeffs", (2,), rng, {"dynamic": True, "norm": norm})
    H_native = backend.asarray(H * 10.0**exponent, "float32", "cpu")
    p_native = _native(backend, params, "float32")
    rounded = [_f64(backend, H_native), {k: _f64(backend, v) for k, v in p_native.items()}]
    cots = [rng.normal(size=(2, N, N + 1)), rng.normal(size=(2, N))]
    cots_r = [_f64(backend, backend.asarray(c, "float32", "cpu")) for c in cots]
    outs, grads = _run(backend, "hc_coeffs", [H_native, p_native], {"norm": norm}, cots_r)
    ref_outs, ref_grads = _reference("hc_coeffs", rounded, {"norm": norm}, cots_r)
    tol = tolerance("float32", "forward", contraction=D)
    for o, r in zip(outs, ref_outs):
        assert _ratio(_f64(backend, o), r, tol, float(np.max(np.abs(r)))) <= 1
    s = 10.0**exponent
    got = [_f64(backend, grads[0]) * s] + [_f64(backend, grads[1][k]) for k in params]
    ref = [ref_grads[0] * s] + [ref_grads[1][k] for k in params]
    assert all(np.isfinite(g).all() for g in got)
    vec_scale = max(float(np.max(np.abs(r))) for r in ref)
    tol = tolerance("float32", "gradient", contraction=D)
    assert max(_ratio(g, r, tol, vec_scale) for g, r in zip(got, ref)) <= 1


# --- empty token sets -------------------------------------------------------------------------

EMPTY_LEADS = ((0,), (2, 0, 3))


def check_empty(backend_name: str) -> None:
    """Every op (every variant) and an HC and FC site (static and dynamic) with leading axes
    (0,) and (2, 0, 3): outputs empty with the reference's shapes and the input dtype, input
    cotangents empty, parameter cotangents exactly zero (float32: the failure this guards against
    does not depend on the dtype)."""
    backend = _backend(backend_name)
    rng = np.random.default_rng(0)
    for dtype in ("float32",):
        for lead in EMPTY_LEADS:
            for name, _, variant in CASES:
                spec = OPS[name]
                inputs = _inputs(name, lead, rng, variant)
                options = _options(name, variant)
                ref_outs = _outs(getattr(hcref, name)(*inputs, **options))
                native = [_native(backend, x, dtype) for x in inputs]
                outs, grads = _run(backend, name, native, options, [np.zeros(o.shape) for o in ref_outs])
                where = f"{backend_name} {name} {variant} {dtype} lead {lead}"
                for o, r in zip(outs, ref_outs):
                    assert tuple(o.shape) == r.shape and backend.dtype_name(o) == dtype, where
                for key, g in _flat(grads, spec.differentiable):
                    g64 = _f64(backend, g)
                    if key in STATE or key == "alpha" or key == "beta":
                        assert g64.size == 0, (where, key)
                    else:
                        assert np.array_equal(g64, np.zeros_like(g64)), (where, key, g64)
            for family, dynamic in (("hc", True), ("hc", False), ("fc", True), ("fc", False)):
                _check_empty_site(backend, family, dynamic, lead, dtype, rng)


def _check_empty_site(backend: Any, family: str, dynamic: bool, lead: tuple[int, ...], dtype: str,
                      rng: np.random.Generator) -> None:
    """Issue 13, case 2: the VJP of a whole site (coeffs, width, identity sublayer, depth)."""
    k, w = (N, D) if family == "hc" else (M, E)
    params = _params(family, rng, dynamic=dynamic, norm="layernorm")
    coeffs, width, depth = (getattr(backend, f"{family}_{op}") for op in ("coeffs", "width", "depth"))

    def site(H: Any, p: Any) -> Any:
        alpha, beta = coeffs(H, p)
        h0, H_res = width(H, alpha)
        return depth(h0, H_res, beta)

    H = backend.asarray(np.zeros((*lead, k, w)), dtype, "cpu")
    p = _native(backend, params, dtype)
    out = site(H, p)
    assert tuple(out.shape) == (*lead, k, w)
    g_H, g_p = backend.vjp(site, [H, p], [backend.asarray(np.ones((*lead, k, w)), dtype, "cpu")])
    assert tuple(g_H.shape) == (*lead, k, w)
    for key, g in g_p.items():
        g64 = _f64(backend, g)
        assert g64.shape == params[key].shape and np.array_equal(g64, np.zeros_like(g64)), (family, key, g64)


@pytest.mark.parametrize("backend_name", ["hcref_numpy", "hcref_torch", "hcref_jax"])
def test_empty_token_sets(backend_name: str) -> None:
    check_empty(backend_name)


def test_empty_token_sets_mlx_returns_promptly() -> None:
    """As :func:`test_empty_token_sets` for hcref_mlx, in a child process with a time limit: MLX
    itself returned uninitialised parameter gradients for lead (2, 0, 3) and did not return for
    lead (0,) (see the module docstring of ``hcref_mlx.ops``)."""
    pytest.importorskip("mlx.core")
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import test_numerics; test_numerics.check_empty('hcref_mlx')"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("hcref_mlx did not return within 300 s on empty token sets")
    assert done.returncode == 0, done.stderr[-4000:]


def _mhc_inputs(name: str, lead: tuple[int, ...], rng: np.random.Generator) -> tuple[Any, ...]:
    """float64 inputs of the mHC op ``name`` (:data:`hcref.optable.MHC_OPS`), n = 3, d = 4."""
    n, d = 3, 4
    r = rng.normal
    p_mhc = {k: v + 0.3 * r(size=np.shape(v)) for k, v in hcref.init_mhc(n, d, 0).items()}
    p_head = {k: np.asarray(v + 0.3 * r(size=np.shape(v))) for k, v in hcref.init_mhc_head(n, d).items()}
    values = {"Z": r(size=(*lead, n, n)), "H": r(size=(*lead, n, d)), "y": r(size=(*lead, d)),
              "h_pre": r(size=(*lead, n)), "h_post": r(size=(*lead, n)), "h_res": r(size=(*lead, n, n))}
    return tuple(
        (p_head if name == "mhc_head" else p_mhc) if arg == "params" else values[arg] for arg in MHC_OPS[name].inputs
    )


@pytest.mark.parametrize("name", list(MHC_OPS))
def test_reference_mhc_ops_on_empty_token_sets_and_extreme_scales(name: str) -> None:
    """The reference's mHC ops (the backends' have their own such tests in tests/test_*_mhc.py):
    leading axes (0,) and (2, 0, 3) give empty results and exactly zero parameter gradients;
    states (H, y) of 1e20 in float32 give finite results and gradients, and the coefficient ops
    equal the float64 values at scale 1 (their RMS scaling is scale-invariant)."""
    spec = MHC_OPS[name]
    rng = np.random.default_rng(4)
    for lead in EMPTY_LEADS:
        inputs = _mhc_inputs(name, lead, rng)
        outs = _outs(getattr(hcref, name)(*inputs))
        grads = getattr(hcref, spec.vjp_name)(*inputs, *[np.ones_like(o) for o in outs])
        assert all(o.size == 0 and o.shape[: len(lead)] == lead for o in outs), name
        for key, g in _flat(list(grads), spec.differentiable):
            assert g.size == 0 if key in spec.inputs else np.array_equal(g, np.zeros_like(g)), (name, key)
    inputs = _mhc_inputs(name, (2,), rng)
    scaled = [x * 1e20 if arg in ("H", "y") else x for arg, x in zip(spec.inputs, inputs)]
    as32 = [{k: np.asarray(v, np.float32) for k, v in x.items()} if isinstance(x, dict) else x.astype(np.float32)
            for x in scaled]
    outs = _outs(getattr(hcref, name)(*as32))
    grads = getattr(hcref, spec.vjp_name)(*as32, *[np.ones_like(o) for o in outs])
    assert all(np.isfinite(o).all() for o in outs), name
    assert all(np.isfinite(g).all() for _, g in _flat(list(grads), spec.differentiable)), name
    if name == "mhc_coeffs":
        unit = [{k: v.astype(np.float64) for k, v in x.items()} if isinstance(x, dict) else x.astype(np.float64) / 1e20
                for x in as32]
        for o, r in zip(outs, _outs(hcref.mhc_coeffs(*unit))):
            assert _ratio(o.astype(np.float64), r, tolerance("float32", "forward", contraction=12),
                          float(np.max(np.abs(r))), 1e-5) <= 1


# --- mixed precision (D12) --------------------------------------------------------------------

MIXED_OPS = ("hc_coeffs", "fc_coeffs", "hc_width", "fc_width", "hc_depth", "fc_depth")


def _expected_dtype(name: str, state: str) -> str:
    """The D12 rule for a half ``state`` with float32 coefficients / parameters."""
    return "float32" if name.endswith("_coeffs") else state


def _ulps(got: np.ndarray, ref: np.ndarray, dtype: str) -> float:
    """Largest ``|got - ref|`` in units of the spacing of ``dtype`` at ``|ref|`` (normal range)."""
    bits = {"bfloat16": 8, "float16": 11, "float32": 24}[dtype]
    spacing = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(ref), 2.0**-14))) - (bits - 1))
    return float(np.max(np.abs(got - ref) / spacing, initial=0.0))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", MIXED_OPS)
def test_mixed_precision_dtypes_and_single_rounding(backend_name: str, name: str) -> None:
    """Issue 13, case 3, per op: the state (H, y, H_res) half, coefficients and parameters float32.
    Coefficient ops return float32, float32-accurate; width/depth return the state's dtype, within
    one unit in the last place of the float64 result on the same values (computed in float32, rounded
    once). Every cotangent comes back in its primal's dtype: the float32 ones float32-accurate
    (accumulated in float32), the half ones within the half dtype's gradient tolerance."""
    backend = _backend(backend_name)
    spec = OPS[name]
    rng = np.random.default_rng(3)
    variant = {"dynamic": True, "norm": "layernorm"}
    inputs = _inputs(name, (4,), rng, variant)
    options = _options(name, variant)
    for half in _dtypes(backend, HALF_DTYPES):
        dtypes = {arg: half if arg in STATE else "float32" for arg in spec.inputs}
        native = [_native(backend, x, dtypes[arg]) for arg, x in zip(spec.inputs, inputs)]
        rounded = [{k: _f64(backend, v) for k, v in x.items()} if isinstance(x, dict) else _f64(backend, x)
                   for x in native]
        ref_outs = _outs(getattr(hcref, name)(*rounded, **options))
        cots = [_f64(backend, backend.asarray(rng.normal(size=o.shape), "float32", "cpu")) for o in ref_outs]
        outs, grads = _run(backend, name, native, options, cots)
        cots = [_f64(backend, backend.asarray(c, backend.dtype_name(o), "cpu")) for c, o in zip(cots, outs)]
        _, ref_grads = _reference(name, rounded, options, cots)
        where = f"{backend_name} {name} state {half}"
        for out_name, o, r in zip(spec.outputs, outs, ref_outs):
            expected = _expected_dtype(name, half)
            assert backend.dtype_name(o) == expected, (where, out_name, backend.dtype_name(o))
            if expected == "float32":
                tol = tolerance("float32", "forward", contraction=D)
                assert _ratio(_f64(backend, o), r, tol, float(np.max(np.abs(r)))) <= 1, (where, out_name)
            else:
                assert _ulps(_f64(backend, o), r, half) <= 1.0, (where, out_name)
        for (key, g), (_, r), arg in zip(
            _flat(grads, spec.differentiable), _flat(ref_grads, spec.differentiable), _keys(spec, inputs)
        ):
            want = dtypes.get(arg, "float32")
            assert backend.dtype_name(g) == want, (where, key, backend.dtype_name(g))
            tol = tolerance(want, "gradient", contraction=D)
            assert _ratio(_f64(backend, g), r, tol, float(np.max(np.abs(r), initial=0.0))) <= 1, (where, key)


def _keys(spec: Any, inputs: tuple[Any, ...]) -> list[str]:
    """The input name behind every entry of :func:`_flat` (``params`` for each parameter key)."""
    out: list[str] = []
    for arg in spec.differentiable:
        x = inputs[spec.inputs.index(arg)]
        out.extend([arg] * (len(x) if isinstance(x, dict) else 1))
    return out


def test_reference_keeps_the_state_dtype_and_rounds_once() -> None:
    """The reference itself (NumPy): ``hc_width(H float16, alpha float32)`` is float16, equal to the
    float64 result rounded once to float16 (not float16 arithmetic), and coefficient ops on float16
    inputs are computed in float32."""
    rng = np.random.default_rng(1)
    H = rng.normal(size=(64, 4, 16)).astype(np.float16)
    alpha = rng.normal(size=(64, 4, 5)).astype(np.float32)
    h0, H_res = hcref.hc_width(H, alpha)
    assert h0.dtype == np.float16 and H_res.dtype == np.float16
    ref = hcref.hc_width(H.astype(np.float64), alpha.astype(np.float64))
    for got, r in zip((h0, H_res), ref):
        assert _ulps(got.astype(np.float64), r, "float16") <= 1.0
    params = {k: v.astype(np.float16) for k, v in _params("hc", rng, dynamic=True, norm="rmsnorm").items()}
    alpha16, _ = hcref.hc_coeffs(H[:, :N, :D], params, norm="rmsnorm")
    ref16 = hcref.hc_coeffs(H[:, :N, :D].astype(np.float64), {k: v.astype(np.float64) for k, v in params.items()},
                            norm="rmsnorm")[0]
    assert alpha16.dtype == np.float16
    assert _ulps(alpha16.astype(np.float64), ref16, "float16") <= 1.0


# --- modules: a float32 module on a half stream (issue case 3) ------------------------------------


def _torch_module_case(family: str, half: str) -> None:
    torch = pytest.importorskip("torch")
    import hcref_torch

    dtype = getattr(torch, half)
    torch.manual_seed(0)
    conn = (hcref_torch.HyperConnections(N, D, 1) if family == "hc" else hcref_torch.FracConnections(M, D))
    sublayer = torch.nn.Sequential(torch.nn.LayerNorm(D), torch.nn.Linear(D, D)).to(dtype)
    H = torch.randn(5, *((N, D) if family == "hc" else (M, E))).to(dtype).requires_grad_(True)
    h0, state = conn.width(H)
    assert h0.dtype == dtype and state.H_res.dtype == dtype and state.beta.dtype == torch.float32
    out = conn.depth(sublayer(h0), state)
    assert out.dtype == dtype
    out.float().square().sum().backward()
    assert H.grad is not None and H.grad.dtype == dtype
    for p in conn.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all())
    for p in sublayer.parameters():
        assert p.grad is not None and p.grad.dtype == dtype


def _jax_module_case(family: str, half: str) -> None:
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    import hcref_jax
    import jax.numpy as jnp
    from flax import nnx

    dtype = getattr(jnp, half)
    conn = (hcref_jax.HyperConnections(N, D, 1) if family == "hc" else hcref_jax.FracConnections(M, D))
    sublayer = nnx.Linear(D, D, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    H = jnp.asarray(np.random.default_rng(0).normal(size=(5, *((N, D) if family == "hc" else (M, E)))), dtype)
    h0, state = conn.width(H)
    assert h0.dtype == dtype and state.H_res.dtype == dtype and state.beta.dtype == jnp.float32
    assert conn(H, sublayer).dtype == dtype

    def loss(c: Any, s: Any, H: Any) -> Any:
        return jnp.sum(jnp.square(c(H, s).astype(jnp.float32)))

    g_conn, g_sub, g_H = nnx.grad(loss, argnums=(0, 1, 2))(conn, sublayer, H)
    assert g_H.dtype == dtype
    for leaf in jax.tree_util.tree_leaves(g_conn):
        assert leaf.dtype == jnp.float32 and bool(jnp.isfinite(leaf).all())
    for leaf in jax.tree_util.tree_leaves(g_sub):
        assert leaf.dtype == dtype


def _mlx_module_case(family: str, half: str) -> None:
    mx = pytest.importorskip("mlx.core")
    import hcref_mlx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    dtype = getattr(mx, half)
    conn = (hcref_mlx.HyperConnections(N, D, 1) if family == "hc" else hcref_mlx.FracConnections(M, D))
    sublayer = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, D))
    sublayer.set_dtype(dtype)
    H = mx.array(np.random.default_rng(0).normal(size=(5, *((N, D) if family == "hc" else (M, E)))).astype(np.float32))
    H = H.astype(dtype)
    h0, state = conn.width(H)
    assert h0.dtype == dtype and state.H_res.dtype == dtype and state.beta.dtype == mx.float32
    assert conn(H, sublayer).dtype == dtype

    class Site(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conn, self.sublayer = conn, sublayer

        def __call__(self, H: Any) -> Any:
            return self.conn(H, self.sublayer)

    site = Site()
    _, grads = nn.value_and_grad(site, lambda H: mx.sum(mx.square(site(H).astype(mx.float32))))(H)
    for key, g in tree_flatten(grads):
        want = mx.float32 if key.startswith("conn.") else dtype
        assert g.dtype == want, key
        assert bool(mx.all(mx.isfinite(g.astype(mx.float32))).item()), key


@pytest.mark.parametrize("half", HALF_DTYPES)
@pytest.mark.parametrize("family", ["hc", "fc"])
@pytest.mark.parametrize("framework", ["torch", "jax", "mlx"])
def test_float32_module_keeps_a_half_stream_half(framework: str, family: str, half: str) -> None:
    """Issue 13, case 3: a float32 module on a bfloat16/float16 stream keeps the stream half (h0, H_out),
    gives float32 coefficients, and the user's own half sublayer (a LayerNorm and a Linear in the
    stream's dtype, which fails on float32 inputs) runs forward and backward; parameter gradients
    are float32 and finite, the sublayer's in its dtype."""
    {"torch": _torch_module_case, "jax": _jax_module_case, "mlx": _mlx_module_case}[framework](family, half)


# --- empty token sets in the modules ---------------------------------------------------------


@pytest.mark.parametrize("family", ["hc", "fc"])
def test_modules_on_empty_token_sets_give_zero_gradients(family: str) -> None:
    """torch, jax and mlx modules on H with leading axes (2, 0, 3): empty output, every parameter
    gradient of the connection and of the sublayer exactly zero (mlx: guarded by the child-process
    test above for the ops; the module runs the same ops)."""
    shape = (2, 0, 3, *((N, D) if family == "hc" else (M, E)))
    torch = pytest.importorskip("torch")
    import hcref_torch

    conn_t = hcref_torch.HyperConnections(N, D, 1) if family == "hc" else hcref_torch.FracConnections(M, D)
    lin_t = torch.nn.Linear(D, D)
    out_t = conn_t(torch.zeros(shape), lin_t)
    assert tuple(out_t.shape) == shape
    out_t.sum().backward()
    for p in [*conn_t.parameters(), *lin_t.parameters()]:
        assert p.grad is None or bool((p.grad == 0).all())

    jax = pytest.importorskip("jax")
    import hcref_jax
    import jax.numpy as jnp
    from flax import nnx

    conn_j = hcref_jax.HyperConnections(N, D, 1) if family == "hc" else hcref_jax.FracConnections(M, D)
    lin_j = nnx.Linear(D, D, rngs=nnx.Rngs(0))
    H_j = jnp.zeros(shape, jnp.float32)
    assert conn_j(H_j, lin_j).shape == shape
    grads = nnx.grad(lambda c, s: jnp.sum(c(H_j, s)), argnums=(0, 1))(conn_j, lin_j)
    leaves = jax.tree_util.tree_leaves(grads)
    assert leaves
    for leaf in leaves:
        assert bool((leaf == 0).all())

    mx = pytest.importorskip("mlx.core")
    import hcref_mlx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    conn_m = hcref_mlx.HyperConnections(N, D, 1) if family == "hc" else hcref_mlx.FracConnections(M, D)
    lin_m = nn.Linear(D, D)
    H_m = mx.zeros(shape)

    class Site(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conn, self.lin = conn_m, lin_m

        def __call__(self, H: Any) -> Any:
            return self.conn(H, self.lin)

    site = Site()
    assert tuple(site(H_m).shape) == shape
    _, g = nn.value_and_grad(site, lambda H: mx.sum(site(H)))(H_m)
    for key, leaf in tree_flatten(g):
        assert bool(mx.all(leaf == 0).item()), key


# --- meta tensors (hcref_torch) ---------------------------------------------------------------


def _meta_calls(torch: Any) -> list[tuple[str, Callable[[], Any], list[tuple[int, ...]]]]:
    import hcref_torch

    H = torch.empty(2, 4, 8, device="meta")
    alpha = torch.empty(2, 4, 5, device="meta")
    beta = torch.empty(2, 4, device="meta")
    y = torch.empty(2, 8, device="meta")
    H_fc = torch.empty(2, 4, 2, device="meta")
    p_hc = {k: torch.empty(v.shape, device="meta") for k, v in hcref.init_hc(4, 8, 0).items()}
    p_rms = {k: torch.empty(v.shape, device="meta") for k, v in hcref.init_hc(4, 8, 0, norm="rmsnorm").items()}
    p_fc = {k: torch.empty(v.shape, device="meta") for k, v in hcref.init_fc(4, 8).items()}
    return [
        ("hc_width", lambda: hcref_torch.hc_width(H, alpha), [(2, 8), (2, 4, 8)]),
        ("hc_coeffs", lambda: hcref_torch.hc_coeffs(H, p_hc), [(2, 4, 5), (2, 4)]),
        ("hc_coeffs rmsnorm", lambda: hcref_torch.hc_coeffs(H, p_rms, norm="rmsnorm"), [(2, 4, 5), (2, 4)]),
        ("hc_depth", lambda: hcref_torch.hc_depth(y, H, beta), [(2, 4, 8)]),
        ("fc_coeffs", lambda: hcref_torch.fc_coeffs(H_fc, p_fc), [(2, 4, 8), (2, 4)]),
        ("expand", lambda: hcref_torch.expand(y, 4), [(2, 4, 8)]),
        ("reduce", lambda: hcref_torch.reduce(H), [(2, 8)]),
    ]


@pytest.mark.parametrize("autocast", [False, True])
def test_torch_meta_tensors(autocast: bool) -> None:
    """Issue 13, case 4: ops and modules on ``device="meta"`` tensors give meta results of the right
    shapes and dtypes, forward and backward, also inside a CPU autocast region (the autocast guard
    never asks autocast about the meta device)."""
    torch = pytest.importorskip("torch")
    import hcref_torch

    region = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with region:
        for label, call, shapes in _meta_calls(torch):
            outs = _outs(call())
            assert [tuple(o.shape) for o in outs] == shapes, label
            assert all(o.device.type == "meta" and o.dtype == torch.float32 for o in outs), label
        for conn in (hcref_torch.HyperConnections(4, 8, 0, device="meta"),
                     hcref_torch.FracConnections(4, 8, norm="rmsnorm", device="meta")):
            H = torch.empty(3, 4, 8 if isinstance(conn, hcref_torch.HyperConnections) else 2, device="meta")
            H.requires_grad_(True)
            out = conn(H, lambda h: 2 * h)
            assert out.device.type == "meta" and out.shape == H.shape
            out.sum().backward()
            assert H.grad is not None and H.grad.device.type == "meta" and H.grad.shape == H.shape
            for p in conn.parameters():
                assert p.grad is not None and p.grad.device.type == "meta" and p.grad.shape == p.shape
