"""``TorchBackend``: the ops of :mod:`hcref_torch.ops` and :mod:`hcref_torch.mhc` (every op of
:data:`hcref.optable.ALL_OPS`) behind :class:`hcref.interface.Backend`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

import hcref

from . import mhc, ops

_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class TorchBackend:
    """hcref on torch tensors (any device, any floating dtype); gradients by torch.autograd."""

    name = "hcref_torch"
    version = hcref.__version__
    framework_version = f"torch {torch.__version__}"

    expand = staticmethod(ops.expand)
    reduce = staticmethod(ops.reduce)
    frac_split = staticmethod(ops.frac_split)
    frac_merge = staticmethod(ops.frac_merge)
    hc_coeffs = staticmethod(ops.hc_coeffs)
    hc_width = staticmethod(ops.hc_width)
    hc_depth = staticmethod(ops.hc_depth)
    fc_coeffs = staticmethod(ops.fc_coeffs)
    fc_width = staticmethod(ops.fc_width)
    fc_depth = staticmethod(ops.fc_depth)
    sinkhorn = staticmethod(mhc.sinkhorn)
    mhc_coeffs = staticmethod(mhc.mhc_coeffs)
    mhc_pre = staticmethod(mhc.mhc_pre)
    mhc_post = staticmethod(mhc.mhc_post)
    mhc_head = staticmethod(mhc.mhc_head)

    def capabilities(self) -> list[tuple[str, str]]:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        return [(device, dtype) for device in devices for dtype in _DTYPES]

    def prepare_for_conformance(self) -> None:
        """Full float32 matmul precision (no TF32 on CUDA), so float32 results are float32-accurate."""
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")

    def asarray(self, x: np.ndarray, dtype: str, device: str = "cpu") -> torch.Tensor:
        if (device, dtype) not in self.capabilities() and not (device.startswith("cuda:") and dtype in _DTYPES):
            raise ValueError(f"device/dtype: expected one of {self.capabilities()}, got ({device!r}, {dtype!r})")
        return torch.from_numpy(np.array(x, dtype=np.float64)).to(device=device, dtype=_DTYPES[dtype])

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy().copy()

    def dtype_name(self, x: torch.Tensor) -> str:
        return ops.dtype_name(x.dtype)

    def vjp(self, fn: Callable[..., Any], primals: Sequence[Any], cotangents: Sequence[Any]) -> tuple[Any, ...]:
        """Cotangents of ``primals`` (a mapping for a mapping) for ``fn`` by ``torch.autograd.grad``.

        Every tensor primal becomes a fresh leaf; a primal that does not reach an output gets zeros;
        a non-tensor primal gets ``None``.
        """
        leaves: list[torch.Tensor] = []

        def leaf(p: Any) -> Any:
            if not isinstance(p, torch.Tensor):
                return p
            t = p.detach().requires_grad_(p.is_floating_point() or p.is_complex())
            leaves.append(t)
            return t

        args = [{k: leaf(val) for k, val in p.items()} if isinstance(p, Mapping) else leaf(p) for p in primals]
        with torch.enable_grad():
            out = fn(*args)
        outs = out if isinstance(out, tuple) else (out,)
        if len(outs) != len(cotangents):
            raise ValueError(f"cotangents: expected {len(outs)} arrays (one per output of fn), got {len(cotangents)}")
        pairs = []
        for o, g in zip(outs, cotangents, strict=True):
            if tuple(g.shape) != tuple(o.shape):
                raise ValueError(f"cotangents: expected shape {tuple(o.shape)} for an output, got {tuple(g.shape)}")
            if o.requires_grad:
                pairs.append((o, g.to(device=o.device, dtype=o.dtype)))
        wanted = [t for t in leaves if t.requires_grad]
        grads: Sequence[torch.Tensor | None] = [None] * len(wanted)
        if pairs and wanted:
            grads = torch.autograd.grad(
                [o for o, _ in pairs], wanted, grad_outputs=[g for _, g in pairs], allow_unused=True
            )
        found = {id(t): g for t, g in zip(wanted, grads, strict=True)}

        def grad_of(t: Any) -> Any:
            if not isinstance(t, torch.Tensor):
                return None
            g = found.get(id(t))
            return torch.zeros_like(t) if g is None else g

        return tuple(
            {k: grad_of(val) for k, val in p.items()} if isinstance(p, Mapping) else grad_of(p) for p in args
        )
