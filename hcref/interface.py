"""The port contract, documented once (here) for every implementation: first-party backends,
third-party ports and adapters over other libraries.

A port is a plain object (several can live in one process) exposed by its package as a
module-level attribute (``backend`` for the first-party backends). The conformance suite
reaches a port only through the members below, so it never imports a framework and never
needs to know torch.autograd, ``jax.vjp`` or ``mlx.core.vjp``.

Every port has the members of :class:`Port`: ``name``, ``version``, ``framework_version``,
``capabilities()`` (device x dtype), ``asarray``, ``to_numpy``, ``dtype_name`` and ``vjp``.
Beyond them a port implements one or both *entry points*:

Op-level entry. Every op of :data:`hcref.optable.ALL_OPS` that the port declares (HC, FC and mHC:
``sinkhorn``, ``mhc_coeffs``, ``mhc_pre``, ``mhc_post``, ``mhc_head``) exists under its contract name, with
the reference's positional inputs and keyword options, on the port's native arrays;
parameters are a ``Mapping[str, array]`` with the contract's keys. Shapes, results and errors
are those of the reference (``hcref.<op>``), which is the specification: bad input raises the
same ``ValueError``/``TypeError`` (use :mod:`hcref.validation` to get the same messages). The
first-party backends implement every op: :class:`Backend` is that full contract.

Module-level entry. A port that wraps whole modules (as most libraries are built) implements
instead, or besides, ``site(family, H, params, sublayer, **options)``: one whole residual
site of ``family`` (``"hc"``, ``"fc"`` or ``"mhc"``) on the state ``H`` with the contract's parameter
mapping, calling ``sublayer(h0)`` (a callable on native arrays) exactly once, and returning
``H_out`` of ``H``'s shape, as :func:`hcref.site`; the ends (``expand``, ``reduce``,
``frac_split``, ``frac_merge``) as ops; and optionally its own initialisers ``init_hc(n, d,
layer_index, *, dynamic, norm)`` / ``init_fc(m, d, *, dynamic, norm)`` / ``init_mhc(n, d,
layer_index, *, dynamic)`` returning the contract's
mapping (native or NumPy arrays), so that Pre-Norm at init is checked with the port's own
initial values. The suite's sublayer is written with Python operators only (``@``, ``*``,
``+``, ``/``, ``** 0.5``) on native arrays, so it never runs the port's own ops.

Declared capabilities. ``supports()`` (optional) returns a :class:`Support` (or a mapping of
its fields) saying which families, ops, entry points, norms (and their epsilons), switches,
static/dynamic modes, largest ``n`` or ``m``, Sinkhorn iterations and variants (mHC) and mixed
precision the port implements. The suite draws only what a port declares and reports everything
else as "n/a" (never pass or FAIL). A port without ``supports()`` declares every op of HC and FC
with every option and, when it has any mHC op, the mHC family with every option
(:func:`support_of`), which is what the first-party backends implement.

Gradients. ``vjp(fn, primals, cotangents)`` differentiates any callable built from the
port's ops (for a module-level port, from its ``site`` and ends, with the suite's sublayer
inside): ``fn(*primals)`` returns one array or a tuple of arrays, ``cotangents`` has one array
per output (a 1-tuple for a single output), and the result has one cotangent per primal, a
mapping with the same keys for a mapping primal. Non-differentiable arguments (``n``,
options) are closed over by ``fn``. A ``vjp`` that can only differentiate the port's own ops
(a tape, as ``hcref_numpy``'s) still works at the op level: the suite then chains the ops'
VJPs around its sublayer itself and says so in the report.

Dtypes are named by strings: ``"float64"``, ``"float32"``, ``"bfloat16"``, ``"float16"``.
Devices are named by strings such as ``"cpu"``, ``"cuda"``, ``"gpu"``. Result dtypes follow
decision D12: with one dtype throughout, the result has it; with float32 parameters on a
half-precision state, coefficient ops return the promoted dtype and width/depth outputs keep
the state's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import optable
from .validation import NORMS

DTYPES = ("float64", "float32", "bfloat16", "float16")
"""Every dtype name the suite knows, from most to least precise."""

OP_NAMES = (
    "expand",
    "reduce",
    "frac_split",
    "frac_merge",
    "hc_coeffs",
    "hc_width",
    "hc_depth",
    "fc_coeffs",
    "fc_width",
    "fc_depth",
)
"""The op members every first-party backend has (the keys of :data:`hcref.optable.OPS`)."""

MHC_OP_NAMES = ("sinkhorn", "mhc_coeffs", "mhc_pre", "mhc_post", "mhc_head")
"""The mHC ops (the keys of :data:`hcref.optable.MHC_OPS`): a port with any of them has all."""

END_OPS = ("expand", "reduce", "frac_split", "frac_merge")
"""The ends (network entry and exit); a module-level port implements them as ops."""

SWITCHES = ("use_tanh", "use_norm", "use_scale")
"""The ablation switches of the coefficient ops (decision D4)."""

MODES = ("dynamic", "static")
"""Coefficient modes: dynamic (input-dependent corrections) and static (decision D2)."""

INFRASTRUCTURE = ("name", "version", "framework_version", "capabilities", "asarray", "to_numpy", "dtype_name", "vjp")
"""Members of every port, whatever its entry points."""


MHC_VARIANTS = ("paper", "v4")
"""mHC variants (decisions D7, D9): the paper's (``eps = 0``) and DeepSeek-V4's (``eps > 0``)."""


def _all_ops() -> dict[str, optable.OpSpec]:
    """Every op of the reference (:data:`hcref.optable.ALL_OPS`: HC, FC and mHC)."""
    return dict(optable.ALL_OPS)


def known_families() -> tuple[str, ...]:
    """Families the reference defines (``hc``, ``fc`` and, once in the reference, ``mhc``)."""
    return tuple(dict.fromkeys(spec.family for spec in _all_ops().values() if spec.family != "ends"))


def family_ops(family: str) -> tuple[str, ...]:
    """The ops of ``family`` in table order (``hc`` -> ``hc_coeffs``, ``hc_width``, ``hc_depth``)."""
    return tuple(name for name, spec in _all_ops().items() if spec.family == family)


SITE_OPS = {"hc": ("hc_coeffs", "hc_width", "hc_depth"), "fc": ("fc_coeffs", "fc_width", "fc_depth"),
            "mhc": ("mhc_coeffs", "mhc_pre", "mhc_post")}
"""The ops one site of each family is composed of (mHC's ``sinkhorn`` runs inside ``mhc_coeffs``;
``mhc_head`` is V4's final reduce, not part of a site)."""


@dataclass(frozen=True)
class Support:
    """What a port declares it implements; the default is everything the first-party backends do.

    ``families``: the families the port implements (``"hc"``, ``"fc"``, ``"mhc"``).
    ``ops``: its op-level entry points; ``None`` means every op of those families plus the ends.
    ``sites``: families whose whole site the port implements as ``site(family, ...)``
    (module-level entry); when given, the suite's site, network and Pre-Norm checks of that
    family run through it instead of through the ops.
    ``initialisers``: families whose initial parameters come from the port's
    ``init_<family>`` (``init_hc``/``init_fc``/``init_mhc``) instead of :mod:`hcref.init`.
    ``norms``: values of the ``norm`` option the port implements (decision D1).
    ``norm_eps``: the epsilon of a norm where it differs from decision D1 (layernorm 1e-5,
    rmsnorm 1e-6); the suite then compares with the reference at that epsilon and reports the
    difference from D1 as a named property.
    ``switches``: the switches of D4 that the port can turn off (the rest stay on).
    ``modes``: ``"dynamic"`` and/or ``"static"`` coefficients.
    ``max_rows``: the largest ``n`` (HC, mHC) or ``m`` (FC) the port takes; ``None`` for any.
    ``iters``: the numbers of Sinkhorn iterations the port takes (mHC); ``None`` for any.
    ``mhc_variants``: ``"paper"`` (``eps = 0``) and/or ``"v4"`` (DeepSeek-V4's ``eps > 0``).
    ``mixed_precision``: float32 parameters on a bfloat16/float16 state (decision D12).
    ``notes``: free text per topic for the report (e.g. ``{"norm": "RMSNorm without epsilon"}``).
    """

    families: tuple[str, ...] = ("hc", "fc")
    ops: tuple[str, ...] | None = None
    sites: tuple[str, ...] = ()
    initialisers: tuple[str, ...] = ()
    norms: tuple[str, ...] = NORMS
    norm_eps: Mapping[str, float] = field(default_factory=dict)
    switches: tuple[str, ...] = SWITCHES
    modes: tuple[str, ...] = MODES
    max_rows: int | None = None
    iters: tuple[int, ...] | None = None
    mhc_variants: tuple[str, ...] = MHC_VARIANTS
    mixed_precision: bool = True
    notes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        families = known_families()
        _check_subset("families", self.families, families)
        _check_subset("sites", self.sites, self.families)
        _check_subset("initialisers", self.initialisers, self.families)
        _check_subset("norms", self.norms, NORMS)
        _check_subset("norm_eps", tuple(self.norm_eps), self.norms)
        _check_subset("switches", self.switches, SWITCHES)
        _check_subset("modes", self.modes, MODES)
        if not self.modes:
            raise ValueError(f"modes: expected at least one of {MODES}, got ()")
        if not self.norms:
            raise ValueError(f"norms: expected at least one of {NORMS}, got ()")
        if self.ops is not None:
            _check_subset("ops", self.ops, tuple(_all_ops()))
        if self.max_rows is not None and (isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int)
                                          or self.max_rows < 1):
            raise ValueError(f"max_rows: expected None or an int >= 1, got {self.max_rows!r}")
        _check_subset("mhc_variants", self.mhc_variants, MHC_VARIANTS)
        if "mhc" in self.families and not self.mhc_variants:
            raise ValueError(f"mhc_variants: expected at least one of {MHC_VARIANTS}, got ()")
        if self.iters is not None and (isinstance(self.iters, (str, int)) or not self.iters or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in self.iters)):
            raise ValueError(f"iters: expected None or a non-empty tuple of ints >= 1, got {self.iters!r}")
        for norm, eps in self.norm_eps.items():
            if not isinstance(eps, (int, float)) or eps < 0:
                raise ValueError(f"norm_eps[{norm!r}]: expected a float >= 0, got {eps!r}")

    @property
    def op_names(self) -> tuple[str, ...]:
        """The op-level entry points: ``ops`` as declared, or every op of the families and the ends."""
        if self.ops is not None:
            return tuple(self.ops)
        return END_OPS + tuple(name for family in self.families for name in family_ops(family))

    def has_op(self, name: str) -> bool:
        """Whether op ``name`` is declared."""
        return name in self.op_names

    def site_entry(self, family: str) -> str | None:
        """How the suite reaches a whole site of ``family``: ``"module"`` (the port's ``site``),
        ``"ops"`` (composed from the port's ops) or ``None`` (neither is declared)."""
        if family not in self.families:
            return None
        if family in self.sites:
            return "module"
        return "ops" if all(self.has_op(name) for name in SITE_OPS[family]) else None


