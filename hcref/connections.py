"""What every backend's connection modules share, written once and framework-free.

A connection module (``HyperConnections``, ``FracConnections``, ``ManifoldHyperConnections``,
``MHCHead`` in each backend) is a :class:`Plan` plus framework code: the plan holds the
parameter keys, their shapes and initial values (``hcref.init_*``), the options and their
checks, the ``extra_repr`` text and the module-level input checks with errors that name the
module and the likely fix; the two-step protocol is written here once against an *ops
namespace* (any object with the backend's functional ops as attributes, plus its ``meta``)::

    h0, state = width(ops, plan, H, params)     # coefficients, then the sublayer's input
    y         = branch(h0)                      # the sublayer (with its own pre-norm)
    H_out     = depth(ops, plan, y, state)      # write back and mix the residual streams
    x         = head(ops, plan, H, params)      # the mHC head (DeepSeek-V4's learned reduce)

``state`` is a :class:`SiteState` ``(H_res, beta)`` for HC/FC (HC paper Alg. 2; FC paper
Alg. 2) and an :class:`MHCState` ``(H, h_post, h_res)`` for mHC (mHC paper Eq. 3: the
residual mix ``h_res H`` is applied in ``depth`` together with the write, as the fused
kernels do). A backend's module creates its parameters from :meth:`Plan.init_params`, passes
``self``'s parameters as the contract mapping, and holds nothing else of the math.

:func:`layer_indices` and :class:`SiteNumbering` number the sites' ``layer_index`` (decision
D2: 0-based, attention and MLP sublayers counted separately) for the user.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from . import validation as v
from .init import init_fc, init_hc, init_mhc, init_mhc_head
from .sinkhorn_knopp import ITERS
from .validation import ArrayMeta

FAMILIES = ("hc", "fc", "mhc", "mhc_head")
"""The plan families: one residual site of HC, FC or mHC, or the mHC head (a network end)."""

_STATIC_KEYS = {"hc": ("A_m", "A_r", "B"), "fc": ("Y", "A", "B"), "mhc": ("b",), "mhc_head": ("phi", "b", "gate")}


class SiteState(NamedTuple):
    """HC/FC: what ``depth`` needs from ``width``: the mixed residual streams and the write weights."""

    H_res: Any
    """(..., n, d) for HC, (..., m, e) for FC."""
    beta: Any
    """(..., n) for HC, (..., m) for FC."""


class MHCState(NamedTuple):
    """mHC: what ``depth`` needs from ``width``: the state and the write and mix coefficients
    (``H_out = h_res H + h_post y^T``, :func:`hcref.mhc_post`)."""

    H: Any
    """(..., n, d): the site's input state."""
    h_post: Any
    """(..., n): write weights ``2 sigmoid(.)``."""
    h_res: Any
    """(..., n, n): residual mix ``h_res[out, in]``, Sinkhorn-projected."""


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclass(frozen=True)
class Plan:
    """One connection module's framework-free part. Build it with :func:`hc_plan`, :func:`fc_plan`,
    :func:`mhc_plan` or :func:`mhc_head_plan` (they check every argument); it is immutable and
    hashable, so a module can keep it as a static attribute (Flax NNX, ``mx.compile``).

    ``rows`` is n (HC, mHC, head) or m (FC); ``d`` the model width; ``options`` the keyword
    options of the family's coefficient op, in the op's order.
    """

    family: str
    module: str
    rows: int
    d: int
    layer_index: int | None
    dynamic: bool
    options: tuple[tuple[str, Any], ...]
    preset: str | None = None

    @property
    def row_width(self) -> int:
        """Width of one row of the state: d (HC, mHC), e = d/m (FC)."""
        return self.d // self.rows if self.family == "fc" else self.d

    @property
    def kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of the coefficient op (``hc_coeffs``, ``mhc_coeffs``, ...)."""
        return dict(self.options)

    @property
    def name(self) -> str:
        """The module as errors name it, e.g. ``HyperConnections(n=4, d=32, layer_index=0)``."""
        rows = "m" if self.family == "fc" else "n"
        index = "" if self.layer_index is None else f", layer_index={self.layer_index}"
        return f"{self.module}({rows}={self.rows}, d={self.d}{index})"

    def init_params(self, dtype: Any = np.float64) -> dict[str, np.ndarray]:
        """The initial parameters under the contract's keys, in ``dtype`` (``hcref.init_*``)."""
        n, d = self.rows, self.d
        opts = self.kwargs
        if self.family == "hc":
            assert self.layer_index is not None
            return init_hc(n, d, self.layer_index, dynamic=self.dynamic, norm=opts["norm"], dtype=dtype)
        if self.family == "fc":
            return init_fc(n, d, dynamic=self.dynamic, norm=opts["norm"], dtype=dtype)
        if self.family == "mhc":
            assert self.layer_index is not None and self.preset is not None
            return init_mhc(n, d, self.layer_index, preset=self.preset, dynamic=self.dynamic, dtype=dtype)
        return init_mhc_head(n, d, dtype=dtype)

    @property
    def keys(self) -> tuple[str, ...]:
        """The contract's parameter keys, in the order of ``hcref.init_*``."""
        if self.family in ("hc", "fc"):
            return v.param_keys(self.family, dynamic=self.dynamic, norm=self.kwargs["norm"])
        if self.family == "mhc":
            return tuple(v.mhc_param_shapes(self.rows, self.d, dynamic=self.dynamic))
        return _STATIC_KEYS["mhc_head"]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every parameter, by key."""
        if self.family in ("hc", "fc"):
            return v.expected_param_shapes(
                self.family, self.rows, self.row_width, dynamic=self.dynamic, norm=self.kwargs["norm"]
            )
        if self.family == "mhc":
            return v.mhc_param_shapes(self.rows, self.d, dynamic=self.dynamic)
        return v.mhc_head_param_shapes(self.rows, self.d)

    def extra_repr(self) -> str:
        """The module's ``extra_repr`` text: sizes, then the options (as the constructor spells them)."""
        rows = "m" if self.family == "fc" else "n"
        parts = [f"{rows}={self.rows}", f"d={self.d}"]
        if self.layer_index is not None:
            parts.append(f"layer_index={self.layer_index}")
        if self.family != "mhc_head":
            parts.append(f"dynamic={self.dynamic}")
        if self.preset is not None:
            parts.append(f"preset={self.preset!r}")
        parts += [f"{key}={value!r}" for key, value in self.options]
        return ", ".join(parts)

    def check_state(self, H: ArrayMeta) -> None:
        """The module's input ``H`` must be (..., rows, row_width); otherwise a ``ValueError`` that
        names the module, what it expected, what it got and the likely fix (a missing
        ``Expand(n)`` / ``FracSplit(m)``)."""
        k, w = self.rows, self.row_width
        shape = tuple(H.shape)
        if len(shape) >= 2 and shape[-2:] == (k, w):
            return
        if self.family == "fc":
            layout = f"m={k} fractions of width e=d/m={w}"
        else:
            layout = f"n={k} streams of width d={w}"
        message = f"{self.name}: expected H of shape (..., {k}, {w}) ({layout}), got shape {_fmt(shape)}"
        raise ValueError(message + self._hint(shape))

    def _hint(self, shape: tuple[int, ...]) -> str:
        k, d = self.rows, self.d
        if not shape or shape[-1] != d:
            return f"; the last axis must be {'e' if self.family == 'fc' else 'd'}={self.row_width}"
        if self.family == "fc":
            return (
                f"; this looks like the unsplit input x (..., d={d}): split it into fractions first, "
                f"H = FracSplit({k})(x), and merge them at the end with FracMerge()"
            )
        end = "Reduce()" if self.family == "hc" else "Reduce() or MHCHead"
        if self.family == "mhc_head":
            return f"; MHCHead reduces the streams of H = Expand({k})(x), not the embedding x (..., d={d})"
        return (
            f"; this looks like the embedding x (..., d={d}) rather than n={k} streams: expand it first, "
            f"H = Expand({k})(x), and reduce the streams at the end with {end}"
        )

    def check_branch_output(self, y: ArrayMeta, lead: tuple[int, ...]) -> None:
        """``depth``'s ``y`` must be the branch's output (..., d) with the state's leading axes."""
        expected = tuple(lead) + (self.d,)
        if tuple(y.shape) != expected:
            raise ValueError(
                f"{self.name}.depth: expected the branch output y of shape {_fmt(expected)} "
                f"(the state's leading axes, then d={self.d}), got shape {_fmt(tuple(y.shape))}"
            )


