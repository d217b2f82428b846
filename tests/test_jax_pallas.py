"""hcref_jax.pallas: the Pallas TPU kernels in TPU interpret mode against the NumPy reference.

Forward values and every cotangent of the kernels' ops against the reference and its hand-derived
VJPs (float64 on the inputs rounded to the dtype under test), in float32, bfloat16 and mixed
precision (bfloat16 state, float32 parameters), on odd shapes (n or m = 1, 3, 5, 8; widths that
are not multiples of 128; one token without leading axes; several token blocks with a partial
last one and several lane blocks, forced with ``blocks.limits``), every norm and switch; the fused
site path; jit, vmap (batch folded into tokens, and per-example weights) and grad through the
kernels and an NNX site; the mode switch and the fallbacks; the reference's errors word for word;
the Pallas-to-Mosaic lowering of every kernel for a TPU (``jax.export``, no TPU needed).
No TPU ran any of this: interpret mode checks the kernels' arithmetic, block indexing, grid order
and dimension semantics, not Mosaic's compiler passes, VMEM capacity or speed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax.nnx")

import hcref_jax
import jax.numpy as jnp
from flax import nnx
from hcref_jax import pallas as hp
from hcref_jax.pallas import Forced, blocks
from hcref_jax.pallas import mode as pallas_mode
from op_cases import bad_cases
from op_cases import params as make_params

import hcref

TOL = {"float32": 2e-5, "bfloat16": 1.2e-2}
"""Error bound relative to max(1, max|reference|). bfloat16 results are rounded once to 8 bits
(2^-9 relative); the gradients of a sum over w tokens or widths add a few roundings more."""


F32 = jnp.float32


def _dt(name: str) -> Any:
    return jnp.dtype(name)


def _f64(x: Any) -> np.ndarray:
    return np.asarray(jnp.asarray(x, jnp.float32), dtype=np.float64)


def _close(got: Any, ref: np.ndarray, tol: float, what: str) -> float:
    err = float(np.abs(_f64(got) - ref).max(initial=0.0) / max(1.0, np.abs(ref).max(initial=0.0)))
    assert np.all(np.isfinite(_f64(got))), what
    assert err <= tol, (what, err)
    return err


class Case(NamedTuple):
    family: str
    k: int
    w: int
    lead: tuple[int, ...]
    norm: str
    switches: tuple[bool, bool, bool]
    """use_tanh, use_norm, use_scale"""
    dynamic: bool
    state: str
    """dtype of H and y"""
    param: str
    """dtype of the parameters and coefficients"""
    limits: tuple[int, int]
    """blocks.limits(max_tokens, max_lanes)"""


BIG = (blocks.MAX_TOKENS, blocks.MAX_LANES)
SMALL = (16, 128)
ON = (True, True, True)
CASES = {
    "hc-n1-one-token": Case("hc", 1, 4, (), "layernorm", ON, True, "float32", "float32", BIG),
    "hc-n5-d130-rms": Case("hc", 5, 130, (7,), "rmsnorm", ON, True, "float32", "float32", BIG),
    "hc-n8-none-notanh": Case("hc", 8, 8, (3,), "none", (False, True, True), True, "float32", "float32", BIG),
    "hc-n4-blocks": Case("hc", 4, 384, (37,), "layernorm", ON, True, "float32", "float32", SMALL),
    "hc-static": Case("hc", 3, 6, (2, 2), "layernorm", ON, False, "float32", "float32", BIG),
    "fc-m1": Case("fc", 1, 6, (2,), "rmsnorm", ON, True, "float32", "float32", BIG),
    "fc-m3-switches-off": Case("fc", 3, 5, (5,), "layernorm", (True, False, False), True, "float32", "float32", BIG),
    "fc-m8": Case("fc", 8, 16, (2, 2), "rmsnorm", (False, True, False), True, "float32", "float32", BIG),
    "fc-m4-blocks-parts": Case("fc", 4, 256, (64,), "layernorm", ON, True, "float32", "float32", SMALL),
    "hc-bf16-blocks": Case("hc", 4, 136, (40,), "layernorm", ON, True, "bfloat16", "bfloat16", SMALL),
    "hc-mixed": Case("hc", 3, 24, (5,), "rmsnorm", ON, True, "bfloat16", "float32", BIG),
}


def _ops(family: str) -> tuple[Any, Any, Any]:
    return tuple(getattr(Forced, f"{family}_{step}") for step in ("coeffs", "width", "depth"))  # type: ignore[return-value]


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_kernels_match_the_reference(case: Case) -> None:
    """coeffs, width and depth: forward and VJP of every input, result dtypes (D12)."""
    fam, k, w = case.family, case.k, case.w
    d = w if fam == "hc" else k * w
    c = k + 1 if fam == "hc" else 2 * k
    rng = np.random.default_rng(sorted(CASES.values()).index(case))
    st, pt = _dt(case.state), _dt(case.param)
    use_tanh, use_norm, use_scale = case.switches
    options = {"norm": case.norm, "use_tanh": use_tanh, "use_norm": use_norm, "use_scale": use_scale}
    if not case.dynamic:
        options = {}

    def rounded(x: np.ndarray, dt: Any) -> tuple[Any, np.ndarray]:
        j = jnp.asarray(x, dt)
        return j, _f64(j)

    H, H64 = rounded(2.0 * rng.normal(size=(*case.lead, k, w)), st)
    p_raw = make_params(fam, k, d, rng, dynamic=case.dynamic, norm=case.norm)
    p = {key: jnp.asarray(v, pt) for key, v in p_raw.items()}
    p64 = {key: _f64(v) for key, v in p.items()}
    alpha, alpha64 = rounded(rng.normal(size=(*case.lead, k, c)), pt)
    beta, beta64 = rounded(rng.normal(size=(*case.lead, k)), pt)
    y, y64 = rounded(rng.normal(size=(*case.lead, d)), st)
    H_res, H_res64 = rounded(rng.normal(size=(*case.lead, k, w)), st)
    coeffs_op, width_op, depth_op = _ops(fam)
    coeff_dtype = jnp.result_type(st, pt)
    # cotangents rounded to their output's dtype (the reference gets the same values)
    cot = {
        "coeffs": [_f64(jnp.asarray(rng.normal(size=(*case.lead, k, c)), coeff_dtype)),
                   _f64(jnp.asarray(rng.normal(size=(*case.lead, k)), coeff_dtype))],
        "width": [_f64(jnp.asarray(rng.normal(size=(*case.lead, d)), st)),
                  _f64(jnp.asarray(rng.normal(size=(*case.lead, k, w)), st))],
        "depth": [_f64(jnp.asarray(rng.normal(size=(*case.lead, k, w)), st))],
    }

    def run(H: Any, p: Any, alpha: Any, beta: Any, y: Any, H_res: Any) -> Any:
        out_c, pull_c = jax.vjp(lambda H, p: coeffs_op(H, p, **options), H, p)
        out_w, pull_w = jax.vjp(width_op, H, alpha)
        out_d, pull_d = jax.vjp(depth_op, y, H_res, beta)
        g_c = pull_c(tuple(jnp.asarray(g, o.dtype) for g, o in zip(cot["coeffs"], out_c)))
        g_w = pull_w(tuple(jnp.asarray(g, o.dtype) for g, o in zip(cot["width"], out_w)))
        g_d = pull_d(jnp.asarray(cot["depth"][0], out_d.dtype))
        return out_c, g_c, out_w, g_w, out_d, g_d

    args = (H, p, alpha, beta, y, H_res)
    with blocks.limits(*case.limits):
        traced = jax.jit(run).trace(*args)
        out_c, g_c, out_w, g_w, out_d, g_d = traced.lower().compile()(*args)
    assert str(traced.jaxpr).count("pallas_call") == (6 if case.dynamic else 4)

    tol_c = TOL[jnp.dtype(coeff_dtype).name]
    tol_s = TOL[case.state]
    ref_c = getattr(hcref, f"{fam}_coeffs")(H64, p64, **options)
    ref_gc = getattr(hcref, f"{fam}_coeffs_vjp")(H64, p64, *cot["coeffs"], **options)
    for got, ref, what in zip(out_c, ref_c, ("alpha", "beta")):
        assert got.dtype == coeff_dtype, what
        _close(got, ref, tol_c, what)
    assert g_c[0].dtype == st
    _close(g_c[0], ref_gc[0], tol_s if case.dynamic else 0.0, "g_H")
    for key in p:
        assert g_c[1][key].dtype == pt, key
        _close(g_c[1][key], ref_gc[1][key], tol_c, key)

    ref_w = getattr(hcref, f"{fam}_width")(H64, alpha64)
    ref_gw = getattr(hcref, f"{fam}_width_vjp")(H64, alpha64, *cot["width"])
    for got, ref, what in zip(out_w, ref_w, ("h0", "H_res")):
        assert got.dtype == st, what
        _close(got, ref, tol_s, what)
    for got, ref, dt, what in zip(g_w, ref_gw, (st, pt), ("g_H", "g_alpha")):
        assert got.dtype == dt, what
        _close(got, ref, TOL[jnp.dtype(dt).name] if dt == st else tol_s, what)

    ref_d = getattr(hcref, f"{fam}_depth")(y64, H_res64, beta64)
    ref_gd = getattr(hcref, f"{fam}_depth_vjp")(y64, H_res64, beta64, *cot["depth"])
    assert out_d.dtype == st
    _close(out_d, ref_d, tol_s, "H_out")
    for got, ref, dt, what in zip(g_d, ref_gd, (st, st, pt), ("g_y", "g_H_res", "g_beta")):
        assert got.dtype == dt, what
        _close(got, ref, tol_s, what)


# --- the fused site path ---------------------------------------------------------------------


def _reference_site(fam: str, H: np.ndarray, p: dict[str, np.ndarray], W: np.ndarray, G: np.ndarray,
                    options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """H_out = depth(tanh(h0 W), width(H, alpha)[1], beta) and its VJP by the reference's chained VJPs."""
    alpha, beta = getattr(hcref, f"{fam}_coeffs")(H, p, **options)
    h0, H_res = getattr(hcref, f"{fam}_width")(H, alpha)
    y = np.tanh(h0 @ W)
    out = getattr(hcref, f"{fam}_depth")(y, H_res, beta)
    g_y, g_res, g_beta = getattr(hcref, f"{fam}_depth_vjp")(y, H_res, beta, G)
    g_pre = (1 - y**2) * g_y
    g_W = h0.reshape(-1, h0.shape[-1]).T @ g_pre.reshape(-1, g_pre.shape[-1])
    g_h0 = g_pre @ W.T
    g_H1, g_alpha = getattr(hcref, f"{fam}_width_vjp")(H, alpha, g_h0, g_res)
    g_H2, g_p = getattr(hcref, f"{fam}_coeffs_vjp")(H, p, g_alpha, g_beta, **options)
    return out, g_H1 + g_H2, g_p, g_W


