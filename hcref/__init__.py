"""hcref: the reference implementation of Hyper-Connections (HC) and Frac-Connections (FC).

Pure NumPy, forward and hand-derived backward, computed in the dtype it receives. Every op
of the public contract (``hcref.optable.OPS``) is here under its contract name, with its
VJP as ``<op>_vjp``. Shapes put streams/fractions on the second-to-last axis and allow any
number of leading axes (decision D13).
"""

from .ends import (
    expand,
    expand_vjp,
    frac_merge,
    frac_merge_vjp,
    frac_split,
    frac_split_vjp,
    reduce,
    reduce_vjp,
)
from .frac import fc_coeffs, fc_coeffs_vjp, fc_depth, fc_depth_vjp, fc_width, fc_width_vjp
from .hyper import hc_coeffs, hc_coeffs_vjp, hc_depth, hc_depth_vjp, hc_width, hc_width_vjp
from .init import GATE_INIT, init_fc, init_hc
from .norms import layernorm, layernorm_vjp, rmsnorm, rmsnorm_vjp
from .optable import OPS, OpSpec
from .site import fc_site, hc_site, site, site_vjp

__version__ = "0.1.0"

__all__ = [
    "GATE_INIT",
    "OPS",
    "OpSpec",
    "__version__",
    "expand",
    "expand_vjp",
    "fc_coeffs",
    "fc_coeffs_vjp",
    "fc_depth",
    "fc_depth_vjp",
    "fc_site",
    "fc_width",
    "fc_width_vjp",
    "frac_merge",
    "frac_merge_vjp",
    "frac_split",
    "frac_split_vjp",
    "hc_coeffs",
    "hc_coeffs_vjp",
    "hc_depth",
    "hc_depth_vjp",
    "hc_site",
    "hc_width",
    "hc_width_vjp",
    "init_fc",
    "init_hc",
    "layernorm",
    "layernorm_vjp",
    "reduce",
    "reduce_vjp",
    "rmsnorm",
    "rmsnorm_vjp",
    "site",
    "site_vjp",
]
