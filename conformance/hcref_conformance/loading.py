"""Load the backend under test from ``MODULE[:ATTR]`` (``ATTR`` defaults to ``backend``)."""

from __future__ import annotations

import importlib
from typing import Any

FIRST_PARTY = ("hcref_numpy", "hcref_torch", "hcref_jax", "hcref_mlx")
"""The project's own backends, in the order ``--all`` runs them."""

_SPECS: dict[int, str] = {}


class BackendLoadError(RuntimeError):
    """The backend named on the command line (or in ``HCREF_BACKEND``) cannot be loaded."""


def load_backend(spec: str) -> Any:
    """The object named by ``spec``: ``"hcref_torch"`` or ``"pkg.mod:attr"``.

    Raises :class:`BackendLoadError` with the reason when the module does not import, the
    attribute is missing, or the object lacks members of :class:`hcref.interface.Backend`.
    The backend's ``prepare_for_conformance()`` is called when it has one.
    """
    from hcref.interface import missing_members

    if not spec or not spec.strip():
        raise BackendLoadError("no backend given: pass --backend MODULE[:ATTR] or set HCREF_BACKEND")
    module_name, _, attr = spec.strip().partition(":")
    attr = attr or "backend"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of the backend is the user's error to see
        raise BackendLoadError(f"backend {spec!r}: import of module {module_name!r} failed: {exc!r}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BackendLoadError(f"backend {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    missing = missing_members(obj)
    if missing:
        raise BackendLoadError(f"backend {spec!r}: the object lacks members of hcref.interface.Backend: {missing}")
    prepare = getattr(obj, "prepare_for_conformance", None)
    if callable(prepare):
        prepare()
    _SPECS[id(obj)] = spec.strip()
    return obj


def spec_of(backend: Any) -> str:
    """The ``MODULE[:ATTR]`` string ``backend`` was loaded from (its ``name`` otherwise)."""
    return _SPECS.get(id(backend)) or str(getattr(backend, "name", type(backend).__module__))


def is_installed(module_name: str) -> bool:
    """Whether ``module_name`` can be found without importing it (no framework is loaded)."""
    import importlib.util

    return importlib.util.find_spec(module_name) is not None
