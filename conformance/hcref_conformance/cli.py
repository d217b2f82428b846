"""Command line: ``python -m hcref_conformance --backend MODULE[:ATTR] [options] [-- pytest args]``.

``--all`` runs the suite over every installed first-party backend (``hcref_numpy``,
``hcref_torch``, ``hcref_jax``, ``hcref_mlx``), each in its own interpreter, and prints one
summary line per backend (absent ones are reported as "not installed").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from .loading import FIRST_PARTY, is_installed

ALL_MAX_EXAMPLES = 5
"""Default ``--max-examples`` of ``--all`` (the quick main-job check)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (the options mirror the pytest plugin's)."""
    from .options import NO_SHRINK, OPTIONS

    parser = argparse.ArgumentParser(
        prog="python -m hcref_conformance",
        description="Run the hcref conformance suite against a backend. Arguments after '--' go to pytest.",
    )
    for option, env, text in OPTIONS:
        parser.add_argument(option, default=None, help=f"{text} [env {env}]")
    parser.add_argument(NO_SHRINK[0], action="store_true", help=f"{NO_SHRINK[2]} [env {NO_SHRINK[1]}=1]")
    parser.add_argument("--all", action="store_true",
                        help=f"run every installed first-party backend ({', '.join(FIRST_PARTY)}); "
                        f"default --max-examples {ALL_MAX_EXAMPLES}")
    parser.add_argument("-q", "--quiet", action="store_true", help="less pytest output")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="--all: backends run at the same time (default: 2, or 1 on one core)")
    return parser


def pytest_args(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The pytest command line for one backend."""
    head = ["-p", "hcref_conformance.plugin", "-p", "no:cacheprovider", "--pyargs", "hcref_conformance",
            "-q" if args.quiet else "-v", "--tb=short", "-rN"]
    return head + _suite_options(args) + list(extra)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 when every test passed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if args.all:
        if args.backend:
            print("error: --all and --backend exclude each other", file=sys.stderr)
            return 2
        return run_all(args, extra)
    if not (args.backend or os.environ.get("HCREF_BACKEND")):
        print("error: no backend given: pass --backend MODULE[:ATTR] (or set HCREF_BACKEND), or --all",
              file=sys.stderr)
        return 2
    import pytest

    return int(pytest.main(pytest_args(args, extra)))


def run_all(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run each installed first-party backend in a fresh interpreter (``--jobs`` at a time) and
    print each one's output and summary, then one line per backend with its runtime."""
    if args.max_examples is None:
        args.max_examples = str(ALL_MAX_EXAMPLES)
    args.quiet = True
    installed = [name for name in FIRST_PARTY if is_installed(name)]
    with tempfile.TemporaryDirectory() as tmp:
        running: dict[str, tuple[subprocess.Popen[bytes], float, str, str]] = {}
        done: dict[str, tuple[int, float, str, str]] = {}
        queue = list(installed)
        while queue or running:
            while queue and len(running) < max(1, args.jobs):
                name = queue.pop(0)
                report, log = os.path.join(tmp, f"{name}.json"), os.path.join(tmp, f"{name}.log")
                args.backend, args.report_json = name, report
                command = [sys.executable, "-m", "hcref_conformance", *pytest_args_for_cli(args), "--", *extra]
                with open(log, "wb") as handle:
                    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
                running[name] = (process, time.perf_counter(), report, log)
                print(f"started {name}: python {' '.join(command[1:])}", flush=True)
            time.sleep(0.2)
            for name, (process, start, report, log) in list(running.items()):
                if process.poll() is not None:
                    done[name] = (process.returncode, time.perf_counter() - start, report, log)
                    del running[name]
                    print(f"finished {name} in {done[name][1]:.1f}s", flush=True)
        lines = ["", "hcref conformance --all"]
        status = 0
        for name in FIRST_PARTY:
            if name not in done:
                lines.append(f"  {name:<12} not installed")
                continue
            code, seconds, report, log = done[name]
            with open(log, encoding="utf-8", errors="replace") as handle:
                print(f"\n=== {name} ===\n{handle.read()}", end="")
            detail = ""
            if os.path.exists(report):
                with open(report, encoding="utf-8") as handle:
                    data = json.load(handle)
                detail = ", ".join(f"{v} {k}" for k, v in data["totals"].items() if v)
                failing = sorted({f"{r['op']}/{r['dtype']}" for r in data["rows"] if r["status"] == "FAIL"})
                if failing:
                    detail += "; failing: " + ", ".join(failing)
            verdict = "passed" if code == 0 else ("did not load" if code == 4 else "FAILED")
            status = status or code
            lines.append(f"  {name:<12} {verdict:<13} {seconds:7.1f}s  {detail}")
    print("\n".join(lines))
    return 1 if status else 0


def pytest_args_for_cli(args: argparse.Namespace) -> list[str]:
    """``args`` as options of this command line (for the per-backend subprocess of ``--all``)."""
    return (["-q"] if args.quiet else []) + _suite_options(args)


def _suite_options(args: argparse.Namespace) -> list[str]:
    """The suite's own options given in ``args`` (the same spelling on this command line and pytest's)."""
    from .options import OPTIONS

    out: list[str] = []
    for option, _, _ in OPTIONS:
        value = getattr(args, option.lstrip("-").replace("-", "_"))
        if value is not None:
            out += [option, str(value)]
    if args.no_shrink:
        out.append("--no-shrink")
    return out
