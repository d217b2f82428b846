"""The sublayer ``T`` the suite puts inside every site and network, and its VJP.

``T`` is written with Python operators only (``@``, ``*``, ``+``, ``/``, ``** p``) on the
port's native arrays, so it runs on any framework, is differentiated by the port's own
autodiff, and never calls the port's HC/FC ops: a broken ``hc_width`` cannot hide inside the
sublayer, and a port with only a module-level ``site`` can be checked at all. The very same
code run on float64 NumPy arrays is the reference ``T``; its VJP is derived by hand below and
checked against finite differences in the project's tests.

Kinds (``Case.sublayer``):

    mlp       T(h) = phi(rmsnorm(h) * gamma @ W1) @ W2,   phi(z) = z / (1 + z*z) ** 0.5
              rmsnorm(h) = h / (mean(h*h) + 1e-2) ** 0.5, the mean taken as (h*h) @ u, u = 1/d
              (a Pre-Norm two-matrix MLP with a smooth bounded nonlinearity; the default)
    linear    T(h) = h @ W                (scale-equivariant: for extreme activation scales)
    zero      T(h) = h * 0                (the site is then its residual path alone)
    const     T(h) = h * 0 + c            (a fixed branch output, for the write properties)
    identity  T(h) = h * 1

Shapes: h (..., d) -> (..., d); ``W1`` (d, hidden), ``W2`` (hidden, d), ``W`` (d, d).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

RMS_EPS = 1e-2
"""Epsilon of the sublayer's own RMS norm: large enough that the port's autodiff of
``(ms + eps) ** -0.5``, which forms ``(ms + eps) ** -1.5``, stays within float16's range at small
activations (with 1e-6 it overflows float16 at activations of 1e-2 and gives NaN gradients)."""

HIDDEN = 4
"""Hidden width of the MLP sublayer."""

KINDS = ("mlp", "linear", "zero", "const", "identity")


def random_params(kind: str, d: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Float64 parameters of a sublayer of ``kind`` and width ``d`` (drawn from ``rng``)."""
    if kind == "mlp":
        return {
            "gamma": 1 + 0.1 * rng.standard_normal(d),
            "W1": rng.standard_normal((d, HIDDEN)) / np.sqrt(d),
            "W2": 0.5 * rng.standard_normal((HIDDEN, d)) / np.sqrt(HIDDEN),
        }
    if kind == "linear":
        return {"W": 0.5 * rng.standard_normal((d, d)) / np.sqrt(d)}
    if kind == "const":
        return {"c": rng.standard_normal(d)}
    if kind in ("zero", "identity"):
        return {}
    raise ValueError(f"sublayer: expected one of {KINDS}, got {kind!r}")


def derived(kind: str, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays the operator-only code needs besides ``params``: transposes for the VJP and
    ``u = 1/d`` (d, 1) for the mean (computed in float64, then converted like the rest)."""
    if kind == "mlp":
        d = params["gamma"].shape[0]
        return {"W1T": params["W1"].T.copy(), "W2T": params["W2"].T.copy(), "u": np.full((d, 1), 1.0 / d)}
    if kind == "linear":
        return {"WT": params["W"].T.copy()}
    return {}


class Sublayer:
    """``T`` and ``T_vjp`` of one kind over arrays ``arrays`` (native or float64 NumPy), built by
    :func:`build`. With ``to_numpy`` given, every input ``h`` is kept as NumPy in ``inputs`` (for
    the read properties; not under the port's autodiff, which may trace ``h``)."""

    def __init__(self, kind: str, arrays: Mapping[str, Any], to_numpy: Callable[[Any], np.ndarray] | None = None):
        self.kind, self.a = kind, dict(arrays)
        self.to_numpy = to_numpy
        self.inputs: list[np.ndarray] = []

    def __call__(self, h: Any) -> Any:
        if self.to_numpy is not None:
            self.inputs.append(np.asarray(self.to_numpy(h), dtype=np.float64))
        a = self.a
        if self.kind == "mlp":
            x_hat = h * _rsqrt((h * h) @ a["u"] + RMS_EPS)
            z = (x_hat * a["gamma"]) @ a["W1"]
            return (z / (1 + z * z) ** 0.5) @ a["W2"]
        if self.kind == "linear":
            return h @ a["W"]
        if self.kind == "zero":
            return h * 0
        if self.kind == "const":
            return h * 0 + a["c"]
        return h * 1

    def vjp(self, h: Any, g_y: Any) -> Any:
        """``g_h`` for output cotangent ``g_y`` (hand-derived; operators only)."""
        a = self.a
        if self.kind == "mlp":
            r = _rsqrt((h * h) @ a["u"] + RMS_EPS)
            x_hat = h * r
            z = (x_hat * a["gamma"]) @ a["W1"]
            g_z = (g_y @ a["W2T"]) / (1 + z * z) ** 1.5          # phi'(z) = (1 + z^2)^(-3/2)
            g_x_hat = (g_z @ a["W1T"]) * a["gamma"]
            return r * (g_x_hat - x_hat * ((g_x_hat * x_hat) @ a["u"]))   # RMSNorm VJP (math.md 5.1)
        if self.kind == "linear":
            return g_y @ a["WT"]
        if self.kind in ("zero", "const"):
            return g_y * 0
        return g_y * 1


def _rsqrt(x: Any) -> Any:
    return 1 / x ** 0.5


def build(kind: str, params: Mapping[str, np.ndarray], convert: Callable[[np.ndarray], Any],
          to_numpy: Callable[[Any], np.ndarray] | None = None) -> Sublayer:
    """A :class:`Sublayer` whose arrays are ``convert(x)`` of ``params`` and their derived arrays
    (``convert``: to native arrays of the test dtype, or the identity for the float64 reference)."""
    arrays = {key: convert(np.asarray(value)) for key, value in {**params, **derived(kind, params)}.items()}
    return Sublayer(kind, arrays, to_numpy)


def describe(kind: str) -> str:
    """One line for failure messages: what the sublayer computes."""
    return {
        "mlp": "T(h) = phi(rmsnorm(h) * gamma @ W1) @ W2, phi(z) = z/(1+z^2)^0.5 (Python operators only)",
        "linear": "T(h) = h @ W",
        "zero": "T(h) = 0",
        "const": "T(h) = c (a constant branch output)",
        "identity": "T(h) = h",
    }[kind]
