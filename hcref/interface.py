"""The backend contract, documented once (here) for every implementation.

A backend is a plain object (several can live in one process) exposed by its package as
a module-level ``backend``. The conformance suite reaches a backend only through these
members, so it never imports a framework and never needs to know torch.autograd,
``jax.vjp`` or ``mlx.core.vjp``.

Ops. Every op of :data:`hcref.optable.OPS` exists under its contract name, with the
reference's positional inputs and keyword options, on the backend's native arrays;
parameters are a ``Mapping[str, array]`` with the contract's keys. Shapes, results and
errors are those of the reference (``hcref.<op>``), which is the specification: bad input
raises the same ``ValueError``/``TypeError`` (use :mod:`hcref.validation` to get the same
messages). The result dtype equals the input dtype when all inputs share one.

Gradients. ``vjp(fn, primals, cotangents)`` differentiates any callable built from the
backend's ops: ``fn(*primals)`` returns one array or a tuple of arrays, ``cotangents`` has
one array per output (a 1-tuple for a single output), and the result has one cotangent per
primal, a mapping with the same keys for a mapping primal. Non-differentiable arguments
(``n``, options) are closed over by ``fn``.

Dtypes are named by strings: ``"float64"``, ``"float32"``, ``"bfloat16"``, ``"float16"``.
Devices are named by strings such as ``"cpu"``, ``"cuda"``, ``"gpu"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

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
"""The op members every backend has (the keys of :data:`hcref.optable.OPS`)."""


@runtime_checkable
class Backend(Protocol):
    """What the conformance suite needs of an implementation of HC/FC."""

    name: str
    """Import name of the backend, e.g. ``"hcref_torch"``."""
    version: str
    """Version of the backend package."""
    framework_version: str
    """Name and version of the framework under it, e.g. ``"torch 2.13.0"``."""

    def capabilities(self) -> Sequence[tuple[str, str]]:
        """The (device, dtype) pairs the backend supports, e.g. ``[("cpu", "float64"), ...]``.

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


def missing_members(backend: object) -> list[str]:
    """Names of contract members ``backend`` lacks (empty when it is complete)."""
    members = ("name", "version", "framework_version", "capabilities", "asarray", "to_numpy", "dtype_name", "vjp")
    return [name for name in members + OP_NAMES if not hasattr(backend, name)]
