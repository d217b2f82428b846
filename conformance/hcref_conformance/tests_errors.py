"""Bad input raises like the reference: the same ``ValueError``/``TypeError`` class, with a
message that names the argument, and never a silent broadcast.

Each case is built in NumPy, converted to the backend's arrays of the test dtype, and
passed to the backend's op; the reference is called on the same NumPy values to get the
expected exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import hcref

from .cases import to_backend
from .checks import backend_label
from .compare import Context
from .loading import spec_of

_rng = np.random.default_rng(0)
_H = _rng.standard_normal((2, 4, 8))  # HC: n = 4, d = 8 ; FC: m = 4, e = 8
_HC = hcref.init_hc(4, 8, 0)
_FC = hcref.init_fc(4, 32)
_ALPHA_HC = _rng.standard_normal((2, 4, 5))
_ALPHA_FC = _rng.standard_normal((2, 4, 8))


def _without(params: dict[str, np.ndarray], key: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in params.items() if k != key}


def _with(params: dict[str, np.ndarray], key: str, value: np.ndarray) -> dict[str, np.ndarray]:
    return {**params, key: value}


# (id, op, positional args (NumPy or ints), keyword options)
BAD_INPUTS: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = [
    ("rank0", "expand", (np.array(1.0), 2), {}),
    ("n0", "expand", (np.ones(3), 0), {}),
    ("n-float", "expand", (np.ones(3), 2.0), {}),
    ("n-bool", "expand", (np.ones(3), True), {}),
    ("rank1", "reduce", (np.ones(3),), {}),
    ("d-not-multiple", "frac_split", (np.ones((2, 10)), 3), {}),
    ("m0", "frac_split", (np.ones(4), 0), {}),
    ("rank1", "frac_merge", (np.ones(4),), {}),
    ("missing-key", "hc_coeffs", (_H, _without(_HC, "W_beta")), {}),
    ("extra-key", "hc_coeffs", (_H, _with(_HC, "gamma", np.ones(3))), {}),
    ("fc-keys", "hc_coeffs", (_H, _FC), {}),
    ("norm-keys", "hc_coeffs", (_H, _HC), {"norm": "rmsnorm"}),
    ("n-mismatch", "hc_coeffs", (_H[..., :3, :], _HC), {}),
    ("d-mismatch", "hc_coeffs", (_H[..., :7], _HC), {}),
    ("gate-shape", "hc_coeffs", (_H, _with(_HC, "s_alpha", np.ones(1))), {}),
    ("bad-norm", "hc_coeffs", (_H, _HC), {"norm": "batchnorm"}),
    ("flag-not-bool", "hc_coeffs", (_H, _HC), {"use_tanh": 1}),
    ("rank1", "hc_coeffs", (np.ones(8), _HC), {}),
    ("alpha-cols", "hc_width", (_H, _ALPHA_FC), {}),
    ("alpha-broadcast", "hc_width", (_H, _ALPHA_HC[:1]), {}),
    ("alpha-shared", "hc_width", (_H, _ALPHA_HC[0]), {}),
    ("y-width", "hc_depth", (np.ones((2, 7)), _H, np.ones((2, 4))), {}),
    ("beta-n", "hc_depth", (np.ones((2, 8)), _H, np.ones((2, 3))), {}),
    ("y-broadcast", "hc_depth", (np.ones(8), _H, np.ones((2, 4))), {}),
    ("beta-broadcast", "hc_depth", (np.ones((2, 8)), _H, np.ones(4)), {}),
    ("e-mismatch", "fc_coeffs", (_H[..., :6], _FC), {}),
    ("hc-keys", "fc_coeffs", (_H, _HC), {}),
    ("missing-key", "fc_coeffs", (_H, _without(_FC, "Y")), {}),
    ("alpha-cols", "fc_width", (_H, _ALPHA_HC), {}),
    ("alpha-broadcast", "fc_width", (_H, _ALPHA_FC[:1]), {}),
    ("y-width", "fc_depth", (np.ones((2, 8)), _H, np.ones((2, 4))), {}),
    ("beta-broadcast", "fc_depth", (np.ones((2, 32)), _H, np.ones((4,))), {}),
    ("y-broadcast", "fc_depth", (np.ones(32), _H, np.ones((2, 4))), {}),
]
"""Every bad input of the contract the suite tries, by op."""


def _expected(op: str, args: tuple[Any, ...], options: dict[str, Any]) -> BaseException:
    call: Callable[..., Any] = getattr(hcref, op)
    try:
        call(*args, **options)
    except (ValueError, TypeError) as exc:
        return exc
    raise AssertionError(f"suite bug: the reference accepted bad input for {op}")


def _describe(args: tuple[Any, ...]) -> str:
    parts = []
    for a in args:
        if isinstance(a, dict):
            parts.append("params {" + ", ".join(f"{k} {np.shape(v)}" for k, v in a.items()) + "}")
        elif isinstance(a, np.ndarray):
            parts.append(f"array {a.shape}")
        else:
            parts.append(repr(a))
    return ", ".join(parts)


def check_bad_input(backend: Any, op: str, case_id: str, *, dtype: str, device: str = "cpu") -> None:
    """Call ``backend.<op>`` on bad input ``case_id`` of :data:`BAD_INPUTS`; raise unless it
    raises the reference's exception class with the argument named in the message."""
    __tracebackhide__ = True
    ((_, _, args, options),) = [c for c in BAD_INPUTS if c[1] == op and c[0] == case_id]
    expected = _expected(op, args, options)
    argument = str(expected).split(":", 1)[0].split("[", 1)[0]
    repro = "\n".join([
        "from hcref_conformance.loading import load_backend",
        "from hcref_conformance.tests_errors import check_bad_input",
        f"check_bad_input(load_backend({spec_of(backend)!r}), {op!r}, {case_id!r}, dtype={dtype!r}, device={device!r})",
    ])
    ctx = Context(op=op, check="errors", backend=backend_label(backend), dtype=dtype, device=device,
                  inputs=_describe(args), options=repr(options), repro=repro)
    native = to_backend(backend, args, dtype, device)
    try:
        getattr(backend, op)(*native, **options)
    except (ValueError, TypeError) as exc:
        if not isinstance(exc, type(expected)):
            raise ctx.fail(f"raised {type(exc).__name__}: {exc}; the reference raises {expected!r}") from exc
        if argument not in str(exc):
            raise ctx.fail(f"the message {str(exc)!r} does not name the argument {argument!r} "
                           f"(reference: {expected!r})") from exc
        return
    raise ctx.fail(f"accepted bad input (no ValueError/TypeError); the reference raises {expected!r}")


@pytest.mark.parametrize(("op", "case_id"), [pytest.param(c[1], c[0], id=f"{c[1]}-{c[0]}") for c in BAD_INPUTS])
def test_errors(backend: Any, device: str, dtype: str, op: str, case_id: str, recorder: Any) -> None:
    check_bad_input(backend, op, case_id, dtype=dtype, device=device)
    recorder.record(op, dtype, "errors", 0.0)
