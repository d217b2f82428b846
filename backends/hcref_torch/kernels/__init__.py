"""Fused Triton kernels for Hyper-Connections and Frac-Connections on CUDA.

Three kernels per family, each with a fused backward (custom autograd), registered as
``torch.library`` custom ops (``hcref_kernels::*``) so ``torch.compile(fullgraph=True)`` keeps
working:

1. coefficients: one pass over H per token block computing the norm statistics (scale-safe,
   :mod:`hcref.norms`) and ``H [W_alpha | W_beta]`` together, the norm folded after the matmul,
   then tanh / gates / static terms (HC paper Eqs. 10-13, FC paper Eqs. 11-14);
2. width: ``h0`` and ``H_res`` from one read of H (HC paper Alg. 2, FC paper Eq. 8);
3. depth: ``H_out = H_res + B^T y^T`` (HC) or the diagonal write (FC) in one pass, or, in the
   fused site without gradients, ``H_out = A_r^T H + B^T y^T`` with H_res never written.

mHC (mHC paper, arXiv 2512.24880): ``mhc_coeffs`` (RMS statistics and the projection in one
pass over the flattened n*d state, then gates, sigmoid / 2 sigmoid and the whole Sinkhorn loop
in registers; the backward recomputes the iterates), ``sinkhorn`` (the same epilogue alone),
``mhc_pre`` (h0 = h_pre^T H, one pass) and ``mhc_post`` (H_out = h_res H + h_post y^T, one
pass; its backward one pass over G, H and y), the forwards on the mixing kernels.

Use: the functional API here has the contract ops' signatures and errors (:mod:`.functional`)
plus the fused site (:func:`hc_site_width` / :func:`fc_site_width`, then :func:`site_depth`).
``hcref_torch`` dispatches CUDA tensors to it automatically when Triton imports and
:func:`supported` holds; ``HCREF_TORCH_KERNELS=0`` or :func:`set_enabled(False) <set_enabled>`
keeps the generic torch path. Unsupported calls fall back to the generic path, never fail.

Determinism: no kernel uses atomics; parameter gradients are per-program partial sums added
in a fixed order, so every result is bit-identical from run to run (there is no separate
non-deterministic mode: at d = 4096 the partial sums are about 1% of the coefficient
backward's traffic, too little for atomics to pay).

Triton is imported lazily (on the first kernel call; at import when CUDA is present), so
``import hcref_torch`` works without it. ``backend`` (``hcref_torch.kernels:backend``) is the
conformance backend that always runs the kernels.
"""

from typing import Any

from ._switch import (
    DTYPES,
    ENV_VAR,
    MAX_ROWS,
    MHC_MAX_N,
    available,
    enabled,
    interpreting,
    set_enabled,
    supported,
    use_for,
)
from .functional import (
    FusedState,
    fc_coeffs,
    fc_depth,
    fc_site,
    fc_site_width,
    fc_width,
    hc_coeffs,
    hc_depth,
    hc_site,
    hc_site_width,
    hc_width,
    mhc_coeffs,
    mhc_post,
    mhc_pre,
    sinkhorn,
    site_depth,
)


def __getattr__(name: str) -> Any:
    """``backend`` (the conformance backend: ``python -m hcref_conformance --backend
    hcref_torch.kernels:backend``) and ``KernelBackend``, built on first access so that
    ``hcref_torch.ops`` can import this package while ``hcref_torch`` is still importing."""
    if name in ("backend", "KernelBackend"):
        from ._backend import KernelBackend

        globals()["KernelBackend"] = KernelBackend
        globals()["backend"] = KernelBackend()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DTYPES",
    "ENV_VAR",
    "MAX_ROWS",
    "MHC_MAX_N",
    "FusedState",
    "KernelBackend",
    "available",
    "backend",
    "enabled",
    "fc_coeffs",
    "fc_depth",
    "fc_site",
    "fc_site_width",
    "fc_width",
    "hc_coeffs",
    "hc_depth",
    "hc_site",
    "hc_site_width",
    "hc_width",
    "interpreting",
    "mhc_coeffs",
    "mhc_post",
    "mhc_pre",
    "set_enabled",
    "sinkhorn",
    "site_depth",
    "supported",
    "use_for",
]
