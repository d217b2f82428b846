"""One test case: everything needed to rebuild its inputs from a seed.

A :class:`Case` is small and printable (its ``repr`` is valid Python and lists only the fields
that differ from their defaults), so a failure is reproduced by pasting the case into
:func:`repro_snippet`'s code: op inputs are drawn from ``numpy.random.default_rng(seed)`` by
:func:`hcref.checks.random_inputs`, or are initial parameters when ``init`` is set.

The pseudo-dtype ``"mixed"`` is decision D12's production mix: the state (``H``, ``x``, ``y``,
``H_res``) and the sublayer in a half dtype (bfloat16, or float16 where the port has no
bfloat16), parameters and coefficients (``params``, ``alpha``, ``beta``; mHC's ``h_pre``,
``h_post``, ``h_res`` and Sinkhorn's logits ``Z``) in float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from hcref.checks import random_inputs
from hcref.interface import DTYPES
from hcref.norms import rms_normalize
from hcref.optable import ALL_OPS

from .families import FAMILIES

MIXED = "mixed"
"""Pseudo-dtype of the mixed-precision cases (module docstring)."""

STATE_INPUTS = ("x", "H", "y", "H_res")
"""Inputs that carry activations: scaled by ``Case.scale`` and in the half dtype when mixed."""

LOGIT_PATTERNS: dict[str, str] = {
    "big90": "every logit 90 above the draw: exp overflows float32 above 88.7 (a max shift is needed)",
    "spread160": "diagonal logits +80, off-diagonal -80 (spread 160)",
    "row-1e4": "row 0 of the logits 1e4 below the others (a plain exp underflows it to 0/0)",
    "col-1e4": "column 0 of the logits 1e4 below the others",
}
"""Fixed patterns added to Sinkhorn's logits (``Z`` of ``sinkhorn``, the residual block of ``b``
of ``mhc_coeffs``): where the paper's Sinkhorn must stay finite and exact (decision D7)."""


