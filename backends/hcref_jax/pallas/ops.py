"""The contract ops on the Pallas kernels, the fused site path, and the ``supported`` predicate.

Every op has the signature, shapes, dtypes and errors of the op of the same name in
:mod:`hcref_jax.ops` (and :mod:`hcref`): inputs are checked with :mod:`hcref.validation` on static
shapes at trace time. Each op takes the kernels when the mode asks for them
(:func:`hcref_jax.pallas.set_mode`) and :func:`supported` holds for its inputs, and the XLA path of
:mod:`hcref_jax.ops` otherwise. Options (``norm``, ``use_tanh``, ...) are Python values: static
under ``jax.jit``. Everything works under ``jax.jit``, ``jax.vmap`` (the batch axis is folded into
the tokens, :mod:`._batching`) and ``jax.grad`` (each kernel is a ``jax.custom_vjp`` whose backward
is its own kernel; forward-mode ``jax.jvp`` is not available, as for the XLA path's custom VJPs).

Precision (D12): kernels compute in float32 and round once. Coefficients come out in the promoted
dtype of H and the parameters; ``*_width`` keeps H's dtype; ``*_depth`` gives ``promote(y, H_res)``.

Kernels: float32 and bfloat16 inputs (what a TPU runs; float16 and float64 take the XLA path), at
least one token, ``1 <= k <= 16`` streams/fractions, and rows whose blocks fit VMEM
(:mod:`.blocks`). A static site's coefficients are a broadcast of its parameters: XLA does it.

The mHC ops (``mhc_coeffs``, ``mhc_pre``, ``mhc_post``) live in :mod:`.mhc`; :func:`supported`,
:data:`OPS` and :class:`Forced` cover them too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from hcref import validation as v
from hcref.norms import LAYERNORM_EPS, RMSNORM_EPS

from .. import ops as xla
from . import blocks, mode
from ._common import F32, dtype_name
from .coeffs import CoeffSpec, coeff_rows
from .coeffs import fits as coeff_fits
from .depth import WriteSpec, write_fused_rows, write_rows
from .depth import fits as write_fits
from .mhc import MHC_OPS, ForcedMhc
from .mhc import supported as mhc_supported
from .width import MixSpec, mix_rows
from .width import fits as mix_fits

Array = jax.Array

KERNEL_DTYPES = ("float32", "bfloat16")
"""Input dtypes the kernels take (a TPU has no float64; float16 takes the XLA path)."""

OPS = ("hc_coeffs", "hc_width", "hc_depth", "fc_coeffs", "fc_width", "fc_depth",
       "hc_site_width", "hc_site_depth", "fc_site_width", "fc_site_depth", *MHC_OPS)
"""The names :func:`supported` knows."""


class SiteState(NamedTuple):
    """What the fused site path's ``*_site_depth`` needs from ``*_site_width``."""

    H: Array
    """The state H (..., k, w), passed through (its cotangent joins the width kernel's backward)."""
    alpha: Array
    """(..., k, c): the depth kernel mixes with ``alpha[..., split:]``."""
    beta: Array
    """(..., k)."""


def _c_split(family: str, k: int) -> tuple[int, int]:
    return (k + 1, 1) if family == "hc" else (2 * k, k)


def _arrays(args: Any) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, Mapping):
            out += list(a.values())
        elif isinstance(a, tuple):
            out += _arrays(a)
        else:
            out.append(a)
    return out


