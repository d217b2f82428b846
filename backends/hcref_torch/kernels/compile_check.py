"""Compile the kernels for a CUDA GPU ahead of time, without a GPU, and report their registers.

    python -m hcref_torch.kernels.compile_check              # every configuration, sm_90 (H100/H200)
    python -m hcref_torch.kernels.compile_check --quick      # the bfloat16 HC and mHC training paths only
    python -m hcref_torch.kernels.compile_check --arch 80    # A100

The launchers of :mod:`._launch` are called on small CPU tensors with their launch replaced by a
recorder, so every kernel is compiled with exactly the block sizes, modes and dtypes a GPU run
would use (N = 64 tokens here; the configuration does not depend on N). Each one goes through
Triton's whole pipeline (TTIR, TTGIR, LLVM, PTX, ``ptxas``) to a cubin, with the divisibility
specialisation a real launch gets (pointers and integers divisible by 16); registers and spills
come from ``cuobjdump --dump-resource-usage`` when Triton ships it. This proves the GPU code
paths compile and shows their occupancy; it does not run them (numbers need a GPU:
``benchmarks/bench_cuda.py``). Must run without ``TRITON_INTERPRET=1``. Exit status 1 when a
kernel fails to compile.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

import hcref

_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}
_SHOWN = ("K", "C", "BLOCK_T", "BLOCK_W", "NORM", "MODE", "PREC", "MIX", "HAS_GF", "WRITE_FIRST", "ADD_Y",
          "WRITE_GH", "FC", "N", "CP", "BLOCK_L", "SRC", "EPS_POS")


@contextmanager
def _recording(launch: Any) -> Iterator[list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]]]:
    calls: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]] = []
    real = launch._launch
    launch._launch = lambda name, kernel, grid, *args, **meta: calls.append((name, kernel, args, meta))
    try:
        yield calls
    finally:
        launch._launch = real


def _run_launchers(launch: Any, dtype: torch.dtype, family: str, k: int, w: int, quick: bool) -> None:
    d = w if family == "hc" else k * w
    c = k + 1 if family == "hc" else 2 * k
    split = 1 if family == "hc" else k
    fc = family == "fc"
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    init = hcref.init_hc(k, d, 1) if family == "hc" else hcref.init_fc(k, d)
    p = {key: torch.tensor(value, dtype=acc) for key, value in init.items()}
    static = torch.cat([p["A_m"][:, None], p["A_r"]], 1) if family == "hc" else torch.cat([p["Y"], p["A"]], 1)
    cargs = (p["W_alpha"], p["W_beta"], p["norm_weight"], p["norm_bias"], p["s_alpha"], p["s_beta"], static, p["B"])
    T = 64
    H = torch.zeros(T, k, w, dtype=dtype)
    y = torch.zeros(T, d, dtype=dtype)
    a, stats = torch.zeros(T * k, c + 1, dtype=acc), torch.zeros(T * k, 4, dtype=acc)
    alpha, beta = torch.zeros(T, k, c, dtype=acc), torch.zeros(T, k, dtype=acc)
    opts = {"use_tanh": True, "use_scale": True, "split": split}
    for norm in (launch.LAYER,) if quick else (launch.LAYER, launch.RMS, launch.NONE):
        for mix in (0, 1, 2):
            launch.coeffs_forward(H, *cargs, norm=norm, mix=mix, out_dtype=acc, **opts)
        launch.coeffs_backward(H, a, stats, alpha, beta, None, None, *cargs, norm=norm, **opts)
        launch.coeffs_backward(H, a, stats, alpha, beta, y, H, *cargs, norm=norm, **opts)
    launch.mix_forward(H, alpha, None, None, split=split, write_first=True, write_rest=True, fc=fc, rest_dtype=dtype)
    launch.mix_forward(H, alpha, y, beta, split=split, write_first=False, write_rest=True, fc=fc, rest_dtype=dtype)
    launch.mix_backward(H, alpha, y, H, split=split, write_gh=True, g_alpha_dtype=acc)
    launch.write_forward(y, H, beta, fc=fc, out_dtype=dtype)
    launch.write_backward(H, y, beta, fc=fc)


def _run_mhc_launchers(mlaunch: Any, dtype: torch.dtype, n: int, d: int, quick: bool) -> None:
    """The mHC launchers (coefficients dynamic / static / bare Sinkhorn, eps 0 and > 0, forward and
    backward; pre and post forward and backward) on zero tensors."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    T, C = 64, 2 * n + n * n
    _, CP = mlaunch.layout(n)
    H = torch.zeros(T, n, d, dtype=dtype)
    y = torch.zeros(T, d, dtype=dtype)
    phi, b, gates = torch.zeros(n * d, C, dtype=acc), torch.zeros(C, dtype=acc), torch.zeros(3, dtype=acc)
    Z, e = torch.zeros(T, CP, dtype=acc), b.new_empty(0)
    stats = torch.zeros(T, 2, dtype=acc)
    g_pre, g_res = torch.zeros(T, n, dtype=acc), torch.zeros(T, n, n, dtype=acc)
    for eps in (0.0,) if quick else (0.0, 1e-6):
        for src in (1, 0, 2):
            mlaunch.coeffs_forward(H if src == 1 else e, phi, b, gates, Z, n=n, src=src, iters=20, eps=eps,
                                   out_dtype=acc)
            zs = Z if src != 0 else Z[:0]
            mlaunch.coeffs_backward(H if src == 1 else e, zs, stats, g_pre, g_pre, g_res, phi, b, gates, n=n,
                                    src=src, iters=20, eps=eps)
    h_pre, h_res = torch.zeros(T, n, dtype=acc), torch.zeros(T, n, n, dtype=acc)
    mlaunch.pre_forward(H, h_pre, acc)
    mlaunch.pre_backward(y, H, h_pre, acc)
    mlaunch.post_forward(y, H, h_pre, h_res, acc, dtype)
    mlaunch.post_backward(H, y, H, h_pre, h_res, acc)


