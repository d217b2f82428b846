"""hcref_jax.pallas: Pallas TPU kernels for HC, FC and mHC, forward and backward, with the contract's ops.

Three kernels per family, each a ``jax.custom_vjp`` whose backward is its own ``pallas_call``:
the coefficients with the norm folded after the projection (:mod:`.coeffs`), the width step
(:mod:`.width`) and the depth step (:mod:`.depth`); a fused site path (``hc_site_width`` /
``hc_site_depth``) in which the coefficient kernel also writes h0 and the depth kernel takes the
stream mixing over, so a site reads H twice and writes only h0 and H_out: (3n+2)d elements per token
forward and (6n+3)d backward for HC (the ideal two-kernel fusion; 14d and 27d at n = 4).

mHC (:mod:`.mhc`): ``mhc_coeffs`` on its own kernel (:mod:`.mhc_coeffs`: the flattened n*d RMS
statistics and the projection in one pass, gates, bias, sigmoids and the Sinkhorn loop in the
epilogue, :mod:`.sinkhorn`), ``mhc_pre`` on the width kernel, ``mhc_post`` on the fused depth kernel.

Usage: the ops of :mod:`hcref_jax.ops` under the same names (``hcref_jax.pallas.hc_coeffs(H, params,
norm="rmsnorm")``...), which take the kernels on a TPU for the inputs :func:`supported` accepts and
the XLA path otherwise; :func:`set_mode` (or the environment variable ``HCREF_JAX_PALLAS``) forces
``"pallas"`` (kernels everywhere, TPU interpret mode off a TPU) or ``"xla"``. ``backend`` is the
conformance backend that always runs the kernels::

    python -m hcref_conformance --backend hcref_jax.pallas:backend --dtypes float32,bfloat16
"""

from .. import ops as _xla
from ._backend import PallasBackend
from .mhc import MHC_OPS, mhc_coeffs, mhc_post, mhc_pre
from .mode import ENV, MODES, get_mode, on_tpu, set_mode, use_mode
from .ops import (
    KERNEL_DTYPES,
    OPS,
    Forced,
    SiteState,
    fc_coeffs,
    fc_depth,
    fc_site_depth,
    fc_site_width,
    fc_width,
    hc_coeffs,
    hc_depth,
    hc_site_depth,
    hc_site_width,
    hc_width,
    supported,
)

expand = _xla.expand
reduce = _xla.reduce
frac_split = _xla.frac_split
frac_merge = _xla.frac_merge

backend = PallasBackend()
"""The conformance backend object (``--backend hcref_jax.pallas:backend``)."""

__all__ = [
    "ENV",
    "KERNEL_DTYPES",
    "MHC_OPS",
    "MODES",
    "OPS",
    "Forced",
    "PallasBackend",
    "SiteState",
    "backend",
    "expand",
    "fc_coeffs",
    "fc_depth",
    "fc_site_depth",
    "fc_site_width",
    "fc_width",
    "frac_merge",
    "frac_split",
    "get_mode",
    "hc_coeffs",
    "hc_depth",
    "hc_site_depth",
    "hc_site_width",
    "hc_width",
    "mhc_coeffs",
    "mhc_post",
    "mhc_pre",
    "on_tpu",
    "reduce",
    "set_mode",
    "supported",
    "use_mode",
]
