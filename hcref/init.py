"""Initial parameters of one site, as flat mappings with the contract's keys (decisions D2, D3, D10).

At these values HC and FC reproduce the Pre-Norm residual (HC paper Eq. 14 and section 2.3;
FC paper Eq. 15): dynamic projections are zero, so the coefficients equal the static part.
mHC's presets (D10) do the same for equal streams and a sublayer with a scale-invariant
norm (math.md 4.4); ``init_mhc_head`` starts DeepSeek-V4's learned reduce as half the sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import validation as v
from ._arrays import Array

GATE_INIT = 0.01
"""Initial value of the gate scalars: HC/FC ``s_alpha``, ``s_beta``; mHC ``gates`` (decision D3)."""


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


def init_mhc(
    n: int,
    d: int,
    layer_index: int,
    *,
    preset: str = "hc_like",
    dynamic: bool = True,
    dtype: Any = np.float64,
) -> dict[str, Array]:
    """mHC site ``layer_index`` (0-based, sublayers counted separately), preset of decision D10.

    The mHC paper publishes ``gates = 0.01`` (Table 5) but no init of ``phi`` and ``b``
    (math.md 4.4, A14). Presets, with ``b = [b_pre (n) | b_post (n) | b_res (n^2, row-major)]``:

    * ``hc_like`` (default): ``b_pre = e_(layer_index mod n)``, ``b_post = 0``, ``b_res = I_n``;
      so ``h_post = 2 sigmoid(0) = 1`` and ``h_res = sinkhorn(I)`` (diagonal ``e / (e + n - 1)``).
    * ``zero``: ``b = 0`` (``h_pre = 1/2``, ``h_post = 1``, ``h_res = J / n``); never breaks the
      symmetry between streams while ``phi = 0``.
    * ``lucidrains``: as ``hc_like`` with ``b_post = 1`` (``h_post = 2 sigmoid(1) = 1.462``), what
      lucidrains/hyper-connections does.

    With equal streams and a sublayer that starts with a scale-invariant norm, ``hc_like`` and
    ``zero`` make the site a Pre-Norm residual step (math.md 4.4). Dynamic adds ``phi = 0``
    (n*d, 2n+n^2) and ``gates = [0.01, 0.01, 0.01]`` (pre, post, res; D3); static is ``b`` alone.
    """
    v.check_count("n", n)
    v.check_count("d", d)
    v.check_count("layer_index", layer_index, minimum=0)
    v.check_preset(preset)
    v.check_flag("dynamic", dynamic)
    b_pre, b_post, b_res = np.zeros(n, dtype), np.zeros(n, dtype), np.zeros((n, n), dtype)
    if preset != "zero":
        b_pre[layer_index % n] = 1
        b_res = np.eye(n, dtype=dtype)
    if preset == "lucidrains":
        b_post[:] = 1
    b = np.concatenate([b_pre, b_post, b_res.reshape(-1)])
    if not dynamic:
        return {"b": b}
    return {"phi": np.zeros((n * d, b.size), dtype), "b": b, "gates": np.full(3, GATE_INIT, dtype)}


def init_mhc_head(n: int, d: int, *, dtype: Any = np.float64) -> dict[str, Array]:
    """DeepSeek-V4's learned reduce (``mhc_head``); the papers publish no init, this is ours:
    ``phi = 0`` (n*d, n), ``b = 0`` (n), ``gate = 0.01`` ().

    Why: with ``phi = 0`` the weights are ``w = sigmoid(b) + eps`` whatever the state, and
    ``b = 0`` gives every stream the same weight ``w = 1/2``, so the head starts as half the
    HC sum reduce (``x = reduce(H) / 2``; with equal streams ``x = (n/2) h``). The model's
    final norm is scale-invariant, so the network then equals the one with the sum reduce and,
    at init, the Pre-Norm network (math.md 4.4, A15). ``b = 0`` is also where the sigmoid is
    steepest (the head learns fastest) and it is defined for every n, where the mean
    (``w = 1/n``) would need ``b = -log(n - 1)``, infinite for n = 1. ``gate = 0.01`` is the
    mHC paper's gate init (Table 5, D3), so ``phi`` enters as gently as in every site.
    """
    v.check_count("n", n)
    v.check_count("d", d)
    return {"phi": np.zeros((n * d, n), dtype), "b": np.zeros(n, dtype), "gate": np.asarray(GATE_INIT, dtype)}
