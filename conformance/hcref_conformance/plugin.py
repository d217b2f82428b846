"""The pytest plugin: ``pytest -p hcref_conformance.plugin --pyargs hcref_conformance --backend X``.

Options (each with an environment twin, used when the option is not given):

    --backend SPEC           HCREF_BACKEND      the port: MODULE[:ATTR] or path/to/file.py[:ATTR]
                                                (ATTR defaults to ``backend``); required
    --device DEVICE          HCREF_DEVICE       default ``cpu``
    --dtypes A,B             HCREF_DTYPES       default: every dtype the port supports on the device
    --profile NAME           HCREF_PROFILE      quick (5 examples), default (25), thorough (200, n/m <= 16)
    --max-examples N         HCREF_MAX_EXAMPLES examples per drawn test (default: the profile's)
    --seed S                 HCREF_SEED         another fixed set of draws (default: seed 0)
    --xfails-file PATH       HCREF_XFAILS_FILE  patterns to mark xfail
    --skips-file PATH        HCREF_SKIPS_FILE   patterns to skip
    --report-json PATH       HCREF_REPORT_JSON  write the JSON report
    --report-md PATH         HCREF_REPORT_MD    write the Markdown report (default: the JSON path with .md)
    --no-shrink              HCREF_NO_SHRINK=1  report each failure's first example unshrunk (fast failures)

Skip and xfail files hold one pattern a line, ``OP CHECK DTYPE`` (or ``OP/CHECK/DTYPE``), each
an ``fnmatch`` glob, ``#`` starting a comment (write the reason there)::

    hc_coeffs  vjp        bfloat16   # our bf16 VJP of the norm accumulates in bf16 (issue 42)
    fc_*       *          float16    # no float16 FC yet
    hc_site    composite  *          # CHECK may name the column (composite) or the check (site)
    fc-write   property   *          # a named property, by its id

OP is an op (``hc_width``), a composite (``hc_site``, ``fc_network``, ``hc_prenorm``) or a
property id (``fc-write``); CHECK is ``forward``, ``vjp``, ``errors``, ``site``, ``network``,
``composite``, ``prenorm`` or ``property``; DTYPE is a dtype or ``mixed``. A pattern that matches
no test is reported (a stale entry). Hypothesis xfails are not flaky here (every example runs),
but prefer skips for known gaps: an xfail still runs the whole check.

No port, or one that fails to import, stops the run with a usage error (exit code 4).
"""

from __future__ import annotations

import fnmatch
import os
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import pytest

try:
    import hypothesis  # noqa: F401  (the suite's other dependency; pytest is loading this plugin)
except ImportError:  # pragma: no cover - exercised in a subprocess by the project's tests
    raise ImportError('the hcref conformance suite needs hypothesis: pip install "hcref[conformance]"') from None

from .loading import BackendLoadError, load_backend, spec_of
from .options import DEFAULT_PROFILE, NO_SHRINK, OPTIONS
from .report import CHECK_COLUMN, STAGES, Recorder, document, write_json, write_markdown
from .runner import Context
from .strategies import PROFILES
from .subject import Subject, subject_for


@dataclass
class State:
    """Everything the plugin resolved in ``pytest_configure``."""

    backend: Any
    spec: str
    device: str
    dtypes: list[str]
    unsupported: list[str]
    profile: str
    max_examples: int
    seed: int | None
    xfails_file: str | None
    skips_file: str | None
    report_json: str | None
    report_md: str | None
    mixed: bool = True
    shrink: bool = True
    recorder: Recorder = field(default_factory=Recorder)
    started: float = field(default_factory=time.perf_counter)
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("passed", "failed", "skipped", "na", "xfailed", "xpassed", "error"), 0))
    progress_total: int = 0
    progress_done: int = 0
    observer: Any = None

    @property
    def subject(self) -> Subject:
        return subject_for(self.backend, self.device)

    def __repr__(self) -> str:
        return f"<hcref conformance state: {self.spec}>"


_STATE = pytest.StashKey[State]()


def _dest(option: str) -> str:
    return "hcref_" + option.lstrip("-").replace("-", "_")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hcref", "hcref conformance suite")
    for option, env, text in OPTIONS:
        group.addoption(option, "--hcref-" + option.lstrip("-"), dest=_dest(option), default=None,
                        help=f"{text} [env {env}]")
    group.addoption(NO_SHRINK[0], "--hcref-no-shrink", dest=_dest(NO_SHRINK[0]), action="store_true",
                    default=False, help=f"{NO_SHRINK[2]} [env {NO_SHRINK[1]}=1]")


def _option(config: pytest.Config, option: str, env: str) -> str | None:
    value = config.getoption(_dest(option))
    if value is None:
        return os.environ.get(env) or None
    return str(value)


