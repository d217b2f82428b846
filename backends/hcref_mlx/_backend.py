"""``MLXBackend``: the ops of :mod:`hcref_mlx.ops` and :mod:`hcref_mlx.mhc` (every op of
:data:`hcref.optable.ALL_OPS`) behind :class:`hcref.interface.Backend`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import mlx.core as mx
import numpy as np

import hcref

from . import mhc, ops

_DTYPES = {
    "float64": mx.float64,
    "float32": mx.float32,
    "bfloat16": mx.bfloat16,
    "float16": mx.float16,
}
_GPU_DTYPES = ("float32", "bfloat16", "float16")
"""MLX has no float64 on the GPU (Metal or CUDA): float64 is a CPU-only dtype."""


def gpu_available() -> bool:
    """Whether MLX has a GPU device (Metal on Apple silicon, CUDA in the CUDA build) here."""
    try:
        return bool(mx.is_available(mx.gpu))
    except (AttributeError, RuntimeError, ValueError):  # pragma: no cover - older MLX
        return False


class MLXBackend:
    """hcref on ``mlx.core`` arrays; gradients by ``mx.vjp``.

    MLX arrays carry no device (unified memory); ops run on MLX's default device, except that
    anything float64 runs on the CPU stream, as MLX supports float64 only there. Hence
    :meth:`capabilities` lists float64 for ``"cpu"`` only.
    """

    name = "hcref_mlx"
    version = hcref.__version__
    framework_version = f"mlx {getattr(mx, '__version__', '?')}"

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
        pairs = [("cpu", dtype) for dtype in _DTYPES]
        if gpu_available():
            pairs += [("gpu", dtype) for dtype in _GPU_DTYPES]
        return pairs

    def prepare_for_conformance(self) -> None:
        """Nothing to switch off: MLX has no reduced-precision float32 matmul mode."""

    def asarray(self, x: np.ndarray, dtype: str, device: str = "cpu") -> mx.array:
        if (device, dtype) not in self.capabilities():
            raise ValueError(f"device/dtype: expected one of {self.capabilities()}, got ({device!r}, {dtype!r})")
        x64 = mx.array(np.array(x, dtype=np.float64), dtype=mx.float64)
        if dtype == "float64":
            return x64
        with mx.stream(mx.cpu):  # the float64 source can only be read on the CPU
            out = x64.astype(_DTYPES[dtype])
            mx.eval(out)
        return out

    def to_numpy(self, x: mx.array) -> np.ndarray:
        if x.dtype == mx.bfloat16:
            with mx.stream(mx.cpu):
                x = x.astype(mx.float32)
        return np.array(x, copy=True)

    def dtype_name(self, x: mx.array) -> str:
        return ops.dtype_name(x.dtype)

    def vjp(self, fn: Callable[..., Any], primals: Sequence[Any], cotangents: Sequence[Any]) -> tuple[Any, ...]:
        """Cotangents of ``primals`` (a mapping for a mapping) for ``fn`` by ``mx.vjp``.

        The array leaves of the primals (mapping values in their order) are the differentiated
        inputs; a primal that does not reach an output gets zeros; a non-array primal gets ``None``.
        Cotangents are cast to their output's dtype. Anything float64 runs on the CPU stream.
        """
        slots: list[tuple[int, Any]] = []  # (primal index, key or None) of every array leaf
        leaves: list[mx.array] = []
        for i, p in enumerate(primals):
            if isinstance(p, Mapping):
                for key, value in p.items():
                    if isinstance(value, mx.array):
                        slots.append((i, key))
                        leaves.append(value)
            elif isinstance(p, mx.array):
                slots.append((i, None))
                leaves.append(p)

        def rebuild(arrays: Sequence[mx.array]) -> list[Any]:
            args = [dict(p) if isinstance(p, Mapping) else p for p in primals]
            for (i, key), a in zip(slots, arrays, strict=True):
                if key is None:
                    args[i] = a
                else:
                    args[i][key] = a
            return args

        def flat(*arrays: mx.array) -> list[mx.array]:
            out = fn(*rebuild(arrays))
            return list(out) if isinstance(out, (tuple, list)) else [out]

        any64 = any(a.dtype == mx.float64 for a in leaves) or any(
            isinstance(c, mx.array) and c.dtype == mx.float64 for c in cotangents
        )
        cpu = mx.stream(mx.cpu) if any64 and mx.default_device().type != mx.cpu else nullcontext()
        with cpu:
            outs = flat(*leaves)
            if len(outs) != len(cotangents):
                raise ValueError(
                    f"cotangents: expected {len(outs)} arrays (one per output of fn), got {len(cotangents)}"
                )
            cots = []
            for o, g in zip(outs, cotangents, strict=True):
                if tuple(g.shape) != tuple(o.shape):
                    raise ValueError(f"cotangents: expected shape {tuple(o.shape)} for an output, got {tuple(g.shape)}")
                cots.append(g.astype(o.dtype))
            grads: Sequence[mx.array] = mx.vjp(flat, leaves, cots)[1] if leaves else []
        found = {slot: g for slot, g in zip(slots, grads, strict=True)}
        return tuple(
            {key: found.get((i, key)) for key in p}
            if isinstance(p, Mapping)
            else found.get((i, None))
            for i, p in enumerate(primals)
        )
