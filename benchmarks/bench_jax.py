"""Speed of one dynamic HC site in JAX (hcref_jax, jitted) against a jitted plain residual, timed in
one process, interleaved (each repetition runs every candidate once, in turn), medians reported.

    python benchmarks/bench_jax.py            # n=4, 4096 tokens, d=1024, float32
    python benchmarks/bench_jax.py --quick    # tiny shapes, 1 repetition (a smoke run)
    python benchmarks/bench_jax.py --pallas   # the Pallas TPU kernels (see "Pallas" below)

Site: H (tokens, n, d) -> H_out with a branch ``identity`` or ``mlp`` (d -> 4d -> d, GELU), the
branch's weights passed as arguments. Candidates, each one ``jax.jit``-ed function:
``residual`` is ``x + branch(x)`` on x (tokens, d); ``hcref ops`` is the site written with the
functional ops (``hc_coeffs`` -> ``hc_width`` -> branch -> ``hc_depth``) on the parameter dict;
``hcref module`` is the ``HyperConnections`` NNX module called around the branch under ``nnx.jit``.
hcref runs with ``norm="rmsnorm"`` (as benchmarks/bench_torch.py, for comparable figures), tanh and
scales on, random dynamic weights. "fwd" is the forward; "fwd+bwd" is ``jax.value_and_grad`` of
``sum(H_out * G)`` for H (x for the residual), the site's and the branch's parameters: the loss value
is returned, so the branch output is computed as in a training step (and as in bench_torch.py's
forward + ``backward()``). With ``--grad-only`` it is ``jax.grad`` alone; then XLA drops whatever
only the unused loss value needs: for the residual, whose loss is linear in ``branch(x)``, that is
the MLP's second matmul, which hcref still computes (``g_beta = sum_c G y`` needs y), so the
residual baseline is one (tokens, 4d) x (4d, d) matmul cheaper than any real use of the branch.
Every call ends with ``block_until_ready``.

Pallas (``--pallas``, :mod:`hcref_jax.pallas`). On a TPU: every kernel of HC and FC (coefficients,
width, depth, the fused site's width and depth) and of mHC (``mhc_coeffs`` with 20 Sinkhorn
iterations, ``mhc_pre``, ``mhc_post``), forward and forward+backward, timed on its own
(jitted, interleaved, medians) at ``--tokens`` (default 32768), ``--d`` (default 4096), n = m = 4,
``--dtype`` (default bfloat16 state, float32 parameters and coefficients); its achieved bytes/s
from an explicit I/O model (:func:`io_bytes`: every array a kernel reads or writes, once) over the
bytes/s of a same-run device copy (``x + 1`` on a state-sized array: read once, written once); and
one whole site (fused kernels, identity branch) over a plain residual ``x + y``, forward and
forward+backward, with the XLA path's site beside it. Off a TPU the kernels only run in TPU
interpret mode, whose speed says nothing about a TPU: ``--pallas`` then runs the smoke check (tiny
shapes, every kernel forward and backward in one jitted program, compared with the XLA path) and
reports no timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import hcref_jax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

NORM = "rmsnorm"


def _branch_fn(kind: str) -> Callable[[jax.Array, Any], jax.Array]:
    if kind == "identity":
        return lambda x, w: x

    def mlp(x: jax.Array, w: Any) -> jax.Array:
        return jax.nn.gelu(x @ w["W1"] + w["b1"]) @ w["W2"] + w["b2"]

    return mlp


def build(
    n: int, tokens: int, d: int, branch_kind: str, seed: int, grad_only: bool = False
) -> dict[str, dict[str, Callable[[], Any]]]:
    """For each candidate, a ``fwd`` and a ``fwd+bwd`` closure (jitted, blocking)."""
    rng = np.random.default_rng(seed)
    f32 = jnp.float32
    branch = _branch_fn(branch_kind)
    bw = (
        {
            "W1": jnp.asarray(rng.normal(size=(d, 4 * d)) / d**0.5, f32),
            "b1": jnp.zeros((4 * d,), f32),
            "W2": jnp.asarray(rng.normal(size=(4 * d, d)) / (4 * d) ** 0.5, f32),
            "b2": jnp.zeros((d,), f32),
        }
        if branch_kind == "mlp"
        else {}
    )
    hc = hcref_jax.HyperConnections(n, d, 1, norm=NORM)
    hc.W_alpha[...] = jnp.asarray(rng.normal(size=(d, n + 1)) / d**0.5, f32)
    hc.W_beta[...] = jnp.asarray(rng.normal(size=(d,)) / d**0.5, f32)
    params = hc.params()
    H = jnp.asarray(rng.normal(size=(tokens, n, d)), f32)
    x = H.sum(axis=-2)
    G_H = jnp.asarray(rng.normal(size=H.shape), f32)
    G_x = jnp.asarray(rng.normal(size=x.shape), f32)

    def residual(x: jax.Array, bw: Any) -> jax.Array:
        return x + branch(x, bw)

    def site(H: jax.Array, params: Any, bw: Any) -> jax.Array:
        alpha, beta = hcref_jax.hc_coeffs(H, params, norm=NORM)
        h0, H_res = hcref_jax.hc_width(H, alpha)
        return hcref_jax.hc_depth(branch(h0, bw), H_res, beta)

    def module_site(hc: hcref_jax.HyperConnections, H: jax.Array, bw: Any) -> jax.Array:
        return hc(H, lambda h0: branch(h0, bw))

    res_fwd = jax.jit(residual)
    grad = jax.grad if grad_only else jax.value_and_grad
    nnx_grad = nnx.grad if grad_only else nnx.value_and_grad
    res_bwd = jax.jit(grad(lambda x, bw: jnp.sum(residual(x, bw) * G_x), argnums=(0, 1)))
    ops_fwd = jax.jit(site)
    ops_bwd = jax.jit(grad(lambda H, p, bw: jnp.sum(site(H, p, bw) * G_H), argnums=(0, 1, 2)))
    mod_fwd = nnx.jit(module_site)
    mod_bwd = nnx.jit(nnx_grad(lambda hc, H, bw: jnp.sum(module_site(hc, H, bw) * G_H), argnums=(0, 1, 2)))

    def blocking(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        return lambda: jax.block_until_ready(fn(*args))

    return {
        "residual": {"fwd": blocking(res_fwd, x, bw), "fwd+bwd": blocking(res_bwd, x, bw)},
        "hcref ops": {"fwd": blocking(ops_fwd, H, params, bw), "fwd+bwd": blocking(ops_bwd, H, params, bw)},
        "hcref module": {"fwd": blocking(mod_fwd, hc, H, bw), "fwd+bwd": blocking(mod_bwd, hc, H, bw)},
    }


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(
    n: int, tokens: int, d: int, reps: int, warmup: int, seed: int, grad_only: bool = False
) -> dict[tuple[str, str, str], float]:
    medians: dict[tuple[str, str, str], float] = {}
    for branch_kind in ("identity", "mlp"):
        cands = build(n, tokens, d, branch_kind, seed, grad_only)
        ops_out = cands["hcref ops"]["fwd"]()
        mod_out = cands["hcref module"]["fwd"]()
        err = float(jnp.abs(ops_out - mod_out).max() / jnp.abs(ops_out).max())
        print(f"[{branch_kind}] max |hcref module - hcref ops| / max |hcref ops| = {err:.2e}")
        for mode in ("fwd", "fwd+bwd"):
            jobs = {name: fns[mode] for name, fns in cands.items()}
            for job in jobs.values():
                for _ in range(warmup):  # the first call compiles
                    job()
            times: dict[str, list[float]] = {name: [] for name in jobs}
            for _ in range(reps):
                for name, job in jobs.items():
                    times[name].append(_time(job))
            for name, ts in times.items():
                medians[(branch_kind, mode, name)] = statistics.median(ts)
    return medians


def report(medians: dict[tuple[str, str, str], float]) -> None:
    print(f"\n{'branch':9} {'mode':8} {'candidate':13} {'median ms':>10} {'vs residual':>12}")
    for (branch_kind, mode, name), t in medians.items():
        base = medians[(branch_kind, mode, "residual")]
        print(f"{branch_kind:9} {mode:8} {name:13} {1e3 * t:10.2f} {t / base:11.2f}x")
    print("\n'vs residual': time / jitted plain residual time (same branch, same mode).")


# --- Pallas kernels -------------------------------------------------------------------------


def io_bytes(kernel: str, family: str, tokens: int, k: int, w: int, state: int, coeff: int = 4) -> int:
    """Bytes a kernel moves (each array it reads or writes counted once; the partial sums of the
    parameter gradients, under 0.1%, left out). ``state``/``coeff``: itemsizes of H and y / of the
    coefficients. Per token: H is k rows of w, y and h0 are d = (1 if HC else k) rows of w, alpha
    k*c, beta k; the backward saves a = the c+1 pre-activations and 3 row statistics per row.
    mHC (``family="mhc"``, k = n, w = d): the coefficients are 2n+n^2 numbers per token; the
    backward saves z (2n+n^2) and 2 statistics in float32; pre/post as HC's width/fused depth."""
    if family == "mhc":
        return tokens * _mhc_io(kernel, k, w, state, coeff)
    c, split, ry = (k + 1, 1, 1) if family == "hc" else (2 * k, k, k)
    H, h0, y = k * w * state, split * w * state, ry * w * state
    alpha, beta, ab = k * c * coeff, k * coeff, k * (c + 1) * coeff
    saved = k * (c + 1) * 4 + k * 3 * 4
    per_token = {
        "coeffs fwd": H + ab,
        "coeffs fwd+bwd": (H + ab + saved) + (H + saved + k * (c + 1) * 4 + H),
        "width fwd": H + alpha + h0 + H,
        "width fwd+bwd": (H + alpha + h0 + H) + (H + alpha + h0 + H + H + alpha),
        "depth fwd": y + H + beta + H,
        "depth fwd+bwd": (y + H + beta + H) + (beta + y + H + y + beta),
        "site width fwd": H + h0 + ab,
        "site width fwd+bwd": (H + h0 + ab + saved) + (H + H + h0 + ab + saved + k * (c + 1) * 4 + H),
        "site depth fwd": y + H + alpha + beta + H,
        "site depth fwd+bwd": (y + H + alpha + beta + H) + (beta + y + H + H + alpha + y + beta + H + alpha),
    }[kernel]
    return tokens * per_token


