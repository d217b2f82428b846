"""Every input the suite draws, in one place: profiles, Hypothesis draws and the fixed cases.

Hypothesis draws only the *structure* of a case (leading axes, rows ``k``, width ``w``, options,
a value scale) and one integer ``seed``; the values come from
``numpy.random.default_rng(seed)`` (:meth:`Case.inputs`). Every draw is labelled, and only what
the port declares (:class:`hcref.interface.Support`: norms, switches, modes, largest ``k``) is
ever drawn.

Distributions (checked by the project's tests): ``k`` is uniform up to the profile's cap (8 by
default, 16 in the thorough profile), so more than 4 rows is drawn about half the time; a
leading axis has size 0 about one draw in ten; coefficient parameters are dynamic with random
(not initial) weights in 4 draws of 7, and each switch is on in 3 draws of 4 (all three on in
about 4 of 10). Shapes of sites and networks come from a small fixed set of *buckets* per
profile, so a port that compiles per shape (jax) reuses its compilations across draws.

The fixed cases that run on every port every time (:func:`special_cases`): one token without
leading axes, ``k = 1``, ``k = 5`` and ``k = 8``, size-0 leading axes, initial parameters per
norm and layer index, static sites, each switch off alone with random dynamic weights, small
activations (1e-2, 1e-3) with random dynamic weights for each norm, and extreme activation
scales (1e-30, 1e15, 1e20) where the dtype holds them.

mHC (no norm option, no switches) runs on the same structures with its own option sets
(:data:`MHC_CONFIGS`: 20, 3 and 1 Sinkhorn iterations, the paper's ``eps = 0`` and V4's 1e-6,
static and dynamic), its free draws pick ``iters`` and ``eps`` (:data:`MHC_ITERS`,
:data:`MHC_EPS`), and ``sinkhorn`` and ``mhc_coeffs`` add the fixed logit patterns of
:data:`LOGIT_CASES` (logits above 88, spread 160, a row or a column 1e4 below the rest), whose
tolerance carries Sinkhorn's conditioning (:func:`hcref_conformance.cases.sinkhorn_conditioning`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from hypothesis import strategies as st

from hcref.interface import SWITCHES, Support
from hcref.optable import ALL_OPS

from .cases import Case

OP_NAMES = tuple(ALL_OPS)
"""The ops under test, in the op table's order (HC, FC, then mHC)."""

COMPOSITES = ("hc_site", "fc_site", "mhc_site", "hc_network", "fc_network", "mhc_network", "hc_prenorm",
              "fc_prenorm", "mhc_prenorm")
"""Names of the whole-site, small-network and Pre-Norm-at-init checks (family prefix)."""

Shape = tuple[tuple[int, ...], int, int]


@dataclass(frozen=True)
class Profile:
    """How much to draw: examples per test, and whether shapes and options come from the fixed
    :data:`STRUCTURES` (``structured``) or are drawn freely up to ``max_rows`` / ``max_width``."""

    name: str
    max_examples: int
    structured: bool
    max_rows: int = 8
    max_width: int = 16
    max_lead: int = 3
    max_lead_axes: int = 2


PROFILES = {
    "quick": Profile("quick", 5, True),
    "default": Profile("default", 25, True),
    "thorough": Profile("thorough", 200, False, max_rows=16),
}
"""``quick`` (``--all``: 5 examples per drawn test), ``default`` (25) and ``thorough`` (200, shapes
and options drawn freely with k up to 16, every fixed case in every dtype)."""

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "ln": {"norm": "layernorm"},
    "rms": {"norm": "rmsnorm"},
    "none": {"norm": "none"},
    "static": {"dynamic": False},
    "no-tanh": {"norm": "rmsnorm", "use_tanh": False},
    "no-scale": {"norm": "layernorm", "use_scale": False},
    "no-norm": {"norm": "layernorm", "use_norm": False},
    "all-off": {"use_tanh": False, "use_norm": False, "use_scale": False},
}
"""Option sets of the coefficient ops; ``default`` is dynamic with the first norm the port declares."""

