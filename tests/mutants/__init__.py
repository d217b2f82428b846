"""Deliberately broken backends: each is a NumPy backend with one mistake a real port makes.
The conformance suite must fail on every one, naming the broken op (and, where one exists, the
named property it breaks) (``tests/test_conformance_mutants.py``).

Forward mutants override one op and record it on the NumPy backend's tape, so their VJP is
the reference's (of the correct function). VJP mutants swap one ``hcref.<op>_vjp`` for a
broken one while their ``vjp`` runs. Most start from ``hcref_numpy``; the mutants of the
mixed-precision, extreme-scale and empty-batch cases start from :class:`Exact`, a NumPy port
that computes every op in float64 and rounds once to decision D12's result dtypes (the ideal
port those cases assume), so that they are caught for their own mistake alone.

Load one with ``--backend mutants:NAME`` and ``tests`` on ``PYTHONPATH``; ``dtypes`` says the
dtypes (``mixed`` included) that show its mistake, ``family`` the family whose checks show it
(``tests/test_conformance_mutants.py`` runs only those, the ends included).

The mHC mutants (family ``mhc``) break Sinkhorn (order, iterations, max shift, gradient), the
coefficient projection (per stream, column order, RMS epsilon) or the residual mix, each the
way a public port does or could (math.md 4.6).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
from hcref_numpy import NumpyBackend, _Record

import hcref
from hcref.norms import rms_normalize
from hcref.optable import ALL_OPS, OpSpec

Patch = Callable[[Callable[..., Any]], Callable[..., Any]]
"""Turns a reference VJP into a broken one."""


class Mutant(NumpyBackend):
    """A NumPy backend with one mistake; ``broken_op`` names the op the suite must blame and
    ``broken_property`` the named property that departs (when one covers the mistake)."""

    broken_op = ""
    broken_property = ""
    description = ""
    dtypes = "float64"
    family = "hc,fc"
    vjp_patches: ClassVar[dict[str, Patch]] = {}

    def _emit(self, name: str, out: Any, *args: Any, **kwargs: Any) -> Any:
        if self._tape is not None:
            self._tape.append(_Record(ALL_OPS[name], args, kwargs, out if isinstance(out, tuple) else (out,)))
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
    broken_property = "hc-mixing"

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
    broken_property = "fc-norm-eps"

    def fc_coeffs(self, H: Any, params: Any, **options: Any) -> Any:
        out = hcref.fc_coeffs(H, params, **options)
        if "W_alpha" in params and options.get("norm", "layernorm") == "layernorm":
            def norm(x: np.ndarray) -> np.ndarray:
                return hcref.layernorm(x, params["norm_weight"], params["norm_bias"], eps=1e-3)

            out = _coeffs_with_norm(H, params, np.concatenate([params["Y"], params["A"]], axis=1), norm, options)
        return self._emit("fc_coeffs", out, H, params, **options)


class FcOuterWrite(Mutant):
    broken_op, description = "fc_depth", "FC write as a dense outer product (every fraction gets the sum)"
    broken_property = "fc-write"

    def fc_depth(self, y: Any, H_res: Any, beta: Any) -> Any:
        hcref.fc_depth(y, H_res, beta)
        out = beta[..., :, None] * y.reshape(H_res.shape).sum(axis=-2, keepdims=True) + H_res
        return self._emit("fc_depth", out, y, H_res, beta)


class FracConcatOrder(Mutant):
    broken_op, description = "fc_width", "read fractions concatenated in reverse order"
    broken_property = "fc-read"

    def fc_width(self, H: Any, alpha: Any) -> Any:
        h0, H_res = hcref.fc_width(H, alpha)
        h0 = np.ascontiguousarray(h0.reshape(H.shape[:-2] + H.shape[-2:])[..., ::-1, :]).reshape(h0.shape)
        return self._emit("fc_width", (h0, H_res), H, alpha)


class FracSplitStrided(Mutant):
    broken_op, description = "frac_split", "fractions taken strided (interleaved) instead of contiguous"
    broken_property = "fc-ends"

    def frac_split(self, x: Any, m: int) -> Any:
        out = hcref.frac_split(x, m)
        out = np.ascontiguousarray(np.swapaxes(x.reshape(x.shape[:-1] + (out.shape[-1], m)), -1, -2))
        return self._emit("frac_split", out, x, m)


class ReduceMean(Mutant):
    broken_op, description = "reduce", "streams averaged instead of summed"
    broken_property = "hc-ends"

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


class StreamsBeyondFour(Mutant):
    broken_op, description = "hc_width", "the mix ignores input streams beyond the fourth"
    broken_property = "hc-beyond-4"

    def hc_width(self, H: Any, alpha: Any) -> Any:
        hcref.hc_width(H, alpha)
        seen = H.copy()
        seen[..., 4:, :] = 0  # input streams beyond the fourth never reach the mix
        return self._emit("hc_width", hcref.hc_width(seen, alpha), H, alpha)


class BroadcastY(Mutant):
    broken_op, description = "hc_depth", "a y with a size-1 last axis is broadcast instead of rejected"

    def hc_depth(self, y: Any, H_res: Any, beta: Any) -> Any:
        if y.shape[-1] == 1 and H_res.shape[-1] != 1:
            y = np.broadcast_to(y, y.shape[:-1] + H_res.shape[-1:])
        return self._emit("hc_depth", hcref.hc_depth(y, H_res, beta), y, H_res, beta)


class WrongException(Mutant):
    broken_op, description = "fc_coeffs", "a missing parameter key raises KeyError, not ValueError"

    def fc_coeffs(self, H: Any, params: Any, **options: Any) -> Any:
        for key in ("Y", "A", "B"):
            if key not in params:
                raise KeyError(key)
        return self._emit("fc_coeffs", hcref.fc_coeffs(H, params, **options), H, params, **options)


class SwitchDropped(Mutant):
    broken_op, description = "hc_coeffs", "the dynamic rmsnorm path ignores use_tanh=False"

    def hc_coeffs(self, H: Any, params: Any, **options: Any) -> Any:
        used = {**options, "use_tanh": True} if options.get("norm") == "rmsnorm" else options
        return self._emit("hc_coeffs", hcref.hc_coeffs(H, params, **used), H, params, **options)


def _textbook_layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """LayerNorm as usually written, in the input's dtype: its squares overflow at 1e20 in float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        xc = x - x.mean(axis=-1, keepdims=True)
        return weight * xc / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + np.asarray(1e-5, x.dtype)) + bias


