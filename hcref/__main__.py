"""``python -m hcref``: the reference's self-checks, as a report.

For every op of the contract (HC, FC and mHC), the hand-derived VJP against float64 central
differences along random directions on random shapes and parameters (:mod:`hcref.checks`;
mHC: Sinkhorn iterations 1, 3 or 20, the paper or V4's eps), then the papers' Pre-Norm
equivalence at init (HC: ``reduce / n``, FC: exact, mHC ``hc_like`` and ``zero``:
``reduce / n`` with scale-invariant sublayers). Exit status 1 if any check exceeds its
tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import __version__
from .checks import check_op, random_inputs
from .init import init_fc, init_hc, init_mhc
from .network import init_mlp, mlp, stack
from .optable import ALL_OPS

FD_TOLERANCE = 1e-7
"""Normalised directional error allowed (measured worst: about 1e-10)."""


def _fd_row(name: str, examples: int, rng: np.random.Generator) -> tuple[float, int]:
    family = ALL_OPS[name].family
    fc_like = family == "fc" or name.startswith("frac")
    worst = 0.0
    for _ in range(examples):
        k = int(rng.integers(1, 5 if fc_like else 9))
        w = int(rng.integers(1, 64 // k + 1 if fc_like else 17 if family == "mhc" else 65))
        lead = tuple(int(s) for s in rng.integers(1, 4, size=rng.integers(0, 4)))
        options: dict[str, object] = {}
        param_kw: dict[str, object] = {}
        if family == "mhc":
            options = {key: value for key, value in _mhc_options(rng).items() if key in ALL_OPS[name].options}
            param_kw = {"dynamic": bool(rng.integers(0, 2))}
        elif name.endswith("_coeffs"):
            norm = str(rng.choice(["layernorm", "rmsnorm", "none"]))
            flags = rng.integers(0, 2, size=3).astype(bool)
            options = {"norm": norm, "use_tanh": bool(flags[0]), "use_norm": bool(flags[1]),
                       "use_scale": bool(flags[2])}
            param_kw = {"dynamic": bool(rng.integers(0, 2)), "norm": norm}
        primals = random_inputs(name, rng, lead, k, w, **param_kw)
        worst = max(worst, check_op(name, primals, rng, **options).error)
    return worst, examples


def _mhc_options(rng: np.random.Generator) -> dict[str, object]:
    return {"iters": int(rng.choice([1, 3, 20])), "eps": float(rng.choice([0.0, 1e-6]))}


def _prenorm_errors(rng: np.random.Generator) -> list[tuple[str, float, float]]:
    """(label, max abs difference, allowed) of every network against the Pre-Norm stack."""
    d, sites = 8, 6
    x = rng.standard_normal((4, d))
    weights = [init_mlp(d, 2 * d, rng) for _ in range(sites)]
    subs = [lambda h, w=w: mlp(w, h) for w in weights]
    plain = stack(x, subs, mode="residual")
    hc = stack(x, subs, mode="hc", connections=[init_hc(4, d, k) for k in range(sites)], rate=4)
    fc = stack(x, subs, mode="fc", connections=[init_fc(2, d) for _ in range(sites)], rate=2)
    rows = [("HC n=4, reduce/4", float(np.max(np.abs(hc / 4 - plain))), 1e-12),
            ("FC m=2, exact", float(np.max(np.abs(fc - plain))), 0.0)]
    # mHC reads (sum_i h_pre[i]) h: Pre-Norm needs sublayers whose norm is scale-invariant (eps 0)
    invariant = [lambda h, w=w: mlp(w, h, eps=0.0) for w in weights]
    plain = stack(x, invariant, mode="residual")
    for preset in ("hc_like", "zero"):
        conns = [init_mhc(4, d, k, preset=preset) for k in range(sites)]
        out = stack(x, invariant, mode="mhc", connections=conns, rate=4)
        rows.append((f"mHC n=4 {preset}, reduce/4", float(np.max(np.abs(out / 4 - plain))), 1e-12))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hcref", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="random cases per op (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    print(f"hcref {__version__} self-checks (float64, seed {args.seed})\n")
    print(f"{'op':<12} {'cases':>6} {'worst FD error':>15} {'tolerance':>10}  result")
    failed = 0
    for name in ALL_OPS:
        worst, count = _fd_row(name, args.examples, rng)
        ok = worst < FD_TOLERANCE
        failed += not ok
        print(f"{name:<12} {count:>6} {worst:>15.2e} {FD_TOLERANCE:>10.0e}  {'pass' if ok else 'FAIL'}")
    print("\nPre-Norm equivalence at init (6 MLP sublayers, max abs difference):")
    for label, err, tol in _prenorm_errors(rng):
        ok = err <= tol
        failed += not ok
        print(f"  {label:<28} {err:.2e} (allowed {tol:.0e})  {'pass' if ok else 'FAIL'}")
    print(f"\n{'all checks pass' if not failed else f'{failed} check(s) FAILED'} "
          f"in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
