"""Every bad input of the contract raises ``ValueError``/``TypeError`` naming the argument, what
was received and what was expected (spec README section 2), and nothing broadcasts silently."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import hcref

rng = np.random.default_rng(0)
H4 = rng.standard_normal((2, 4, 8))  # HC: n = 4, d = 8 ; FC: m = 4, e = 8
hc_p = hcref.init_hc(4, 8, 0)
fc_p = hcref.init_fc(4, 32)
alpha_hc = rng.standard_normal((2, 4, 5))
alpha_fc = rng.standard_normal((2, 4, 8))


def without(params: dict[str, np.ndarray], key: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in params.items() if k != key}


def with_(params: dict[str, np.ndarray], key: str, value: Any) -> dict[str, Any]:
    return {**params, key: value}


# (id, call, exception, fragments that must all appear in the message)
CASES: list[tuple[str, Callable[[], Any], type[Exception], tuple[str, ...]]] = [
    ("expand rank 0", lambda: hcref.expand(np.float64(1.0), 2), ValueError, ("x:", "(..., d)", "()")),
    ("expand n=0", lambda: hcref.expand(np.ones(3), 0), ValueError, ("n:", ">= 1", "0")),
    ("expand n float", lambda: hcref.expand(np.ones(3), 2.0), TypeError, ("n:", "int", "float")),
    ("expand n bool", lambda: hcref.expand(np.ones(3), True), TypeError, ("n:", "int", "bool")),
    ("expand int dtype", lambda: hcref.expand(np.ones(3, dtype=np.int64), 2), TypeError, ("x:", "floating", "int64")),
    ("expand list", lambda: hcref.expand([1.0, 2.0], 2), TypeError, ("x:", "list")),
    ("reduce rank 1", lambda: hcref.reduce(np.ones(3)), ValueError, ("H:", "(..., n, d)", "(3,)")),
    ("split d % m", lambda: hcref.frac_split(np.ones((2, 10)), 3), ValueError, ("x:", "d=10", "m=3")),
    ("split m=0", lambda: hcref.frac_split(np.ones(4), 0), ValueError, ("m:", ">= 1")),
    ("merge rank 1", lambda: hcref.frac_merge(np.ones(4)), ValueError, ("H:", "(..., m, e)", "(4,)")),
    ("hc_coeffs missing key", lambda: hcref.hc_coeffs(H4, without(hc_p, "W_beta")), ValueError,
     ("params:", "missing ['W_beta']")),
    ("hc_coeffs extra key", lambda: hcref.hc_coeffs(H4, with_(hc_p, "gamma", np.ones(3))), ValueError,
     ("params:", "extra ['gamma']")),
    ("hc_coeffs fc keys", lambda: hcref.hc_coeffs(H4, fc_p), ValueError, ("params:", "missing", "'A_m'")),
    ("hc_coeffs norm keys", lambda: hcref.hc_coeffs(H4, hc_p, norm="rmsnorm"), ValueError,
     ("params:", "extra ['norm_bias']", "rmsnorm")),
    ("hc_coeffs n mismatch", lambda: hcref.hc_coeffs(H4[..., :3, :], hc_p), ValueError,
     ("params['A_m']", "(3,)", "(4,)")),
    ("hc_coeffs d mismatch", lambda: hcref.hc_coeffs(H4[..., :7], hc_p), ValueError,
     ("params['W_alpha']", "(7, 5)", "(8, 5)")),
    ("hc_coeffs scalar gate as (1,)", lambda: hcref.hc_coeffs(H4, with_(hc_p, "s_alpha", np.ones(1))), ValueError,
     ("params['s_alpha']", "()", "(1,)")),
    ("hc_coeffs int param", lambda: hcref.hc_coeffs(H4, with_(hc_p, "B", np.ones(4, dtype=np.int32))), TypeError,
     ("params['B']", "floating", "int32")),
    ("hc_coeffs params list", lambda: hcref.hc_coeffs(H4, [1.0]), TypeError, ("params:", "mapping", "list")),
    ("hc_coeffs bad norm", lambda: hcref.hc_coeffs(H4, hc_p, norm="batchnorm"), ValueError,
     ("norm:", "'batchnorm'", "layernorm")),
    ("hc_coeffs flag not bool", lambda: hcref.hc_coeffs(H4, hc_p, use_tanh=1), TypeError, ("use_tanh:", "bool")),
    ("hc_coeffs rank 1", lambda: hcref.hc_coeffs(np.ones(8), hc_p), ValueError, ("H:", "(..., n, d)")),
    ("hc_width alpha cols", lambda: hcref.hc_width(H4, alpha_fc), ValueError, ("alpha:", "(2, 4, 5)", "(2, 4, 8)")),
    ("hc_width no broadcast", lambda: hcref.hc_width(H4, alpha_hc[:1]), ValueError, ("alpha:", "(1, 4, 5)")),
    ("hc_width shared alpha", lambda: hcref.hc_width(H4, alpha_hc[0]), ValueError, ("alpha:", "(4, 5)")),
    ("hc_depth y width", lambda: hcref.hc_depth(np.ones((2, 7)), H4, np.ones((2, 4))), ValueError,
     ("y:", "(2, 8)", "(2, 7)")),
    ("hc_depth beta", lambda: hcref.hc_depth(np.ones((2, 8)), H4, np.ones((2, 3))), ValueError,
     ("beta:", "(2, 4)", "(2, 3)")),
    ("hc_depth y broadcast", lambda: hcref.hc_depth(np.ones(8), H4, np.ones((2, 4))), ValueError, ("y:", "(8,)")),
    ("fc_coeffs e mismatch", lambda: hcref.fc_coeffs(H4[..., :6], fc_p), ValueError,
     ("params['W_alpha']", "(6, 8)", "(8, 8)")),
    ("fc_coeffs hc keys", lambda: hcref.fc_coeffs(H4, hc_p), ValueError, ("params:", "missing", "'Y'")),
    ("fc_width alpha cols", lambda: hcref.fc_width(H4, alpha_hc), ValueError, ("alpha:", "(2, 4, 8)", "(2, 4, 5)")),
    ("fc_depth y width", lambda: hcref.fc_depth(np.ones((2, 8)), H4, np.ones((2, 4))), ValueError,
     ("y:", "(2, 32)", "(2, 8)")),
    ("fc_depth beta", lambda: hcref.fc_depth(np.ones((2, 32)), H4, np.ones((4,))), ValueError, ("beta:", "(4,)")),
    ("init_fc d % m", lambda: hcref.init_fc(3, 10), ValueError, ("d:", "m=3", "10")),
    ("init_hc layer_index", lambda: hcref.init_hc(4, 8, -1), ValueError, ("layer_index:", ">= 0", "-1")),
    ("init_hc norm", lambda: hcref.init_hc(4, 8, 0, norm="LayerNorm"), ValueError, ("norm:", "'LayerNorm'")),
    ("init_hc dynamic", lambda: hcref.init_hc(4, 8, 0, dynamic="yes"), TypeError, ("dynamic:", "bool")),
    ("hc_width_vjp cotangent", lambda: hcref.hc_width_vjp(H4, alpha_hc, np.ones((2, 8)), np.ones((2, 4, 7))),
     ValueError, ("g_H_res", "(2, 4, 8)", "(2, 4, 7)")),
    ("reduce_vjp cotangent", lambda: hcref.reduce_vjp(H4, np.ones((2, 4, 8))), ValueError, ("g_x", "(2, 8)")),
]


@pytest.mark.parametrize(("call", "error", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_named_error(
    call: Callable[[], Any], error: type[Exception], fragments: tuple[str, ...]
) -> None:
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_every_op_rejects_a_non_array() -> None:
    """A list (or a torch tensor handed to the NumPy reference) is a TypeError naming the argument."""
    for name, call in [
        ("x", lambda: hcref.frac_split((1.0, 2.0), 2)),
        ("H", lambda: hcref.reduce([[1.0]])),
        ("H", lambda: hcref.fc_coeffs([[1.0]], fc_p)),
        ("alpha", lambda: hcref.fc_width(H4, alpha_fc.tolist())),
        ("beta", lambda: hcref.hc_depth(np.ones((2, 8)), H4, [0.0] * 4)),
    ]:
        with pytest.raises(TypeError, match=rf"^{name}: "):
            call()
