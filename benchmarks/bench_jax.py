"""Speed of one dynamic HC site in JAX (hcref_jax, jitted) against a jitted plain residual, timed in
one process, interleaved (each repetition runs every candidate once, in turn), medians reported.

    python benchmarks/bench_jax.py            # n=4, 4096 tokens, d=1024, float32
    python benchmarks/bench_jax.py --quick    # tiny shapes, 1 repetition (a smoke run)

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


def main(argv: list[str] | None = None) -> dict[tuple[str, str, str], float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 repetition (smoke run)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--grad-only", action="store_true", help="fwd+bwd as jax.grad without the loss value (see the docstring)"
    )
    args = parser.parse_args(argv)
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
