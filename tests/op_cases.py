"""Inputs shared by the backends' op tests (tests/test_{torch,jax,mlx}_ops.py): random float64
cases for every op of the contract and a table of bad inputs, so that each backend is checked
on the same cases against the NumPy reference."""

from __future__ import annotations

from typing import Any

import numpy as np

import hcref
from hcref.optable import OPS

RNG_SEEDS = (0, 1, 2)


def params(family: str, k: int, d: int, rng: np.random.Generator, *, dynamic: bool, norm: str) -> dict[str, Any]:
    init = hcref.init_hc(k, d, 2, dynamic=dynamic, norm=norm) if family == "hc" else hcref.init_fc(
        k, d, dynamic=dynamic, norm=norm
    )
    return {key: value + 0.3 * rng.normal(size=value.shape) for key, value in init.items()}


def cases(seed: int) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """(op name, inputs, options) for every op of the contract, random float64 values."""
    rng = np.random.default_rng(seed)
    lead = ((2, 3), (5,), ())[seed % 3]
    n, m, e = (4, 2, 3) if seed % 2 else (3, 3, 2)
    d = m * e
    norm = ("layernorm", "rmsnorm", "none")[seed % 3]
    switches = {"use_tanh": seed != 1, "use_norm": seed != 2, "use_scale": seed != 0}
    opts = {"norm": norm, **switches}
    r = rng.normal
    return [
        ("expand", (r(size=(*lead, d)), n), {}),
        ("reduce", (r(size=(*lead, n, d)),), {}),
        ("frac_split", (r(size=(*lead, d)), m), {}),
        ("frac_merge", (r(size=(*lead, m, e)),), {}),
        ("hc_coeffs", (r(size=(*lead, n, d)), params("hc", n, d, rng, dynamic=True, norm=norm)), opts),
        ("hc_coeffs", (r(size=(*lead, n, d)), params("hc", n, d, rng, dynamic=False, norm=norm)), {}),
        ("hc_width", (r(size=(*lead, n, d)), r(size=(*lead, n, n + 1))), {}),
        ("hc_depth", (r(size=(*lead, d)), r(size=(*lead, n, d)), r(size=(*lead, n))), {}),
        ("fc_coeffs", (r(size=(*lead, m, e)), params("fc", m, d, rng, dynamic=True, norm=norm)), opts),
        ("fc_coeffs", (r(size=(*lead, m, e)), params("fc", m, d, rng, dynamic=False, norm=norm)), {}),
        ("fc_width", (r(size=(*lead, m, e)), r(size=(*lead, m, 2 * m))), {}),
        ("fc_depth", (r(size=(*lead, d)), r(size=(*lead, m, e)), r(size=(*lead, m))), {}),
    ]



def outs(x: Any) -> tuple[Any, ...]:
    return x if isinstance(x, tuple) else (x,)


LOW_TOL = {"float32": 1e-5, "bfloat16": 3e-2, "float16": 4e-3}
"""Error bound of the backends' lower-precision op tests, relative to ``max(1, max|ref|)``."""

LOW_CASES = cases(1)
LOW_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(LOW_CASES)]


