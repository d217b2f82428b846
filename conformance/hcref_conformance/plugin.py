"""The pytest plugin: ``pytest -p hcref_conformance.plugin --pyargs hcref_conformance --backend X``.

Options (each with an environment twin, used when the option is not given):

    --backend MODULE[:ATTR]  HCREF_BACKEND      the backend object (ATTR defaults to ``backend``); required
    --device DEVICE          HCREF_DEVICE       default ``cpu``
    --dtypes A,B             HCREF_DTYPES       default: every dtype the backend supports on the device
    --max-examples N         HCREF_MAX_EXAMPLES Hypothesis examples per test (default 25)
    --seed S                 HCREF_SEED         random Hypothesis seed S (default: derandomized)
    --xfails-file PATH       HCREF_XFAILS_FILE  test-id prefixes to mark xfail (one a line, # comments)
    --skips-file PATH        HCREF_SKIPS_FILE   test-id prefixes to skip
    --report-json PATH       HCREF_REPORT_JSON  write the JSON report
    --no-shrink              HCREF_NO_SHRINK=1  report the first failing example unshrunk (fast failures)

No backend, or one that fails to import, stops the run with a usage error (exit code 4).
Hypothesis xfails can be flaky (an xfailed property may find no failing example and XPASS),
so prefer ``--skips-file`` for known failures.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import pytest

from .loading import BackendLoadError, load_backend, spec_of
from .options import DEFAULT_MAX_EXAMPLES, NO_SHRINK, OPTIONS
from .report import Recorder, write_json


@dataclass
class State:
    """Everything the plugin resolved in ``pytest_configure``."""

    backend: Any
    spec: str
    device: str
    dtypes: list[str]
    unsupported: list[str]
    max_examples: int
    seed: int | None
    xfails_file: str | None
    skips_file: str | None
    report_json: str | None
    shrink: bool = True
    recorder: Recorder = field(default_factory=Recorder)
    started: float = field(default_factory=time.perf_counter)
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("passed", "failed", "skipped", "xfailed", "xpassed", "error"), 0))


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
    """Read the options (or their ``HCREF_*`` twins), load the backend and pick the dtypes."""
    from hcref.interface import DTYPES

    values = {option: _option(config, option, env) for option, env, _ in OPTIONS}
    holder = config.pluginmanager.get_plugin("hcref_conformance_backend")
    try:
        if holder is not None:
            backend, spec = holder.backend, holder.spec
        else:
            spec = values["--backend"] or ""
            backend = load_backend(spec)
    except BackendLoadError as exc:
        raise pytest.UsageError(f"hcref conformance: {exc}") from None
    device = values["--device"] or "cpu"
    supported = [dtype for dev, dtype in backend.capabilities() if dev == device]
    if values["--dtypes"]:
        wanted = [d.strip() for d in values["--dtypes"].split(",") if d.strip()]
        unknown = [d for d in wanted if d not in DTYPES]
        if unknown:
            raise pytest.UsageError(f"--dtypes: unknown {unknown}; expected a comma-separated subset of {DTYPES}")
    else:
        wanted = [d for d in DTYPES if d in supported]
    if not supported:
        raise pytest.UsageError(f"--device: backend {spec} supports no dtype on device {device!r} "
                                f"(capabilities: {list(backend.capabilities())})")
    return State(
        backend=backend,
        spec=spec,
        device=device,
        dtypes=[d for d in wanted if d in supported],
        unsupported=[d for d in wanted if d not in supported],
        max_examples=_int("--max-examples", values["--max-examples"], DEFAULT_MAX_EXAMPLES) or 1,
        seed=_int("--seed", values["--seed"], None),
        xfails_file=values["--xfails-file"],
        skips_file=values["--skips-file"],
        report_json=values["--report-json"],
        shrink=not (config.getoption(_dest(NO_SHRINK[0])) or os.environ.get(NO_SHRINK[1], "") not in ("", "0")),
    )


def pytest_configure(config: pytest.Config) -> None:
    from hypothesis import HealthCheck, Phase, settings

    config.addinivalue_line("python_files", "tests_*.py")
    state = resolve(config)
    config.stash[_STATE] = state
    settings.register_profile(
        "hcref-conformance",
        max_examples=state.max_examples,
        derandomize=state.seed is None,
        deadline=None,
        database=None,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
        phases=list(Phase) if state.shrink else [Phase.explicit, Phase.reuse, Phase.generate],
    )
    settings.load_profile("hcref-conformance")


def _state(config: pytest.Config) -> State:
    return config.stash[_STATE]


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = _state(config)
    b = state.backend
    lines = [
        f"hcref conformance: backend {state.spec} -> {getattr(b, 'name', '?')} {getattr(b, 'version', '?')} "
        f"({getattr(b, 'framework_version', '?')})",
        f"  device {state.device}; dtypes {','.join(state.dtypes) or '(none)'}"
        + (f"; not supported, skipped: {','.join(state.unsupported)}" if state.unsupported else ""),
        f"  max examples {state.max_examples}; seed {'derandomized' if state.seed is None else state.seed}"
        + ("" if state.shrink else "; no shrinking"),
    ]
    env = {k: v for k, v in os.environ.items() if k.startswith("HCREF_")}
    lines.append("  environment: " + (", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "(no HCREF_* set)"))
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dtype" not in metafunc.fixturenames:
        return
    state = _state(metafunc.config)
    params = [pytest.param(d, id=d) for d in state.dtypes]
    params += [pytest.param(d, id=d, marks=pytest.mark.skip(reason=f"backend does not support {d} on {state.device}"))
               for d in state.unsupported]
    metafunc.parametrize("dtype", params)


def _read_ids(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise pytest.UsageError(f"cannot read {path}: {exc}") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _ids(item: pytest.Item) -> tuple[str, ...]:
    module = os.path.basename(str(item.path))
    return (f"{module}::{item.name}", item.name, item.nodeid)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = _state(config)
    if state.seed is not None:
        from hypothesis import seed

        for item in items:
            function = getattr(item, "obj", None)
            if function is not None and hasattr(function, "hypothesis"):
                seed(state.seed)(function)
    for path, mark in ((state.skips_file, "skip"), (state.xfails_file, "xfail")):
        if not path:
            continue
        for prefix in _read_ids(path):
            matched = [item for item in items if any(i.startswith(prefix) for i in _ids(item))]
            if not matched:
                warnings.warn(f"{path}: {prefix!r} matches no collected test", stacklevel=1)
            for item in matched:
                reason = f"listed in {os.path.basename(path)}"
                item.add_marker(pytest.mark.skip(reason=reason) if mark == "skip"
                                else pytest.mark.xfail(reason=reason, strict=False))


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> Any:
    """The backend under test."""
    return _state(request.config).backend


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    """The device name under test."""
    return _state(request.config).device


@pytest.fixture(scope="session")
def recorder(request: pytest.FixtureRequest) -> Recorder:
    """The session's :class:`~hcref_conformance.report.Recorder`."""
    return _state(request.config).recorder


