"""hcref_jax's contract ops, backend object and NNX modules dispatch to the Pallas kernels of
hcref_jax.pallas (issue 15): the XLA path by default off a TPU; the kernels under ``"auto"`` on a
TPU (the platform check patched: the decision is only traced here, never compiled for Mosaic) and
under the forced ``"pallas"`` mode, where off a TPU they run in TPU interpret mode on tiny shapes and
equal the XLA path, forward and backward, under jit, grad and vmap; unsupported inputs (float64,
an empty token axis, a static site's coefficients) and ``"xla"`` keep the XLA path; errors are the
reference's on both paths. The mHC ops take a kernel once the kernel package lists it (shown with
a stand-in kernel, and with the package's mHC kernels: a site and the module, forced, equal XLA)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
jax.config.update("jax_enable_x64", True)

import hcref_jax
import jax.numpy as jnp
from hcref_jax import mhc, ops
from hcref_jax import pallas as hp
from hcref_jax.pallas import mode as pallas_mode
from op_cases import params as make_params

import hcref
from hcref.checks import random_inputs

F32 = jnp.float32


def _kernels_in(fn: Any, *args: Any) -> int:
    """How many ``pallas_call``s a fresh trace of ``fn`` holds (jit's cache ignores the mode)."""
    return str(jax.make_jaxpr(lambda *a: fn(*a))(*args)).count("pallas_call")


def _inputs(family: str, k: int = 3, w: int = 8, lead: tuple[int, ...] = (4,), dtype: Any = F32) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    d = w if family == "hc" else k * w
    p = {key: jnp.asarray(v, F32) for key, v in make_params(family, k, d, rng, dynamic=True, norm="rmsnorm").items()}
    c = k + 1 if family == "hc" else 2 * k
    return {
        "H": jnp.asarray(rng.normal(size=(*lead, k, w)), dtype),
        "p": p,
        "alpha": jnp.asarray(rng.normal(size=(*lead, k, c)), F32),
        "beta": jnp.asarray(rng.normal(size=(*lead, k)), F32),
        "y": jnp.asarray(rng.normal(size=(*lead, d)), dtype),
    }


def _calls(family: str, x: dict[str, Any]) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    return {
        "coeffs": (lambda H, p: getattr(ops, f"{family}_coeffs")(H, p, norm="rmsnorm"), (x["H"], x["p"])),
        "width": (getattr(ops, f"{family}_width"), (x["H"], x["alpha"])),
        "depth": (getattr(ops, f"{family}_depth"), (x["y"], x["H"], x["beta"])),
    }


@pytest.mark.parametrize("family", ["hc", "fc"])
def test_default_off_a_tpu_is_the_xla_path(family: str) -> None:
    assert not pallas_mode.on_tpu() and hp.get_mode() == "auto"
    x = _inputs(family)
    for step, (fn, args) in _calls(family, x).items():
        assert _kernels_in(fn, *args) == 0, step
        assert ops.pallas_op(f"{family}_{step}", *args) is None
    with hp.use_mode("xla"):
        for step, (fn, args) in _calls(family, x).items():
            assert _kernels_in(fn, *args) == 0, step


@pytest.mark.parametrize("family", ["hc", "fc"])
def test_auto_on_a_tpu_and_forced_pallas_take_the_kernels(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x = _inputs(family)
    with hp.use_mode("pallas"):
        for step, (fn, args) in _calls(family, x).items():
            assert _kernels_in(fn, *args) == 1, step
    monkeypatch.setattr(pallas_mode, "on_tpu", lambda: True)  # traced only: make_jaxpr compiles nothing
    assert hp.get_mode() == "auto"
    for step, (fn, args) in _calls(family, x).items():
        assert _kernels_in(fn, *args) == 1, step
    with hp.use_mode("xla"):
        for step, (fn, args) in _calls(family, x).items():
            assert _kernels_in(fn, *args) == 0, step


def test_unsupported_inputs_keep_the_xla_path_with_the_kernels_forced() -> None:
    x = _inputs("hc")
    x64 = _inputs("hc", dtype=jnp.float64)
    empty = _inputs("hc", lead=(2, 0))
    static = {key: x["p"][key] for key in ("A_m", "A_r", "B")}
    with hp.use_mode("pallas"):
        assert _kernels_in(ops.hc_width, x64["H"], x64["alpha"]) == 0
        assert _kernels_in(ops.hc_depth, empty["y"], empty["H"], empty["beta"]) == 0
        assert _kernels_in(ops.hc_coeffs, x["H"], static) == 0
        assert _kernels_in(ops.hc_width, x["H"], x["alpha"]) == 1
        h0, H_res = ops.hc_width(empty["H"], empty["alpha"])
        assert h0.shape == (2, 0, 8) and H_res.shape == (2, 0, 3, 8)
    # errors are validated before the choice: word for word the reference's on either path
    with hp.use_mode("pallas"), pytest.raises(ValueError, match=r"^alpha: expected shape"):
        ops.hc_width(x["H"], x["alpha"][..., :2])


def test_forced_kernels_equal_the_xla_path_under_jit_grad_and_vmap() -> None:
    """One HC site (coefficients, width, a branch, depth) in TPU interpret mode against the XLA path:
    value and the gradients of H and every parameter, jitted, and per-example under vmap (FC takes
    the same dispatch; its kernels are checked in test_jax_pallas.py)."""
    family = "hc"
    x = _inputs(family, k=2, w=8, lead=(3,))

    def loss(H: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
        alpha, beta = getattr(hcref_jax, f"{family}_coeffs")(H, p, norm="rmsnorm")
        h0, H_res = getattr(hcref_jax, f"{family}_width")(H, alpha)
        return jnp.sum(getattr(hcref_jax, f"{family}_depth")(jnp.tanh(h0), H_res, beta) ** 2)

    def run() -> Any:
        value_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None)))
        return value_grad(x["H"], x["p"]), per_example(x["H"][:, None], x["p"])

    want = run()
    with hp.use_mode("pallas"):
        assert _kernels_in(jax.grad(loss, argnums=(0, 1)), x["H"], x["p"]) == 6
        jax.clear_caches()
        got = run()
    jax.clear_caches()
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