def supported(op: str, *args: Any) -> bool:
    """Whether the kernels take op ``op`` (a name of :data:`OPS`) on these inputs (arrays, tracers or
    ``jax.ShapeDtypeStruct``s, with the op's positional arguments: ``supported("hc_width", H, alpha)``,
    ``supported("hc_coeffs", H, params)``, ``supported("fc_site_depth", y, state)``,
    ``supported("mhc_coeffs", H, params)``, ``supported("mhc_post", y, H, h_post, h_res)``). Inputs are
    assumed valid for the op (the op itself checks them). Independent of the mode and the platform."""
    if op not in OPS:
        raise ValueError(f"op: expected one of {list(OPS)}, got {op!r}")
    if op in MHC_OPS:
        return mhc_supported(op, *args)
    try:
        arrays = _arrays(args)
        if any(dtype_name(a.dtype) not in KERNEL_DTYPES for a in arrays):
            return False
        family, step = op[:2], op[3:]
        if step == "depth":
            y, state, beta = args
        elif step == "site_depth":
            y, (state, alpha, beta) = args
        else:
            state = args[0]
        k, w = state.shape[-2:]
        tokens = math.prod(state.shape[:-2])
        if tokens < 1 or w < 1 or not 1 <= k <= blocks.MAX_ROWS:
            return False
        c, split = _c_split(family, k)
        size = state.dtype.itemsize
        ry = 1 if family == "hc" else k
        if step in ("coeffs", "site_width"):
            dynamic = v.is_dynamic(args[1])
            if step == "coeffs" and not dynamic:
                return False
            if dynamic:
                spec = CoeffSpec(k, c, split, "layernorm", 0.0, True, "float32", site=step == "site_width")
                return coeff_fits(spec, tokens, w, size)
            return mix_fits(MixSpec(k, c, split, rest=False), tokens, w, size, 4)
        if step == "width":
            return mix_fits(MixSpec(k, c, split, rest=True), tokens, w, size, args[1].dtype.itemsize)
        fused = step == "site_depth"
        spec_w = WriteSpec(k, ry, fused, c, split, "float32", dtype_name(state.dtype))
        sizes = [y.dtype.itemsize, size, beta.dtype.itemsize] + ([alpha.dtype.itemsize] if fused else [])
        return write_fits(spec_w, tokens, w, sizes)
    except (AttributeError, TypeError, ValueError):
        return False


def _use(force: bool, op: str, *args: Any) -> bool:
    return (force or mode.want_kernels()) and supported(op, *args)


def _promote(*arrays: Any) -> Any:
    return jnp.result_type(*(a.dtype for a in arrays))


# --- coefficients ---------------------------------------------------------------------------


def _check_coeffs(family: str, H: Any, params: Any, options: dict[str, Any]) -> bool:
    metas = {key: xla.meta(f"params[{key!r}]", value) for key, value in params.items()} if isinstance(
        params, Mapping
    ) else {}
    _, _, dynamic = v.check_coeffs(family, xla.meta("H", H), params, metas, *options.values())
    return dynamic


def _static(family: str, p: Mapping[str, Array]) -> tuple[Array, Array]:
    if family == "hc":
        return jnp.concatenate([p["A_m"][:, None], p["A_r"]], axis=-1), p["B"]
    return jnp.concatenate([p["Y"], p["A"]], axis=-1), p["B"]


def _coeff_inputs(
    family: str, H: Array, p: Mapping[str, Array], options: dict[str, Any], site: bool
) -> tuple[CoeffSpec, Array, Array, Array, Array]:
    """The kernel's spec and operands: rows X, Wt = (diag(norm_weight) [W_alpha | W_beta])^T,
    vec = [scale; norm_bias [W_alpha | W_beta]], static = [static_alpha | static_beta] (float32).
    Autodiff of this preparation turns the kernel's gradients into the parameters'."""
    k, w = H.shape[-2:]
    c, split = _c_split(family, k)
    norm = options["norm"] if options["use_norm"] else "none"
    static_alpha, static_beta = _static(family, p)
    W = jnp.concatenate([p["W_alpha"].astype(F32), p["W_beta"].astype(F32)[:, None]], axis=-1)
    Wg = p["norm_weight"].astype(F32)[:, None] * W if norm != "none" else W
    if options["use_scale"]:
        scale = jnp.concatenate([jnp.broadcast_to(p["s_alpha"].astype(F32), (c,)), p["s_beta"].astype(F32)[None]])
    else:
        scale = jnp.ones((c + 1,), F32)
    if norm == "layernorm":
        bias = jnp.matmul(p["norm_bias"].astype(F32), W, precision=jax.lax.Precision.HIGHEST)
    else:
        bias = jnp.zeros((c + 1,), F32)
    static = jnp.concatenate([static_alpha, static_beta[:, None]], axis=-1).astype(F32)
    out_dtype = dtype_name(_promote(H, *p.values()))
    eps = LAYERNORM_EPS if norm == "layernorm" else RMSNORM_EPS
    spec = CoeffSpec(k, c, split, norm, eps, bool(options["use_tanh"]), out_dtype, site=site)
    return spec, H.reshape(-1, w), Wg.T, jnp.stack([scale, bias]), static


