"""Input validation shared by the reference and every backend (HC, FC and mHC).

Checks here look only at shapes, dtype names and whether a dtype is floating, never at
values, so a backend in any framework calls the same functions (with its own
:class:`ArrayMeta` converter) and raises word for word the same errors as the reference.

Every error names the argument, what was received and what was expected. Shapes never
broadcast: leading axes of every array of one call must be equal.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

NORMS = ("layernorm", "rmsnorm", "none")
"""Values of the ``norm`` option (decision D1)."""

STATIC_KEYS = {"hc": ("A_m", "A_r", "B"), "fc": ("Y", "A", "B")}
DYNAMIC_KEYS = ("W_alpha", "W_beta", "s_alpha", "s_beta")


class ArrayMeta(NamedTuple):
    """What validation needs to know of an array: its shape, dtype name, floating-ness."""

    shape: tuple[int, ...]
    dtype: str
    floating: bool


def norm_keys(norm: str) -> tuple[str, ...]:
    """Parameter keys of the shared dynamic-coefficient norm for option ``norm``."""
    return {"layernorm": ("norm_weight", "norm_bias"), "rmsnorm": ("norm_weight",), "none": ()}[norm]


def param_keys(family: str, *, dynamic: bool, norm: str) -> tuple[str, ...]:
    """The exact key set of an HC (``family='hc'``) or FC (``'fc'``) parameter mapping."""
    keys: tuple[str, ...] = STATIC_KEYS[family]
    if dynamic:
        keys = keys + DYNAMIC_KEYS + norm_keys(norm)
    return keys


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_floating(name: str, m: ArrayMeta) -> None:
    if not m.floating:
        raise TypeError(f"{name}: expected a floating-point array, got dtype {m.dtype}")


def check_array(name: str, m: ArrayMeta, min_rank: int, layout: str) -> None:
    """Floating dtype and at least ``min_rank`` axes; ``layout`` is the expected shape in words."""
    check_floating(name, m)
    if len(m.shape) < min_rank:
        raise ValueError(
            f"{name}: expected shape {layout} (at least {min_rank} axes), got shape {_fmt(m.shape)}"
        )


def check_shape(name: str, m: ArrayMeta, expected: tuple[int, ...], layout: str) -> None:
    """Floating dtype and exactly the shape ``expected`` (no broadcasting)."""
    check_floating(name, m)
    if tuple(m.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {_fmt(expected)} {layout}, got shape {_fmt(m.shape)}")


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """An ``int`` (not ``bool``) of at least ``minimum``, such as ``n``, ``m`` or ``iters``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")


def check_options(norm: Any, use_tanh: Any, use_norm: Any, use_scale: Any) -> None:
    """The options of ``hc_coeffs`` / ``fc_coeffs`` (decisions D1 and D4)."""
    if not isinstance(norm, str) or norm not in NORMS:
        raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
    check_flag("use_tanh", use_tanh)
    check_flag("use_norm", use_norm)
    check_flag("use_scale", use_scale)


def check_cotangent(name: str, m: ArrayMeta, expected: tuple[int, ...]) -> None:
    """A cotangent must have exactly the shape of the output it belongs to."""
    check_shape(name, m, expected, "(the shape of the matching output)")


# --- ends ---------------------------------------------------------------------------------


def check_expand(x: ArrayMeta, n: Any) -> None:
    check_count("n", n)
    check_array("x", x, 1, "(..., d)")


def check_reduce(H: ArrayMeta) -> None:
    check_array("H", H, 2, "(..., n, d)")


def check_frac_split(x: ArrayMeta, m: Any) -> None:
    check_count("m", m)
    check_array("x", x, 1, "(..., d)")
    d = x.shape[-1]
    if d % m:
        raise ValueError(f"x: last axis d={d} is not divisible by m={m} (expected d = m * e)")


def check_frac_merge(H: ArrayMeta) -> None:
    check_array("H", H, 2, "(..., m, e)")


# --- width and depth ----------------------------------------------------------------------


def check_width(family: str, H: ArrayMeta, alpha: ArrayMeta) -> tuple[int, int]:
    """``H`` (..., k, w) and ``alpha`` (..., k, k+1) for HC or (..., k, 2k) for FC; returns (k, w)."""
    names = ("n", "d") if family == "hc" else ("m", "e")
    cols = f"{names[0]}+1" if family == "hc" else f"2{names[0]}"
    check_array("H", H, 2, f"(..., {names[0]}, {names[1]})")
    k, w = H.shape[-2], H.shape[-1]
    ncols = k + 1 if family == "hc" else 2 * k
    check_shape("alpha", alpha, H.shape[:-2] + (k, ncols), f"(..., {names[0]}, {cols}) from H")
    return k, w


