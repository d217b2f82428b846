# mypy: disable-error-code="no-untyped-call,no-any-return"
"""HC, FC and mHC on a device mesh: ``jax.jit`` with ``NamedSharding``, and ``shard_map``.

Named dims: ``...`` token axes (batch, time), ``k`` rows of the state (HC: n streams, FC: m fractions),
``w`` their width (HC: d, FC: e = d/m), ``c`` coefficient columns (HC: n+1, FC: 2m).

Layout (:class:`MeshPlan`). Tokens on the data axis (the first token axis: the batch; the time axis for
sequence parallelism), the width on the model axis::

    H (..., k, w)            P(data, ..., None, model)      HC: the n-fold state costs n d / |model| per token
    W_alpha (w, c)           P(model, None)
    W_beta, norm_weight, norm_bias (w,)   P(model)
    everything else          P()                            (A_m, A_r, B / Y, A, B, s_alpha, s_beta)

Tokens sharded: every coefficient, mixing and write acts on one token at a time (math.md 1), so under
``jax.jit`` the plain ops and NNX modules partition with no collective but the parameter-gradient
all-reduce over the data axis.

Width sharded, automatic partitioning (``AxisType.Auto`` meshes): the plain ops and modules partition
with all-reduces of per-token statistics only (layernorm forward: mean, variance, projection, each
``k`` or ``k (c+1)`` floats per token, one after the other; backward: ``g_alpha | g_beta`` and the norm's
two row means); H is never gathered, provided the sublayer takes ``h0`` replicated over the model axis
(Megatron-style: the sublayer all-gathers ``h0``, d per token, and its row-parallel output is
reduce-scattered into the width shards). Two limits, both lifted by the ``shard_map`` versions here:

- FC's ``h0 (..., d)`` concatenates the m fractions, so a contiguous d-sharding does not match the
  e-sharded state: a consumer that keeps ``h0`` sharded over d makes XLA all-gather the whole state
  ``(..., m, e)`` (checked in tests/test_jax_sharding.py). :meth:`MeshPlan.width` hands ``h0`` over
  gathered instead (the gather any sublayer needs) and :meth:`MeshPlan.depth` takes ``y`` in any layout.
- Explicit-axis meshes (``AxisType.Explicit``, the default of ``jax.make_mesh`` in recent JAX): a
  contraction over a sharded axis has no automatic result sharding, and the plain ops raise
  ``ShardingTypeError`` at the projection ``H_bar W``.

``shard_map`` versions (methods of :class:`MeshPlan`: ``hc_coeffs`` ... ``fc_depth`` with the contract's
signatures, and ``width`` / ``depth`` / ``site`` for the modules). The coefficient step computes the
scale-safe norm (D12) with explicit collectives over the model axis; autodiff derives the backward::

    forward   pmax   row max|H|                           k per token (no backward: s is piecewise constant)
              psum   row sum of H/s                       k           (layernorm only)
              psum   [(H_c nw) W | sum H_c^2], nb W       k (c+2) per token + (c+1)   (one all-reduce)
    backward  psum   cotangents of alpha and beta         k (c+1)     (where the replicated coefficients
                                                                       meet the local columns; XLA
                                                                       combines the two into one)
              psum   cotangent of the row mean            k           (layernorm only)

(XLA's all-reduce combiner also folds independent ones together, e.g. the mean with ``nb W``.) The
mixing and the write run on the local columns (no collective). ``h0`` is all-gathered for the sublayer
(d per token). HC takes ``y`` sharded like one stream (a slice of a replicated ``y``, or XLA's
reduce-scatter of a partial one), so its cotangent is all-gathered (d per token); FC takes ``y``
replicated and slices its fraction columns, so its cotangent is an all-reduce (d per token, twice the
bytes). The network's ends: :meth:`MeshPlan.expand` / :meth:`MeshPlan.frac_split` enter the layout at
the cost of x (never of the n copies), :meth:`MeshPlan.reduce` stays sharded, :meth:`MeshPlan.frac_merge`
gathers the state (d per token).

mHC (``ManifoldHyperConnections``, ``MHCHead``; methods ``mhc_coeffs``, ``mhc_pre``, ``mhc_post``,
``mhc_head`` and ``width`` / ``depth`` / ``site`` / ``head`` for the modules). Tokens sharded: the plain
modules partition by themselves. Width sharded: the plain ops flatten H to ``vec(H) (..., n*d)``, an axis
whose minor part is sharded, which no ``NamedSharding`` expresses, so automatic partitioning all-gathers
the whole state; the ``shard_map`` versions do not. ``phi (n*d, k)`` stays replicated (its rows interleave
the width shards: row ``i*d + c`` reads stream i, column c) and each shard reads ``phi.reshape(n, d, k)``'s
slice for its columns; ``b``, ``gates``, ``gate`` are replicated. With ``k = 2n + n^2``, per token and
site::

    forward   pmax   max|vec(H)|                         1         scale-safe RMS (D12); no backward
              psum   [vec(H) phi | sum (vec(H)/s)^2]     k + 1     one all-reduce; then gates and bias
              (the sigmoids and Sinkhorn act on the replicated logits outside the shard_map)
    backward  psum   cotangent of h_pre                  n         at mhc_pre
              psum   cotangents of h_post, h_res         n + n^2   at mhc_post (XLA's combiner may merge them)

plus h0's all-gather (d) and y's cotangent (d), as HC. ``MHCHead``: pmax 1 and psum n + 1 forward, psum n
backward; x (..., d) comes out sharded like one stream. Once per step, phi's gradient (n d k floats) is
all-gathered over the model axis (phi is replicated).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from hcref import validation as v
from hcref.connections import MHCState
from hcref.mhc import RMS_EPS
from hcref.norms import LAYERNORM_EPS, RMSNORM_EPS
from hcref.sinkhorn_knopp import ITERS

from . import mhc, ops
from .mhc_modules import PlannedModule
from .modules import FracConnections, HyperConnections, SiteState

Array = jax.Array
P = PartitionSpec

WIDTH_KEYS = ("W_alpha", "W_beta", "norm_weight", "norm_bias")
"""Parameters whose first axis is the width ``w`` (sharded over the model axis); all others are replicated."""


def _row_scale(amax: Array) -> Array:
    """``s = 2^floor(log2(max(amax, 1)))`` of a row max-abs (``hcref.norms.row_scale``)."""
    _, exponent = jnp.frexp(amax)
    return jnp.ldexp(jnp.ones_like(amax), jnp.maximum(exponent - 1, 0))


def _sharded_coeffs_local(
    H: Array,
    static_alpha: Array,
    static_beta: Array,
    params: Mapping[str, Array],
    *,
    axis: str | None,
    w: int,
    norm: str,
    use_tanh: bool,
    use_scale: bool,
) -> tuple[Array, Array]:
    """``hcref._core.coeffs`` on the local columns ``H (..., k, w_local)`` and local parameter rows, with the
    reductions over the width completed by collectives over ``axis`` (None: nothing is sharded).

    ``norm`` is ``layernorm``, ``rmsnorm`` or ``none`` (``use_norm`` off). Scale-safe norm (D12): the row is
    divided by ``s = row_scale(max|H|)`` (a power of two; the max over every shard) and ``eps`` by ``s^2``.
    """

    def psum(x: Any) -> Any:
        return jax.lax.psum(x, axis) if axis is not None else x

    out_dtype = jnp.result_type(H.dtype, *(p.dtype for p in params.values()))
    ct = ops.compute_dtype(out_dtype)
    x = H.astype(ct)
    W = jnp.concatenate([params["W_alpha"].astype(ct), params["W_beta"].astype(ct)[:, None]], axis=-1)
    hi = jax.lax.Precision.HIGHEST
    if norm == "none":
        u = psum(jnp.matmul(x, W, precision=hi))
    else:
        amax = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=-1, keepdims=True))
        s = _row_scale(jax.lax.pmax(amax, axis) if axis is not None else amax)
        xc = x / s
        if norm == "layernorm":
            xc = xc - psum(jnp.sum(xc, axis=-1, keepdims=True)) / w
        nw = params["norm_weight"].astype(ct)
        tokens = jnp.concatenate(
            [jnp.matmul(xc * nw, W, precision=hi), jnp.sum(xc * xc, axis=-1, keepdims=True)], axis=-1
        )
        bias = (
            jnp.matmul(params["norm_bias"].astype(ct), W, precision=hi)
            if norm == "layernorm"
            else jnp.zeros(W.shape[-1], ct)
        )
        tokens, bias = psum((tokens, bias))
        eps = LAYERNORM_EPS if norm == "layernorm" else RMSNORM_EPS
        a = tokens[..., -1:] / w + eps / s / s
        # hcref.norms floors at the smallest subnormal, but XLA flushes subnormals to zero (CPU, and GPUs with
        # FTZ), which would give rsqrt(0) = inf; in float32/64 the smallest normal changes no value but a
        # zero variance whose eps / s^2 underflowed (a constant row beyond 1e16), where x_hat = 0 either way.
        r = jax.lax.rsqrt(jnp.maximum(a, jnp.finfo(ct).tiny))
        u = r * tokens[..., :-1] + bias
    if use_tanh:
        u = jnp.tanh(u)
    c = static_alpha.shape[-1]
    u_alpha, u_beta = u[..., :c], u[..., c]
    if use_scale:
        u_alpha = params["s_alpha"].astype(ct) * u_alpha
        u_beta = params["s_beta"].astype(ct) * u_beta
    alpha = u_alpha + static_alpha.astype(ct)
    beta = u_beta + static_beta.astype(ct)
    return alpha.astype(out_dtype), beta.astype(out_dtype)


# --- mHC: the flattened n*d vector with d sharded ------------------------------------------------------


def _mhc_project_local(H: Array, phi: Array, *, axis: str | None, d: int) -> Array:
    """``z = rms(vec(H)) phi`` (``hcref_jax.mhc``'s folded, scale-safe form, D12) from the local columns
    ``H (..., n, d_local)`` and the matching rows ``phi (n, d_local, k)``, with the reductions over the
    flattened ``n*d`` vector completed over ``axis``::

        s     = row_scale(pmax(max|v_local|))                     1 float per token, no backward
        [P|Q] = psum([v_local phi_local | sum (v_local / s)^2])    k + 1 floats per token (one all-reduce)
        z     = P / s * (Q / (n d) + 1e-6 / s / s)^(-1/2)          identical on every shard
    """
    n, w = H.shape[-2], H.shape[-1]
    vec = H.reshape(*H.shape[:-2], n * w)
    amax = jax.lax.stop_gradient(jnp.max(jnp.abs(vec), axis=-1, keepdims=True))
    s = _row_scale(jax.lax.pmax(amax, axis) if axis is not None else amax)
    xs = vec / s
    hi = jax.lax.Precision.HIGHEST
    parts = jnp.concatenate(
        [jnp.matmul(vec, phi.reshape(n * w, -1), precision=hi), jnp.sum(xs * xs, axis=-1, keepdims=True)], axis=-1
    )
    total = jax.lax.psum(parts, axis) if axis is not None else parts
    r = jax.lax.rsqrt(total[..., -1:] / (n * d) + RMS_EPS / s / s)
    return total[..., :-1] / s * r


def _mhc_logits_local(H: Array, phi: Array, b: Array, gates: Array, *, axis: str | None, d: int) -> Array:
    """The logits ``[gates[0] z_pre + b_pre | gates[1] z_post + b_post | gates[2] z_res + b_res]`` (..., 2n+n^2)
    of ``hcref_jax.mhc.mhc_coeffs`` (dynamic) from the local columns, in the compute dtype (D12); identical on
    every shard of ``axis``. The sigmoids and Sinkhorn are applied to them outside the shard_map."""
    n = H.shape[-2]
    ct = ops.compute_dtype(jnp.result_type(H.dtype, phi.dtype, b.dtype, gates.dtype))
    z = _mhc_project_local(H.astype(ct), phi.astype(ct), axis=axis, d=d)
    per_column = jnp.repeat(gates.astype(ct), jnp.array([n, n, n * n]), total_repeat_length=2 * n + n * n)
    return z * per_column + b.astype(ct)


def _mhc_head_local(H: Array, phi: Array, b: Array, gate: Array, *, axis: str | None, d: int, eps: float) -> Array:
    """``hcref_jax.mhc.mhc_head`` on the local columns: x (..., d_local) sharded like one stream."""
    ct = ops.compute_dtype(jnp.result_type(H.dtype, phi.dtype, b.dtype, gate.dtype))
    Hc = H.astype(ct)
    z = _mhc_project_local(Hc, phi.astype(ct), axis=axis, d=d)
    w = jax.nn.sigmoid(z * gate.astype(ct) + b.astype(ct)) + eps
    if axis is not None:  # the invariant weights meet the local columns: their cotangent is psum'd
        w = jax.lax.pcast(w, axis, to="varying")
    x = jnp.einsum("...i,...ic->...c", w, Hc, precision=jax.lax.Precision.HIGHEST)
    return x.astype(H.dtype)


@dataclass(frozen=True)
class MeshPlan:
    """Where the tokens and the width of the HC/FC state live on ``mesh``, and the site ops for that layout.

    ``data``: the mesh axis (or axes) of the token axis ``token_axis`` of H (None: tokens replicated);
    ``model``: the mesh axis of the width (None: width replicated). Example (2 x 4 host mesh)::

        mesh = jax.make_mesh((2, 4), ("data", "model"))
        plan = MeshPlan(mesh, data="data", model="model")
        plan.shard_module(model)                       # the connection parameters, as in the table above
        H = jax.device_put(H, plan.state_sharding(H.ndim))
        h0, state = plan.width(hc, H)                  # h0 (..., d) replicated over "model"
        H = plan.depth(hc, sublayer(h0), state)        # (..., n, d) sharded like H
    """

    mesh: Mesh
    data: str | tuple[str, ...] | None = "data"
    model: str | None = "model"
    token_axis: int = 0

    # --- layouts ----------------------------------------------------------------------------------

    def _lead(self, n_lead: int) -> list[Any]:
        lead: list[Any] = [None] * n_lead
        if n_lead:
            lead[self.token_axis] = self.data
        return lead

    def state_spec(self, ndim: int) -> PartitionSpec:
        """``H (..., k, w)`` of ``ndim`` axes: tokens on ``data``, the width on ``model``."""
        return P(*self._lead(ndim - 2), None, self.model)

    def coeff_spec(self, ndim: int) -> PartitionSpec:
        """A per-token array with ``ndim - n_lead`` trailing coefficient axes replicated, e.g. alpha (..., k, c)
        of ``ndim`` axes: ``coeff_spec(ndim)``; beta (..., k): ``coeff_spec(ndim)`` as well (one trailing)."""
        return P(*self._lead(ndim - 1), None)

    def _spec(self, ndim: int, trailing: int) -> PartitionSpec:
        return P(*self._lead(ndim - trailing), *([None] * trailing))

    def state_sharding(self, ndim: int) -> NamedSharding:
        return NamedSharding(self.mesh, self.state_spec(ndim))

    def _constrain(self, x: Array, spec: PartitionSpec) -> Array:
        sharding = NamedSharding(self.mesh, spec)
        if any(t == AxisType.Explicit for t in self.mesh.axis_types):
            return jax.sharding.reshard(x, sharding)
        return jax.lax.with_sharding_constraint(x, sharding)

    def gather_width(self, H: Array) -> Array:
        """``H (..., k, w)`` replicated over the model axis (an all-gather of the width)."""
        return self._constrain(H, P(*self._lead(H.ndim - 2), None, None))

    # --- the network's ends: into and out of the width-sharded layout, at the cost of x, not of H ------

    def expand(self, x: Array, n: int) -> Array:
        """:func:`hcref_jax.expand` into the state layout: x (..., d) is sharded over d first (a slice), so the
        n copies are never communicated and the cotangent of x is reduced over the streams locally."""
        x = self._constrain(x, P(*self._lead(x.ndim - 1), self.model))
        return ops.expand(x, n)

    def reduce(self, H: Array) -> Array:
        """:func:`hcref_jax.reduce` on the local columns: x (..., d) stays sharded over d like one stream."""
        return ops.reduce(self._constrain(H, self.state_spec(H.ndim)))

    def frac_split(self, x: Array, m: int) -> Array:
        """:func:`hcref_jax.frac_split` into the state layout (..., m, e) sharded over e."""
        return self._constrain(ops.frac_split(x, m), self.state_spec(x.ndim + 1))

    def frac_merge(self, H: Array) -> Array:
        """:func:`hcref_jax.frac_merge` after gathering the width (the merge interleaves the e shards):
        x (..., d) replicated over the model axis."""
        return ops.frac_merge(self.gather_width(H))

    def param_specs(self, params: Mapping[str, Any]) -> dict[str, PartitionSpec]:
        """The spec of each contract key: width-indexed keys on ``model`` (axis 0), the rest replicated."""
        return {
            key: P(self.model, *([None] * (jnp.ndim(value) - 1))) if key in WIDTH_KEYS else P()
            for key, value in params.items()
        }

    def shard_params(self, params: Mapping[str, Any]) -> dict[str, Array]:
        """``jax.device_put`` of a contract mapping with :meth:`param_specs`."""
        specs = self.param_specs(params)
        return {key: jax.device_put(value, NamedSharding(self.mesh, specs[key])) for key, value in params.items()}

    def shard_module(self, module: nnx.Module) -> None:
        """Place the parameters of every ``HyperConnections`` / ``FracConnections`` / ``ManifoldHyperConnections``
        / ``MHCHead`` inside ``module`` (in place). mHC's parameters are all replicated: ``phi``'s rows
        interleave the width shards (row ``i*d + c`` reads stream i, column c), which a ``NamedSharding`` of
        the flat ``(n*d, k)`` array cannot express; each shard reads its rows of the replicated array."""
        for _, node in nnx.iter_graph(module):
            if isinstance(node, (HyperConnections, FracConnections, PlannedModule)):
                for key, value in self.shard_params(node.params()).items():
                    getattr(node, key).set_value(value)

    # --- shard_map'ed ops (the contract's signatures) ---------------------------------------------

    def _reshard(self, x: Array, spec: PartitionSpec) -> Array:
        """On an explicit-axis mesh, move ``x`` to ``spec`` (shard_map requires its inputs there); on an
        automatic mesh, shard_map's own input resharding does it."""
        if any(t == AxisType.Explicit for t in self.mesh.axis_types):
            return jax.sharding.reshard(x, NamedSharding(self.mesh, spec))
        return x

    def _smap(self, f: Callable[..., Any], in_specs: Any, out_specs: Any) -> Callable[..., Any]:
        return jax.shard_map(f, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs)

    def _coeffs(
        self, family: str, H: Array, params: Mapping[str, Array], options: dict[str, Any]
    ) -> tuple[Array, Array]:
        metas = (
            {key: ops.meta(f"params[{key!r}]", value) for key, value in params.items()}
            if isinstance(params, Mapping)
            else {}
        )
        checked = (
            options.get(k, d)
            for k, d in (("norm", "layernorm"), ("use_tanh", True), ("use_norm", True), ("use_scale", True))
        )
        norm_opt, use_tanh, use_norm, use_scale = checked
        _, w, dynamic = v.check_coeffs(family, ops.meta("H", H), params, metas, norm_opt, use_tanh, use_norm, use_scale)
        params = {key: jnp.asarray(value) for key, value in params.items()}
        if family == "hc":
            static_alpha = jnp.concatenate([params["A_m"][:, None], params["A_r"]], axis=-1)
        else:
            static_alpha = jnp.concatenate([params["Y"], params["A"]], axis=-1)
        static_beta = params["B"]
        if not dynamic:  # no reduction over the width: the plain op partitions by itself
            return (ops.hc_coeffs if family == "hc" else ops.fc_coeffs)(H, params, **options)
        norm = norm_opt if use_norm else "none"
        local = partial(_sharded_coeffs_local, axis=self.model, w=w, norm=norm, use_tanh=use_tanh, use_scale=use_scale)
        used = {key: params[key] for key in params if key not in ("A_m", "A_r", "Y", "A", "B")}
        f = self._smap(
            lambda H, sa, sb, p: local(H, sa, sb, p),
            (self.state_spec(H.ndim), P(), P(), self.param_specs(used)),
            (self._spec(H.ndim, 2), self._spec(H.ndim - 1, 1)),
        )
        H = self._reshard(jnp.asarray(H), self.state_spec(H.ndim))
        specs = self.param_specs(used)
        used = {key: self._reshard(value, specs[key]) for key, value in used.items()}
        alpha, beta = f(H, static_alpha, static_beta, used)
        return alpha, beta

    def hc_coeffs(self, H: Array, params: Mapping[str, Array], **options: Any) -> tuple[Array, Array]:
        """:func:`hcref_jax.hc_coeffs` with H sharded as :meth:`state_spec` (collectives in the module docstring)."""
        return self._coeffs("hc", H, params, options)

    def fc_coeffs(self, H: Array, params: Mapping[str, Array], **options: Any) -> tuple[Array, Array]:
        """:func:`hcref_jax.fc_coeffs` with H sharded as :meth:`state_spec`."""
        return self._coeffs("fc", H, params, options)

    def _width(self, family: str, H: Array, alpha: Array) -> tuple[Array, Array]:
        v.check_width(family, ops.meta("H", H), ops.meta("alpha", alpha))
        op = ops.hc_width if family == "hc" else ops.fc_width
        axis = self.model
        k = H.shape[-2]

        def local(H: Array, alpha: Array) -> tuple[Array, Array]:
            if axis is not None:  # the replicated alpha meets the local columns; its cotangent is psum'd
                alpha = jax.lax.pcast(alpha, axis, to="varying")
            first, H_res = op(H, alpha)
            if family == "fc":  # local h0 interleaves the fractions' local columns: gather as (..., m, e)
                first = first.reshape(*first.shape[:-1], k, -1)
            if axis is not None:
                first = jax.lax.all_gather(first, axis, axis=first.ndim - 1, tiled=True, to="invarying")
            if family == "fc":
                first = first.reshape(*first.shape[:-2], -1)
            return first, H_res

        f = self._smap(
            local,
            (self.state_spec(H.ndim), self._spec(alpha.ndim, 2)),
            (self._spec(H.ndim - 1, 1), self.state_spec(H.ndim)),
        )
        H = self._reshard(H, self.state_spec(H.ndim))
        return f(H, self._reshard(alpha, self._spec(alpha.ndim, 2)))

    def hc_width(self, H: Array, alpha: Array) -> tuple[Array, Array]:
        """:func:`hcref_jax.hc_width` on the local columns; h0 (..., d) is returned replicated over ``model``."""
        return self._width("hc", H, alpha)

    def fc_width(self, H: Array, alpha: Array) -> tuple[Array, Array]:
        """:func:`hcref_jax.fc_width` on the local columns; h0 (..., d) is returned replicated over ``model``."""
        return self._width("fc", H, alpha)

    def _depth(self, family: str, y: Array, H_res: Array, beta: Array) -> Array:
        v.check_depth(family, ops.meta("y", y), ops.meta("H_res", H_res), ops.meta("beta", beta))
        op = ops.hc_depth if family == "hc" else ops.fc_depth
        axis = self.model

        def local(y: Array, H_res: Array, beta: Array) -> Array:
            if axis is not None:
                if family == "fc":  # y is replicated over the model axis: keep the columns of this shard
                    width = H_res.shape[-1]
                    y = y.reshape(*H_res.shape[:-1], -1)
                    y = jax.lax.dynamic_slice_in_dim(y, jax.lax.axis_index(axis) * width, width, axis=y.ndim - 1)
                    y = y.reshape(*y.shape[:-2], -1)
                beta = jax.lax.pcast(beta, axis, to="varying")
            return op(y, H_res, beta)

        # HC: y arrives sharded like one stream (a reduce-scatter of the sublayer's partial sums, or a slice);
        # FC: its d-layout interleaves the fraction shards, so it is taken replicated and sliced here.
        y_spec = self._spec(y.ndim, 1) if family == "fc" else self.state_spec(y.ndim + 1)[:-2] + (self.model,)
        f = self._smap(
            local,
            (P(*y_spec), self.state_spec(H_res.ndim), self._spec(beta.ndim, 1)),
            self.state_spec(H_res.ndim),
        )
        y = self._reshard(y, P(*y_spec))
        H_res = self._reshard(H_res, self.state_spec(H_res.ndim))
        return f(y, H_res, self._reshard(beta, self._spec(beta.ndim, 1)))

    def hc_depth(self, y: Array, H_res: Array, beta: Array) -> Array:
        """:func:`hcref_jax.hc_depth` on the local columns; ``y (..., d)`` in any layout (taken replicated)."""
        return self._depth("hc", y, H_res, beta)

    def fc_depth(self, y: Array, H_res: Array, beta: Array) -> Array:
        """:func:`hcref_jax.fc_depth` on the local columns; ``y (..., d)`` in any layout (taken replicated)."""
        return self._depth("fc", y, H_res, beta)

    # --- mHC (shard_map; the contract's signatures) -------------------------------------------------

    def _stream_spec(self, ndim: int) -> PartitionSpec:
        """One stream ``(..., d)`` laid out like a row of the state: tokens on ``data``, d on ``model``."""
        return P(*self._lead(ndim - 1), self.model)

    def _phi_rows(self, phi: Any, n: int, d: int) -> Array:
        """``phi (n*d, k)`` viewed as ``(n, d, k)``, the width on ``model``: each shard's rows for its columns
        of every stream (a slice of the replicated array; its gradient is gathered once per step)."""
        return self._reshard(jnp.asarray(phi).reshape(n, d, -1), P(None, self.model, None))

    def mhc_coeffs(
        self, H: Array, params: Mapping[str, Array], *, iters: int = ITERS, eps: float = 0.0
    ) -> tuple[Array, Array, Array]:
        """:func:`hcref_jax.mhc.mhc_coeffs` with H sharded as :meth:`state_spec`: h_pre (..., n), h_post (..., n),
        h_res (..., n, n) replicated over ``model`` (collectives in the module docstring). The logits come from
        a shard_map (the reductions over the flattened n*d vector); the sigmoids and Sinkhorn, a few dozen
        numbers per token, act on them outside it, partitioned over the tokens like the logits."""
        metas = (
            {key: ops.meta(f"params[{key!r}]", value) for key, value in params.items()}
            if isinstance(params, Mapping)
            else {}
        )
        n, d, dynamic = v.check_mhc_coeffs(ops.meta("H", H), params, metas, iters, eps)
        if not dynamic or self.model is None:  # no reduction over a sharded width: the plain op partitions
            return mhc.mhc_coeffs(H, params, iters=iters, eps=eps)
        p = {key: jnp.asarray(value) for key, value in params.items()}
        out = jnp.result_type(H.dtype, *(value.dtype for value in p.values()))
        local = partial(_mhc_logits_local, axis=self.model, d=d)
        phi_spec = P(None, self.model, None)
        f = self._smap(local, (self.state_spec(H.ndim), phi_spec, P(), P()), self._spec(H.ndim - 1, 1))
        H = self._reshard(jnp.asarray(H), self.state_spec(H.ndim))
        logits = f(H, self._phi_rows(p["phi"], n, d), self._reshard(p["b"], P()), self._reshard(p["gates"], P()))
        pre, post, res = logits[..., :n], logits[..., n : 2 * n], logits[..., 2 * n :]
        h_res = mhc.sinkhorn(res.reshape(*res.shape[:-1], n, n), iters=iters, eps=eps)
        return (jax.nn.sigmoid(pre) + eps).astype(out), (2 * jax.nn.sigmoid(post)).astype(out), h_res.astype(out)

    def mhc_pre(self, H: Array, h_pre: Array) -> Array:
        """:func:`hcref_jax.mhc.mhc_pre` on the local columns; h0 (..., d) is returned replicated over ``model``."""
        v.check_mhc_pre(ops.meta("H", H), ops.meta("h_pre", h_pre))
        axis = self.model
        if axis is None:
            return mhc.mhc_pre(H, h_pre)

        def local(H: Array, h_pre: Array) -> Array:
            h_pre = jax.lax.pcast(h_pre, axis, to="varying")  # meets the local columns: cotangent psum'd
            h0 = mhc.mhc_pre(H, h_pre)
            return jax.lax.all_gather(h0, axis, axis=h0.ndim - 1, tiled=True, to="invarying")

        spec = self._spec(h_pre.ndim, 1)
        f = self._smap(local, (self.state_spec(H.ndim), spec), self._spec(H.ndim - 1, 1))
        return f(self._reshard(H, self.state_spec(H.ndim)), self._reshard(h_pre, spec))

    def mhc_post(self, y: Array, H: Array, h_post: Array, h_res: Array) -> Array:
        """:func:`hcref_jax.mhc.mhc_post` on the local columns; ``y (..., d)`` is taken sharded like one stream
        (a slice of a replicated ``y``, or XLA's reduce-scatter of a partial one)."""
        v.check_mhc_post(ops.meta("y", y), ops.meta("H", H), ops.meta("h_post", h_post), ops.meta("h_res", h_res))
        axis = self.model
        if axis is None:
            return mhc.mhc_post(y, H, h_post, h_res)

        def local(y: Array, H: Array, h_post: Array, h_res: Array) -> Array:
            h_post = jax.lax.pcast(h_post, axis, to="varying")
            h_res = jax.lax.pcast(h_res, axis, to="varying")
            return mhc.mhc_post(y, H, h_post, h_res)

        specs = (
            self._stream_spec(y.ndim),
            self.state_spec(H.ndim),
            self._spec(h_post.ndim, 1),
            self._spec(h_res.ndim, 2),
        )
        f = self._smap(local, specs, self.state_spec(H.ndim))
        return f(*(self._reshard(a, spec) for a, spec in zip((y, H, h_post, h_res), specs)))

    def mhc_head(self, H: Array, params: Mapping[str, Array], *, eps: float = 0.0) -> Array:
        """:func:`hcref_jax.mhc.mhc_head` on the local columns: x (..., d) sharded over ``model`` like one
        stream (collectives in the module docstring)."""
        metas = (
            {key: ops.meta(f"params[{key!r}]", value) for key, value in params.items()}
            if isinstance(params, Mapping)
            else {}
        )
        n, d = v.check_mhc_head(ops.meta("H", H), params, metas, eps)
        if self.model is None:
            return mhc.mhc_head(H, params, eps=eps)
        p = {key: jnp.asarray(value) for key, value in params.items()}
        local = partial(_mhc_head_local, axis=self.model, d=d, eps=float(eps))
        specs = (self.state_spec(H.ndim), P(None, self.model, None), P(), P())
        f = self._smap(local, specs, self._stream_spec(H.ndim - 1))
        H = self._reshard(jnp.asarray(H), self.state_spec(H.ndim))
        return f(H, self._phi_rows(p["phi"], n, d), self._reshard(p["b"], P()), self._reshard(p["gate"], P()))

    # --- the NNX modules ------------------------------------------------------------------------

    def width(self, module: Any, H: Array) -> tuple[Array, Any]:
        """``module.width(H)`` with H sharded as :meth:`state_spec`: h0 (..., d) replicated over ``model``
        (``HyperConnections`` / ``FracConnections``: ``SiteState``; ``ManifoldHyperConnections``: ``MHCState``)."""
        plan: Any = getattr(module, "plan", None)
        if getattr(plan, "family", None) == "mhc":
            plan.check_state(ops.meta("H", H))
            H = self._reshard(H, self.state_spec(H.ndim))
            h_pre, h_post, h_res = self.mhc_coeffs(H, module.params(), **plan.kwargs)
            return self.mhc_pre(H, h_pre), MHCState(H, h_post, h_res)
        options = {
            "norm": module.norm,
            "use_tanh": module.use_tanh,
            "use_norm": module.use_norm,
            "use_scale": module.use_scale,
        }
        family = module.family
        H = self._reshard(H, self.state_spec(H.ndim))  # once: coefficients and mixing read the same shards
        alpha, beta = self._coeffs(family, H, module.params(), options)
        h0, H_res = self._width(family, H, alpha)
        return h0, SiteState(H_res, beta)

    def depth(self, module: Any, y: Array, state: Any) -> Array:
        """``module.depth(y, state)`` on the local columns."""
        if isinstance(state, MHCState):
            module.plan.check_branch_output(ops.meta("y", y), tuple(state.H.shape[:-2]))
            return self.mhc_post(y, state.H, state.h_post, state.h_res)
        return self._depth(module.family, y, state.H_res, state.beta)

    def head(self, module: Any, H: Array) -> Array:
        """``MHCHead``'s ``module(H)`` on the local columns: x (..., d) sharded over ``model`` like one stream."""
        module.plan.check_state(ops.meta("H", H))
        return self.mhc_head(H, module.params(), **module.plan.kwargs)

    def site(
        self,
        module: Any,
        H: Array,
        branch: Callable[..., Array],
        *args: Any,
        **kwargs: Any,
    ) -> Array:
        """One whole site: ``depth(branch(h0, *args, **kwargs), state)`` with ``h0, state = width(H)``."""
        h0, state = self.width(module, H)
        return self.depth(module, branch(h0, *args, **kwargs), state)


__all__ = ["WIDTH_KEYS", "MeshPlan"]