def _coeffs(family: str, H: Any, params: Any, options: dict[str, Any], force: bool) -> tuple[Array, Array]:
    dynamic = _check_coeffs(family, H, params, options)
    if not dynamic or not _use(force, f"{family}_coeffs", H, params):
        return getattr(xla, f"{family}_coeffs")(H, params, **options)  # type: ignore[no-any-return]
    H = jnp.asarray(H)
    p = {key: jnp.asarray(value) for key, value in params.items()}
    spec, *operands = _coeff_inputs(family, H, p, options, site=False)
    (ab,) = coeff_rows(spec, *operands)
    ab = ab.reshape(*H.shape[:-1], spec.c + 1)
    return ab[..., : spec.c], ab[..., spec.c]


def _options(norm: str, use_tanh: bool, use_norm: bool, use_scale: bool) -> dict[str, Any]:
    return {"norm": norm, "use_tanh": use_tanh, "use_norm": use_norm, "use_scale": use_scale}


def hc_coeffs(
    H: Array, params: Mapping[str, Array], *, norm: str = "layernorm", use_tanh: bool = True,
    use_norm: bool = True, use_scale: bool = True,
) -> tuple[Array, Array]:
    """:func:`hcref_jax.ops.hc_coeffs` (HC Eqs. 10-13) on the coefficient kernel (:mod:`.coeffs`).

    Shapes: H (..., n, d) -> alpha (..., n, n+1), beta (..., n), in promote(H, params)."""
    return _coeffs("hc", H, params, _options(norm, use_tanh, use_norm, use_scale), False)


def fc_coeffs(
    H: Array, params: Mapping[str, Array], *, norm: str = "layernorm", use_tanh: bool = True,
    use_norm: bool = True, use_scale: bool = True,
) -> tuple[Array, Array]:
    """:func:`hcref_jax.ops.fc_coeffs` (FC Eqs. 11-14) on the coefficient kernel (:mod:`.coeffs`).

    Shapes: H (..., m, e) -> alpha (..., m, 2m), beta (..., m), in promote(H, params)."""
    return _coeffs("fc", H, params, _options(norm, use_tanh, use_norm, use_scale), False)


# --- width and depth --------------------------------------------------------------------------


def _width(family: str, H: Any, alpha: Any, force: bool) -> tuple[Array, Array]:
    k, w = v.check_width(family, xla.meta("H", H), xla.meta("alpha", alpha))
    if not _use(force, f"{family}_width", H, alpha):
        return getattr(xla, f"{family}_width")(H, alpha)  # type: ignore[no-any-return]
    H, alpha = jnp.asarray(H), jnp.asarray(alpha)
    c, split = _c_split(family, k)
    lead = H.shape[:-2]
    first, rest = mix_rows(MixSpec(k, c, split, rest=True), alpha.reshape(-1, k * c), H.reshape(-1, w))
    return first.reshape(*lead, split * w), rest.reshape(H.shape)


def hc_width(H: Array, alpha: Array) -> tuple[Array, Array]:
    """:func:`hcref_jax.ops.hc_width` on the width kernel (:mod:`.width`): ``h0 = A_m^T H``,
    ``H_res = A_r^T H``. Shapes: H (..., n, d), alpha (..., n, n+1) -> h0 (..., d), H_res (..., n, d),
    in H's dtype."""
    return _width("hc", H, alpha, False)


def fc_width(H: Array, alpha: Array) -> tuple[Array, Array]:
    """:func:`hcref_jax.ops.fc_width` on the width kernel: ``h0 = concat_k (Y^T H)[k]``, ``H_res = A^T H``.
    Shapes: H (..., m, e), alpha (..., m, 2m) -> h0 (..., d = m*e), H_res (..., m, e), in H's dtype."""
    return _width("fc", H, alpha, False)


