"""hcref_jax: Hyper-Connections, Frac-Connections and mHC for JAX and Flax NNX.

Functional ops with the reference's names, shapes and errors, as pure functions on jax arrays
that jit, vmap and differentiate (HC/FC: :mod:`hcref_jax.ops`; mHC: :mod:`hcref_jax.mhc`); Flax
NNX modules (:mod:`hcref_jax.modules`, :mod:`hcref_jax.mhc_modules`); and the conformance backend
object ``backend`` (every op of :data:`hcref.optable.ALL_OPS`, jitted; ``jax.vjp``).

On a TPU the HC/FC ops, and so the backend object and the modules, run on the Pallas kernels of
:mod:`hcref_jax.pallas` for every input those take, and on XLA elsewhere;
``hcref_jax.pallas.set_mode("pallas" | "xla" | "auto")`` (or ``HCREF_JAX_PALLAS``) forces either
(:mod:`hcref_jax.ops`, "Pallas kernels"). The mHC ops do the same for the kernels the package lists.
"""

try:  # a clear message when the extra was not installed (the frameworks come with `hcref[jax]`)
    import flax as _flax  # noqa: F401
    import jax as _jax  # noqa: F401
except ModuleNotFoundError as _exc:
    if _exc.name not in ("jax", "jaxlib", "flax"):
        raise
    from importlib.util import find_spec

    _missing = " and ".join(m for m in ("jax", "flax") if find_spec(m) is None) or _exc.name
    raise ModuleNotFoundError(
        f'hcref_jax needs jax and flax ({_missing} not installed): pip install "hcref[jax]" '
        '(from a clone: pip install -e ".[jax]")',
        name=_exc.name,
    ) from None

from ._backend import JaxBackend
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

backend = JaxBackend()
"""The backend object the conformance suite loads (``--backend hcref_jax``)."""

__all__ = [
    "Expand",
    "FracConnections",
    "FracMerge",
    "FracSplit",
    "HyperConnections",
    "JaxBackend",
    "MHCHead",
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
