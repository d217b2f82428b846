"""The families the suite knows (HC, FC, mHC), as one table, and the composition of their sites.

A :class:`Family` names its ops, its ends and its initialiser; :func:`site_forward` /
:func:`site_backward` and :func:`network_forward` / :func:`network_backward` compose them over
a *namespace* (an object with ``call(op, *args, **options)`` and ``vjp(op, args, cotangents,
**options)``):

    ReferenceOps   the float64 reference (``hcref.<op>`` and ``hcref.<op>_vjp``), at the norm
                   epsilons the port declares (decision D1's by default)
    PortOps        the port's ops, each VJP through the port's ``vjp`` of that op alone

so the reference site and network (and, for a port whose ``vjp`` only differentiates its own
ops, the chained composite VJP) are the same code. The composition equals :func:`hcref.site`,
:func:`hcref.site_vjp` and :func:`hcref.network.stack` / ``stack_vjp`` (checked by the project's
tests). A family is one :class:`Family` entry with its ``site_forward`` / ``site_backward``
steps, its initialiser and its properties (:mod:`hcref_conformance.properties`); mHC's site is
``h_pre, h_post, h_res = mhc_coeffs(H, params)``, ``h0 = mhc_pre(H, h_pre)``, ``H_out =
mhc_post(T(h0), H, h_post, h_res)`` (:func:`mhc_forward` / :func:`mhc_backward`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import hcref
from hcref.checks import op_function, random_params
from hcref.norms import LAYERNORM_EPS, RMSNORM_EPS, layernorm, layernorm_vjp, rmsnorm, rmsnorm_vjp
from hcref.optable import ALL_OPS
from hcref.validation import norm_keys

D1_EPS = {"layernorm": LAYERNORM_EPS, "rmsnorm": RMSNORM_EPS}
"""The norm epsilons of decision D1."""


Tape = tuple[Any, ...]


def width_depth_forward(ns: Any, family: Family, H: Any, params: Any, T: Callable[[Any], Any],
                        options: Mapping[str, Any]) -> tuple[Any, Tape]:
    """``H_out = depth(T(h0), H_res, beta)``, ``h0, H_res = width(H, alpha)``, ``alpha, beta =
    coeffs(H, params)``; returns ``H_out`` and what :func:`site_backward` needs."""
    alpha, beta = ns.call(family.coeffs, H, params, **options)
    h0, H_res = ns.call(family.width, H, alpha)
    y = T(h0)
    return ns.call(family.depth, y, H_res, beta), (H, params, alpha, beta, h0, H_res, y)


def width_depth_backward(ns: Any, family: Family, T_vjp: Callable[[Any, Any], Any], tape: Tape, g_out: Any,
                         options: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(g_H, g_params)`` of :func:`width_depth_forward` by the chain rule over the ops' VJPs."""
    H, params, alpha, beta, h0, H_res, y = tape
    g_y, g_H_res, g_beta = ns.vjp(family.depth, (y, H_res, beta), (g_out,))
    g_H_width, g_alpha = ns.vjp(family.width, (H, alpha), (T_vjp(h0, g_y), g_H_res))
    g_H_coeffs, g_params = ns.vjp(family.coeffs, (H, params), (g_alpha, g_beta), **options)
    return g_H_width + g_H_coeffs, g_params


def mhc_forward(ns: Any, family: Family, H: Any, params: Any, T: Callable[[Any], Any],
                options: Mapping[str, Any]) -> tuple[Any, Tape]:
    """``H_out = mhc_post(T(h0), H, h_post, h_res)``, ``h0 = mhc_pre(H, h_pre)``, ``h_pre, h_post,
    h_res = mhc_coeffs(H, params)`` (mHC paper Eq. 3); returns ``H_out`` and the tape."""
    h_pre, h_post, h_res = ns.call(family.coeffs, H, params, **options)
    h0 = ns.call(family.width, H, h_pre)
    y = T(h0)
    return ns.call(family.depth, y, H, h_post, h_res), (H, params, h_pre, h_post, h_res, h0, y)


