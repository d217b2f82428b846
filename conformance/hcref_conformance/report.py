"""The closing summary, the JSON report and the Markdown report.

The :class:`Recorder` collects, per (op, dtype, column), the outcome of every test, the worst
``error / tolerance`` over *all* compared examples (failing ones included: a failure of
7.9e13 shows as 7.9e13) with where it occurred, every distinct failure (grouped by output,
reason class and magnitude, each with its smallest input), the n/a counts by reason and the
verdict of every named property. The plugin fills it from the checks' comparisons and from
pytest's reports.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

COLUMNS = ("forward", "vjp", "composite", "prenorm", "errors")
"""Summary columns, in order."""

CHECK_COLUMN = {"forward": "forward", "vjp": "vjp", "site": "composite", "network": "composite",
                "prenorm": "prenorm", "errors": "errors"}
"""The column of each check."""


@dataclass
class Cell:
    """Outcome of one (op, dtype, column): counts of test outcomes, the worst ratio and where."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    xfailed: int = 0
    xpassed: int = 0
    na: int = 0
    worst: float = 0.0
    worst_where: str = ""
    largest_rel: float = 0.0
    largest_where: str = ""
    reasons: set[str] = field(default_factory=set)

    @property
    def status(self) -> str:
        """``FAIL``, ``xfail``, ``pass``, ``skip``, ``n/a`` or ``-`` (nothing ran)."""
        if self.failed:
            return "FAIL"
        if self.xfailed:
            return "xfail"
        if self.passed or self.xpassed:
            return "pass"
        if self.na:
            return "n/a"
        return "skip" if self.skipped else "-"

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "worst_error_over_tolerance": _num(self.worst), "worst_at": self.worst_where,
                "largest_relative_error": _num(self.largest_rel), "largest_at": self.largest_where,
                "reasons": sorted(self.reasons), "passed": self.passed, "failed": self.failed,
                "skipped": self.skipped, "xfailed": self.xfailed, "na": self.na}


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"


def magnitude(rel: float) -> str:
    """A coarse class of a relative error, so that an epsilon-sized and an O(1) failure of the
    same output are kept apart."""
    if not math.isfinite(rel):
        return "non-finite"
    for bound, name in ((1e-6, "tiny (<1e-6)"), (1e-3, "small (<1e-3)"), (1e-1, "large (<0.1)")):
        if rel < bound:
            return name
    return "O(1)"


