"""Compare a port's arrays with the float64 reference and explain any difference.

The metric and the bounds are those of :mod:`hcref.tolerances`:
``error = max|out - ref| / (atol + rtol * scale)``, a pass when ``error <= 1``. Every
comparison, passing or failing, is reported to :data:`OBSERVERS` (the session's recorder keeps
the worst ratio over all examples, failing ones included, and where it occurred).

Failures carry a *reason class*:

    value           a forward output differs from the reference (or is NaN/inf where it is finite)
    gradient        a cotangent of the VJP differs
    dtype           an output has the wrong shape or dtype (decision D12)
    error contract  bad input accepted, or raised with another exception class or message
    exception       valid input raised an exception
    unsupported     the port raised NotImplementedError for something it declares
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hcref.tolerances import Tolerance

OBSERVERS: list[Callable[..., None]] = []
"""Callbacks ``(context, label, out, ref, scale, ratio)`` run on every comparison."""

REASONS = ("value", "gradient", "dtype", "error contract", "exception", "unsupported")
"""Reason classes of a failure, in the order the report lists them."""


class ConformanceError(AssertionError):
    """A port disagrees with the reference (or with the contract); the message says how.

    ``reason`` is one of :data:`REASONS`; ``label`` the output; ``ratio`` the error over the
    tolerance (``inf`` when not a value comparison); ``rel`` the max abs error over the scale.
    """

    def __init__(self, message: str, *, reason: str = "value", label: str = "", ratio: float = float("inf"),
                 rel: float = float("inf"), where: str = "") -> None:
        super().__init__(message)
        self.reason, self.label, self.ratio, self.rel, self.where = reason, label, ratio, rel, where


@dataclass(frozen=True)
class Context:
    """Who and what a comparison is about, for the failure message."""

    op: str
    check: str
    backend: str
    dtype: str
    device: str
    inputs: str
    options: str
    repro: str

    def header(self) -> str:
        """The first lines of every failure message."""
        return (
            f"hcref conformance failure: op {self.op} ({self.check}) on backend {self.backend}\n"
            f"  dtype {self.dtype}, device {self.device}\n"
            f"  inputs: {self.inputs}\n"
            f"  options: {self.options or '(none)'}"
        )

    def fail(self, what: str, *, reason: str = "value", label: str = "", ratio: float = float("inf"),
             rel: float = float("inf"), where: str = "") -> ConformanceError:
        """A :class:`ConformanceError` whose message holds the header, ``what`` and the repro."""
        message = f"{self.header()}\n  [{reason}] {what}\nrepro (copy into python):\n{_indent(self.repro)}"
        return ConformanceError(message, reason=reason, label=label, ratio=ratio, rel=rel, where=where)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def error_ratio(out: np.ndarray, ref: np.ndarray, tol: Tolerance, scale: float | None = None) -> float:
    """``max|out - ref| / (atol + rtol * scale)``, ``scale = max|ref|`` unless given (a parameter
    mapping uses the largest ``max|ref|`` over its keys); ``inf`` for a NaN/inf the reference lacks."""
    diff = np.abs(out.astype(np.float64) - ref)
    if diff.size == 0:
        return 0.0
    if not np.all(np.isfinite(diff)):
        return float("inf")
    if scale is None:
        scale = float(np.max(np.abs(ref)))
    bound = tol.atol + tol.rtol * scale
    return float(np.max(diff)) / bound


def assert_structure(ctx: Context, label: str, shape: tuple[int, ...], dtype: str, got_shape: tuple[int, ...],
                     got_dtype: str) -> None:
    """The port's output ``label`` has the reference's shape and the expected dtype (D12)."""
    __tracebackhide__ = True
    if tuple(got_shape) != tuple(shape):
        raise ctx.fail(f"output {label}: shape {tuple(got_shape)}, but the reference gives {tuple(shape)}",
                       reason="dtype", label=label)
    if got_dtype != dtype:
        raise ctx.fail(f"output {label}: dtype {got_dtype}, but should be {dtype} (decision D12: "
                       "the dtype of the inputs; float32 parameters on a half state keep the state's dtype "
                       "for width/depth outputs and promote for coefficients)", reason="dtype", label=label)


def assert_close(ctx: Context, label: str, out: np.ndarray, ref: np.ndarray, tol: Tolerance,
                 scale: float | None = None, *, reason: str = "value") -> float:
    """Raise :class:`ConformanceError` unless ``out`` matches ``ref`` within ``tol``; return the error ratio."""
    __tracebackhide__ = True
    if out.shape != ref.shape:
        raise ctx.fail(f"output {label}: shape {out.shape}, but the reference gives {ref.shape}", reason="dtype",
                       label=label)
    ratio = error_ratio(out, ref, tol, scale)
    for observe in OBSERVERS:
        observe(ctx, label, out, ref, scale, ratio)
    if ratio <= 1.0:
        return ratio
    diff = np.abs(out.astype(np.float64) - ref)
    diff = np.where(np.isnan(diff), np.inf, diff)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
    index = tuple(int(i) for i in worst)
    if scale is None:
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    rel = diff / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
    allowed = tol.atol + tol.rtol * scale
    max_diff = float(np.max(diff))
    raise ctx.fail(
        f"output {label}: max abs error {max_diff:.3e} at index {index} "
        f"(got {float(out[index]):.9g}, expected {float(ref[index]):.9g}); "
        f"max rel error {float(np.max(rel)):.3e}; scale (max|ref|) {scale:.3e}\n"
        f"  tolerance: rtol {tol.rtol:.1e}, atol {tol.atol:.1e} -> allowed abs error {allowed:.3e} "
        f"(error/tolerance = {ratio:.3g})",
        reason=reason, label=label, ratio=ratio, rel=max_diff / scale if scale > 0 else float("inf"),
        where=f"{label}{list(index)}",
    )


def assert_exact_zero(ctx: Context, label: str, out: np.ndarray) -> None:
    """A parameter gradient over zero tokens must be exactly 0 (a sum over no tokens)."""
    __tracebackhide__ = True
    bad = out[out != 0] if out.size else out
    if bad.size:
        index = tuple(int(i) for i in np.argwhere(out != 0)[0])
        raise ctx.fail(f"output {label}: a leading axis has size 0, so this parameter gradient is a sum over "
                       f"no tokens and must be exactly 0; got {float(out[index])!r} at index {index} "
                       f"({bad.size} nonzero entries)", reason="gradient", label=label, where=f"{label}{list(index)}")
