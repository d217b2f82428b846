"""hcref_jax.pallas' mHC kernels (``mhc_coeffs``, ``mhc_pre``, ``mhc_post``) in TPU interpret mode
against the NumPy reference and its hand-derived VJPs (hcref/mhc.py, hcref/sinkhorn_knopp.py).

Forward values and every cotangent (float64 reference on the inputs rounded to the dtype under test),
float32, bfloat16 and mixed precision (bfloat16 state, float32 parameters); n = 1, 3, 4, 8; d not a
multiple of 128; one token without leading axes; several token blocks with a partial last one,
two partial sums in the backward and several lane blocks (``blocks.limits``); iters 1, 3 and 20;
eps 0 (the paper, log domain) and 1e-6 (DeepSeek-V4); extreme logits (a row 1e4 below, D7) and
huge or tiny states (D12, scale-safe RMS); the suite's own tolerance tables on its bfloat16 and
float32 cases; jit, vmap (tokens folded, per-example parameters, vmap of grad) and grad through the
NNX mHC site on the kernels; dispatch and fallbacks; the reference's errors word for word; the Pallas-to-Mosaic
lowering of every mHC kernel for a TPU (``jax.export``, no TPU needed).
No TPU ran any of this: interpret mode checks the kernels' arithmetic, block indexing, grid order and
dimension semantics, not Mosaic's compiler passes, VMEM capacity or speed.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax.nnx")

import jax.numpy as jnp
import mhc_cases as mc
from flax import nnx
from hcref_jax import mhc as xla_mhc
from hcref_jax import pallas as hp
from hcref_jax.mhc_modules import ManifoldHyperConnections
from hcref_jax.pallas import Forced, blocks
from hcref_jax.pallas import mode as pallas_mode

import hcref
from hcref.checks import random_inputs

TOL = {"float32": 2e-5, "bfloat16": 1.2e-2}
"""Error bound relative to max(1, max|reference|): float32 results within a few hundred ulps (20
Sinkhorn iterations forward and back, sums over n*d), bfloat16 results rounded once to 8 bits (2^-9)
and their parameter gradients summed over tokens."""

KERNEL_OPS = ("mhc_coeffs", "mhc_pre", "mhc_post")


def _f64(x: Any) -> np.ndarray:
    return np.asarray(jnp.asarray(x, jnp.float32), dtype=np.float64)


def _close(got: Any, ref: np.ndarray, tol: float, what: str) -> float:
    got64 = _f64(got)
    assert np.all(np.isfinite(got64)), what
    err = float(np.abs(got64 - ref).max(initial=0.0) / max(1.0, np.abs(ref).max(initial=0.0)))
    assert err <= tol, (what, err)
    return err


class Case(NamedTuple):
    n: int
    d: int
    lead: tuple[int, ...]
    iters: int
    eps: float
    state: str
    """dtype of H and y"""
    param: str
    """dtype of phi, b, gates and of h_pre, h_post, h_res fed to mhc_pre / mhc_post"""
    limits: tuple[int, int]
    far_row: bool = False
    """the first row of h_res's logits 1e4 below the others (D7: plain exp would give 0/0)"""


