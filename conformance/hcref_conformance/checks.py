"""The checks the suite runs, each on one :class:`~hcref_conformance.cases.Case`.

Every check builds the case's float64 inputs, rounds them through the port (``asarray`` then
``to_numpy``), runs the float64 reference on the rounded values and the port on its native
arrays, and compares with :mod:`hcref.tolerances`. Each returns the worst ``error / tolerance``
ratio it saw (<= 1) or raises :class:`~hcref_conformance.compare.ConformanceError` naming the
op and a reason class; any exception the port raises on valid input becomes such a failure too.

    forward   every output of one op, with its shape and dtype (decision D12)
    vjp       the port's ``vjp`` of one op against the reference ``<op>_vjp``
    site      coeffs -> width -> sublayer -> depth (forward and VJP), or the port's own ``site``
    network   begin -> sites -> end (forward and VJP)
    prenorm   a network at its initial parameters (the port's own initialiser when it declares
              one) equals the Pre-Norm residual stack ``h <- h + T(h)`` (HC: after / n; mHC:
              after / n, with ``T(c h)``, ``c = sum(h_pre)`` at D10's init, math.md 4.4: the
              stack a scale-invariant sublayer would make exactly ``h + T(h)``)

Tolerances are :func:`hcref.tolerances.tolerance` of the dtype, kind and contraction length;
anything computed through Sinkhorn (``sinkhorn``, ``mhc_coeffs``, mHC sites and networks) has
both parts multiplied by :func:`~hcref_conformance.cases.sinkhorn_conditioning` of its logits
(``max(1, max|Z|)``, largest over the sites).

The sublayer ``T`` of sites and networks is the suite's (:mod:`hcref_conformance.sublayer`):
Python operators only, never the port's ops. A leading axis of size 0 must give empty outputs
and parameter gradients that are exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hcref.optable import ALL_OPS
from hcref.tolerances import Tolerance, tolerance

from . import sublayer as sub
from .cases import (
    MIXED,
    Case,
    describe,
    input_dtypes,
    lowest,
    repro_snippet,
    result_dtype,
    sinkhorn_conditioning,
    sinkhorn_logits,
    to_backend,
    to_reference,
)
from .compare import ConformanceError, Context, assert_close, assert_exact_zero, assert_structure, error_ratio
from .emulate import RoundedSublayer, RoundingBackend
from .families import (
    FAMILIES,
    PortOps,
    ReferenceOps,
    network_backward,
    network_forward,
    residual_stack,
    site_backward,
    site_forward,
)
from .loading import spec_of
from .strategies import DTYPE_MAX, DTYPE_TINY, requirements
from .subject import NotApplicable, Subject, subject_for

RANGE = {"float16": 2.0**10}
"""Largest reference magnitude a case may reach in a dtype with a small range: float16 tops out
at 65504, so a case whose results reach 1024 (products of them overflow) is out of range."""


class OutOfRange(Exception):
    """The case's values do not fit the dtype's range: a bad draw, rejected (not a failure)."""


class IllConditioned(OutOfRange):
    """The case is too ill-conditioned for the dtype: rounding between ops alone moves the
    result by most of the tolerance (rejected, not a failure)."""


REJECT_ABOVE = 0.25
"""A site or network case is rejected (ill-conditioned) when an ideal port whose ops err by a
few roundoffs and store their outputs in the test dtype (:mod:`hcref_conformance.emulate`)
already reaches this fraction of the tolerance: errors would then measure the case's
conditioning, not the port."""

CURRENT: dict[str, Any] = {}
"""The case being checked (read by the report's observer to say where a worst error occurred)."""


def _tuple(out: Any) -> tuple[Any, ...]:
    return out if isinstance(out, tuple) else (out,)


def _tree_max(tree: Any) -> float:
    values = tree.values() if isinstance(tree, Mapping) else [tree]
    return max((float(np.max(np.abs(v))) for v in values if np.size(v)), default=0.0)


def check_range(dtype: str, refs: Sequence[Any]) -> None:
    """Raise :class:`OutOfRange` when a reference result exceeds :data:`RANGE` for ``dtype``."""
    limit = RANGE.get(dtype)
    if limit is not None and max((_tree_max(r) for r in refs), default=0.0) > limit:
        raise OutOfRange(f"reference results exceed {limit:g}, beyond what {dtype} can carry through the op")


def check_holds(case: Case, dtype: str) -> None:
    """Raise :class:`OutOfRange` when ``dtype`` cannot hold the case's activation scale."""
    if case.scale * 100 > DTYPE_MAX[dtype] or 0 < case.scale < DTYPE_TINY[dtype]:
        raise OutOfRange(f"{dtype} cannot hold activations of {case.scale:g}")


def applicable(subject: Subject, case: Case) -> None:
    """Raise :class:`NotApplicable` when the port does not declare what ``case`` needs."""
    support = subject.support
    if case.op in ALL_OPS and not support.has_op(case.op):
        raise NotApplicable(f"op {case.op} not declared")
    if case.op in ALL_OPS and case.family not in ("ends", *support.families):
        raise NotApplicable(f"family {case.family} not declared")
    if case.op not in ALL_OPS:
        subject.entry(case.family)
    reason = requirements(case, support)
    if reason:
        raise NotApplicable(reason)


def _context(subject: Subject, case: Case, dtype: str, check: str, names: Sequence[str], values: Sequence[Any],
             dtypes: Sequence[str]) -> Context:
    options = ", ".join(f"{k}={v!r}" for k, v in case.options.items())
    if check in ("site", "network", "prenorm"):
        entry = subject.support.site_entry(case.family)
        how = "the port's site()" if entry == "module" else "composed from the port's ops"
        extra = f"sublayer {sub.describe(case.sublayer)}; site: {how}"
        options += f"{'; ' if options else ''}{extra}"
    if dtype == MIXED:
        options += f"{'; ' if options else ''}mixed precision: state {subject.half}, parameters float32"
    return Context(
        op=case.op, check=check, backend=subject.label, dtype=dtype, device=subject.device,
        inputs=describe(values, names, dtypes) + f"; {case!r}", options=options,
        repro=repro_snippet(spec_of(subject.backend), case, dtype, subject.device, check),
    )


def _call(ctx: Context, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``; any exception becomes a failure with the header and repro."""
    __tracebackhide__ = True
    try:
        return fn()
    except (ConformanceError, NotApplicable):
        raise
    except NotImplementedError as exc:
        raise ctx.fail(f"{what} raised NotImplementedError: {exc}", reason="unsupported") from exc
    except Exception as exc:
        raise ctx.fail(f"{what} raised {type(exc).__name__}: {exc}", reason="exception") from exc


def _compare_tree(ctx: Context, backend: Any, label: str, out: Any, ref: Any, dtype: str, kind: str,
                  contraction: int, composite: bool = False, scale: float | None = None,
                  tol_dtype: str | None = None, zero_lead: bool = False, conditioning: float = 1.0) -> float:
    """Compare an array or a mapping of arrays (structure, dtype, values); a mapping (parameter
    cotangents) is scaled as one vector by the largest ``max|ref|`` of its keys. ``conditioning``
    multiplies the tolerance (Sinkhorn's, :func:`~hcref_conformance.cases.sinkhorn_conditioning`)."""
    __tracebackhide__ = True
    tol = _scaled(tolerance(tol_dtype or dtype, kind, contraction=contraction, composite=composite), conditioning)
    reason = "gradient" if kind == "gradient" else "value"
    if isinstance(ref, Mapping):
        if not isinstance(out, Mapping) or set(out) != set(ref):
            keys = sorted(out) if isinstance(out, Mapping) else type(out).__name__
            raise ctx.fail(f"{label}: expected a mapping with keys {sorted(ref)}, got {keys}", reason=reason,
                           label=label)
        whole = _tree_max(ref) if scale is None else scale
        return max((_compare_tree(ctx, backend, f"{label}[{key!r}]", out[key], ref[key], dtype, kind, contraction,
                                  composite, whole, tol_dtype, zero_lead, conditioning) for key in ref), default=0.0)
    if out is None:
        raise ctx.fail(f"{label}: got None, expected an array of shape {np.shape(ref)}", reason=reason, label=label)
    got = np.asarray(backend.to_numpy(out))
    assert_structure(ctx, label, np.shape(ref), dtype, got.shape, backend.dtype_name(out))
    if zero_lead:
        assert_exact_zero(ctx, label, got)
    return assert_close(ctx, label, got, np.asarray(ref, dtype=np.float64), tol, scale, reason=reason)


def _scaled(tol: Tolerance, factor: float) -> Tolerance:
    return tol if factor == 1.0 else Tolerance(tol.rtol * factor, tol.atol * factor)


def op_conditioning(op: str, rounded: Sequence[Any]) -> float:
    """Sinkhorn's conditioning factor of an op's (rounded, float64) inputs; 1 for ops without Sinkhorn."""
    if op == "sinkhorn":
        return sinkhorn_conditioning(np.asarray(rounded[0]))
    if op == "mhc_coeffs":
        return sinkhorn_conditioning(sinkhorn_logits(rounded[0], rounded[1]))
    return 1.0


def _cotangents(backend: Any, case: Case, refs: Sequence[np.ndarray], dtypes: Sequence[str], device: str
                ) -> tuple[list[Any], list[np.ndarray]]:
    rng = case.cotangent_rng()
    native = to_backend(backend, [rng.standard_normal(np.shape(r)) for r in refs], dtypes, device)
    return native, to_reference(backend, native)


def _prepare_op(subject: Subject, case: Case, dtype: str, check: str
                ) -> tuple[Any, list[Any], list[Any], dict[str, str], Context, tuple[Any, ...], ReferenceOps]:
    applicable(subject, case)
    check_holds(case, subject.half if dtype == MIXED else dtype)
    spec = ALL_OPS[case.op]
    dts = input_dtypes(spec.inputs, dtype, subject.half)
    backend = subject.backend
    native = to_backend(backend, case.inputs(), dts, subject.device)
    rounded = to_reference(backend, native)
    ctx = _context(subject, case, dtype, check, spec.inputs, rounded, dts)
    ref_ns = ReferenceOps(subject.support.norm_eps)
    refs = _tuple(ref_ns.call(case.op, *rounded, **case.options))
    check_range(lowest(*{d for d, x in zip(dts, rounded, strict=True) if not isinstance(x, int)}), refs)
    arrays = {name: d for name, d, x in zip(spec.inputs, dts, rounded, strict=True) if not isinstance(x, int)}
    return spec, native, rounded, arrays, ctx, refs, ref_ns


def check_forward(subject: Subject, case: Case, dtype: str) -> float:
    """Every output of ``port.<op>`` against ``hcref.<op>``, with its shape and dtype."""
    __tracebackhide__ = True
    spec, native, rounded, arrays, ctx, refs, _ = _prepare_op(subject, case, dtype, "forward")
    outs = _tuple(_call(ctx, case.op, lambda: getattr(subject.backend, case.op)(*native, **case.options)))
    if len(outs) != len(refs):
        raise ctx.fail(f"expected {len(refs)} outputs {spec.outputs}, got {len(outs)}", reason="value")
    worst = 0.0
    factor = op_conditioning(case.op, rounded)
    for name, o, r in zip(spec.outputs, outs, refs, strict=True):
        out_dtype = result_dtype(case.op, name, arrays)
        worst = max(worst, _compare_tree(ctx, subject.backend, name, o, r, out_dtype, "forward", case.contraction,
                                         conditioning=factor))
    return worst


def check_vjp(subject: Subject, case: Case, dtype: str) -> float:
    """``port.vjp`` of the op against ``hcref.<op>_vjp`` for the same random cotangents."""
    __tracebackhide__ = True
    spec, native, rounded, arrays, ctx, refs, ref_ns = _prepare_op(subject, case, dtype, "vjp")
    out_dtypes = [result_dtype(case.op, name, arrays) for name in spec.outputs]
    cot_native, cot_rounded = _cotangents(subject.backend, case, refs, out_dtypes, subject.device)
    positions = [spec.inputs.index(name) for name in spec.differentiable]
    function = getattr(subject.backend, case.op)

    def fn(*primals: Any) -> Any:
        args = list(native)
        for i, p in zip(positions, primals, strict=True):
            args[i] = p
        return function(*args, **case.options)

    grads = _call(ctx, "vjp", lambda: subject.backend.vjp(fn, [native[i] for i in positions], tuple(cot_native)))
    ref_grads = ref_ns.vjp(case.op, rounded, cot_rounded, **case.options)
    if len(grads) != len(ref_grads):
        raise ctx.fail(f"vjp: expected {len(ref_grads)} cotangents {spec.differentiable}, got {len(grads)}",
                       reason="gradient")
    # The VJP is judged as one vector (scale: the largest of all its cotangents), so a tiny
    # cotangent that is a sum with cancellation (g_H of a norm over large inputs) is held to
    # the accuracy of the whole gradient rather than to its own magnitude.
    whole = max(_tree_max(r) for r in ref_grads)
    zero_lead = 0 in case.lead
    worst = 0.0
    factor = op_conditioning(case.op, rounded)
    for name, g, r in zip(spec.differentiable, grads, ref_grads, strict=True):
        worst = max(worst, _compare_tree(ctx, subject.backend, f"g_{name}", g, r, arrays[name], "gradient",
                                         case.contraction, False, whole,
                                         zero_lead=zero_lead and isinstance(r, Mapping), conditioning=factor))
    return worst


# --- composites -----------------------------------------------------------------------------


def composite_inputs(case: Case, subject: Subject) -> tuple[np.ndarray, list[dict[str, np.ndarray]],
                                                            list[dict[str, np.ndarray]]]:
    """``(state, connection params per site, sublayer params per site)`` as float64 NumPy.

    ``state`` is H (lead, k, w) for a site and x (lead, d) for a network or Pre-Norm check;
    initial parameters come from the port's own initialiser when it declares one.
    """
    fam = FAMILIES[case.family]
    rng = np.random.default_rng(case.seed)
    d = fam.model_width(case.k, case.w)
    n_sites = 1 if case.kind == "site" else case.sites
    shape = (case.k, case.w) if case.kind == "site" else (d,)
    state = rng.standard_normal(case.lead + shape) * case.scale
    params = []
    for i in range(n_sites):
        if case.init or case.kind == "prenorm":
            p = subject.init(case.family, case.k, case.w, case.layer_index + i, dynamic=case.dynamic, norm=case.norm)
        else:
            p = fam.random_params(case.k, case.w, rng, dynamic=case.dynamic, norm=case.norm)
        params.append(case.with_gates(p))
    subs = [sub.random_params(case.sublayer, d, rng) for _ in range(n_sites)]
    return state, params, subs


def check_composite(subject: Subject, case: Case, dtype: str) -> float:
    """Site, network or Pre-Norm-at-init check (``case.op`` in :data:`~hcref_conformance.strategies.COMPOSITES`)."""
    __tracebackhide__ = True
    applicable(subject, case)
    check_holds(case, subject.half if dtype == MIXED else dtype)
    backend, device = subject.backend, subject.device
    family, kind = case.family, case.kind
    fam = FAMILIES[family]
    state_dtype = subject.half if dtype == MIXED else dtype
    param_dtype = "float32" if dtype == MIXED else dtype
    try:
        state_np, params_np, subs_np = composite_inputs(case, subject)
    except NotApplicable:
        raise
    except Exception as exc:  # the port's own initialiser raised
        ctx = _context(subject, case, dtype, kind, [], [], [])
        raise ctx.fail(f"the port's init_{family} raised {type(exc).__name__}: {exc}", reason="exception") from exc
    state, *params = to_backend(backend, [state_np, *params_np], [state_dtype] + [param_dtype] * len(params_np),
                                device)
    state_r, *params_r = to_reference(backend, [state, *params])

    def native_array(x: np.ndarray) -> Any:
        return backend.asarray(x, state_dtype, device)

    def rounded_array(x: np.ndarray) -> np.ndarray:
        return np.asarray(backend.to_numpy(native_array(x)), dtype=np.float64)

    T_native = [sub.build(case.sublayer, P, native_array) for P in subs_np]
    T_ref = [sub.build(case.sublayer, P, rounded_array) for P in subs_np]
    names = ["H" if kind == "site" else "x"] + [f"params[{i}]" for i in range(len(params))]
    ctx = _context(subject, case, dtype, kind, names, [state_r, *params_r],
                   [state_dtype] + [param_dtype] * len(params))
    opts = case.options
    ref_ns = ReferenceOps(subject.support.norm_eps)
    contraction = max(case.contraction, 2 * fam.model_width(case.k, case.w))
    factor = 1.0
    if kind == "site":
        ref, ref_tape = site_forward(ref_ns, fam, state_r, params_r[0], T_ref[0], opts)
        if family == "mhc":
            factor = sinkhorn_conditioning(sinkhorn_logits(state_r, params_r[0]))
    elif kind == "network":
        ref, ref_tape = network_forward(ref_ns, fam, case.k, state_r, params_r, T_ref, opts)
        if family == "mhc":
            factor = max(sinkhorn_conditioning(sinkhorn_logits(t[0], t[1])) for t in ref_tape[3])
    else:
        ref, ref_tape = residual_stack(state_r, prenorm_sublayers(case, T_ref)), ()
    check_range(state_dtype, [ref])
    # The gate measures the case's conditioning at the specification's parameters: at init those
    # of decision D2, whatever the port's own initialiser returned.
    ideal_params = params_r
    if kind == "prenorm":
        ideal_params = to_reference(backend, to_backend(backend, [
            case.with_gates(fam.init(case.k, case.w, case.layer_index + i, dynamic=case.dynamic, norm=case.norm))
            for i in range(len(params_r))], param_dtype, device))
    ideal_grads = _ideal_gate(case, state_dtype, state_r, ideal_params, T_ref, ref, contraction, factor)
    fwd_tol = _scaled(tolerance(state_dtype, "forward", contraction=contraction, composite=True), factor)
    if kind == "prenorm":
        out = _call(ctx, "network", lambda: subject.network(family, case.k, state, params, T_native, opts))
        got = np.asarray(backend.to_numpy(out), dtype=np.float64) / (case.k if fam.streams else 1)
        assert_structure(ctx, "out", np.shape(ref), state_dtype, got.shape, backend.dtype_name(out))
        what = "reduce(out) / n" if fam.streams else "frac_merge(out)"
        stack = "x + T(c x), c = sum(h_pre) at D10's init" if family == "mhc" else "x + T(x)"
        return assert_close(ctx, f"{what} vs the Pre-Norm residual stack {stack}", got, ref, fwd_tol)
    if kind == "site":
        out = _call(ctx, "site", lambda: subject.site(family, state, params[0], T_native[0], opts))
    else:
        out = _call(ctx, "network", lambda: subject.network(family, case.k, state, params, T_native, opts))
    worst = _compare_tree(ctx, backend, "H_out" if kind == "site" else "out", out, ref, state_dtype, "forward",
                          contraction, True, conditioning=factor)
    try:
        subject.gradient_mode(family)
    except NotApplicable:
        return worst
    cot_native, cot_rounded = _cotangents(backend, case, [ref], [state_dtype], device)
    grads = _call(ctx, "vjp", lambda: subject.composite_vjp(family, kind, case.k, state, params, T_native, opts,
                                                            cot_native[0]))
    if kind == "site":
        ref_grads = list(site_backward(ref_ns, fam, T_ref[0].vjp, ref_tape, cot_rounded[0], opts))
    else:
        ref_grads = network_backward(ref_ns, fam, T_ref, ref_tape, cot_rounded[0], opts)
    check_range(state_dtype, ref_grads)
    whole = max(_tree_max(r) for r in ref_grads)
    grad_tol = _scaled(tolerance(state_dtype, "gradient", contraction=contraction, composite=True), factor)
    for g, r in zip(ideal_grads(cot_rounded[0]), ref_grads, strict=True):
        if _compare_ideal(g, r, grad_tol, whole) > REJECT_ABOVE:
            raise IllConditioned(f"an ideal {state_dtype} port already uses over {REJECT_ABOVE:g} of the "
                                 "gradient tolerance")
    if len(grads) != len(ref_grads):
        raise ctx.fail(f"vjp: expected {len(ref_grads)} cotangents, got {len(grads)}", reason="gradient")
    # Composite cotangents are judged as one vector (scale `whole`): after several rounded ops,
    # a small parameter gradient that is a sum with cancellation carries the absolute error of
    # the large ones.
    zero_lead = 0 in case.lead
    for i, (name, g, r) in enumerate(zip(names, grads, ref_grads, strict=True)):
        worst = max(worst, _compare_tree(ctx, backend, f"g_{name}", g, r, state_dtype if i == 0 else param_dtype,
                                         "gradient", contraction, True, whole, tol_dtype=state_dtype,
                                         zero_lead=zero_lead and i > 0, conditioning=factor))
    return worst


def prenorm_sublayers(case: Case, sublayers: Sequence[Any]) -> list[Any]:
    """The sublayers of the Pre-Norm stack a network at init equals: ``T`` itself (HC, FC), or
    ``h -> T(c h)`` with ``c = sum(h_pre)`` of each mHC site at D10's initial parameters (whose
    ``phi = 0`` makes ``h_pre`` independent of the state; math.md 4.4)."""
    if case.family != "mhc":
        return list(sublayers)
    fam = FAMILIES["mhc"]
    out = []
    for i, T in enumerate(sublayers):
        p = case.with_gates(fam.init(case.k, case.w, case.layer_index + i, dynamic=case.dynamic, norm=case.norm))
        h_pre = ReferenceOps().call("mhc_coeffs", np.ones((case.k, case.w)), p, **case.options)[0]
        c = float(np.sum(h_pre))
        out.append(lambda h, T=T, c=c: T(c * h))
    return out


def _ideal_gate(case: Case, dtype: str, state: np.ndarray, params: list[Any], subs: list[Any], ref: np.ndarray,
                contraction: int, factor: float = 1.0) -> Callable[[np.ndarray], list[Any]]:
    """Run the composite on the ideal ``dtype`` port (:mod:`hcref_conformance.emulate`) and raise
    :class:`IllConditioned` when its forward error already exceeds :data:`REJECT_ABOVE` of the
    tolerance; return a function giving its cotangents for an output cotangent."""
    fam, kind = FAMILIES[case.family], case.kind
    ideal = RoundingBackend(dtype, case.seed)
    ns = PortOps(ideal)
    ideal_subs = [RoundedSublayer(T, ideal) for T in subs]
    if kind == "site":
        out, tape = site_forward(ns, fam, state, params[0], ideal_subs[0], case.options)
    else:
        out, tape = network_forward(ns, fam, case.k, state, params, ideal_subs, case.options)
    out = out / (case.k if kind == "prenorm" and fam.streams else 1)
    tol = _scaled(tolerance(dtype, "forward", contraction=contraction, composite=True), factor)
    ratio = error_ratio(out, np.asarray(ref), tol)
    if ratio > REJECT_ABOVE:
        raise IllConditioned(f"an ideal {dtype} port already reaches {ratio:.2g} of the forward tolerance")

    def grads(g: np.ndarray) -> list[Any]:
        if kind == "site":
            return list(site_backward(ns, fam, ideal_subs[0].vjp, tape, g, case.options))
        return network_backward(ns, fam, ideal_subs, tape, g, case.options)

    return grads


def _compare_ideal(g: Any, r: Any, tol: Any, scale: float) -> float:
    if isinstance(r, Mapping):
        return max((_compare_ideal(g[k], r[k], tol, scale) for k in r), default=0.0)
    return error_ratio(np.asarray(g), np.asarray(r), tol, scale)


CHECKS: dict[str, Callable[[Subject, Case, str], float]] = {
    "forward": check_forward,
    "vjp": check_vjp,
    "site": check_composite,
    "network": check_composite,
    "prenorm": check_composite,
}
"""Check name -> function."""


def run_check(check: str, backend: Any, case: Case, *, dtype: str, device: str = "cpu") -> float:
    """Run check ``check`` (a key of :data:`CHECKS`) on ``backend`` and return its worst error/tolerance.

    Raises :class:`~hcref_conformance.compare.ConformanceError` on a disagreement,
    :class:`OutOfRange` for a case the dtype cannot represent and
    :class:`~hcref_conformance.subject.NotApplicable` for what the port does not declare.
    """
    __tracebackhide__ = True
    CURRENT["case"] = case
    return CHECKS[check](subject_for(backend, device), case, dtype)