def _int(name: str, value: str | None, default: int | None) -> int | None:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"{name}: expected an integer, got {value!r}") from None


def resolve(config: pytest.Config) -> State:
    """Read the options (or their ``HCREF_*`` twins), load the port and pick the dtypes."""
    from hcref.interface import DTYPES, support_of

    values = {option: _option(config, option, env) for option, env, _ in OPTIONS}
    holder = config.pluginmanager.get_plugin("hcref_conformance_backend")
    try:
        if holder is not None:
            backend, spec = holder.backend, holder.spec
        else:
            spec = values["--backend"] or ""
            backend = load_backend(spec)
        support_of(backend)
    except (BackendLoadError, ValueError, TypeError) as exc:
        raise pytest.UsageError(f"hcref conformance: {exc}") from None
    device = values["--device"] or "cpu"
    supported = [dtype for dev, dtype in backend.capabilities() if dev == device]
    mixed = True
    if values["--dtypes"]:
        wanted = [d.strip() for d in values["--dtypes"].split(",") if d.strip()]
        unknown = [d for d in wanted if d not in (*DTYPES, "mixed")]
        if unknown:
            raise pytest.UsageError(f"--dtypes: unknown {unknown}; expected a comma-separated subset of "
                                    f"{(*DTYPES, 'mixed')}")
        mixed = "mixed" in wanted
        wanted = [d for d in wanted if d != "mixed"]
    else:
        wanted = [d for d in DTYPES if d in supported]
    if not supported:
        raise pytest.UsageError(f"--device: backend {spec} supports no dtype on device {device!r} "
                                f"(capabilities: {list(backend.capabilities())})")
    if not mixed and not any(d in supported for d in wanted):
        raise pytest.UsageError(f"--dtypes: backend {spec} supports none of {wanted} on device {device!r}, so "
                                f"nothing would be checked; it supports {supported}")
    profile = values["--profile"] or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise pytest.UsageError(f"--profile: expected one of {sorted(PROFILES)}, got {profile!r}")
    report_json = values["--report-json"]
    report_md = values["--report-md"] or (os.path.splitext(report_json)[0] + ".md" if report_json else None)
    return State(
        backend=backend, spec=spec, device=device,
        dtypes=[d for d in wanted if d in supported],
        unsupported=[d for d in wanted if d not in supported],
        profile=profile,
        max_examples=_int("--max-examples", values["--max-examples"], PROFILES[profile].max_examples) or 1,
        seed=_int("--seed", values["--seed"], None),
        xfails_file=values["--xfails-file"], skips_file=values["--skips-file"],
        report_json=report_json, report_md=report_md, mixed=mixed,
        shrink=not (config.getoption(_dest(NO_SHRINK[0])) or os.environ.get(NO_SHRINK[1], "") not in ("", "0")),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("python_files", "tests_*.py")
    state = resolve(config)
    config.stash[_STATE] = state
    from .compare import OBSERVERS

    state.observer = _observer(state)
    OBSERVERS.append(state.observer)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave nothing behind for a later run in the same process (``hcref_conformance.run``)."""
    from .compare import OBSERVERS

    if _STATE in config.stash and config.stash[_STATE].observer in OBSERVERS:
        OBSERVERS.remove(config.stash[_STATE].observer)
    _CONFIG.pop("config", None)


def _observer(state: State) -> Any:
    from .checks import CURRENT

    def observe(ctx: Any, label: str, out: Any, ref: Any, scale: float | None, ratio: float) -> None:
        import numpy as np

        diff = np.abs(np.asarray(out, dtype=np.float64) - ref)
        if diff.size == 0:
            return
        s = float(np.max(np.abs(ref))) if scale is None else scale
        largest = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff)))
        rel = largest / s if s > 0 else (0.0 if largest == 0 else float("inf"))
        state.recorder.observe(ctx.op, ctx.dtype, ctx.check, label, ratio, rel, repr(CURRENT.get("case")))

    return observe


def _state(config: pytest.Config) -> State:
    return config.stash[_STATE]


def _support_lines(subject: Subject) -> list[str]:
    s = subject.support
    entries = []
    for family in s.families:
        entry = s.site_entry(family)
        init = "own init" if family in s.initialisers else "D2 init"
        entries.append(f"{family}: {'site()' if entry == 'module' else 'ops' if entry else 'none'}, {init}")
    eps = ", ".join(f"{n} eps {e:g}" for n, e in s.norm_eps.items())
    mixed = "yes" if s.mixed_precision else "no"
    line = (f"  declares: {'; '.join(entries)}; ops {','.join(s.op_names) or '(none)'}; norms {','.join(s.norms)}"
            f"{' (' + eps + ')' if eps else ''}; switches that turn off {','.join(s.switches) or '(none)'}; modes "
            f"{','.join(s.modes)}; max n/m {s.max_rows or 'any'}; mixed precision {mixed}")
    return [line] + [f"  note ({topic}): {text}" for topic, text in s.notes.items()]


def _gradient_line(subject: Subject) -> str:
    if subject.native_vjp:
        return "autodiff: the port's vjp of the whole site or network (sublayer inside)"
    return ("chained: the port's vjp differentiates only its own ops, so composite VJPs chain each op's vjp "
            "around the sublayer's (module-level sites: n/a)")


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = _state(config)
    b = state.backend
    lines = [
        f"hcref conformance: backend {state.spec} -> {getattr(b, 'name', '?')} {getattr(b, 'version', '?')} "
        f"({getattr(b, 'framework_version', '?')})",
        f"  device {state.device}; dtypes {','.join(state.dtypes) or '(none)'}"
        + (f"; not supported, skipped: {','.join(state.unsupported)}" if state.unsupported else ""),
        f"  profile {state.profile}: {state.max_examples} examples per drawn test; seed "
        f"{'fixed' if state.seed is None else state.seed}" + ("" if state.shrink else "; no shrinking"),
        *_support_lines(state.subject),
        f"  composite VJPs: {_gradient_line(state.subject)}",
    ]
    env = {k: v for k, v in os.environ.items() if k.startswith("HCREF_")}
    lines.append("  environment: " + (", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "(no HCREF_* set)"))
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    from .strategies import mixed_cases, special_cases

    state = _state(metafunc.config)
    support = state.subject.support
    fixed = getattr(metafunc.function, "hcref_fixed", None)
    if fixed is not None:
        profile = PROFILES[state.profile]
        metafunc.parametrize(("dtype", "op", "case"), [
            pytest.param(dtype, op, case, id=f"{dtype}-{op}-{name}")
            for dtype in state.dtypes for op in fixed
            for name, case in special_cases(op, dtype, state.dtypes, profile, support)])
        return
    mixed = getattr(metafunc.function, "hcref_mixed", None)
    if mixed is not None:
        reason = state.subject.mixed_reason() or ("" if state.mixed else "mixed precision not selected")
        if reason:
            params = [pytest.param(op, None, id=f"{op}-mixed", marks=pytest.mark.skip(reason=f"n/a: {reason}"))
                      for op in mixed]
        else:
            params = [pytest.param(op, case, id=f"{op}-{name}") for op in mixed
                      for name, case in mixed_cases(op, support)]
        metafunc.parametrize(("op", "case"), params)
        return
    if "dtype" not in metafunc.fixturenames:
        return
    params = [pytest.param(d, id=d) for d in state.dtypes]
    params += [pytest.param(d, id=d, marks=pytest.mark.skip(reason=f"backend does not support {d} on {state.device}"))
               for d in state.unsupported]
    metafunc.parametrize("dtype", params)


def labels(item: pytest.Item) -> tuple[str, str, str]:
    """``(op, check, dtype)`` of a collected test (what skip patterns and the report use)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    name = getattr(item, "originalname", item.name)
    prop = params.get("prop")
    op = str(prop.id if prop is not None else params.get("op", "?"))
    if name.startswith("test_property"):
        return op, "property", "-"
    dtype = str(params.get("dtype", "mixed" if name.endswith("_mixed") else "-"))
    for prefix, check in (("test_forward", "forward"), ("test_vjp", "vjp"), ("test_errors", "errors"),
                          ("test_prenorm", "prenorm")):
        if name.startswith(prefix):
            return op, check, dtype
    return op, op.split("_", 1)[-1], dtype


def _column(check: str) -> str:
    return CHECK_COLUMN.get(check, check)


def _read_patterns(path: str) -> list[tuple[str, str]]:
    """(pattern, comment) lines of a skips/xfails file."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise pytest.UsageError(f"cannot read {path}: {exc}") from None
    out = []
    for line in lines:
        text, _, comment = line.partition("#")
        if text.strip():
            out.append((text.strip(), comment.strip()))
    return out


def _matches(pattern: str, item: pytest.Item) -> bool:
    if "::" in pattern or pattern.startswith("test"):  # a test-id prefix (older files)
        module = os.path.basename(str(item.path))
        return any(i.startswith(pattern) for i in (f"{module}::{item.name}", item.name, item.nodeid))
    fields = pattern.replace("/", " ").split()
    if len(fields) != 3:
        raise pytest.UsageError(f"skip/xfail pattern {pattern!r}: expected 'OP CHECK DTYPE' (globs)")
    op, check, dtype = labels(item)
    return (fnmatch.fnmatchcase(op, fields[0]) and fnmatch.fnmatchcase(dtype, fields[2])
            and (fnmatch.fnmatchcase(check, fields[1]) or fnmatch.fnmatchcase(_column(check), fields[1])))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = _state(config)
    order = {check: i for i, check in enumerate(STAGES)}
    items.sort(key=lambda item: order.get(labels(item)[1], len(order)))
    for path, mark in ((state.skips_file, "skip"), (state.xfails_file, "xfail")):
        if not path:
            continue
        for pattern, comment in _read_patterns(path):
            matched = [item for item in items if _matches(pattern, item)]
            if not matched:
                warnings.warn(f"{path}: {pattern!r} matches no collected test", stacklevel=1)
            reason = f"listed in {os.path.basename(path)}" + (f": {comment}" if comment else "")
            for item in matched:
                item.add_marker(pytest.mark.skip(reason=reason) if mark == "skip"
                                else pytest.mark.xfail(reason=reason, strict=False))


def pytest_collection_finish(session: pytest.Session) -> None:
    if _STATE in session.config.stash:
        _state(session.config).progress_total = len(session.items)


@pytest.fixture(scope="session")
def suite(request: pytest.FixtureRequest) -> Context:
    """What every test needs (:class:`hcref_conformance.runner.Context`)."""
    state = _state(request.config)
    return Context(state.subject, state.recorder, PROFILES[state.profile], state.max_examples, state.seed,
                   state.shrink, state.dtypes, state.mixed)


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> Any:
    """The port under test."""
    return _state(request.config).backend


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    """The device name under test."""
    return _state(request.config).device


@pytest.fixture(scope="session")
def recorder(request: pytest.FixtureRequest) -> Recorder:
    """The session's :class:`~hcref_conformance.report.Recorder`."""
    return _state(request.config).recorder


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr or "")
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if _STATE not in item.config.stash:
        return
    state = _state(item.config)
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    reason = ""
    if hasattr(report, "wasxfail"):
        kind = "xpassed" if report.outcome == "passed" else "xfailed"
    elif report.outcome == "skipped":
        reason = _skip_reason(report)
        kind = "na" if reason.startswith("n/a:") else "skipped"
        reason = reason.removeprefix("n/a:").strip()
    else:
        kind = {"passed": "passed", "failed": "failed"}[report.outcome]
    state.totals[kind] += 1
    op, check, dtype = labels(item)
    state.recorder.outcome(op, dtype, _column(check), kind, reason)
    if kind == "failed" and not any(f.get("nodeid") == item.nodeid for f in state.recorder.failures):
        text = report.longreprtext
        state.recorder.failure({"nodeid": item.nodeid, "op": op, "dtype": dtype, "check": check,
                                "reason": "property" if check == "property" else "exception",
                                "label": "", "magnitude": "-", "count": 1, "worst_ratio": float("inf"),
                                "worst_case": "", "case": "", "message": text[-4000:]})