@dataclass(frozen=True)
class Case:
    """Inputs of op or composite ``op``: leading axes ``lead``, ``k`` rows (n or m) of width ``w``
    (d or e), values from ``seed``, activations times ``scale``.

    Coefficient ops and composites also use ``dynamic``, ``norm``, the three switches, ``init``
    (initial instead of random parameters; ``layer_index`` for HC) and ``gates`` (when set,
    ``s_alpha = s_beta = gates``); composites use ``sublayer`` (see
    :mod:`hcref_conformance.sublayer`) and ``sites`` (sites of a network). mHC ops and
    composites use ``dynamic``, ``init`` (D10's ``hc_like`` preset), ``iters`` and ``eps`` (their
    options; ``eps > 0`` is DeepSeek-V4's variant) instead of ``norm`` and the switches, and
    ``logits`` (a key of :data:`LOGIT_PATTERNS`) adds a fixed pattern to Sinkhorn's logits.
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
    iters: int = 20
    eps: float = 0.0
    logits: str = ""

    def __repr__(self) -> str:
        parts = [f"op={self.op!r}"]
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if value != f.default:
                parts.append(f"{f.name}={value!r}")
        return "Case(" + ", ".join(parts) + ")"

    @property
    def family(self) -> str:
        """``hc``, ``fc``, ``mhc`` or ``ends``."""
        return ALL_OPS[self.op].family if self.op in ALL_OPS else self.op.split("_", 1)[0]

    @property
    def kind(self) -> str:
        """``op`` for an op, else ``site``, ``network`` or ``prenorm``."""
        return "op" if self.op in ALL_OPS else self.op.split("_", 1)[1]

    @property
    def options(self) -> dict[str, Any]:
        """Keyword options of the op (HC/FC coefficients: norm and switches; mHC: those of its
        op table row among ``iters`` and ``eps``; none for the other ops)."""
        if self.op in ALL_OPS:
            names = ALL_OPS[self.op].options
        else:
            names = ("iters", "eps") if self.family == "mhc" else ("norm", "use_tanh", "use_norm", "use_scale")
        return {name: getattr(self, name) for name in names}

    @property
    def contraction(self) -> int:
        """The longest sum inside the op (for :func:`hcref.tolerances.tolerance`): mHC's
        coefficients contract the flattened n*d state."""
        if self.family == "mhc" and self.op not in ("mhc_pre", "mhc_post", "sinkhorn"):
            return self.k * self.w
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
        """``params`` with ``s_alpha = s_beta = gates`` (mHC: all three ``gates``) when ``gates``
        is set (dynamic sites)."""
        out = dict(params)
        if self.gates is not None and "s_alpha" in out:
            out["s_alpha"] = np.asarray(float(self.gates))
            out["s_beta"] = np.asarray(float(self.gates))
        if self.gates is not None and "gates" in out:
            out["gates"] = np.full(3, float(self.gates))
        return out

    def inputs(self) -> tuple[Any, ...]:
        """The op's positional inputs as float64 NumPy (ints stay ints, params a dict)."""
        rng = np.random.default_rng(self.seed)
        kw: dict[str, Any] = {"dynamic": self.dynamic} if self.family == "mhc" else {"dynamic": self.dynamic,
                                                                                       "norm": self.norm}
        if self.op in ("sinkhorn", "mhc_pre", "mhc_post"):
            kw = {}
        args = random_inputs(self.op, rng, self.lead, self.k, self.w, **kw)
        if self.op.endswith("_coeffs"):
            args = (args[0], self.params(rng))
        elif self.op == "mhc_head" and self.init:
            args = (args[0], hcref_init_head(self.k, self.w))
        if self.logits:
            args = self._with_logits(args)
        names = ALL_OPS[self.op].inputs
        return tuple(a * self.scale if name in STATE_INPUTS and self.scale != 1.0 else a
                     for name, a in zip(names, args, strict=True))

    def _with_logits(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """``args`` with :data:`LOGIT_PATTERNS` ``[logits]`` added to Sinkhorn's logits."""
        if self.op == "sinkhorn":
            return (args[0] + logit_pattern(self.logits, self.k),)
        if self.op == "mhc_coeffs":
            params = dict(args[1])
            n = self.k
            b = params["b"].copy()
            b[2 * n:] += logit_pattern(self.logits, n).reshape(-1)
            params["b"] = b
            return (args[0], params)
        return args

    def cotangent_rng(self) -> np.random.Generator:
        """The generator of this case's output cotangents (independent of the inputs)."""
        return np.random.default_rng([self.seed, 1])


def hcref_init_head(n: int, d: int) -> dict[str, np.ndarray]:
    """The mHC head's initial parameters (:func:`hcref.init_mhc_head`)."""
    import hcref

    return hcref.init_mhc_head(n, d)


def logit_pattern(name: str, n: int) -> np.ndarray:
    """The (n, n) pattern :data:`LOGIT_PATTERNS` ``[name]``."""
    if name not in LOGIT_PATTERNS:
        raise ValueError(f"logits: expected one of {sorted(LOGIT_PATTERNS)}, got {name!r}")
    P = np.zeros((n, n))
    if name == "big90":
        P += 90.0
    elif name == "spread160":
        P += np.where(np.eye(n, dtype=bool), 80.0, -80.0)
    elif name == "row-1e4":
        P[0, :] -= 1e4
    else:
        P[:, 0] -= 1e4
    return P


def sinkhorn_logits(H: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
    """The residual logits ``mat(gates[2] z_res + b_res)`` (..., n, n) that ``mhc_coeffs`` hands
    to Sinkhorn (float64; ``b_res`` alone for a static site), for :func:`sinkhorn_conditioning`."""
    n = H.shape[-2]
    b_res = np.asarray(params["b"], dtype=np.float64)[2 * n:].reshape(n, n)
    if "phi" not in params:
        return np.broadcast_to(b_res, H.shape[:-2] + (n, n))
    v_hat, _ = rms_normalize(np.asarray(H, np.float64).reshape(H.shape[:-2] + (n * H.shape[-1],)), 1e-6)
    z = v_hat @ np.asarray(params["phi"], dtype=np.float64)[:, 2 * n:]
    return (float(np.asarray(params["gates"])[2]) * z).reshape(H.shape[:-2] + (n, n)) + b_res


def sinkhorn_conditioning(logits: np.ndarray) -> float:
    """Factor on the tolerance of anything computed through Sinkhorn: ``max(1, max|Z|)``.

    Why: every iterate is ``exp(Z - r - c)`` with potentials ``r``, ``c`` of the size of the
    logits, so in a dtype of unit roundoff u the exponent carries an absolute error of about
    ``max|Z| u``, and the result a relative error of about ``max|Z| u`` (float32 Sinkhorn on
    logits of size 1e4 errs about 1e4 * 2^-24 = 6e-4 relative, and no implementation does
    better). The suite's draws have logits of order 1 (factor 1 to about 5); the fixed
    :data:`LOGIT_PATTERNS` cases (90, 160, 1e4) get the factor their logits imply, which still
    catches a NaN, an inf, a wrong order or a missing iteration.
    """
    return max(1.0, float(np.max(np.abs(logits)))) if np.size(logits) else 1.0


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
    width outputs and ``mhc_pre`` / ``mhc_head`` keep the state's dtype (``H``); depth returns
    ``promote(y, H_res)``, ``mhc_post`` ``promote(y, H)``, ``sinkhorn`` Z's dtype.
    """
    if op in ("mhc_pre", "mhc_head"):
        return dtypes["H"]
    if op == "mhc_post":
        return promote(dtypes["y"], dtypes["H"])
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
