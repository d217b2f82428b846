"""Inputs shared by the backends' op tests (tests/test_{torch,jax,mlx}_ops.py): random float64
cases for every op of the contract and a table of bad inputs, so that each backend is checked
on the same cases against the NumPy reference."""

from __future__ import annotations

from typing import Any

import numpy as np

import hcref

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