@pytest.mark.parametrize(
    ("fam", "k", "w", "norm", "dynamic", "dtype"),
    [("hc", 3, 136, "layernorm", True, "float32"), ("fc", 4, 130, "rmsnorm", True, "bfloat16"),
     ("hc", 4, 8, "layernorm", False, "float32")],
)
def test_fused_site_matches_the_reference(fam: str, k: int, w: int, norm: str, dynamic: bool, dtype: str) -> None:
    """``*_site_width`` (coefficients and h0 in one kernel, H passed on) and ``*_site_depth`` (the
    write takes the mixing over) around a branch: output and gradients of H, the parameters and the
    branch weight against the reference's unfused site, over several token blocks."""
    rng = np.random.default_rng(3)
    d = w if fam == "hc" else k * w
    p_raw = make_params(fam, k, d, rng, dynamic=dynamic, norm=norm)
    dt = _dt(dtype)
    H = jnp.asarray(rng.normal(size=(40, k, w)), dt)
    p = {key: jnp.asarray(v, jnp.float32) for key, v in p_raw.items()}
    W = jnp.asarray(rng.normal(size=(d, d)) / d**0.5, jnp.float32)
    G = rng.normal(size=(40, k, w))
    options = {"norm": norm} if dynamic else {}

    def site(H: Any, p: Any, W: Any) -> Any:
        h0, state = getattr(hp, f"{fam}_site_width")(H, p, **options)
        y = jnp.tanh(h0.astype(jnp.float32) @ W).astype(h0.dtype)
        return getattr(hp, f"{fam}_site_depth")(y, state)

    def value_and_grad(H: Any, p: Any, W: Any) -> Any:
        out, pull = jax.vjp(site, H, p, W)
        return out, pull(jnp.asarray(G, out.dtype))

    with hp.use_mode("pallas"), blocks.limits(16, 128):
        traced = jax.jit(value_and_grad).trace(H, p, W)
        out, (g_H, g_p, g_W) = traced.lower().compile()(H, p, W)
    # two forward kernels (site width, fused depth), two backward ones; no kernel writes H_res
    jaxpr = str(traced.jaxpr)
    assert jaxpr.count("pallas_call") == 4 and "hcref_depth_fwd_fused" in jaxpr
    assert ("hcref_coeffs_fwd_site" if dynamic else "hcref_width_fwd") in jaxpr
    p64 = {key: _f64(v) for key, v in p.items()}
    ref, ref_gH, ref_gp, ref_gW = _reference_site(fam, _f64(H), p64, _f64(W), G, options)
    tol = TOL[dtype] * (4 if dtype == "bfloat16" else 1)  # y is rounded to bfloat16 before the write
    assert out.dtype == dt and g_H.dtype == dt
    _close(out, ref, tol, "H_out")
    _close(g_H, ref_gH, tol, "g_H")
    for key in p:
        _close(g_p[key], ref_gp[key], tol, key)
    _close(g_W, ref_gW, tol, "g_W")


