"""Every bad input of the contract raises ``ValueError``/``TypeError`` naming the argument, what
was received and what was expected (spec README section 2), and nothing broadcasts silently."""

from __future__ import annotations

import re
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

# --- mHC (decisions D7-D10): n = 4, d = 8 -------------------------------------------------
mhc_p = hcref.init_mhc(4, 8, 0)
mhc_static = hcref.init_mhc(4, 8, 0, dynamic=False)
head_p = hcref.init_mhc_head(4, 8)
Z4 = rng.standard_normal((2, 4, 4))
y8 = rng.standard_normal((2, 8))
pre4 = rng.standard_normal((2, 4))

CASES += [
    ("sinkhorn non-square", lambda: hcref.sinkhorn(np.ones((2, 3, 4))), ValueError,
     ("Z:", "(..., n, n)", "square", "(2, 3, 4)")),
    ("sinkhorn rank 1", lambda: hcref.sinkhorn(np.ones(4)), ValueError, ("Z:", "(..., n, n)", "(4,)")),
    ("sinkhorn int dtype", lambda: hcref.sinkhorn(np.ones((4, 4), dtype=np.int64)), TypeError,
     ("Z:", "floating", "int64")),
    ("sinkhorn list", lambda: hcref.sinkhorn([[0.0]]), TypeError, ("Z:", "list")),
    ("sinkhorn iters 0", lambda: hcref.sinkhorn(Z4, iters=0), ValueError, ("iters:", ">= 1", "0")),
    ("sinkhorn iters float", lambda: hcref.sinkhorn(Z4, iters=20.0), TypeError, ("iters:", "int", "float")),
    ("sinkhorn iters bool", lambda: hcref.sinkhorn(Z4, iters=True), TypeError, ("iters:", "int", "bool")),
    ("sinkhorn eps < 0", lambda: hcref.sinkhorn(Z4, eps=-1e-6), ValueError, ("eps:", ">= 0", "-1e-06")),
    ("sinkhorn eps nan", lambda: hcref.sinkhorn(Z4, eps=float("nan")), ValueError, ("eps:", "finite", "nan")),
    ("sinkhorn eps str", lambda: hcref.sinkhorn(Z4, eps="1e-6"), TypeError, ("eps:", "real", "str")),
    ("sinkhorn eps bool", lambda: hcref.sinkhorn(Z4, eps=False), TypeError, ("eps:", "real", "bool")),
    ("sinkhorn_vjp cotangent", lambda: hcref.sinkhorn_vjp(Z4, np.ones((2, 4, 3))), ValueError,
     ("g_P", "(2, 4, 4)", "(2, 4, 3)")),
    ("mhc_coeffs missing gates", lambda: hcref.mhc_coeffs(H4, without(mhc_p, "gates")), ValueError,
     ("params:", "dynamic mHC", "missing ['gates']")),
    ("mhc_coeffs missing b", lambda: hcref.mhc_coeffs(H4, without(mhc_p, "b")), ValueError,
     ("params:", "missing ['b']")),
    ("mhc_coeffs extra key", lambda: hcref.mhc_coeffs(H4, with_(mhc_p, "gate", np.ones(()))), ValueError,
     ("params:", "extra ['gate']")),
    ("mhc_coeffs static extra", lambda: hcref.mhc_coeffs(H4, with_(mhc_static, "scale", np.ones(3))), ValueError,
     ("params:", "static mHC", "extra ['scale']")),
    ("mhc_coeffs empty params", lambda: hcref.mhc_coeffs(H4, {}), ValueError, ("params:", "missing ['b']")),
    ("mhc_coeffs hc keys", lambda: hcref.mhc_coeffs(H4, hc_p), ValueError, ("params:", "missing ['b']", "'A_m'")),
    ("mhc_coeffs head keys", lambda: hcref.mhc_coeffs(H4, head_p), ValueError, ("params:", "missing ['gates']")),
    ("mhc_coeffs phi n*d", lambda: hcref.mhc_coeffs(H4[..., :7], mhc_p), ValueError,
     ("params['phi']", "(28, 24)", "(32, 24)", "(n*d, 2n+n^2)")),
    ("mhc_coeffs phi transposed (V4 fn layout)", lambda: hcref.mhc_coeffs(H4, with_(mhc_p, "phi", mhc_p["phi"].T)),
     ValueError, ("params['phi']", "(32, 24)", "(24, 32)")),
    ("mhc_coeffs n mismatch", lambda: hcref.mhc_coeffs(H4[..., :3, :], mhc_p), ValueError,
     ("params['phi']", "(24, 15)", "(32, 24)")),
    ("mhc_coeffs static n mismatch", lambda: hcref.mhc_coeffs(H4[..., :3, :], mhc_static), ValueError,
     ("params['b']", "(15,)", "(24,)")),
    ("mhc_coeffs gates scalar", lambda: hcref.mhc_coeffs(H4, with_(mhc_p, "gates", np.ones(()))), ValueError,
     ("params['gates']", "(3,)", "()")),
    ("mhc_coeffs gates (1,)", lambda: hcref.mhc_coeffs(H4, with_(mhc_p, "gates", np.ones(1))), ValueError,
     ("params['gates']", "(3,)", "(1,)")),
    ("mhc_coeffs b (1, 24)", lambda: hcref.mhc_coeffs(H4, with_(mhc_p, "b", np.ones((1, 24)))), ValueError,
     ("params['b']", "(24,)", "(1, 24)")),
    ("mhc_coeffs int b", lambda: hcref.mhc_coeffs(H4, with_(mhc_p, "b", np.ones(24, dtype=np.int32))), TypeError,
     ("params['b']", "floating", "int32")),
    ("mhc_coeffs int H", lambda: hcref.mhc_coeffs(H4.astype(np.int16), mhc_p), TypeError, ("H:", "int16")),
    ("mhc_coeffs params list", lambda: hcref.mhc_coeffs(H4, [1.0]), TypeError, ("params:", "mapping", "list")),
    ("mhc_coeffs rank 1", lambda: hcref.mhc_coeffs(np.ones(8), mhc_p), ValueError, ("H:", "(..., n, d)")),
    ("mhc_coeffs iters 0", lambda: hcref.mhc_coeffs(H4, mhc_p, iters=0), ValueError, ("iters:", ">= 1")),
    ("mhc_coeffs eps < 0", lambda: hcref.mhc_coeffs(H4, mhc_p, eps=-1.0), ValueError, ("eps:", ">= 0")),
    ("mhc_coeffs_vjp cotangent", lambda: hcref.mhc_coeffs_vjp(H4, mhc_p, pre4, pre4, np.ones((2, 4, 1))),
     ValueError, ("g_h_res", "(2, 4, 4)", "(2, 4, 1)")),
    ("mhc_pre n mismatch", lambda: hcref.mhc_pre(H4, np.ones((2, 3))), ValueError,
     ("h_pre:", "(2, 4)", "(..., n) from H", "(2, 3)")),
    ("mhc_pre h_pre size-1 axis", lambda: hcref.mhc_pre(H4, np.ones((2, 1))), ValueError, ("h_pre:", "(2, 1)")),
    ("mhc_pre shared h_pre", lambda: hcref.mhc_pre(H4, np.ones(4)), ValueError, ("h_pre:", "(2, 4)", "(4,)")),
    ("mhc_pre int h_pre", lambda: hcref.mhc_pre(H4, np.ones((2, 4), dtype=np.int8)), TypeError, ("h_pre:", "int8")),
    ("mhc_pre_vjp cotangent", lambda: hcref.mhc_pre_vjp(H4, pre4, np.ones((2, 4))), ValueError, ("g_h0", "(2, 8)")),
    ("mhc_post y width", lambda: hcref.mhc_post(np.ones((2, 7)), H4, pre4, Z4), ValueError,
     ("y:", "(2, 8)", "(2, 7)")),
    ("mhc_post y size-1 axis", lambda: hcref.mhc_post(np.ones((2, 1)), H4, pre4, Z4), ValueError,
     ("y:", "(2, 8)", "(2, 1)")),
    ("mhc_post y broadcast", lambda: hcref.mhc_post(np.ones(8), H4, pre4, Z4), ValueError, ("y:", "(8,)")),
    ("mhc_post h_post n", lambda: hcref.mhc_post(y8, H4, np.ones((2, 3)), Z4), ValueError,
     ("h_post:", "(2, 4)", "(2, 3)")),
    ("mhc_post h_post size-1 axis", lambda: hcref.mhc_post(y8, H4, np.ones((2, 1)), Z4), ValueError,
     ("h_post:", "(2, 1)")),
    ("mhc_post h_res n", lambda: hcref.mhc_post(y8, H4, pre4, np.ones((2, 3, 3))), ValueError,
     ("h_res:", "(2, 4, 4)", "(2, 3, 3)")),
    ("mhc_post h_res size-1 axis", lambda: hcref.mhc_post(y8, H4, pre4, np.ones((2, 4, 1))), ValueError,
     ("h_res:", "(2, 4, 1)")),
    ("mhc_post shared h_res", lambda: hcref.mhc_post(y8, H4, pre4, np.eye(4)), ValueError, ("h_res:", "(4, 4)")),
    ("mhc_post int y", lambda: hcref.mhc_post(y8.astype(np.int32), H4, pre4, Z4), TypeError, ("y:", "int32")),
    ("mhc_post_vjp cotangent", lambda: hcref.mhc_post_vjp(y8, H4, pre4, Z4, np.ones((2, 4, 7))), ValueError,
     ("g_H_out", "(2, 4, 8)", "(2, 4, 7)")),
    ("mhc_head gates key", lambda: hcref.mhc_head(H4, {**without(head_p, "gate"), "gates": np.ones(3)}), ValueError,
     ("params:", "the mHC head", "missing ['gate']", "extra ['gates']")),
    ("mhc_head site params", lambda: hcref.mhc_head(H4, mhc_p), ValueError, ("params:", "missing ['gate']")),
    ("mhc_head phi shape", lambda: hcref.mhc_head(H4, with_(head_p, "phi", np.zeros((32, 24)))), ValueError,
     ("params['phi']", "(32, 4)", "(32, 24)")),
    ("mhc_head n mismatch", lambda: hcref.mhc_head(H4[..., :3, :], head_p), ValueError, ("params['phi']", "(24, 3)")),
    ("mhc_head gate (1,)", lambda: hcref.mhc_head(H4, with_(head_p, "gate", np.ones(1))), ValueError,
     ("params['gate']", "()", "(1,)")),
    ("mhc_head eps < 0", lambda: hcref.mhc_head(H4, head_p, eps=-1e-6), ValueError, ("eps:", ">= 0")),
    ("mhc_head_vjp cotangent", lambda: hcref.mhc_head_vjp(H4, head_p, np.ones((2, 4))), ValueError,
     ("g_x", "(2, 8)", "(2, 4)")),
    ("init_mhc preset", lambda: hcref.init_mhc(4, 8, 0, preset="identity"), ValueError,
     ("preset:", "'identity'", "hc_like")),
    ("init_mhc dynamic", lambda: hcref.init_mhc(4, 8, 0, dynamic=1), TypeError, ("dynamic:", "bool")),
    ("init_mhc layer_index", lambda: hcref.init_mhc(4, 8, -1), ValueError, ("layer_index:", ">= 0", "-1")),
    ("init_mhc n=0", lambda: hcref.init_mhc(0, 8, 0), ValueError, ("n:", ">= 1")),
    ("init_mhc_head d float", lambda: hcref.init_mhc_head(4, 8.0), TypeError, ("d:", "int", "float")),
    ("site family", lambda: hcref.site("mhC", H4, mhc_p, lambda h: h), ValueError, ("family:", "'mhc'", "'mhC'")),
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
        ("Z", lambda: hcref.sinkhorn_vjp(Z4.tolist(), Z4)),
        ("H", lambda: hcref.mhc_pre(H4.tolist(), pre4)),
        ("h_res", lambda: hcref.mhc_post(y8, H4, pre4, Z4.tolist())),
        ("H", lambda: hcref.mhc_head(H4.tolist(), head_p)),
        ("params['b']", lambda: hcref.mhc_coeffs(H4, {"b": [0.0] * 24})),
    ]:
        with pytest.raises(TypeError, match=rf"^{re.escape(name)}: "):
            call()
