"""``KernelBackend``: the contract ops always on the fused kernels, for the conformance suite.

``python -m hcref_conformance --backend hcref_torch.kernels:backend`` validates the kernels op by
op: on a GPU with ``--device cuda``; on a CPU with ``TRITON_INTERPRET=1`` set before the run
(the interpreter then runs the kernels on CPU tensors, slowly: keep ``--max-examples`` small).
The mHC ops ``sinkhorn``, ``mhc_coeffs``, ``mhc_pre``, ``mhc_post`` run on the mHC kernels
(``mhc_head`` is the generic torch op). The ends (expand, reduce, frac_split, frac_merge) are torch reshapes/sums, as in
:class:`hcref_torch.TorchBackend`; gradients go through torch.autograd into the kernels'
registered backward ops.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hcref.sinkhorn_knopp import ITERS

from .. import mhc as _generic_mhc
from .._backend import TorchBackend
from . import functional as f
from ._switch import available, interpreting

Tensor = torch.Tensor


class KernelBackend(TorchBackend):
    """hcref on the Triton kernels; capabilities: CUDA (when present), and CPU under the interpreter."""

    name = "hcref_torch.kernels"

    def capabilities(self) -> list[tuple[str, str]]:
        devices = (["cpu"] if interpreting() else []) + (["cuda"] if torch.cuda.is_available() else [])
        if not available():
            devices = []
        return [(device, dtype) for device in devices for dtype in ("float64", "float32", "bfloat16", "float16")]

    @staticmethod
    def sinkhorn(Z: Tensor, *, iters: int = ITERS, eps: float = 0.0) -> Tensor:
        return f._sinkhorn_op(Z, iters, eps, strict=True)

    @staticmethod
    def mhc_coeffs(H: Tensor, params: Mapping[str, Tensor], *, iters: int = ITERS,
                   eps: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
        return f._mhc_coeffs_op(H, params, iters, eps, strict=True)

    @staticmethod
    def mhc_pre(H: Tensor, h_pre: Tensor) -> Tensor:
        return f._mhc_pre_op(H, h_pre, strict=True)

    @staticmethod
    def mhc_post(y: Tensor, H: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
        return f._mhc_post_op(y, H, h_post, h_res, strict=True)

    mhc_head = staticmethod(_generic_mhc.mhc_head)
    """DeepSeek-V4's learned reduce: the generic torch op (no kernel; it runs once per model)."""

    @staticmethod
    def hc_coeffs(H: Tensor, params: Mapping[str, Tensor], *, norm: str = "layernorm", use_tanh: bool = True,
                  use_norm: bool = True, use_scale: bool = True) -> tuple[Tensor, Tensor]:
        return f._coeffs_op("hc", H, params, norm, use_tanh, use_norm, use_scale, strict=True)

    @staticmethod
    def fc_coeffs(H: Tensor, params: Mapping[str, Tensor], *, norm: str = "layernorm", use_tanh: bool = True,
                  use_norm: bool = True, use_scale: bool = True) -> tuple[Tensor, Tensor]:
        return f._coeffs_op("fc", H, params, norm, use_tanh, use_norm, use_scale, strict=True)

    @staticmethod
    def hc_width(H: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        return f._width_op("hc", H, alpha, strict=True)

    @staticmethod
    def fc_width(H: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        return f._width_op("fc", H, alpha, strict=True)

    @staticmethod
    def hc_depth(y: Tensor, H_res: Tensor, beta: Tensor) -> Tensor:
        return f._depth_op("hc", y, H_res, beta, strict=True)

    @staticmethod
    def fc_depth(y: Tensor, H_res: Tensor, beta: Tensor) -> Tensor:
        return f._depth_op("fc", y, H_res, beta, strict=True)