def check_lower_precision(
    backend: Any, name: str, inputs: tuple[Any, ...], options: dict[str, Any], dtype: str
) -> None:
    """Forward and VJP of ``backend`` in ``dtype`` against the float64 reference on the same rounded
    values: the error, relative to the largest reference value (at least 1), is within
    ``LOW_TOL[dtype]``, and every result keeps the input dtype. Uses only the Backend interface."""
    spec = OPS[name]

    def rounded(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: backend.asarray(v, dtype, "cpu") for k, v in x.items()}
        return backend.asarray(x, dtype, "cpu") if isinstance(x, np.ndarray) else x

    def f64(x: Any) -> Any:
        return np.asarray(backend.to_numpy(x), dtype=np.float64)

    b_inputs = [rounded(x) for x in inputs]
    ref_inputs = [
        {k: f64(v) for k, v in b.items()} if isinstance(b, dict) else f64(b) if isinstance(x, np.ndarray) else b
        for x, b in zip(inputs, b_inputs)
    ]
    tol = LOW_TOL[dtype]

    def close(got: Any, ref: np.ndarray, what: str) -> None:
        assert backend.dtype_name(got) == dtype, what
        err = np.abs(f64(got) - ref).max(initial=0.0)
        assert err <= tol * max(1.0, np.abs(ref).max(initial=0.0)), (what, err)

    ref_outs = outs(getattr(hcref, name)(*ref_inputs, **options))
    for g, e in zip(outs(getattr(backend, name)(*b_inputs, **options)), ref_outs):
        close(g, e, "forward")
    rng = np.random.default_rng(5)
    cots = [rounded(rng.normal(size=o.shape)) for o in ref_outs]
    expected = getattr(hcref, spec.vjp_name)(*ref_inputs, *[f64(c) for c in cots], **options)
    diff_idx = [spec.inputs.index(arg) for arg in spec.differentiable]

    def fn(*primals: Any) -> Any:
        args = list(b_inputs)
        for i, p in zip(diff_idx, primals):
            args[i] = p
        return getattr(backend, name)(*args, **options)

    got = backend.vjp(fn, [b_inputs[i] for i in diff_idx], cots)
    for g, e in zip(got, expected):
        if isinstance(e, dict):
            for key in e:
                close(g[key], e[key], key)
        else:
            close(g, e, "vjp")


ALL_CASES = [case for seed in RNG_SEEDS for case in cases(seed)]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(ALL_CASES)]


def bad_cases() -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    rng = np.random.default_rng(0)
    r = rng.normal
    p_hc = hcref.init_hc(3, 4, 0)
    p_fc = hcref.init_fc(2, 6)
    missing = {k: v for k, v in p_hc.items() if k != "W_beta"}
    extra = {**p_fc, "gamma": np.ones(3)}
    wrong_shape = {**p_hc, "W_alpha": np.zeros((4, 3))}
    int_param = {**p_hc, "B": np.ones(3, dtype=np.int32)}
    return [
        ("expand", (r(size=(2, 4)), 0), {}),
        ("expand", (r(size=(2, 4)), True), {}),
        ("expand", (r(size=(2, 4)), 2.0), {}),
        ("expand", (np.ones((2, 4), dtype=np.int32), 2), {}),
        ("expand", (np.asarray(1.0), 2), {}),
        ("reduce", (r(size=(4,)),), {}),
        ("reduce", (np.ones((2, 4), dtype=np.int32),), {}),
        ("frac_split", (r(size=(2, 5)), 2), {}),
        ("frac_merge", (r(size=(5,)),), {}),
        ("hc_width", (r(size=(2, 3, 4)), r(size=(2, 3, 3))), {}),
        ("hc_width", (r(size=(2, 3, 4)), r(size=(1, 3, 4))), {}),
        ("hc_depth", (r(size=(2, 5)), r(size=(2, 3, 4)), r(size=(2, 3))), {}),
        ("hc_depth", (r(size=(2, 4)), r(size=(2, 3, 4)), r(size=(2, 2))), {}),
        ("fc_width", (r(size=(2, 3)), r(size=(2, 3))), {}),
        ("fc_depth", (r(size=(2, 5)), r(size=(2, 2, 3)), r(size=(2, 2))), {}),
        ("hc_coeffs", (r(size=(5, 3, 4)), missing), {}),
        ("hc_coeffs", (r(size=(5, 3, 4)), wrong_shape), {}),
        ("hc_coeffs", (r(size=(5, 3, 4)), int_param), {}),
        ("hc_coeffs", (r(size=(5, 3, 4)), p_hc), {"norm": "batchnorm"}),
        ("hc_coeffs", (r(size=(5, 3, 4)), p_hc), {"use_tanh": 1}),
        ("hc_coeffs", (r(size=(5, 3, 4)), p_hc), {"norm": "rmsnorm"}),
        ("hc_coeffs", (r(size=(4,)), p_hc), {}),
        ("fc_coeffs", (r(size=(5, 2, 3)), extra), {}),
        ("fc_coeffs", (r(size=(5, 2, 3)), [1, 2]), {}),
    ]