MHC_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "ln": {},
    "rms": {"eps": 1e-6},
    "none": {"iters": 3},
    "static": {"dynamic": False},
    "no-tanh": {"iters": 1},
    "no-scale": {"iters": 3, "eps": 1e-6},
    "no-norm": {"dynamic": False, "eps": 1e-6},
    "all-off": {"iters": 1, "eps": 1e-6},
}
"""The same structures' option sets for mHC, which has no norm option or switches: the paper's
20 iterations, DeepSeek-V4's ``eps = 1e-6`` (``v4``), 1 and 3 iterations (where the unrolled
gradient differs most from the converged projection's) and static sites."""

MHC_ITERS = (20, 20, 3, 1)
"""Free draws: Sinkhorn iterations (the paper's 20 in half the draws)."""

MHC_EPS = (0.0, 0.0, 0.0, 1e-6)
"""Free draws: mHC's ``eps`` (DeepSeek-V4's 1e-6 in one draw of 4)."""

LOGIT_CASES = ("big90", "spread160", "row-1e4", "col-1e4")
"""Fixed Sinkhorn logit patterns of ``sinkhorn`` and ``mhc_coeffs`` (:data:`hcref_conformance.cases.LOGIT_PATTERNS`)."""


@dataclass(frozen=True)
class Structure:
    """A shape and an option set, shared by the fixed cases and the structured draws of every op
    and composite of a family, so that a port that compiles per shape and option set (jax)
    compiles each once and reruns it with new values.

    ``tier``: 0 runs in every dtype; 1 in float64 and float32 (and the most precise dtype
    selected); 2 only in the most precise dtype selected (structure, not precision, is what it
    checks). ``weight``: how often the structured draws pick it.
    """

    name: str
    lead: tuple[int, ...]
    k: int
    w: int
    config: str = "default"
    tier: int = 0
    weight: int = 1


STRUCTURES: tuple[Structure, ...] = (
    Structure("base-ln", (2,), 3, 4, "ln", 0, 3),
    Structure("base-rms", (2,), 3, 4, "rms", 0, 3),
    Structure("base-none", (2,), 3, 4, "none", 1, 2),
    Structure("static", (2,), 3, 4, "static", 1, 1),
    Structure("no-tanh", (2,), 3, 4, "no-tanh", 2, 1),
    Structure("no-scale", (2,), 3, 4, "no-scale", 2, 1),
    Structure("no-norm", (2,), 3, 4, "no-norm", 2, 1),
    Structure("all-off", (2,), 3, 4, "all-off", 2, 1),
    Structure("one-token", (), 2, 4, "default", 1, 1),
    Structure("one-token-rms", (), 2, 4, "rms", 1, 1),
    Structure("k1", (3,), 1, 4, "default", 2, 1),
    Structure("k1-w1", (3,), 1, 1, "default", 2, 1),
    Structure("k8", (2,), 8, 4, "default", 1, 3),
    Structure("empty", (0,), 3, 4, "default", 1, 1),
    Structure("empty-inner", (2, 0, 3), 2, 4, "default", 2, 1),
)
"""The structures of the quick and default profiles: more than 4 rows (k8) in about 1 structured
draw of 7, size-0 leading axes in about 1 of 10, every switch on in 4 of 5, dynamic parameters
with random weights in about 7 of 10 (module docstring)."""

SCALES = (1.0, 0.01, 100.0)
"""Scales applied to the state (H, x, y): units, small and large activations (float16 leaves
out 100, whose squares overflow its range of 65504)."""

SMALL_SCALES = (1e-2, 1e-3)
"""Small activations, where a norm's epsilon matters (a layernorm epsilon of 1e-6 instead of
1e-5 moves the coefficients by percents at 1e-3)."""

EXTREME_SCALES = (1e-30, 1e15, 1e20)
"""Activation scales of a diverging run (issue 13); a dtype that cannot hold them skips them."""

