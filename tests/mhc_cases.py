"""Cases and checks shared by the backends' mHC tests (tests/test_{torch,jax,mlx}_mhc.py).

Each check takes ``backend`` (the package's conformance object: ``asarray``, ``to_numpy``,
``dtype_name``, ``vjp``) and ``ops`` (the namespace with the five mHC ops), so every framework is
held to the same cases against the NumPy reference:

* float64: forward within 1e-12 and autodiff within 1e-10 of the reference's hand-derived VJPs
  (relative to the largest reference value, at least 1);
* float32 / bfloat16: against the float64 reference run on the same rounded inputs, within
  :func:`hcref.tolerances.tolerance` (forward and gradient tables, contraction n*d);
* extreme logits, mixed precision, bad inputs (the reference's error text) and size-0 leading axes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

import hcref
from hcref.checks import random_inputs
from hcref.optable import MHC_OPS
from hcref.tolerances import tolerance

Case = tuple[str, tuple[Any, ...], dict[str, Any]]


def _case(name: str, seed: int, lead: tuple[int, ...], n: int, d: int, **options: Any) -> Case:
    rng = np.random.default_rng(seed)
    kw = {"dynamic": options.pop("dynamic")} if "dynamic" in options else {}
    return name, random_inputs(name, rng, lead, n, d, **kw), options


CASES: list[Case] = [
    _case("sinkhorn", 0, (2, 3), 4, 4),
    _case("sinkhorn", 1, (5,), 3, 3, iters=1, eps=1e-6),
    _case("sinkhorn", 2, (), 1, 1, iters=3),
    _case("sinkhorn", 3, (3,), 8, 8, eps=1e-6),
    _case("mhc_coeffs", 4, (2, 3), 4, 8),
    _case("mhc_coeffs", 5, (5,), 2, 3, iters=3, eps=1e-6),
    _case("mhc_coeffs", 6, (4,), 3, 5, dynamic=False),
    _case("mhc_coeffs", 7, (), 1, 4, iters=1),
    _case("mhc_pre", 8, (2, 3), 4, 8),
    _case("mhc_post", 9, (5,), 3, 6),
    _case("mhc_head", 10, (2, 3), 4, 8),
    _case("mhc_head", 11, (), 2, 5, eps=1e-6),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]

LOW_CASES: list[Case] = [
    _case("sinkhorn", 20, (6,), 4, 4),
    _case("sinkhorn", 21, (6,), 4, 4, eps=1e-6),
    _case("mhc_coeffs", 22, (6,), 4, 8),
    _case("mhc_coeffs", 23, (6,), 4, 8, eps=1e-6),
    _case("mhc_pre", 24, (6,), 4, 8),
    _case("mhc_post", 25, (6,), 4, 8),
    _case("mhc_head", 26, (6,), 4, 8, eps=1e-6),
]
LOW_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(LOW_CASES)]


def outs(x: Any) -> tuple[Any, ...]:
    return x if isinstance(x, tuple) else (x,)


def _map(fn: Callable[[Any], Any], x: Any) -> Any:
    if isinstance(x, Mapping):
        return {key: fn(value) for key, value in x.items()}
    return fn(x) if isinstance(x, np.ndarray) else x


def native(backend: Any, x: Any, dtype: str) -> Any:
    """``x`` (an array, a parameter mapping or an option) as the backend's arrays in ``dtype``."""
    return _map(lambda a: backend.asarray(a, dtype, "cpu"), x)


def f64(backend: Any, x: Any) -> Any:
    """A backend array (or a mapping of them) as float64 NumPy."""
    if isinstance(x, Mapping):
        return {key: f64(backend, value) for key, value in x.items()}
    return np.asarray(backend.to_numpy(x), dtype=np.float64)


def _flat(x: Any) -> list[np.ndarray]:
    if isinstance(x, Mapping):
        return [np.asarray(x[key]) for key in sorted(x)]
    return [np.asarray(x)]


def _scale(arrays: list[np.ndarray]) -> float:
    return max((float(np.abs(a).max(initial=0.0)) for a in arrays), default=0.0)