def test_backend_object_and_modules_dispatch() -> None:
    """The backend's jitted ops and an NNX site follow the mode (traced anew after the switch)."""
    x = _inputs("hc", k=2, w=8, lead=(3,))
    site = hcref_jax.HyperConnections(2, 8, 1, norm="rmsnorm")
    for key in ("W_alpha", "W_beta"):
        getattr(site, key)[...] = x["p"][key]
    backend = hcref_jax.backend
    jax.clear_caches()  # the backend's ops are jitted: trace them in this mode

    def apply(module: Any, H: jax.Array) -> jax.Array:
        return module(H, jnp.tanh)

    assert _kernels_in(lambda H, a: backend.hc_width(H, a), x["H"], x["alpha"]) == 0
    assert _kernels_in(lambda H: apply(site, H), x["H"]) == 0
    want = nnx.jit(nnx.value_and_grad(lambda m, H: jnp.sum(apply(m, H) ** 2), argnums=(0, 1)))(site, x["H"])
    with hp.use_mode("pallas"):
        jax.clear_caches()
        assert _kernels_in(lambda H, a: backend.hc_width(H, a), x["H"], x["alpha"]) == 1
        assert _kernels_in(lambda H: apply(site, H), x["H"]) == 3
        got = nnx.jit(nnx.value_and_grad(lambda m, H: jnp.sum(apply(m, H) ** 2), argnums=(0, 1)))(site, x["H"])
    jax.clear_caches()
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=2e-5)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=5e-5, atol=5e-5)


MHC_CALLS = {
    "sinkhorn": (("Z",), {"iters": 3, "eps": 0.0}),
    "mhc_coeffs": (("H", "params"), {"iters": 3, "eps": 1e-6}),
    "mhc_pre": (("H", "h_pre"), {}),
    "mhc_post": (("y", "H", "h_post", "h_res"), {}),
    "mhc_head": (("H", "head"), {"eps": 0.0}),
}


