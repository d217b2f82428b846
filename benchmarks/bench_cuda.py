"""Speed of the fused Triton kernels of hcref_torch (hcref_torch.kernels) on a CUDA GPU.

    python benchmarks/bench_cuda.py                 # N = 32768 tokens, d = 4096, n = 4, FC m = 4, bfloat16
    python benchmarks/bench_cuda.py --quick         # tiny shapes, 1 repetition; on a machine without CUDA it
                                                    # runs on CPU under the Triton interpreter (a smoke run)
    python benchmarks/bench_cuda.py --errors-only   # table 4 only (GPU, or CPU under the interpreter)

Three tables, every time the median of ``--reps`` interleaved repetitions (CUDA events):

1. Per kernel, forward and backward kernels timed alone: achieved bytes/s from an explicit I/O
   model (bytes each kernel must move per token, below) over the bandwidth of a device copy
   measured in the same run (``dst.copy_(src)`` of an H-sized tensor, read + write). Goals:
   apply kernels (width, depth and their backwards) >= 0.85 of the copy, coefficient kernels
   >= 0.75.
2. Per site, HC and FC, forward (no grad) and forward + backward (identity branch, so only the
   connection's own traffic counts): the fused kernels, the eager generic path (hcref_torch.ops
   with the kernels switched off), ``torch.compile`` of that eager path, and lucidrains'
   ``hyper_connections`` (HC only: its ``num_fracs`` is not the FC paper's FC, math.md 3.7), each
   as time over a plain residual. The plain residual is ``x + y`` forward (3 N d b bytes) and one
   more add of the same size backward (the skip gradient plus the branch-input gradient: 6 N d b
   bytes in all). Goals: HC site fwd+bwd <= 8x the residual (traffic floor about 6.8x), fused at
   least 5x faster than lucidrains fwd+bwd.
3. The largest relative difference between the fused site and the eager path (outputs and every
   gradient), on a GPU in float32, bfloat16 and float16: the check that the GPU-only code paths
   (the bfloat16 tensor-core split dot, TF32x3 dots) agree with the generic path.
4. Errors of every kernel op, forward and VJP, against the float64 NumPy reference on the same
   rounded inputs, in float64, float32, bfloat16 and float16.

I/O model per token (b = bytes per state element, 4 for the float32 coefficients; the state is
K rows of width w, K*w = n*d for HC and d for FC; h0 and y have d elements; c = coefficient
columns): coefficients read H (K w b) and write alpha, beta, the saved pre-activations and row
statistics (about 4 (2c + K + 5) K bytes); with h0 (site) + d b, with H_res + K w b (the second
read of H is assumed to hit L2); coefficient backward reads H and writes G_H (2 K w b); the
site's first backward pass reads H, G_h0, G_H_res ((2 K w + d) b), the second also writes G_H
((3 K w + d) b; it is timed together with the first, which it launches); width reads H, writes
h0 and H_res ((2 K w + d) b); depth reads H_res and y, writes H_out ((2 K w + d) b), the fused
depth the same from H; width backward reads H, G_h0, G_H_res and writes G_H ((3 K w + d) b);
depth backward reads G and y and writes G_y ((K w + 2 d) b). Parameters and weights are read
once per program (L2) and not counted.

mHC (mHC paper, arXiv 2512.24880; tables 1, 2 and 4 have mHC rows, site = ``mhc_coeffs``,
``mhc_pre``, identity branch, ``mhc_post``; parameters float32 with phi ~ N(0, 1/(n d))). I/O model
per token, L = n d state elements, C = 2n + n^2 coefficients, CP = 2 NP^2 packed columns
(NP = max(4, n) rounded up to a power of two), K = Sinkhorn iterations: coefficient forward reads
H and writes the coefficients, z and two statistics (L b + 4 (C + CP + 2)); coefficient backward
(epilogue kernel, then projection kernel) reads H and writes G_H (2 L b), plus the cotangents,
z, the packed gradients and the Sinkhorn scratch of 2 K NP numbers written and read back
(4 (C + 5 CP + 3) + 16 K NP); pre forward reads H, writes h0 ((L + d) b); pre backward reads H
and G_h0, writes G_H ((2 L + d) b); post forward reads H and y, writes H_out ((2 L + d) b); post
backward reads G, H and y, writes G_H and G_y ((3 L + 2 d) b).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

_ON_CPU = not torch.cuda.is_available() and ("--quick" in sys.argv or "--errors-only" in sys.argv)
if _ON_CPU:  # before triton is imported: the interpreter runs the kernels on CPU tensors
    os.environ.setdefault("TRITON_INTERPRET", "1")

import hcref_torch.kernels as K  # noqa: E402
from hcref_torch import mhc as generic_mhc  # noqa: E402
from hcref_torch import ops as generic  # noqa: E402

import hcref  # noqa: E402

GOALS = {"apply": 0.85, "coefficients": 0.75}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class Timer:
    """Median wall time of a callable: CUDA events on a GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def once(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return float(start.elapsed_time(end)) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def interleaved(self, jobs: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, float]:
        for job in jobs.values():
            for _ in range(warmup):
                job()
        if self.cuda:
            torch.cuda.synchronize()
        times: dict[str, list[float]] = {name: [] for name in jobs}
        for _ in range(reps):
            for name, job in jobs.items():
                times[name].append(self.once(job))
        return {name: statistics.median(ts) for name, ts in times.items()}


def _params(family: str, k: int, d: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Dynamic layernorm parameters (float32, as production keeps them) with non-trivial weights."""
    g = torch.Generator().manual_seed(seed)
    init = hcref.init_hc(k, d, 1, dynamic=True) if family == "hc" else hcref.init_fc(k, d, dynamic=True)
    out = {}
    for key, value in init.items():
        t = torch.tensor(value, dtype=torch.float32)
        if key.startswith("W_"):
            t = torch.randn(t.shape, generator=g) / t.shape[0] ** 0.5
        out[key] = t.to(device)
    return out


# --- 1. per kernel ------------------------------------------------------------------------


def kernel_table(family: str, k: int, w: int, tokens: int, dtype: torch.dtype, device: torch.device,
                 timer: Timer, reps: int, warmup: int, copy_bw: float) -> list[dict[str, Any]]:
    from hcref_torch.kernels import _launch as L

    d = w if family == "hc" else k * w
    c = k + 1 if family == "hc" else 2 * k
    split = 1 if family == "hc" else k
    b = torch.finfo(dtype).bits // 8
    g = torch.Generator(device=device).manual_seed(1)
    H = torch.randn(tokens, k, w, device=device, dtype=dtype, generator=g)
    y = torch.randn(tokens, d, device=device, dtype=dtype, generator=g)
    G = torch.randn(tokens, k, w, device=device, dtype=dtype, generator=g)
    Gh0 = torch.randn(tokens, d, device=device, dtype=dtype, generator=g)
    p = _params(family, k, d, device, 2)
    static_alpha = (torch.cat([p["A_m"][:, None], p["A_r"]], 1) if family == "hc"
                    else torch.cat([p["Y"], p["A"]], 1))
    cargs = (p["W_alpha"], p["W_beta"], p["norm_weight"], p["norm_bias"], p["s_alpha"], p["s_beta"], static_alpha,
             p["B"])
    copt = {"norm": L.LAYER, "use_tanh": True, "use_scale": True, "split": split}
    alpha, beta, a, stats, _, _ = L.coeffs_forward(H, *cargs, mix=0, out_dtype=torch.float32, **copt)
    ga, gb = torch.randn_like(alpha), torch.randn_like(beta)
    state, small = k * w * b, d * b
    coef_small = 4 * (2 * c + k + 5) * k
    jobs: dict[str, tuple[str, int, Callable[[], object]]] = {
        "coeffs fwd": ("coefficients", state + coef_small,
                       lambda: L.coeffs_forward(H, *cargs, mix=0, out_dtype=torch.float32, **copt)),
        "site width fwd (coeffs+h0)": ("coefficients", state + small + coef_small,
                                       lambda: L.coeffs_forward(H, *cargs, mix=1, out_dtype=torch.float32, **copt)),
        "site width fwd (coeffs+h0+H_res)": ("coefficients", 2 * state + small + coef_small,
                                             lambda: L.coeffs_forward(H, *cargs, mix=2, out_dtype=torch.float32,
                                                                      **copt)),
        "coeffs bwd": ("coefficients", 2 * state + coef_small,
                       lambda: L.coeffs_backward(H, a, stats, ga, gb, None, None, *cargs, **copt)),
        "site bwd pass 1 (g_alpha)": ("apply", 2 * state + small + 4 * k * c,
                                      lambda: L.mix_backward(H, None, Gh0, G, split=split, write_gh=False,
                                                             g_alpha_dtype=torch.float32)),
        "site bwd (passes 1 + 2)": ("coefficients", 5 * state + 2 * small + coef_small,
                                    lambda: L.coeffs_backward(H, a, stats, ga, gb, Gh0, G, *cargs, **copt)),
        "width fwd": ("apply", 2 * state + small,
                      lambda: L.mix_forward(H, alpha, None, None, split=split, write_first=True, write_rest=True,
                                            fc=family == "fc", rest_dtype=dtype)),
        "width bwd": ("apply", 3 * state + small,
                      lambda: L.mix_backward(H, alpha, Gh0, G, split=split, write_gh=True,
                                             g_alpha_dtype=torch.float32)),
        "depth fwd": ("apply", 2 * state + small,
                      lambda: L.write_forward(y, H, beta, fc=family == "fc", out_dtype=dtype)),
        "fused depth fwd (from H)": ("apply", 2 * state + small,
                                     lambda: L.mix_forward(H, alpha, y, beta, split=split, write_first=False,
                                                           write_rest=True, fc=family == "fc", rest_dtype=dtype)),
        "depth bwd": ("apply", state + 2 * small, lambda: L.write_backward(G, y, beta, fc=family == "fc")),
    }
    times = timer.interleaved({name: job for name, (_, _, job) in jobs.items()}, reps, warmup)
    rows = []
    for name, (kind, per_token, _) in jobs.items():
        bw = per_token * tokens / times[name]
        rows.append({"family": family, "kernel": name, "kind": kind, "bytes/token": per_token,
                     "ms": 1e3 * times[name], "GB/s": bw / 1e9, "of copy": bw / copy_bw, "goal": GOALS[kind]})
    return rows


# --- 2. per site --------------------------------------------------------------------------


def _generic_site(family: str, opts: dict[str, Any]) -> Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]:
    def site(H: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        alpha, beta = getattr(generic, f"{family}_coeffs")(H, params, **opts)
        h0, H_res = getattr(generic, f"{family}_width")(H, alpha)
        return getattr(generic, f"{family}_depth")(h0, H_res, beta)  # identity branch

    return site


Run = Callable[[bool], tuple[torch.Tensor, list[torch.Tensor]]]


def site_candidates(family: str, k: int, w: int, tokens: int, dtype: torch.dtype, device: torch.device,
                    compile_backend: str | None) -> tuple[dict[str, Run], Any]:
    """name -> run(grad) returning (output, leaves whose .grad the backward fills)."""
    d = w if family == "hc" else k * w
    opts = {"norm": "layernorm", "use_tanh": True, "use_norm": True, "use_scale": True}
    g = torch.Generator(device=device).manual_seed(3)
    H0 = torch.randn(tokens, k, w, device=device, dtype=dtype, generator=g)
    p0 = _params(family, k, d, device, 4)
    x0 = torch.randn(tokens, d, device=device, dtype=dtype, generator=g)
    y0 = torch.randn(tokens, d, device=device, dtype=dtype, generator=g)
    eager = _generic_site(family, opts)
    compiled = None
    if compile_backend is not None:
        K.set_enabled(False)
        compiled = torch.compile(eager, backend=compile_backend)

    def leaves(grad: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        H = H0.detach().requires_grad_(grad)
        params = {key: v.detach().requires_grad_(grad) for key, v in p0.items()}
        return H, params

    def fused(grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        H, params = leaves(grad)
        out = getattr(K, f"{family}_site")(H, params, lambda h: h, **opts)
        return out, [H, *params.values()]

    def run_generic(fn: Callable[..., torch.Tensor]) -> Callable[[bool], tuple[torch.Tensor, list[torch.Tensor]]]:
        def go(grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
            H, params = leaves(grad)
            K.set_enabled(False)
            try:
                out = fn(H, params)
            finally:
                K.set_enabled(None)
            return out, [H, *params.values()]

        return go

    def residual(grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, y = x0.detach().requires_grad_(grad), y0.detach().requires_grad_(grad)
        return x + y, [x, y]

    cands: dict[str, Callable[[bool], tuple[torch.Tensor, list[torch.Tensor]]]] = {
        "plain residual": residual, "fused kernels": fused, "eager generic": run_generic(eager),
    }
    if compiled is not None:
        cands["compiled generic"] = run_generic(compiled)
    if family == "hc":
        from hyper_connections import HyperConnections as LucidHC

        lucid = LucidHC(k, dim=d, layer_index=1, tanh=True).to(device=device, dtype=dtype)
        H_lucid0 = H0.permute(1, 0, 2).reshape(k, tokens, d).contiguous()  # '(b s) t d' with b = 1

        def lucid_run(grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
            Hl = H_lucid0.detach().requires_grad_(grad)
            branch_input, add_residual = lucid(Hl)
            return add_residual(branch_input), [Hl, *lucid.parameters()]

        cands["lucidrains"] = lucid_run
    return cands, opts


def site_table(family: str, k: int, w: int, tokens: int, dtype: torch.dtype, device: torch.device, timer: Timer,
               reps: int, warmup: int, compile_backend: str | None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    if family == "mhc":
        cands = mhc_site_candidates(k, w, tokens, dtype, device, compile_backend)
    else:
        cands, _ = site_candidates(family, k, w, tokens, dtype, device, compile_backend)
    rows: list[dict[str, Any]] = []
    medians: dict[tuple[str, str], float] = {}
    for mode in ("fwd", "fwd+bwd"):
        jobs: dict[str, Callable[[], object]] = {}
        for name, run in cands.items():
            if mode == "fwd":
                def job(run: Any = run) -> object:
                    with torch.no_grad():
                        return run(False)[0]
            elif name == "plain residual":
                x, y = run(False)[1]

                def job(x: torch.Tensor = x, y: torch.Tensor = y) -> object:
                    out = x + y  # forward: 3 N d b
                    return out + y  # backward stand-in: skip gradient + branch-input gradient, 3 N d b
            else:
                G = torch.randn(run(False)[0].shape, device=device, dtype=dtype)

                def job(run: Any = run, G: torch.Tensor = G) -> object:
                    out, _ = run(True)
                    out.backward(G)
                    return None
            jobs[name] = job
        times = timer.interleaved(jobs, reps, warmup)
        for name, t in times.items():
            medians[(mode, name)] = t
    for (mode, name), t in medians.items():
        base = medians[(mode, "plain residual")]
        fused = medians[(mode, "fused kernels")]
        rows.append({"family": family, "mode": mode, "candidate": name, "ms": 1e3 * t, "x residual": t / base,
                     "x fused": t / fused})
    return rows, {f"{mode} {name}": t for (mode, name), t in medians.items()}


def agreement(family: str, k: int, w: int, tokens: int, dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """max |fused - eager| / max |eager| for the output and every gradient (one backward each)."""
    cands, _ = site_candidates(family, k, w, tokens, dtype, device, None)
    results = {}
    G = None
    for name in ("fused kernels", "eager generic"):
        out, leaves = cands[name](True)
        if G is None:
            gen = torch.Generator(device=device).manual_seed(5)
            G = torch.randn(out.shape, device=device, dtype=dtype, generator=gen)
        out.backward(G)
        results[name] = [out.detach(), *[leaf.grad for leaf in leaves]]
    names = ["output", "H", *[f"g {key}" for key in _params(family, k, w if family == "hc" else k * w, device, 0)]]
    errs = {}
    for label, a, b in zip(names, results["fused kernels"], results["eager generic"]):
        scale = b.double().abs().max().item() or 1.0
        errs[label] = (a.double() - b.double()).abs().max().item() / scale
    return errs


# --- mHC: per kernel, per site, agreement ---------------------------------------------------


def _mhc_params(n: int, d: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Dynamic mHC parameters (float32) from hcref.init_mhc with a random phi ~ N(0, 1/(n d))."""
    g = torch.Generator().manual_seed(seed)
    out = {key: torch.tensor(value, dtype=torch.float32) for key, value in hcref.init_mhc(n, d, 1).items()}
    out["phi"] = torch.randn(out["phi"].shape, generator=g) / (n * d) ** 0.5
    return {key: value.to(device) for key, value in out.items()}


def mhc_kernel_table(n: int, d: int, tokens: int, dtype: torch.dtype, device: torch.device, timer: Timer,
                     reps: int, warmup: int, copy_bw: float, iters: int = 20) -> list[dict[str, Any]]:
    from hcref_torch.kernels import _mhc_launch as M

    b = torch.finfo(dtype).bits // 8
    g = torch.Generator(device=device).manual_seed(6)
    H = torch.randn(tokens, n, d, device=device, dtype=dtype, generator=g)
    y = torch.randn(tokens, d, device=device, dtype=dtype, generator=g)
    G = torch.randn(tokens, n, d, device=device, dtype=dtype, generator=g)
    Gh0 = torch.randn(tokens, d, device=device, dtype=dtype, generator=g)
    p = _mhc_params(n, d, device, 7)
    C = 2 * n + n * n
    NP, CP = M.layout(n)
    e = p["b"].new_empty(0)
    fwd = {"n": n, "src": 1, "iters": iters, "eps": 0.0}
    h_pre, h_post, h_res, z, stats = M.coeffs_forward(H, p["phi"], p["b"], p["gates"], e, out_dtype=torch.float32,
                                                      **fwd)
    g_pre, g_post, g_res = torch.randn_like(h_pre), torch.randn_like(h_post), torch.randn_like(h_res)
    L = n * d
    jobs: dict[str, tuple[str, int, Callable[[], object]]] = {
        "mhc coeffs fwd": ("coefficients", L * b + 4 * (C + CP + 2),
                           lambda: M.coeffs_forward(H, p["phi"], p["b"], p["gates"], e, out_dtype=torch.float32,
                                                    **fwd)),
        "mhc coeffs bwd": ("coefficients", 2 * L * b + 4 * (C + 5 * CP + 3) + 16 * iters * NP,
                           lambda: M.coeffs_backward(H, z, stats, g_pre, g_post, g_res, p["phi"], p["b"],
                                                     p["gates"], **fwd)),
        "mhc pre fwd": ("apply", (L + d) * b, lambda: M.pre_forward(H, h_pre, torch.float32)),
        "mhc pre bwd": ("apply", (2 * L + d) * b, lambda: M.pre_backward(Gh0, H, h_pre, torch.float32)),
        "mhc post fwd": ("apply", (2 * L + d) * b,
                         lambda: M.post_forward(y, H, h_post, h_res, torch.float32, dtype)),
        "mhc post bwd": ("apply", (3 * L + 2 * d) * b,
                                    lambda: M.post_backward(G, y, H, h_post, h_res, torch.float32)),
    }
    times = timer.interleaved({name: job for name, (_, _, job) in jobs.items()}, reps, warmup)
    rows = []
    for name, (kind, per_token, _) in jobs.items():
        bw = per_token * tokens / times[name]
        rows.append({"family": "mhc", "kernel": name, "kind": kind, "bytes/token": per_token,
                     "ms": 1e3 * times[name], "GB/s": bw / 1e9, "of copy": bw / copy_bw, "goal": GOALS[kind]})
    return rows


def _mhc_site(ops: Any) -> Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]:
    def site(H: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        h_pre, h_post, h_res = ops.mhc_coeffs(H, params)
        return ops.mhc_post(ops.mhc_pre(H, h_pre), H, h_post, h_res)  # identity branch

    return site


def mhc_site_candidates(n: int, d: int, tokens: int, dtype: torch.dtype, device: torch.device,
                        compile_backend: str | None) -> dict[str, Run]:
    """name -> run(grad) for one mHC site (identity branch): the kernels (hcref_torch.kernels'
    functional ops), the eager generic path (hcref_torch.mhc with the kernels switched off),
    torch.compile of it, and the plain residual."""
    g = torch.Generator(device=device).manual_seed(8)
    H0 = torch.randn(tokens, n, d, device=device, dtype=dtype, generator=g)
    p0 = _mhc_params(n, d, device, 9)
    x0 = torch.randn(tokens, d, device=device, dtype=dtype, generator=g)
    y0 = torch.randn(tokens, d, device=device, dtype=dtype, generator=g)
    eager = _mhc_site(generic_mhc)
    kernels = _mhc_site(K)

    def leaves(grad: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return H0.detach().requires_grad_(grad), {key: v.detach().requires_grad_(grad) for key, v in p0.items()}

    def on(fn: Callable[..., torch.Tensor], kernels_on: bool) -> Run:
        def go(grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
            H, params = leaves(grad)
            K.set_enabled(kernels_on)
            try:
                out = fn(H, params)
            finally:
                K.set_enabled(None)
            return out, [H, *params.values()]

        return go

    def residual(grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, y = x0.detach().requires_grad_(grad), y0.detach().requires_grad_(grad)
        return x + y, [x, y]

    cands: dict[str, Run] = {"plain residual": residual, "fused kernels": on(kernels, True),
                             "eager generic": on(eager, False)}
    if compile_backend is not None:
        cands["compiled generic"] = on(torch.compile(eager, backend=compile_backend), False)
    return cands


def mhc_agreement(n: int, d: int, tokens: int, dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """max |kernels - eager| / max |eager| for the mHC site's output and every gradient."""
    cands = mhc_site_candidates(n, d, tokens, dtype, device, None)
    results = {}
    G = None
    for name in ("fused kernels", "eager generic"):
        out, leaves = cands[name](True)
        if G is None:
            gen = torch.Generator(device=device).manual_seed(5)
            G = torch.randn(out.shape, device=device, dtype=dtype, generator=gen)
        out.backward(G)
        results[name] = [out.detach(), *[leaf.grad for leaf in leaves]]
    names = ["output", "H", *[f"g {key}" for key in _mhc_params(n, d, device, 0)]]
    errs = {}
    for label, a, b in zip(names, results["fused kernels"], results["eager generic"]):
        scale = b.double().abs().max().item() or 1.0
        errs[label] = (a.double() - b.double()).abs().max().item() / scale
    return errs


# --- 4. errors against the reference -------------------------------------------------------------


def reference_errors(device: torch.device, tokens: int, n: int, d: int, m: int,
                     dtypes: tuple[str, ...]) -> dict[tuple[str, str], tuple[float, float]]:
    """Every kernel op of the contract through ``hcref_torch.kernels:backend`` (always the kernels)
    against the NumPy reference in float64 on the same rounded inputs: (forward, VJP) as
    max |out - ref| / max |ref| (the VJP's cotangents judged as one vector, as the suite does).
    Dynamic layernorm coefficients with tanh and scales; random alpha/beta for width/depth."""
    import numpy as np

    from hcref.checks import random_inputs
    from hcref.optable import ALL_OPS

    backend = K.backend
    rng = np.random.default_rng(0)
    e = d // m
    shapes = {"hc": (n, d, d), "fc": (m, e, d)}
    cases = {}
    for family, (k, w, dd) in shapes.items():
        c = k + 1 if family == "hc" else 2 * k
        init = hcref.init_hc(k, dd, 1) if family == "hc" else hcref.init_fc(k, dd)
        params = {key: np.asarray(v) + 0.3 * rng.normal(size=np.shape(v)) for key, v in init.items()}
        H = rng.normal(size=(tokens, k, w))
        cases[f"{family}_coeffs"] = (H, params)
        cases[f"{family}_width"] = (H, rng.normal(size=(tokens, k, c)))
        cases[f"{family}_depth"] = (rng.normal(size=(tokens, dd)), H, rng.normal(size=(tokens, k)))
    for name in ("sinkhorn", "mhc_coeffs", "mhc_pre", "mhc_post"):  # mHC: iters 20, eps 0
        cases[name] = random_inputs(name, rng, (tokens,), n, d)
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for dtype in dtypes:
        for name, inputs in cases.items():
            spec = ALL_OPS[name]
            native = [{k: backend.asarray(v, dtype, device.type) for k, v in x.items()} if isinstance(x, dict)
                      else backend.asarray(x, dtype, device.type) for x in inputs]
            ref_in = [{k: backend.to_numpy(v).astype(np.float64) for k, v in x.items()} if isinstance(x, dict)
                      else backend.to_numpy(x).astype(np.float64) for x in native]
            ref = getattr(hcref, name)(*ref_in)
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = getattr(backend, name)(*native)
            got = got if isinstance(got, tuple) else (got,)
            fwd = max(float(np.abs(backend.to_numpy(g) - r).max() / np.abs(r).max()) for g, r in zip(got, ref))
            cots = [rng.normal(size=r.shape) for r in ref]
            expected = getattr(hcref, spec.vjp_name)(*ref_in, *cots)
            idx = [spec.inputs.index(a) for a in spec.differentiable]

            def fn(*primals: Any, name: str = name, native: list[Any] = native, idx: list[int] = idx) -> Any:
                args = list(native)
                for i, p in zip(idx, primals):
                    args[i] = p
                return getattr(backend, name)(*args)

            grads = backend.vjp(fn, [native[i] for i in idx], [backend.asarray(c, dtype, device.type) for c in cots])
            flat_g, flat_r = [], []
            for g, r in zip(grads, expected):
                if isinstance(r, dict):
                    flat_g += [backend.to_numpy(g[key]).astype(np.float64).ravel() for key in sorted(r)]
                    flat_r += [np.asarray(r[key], dtype=np.float64).ravel() for key in sorted(r)]
                else:
                    flat_g.append(backend.to_numpy(g).astype(np.float64).ravel())
                    flat_r.append(np.asarray(r, dtype=np.float64).ravel())
            allr = np.concatenate(flat_r)
            vjp = float(np.abs(np.concatenate(flat_g) - allr).max() / np.abs(allr).max())
            out[(name, dtype)] = (fwd, vjp)
    return out


# --- main ---------------------------------------------------------------------------------


def copy_bandwidth(numel: int, dtype: torch.dtype, device: torch.device, timer: Timer, reps: int, warmup: int) -> float:
    src = torch.randn(numel, device=device, dtype=torch.float32).to(dtype)
    dst = torch.empty_like(src)
    t = timer.interleaved({"copy": lambda: dst.copy_(src)}, reps, warmup)["copy"]
    return 2 * src.numel() * src.element_size() / t


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 repetition (smoke run; CPU interpreter)")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--m", type=int, default=4)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the eager path "
                        "('none' to skip)")
    parser.add_argument("--errors-only", action="store_true", help="only the table of errors against the "
                        "reference (64 tokens, d = 256; runs on CPU under the interpreter too)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.errors_only:
        return {"errors": print_errors(torch.device("cuda" if cuda else "cpu"), 64, args.n, 256, args.m)}
    if args.quick:
        args.tokens, args.d, args.reps, args.warmup = 8, 64, 1, 0
        if not cuda:
            args.dtype, args.compile_backend = "float32", "none"
    if not cuda and not args.quick:
        parser.error("no CUDA device: this benchmark needs a GPU (use --quick for a CPU smoke run)")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = DTYPES[args.dtype]
    compile_backend = None if args.compile_backend == "none" else args.compile_backend
    if compile_backend is not None:
        from torch._dynamo import trace_rules

        if trace_rules.check_file(generic.__file__).skipped:
            print("warning: torch.compile skips this checkout's files (dynamo skips paths containing "
                  "'triton/backends'); 'compiled generic' then runs eagerly")
    timer = Timer(device)
    name = torch.cuda.get_device_name(device) if cuda else "CPU (Triton interpreter; figures are meaningless)"
    print(f"device: {name}; torch {torch.__version__}; dtype {args.dtype}; N = {args.tokens} tokens, d = {args.d}, "
          f"n = {args.n}, m = {args.m}; {args.reps} reps after {args.warmup} warm-up, medians")
    copy_bw = copy_bandwidth(args.tokens * args.n * args.d, dtype, device, timer, args.reps, args.warmup)
    print(f"device copy (read + write) of an H-sized tensor: {copy_bw / 1e9:.0f} GB/s\n")

    shapes = {"hc": (args.n, args.d), "fc": (args.m, args.d // args.m)}
    kernel_rows: list[dict[str, Any]] = []
    for family, (k, w) in shapes.items():
        kernel_rows += kernel_table(family, k, w, args.tokens, dtype, device, timer, args.reps, args.warmup, copy_bw)
    kernel_rows += mhc_kernel_table(args.n, args.d, args.tokens, dtype, device, timer, args.reps, args.warmup, copy_bw)
    print(f"{'fam':4} {'kernel':34} {'bytes/token':>11} {'ms':>9} {'GB/s':>8} {'of copy':>8} {'goal':>6}")
    for r in kernel_rows:
        flag = "-" if not cuda else "ok" if r["of copy"] >= r["goal"] else "BELOW"
        print(f"{r['family']:4} {r['kernel']:34} {r['bytes/token']:11d} {r['ms']:9.3f} {r['GB/s']:8.0f} "
              f"{r['of copy']:8.2f} {r['goal']:6.2f} {flag}")

    site_rows: list[dict[str, Any]] = []
    site_medians: dict[str, dict[str, float]] = {}
    for family, (k, w) in {**shapes, "mhc": (args.n, args.d)}.items():
        rows, med = site_table(family, k, w, args.tokens, dtype, device, timer, args.reps, args.warmup, compile_backend)
        site_rows += rows
        site_medians[family] = med
    print(f"\n{'fam':4} {'mode':8} {'candidate':17} {'ms':>9} {'x residual':>11} {'x fused':>8}")
    for r in site_rows:
        print(f"{r['family']:4} {r['mode']:8} {r['candidate']:17} {r['ms']:9.3f} {r['x residual']:11.2f} "
              f"{r['x fused']:8.2f}")
    hc = site_medians["hc"]
    over = hc["fwd+bwd fused kernels"] / hc["fwd+bwd plain residual"]
    verdict = (lambda ok: "ok" if ok else "MISSED") if cuda else (lambda ok: "not judged on CPU")
    print(f"\ngoal: HC site fwd+bwd <= 8x the plain residual: {over:.2f}x ({verdict(over <= 8)})")
    if "fwd+bwd lucidrains" in hc:
        speedup = hc["fwd+bwd lucidrains"] / hc["fwd+bwd fused kernels"]
        print(f"goal: fused >= 5x faster than lucidrains fwd+bwd: {speedup:.2f}x ({verdict(speedup >= 5)})")
    mhc = site_medians["mhc"]
    for mode in ("fwd", "fwd+bwd"):
        print(f"mHC site {mode}: {mhc[f'{mode} fused kernels'] / mhc[f'{mode} plain residual']:.2f}x the plain "
              f"residual, eager generic {mhc[f'{mode} eager generic'] / mhc[f'{mode} fused kernels']:.2f}x the kernels"
              + (f", compiled generic {mhc[f'{mode} compiled generic'] / mhc[f'{mode} fused kernels']:.2f}x"
                 if f"{mode} compiled generic" in mhc else ""))

    check_tokens = min(args.tokens, 4096)
    print(f"\nfused site vs eager generic path at N = {check_tokens}, max |fused - eager| / max |eager|:")
    agree: dict[str, dict[str, float]] = {}
    for check_dtype in ((args.dtype,) if not cuda else ("float32", "bfloat16", "float16")):
        for family, (k, w) in shapes.items():
            errs = agreement(family, k, w, check_tokens, DTYPES[check_dtype], device)
            agree[f"{family} {check_dtype}"] = errs
            print(f"  {family} {check_dtype:8}: " + ", ".join(f"{key} {v:.1e}" for key, v in errs.items()))
        errs = mhc_agreement(args.n, args.d, check_tokens, DTYPES[check_dtype], device)
        agree[f"mhc {check_dtype}"] = errs
        print(f"  mhc {check_dtype:8}: " + ", ".join(f"{key} {v:.1e}" for key, v in errs.items()))
    errors = print_errors(device, 8 if args.quick else 64, args.n, 64 if args.quick else 256, args.m)
    return {"copy_bw": copy_bw, "kernels": kernel_rows, "sites": site_rows, "agreement": agree, "errors": errors}


def print_errors(device: torch.device, tokens: int, n: int, d: int, m: int
                 ) -> dict[tuple[str, str], tuple[float, float]]:
    dtypes = ("float64", "float32", "bfloat16", "float16")
    errs = reference_errors(device, tokens, n, d, m, dtypes)
    print(f"\nerrors against the float64 reference (N = {tokens}, n = {n}, d = {d}, m = {m}; forward / VJP, "
          "max |out - ref| / max |ref|):")
    print(f"{'op':10} " + " ".join(f"{dt:>19}" for dt in dtypes))
    for name in dict.fromkeys(op for op, _ in errs):
        print(f"{name:10} " + " ".join(f"{errs[(name, dt)][0]:9.1e} {errs[(name, dt)][1]:9.1e}" for dt in dtypes))
    return errs


if __name__ == "__main__":
    main()
