"""The reference wrapped as a backend: the conformance suite's self-test target.

Ops are the :mod:`hcref` functions (every op of :data:`hcref.optable.ALL_OPS`: HC, FC and
mHC); gradients come from the hand-derived ``<op>_vjp`` through a small tape.
``vjp(fn, ...)`` differentiates through this backend's ops only: any other arithmetic inside
``fn`` is not recorded, so ``fn`` must be built from the ops (``vjp`` raises if an output of
``fn`` was not made by one).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

import hcref
from hcref.optable import ALL_OPS, OpSpec

_DTYPES = ("float64", "float32", "float16")


class _Record:
    __slots__ = ("args", "kwargs", "outputs", "spec")

    def __init__(self, spec: OpSpec, args: tuple[Any, ...], kwargs: dict[str, Any], outputs: tuple[Any, ...]):
        self.spec, self.args, self.kwargs, self.outputs = spec, args, kwargs, outputs


class NumpyBackend:
    """The NumPy reference as a :class:`hcref.interface.Backend` (CPU; no bfloat16 in NumPy)."""

    name = "hcref_numpy"
    version = hcref.__version__
    framework_version = f"numpy {np.__version__}"

    def __init__(self) -> None:
        self._tape: list[_Record] | None = None

    def capabilities(self) -> list[tuple[str, str]]:
        return [("cpu", dtype) for dtype in _DTYPES]

    def asarray(self, x: np.ndarray, dtype: str, device: str = "cpu") -> np.ndarray:
        if device != "cpu" or dtype not in _DTYPES:
            raise ValueError(f"device/dtype: expected one of {self.capabilities()}, got ({device!r}, {dtype!r})")
        return np.array(x, dtype=dtype)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def dtype_name(self, x: np.ndarray) -> str:
        return str(x.dtype)

    def _call(self, spec: OpSpec, *args: Any, **kwargs: Any) -> Any:
        out = getattr(hcref, spec.name)(*args, **kwargs)
        if self._tape is not None:
            self._tape.append(_Record(spec, args, kwargs, out if isinstance(out, tuple) else (out,)))
        return out

    def vjp(self, fn: Callable[..., Any], primals: Sequence[Any], cotangents: Sequence[Any]) -> tuple[Any, ...]:
        tape: list[_Record] = []
        self._tape = tape
        try:
            out = fn(*primals)
        finally:
            self._tape = None
        outs = out if isinstance(out, tuple) else (out,)
        if len(outs) != len(cotangents):
            raise ValueError(f"cotangents: expected {len(outs)} arrays (one per output of fn), got {len(cotangents)}")
        made = {id(o) for rec in tape for o in rec.outputs} | {id(a) for a in _leaves(primals)}
        for o in outs:
            if id(o) not in made:
                raise ValueError(
                    "fn: an output was not made by this backend's ops; hcref_numpy cannot differentiate it"
                )
        grads: dict[int, np.ndarray] = {}
        for o, g in zip(outs, cotangents, strict=True):
            _accumulate(grads, o, g)
        for rec in reversed(tape):
            g_outs = [grads.get(id(o)) for o in rec.outputs]
            if all(g is None for g in g_outs):
                continue
            g_outs = [np.zeros_like(o) if g is None else g for o, g in zip(rec.outputs, g_outs, strict=True)]
            results = getattr(hcref, rec.spec.vjp_name)(*rec.args, *g_outs, **rec.kwargs)
            for name, g in zip(rec.spec.differentiable, results, strict=True):
                arg = rec.args[rec.spec.inputs.index(name)]
                if isinstance(arg, Mapping):
                    for key, value in arg.items():
                        _accumulate(grads, value, g[key])
                else:
                    _accumulate(grads, arg, g)
        return tuple(
            {key: _grad_of(grads, value) for key, value in p.items()} if isinstance(p, Mapping) else _grad_of(grads, p)
            for p in primals
        )


def _leaves(primals: Sequence[Any]) -> list[Any]:
    return [v for p in primals for v in (p.values() if isinstance(p, Mapping) else (p,))]


def _accumulate(grads: dict[int, np.ndarray], array: Any, g: np.ndarray) -> None:
    grads[id(array)] = grads[id(array)] + g if id(array) in grads else g


def _grad_of(grads: dict[int, np.ndarray], array: np.ndarray) -> np.ndarray:
    return grads.get(id(array), np.zeros_like(array))


def _bind(spec: OpSpec) -> Callable[..., Any]:
    def op(self: NumpyBackend, *args: Any, **kwargs: Any) -> Any:
        return self._call(spec, *args, **kwargs)

    reference = getattr(hcref, spec.name)
    op.__name__ = spec.name
    op.__doc__ = reference.__doc__
    signature = inspect.signature(reference)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    op.__signature__ = signature.replace(parameters=[self_param, *signature.parameters.values()])  # type: ignore[attr-defined]
    return op


for _spec in ALL_OPS.values():
    setattr(NumpyBackend, _spec.name, _bind(_spec))

backend = NumpyBackend()
"""The backend object the conformance suite loads (``--backend hcref_numpy``)."""
