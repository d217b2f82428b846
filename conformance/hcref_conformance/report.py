"""The closing summary (one row per op x dtype) and the JSON report.

The :class:`Recorder` collects, per (op, dtype, check), the worst ``error / tolerance`` ratio
the passing examples reached and the outcome of every test; the plugin fills it from the
tests and from pytest's reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

CHECK_COLUMNS = ("forward", "vjp", "composite", "prenorm", "errors")
"""Summary columns, in order."""


@dataclass
class Cell:
    """Outcome of one (op, dtype, check): counts of test outcomes and the worst ratio."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    xfailed: int = 0
    xpassed: int = 0
    worst: float = 0.0

    @property
    def status(self) -> str:
        """``FAIL``, ``xfail``, ``pass``, ``skip`` or ``-`` (nothing ran)."""
        if self.failed:
            return "FAIL"
        if self.xfailed:
            return "xfail"
        if self.passed or self.xpassed:
            return "pass"
        return "skip" if self.skipped else "-"


@dataclass
class Recorder:
    """Session-wide collector of results."""

    cells: dict[tuple[str, str, str], Cell] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def cell(self, op: str, dtype: str, check: str) -> Cell:
        """The cell of (op, dtype, check), created empty."""
        return self.cells.setdefault((op, dtype, check), Cell())

    def record(self, op: str, dtype: str, check: str, ratio: float) -> None:
        """Note the error/tolerance ratio of one passing comparison."""
        cell = self.cell(op, dtype, check)
        cell.worst = max(cell.worst, ratio)

    def outcome(self, op: str, dtype: str, check: str, outcome: str) -> None:
        """Count one test outcome (``passed``, ``failed``, ``skipped``, ``xfailed``, ``xpassed``)."""
        cell = self.cell(op, dtype, check)
        setattr(cell, outcome, getattr(cell, outcome) + 1)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (op, dtype): the status of every check and the worst ratio."""
        keys = sorted({(op, dtype) for op, dtype, _ in self.cells}, key=_row_order)
        out = []
        for op, dtype in keys:
            checks = {c: self.cells[(op, dtype, c)] for c in CHECK_COLUMNS if (op, dtype, c) in self.cells}
            statuses = [cell.status for cell in checks.values()]
            status = "FAIL" if "FAIL" in statuses else ("pass" if "pass" in statuses else statuses[0])
            out.append({
                "op": op,
                "dtype": dtype,
                "status": status,
                "worst_error_over_tolerance": max(cell.worst for cell in checks.values()),
                "checks": {c: {"status": cell.status, "worst_error_over_tolerance": cell.worst, "passed": cell.passed,
                               "failed": cell.failed, "skipped": cell.skipped, "xfailed": cell.xfailed}
                           for c, cell in checks.items()},
            })
        return out

    def table(self) -> list[str]:
        """The summary as text lines."""
        head = f"{'op':<12} {'dtype':<9} " + " ".join(f"{c:<9}" for c in CHECK_COLUMNS) + " worst err/tol  status"
        lines = [head, "-" * len(head)]
        for row in self.rows():
            cells = " ".join(f"{row['checks'].get(c, {}).get('status', ''):<9}" for c in CHECK_COLUMNS)
            lines.append(f"{row['op']:<12} {row['dtype']:<9} {cells} {row['worst_error_over_tolerance']:>12.3g}  "
                         f"{row['status']}")
        return lines


def _row_order(key: tuple[str, str]) -> tuple[int, int, str]:
    from hcref.interface import DTYPES

    from .strategies import OP_NAMES

    order = list(OP_NAMES) + ["hc_site", "fc_site", "hc_network", "fc_network", "hc_prenorm", "fc_prenorm"]
    op, dtype = key
    return (order.index(op) if op in order else len(order), DTYPES.index(dtype) if dtype in DTYPES else 9, op)


def write_json(path: str, header: dict[str, Any], recorder: Recorder, totals: dict[str, int], seconds: float) -> None:
    """Write the JSON report: run metadata, totals, rows and failures."""
    document = {**header, "totals": totals, "runtime_s": round(seconds, 3), "rows": recorder.rows(),
                "failures": recorder.failures}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1, default=str)
        handle.write("\n")
