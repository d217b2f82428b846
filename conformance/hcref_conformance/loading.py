"""Load the port under test from ``MODULE[:ATTR]`` or ``path/to/file.py[:ATTR]`` (``ATTR``
defaults to ``backend``; a file is imported under its own name, so an adapter needs no package)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

FIRST_PARTY = ("hcref_numpy", "hcref_torch", "hcref_jax", "hcref_mlx")
"""The project's own backends, in the order ``--all`` runs them."""

_SPECS: dict[int, str] = {}


class BackendLoadError(RuntimeError):
    """The backend named on the command line (or in ``HCREF_BACKEND``) cannot be loaded."""


def load_backend(spec: str) -> Any:
    """The object named by ``spec``: ``"hcref_torch"``, ``"pkg.mod:attr"`` or ``"ports/x.py:port"``.

    Raises :class:`BackendLoadError` with the reason when the module does not import, the
    attribute is missing, or the object lacks members of the contract for what it declares
    (:func:`hcref.interface.missing_members`). The port's ``prepare_for_conformance()`` is
    called when it has one.
    """
    from hcref.interface import missing_members

    if not spec or not spec.strip():
        raise BackendLoadError("no backend given: pass --backend MODULE[:ATTR] or set HCREF_BACKEND")
    text = spec.strip()
    module_name, sep, attr = text.rpartition(":")
    if not sep or "/" in attr or "\\" in attr:  # no attribute (a ':' of a Windows path is not one)
        module_name, attr = text, ""
    attr = attr or "backend"
    try:
        module = _import(module_name)
    except Exception as exc:  # any import-time failure of the backend is the user's error to see
        raise BackendLoadError(f"backend {spec!r}: import of module {module_name!r} failed: {exc!r}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BackendLoadError(f"backend {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    try:
        missing = missing_members(obj)
    except (TypeError, ValueError) as exc:
        raise BackendLoadError(f"backend {spec!r}: its supports() is not valid: {exc}") from exc
    if missing:
        raise BackendLoadError(f"backend {spec!r}: the object lacks members of the contract "
                               f"(hcref.interface) for what it declares: {missing}")
    prepare = getattr(obj, "prepare_for_conformance", None)
    if callable(prepare):
        prepare()
    _SPECS[id(obj)] = spec.strip()
    return obj


def _import(name: str) -> Any:
    """A module by import name, or from a ``.py`` file path (imported under the file's stem)."""
    if not name.endswith(".py"):
        return importlib.import_module(name)

    path = os.path.abspath(name)
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in sys.modules and getattr(sys.modules[stem], "__file__", None) == path:
        return sys.modules[stem]
    module_spec = importlib.util.spec_from_file_location(stem, path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[stem] = module
    module_spec.loader.exec_module(module)
    return module


def spec_of(backend: Any) -> str:
    """The ``MODULE[:ATTR]`` string ``backend`` was loaded from (its ``name`` otherwise)."""
    return _SPECS.get(id(backend)) or str(getattr(backend, "name", type(backend).__module__))


FRAMEWORKS = {"hcref_torch": "torch", "hcref_jax": "jax", "hcref_mlx": "mlx"}
"""The framework each first-party backend needs."""


def is_installed(module_name: str) -> bool:
    """Whether ``module_name`` and, for a first-party backend, its framework (:data:`FRAMEWORKS`)
    can be found without importing them (no framework is loaded): ``hcref_torch`` installed
    without torch is not installed for ``--all``."""
    import importlib.util

    for name in (module_name, FRAMEWORKS.get(module_name)):
        if name is None:
            continue
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):  # a parent package missing, or a module without a spec
            return False
    return True
