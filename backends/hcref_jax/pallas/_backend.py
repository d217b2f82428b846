"""``PallasBackend``: hcref_jax's backend with the HC/FC ops on the Pallas kernels, always."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import mhc as xla_mhc
from .._backend import _OPTIONS, JaxBackend
from . import mode
from .ops import Forced

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _jit(fn: Any, static: tuple[str, ...] = ()) -> Any:
    return jax.jit(fn, static_argnames=static)


class PallasBackend(JaxBackend):
    """hcref on jax arrays with ``hc_*`` / ``fc_*`` coefficients, width and depth and ``mhc_coeffs``,
    ``mhc_pre``, ``mhc_post`` on the Pallas kernels wherever they take the input
    (:func:`hcref_jax.pallas.supported`), whatever the mode: compiled by Mosaic on a TPU, in TPU
    interpret mode elsewhere (the conformance suite validates the kernels op by op on a CPU this
    way). ``expand``, ``reduce``, ``frac_split``, ``frac_merge`` (a broadcast, a sum over the streams,
    two reshapes), a static site's coefficients (a broadcast), the standalone ``sinkhorn`` (its
    in-kernel version runs inside ``mhc_coeffs``) and ``mhc_head`` are the XLA ops of
    :mod:`hcref_jax.ops` and :mod:`hcref_jax.mhc`.

    Dtypes: float32 and bfloat16, the kernels' (a TPU has no float64). Devices: the TPU when JAX's
    default backend is one, else the CPU.
    """

    name = "hcref_jax.pallas"

    hc_coeffs = staticmethod(_jit(Forced.hc_coeffs, _OPTIONS))
    hc_width = staticmethod(_jit(Forced.hc_width))
    hc_depth = staticmethod(_jit(Forced.hc_depth))
    fc_coeffs = staticmethod(_jit(Forced.fc_coeffs, _OPTIONS))
    fc_width = staticmethod(_jit(Forced.fc_width))
    fc_depth = staticmethod(_jit(Forced.fc_depth))
    mhc_coeffs = staticmethod(_jit(Forced.mhc_coeffs, ("iters", "eps")))
    mhc_pre = staticmethod(_jit(Forced.mhc_pre))
    mhc_post = staticmethod(_jit(Forced.mhc_post))
    sinkhorn = staticmethod(_jit(xla_mhc.sinkhorn, ("iters", "eps")))
    mhc_head = staticmethod(_jit(xla_mhc.mhc_head, ("eps",)))

    def capabilities(self) -> list[tuple[str, str]]:
        platform = "tpu" if mode.on_tpu() else "cpu"
        return [(platform, dtype) for dtype in _DTYPES]

    def asarray(self, x: np.ndarray, dtype: str, device: str = "cpu") -> jax.Array:
        platform = device.split(":")[0]
        if (platform, dtype) not in self.capabilities():
            raise ValueError(f"device/dtype: expected one of {self.capabilities()}, got ({device!r}, {dtype!r})")
        index = int(device.split(":")[1]) if ":" in device else 0
        out: jax.Array = jax.device_put(
            jnp.asarray(np.asarray(x, dtype=np.float64), dtype=_DTYPES[dtype]), jax.devices(platform)[index]
        )
        return out