DTYPE_MAX = {"float64": 1.8e308, "float32": 3.4e38, "bfloat16": 3.39e38, "float16": 65504.0}
DTYPE_TINY = {"float64": 2.2e-308, "float32": 1.2e-38, "bfloat16": 1.2e-38, "float16": 6.1e-5}
"""Largest and smallest normal magnitude of each dtype: a case whose activations (times 100 for
the sums of an op) leave this range is skipped in that dtype."""

MIN_COMPOSITE_WIDTH = 4
"""Sites and networks draw w >= 4: a norm over one or two values is ill-conditioned (the
sign of x - mean flips under rounding), so its error says nothing about the backend."""

PARAM_KINDS = ("dynamic", "dynamic", "dynamic", "dynamic", "dynamic-init", "static", "static-init")
"""Free draws: kinds of coefficient parameters, dynamic with random weights in 4 of 7."""

SWITCH_VALUES = (True, True, True, False)
"""Free draws: a switch is on in 3 draws of 4."""

LEAD_SIZES = (2, 3, 1, 2, 3, 1, 2, 3, 1, 0)
"""Free draws: size of one leading axis, 0 in one draw of 10."""

seeds = st.integers(0, 2**32 - 1)


def has_coefficients(op: str) -> bool:
    """Whether op (or composite check) ``op`` takes a site's parameters and options (mHC's
    ``sinkhorn`` and ``mhc_head`` take its options ``iters`` / ``eps`` too)."""
    return op.endswith(("_coeffs", "_site", "_network", "_prenorm")) or op in ("sinkhorn", "mhc_head")


def is_composite(op: str) -> bool:
    """Whether ``op`` names a site, network or Pre-Norm check rather than an op."""
    return op.endswith(("_site", "_network", "_prenorm"))


def family_of_op(op: str) -> str:
    """``hc``, ``fc``, ``mhc`` or ``ends`` of an op or composite check."""
    return ALL_OPS[op].family if op in ALL_OPS else op.split("_", 1)[0]


def options_of(config: str, support: Support, family: str = "hc") -> dict[str, Any]:
    """The Case fields of option set ``config`` for a port declaring ``support``."""
    if family == "mhc":
        mhc: dict[str, Any] = {"dynamic": "dynamic" in support.modes}
        mhc.update(MHC_CONFIGS[config])
        return mhc
    fields: dict[str, Any] = {"dynamic": "dynamic" in support.modes,
                              "norm": next((n for n in ("layernorm", "rmsnorm", "none") if n in support.norms),
                                           "layernorm")}
    fields.update(CONFIGS[config])
    return fields


def in_tier(tier: int, dtype: str, selected: list[str], profile: Profile) -> bool:
    """Whether a structure of ``tier`` runs in ``dtype`` (``selected``: the dtypes of the run)."""
    if not profile.structured or tier == 0:
        return True
    precise = next((d for d in ("float64", "float32", "bfloat16", "float16") if d in selected), None)
    if tier == 1:
        return dtype in ("float64", "float32") or dtype == precise
    return dtype == precise


def structures(op: str, dtype: str, selected: list[str], profile: Profile,
               support: Support) -> list[tuple[str, Case, int]]:
    """``(name, case, weight)`` per structure that applies to ``op``, ``dtype`` and the port (seed 0,
    unit scale); for an op without options, structures of the same shape count once."""
    out: list[tuple[str, Case, int]] = []
    seen: set[tuple[Any, ...]] = set()
    for s in STRUCTURES:
        if not in_tier(s.tier, dtype, selected, profile) or (is_composite(op) and s.w < MIN_COMPOSITE_WIDTH):
            continue
        fields = options_of(s.config, support, family_of_op(op)) if has_coefficients(op) else {}
        if op == "sinkhorn":  # no parameters: the option sets differ only in iters and eps
            fields.pop("dynamic", None)
        case = Case(op=op, lead=s.lead, k=s.k, w=s.w, **fields)
        key = (s.lead, s.k, s.w, tuple(sorted(fields.items())))
        if key in seen or requirements(case, support):
            continue
        seen.add(key)
        out.append((s.name, case, s.weight))
    return out