class ScaleUnsafeNorm(Mutant):
    broken_op, description = "fc_coeffs", "textbook LayerNorm in float32: the sum of squares overflows at 1e20"
    broken_property = "fc-scale-safe"
    dtypes = "float32"

    def fc_coeffs(self, H: Any, params: Any, **options: Any) -> Any:
        out = hcref.fc_coeffs(H, params, **options)
        if "W_alpha" in params and options.get("norm", "layernorm") == "layernorm":
            def norm(x: np.ndarray) -> np.ndarray:
                return _textbook_layernorm(x, params["norm_weight"], params["norm_bias"])

            out = _coeffs_with_norm(H, params, np.concatenate([params["Y"], params["A"]], axis=1), norm, options)
            out = tuple(np.asarray(o, dtype=H.dtype) for o in out)
        return self._emit("fc_coeffs", out, H, params, **options)


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


# --- an exact port (decision D12) and the mutants of the cases that assume one ---------------------


def _dtype_of(x: Any) -> str:
    return str(np.asarray(x).dtype)


def _d12(op: str, output: str, args: tuple[Any, ...]) -> str:
    """Decision D12's dtype of ``output`` of ``op`` (ends keep, coefficients promote, width/depth keep
    the state's dtype)."""
    spec = ALL_OPS[op]
    dtypes: dict[str, str] = {}
    for name, value in zip(spec.inputs, args, strict=True):
        if isinstance(value, Mapping):
            dtypes[name] = str(np.result_type(*value.values()))
        elif isinstance(value, np.ndarray):
            dtypes[name] = _dtype_of(value)
    if op in ("mhc_pre", "mhc_head"):
        return dtypes["H"]
    if op == "mhc_post":
        return str(np.result_type(dtypes["y"], dtypes["H"]))
    if op.endswith("_coeffs"):
        return str(np.result_type(*dtypes.values()))
    if op.endswith("_width"):
        return dtypes["H"]
    if op.endswith("_depth"):
        return str(np.result_type(dtypes["y"], dtypes["H_res"]))
    return next(iter(dtypes.values()))