# --- transformations and a module ------------------------------------------------------------


class PallasHyperConnections(hcref_jax.HyperConnections):
    """The NNX module with its whole site on the fused kernels (what modules.py can do on a TPU)."""

    def __call__(self, H: jax.Array, branch: Any, *args: Any, **kwargs: Any) -> jax.Array:
        h0, state = hp.hc_site_width(H, self.params(), **self._options())
        return hp.hc_site_depth(branch(h0, *args, **kwargs), state)


def test_module_site_under_jit_and_grad() -> None:
    """An NNX site on the fused kernels, split into a pure function (``nnx.split``/``nnx.merge``) and
    jitted with its gradient, equals the XLA module (checked against the reference in
    test_jax_modules.py): output, g_H and every parameter's gradient (as an NNX state)."""
    rng = np.random.default_rng(11)
    n, d = 3, 12
    xla_site = hcref_jax.HyperConnections(n, d, 1, norm="rmsnorm")
    for key in ("W_alpha", "W_beta"):
        getattr(xla_site, key)[...] = jnp.asarray(rng.normal(size=getattr(xla_site, key).shape) / d**0.5, jnp.float32)
    kernel_site = PallasHyperConnections(n, d, 1, norm="rmsnorm")
    nnx.update(kernel_site, nnx.state(xla_site, nnx.Param))
    H = jnp.asarray(rng.normal(size=(2, 5, n, d)), jnp.float32)
    Wb = jnp.asarray(rng.normal(size=(d, d)) / d**0.5, jnp.float32)

    def branch(h0: jax.Array) -> jax.Array:
        return jnp.tanh(h0 @ Wb)

    def loss(module: Any, H: jax.Array) -> jax.Array:
        return jnp.sum(module(H, branch) ** 2)

    graphdef, state = nnx.split(kernel_site)

    def pure(state: Any, H: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(H, branch)

    def pure_loss(state: Any, H: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = pure(state, H)
        return jnp.sum(out**2), out

    with hp.use_mode("pallas"):
        traced = jax.jit(jax.value_and_grad(pure_loss, argnums=(0, 1), has_aux=True)).trace(state, H)
        (_, out), (g_state, g_H) = traced.lower().compile()(state, H)
    assert str(traced.jaxpr).count("pallas_call") == 4
    g_mod = nnx.merge(graphdef, g_state)
    (_, ref_out), (ref_g_mod, ref_g_H) = nnx.jit(nnx.value_and_grad(
        lambda m, H: (loss(m, H), m(H, branch)), argnums=(0, 1), has_aux=True))(xla_site, H)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(g_H), np.asarray(ref_g_H), rtol=2e-5, atol=2e-5)
    for key in kernel_site.param_keys:
        np.testing.assert_allclose(
            np.asarray(getattr(g_mod, key)[...]), np.asarray(getattr(ref_g_mod, key)[...]), rtol=5e-5, atol=5e-5,
            err_msg=key,
        )


def test_vmap_folds_tokens_and_maps_per_example_weights() -> None:
    """Under jit: vmap over the batch with shared parameters (folded into the tokens), over
    per-example parameters (one kernel call per example), and vmap of grad (per-example parameter
    gradients: the token reduction is not folded) all equal the XLA path (hcref_jax.ops, checked
    against the reference in test_jax_ops.py) on the same inputs."""
    rng = np.random.default_rng(12)
    k, e = 2, 5
    p_raw = [make_params("fc", k, k * e, rng, dynamic=True, norm="layernorm") for _ in range(3)]
    ps = {key: jnp.asarray(np.stack([p[key] for p in p_raw]), jnp.float32) for key in p_raw[0]}
    p0 = {key: v[0] for key, v in ps.items()}
    H = jnp.asarray(rng.normal(size=(3, 4, k, e)), jnp.float32)

    def site(ops: Any) -> Any:
        def f(H: Any, p: Any) -> Any:
            h0, state = ops.fc_site_width(H, p)
            return ops.fc_site_depth(jnp.sin(h0), state)

        return f

    def all_ways(ops: Any) -> Any:
        f = site(ops)

        def loss(H: Any, p: Any) -> Any:
            return jnp.sum(f(H, p) ** 2)

        def run(H: Any, ps: Any, p0: Any) -> Any:
            return (
                jax.vmap(f, in_axes=(0, None))(H, p0),
                jax.vmap(f)(H, ps),
                jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None))(H, p0),
            )

        return jax.jit(run)

    class XlaSite:
        @staticmethod
        def fc_site_width(H: Any, p: Any) -> Any:
            alpha, beta = hcref_jax.fc_coeffs(H, p)
            return hcref_jax.fc_width(H, alpha)[0], (H, alpha, beta)

        @staticmethod
        def fc_site_depth(y: Any, state: Any) -> Any:
            H, alpha, beta = state
            return hcref_jax.fc_depth(y, hcref_jax.fc_width(H, alpha)[1], beta)

    traced = all_ways(Forced).trace(H, ps, p0)
    assert "pallas_call" in str(traced.jaxpr)
    got = jax.tree.leaves(traced.lower().compile()(H, ps, p0))
    want = jax.tree.leaves(all_ways(XlaSite)(H, ps, p0))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-6)