def backend_vjp(
    backend: Any, ops: Any, name: str, inputs: list[Any], cotangents: list[Any], options: dict[str, Any]
) -> tuple[Any, ...]:
    """The backend's autodiff of op ``name`` at ``inputs``: one cotangent per differentiable input."""
    spec = MHC_OPS[name]
    diff = [spec.inputs.index(arg) for arg in spec.differentiable]

    def fn(*primals: Any) -> Any:
        args = list(inputs)
        for i, p in zip(diff, primals):
            args[i] = p
        return getattr(ops, name)(*args, **options)

    return backend.vjp(fn, [inputs[i] for i in diff], cotangents)


def reference_vjp(name: str, inputs: tuple[Any, ...], cotangents: list[Any], options: dict[str, Any]) -> Any:
    return getattr(hcref, MHC_OPS[name].vjp_name)(*inputs, *cotangents, **options)


def error_ratio(got: list[np.ndarray], ref: list[np.ndarray], rtol: float, atol: float) -> float:
    """``max|got - ref| / (atol + rtol * max|ref|)`` over all arrays (one vector, as the suite)."""
    err = max((float(np.abs(g - r).max(initial=0.0)) for g, r in zip(got, ref, strict=True)), default=0.0)
    bound = atol + rtol * _scale(ref)
    return err / bound if bound > 0 else (0.0 if err == 0 else float("inf"))