def hc_plan(
    n: int,
    d: int,
    layer_index: int,
    *,
    dynamic: bool = True,
    norm: str = "layernorm",
    use_tanh: bool = True,
    use_norm: bool = True,
    use_scale: bool = True,
    module: str = "HyperConnections",
) -> Plan:
    """The plan of an HC site (HC paper Eqs. 10-14; decisions D1-D4): checks every argument in the
    order ``hcref.init_hc`` then ``hcref.validation.check_options`` do."""
    v.check_count("n", n)
    v.check_count("d", d)
    v.check_count("layer_index", layer_index, minimum=0)
    v.check_flag("dynamic", dynamic)
    v.check_options(norm, use_tanh, use_norm, use_scale)
    opts = (("norm", norm), ("use_tanh", use_tanh), ("use_norm", use_norm), ("use_scale", use_scale))
    return Plan("hc", module, n, d, layer_index, dynamic, opts)


def fc_plan(
    m: int,
    d: int,
    *,
    dynamic: bool = True,
    norm: str = "layernorm",
    use_tanh: bool = True,
    use_norm: bool = True,
    use_scale: bool = True,
    module: str = "FracConnections",
) -> Plan:
    """The plan of an FC site (FC paper Eqs. 11-15; decisions D1-D6): checks as ``hcref.init_fc``
    (including ``d`` a multiple of ``m``), then the options."""
    v.check_count("m", m)
    v.check_count("d", d)
    if d % m:
        raise ValueError(f"d: expected a multiple of m={m} (d = m * e), got {d}")
    v.check_flag("dynamic", dynamic)
    v.check_options(norm, use_tanh, use_norm, use_scale)
    opts = (("norm", norm), ("use_tanh", use_tanh), ("use_norm", use_norm), ("use_scale", use_scale))
    return Plan("fc", module, m, d, None, dynamic, opts)