def check_depth(family: str, y: ArrayMeta, H_res: ArrayMeta, beta: ArrayMeta) -> tuple[int, int]:
    """``H_res`` (..., k, w), ``y`` (..., d) and ``beta`` (..., k); returns (k, w)."""
    names = ("n", "d") if family == "hc" else ("m", "e")
    check_array("H_res", H_res, 2, f"(..., {names[0]}, {names[1]})")
    lead, k, w = H_res.shape[:-2], H_res.shape[-2], H_res.shape[-1]
    d = w if family == "hc" else k * w
    layout = "(..., d) from H_res" if family == "hc" else "(..., d = m*e) from H_res"
    check_shape("y", y, lead + (d,), layout)
    check_shape("beta", beta, lead + (k,), f"(..., {names[0]}) from H_res")
    return k, w


# --- coefficients -------------------------------------------------------------------------


def expected_param_shapes(family: str, k: int, w: int, *, dynamic: bool, norm: str) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter of one HC site (k = n, w = d) or FC site (k = m, w = e)."""
    if family == "hc":
        shapes: dict[str, tuple[int, ...]] = {"A_m": (k,), "A_r": (k, k), "B": (k,)}
        alpha_cols = k + 1
    else:
        shapes = {"Y": (k, k), "A": (k, k), "B": (k,)}
        alpha_cols = 2 * k
    if dynamic:
        shapes.update({"W_alpha": (w, alpha_cols), "W_beta": (w,), "s_alpha": (), "s_beta": ()})
        shapes.update({key: (w,) for key in norm_keys(norm)})
    return shapes


def is_dynamic(params: Mapping[str, Any]) -> bool:
    """A parameter mapping is dynamic when it holds any dynamic key (then it must hold all)."""
    return any(key in params for key in DYNAMIC_KEYS)


def check_params(
    family: str, params: Any, metas: Mapping[str, ArrayMeta], k: int, w: int, norm: str
) -> bool:
    """Exact keys and shapes of ``params`` for a site with k streams/fractions of width w.

    ``metas`` maps each key of ``params`` to its :class:`ArrayMeta`. Returns whether the
    site is dynamic.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping of parameter name to array, got {type(params).__name__}")
    dynamic = is_dynamic(params)
    expected = expected_param_shapes(family, k, w, dynamic=dynamic, norm=norm)
    missing = [key for key in expected if key not in params]
    extra = sorted(key for key in params if key not in expected)
    if missing or extra:
        kind = f"dynamic {family.upper()} with norm={norm!r}" if dynamic else f"static {family.upper()}"
        raise ValueError(
            f"params: expected keys {sorted(expected)} for {kind}; missing {missing}, extra {extra}"
        )
    where = "from H" if family == "hc" else "from H (e = d/m)"
    for key, shape in expected.items():
        check_shape(f"params[{key!r}]", metas[key], shape, where)
    return dynamic


def check_coeffs(
    family: str,
    H: ArrayMeta,
    params: Any,
    metas: Mapping[str, ArrayMeta],
    norm: Any,
    use_tanh: Any,
    use_norm: Any,
    use_scale: Any,
) -> tuple[int, int, bool]:
    """Everything ``hc_coeffs`` / ``fc_coeffs`` accept; returns (k, w, dynamic)."""
    check_options(norm, use_tanh, use_norm, use_scale)
    layout = "(..., n, d)" if family == "hc" else "(..., m, e)"
    check_array("H", H, 2, layout)
    k, w = H.shape[-2], H.shape[-1]
    dynamic = check_params(family, params, metas, k, w, norm)
    return k, w, dynamic


# --- mHC ----------------------------------------------------------------------------------

MHC_PRESETS = ("hc_like", "zero", "lucidrains")
"""Values of the ``preset`` option of ``init_mhc`` (decision D10)."""

MHC_DYNAMIC_KEYS = ("phi", "gates")
"""The keys that make an mHC parameter mapping dynamic (then it holds ``phi``, ``b``, ``gates``)."""


def check_iters(iters: Any) -> int:
    """Sinkhorn iterations: an ``int`` (not ``bool``) >= 1."""
    return check_count("iters", iters)


def check_eps(eps: Any) -> float:
    """DeepSeek-V4's ``eps``: a finite real number >= 0 (0 = the paper)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps: expected a finite real number >= 0, got {type(eps).__name__} {eps!r}")
    value = float(eps)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"eps: expected a finite real number >= 0, got {eps!r}")
    return value


def check_sinkhorn(Z: ArrayMeta, iters: Any, eps: Any) -> int:
    """``Z`` (..., n, n) square on the last two axes, ``iters`` >= 1, ``eps`` >= 0; returns n."""
    check_iters(iters)
    check_eps(eps)
    check_array("Z", Z, 2, "(..., n, n)")
    if Z.shape[-1] != Z.shape[-2]:
        raise ValueError(
            f"Z: expected shape (..., n, n) (square on the last two axes), got shape {_fmt(Z.shape)}"
        )
    return Z.shape[-1]


def mhc_param_shapes(n: int, d: int, *, dynamic: bool) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter of one mHC site (decision D9): ``b`` (2n+n^2); dynamic adds
    ``phi`` (n*d, 2n+n^2) and ``gates`` (3)."""
    cols = 2 * n + n * n
    if dynamic:
        return {"phi": (n * d, cols), "b": (cols,), "gates": (3,)}
    return {"b": (cols,)}