def draw_case(data: Any, op: str, dtype: str, profile: Profile, support: Support,
              selected: list[str] | None = None) -> Case:
    """Draw one :class:`Case` of ``op`` for ``dtype`` from ``data`` (``hypothesis.strategies.data()``),
    within ``profile`` and what ``support`` declares."""
    scales: tuple[float, ...] = SCALES[:2] if dtype == "float16" else SCALES
    if op == "sinkhorn":
        scales = (1.0,)
    if profile.structured:
        choices = [case for _, case, weight in structures(op, dtype, selected or [dtype], profile, support)
                   for _ in range(weight)]
        base: Case = data.draw(st.sampled_from(choices), label="structure (lead, k, w, options)")
        fields: dict[str, Any] = {"seed": data.draw(seeds, label="seed"),
                                  "scale": data.draw(st.sampled_from(scales), label="scale")}
        if has_coefficients(op) and op != "sinkhorn":
            prenorm = op.endswith("_prenorm")
            fields["init"] = prenorm or data.draw(st.sampled_from((False, False, False, True)), label="init")
            if op.startswith(("hc", "mhc")) and fields["init"]:
                fields["layer_index"] = data.draw(st.integers(0, 2 * base.k), label="layer_index")
        return replace(base, **fields)
    max_rows = min(profile.max_rows, support.max_rows or profile.max_rows)
    if is_composite(op):
        lead = data.draw(st.lists(st.sampled_from(LEAD_SIZES), max_size=profile.max_lead_axes).map(tuple),
                         label="lead")
        k = data.draw(st.integers(1, max_rows), label="k (n or m)")
        w = data.draw(st.integers(MIN_COMPOSITE_WIDTH, profile.max_width), label="w (d or e)")
    else:
        lead = data.draw(st.lists(st.sampled_from(LEAD_SIZES), max_size=profile.max_lead_axes).map(tuple),
                         label="lead")
        k = data.draw(st.integers(1, max_rows), label="k (n or m)")
        w = data.draw(st.integers(1, profile.max_width), label="w (d or e)")
    free: dict[str, Any] = {
        "lead": lead, "k": k, "w": w,
        "seed": data.draw(seeds, label="seed"),
        "scale": data.draw(st.sampled_from(scales), label="scale"),
    }
    if has_coefficients(op) and family_of_op(op) == "mhc":
        iters = [i for i in MHC_ITERS if support.iters is None or i in support.iters] or list(support.iters or [20])
        free["iters"] = data.draw(st.sampled_from(iters), label="iters")
        eps = [e for e in MHC_EPS if ("v4" if e else "paper") in support.mhc_variants]
        free["eps"] = data.draw(st.sampled_from(eps), label="eps")
        if op == "sinkhorn":
            return Case(op=op, **free)
    if has_coefficients(op):
        prenorm = op.endswith("_prenorm")
        kind = data.draw(st.sampled_from([k for k in PARAM_KINDS if k.split("-")[0] in support.modes]),
                         label="params (dynamic/static, random/init)")
        free["dynamic"] = kind.startswith("dynamic")
        free["init"] = prenorm or kind.endswith("init")
        if family_of_op(op) != "mhc":
            free["norm"] = data.draw(st.sampled_from(support.norms), label="norm")
            for switch in SWITCHES:
                values = SWITCH_VALUES if switch in support.switches else (True,)
                free[switch] = data.draw(st.sampled_from(values), label=switch)
        if op.startswith(("hc", "mhc")) and free["init"]:
            free["layer_index"] = data.draw(st.integers(0, 2 * max_rows), label="layer_index")
    return Case(op=op, **free)