def test_scale_safe_norm_statistics() -> None:
    """Rows of 1e19 (their squares overflow float32) and layernorm rows with |mean| >> std give the
    reference's values, forward and backward (D12, hcref/norms.py)."""
    rng = np.random.default_rng(13)
    n, d = 2, 64
    for norm in ("rmsnorm", "layernorm"):
        H64 = rng.normal(size=(4, n, d))
        H64[:2] *= 1e19
        H64[2:] = 1.0 + 1e-3 * H64[2:]
        p_raw = make_params("hc", n, d, rng, dynamic=True, norm=norm)
        p = {key: jnp.asarray(v, jnp.float32) for key, v in p_raw.items()}
        p64 = {key: _f64(v) for key, v in p.items()}
        H = jnp.asarray(H64, jnp.float32)
        H64 = _f64(H)
        ga, gb = rng.normal(size=(4, n, n + 1)), rng.normal(size=(4, n))
        def value_and_vjp(H: Any, p: Any, ga: Any, gb: Any, norm: str = norm) -> Any:
            out, pull = jax.vjp(lambda H, p: Forced.hc_coeffs(H, p, norm=norm), H, p)
            return out, pull((ga, gb))

        out, (g_H, g_p) = jax.jit(value_and_vjp)(H, p, jnp.asarray(ga, jnp.float32), jnp.asarray(gb, jnp.float32))
        ref = hcref.hc_coeffs(H64, p64, norm=norm)
        ref_g = hcref.hc_coeffs_vjp(H64, p64, ga, gb, norm=norm)
        _close(out[0], ref[0], 1e-5, f"{norm} alpha")
        _close(out[1], ref[1], 1e-5, f"{norm} beta")
        for rows, what in ((slice(0, 2), "1e19 rows"), (slice(2, 4), "mean >> std rows")):
            got, want = _f64(g_H[rows]), ref_g[0][rows]
            assert np.all(np.isfinite(got)), what
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (norm, what)
        for key in p64:
            _close(g_p[key], ref_g[1][key], 1e-4, f"{norm} {key}")


