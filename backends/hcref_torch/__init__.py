"""hcref_torch: Hyper-Connections and Frac-Connections for PyTorch.

Functional ops with the reference's names, shapes and errors (:mod:`hcref_torch.ops`), drop-in
modules (:mod:`hcref_torch.modules`) and the conformance backend object ``backend``.
"""

from ._backend import TorchBackend
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
    "reduce",
]
