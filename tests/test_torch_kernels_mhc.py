"""hcref_torch.kernels' mHC kernels (``mhc_coeffs``, ``sinkhorn``, ``mhc_pre``, ``mhc_post``)
against the NumPy reference on CPU under the Triton interpreter: forward and every gradient
against the reference's hand-derived VJPs (the shared cases of tests/mhc_cases.py in float64,
float32, bfloat16 and float16; extreme logits and states; mixed precision; bad inputs; size-0
leading axes), odd shapes (n = 1, 3, 4, 8; the width not a multiple of the block; one token;
several programs and gradient groups), non-contiguous and broadcast inputs, iters 1 and 20,
eps 0 and 1e-6, determinism, the dispatch predicates, fallback and torch.compile.

``TRITON_INTERPRET=1`` is set as in tests/test_torch_kernels.py (at collection, then by a module
fixture). bfloat16 never enters ``tl.dot`` here (the interpreter computes that wrongly,
triton-lang/triton#11584): the projections run on float32 operands, and the GPU's bfloat16
split path (``MODE`` 2) is checked in float16 (``test_split_dot_path_in_float16``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hcref_torch.kernels as K
import mhc_cases as mc
from hcref_torch import mhc as generic
from hcref_torch.kernels import _switch

import hcref
from hcref.checks import random_inputs

_TRITON_WAS_IMPORTED = "triton" in sys.modules
_saved_env = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    pytest.importorskip("triton")
    from hcref_torch.kernels import _launch as _interpreted_launch
finally:
    if _saved_env is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _saved_env

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inside the interpreter

KERNEL_OPS = ("sinkhorn", "mhc_coeffs", "mhc_pre", "mhc_post")


@pytest.fixture(autouse=True, scope="module")
def interpreter() -> Iterator[Any]:
    if _TRITON_WAS_IMPORTED and not _interpreted_launch.INTERPRET:
        pytest.fail("triton was imported before this module could select its interpreter; run this module "
                    "in its own process (python -m pytest tests/test_torch_kernels_mhc.py)")
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    mp.setattr(_switch, "_INTERPRET_ENV", True)
    yield _interpreted_launch
    mp.undo()


@pytest.fixture
def launch(interpreter: Any) -> Iterator[Any]:
    """The launcher module with its test overrides reset afterwards."""
    yield interpreter
    interpreter.FORCE_BLOCK_W = interpreter.FORCE_BLOCK_T = interpreter.FORCE_GROUPS = interpreter.FORCE_MODE = None


def _launches(launch: Any) -> int:
    return sum(launch.LAUNCHES.values())


def _np(x: Any) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def _err(got: Any, ref: Any) -> float:
    """max|got - ref| / max(1, max|ref|), over tensors/arrays or mappings of them."""
    if isinstance(ref, dict):
        return max(_err(got[key], ref[key]) for key in ref)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(_np(got) - ref).max(initial=0.0) / max(1.0, np.abs(ref).max(initial=0.0)))


KERNEL_CASES = [c for c in mc.CASES if c[0] in KERNEL_OPS]
KERNEL_IDS = [i for c, i in zip(mc.CASES, mc.IDS) if c[0] in KERNEL_OPS]
LOW_KERNEL = [c for c in mc.LOW_CASES if c[0] in KERNEL_OPS]
LOW_KERNEL_IDS = [i for c, i in zip(mc.LOW_CASES, mc.LOW_IDS) if c[0] in KERNEL_OPS]


# --- the shared mHC cases (same checks as every backend's) ---------------------------------------


@pytest.mark.parametrize("case", KERNEL_CASES, ids=KERNEL_IDS)
def test_float64_matches_the_reference(launch: Any, case: mc.Case) -> None:
    before = _launches(launch)
    mc.check_float64(K.backend, K.backend, case)
    assert _launches(launch) > before, "the kernel path did not run"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("case", LOW_KERNEL, ids=LOW_KERNEL_IDS)
def test_lower_precision_within_the_suite_tolerances(launch: Any, case: mc.Case, dtype: str) -> None:
    mc.check_lower(K.backend, K.backend, case, dtype)


@pytest.mark.parametrize("case", [c for c in mc.extreme_cases() if c[0] in KERNEL_OPS],
                         ids=lambda c: c[0] if isinstance(c, tuple) else "")
def test_extreme_logits_and_states_are_finite_and_right(launch: Any, case: Any) -> None:
    mc.check_extreme(K.backend, K.backend, case)


@pytest.mark.parametrize("state", ["bfloat16", "float16"])
def test_mixed_precision_dtypes(launch: Any, state: str) -> None:
    mc.check_mixed(K.backend, K.backend, state)


@pytest.mark.parametrize("case", [c for c in mc.bad_cases() if c[0] in KERNEL_OPS],
                         ids=[i for c, i in zip(mc.bad_cases(), mc.BAD_IDS) if c[0] in KERNEL_OPS])
@pytest.mark.parametrize("api", ["backend", "functional"])
def test_bad_inputs_raise_the_reference_errors(case: mc.Case, api: str) -> None:
    mc.check_bad(K.backend if api == "backend" else K, torch.from_numpy, case)


@pytest.mark.parametrize("lead", [(0,), (2, 0)])
def test_size_zero_leading_axes(launch: Any, lead: tuple[int, ...]) -> None:
    mc.check_empty(K.backend, K.backend, lead)


# --- odd shapes, options, layouts ---------------------------------------------------------------


def _coeffs_check(H: Any, params: dict[str, Any], iters: int, eps: float, tol: float) -> None:
    """Forward and every gradient of the kernel's ``mhc_coeffs`` against the reference on the
    float64 values of the same inputs (cotangents of every output)."""
    rng = np.random.default_rng(3)
    H = H.detach().requires_grad_()
    params = {key: value.detach().requires_grad_() for key, value in params.items()}
    H64, p64 = _np(H), {key: _np(value) for key, value in params.items()}
    got = K.backend.mhc_coeffs(H, params, iters=iters, eps=eps)
    ref = hcref.mhc_coeffs(H64, p64, iters=iters, eps=eps)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and _err(g, r) <= tol, (_err(g, r), tol)
    cots = [rng.standard_normal(r.shape) for r in ref]
    torch.autograd.backward(list(got), [torch.tensor(c, dtype=g.dtype) for c, g in zip(cots, got)])
    g_H, g_p = hcref.mhc_coeffs_vjp(H64, p64, *cots, iters=iters, eps=eps)
    assert _err(H.grad if H.grad is not None else torch.zeros_like(H), g_H) <= tol
    assert _err({key: value.grad for key, value in params.items()}, g_p) <= tol


@pytest.mark.parametrize(("n", "d", "lead", "iters", "eps"), [
    (1, 3, (2,), 1, 0.0),
    (3, 7, (1,), 20, 1e-6),  # one token
    (4, 9, (2, 3), 20, 0.0),
    (4, 9, (5,), 1, 1e-6),
    (8, 3, (3,), 20, 1e-6),
    (8, 2, (2,), 20, 0.0),
])
@pytest.mark.parametrize("static", [False, True])
def test_coeffs_odd_shapes_float32(launch: Any, n: int, d: int, lead: tuple[int, ...], iters: int, eps: float,
                                   static: bool) -> None:
    """n = 1, 3, 4, 8 (padded to 4 or 8 streams), the flattened width n*d not a multiple of the
    16-column block forced here, iters 1 and 20, eps 0 (log domain) and 1e-6 (V4)."""
    rng = np.random.default_rng(n * 100 + d)
    H, params = random_inputs("mhc_coeffs", rng, lead, n, d, dynamic=not static)
    launch.FORCE_BLOCK_W = 16
    before = _launches(launch)
    _coeffs_check(torch.tensor(H, dtype=torch.float32), {k: torch.tensor(v, dtype=torch.float32)
                                                         for k, v in params.items()}, iters, eps, 2e-5)
    assert _launches(launch) >= before + 2  # forward and backward kernels


def test_coeffs_several_programs_and_groups_float64(launch: Any) -> None:
    """Several token blocks (forward), several column blocks and token-block groups in the
    projection backward (partial sums added by the launcher): float64 within 1e-12."""
    launch.FORCE_BLOCK_W, launch.FORCE_GROUPS = 16, 2
    rng = np.random.default_rng(5)
    H, params = random_inputs("mhc_coeffs", rng, (37,), 4, 5)
    before = launch.LAUNCHES["mhc_coeffs_proj_bwd"]
    _coeffs_check(torch.tensor(H), {k: torch.tensor(v) for k, v in params.items()}, 20, 0.0, 1e-12)
    assert launch.LAUNCHES["mhc_coeffs_proj_bwd"] == before + 1


def test_non_contiguous_and_broadcast_inputs(launch: Any) -> None:
    """Transposed / strided views and broadcast (stride-0) coefficients, as a static site gives
    them, in every op, forward and backward."""
    rng = np.random.default_rng(8)
    n, d, T = 4, 6, 5
    H_big = torch.tensor(rng.standard_normal((n, T, 2 * d)))
    H = H_big[:, :, ::2].transpose(0, 1)  # (T, n, d), neither contiguous nor unit-stride
    assert not H.is_contiguous()
    _, params = random_inputs("mhc_coeffs", rng, (T,), n, d)
    phi = torch.tensor(params["phi"]).t().contiguous().t()  # column-major phi
    p = {"phi": phi, "b": torch.tensor(params["b"]), "gates": torch.tensor(params["gates"])}
    _coeffs_check(H, p, 20, 0.0, 1e-12)

    Z = torch.tensor(rng.standard_normal((n, n, T))).permute(2, 0, 1)
    P = K.backend.sinkhorn(Z, iters=5)
    assert _err(P, hcref.sinkhorn(_np(Z), iters=5)) <= 1e-12

    static = {"b": torch.tensor(params["b"])}
    h_pre, h_post, h_res = K.backend.mhc_coeffs(H, static)
    assert h_res.stride(0) == 0  # broadcast from one token
    y = torch.tensor(rng.standard_normal((T, 2 * d)))[:, ::2]
    Hl = H.detach().requires_grad_()
    h0 = K.backend.mhc_pre(Hl, h_pre)
    out = K.backend.mhc_post(y, Hl, h_post, h_res)
    assert _err(h0, hcref.mhc_pre(_np(H), _np(h_pre))) <= 1e-12
    assert _err(out, hcref.mhc_post(_np(y), _np(H), _np(h_post), _np(h_res))) <= 1e-12
    g = rng.standard_normal(out.shape)
    out.backward(torch.tensor(g))
    assert _err(Hl.grad, hcref.mhc_post_vjp(_np(y), _np(H), _np(h_post), _np(h_res), g)[1]) <= 1e-12


@pytest.mark.parametrize("n", [1, 3, 8, 16])
def test_pre_and_post_any_stream_count(launch: Any, n: int) -> None:
    """``mhc_pre``/``mhc_post`` for n = 1, 3, 8 and 16 (the mixing kernels' limit), float32,
    forward and every gradient against the reference VJPs."""
    rng = np.random.default_rng(n)
    launch.FORCE_BLOCK_W = 16
    for name in ("mhc_pre", "mhc_post"):
        inputs = random_inputs(name, rng, (3,), n, 21)
        t = [torch.tensor(x, dtype=torch.float32, requires_grad=True) for x in inputs]
        r = [_np(x) for x in t]
        out = getattr(K.backend, name)(*t)
        assert _err(out, getattr(hcref, name)(*r)) <= 1e-6
        g = rng.standard_normal(out.shape)
        out.backward(torch.tensor(g, dtype=torch.float32))
        for got, ref in zip(t, getattr(hcref, f"{name}_vjp")(*r, g)):
            assert _err(got.grad, ref) <= 1e-6, name


def test_split_dot_path_in_float16(launch: Any) -> None:
    """MODE 2 (the GPU's bfloat16 projection: half-precision rows, phi split into high and low
    half-precision parts, two dots with float32 accumulation) in float16, which the interpreter
    computes correctly: within 2e-4 of the float64 reference on the same rounded values."""
    rng = np.random.default_rng(12)
    H, params = random_inputs("mhc_coeffs", rng, (6,), 4, 12)
    Ht = torch.tensor(H, dtype=torch.float16)
    p = {k: torch.tensor(v, dtype=torch.float32) for k, v in params.items()}
    launch.FORCE_MODE = 2
    got = K.backend.mhc_coeffs(Ht, p)
    ref = hcref.mhc_coeffs(_np(Ht), {k: _np(v) for k, v in p.items()})
    assert all(_err(g, r) < 2e-4 for g, r in zip(got, ref))
    assert all(g.dtype == torch.float32 for g in got)


def test_deterministic_reductions(launch: Any) -> None:
    """Parameter gradients are per-program partial sums added in a fixed order: two runs are
    bit-identical; another grouping changes only the summation order."""
    launch.FORCE_BLOCK_W, launch.FORCE_GROUPS = 16, 2
    rng = np.random.default_rng(15)
    H, params = random_inputs("mhc_coeffs", rng, (40,), 4, 5)
    cots = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in ((40, 4), (40, 4), (40, 4, 4))]

    def grads() -> list[Any]:
        Ht = torch.tensor(H, dtype=torch.float32, requires_grad=True)
        p = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in params.items()}
        torch.autograd.backward(list(K.backend.mhc_coeffs(Ht, p)), cots)
        return [Ht.grad, *[p[key].grad for key in sorted(p)]]

    first, second = grads(), grads()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    launch.FORCE_GROUPS = 1
    for a, b in zip(first, grads()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --- predicates, fallback, torch.compile ----------------------------------------------------------


def test_predicates_and_fallback(launch: Any, monkeypatch: Any) -> None:
    rng = np.random.default_rng(16)
    H = torch.ones(2, 9, 4)
    assert K.supported(H, op="mhc_pre") and not K.supported(H, op="mhc_coeffs")  # n = 9 > MHC_MAX_N
    assert K.supported(torch.ones(2, 8, 8), op="sinkhorn") and not K.use_for(torch.ones(2, 4, 4), op="sinkhorn")
    before = _launches(launch)
    Hn, params = random_inputs("mhc_coeffs", rng, (2,), 9, 2)  # 9 streams: the generic path
    got = K.mhc_coeffs(torch.tensor(Hn), {k: torch.tensor(v) for k, v in params.items()})
    assert all(_err(g, r) < 1e-12 for g, r in zip(got, hcref.mhc_coeffs(Hn, params)))
    assert _launches(launch) == before
    monkeypatch.setattr(_switch, "_INTERPRET_ENV", False)  # CPU tensors outside the interpreter
    Z = torch.tensor(rng.standard_normal((3, 4, 4)))
    assert _err(K.sinkhorn(Z), hcref.sinkhorn(_np(Z))) < 1e-12
    y, Hp, hp, hr = (torch.tensor(x) for x in random_inputs("mhc_post", rng, (3,), 4, 5))
    assert torch.equal(K.mhc_post(y, Hp, hp, hr), generic.mhc_post(y, Hp, hp, hr))
    assert torch.equal(K.mhc_pre(Hp, hp), generic.mhc_pre(Hp, hp))
    assert _launches(launch) == before


@pytest.fixture
def dynamo_traces_this_checkout() -> Iterator[None]:
    """Dynamo skips files under a ``triton/backends`` path (meant for triton itself); a checkout
    in a folder named ``triton`` matches it. Drop that pattern for the test."""
    from torch._dynamo import trace_rules

    if not trace_rules.check_file(K.functional.__file__).skipped:
        yield
        return
    saved = list(trace_rules.SKIP_DIRS)
    trace_rules.SKIP_DIRS[:] = [d for d in saved if d != "triton/backends"]
    trace_rules._recompile_re()
    try:
        yield
    finally:
        trace_rules.SKIP_DIRS[:] = saved
        trace_rules._recompile_re()


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(launch: Any, dynamo_traces_this_checkout: None, compile_backend: str) -> None:
    """A whole mHC site on the kernel ops, forward and backward, is one graph (fullgraph=True
    raises on a graph break), with the same numbers as eager."""
    rng = np.random.default_rng(17)
    H0, params0 = random_inputs("mhc_coeffs", rng, (3,), 4, 5)
    G = torch.tensor(rng.standard_normal(H0.shape))

    def site(H: Any, params: Any) -> Any:
        h_pre, h_post, h_res = K.mhc_coeffs(H, params, eps=1e-6)
        return K.mhc_post(torch.tanh(K.mhc_pre(H, h_pre)), H, h_post, h_res)

    monkeypatch = pytest.MonkeyPatch()
    results = []
    try:
        monkeypatch.setattr(_switch, "_INTERPRET_ENV", True)
        for fn in (site, torch.compile(site, fullgraph=True, backend=compile_backend)):
            H = torch.tensor(H0, requires_grad=True)
            params = {k: torch.tensor(v, requires_grad=True) for k, v in params0.items()}
            out = fn(H, params)
            out.backward(G)
            results.append([out.detach(), H.grad, *[params[key].grad for key in sorted(params)]])
    finally:
        monkeypatch.undo()
        torch._dynamo.reset()
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fallback_never_comes_back_to_the_kernels() -> None:
    """The kernels' fallback runs the generic ops inside ``generic_path()``, where ``use_for`` is
    False: a generic op that dispatched with ``use_for`` (even without ``op``) cannot recurse."""

    class CudaLooking(torch.Tensor):  # use_for's device test without a GPU
        @property
        def device(self) -> Any:  # type: ignore[override]
            return torch.device("cuda")

    H = torch.ones(2, 9, 3).as_subclass(CudaLooking)
    assert _switch.use_for(H) and not _switch.use_for(H, op="mhc_coeffs")  # 9 streams: pre/post only
    from torch.distributed.tensor import DTensor

    class DistLooking(DTensor):  # a DTensor on a "cuda" device, as use_for sees one
        @property
        def device(self) -> Any:  # type: ignore[override]
            return torch.device("cuda")

    assert not _switch.use_for(torch.ones(2, 4, 3).as_subclass(DistLooking)), "DTensors stay generic"
    with _switch.generic_path():
        assert not _switch.use_for(H) and not _switch.use_for(H, op="mhc_pre")
    assert _switch.use_for(H, op="mhc_post")
