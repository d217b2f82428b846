"""Deliberately broken backends: each is the NumPy reference backend with one mistake a real
port makes. The conformance suite must fail on every one, naming the broken op
(``tests/test_conformance_mutants.py``).

Forward mutants override one op and record it on the NumPy backend's tape, so their VJP is
the reference's (of the correct function). VJP mutants swap one ``hcref.<op>_vjp`` for a
broken one while their ``vjp`` runs.

Load one with ``--backend mutants:NAME`` and ``tests`` on ``PYTHONPATH``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
from hcref_numpy import NumpyBackend, _Record

import hcref
from hcref.optable import OPS

Patch = Callable[[Callable[..., Any]], Callable[..., Any]]
"""Turns a reference VJP into a broken one."""


class Mutant(NumpyBackend):
    """A NumPy backend with one mistake; ``broken_op`` names the op the suite must blame."""

    broken_op = ""
    description = ""
    vjp_patches: ClassVar[dict[str, Patch]] = {}

    def _emit(self, name: str, out: Any, *args: Any, **kwargs: Any) -> Any:
        if self._tape is not None:
            self._tape.append(_Record(OPS[name], args, kwargs, out if isinstance(out, tuple) else (out,)))
        return out

    def vjp(self, fn: Callable[..., Any], primals: Any, cotangents: Any) -> tuple[Any, ...]:
        saved = {name: getattr(hcref, name) for name in self.vjp_patches}
        try:
            for name, patch in self.vjp_patches.items():
                setattr(hcref, name, patch(saved[name]))
            return super().vjp(fn, primals, cotangents)
        finally:
            for name, function in saved.items():
                setattr(hcref, name, function)


def _coeffs_with_norm(H: np.ndarray, params: Mapping[str, np.ndarray], static_alpha: np.ndarray,
                      norm: Callable[[np.ndarray], np.ndarray], options: Mapping[str, Any]) -> tuple[Any, Any]:
    """Dynamic coefficients with a custom (broken) norm; the rest as the reference."""
    H_bar = norm(H) if options.get("use_norm", True) else H
    u_a, u_b = H_bar @ params["W_alpha"], H_bar @ params["W_beta"]
    if options.get("use_tanh", True):
        u_a, u_b = np.tanh(u_a), np.tanh(u_b)
    if options.get("use_scale", True):
        u_a, u_b = params["s_alpha"] * u_a, params["s_beta"] * u_b
    return u_a + static_alpha, u_b + params["B"]


class TransposedMix(Mutant):
    broken_op, description = "hc_width", "stream mixing uses A_r instead of A_r^T"

    def hc_width(self, H: Any, alpha: Any) -> Any:
        hcref.hc_width(H, alpha)
        fixed = np.concatenate([alpha[..., :, :1], np.swapaxes(alpha[..., :, 1:], -1, -2)], axis=-1)
        return self._emit("hc_width", hcref.hc_width(H, fixed), H, alpha)


class TanhDropped(Mutant):
    broken_op, description = "hc_coeffs", "tanh left out of the dynamic coefficients"

    def hc_coeffs(self, H: Any, params: Any, **options: Any) -> Any:
        out = hcref.hc_coeffs(H, params, **{**options, "use_tanh": False})
        return self._emit("hc_coeffs", out, H, params, **options)


class SharedGate(Mutant):
    broken_op, description = "fc_coeffs", "s_alpha also scales beta (s_beta ignored)"

    def fc_coeffs(self, H: Any, params: Any, **options: Any) -> Any:
        hcref.fc_coeffs(H, params, **options)
        shared = {**params, "s_beta": params["s_alpha"]} if "s_beta" in params else params
        return self._emit("fc_coeffs", hcref.fc_coeffs(H, shared, **options), H, params, **options)


class NormWithoutMean(Mutant):
    broken_op, description = "hc_coeffs", "LayerNorm without the mean subtraction"

    def hc_coeffs(self, H: Any, params: Any, **options: Any) -> Any:
        out = hcref.hc_coeffs(H, params, **options)
        if "W_alpha" in params and options.get("norm", "layernorm") == "layernorm":
            def norm(x: np.ndarray) -> np.ndarray:
                r = 1 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + 1e-5)
                return params["norm_weight"] * x * r + params["norm_bias"]

            static = np.concatenate([params["A_m"][:, None], params["A_r"]], axis=1)
            out = _coeffs_with_norm(H, params, static, norm, options)
        return self._emit("hc_coeffs", out, H, params, **options)


class LayerNormEps(Mutant):
    broken_op, description = "fc_coeffs", "LayerNorm eps 1e-3 instead of 1e-5"

    def fc_coeffs(self, H: Any, params: Any, **options: Any) -> Any:
        out = hcref.fc_coeffs(H, params, **options)
        if "W_alpha" in params and options.get("norm", "layernorm") == "layernorm":
            def norm(x: np.ndarray) -> np.ndarray:
                return hcref.layernorm(x, params["norm_weight"], params["norm_bias"], eps=1e-3)

            out = _coeffs_with_norm(H, params, np.concatenate([params["Y"], params["A"]], axis=1), norm, options)
        return self._emit("fc_coeffs", out, H, params, **options)


class FcOuterWrite(Mutant):
    broken_op, description = "fc_depth", "FC write as a dense outer product (every fraction gets the sum)"

    def fc_depth(self, y: Any, H_res: Any, beta: Any) -> Any:
        hcref.fc_depth(y, H_res, beta)
        out = beta[..., :, None] * y.reshape(H_res.shape).sum(axis=-2, keepdims=True) + H_res
        return self._emit("fc_depth", out, y, H_res, beta)


class FracConcatOrder(Mutant):
    broken_op, description = "fc_width", "read fractions concatenated in reverse order"

    def fc_width(self, H: Any, alpha: Any) -> Any:
        h0, H_res = hcref.fc_width(H, alpha)
        h0 = np.ascontiguousarray(h0.reshape(H.shape[:-2] + H.shape[-2:])[..., ::-1, :]).reshape(h0.shape)
        return self._emit("fc_width", (h0, H_res), H, alpha)


class FracSplitStrided(Mutant):
    broken_op, description = "frac_split", "fractions taken strided (interleaved) instead of contiguous"

    def frac_split(self, x: Any, m: int) -> Any:
        out = hcref.frac_split(x, m)
        out = np.ascontiguousarray(np.swapaxes(x.reshape(x.shape[:-1] + (out.shape[-1], m)), -1, -2))
        return self._emit("frac_split", out, x, m)


class ReduceMean(Mutant):
    broken_op, description = "reduce", "streams averaged instead of summed"

    def reduce(self, H: Any) -> Any:
        return self._emit("reduce", hcref.reduce(H) / H.shape[-2], H)


class OffByOneIndex(Mutant):
    broken_op, description = "hc_coeffs", "A_m packed one stream off (reads stream k+1)"

    def hc_coeffs(self, H: Any, params: Any, **options: Any) -> Any:
        hcref.hc_coeffs(H, params, **options)
        out = hcref.hc_coeffs(H, {**params, "A_m": np.roll(params["A_m"], 1)}, **options)
        return self._emit("hc_coeffs", out, H, params, **options)


class Downcast(Mutant):
    broken_op, description = "hc_depth", "output silently downcast to float32"

    def hc_depth(self, y: Any, H_res: Any, beta: Any) -> Any:
        return self._emit("hc_depth", hcref.hc_depth(y, H_res, beta).astype(np.float32), y, H_res, beta)


class SilentBroadcast(Mutant):
    broken_op, description = "hc_depth", "no shape validation: mismatched leading axes broadcast silently"

    def hc_depth(self, y: Any, H_res: Any, beta: Any) -> Any:
        return self._emit("hc_depth", beta[..., :, None] * y[..., None, :] + H_res, y, H_res, beta)


def _grads_averaged(vjp: Callable[..., Any]) -> Callable[..., Any]:
    def broken(H: np.ndarray, params: Any, g_alpha: Any, g_beta: Any, **options: Any) -> Any:
        g_H, g_params = vjp(H, params, g_alpha, g_beta, **options)
        tokens = max(1, int(np.prod(H.shape[:-2])))
        return g_H, {k: (v / tokens if k in ("A_m", "A_r", "B") else v) for k, v in g_params.items()}

    return broken


class GradNotSummed(Mutant):
    broken_op, description = "hc_coeffs", "static parameter gradients averaged, not summed, over tokens"
    vjp_patches: ClassVar[dict[str, Patch]] = {"hc_coeffs_vjp": _grads_averaged}


def _drop_h0_term(vjp: Callable[..., Any]) -> Callable[..., Any]:
    def broken(H: np.ndarray, alpha: np.ndarray, g_h0: np.ndarray, g_H_res: np.ndarray) -> Any:
        g_H, g_alpha = vjp(H, alpha, g_h0, g_H_res)
        return g_H - alpha[..., :, :1] * g_h0[..., None, :], g_alpha

    return broken


class VjpTermDropped(Mutant):
    broken_op, description = "hc_width", "VJP of H drops the A_m g_h0 term"
    vjp_patches: ClassVar[dict[str, Patch]] = {"hc_width_vjp": _drop_h0_term}


def _gate_grad_zero(vjp: Callable[..., Any]) -> Callable[..., Any]:
    def broken(H: np.ndarray, params: Any, g_alpha: Any, g_beta: Any, **options: Any) -> Any:
        g_H, g_params = vjp(H, params, g_alpha, g_beta, **options)
        return g_H, {k: (np.zeros_like(v) if k == "s_alpha" else v) for k, v in g_params.items()}

    return broken


class GateGradDropped(Mutant):
    broken_op, description = "fc_coeffs", "no gradient for the gate s_alpha"
    vjp_patches: ClassVar[dict[str, Patch]] = {"fc_coeffs_vjp": _gate_grad_zero}


MUTANTS: dict[str, Mutant] = {
    "transposed_mix": TransposedMix(),
    "tanh_dropped": TanhDropped(),
    "shared_gate": SharedGate(),
    "norm_without_mean": NormWithoutMean(),
    "layernorm_eps": LayerNormEps(),
    "fc_outer_write": FcOuterWrite(),
    "frac_concat_order": FracConcatOrder(),
    "frac_split_strided": FracSplitStrided(),
    "reduce_mean": ReduceMean(),
    "off_by_one_index": OffByOneIndex(),
    "downcast": Downcast(),
    "silent_broadcast": SilentBroadcast(),
    "grad_not_summed": GradNotSummed(),
    "vjp_term_dropped": VjpTermDropped(),
    "gate_grad_dropped": GateGradDropped(),
}
"""Every mutant by name; ``--backend mutants:NAME`` loads one (module attributes below)."""

for _name, _mutant in MUTANTS.items():
    _mutant.name = f"mutant_{_name}"
globals().update(MUTANTS)
