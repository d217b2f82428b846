"""How a test runs its cases: Hypothesis draws every example (a failure does not stop the
draws), every distinct failure is kept and shrunk to its smallest input, and nothing but the
suite's own failure messages reaches the log (no fixture reprs, no Falsifying-example dumps).

A distinct failure is one (output, reason class, magnitude class) of one test: an
epsilon-sized difference and an O(1) error of the same output are two failures. Each is
shrunk greedily (fewer leading axes, fewer rows, narrower rows, unit scale, one site) while it
fails the same way, within :data:`SHRINK_BUDGET` reruns.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .cases import Case
from .checks import CHECKS, CURRENT, OutOfRange
from .compare import ConformanceError
from .report import Recorder, magnitude
from .strategies import MIN_COMPOSITE_WIDTH, Profile, is_composite
from .subject import NotApplicable, Subject

SHRINK_BUDGET = 12
"""Reruns spent shrinking one distinct failure (each may compile anew on a port that compiles per
shape, so the budget is small; the named properties give the smallest inputs by design)."""


@dataclass
class Group:
    """One distinct failure of a test and its examples."""

    check: str
    label: str
    reason: str
    magnitude: str
    case: Case
    error: ConformanceError
    count: int = 0
    worst_ratio: float = 0.0
    worst_case: Case | None = None

    def add(self, case: Case, error: ConformanceError) -> None:
        self.count += 1
        if error.ratio >= self.worst_ratio:
            self.worst_ratio, self.worst_case = error.ratio, case
        if case.size < self.case.size:
            self.case, self.error = case, error


@dataclass
class Failures:
    """The distinct failures of one test."""

    groups: dict[tuple[str, str, str, str], Group] = field(default_factory=dict)

    def add(self, check: str, case: Case, error: ConformanceError) -> None:
        key = (check, error.label, error.reason, _kind(error))
        if key not in self.groups:
            self.groups[key] = Group(check, error.label, error.reason, key[3], case, error)
        self.groups[key].add(case, error)

    def __bool__(self) -> bool:
        return bool(self.groups)


@dataclass
class Context:
    """What a test needs: the subject, the recorder, examples, seed and whether to shrink."""

    subject: Subject
    recorder: Recorder
    profile: Profile
    max_examples: int
    seed: int | None
    shrink: bool
    dtypes: list[str] = field(default_factory=list)
    mixed: bool = True


def attempt(ctx: Context, check: str, case: Case, dtype: str) -> float:
    """Run one check on one case (raises like :func:`hcref_conformance.checks.run_check`)."""
    __tracebackhide__ = True
    CURRENT["case"] = case
    return CHECKS[check](ctx.subject, case, dtype)


def _kind(error: ConformanceError) -> str:
    return magnitude(error.rel) if error.reason in ("value", "gradient") else "-"


def _same(check: str, error: ConformanceError, target: Group) -> bool:
    """Whether ``error`` is the same distinct failure as ``target`` (output, reason, magnitude)."""
    return error.label == target.label and error.reason == target.reason and _kind(error) == target.magnitude


def shrink_candidates(case: Case) -> list[Case]:
    """Smaller variants of ``case`` to try, simplest first."""
    replace = dataclasses.replace
    out: list[Case] = []
    if case.lead:
        out.append(replace(case, lead=()))
        out.append(replace(case, lead=case.lead[:1]))
        if any(s > 1 for s in case.lead):
            out.append(replace(case, lead=tuple(min(s, 1) for s in case.lead)))
    out += [replace(case, k=k) for k in range(1, case.k)]
    low = MIN_COMPOSITE_WIDTH if is_composite(case.op) else 1
    out += [replace(case, w=w) for w in range(low, case.w)]
    if case.scale != 1.0:
        out.append(replace(case, scale=1.0))
    if case.sites > 1 and case.kind == "network":
        out.append(replace(case, sites=1))
    return out


def minimise(ctx: Context, group: Group, dtype: str) -> None:
    """Shrink ``group.case`` while it fails the same way (within :data:`SHRINK_BUDGET` reruns)."""
    budget = SHRINK_BUDGET
    improved = True
    while improved and budget > 0:
        improved = False
        for candidate in shrink_candidates(group.case):
            if budget <= 0 or candidate.size > group.case.size or candidate == group.case:
                continue
            budget -= 1
            try:
                attempt(ctx, group.check, candidate, dtype)
            except ConformanceError as error:
                if _same(group.check, error, group):
                    group.case, group.error = candidate, error
                    improved = True
                    break
            except (OutOfRange, NotApplicable):
                continue


def record(ctx: Context, op: str, dtype: str, check: str, failures: Failures, nodeid: str) -> str:
    """Put every distinct failure into the recorder; return the test's failure message."""
    parts = []
    for group in failures.groups.values():
        if ctx.shrink:
            minimise(ctx, group, dtype)
        message = str(group.error)
        tail = ""
        if group.count > 1 and group.worst_case is not None:
            tail = (f"\n  ({group.count} failing examples of this kind; worst error/tolerance "
                    f"{group.worst_ratio:.3g} at {group.worst_case!r})")
        parts.append(message + tail)
        ctx.recorder.failure({
            "nodeid": nodeid, "op": op, "dtype": dtype, "check": group.check, "reason": group.reason,
            "label": group.label, "magnitude": group.magnitude, "count": group.count,
            "worst_ratio": group.worst_ratio, "worst_case": repr(group.worst_case), "case": repr(group.case),
            "message": message,
        })
    n = len(parts)
    head = f"{n} distinct failure{'s' if n > 1 else ''} of {op} ({dtype})"
    return head + ":\n\n" + "\n\n".join(parts)


def _seed(ctx: Context, key: str) -> int:
    digest = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return digest ^ (ctx.seed or 0)


def explore(ctx: Context, check: str, op: str, dtype: str, draw: Callable[[Any], Case], nodeid: str) -> None:
    """Run ``check`` on ``max_examples`` drawn cases; fail with every distinct failure."""
    import pytest
    from hypothesis import HealthCheck, Phase, given, reject, seed, settings
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable

    failures = Failures()
    ran = [0]

    @seed(_seed(ctx, f"{check}/{op}/{dtype}"))
    @settings(max_examples=ctx.max_examples, database=None, deadline=None, derandomize=False, print_blob=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def body(data: Any) -> None:
        case = draw(data)
        try:
            attempt(ctx, check, case, dtype)
        except OutOfRange:
            reject()
        except ConformanceError as error:
            failures.add(check, case, error)
        ran[0] += 1

    unsatisfiable = False
    try:
        body()
    except Unsatisfiable:
        unsatisfiable = True
    if unsatisfiable and not failures:
        pytest.skip(f"no draw of {op} fits {dtype} (every case out of range or ill-conditioned)")
    if failures:
        pytest.fail(record(ctx, op, dtype, check, failures, nodeid), pytrace=False)


def run_one(ctx: Context, check: str, case: Case, dtype: str, nodeid: str) -> float:
    """Run ``check`` on one fixed case: n/a and out-of-range skip, a failure fails the test."""
    import pytest

    failures = Failures()
    skip = ""
    try:
        return attempt(ctx, check, case, dtype)
    except NotApplicable as exc:
        skip = f"n/a: {exc}"
    except OutOfRange as exc:
        skip = str(exc)
    except ConformanceError as error:
        failures.add(check, case, error)
    if skip:
        pytest.skip(skip)
    pytest.fail(record(ctx, case.op, dtype, check, failures, nodeid), pytrace=False)
