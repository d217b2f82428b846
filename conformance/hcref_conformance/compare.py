"""Compare a backend's arrays with the float64 reference and explain any difference.

The metric and the bounds are those of :mod:`hcref.tolerances`:
``error = max|out - ref| / (atol + rtol * max|ref|)``, a pass when ``error <= 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hcref.tolerances import Tolerance

OBSERVERS: list[Callable[..., None]] = []
"""Callbacks ``(context, label, out, ref, scale)`` run on every comparison (calibration)."""


class ConformanceError(AssertionError):
    """A backend disagrees with the reference (or with the contract); the message says how."""


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

    def fail(self, what: str) -> ConformanceError:
        """A :class:`ConformanceError` whose message holds the header, ``what`` and the repro."""
        return ConformanceError(f"{self.header()}\n  {what}\nrepro (copy into python):\n{_indent(self.repro)}")


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
    """The backend's output ``label`` has the reference's shape and the test dtype."""
    __tracebackhide__ = True
    if tuple(got_shape) != tuple(shape):
        raise ctx.fail(f"output {label}: shape {tuple(got_shape)}, but the reference gives {tuple(shape)}")
    if got_dtype != dtype:
        raise ctx.fail(f"output {label}: dtype {got_dtype}, but should be {dtype} (the dtype of the inputs)")


def assert_close(ctx: Context, label: str, out: np.ndarray, ref: np.ndarray, tol: Tolerance,
                 scale: float | None = None) -> float:
    """Raise :class:`ConformanceError` unless ``out`` matches ``ref`` within ``tol``; return the error ratio."""
    __tracebackhide__ = True
    if out.shape != ref.shape:
        raise ctx.fail(f"output {label}: shape {out.shape}, but the reference gives {ref.shape}")
    ratio = error_ratio(out, ref, tol, scale)
    for observe in OBSERVERS:
        observe(ctx, label, out, ref, scale)
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
    raise ctx.fail(
        f"output {label}: max abs error {float(np.max(diff)):.3e} at index {index} "
        f"(got {float(out[index]):.9g}, expected {float(ref[index]):.9g}); "
        f"max rel error {float(np.max(rel)):.3e}; scale (max|ref|) {scale:.3e}\n"
        f"  tolerance: rtol {tol.rtol:.1e}, atol {tol.atol:.1e} -> allowed abs error {allowed:.3e} "
        f"(error/tolerance = {ratio:.3g})"
    )
