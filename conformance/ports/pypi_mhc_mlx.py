"""hcref adapter for PyPI ``mhc-mlx`` (0.6.3, MLX with Metal kernels): its pure-MLX reference
(``mhc_mlx.reference``, "the source of truth for correctness; the Metal kernel must match
them"), through the module-level entry for static mHC sites and as the ``sinkhorn`` op.

    pip install --no-deps "mhc-mlx==0.6.3"   # mlx comes from hcref's environment
    python -m hcref_conformance --backend conformance/ports/pypi_mhc_mlx.py:port

What the adapter does (the Metal kernels need Apple GPUs; on Linux CPU only the reference runs):

- ``sinkhorn(Z, iters=k)`` is ``mixing_matrix_from_logits(Z_t, iters=k)`` (row max shift, exp,
  its Sinkhorn with eps 1e-5) on each (n, n) matrix of the leading axes (it takes one matrix).
- ``site("mhc", H, {"b": b}, sublayer, iters=k)`` composes the library's own steps exactly as its
  ``mhc_forward_reference`` does, with the suite's sublayer where that function applies its
  fixed ``rms_norm``: ``activate_pre_post(b_pre, b_post)``, ``M = mixing_matrix_from_logits(b_res)``,
  ``y = T(stream_aggregate(H, H_pre))``, ``stream_mix_ref(H, M) + stream_distribute(y, H_post)``.
  Its logits are per layer, not per token (no projection of the state), so only static sites
  are declared. ``expand`` / ``reduce`` are ``mx.broadcast_to`` / ``sum`` (the library takes the
  expanded state as given). The library's ``[B, n, C]`` takes the leading axes flattened.
- Computes in float32 whatever the input dtype: float64 is not declared. No initialiser is
  declared (its module draws its logits at random), so init checks use decision D10's.
Arrays and gradients are ``hcref_mlx``'s.

Note: ``mhc-mlx`` also installs a package named ``mlx_mhc``, which PyPI ``mlx-mhc`` owns too.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import mlx.core as mx
from hcref_mlx import backend as _mlx
from mhc_mlx import reference as ref

from hcref import validation
from hcref.interface import Support

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _framework import FrameworkArrays, check_sinkhorn, meta

LIBRARY = "mhc-mlx"


class MhcMlxPort(FrameworkArrays):
    """``mhc-mlx``'s reference as an hcref port (module docstring)."""

    name = LIBRARY
    version = importlib.metadata.version(LIBRARY)
    framework_version = f"mlx {importlib.metadata.version('mlx')}"

    def __init__(self) -> None:
        super().__init__(_mlx, ("float32", "bfloat16", "float16"))

    def supports(self) -> Support:
        return Support(families=("mhc",), ops=("expand", "reduce", "sinkhorn"), sites=("mhc",), modes=("static",),
                       mhc_variants=("paper",), mixed_precision=False,
                       notes={"sinkhorn": "mixing_matrix_from_logits: exp(Z - rowmax), rows then columns, a row "
                                          "(column) summing to <= 1e-5 left as is (zeroed)",
                              "mhc": "logits per layer (no projection of the state): static sites only"})

    def _matrices(self, Z: Any, iters: int) -> Any:
        n = Z.shape[-1]
        flat = Z.reshape(-1, n, n)
        if flat.shape[0] == 0:
            return Z * 0
        out = [ref.mixing_matrix_from_logits(flat[i], iters=iters) for i in range(flat.shape[0])]
        return mx.stack(out).reshape(Z.shape).astype(Z.dtype)

    def sinkhorn(self, Z: Any, *, iters: int = 20, eps: float = 0.0) -> Any:
        check_sinkhorn(Z, iters, eps)
        if eps != 0:
            raise NotImplementedError(f"{LIBRARY} has no DeepSeek-V4 eps")
        return self._matrices(Z, iters)

    def expand(self, x: Any, n: int) -> Any:
        validation.check_expand(meta(x), n)
        return mx.broadcast_to(x[..., None, :], x.shape[:-1] + (n, x.shape[-1]))

    def reduce(self, H: Any) -> Any:
        validation.check_reduce(meta(H))
        return H.sum(axis=-2)

    def site(self, family: str, H: Any, params: Mapping[str, Any], sublayer: Callable[[Any], Any], *,
             iters: int = 20, eps: float = 0.0) -> Any:
        if family != "mhc" or eps != 0 or set(params) != {"b"}:
            raise NotImplementedError(f"{LIBRARY}: static paper-mHC sites only (family={family!r}, eps={eps}, "
                                      f"params {sorted(params)})")
        lead, (n, d) = H.shape[:-2], H.shape[-2:]
        b = params["b"]
        x = H.reshape(-1, n, d)
        h_pre, h_post = ref.activate_pre_post(b[:n], b[n:2 * n])
        M = ref.mixing_matrix_from_logits(b[2 * n:].reshape(n, n), iters=iters)
        y = sublayer(ref.stream_aggregate(x, h_pre).reshape(lead + (d,)).astype(H.dtype))
        out = ref.stream_mix_ref(x, M) + ref.stream_distribute(y.reshape(-1, d), h_post)
        return out.reshape(H.shape).astype(H.dtype)


port = MhcMlxPort()