def _mhc_io(kernel: str, n: int, d: int, state: int, coeff: int) -> int:
    H, y, K = n * d * state, d * state, 2 * n + n * n
    saved = K * 4 + 2 * 4
    return {
        "coeffs fwd": H + K * coeff,
        "coeffs fwd+bwd": (H + K * coeff + saved) + (H + saved + K * 4 + H),
        "pre fwd": H + n * coeff + y,
        "pre fwd+bwd": (H + n * coeff + y) + (n * coeff + H + y + H + n * 4),
        "post fwd": y + H + n * coeff + n * n * coeff + H,
        "post fwd+bwd": (y + H + n * coeff + n * n * coeff + H) + (n * coeff + y + H + H + n * n * coeff + y + n * 4
                                                                  + H + n * n * 4),
    }[kernel]


def _mhc_params(n: int, d: int, rng: np.random.Generator) -> dict[str, jax.Array]:
    K = 2 * n + n * n
    return {"phi": jnp.asarray(rng.normal(size=(n * d, K)) / np.sqrt(n * d), jnp.float32),
            "b": jnp.asarray(rng.normal(size=K), jnp.float32), "gates": jnp.asarray(rng.normal(size=3), jnp.float32)}


def _mhc_cases(tokens: int, n: int, d: int, dtype: Any, seed: int) -> dict[str, Any]:
    """name -> (jitted function, args) for the three mHC kernels, fwd and fwd+bwd (iters 20, eps 0)."""
    from hcref_jax.pallas import Forced

    rng = np.random.default_rng(seed)
    params = _mhc_params(n, d, rng)
    H = jnp.asarray(rng.normal(size=(tokens, n, d)), dtype)
    y = jnp.asarray(rng.normal(size=(tokens, d)), dtype)
    h_pre, h_post, h_res = Forced.mhc_coeffs(H, params)
    fwd = {
        "coeffs": (lambda H, p: Forced.mhc_coeffs(H, p), (H, params)),
        "pre": (Forced.mhc_pre, (H, h_pre)),
        "post": (Forced.mhc_post, (y, H, h_post, h_res)),
    }

    def with_backward(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            out, pull = jax.vjp(fn, *args)
            return out, pull(jax.tree.map(jnp.ones_like, out))

        return run

    cases = {}
    for name, (fn, args) in fwd.items():
        cases[f"{name} fwd"] = (jax.jit(fn), args)
        cases[f"{name} fwd+bwd"] = (jax.jit(with_backward(fn)), args)
    return cases


def _smoke_mhc(n: int, d: int, seed: int) -> float:
    """One mHC site (``mhc_coeffs`` with 20 Sinkhorn iterations, ``mhc_pre``, a tanh branch,
    ``mhc_post``; eps 0, the paper's Sinkhorn), value and gradients by the kernels in interpret mode
    and by the XLA path (hcref_jax.mhc): the largest relative difference. (DeepSeek-V4's eps > 0
    is tested in tests/test_jax_pallas_mhc.py.)"""
    from hcref_jax import mhc as xla_mhc
    from hcref_jax import pallas

    rng = np.random.default_rng(seed)
    params = _mhc_params(n, d, rng)
    H = jnp.asarray(rng.normal(size=(16, n, d)), jnp.float32)

    def value_and_grad(ops: Any, eps: float) -> Any:
        def loss(H: jax.Array, p: Any) -> jax.Array:
            h_pre, h_post, h_res = ops.mhc_coeffs(H, p, eps=eps)
            return jnp.sum(jnp.sin(ops.mhc_post(jnp.tanh(ops.mhc_pre(H, h_pre)), H, h_post, h_res)))

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(H, params)

    with pallas.use_mode("pallas"):
        got = jax.tree.leaves(value_and_grad(pallas, 0.0))
    want = jax.tree.leaves(value_and_grad(xla_mhc, 0.0))
    return max(float(jnp.abs(g - x).max() / jnp.maximum(jnp.abs(x).max(), 1.0)) for g, x in zip(got, want))


def _pallas_cases(family: str, tokens: int, k: int, w: int, dtype: Any, seed: int) -> dict[str, Any]:
    """name -> (jitted function, args) for every kernel of ``family``, fwd and fwd+bwd."""
    from hcref_jax.pallas import Forced

    rng = np.random.default_rng(seed)
    d = w if family == "hc" else k * w
    init = hcref_jax.HyperConnections(k, d, 1) if family == "hc" else hcref_jax.FracConnections(k, d)
    params = {key: jnp.asarray(rng.normal(size=v.shape) * 0.1, jnp.float32) for key, v in init.params().items()}
    H = jnp.asarray(rng.normal(size=(tokens, k, w)), dtype)
    y = jnp.asarray(rng.normal(size=(tokens, d)), dtype)
    alpha, beta = getattr(Forced, f"{family}_coeffs")(H, params)
    steps = ("coeffs", "width", "depth", "site_width", "site_depth")
    op = {step: getattr(Forced, f"{family}_{step}") for step in steps}
    _, state = op["site_width"](H, params)
    fwd = {
        "coeffs": (lambda H, p: op["coeffs"](H, p), (H, params)),
        "width": (op["width"], (H, alpha)),
        "depth": (op["depth"], (y, H, beta)),
        "site width": (lambda H, p: op["site_width"](H, p), (H, params)),
        "site depth": (op["site_depth"], (y, state)),
    }

    def with_backward(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            out, pull = jax.vjp(fn, *args)
            return out, pull(jax.tree.map(jnp.ones_like, out))

        return run

    cases = {}
    for name, (fn, args) in fwd.items():
        cases[f"{name} fwd"] = (jax.jit(fn), args)
        cases[f"{name} fwd+bwd"] = (jax.jit(with_backward(fn)), args)
    return cases


def _smoke_family(family: str, k: int, w: int, seed: int) -> float:
    """Two sites of ``family`` (the contract ops, then the fused site path), value and gradients by
    the kernels in interpret mode and by the XLA path: the largest relative difference."""
    from hcref_jax import pallas

    rng = np.random.default_rng(seed)
    d = w if family == "hc" else k * w
    init = hcref_jax.HyperConnections(k, d, 1) if family == "hc" else hcref_jax.FracConnections(k, d)
    params = {key: jnp.asarray(rng.normal(size=v.shape) * 0.3, jnp.float32) for key, v in init.params().items()}
    H = jnp.asarray(rng.normal(size=(16, k, w)), jnp.float32)

    def op(ops: Any, step: str) -> Any:
        return getattr(ops, f"{family}_{step}")

    def two_sites(H: jax.Array, p: Any, ops: Any) -> jax.Array:
        alpha, beta = op(ops, "coeffs")(H, p)
        h0, H_res = op(ops, "width")(H, alpha)
        H = op(ops, "depth")(jnp.tanh(h0), H_res, beta)
        if ops is pallas:
            h0, state = op(ops, "site_width")(H, p)
            return op(ops, "site_depth")(jnp.tanh(h0), state)  # type: ignore[no-any-return]
        alpha, beta = op(ops, "coeffs")(H, p)
        h0, H_res = op(ops, "width")(H, alpha)
        return op(ops, "depth")(jnp.tanh(h0), H_res, beta)  # type: ignore[no-any-return]

    def value_and_grad(ops: Any) -> Any:
        def loss(H: jax.Array, p: Any) -> jax.Array:
            return jnp.sum(jnp.sin(two_sites(H, p, ops)))

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(H, params)

    with pallas.use_mode("pallas"):
        got = jax.tree.leaves(value_and_grad(pallas))
    want = jax.tree.leaves(value_and_grad(hcref_jax))
    return max(float(jnp.abs(g - x).max() / jnp.maximum(jnp.abs(x).max(), 1.0)) for g, x in zip(got, want))


def _pallas_smoke(seed: int) -> float:
    """Interpret mode (no TPU): every kernel of HC and FC, forward and backward, on tiny shapes,
    against the XLA path. Returns the largest relative difference."""
    worst = max(_smoke_family("hc", 4, 32, seed), _smoke_family("fc", 4, 8, seed), _smoke_mhc(4, 32, seed))
    print(f"interpret mode (no TPU): every HC, FC and mHC kernel, forward and backward, on 16 tokens; "
          f"max |pallas - xla| / max(1, |xla|) = {worst:.2e}. No timing: interpret mode is not a TPU.")
    return worst


def run_pallas(tokens: int, d: int, dtype: Any, reps: int, warmup: int, seed: int) -> dict[tuple[str, str], float]:
    """On a TPU: {(family, kernel): median seconds}, printed with bytes/s against a same-run copy,
    and the site against a plain residual. Elsewhere: the interpret-mode smoke check, whose largest
    relative difference to the XLA path is returned under ("interpret smoke", "max |pallas - xla|")."""
    from hcref_jax import pallas

    if not pallas.on_tpu():
        return {("interpret smoke", "max |pallas - xla|"): _pallas_smoke(seed)}
    k = 4
    size = jnp.dtype(dtype).itemsize
    copy_src = jnp.ones((tokens, k, d), dtype)
    copy = jax.jit(lambda x: x + jnp.asarray(1, x.dtype))
    jobs: dict[tuple[str, str], Callable[[], Any]] = {("copy", "state"): lambda: jax.block_until_ready(copy(copy_src))}
    for family, w in (("hc", d), ("fc", d // k)):
        for name, (fn, args) in _pallas_cases(family, tokens, k, w, dtype, seed).items():
            jobs[(family, name)] = lambda fn=fn, args=args: jax.block_until_ready(fn(*args))
    for name, (fn, args) in _mhc_cases(tokens, k, d, dtype, seed).items():
        jobs[("mhc", name)] = lambda fn=fn, args=args: jax.block_until_ready(fn(*args))
    # the whole site (fused kernels, identity branch) against x + y, and the XLA path's site
    rng = np.random.default_rng(seed)
    hc = hcref_jax.HyperConnections(k, d, 1)
    params = {key: jnp.asarray(rng.normal(size=v.shape) * 0.1, jnp.float32) for key, v in hc.params().items()}
    H = jnp.asarray(rng.normal(size=(tokens, k, d)), dtype)
    x, y = (jnp.asarray(rng.normal(size=(tokens, d)), dtype) for _ in range(2))

    def fused(H: jax.Array, p: Any) -> jax.Array:
        h0, state = pallas.Forced.hc_site_width(H, p)
        return pallas.Forced.hc_site_depth(h0, state)

    def unfused_xla(H: jax.Array, p: Any) -> jax.Array:
        alpha, beta = hcref_jax.hc_coeffs(H, p)
        h0, H_res = hcref_jax.hc_width(H, alpha)
        return hcref_jax.hc_depth(h0, H_res, beta)

    def residual(x: jax.Array, y: jax.Array) -> jax.Array:
        return x + y

    sites = {
        "residual": (residual, (x, y)),
        "site pallas": (fused, (H, params)),
        "site xla": (unfused_xla, (H, params)),
    }
    for name, (fn, args) in sites.items():
        f = jax.jit(fn)
        g = jax.jit(jax.grad(lambda a, b, fn=fn: jnp.sum(fn(a, b).astype(jnp.float32)), argnums=(0, 1)))
        jobs[("site fwd", name)] = lambda f=f, args=args: jax.block_until_ready(f(*args))
        jobs[("site fwd+bwd", name)] = lambda g=g, args=args: jax.block_until_ready(g(*args))
    for job in jobs.values():
        for _ in range(warmup):
            job()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
    for _ in range(reps):
        for key, job in jobs.items():
            times[key].append(_time(job))
    medians = {key: statistics.median(ts) for key, ts in times.items()}
    copy_rate = 2 * tokens * k * d * size / medians[("copy", "state")]
    print(f"\ncopy of the state ({tokens} x {k} x {d} {jnp.dtype(dtype).name}): {copy_rate / 1e9:.1f} GB/s")
    print(f"{'family':7} {'kernel':22} {'median us':>10} {'GB/s':>8} {'of copy':>8}")
    for (family, name), t in medians.items():
        if family in ("hc", "fc", "mhc"):
            w = d // k if family == "fc" else d
            rate = io_bytes(name, family, tokens, k, w, size) / t
            print(f"{family:7} {name:22} {1e6 * t:10.1f} {rate / 1e9:8.1f} {rate / copy_rate:8.2f}")
    for mode_name in ("site fwd", "site fwd+bwd"):
        base = medians[(mode_name, "residual")]
        for name in sites:
            t = medians[(mode_name, name)]
            print(f"{mode_name:13} {name:12} {1e6 * t:10.1f} us {t / base:6.2f}x residual")
    return medians


def main(argv: list[str] | None = None) -> dict[Any, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 repetition (smoke run)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=None, help="default 4096 (32768 with --pallas)")
    parser.add_argument("--d", type=int, default=None, help="default 1024 (4096 with --pallas)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--grad-only", action="store_true", help="fwd+bwd as jax.grad without the loss value (see the docstring)"
    )
    parser.add_argument(
        "--pallas", action="store_true", help="the Pallas kernels (on a TPU; elsewhere the interpret-mode smoke)"
    )
    parser.add_argument("--dtype", default="bfloat16", help="--pallas: dtype of the state (default bfloat16)")
    args = parser.parse_args(argv)
    if args.pallas:
        tokens, d = args.tokens or 32768, args.d or 4096
        if args.quick:
            tokens, d, args.reps, args.warmup = 256, 512, 3, 1
        print(f"jax {jax.__version__} ({jax.default_backend()}, {jax.devices()[0].device_kind}), --pallas, "
              f"tokens={tokens} d={d} n=m=4 {args.dtype}, reps={args.reps}")
        return run_pallas(tokens, d, jnp.dtype(args.dtype), args.reps, args.warmup, args.seed)
    args.tokens, args.d = args.tokens or 4096, args.d or 1024
    if args.quick:
        args.tokens, args.d, args.reps, args.warmup = 16, 32, 1, 1
    print(
        f"jax {jax.__version__} ({jax.default_backend()}, {jax.devices()[0].device_kind}), "
        f"{os.cpu_count()} CPUs, n={args.n} tokens={args.tokens} d={args.d} float32, reps={args.reps}, "
        f"fwd+bwd = {'jax.grad' if args.grad_only else 'jax.value_and_grad'}"
    )
    medians = run(args.n, args.tokens, args.d, args.reps, args.warmup, args.seed, args.grad_only)
    report(medians)
    return medians


if __name__ == "__main__":
    main()