# --- dispatch, fallbacks, errors ------------------------------------------------------------


def _uses_kernels(fn: Any, *args: Any) -> bool:
    """Whether tracing ``fn`` now (a fresh trace: jit's trace cache ignores the mode) runs a kernel."""
    return "pallas_call" in str(jax.make_jaxpr(lambda *a: fn(*a))(*args))


def test_modes_and_environment_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    H = jnp.ones((4, 3, 8), jnp.float32)
    alpha = jnp.ones((4, 3, 4), jnp.float32)
    assert hp.get_mode() in hp.MODES
    for value, expected in (("pallas", True), ("xla", False), ("auto", hp.on_tpu())):
        with hp.use_mode(value):
            assert hp.get_mode() == value
            assert _uses_kernels(hp.hc_width, H, alpha) is expected
    assert _uses_kernels(Forced.hc_width, H, alpha)
    monkeypatch.setenv(hp.ENV, "pallas")
    hp.set_mode(None)
    assert hp.get_mode() == "pallas" and _uses_kernels(hp.hc_width, H, alpha)
    monkeypatch.setenv(hp.ENV, "xla")
    assert not _uses_kernels(hp.hc_width, H, alpha)
    with hp.use_mode("pallas"):
        assert _uses_kernels(hp.hc_width, H, alpha)
    assert hp.get_mode() == "xla"
    monkeypatch.setenv(hp.ENV, "fast")
    expected = r"^environment variable HCREF_JAX_PALLAS: expected one of \['auto', 'pallas', 'xla'\], got 'fast'$"
    with pytest.raises(ValueError, match=expected):
        hp.get_mode()
    monkeypatch.delenv(hp.ENV)
    with pytest.raises(ValueError, match=r"^mode: expected one of"):
        hp.set_mode("gpu")
    assert hp.get_mode() == "auto"