def _up(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: np.asarray(v, dtype=np.float64) for k, v in x.items()}
    return np.asarray(x, dtype=np.float64) if isinstance(x, np.ndarray) else x


class Exact(NumpyBackend):
    """Every op computed in float64 from its inputs and rounded once to D12's result dtype; VJPs
    computed in float64 and rounded to each primal's dtype: the ideal port of the mixed-precision,
    extreme-scale and empty-batch cases (not a mutant; it must pass them all)."""

    name = "exact_numpy"
    dtypes = "float64,float32,float16,mixed"

    def _call(self, spec: OpSpec, *args: Any, **kwargs: Any) -> Any:
        out = getattr(hcref, spec.name)(*[_up(a) for a in args], **kwargs)
        outs = out if isinstance(out, tuple) else (out,)
        outs = tuple(np.asarray(o, dtype=_d12(spec.name, name, args)) for o, name in
                     zip(outs, spec.outputs, strict=True))
        if self._tape is not None:
            self._tape.append(_Record(spec, args, kwargs, outs))
        return outs if isinstance(out, tuple) else outs[0]

    def vjp(self, fn: Callable[..., Any], primals: Any, cotangents: Any) -> tuple[Any, ...]:
        tape: list[_Record] = []
        self._tape = tape
        try:
            out = fn(*primals)
        finally:
            self._tape = None
        outs = out if isinstance(out, tuple) else (out,)
        grads: dict[int, np.ndarray] = {}
        keep: dict[int, Any] = {}
        for o, g in zip(outs, cotangents, strict=True):
            grads[id(o)] = np.asarray(g, dtype=np.float64)
            keep[id(o)] = o
        for rec in reversed(tape):
            g_outs = [grads.get(id(o)) for o in rec.outputs]
            if all(g is None for g in g_outs):
                continue
            g_outs = [np.zeros(np.shape(o)) if g is None else g for o, g in zip(rec.outputs, g_outs, strict=True)]
            results = getattr(hcref, rec.spec.vjp_name)(*[_up(a) for a in rec.args], *g_outs, **rec.kwargs)
            for name, g in zip(rec.spec.differentiable, results, strict=True):
                arg = rec.args[rec.spec.inputs.index(name)]
                pairs = [(v, g[k]) for k, v in arg.items()] if isinstance(arg, Mapping) else [(arg, g)]
                for value, grad in pairs:
                    grads[id(value)] = grads[id(value)] + grad if id(value) in grads else np.asarray(grad)
                    keep[id(value)] = value

        def grad_of(x: Any) -> np.ndarray:
            return np.asarray(grads.get(id(x), np.zeros(np.shape(x))), dtype=np.asarray(x).dtype)

        return tuple({k: grad_of(v) for k, v in p.items()} if isinstance(p, Mapping) else grad_of(p) for p in primals)


class ExactMutant(Exact, Mutant):
    """A mutant of :class:`Exact`."""


class MixedPromotes(ExactMutant):
    broken_op = "hc_width"
    description = "float32 alpha on a half state returns float32 (promoted), not the state's dtype"
    broken_property = "hc-mixed"
    dtypes = "mixed"

    def hc_width(self, H: Any, alpha: Any) -> Any:
        h0, H_res = hcref.hc_width(_up(H), _up(alpha))
        dtype = np.result_type(H, alpha)
        return self._emit("hc_width", (h0.astype(dtype), H_res.astype(dtype)), H, alpha)


