"""When the kernels run: the switch, Triton's availability and the ``supported`` predicate.

Nothing here imports triton on a machine without CUDA, so ``import hcref_torch`` keeps working
(and stays fast) where triton is missing. Environment variables are read once, when this
module is imported.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_DTensor: type | None
try:  # torch builds without distributed support have no DTensor, hence no DTensor inputs
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:
    _DTensor = None

ENV_VAR = "HCREF_TORCH_KERNELS"
"""``HCREF_TORCH_KERNELS=0`` (or ``false``/``off``/``no``) keeps the automatic dispatch on the
generic torch path; :func:`set_enabled` overrides it at run time."""

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""Dtypes the kernels take (half types accumulate in float32, float64 in float64)."""

MAX_ROWS = 16
"""Largest number of streams n (HC) or fractions m (FC): the kernels unroll loops over the
C = n+1 or 2m coefficient columns and keep all rows of a token in one block."""

MHC_MAX_N = 8
"""Largest number of streams n of the mHC coefficient kernel (``mhc_coeffs``, ``sinkhorn``): it
keeps a token's 2n + n^2 logits, padded to 2 NP^2 columns, and the n x n Sinkhorn tile in
registers. ``mhc_pre``/``mhc_post`` take up to :data:`MAX_ROWS` streams."""

_MHC_SMALL = ("mhc_coeffs", "sinkhorn")

_ENV_ON = os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no")
_INTERPRET_ENV = os.environ.get("TRITON_INTERPRET", "0").strip() == "1"


def _find_triton() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError, AttributeError):  # e.g. sys.modules["triton"] = None
        return False


TORCH_OK = all(hasattr(torch.library, name) for name in ("custom_op", "register_fake", "register_autograd"))
"""torch >= 2.4: the kernels are registered as torch.library custom ops; older torch runs the
generic path only."""
_TRITON_FOUND = _find_triton() and TORCH_OK
_override: bool | None = None
_triton_ok: bool | None = None


def available() -> bool:
    """Whether triton imports (tried once; a broken install counts as missing)."""
    global _triton_ok
    if _triton_ok is None:
        if not _TRITON_FOUND:
            _triton_ok = False
        else:
            try:
                import triton  # noqa: F401
            except Exception:  # any failure means: use the generic path
                _triton_ok = False
            else:
                _triton_ok = True
    return _triton_ok


def interpreting() -> bool:
    """Whether the kernels run under the Triton interpreter (``TRITON_INTERPRET=1`` when
    hcref_torch.kernels was imported): then they also take CPU tensors."""
    return _INTERPRET_ENV


def enabled() -> bool:
    """Whether the contract ops and modules dispatch CUDA tensors to the kernels: the
    environment switch or :func:`set_enabled`, and Triton importable."""
    on = _ENV_ON if _override is None else _override
    return on and (_TRITON_FOUND if _triton_ok is None else _triton_ok)


def set_enabled(flag: bool | None) -> None:
    """Force the automatic dispatch on (``True``) or off (``False``); ``None`` goes back to the
    environment variable ``HCREF_TORCH_KERNELS`` (default on)."""
    global _override
    if flag is not None and not isinstance(flag, bool):
        raise TypeError(f"flag: expected a bool or None, got {type(flag).__name__} {flag!r}")
    _override = flag


def supported(H: object, *others: object, op: str | None = None) -> bool:
    """Whether the kernels take this call: H (..., K, w) and every other argument are tensors on
    one device that is CUDA (or CPU under the interpreter), of a dtype in :data:`DTYPES`, with
    1 <= K <= :data:`MAX_ROWS` (:data:`MHC_MAX_N` for ``op`` ``"mhc_coeffs"`` and
    ``"sinkhorn"``, whose H is Z (..., n, n)) and w >= 1. Leading axes may be empty (size 0) or
    absent; no DTensor (or other ``torch.distributed`` tensor type: the kernel ops have no
    sharding rules, the generic ops do). ``op`` names the contract op (None: the HC/FC ops;
    ``mhc_pre``/``mhc_post`` take the same shapes as those)."""
    if not isinstance(H, torch.Tensor) or H.dim() < 2:
        return False
    max_rows = MHC_MAX_N if op in _MHC_SMALL else MAX_ROWS
    if not 1 <= H.shape[-2] <= max_rows or H.shape[-1] < 1:
        return False
    device = H.device
    if device.type == "cuda":
        pass
    elif device.type != "cpu" or not _INTERPRET_ENV:
        return False
    for t in (H, *others):
        if not isinstance(t, torch.Tensor) or t.device != device or t.dtype not in DTYPES:
            return False
        if _DTensor is not None and isinstance(t, _DTensor):  # the kernels have no sharding rules
            return False
    return available()


_generic_depth = 0


@contextmanager
def generic_path() -> Iterator[None]:
    """Inside, :func:`use_for` is False: the kernels' own fallback into the generic ops (which
    dispatch with :func:`use_for`) never comes back to the kernels, whatever ``op`` a caller
    passed (or forgot)."""
    global _generic_depth
    _generic_depth += 1
    try:
        yield
    finally:
        _generic_depth -= 1


def use_for(H: object, *others: object, op: str | None = None) -> bool:
    """The automatic dispatch of the contract ops and modules: :func:`enabled`, CUDA tensors
    only (never CPU tensors, even under the interpreter) and :func:`supported` (``op`` as there;
    pass it for the mHC ops: ``mhc_coeffs`` and ``sinkhorn`` take fewer streams)."""
    return (_generic_depth == 0 and isinstance(H, torch.Tensor) and H.device.type == "cuda" and enabled()
            and supported(H, *others, op=op))


if torch.cuda.is_available() and _TRITON_FOUND:  # import triton now, not inside a traced call
    available()