def _write_progress(nodeid: str) -> None:
    """``done total current-test`` into ``HCREF_PROGRESS_FILE`` (what the main job shows and
    watches: a backend that stays on one test too long is stopped and the test named)."""
    path = os.environ.get("HCREF_PROGRESS_FILE")
    config = _CONFIG.get("config")
    if not path or config is None or _STATE not in config.stash:
        return
    state = _state(config)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(f"{state.progress_done} {state.progress_total} {nodeid}\n")
    os.replace(tmp, path)


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _write_progress(nodeid)


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    config = _CONFIG.get("config")
    if config is not None and _STATE in config.stash:
        state = _state(config)
        state.progress_done += 1
        if state.progress_done == state.progress_total:
            _write_progress("")


_CONFIG: dict[str, pytest.Config] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIG["config"] = session.config


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _STATE not in config.stash:
        return
    state = _state(config)
    seconds = time.perf_counter() - state.started
    terminalreporter.section(f"hcref conformance summary: {spec_of(state.backend)} on {state.device}")
    for line in state.recorder.table():
        terminalreporter.write_line(line)
    b = state.backend
    header = {"backend": state.spec, "name": getattr(b, "name", None), "version": getattr(b, "version", None),
              "framework_version": getattr(b, "framework_version", None), "device": state.device,
              "dtypes": state.dtypes, "unsupported_dtypes": state.unsupported, "profile": state.profile,
              "max_examples": state.max_examples, "seed": state.seed, "exitstatus": int(exitstatus),
              "declared": _support_lines(state.subject), "families": list(state.subject.support.families),
              "composite_vjp": _gradient_line(state.subject)}
    doc = document(header, state.recorder, state.totals, seconds)
    if state.report_json:
        write_json(state.report_json, doc)
        terminalreporter.write_line(f"JSON report: {os.path.abspath(state.report_json)}")
    if state.report_md:
        write_markdown(state.report_md, doc)
        terminalreporter.write_line(f"Markdown report: {os.path.abspath(state.report_md)}")
