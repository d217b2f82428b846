"""The error contract: bad input raises like the reference, the same ``ValueError``/``TypeError``
class with a message that names the argument, and is never silently broadcast.

Each case is built in NumPy, converted to the port's arrays of the test dtype and passed to
the port's op; the reference is called on the same NumPy values to get the expected exception.
An exception of any other class (``RuntimeError``, ``KeyError``, an ``AssertionError`` from a
library's own check) is a failure reported with the usual header and repro.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import hcref

from .cases import to_backend
from .compare import ConformanceError, Context
from .loading import spec_of
from .subject import NotApplicable, subject_for

_rng = np.random.default_rng(0)
_H = _rng.standard_normal((2, 4, 8))  # HC: n = 4, d = 8 ; FC: m = 4, e = 8
_HC = hcref.init_hc(4, 8, 0)
_FC = hcref.init_fc(4, 32)
_ALPHA_HC = _rng.standard_normal((2, 4, 5))
_ALPHA_FC = _rng.standard_normal((2, 4, 8))
_MHC = hcref.init_mhc(4, 8, 0)           # mHC: n = 4, d = 8 on _H
_MHC_HEAD = hcref.init_mhc_head(4, 8)
_Z = _rng.standard_normal((2, 4, 4))


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
    ("rank0", "frac_split", (np.array(1.0), 2), {}),
    ("rank1", "frac_merge", (np.ones(4),), {}),
    ("missing-key", "hc_coeffs", (_H, _without(_HC, "W_beta")), {}),
    ("extra-key", "hc_coeffs", (_H, _with(_HC, "gamma", np.ones(3))), {}),
    ("fc-keys", "hc_coeffs", (_H, _FC), {}),
    ("norm-keys", "hc_coeffs", (_H, _HC), {"norm": "rmsnorm"}),
    ("n-mismatch", "hc_coeffs", (_H[..., :3, :], _HC), {}),
    ("d-mismatch", "hc_coeffs", (_H[..., :7], _HC), {}),
    ("gate-shape", "hc_coeffs", (_H, _with(_HC, "s_alpha", np.ones(1))), {}),
    ("B-broadcast", "hc_coeffs", (_H, _with(_HC, "B", np.ones(1))), {}),
    ("bad-norm", "hc_coeffs", (_H, _HC), {"norm": "batchnorm"}),
    ("flag-not-bool", "hc_coeffs", (_H, _HC), {"use_tanh": 1}),
    ("rank1", "hc_coeffs", (np.ones(8), _HC), {}),
    ("alpha-cols", "hc_width", (_H, _ALPHA_FC), {}),
    ("alpha-broadcast", "hc_width", (_H, _ALPHA_HC[:1]), {}),
    ("alpha-shared", "hc_width", (_H, _ALPHA_HC[0]), {}),
    ("alpha-last1", "hc_width", (_H, np.ones((2, 4, 1))), {}),
    ("y-width", "hc_depth", (np.ones((2, 7)), _H, np.ones((2, 4))), {}),
    ("beta-n", "hc_depth", (np.ones((2, 8)), _H, np.ones((2, 3))), {}),
    ("y-broadcast", "hc_depth", (np.ones(8), _H, np.ones((2, 4))), {}),
    ("beta-broadcast", "hc_depth", (np.ones((2, 8)), _H, np.ones(4)), {}),
    ("y-last1", "hc_depth", (np.ones((2, 1)), _H, np.ones((2, 4))), {}),
    ("beta-last1", "hc_depth", (np.ones((2, 8)), _H, np.ones((2, 1))), {}),
    ("y-lead1", "hc_depth", (np.ones((1, 8)), _H, np.ones((2, 4))), {}),
    ("beta-lead1", "hc_depth", (np.ones((2, 8)), _H, np.ones((1, 4))), {}),
    ("e-mismatch", "fc_coeffs", (_H[..., :6], _FC), {}),
    ("hc-keys", "fc_coeffs", (_H, _HC), {}),
    ("missing-key", "fc_coeffs", (_H, _without(_FC, "Y")), {}),
    ("alpha-cols", "fc_width", (_H, _ALPHA_HC), {}),
    ("alpha-broadcast", "fc_width", (_H, _ALPHA_FC[:1]), {}),
    ("alpha-last1", "fc_width", (_H, np.ones((2, 4, 1))), {}),
    ("y-width", "fc_depth", (np.ones((2, 8)), _H, np.ones((2, 4))), {}),
    ("beta-broadcast", "fc_depth", (np.ones((2, 32)), _H, np.ones((4,))), {}),
    ("y-broadcast", "fc_depth", (np.ones(32), _H, np.ones((2, 4))), {}),
    ("y-last1", "fc_depth", (np.ones((2, 1)), _H, np.ones((2, 4))), {}),
    ("beta-last1", "fc_depth", (np.ones((2, 32)), _H, np.ones((2, 1))), {}),
    ("y-lead1", "fc_depth", (np.ones((1, 32)), _H, np.ones((2, 4))), {}),
    ("non-square", "sinkhorn", (np.ones((2, 4, 3)),), {}),
    ("rank1", "sinkhorn", (np.ones(4),), {}),
    ("iters0", "sinkhorn", (_Z,), {"iters": 0}),
    ("iters-float", "sinkhorn", (_Z,), {"iters": 2.0}),
    ("eps-negative", "sinkhorn", (_Z,), {"eps": -1e-6}),
    ("missing-key", "mhc_coeffs", (_H, _without(_MHC, "gates")), {}),
    ("extra-key", "mhc_coeffs", (_H, _with(_MHC, "W_alpha", np.ones(3))), {}),
    ("hc-keys", "mhc_coeffs", (_H, _HC), {}),
    ("phi-shape", "mhc_coeffs", (_H, _with(_MHC, "phi", np.zeros((8, 24)))), {}),
    ("b-broadcast", "mhc_coeffs", (_H, _with(_MHC, "b", np.ones(1))), {}),
    ("gates-shape", "mhc_coeffs", (_H, _with(_MHC, "gates", np.ones(1))), {}),
    ("n-mismatch", "mhc_coeffs", (_H[..., :3, :], _MHC), {}),
    ("iters0", "mhc_coeffs", (_H, _MHC), {"iters": 0}),
    ("eps-negative", "mhc_coeffs", (_H, _MHC), {"eps": -1.0}),
    ("h_pre-n", "mhc_pre", (_H, np.ones((2, 3))), {}),
    ("h_pre-broadcast", "mhc_pre", (_H, np.ones(4)), {}),
    ("h_pre-last1", "mhc_pre", (_H, np.ones((2, 1))), {}),
    ("h_pre-lead1", "mhc_pre", (_H, np.ones((1, 4))), {}),
    ("y-width", "mhc_post", (np.ones((2, 7)), _H, np.ones((2, 4)), _Z), {}),
    ("y-broadcast", "mhc_post", (np.ones(8), _H, np.ones((2, 4)), _Z), {}),
    ("y-last1", "mhc_post", (np.ones((2, 1)), _H, np.ones((2, 4)), _Z), {}),
    ("h_post-n", "mhc_post", (np.ones((2, 8)), _H, np.ones((2, 3)), _Z), {}),
    ("h_res-non-square", "mhc_post", (np.ones((2, 8)), _H, np.ones((2, 4)), _Z[..., :3]), {}),
    ("h_res-broadcast", "mhc_post", (np.ones((2, 8)), _H, np.ones((2, 4)), _Z[0]), {}),
    ("h_res-lead1", "mhc_post", (np.ones((2, 8)), _H, np.ones((2, 4)), _Z[:1]), {}),
    ("missing-key", "mhc_head", (_H, _without(_MHC_HEAD, "gate")), {}),
    ("site-keys", "mhc_head", (_H, _MHC), {}),
    ("phi-shape", "mhc_head", (_H, _with(_MHC_HEAD, "phi", np.zeros((32, 3)))), {}),
    ("eps-negative", "mhc_head", (_H, _MHC_HEAD), {"eps": -1e-6}),
    ("rank1", "mhc_head", (np.ones(8), _MHC_HEAD), {}),
]
"""Every bad input of the contract the suite tries, by op (size-1 axes included: a port that
broadcasts them silently fails)."""


def _undeclared(support: Any, op: str, args: tuple[Any, ...], options: dict[str, Any]) -> str | None:
    """Why a bad input needs what the port does not declare (apart from its one bad part)."""
    from hcref.validation import NORMS

    if op in ("sinkhorn", "mhc_coeffs", "mhc_head"):
        if op != "mhc_head" and "iters" in options and support.iters is not None:
            return "a fixed number of Sinkhorn iterations declared"
        if op == "mhc_coeffs" and "dynamic" not in support.modes:
            return "dynamic coefficients not declared"
        return None
    if any(isinstance(a, dict) and "W_alpha" in a for a in args) and "dynamic" not in support.modes:
        return "dynamic coefficients not declared"
    if op.endswith("_coeffs"):
        norm = options.get("norm", "layernorm")
        if norm in NORMS and norm not in support.norms:
            return f"norm {norm!r} not declared"
        if any(options.get(s) is False and s not in support.switches for s in ("use_tanh", "use_norm", "use_scale")):
            return "a switch that is not declared"
    return None


def _expected(op: str, args: tuple[Any, ...], options: dict[str, Any]) -> BaseException:
    call: Callable[..., Any] = getattr(hcref, op)
    try:
        call(*args, **options)
    except (ValueError, TypeError) as exc:
        return exc
    raise AssertionError(f"suite bug: the reference accepted bad input {op}{args!r}")


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
    subject = subject_for(backend, device)
    if not subject.support.has_op(op):
        raise NotApplicable(f"op {op} not declared")
    ((_, _, args, options),) = [c for c in BAD_INPUTS if c[1] == op and c[0] == case_id]
    reason = _undeclared(subject.support, op, args, options)
    if reason:
        raise NotApplicable(reason)
    expected = _expected(op, args, options)
    argument = str(expected).split(":", 1)[0].split("[", 1)[0]
    repro = "\n".join([
        "from hcref_conformance.loading import load_backend",
        "from hcref_conformance.errors import check_bad_input",
        f"check_bad_input(load_backend({spec_of(backend)!r}), {op!r}, {case_id!r}, dtype={dtype!r}, device={device!r})",
    ])
    ctx = Context(op=op, check="errors", backend=subject.label, dtype=dtype, device=device,
                  inputs=_describe(args), options=repr(options), repro=repro)
    native = to_backend(backend, args, dtype, device)
    try:
        getattr(backend, op)(*native, **options)
    except (ConformanceError, NotApplicable):
        raise
    except Exception as exc:
        if not isinstance(exc, type(expected)):
            raise ctx.fail(f"raised {type(exc).__name__}: {exc}; the reference raises {expected!r}",
                           reason="error contract") from exc
        if argument not in str(exc):
            raise ctx.fail(f"the message {str(exc)!r} does not name the argument {argument!r} "
                           f"(reference: {expected!r})", reason="error contract") from exc
        return
    raise ctx.fail(f"accepted bad input (no {type(expected).__name__}); the reference raises {expected!r}",
                   reason="error contract")
