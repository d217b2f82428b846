"""Named structural properties of each family, each shown by the smallest input that shows it.

A property is one sentence of the papers or the decisions (the write goes to fraction j only,
the mixing orientation, reduce is a sum, the read at init is the layer input, Pre-Norm at
init, ...), checked on a tiny fixed input through the port's own entry (its ``site`` or its
ops, and its own initialiser when it declares one) against the float64 reference, so a report
says *which* property a port departs from and on *what* input, rather than only that a random
site disagrees. Verdicts: ``holds``, ``departs``, ``departs (declared)`` (the port declares the
variant, e.g. a norm epsilon), ``error`` (the port raised) and ``n/a`` (not declared).

The expected values always come from the reference (at decision D2's initial parameters for
the init properties), never from the port. Adding a family adds its entries to
:data:`PROPERTIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hcref.tolerances import tolerance

from . import sublayer as sub
from .cases import Case
from .checks import prenorm_sublayers
from .families import D1_EPS, FAMILIES, Family, ReferenceOps, residual_stack, site_forward
from .subject import NotApplicable, Subject


@dataclass
class Verdict:
    """The outcome of one property on one port."""

    verdict: str
    input: str
    detail: str = ""
    dtype: str = ""
    ratio: float = 0.0

    @property
    def failed(self) -> bool:
        return self.verdict in ("departs", "error")


@dataclass(frozen=True)
class Property:
    """A named property: ``check(subject, dtype)`` returns a :class:`Verdict`."""

    id: str
    family: str
    name: str
    source: str
    check: Callable[[Subject, str], Verdict] = field(compare=False)


class Departs(Exception):
    """Raised inside a property check with what differs."""

    def __init__(self, detail: str, ratio: float = float("inf")) -> None:
        super().__init__(detail)
        self.detail, self.ratio = detail, ratio


def _fmt(x: np.ndarray) -> str:
    flat = np.asarray(x, dtype=np.float64)
    text = np.array2string(flat, precision=6, separator=", ", threshold=16, suppress_small=False)
    return " ".join(text.split())


def _dtype(selected: Sequence[str], prefer: Sequence[str] = ("float64", "float32")) -> str:
    for dtype in prefer:
        if dtype in selected:
            return dtype
    if not selected:
        raise NotApplicable("no dtype selected")
    return selected[0]


def _mode(subject: Subject) -> tuple[bool, str]:
    """(dynamic, norm) of the parameters a property uses: static when declared, else dynamic with
    zero projections (the same function), with the first declared norm."""
    support = subject.support
    return "static" not in support.modes, support.norms[0]


def _params(fam: Family, k: int, w: int, dynamic: bool, norm: str, **static: Any) -> dict[str, np.ndarray]:
    """Parameters with the given static values (others from D2's init) and, for a dynamic site,
    zero projections so that the coefficients equal the static part."""
    params = fam.init(k, w, 0, dynamic=dynamic, norm=norm)
    for key, value in static.items():
        params[key] = np.asarray(value, dtype=np.float64)
    return params


def _compare(got: np.ndarray, expected: np.ndarray, dtype: str, what: str) -> float:
    tol = tolerance(dtype, "forward", contraction=16, composite=True)
    if got.shape != expected.shape:
        raise Departs(f"{what}: shape {got.shape}, expected {expected.shape}")
    diff = np.abs(got - expected)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    if diff.size and not np.all(np.isfinite(diff)):
        raise Departs(f"{what}: got {_fmt(got)}, expected {_fmt(expected)} (not finite)")
    ratio = float(np.max(diff)) / (tol.atol + tol.rtol * scale) if diff.size else 0.0
    if ratio > 1:
        raise Departs(f"{what}: got {_fmt(got)}, expected {_fmt(expected)}", ratio)
    return ratio


class _Run:
    """Helpers to run one tiny site of a family on the port and on the reference."""

    def __init__(self, subject: Subject, family: str, dtype: str) -> None:
        self.subject, self.fam, self.dtype = subject, FAMILIES[family], dtype
        subject.entry(family)
        self.backend = subject.backend

    def native(self, x: Any, dtype: str | None = None) -> Any:
        if isinstance(x, Mapping):
            return {k: self.native(v, dtype) for k, v in x.items()}
        return self.backend.asarray(np.asarray(x, dtype=np.float64), dtype or self.dtype, self.subject.device)

    def numpy(self, x: Any) -> np.ndarray:
        return np.asarray(self.backend.to_numpy(x), dtype=np.float64)

    def sublayers(self, kind: str, params: Mapping[str, np.ndarray], dtype: str | None = None,
                  record: bool = False) -> tuple[sub.Sublayer, sub.Sublayer]:
        """(native sublayer, reference sublayer) on the rounded params; ``record`` keeps their inputs."""
        native = sub.build(kind, params, lambda x: self.native(x, dtype), self.numpy if record else None)
        reference = sub.build(kind, params, lambda x: self.numpy(self.native(x, dtype)),
                              (lambda x: x) if record else None)
        return native, reference

    def site(self, H: np.ndarray, params: Mapping[str, np.ndarray], kind: str, sub_params: Mapping[str, np.ndarray],
             options: Mapping[str, Any], eps: Mapping[str, float] | None = None
             ) -> tuple[np.ndarray, np.ndarray, sub.Sublayer, sub.Sublayer]:
        """(port H_out, reference H_out, port sublayer, reference sublayer) of one site (forward
        only, so the sublayers record their inputs)."""
        T, T_ref = self.sublayers(kind, sub_params, record=True)
        H_n, p_n = self.native(H), self.native(params)
        got = self.numpy(self.subject.site(self.fam.name, H_n, p_n, T, options))
        ref_eps = self.subject.support.norm_eps if eps is None else eps
        ref, _ = site_forward(ReferenceOps(ref_eps), self.fam, self.numpy(H_n),
                              {k: self.numpy(v) for k, v in p_n.items()}, T_ref, options)
        return got, np.asarray(ref), T, T_ref


def _describe_params(params: Mapping[str, np.ndarray], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={_fmt(params[k])}" for k in keys)


def _options(norm: str) -> dict[str, Any]:
    return {"norm": norm, "use_tanh": True, "use_norm": True, "use_scale": True}


def _mhc_options(subject: Subject) -> dict[str, Any]:
    """mHC's options for a property: the paper's 20 iterations and ``eps = 0`` where declared
    (else the first declared number of iterations, and V4's ``eps = 1e-6``)."""
    support = subject.support
    iters = 20 if support.iters is None or 20 in support.iters else support.iters[0]
    return {"iters": iters, "eps": 0.0 if "paper" in support.mhc_variants else 1e-6}


def _opts(subject: Subject, family: str, norm: str) -> dict[str, Any]:
    """The site options of a property: HC/FC's norm and switches on, or mHC's."""
    return _mhc_options(subject) if family == "mhc" else _options(norm)


def _static_names(family: str) -> tuple[str, str, str]:
    return ("A_m", "A_r", "B") if family == "hc" else ("Y", "A", "B")


# --- the properties ------------------------------------------------------------------------------


def _write(family: str) -> Callable[[Subject, str], Verdict]:
    def check(subject: Subject, dtype: str) -> Verdict:
        run = _Run(subject, family, dtype)
        dynamic, norm = _mode(subject)
        k, w = 2, 1
        read, mix, write = _static_names(family)
        p = _params(run.fam, k, w, dynamic, norm, **{write: [1.0, 2.0]})
        c = np.array([1.0]) if family == "hc" else np.array([1.0, 0.0])
        H = np.zeros((k, w))
        text = f"{run.fam.rows}=2, {run.fam.cols}=1, one token, H = 0, {write} = [1, 2], {read}/{mix} at init, " \
               f"branch output y = {_fmt(c)}"
        got, ref, _, _ = run.site(H, p, "const", {"c": c}, _options(norm))
        return _verdict(text, dtype, lambda: _compare(got, ref, dtype, "H_out"))
    return check


def _mixing(family: str) -> Callable[[Subject, str], Verdict]:
    def check(subject: Subject, dtype: str) -> Verdict:
        run = _Run(subject, family, dtype)
        dynamic, norm = _mode(subject)
        read, mix, write = _static_names(family)
        k = 2
        read_value = np.zeros(2) if family == "hc" else np.zeros((2, 2))
        p = _params(run.fam, k, 1, dynamic, norm, **{read: read_value, mix: [[0.0, 1.0], [0.0, 0.0]],
                                                     write: [0.0, 0.0]})
        H = np.array([[1.0], [0.0]])
        text = f"{run.fam.rows}=2, {run.fam.cols}=1, one token, H = [[1], [0]], {mix} = [[0, 1], [0, 0]] " \
               f"(only input 0 -> output 1), {read} = 0, {write} = 0, branch output 0"
        got, ref, _, _ = run.site(H, p, "zero", {}, _options(norm))
        return _verdict(text, dtype, lambda: _compare(got, ref, dtype, "H_out (the residual path)"))
    return check


def _read(family: str) -> Callable[[Subject, str], Verdict]:
    def check(subject: Subject, dtype: str) -> Verdict:
        run = _Run(subject, family, dtype)
        dynamic, norm = _mode(subject)
        read = _static_names(family)[0]
        if family == "hc":
            p = _params(run.fam, 2, 1, dynamic, norm, **{read: [1.0, 10.0]})
            text = "n=2, d=1, one token, H = [[1], [2]], A_m = [1, 10]: h0 = A_m^T H"
        else:
            p = _params(run.fam, 2, 1, dynamic, norm, **{read: [[0.0, 1.0], [1.0, 0.0]]})
            text = "m=2, e=1, one token, H = [[1], [2]], Y = [[0, 1], [1, 0]]: h0 = concat(Y^T H) = [2, 1]"
        _, _, T, T_ref = run.site(np.array([[1.0], [2.0]]), p, "identity", {}, _options(norm))
        return _verdict(text, dtype, lambda: _compare(T.inputs[-1], T_ref.inputs[-1], dtype,
                                                       "the sublayer's input h0"))
    return check


def _beyond_four(family: str) -> Callable[[Subject, str], Verdict]:
    def check(subject: Subject, dtype: str) -> Verdict:
        k = 8
        if subject.support.max_rows is not None and subject.support.max_rows < k:
            raise NotApplicable(f"max_rows {subject.support.max_rows} < 8")
        run = _Run(subject, family, dtype)
        dynamic, norm = _mode(subject)
        read, mix, write = _static_names(family)
        rng = np.random.default_rng(8)
        read_value = rng.standard_normal(k) if family == "hc" else rng.standard_normal((k, k))
        p = _params(run.fam, k, 1, dynamic, norm, **{read: read_value, mix: rng.standard_normal((k, k)),
                                                     write: np.zeros(k)})
        H = np.arange(1.0, k + 1)[:, None]
        text = f"{run.fam.rows}=8, {run.fam.cols}=1, one token, H = [[1], ..., [8]], random static " \
               f"{read}, {mix} (seed 8), {write} = 0: the read h0 and the residual H_out"
        got, ref, T, T_ref = run.site(H, p, "identity", {}, _options(norm))
        return _verdict(text, dtype, lambda: max(_compare(T.inputs[-1], T_ref.inputs[-1], dtype, "h0 (the read)"),
                                                 _compare(got, ref, dtype, "H_out (the mix)")))
    return check


def _ends(family: str) -> Callable[[Subject, str], Verdict]:
    def check(subject: Subject, dtype: str) -> Verdict:
        fam = FAMILIES[family]
        for op in (fam.begin, fam.end):
            if not subject.support.has_op(op):
                raise NotApplicable(f"op {op} not declared")
        run = _Run(subject, family, dtype)
        x = np.array([1.0, 2.0, 3.0, 4.0])
        H = run.native(x)
        began = run.numpy(getattr(subject.backend, fam.begin)(H, 2))
        expected_begin = np.asarray(ReferenceOps().call(fam.begin, x, 2))
        ended = run.numpy(getattr(subject.backend, fam.end)(run.native(expected_begin)))
        expected_end = np.asarray(ReferenceOps().call(fam.end, expected_begin))
        text = f"x = [1, 2, 3, 4], {fam.begin}(x, 2) then {fam.end}"

        def both() -> float:
            return max(_compare(began, expected_begin, dtype, f"{fam.begin}(x, 2)"),
                       _compare(ended, expected_end, dtype, f"{fam.end}({fam.begin}(x, 2))"))
        return _verdict(text, dtype, both)
    return check


def _init_params(subject: Subject, family: str, k: int, w: int, layer_index: int) -> dict[str, np.ndarray]:
    dynamic = "dynamic" in subject.support.modes
    return subject.init(family, k, w, layer_index, dynamic=dynamic, norm=subject.support.norms[0])


def _init_read(family: str) -> Callable[[Subject, str], Verdict]:
    def check(subject: Subject, dtype: str) -> Verdict:
        run = _Run(subject, family, dtype)
        norm = subject.support.norms[0]
        dynamic = "dynamic" in subject.support.modes
        x = np.array([1.0, 2.0])
        k, w = (2, 2) if run.fam.streams else (2, 1)
        H = np.asarray(ReferenceOps().call(run.fam.begin, x, k))
        p = _init_params(subject, family, k, w, 0)
        T, _ = run.sublayers("identity", {}, record=True)
        run.subject.site(family, run.native(H), run.native(p), T, _opts(subject, family, norm))
        spec_params = run.fam.init(k, w, 0, dynamic=dynamic, norm=norm)
        _, T_ref = run.sublayers("identity", {}, record=True)
        site_forward(ReferenceOps(), run.fam, H, spec_params, T_ref, _opts(subject, family, norm))
        who = _init_source(subject, family)
        text = f"x = [1, 2], {run.fam.rows}=2, {run.fam.begin}(x, 2), one site at {who} (layer 0)"
        return _verdict(text, dtype, lambda: _compare(T.inputs[-1], T_ref.inputs[-1], dtype,
                                                       "the sublayer's input h0 (should be x)"))
    return check


def _init_residual(family: str) -> Callable[[Subject, str], Verdict]:
    def check(subject: Subject, dtype: str) -> Verdict:
        run = _Run(subject, family, dtype)
        norm = subject.support.norms[0]
        dynamic = "dynamic" in subject.support.modes
        k = 3
        w = 2 if FAMILIES[family].streams else 1
        H = np.arange(1.0, k * w + 1).reshape(k, w)
        p = _init_params(subject, family, k, w, 0)
        got, _, _, _ = run.site(H, p, "zero", {}, _opts(subject, family, norm))
        _, T_ref = run.sublayers("zero", {})
        ref, _ = site_forward(ReferenceOps(), run.fam, H, run.fam.init(k, w, 0, dynamic=dynamic, norm=norm),
                              T_ref, _opts(subject, family, norm))
        who = _init_source(subject, family)
        text = f"{run.fam.rows}=3, {run.fam.cols}={w}, one token, H = {_fmt(H)}, branch output 0, at {who}"
        return _verdict(text, dtype, lambda: _compare(got, np.asarray(ref), dtype, "H_out (should be H)"))
    return check


def _init_prenorm(family: str) -> Callable[[Subject, str], Verdict]:
    def check(subject: Subject, dtype: str) -> Verdict:
        run = _Run(subject, family, dtype)
        norm = subject.support.norms[0]
        k, d = 2, 4
        w = d if run.fam.streams else d // k
        x = np.array([1.0, -2.0, 3.0, 0.5])
        rng = np.random.default_rng(0)
        sub_params = sub.random_params("mlp", d, rng)
        T, T_ref = run.sublayers("mlp", sub_params)
        p = _init_params(subject, family, k, w, 0)
        opts = _opts(subject, family, norm)
        out = run.numpy(subject.network(family, k, run.native(x), [run.native(p)], [T], opts))
        got = out / (k if run.fam.streams else 1)
        if family == "mhc":
            case = Case(op="mhc_prenorm", k=k, w=w, dynamic="dynamic" in subject.support.modes, **opts)
            T_ref = prenorm_sublayers(case, [T_ref])[0]
        ref = residual_stack(run.numpy(run.native(x)), [T_ref])
        who = _init_source(subject, family)
        what = "reduce(out) / n" if run.fam.streams else "frac_merge(out)"
        text = f"x = [1, -2, 3, 0.5], {run.fam.rows}=2, one site at {who}, MLP sublayer (seed 0)"
        stack = "x + T(c x), c = sum(h_pre) at D10's init" if family == "mhc" else "x + T(x)"
        return _verdict(text, dtype, lambda: _compare(got, ref, dtype, f"{what} vs {stack}"))
    return check


def _norm_site(subject: Subject, family: str, dtype: str, norm: str, H: np.ndarray,
               eps: Mapping[str, float] | None, seed: int = 3) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    run = _Run(subject, family, dtype)
    k, w = H.shape
    rng = np.random.default_rng(seed)
    p = run.fam.init(k, w, 0, dynamic=True, norm=norm)
    p["W_alpha"] = rng.standard_normal(p["W_alpha"].shape)
    p["W_beta"] = rng.standard_normal(p["W_beta"].shape)
    p["s_alpha"] = np.asarray(1.0)
    p["s_beta"] = np.asarray(1.0)
    got, ref, _, _ = run.site(H, p, "zero", {}, _options(norm), eps=eps)
    return got, ref, p


def _norm_eps(family: str) -> Callable[[Subject, str], Verdict]:
    def check(subject: Subject, dtype: str) -> Verdict:
        if "dynamic" not in subject.support.modes:
            raise NotApplicable("dynamic coefficients not declared")
        norms = [n for n in subject.support.norms if n in D1_EPS]
        if not norms:
            raise NotApplicable("no layernorm or rmsnorm declared")
        H = np.array([[1e-3, -1e-3, 2e-3, 0.0], [5e-4, 1e-3, -2e-3, 1e-3]])
        text = (f"{FAMILIES[family].rows}=2, {FAMILIES[family].cols}=4, one token, H ~ 1e-3 "
                f"({_fmt(H)}), random W (seed 3), gates 1, norm {' / '.join(norms)} with D1's epsilon "
                f"({', '.join(f'{n} {D1_EPS[n]:g}' for n in norms)})")

        def run() -> float:
            worst = 0.0
            for norm in norms:
                got, ref, _ = _norm_site(subject, family, dtype, norm, H, eps={})
                worst = max(worst, _compare(got, ref, dtype, f"H_out with {norm}"))
            return worst

        verdict = _verdict(text, dtype, run)
        declared = {n: e for n, e in subject.support.norm_eps.items() if e != D1_EPS.get(n)}
        if declared and verdict.verdict == "departs":
            verdict.verdict = "departs (declared)"
            verdict.detail += "; the port declares " + ", ".join(f"{n} eps {e:g}" for n, e in declared.items())
        return verdict
    return check


def _scale_safe(family: str) -> Callable[[Subject, str], Verdict]:
    def check(subject: Subject, dtype: str) -> Verdict:
        if "dynamic" not in subject.support.modes:
            raise NotApplicable("dynamic coefficients not declared")
        norms = [n for n in subject.support.norms if n in D1_EPS]
        if not norms:
            raise NotApplicable("no layernorm or rmsnorm declared")
        base = np.array([[1.0, -2.0, 3.0, 0.5], [0.25, 1.0, -1.0, 2.0]])
        scales = (1e20, 1e15, 1e-30)
        text = (f"{FAMILIES[family].rows}=2, {FAMILIES[family].cols}=4, one token, H = c * {_fmt(base)} "
                f"for c in 1e20, 1e15, 1e-30, random W (seed 3), gates 1, tanh on, norm {' / '.join(norms)}")

        def run() -> float:
            worst = 0.0
            for norm in norms:
                for c in scales:
                    got, ref, _ = _norm_site(subject, family, dtype, norm, base * c, eps=None)
                    worst = max(worst, _compare(got / c, ref / c, dtype, f"H_out / c at c = {c:g} with {norm}"))
            return worst

        return _verdict(text, dtype, run)
    return check


def _empty(family: str) -> Callable[[Subject, str], Verdict]:
    def check(subject: Subject, dtype: str) -> Verdict:
        run = _Run(subject, family, dtype)
        subject.gradient_mode(family)
        dynamic, norm = "dynamic" in subject.support.modes, subject.support.norms[0]
        k, w = 2, 4
        fam = run.fam
        rng = np.random.default_rng(5)
        p = fam.random_params(k, w, rng, dynamic=dynamic, norm=norm)
        d = fam.model_width(k, w)
        sub_params = sub.random_params("mlp", d, rng)
        T, _ = run.sublayers("mlp", sub_params)
        H = np.zeros((0, k, w))
        H_n, p_n = run.native(H), run.native(p)
        text = f"H of shape (0, {k}, {w}) (no tokens), random dynamic parameters, MLP sublayer"

        def go() -> float:
            out = subject.site(family, H_n, p_n, T, _opts(subject, family, norm))
            if run.numpy(out).shape != H.shape:
                raise Departs(f"H_out: shape {run.numpy(out).shape}, expected {H.shape}")
            grads = subject.composite_vjp(family, "site", k, H_n, [p_n], [T], _opts(subject, family, norm),
                                          run.native(H))
            nonzero = {key: run.numpy(g) for key, g in grads[1].items() if np.any(run.numpy(g) != 0)}
            if nonzero:
                key, value = next(iter(nonzero.items()))
                raise Departs(f"parameter gradients over no tokens must be exactly 0; g_params[{key!r}] = "
                              f"{_fmt(value)}" + (f" (and {len(nonzero) - 1} more keys)" if len(nonzero) > 1 else ""))
            return 0.0
        return _verdict(text, dtype, go)
    return check


def _mixed(family: str) -> Callable[[Subject, str], Verdict]:
    def check(subject: Subject, dtype: str) -> Verdict:
        reason = subject.mixed_reason()
        if reason:
            raise NotApplicable(reason)
        half = subject.half
        run = _Run(subject, family, half)
        dynamic, norm = "dynamic" in subject.support.modes, subject.support.norms[0]
        k, w = 3, 4
        fam = run.fam
        rng = np.random.default_rng(6)
        p = fam.random_params(k, w, rng, dynamic=dynamic, norm=norm)
        d = fam.model_width(k, w)
        T, T_ref = run.sublayers("mlp", sub.random_params("mlp", d, rng), half)
        H = rng.standard_normal((2, k, w))
        H_n, p_n = run.native(H, half), run.native(p, "float32")
        text = f"H {half} of shape (2, {k}, {w}), parameters float32, MLP sublayer in {half}"

        def go() -> float:
            out = subject.site(family, H_n, p_n, T, _opts(subject, family, norm))
            got_dtype = subject.backend.dtype_name(out)
            if got_dtype != half:
                raise Departs(f"H_out: dtype {got_dtype}, expected the state's dtype {half} (decision D12)")
            ref, _ = site_forward(ReferenceOps(subject.support.norm_eps), fam, run.numpy(H_n),
                                  {key: run.numpy(v) for key, v in p_n.items()}, T_ref, _opts(subject, family, norm))
            return _compare(run.numpy(out), np.asarray(ref), half, "H_out")
        return _verdict(text, half, go)
    return check


def _verdict(text: str, dtype: str, run: Callable[[], float]) -> Verdict:
    try:
        ratio = run()
    except Departs as exc:
        return Verdict("departs", text, exc.detail, dtype, exc.ratio)
    except NotApplicable:
        raise
    except Exception as exc:  # the port raised on valid input
        return Verdict("error", text, f"{type(exc).__name__}: {exc}", dtype)
    return Verdict("holds", text, "", dtype, ratio)


# --- mHC ----------------------------------------------------------------------------------------


def _mhc_b(n: int, pre: Any = None, post: Any = None, res: Any = None) -> np.ndarray:
    """mHC's bias ``b = [b_pre (n) | b_post (n) | b_res (n^2, row-major (out, in))]``, zeros unless given."""
    parts = [np.zeros(n) if pre is None else np.asarray(pre, float),
             np.zeros(n) if post is None else np.asarray(post, float),
             np.zeros(n * n) if res is None else np.asarray(res, float).reshape(-1)]
    return np.concatenate(parts)


def _mhc_site(subject: Subject, dtype: str, H: np.ndarray, b: np.ndarray, kind: str,
              sub_params: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, sub.Sublayer, sub.Sublayer]:
    """One mHC site whose logits are ``b`` (static, or dynamic with ``phi = 0``), on the port and
    on the reference."""
    run = _Run(subject, "mhc", dtype)
    dynamic = "static" not in subject.support.modes
    p = _params(run.fam, H.shape[-2], H.shape[-1], dynamic, "layernorm", b=b)
    return run.site(H, p, kind, sub_params, _mhc_options(subject))


def _sinkhorn_op(subject: Subject, dtype: str, Z: np.ndarray, what: str, text: str) -> Verdict:
    """A Sinkhorn property through the port's ``sinkhorn`` op, for a port that declares the op but
    no mHC site (``what``: ``"row sums"`` or ``"P"``)."""
    if not subject.support.has_op("sinkhorn"):
        raise NotApplicable("neither an mHC site nor the sinkhorn op declared")
    backend = subject.backend
    options = _mhc_options(subject)
    Z_n = backend.asarray(Z, dtype, subject.device)
    Z_r = np.asarray(backend.to_numpy(Z_n), dtype=np.float64)
    expected = np.asarray(ReferenceOps().call("sinkhorn", Z_r, **options))

    def go() -> float:
        got = np.asarray(backend.to_numpy(backend.sinkhorn(Z_n, **options)), dtype=np.float64)
        if what == "row sums":
            return _compare(got.sum(axis=-1), expected.sum(axis=-1), dtype, "the row sums of sinkhorn(Z)")
        return _compare(got, expected, dtype, "sinkhorn(Z)")
    return _verdict(text + " (through the port's sinkhorn op)", dtype, go)


def _mhc_order(subject: Subject, dtype: str) -> Verdict:
    H = np.ones((2, 1))
    res = [[8.0, 0.0], [8.0, -8.0]]
    if subject.support.site_entry("mhc") is None:
        return _sinkhorn_op(subject, dtype, np.array(res), "row sums",
                            "n=2, Z = [[8, 0], [8, -8]], 20 iterations: the row sums of h_res (rows then columns "
                            "would give [1.0179, 0.9821])")
    got, ref, _, _ = _mhc_site(subject, dtype, H, _mhc_b(2, res=res), "zero", {})
    text = ("n=2, d=1, one token, equal streams H = [[1], [1]], residual logits [[8, 0], [8, -8]], b_pre = "
            "b_post = 0, branch output 0: H_out = the row sums of h_res (rows then columns would give "
            "[1.0179, 0.9821])")
    return _verdict(text, dtype, lambda: _compare(got, ref, dtype, "H_out (row sums of h_res)"))


def _mhc_mixing(subject: Subject, dtype: str) -> Verdict:
    H = np.array([[1.0], [2.0], [3.0]])
    res = [[0.0, 6.0, 0.0], [0.0, 0.0, 6.0], [6.0, 0.0, 0.0]]
    got, ref, _, _ = _mhc_site(subject, dtype, H, _mhc_b(3, res=res), "zero", {})
    text = ("n=3, d=1, one token, H = [[1], [2], [3]], residual logits 6 at (out 0, in 1), (1, 2), (2, 0) and 0 "
            "elsewhere, branch output 0: output stream i takes input stream i+1 (h_res[i, j]: input j to output i)")
    return _verdict(text, dtype, lambda: _compare(got, ref, dtype, "H_out = h_res H"))


def _mhc_read(subject: Subject, dtype: str) -> Verdict:
    H = np.array([[1.0], [10.0]])
    _, _, T, T_ref = _mhc_site(subject, dtype, H, _mhc_b(2, pre=[0.0, 2.0]), "identity", {})
    text = "n=2, d=1, one token, H = [[1], [10]], b_pre = [0, 2]: h0 = sum_i sigmoid(b_pre[i]) H[i] = 9.309"
    return _verdict(text, dtype, lambda: _compare(T.inputs[-1], T_ref.inputs[-1], dtype, "the sublayer's input h0"))


def _mhc_write(subject: Subject, dtype: str) -> Verdict:
    H = np.zeros((2, 1))
    got, ref, _, _ = _mhc_site(subject, dtype, H, _mhc_b(2, post=[0.0, 1.0]), "const", {"c": np.array([1.0])})
    text = "n=2, d=1, one token, H = 0, b_post = [0, 1], branch output y = [1]: H_out[i] = 2 sigmoid(b_post[i]) y"
    return _verdict(text, dtype, lambda: _compare(got, ref, dtype, "H_out"))


def _init_source(subject: Subject, family: str) -> str:
    """Whose initial parameters a property used: the port's own, or the decision's (D10 for mHC)."""
    if family in subject.support.initialisers:
        return "the port's own init"
    return "D10's init" if family == "mhc" else "D2's init"


def _mhc_dynamic_site(subject: Subject, dtype: str, H: np.ndarray, seed: int, kind: str = "identity"
                      ) -> tuple[np.ndarray, np.ndarray, sub.Sublayer, sub.Sublayer]:
    run = _Run(subject, "mhc", dtype)
    if "dynamic" not in subject.support.modes:
        raise NotApplicable("dynamic coefficients not declared")
    n, d = H.shape
    rng = np.random.default_rng(seed)
    p = run.fam.init(n, d, 0, dynamic=True, norm="layernorm")
    p["phi"] = rng.standard_normal(p["phi"].shape)
    # the residual gate 0 keeps h_res = Sinkhorn(exp(I)) (b_res = I at init), which either
    # Sinkhorn order gives exactly: these properties test the RMS and the projection, and a
    # port's Sinkhorn order is reported once, by mhc-sinkhorn-order
    p["gates"] = np.array([1.0, 1.0, 0.0])
    return run.site(H, p, kind, {}, _mhc_options(subject))


def _mhc_flattened(subject: Subject, dtype: str) -> Verdict:
    H = np.array([[1.0, 2.0], [30.0, -40.0]])
    got, ref, T, T_ref = _mhc_dynamic_site(subject, dtype, H, 8)
    text = ("n=2, d=2, one token, H = [[1, 2], [30, -40]] (streams of different size), random phi (seed 8), "
            "gates (1, 1, 0), identity sublayer: one RMS scaling of all n*d values, then phi (n*d, 2n+n^2)")
    return _verdict(text, dtype, lambda: max(_compare(T.inputs[-1], T_ref.inputs[-1], dtype, "h0"),
                                             _compare(got, ref, dtype, "H_out")))


def _mhc_rms_eps(subject: Subject, dtype: str) -> Verdict:
    H = np.array([[1e-3, -1e-3], [2e-3, 5e-4]])
    got, ref, T, T_ref = _mhc_dynamic_site(subject, dtype, H, 3)
    text = (f"n=2, d=2, one token, H ~ 1e-3 ({_fmt(H)}: mean(v^2) = 1.6e-6, near the epsilon), random phi "
            "(seed 3), gates (1, 1, 0)")
    return _verdict(text, dtype, lambda: max(_compare(T.inputs[-1], T_ref.inputs[-1], dtype, "h0"),
                                             _compare(got, ref, dtype, "H_out")))


def _mhc_scale_safe(subject: Subject, dtype: str) -> Verdict:
    base = np.array([[1.0, -2.0, 3.0, 0.5], [0.25, 1.0, -1.0, 2.0]])
    text = f"n=2, d=4, one token, H = c * {_fmt(base)} for c in 1e20, 1e15, 1e-30, random phi (seed 3), gates (1, 1, 0)"

    def go() -> float:
        worst = 0.0
        for c in (1e20, 1e15, 1e-30):
            got, ref, _, _ = _mhc_dynamic_site(subject, dtype, base * c, 3, "zero")
            worst = max(worst, _compare(got / c, ref / c, dtype, f"H_out / c at c = {c:g}"))
        return worst
    if "dynamic" not in subject.support.modes:
        raise NotApplicable("dynamic coefficients not declared")
    return _verdict(text, dtype, go)


def _mhc_large_logits(subject: Subject, dtype: str) -> Verdict:
    if subject.support.site_entry("mhc") is None:
        return _sinkhorn_op(subject, dtype, np.array([[91.0, 90.0], [90.0, 92.0]]), "P",
                            "n=2, Z = [[91, 90], [90, 92]] (a plain exp overflows float32 above 88.7: inf / inf)")
    H = np.array([[1.0], [2.0]])
    b = _mhc_b(2, pre=[100.0, -100.0], post=[-100.0, 100.0], res=[[91.0, 90.0], [90.0, 92.0]])
    got, ref, T, T_ref = _mhc_site(subject, dtype, H, b, "identity", {})
    text = ("n=2, d=1, one token, H = [[1], [2]], b_pre = [100, -100], b_post = [-100, 100], residual logits "
            "[[91, 90], [90, 92]] (a plain exp overflows float32 above 88.7: inf / inf)")
    return _verdict(text, dtype, lambda: max(_compare(T.inputs[-1], T_ref.inputs[-1], dtype, "h0"),
                                             _compare(got, ref, dtype, "H_out")))


def _mhc_beyond_four(subject: Subject, dtype: str) -> Verdict:
    k = 8
    if subject.support.max_rows is not None and subject.support.max_rows < k:
        raise NotApplicable(f"max_rows {subject.support.max_rows} < 8")
    rng = np.random.default_rng(8)
    b = _mhc_b(k, pre=rng.standard_normal(k), post=rng.standard_normal(k), res=2 * rng.standard_normal((k, k)))
    H = np.arange(1.0, k + 1)[:, None]
    got, ref, T, T_ref = _mhc_site(subject, dtype, H, b, "identity", {})
    text = "n=8, d=1, one token, H = [[1], ..., [8]], random logits b (seed 8): the read h0 and the residual H_out"
    return _verdict(text, dtype, lambda: max(_compare(T.inputs[-1], T_ref.inputs[-1], dtype, "h0 (the read)"),
                                             _compare(got, ref, dtype, "H_out (the mix)")))


def _mhc_properties() -> list[Property]:
    up = "mHC"
    return [
        Property("mhc-sinkhorn-order", "mhc", f"{up}: Sinkhorn normalises columns then rows, so the rows of h_res "
                 "sum to 1", "mHC paper Eq. 9 (decision D7)", _mhc_order),
        Property("mhc-mixing", "mhc", f"{up}: mixing orientation, h_res[i, j] carries input stream j to output "
                 "stream i", "mHC paper Eq. 3 (decision D8)", _mhc_mixing),
        Property("mhc-read", "mhc", f"{up}: the read is h0 = sum_i h_pre[i] H[i], h_pre = sigmoid", "mHC paper "
                 "Eqs. 3, 8", _mhc_read),
        Property("mhc-write", "mhc", f"{up}: the write adds h_post[i] y to stream i, h_post = 2 sigmoid",
                 "mHC paper Eqs. 3, 8", _mhc_write),
        Property("mhc-flattened", "mhc", f"{up}: every coefficient sees the whole token (one RMS scaling of the "
                 "flattened n*d state, then phi)", "mHC paper Eq. 7 (decision D9)", _mhc_flattened),
        Property("mhc-rms-eps", "mhc", f"{up}: the RMS scaling's epsilon is 1e-6", "decision D9", _mhc_rms_eps),
        Property("mhc-large-logits", "mhc", f"{up}: logits above 88 give finite, exact coefficients "
                 "(max-shifted exp, stable sigmoid)", "decision D7", _mhc_large_logits),
        Property("mhc-beyond-4", "mhc", f"{up}: n = 8, streams beyond the fourth take part",
                 "any n (decision D13)", _mhc_beyond_four),
        Property("mhc-ends", "mhc", f"{up}: expand copies x to every stream and reduce sums the streams",
                 "decision D11 (A15)", _ends("mhc")),
        Property("mhc-init-read", "mhc", f"{up}: at init the read is c x, c = sum(h_pre) (D10 hc_like: "
                 "sigmoid(1) + (n - 1)/2)", "decision D10", _init_read("mhc")),
        Property("mhc-init-residual", "mhc", f"{up}: at init the residual mix is Sinkhorn(I) (D10 hc_like)",
                 "decision D10", _init_residual("mhc")),
        Property("mhc-init-prenorm", "mhc", f"{up}: at init a network equals the Pre-Norm stack x + T(c x) "
                 "(after reduce / n)", "math.md 4.4 (decision D10)", _init_prenorm("mhc")),
        Property("mhc-scale-safe", "mhc", f"{up}: coefficients stay correct at activations of 1e20, 1e15 and "
                 "1e-30 (scale-safe RMS)", "decision D12", _mhc_scale_safe),
        Property("mhc-empty", "mhc", f"{up}: no tokens (a leading axis of size 0) gives an empty output and "
                 "parameter gradients of exactly 0", "decision D13", _empty("mhc")),
        Property("mhc-mixed", "mhc", f"{up}: float32 parameters on a half-precision state keep the state's dtype",
                 "decision D12", _mixed("mhc")),
    ]


def _family_properties(family: str, read_source: str, write_source: str, init_source: str) -> list[Property]:
    rows = FAMILIES[family].rows
    up = family.upper()
    if family == "hc":
        write = "the write sends y to every stream, scaled by beta (H_out = B^T y^T + H_res)"
        read = "the read is the weighted sum h0 = A_m^T H"
        ends = "expand copies x to every stream and reduce sums the streams"
        init_read = "at init the read is the layer input (A_m = e_(k mod n) on equal streams)"
    else:
        write = "the write sends fraction j of y to fraction j only, scaled by beta_j (diagonal B)"
        read = "the read concatenates the fractions of Y^T H"
        ends = "frac_split takes contiguous fractions and frac_merge concatenates them"
        init_read = "at init the read is the layer input (Y = I)"
    return [
        Property(f"{family}-write", family, f"{up}: {write}", write_source, _write(family)),
        Property(f"{family}-mixing", family,
                 f"{up}: mixing orientation, {'A_r' if family == 'hc' else 'A'}[i, j] carries input {i_of(family)} "
                 f"i to output {i_of(family)} j", "decision D8", _mixing(family)),
        Property(f"{family}-read", family, f"{up}: {read}", read_source, _read(family)),
        Property(f"{family}-beyond-4", family, f"{up}: {rows} = 8, {i_of(family)}s beyond the fourth take part",
                 "any n/m (decision D13)", _beyond_four(family)),
        Property(f"{family}-ends", family, f"{up}: {ends}", "decision D11", _ends(family)),
        Property(f"{family}-init-read", family, f"{up}: {init_read}", init_source, _init_read(family)),
        Property(f"{family}-init-residual", family, f"{up}: at init the residual path is the identity",
                 init_source, _init_residual(family)),
        Property(f"{family}-init-prenorm", family,
                 f"{up}: at init a network equals the Pre-Norm stack x + T(x)"
                 + (" (after reduce / n)" if family == "hc" else ""), init_source, _init_prenorm(family)),
        Property(f"{family}-norm-eps", family, f"{up}: norm epsilon as decision D1 (layernorm 1e-5, rmsnorm 1e-6)",
                 "decision D1", _norm_eps(family)),
        Property(f"{family}-scale-safe", family,
                 f"{up}: coefficients stay correct at activations of 1e20, 1e15 and 1e-30 (scale-safe norm)",
                 "decision D12", _scale_safe(family)),
        Property(f"{family}-empty", family,
                 f"{up}: no tokens (a leading axis of size 0) gives an empty output and parameter gradients of "
                 "exactly 0", "decision D13", _empty(family)),
        Property(f"{family}-mixed", family,
                 f"{up}: float32 parameters on a half-precision state keep the state's dtype", "decision D12",
                 _mixed(family)),
    ]


def i_of(family: str) -> str:
    return "stream" if family == "hc" else "fraction"


PROPERTIES: list[Property] = [
    *_family_properties("hc", "HC paper Eq. 2", "HC paper Eq. 2", "HC paper Eq. 14 (decision D2)"),
    *_family_properties("fc", "FC paper Eq. 8 (decision D6)", "FC paper Eq. 8 (decision D6)",
                        "FC paper Eq. 15 (decision D2)"),
    *_mhc_properties(),
]
"""Every named property, by family."""

PROPERTY_IDS = tuple(p.id for p in PROPERTIES)


def property_dtype(prop: Property, selected: Sequence[str]) -> str:
    """The dtype a property runs in, among the dtypes ``selected`` for the run: float32 for scale
    safety (where overflow happens), else the most precise."""
    if prop.id.endswith(("scale-safe", "large-logits")):
        return _dtype(selected, ("float32", "bfloat16", "float64"))
    return _dtype(selected)


def run_property(subject: Subject, prop: Property, selected: Sequence[str] | None = None,
                 mixed: bool = True) -> Verdict:
    """Check ``prop`` on ``subject`` in one of the ``selected`` dtypes (default: all the port
    supports); raises :class:`NotApplicable` when it does not apply."""
    if prop.family not in subject.support.families:
        raise NotApplicable(f"family {prop.family} not declared")
    if prop.id.endswith("-mixed"):
        reason = subject.mixed_reason() or ("" if mixed else "mixed precision not selected")
        if reason:
            raise NotApplicable(reason)
        return prop.check(subject, "mixed")
    return prop.check(subject, property_dtype(prop, subject.dtypes if selected is None else selected))

