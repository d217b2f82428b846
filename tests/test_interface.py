"""Every first-party backend satisfies :class:`hcref.interface.Backend` and declares nothing
(every op and option of HC and FC, and of mHC once its backend object carries the mHC ops), and
every op has the reference's name, argument names and keyword options (the contract a
checkpoint or a port relies on)."""

from __future__ import annotations

import importlib
import inspect

import pytest

import hcref
from hcref.interface import MHC_OP_NAMES, OP_NAMES, Backend, MhcBackend, Port, Support, missing_members, support_of
from hcref.optable import MHC_OPS, OPS

BACKENDS = ["hcref_numpy", "hcref_torch", "hcref_jax", "hcref_mlx"]


def test_op_table_and_interface_agree() -> None:
    assert tuple(OPS) == OP_NAMES and tuple(MHC_OPS) == MHC_OP_NAMES
    for name, spec in {**OPS, **MHC_OPS}.items():
        params = list(inspect.signature(getattr(hcref, name)).parameters)
        assert params == [*spec.inputs, *spec.options], name
        assert hasattr(hcref, spec.vjp_name), spec.vjp_name
        assert hasattr(MhcBackend, name), name


@pytest.mark.parametrize("module", BACKENDS)
def test_backend_implements_the_contract(module: str) -> None:
    backend = importlib.import_module(module).backend
    assert missing_members(backend) == []
    assert isinstance(backend, Backend) and isinstance(backend, Port)
    # the full contract, so the suite checks everything (mHC as soon as the object has its ops)
    has_mhc = any(hasattr(backend, name) for name in MHC_OP_NAMES)
    assert support_of(backend) == (Support(families=("hc", "fc", "mhc")) if has_mhc else Support())
    assert backend.name == module
    assert ("cpu", "float64") in backend.capabilities() and ("cpu", "float32") in backend.capabilities()
    for name in OP_NAMES + (MHC_OP_NAMES if has_mhc else ()):
        reference = inspect.signature(getattr(hcref, name)).parameters
        ported = inspect.signature(getattr(backend, name)).parameters
        assert list(ported) == list(reference), f"{module}.{name}: arguments {list(ported)}"
        for arg, param in reference.items():
            assert ported[arg].kind == param.kind, f"{module}.{name}: {arg} is {ported[arg].kind}"
            assert ported[arg].default == param.default, f"{module}.{name}: default of {arg}"


@pytest.mark.parametrize("module", BACKENDS)
def test_backend_carries_the_mhc_ops(module: str) -> None:
    """Issue 11: every first-party backend object carries the mHC ops (then the suite checks them)."""
    backend = importlib.import_module(module).backend
    if not any(hasattr(backend, name) for name in MHC_OP_NAMES):
        pytest.skip(f"{module}.backend does not carry the mHC ops yet (issue 11, backends): the suite reports "
                    "mHC as n/a for it")
    assert isinstance(backend, MhcBackend) and missing_members(backend) == []