def error_at_least_1(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """``max|got - ref| / max(1, max|ref|)``."""
    return error_ratio(got, ref, 1.0, 0.0) * _scale(ref) / max(1.0, _scale(ref)) if _scale(ref) else error_ratio(
        got, ref, 0.0, 1.0
    )


def check_float64(backend: Any, ops: Any, case: Case) -> tuple[float, float]:
    """Forward within 1e-12 and VJP within 1e-10 of the reference (relative to max(1, max|ref|));
    returns the two errors relative to that scale."""
    name, inputs, options = case
    b_inputs = [native(backend, x, "float64") for x in inputs]
    ref = outs(getattr(hcref, name)(*inputs, **options))
    got = outs(getattr(ops, name)(*b_inputs, **options))
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert backend.dtype_name(g) == "float64" and tuple(g.shape) == r.shape
    fwd = error_at_least_1([f64(backend, g) for g in got], list(ref))
    assert fwd <= 1e-12, (name, fwd)
    rng = np.random.default_rng(7)
    cots = [rng.standard_normal(r.shape) for r in ref]
    expected = reference_vjp(name, inputs, cots, options)
    grads = backend_vjp(backend, ops, name, b_inputs, [native(backend, c, "float64") for c in cots], options)
    got_flat = [a for g in grads for a in _flat(f64(backend, g))]
    ref_flat = [a for e in expected for a in _flat(e)]
    for g in grads:
        for a in (g.values() if isinstance(g, Mapping) else [g]):
            assert backend.dtype_name(a) == "float64"
    bwd = error_at_least_1(got_flat, ref_flat)
    assert bwd <= 1e-10, (name, bwd)
    return fwd, bwd


def contraction(name: str, inputs: tuple[Any, ...]) -> int:
    """The longest sum inside the op: n*d for the projections, n for the mixes and Sinkhorn's sums."""
    if name in ("mhc_coeffs", "mhc_head"):
        return int(inputs[0].shape[-1] * inputs[0].shape[-2])
    if name == "sinkhorn":
        return int(inputs[0].shape[-1])
    H = inputs[0] if name == "mhc_pre" else inputs[1]
    return int(H.shape[-2])


def check_lower(backend: Any, ops: Any, case: Case, dtype: str) -> tuple[float, float]:
    """Forward and VJP in ``dtype`` against the float64 reference on the same rounded inputs and
    cotangents, within the suite's tolerances; results keep the input dtype. Returns the errors
    as fractions of the tolerance and of max|ref| (forward, gradient)."""
    name, inputs, options = case
    b_inputs = [native(backend, x, dtype) for x in inputs]
    ref_inputs = tuple(f64(backend, b) for b in b_inputs)
    ref = outs(getattr(hcref, name)(*ref_inputs, **options))
    got = outs(getattr(ops, name)(*b_inputs, **options))
    k = contraction(name, inputs)
    tol = tolerance(dtype, "forward", contraction=k)
    for g in got:
        assert backend.dtype_name(g) == dtype, name
    got64 = [f64(backend, g) for g in got]
    ratio = error_ratio(got64, list(ref), tol.rtol, tol.atol)
    assert ratio <= 1, (name, dtype, "forward", ratio)
    fwd_rel = error_ratio(got64, list(ref), 1.0, 0.0)
    rng = np.random.default_rng(5)
    cots = [native(backend, rng.standard_normal(r.shape), dtype) for r in ref]
    expected = reference_vjp(name, ref_inputs, [f64(backend, c) for c in cots], options)
    grads = backend_vjp(backend, ops, name, b_inputs, cots, options)
    got_flat = [a for g in grads for a in _flat(f64(backend, g))]
    ref_flat = [a for e in expected for a in _flat(e)]
    gtol = tolerance(dtype, "gradient", contraction=k)
    ratio = error_ratio(got_flat, ref_flat, gtol.rtol, gtol.atol)
    assert ratio <= 1, (name, dtype, "gradient", ratio)
    return fwd_rel, error_ratio(got_flat, ref_flat, 1.0, 0.0)


U32 = 2.0**-24
"""float32's unit roundoff."""


def extreme_cases() -> list[tuple[str, tuple[Any, ...], dict[str, Any], float]]:
    """float32-representable logits of +-1e4 and a row / a column 1e4 below the rest (D7), huge
    states for the scale-safe RMS (D12), and sigmoid logits of +-1e4; each with its largest logit
    magnitude L (see :func:`check_extreme`)."""
    rng = np.random.default_rng(30)
    Z = rng.standard_normal((3, 4, 4))
    Z[0, 1, :] -= 1e4  # a row 1e4 below: plain exp underflows it and T_r divides 0 by 0
    Z[1, :, 2] -= 1e4  # a column 1e4 below
    Z[2, 0, 0], Z[2, 3, 1] = 1e4, -1e4
    b = rng.standard_normal(2 * 3 + 9)
    b[0], b[4] = 1e4, -1e4
    b[6:9] -= 1e4  # the first row of h_res's logits 1e4 below
    H, params = random_inputs("mhc_coeffs", rng, (5,), 3, 4)
    H_head, p_head = random_inputs("mhc_head", rng, (5,), 3, 4)
    return [
        ("sinkhorn", (Z,), {}, 1e4),
        ("sinkhorn", (Z,), {"eps": 1e-6}, 1e4),
        ("mhc_coeffs", (H, {"b": b}), {}, 1e4),
        ("mhc_coeffs", (H * 1e20, {**params, "b": b}), {}, 1e4),
        ("mhc_head", (H_head * 1e20, p_head), {}, 1.0),
        ("mhc_coeffs", (H * 1e-30, params), {}, 1.0),
    ]


def check_extreme(backend: Any, ops: Any, case: tuple[str, tuple[Any, ...], dict[str, Any], float]) -> float:
    """float32 forward and VJP finite and right: within the float32 tolerances of the float64
    reference, widened to ``L * 2^-24`` where the largest logit L exceeds order 1. Why: the
    potentials (and V4-free logits ``gate * z + b``) are then L-sized float32 numbers whose
    rounding, up to ``L * 2^-24``, enters every ``exp``; the reference computing in float32
    itself errs as much (6.6e-5 for a column 1e4 below, 2.5e-5 for entries of +-1e4), so this is
    the conditioning of float32 logits, not a backend's error. Returns the gradient's error ratio."""
    name, inputs, options, L = case
    b_inputs = [native(backend, x, "float32") for x in inputs]
    ref_inputs = tuple(f64(backend, b) for b in b_inputs)
    ref = outs(getattr(hcref, name)(*ref_inputs, **options))
    assert all(np.isfinite(r).all() for r in ref)
    got = [f64(backend, g) for g in outs(getattr(ops, name)(*b_inputs, **options))]
    assert all(np.isfinite(g).all() for g in got), name
    tol = tolerance("float32", "forward", contraction=contraction(name, inputs))
    assert error_ratio(got, list(ref), max(tol.rtol, L * U32), tol.atol) <= 1, name
    rng = np.random.default_rng(6)
    cots = [native(backend, rng.standard_normal(r.shape), "float32") for r in ref]
    expected = reference_vjp(name, ref_inputs, [f64(backend, c) for c in cots], options)
    grads = backend_vjp(backend, ops, name, b_inputs, cots, options)
    got_flat = [a for g in grads for a in _flat(f64(backend, g))]
    ref_flat = [a for e in expected for a in _flat(e)]
    assert all(np.isfinite(a).all() for a in got_flat), name
    gtol = tolerance("float32", "gradient", contraction=contraction(name, inputs))
    ratio = error_ratio(got_flat, ref_flat, max(gtol.rtol, L * U32), gtol.atol)
    assert ratio <= 1, (name, ratio)
    return ratio


def check_mixed(backend: Any, ops: Any, state: str) -> None:
    """D12: float32 parameters on a ``state`` (bfloat16/float16) state: coefficients and head
    weights in float32, ``mhc_pre``/``mhc_head`` in the state's dtype, ``mhc_post`` in
    ``promote(y, H)``; values within the tolerances of the dtype each result is rounded to,
    against the float64 reference on the same rounded values; gradients keep their inputs' dtypes."""
    rng = np.random.default_rng(40)
    n, d = 4, 8
    H, params = random_inputs("mhc_coeffs", rng, (6,), n, d)
    _, p_head = random_inputs("mhc_head", rng, (6,), n, d)
    y = rng.standard_normal((6, d))
    bH, by = native(backend, H, state), native(backend, y, state)
    bp, bph = native(backend, params, "float32"), native(backend, p_head, "float32")
    H64, y64, p64, ph64 = f64(backend, bH), f64(backend, by), f64(backend, bp), f64(backend, bph)

    def close(got: Any, ref: Any, dtype: str, k: int) -> None:
        assert backend.dtype_name(got) == dtype
        tol = tolerance(dtype, "forward", contraction=k)
        assert error_ratio([f64(backend, got)], [ref], tol.rtol, tol.atol) <= 1

    coeffs = ops.mhc_coeffs(bH, bp, eps=1e-6)
    for got, ref in zip(coeffs, hcref.mhc_coeffs(H64, p64, eps=1e-6)):
        close(got, ref, "float32", n * d)
    h_pre, h_post, h_res = coeffs
    h0 = ops.mhc_pre(bH, h_pre)
    close(h0, hcref.mhc_pre(H64, f64(backend, h_pre)), state, n)
    H_out = ops.mhc_post(by, bH, h_post, h_res)
    close(H_out, hcref.mhc_post(y64, H64, f64(backend, h_post), f64(backend, h_res)), state, n)
    close(ops.mhc_head(bH, bph), hcref.mhc_head(H64, ph64), state, n * d)
    g = native(backend, rng.standard_normal((6, n, d)), state)

    def site(H_: Any, p: Any) -> Any:
        a, b_, c = ops.mhc_coeffs(H_, p)
        return ops.mhc_post(ops.mhc_pre(H_, a), H_, b_, c)

    g_H, g_p = backend.vjp(site, [bH, bp], [g])
    assert backend.dtype_name(g_H) == state
    assert all(backend.dtype_name(value) == "float32" for value in g_p.values())
    assert np.isfinite(f64(backend, g_H)).all()


def bad_cases() -> list[Case]:
    """Bad inputs of every mHC op; each must raise the reference's exception with its exact text."""
    rng = np.random.default_rng(50)
    r = rng.standard_normal
    H = r((2, 3, 4))
    p = hcref.init_mhc(3, 4, 0)
    head = hcref.init_mhc_head(3, 4)
    return [
        ("sinkhorn", (r((2, 3, 4)),), {}),
        ("sinkhorn", (r((3,)),), {}),
        ("sinkhorn", (r((3, 3)),), {"iters": 0}),
        ("sinkhorn", (r((3, 3)),), {"iters": True}),
        ("sinkhorn", (r((3, 3)),), {"eps": -1e-6}),
        ("sinkhorn", (r((3, 3)),), {"eps": "0"}),
        ("sinkhorn", (np.ones((3, 3), dtype=np.int32),), {}),
        ("mhc_coeffs", (H, {k: v for k, v in p.items() if k != "gates"}), {}),
        ("mhc_coeffs", (H, {**p, "W_alpha": np.zeros((4, 4))}), {}),
        ("mhc_coeffs", (H, {**p, "phi": np.zeros((4, 15))}), {}),
        ("mhc_coeffs", (H, {"b": np.zeros(14)}), {}),
        ("mhc_coeffs", (r((4,)), p), {}),
        ("mhc_coeffs", (H, p), {"iters": 0}),
        ("mhc_coeffs", (H, {**p, "gates": np.ones(3, dtype=np.int32)}), {}),
        ("mhc_coeffs", (H, [1, 2]), {}),
        ("mhc_pre", (H, r((2, 4))), {}),
        ("mhc_pre", (H, r((1, 3))), {}),
        ("mhc_post", (r((2, 5)), H, r((2, 3)), r((2, 3, 3))), {}),
        ("mhc_post", (r((2, 4)), H, r((2, 3)), r((2, 3, 4))), {}),
        ("mhc_post", (r((2, 4)), H, r((2, 2)), r((2, 3, 3))), {}),
        ("mhc_head", (H, {"phi": head["phi"], "b": head["b"], "gates": np.ones(3)}), {}),
        ("mhc_head", (H, hcref.init_mhc_head(3, 4)), {"eps": -1.0}),
        ("mhc_head", (H, {**hcref.init_mhc_head(3, 4), "phi": np.zeros((12, 4))}), {}),
    ]


BAD_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(bad_cases())]


