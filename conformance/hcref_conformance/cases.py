"""One test case: everything needed to rebuild its inputs from a seed.

A :class:`Case` is small and printable (its ``repr`` is valid Python and lists only the fields
that differ from their defaults), so a failure is reproduced by pasting the case into
:func:`repro_snippet`'s code: op inputs are drawn from ``numpy.random.default_rng(seed)`` by
:func:`hcref.checks.random_inputs`, or are initial parameters when ``init`` is set.

The pseudo-dtype ``"mixed"`` is decision D12's production mix: the state (``H``, ``x``, ``y``,
``H_res``) and the sublayer in a half dtype (bfloat16, or float16 where the port has no
bfloat16), parameters and coefficients (``params``, ``alpha``, ``beta``) in float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from hcref.checks import random_inputs
from hcref.interface import DTYPES
from hcref.optable import OPS

from .families import FAMILIES

MIXED = "mixed"
"""Pseudo-dtype of the mixed-precision cases (module docstring)."""

STATE_INPUTS = ("x", "H", "y", "H_res")
"""Inputs that carry activations: scaled by ``Case.scale`` and in the half dtype when mixed."""


@dataclass(frozen=True)
class Case:
    """Inputs of op or composite ``op``: leading axes ``lead``, ``k`` rows (n or m) of width ``w``
    (d or e), values from ``seed``, activations times ``scale``.

    Coefficient ops and composites also use ``dynamic``, ``norm``, the three switches, ``init``
    (initial instead of random parameters; ``layer_index`` for HC) and ``gates`` (when set,
    ``s_alpha = s_beta = gates``); composites use ``sublayer`` (see
    :mod:`hcref_conformance.sublayer`) and ``sites`` (sites of a network).
    """

    op: str
    lead: tuple[int, ...] = (2,)
    k: int = 2
    w: int = 4
    seed: int = 0
    dynamic: bool = True
    norm: str = "layernorm"
    use_tanh: bool = True
    use_norm: bool = True
    use_scale: bool = True
    init: bool = False
    layer_index: int = 0
    scale: float = 1.0
    gates: float | None = None
    sublayer: str = "mlp"
    sites: int = 2

    def __repr__(self) -> str:
        parts = [f"op={self.op!r}"]
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if value != f.default:
                parts.append(f"{f.name}={value!r}")
        return "Case(" + ", ".join(parts) + ")"

    @property
    def family(self) -> str:
        """``hc``, ``fc`` or ``ends``."""
        return OPS[self.op].family if self.op in OPS else self.op.split("_", 1)[0]

    @property
    def kind(self) -> str:
        """``op`` for an op, else ``site``, ``network`` or ``prenorm``."""
        return "op" if self.op in OPS else self.op.split("_", 1)[1]

    @property
    def options(self) -> dict[str, Any]:
        """Keyword options of the coefficient op (none for the other ops)."""
        if self.op in OPS and not OPS[self.op].options:
            return {}
        return {"norm": self.norm, "use_tanh": self.use_tanh, "use_norm": self.use_norm, "use_scale": self.use_scale}

    @property
    def contraction(self) -> int:
        """The longest sum inside the op (for :func:`hcref.tolerances.tolerance`)."""
        return max(self.k, self.w) * (2 if self.family in FAMILIES else 1)

    @property
    def size(self) -> int:
        """Elements of the state (what minimisation makes small)."""
        return math.prod(self.lead) * self.k * self.w

    def params(self, rng: np.random.Generator, family: str | None = None) -> dict[str, np.ndarray]:
        """Site parameters (float64): initial when ``init``, random otherwise; ``gates`` applied."""
        fam = FAMILIES[family or self.family]
        if self.init:
            p = fam.init(self.k, self.w, self.layer_index, dynamic=self.dynamic, norm=self.norm)
        else:
            p = fam.random_params(self.k, self.w, rng, dynamic=self.dynamic, norm=self.norm)
        return self.with_gates(p)

    def with_gates(self, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``params`` with ``s_alpha = s_beta = gates`` when ``gates`` is set (dynamic sites)."""
        out = dict(params)
        if self.gates is not None and "s_alpha" in out:
            out["s_alpha"] = np.asarray(float(self.gates))
            out["s_beta"] = np.asarray(float(self.gates))
        return out

    def inputs(self) -> tuple[Any, ...]:
        """The op's positional inputs as float64 NumPy (ints stay ints, params a dict)."""
        rng = np.random.default_rng(self.seed)
        args = random_inputs(self.op, rng, self.lead, self.k, self.w, dynamic=self.dynamic, norm=self.norm)
        if self.op.endswith("_coeffs"):
            args = (args[0], self.params(rng))
        names = OPS[self.op].inputs
        return tuple(a * self.scale if name in STATE_INPUTS and self.scale != 1.0 else a
                     for name, a in zip(names, args, strict=True))

    def cotangent_rng(self) -> np.random.Generator:
        """The generator of this case's output cotangents (independent of the inputs)."""
        return np.random.default_rng([self.seed, 1])


