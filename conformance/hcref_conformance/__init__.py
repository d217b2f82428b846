"""hcref_conformance: the conformance suite every hcref backend runs against itself.

Run it as ``python -m hcref_conformance --backend MODULE[:ATTR]`` (``--all`` for every
installed first-party backend), as a pytest plugin
(``pytest -p hcref_conformance.plugin --pyargs hcref_conformance --backend MODULE``), or
from Python with :func:`run`.

What conformance proves, and what it does not. Each op the port declares, its VJP, one whole
site, a two-site network and the Pre-Norm-at-init property (through the port's ops or its own
module-level ``site`` and initialiser) agree with the float64 NumPy reference (:mod:`hcref`)
on the inputs already rounded to the test dtype, within the per-dtype bounds of
:mod:`hcref.tolerances`, on the shapes and options of :mod:`hcref_conformance.strategies`
(random values; free draws up to n, m = 16 in the thorough profile) plus fixed cases (extreme
activation scales, size-0 leading axes, mixed precision); named structural properties hold on
the smallest inputs that show them; bad input raises like the reference. Whatever the port does
not declare (:class:`hcref.interface.Support`) is reported as n/a, never as pass or FAIL. It does
not prove speed, memory, behaviour on shapes far beyond the caps, or the accuracy of anything
the port computes outside the contract.

Importing this package loads no ML framework: backends are imported only when named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hcref import __version__

__all__ = ["__version__", "run"]


class _BackendHolder:
    """Hands an already built backend object to the plugin (used by :func:`run`)."""

    def __init__(self, backend: Any, spec: str) -> None:
        self.backend, self.spec = backend, spec


def run(
    backend: Any,
    *,
    device: str | None = None,
    dtypes: Sequence[str] | None = None,
    profile: str | None = None,
    max_examples: int | None = None,
    seed: int | None = None,
    xfails_file: str | None = None,
    skips_file: str | None = None,
    report_json: str | None = None,
    report_md: str | None = None,
    skips: Mapping[str, str] | None = None,
    expected_failures: Mapping[str, str] | None = None,
    pytest_args: Sequence[str] = ("-q",),
) -> int:
    """Run the suite in this process and return pytest's exit status (0: all passed).

    ``backend`` is a ``MODULE[:ATTR]`` / ``path.py[:ATTR]`` string or a port object (its
    ``prepare_for_conformance()`` is called when present). The other arguments are the command
    line's options (``dtypes`` may include ``"mixed"``); ``skips`` and ``expected_failures`` map
    ``"OP CHECK DTYPE"`` patterns (see :mod:`hcref_conformance.plugin`) to their reasons, as in
    scikit-learn's ``parametrize_with_checks``, so a port's own test file can be three lines::

        def test_conformance():
            assert hcref_conformance.run("my_port:backend", expected_failures={
                "hc_coeffs vjp bfloat16": "our bf16 norm VJP accumulates in bf16"}) == 0

    Raises ``ImportError`` naming the ``conformance`` extra when pytest or hypothesis is missing.
    """
    from .cli import INSTALL_HINT, missing_dependencies

    missing = missing_dependencies()
    if missing:
        raise ImportError(f"the hcref conformance suite needs {' and '.join(missing)}: {INSTALL_HINT}")
    import tempfile

    import pytest

    from .loading import spec_of

    with tempfile.TemporaryDirectory(prefix="hcref-conformance-") as tmp:
        for mapping, name in ((skips, "skips"), (expected_failures, "xfails")):
            if mapping:
                path = f"{tmp}/{name}.txt"
                with open(path, "w", encoding="utf-8") as handle:
                    handle.writelines(f"{pattern}  # {reason}\n" for pattern, reason in mapping.items())
                if name == "skips":
                    skips_file = path
                else:
                    xfails_file = path
        args = ["-p", "hcref_conformance.plugin", "-p", "no:cacheprovider", "--pyargs", "hcref_conformance"]
        plugins: list[Any] = []
        if isinstance(backend, str):
            args += ["--backend", backend]
        else:
            prepare = getattr(backend, "prepare_for_conformance", None)
            if callable(prepare):
                prepare()
            plugins.append(_BackendHolder(backend, spec_of(backend)))
        for option, value in (("--device", device), ("--dtypes", ",".join(dtypes) if dtypes else None),
                              ("--profile", profile), ("--max-examples", max_examples), ("--seed", seed),
                              ("--xfails-file", xfails_file), ("--skips-file", skips_file),
                              ("--report-json", report_json), ("--report-md", report_md)):
            if value is not None:
                args += [option, str(value)]
        return int(pytest.main([*args, *pytest_args], plugins=[_named(p) for p in plugins]))


def _named(holder: _BackendHolder) -> Any:
    holder.__dict__["__name__"] = "hcref_conformance_backend"
    return holder
