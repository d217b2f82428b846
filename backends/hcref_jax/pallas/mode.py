"""Which path the ops take (Pallas kernels or the XLA ops of :mod:`hcref_jax.ops`), and how a kernel runs.

Modes (:func:`set_mode`, or the environment variable ``HCREF_JAX_PALLAS`` read when no mode was set):

* ``"auto"`` (default): the kernels on a TPU (``jax.default_backend() == "tpu"``) for every input they
  support (:func:`hcref_jax.pallas.supported`), the XLA path otherwise.
* ``"pallas"``: the kernels wherever they support the input, on any platform; off a TPU they run in
  Pallas' TPU interpret mode (``pltpu.InterpretParams()``: the kernels' VMEM blocks, grid and
  dimension semantics executed on the CPU, slowly). Inputs the kernels do not take (an empty token
  axis, float16/float64, a row too wide for VMEM) still take the XLA path.
* ``"xla"``: never the kernels.

The mode is read when a function is traced: a function already jitted keeps the path it was traced
with (call ``jax.clear_caches()`` or trace anew after changing the mode).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import jax
from jax.experimental.pallas import tpu as pltpu

MODES = ("auto", "pallas", "xla")
ENV = "HCREF_JAX_PALLAS"

_mode: str | None = None


def _check(mode: Any, where: str) -> str:
    if not isinstance(mode, str) or mode.strip().lower() not in MODES:
        raise ValueError(f"{where}: expected one of {list(MODES)}, got {mode!r}")
    return mode.strip().lower()


def set_mode(mode: str | None) -> None:
    """Set the path: ``"auto"``, ``"pallas"`` or ``"xla"`` (module docstring); ``None`` goes back to the
    environment variable ``HCREF_JAX_PALLAS`` (``"auto"`` when it is unset). Raises ``ValueError`` for
    any other value."""
    global _mode
    _mode = None if mode is None else _check(mode, "mode")


def get_mode() -> str:
    """The mode in force: the one set by :func:`set_mode`, else ``HCREF_JAX_PALLAS``, else ``"auto"``."""
    if _mode is not None:
        return _mode
    env = os.environ.get(ENV, "").strip()
    return _check(env, f"environment variable {ENV}") if env else "auto"


@contextlib.contextmanager
def use_mode(value: str) -> Iterator[None]:
    """``with use_mode("pallas"): ...``: the mode inside the block (traced functions only), restored after."""
    global _mode
    previous = _mode
    set_mode(value)
    try:
        yield
    finally:
        _mode = previous


def on_tpu() -> bool:
    """Whether JAX's default backend is a TPU (then the kernels compile with Mosaic)."""
    return jax.default_backend() == "tpu"


def want_kernels() -> bool:
    """Whether the mode asks for the kernels here (before the per-input :func:`supported` check)."""
    current = get_mode()
    return current == "pallas" or (current == "auto" and on_tpu())


_lowering_for_tpu = False


def compiled() -> bool:
    """Whether kernels are traced for Mosaic (on a TPU, or inside :func:`lowering_for_tpu`) rather
    than for TPU interpret mode."""
    return _lowering_for_tpu or on_tpu()


@contextlib.contextmanager
def lowering_for_tpu() -> Iterator[None]:
    """Inside the block kernels are traced for Mosaic even without a TPU, so that
    ``jax.export.export(..., platforms=["tpu"])`` runs the Pallas-to-Mosaic lowering on a CPU machine
    (the block-shape rules and every primitive's Mosaic lowering; not Mosaic's own compiler passes)."""
    global _lowering_for_tpu
    previous = _lowering_for_tpu
    _lowering_for_tpu = True
    try:
        yield
    finally:
        _lowering_for_tpu = previous


def interpret() -> Any:
    """``interpret=`` for ``pallas_call``: ``False`` on a TPU, TPU interpret mode elsewhere."""
    return False if compiled() else pltpu.InterpretParams()