def mhc_plan(
    n: int,
    d: int,
    layer_index: int,
    *,
    dynamic: bool = True,
    preset: str = "hc_like",
    iters: int = ITERS,
    eps: float = 0.0,
    module: str = "ManifoldHyperConnections",
) -> Plan:
    """The plan of an mHC site (mHC paper Eqs. 3, 7-9; decisions D7-D10): checks as
    ``hcref.init_mhc``, then ``iters`` (>= 1) and ``eps`` (>= 0, DeepSeek-V4 mode when > 0)."""
    v.check_count("n", n)
    v.check_count("d", d)
    v.check_count("layer_index", layer_index, minimum=0)
    v.check_preset(preset)
    v.check_flag("dynamic", dynamic)
    v.check_iters(iters)
    value = v.check_eps(eps)
    return Plan("mhc", module, n, d, layer_index, dynamic, (("iters", iters), ("eps", value)), preset)


def mhc_head_plan(n: int, d: int, *, eps: float = 0.0, module: str = "MHCHead") -> Plan:
    """The plan of the mHC head (DeepSeek-V4's learned reduce, :func:`hcref.mhc_head`;
    initial values of :func:`hcref.init_mhc_head`)."""
    v.check_count("n", n)
    v.check_count("d", d)
    value = v.check_eps(eps)
    return Plan("mhc_head", module, n, d, None, True, (("eps", value),))


def _lead(ops: Any, state: Any) -> tuple[int, ...]:
    first = state.H if isinstance(state, MHCState) else state.H_res
    return tuple(ops.meta("state", first).shape[:-2])


def width(ops: Any, plan: Plan, H: Any, params: Mapping[str, Any]) -> tuple[Any, SiteState | MHCState]:
    """First half of a site: ``(h0, state)`` from the state ``H`` and the contract mapping ``params``.

    HC/FC: ``alpha, beta = <family>_coeffs(H, params, **options)``, ``h0, H_res = <family>_width(H, alpha)``,
    state ``SiteState(H_res, beta)``. mHC: ``h_pre, h_post, h_res = mhc_coeffs(H, params, iters, eps)``,
    ``h0 = mhc_pre(H, h_pre)``, state ``MHCState(H, h_post, h_res)``. ``ops`` is the backend's ops
    namespace (``ops.meta`` and the family's ops). Raises :meth:`Plan.check_state`'s error first.
    """
    plan.check_state(ops.meta("H", H))
    if plan.family == "mhc":
        h_pre, h_post, h_res = ops.mhc_coeffs(H, params, **plan.kwargs)
        return ops.mhc_pre(H, h_pre), MHCState(H, h_post, h_res)
    if plan.family not in ("hc", "fc"):
        raise ValueError(f"{plan.name}: width/depth are the steps of a site; a head is applied with head()")
    coeffs, mix = (ops.hc_coeffs, ops.hc_width) if plan.family == "hc" else (ops.fc_coeffs, ops.fc_width)
    alpha, beta = coeffs(H, params, **plan.kwargs)
    h0, H_res = mix(H, alpha)
    return h0, SiteState(H_res, beta)


