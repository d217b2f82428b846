"""Initial parameters of one site, as flat mappings with the contract's keys (decision D2).

At these values HC and FC reproduce the Pre-Norm residual (HC paper Eq. 14 and section 2.3;
FC paper Eq. 15): dynamic projections are zero, so the coefficients equal the static part.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import validation as v
from ._arrays import Array

GATE_INIT = 0.01
"""Initial value of the gate scalars ``s_alpha`` and ``s_beta`` (decision D3)."""


def _check_norm(norm: Any) -> None:
    v.check_options(norm, True, True, True)


def _dynamic_params(w: int, cols: int, norm: str, dtype: Any) -> dict[str, Array]:
    params = {
        "W_alpha": np.zeros((w, cols), dtype),
        "W_beta": np.zeros((w,), dtype),
        "s_alpha": np.asarray(GATE_INIT, dtype),
        "s_beta": np.asarray(GATE_INIT, dtype),
    }
    if norm in ("layernorm", "rmsnorm"):
        params["norm_weight"] = np.ones((w,), dtype)
    if norm == "layernorm":
        params["norm_bias"] = np.zeros((w,), dtype)
    return params


def init_hc(
    n: int, d: int, layer_index: int, *, dynamic: bool = True, norm: str = "layernorm", dtype: Any = np.float64
) -> dict[str, Array]:
    """HC site ``layer_index`` (0-based, attention and FFN sublayers counted separately).

    ``A_m = e_(layer_index mod n)``, ``A_r = I_n``, ``B = 1_n`` (HC paper Eq. 14); dynamic adds
    ``W_alpha = 0`` (d, n+1), ``W_beta = 0`` (d), ``s_alpha = s_beta = 0.01`` and the norm's
    ``norm_weight = 1`` (d) and, for layernorm, ``norm_bias = 0`` (d).
    """
    v.check_count("n", n)
    v.check_count("d", d)
    v.check_count("layer_index", layer_index, minimum=0)
    v.check_flag("dynamic", dynamic)
    _check_norm(norm)
    A_m = np.zeros((n,), dtype)
    A_m[layer_index % n] = 1
    params = {"A_m": A_m, "A_r": np.eye(n, dtype=dtype), "B": np.ones((n,), dtype)}
    if dynamic:
        params.update(_dynamic_params(d, n + 1, norm, dtype))
    return params


def init_fc(
    m: int, d: int, *, dynamic: bool = True, norm: str = "layernorm", dtype: Any = np.float64
) -> dict[str, Array]:
    """FC site: ``Y = I_m``, ``A = I_m``, ``B = 1_m`` (FC paper Eq. 15; no layer-index pattern).

    Dynamic adds ``W_alpha = 0`` (e, 2m), ``W_beta = 0`` (e), ``s_alpha = s_beta = 0.01`` and the
    norm's ``norm_weight = 1`` (e) and, for layernorm, ``norm_bias = 0`` (e), with ``e = d/m``.
    """
    v.check_count("m", m)
    v.check_count("d", d)
    if d % m:
        raise ValueError(f"d: expected a multiple of m={m} (d = m * e), got {d}")
    v.check_flag("dynamic", dynamic)
    _check_norm(norm)
    params = {"Y": np.eye(m, dtype=dtype), "A": np.eye(m, dtype=dtype), "B": np.ones((m,), dtype)}
    if dynamic:
        params.update(_dynamic_params(d // m, 2 * m, norm, dtype))
    return params
