"""hcref adapter for PyPI ``mlx-mhc`` (0.4.1, MLX): its Sinkhorn, ``mlx_mhc.sinkhorn.sinkhorn_knopp``,
as the contract's ``sinkhorn`` op.

    pip install --no-deps "mlx-mhc==0.4.1"   # mlx comes from hcref's environment
    python -m hcref_conformance --backend conformance/ports/pypi_mlx_mhc.py:port

What the adapter does: ``sinkhorn(Z, iters=k)`` calls ``sinkhorn_knopp(Z_t, max_iterations=k)``
(its defaults otherwise: log space, early stop once row and column sums are within 1e-6) on each
(n, n) matrix of the leading axes (the function takes one matrix) and stacks the results. Its
module ``ManifoldHyperConnection`` is not the paper's site: the sublayer gets the whole expanded
width scaled per stream (``H_pre * x``, not the weighted sum of the streams) and ``H_post``
multiplies the residual too (``H_post (F + H_res H_pre x)``), so no site is declared. Computes in
the input dtype; float64 is left out because MLX's CPU float64 ``exp`` is only ~1e-7 accurate.
Arrays and gradients are ``hcref_mlx``'s.

Note: PyPI ``mhc-mlx`` also installs a package named ``mlx_mhc``; install only one of the two.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from typing import Any

import mlx.core as mx
from hcref_mlx import backend as _mlx
from mlx_mhc.sinkhorn import sinkhorn_knopp

from hcref.interface import Support

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _framework import FrameworkArrays, check_sinkhorn

LIBRARY = "mlx-mhc"


class MlxMhcPort(FrameworkArrays):
    """``mlx-mhc``'s Sinkhorn as an hcref port (module docstring)."""

    name = LIBRARY
    version = importlib.metadata.version(LIBRARY)
    framework_version = f"mlx {importlib.metadata.version('mlx')}"

    def __init__(self) -> None:
        super().__init__(_mlx, ("float32", "bfloat16", "float16"))

    def supports(self) -> Support:
        return Support(families=("mhc",), ops=("sinkhorn",), mhc_variants=("paper",), mixed_precision=False,
                       notes={"sinkhorn": "sinkhorn_knopp(Z, max_iterations): log space, rows then columns, "
                                          "stops early when every row and column sum is within 1e-6 of 1"})

    def sinkhorn(self, Z: Any, *, iters: int = 20, eps: float = 0.0) -> Any:
        check_sinkhorn(Z, iters, eps)
        if eps != 0:
            raise NotImplementedError(f"{LIBRARY} has no DeepSeek-V4 eps")
        n = Z.shape[-1]
        flat = Z.reshape(-1, n, n)
        if flat.shape[0] == 0:
            return Z * 0
        return mx.stack([sinkhorn_knopp(flat[i], max_iterations=iters) for i in range(flat.shape[0])]).reshape(
            Z.shape)


port = MlxMhcPort()