@pytest.mark.parametrize("name", list(MHC_CALLS))
def test_mhc_ops_take_a_kernel_once_the_kernel_package_lists_it(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook for Pallas mHC kernels: an mHC op of hcref_jax (and so the mHC modules) calls
    ``hcref_jax.pallas.Forced.<name>`` exactly when the kernel package lists the name in ``OPS``,
    its ``supported`` takes the inputs and the mode asks for kernels; the stand-in kernel here falls
    back to the op itself, which then takes the XLA path (no loop), so the values are unchanged."""
    rng = np.random.default_rng(5)
    H, params = (jnp.asarray(a) if not isinstance(a, dict) else {k: jnp.asarray(v) for k, v in a.items()}
                 for a in random_inputs("mhc_coeffs", rng, (4,), 3, 5))
    head = {k: jnp.asarray(v) for k, v in hcref.init_mhc_head(3, 5).items()}
    values = {"Z": jnp.asarray(rng.normal(size=(4, 3, 3))), "H": H, "params": params, "head": head,
              "h_pre": jnp.asarray(rng.random((4, 3))), "h_post": jnp.asarray(rng.random((4, 3))),
              "h_res": jnp.asarray(rng.random((4, 3, 3))), "y": jnp.asarray(rng.normal(size=(4, 5)))}
    inputs, options = MHC_CALLS[name]
    args = [values[a] for a in inputs]
    op = getattr(mhc, name)
    want = op(*args, **options)
    calls: list[tuple[Any, ...]] = []

    def kernel(*a: Any, **kw: Any) -> Any:
        calls.append(a)
        assert kw == options
        return op(*a, **kw)  # a kernel's own fallback: must take the XLA path, not come back here

    monkeypatch.setattr(hp, "OPS", (*hp.OPS, name) if name not in hp.OPS else hp.OPS)
    monkeypatch.setattr(hp.Forced, name, staticmethod(kernel), raising=False)
    monkeypatch.setattr(hp, "supported", lambda op_name, *a: op_name == name and len(a) == len(inputs))
    op(*args, **options)
    assert calls == []  # mode "auto" off a TPU: the XLA path
    with hp.use_mode("pallas"):
        got = op(*args, **options)
        assert len(calls) == 1 and all(a is b for a, b in zip(calls[0], args, strict=True))
        with hp.use_mode("xla"):
            op(*args, **options)
        assert len(calls) == 1
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mhc_ops_and_modules_take_the_kernels_the_package_has() -> None:
    """With the kernel package's mHC kernels (hcref_jax.pallas lists mhc_coeffs, mhc_pre, mhc_post):
    a whole mHC site written with hcref_jax's ops, and the NNX module, run on them when forced (TPU
    interpret mode here) and on XLA by default off a TPU, with equal values and gradients."""
    listed = [name for name in ("mhc_coeffs", "mhc_pre", "mhc_post") if name in hp.OPS]
    if not listed:
        pytest.skip("hcref_jax.pallas has no mHC kernels in this tree")
    rng = np.random.default_rng(6)
    H_np, p_np = random_inputs("mhc_coeffs", rng, (4,), 3, 8)
    H = jnp.asarray(H_np, F32)
    p = {k: jnp.asarray(v, F32) for k, v in p_np.items()}

    def loss(H: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
        h_pre, h_post, h_res = mhc.mhc_coeffs(H, p, iters=5)
        return jnp.sum(mhc.mhc_post(jnp.tanh(mhc.mhc_pre(H, h_pre)), H, h_post, h_res) ** 2)

    grad = jax.value_and_grad(loss, argnums=(0, 1))
    site = hcref_jax.ManifoldHyperConnections(3, 8, 0, iters=5)
    assert _kernels_in(grad, H, p) == 0 and _kernels_in(lambda H: site(H, jnp.tanh), H) == 0
    want = grad(H, p)
    with hp.use_mode("pallas"):
        assert _kernels_in(grad, H, p) == 2 * len(listed)  # forward and backward kernel per op
        assert _kernels_in(lambda H: site(H, jnp.tanh), H) == len(listed)
        got = grad(H, p)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)