def _depth(family: str, y: Any, H_res: Any, beta: Any, force: bool) -> Array:
    k, w = v.check_depth(family, xla.meta("y", y), xla.meta("H_res", H_res), xla.meta("beta", beta))
    if not _use(force, f"{family}_depth", y, H_res, beta):
        return getattr(xla, f"{family}_depth")(y, H_res, beta)  # type: ignore[no-any-return]
    y, H_res, beta = jnp.asarray(y), jnp.asarray(H_res), jnp.asarray(beta)
    ry = 1 if family == "hc" else k
    spec = WriteSpec(k, ry, False, 0, 0, dtype_name(_promote(y, H_res)), dtype_name(H_res.dtype))
    out = write_rows(spec, y.reshape(-1, w), H_res.reshape(-1, w), beta.reshape(-1, k))
    return out.reshape(H_res.shape)


def hc_depth(y: Array, H_res: Array, beta: Array) -> Array:
    """:func:`hcref_jax.ops.hc_depth` on the depth kernel (:mod:`.depth`): ``H_out = B^T y^T + H_res``.
    Shapes: y (..., d), H_res (..., n, d), beta (..., n) -> (..., n, d), in promote(y, H_res)."""
    return _depth("hc", y, H_res, beta, False)


def fc_depth(y: Array, H_res: Array, beta: Array) -> Array:
    """:func:`hcref_jax.ops.fc_depth` on the depth kernel: ``H_out[j] = beta[j] y[j*e:(j+1)*e] + H_res[j]``.
    Shapes: y (..., d = m*e), H_res (..., m, e), beta (..., m) -> (..., m, e), in promote(y, H_res)."""
    return _depth("fc", y, H_res, beta, False)


# --- the fused site path ------------------------------------------------------------------------


def _site_width(family: str, H: Any, params: Any, options: dict[str, Any], force: bool) -> tuple[Array, SiteState]:
    dynamic = _check_coeffs(family, H, params, options)
    H = jnp.asarray(H)
    k, w = H.shape[-2:]
    c, split = _c_split(family, k)
    lead = H.shape[:-2]
    if not _use(force, f"{family}_site_width", H, params):
        alpha, beta = getattr(xla, f"{family}_coeffs")(H, params, **options)
        h0 = getattr(xla, f"{family}_width")(H, alpha)[0]
        return h0, SiteState(H, alpha, beta)
    p = {key: jnp.asarray(value) for key, value in params.items()}
    if dynamic:
        spec, *operands = _coeff_inputs(family, H, p, options, site=True)
        ab, first, X = coeff_rows(spec, *operands)
        ab = ab.reshape(*lead, k, c + 1)
        alpha, beta = ab[..., :c], ab[..., c]
    else:
        alpha, beta = getattr(xla, f"{family}_coeffs")(H, p, **options)
        first, X = mix_rows(MixSpec(k, c, split, rest=False), alpha.reshape(-1, k * c), H.reshape(-1, w))
    return first.reshape(*lead, split * w), SiteState(X.reshape(H.shape), alpha, beta)


def _site_depth(family: str, y: Any, state: Any, force: bool) -> Array:
    if not isinstance(state, tuple) or len(state) != 3:
        raise TypeError(
            f"state: expected the SiteState (H, alpha, beta) of {family}_site_width, got {type(state).__name__}"
        )
    H, alpha, beta = state
    k, w = v.check_width(family, xla.meta("H", H), xla.meta("alpha", alpha))
    v.check_depth(family, xla.meta("y", y), xla.meta("H_res", H), xla.meta("beta", beta))
    if not _use(force, f"{family}_site_depth", y, (H, alpha, beta)):
        H_res = getattr(xla, f"{family}_width")(H, alpha)[1]
        return getattr(xla, f"{family}_depth")(y, H_res, beta)  # type: ignore[no-any-return]
    y, H, alpha, beta = (jnp.asarray(a) for a in (y, H, alpha, beta))
    c, split = _c_split(family, k)
    ry = 1 if family == "hc" else k
    spec = WriteSpec(k, ry, True, c, split, dtype_name(_promote(y, H)), dtype_name(H.dtype))
    out = write_fused_rows(spec, y.reshape(-1, w), H.reshape(-1, w), alpha.reshape(-1, k * c), beta.reshape(-1, k))
    return out.reshape(H.shape)