def half_dtype(supported: Sequence[str]) -> str:
    """The half dtype of the mixed cases: bfloat16, or float16 where bfloat16 is not supported."""
    return "bfloat16" if "bfloat16" in supported else "float16"


def input_dtypes(names: Sequence[str], dtype: str, half: str) -> list[str]:
    """The dtype of each input named in ``names`` for test dtype ``dtype`` (see :data:`MIXED`)."""
    if dtype != MIXED:
        return [dtype] * len(names)
    return [half if name in STATE_INPUTS or name == "sublayer" else "float32" for name in names]


PRECISION = {name: i for i, name in enumerate(DTYPES)}


def promote(*dtypes: str) -> str:
    """The result dtype of mixing ``dtypes`` (bfloat16 with float16 gives float32, as the frameworks do)."""
    unique = set(dtypes)
    if unique == {"bfloat16", "float16"}:
        return "float32"
    return min(unique, key=lambda d: PRECISION[d])


def lowest(*dtypes: str) -> str:
    """The least precise of ``dtypes``."""
    return max(dtypes, key=lambda d: PRECISION[d])


def result_dtype(op: str, output: str, dtypes: Mapping[str, str]) -> str:
    """The dtype output ``output`` of ``op`` must have for inputs of ``dtypes`` (decision D12).

    Ends keep their input's dtype; coefficient ops return the promoted dtype of all their inputs;
    width outputs keep the state's dtype (``H``); depth returns ``promote(y, H_res)``.
    """
    if op.endswith("_coeffs"):
        return promote(*dtypes.values())
    if op.endswith("_width"):
        return dtypes["H"]
    if op.endswith("_depth"):
        return promote(dtypes["y"], dtypes["H_res"])
    return next(iter(dtypes.values()))


def tree_map(fn: Any, tree: Any) -> Any:
    """Apply ``fn`` to an array or to every value of a mapping; Python scalars pass through."""
    if isinstance(tree, Mapping):
        return {key: fn(value) for key, value in tree.items()}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    return fn(tree)


def to_backend(backend: Any, values: Sequence[Any], dtype: str | Sequence[str], device: str) -> list[Any]:
    """NumPy inputs as the backend's native arrays of ``dtype`` (one dtype, or one per value)."""
    dtypes = [dtype] * len(values) if isinstance(dtype, str) else list(dtype)
    return [tree_map(lambda x, d=d: backend.asarray(np.asarray(x), d, device), v)
            for v, d in zip(values, dtypes, strict=True)]


def to_reference(backend: Any, native: Sequence[Any]) -> list[Any]:
    """Native arrays back to float64 NumPy, exactly (the rounded inputs the reference gets)."""
    return [tree_map(lambda x: np.asarray(backend.to_numpy(x), dtype=np.float64), v) for v in native]


def describe(values: Sequence[Any], names: Sequence[str], dtypes: Sequence[str]) -> str:
    """``H (2, 3, 4) float32, params {A_m (3,), ...} float32`` for a failure message."""
    parts = []
    for name, value, dtype in zip(names, values, dtypes, strict=False):
        if isinstance(value, Mapping):
            inner = ", ".join(f"{key} {tuple(np.shape(v))}" for key, v in value.items())
            parts.append(f"{name} {{{inner}}} {dtype}")
        elif isinstance(value, (int, float)):
            parts.append(f"{name}={value!r}")
        else:
            parts.append(f"{name} {tuple(np.shape(value))} {dtype}")
    return ", ".join(parts)


def repro_snippet(spec: str, case: Case, dtype: str, device: str, check: str) -> str:
    """Copy-pastable Python that rebuilds the case's inputs and reruns the failing check."""
    return "\n".join(
        [
            "from hcref_conformance.cases import Case",
            "from hcref_conformance.checks import run_check",
            "from hcref_conformance.loading import load_backend",
            f"backend = load_backend({spec!r})",
            f"case = {case!r}",
            f"run_check({check!r}, backend, case, dtype={dtype!r}, device={device!r})  # raises with the details",
        ]
    )