def test_supported_and_fallbacks() -> None:
    """Inputs the kernels do not take run on the XLA path with the same results."""
    f32 = jax.ShapeDtypeStruct
    p_raw = make_params("hc", 3, 8, np.random.default_rng(0), dynamic=True, norm="layernorm")
    p = {key: jnp.asarray(v, jnp.float32) for key, v in p_raw.items()}
    static = {key: p[key] for key in ("A_m", "A_r", "B")}
    assert hp.supported("hc_width", f32((4, 3, 8), jnp.float32), f32((4, 3, 4), jnp.bfloat16))
    assert hp.supported("hc_coeffs", f32((4, 3, 8), jnp.bfloat16), p)
    assert not hp.supported("hc_coeffs", f32((4, 3, 8), jnp.float32), static)  # a broadcast: XLA
    assert hp.supported("hc_site_width", f32((4, 3, 8), jnp.float32), static)
    assert not hp.supported("hc_width", f32((4, 3, 8), jnp.float16), f32((4, 3, 4), jnp.float16))
    assert not hp.supported("hc_width", f32((0, 3, 8), jnp.float32), f32((0, 3, 4), jnp.float32))
    assert not hp.supported("fc_depth", f32((2, 68), jnp.float32), f32((2, 17, 4), jnp.float32), f32((2, 17), F32))
    wide = {key: f32((2**20,) + p[key].shape[1:], F32) for key in ("W_alpha", "W_beta", "norm_weight", "norm_bias")}
    assert not hp.supported("hc_coeffs", f32((4, 3, 2**20), jnp.float32), {**p, **wide})
    with pytest.raises(ValueError, match=r"^op: expected one of"):
        hp.supported("mhc_head", f32((4, 3, 8), jnp.float32))
    rng = np.random.default_rng(1)
    empty = jnp.asarray(rng.normal(size=(0, 3, 8)), jnp.float32)
    alpha = jnp.zeros((0, 3, 4), jnp.float32)
    assert not _uses_kernels(Forced.hc_width, empty, alpha)
    h0, H_res = Forced.hc_width(empty, alpha)
    assert h0.shape == (0, 8) and H_res.shape == (0, 3, 8)
    H16 = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float16)
    a16 = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float16)
    assert not _uses_kernels(Forced.hc_width, H16, a16)
    np.testing.assert_array_equal(np.asarray(Forced.hc_width(H16, a16)[1]), np.asarray(hcref_jax.hc_width(H16, a16)[1]))
    alpha_s, beta_s = Forced.hc_coeffs(jnp.ones((2, 3, 8)), static)
    np.testing.assert_array_equal(np.asarray(alpha_s[1, :, 0]), np.asarray(static["A_m"]))
    np.testing.assert_array_equal(np.asarray(beta_s[1]), np.asarray(static["B"]))


KERNEL_OPS = ("hc_coeffs", "hc_width", "hc_depth", "fc_coeffs", "fc_width", "fc_depth")


