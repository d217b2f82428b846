"""hcref adapter for PyPI ``mhc`` (0.5.5, "Manifold-Constrained Hyper-Connections: stable
multi-history skip connections", torch): its Sinkhorn, ``mhc.constraints.matrix.project_doubly_stochastic``,
as the contract's ``sinkhorn`` op.

    pip install --no-deps "mhc==0.5.5"     # numpy and torch come from hcref's environment
    python -m hcref_conformance --backend conformance/ports/pypi_mhc.py:port

What the adapter does: ``sinkhorn(Z, iters=k)`` is ``project_doubly_stochastic(Z, iterations=k)``
(temperature 1), nothing else; the contract's argument checks (:mod:`hcref.validation`) come first,
as the library validates nothing. Its layers (``MHCSkip``, a history buffer of past layer outputs
mixed by a learned matrix) are a different architecture from the paper's Eq. 3 site (no
sublayer input read from n streams), so only the Sinkhorn op is declared: family ``mhc``, op
``sinkhorn``, the paper's variant (no V4 ``eps``), any number of iterations. Arrays and gradients
are ``hcref_torch``'s.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from typing import Any

import torch
from hcref_torch import backend as _torch
from mhc.constraints.matrix import project_doubly_stochastic

from hcref.interface import Support

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _framework import FrameworkArrays, check_sinkhorn

LIBRARY = "mhc"


class PypiMhcPort(FrameworkArrays):
    """PyPI ``mhc``'s Sinkhorn as an hcref port (module docstring)."""

    name = LIBRARY
    version = importlib.metadata.version(LIBRARY)
    framework_version = f"torch {torch.__version__}"

    def __init__(self) -> None:
        super().__init__(_torch, ("float64", "float32", "bfloat16", "float16"))

    def supports(self) -> Support:
        return Support(families=("mhc",), ops=("sinkhorn",), mhc_variants=("paper",), mixed_precision=False,
                       notes={"sinkhorn": "project_doubly_stochastic(Z, iterations): exp(Z - rowmax), then rows "
                                          "then columns, each divided by (sum + 1e-9)"})

    def sinkhorn(self, Z: Any, *, iters: int = 20, eps: float = 0.0) -> Any:
        check_sinkhorn(Z, iters, eps)
        if eps != 0:
            raise NotImplementedError(f"{LIBRARY} has no DeepSeek-V4 eps")
        return project_doubly_stochastic(Z, iterations=iters)


port = PypiMhcPort()