def _empty_garbage(vjp: Callable[..., Any]) -> Callable[..., Any]:
    def broken(H: np.ndarray, params: Any, g_alpha: Any, g_beta: Any, **options: Any) -> Any:
        g_H, g_params = vjp(H, params, g_alpha, g_beta, **options)
        if 0 in H.shape[:-2]:
            g_params = {k: np.full_like(v, 1e-300) for k, v in g_params.items()}
        return g_H, g_params

    return broken


class EmptyBatchGarbage(Mutant):
    broken_op, description = "hc_coeffs", "with no tokens the parameter gradients are tiny garbage, not 0"
    broken_property = "hc-empty"
    vjp_patches: ClassVar[dict[str, Patch]] = {"hc_coeffs_vjp": _empty_garbage}


# --- mHC -------------------------------------------------------------------------------------------


def _compute(x: np.ndarray) -> np.dtype:
    return np.promote_types(np.asarray(x).dtype, np.float32)


def _sinkhorn_rows_first(Z: np.ndarray, iters: int) -> np.ndarray:
    """Rows, then columns (the paper does columns, then rows): the columns sum to 1, not the rows."""
    M = np.exp(Z - Z.max(axis=(-2, -1), keepdims=True))
    for _ in range(iters):
        M = M / M.sum(axis=-1, keepdims=True)
        M = M / M.sum(axis=-2, keepdims=True)
    return M


def _sinkhorn_one_short(Z: np.ndarray, iters: int) -> np.ndarray:
    """``iters - 1`` iterations (a loop bound off by one; with one iteration, the closing row step only)."""
    if iters > 1:
        return np.asarray(hcref.sinkhorn(Z, iters=iters - 1))
    E = np.exp(Z - Z.max(axis=-1, keepdims=True))
    return E / E.sum(axis=-1, keepdims=True)