def _check_subset(name: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{name}: expected a tuple of strings from {tuple(allowed)}, got {values!r}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"{name}: unknown {unknown}; expected a subset of {tuple(allowed)}")


def support_of(port: object) -> Support:
    """The :class:`Support` ``port`` declares through ``supports()`` (a ``Support`` or a mapping
    of its fields, lists allowed for tuples). Without ``supports``: :class:`Support` ``()`` (HC and
    FC, every option), with the ``mhc`` family added when the port has any mHC op (it must then
    have all of them: :func:`missing_members` names the rest)."""
    declare = getattr(port, "supports", None)
    if declare is None:
        if any(hasattr(port, name) for name in family_ops("mhc")):
            return Support(families=("hc", "fc", "mhc"))
        return Support()
    declared = declare() if callable(declare) else declare
    if isinstance(declared, Support):
        return declared
    if not isinstance(declared, Mapping):
        raise TypeError(f"supports(): expected a hcref.interface.Support or a mapping, got {type(declared).__name__}")
    names = {f.name for f in fields(Support)}
    unknown = sorted(set(declared) - names)
    if unknown:
        raise ValueError(f"supports(): unknown fields {unknown}; expected some of {sorted(names)}")
    values: dict[str, Any] = {key: tuple(v) if isinstance(v, list) else v for key, v in declared.items()}
    return Support(**values)


