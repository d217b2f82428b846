"""The port under test as the checks see it: its declared support, its entry points, its own
initialisers and how its gradients are obtained.

A :class:`Subject` runs a whole site or network of a family through the port's module-level
``site`` when the port declares one, else composes it from the port's ops
(:mod:`hcref_conformance.families`). Composite gradients come from the port's ``vjp`` of the
whole computation when that ``vjp`` differentiates native arithmetic (probed once: the suite's
sublayer is plain operators); a ``vjp`` that only knows the port's own ops (a tape, as
``hcref_numpy``'s) gets the composite VJP chained op by op around the sublayer's VJP instead,
and the report header says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hcref.interface import Support, support_of

from .cases import half_dtype
from .families import FAMILIES, PortOps, network_backward, network_forward, site_backward, site_forward


class NotApplicable(Exception):
    """The port does not declare what a check needs: reported as n/a, never pass or FAIL."""


def backend_label(backend: Any) -> str:
    """``name version (framework version)`` of a port."""
    return (f"{getattr(backend, 'name', '?')} {getattr(backend, 'version', '?')} "
            f"({getattr(backend, 'framework_version', '?')})")


@dataclass
class Subject:
    """A port, its declared :class:`~hcref.interface.Support` and the device under test."""

    backend: Any
    device: str = "cpu"
    support: Support = field(default_factory=Support)
    _native_vjp: bool | None = None

    @property
    def label(self) -> str:
        return backend_label(self.backend)

    @property
    def dtypes(self) -> list[str]:
        """Dtypes the port supports on the device."""
        return [dtype for device, dtype in self.backend.capabilities() if device == self.device]

    @property
    def half(self) -> str:
        """The half dtype of the mixed-precision cases."""
        return half_dtype(self.dtypes)

    def mixed_reason(self) -> str | None:
        """Why the mixed-precision cases do not apply (``None`` when they do)."""
        if not self.support.mixed_precision:
            return "mixed precision not declared"
        if "float32" not in self.dtypes or not {"bfloat16", "float16"} & set(self.dtypes):
            return f"needs float32 and a half dtype on {self.device}"
        return None

    @property
    def native_vjp(self) -> bool:
        """Whether the port's ``vjp`` differentiates Python operators on its arrays (probed once)."""
        if self._native_vjp is None:
            self._native_vjp = probe_native_vjp(self.backend, self.device, self.dtypes)
        return self._native_vjp

    def entry(self, family: str) -> str:
        """``"module"`` or ``"ops"``; raises :class:`NotApplicable` when neither is declared."""
        entry = self.support.site_entry(family)
        if entry is None:
            raise NotApplicable(f"no {family.upper()} site: neither {family}_* ops nor site() declared for {family!r}")
        return entry

    def gradient_mode(self, family: str) -> str:
        """How composite VJPs are taken: ``"autodiff"`` or ``"chained"`` (module docstring)."""
        if self.native_vjp:
            return "autodiff"
        if self.entry(family) == "ops":
            return "chained"
        raise NotApplicable("the port's vjp cannot differentiate the suite's sublayer (Python operators) "
                            "and its site is module-level, so no composite VJP can be taken")

    def init(self, family: str, k: int, w: int, layer_index: int, *, dynamic: bool,
             norm: str) -> dict[str, np.ndarray]:
        """Initial parameters as float64 NumPy: the port's own ``init_<family>`` when declared,
        else the reference's (decision D2)."""
        fam = FAMILIES[family]
        if family not in self.support.initialisers:
            return fam.init(k, w, layer_index, dynamic=dynamic, norm=norm)
        d = fam.model_width(k, w)
        if family == "hc":
            raw = self.backend.init_hc(k, d, layer_index, dynamic=dynamic, norm=norm)
        elif family == "mhc":
            raw = self.backend.init_mhc(k, d, layer_index, dynamic=dynamic)
        else:
            raw = self.backend.init_fc(k, d, dynamic=dynamic, norm=norm)
        return {key: _to_float64(self.backend, value) for key, value in raw.items()}

    # --- running composites -----------------------------------------------------------------

    def site(self, family: str, H: Any, params: Any, T: Callable[[Any], Any], options: Mapping[str, Any]) -> Any:
        """One site of ``family`` through the declared entry."""
        if self.entry(family) == "module":
            return self.backend.site(family, H, params, T, **options)
        return site_forward(PortOps(self.backend), FAMILIES[family], H, params, T, options)[0]

    def network(self, family: str, k: int, x: Any, params: Sequence[Any], sublayers: Sequence[Any],
                options: Mapping[str, Any]) -> Any:
        """``end(site(... site(begin(x, k))))`` through the declared entry."""
        fam = FAMILIES[family]
        if self.entry(family) == "ops":
            return network_forward(PortOps(self.backend), fam, k, x, params, sublayers, options)[0]
        H = getattr(self.backend, fam.begin)(x, k)
        for p, T in zip(params, sublayers, strict=True):
            H = self.backend.site(family, H, p, T, **options)
        return getattr(self.backend, fam.end)(H)

    def composite_vjp(self, family: str, kind: str, k: int, state: Any, params: Sequence[Any],
                      sublayers: Sequence[Any], options: Mapping[str, Any], g_out: Any) -> list[Any]:
        """Cotangents ``[g_state, g_params of each site]`` of a site (``kind='site'``) or network."""
        if self.gradient_mode(family) == "autodiff":
            def fn(s: Any, *ps: Any) -> Any:
                if kind == "site":
                    return self.site(family, s, ps[0], sublayers[0], options)
                return self.network(family, k, s, ps, sublayers, options)

            return list(self.backend.vjp(fn, [state, *params], (g_out,)))
        ns, fam = PortOps(self.backend), FAMILIES[family]
        if kind == "site":
            _, tape = site_forward(ns, fam, state, params[0], sublayers[0], options)
            return list(site_backward(ns, fam, sublayers[0].vjp, tape, g_out, options))
        _, tape = network_forward(ns, fam, k, state, params, sublayers, options)
        return network_backward(ns, fam, sublayers, tape, g_out, options)


def _to_float64(backend: Any, value: Any) -> np.ndarray:
    if isinstance(value, (np.ndarray, np.generic, float, int)):
        return np.asarray(value, dtype=np.float64)
    return np.asarray(backend.to_numpy(value), dtype=np.float64)


def probe_native_vjp(backend: Any, device: str, dtypes: Sequence[str]) -> bool:
    """Whether ``backend.vjp`` differentiates ``x * x + x`` written with Python operators."""
    dtype = next((d for d in ("float64", "float32") if d in dtypes), dtypes[0] if dtypes else "float32")
    x = backend.asarray(np.array([1.0, 2.0]), dtype, device)
    g = backend.asarray(np.array([1.0, 1.0]), dtype, device)
    try:
        (got,) = backend.vjp(lambda v: v * v + v, [x], (g,))
        return bool(np.allclose(np.asarray(backend.to_numpy(got), dtype=np.float64), [3.0, 5.0]))
    except Exception:  # any failure means: not differentiable by this vjp
        return False


_SUBJECTS: dict[tuple[int, str], Subject] = {}


def subject_for(backend: Any, device: str = "cpu") -> Subject:
    """The :class:`Subject` of ``backend`` on ``device`` (one per process, so the probe runs once)."""
    key = (id(backend), device)
    if key not in _SUBJECTS:
        _SUBJECTS[key] = Subject(backend, device, support_of(backend))
    return _SUBJECTS[key]
