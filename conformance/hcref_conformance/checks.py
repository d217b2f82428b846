"""The checks the suite runs, each on one :class:`~hcref_conformance.cases.Case`.

Every check builds the case's float64 inputs, rounds them through the backend
(``asarray`` then ``to_numpy``), runs the float64 reference on the rounded values and the
backend on its native arrays, and compares with :mod:`hcref.tolerances`. Each returns the
worst ``error / tolerance`` ratio it saw (<= 1) or raises
:class:`~hcref_conformance.compare.ConformanceError` naming the op.

    forward   every output of one op
    vjp       the backend's ``vjp`` of one op against the reference ``<op>_vjp``
    site      coeffs -> width -> sublayer -> depth (forward and VJP), ``hcref.site``
    network   expand/split -> 2 sites -> reduce/merge (forward and VJP), ``hcref.network``
    prenorm   a network at its init equals the Pre-Norm residual stack (HC: after / n)

The sublayer ``T`` of sites and networks is built from the backend's own ops (the Protocol
has no other arithmetic): with ``H1 = expand(h, 1)``, ``alpha = hc_coeffs(H1, P, norm="rmsnorm")``
and ``T(h) = hc_width(H1, alpha)[0]``, a gated nonlinear map ``T(h) = (s tanh(RMSNorm(h) w) + a) h``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

import hcref
from hcref import network as ref_network
from hcref.checks import op_function, random_params
from hcref.optable import OPS
from hcref.tolerances import tolerance

from .cases import Case, describe, repro_snippet, to_backend, to_reference
from .compare import Context, assert_close, assert_structure, error_ratio
from .emulate import RoundingBackend, round_to
from .loading import spec_of

COMPOSITES = ("hc_site", "fc_site", "hc_network", "fc_network", "hc_prenorm", "fc_prenorm")
"""Names of the whole-site, small-network and Pre-Norm-at-init checks (family prefix)."""

N_SITES = 2
"""Sites in the small network."""

SUBLAYER_NORM = "rmsnorm"
"""Norm inside the sublayer T: RMSNorm, because LayerNorm over a few nearly equal values is
ill-conditioned (its output flips sign) and would make composite errors meaningless."""


def _tuple(out: Any) -> tuple[Any, ...]:
    return out if isinstance(out, tuple) else (out,)


def backend_label(backend: Any) -> str:
    """``name version (framework version)`` of a backend."""
    return (f"{getattr(backend, 'name', '?')} {getattr(backend, 'version', '?')} "
            f"({getattr(backend, 'framework_version', '?')})")


def _context(backend: Any, case: Case, dtype: str, device: str, check: str, names: Sequence[str],
             values: Sequence[Any]) -> Context:
    options = ", ".join(f"{k}={v!r}" for k, v in case.options.items())
    if check in ("site", "network", "prenorm"):
        sublayer = "sublayer T(h) = hc_width(expand(h, 1), hc_coeffs(expand(h, 1), P, norm='rmsnorm'))[0]"
        options += f"{', ' if options else ''}{sublayer}"
    return Context(
        op=case.op,
        check=check,
        backend=backend_label(backend),
        dtype=dtype,
        device=device,
        inputs=describe(values, names, dtype) + f"; {case!r}",
        options=options,
        repro=repro_snippet(spec_of(backend), case, dtype, device, check),
    )


def _compare_tree(ctx: Context, backend: Any, label: str, out: Any, ref: Any, dtype: str, kind: str,
                  contraction: int, composite: bool = False, scale: float | None = None) -> float:
    """Compare an array or a mapping of arrays (structure, dtype, values).

    A mapping (parameter cotangents) is scaled as one vector: by the largest ``max|ref|`` of
    its keys, so a scalar gradient that is a sum with cancellation is not judged on its own.
    """
    __tracebackhide__ = True
    tol = tolerance(dtype, kind, contraction=contraction, composite=composite)
    if isinstance(ref, Mapping):
        if not isinstance(out, Mapping) or set(out) != set(ref):
            keys = sorted(out) if isinstance(out, Mapping) else type(out).__name__
            raise ctx.fail(f"{label}: expected a mapping with keys {sorted(ref)}, got {keys}")
        whole = _tree_max(ref) if scale is None else scale
        return max((_compare_tree(ctx, backend, f"{label}[{key!r}]", out[key], ref[key], dtype, kind, contraction,
                                  composite, whole) for key in ref), default=0.0)
    if out is None:
        raise ctx.fail(f"{label}: got None, expected an array of shape {np.shape(ref)}")
    got = np.asarray(backend.to_numpy(out))
    assert_structure(ctx, label, np.shape(ref), dtype, got.shape, backend.dtype_name(out))
    return assert_close(ctx, label, got, np.asarray(ref, dtype=np.float64), tol, scale)


RANGE = {"float16": 2.0**10}
"""Largest reference magnitude a case may reach in a dtype with a small range: float16 tops out
at 65504, so a case whose results reach 1024 (products of them overflow) is out of range."""


class OutOfRange(Exception):
    """The case's values do not fit the dtype's range: a bad draw, rejected (not a failure)."""


class IllConditioned(OutOfRange):
    """The case is too ill-conditioned for the dtype: rounding between ops alone moves the
    result by most of the tolerance (rejected, not a failure)."""


REJECT_ABOVE = 0.25
"""A site or network case is rejected (ill-conditioned) when an ideal backend whose ops err by a
few roundoffs and store their outputs in the test dtype (:mod:`hcref_conformance.emulate`)
already reaches this fraction of the tolerance: errors would then measure the case's
conditioning, not the backend."""


def check_range(dtype: str, refs: Sequence[Any]) -> None:
    """Raise :class:`OutOfRange` when a reference result exceeds :data:`RANGE` for ``dtype``."""
    limit = RANGE.get(dtype)
    if limit is not None and max(_tree_max(r) for r in refs) > limit:
        raise OutOfRange(f"reference results exceed {limit:g}, beyond what {dtype} can carry through the op")


def _tree_max(tree: Any) -> float:
    values = tree.values() if isinstance(tree, Mapping) else [tree]
    return max((float(np.max(np.abs(v))) for v in values if np.size(v)), default=0.0)


def _cotangents(backend: Any, case: Case, refs: Sequence[np.ndarray], dtype: str, device: str
                ) -> tuple[list[Any], list[np.ndarray]]:
    rng = case.cotangent_rng()
    native = to_backend(backend, [rng.standard_normal(np.shape(r)) for r in refs], dtype, device)
    return native, to_reference(backend, native)


def check_forward(backend: Any, case: Case, dtype: str, device: str) -> float:
    """Every output of ``backend.<op>`` against ``hcref.<op>``."""
    __tracebackhide__ = True
    spec = OPS[case.op]
    native = to_backend(backend, case.inputs(), dtype, device)
    rounded = to_reference(backend, native)
    ctx = _context(backend, case, dtype, device, "forward", spec.inputs, rounded)
    refs = _tuple(op_function(case.op)(*rounded, **case.options))
    check_range(dtype, refs)
    outs = _tuple(getattr(backend, case.op)(*native, **case.options))
    if len(outs) != len(refs):
        raise ctx.fail(f"expected {len(refs)} outputs {spec.outputs}, got {len(outs)}")
    return max(_compare_tree(ctx, backend, name, o, r, dtype, "forward", case.contraction)
               for name, o, r in zip(spec.outputs, outs, refs, strict=True))


def check_vjp(backend: Any, case: Case, dtype: str, device: str) -> float:
    """``backend.vjp`` of the op against ``hcref.<op>_vjp`` for the same random cotangents."""
    __tracebackhide__ = True
    spec = OPS[case.op]
    native = to_backend(backend, case.inputs(), dtype, device)
    rounded = to_reference(backend, native)
    ctx = _context(backend, case, dtype, device, "vjp", spec.inputs, rounded)
    refs = _tuple(op_function(case.op)(*rounded, **case.options))
    check_range(dtype, refs)
    cot_native, cot_rounded = _cotangents(backend, case, refs, dtype, device)
    positions = [spec.inputs.index(name) for name in spec.differentiable]

    def fn(*primals: Any) -> Any:
        args = list(native)
        for i, p in zip(positions, primals, strict=True):
            args[i] = p
        return getattr(backend, case.op)(*args, **case.options)

    grads = backend.vjp(fn, [native[i] for i in positions], tuple(cot_native))
    ref_grads = op_function(spec.vjp_name)(*rounded, *cot_rounded, **case.options)
    if len(grads) != len(ref_grads):
        raise ctx.fail(f"vjp: expected {len(ref_grads)} cotangents {spec.differentiable}, got {len(grads)}")
    # The VJP is judged as one vector (scale: the largest of all its cotangents), so a tiny
    # cotangent that is a sum with cancellation (g_H of a norm over large inputs) is held to
    # the accuracy of the whole gradient rather than to its own magnitude.
    whole = max(_tree_max(r) for r in ref_grads)
    return max(_compare_tree(ctx, backend, f"g_{name}", g, r, dtype, "gradient", case.contraction, False, whole)
               for name, g, r in zip(spec.differentiable, grads, ref_grads, strict=True))


# --- composites -----------------------------------------------------------------------------


def _width(case: Case) -> int:
    return case.w if case.family == "hc" else case.k * case.w


def composite_inputs(case: Case) -> tuple[np.ndarray, list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """``(state, connection params per site, sublayer params per site)`` as float64 NumPy.

    ``state`` is H (lead, k, w) for a site and x (lead, d) for a network.
    """
    rng = np.random.default_rng(case.seed)
    d = _width(case)
    kind = case.op.split("_", 1)[1]
    n_sites = 1 if kind == "site" else N_SITES
    state = rng.standard_normal(case.lead + ((case.k, case.w) if kind == "site" else (d,))) * case.scale
    params = []
    for i in range(n_sites):
        if case.init or kind == "prenorm":
            if case.family == "hc":
                params.append(hcref.init_hc(case.k, case.w, case.layer_index + i, dynamic=case.dynamic, norm=case.norm))
            else:
                params.append(hcref.init_fc(case.k, d, dynamic=case.dynamic, norm=case.norm))
        else:
            params.append(random_params(case.family, case.k, case.w, rng, dynamic=case.dynamic, norm=case.norm))
    sublayers = [random_params("hc", 1, d, rng, norm=SUBLAYER_NORM) for _ in range(n_sites)]
    return state, params, sublayers


def _backend_sublayer(backend: Any, P: Any) -> Callable[[Any], Any]:
    def T(h: Any) -> Any:
        H1 = backend.expand(h, 1)
        alpha, _ = backend.hc_coeffs(H1, P, norm=SUBLAYER_NORM)
        return backend.hc_width(H1, alpha)[0]

    return T


def _reference_sublayer(P: Mapping[str, np.ndarray]) -> tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]:
    def T(h: np.ndarray) -> np.ndarray:
        H1 = hcref.expand(h, 1)
        return hcref.hc_width(H1, hcref.hc_coeffs(H1, P, norm=SUBLAYER_NORM)[0])[0]

    def T_vjp(h: np.ndarray, g: np.ndarray) -> np.ndarray:
        H1 = hcref.expand(h, 1)
        alpha, beta = hcref.hc_coeffs(H1, P, norm=SUBLAYER_NORM)
        g_H_width, g_alpha = hcref.hc_width_vjp(H1, alpha, g, np.zeros_like(H1))
        g_H_coeffs, _ = hcref.hc_coeffs_vjp(H1, P, g_alpha, np.zeros_like(beta), norm=SUBLAYER_NORM)
        return hcref.expand_vjp(h, 1, g_H_width + g_H_coeffs)[0]

    return T, T_vjp


def _backend_site(backend: Any, family: str, H: Any, params: Any, T: Callable[[Any], Any],
                  options: Mapping[str, Any]) -> Any:
    alpha, beta = getattr(backend, f"{family}_coeffs")(H, params, **options)
    h0, H_res = getattr(backend, f"{family}_width")(H, alpha)
    return getattr(backend, f"{family}_depth")(T(h0), H_res, beta)


def _backend_network(backend: Any, family: str, k: int, x: Any, params: Sequence[Any],
                     sublayers: Sequence[Any], options: Mapping[str, Any]) -> Any:
    H = backend.expand(x, k) if family == "hc" else backend.frac_split(x, k)
    for p, P in zip(params, sublayers, strict=True):
        H = _backend_site(backend, family, H, p, _backend_sublayer(backend, P), options)
    return backend.reduce(H) if family == "hc" else backend.frac_merge(H)


def check_composite(backend: Any, case: Case, dtype: str, device: str) -> float:
    """Site, network or Pre-Norm-at-init check (``case.op`` in :data:`COMPOSITES`)."""
    __tracebackhide__ = True
    family, kind = case.op.split("_", 1)
    state_np, params_np, sub_np = composite_inputs(case)
    state, *params = to_backend(backend, [state_np, *params_np], dtype, device)
    subs = to_backend(backend, sub_np, dtype, device)
    state_r, *params_r = to_reference(backend, [state, *params])
    subs_r = to_reference(backend, subs)
    names = ["H" if kind == "site" else "x"] + [f"params[{i}]" for i in range(len(params))]
    ctx = _context(backend, case, dtype, device, kind, names, [state_r, *params_r])
    opts = case.options
    ref_T = [_reference_sublayer(P) for P in subs_r]
    contraction = max(case.contraction, 2 * _width(case))

    def fn(x: Any, *ps: Any) -> Any:
        if kind == "site":
            return _backend_site(backend, family, x, ps[0], _backend_sublayer(backend, subs[0]), opts)
        return _backend_network(backend, family, case.k, x, ps, subs, opts)

    if kind == "site":
        ref = hcref.site(family, state_r, params_r[0], ref_T[0][0], **opts)
    else:
        mode = "residual" if kind == "prenorm" else family
        ref = ref_network.stack(state_r, [t for t, _ in ref_T], mode=mode, connections=params_r, rate=case.k, **opts)
    check_range(dtype, [ref])
    ideal_grads = _ideal_gate(case, dtype, state_r, params_r, subs_r, ref, contraction)
    out = fn(state, *params)
    if kind == "prenorm":
        got = np.asarray(backend.to_numpy(out), dtype=np.float64) / (case.k if family == "hc" else 1)
        assert_structure(ctx, "out", np.shape(ref), dtype, got.shape, backend.dtype_name(out))
        what = "reduce(out) / n" if family == "hc" else "frac_merge(out)"
        return assert_close(ctx, f"{what} vs the Pre-Norm residual stack x + T(x)", got, ref,
                            tolerance(dtype, "forward", contraction=contraction, composite=True))
    worst = _compare_tree(ctx, backend, "H_out" if kind == "site" else "out", out, ref, dtype, "forward", contraction,
                          True)
    cot_native, cot_rounded = _cotangents(backend, case, [ref], dtype, device)
    grads = backend.vjp(fn, [state, *params], tuple(cot_native))
    if kind == "site":
        ref_grads: list[Any] = list(hcref.site_vjp(family, state_r, params_r[0], ref_T[0][0], ref_T[0][1],
                                                   cot_rounded[0], **opts))
    else:
        g_x, g_params = ref_network.stack_vjp(state_r, [t for t, _ in ref_T], [v for _, v in ref_T], cot_rounded[0],
                                              mode=family, connections=params_r, rate=case.k, **opts)
        ref_grads = [g_x, *g_params]
    check_range(dtype, ref_grads)
    whole = max(_tree_max(r) for r in ref_grads)
    grad_tol = tolerance(dtype, "gradient", contraction=contraction, composite=True)
    for g, r in zip(ideal_grads(cot_rounded[0]), ref_grads, strict=True):
        if _compare_ideal(g, r, grad_tol, whole) > REJECT_ABOVE:
            raise IllConditioned(f"an ideal {dtype} backend already uses over {REJECT_ABOVE:g} of the "
                                 "gradient tolerance")
    if len(grads) != len(ref_grads):
        raise ctx.fail(f"vjp: expected {len(ref_grads)} cotangents, got {len(grads)}")
    # Composite cotangents are judged as one vector (scale `whole`: the largest of all of them):
    # after several rounded ops, a small parameter gradient that is a sum with cancellation
    # carries the absolute error of the large ones.
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        worst = max(worst, _compare_tree(ctx, backend, f"g_{name}", g, r, dtype, "gradient", contraction, True,
                                         whole))
    return worst


def _ideal_gate(case: Case, dtype: str, state: np.ndarray, params: list[Any], subs: list[Any], ref: np.ndarray,
                contraction: int) -> Callable[[np.ndarray], tuple[Any, ...]]:
    """Run the composite on the ideal ``dtype`` backend (:mod:`hcref_conformance.emulate`) and
    raise :class:`IllConditioned` when its forward error already exceeds :data:`REJECT_ABOVE`
    of the tolerance; return a function giving its cotangents for an output cotangent."""
    family, kind = case.op.split("_", 1)
    ideal = RoundingBackend(dtype, case.seed)
    ideal_subs = [{k: round_to(dtype, v) for k, v in P.items()} for P in subs]

    def ideal_fn(x: Any, *ps: Any) -> Any:
        if kind == "site":
            return _backend_site(ideal, family, x, ps[0], _backend_sublayer(ideal, ideal_subs[0]), case.options)
        return _backend_network(ideal, family, case.k, x, ps, ideal_subs, case.options)

    out = ideal_fn(state, *params) / (case.k if kind == "prenorm" and family == "hc" else 1)
    ratio = error_ratio(out, np.asarray(ref), tolerance(dtype, "forward", contraction=contraction, composite=True))
    if ratio > REJECT_ABOVE:
        raise IllConditioned(f"an ideal {dtype} backend already reaches {ratio:.2g} of the forward tolerance")
    return lambda g: tuple(ideal.vjp(ideal_fn, [state, *params], (g,)))


def _compare_ideal(g: Any, r: Any, tol: Any, scale: float) -> float:
    if isinstance(r, Mapping):
        return max((_compare_ideal(g[k], r[k], tol, scale) for k in r), default=0.0)
    return error_ratio(np.asarray(g), np.asarray(r), tol, scale)


CHECKS: dict[str, Callable[[Any, Case, str, str], float]] = {
    "forward": check_forward,
    "vjp": check_vjp,
    "site": check_composite,
    "network": check_composite,
    "prenorm": check_composite,
}
"""Check name -> function."""


def run_check(check: str, backend: Any, case: Case, *, dtype: str, device: str = "cpu") -> float:
    """Run check ``check`` (a key of :data:`CHECKS`) and return its worst error/tolerance ratio.

    Raises :class:`~hcref_conformance.compare.ConformanceError` on a disagreement and
    :class:`OutOfRange` for a case the dtype cannot represent.
    """
    __tracebackhide__ = True
    return CHECKS[check](backend, case, dtype, device)


def run_in_test(check: str, backend: Any, case: Case, *, dtype: str, device: str, hypothesis: bool) -> float:
    """:func:`run_check` inside a test: an out-of-range case is rejected (Hypothesis) or skipped."""
    __tracebackhide__ = True
    try:
        return run_check(check, backend, case, dtype=dtype, device=device)
    except OutOfRange as exc:
        if hypothesis:
            from hypothesis import reject

            reject()
        import pytest

        pytest.skip(str(exc))