BIG = (blocks.MAX_TOKENS, blocks.MAX_LANES)
SMALL = (16, 128)
CASES = {
    "n1-one-token": Case(1, 5, (), 20, 0.0, "float32", "float32", BIG),
    "n3-iters1-v4": Case(3, 130, (5,), 1, 1e-6, "float32", "float32", BIG),
    "n4-blocks-parts-lanes": Case(4, 256, (50,), 20, 0.0, "float32", "float32", SMALL),
    "n8-v4": Case(8, 12, (2, 3), 20, 1e-6, "float32", "float32", BIG),
    "n4-bf16-blocks-v4": Case(4, 40, (40,), 20, 1e-6, "bfloat16", "bfloat16", SMALL),
    "n3-bf16-iters1-far-row": Case(3, 9, (6,), 1, 0.0, "bfloat16", "bfloat16", BIG, far_row=True),
    "n4-mixed": Case(4, 24, (6,), 3, 1e-6, "bfloat16", "float32", BIG),
}
"""n4-mixed (bfloat16 state, float32 parameters): the D12 dtype of every result and gradient is
asserted (what tests/mhc_cases.py's check_mixed checks, here on the kernels)."""


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_kernels_match_the_reference(case: Case) -> None:
    """mhc_coeffs, mhc_pre, mhc_post: forward and the VJP of every input, result dtypes (D12), one
    kernel per op and direction (6 ``pallas_call``s)."""
    n, d, K = case.n, case.d, 2 * case.n + case.n * case.n
    rng = np.random.default_rng(list(CASES.values()).index(case))
    st, pt = jnp.dtype(case.state), jnp.dtype(case.param)
    options = {"iters": case.iters, "eps": case.eps}

    def rounded(x: np.ndarray, dt: Any) -> tuple[Any, np.ndarray]:
        j = jnp.asarray(x, dt)
        return j, _f64(j)

    H, H64 = rounded(2.0 * rng.normal(size=(*case.lead, n, d)), st)
    b = rng.normal(size=K)
    if case.far_row:
        b[2 * n : 3 * n] -= 1e4
    raw = {"phi": rng.normal(size=(n * d, K)) / np.sqrt(n * d), "b": b, "gates": rng.normal(size=3)}
    p = {key: jnp.asarray(value, pt) for key, value in raw.items()}
    p64 = {key: _f64(value) for key, value in p.items()}
    h_pre, h_pre64 = rounded(rng.normal(size=(*case.lead, n)), pt)
    h_post, h_post64 = rounded(rng.normal(size=(*case.lead, n)), pt)
    h_res, h_res64 = rounded(rng.normal(size=(*case.lead, n, n)), pt)
    y, y64 = rounded(rng.normal(size=(*case.lead, d)), st)
    coeff_dtype = jnp.result_type(st, pt)
    cot = {
        "coeffs": [_f64(jnp.asarray(rng.normal(size=s), coeff_dtype)) for s in ((*case.lead, n),) * 2
                   + ((*case.lead, n, n),)],
        "pre": _f64(jnp.asarray(rng.normal(size=(*case.lead, d)), st)),
        "post": _f64(jnp.asarray(rng.normal(size=(*case.lead, n, d)), st)),
    }

    def run(H: Any, p: Any, h_pre: Any, h_post: Any, h_res: Any, y: Any) -> Any:
        out_c, pull_c = jax.vjp(lambda H, p: Forced.mhc_coeffs(H, p, **options), H, p)
        out_pre, pull_pre = jax.vjp(Forced.mhc_pre, H, h_pre)
        out_post, pull_post = jax.vjp(Forced.mhc_post, y, H, h_post, h_res)
        g_c = pull_c(tuple(jnp.asarray(g, o.dtype) for g, o in zip(cot["coeffs"], out_c)))
        return (out_c, g_c, out_pre, pull_pre(jnp.asarray(cot["pre"], out_pre.dtype)),
                out_post, pull_post(jnp.asarray(cot["post"], out_post.dtype)))

    args = (H, p, h_pre, h_post, h_res, y)
    with blocks.limits(*case.limits):
        traced = jax.jit(run).trace(*args)
        out_c, g_c, out_pre, g_pre, out_post, g_post = traced.lower().compile()(*args)
    jaxpr = str(traced.jaxpr)
    assert jaxpr.count("pallas_call") == 6 and "hcref_mhc_coeffs_bwd" in jaxpr

    tol_c, tol_s = TOL[jnp.dtype(coeff_dtype).name], TOL[case.state]
    if case.far_row:  # float32 logits of size L = 1e4 carry rounding L 2^-24 into every exp (mc.check_extreme)
        tol_c = max(tol_c, 1e4 * mc.U32)
    ref_c = hcref.mhc_coeffs(H64, p64, **options)
    ref_gc = hcref.mhc_coeffs_vjp(H64, p64, *cot["coeffs"], **options)
    for got, ref, what in zip(out_c, ref_c, ("h_pre", "h_post", "h_res")):
        assert got.dtype == coeff_dtype, what
        _close(got, ref, tol_c, what)
    assert g_c[0].dtype == st
    _close(g_c[0], ref_gc[0], tol_s, "g_H")
    for key in p:
        assert g_c[1][key].dtype == pt, key
        _close(g_c[1][key], ref_gc[1][key], tol_c, key)

    assert out_pre.dtype == st
    _close(out_pre, hcref.mhc_pre(H64, h_pre64), tol_s, "h0")
    for got, ref, dt, what in zip(g_pre, hcref.mhc_pre_vjp(H64, h_pre64, cot["pre"]), (st, pt), ("g_H", "g_h_pre")):
        assert got.dtype == dt, what
        _close(got, ref, tol_s, what)

    assert out_post.dtype == st
    _close(out_post, hcref.mhc_post(y64, H64, h_post64, h_res64), tol_s, "H_out")
    ref_gp = hcref.mhc_post_vjp(y64, H64, h_post64, h_res64, cot["post"])
    for got, ref, dt, what in zip(g_post, ref_gp, (st, st, pt, pt), ("g_y", "g_H", "g_h_post", "g_h_res")):
        assert got.dtype == dt, what
        _close(got, ref, tol_s, what)


