"""hcref_torch: Hyper-Connections, Frac-Connections and Manifold-Constrained Hyper-Connections
for PyTorch.

Functional ops with the reference's names, shapes and errors (HC/FC: :mod:`hcref_torch.ops`;
mHC: :mod:`hcref_torch.mhc`), drop-in modules (:mod:`hcref_torch.modules`,
:mod:`hcref_torch.mhc_modules`) and the conformance backend object ``backend``. On CUDA tensors the
HC/FC ops and modules run the fused Triton kernels of :mod:`hcref_torch.kernels` when Triton is
importable and the call is supported (``HCREF_TORCH_KERNELS=0`` or
``hcref_torch.kernels.set_enabled(False)`` keeps the generic path); CPU tensors, and every call
the kernels do not take, run the generic torch ops.
"""

try:  # a clear message when the extra was not installed (the framework comes with `hcref[torch]`)
    import torch as _torch  # noqa: F401
except ModuleNotFoundError as _exc:
    if _exc.name != "torch":
        raise
    raise ModuleNotFoundError(
        'hcref_torch needs PyTorch, which is not installed: pip install "hcref[torch]" '
        '(from a clone: pip install -e ".[torch]"; for the CPU-only build, first: '
        "pip install torch --index-url https://download.pytorch.org/whl/cpu)",
        name=_exc.name,
    ) from None

from ._backend import TorchBackend
from .mhc import mhc_coeffs, mhc_head, mhc_post, mhc_pre, sinkhorn
from .mhc_modules import ManifoldHyperConnections, MHCHead
from .modules import Expand, FracConnections, FracMerge, FracSplit, HyperConnections, Reduce, SiteState
from .ops import (
    expand,
    fc_coeffs,
    fc_depth,
    fc_width,
    frac_merge,
    frac_split,
    hc_coeffs,
    hc_depth,
    hc_width,
    reduce,
)

backend = TorchBackend()
"""The backend object the conformance suite loads (``--backend hcref_torch``)."""

__all__ = [
    "Expand",
    "FracConnections",
    "FracMerge",
    "FracSplit",
    "HyperConnections",
    "MHCHead",
    "ManifoldHyperConnections",
    "Reduce",
    "SiteState",
    "TorchBackend",
    "backend",
    "expand",
    "fc_coeffs",
    "fc_depth",
    "fc_width",
    "frac_merge",
    "frac_split",
    "hc_coeffs",
    "hc_depth",
    "hc_width",
    "mhc_coeffs",
    "mhc_head",
    "mhc_post",
    "mhc_pre",
    "reduce",
    "sinkhorn",
]