def _signature(
    kernel: Any, args: tuple[Any, ...], meta: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Any], dict[Any, Any]]:
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    attrs: dict[Any, Any] = {}
    for i, name in enumerate(kernel.arg_names):
        if i < len(args):
            arg = args[i]
            if isinstance(arg, torch.Tensor):
                signature[name] = "*" + _TYPES[arg.dtype]
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif isinstance(arg, float):
                signature[name] = "fp32"
            else:
                signature[name] = "i64" if abs(int(arg)) >= 2**31 else "i32"
                if int(arg) % 16 == 0 and int(arg) != 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "constexpr"
            constexprs[name] = meta[name]
    return signature, constexprs, attrs


def _usage(cubin: bytes) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return "(no cuobjdump)"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=False).stdout
    finally:
        os.unlink(f.name)
    return " ".join(part for part in out.split() if part.startswith(("REG:", "STACK:", "SHARED:")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: H100/H200)")
    parser.add_argument("--quick", action="store_true", help="bfloat16 HC (layernorm) and mHC (eps 0) only")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--m", type=int, default=4)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter builds no GPU code")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import _launch as launch
    from . import _mhc_launch as mlaunch

    dtypes = (torch.bfloat16,) if args.quick else (torch.bfloat16, torch.float16, torch.float32, torch.float64)
    families = (("hc", args.n, args.d),) if args.quick else (("hc", args.n, args.d), ("fc", args.m, args.d // args.m))
    with _recording(launch) as calls:
        for dtype in dtypes:
            for family, k, w in families:
                _run_launchers(launch, dtype, family, k, w, args.quick)
            _run_mhc_launchers(mlaunch, dtype, args.n, args.d, args.quick)
    target = GPUTarget("cuda", args.arch, 32)
    seen: set[str] = set()
    failed = 0
    for name, kernel, kargs, meta in calls:
        signature, constexprs, attrs = _signature(kernel, kargs, meta)
        key = repr((name, sorted(signature.items()), sorted(constexprs.items()), sorted(attrs), meta["num_warps"]))
        if key in seen:
            continue
        seen.add(key)
        shown = {k: v for k, v in constexprs.items() if k in _SHOWN}
        data = next(v for v in signature.values() if v.startswith("*"))
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                                      target=target, options={"num_warps": meta["num_warps"]})
            status = "ok  " + _usage(compiled.asm["cubin"])
        except Exception as exc:  # report every failure, then exit 1
            failed += 1
            root: BaseException = exc
            while root.__cause__ is not None:  # the innermost error says what went wrong
                root = root.__cause__
            status = f"FAILED {type(exc).__name__}: {str(exc)[:300]} ... {type(root).__name__}: {str(root)[:300]}"
        print(f"{name:10} {data:6} warps={meta['num_warps']} {shown} {status}", flush=True)
    print(f"{len(seen)} kernels compiled for sm_{args.arch}, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
