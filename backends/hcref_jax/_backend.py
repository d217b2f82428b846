"""``JaxBackend``: the ops of :mod:`hcref_jax.ops` and :mod:`hcref_jax.mhc` (every op of
:data:`hcref.optable.ALL_OPS`), jitted, behind :class:`hcref.interface.Backend`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import hcref

from . import mhc, ops

_DTYPES = {
    "float64": jnp.float64,
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}
_OPTIONS = ("norm", "use_tanh", "use_norm", "use_scale")
_MHC_OPTIONS = ("iters", "eps")


def _jit(fn: Callable[..., Any], static: tuple[str, ...] = ()) -> Callable[..., Any]:
    """``jax.jit(fn)`` with ``static`` arguments (jit keeps ``fn``'s name, doc and signature)."""
    return jax.jit(fn, static_argnames=static)


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _x64_enabled() -> bool:
    """Whether float64 arrays are float64 (``jax_enable_x64``), not silently float32."""
    return bool(jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64)) == jnp.float64)


def _platforms() -> list[str]:
    """``cpu`` plus ``gpu`` when jax sees one (JAX names CUDA and ROCm devices ``gpu``)."""
    try:
        has_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        has_gpu = False
    return ["cpu"] + (["gpu"] if has_gpu else [])


class JaxBackend:
    """hcref on jax arrays (cpu/gpu, any floating dtype); every op jitted, gradients by ``jax.vjp``.

    float64 needs ``jax_enable_x64`` (``prepare_for_conformance`` sets it); without it ``asarray``
    refuses ``"float64"`` rather than silently returning float32.
    """

    name = "hcref_jax"
    version = hcref.__version__
    framework_version = f"jax {jax.__version__}"

    def __init__(self, *, jit_vjp: bool = False) -> None:
        self.jit_vjp = jit_vjp

    expand = staticmethod(_jit(ops.expand, ("n",)))
    reduce = staticmethod(_jit(ops.reduce))
    frac_split = staticmethod(_jit(ops.frac_split, ("m",)))
    frac_merge = staticmethod(_jit(ops.frac_merge))
    hc_coeffs = staticmethod(_jit(ops.hc_coeffs, _OPTIONS))
    hc_width = staticmethod(_jit(ops.hc_width))
    hc_depth = staticmethod(_jit(ops.hc_depth))
    fc_coeffs = staticmethod(_jit(ops.fc_coeffs, _OPTIONS))
    fc_width = staticmethod(_jit(ops.fc_width))
    fc_depth = staticmethod(_jit(ops.fc_depth))
    sinkhorn = staticmethod(_jit(mhc.sinkhorn, _MHC_OPTIONS))
    mhc_coeffs = staticmethod(_jit(mhc.mhc_coeffs, _MHC_OPTIONS))
    mhc_pre = staticmethod(_jit(mhc.mhc_pre))
    mhc_post = staticmethod(_jit(mhc.mhc_post))
    mhc_head = staticmethod(_jit(mhc.mhc_head, ("eps",)))

    def capabilities(self) -> list[tuple[str, str]]:
        return [(device, dtype) for device in _platforms() for dtype in _DTYPES]

    def prepare_for_conformance(self) -> None:
        """float64 on (``jax_enable_x64``) and full float32 matmul precision (no TF32 on GPUs)."""
        jax.config.update("jax_enable_x64", True)  # type: ignore[no-untyped-call]
        jax.config.update("jax_default_matmul_precision", "highest")  # type: ignore[no-untyped-call]

    def asarray(self, x: np.ndarray, dtype: str, device: str = "cpu") -> jax.Array:
        platform = {"cuda": "gpu", "rocm": "gpu"}.get(device.split(":")[0], device.split(":")[0])
        if (platform, dtype) not in self.capabilities():
            raise ValueError(f"device/dtype: expected one of {self.capabilities()}, got ({device!r}, {dtype!r})")
        if dtype == "float64" and not _x64_enabled():
            raise ValueError(
                "dtype: float64 needs jax_enable_x64 (call backend.prepare_for_conformance() or "
                "jax.config.update('jax_enable_x64', True) first)"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        out: jax.Array = jax.device_put(
            jnp.asarray(np.asarray(x, dtype=np.float64), dtype=_DTYPES[dtype]), jax.devices(platform)[index]
        )
        return out

    def to_numpy(self, x: jax.Array) -> np.ndarray:
        if x.dtype == jnp.bfloat16:
            x = x.astype(jnp.float32)
        return np.array(x)

    def dtype_name(self, x: jax.Array) -> str:
        return ops.dtype_name(x.dtype)

    def vjp(self, fn: Callable[..., Any], primals: Sequence[Any], cotangents: Sequence[Any]) -> tuple[Any, ...]:
        """Cotangents of ``primals`` (a mapping for a mapping) for ``fn`` by ``jax.vjp``.

        Array primals (and mappings of arrays) are differentiated; a primal that does not reach an
        output gets zeros; any other primal is closed over and gets ``None``. Cotangents are cast to
        their output's dtype. The backend's ops inside ``fn`` are jitted, so the forward and the
        backward of every op run as compiled XLA computations (cached per shape, dtype and options).
        With ``jit_vjp=True`` the whole pullback is also jitted as one program; that compiles anew
        for every new ``fn`` (the suite builds one per check), so it is off by default.
        """
        primals = list(primals)
        diff_idx = [
            i for i, p in enumerate(primals)
            if _is_array(p) or (isinstance(p, Mapping) and all(_is_array(x) for x in p.values()))
        ]

        def pull(diff: list[Any], cots: tuple[Any, ...]) -> tuple[Any, ...]:
            def f(*d: Any) -> Any:
                args = list(primals)
                for i, x in zip(diff_idx, d):
                    args[i] = x
                return fn(*args)

            out, pullback = jax.vjp(f, *diff)
            outs = out if isinstance(out, tuple) else (out,)
            if len(outs) != len(cots):
                raise ValueError(
                    f"cotangents: expected {len(outs)} arrays (one per output of fn), got {len(cots)}"
                )
            for o, g in zip(outs, cots):
                if tuple(g.shape) != tuple(o.shape):
                    raise ValueError(f"cotangents: expected shape {tuple(o.shape)} for an output, got {tuple(g.shape)}")
            cast = tuple(jnp.asarray(g).astype(o.dtype) for o, g in zip(outs, cots))
            return tuple(pullback(cast if isinstance(out, tuple) else cast[0]))

        diff = [dict(primals[i]) if isinstance(primals[i], Mapping) else primals[i] for i in diff_idx]
        grads = (jax.jit(pull) if self.jit_vjp else pull)(diff, tuple(cotangents))
        result: list[Any] = [None] * len(primals)
        for i, g in zip(diff_idx, grads):
            result[i] = g
        return tuple(result)
