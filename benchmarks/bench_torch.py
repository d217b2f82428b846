"""Speed of one dynamic HC site in PyTorch: hcref_torch (eager, compiled) against the plain residual
and lucidrains' ``hyper_connections``, and one dynamic mHC site (hcref_torch eager), timed in one
process, interleaved (each repetition runs every candidate once, in turn), medians reported.

    python benchmarks/bench_torch.py            # n=4, 4096 tokens, d=1024, float32
    python benchmarks/bench_torch.py --quick    # tiny shapes, 1 repetition (a smoke run)

Site: H (tokens, n, d) -> H_out with a branch ``identity`` or ``mlp`` (d -> 4d -> d, GELU).
hcref_torch runs with ``norm="rmsnorm"`` to match lucidrains' RMSNorm (which has no eps under
its L2 normalisation, and a learned gain ``gamma + 1``); both compute tanh dynamic alpha and
beta with scales. The mHC site (``ManifoldHyperConnections``, mHC paper Eqs. 7-9: flattened n*d RMS
scaling, one projection to 2n+n^2 logits, sigmoid / 2 sigmoid / 20 Sinkhorn iterations, then
``h_res H + h_post y^T``) has random projections ``phi`` and the default ``hc_like`` biases and gates;
its rows have no lucidrains counterpart (the ``lucidrains/x`` column still divides lucidrains' HC
time by the mHC time). "fwd" is the forward under ``torch.no_grad()``; "fwd+bwd" is the forward and
``backward`` of ``sum(H_out * G)`` with gradients for H, the site's and the branch's parameters.

Memory ("peak MiB"): the peak resident memory one call adds, measured after the timings in the
same process: freed heap memory is handed back to the system (glibc ``malloc_trim``), the
process's peak-RSS mark is reset (Linux ``/proc/self/clear_refs``, value 5), the call runs once,
and the figure is ``VmHWM - VmRSS before the call`` (median of 3). For the figure to follow the
live buffers, glibc's ``mallopt`` is set first so that every new allocation of 64 KiB or more is
its own ``mmap`` and goes back to the system when freed (torch keeps no CPU cache of its own):
what is counted is the pages of every buffer alive at the call's peak that was not alive before it
(outputs, saved activations, temporaries), not the inputs or parameters (and, for fwd+bwd, not
the parameter gradients, which exist from the warm-up runs, as in a training loop). Where either
mechanism is missing (not Linux/glibc) the column says nan.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import hcref_torch
import torch
from hcref_torch.mhc_modules import ManifoldHyperConnections
from torch import nn


def _lucidrains(n: int, d: int, branch: nn.Module) -> nn.Module:
    from hyper_connections import HyperConnections as LucidHC

    return LucidHC(n, dim=d, branch=branch, layer_index=1, tanh=True)


def _randomise(hc: hcref_torch.HyperConnections, lucid: nn.Module | None, seed: int) -> None:
    """Non-trivial dynamic weights, the same in both implementations (so outputs can be compared)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key in ("W_alpha", "W_beta"):
            p = getattr(hc, key)
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5)
        if lucid is not None:
            lucid.dynamic_alpha_fn.copy_(hc.W_alpha)
            lucid.dynamic_beta_fn.copy_(hc.W_beta)
            lucid.static_alpha.copy_(torch.cat([hc.A_m[:, None], hc.A_r], dim=1))


def build(n: int, tokens: int, d: int, branch_kind: str, seed: int) -> dict[str, Callable[[], torch.Tensor]]:
    """The candidates as closures returning H_out in hcref's layout (tokens, n, d)."""
    torch.manual_seed(seed)
    if branch_kind == "mlp":
        branch: nn.Module = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
    else:
        branch = nn.Identity()
    hc = hcref_torch.HyperConnections(n, d, layer_index=1, norm="rmsnorm")
    lucid = _lucidrains(n, d, branch)
    _randomise(hc, lucid, seed)
    mhc = ManifoldHyperConnections(n, d, layer_index=1)
    with torch.no_grad():
        mhc.phi.copy_(torch.randn(mhc.phi.shape, generator=torch.Generator().manual_seed(seed)) / (n * d) ** 0.5)
    H = torch.randn(1, tokens, n, d)
    H_lucid = H.permute(0, 2, 1, 3).reshape(n, tokens, d).contiguous()  # '(b s) t d'
    x = H.sum(dim=-2)
    for t in (H, H_lucid, x):
        t.requires_grad_(True)

    def site(H: torch.Tensor) -> torch.Tensor:
        return hc(H, branch)

    compiled = torch.compile(site)

    def lucid_run() -> torch.Tensor:
        return lucid(H_lucid).reshape(1, n, tokens, d).permute(0, 2, 1, 3)

    return {
        "residual": lambda: x + branch(x),
        "hcref eager": lambda: site(H),
        "hcref compiled": lambda: compiled(H),
        "lucidrains": lucid_run,
        "hcref mHC eager": lambda: mhc(H, branch),
    }


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_probe_available() -> bool:
    """Whether this process can measure a call's peak extra RSS (Linux with glibc)."""
    try:
        _status_kib("VmHWM")
        ctypes.CDLL("libc.so.6").mallopt  # noqa: B018 (probe)
        _CLEAR_REFS.write_text("5")
    except (OSError, KeyError, AttributeError):
        return False
    return True


