"""hcref_mlx: Hyper-Connections, Frac-Connections and mHC for MLX.

Functional ops with the reference's names, shapes and errors (HC/FC: :mod:`hcref_mlx.ops`; mHC:
:mod:`hcref_mlx.mhc`), ``mlx.nn`` modules (:mod:`hcref_mlx.modules`, :mod:`hcref_mlx.mhc_modules`)
and the conformance backend object ``backend`` (every op of :data:`hcref.optable.ALL_OPS`). This package is
the only place hcref imports ``mlx``. float64 runs on MLX's CPU stream (MLX has no float64 on the GPU).
"""

try:  # a clear message when the extra was not installed (the framework comes with `hcref[mlx]`)
    import mlx.core as _mx  # noqa: F401
except ImportError as _exc:
    # without its backend (mlx-cpu on Linux) the `mlx` wheel is there but mlx.core fails to load
    if _exc.name not in ("mlx", "mlx.core") and "libmlx" not in str(_exc):
        raise
    raise ModuleNotFoundError(
        f'hcref_mlx needs MLX, which is not installed or does not load ({_exc}): pip install "hcref[mlx]" '
        '(from a clone: pip install -e ".[mlx]"); it installs mlx on Apple-silicon macOS and mlx[cpu] on Linux',
        name="mlx",
    ) from None

from ._backend import MLXBackend
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

backend = MLXBackend()
"""The backend object the conformance suite loads (``--backend hcref_mlx``)."""

__all__ = [
    "Expand",
    "FracConnections",
    "FracMerge",
    "FracSplit",
    "HyperConnections",
    "MHCHead",
    "MLXBackend",
    "ManifoldHyperConnections",
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
    "mhc_coeffs",
    "mhc_head",
    "mhc_post",
    "mhc_pre",
    "reduce",
    "sinkhorn",
]