def mhc_head_param_shapes(n: int, d: int) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter of the mHC head (DeepSeek-V4's learned reduce)."""
    return {"phi": (n * d, n), "b": (n,), "gate": ()}


_MHC_LAYOUTS = {"phi": "(n*d, 2n+n^2) from H", "b": "(2n+n^2) from H", "gates": "(pre, post, res)"}
_HEAD_LAYOUTS = {"phi": "(n*d, n) from H", "b": "(n) from H", "gate": "(a scalar)"}


def _check_keys_and_shapes(
    params: Any,
    metas: Mapping[str, ArrayMeta],
    expected: Mapping[str, tuple[int, ...]],
    kind: str,
    layouts: Mapping[str, str],
) -> None:
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping of parameter name to array, got {type(params).__name__}")
    missing = [key for key in expected if key not in params]
    extra = sorted(key for key in params if key not in expected)
    if missing or extra:
        raise ValueError(f"params: expected keys {sorted(expected)} for {kind}; missing {missing}, extra {extra}")
    for key, shape in expected.items():
        check_shape(f"params[{key!r}]", metas[key], shape, layouts[key])


def check_mhc_params(params: Any, metas: Mapping[str, ArrayMeta], n: int, d: int) -> bool:
    """Exact keys and shapes of an mHC site's ``params``: static = exactly ``{b}``, dynamic =
    exactly ``{phi, b, gates}``; returns whether the site is dynamic."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping of parameter name to array, got {type(params).__name__}")
    dynamic = any(key in params for key in MHC_DYNAMIC_KEYS)
    expected = mhc_param_shapes(n, d, dynamic=dynamic)
    _check_keys_and_shapes(params, metas, expected, "dynamic mHC" if dynamic else "static mHC", _MHC_LAYOUTS)
    return dynamic


def check_mhc_coeffs(
    H: ArrayMeta, params: Any, metas: Mapping[str, ArrayMeta], iters: Any, eps: Any
) -> tuple[int, int, bool]:
    """Everything ``mhc_coeffs`` accepts; returns (n, d, dynamic)."""
    check_iters(iters)
    check_eps(eps)
    check_array("H", H, 2, "(..., n, d)")
    n, d = H.shape[-2], H.shape[-1]
    return n, d, check_mhc_params(params, metas, n, d)


def check_mhc_head(H: ArrayMeta, params: Any, metas: Mapping[str, ArrayMeta], eps: Any) -> tuple[int, int]:
    """Everything ``mhc_head`` accepts: params exactly ``{phi, b, gate}``; returns (n, d)."""
    check_eps(eps)
    check_array("H", H, 2, "(..., n, d)")
    n, d = H.shape[-2], H.shape[-1]
    _check_keys_and_shapes(params, metas, mhc_head_param_shapes(n, d), "the mHC head", _HEAD_LAYOUTS)
    return n, d


def check_mhc_pre(H: ArrayMeta, h_pre: ArrayMeta) -> tuple[int, int]:
    """``H`` (..., n, d) and ``h_pre`` (..., n); returns (n, d)."""
    check_array("H", H, 2, "(..., n, d)")
    n, d = H.shape[-2], H.shape[-1]
    check_shape("h_pre", h_pre, H.shape[:-2] + (n,), "(..., n) from H")
    return n, d


def check_mhc_post(y: ArrayMeta, H: ArrayMeta, h_post: ArrayMeta, h_res: ArrayMeta) -> tuple[int, int]:
    """``H`` (..., n, d), ``y`` (..., d), ``h_post`` (..., n), ``h_res`` (..., n, n); returns (n, d)."""
    check_array("H", H, 2, "(..., n, d)")
    lead, n, d = H.shape[:-2], H.shape[-2], H.shape[-1]
    check_shape("y", y, lead + (d,), "(..., d) from H")
    check_shape("h_post", h_post, lead + (n,), "(..., n) from H")
    check_shape("h_res", h_res, lead + (n, n), "(..., n, n) from H")
    return n, d


def check_preset(preset: Any) -> str:
    """The ``preset`` of ``init_mhc`` (decision D10)."""
    if not isinstance(preset, str) or preset not in MHC_PRESETS:
        raise ValueError(f"preset: expected one of {MHC_PRESETS}, got {preset!r}")
    return preset