def mhc_backward(ns: Any, family: Family, T_vjp: Callable[[Any, Any], Any], tape: Tape, g_out: Any,
                 options: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(g_H, g_params)`` of :func:`mhc_forward` by the chain rule over the ops' VJPs."""
    H, params, h_pre, h_post, h_res, h0, y = tape
    g_y, g_H_post, g_h_post, g_h_res = ns.vjp(family.depth, (y, H, h_post, h_res), (g_out,))
    g_H_pre, g_h_pre = ns.vjp(family.width, (H, h_pre), (T_vjp(h0, g_y),))
    g_H_coeffs, g_params = ns.vjp(family.coeffs, (H, params), (g_h_pre, g_h_post, g_h_res), **options)
    return g_H_post + g_H_pre + g_H_coeffs, g_params


def site_forward(ns: Any, family: Family, H: Any, params: Any, T: Callable[[Any], Any],
                 options: Mapping[str, Any]) -> tuple[Any, Tape]:
    """One site of ``family`` over namespace ``ns``: ``(H_out, tape)``."""
    return family.forward(ns, family, H, params, T, options)


def site_backward(ns: Any, family: Family, T_vjp: Callable[[Any, Any], Any], tape: Tape, g_out: Any,
                  options: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(g_H, g_params)`` of :func:`site_forward`."""
    return family.backward(ns, family, T_vjp, tape, g_out, options)


@dataclass(frozen=True)
class Family:
    """One family: its ops, ends, row/width names, initialiser and the composition of its site
    (``forward(ns, family, H, params, T, options) -> (H_out, tape)`` and ``backward(ns, family,
    T_vjp, tape, g_out, options) -> (g_H, g_params)``; HC and FC share :func:`width_depth_forward`
    / :func:`width_depth_backward`)."""

    name: str
    coeffs: str
    width: str
    depth: str
    begin: str
    end: str
    rows: str
    cols: str
    forward: Callable[..., tuple[Any, Tape]] = field(default=None, compare=False)  # type: ignore[assignment]
    backward: Callable[..., tuple[Any, Any]] = field(default=None, compare=False)  # type: ignore[assignment]

    @property
    def ops(self) -> tuple[str, ...]:
        return (self.coeffs, self.width, self.depth)

    @property
    def streams(self) -> bool:
        """Whether the rows are streams that each carry the residual (HC, mHC: ``reduce`` sums
        n copies at init) rather than fractions of it (FC)."""
        return self.name in ("hc", "mhc")

    def model_width(self, k: int, w: int) -> int:
        """``d`` of the layer input for ``k`` rows of width ``w`` (HC, mHC: w, FC: k * w)."""
        return w if self.streams else k * w

    def init(self, k: int, w: int, layer_index: int, *, dynamic: bool, norm: str) -> dict[str, np.ndarray]:
        """The reference's initial parameters (decision D2; mHC: D10's ``hc_like`` preset)."""
        if self.name == "hc":
            return hcref.init_hc(k, w, layer_index, dynamic=dynamic, norm=norm)
        if self.name == "mhc":
            return hcref.init_mhc(k, w, layer_index, dynamic=dynamic)
        return hcref.init_fc(k, k * w, dynamic=dynamic, norm=norm)

    def random_params(self, k: int, w: int, rng: np.random.Generator, *, dynamic: bool,
                      norm: str) -> dict[str, np.ndarray]:
        """Random (not initial) parameters of a site (:func:`hcref.checks.random_params`; ``norm``
        is ignored for mHC, which has no norm option)."""
        return random_params(self.name, k, w, rng, dynamic=dynamic, norm=norm)


FAMILIES: dict[str, Family] = {
    "hc": Family("hc", "hc_coeffs", "hc_width", "hc_depth", "expand", "reduce", "n", "d",
                 width_depth_forward, width_depth_backward),
    "fc": Family("fc", "fc_coeffs", "fc_width", "fc_depth", "frac_split", "frac_merge", "m", "e",
                 width_depth_forward, width_depth_backward),
    "mhc": Family("mhc", "mhc_coeffs", "mhc_pre", "mhc_post", "expand", "reduce", "n", "d",
                  mhc_forward, mhc_backward),
}
"""Every family the suite checks (for mHC the "width" step is ``mhc_pre`` and the "depth" step
``mhc_post``; its ends are HC's)."""


def family_of(name: str) -> Family:
    """The family of an op or composite name (``hc_width``, ``fc_site``)."""
    return FAMILIES[name.split("_", 1)[0]]


# --- namespaces -------------------------------------------------------------------------------


class ReferenceOps:
    """The float64 reference as a namespace; ``eps`` overrides D1's norm epsilons (a port's
    declared ``norm_eps``): the coefficients are then computed on ``norm(H)`` at that epsilon
    with ``norm="none"``, which is the same function."""

    def __init__(self, eps: Mapping[str, float] | None = None) -> None:
        self.eps = {key: float(value) for key, value in (eps or {}).items() if value != D1_EPS.get(key)}

    def _custom(self, op: str, options: Mapping[str, Any]) -> bool:
        return (op in ("hc_coeffs", "fc_coeffs") and options.get("norm", "layernorm") in self.eps
                and options.get("use_norm", True))

    def call(self, op: str, *args: Any, **options: Any) -> Any:
        if self._custom(op, options) and _is_dynamic(args[1]):
            H, params = args
            H_bar = self._norm(options["norm"], H, params)
            return op_function(op)(H_bar, _without_norm(params, options["norm"]), **{**options, "norm": "none"})
        return op_function(op)(*args, **options)

    def vjp(self, op: str, args: Sequence[Any], cotangents: Sequence[Any], **options: Any) -> tuple[Any, ...]:
        if self._custom(op, options) and _is_dynamic(args[1]):
            H, params = args
            norm = options["norm"]
            H_bar = self._norm(norm, H, params)
            g_H_bar, g_params = op_function(op + "_vjp")(H_bar, _without_norm(params, norm), *cotangents,
                                                          **{**options, "norm": "none"})
            eps = self.eps[norm]
            if norm == "layernorm":
                g_H, g_w, g_b = layernorm_vjp(H, params["norm_weight"], params["norm_bias"], g_H_bar, eps=eps)
                g_params = {**g_params, "norm_weight": g_w, "norm_bias": g_b}
            else:
                g_H, g_w = rmsnorm_vjp(H, params["norm_weight"], g_H_bar, eps=eps)
                g_params = {**g_params, "norm_weight": g_w}
            return g_H, {key: g_params[key] for key in params}
        return tuple(op_function(op + "_vjp")(*args, *cotangents, **options))

    def _norm(self, norm: str, H: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
        if norm == "layernorm":
            return layernorm(H, params["norm_weight"], params["norm_bias"], eps=self.eps[norm])
        return rmsnorm(H, params["norm_weight"], eps=self.eps[norm])


def _is_dynamic(params: Mapping[str, Any]) -> bool:
    return "W_alpha" in params


def _without_norm(params: Mapping[str, Any], norm: str) -> dict[str, Any]:
    return {key: value for key, value in params.items() if key not in norm_keys(norm)}


class PortOps:
    """A port's ops as a namespace; each op's VJP is the port's ``vjp`` of that op alone."""

    def __init__(self, port: Any) -> None:
        self.port = port

    def call(self, op: str, *args: Any, **options: Any) -> Any:
        return getattr(self.port, op)(*args, **options)

    def vjp(self, op: str, args: Sequence[Any], cotangents: Sequence[Any], **options: Any) -> tuple[Any, ...]:
        spec = ALL_OPS[op]
        positions = [spec.inputs.index(name) for name in spec.differentiable]
        function = getattr(self.port, op)

        def fn(*primals: Any) -> Any:
            full = list(args)
            for i, p in zip(positions, primals, strict=True):
                full[i] = p
            return function(*full, **options)

        return tuple(self.port.vjp(fn, [args[i] for i in positions], tuple(cotangents)))


def network_forward(ns: Any, family: Family, k: int, x: Any, params: Sequence[Any],
                    sublayers: Sequence[Any], options: Mapping[str, Any]) -> tuple[Any, Tape]:
    """``end(site_L(... site_1(begin(x, k))))`` (HC: expand/reduce, FC: frac_split/frac_merge)."""
    H = ns.call(family.begin, x, k)
    tapes = []
    for p, T in zip(params, sublayers, strict=True):
        H, tape = site_forward(ns, family, H, p, T, options)
        tapes.append(tape)
    return ns.call(family.end, H), (x, k, H, tapes)


def network_backward(ns: Any, family: Family, sublayers: Sequence[Any], tape: Tape, g_out: Any,
                     options: Mapping[str, Any]) -> list[Any]:
    """``[g_x, g_params of each site]`` of :func:`network_forward`."""
    x, k, H_last, tapes = tape
    (g_H,) = ns.vjp(family.end, (H_last,), (g_out,))
    g_params: list[Any] = []
    for site_tape, T in reversed(list(zip(tapes, sublayers, strict=True))):
        g_H, g_p = site_backward(ns, family, T.vjp, site_tape, g_H, options)
        g_params.insert(0, g_p)
    (g_x,) = ns.vjp(family.begin, (x, k), (g_H,))
    return [g_x, *g_params]


def residual_stack(x: np.ndarray, sublayers: Sequence[Callable[[Any], Any]]) -> np.ndarray:
    """The Pre-Norm residual stack ``h <- h + T(h)`` (float64), what a network equals at init."""
    for T in sublayers:
        x = x + T(x)
    return x