@runtime_checkable
class Port(Protocol):
    """The members every port has, whatever its entry points (module docstring)."""

    name: str
    """Import name of the port, e.g. ``"hcref_torch"``."""
    version: str
    """Version of the port (of the library it wraps, for an adapter)."""
    framework_version: str
    """Name and version of the framework under it, e.g. ``"torch 2.13.0"``."""

    def capabilities(self) -> Sequence[tuple[str, str]]:
        """The (device, dtype) pairs the port supports, e.g. ``[("cpu", "float64"), ...]``.

        Devices that are not present on this machine are left out.
        """
        ...

    def asarray(self, x: np.ndarray, dtype: str, device: str) -> Any:
        """A native array holding ``x`` rounded to ``dtype`` on ``device``."""
        ...

    def to_numpy(self, x: Any) -> np.ndarray:
        """The exact values of a native array as NumPy; a dtype NumPy lacks (bfloat16) comes
        back as float32, which holds it exactly."""
        ...

    def dtype_name(self, x: Any) -> str:
        """The dtype of a native array as one of :data:`DTYPES` (or the framework's name)."""
        ...

    def vjp(
        self, fn: Callable[..., Any], primals: Sequence[Any], cotangents: Sequence[Any]
    ) -> tuple[Any, ...]:
        """Cotangents of ``primals`` for ``fn`` given output ``cotangents`` (see module doc)."""
        ...


