"""Command line: ``python -m hcref_conformance --backend SPEC [options] [-- pytest args]``.

``--all`` runs the suite over every installed first-party backend (``hcref_numpy``,
``hcref_torch``, ``hcref_jax``, ``hcref_mlx``), each in its own interpreter, two at a time on
two or more cores, with the ``quick`` profile unless ``--profile`` / ``--max-examples`` say
otherwise. It shows a progress line per backend as it goes (tqdm bars on a terminal), prints
each backend's summary as it finishes and one line per backend at the end, and writes one
combined JSON report and one combined Markdown report: ``conformance-report.json`` and
``conformance-report.md`` in the current folder, or ``--report-json PATH`` and ``--report-md
PATH`` (the Markdown beside the JSON, with ``.md``, when only ``--report-json`` is given). The
combined JSON holds each backend's full report under ``backends.<name>``.

pytest and hypothesis are the suite's only dependencies (the ``conformance`` extra): without them
the command says which extra to install instead of failing on an import.
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
from typing import Any

from .loading import FIRST_PARTY, is_installed

ALL_PROFILE = "quick"
"""Default profile of ``--all`` (the main job)."""

DEFAULT_ALL_REPORT = "conformance-report.json"
"""Where ``--all`` writes its combined JSON report by default (the Markdown beside it)."""

INSTALL_HINT = 'pip install "hcref[conformance]"'


def missing_dependencies() -> list[str]:
    """The suite's dependencies (pytest, hypothesis) that cannot be imported here."""
    missing = []
    for name in ("pytest", "hypothesis"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (the options mirror the pytest plugin's)."""
    from .options import NO_SHRINK, OPTIONS

    parser = argparse.ArgumentParser(
        prog="python -m hcref_conformance",
        description="Run the hcref conformance suite against a port. Arguments after '--' go to pytest.",
    )
    for option, env, text in OPTIONS:
        parser.add_argument(option, default=None, help=f"{text} [env {env}]")
    parser.add_argument(NO_SHRINK[0], action="store_true", help=f"{NO_SHRINK[2]} [env {NO_SHRINK[1]}=1]")
    parser.add_argument("--all", action="store_true",
                        help=f"run every installed first-party backend ({', '.join(FIRST_PARTY)}) with the "
                        f"{ALL_PROFILE} profile; writes {DEFAULT_ALL_REPORT} and its .md unless --report-json/"
                        "--report-md say where")
    parser.add_argument("--only", default=None,
                        help="--all: comma-separated first-party backends to run (default: every installed one)")
    parser.add_argument("-q", "--quiet", action="store_true", help="less pytest output")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="--all: backends run at the same time (default: 2, or 1 on one core)")
    return parser


def pytest_args(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The pytest command line for one backend."""
    head = ["-p", "hcref_conformance.plugin", "-p", "no:cacheprovider", "--pyargs", "hcref_conformance",
            "-q" if args.quiet else "-v", "--tb=short", "-rN", "-o", f"faulthandler_timeout={STALL_SECONDS // 2}"]
    return head + _suite_options(args) + list(extra)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 when every test passed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    missing = missing_dependencies()
    if missing:
        print(f"error: the hcref conformance suite needs {' and '.join(missing)}, which "
              f"{'is' if len(missing) == 1 else 'are'} not installed here; install the conformance extra:\n"
              f"    {INSTALL_HINT}", file=sys.stderr)
        return 2
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


class _Progress:
    """Progress of the running backends: tqdm bars on a terminal, else a line every 15 s."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}
        self.last_line = time.perf_counter()
        self.tqdm: Any = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.tqdm = tqdm
            except ImportError:
                self.tqdm = None

    def update(self, name: str, done: int, total: int, seconds: float) -> None:
        if self.tqdm is not None:
            bar = self.bars.get(name)
            if bar is None:
                bar = self.tqdm(total=total or None, desc=f"{name:<12}", unit="test", position=len(self.bars),
                                leave=True, file=sys.stderr)
                self.bars[name] = bar
            if total and bar.total != total:
                bar.total = total
            bar.n = done
            bar.refresh()

    def line(self, states: dict[str, tuple[int, int, float]]) -> None:
        if self.tqdm is not None or not states or time.perf_counter() - self.last_line < 15:
            return
        self.last_line = time.perf_counter()
        print("  ".join(f"{name}: {done}/{total or '?'} tests, {seconds:.0f}s" for name, (done, total, seconds)
                        in states.items()), flush=True)

    def close(self, name: str) -> None:
        bar = self.bars.pop(name, None)
        if bar is not None:
            bar.close()


STALL_SECONDS = 600
"""``--all`` stops a backend that stays this long on one test (a hang in the framework) and
names the test; ``pytest``'s ``faulthandler_timeout`` dumps its stack first."""


def _read_progress(path: str) -> tuple[int, int, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            done, total, *current = handle.read().split(maxsplit=2)
        return int(done), int(total), current[0].strip() if current else ""
    except (OSError, ValueError):
        return 0, 0, ""


def run_all(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run each installed first-party backend in a fresh interpreter (``--jobs`` at a time), show
    progress, print each one's output as it finishes and a closing line per backend, and write the
    combined reports."""
    if args.profile is None and args.max_examples is None:
        args.profile = ALL_PROFILE
    report_json = os.path.abspath(args.report_json or DEFAULT_ALL_REPORT)
    report_md = os.path.abspath(args.report_md or os.path.splitext(report_json)[0] + ".md")
    args.quiet = True
    chosen = [n.strip() for n in args.only.split(",")] if args.only else list(FIRST_PARTY)
    unknown = [n for n in chosen if n not in FIRST_PARTY]
    if unknown:
        print(f"error: --only: unknown {unknown}; expected some of {FIRST_PARTY}", file=sys.stderr)
        return 2
    installed = [name for name in chosen if is_installed(name)]
    print(f"hcref conformance --all: {', '.join(installed) or 'no backend'} installed; profile "
          f"{args.profile or 'default'}; {max(1, args.jobs)} at a time; reports: {report_json}, {report_md}",
          flush=True)
    progress = _Progress()
    documents: dict[str, Any] = {}
    results: dict[str, tuple[int, float]] = {}
    stalled: dict[str, str] = {}
    watch: dict[str, tuple[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        running: dict[str, tuple[subprocess.Popen[bytes], float, str, str, str]] = {}
        queue = list(installed)
        while queue or running:
            while queue and len(running) < max(1, args.jobs):
                name = queue.pop(0)
                report, log = os.path.join(tmp, f"{name}.json"), os.path.join(tmp, f"{name}.log")
                progress_file = os.path.join(tmp, f"{name}.progress")
                args.backend, args.report_json, args.report_md = name, report, os.path.join(tmp, f"{name}.md")
                command = [sys.executable, "-m", "hcref_conformance", *pytest_args_for_cli(args), "--", *extra]
                env = {**os.environ, "HCREF_PROGRESS_FILE": progress_file}
                with open(log, "wb") as handle:
                    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
                running[name] = (process, time.perf_counter(), report, log, progress_file)
                print(f"started {name}: python {' '.join(command[1:])}", flush=True)
            time.sleep(0.5)
            states = {}
            for name, (process, start, report, log, progress_file) in list(running.items()):
                done, total, current = _read_progress(progress_file)
                now = time.perf_counter()
                seconds = now - start
                states[name] = (done, total, seconds)
                progress.update(name, done, total, seconds)
                if watch.get(name, ("", 0.0))[0] != f"{done} {current}":
                    watch[name] = (f"{done} {current}", now)
                elif current and now - watch[name][1] > STALL_SECONDS and process.poll() is None:
                    stalled[name] = current
                    process.kill()
                    process.wait()
                if process.poll() is None:
                    continue
                del running[name]
                progress.close(name)
                results[name] = (process.returncode, seconds)
                with open(log, encoding="utf-8", errors="replace") as handle:
                    print(f"\n=== {name} ({seconds:.1f}s) ===\n{_tail(handle.read())}", flush=True)
                if os.path.exists(report):
                    with open(report, encoding="utf-8") as handle:
                        documents[name] = json.load(handle)
            progress.line({k: v for k, v in states.items() if k in running})
    lines = ["", "hcref conformance --all"]
    status = 0
    summary = []
    for name in chosen:
        if name not in results:
            lines.append(f"  {name:<12} not installed")
            summary.append({"backend": name, "status": "not installed"})
            continue
        code, seconds = results[name]
        detail = ""
        doc = documents.get(name)
        if doc:
            detail = ", ".join(f"{v} {k}" for k, v in doc["totals"].items() if v)
            failing = sorted({f"{r['op']}/{r['dtype']}" for r in doc["rows"] if r["status"] == "FAIL"})
            if failing:
                detail += "; failing: " + ", ".join(failing)
        verdict = "passed" if code == 0 else ("did not load" if code == 4 else "FAILED")
        if name in stalled:
            verdict = "STALLED"
            detail = f"stopped after {STALL_SECONDS}s without progress in {stalled[name]}; " + detail
        status = status or code
        lines.append(f"  {name:<12} {verdict:<13} {seconds:7.1f}s  {detail}")
        summary.append({"backend": name, "status": verdict, "exitstatus": code, "seconds": round(seconds, 1)})
    _write_combined(report_json, report_md, summary, documents)
    lines.append(f"reports: {report_json}, {report_md}")
    print("\n".join(lines))
    return 1 if status else 0


def _tail(text: str, limit: int = 20000) -> str:
    return text if len(text) <= limit else "[... the log's start is left out; the reports hold every result]\n" + \
        text[-limit:]


def _write_combined(report_json: str, report_md: str, summary: list[dict[str, Any]],
                    documents: dict[str, Any]) -> None:
    from .report import markdown, write_json

    write_json(report_json, {"command": "python -m hcref_conformance --all", "summary": summary,
                             "backends": documents})
    lines = ["# hcref conformance --all", "", "| backend | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['backend']} | {s['status']} | {s.get('seconds', '')} |" for s in summary]
    body = "\n".join(lines) + "\n"
    for name in (s["backend"] for s in summary):
        if name in documents:
            body += "\n" + markdown(documents[name], level=2)
    with open(report_md, "w", encoding="utf-8") as handle:
        handle.write(body)


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
