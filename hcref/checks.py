"""Self-checks of the reference: random inputs for every op and a directional
finite-difference test of every hand-derived VJP (float64).

The check follows the inner-product identity ``<u, J v> = <J^T u, v>`` (JAX ``check_grads``):
for a random input direction ``v`` and random output cotangent ``u``,

    lhs = sum <u, (f(x + eps v) - f(x - eps v)) / (2 eps)>      (central difference)
    rhs = sum <vjp(u), v>                                         (hand-derived VJP)

and the error is normalised by the Cauchy-Schwarz bound ``|u| |J v| + |vjp(u)| |v|`` so
it is meaningful when ``lhs`` is near zero. Truncation error is O(eps^2), rounding
O(1e-16 / eps); with eps = 1e-6 both sit near 1e-10.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import ends, frac, hyper, mhc, sinkhorn_knopp
from .init import init_fc, init_hc
from .optable import ALL_OPS

_FUNCTIONS: dict[str, Any] = {
    name: getattr(module, name)
    for module in (ends, hyper, frac, sinkhorn_knopp, mhc)
    for name in dir(module)
    if name.split("_vjp")[0] in ALL_OPS
}


def op_function(name: str) -> Callable[..., Any]:
    """The reference function of op ``name`` (or of ``<op>_vjp``)."""
    return _FUNCTIONS[name]


def random_params(
    family: str, k: int, w: int, rng: np.random.Generator, *, dynamic: bool = True, norm: str = "layernorm"
) -> dict[str, np.ndarray]:
    """Random (not init) parameters with the exact keys and shapes of an HC, FC or mHC site
    (``family`` 'hc', 'fc', 'mhc') or of the mHC head ('mhc_head'); ``norm`` only for HC/FC.

    mHC: ``phi ~ N(0, 1/(n d))``, so that ``z = rms(vec(H)) phi`` is about N(0, 1), gates and
    ``b`` ~ N(0, 1): logits of order 1, where every term of the gradient matters.
    """
    normal = rng.standard_normal
    if family in ("mhc", "mhc_head"):
        cols = 2 * k + k * k if family == "mhc" else k
        drawn = {"phi": normal((k * w, cols)) / np.sqrt(k * w), "b": normal(cols)}
        if family == "mhc_head":
            return {**drawn, "gate": np.asarray(normal())}
        return {**drawn, "gates": normal(3)} if dynamic else {"b": drawn["b"]}
    if family == "hc":
        base = init_hc(k, w, 0, dynamic=dynamic, norm=norm)
    else:
        base = init_fc(k, k * w, dynamic=dynamic, norm=norm)
    out: dict[str, np.ndarray] = {}
    for key, value in base.items():
        scale = 1 / np.sqrt(w) if key.startswith("W_") else 0.5
        out[key] = value + scale * rng.standard_normal(value.shape)
    return out


def random_inputs(
    name: str, rng: np.random.Generator, lead: tuple[int, ...], k: int, w: int, **param_kw: Any
) -> tuple[Any, ...]:
    """Random positional inputs of op ``name`` with leading axes ``lead``.

    ``k`` rows (HC, mHC: n streams, FC: m fractions) of width ``w`` (HC, mHC: d, FC: e); for
    the ends, ``k`` is n or m and ``w`` the width of one row. ``param_kw`` goes to
    :func:`random_params`. mHC coefficients are random, not made by ``mhc_coeffs`` (h_pre,
    h_post ~ N(0, 1), h_res ~ N(0, 1/n)); Sinkhorn logits ~ N(0, 1).
    """
    normal = rng.standard_normal
    H = normal(lead + (k, w))
    if name == "sinkhorn":
        return (normal(lead + (k, k)),)
    if name in ("mhc_coeffs", "mhc_head"):
        return (H, random_params(name.removesuffix("_coeffs"), k, w, rng, **param_kw))
    if name == "mhc_pre":
        return (H, normal(lead + (k,)))
    if name == "mhc_post":
        return (normal(lead + (w,)), H, normal(lead + (k,)), normal(lead + (k, k)) / np.sqrt(k))
    if name in ("expand", "frac_split"):
        return (normal(lead + ((w,) if name == "expand" else (k * w,))), k)
    if name in ("reduce", "frac_merge"):
        return (H,)
    family = name[:2]
    if name.endswith("_coeffs"):
        return (H, random_params(family, k, w, rng, **param_kw))
    cols = k + 1 if family == "hc" else 2 * k
    if name.endswith("_width"):
        return (H, normal(lead + (k, cols)))
    d = w if family == "hc" else k * w
    return (normal(lead + (d,)), H, normal(lead + (k,)))


def _tree_map(fn: Callable[..., Any], *trees: Any) -> Any:
    if isinstance(trees[0], Mapping):
        return {key: fn(*(t[key] for t in trees)) for key in trees[0]}
    return fn(*trees)


def _dot(a: Any, b: Any) -> float:
    if isinstance(a, Mapping):
        return sum(float(np.sum(a[key] * b[key])) for key in a)
    return float(np.sum(a * b))


def _norm(a: Any) -> float:
    return float(np.sqrt(_dot(a, a)))


@dataclass(frozen=True)
class DirectionalCheck:
    """Result of one directional check: ``lhs`` (finite differences), ``rhs`` (VJP), ``error``."""

    lhs: float
    rhs: float
    error: float


def directional_check(
    fn: Callable[..., Any],
    fn_vjp: Callable[..., Sequence[Any]],
    primals: Sequence[Any],
    differentiable: Sequence[int],
    rng: np.random.Generator,
    *,
    eps: float = 1e-6,
) -> DirectionalCheck:
    """Compare ``fn_vjp(*primals, *cotangents)`` with central differences of ``fn``.

    ``fn`` returns one array or a tuple; ``fn_vjp`` returns one cotangent per index in
    ``differentiable`` (positions in ``primals``; a mapping primal gets a mapping).
    """
    def outputs(args: Sequence[Any]) -> tuple[Any, ...]:
        out = fn(*args)
        return out if isinstance(out, tuple) else (out,)

    directions = {i: _tree_map(lambda p: rng.standard_normal(np.shape(p)), primals[i]) for i in differentiable}

    def shifted(sign: float) -> list[Any]:
        args = list(primals)
        for i, v in directions.items():
            args[i] = _tree_map(lambda p, dv: np.asarray(p + sign * eps * dv), primals[i], v)
        return args

    base = outputs(primals)
    cotangents = [rng.standard_normal(np.shape(o)) for o in base]
    jv = [(a - b) / (2 * eps) for a, b in zip(outputs(shifted(1.0)), outputs(shifted(-1.0)), strict=True)]
    grads = fn_vjp(*primals, *cotangents)
    lhs = sum(_dot(u, j) for u, j in zip(cotangents, jv, strict=True))
    rhs = sum(_dot(g, directions[i]) for g, i in zip(grads, differentiable, strict=True))
    bound = np.sqrt(sum(_norm(u) ** 2 for u in cotangents)) * np.sqrt(sum(_norm(j) ** 2 for j in jv))
    bound += np.sqrt(sum(_norm(g) ** 2 for g in grads)) * np.sqrt(sum(_norm(v) ** 2 for v in directions.values()))
    return DirectionalCheck(lhs, rhs, abs(lhs - rhs) / max(float(bound), 1e-300))


def check_op(name: str, primals: Sequence[Any], rng: np.random.Generator, **options: Any) -> DirectionalCheck:
    """:func:`directional_check` of the reference op ``name`` with its ``<name>_vjp``."""
    spec = ALL_OPS[name]
    differentiable = [spec.inputs.index(arg) for arg in spec.differentiable]
    return directional_check(
        lambda *p: op_function(name)(*p, **options),
        lambda *a: op_function(spec.vjp_name)(*a, **options),
        primals,
        differentiable,
        rng,
    )