@dataclass
class Recorder:
    """Session-wide collector of results."""

    cells: dict[tuple[str, str, str], Cell] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    properties: list[dict[str, Any]] = field(default_factory=list)
    na_reasons: Counter[str] = field(default_factory=Counter)
    skip_reasons: Counter[str] = field(default_factory=Counter)

    def __repr__(self) -> str:  # never dump the whole table into a log
        return f"<Recorder: {len(self.cells)} cells, {len(self.failures)} failures>"

    def cell(self, op: str, dtype: str, column: str) -> Cell:
        """The cell of (op, dtype, column), created empty."""
        return self.cells.setdefault((op, dtype, column), Cell())

    def observe(self, op: str, dtype: str, check: str, label: str, ratio: float, rel: float, where: str) -> None:
        """Note one comparison (passing or failing)."""
        cell = self.cell(op, dtype, CHECK_COLUMN.get(check, check))
        if ratio > cell.worst or not cell.worst_where:
            cell.worst, cell.worst_where = max(ratio, cell.worst), f"{label} in {where}"
        if rel > cell.largest_rel:
            cell.largest_rel, cell.largest_where = rel, f"{label} in {where}"

    def outcome(self, op: str, dtype: str, column: str, outcome: str, reason: str = "") -> None:
        """Count one test outcome (``passed``, ``failed``, ``skipped``, ``xfailed``, ``xpassed``, ``na``)."""
        cell = self.cell(op, dtype, column)
        setattr(cell, outcome, getattr(cell, outcome) + 1)
        if outcome == "na":
            self.na_reasons[reason] += 1
        elif outcome == "skipped" and reason:
            self.skip_reasons[reason] += 1

    def failure(self, entry: dict[str, Any]) -> None:
        """Keep one distinct failure (op, dtype, check, reason, label, magnitude, count, message, ...)."""
        cell = self.cell(entry["op"], entry["dtype"], CHECK_COLUMN.get(entry["check"], entry["check"]))
        cell.reasons.add(entry["reason"])
        ratio = entry.get("worst_ratio", math.inf)
        if ratio > cell.worst:
            cell.worst, cell.worst_where = ratio, f"{entry['label']} in {entry['case']}"
        self.failures.append(entry)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (op, dtype): the status of every column and the worst ratio."""
        keys = sorted({(op, dtype) for op, dtype, c in self.cells if c in COLUMNS}, key=_row_order)
        out = []
        for op, dtype in keys:
            checks = {c: self.cells[(op, dtype, c)] for c in COLUMNS if (op, dtype, c) in self.cells}
            statuses = [cell.status for cell in checks.values()]
            status = next((s for s in ("FAIL", "pass", "xfail", "n/a", "skip") if s in statuses), "-")
            worst = max(cell.worst for cell in checks.values())
            where = max(checks.values(), key=lambda c: c.worst).worst_where
            reasons = sorted(set().union(*(cell.reasons for cell in checks.values())))
            out.append({"op": op, "dtype": dtype, "status": status, "worst_error_over_tolerance": _num(worst),
                        "worst_at": where, "reasons": reasons,
                        "checks": {c: cell.as_dict() for c, cell in checks.items()}})
        return out

    def table(self) -> list[str]:
        """The summary as text lines."""
        head = f"{'op':<12} {'dtype':<9} " + " ".join(f"{c:<10}" for c in COLUMNS) + " worst err/tol  status"
        lines = [head, "-" * len(head)]
        for row in self.rows():
            cells = " ".join(f"{_short(row['checks'].get(c)):<10}" for c in COLUMNS)
            worst = row["worst_error_over_tolerance"]
            worst_text = f"{worst:>12.3g}" if isinstance(worst, float) else f"{worst:>12}"
            reasons = f" ({', '.join(row['reasons'])})" if row["reasons"] else ""
            lines.append(f"{row['op']:<12} {row['dtype']:<9} {cells} {worst_text}  {row['status']}{reasons}")
        if self.na_reasons:
            total = sum(self.na_reasons.values())
            lines.append(f"n/a (not declared by the port, never counted as pass or FAIL): {total} tests; "
                         + "; ".join(f"{reason}: {count}" for reason, count in self.na_reasons.most_common()))
        if self.properties:
            lines.append("")
            lines.append("named properties:")
            for p in self.properties:
                lines.append(f"  {p['verdict']:<18} {p['name']}")
                if p["verdict"] not in ("holds", "n/a"):
                    lines.append(f"  {'':<18}   input: {p['input']}")
                    if p["detail"]:
                        lines.append(f"  {'':<18}   {p['detail']}")
        if self.failures:
            lines.append("")
            lines.append(f"{len(self.failures)} distinct failures (each with its smallest input below and in the "
                         "reports):")
            for f in sorted(self.failures, key=_failure_order):
                count = f"{f['count']} example{'s' if f['count'] != 1 else ''}"
                lines.append(f"  {f['op']:<12} {f['check']:<8} {f['dtype']:<9} [{f['reason']}] {f['label']} "
                             f"{f['magnitude']}, {count}, worst err/tol {_fmt_ratio(f['worst_ratio'])}; "
                             f"smallest: {f['case']}{caused_by(self.failures, f)}")
        return lines


def caused_by(failures: list[dict[str, Any]], f: dict[str, Any]) -> str:
    """For a site/network/Pre-Norm failure: the failing ops of its family in its dtype, to fix first."""
    if f["check"] not in ("site", "network", "prenorm"):
        return ""
    family = f["op"].split("_", 1)[0]
    ends = ("expand", "reduce", "frac_split", "frac_merge")
    ops = sorted({g["op"] for g in failures if g["dtype"] == f["dtype"] and g["check"] in ("forward", "vjp")
                  and (g["op"].startswith(family + "_") or g["op"] in ends)})
    return f" (fix first: {', '.join(ops)} fail per op in {f['dtype']})" if ops else ""


def _fmt_ratio(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) and math.isfinite(x) else "inf"


def _short(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return ""
    status = str(cell["status"])
    return status


STAGES = ("forward", "vjp", "errors", "property", "site", "network", "prenorm")
"""The order in which checks run and failures are listed: per-op failures first, then the sites
and networks they cause."""


def _failure_order(f: dict[str, Any]) -> tuple[int, tuple[int, int, str]]:
    check = f["check"]
    return (STAGES.index(check) if check in STAGES else len(STAGES), _row_order((f["op"], f["dtype"])))


def _row_order(key: tuple[str, str]) -> tuple[int, int, str]:
    from hcref.interface import DTYPES

    from .strategies import COMPOSITES, OP_NAMES

    order = list(OP_NAMES) + list(COMPOSITES)
    op, dtype = key
    dtypes = [*DTYPES, "mixed"]
    return (order.index(op) if op in order else len(order), dtypes.index(dtype) if dtype in dtypes else 9, op)


def document(header: dict[str, Any], recorder: Recorder, totals: dict[str, int], seconds: float) -> dict[str, Any]:
    """The report as one JSON-able document."""
    return {**header, "totals": totals, "runtime_s": round(seconds, 3), "rows": recorder.rows(),
            "properties": recorder.properties,
            "failures": sorted(recorder.failures, key=_failure_order),
            "na": {"total": sum(recorder.na_reasons.values()), "reasons": dict(recorder.na_reasons.most_common())},
            "skips": dict(recorder.skip_reasons.most_common())}


def write_json(path: str, doc: dict[str, Any]) -> None:
    """Write the JSON report."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(doc, handle, indent=1, default=str)
        handle.write("\n")