def keep_dtype(backend_from_numpy: Callable[[np.ndarray], Any], x: Any) -> Any:
    """``x`` with every array converted by ``backend_from_numpy`` keeping its dtype (an int array stays int)."""
    return _map(backend_from_numpy, x)


def check_bad(ops: Any, from_numpy: Callable[[np.ndarray], Any], case: Case) -> None:
    name, inputs, options = case
    try:
        getattr(hcref, name)(*inputs, **options)
    except (ValueError, TypeError) as exc:
        ref: Exception = exc
    else:  # pragma: no cover - a bad case that the reference accepts is a broken table
        raise AssertionError(f"the reference accepted bad case {name} {options}")
    b_inputs = [keep_dtype(from_numpy, x) for x in inputs]
    try:
        getattr(ops, name)(*b_inputs, **options)
    except (ValueError, TypeError) as exc:
        assert type(exc) is type(ref), (name, exc, ref)
        assert str(exc) == str(ref), (name, str(exc), str(ref))
    else:
        raise AssertionError(f"{name} accepted bad input {options}; the reference raised {ref!r}")


def check_empty(backend: Any, ops: Any, lead: tuple[int, ...]) -> None:
    """Size-0 leading axes: empty outputs of the right shapes and dtypes; parameter gradients
    exactly zero (the sum over no tokens), input gradients empty."""
    rng = np.random.default_rng(60)
    n, d = 3, 4
    for name, options in (("sinkhorn", {}), ("sinkhorn", {"eps": 1e-6}), ("mhc_coeffs", {}),
                          ("mhc_coeffs", {"eps": 1e-6}), ("mhc_pre", {}), ("mhc_post", {}), ("mhc_head", {})):
        inputs = random_inputs(name, rng, lead, n, n if name == "sinkhorn" else d)
        if name == "mhc_coeffs" and "eps" in options:
            inputs = (inputs[0], {"b": inputs[1]["b"]})  # static: coefficients broadcast from b
        ref = outs(getattr(hcref, name)(*inputs, **options))
        b_inputs = [native(backend, x, "float32") for x in inputs]
        got = outs(getattr(ops, name)(*b_inputs, **options))
        for g, e in zip(got, ref, strict=True):
            assert tuple(g.shape) == e.shape and backend.dtype_name(g) == "float32", name
        cots = [native(backend, np.zeros(e.shape), "float32") for e in ref]
        grads = backend_vjp(backend, ops, name, b_inputs, cots, options)
        spec = MHC_OPS[name]
        for arg, g in zip(spec.differentiable, grads, strict=True):
            original = inputs[spec.inputs.index(arg)]
            if isinstance(original, Mapping):
                for key, value in original.items():
                    got_g = f64(backend, g[key])
                    assert got_g.shape == value.shape and not np.any(got_g), (name, key)
            else:
                assert tuple(g.shape) == original.shape, (name, arg)