@runtime_checkable
class Backend(Port, Protocol):
    """A port with the op-level entry for every op of HC and FC (the first-party backends)."""

    # The ops of the contract; the reference functions of the same name document them.
    def expand(self, x: Any, n: int) -> Any: ...
    def reduce(self, H: Any) -> Any: ...
    def frac_split(self, x: Any, m: int) -> Any: ...
    def frac_merge(self, H: Any) -> Any: ...
    def hc_coeffs(
        self, H: Any, params: Mapping[str, Any], *, norm: str = ..., use_tanh: bool = ...,
        use_norm: bool = ..., use_scale: bool = ...,
    ) -> tuple[Any, Any]: ...
    def hc_width(self, H: Any, alpha: Any) -> tuple[Any, Any]: ...
    def hc_depth(self, y: Any, H_res: Any, beta: Any) -> Any: ...
    def fc_coeffs(
        self, H: Any, params: Mapping[str, Any], *, norm: str = ..., use_tanh: bool = ...,
        use_norm: bool = ..., use_scale: bool = ...,
    ) -> tuple[Any, Any]: ...
    def fc_width(self, H: Any, alpha: Any) -> tuple[Any, Any]: ...
    def fc_depth(self, y: Any, H_res: Any, beta: Any) -> Any: ...


@runtime_checkable
class MhcBackend(Backend, Protocol):
    """A :class:`Backend` with the mHC ops as well (decisions D7-D10)."""

    def sinkhorn(self, Z: Any, *, iters: int = ..., eps: float = ...) -> Any: ...
    def mhc_coeffs(self, H: Any, params: Mapping[str, Any], *, iters: int = ...,
                   eps: float = ...) -> tuple[Any, Any, Any]: ...
    def mhc_pre(self, H: Any, h_pre: Any) -> Any: ...
    def mhc_post(self, y: Any, H: Any, h_post: Any, h_res: Any) -> Any: ...
    def mhc_head(self, H: Any, params: Mapping[str, Any], *, eps: float = ...) -> Any: ...


def missing_members(port: object, support: Support | None = None) -> list[str]:
    """Names of contract members ``port`` lacks for what it declares (empty when complete):
    the infrastructure of :class:`Port`, the declared ops, ``site`` for a module-level family
    and ``init_<family>`` for a declared initialiser."""
    support = support_of(port) if support is None else support
    members = INFRASTRUCTURE + support.op_names
    if support.sites:
        members += ("site",)
    members += tuple(f"init_{family}" for family in support.initialisers)
    return [name for name in members if not hasattr(port, name)]