def markdown(doc: dict[str, Any], level: int = 1) -> str:
    """The report as Markdown: header, summary table, properties, n/a counts, every failure
    (``level``: the heading level of its title)."""
    h = "#" * level
    lines = [f"{h} hcref conformance: {doc.get('name')} {doc.get('version')} ({doc.get('framework_version')})", ""]
    dtypes = ", ".join(doc.get("dtypes", []))
    lines.append(f"- port: `{doc.get('backend')}`; device {doc.get('device')}; dtypes {dtypes}")
    lines.append(f"- profile {doc.get('profile')}, {doc.get('max_examples')} examples per test, seed "
                 f"{doc.get('seed') if doc.get('seed') is not None else 'fixed (derandomized)'}; "
                 f"runtime {doc.get('runtime_s')} s")
    if doc.get("composite_vjp"):
        lines.append(f"- composite VJPs: {doc['composite_vjp']}")
    totals = doc.get("totals", {})
    lines.append("- totals: " + ", ".join(f"{v} {k}" for k, v in totals.items() if v))
    lines += ["", f"{h}# Summary", "", "| op | dtype | " + " | ".join(COLUMNS) + " | worst err/tol | status |",
              "|---|---|" + "---|" * len(COLUMNS) + "---|---|"]
    for row in doc.get("rows", []):
        cells = " | ".join(row["checks"].get(c, {}).get("status", "") for c in COLUMNS)
        status = row["status"] + (f" ({', '.join(row['reasons'])})" if row["reasons"] else "")
        lines.append(f"| {row['op']} | {row['dtype']} | {cells} | {_fmt_ratio(row['worst_error_over_tolerance'])} "
                     f"| {status} |")
    na = doc.get("na", {})
    if na.get("total"):
        lines += ["", f"n/a (not declared by the port; never pass or FAIL): {na['total']} tests", ""]
        lines += [f"- {reason}: {count}" for reason, count in na["reasons"].items()]
    if doc.get("properties"):
        lines += ["", f"{h}# Named properties", "",
                  "| property | source | verdict | input (the smallest that shows it) | what differs |",
                  "|---|---|---|---|---|"]
        for p in doc["properties"]:
            lines.append(f"| {p['name']} | {p['source']} | {p['verdict']} | {p['input']} | {p['detail']} |")
    failures = doc.get("failures", [])
    if failures:
        lines += ["", f"{h}# Failures ({len(failures)} distinct)", ""]
        for f in failures:
            lines.append(f"{h}## {f['op']} {f['check']} {f['dtype']}: [{f['reason']}] {f['label']}, {f['magnitude']}")
            lines.append("")
            if caused_by(failures, f):
                lines += [caused_by(failures, f).strip(" ()").capitalize() + ".", ""]
            lines.append(f"{f['count']} failing examples; worst err/tol {_fmt_ratio(f['worst_ratio'])}; "
                         f"smallest input `{f['case']}`")
            lines += ["", "```", f["message"], "```", ""]
    return "\n".join(lines) + "\n"


def write_markdown(path: str, doc: dict[str, Any]) -> None:
    """Write the Markdown report."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(markdown(doc))