def hc_site_width(
    H: Array, params: Mapping[str, Array], *, norm: str = "layernorm", use_tanh: bool = True,
    use_norm: bool = True, use_scale: bool = True,
) -> tuple[Array, SiteState]:
    """The width half of a fused HC site: ``alpha, beta = hc_coeffs(H, params)`` and
    ``h0 = A_m^T H`` from one read of H (one kernel), without writing ``H_res``.

    ``hc_site_depth(branch(h0), state)`` then equals ``hc_depth(branch(h0), hc_width(H, alpha)[1], beta)``
    (H_res is computed inside the depth kernel and rounded once instead of twice). Arguments and
    errors as :func:`hc_coeffs`. Shapes: H (..., n, d) -> h0 (..., d) in H's dtype, state."""
    return _site_width("hc", H, params, _options(norm, use_tanh, use_norm, use_scale), False)


def hc_site_depth(y: Array, state: SiteState) -> Array:
    """The depth half of a fused HC site: ``H_out = B^T y^T + A_r^T H`` in one pass (reads H, y and the
    coefficients once, writes H_out once). Shapes: y (..., d) -> (..., n, d), in promote(y, H)."""
    return _site_depth("hc", y, state, False)


def fc_site_width(
    H: Array, params: Mapping[str, Array], *, norm: str = "layernorm", use_tanh: bool = True,
    use_norm: bool = True, use_scale: bool = True,
) -> tuple[Array, SiteState]:
    """The width half of a fused FC site (as :func:`hc_site_width`): coefficients and
    ``h0 = concat_k (Y^T H)[k]``. Shapes: H (..., m, e) -> h0 (..., d = m*e), state."""
    return _site_width("fc", H, params, _options(norm, use_tanh, use_norm, use_scale), False)


def fc_site_depth(y: Array, state: SiteState) -> Array:
    """The depth half of a fused FC site: ``H_out[j] = beta[j] y_j + (A^T H)[j]`` in one pass.
    Shapes: y (..., d) -> (..., m, e), in promote(y, H)."""
    return _site_depth("fc", y, state, False)


class Forced(ForcedMhc):
    """The same ops with the kernels forced wherever :func:`supported` holds (whatever the mode):
    what the kernel backend calls. ``Forced.hc_width(H, alpha)``, ``Forced.mhc_post(y, H, h_post, h_res)``
    etc."""

    @staticmethod
    def hc_coeffs(H: Array, params: Mapping[str, Array], *, norm: str = "layernorm", use_tanh: bool = True,
                  use_norm: bool = True, use_scale: bool = True) -> tuple[Array, Array]:
        return _coeffs("hc", H, params, _options(norm, use_tanh, use_norm, use_scale), True)

    @staticmethod
    def fc_coeffs(H: Array, params: Mapping[str, Array], *, norm: str = "layernorm", use_tanh: bool = True,
                  use_norm: bool = True, use_scale: bool = True) -> tuple[Array, Array]:
        return _coeffs("fc", H, params, _options(norm, use_tanh, use_norm, use_scale), True)

    @staticmethod
    def hc_width(H: Array, alpha: Array) -> tuple[Array, Array]:
        return _width("hc", H, alpha, True)

    @staticmethod
    def fc_width(H: Array, alpha: Array) -> tuple[Array, Array]:
        return _width("fc", H, alpha, True)

    @staticmethod
    def hc_depth(y: Array, H_res: Array, beta: Array) -> Array:
        return _depth("hc", y, H_res, beta, True)

    @staticmethod
    def fc_depth(y: Array, H_res: Array, beta: Array) -> Array:
        return _depth("fc", y, H_res, beta, True)

    @staticmethod
    def hc_site_width(H: Array, params: Mapping[str, Array], *, norm: str = "layernorm", use_tanh: bool = True,
                      use_norm: bool = True, use_scale: bool = True) -> tuple[Array, SiteState]:
        return _site_width("hc", H, params, _options(norm, use_tanh, use_norm, use_scale), True)

    @staticmethod
    def fc_site_width(H: Array, params: Mapping[str, Array], *, norm: str = "layernorm", use_tanh: bool = True,
                      use_norm: bool = True, use_scale: bool = True) -> tuple[Array, SiteState]:
        return _site_width("fc", H, params, _options(norm, use_tanh, use_norm, use_scale), True)

    @staticmethod
    def hc_site_depth(y: Array, state: SiteState) -> Array:
        return _site_depth("hc", y, state, True)

    @staticmethod
    def fc_site_depth(y: Array, state: SiteState) -> Array:
        return _site_depth("fc", y, state, True)
