"""hcref_mlx: Hyper-Connections and Frac-Connections for MLX.

Functional ops with the reference's names, shapes and errors (:mod:`hcref_mlx.ops`), ``mlx.nn``
modules (:mod:`hcref_mlx.modules`) and the conformance backend object ``backend``. This package is
the only place hcref imports ``mlx``. float64 runs on MLX's CPU stream (MLX has no float64 on the GPU).
"""

from ._backend import MLXBackend
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

backend = MLXBackend()
"""The backend object the conformance suite loads (``--backend hcref_mlx``)."""

__all__ = [
    "Expand",
    "FracConnections",
    "FracMerge",
    "FracSplit",
    "HyperConnections",
    "MLXBackend",
    "Reduce",
    "SiteState",
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
