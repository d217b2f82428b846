"""hcref_mlx's mHC ops and modules against the NumPy reference: forward and ``mx.vjp`` in float64,
float32 and bfloat16 (tests/mhc_cases.py), the float64-accurate exp behind float64 mHC, extreme
logits, mixed precision, bad inputs, size-0 leading axes (MLX's zero-size VJP bug avoided), and
the modules (against the functional ops, ``mx.compile`` and ``nn.value_and_grad``, Pre-Norm at init,
friendly errors)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

import mhc_cases as mc
from hcref_mlx import Expand, Reduce, backend
from hcref_mlx import mhc as ops
from hcref_mlx.mhc_modules import ManifoldHyperConnections, MHCHead
from mlx.utils import tree_flatten

import hcref
from hcref.checks import random_inputs
from hcref.connections import SiteNumbering
from hcref.optable import MHC_OPS
from hcref.tolerances import FORWARD, tolerance


@pytest.mark.parametrize("case", mc.CASES, ids=mc.IDS)
def test_float64_matches_the_reference(case: mc.Case) -> None:
    mc.check_float64(backend, ops, case)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", mc.LOW_CASES, ids=mc.LOW_IDS)
def test_lower_precision_within_the_suite_tolerances(case: mc.Case, dtype: str) -> None:
    mc.check_lower(backend, ops, case, dtype)


@pytest.mark.parametrize("case", mc.extreme_cases(), ids=lambda c: c[0] if isinstance(c, tuple) else "")
def test_extreme_logits_and_states_are_finite_and_right(case: Any) -> None:
    mc.check_extreme(backend, ops, case)


@pytest.mark.parametrize("state", ["bfloat16", "float16"])
def test_mixed_precision_dtypes(state: str) -> None:
    mc.check_mixed(backend, ops, state)


@pytest.mark.parametrize("case", mc.bad_cases(), ids=mc.BAD_IDS)
def test_bad_inputs_raise_the_reference_errors(case: mc.Case) -> None:
    mc.check_bad(ops, mx.array, case)


@pytest.mark.parametrize("lead", [(0,), (2, 0)])
def test_size_zero_leading_axes(lead: tuple[int, ...]) -> None:
    mc.check_empty(backend, ops, lead)


def test_backend_object_serves_every_op_of_the_table() -> None:
    """``hcref_mlx.backend`` carries every op of :data:`hcref.optable.ALL_OPS` (HC, FC and mHC) under
    the reference's parameter names, and its mHC ops give the reference's values and gradients; the
    package exports the mHC ops and modules."""
    import inspect

    import hcref_mlx

    from hcref.optable import ALL_OPS

    for name in ALL_OPS:
        assert callable(getattr(backend, name)), name
        assert list(inspect.signature(getattr(backend, name)).parameters) == list(
            inspect.signature(getattr(hcref, name)).parameters
        ), name
        assert name in hcref_mlx.__all__ and getattr(hcref_mlx, name) is not None, name
    assert hcref_mlx.ManifoldHyperConnections is ManifoldHyperConnections and hcref_mlx.MHCHead is MHCHead
    for case in (mc.CASES[1], mc.CASES[5], mc.CASES[8], mc.CASES[9], mc.CASES[11]):
        mc.check_float64(backend, backend, case)


def test_float64_exp_is_accurate_where_mlx_exp_is_not() -> None:
    """Why float64 mHC is supported on MLX: MLX's own float64 exp errs by about 1e-6 relative (far
    outside the float64 tolerance of 2e-14), the exp used here by at most a few ulp over the whole
    range, with exact under- and overflow; its sigmoid has the exact derivative at 0."""
    x = np.concatenate([np.linspace(-745, 709, 20001), np.random.default_rng(0).normal(scale=5, size=20000)])
    with mx.stream(mx.cpu):
        xm = mx.array(x, dtype=mx.float64)
        mine, theirs = np.array(ops._exp64(xm)), np.array(mx.exp(xm))
        ends = np.array(ops._exp64(mx.array([-1e4, -np.inf, 1e4, np.inf, 0.0], dtype=mx.float64)))
        g0 = mx.grad(lambda t: ops._sigmoid64(t).sum())(mx.array([0.0, 3.0], dtype=mx.float64))
    ref = np.exp(x)
    normal = ref > np.finfo(np.float64).tiny
    rel = np.abs(mine[normal] - ref[normal]) / ref[normal]
    assert rel.max() <= 4 * 2.0**-53
    assert (np.abs(theirs[normal] - ref[normal]) / ref[normal]).max() > 1e3 * FORWARD["float64"].rtol
    np.testing.assert_array_equal(ends, [0.0, 0.0, np.inf, np.inf, 1.0])
    np.testing.assert_allclose(np.array(g0), [0.25, 1 / (1 + np.exp(-3.0)) / (1 + np.exp(3.0))], rtol=1e-14)


# --- modules -----------------------------------------------------------------------------------


def _perturb(module: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    module.update({k: v + mx.array(0.3 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in module.params().items()})


def test_parameters_are_the_contract_keys_at_the_reference_init() -> None:
    for module, expected in (
        (ManifoldHyperConnections(4, 8, 5), hcref.init_mhc(4, 8, 5)),
        (ManifoldHyperConnections(4, 8, 1, dynamic=False, preset="zero"),
         hcref.init_mhc(4, 8, 1, dynamic=False, preset="zero")),
        (MHCHead(4, 8), hcref.init_mhc_head(4, 8)),
    ):
        flat = dict(tree_flatten(module.parameters()))
        assert set(flat) == set(expected) and list(module.params()) == list(expected)
        for key, value in expected.items():
            assert flat[key].dtype == mx.float32, key
            np.testing.assert_array_equal(np.array(flat[key]), value.astype(np.float32), err_msg=key)
    assert "layer_index=5, dynamic=True, preset='hc_like', iters=20, eps=0.0" in repr(ManifoldHyperConnections(4, 8, 5))


def test_modules_equal_the_functional_ops_and_compile() -> None:
    """Loss and gradients of ``head(site(H, branch))`` through ``nn.value_and_grad`` (two-step and one
    call, eager; one call under ``mx.compile``) equal those of the functional ops."""
    n, d, iters = 3, 8, 3
    site = ManifoldHyperConnections(n, d, 1, iters=iters, eps=1e-6, dtype=mx.float64)
    head = MHCHead(n, d, dtype=mx.float64)
    _perturb(site, 1)
    _perturb(head, 2)
    rng = np.random.default_rng(0)
    H = mx.array(rng.normal(size=(2, 5, n, d)), dtype=mx.float64)
    G = mx.array(rng.normal(size=(2, 5, d)), dtype=mx.float64)

    def functional(p: dict[str, Any], ph: dict[str, Any], H: Any) -> Any:
        h_pre, h_post, h_res = ops.mhc_coeffs(H, p, iters=iters, eps=1e-6)
        H_out = ops.mhc_post(mx.tanh(ops.mhc_pre(H, h_pre)), H, h_post, h_res)
        return (ops.mhc_head(H_out, ph) * G).sum()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.site, self.head = site, head

        def __call__(self, H: Any, two_step: bool) -> Any:
            if two_step:
                h0, state = self.site.width(H)
                return self.head(self.site.depth(mx.tanh(h0), state))
            return self.head(self.site(H, mx.tanh))

    with mx.stream(mx.cpu):
        expected, (g_p, g_ph, g_H) = mx.value_and_grad(functional, argnums=(0, 1, 2))(
            site.params(), head.params(), H
        )
        net = Net()
        runs = {}
        for two_step in (True, False):
            grad_fn = nn.value_and_grad(net, lambda model, H, two_step=two_step: (model(H, two_step) * G).sum())
            runs[f"eager two_step={two_step}"] = lambda H, grad_fn=grad_fn: grad_fn(net, H)
        runs["mx.compile"] = mx.compile(runs["eager two_step=False"], inputs=net.state, outputs=net.state)
        for what, run in runs.items():
            loss, grads = run(H)
            np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-13, err_msg=what)
            for got, want in ((grads["site"], g_p), (grads["head"], g_ph)):
                assert set(got) == set(want)
                for key in want:
                    np.testing.assert_allclose(np.array(got[key]), np.array(want[key]), rtol=1e-12, atol=1e-13,
                                               err_msg=f"{what} {key}")
    assert np.isfinite(np.array(g_H)).all()


@pytest.mark.parametrize("n", [1, 4])
def test_at_init_hc_like_mhc_is_the_prenorm_residual(n: int) -> None:
    """mHC at its hc_like init on equal streams with scale-invariant sublayers (RMSNorm without
    epsilon first): Reduce gives n times the Pre-Norm residual stream, MHCHead n/2 times it."""
    d = 8
    rng = np.random.default_rng(0)
    with mx.stream(mx.cpu):
        f64 = mx.float64
        weights = [(mx.array(1 + 0.1 * rng.normal(size=d), f64), mx.array(rng.normal(size=(d, d)) / 3, f64))
                   for _ in range(4)]

        def block(w: tuple[Any, Any]) -> Any:
            return lambda h: mx.tanh(w[0] * h * mx.rsqrt(mx.mean(h * h, axis=-1, keepdims=True))) @ w[1]

        x = mx.array(rng.normal(size=(3, d)), f64)
        residual = x
        for w in weights:
            residual = residual + block(w)(residual)
        make = SiteNumbering(ManifoldHyperConnections, n, d, dtype=mx.float64)
        H = Expand(n)(x)
        for w in weights:
            H = make()(H, block(w))
        np.testing.assert_allclose(np.array(Reduce()(H)), n * np.array(residual), rtol=1e-13, atol=1e-13)
        head = MHCHead(n, d, dtype=mx.float64)
        np.testing.assert_allclose(np.array(head(H)), n / 2 * np.array(residual), rtol=1e-13, atol=1e-13)


def test_module_errors_name_the_module_and_the_fix() -> None:
    site = ManifoldHyperConnections(4, 32, 0)
    with pytest.raises(ValueError, match=r"^ManifoldHyperConnections\(n=4, d=32, layer_index=0\): expected H "
                                         r"of shape \(\.\.\., 4, 32\).*got shape \(2, 10, 32\).*Expand\(4\)"):
        site(mx.zeros((2, 10, 32)), mx.tanh)
    with pytest.raises(ValueError, match="iters: expected an int >= 1"):
        ManifoldHyperConnections(4, 32, 0, iters=0)


# --- numerics (issue 13): extreme scales, mixed precision, empty batches --------------------------

SCALES = (-100, 0, 50, 66)
"""States scaled by 2^k: about 1e-30, 1, 1e15 and 1e20, exactly (powers of two) in every dtype."""

TINY = 1e-36
"""Absolute error allowed on top of the relative bounds: 100 times float32's smallest normal number
(at 1e-30 the head's gradients of ``phi`` and ``gate`` are about 1e-58: 0 in float32, rightly)."""


def _scale_inputs(name: str, state: str, rng: np.random.Generator) -> list[Any]:
    """Inputs of ``name`` with the state (H, y) in ``state`` with entries in [-1, 1), everything else
    float32 (D12 mixed precision for a half state); ``phi`` times 4, so that ``vec(H) phi`` of the
    unnormalised state would exceed float32 at 2^127."""
    inputs = random_inputs(name, rng, (5,), 3, 4)
    out: list[Any] = []
    for arg, x in zip(MHC_OPS[name].inputs, inputs):
        if arg in ("H", "y"):
            out.append(backend.asarray(rng.uniform(-1, 1, size=x.shape), state, "cpu"))
        elif arg == "params":
            out.append({k: backend.asarray(v * (4 if k == "phi" else 1), "float32", "cpu") for k, v in x.items()})
        else:
            out.append(backend.asarray(x, "float32", "cpu"))
    return out


def _grads_flat(grads: Any) -> list[np.ndarray]:
    return [a for g in grads for a in mc._flat(mc.f64(backend, g))]


@pytest.mark.parametrize("state", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["mhc_coeffs", "mhc_head", "mhc_pre", "mhc_post"])
def test_state_scales_give_finite_right_and_scale_exact_results(name: str, state: str) -> None:
    """Issue 13 per op: states scaled by 2^k (k in SCALES, and 2^127 at the top of float32 and
    bfloat16 for the coefficient ops): outputs and gradients finite and within the suite's
    tolerances of the float64 reference on the same values; the coefficients (mhc_coeffs, the
    head's weights) bit for bit the same at 2^50, 2^66 and 2^127 (scale-safe RMS, D12), and the
    linear ops (mhc_pre, mhc_post, the head's reduce) exactly 2^k times their value at 1."""
    rng = np.random.default_rng(41)
    base = _scale_inputs(name, state, rng)
    options = {"eps": 1e-6} if name == "mhc_head" else {"iters": 6} if name == "mhc_coeffs" else {}
    first = mc.outs(getattr(backend, name)(*base, **options))
    cots = [backend.asarray(rng.standard_normal(o.shape), backend.dtype_name(o), "cpu") for o in first]
    k_contract = 12 if name in ("mhc_coeffs", "mhc_head") else 3
    results = {}
    for k in (*SCALES, 127) if name in ("mhc_coeffs", "mhc_head") else SCALES:
        inputs = [x * 2.0**k if arg in ("H", "y") else x for arg, x in zip(MHC_OPS[name].inputs, base)]
        outs = mc.outs(getattr(backend, name)(*inputs, **options))
        ref_inputs = [mc.f64(backend, x) for x in inputs]
        ref = mc.outs(getattr(hcref, name)(*ref_inputs, **options))
        for o, r in zip(outs, ref, strict=True):
            got = mc.f64(backend, o)
            assert np.isfinite(got).all(), (name, k)
            tol = tolerance(backend.dtype_name(o), "forward", contraction=k_contract)
            assert mc.error_ratio([got], [r], tol.rtol, TINY) <= 1, (name, k)
        results[k] = [mc.f64(backend, o) for o in outs]
        if k > 66:
            continue  # the exact gradients at 2^127 leave float32's range
        grads = mc.backend_vjp(backend, backend, name, inputs, cots, options)
        expected = mc.reference_vjp(name, tuple(ref_inputs), [mc.f64(backend, c) for c in cots], options)
        for got, r in zip(_grads_flat(grads), [a for e in expected for a in mc._flat(e)], strict=True):
            assert np.isfinite(got).all(), (name, k)
            gtol = tolerance(state, "gradient", contraction=k_contract)
            assert mc.error_ratio([got], [r], gtol.rtol, TINY) <= 1, (name, k)
    if name == "mhc_coeffs":
        for k in (66, 127):
            for a, b in zip(results[k], results[50], strict=True):
                np.testing.assert_array_equal(a, b)
    else:
        top = (66, 127) if name == "mhc_head" else (-100, 50, 66)
        origin = 50 if name == "mhc_head" else 0
        for k in top:
            np.testing.assert_array_equal(results[k][0], results[origin][0] * 2.0 ** (k - origin))


class _Stack(nn.Module):  # type: ignore[misc]
    def __init__(self, n: int, d: int) -> None:
        super().__init__()
        self.site = ManifoldHyperConnections(n, d, 1, iters=6)
        self.head = MHCHead(n, d)

    def __call__(self, H: Any) -> Any:
        return self.head(self.site(H, mx.tanh))


def test_modules_on_half_states_extreme_scales_and_empty_batches() -> None:
    """The mHC modules with float32 parameters (D12): on a bfloat16 state h0 and H_out stay bfloat16,
    the coefficients float32 (float32-accurate), the head's output bfloat16; coefficients equal bit
    for bit at 2^50 and 2^127 times the state and gradients finite at 1e-30 and 1e20; size-0 leading
    axes give empty outputs and exactly zero parameter gradients, and return (MLX's zero-size VJP
    bug would hang: the check runs in a thread that must finish within 120 s)."""
    import threading

    n, d = 3, 4
    stack = _Stack(n, d)
    _perturb(stack.site, 3)
    _perturb(stack.head, 4)
    rng = np.random.default_rng(42)
    H = backend.asarray(rng.uniform(-1, 1, size=(5, n, d)), "bfloat16", "cpu")
    h0, state = stack.site.width(H)
    H_out = stack.site.depth(mx.tanh(h0), state)
    x = stack.head(H_out)
    assert h0.dtype == H_out.dtype == x.dtype == mx.bfloat16
    assert state.h_post.dtype == state.h_res.dtype == mx.float32 and state.H.dtype == mx.bfloat16
    p64 = {k: mc.f64(backend, v) for k, v in stack.site.params().items()}
    ref = hcref.mhc_coeffs(mc.f64(backend, H), p64, iters=6)
    tol = tolerance("float32", "forward", contraction=n * d)
    for got, r in zip((state.h_post, state.h_res), ref[1:]):
        assert mc.error_ratio([mc.f64(backend, got)], [r], tol.rtol, tol.atol) <= 1
    coeffs = {k: stack.site.width(H * 2.0**k)[1] for k in (50, 127)}
    np.testing.assert_array_equal(np.array(coeffs[50].h_res), np.array(coeffs[127].h_res))
    np.testing.assert_array_equal(np.array(coeffs[50].h_post), np.array(coeffs[127].h_post))

    grad = nn.value_and_grad(stack, lambda model, H: model(H).astype(mx.float32).sum())
    for k in (-100, 66):
        _, g = grad(stack, H * 2.0**k)
        for key, value in tree_flatten(g):
            assert np.isfinite(mc.f64(backend, value)).all(), (k, key)

    failures: list[str] = []

    def empty_batches() -> None:
        for lead in ((0,), (2, 0)):
            empty = mx.zeros((*lead, n, d), mx.bfloat16)
            out = stack(empty)
            mx.eval(out)
            if tuple(out.shape) != (*lead, d):
                failures.append(f"{lead}: output shape {out.shape}")
            _, g = grad(stack, empty)
            for key, value in tree_flatten(g):
                if np.any(mc.f64(backend, value)):
                    failures.append(f"{lead}: {key} gradient not zero")

    worker = threading.Thread(target=empty_batches, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "hcref_mlx's mHC modules did not return within 120 s on an empty batch"
    assert not failures, failures
