"""The ``hcref_torch`` *modules* (``HyperConnections``, ``FracConnections``, ``Expand``, ...) as a
port with the module-level entry only: the template of an adapter over a library's modules, and
the suite's own check that its module-level path reports no false failures (every property
holds, every check passes, as for ``hcref_torch``'s ops).

    python -m hcref_conformance --backend conformance/ports/hcref_torch_modules.py:port

``site(family, H, params, sublayer, **options)`` builds the module with the options, puts the
contract's parameters in place of its own (``torch.func.functional_call``: the module's
parameters carry the contract's keys) and calls it on ``H`` with the suite's sublayer as its
branch; ``init_hc`` / ``init_fc`` read a fresh module's parameters; the ends are the modules
``Expand``, ``Reduce``, ``FracSplit``, ``FracMerge``. Arrays and gradients are ``hcref_torch``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hcref_torch as ht
import numpy as np
import torch
from hcref_torch import backend as _torch

import hcref
from hcref.interface import END_OPS, Support


class TorchModulesPort:
    """``hcref_torch``'s modules through the module-level entry (module docstring)."""

    name = "hcref_torch.modules"
    version = hcref.__version__
    framework_version = f"torch {torch.__version__}"

    def supports(self) -> Support:
        return Support(ops=END_OPS, sites=("hc", "fc"), initialisers=("hc", "fc"))

    def capabilities(self) -> list[tuple[str, str]]:
        return _torch.capabilities()

    def asarray(self, x: np.ndarray, dtype: str, device: str = "cpu") -> torch.Tensor:
        return _torch.asarray(x, dtype, device)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return _torch.to_numpy(x)

    def dtype_name(self, x: torch.Tensor) -> str:
        return _torch.dtype_name(x)

    def vjp(self, fn: Callable[..., Any], primals: Sequence[Any], cotangents: Sequence[Any]) -> tuple[Any, ...]:
        return _torch.vjp(fn, primals, cotangents)

    def expand(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return ht.Expand(n)(x)

    def reduce(self, H: torch.Tensor) -> torch.Tensor:
        return ht.Reduce()(H)

    def frac_split(self, x: torch.Tensor, m: int) -> torch.Tensor:
        return ht.FracSplit(m)(x)

    def frac_merge(self, H: torch.Tensor) -> torch.Tensor:
        return ht.FracMerge()(H)

    def site(self, family: str, H: torch.Tensor, params: Mapping[str, torch.Tensor],
             sublayer: Callable[[Any], Any], **options: Any) -> torch.Tensor:
        k, w = H.shape[-2:]
        dynamic = "W_alpha" in params
        if family == "hc":
            module: torch.nn.Module = ht.HyperConnections(k, w, layer_index=0, dynamic=dynamic, **options)
        else:
            module = ht.FracConnections(k, k * w, dynamic=dynamic, **options)
        return torch.func.functional_call(module, dict(params), (H, sublayer))

    def init_hc(self, n: int, d: int, layer_index: int, *, dynamic: bool = True,
                norm: str = "layernorm") -> dict[str, np.ndarray]:
        module = ht.HyperConnections(n, d, layer_index=layer_index, dynamic=dynamic, norm=norm, dtype=torch.float64)
        return {key: value.detach().numpy().copy() for key, value in module.named_parameters()}

    def init_fc(self, m: int, d: int, *, dynamic: bool = True, norm: str = "layernorm") -> dict[str, np.ndarray]:
        module = ht.FracConnections(m, d, dynamic=dynamic, norm=norm, dtype=torch.float64)
        return {key: value.detach().numpy().copy() for key, value in module.named_parameters()}


port = TorchModulesPort()
"""The port the suite loads (``--backend conformance/ports/hcref_torch_modules.py:port``)."""
