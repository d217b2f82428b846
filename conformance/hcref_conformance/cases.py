"""One test case of one op: everything needed to rebuild its inputs from a seed.

A :class:`Case` is small and printable (its ``repr`` is valid Python), so a failure can be
reproduced by pasting the case into :func:`repro_snippet`'s code: inputs are drawn from
``numpy.random.default_rng(seed)`` by :func:`hcref.checks.random_inputs`, or are the
initial parameters of :func:`hcref.init_hc` / :func:`hcref.init_fc` when ``init`` is set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import hcref
from hcref.checks import random_inputs, random_params
from hcref.optable import OPS


@dataclass(frozen=True)
class Case:
    """Inputs of op ``op``: leading axes ``lead``, ``k`` rows (n or m) of width ``w`` (d or e).

    Coefficient ops also use ``dynamic``, ``norm``, the three switches and, when ``init`` is
    set, the initial parameters (``layer_index`` for HC) instead of random ones.
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

    @property
    def family(self) -> str:
        """``hc``, ``fc`` or ``ends``."""
        return OPS[self.op].family if self.op in OPS else self.op[:2]

    @property
    def options(self) -> dict[str, Any]:
        """Keyword options of the op call."""
        if self.op in OPS and not OPS[self.op].options:
            return {}
        opts: dict[str, Any] = {"norm": self.norm, "use_tanh": self.use_tanh, "use_norm": self.use_norm}
        opts["use_scale"] = self.use_scale
        return opts

    @property
    def contraction(self) -> int:
        """The longest sum inside the op (for :func:`hcref.tolerances.tolerance`)."""
        return max(self.k, self.w) * (2 if self.family in ("hc", "fc") else 1)

    def params(self, rng: np.random.Generator, family: str | None = None) -> dict[str, np.ndarray]:
        """Site parameters: initial values when ``init``, random (hcref.checks) otherwise."""
        family = family or self.family
        if self.init:
            if family == "hc":
                return hcref.init_hc(self.k, self.w, self.layer_index, dynamic=self.dynamic, norm=self.norm)
            return hcref.init_fc(self.k, self.k * self.w, dynamic=self.dynamic, norm=self.norm)
        return random_params(family, self.k, self.w, rng, dynamic=self.dynamic, norm=self.norm)

    def inputs(self) -> tuple[Any, ...]:
        """The op's positional inputs as float64 NumPy (ints stay ints, params a dict)."""
        rng = np.random.default_rng(self.seed)
        args = random_inputs(self.op, rng, self.lead, self.k, self.w, dynamic=self.dynamic, norm=self.norm)
        if self.op.endswith("_coeffs"):
            args = (args[0], self.params(rng))
        return tuple(_scaled(a, self.scale) if i == 0 else a for i, a in enumerate(args))

    def cotangent_rng(self) -> np.random.Generator:
        """The generator of this case's output cotangents (independent of the inputs)."""
        return np.random.default_rng([self.seed, 1])


def _scaled(x: Any, scale: float) -> Any:
    return x * scale if isinstance(x, np.ndarray) and scale != 1.0 else x


def tree_map(fn: Any, tree: Any) -> Any:
    """Apply ``fn`` to an array or to every value of a mapping; Python scalars pass through."""
    if isinstance(tree, Mapping):
        return {key: fn(value) for key, value in tree.items()}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    return fn(tree)


def to_backend(backend: Any, values: Sequence[Any], dtype: str, device: str) -> list[Any]:
    """NumPy inputs as the backend's native arrays of ``dtype`` on ``device``."""
    return [tree_map(lambda x: backend.asarray(np.asarray(x), dtype, device), v) for v in values]


def to_reference(backend: Any, native: Sequence[Any]) -> list[Any]:
    """Native arrays back to float64 NumPy, exactly (the rounded inputs the reference gets)."""
    return [tree_map(lambda x: np.asarray(backend.to_numpy(x), dtype=np.float64), v) for v in native]


def describe(values: Sequence[Any], names: Sequence[str], dtype: str) -> str:
    """``H (2, 3, 4) float32, params {A_m (3,), ...}`` for a failure message."""
    parts = []
    for name, value in zip(names, values, strict=False):
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
            "import numpy as np",
            "from hcref_conformance.cases import Case",
            "from hcref_conformance.checks import run_check",
            "from hcref_conformance.loading import load_backend",
            f"backend = load_backend({spec!r})",
            f"case = {case!r}",
            f"run_check({check!r}, backend, case, dtype={dtype!r}, device={device!r})  # raises with the details",
        ]
    )
