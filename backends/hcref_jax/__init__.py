"""hcref_jax: Hyper-Connections and Frac-Connections for JAX and Flax NNX.

Functional ops with the reference's names, shapes and errors, as pure functions on jax arrays
that jit, vmap and differentiate (:mod:`hcref_jax.ops`); Flax NNX modules
(:mod:`hcref_jax.modules`); and the conformance backend object ``backend`` (jitted ops, ``jax.vjp``).
"""

from ._backend import JaxBackend
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

backend = JaxBackend()
"""The backend object the conformance suite loads (``--backend hcref_jax``)."""

__all__ = [
    "Expand",
    "FracConnections",
    "FracMerge",
    "FracSplit",
    "HyperConnections",
    "JaxBackend",
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