def _sinkhorn_plain_exp(Z: np.ndarray, iters: int) -> np.ndarray:
    """The paper's iteration on ``exp(Z)`` without a max shift: inf / inf = NaN above 88.7 in float32."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        M = np.exp(Z.astype(_compute(Z)))
        for _ in range(iters):
            M = M / M.sum(axis=-2, keepdims=True)
            M = M / M.sum(axis=-1, keepdims=True)
    return M


def _res_logits(H: np.ndarray, params: Mapping[str, np.ndarray], eps_rms: float = 1e-6,
                per_stream: bool = False) -> np.ndarray:
    """``mat(gates[2] z_res + b_res)``: the residual logits of ``mhc_coeffs``."""
    n = H.shape[-2]
    b_res = params["b"][2 * n:].reshape(n, n)
    if "phi" not in params:
        return np.broadcast_to(b_res, H.shape[:-2] + (n, n)).astype(np.result_type(H, b_res))
    v = _rms(H, eps_rms, per_stream)
    z = v @ params["phi"][:, 2 * n:]
    return params["gates"][2] * z.reshape(H.shape[:-2] + (n, n)) + b_res


def _rms(H: np.ndarray, eps: float, per_stream: bool) -> np.ndarray:
    n, d = H.shape[-2:]
    if per_stream:
        return rms_normalize(H, eps)[0].reshape(H.shape[:-2] + (n * d,))
    return rms_normalize(H.reshape(H.shape[:-2] + (n * d,)), eps)[0]


def _coeffs_with(H: np.ndarray, params: Mapping[str, np.ndarray], iters: int, eps: float,
                 sinkhorn: Callable[[np.ndarray, int], np.ndarray]) -> tuple[Any, Any, Any]:
    """``mhc_coeffs`` with another Sinkhorn (the paper's variant, eps = 0; V4's as the reference)."""
    h_pre, h_post, h_res = hcref.mhc_coeffs(H, params, iters=iters, eps=eps)
    if eps == 0:
        h_res = sinkhorn(_res_logits(H, params).astype(_compute(H)), iters).astype(h_res.dtype)
    return h_pre, h_post, h_res


class _SinkhornMutant(Mutant):
    """One broken Sinkhorn, used by ``sinkhorn`` and inside ``mhc_coeffs`` (as a port shares it)."""

    family = "mhc"
    broken_op = "sinkhorn"
    broken: ClassVar[Callable[[np.ndarray, int], np.ndarray]]

    def sinkhorn(self, Z: Any, *, iters: int = 20, eps: float = 0.0) -> Any:
        out = hcref.sinkhorn(Z, iters=iters, eps=eps)
        if eps == 0:
            out = type(self).broken(Z.astype(_compute(Z)), iters).astype(out.dtype)
        return self._emit("sinkhorn", out, Z, iters=iters, eps=eps)

    def mhc_coeffs(self, H: Any, params: Any, *, iters: int = 20, eps: float = 0.0) -> Any:
        out = _coeffs_with(H, params, iters, eps, type(self).broken)
        return self._emit("mhc_coeffs", out, H, params, iters=iters, eps=eps)


class SinkhornRowsFirst(_SinkhornMutant):
    description = "Sinkhorn normalises rows first, then columns (the rows of h_res do not sum to 1)"
    broken_property = "mhc-sinkhorn-order"
    broken = staticmethod(_sinkhorn_rows_first)


class SinkhornOneShort(_SinkhornMutant):
    description = "Sinkhorn runs one iteration fewer than asked"
    broken = staticmethod(_sinkhorn_one_short)


class SinkhornPlainExp(_SinkhornMutant):
    description = "Sinkhorn on exp(Z) without a max shift: NaN for float32 logits above 88.7"
    broken_property = "mhc-large-logits"
    dtypes = "float32"
    broken = staticmethod(_sinkhorn_plain_exp)


class _CoeffsMutant(Mutant):
    family = "mhc"
    broken_op = "mhc_coeffs"

    def mhc_coeffs(self, H: Any, params: Any, *, iters: int = 20, eps: float = 0.0) -> Any:
        hcref.mhc_coeffs(H, params, iters=iters, eps=eps)  # the reference's validation
        return self._emit("mhc_coeffs", self.coeffs(H, params, iters, eps), H, params, iters=iters, eps=eps)

    def coeffs(self, H: np.ndarray, params: Mapping[str, np.ndarray], iters: int, eps: float) -> Any:
        raise NotImplementedError


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(x / 2))


def _coeffs_from_logits(H: np.ndarray, params: Mapping[str, np.ndarray], z: np.ndarray | None, iters: int,
                        eps: float) -> tuple[Any, Any, Any]:
    """The coefficients from projections ``z`` (None: static), with the reference's gates, bias,
    sigmoids and Sinkhorn."""
    n = H.shape[-2]
    dtype = np.result_type(H, *params.values())
    logits = np.broadcast_to(params["b"], H.shape[:-2] + params["b"].shape)
    if z is not None:
        logits = z * np.repeat(params["gates"], [n, n, n * n]) + params["b"]
    h_pre = _sigmoid(logits[..., :n]) + eps
    h_post = 2 * _sigmoid(logits[..., n:2 * n])
    h_res = hcref.sinkhorn(np.ascontiguousarray(logits[..., 2 * n:].reshape(H.shape[:-2] + (n, n))), iters=iters,
                           eps=eps)
    return tuple(np.asarray(c, dtype=dtype) for c in (h_pre, h_post, h_res))


class PerStreamProjection(_CoeffsMutant):
    description = "mHC's RMS scaling per stream (over d) instead of over the flattened n*d token"
    broken_property = "mhc-flattened"

    def coeffs(self, H: np.ndarray, params: Mapping[str, np.ndarray], iters: int, eps: float) -> Any:
        z = _rms(H.astype(np.float64), 1e-6, True) @ params["phi"] if "phi" in params else None
        return _coeffs_from_logits(H, params, z, iters, eps)


class RmsEps1e5(_CoeffsMutant):
    description = "mHC's RMS scaling with epsilon 1e-5 instead of 1e-6"
    broken_property = "mhc-rms-eps"

    def coeffs(self, H: np.ndarray, params: Mapping[str, np.ndarray], iters: int, eps: float) -> Any:
        z = _rms(H.astype(np.float64), 1e-5, False) @ params["phi"] if "phi" in params else None
        return _coeffs_from_logits(H, params, z, iters, eps)


class ColumnOrderPreResPost(_CoeffsMutant):
    description = "phi and b read in column order [pre, res, post] instead of [pre, post, res]"
    broken_property = "mhc-write"

    def coeffs(self, H: np.ndarray, params: Mapping[str, np.ndarray], iters: int, eps: float) -> Any:
        n = H.shape[-2]

        def reorder(x: np.ndarray) -> np.ndarray:  # what this port takes for [pre | post | res]
            return np.concatenate([x[..., :n], x[..., n + n * n:], x[..., n:n + n * n]], axis=-1)

        moved = {**params, "b": reorder(params["b"])}
        if "phi" in params:
            moved["phi"] = reorder(params["phi"])
        return hcref.mhc_coeffs(H, moved, iters=iters, eps=eps)


class HresTransposed(Mutant):
    family = "mhc"
    broken_op, description = "mhc_post", "the residual mix applies h_res^T (h_res[i, j] read as output j from input i)"
    broken_property = "mhc-mixing"

    def mhc_post(self, y: Any, H: Any, h_post: Any, h_res: Any) -> Any:
        hcref.mhc_post(y, H, h_post, h_res)
        out = hcref.mhc_post(y, H, h_post, np.ascontiguousarray(np.swapaxes(h_res, -1, -2)))
        return self._emit("mhc_post", out, y, H, h_post, h_res)


def _implicit_gradient(vjp: Callable[..., Any]) -> Callable[..., Any]:
    def broken(Z: np.ndarray, g_P: np.ndarray, *, iters: int = 20, eps: float = 0.0) -> Any:
        # the gradient of the converged projection (implicit differentiation), reached here by
        # unrolling to convergence, instead of the gradient of the `iters` iterations computed
        return vjp(Z, g_P, iters=200, eps=eps) if eps == 0 else vjp(Z, g_P, iters=iters, eps=eps)

    return broken


class ImplicitGradient(Mutant):
    family = "mhc"
    broken_op = "sinkhorn"
    description = "Sinkhorn's gradient is that of the converged projection (implicit), not unrolled over iters"
    vjp_patches: ClassVar[dict[str, Patch]] = {"sinkhorn_vjp": _implicit_gradient}


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
    "streams_beyond_four": StreamsBeyondFour(),
    "broadcast_y": BroadcastY(),
    "wrong_exception": WrongException(),
    "switch_dropped": SwitchDropped(),
    "scale_unsafe_norm": ScaleUnsafeNorm(),
    "mixed_promotes": MixedPromotes(),
    "empty_batch_garbage": EmptyBatchGarbage(),
    "sinkhorn_rows_first": SinkhornRowsFirst(),
    "sinkhorn_one_short": SinkhornOneShort(),
    "sinkhorn_plain_exp": SinkhornPlainExp(),
    "per_stream_projection": PerStreamProjection(),
    "mhc_rms_eps_1e5": RmsEps1e5(),
    "column_order_pre_res_post": ColumnOrderPreResPost(),
    "h_res_transposed": HresTransposed(),
    "implicit_gradient": ImplicitGradient(),
}
"""Every mutant by name; ``--backend mutants:NAME`` loads one (module attributes below)."""

for _name, _mutant in MUTANTS.items():
    _mutant.name = f"mutant_{_name}"
globals().update(MUTANTS)

exact = Exact()
"""The exact port itself (``--backend mutants:exact``): it must pass every case."""