def special_cases(op: str, dtype: str, selected: list[str], profile: Profile,
                  support: Support) -> list[tuple[str, Case]]:
    """``(id, case)`` pairs of ``op`` that run on the port every time in ``dtype``: one case per
    structure (seed 1), and on the same structures the cases that need particular values (module
    docstring): initial parameters, small and extreme activation scales."""
    out: list[tuple[str, Case]] = []
    coefficients = has_coefficients(op)
    for name, base, _ in structures(op, dtype, selected, profile, support):
        name = name if coefficients or not name.startswith("base") else "base"
        case = replace(base, seed=1)
        out.append((name, case))
        if op.endswith("_prenorm") and name in ("k8", "one-token"):
            out.append((f"{name}-layer{2 * base.k + 1}", replace(case, layer_index=2 * base.k + 1)))
        if coefficients and name in ("base-ln", "base-rms", "base-none") and not op.endswith("_prenorm"):
            out.append((f"{name}-init", replace(case, init=True)))
        scaled = op != "sinkhorn"  # Sinkhorn's logits are not activations: the scale does not apply
        if name in ("base", "base-ln", "base-rms") and scaled:
            out += [(f"{name}-small-{scale:.0e}", replace(case, scale=scale)) for scale in SMALL_SCALES]
        if coefficients and name == "static":
            out.append(("static-init", replace(case, init=True)))
        if op.startswith(("hc", "mhc")) and coefficients and name == "base-ln" and op != "sinkhorn":
            out.append(("init-layer5", replace(case, init=True, layer_index=5)))
        if op in ("sinkhorn", "mhc_coeffs") and name in ("base-ln", "k8"):
            out += [(f"{name}-logits-{p}", replace(case, logits=p)) for p in LOGIT_CASES
                    if name == "base-ln" or p == "big90"]
        if op.startswith("hc") and coefficients and name == "k1":
            out.append(("init-n1", replace(case, init=True, layer_index=3)))
        if name.startswith("one-token") and dtype != "float16" and scaled:
            extreme = replace(case, gates=1.0, sublayer="linear") if coefficients else case
            out += [(f"{name}-scale-{scale:.0e}".replace("+", ""), replace(extreme, scale=scale))
                    for scale in EXTREME_SCALES]
    return out


def mixed_cases(op: str, support: Support) -> list[tuple[str, Case]]:
    """The mixed-precision cases of ``op`` (dtype ``"mixed"``: float32 parameters and coefficients
    on a half-precision state, decision D12)."""
    out = []
    for name in ("base-ln", "base-rms"):
        s = next(s for s in STRUCTURES if s.name == name)
        fields = options_of(s.config, support, family_of_op(op)) if has_coefficients(op) else {}
        case = Case(op=op, lead=s.lead, k=s.k, w=s.w, seed=2, **fields)
        if not requirements(case, support) and (name == "base-ln" or has_coefficients(op)):
            out.append((f"mixed-{name}", case))
    return out


def requirements(case: Case, support: Support) -> str | None:
    """Why ``case`` is not applicable to a port declaring ``support`` (``None`` when it is)."""
    if support.max_rows is not None and case.k > support.max_rows:
        return f"k = {case.k} above the declared max_rows {support.max_rows}"
    if not has_coefficients(case.op):
        return None
    if case.family == "mhc":
        if support.iters is not None and case.iters not in support.iters:
            return f"iters = {case.iters} not declared (declared: {support.iters})"
        variant = "v4" if case.eps > 0 else "paper"
        if variant not in support.mhc_variants:
            return f"the {variant} variant of mHC (eps = {case.eps:g}) not declared"
        if case.op == "sinkhorn":
            return None
    mode = "dynamic" if case.dynamic else "static"
    if mode not in support.modes:
        return f"{mode} coefficients not declared"
    if case.family == "mhc" or case.op == "mhc_head":
        return None
    if case.dynamic and case.norm not in support.norms:
        return f"norm {case.norm!r} not declared"
    for switch in SWITCHES:
        if case.dynamic and not getattr(case, switch) and switch not in support.switches:
            return f"switch {switch}=False not declared"
    return None