@pytest.mark.parametrize(
    ("name", "inputs", "options"), [c for c in bad_cases() if c[0] in KERNEL_OPS],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_bad_inputs_raise_the_reference_errors(name: str, inputs: tuple[Any, ...], options: dict[str, Any]) -> None:
    """The kernel ops' errors (eagerly and jitted by the backend) are the reference's, word for word
    (expand/reduce/frac_* are hcref_jax.ops' own: tests/test_jax_ops.py)."""
    with pytest.raises((ValueError, TypeError)) as ref:
        getattr(hcref, name)(*inputs, **options)
    j_inputs = [jnp.asarray(x) if isinstance(x, np.ndarray) else
                {key: jnp.asarray(v) for key, v in x.items()} if isinstance(x, dict) else x for x in inputs]
    for op in (getattr(Forced, name), getattr(hp.backend, name)):
        with pytest.raises(ref.type) as got:
            op(*j_inputs, **options)
        assert str(got.value) == str(ref.value)


def test_site_path_falls_back_to_the_xla_ops() -> None:
    """Off the kernels (mode "xla"), the fused site functions are the XLA ops composed: equal results."""
    rng = np.random.default_rng(2)
    p = {key: jnp.asarray(v, F32) for key, v in make_params("fc", 3, 12, rng, dynamic=True, norm="rmsnorm").items()}
    H = jnp.asarray(rng.normal(size=(5, 3, 4)), F32)
    with hp.use_mode("xla"):
        assert not _uses_kernels(lambda H: hp.fc_site_depth(*hp.fc_site_width(H, p, norm="rmsnorm")), H)
        h0, state = hp.fc_site_width(H, p, norm="rmsnorm")
        out = hp.fc_site_depth(jnp.cos(h0), state)
    alpha, beta = hcref_jax.fc_coeffs(H, p, norm="rmsnorm")
    ref_h0, H_res = hcref_jax.fc_width(H, alpha)
    np.testing.assert_array_equal(np.asarray(h0), np.asarray(ref_h0))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(hcref_jax.fc_depth(jnp.cos(ref_h0), H_res, beta)))


def test_site_depth_checks_its_state() -> None:
    H = jnp.ones((2, 3, 4))
    expected = r"^state: expected the SiteState \(H, alpha, beta\) of hc_site_width, got dict$"
    with pytest.raises(TypeError, match=expected):
        hp.hc_site_depth(jnp.ones((2, 4)), {"H": H})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^y: expected shape"):
        hp.hc_site_depth(jnp.ones((2, 5)), hp.SiteState(H, jnp.ones((2, 3, 4)), jnp.ones((2, 3))))


def test_every_kernel_lowers_for_a_tpu() -> None:
    """The Pallas-to-Mosaic lowering (block-shape rules, every primitive's Mosaic lowering, strided
    sublane loads and stores) of every kernel, forward and backward, float32 and bfloat16, with the
    production block sizes (many token blocks and 128-multiple lane blocks) and with odd ones
    (whole-array blocks of 37 tokens, d = 40). Mosaic's own passes run only on a TPU."""
    S = jax.ShapeDtypeStruct
    rng = np.random.default_rng(0)
    for dt in (jnp.float32, jnp.bfloat16):
        for fam, k, w, N in (("hc", 4, 4096, 2048), ("fc", 4, 1024, 2048), ("hc", 3, 40, 37)):
            d = w if fam == "hc" else k * w
            c = k + 1 if fam == "hc" else 2 * k
            p_raw = make_params(fam, k, d, rng, dynamic=True, norm="layernorm")
            p = {key: S(v.shape, jnp.float32) for key, v in p_raw.items()}
            H, y = S((N, k, w), dt), S((N, d), dt)

            def everything(H: Any, p: Any, y: Any, fam: str = fam) -> Any:
                def site(H: Any, p: Any, y: Any) -> Any:
                    alpha, beta = getattr(Forced, f"{fam}_coeffs")(H, p)
                    h0, H_res = getattr(Forced, f"{fam}_width")(H, alpha)
                    out = getattr(Forced, f"{fam}_depth")(y + h0, H_res, beta)
                    h0s, state = getattr(Forced, f"{fam}_site_width")(H, p)
                    return out + getattr(Forced, f"{fam}_site_depth")(h0s, state)

                out, pull = jax.vjp(site, H, p, y)
                return pull(out)

            with pallas_mode.lowering_for_tpu():
                exported = jax.export.export(jax.jit(everything), platforms=["tpu"])(H, p, y)
            text = exported.mlir_module()
            assert text.count("tpu_custom_call") == 10, (fam, dt)
            assert c > 0
