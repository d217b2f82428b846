"""hcref: the reference implementation of Hyper-Connections (HC), Frac-Connections (FC) and
Manifold-Constrained Hyper-Connections (mHC).

Pure NumPy, forward and hand-derived backward, computed in the dtype it receives. Every op
of the public contract (``hcref.optable.OPS`` and, until every backend has them, the mHC
ops of ``hcref.optable.MHC_OPS``) is here under its contract name, with its VJP as
``<op>_vjp``. Shapes put streams/fractions on the second-to-last axis and allow any
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
from .init import GATE_INIT, init_fc, init_hc, init_mhc, init_mhc_head
from .mhc import (
    mhc_coeffs,
    mhc_coeffs_vjp,
    mhc_head,
    mhc_head_vjp,
    mhc_post,
    mhc_post_vjp,
    mhc_pre,
    mhc_pre_vjp,
)
from .norms import layernorm, layernorm_vjp, rmsnorm, rmsnorm_vjp
from .optable import ALL_OPS, MHC_OPS, OPS, OpSpec
from .sinkhorn_knopp import sinkhorn, sinkhorn_vjp
from .site import fc_site, hc_site, mhc_site, site, site_vjp

__version__ = "0.1.0"

__all__ = [
    "ALL_OPS",
    "GATE_INIT",
    "MHC_OPS",
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
    "init_mhc",
    "init_mhc_head",
    "layernorm",
    "layernorm_vjp",
    "mhc_coeffs",
    "mhc_coeffs_vjp",
    "mhc_head",
    "mhc_head_vjp",
    "mhc_post",
    "mhc_post_vjp",
    "mhc_pre",
    "mhc_pre_vjp",
    "mhc_site",
    "reduce",
    "reduce_vjp",
    "rmsnorm",
    "rmsnorm_vjp",
    "sinkhorn",
    "sinkhorn_vjp",
    "site",
    "site_vjp",
]
