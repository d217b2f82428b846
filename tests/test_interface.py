"""Every first-party backend satisfies :class:`hcref.interface.Backend` and declares nothing
(:class:`hcref.interface.Support` ``()``: every op and option of HC and FC), and every op has the
reference's name, argument names and keyword options (the contract a checkpoint or a port
relies on)."""

from __future__ import annotations

import importlib
import inspect

import pytest

import hcref
from hcref.interface import OP_NAMES, Backend, Port, Support, missing_members, support_of
from hcref.optable import OPS

BACKENDS = ["hcref_numpy", "hcref_torch", "hcref_jax", "hcref_mlx"]


def test_op_table_and_interface_agree() -> None:
    assert tuple(OPS) == OP_NAMES
    for name, spec in OPS.items():
        params = list(inspect.signature(getattr(hcref, name)).parameters)
        assert params == [*spec.inputs, *spec.options], name
        assert hasattr(hcref, spec.vjp_name), spec.vjp_name
        assert hasattr(Backend, name), name


@pytest.mark.parametrize("module", BACKENDS)
def test_backend_implements_the_contract(module: str) -> None:
    backend = importlib.import_module(module).backend
    assert missing_members(backend) == []
    assert isinstance(backend, Backend) and isinstance(backend, Port)
    assert support_of(backend) == Support()  # the full contract, so the suite checks everything
    assert backend.name == module
    assert ("cpu", "float64") in backend.capabilities() and ("cpu", "float32") in backend.capabilities()
    for name in OP_NAMES:
        reference = inspect.signature(getattr(hcref, name)).parameters
        ported = inspect.signature(getattr(backend, name)).parameters
        assert list(ported) == list(reference), f"{module}.{name}: arguments {list(ported)}"
        for arg, param in reference.items():
            assert ported[arg].kind == param.kind, f"{module}.{name}: {arg} is {ported[arg].kind}"
            assert ported[arg].default == param.default, f"{module}.{name}: default of {arg}"
