"""hcref_conformance: the conformance suite every hcref backend runs against itself.

Run it as ``python -m hcref_conformance --backend MODULE[:ATTR]`` (``--all`` for every
installed first-party backend), as a pytest plugin
(``pytest -p hcref_conformance.plugin --pyargs hcref_conformance --backend MODULE``), or
from Python with :func:`run`.

What conformance proves, and what it does not. Each op, its VJP, one whole site, a
two-site network and the Pre-Norm-at-init property agree with the float64 NumPy reference
(:mod:`hcref`) on the inputs already rounded to the test dtype, within the per-dtype
bounds of :mod:`hcref.tolerances`, on random shapes up to the caps of
:mod:`hcref_conformance.strategies` plus a fixed list of special cases; bad input raises like
the reference. It does not prove speed, memory, behaviour on shapes far beyond the caps,
or the accuracy of anything the backend computes outside the contract's ops.

Importing this package loads no ML framework: backends are imported only when named.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    max_examples: int | None = None,
    seed: int | None = None,
    xfails_file: str | None = None,
    skips_file: str | None = None,
    report_json: str | None = None,
    pytest_args: Sequence[str] = ("-q",),
) -> int:
    """Run the suite in this process and return pytest's exit status (0: all passed).

    ``backend`` is a ``MODULE[:ATTR]`` string or a backend object (its
    ``prepare_for_conformance()`` is called when present).
    """
    import pytest

    from .loading import spec_of

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
                          ("--max-examples", max_examples), ("--seed", seed), ("--xfails-file", xfails_file),
                          ("--skips-file", skips_file), ("--report-json", report_json)):
        if value is not None:
            args += [option, str(value)]
    return int(pytest.main([*args, *pytest_args], plugins=[_named(p) for p in plugins]))


def _named(holder: _BackendHolder) -> Any:
    holder.__dict__["__name__"] = "hcref_conformance_backend"
    return holder