def _labels(item: pytest.Item) -> tuple[str, str, str] | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "op" not in params or "dtype" not in params:
        return None
    check = getattr(item, "originalname", item.name).removeprefix("test_").split("_")[0]
    return str(params["op"]), str(params["dtype"]), check


def _message(excinfo: Any) -> str:
    from .compare import ConformanceError

    value = excinfo.value
    stack = [value]
    while stack:
        exc = stack.pop()
        if isinstance(exc, ConformanceError):
            return str(exc)
        stack.extend(getattr(exc, "exceptions", ()))
    return f"{type(value).__name__}: {value}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if _STATE not in item.config.stash:
        return
    state = _state(item.config)
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    if hasattr(report, "wasxfail"):
        kind = "xpassed" if report.outcome == "passed" else "xfailed"
    else:
        kind = {"passed": "passed", "failed": "failed", "skipped": "skipped"}[report.outcome]
    state.totals[kind] += 1
    labels = _labels(item)
    if labels is not None:
        state.recorder.outcome(*labels, kind)
    if kind == "failed":
        op, dtype, check = labels or ("?", "?", "?")
        state.recorder.failures.append({"nodeid": item.nodeid, "op": op, "dtype": dtype, "check": check,
                                        "message": _message(call.excinfo) if call.excinfo else report.longreprtext})


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _STATE not in config.stash:
        return
    state = _state(config)
    seconds = time.perf_counter() - state.started
    terminalreporter.section(f"hcref conformance summary: {spec_of(state.backend)} on {state.device}")
    for line in state.recorder.table():
        terminalreporter.write_line(line)
    if state.report_json:
        b = state.backend
        header = {"backend": state.spec, "name": getattr(b, "name", None), "version": getattr(b, "version", None),
                  "framework_version": getattr(b, "framework_version", None), "device": state.device,
                  "dtypes": state.dtypes, "unsupported_dtypes": state.unsupported,
                  "max_examples": state.max_examples, "seed": state.seed, "exitstatus": int(exitstatus)}
        write_json(state.report_json, header, state.recorder, state.totals, seconds)
        terminalreporter.write_line(f"JSON report: {state.report_json}")