# --- the shared mHC checks of tests/mhc_cases.py on the kernel backend -------------------------------


KERNEL_LOW = [(c, i) for c, i in zip(mc.LOW_CASES, mc.LOW_IDS) if c[0] in KERNEL_OPS and i != "mhc_coeffs-2"]
"""mhc_pre, mhc_post and mhc_coeffs with eps = 1e-6 (its eps = 0 twin adds CI time, not coverage:
eps 0 in bfloat16 is n3-bf16-iters1-far-row above)."""


@pytest.mark.parametrize("case", [c for c, _ in KERNEL_LOW], ids=[i for _, i in KERNEL_LOW])
def test_bfloat16_within_the_suite_tolerances(case: mc.Case) -> None:
    """The backends' shared bfloat16 cases (eps 0 and 1e-6), held to the conformance suite's
    tolerance tables (float32 is held to 2e-5 above, tighter than the tables)."""
    mc.check_lower(hp.backend, hp.backend, case, "bfloat16")


EXTREME = [c for c in mc.extreme_cases() if c[0] == "mhc_coeffs" and "phi" in c[1][1]]


@pytest.mark.parametrize("case", EXTREME, ids=["huge-state-far-row", "tiny-state"])
def test_extreme_logits_and_states(case: Any) -> None:
    """States of 1e20 (their squares overflow float32) with logits of +-1e4 and a row of h_res's logits
    1e4 below, and states of 1e-30: finite and within the float32 tolerances (tests/mhc_cases.py)."""
    assert hp.supported("mhc_coeffs", jnp.asarray(case[1][0], jnp.float32),
                        {k: jnp.asarray(v, jnp.float32) for k, v in case[1][1].items()})
    mc.check_extreme(hp.backend, hp.backend, case)


# --- transformations ---------------------------------------------------------------------------


def _site(ops: Any, iters: int = 20, eps: float = 0.0) -> Any:
    def site(H: Any, p: Any) -> Any:
        h_pre, h_post, h_res = ops.mhc_coeffs(H, p, iters=iters, eps=eps)
        y = jnp.tanh(ops.mhc_pre(H, h_pre))
        return ops.mhc_post(y, H, h_post, h_res)

    return site


