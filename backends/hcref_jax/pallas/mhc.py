"""The mHC ops of the contract on the Pallas kernels: ``mhc_coeffs``, ``mhc_pre``, ``mhc_post``
(mHC paper Eqs. 3, 7-9, 14-19; decisions D7, D9, D12).

Signatures, shapes, dtypes and errors are those of :mod:`hcref_jax.mhc` (and :mod:`hcref`); inputs
are checked with :mod:`hcref.validation` at trace time. Each op takes the kernels when the mode asks
for them (:func:`hcref_jax.pallas.set_mode`) and :func:`supported` holds, and the XLA path of
:mod:`hcref_jax.mhc` otherwise. ``iters`` and ``eps`` are Python values (static under ``jax.jit``).

Kernels:

* ``mhc_coeffs``: :mod:`.mhc_coeffs` (statistics of the flattened n*d row and the projection in
  one pass, the norm after the matmul, gates, bias, sigmoids and Sinkhorn in the epilogue; the
  backward recomputes the Sinkhorn iterates). A static site (params exactly ``{b}``) is a broadcast
  of its parameters: XLA computes it.
* ``mhc_pre``: ``h0 = sum_i h_pre[i] H[i]`` is HC's ``h0 = A_m^T H`` with ``A_m = h_pre``: the
  width kernel (:mod:`.width`) with one mixing column, no other output.
* ``mhc_post``: ``H_out = h_res H + h_post y^T`` is HC's fused depth write with ``A_r = h_res^T``
  and ``B = h_post``: the fused depth kernel (:mod:`.depth`), one pass (reads y, H and the
  coefficients once, writes H_out once). The per-token transpose of ``h_res`` (n^2 numbers) is XLA's.

Precision (D12): float32 inside the kernels, rounded once; coefficients in promote(H, params),
``mhc_pre`` in H's dtype, ``mhc_post`` in promote(y, H). Kernels take float32 and bfloat16 inputs
(float16 and float64 take the XLA path), at least one token, ``1 <= n <= 16`` and rows whose blocks
fit VMEM (:mod:`.blocks`; the coefficient kernel needs whole rows of n*d).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from hcref import validation as v
from hcref.sinkhorn_knopp import ITERS

from .. import mhc as xla
from .. import ops as xla_ops
from . import blocks, mode
from ._common import F32, dtype_name
from .depth import WriteSpec, write_fused_rows
from .depth import fits as write_fits
from .mhc_coeffs import MhcSpec, mhc_coeff_rows
from .mhc_coeffs import fits as coeff_fits
from .width import MixSpec, mix_rows
from .width import fits as mix_fits

Array = jax.Array

MHC_OPS = ("mhc_coeffs", "mhc_pre", "mhc_post")
"""The mHC names :func:`hcref_jax.pallas.supported` knows."""

def _dtypes_ok(*arrays: Any) -> bool:
    return all(dtype_name(a.dtype) in ("float32", "bfloat16") for a in arrays)


def supported(op: str, *args: Any) -> bool:
    """:func:`hcref_jax.pallas.supported` for the mHC ops: ``("mhc_coeffs", H, params)``,
    ``("mhc_pre", H, h_pre)``, ``("mhc_post", y, H, h_post, h_res)``. ``iters`` and ``eps`` are not
    arguments: the scratch for the Sinkhorn potentials is counted at the default ``iters`` = 20 here
    and at the actual ``iters`` by the op itself. Inputs are assumed valid for the op (the op checks
    them); anything else gives False. Raises ValueError for an unknown ``op``."""
    if op not in MHC_OPS:
        raise ValueError(f"op: expected one of {list(MHC_OPS)}, got {op!r}")
    try:
        arrays = [a for x in args for a in (x.values() if isinstance(x, Mapping) else (x,))]
        if not _dtypes_ok(*arrays):
            return False
        H = args[1] if op == "mhc_post" else args[0]
        n, d = H.shape[-2:]
        tokens = math.prod(H.shape[:-2])
        if tokens < 1 or d < 1 or not 1 <= n <= blocks.MAX_ROWS:
            return False
        size = H.dtype.itemsize
        if op == "mhc_coeffs":
            if not any(key in args[1] for key in v.MHC_DYNAMIC_KEYS):
                return False
            out = dtype_name(jnp.result_type(*(a.dtype for a in arrays)))
            return coeff_fits(MhcSpec(n, ITERS, 0.0, out), tokens, n * d, size)
        if op == "mhc_pre":
            return mix_fits(MixSpec(n, 1, 1, rest=False, pass_state=False), tokens, d, size, args[1].dtype.itemsize)
        y, _, h_post, h_res = args
        spec = WriteSpec(n, 1, True, n, 0, dtype_name(jnp.result_type(y.dtype, H.dtype)), dtype_name(H.dtype))
        return write_fits(spec, tokens, d, [y.dtype.itemsize, size, h_post.dtype.itemsize, h_res.dtype.itemsize])
    except (AttributeError, TypeError, IndexError, ValueError):
        return False


def _use(force: bool, op: str, *args: Any) -> bool:
    return (force or mode.want_kernels()) and supported(op, *args)


def _xla(fn: Any, *args: Any, **options: Any) -> Any:
    """``fn`` of :mod:`hcref_jax.mhc` traced in mode "xla", so that a dispatch to these kernels added
    there can never call back into them (whatever its predicate)."""
    with mode.use_mode("xla"):
        return fn(*args, **options)


def _param_metas(params: Any) -> dict[str, v.ArrayMeta]:
    if not isinstance(params, Mapping):
        return {}
    return {key: xla_ops.meta(f"params[{key!r}]", value) for key, value in params.items()}


def _coeffs(H: Any, params: Any, iters: int, eps: float, force: bool) -> tuple[Array, Array, Array]:
    n, d, dynamic = v.check_mhc_coeffs(xla_ops.meta("H", H), params, _param_metas(params), iters, eps)
    if not dynamic or not _use(force, "mhc_coeffs", H, params):
        return _xla(xla.mhc_coeffs, H, params, iters=iters, eps=eps)  # type: ignore[no-any-return]
    H = jnp.asarray(H)
    p = {key: jnp.asarray(value) for key, value in params.items()}
    out = dtype_name(jnp.result_type(H.dtype, *(a.dtype for a in p.values())))
    spec = MhcSpec(n, int(iters), float(eps), out)
    if not coeff_fits(spec, math.prod(H.shape[:-2]), n * d, H.dtype.itemsize):
        return _xla(xla.mhc_coeffs, H, params, iters=iters, eps=eps)  # type: ignore[no-any-return]
    gates = p["gates"].astype(F32)
    gates_col = jnp.concatenate([jnp.broadcast_to(gates[0], (n,)), jnp.broadcast_to(gates[1], (n,)),
                                 jnp.broadcast_to(gates[2], (n * n,))])
    vec = jnp.stack([gates_col, p["b"].astype(F32)])
    lead = H.shape[:-2]
    h_pre, h_post, h_res = mhc_coeff_rows(spec, H.reshape(-1, n * d), p["phi"].astype(F32).T, vec)
    return h_pre.reshape(*lead, n), h_post.reshape(*lead, n), h_res.reshape(*lead, n, n)


def _pre(H: Any, h_pre: Any, force: bool) -> Array:
    n, d = v.check_mhc_pre(xla_ops.meta("H", H), xla_ops.meta("h_pre", h_pre))
    if not _use(force, "mhc_pre", H, h_pre):
        return _xla(xla.mhc_pre, H, h_pre)  # type: ignore[no-any-return]
    H, h_pre = jnp.asarray(H), jnp.asarray(h_pre)
    spec = MixSpec(n, 1, 1, rest=False, pass_state=False)
    (h0,) = mix_rows(spec, h_pre.reshape(-1, n), H.reshape(-1, d))
    return h0.reshape(H.shape[:-2] + (d,))


def _post(y: Any, H: Any, h_post: Any, h_res: Any, force: bool) -> Array:
    n, d = v.check_mhc_post(xla_ops.meta("y", y), xla_ops.meta("H", H), xla_ops.meta("h_post", h_post),
                            xla_ops.meta("h_res", h_res))
    if not _use(force, "mhc_post", y, H, h_post, h_res):
        return _xla(xla.mhc_post, y, H, h_post, h_res)  # type: ignore[no-any-return]
    y, H, h_post, h_res = (jnp.asarray(a) for a in (y, H, h_post, h_res))
    spec = WriteSpec(n, 1, True, n, 0, dtype_name(jnp.result_type(y.dtype, H.dtype)), dtype_name(H.dtype))
    A = jnp.swapaxes(h_res, -1, -2).reshape(-1, n * n)  # A_r[i, j] = h_res[j, i]: from stream i into j
    out = write_fused_rows(spec, y.reshape(-1, d), H.reshape(-1, d), A, h_post.reshape(-1, n))
    return out.reshape(H.shape)


def mhc_coeffs(
    H: Array, params: Mapping[str, Array], *, iters: int = ITERS, eps: float = 0.0
) -> tuple[Array, Array, Array]:
    """:func:`hcref_jax.mhc.mhc_coeffs` (mHC paper Eqs. 7-9, 14-15) on the coefficient kernel
    (:mod:`.mhc_coeffs`)::

        z = (vec(H)/s phi) r'                  r' = (mean((vec(H)/s)^2) + 1e-6/s/s)^(-1/2)
        h_pre = sigmoid(gates[0] z_pre + b_pre) + eps,   h_post = 2 sigmoid(gates[1] z_post + b_post)
        h_res = sinkhorn(gates[2] mat(z_res) + mat(b_res), iters=iters, eps=eps)

    Shapes: H (..., n, d), params phi (n*d, 2n+n^2), b (2n+n^2), gates (3) -> h_pre (..., n),
    h_post (..., n), h_res (..., n, n), in promote(H, params). Raises the reference's
    ValueError/TypeError (:func:`hcref.mhc_coeffs`)."""
    return _coeffs(H, params, iters, eps, False)


def mhc_pre(H: Array, h_pre: Array) -> Array:
    """:func:`hcref_jax.mhc.mhc_pre` (mHC paper Eq. 3, ``H_pre x_l``) on the width kernel:
    ``h0 = sum_i h_pre[i] H[i]``. Shapes: H (..., n, d), h_pre (..., n) -> (..., d), in H's dtype."""
    return _pre(H, h_pre, False)


def mhc_post(y: Array, H: Array, h_post: Array, h_res: Array) -> Array:
    """:func:`hcref_jax.mhc.mhc_post` (mHC paper Eq. 3) on the fused depth kernel:
    ``H_out[i] = sum_j h_res[i, j] H[j] + h_post[i] y`` in one pass. Shapes: y (..., d),
    H (..., n, d), h_post (..., n), h_res (..., n, n) -> (..., n, d), in promote(y, H)."""
    return _post(y, H, h_post, h_res, False)


class ForcedMhc:
    """The mHC ops with the kernels forced wherever :func:`supported` holds (whatever the mode)."""

    @staticmethod
    def mhc_coeffs(H: Array, params: Mapping[str, Array], *, iters: int = ITERS,
                   eps: float = 0.0) -> tuple[Array, Array, Array]:
        return _coeffs(H, params, iters, eps, True)

    @staticmethod
    def mhc_pre(H: Array, h_pre: Array) -> Array:
        return _pre(H, h_pre, True)

    @staticmethod
    def mhc_post(y: Array, H: Array, h_post: Array, h_res: Array) -> Array:
        return _post(y, H, h_post, h_res, True)
