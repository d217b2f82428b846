"""Measure the worst errors of backends against the reference, to calibrate :mod:`hcref.tolerances`.

    python -m hcref_conformance.calibrate --backends hcref_numpy,hcref_torch --cases 200

For every op (forward and VJP), site, network and Pre-Norm check, ``--cases`` random cases
drawn like the thorough profile's free draws (k and w up to 16, every option, the suite's
scales) plus every fixed case run on each backend and dtype; every compared array contributes ``max|out - ref| / scale``
(``scale = max|ref|``, or the largest over a parameter mapping), the quantity that
:mod:`hcref.tolerances` bounds by ``rtol``. The worst value per dtype, kind (forward or
gradient) and group (op or composite) is printed with where it occurred, as a table to copy
into ``hcref/tolerances.py``. Failures against the current table are counted, not raised.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from hcref.interface import Support
from hcref.validation import NORMS

from . import compare
from .cases import Case
from .checks import OutOfRange, run_check
from .loading import BackendLoadError, load_backend
from .strategies import (
    COMPOSITES,
    LEAD_SIZES,
    MHC_EPS,
    MHC_ITERS,
    MIN_COMPOSITE_WIDTH,
    OP_NAMES,
    PROFILES,
    SCALES,
    family_of_op,
    has_coefficients,
    is_composite,
    special_cases,
)
from .subject import NotApplicable


def random_case(op: str, rng: np.random.Generator, dtype: str, max_rows: int = 16, max_width: int = 16) -> Case:
    """A case drawn from the space of the thorough profile's free draws (k, w up to 16)."""
    lead = tuple(int(rng.choice(LEAD_SIZES)) for _ in range(int(rng.integers(0, 3))))
    scales: tuple[float, ...] = SCALES[:2] if dtype == "float16" else SCALES
    if op == "sinkhorn":
        scales = (1.0,)
    fields: dict[str, Any] = {
        "lead": lead,
        "k": int(rng.integers(1, max_rows + 1)),
        "w": int(rng.integers(MIN_COMPOSITE_WIDTH if is_composite(op) else 1, max_width + 1)),
        "seed": int(rng.integers(0, 2**32)),
        "scale": float(scales[int(rng.integers(len(scales)))]),
    }
    if has_coefficients(op):
        fields.update(
            dynamic=bool(rng.integers(4) > 0), norm=str(NORMS[int(rng.integers(len(NORMS)))]),
            use_tanh=bool(rng.integers(4) > 0), use_norm=bool(rng.integers(4) > 0), use_scale=bool(rng.integers(4) > 0),
            init=op.endswith("_prenorm") or bool(rng.integers(4) == 0),
            layer_index=int(rng.integers(0, 2 * max_rows + 1)),
        )
        if family_of_op(op) == "mhc":  # mHC: Sinkhorn iterations and the V4 eps instead of norm and switches
            fields.update(iters=int(MHC_ITERS[int(rng.integers(len(MHC_ITERS)))]),
                          eps=float(MHC_EPS[int(rng.integers(len(MHC_EPS)))]))
    return Case(op=op, **fields)


def measure(specs: Sequence[str], dtypes: Sequence[str], cases: int, seed: int = 0,
            ops: Sequence[str] | None = None, max_rows: int = 16) -> dict[str, Any]:
    """Worst relative errors: ``{dtype: {"forward"|"gradient": {"op"|"composite": (value, where)}}}``."""
    worst: dict[str, dict[str, dict[str, list[Any]]]] = {}
    failures: dict[str, int] = {}
    current: dict[str, Any] = {}

    def observe(ctx: compare.Context, label: str, out: np.ndarray, ref: np.ndarray, scale: float | None,
                ratio: float) -> None:
        diff = np.abs(out.astype(np.float64) - ref)
        if diff.size == 0:
            return
        s = float(np.max(np.abs(ref))) if scale is None else scale
        kind = "gradient" if label.startswith("g_") else "forward"
        group = "composite" if ctx.check in ("site", "network", "prenorm") else "op"
        if s > 0:
            value = float(np.max(diff)) / s
        else:  # an all-zero reference: only atol applies, so record the absolute error apart
            value, group = float(np.max(diff)), group + "/zero-ref"
        slot = worst.setdefault(ctx.dtype, {}).setdefault(kind, {}).setdefault(group, [0.0, ""])
        if value > slot[0]:
            slot[0], slot[1] = value, f"{current['spec']} {ctx.op} {ctx.check} {label} {current['case']!r}"

    compare.OBSERVERS.append(observe)
    thorough = PROFILES["thorough"]
    try:
        for spec in specs:
            try:
                backend = load_backend(spec)
            except BackendLoadError as exc:
                print(f"skipping {spec}: {exc}")
                continue
            supported = [d for dev, d in backend.capabilities() if dev == "cpu"]
            for dtype in [d for d in dtypes if d in supported]:
                rng = np.random.default_rng(seed)
                for op in list(OP_NAMES) + list(COMPOSITES):
                    checks = ("forward", "vjp") if op in OP_NAMES else (op.split("_", 1)[1],)
                    drawn = [random_case(op, rng, dtype, max_rows) for _ in range(cases)]
                    if ops is not None and op not in ops:
                        continue
                    # extreme scales test finiteness (issue 13), not rounding: they are left out here
                    fixed = [c for _, c in special_cases(op, dtype, list(dtypes), thorough, Support())
                             if 1e-3 <= c.scale <= 1e2]
                    for case in drawn + fixed:
                        current.update(spec=spec, case=case)
                        for check in checks:
                            try:
                                run_check(check, backend, case, dtype=dtype)
                            except (OutOfRange, NotApplicable):
                                continue
                            except compare.ConformanceError:
                                key = f"{spec} {dtype} {op} {check}"
                                failures[key] = failures.get(key, 0) + 1
    finally:
        compare.OBSERVERS.remove(observe)
    return {"worst": worst, "failures_against_current_table": failures}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the calibration."""
    parser = argparse.ArgumentParser(prog="python -m hcref_conformance.calibrate", description=__doc__)
    parser.add_argument("--backends", default="hcref_numpy,hcref_torch,hcref_jax,hcref_mlx")
    parser.add_argument("--dtypes", default="float64,float32,bfloat16,float16")
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--ops", default=None, help="comma-separated ops / composite checks (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rows", type=int, default=16, help="largest k (n or m) drawn (default 16)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    ops = args.ops.split(",") if args.ops else None
    result = measure(args.backends.split(","), args.dtypes.split(","), args.cases, args.seed, ops, args.max_rows)
    for dtype, kinds in result["worst"].items():
        for kind, groups in kinds.items():
            for group, (value, where) in groups.items():
                print(f"{dtype:<9} {kind:<9} {group:<10} {value:.3e}   {where}")
    for key, count in sorted(result["failures_against_current_table"].items()):
        print(f"fails the current table: {key}: {count}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