def _release_freed_memory() -> None:
    """glibc: allocations >= 64 KiB get their own mmap (returned on free); no dynamic threshold."""
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 64 * 1024)


def _peak_extra_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory one call of ``fn`` adds (MiB): VmHWM after the call minus VmRSS before,
    with freed heap pages handed back (``malloc_trim``) and the peak mark reset just before the call."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    _CLEAR_REFS.write_text("5")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def run(
    n: int, tokens: int, d: int, reps: int, warmup: int, seed: int, *, memory: bool = True
) -> dict[tuple[str, str, str], dict[str, float]]:
    """``{(branch, mode, candidate): {"seconds": median time, "peak_mib": peak extra memory}}``."""
    results: dict[tuple[str, str, str], dict[str, float]] = {}
    memory_jobs: list[tuple[tuple[str, str, str], Callable[[], object]]] = []
    for branch_kind in ("identity", "mlp"):
        cands = build(n, tokens, d, branch_kind, seed)
        with torch.no_grad():
            ref = cands["hcref eager"]()
            for name in ("hcref compiled", "lucidrains"):  # the same HC site; mHC has no counterpart here
                err = (cands[name]() - ref).abs().max().item() / ref.abs().max().item()
                print(f"[{branch_kind}] max |{name} - hcref eager| / max |hcref eager| = {err:.2e}")
        grads = {name: torch.randn_like(f().detach()) for name, f in cands.items()}

        def fwd(f: Callable[[], torch.Tensor]) -> Callable[[], object]:
            def go() -> object:
                with torch.no_grad():
                    f()
                return None

            return go

        def fwd_bwd(f: Callable[[], torch.Tensor], G: torch.Tensor) -> Callable[[], object]:
            def go() -> object:
                (f() * G).sum().backward()
                return None

            return go

        for mode in ("fwd", "fwd+bwd"):
            jobs = {name: fwd(f) if mode == "fwd" else fwd_bwd(f, grads[name]) for name, f in cands.items()}
            for job in jobs.values():
                for _ in range(warmup):
                    job()
            times: dict[str, list[float]] = {name: [] for name in jobs}
            for _ in range(reps):
                for name, job in jobs.items():
                    times[name].append(_time(job))
            for name, ts in times.items():
                results[(branch_kind, mode, name)] = {"seconds": statistics.median(ts), "peak_mib": float("nan")}
                memory_jobs.append(((branch_kind, mode, name), jobs[name]))
    if memory and memory_probe_available():
        _release_freed_memory()
        for key, job in memory_jobs:
            results[key]["peak_mib"] = statistics.median(_peak_extra_mib(job) for _ in range(3))
    return results


def report(results: dict[tuple[str, str, str], dict[str, float]], *, state_mib: float, x_mib: float) -> None:
    print(
        f"\n{'branch':9} {'mode':8} {'candidate':16} {'median ms':>10} {'vs residual':>12} {'lucidrains/x':>13}"
        f" {'peak MiB':>9} {'vs residual':>12}"
    )
    for (branch_kind, mode, name), r in results.items():
        base = results[(branch_kind, mode, "residual")]
        lucid = results[(branch_kind, mode, "lucidrains")]["seconds"]
        t, mem = r["seconds"], r["peak_mib"]
        mem_ratio = mem / base["peak_mib"] if base["peak_mib"] > 0 else float("nan")
        print(
            f"{branch_kind:9} {mode:8} {name:16} {1e3 * t:10.2f} {t / base['seconds']:11.2f}x {lucid / t:12.2f}x"
            f" {mem:9.1f} {mem_ratio:11.2f}x"
        )
    print(
        "\n'vs residual': time (memory) / plain residual time (memory); 'lucidrains/x': lucidrains time / this "
        "time (>1: faster);\n'peak MiB': peak resident memory one call adds (see the module docstring; nan: "
        f"not measurable here). For scale: H (tokens, n, d) float32 = {state_mib:.1f} MiB, x (tokens, d) = "
        f"{x_mib:.1f} MiB."
    )


def main(argv: list[str] | None = None) -> dict[tuple[str, str, str], dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 repetition (smoke run)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.d, args.reps, args.warmup = 16, 32, 1, 1
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"n={args.n} tokens={args.tokens} d={args.d} float32, reps={args.reps}"
    )
    results = run(args.n, args.tokens, args.d, args.reps, args.warmup, args.seed, memory=not args.no_memory)
    report(results, state_mib=4 * args.tokens * args.n * args.d / 2**20, x_mib=4 * args.tokens * args.d / 2**20)
    return results


if __name__ == "__main__":
    main()