class PallasMHC(ManifoldHyperConnections):
    """The NNX mHC site with its ops namespace on the kernels (what hcref_jax.mhc's dispatch gives on
    a TPU)."""

    ops = SimpleNamespace(meta=xla_mhc.meta, mhc_coeffs=Forced.mhc_coeffs, mhc_pre=Forced.mhc_pre,
                          mhc_post=Forced.mhc_post)


def test_module_site_under_jit_vmap_and_grad() -> None:
    """The NNX mHC site on the kernels, split into a pure function (``nnx.split`` / ``nnx.merge``),
    under jit: vmap over a batch with shared parameters (folded into the tokens), with per-example
    parameters (one call per example), and vmap of grad (every kernel's backward, per-example
    parameter gradients as NNX states): equal to the XLA module (hcref_jax.mhc_modules, checked
    against the reference in test_jax_mhc.py) on the same inputs."""
    rng = np.random.default_rng(12)
    n, d = 3, 5
    sites = [PallasMHC(n, d, 0, eps=1e-6) for _ in range(3)]
    for site in sites:
        for key in site.param_keys:
            param = getattr(site, key)
            param[...] = param[...] + jnp.asarray(rng.normal(size=param.shape), jnp.float32)
    graphdef, p0 = nnx.split(sites[0])
    ps = jax.tree.map(lambda *xs: jnp.stack(xs), *(nnx.split(site)[1] for site in sites))
    xla_graphdef, _ = nnx.split(ManifoldHyperConnections(n, d, 0, eps=1e-6))
    H = jnp.asarray(rng.normal(size=(3, 4, n, d)), jnp.float32)

    def all_ways(graphdef: Any) -> Any:
        def f(H: Any, state: Any) -> Any:
            return nnx.merge(graphdef, state)(H, jnp.tanh)

        def loss(H: Any, state: Any) -> Any:
            return jnp.sum(jnp.sin(f(H, state)))

        def run(H: Any, ps: Any, p0: Any) -> Any:
            return (
                jax.vmap(f, in_axes=(0, None))(H, p0),
                jax.vmap(f)(H, ps),
                jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None))(H, p0),
            )

        return jax.jit(run)

    traced = all_ways(graphdef).trace(H, ps, p0)
    jaxpr = str(traced.jaxpr)
    assert "hcref_mhc_coeffs_fwd" in jaxpr and "hcref_mhc_coeffs_bwd" in jaxpr and "hcref_depth_bwd_fused" in jaxpr
    got = jax.tree.leaves(traced.lower().compile()(H, ps, p0))
    want = jax.tree.leaves(all_ways(xla_graphdef)(H, ps, p0))
    assert len(got) == len(want) == 3 + len(sites[0].param_keys)  # two outputs, g_H, g_params
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=3e-5, atol=3e-6)


# --- dispatch, fallbacks, errors -------------------------------------------------------------


def _uses_kernels(fn: Any, *args: Any) -> bool:
    return "pallas_call" in str(jax.make_jaxpr(lambda *a: fn(*a))(*args))