def depth(ops: Any, plan: Plan, y: Any, state: SiteState | MHCState) -> Any:
    """Second half of a site: ``H_out`` from the branch output ``y`` (..., d) and ``width``'s state.

    HC/FC: ``<family>_depth(y, H_res, beta)``; mHC: ``mhc_post(y, H, h_post, h_res)``.
    Raises :meth:`Plan.check_branch_output`'s error first.
    """
    plan.check_branch_output(ops.meta("y", y), _lead(ops, state))
    if isinstance(state, MHCState):
        return ops.mhc_post(y, state.H, state.h_post, state.h_res)
    write = ops.hc_depth if plan.family == "hc" else ops.fc_depth
    return write(y, state.H_res, state.beta)


def head(ops: Any, plan: Plan, H: Any, params: Mapping[str, Any]) -> Any:
    """The mHC head: ``mhc_head(H, params, eps=eps)`` (..., n, d) -> (..., d), after the state check."""
    plan.check_state(ops.meta("H", H))
    return ops.mhc_head(H, params, **plan.kwargs)


def site(
    ops: Any, plan: Plan, H: Any, params: Mapping[str, Any], branch: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """One whole site: ``depth(ops, plan, branch(h0, *args, **kwargs), state)`` with ``h0, state = width(...)``."""
    h0, state = width(ops, plan, H, params)
    return depth(ops, plan, branch(h0, *args, **kwargs), state)


# --- numbering the sites ---------------------------------------------------------------------


def layer_indices(num_layers: int, sublayers_per_layer: int = 2) -> list[tuple[int, ...]]:
    """The ``layer_index`` of every site of a stack (decision D2: 0-based, each sublayer counted).

    ``layer_indices(3)`` is ``[(0, 1), (2, 3), (4, 5)]``: the attention and MLP sites of each of
    three transformer layers. Raises ValueError/TypeError unless both are ints >= 1.
    """
    v.check_count("num_layers", num_layers)
    v.check_count("sublayers_per_layer", sublayers_per_layer)
    k = sublayers_per_layer
    return [tuple(range(layer * k, (layer + 1) * k)) for layer in range(num_layers)]


T = TypeVar("T")


class SiteNumbering(Generic[T]):
    """A factory that numbers the sites it makes (lucidrains' ``get_init_and_expand_reduce_stream_functions``
    idiom, with D2's explicit indices instead of random ones)::

        make = SiteNumbering(HyperConnections, 4, 512)      # any framework's module class
        sites = [(make(), make()) for _ in range(num_layers)]  # layer_index 0, 1, 2, ...

    Each call returns ``factory(*args, layer_index=k, **kwargs, **overrides)`` with
    ``k = start, start + 1, ...``; :attr:`next_index` is the index the next call will use.
    """

    def __init__(self, factory: Callable[..., T], *args: Any, start: int = 0, **kwargs: Any) -> None:
        if not callable(factory):
            raise TypeError(f"factory: expected a callable (a module class), got {type(factory).__name__}")
        if "layer_index" in kwargs:
            raise ValueError("layer_index: SiteNumbering passes it; give the first one as start=")
        self.factory, self.args, self.kwargs = factory, args, kwargs
        self.next_index = v.check_count("start", start, minimum=0)

    def __call__(self, **overrides: Any) -> T:
        if "layer_index" in overrides:
            raise ValueError("layer_index: SiteNumbering passes it; give the first one as start=")
        made = self.factory(*self.args, layer_index=self.next_index, **{**self.kwargs, **overrides})
        self.next_index += 1
        return made