def test_modes_supported_and_fallbacks() -> None:
    """The mode switch covers the mHC ops; inputs the kernels do not take (static sites, float16,
    no tokens, n > 16, rows too wide for VMEM) run on the XLA path with its results."""
    S = jax.ShapeDtypeStruct
    rng = np.random.default_rng(3)
    H_np, p_np = random_inputs("mhc_coeffs", rng, (4,), 3, 8)
    H = jnp.asarray(H_np, jnp.float32)
    p = {key: jnp.asarray(value, jnp.float32) for key, value in p_np.items()}
    h = jnp.ones((4, 3), jnp.float32)
    for value, expected in (("pallas", True), ("xla", False), ("auto", hp.on_tpu())):
        with hp.use_mode(value):
            assert _uses_kernels(lambda H, p: hp.mhc_coeffs(H, p), H, p) is expected
            assert _uses_kernels(hp.mhc_pre, H, h) is expected
            assert _uses_kernels(hp.mhc_post, H[..., 0, :], H, h, jnp.ones((4, 3, 3), F32)) is expected
    assert set(hp.MHC_OPS) <= set(hp.OPS)
    assert hp.supported("mhc_coeffs", S((4, 3, 8), jnp.bfloat16), p)
    assert hp.supported("mhc_post", S((4, 8), jnp.bfloat16), S((4, 3, 8), jnp.bfloat16), h, S((4, 3, 3), F32))
    assert not hp.supported("mhc_coeffs", S((4, 3, 8), jnp.float32), {"b": p["b"]})  # a broadcast: XLA
    assert not hp.supported("mhc_pre", S((4, 3, 8), jnp.float16), S((4, 3), jnp.float16))
    assert not hp.supported("mhc_pre", S((0, 3, 8), jnp.float32), S((0, 3), jnp.float32))
    assert not hp.supported("mhc_pre", S((2, 17, 8), jnp.float32), S((2, 17), jnp.float32))
    assert not hp.supported("mhc_pre", S((8,), jnp.float32), S((8,), jnp.float32))  # invalid: False, no raise
    wide = {"phi": S((4 * 2**18, 24), F32), "b": S((24,), F32), "gates": S((3,), F32)}
    assert not hp.supported("mhc_coeffs", S((2, 4, 2**18), jnp.float32), wide)
    with pytest.raises(ValueError, match=r"^op: expected one of"):
        hp.supported("mhc_head", S((4, 3, 8), jnp.float32))
    static = {"b": p["b"]}
    assert not _uses_kernels(lambda H: Forced.mhc_coeffs(H, static), H)
    for got, want in zip(Forced.mhc_coeffs(H, static), xla_mhc.mhc_coeffs(H, static)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    H16 = H.astype(jnp.float16)
    assert not _uses_kernels(Forced.mhc_pre, H16, h.astype(jnp.float16))
    np.testing.assert_array_equal(np.asarray(Forced.mhc_pre(H16, h.astype(jnp.float16))),
                                  np.asarray(xla_mhc.mhc_pre(H16, h.astype(jnp.float16))))


F32 = jnp.float32
BAD = [(c, i) for c, i in zip(mc.bad_cases(), mc.BAD_IDS) if c[0] in KERNEL_OPS]


@pytest.mark.parametrize("case", [c for c, _ in BAD], ids=[i for _, i in BAD])
def test_bad_inputs_raise_the_reference_errors(case: mc.Case) -> None:
    """The kernel ops' errors, eagerly (Forced) and jitted by the kernel backend, are the reference's."""
    for ops in (Forced, hp.backend):
        mc.check_bad(ops, jnp.asarray, case)


def test_every_mhc_kernel_lowers_for_a_tpu() -> None:
    """The Pallas-to-Mosaic lowering of the six mHC kernels (forward and backward of coeffs, pre and
    post: the Sinkhorn ``fori_loop``s, the scratch potentials, the lane slices of the epilogue), float32
    and bfloat16, eps 0 and 1e-6, at production size (n = 4, d = 4096, 2048 tokens: many token blocks)
    and an odd one (n = 3, d = 40, 37 tokens). Mosaic's own passes run only on a TPU."""
    S = jax.ShapeDtypeStruct
    for dt in (jnp.float32, jnp.bfloat16):
        for n, d, N, eps in ((4, 4096, 2048, 0.0), (4, 4096, 2048, 1e-6), (3, 40, 37, 0.0)):
            K = 2 * n + n * n
            p = {"phi": S((n * d, K), F32), "b": S((K,), F32), "gates": S((3,), F32)}

            def everything(H: Any, p: Any, eps: float = eps) -> Any:
                out, pull = jax.vjp(_site(Forced, eps=eps), H, p)
                return pull(out)

            with pallas_mode.lowering_for_tpu():
                exported = jax.export.export(jax.jit(everything), platforms=["tpu"])(S((N, n, d), dt), p)
            assert exported.mlir_module().count("tpu_custom_call") == 6, (dt, n, d, eps)
