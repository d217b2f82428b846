"""The automatic dispatch of hcref_torch's HC/FC contract ops and modules to the fused Triton
kernels (issue 14, "Dispatch"), checked on CPU.

The dispatch (``hcref_torch.ops._kernels``) only looks at CUDA tensors and then asks
``hcref_torch.kernels.use_for``. Here, without a GPU, the tests widen it to CPU tensors
(``ops._KERNEL_DEVICES`` plus a ``use_for`` that is the real one without its CUDA condition:
the switch and ``supported``) and run the kernels under the Triton interpreter
(``TRITON_INTERPRET=1``, set as tests/test_torch_kernels.py sets it), on tiny shapes: the
kernel path must be taken (spied), give the generic path's results and gradients, follow the
switch, and fall back on unsupported calls. By default CPU tensors take the generic path and
never import the kernels package or Triton. Which calls the kernels take on a GPU is covered by
their own tests (tests/test_torch_kernels.py) and, where a GPU is lent, the suite with
``--device cuda``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hcref_torch
from hcref_torch import FracConnections, HyperConnections, ops

import hcref

_saved_env = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"  # triton builds its interpreter library only when set at its import
try:
    pytest.importorskip("triton")
    import hcref_torch.kernels as K
    from hcref_torch.kernels import _launch as _interpreted_launch
    from hcref_torch.kernels import _switch
finally:
    if _saved_env is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _saved_env

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inside the interpreter

KERNEL_OPS = ("hc_coeffs", "hc_width", "hc_depth", "fc_coeffs", "fc_width", "fc_depth")
SITE_FNS = ("hc_site_width", "fc_site_width", "site_depth")


@pytest.fixture(autouse=True, scope="module")
def interpreter() -> Iterator[None]:
    if not _interpreted_launch.INTERPRET:
        pytest.skip("triton was imported before this module could select its interpreter; run this module "
                    "in its own process")
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    mp.setattr(_switch, "_INTERPRET_ENV", True)
    yield
    mp.undo()


@pytest.fixture
def calls(monkeypatch: Any) -> dict[str, int]:
    """Counts the calls into the kernels' contract ops and fused-site functions (each still runs)."""
    counts = dict.fromkeys(KERNEL_OPS + SITE_FNS, 0)
    for name in counts:
        original = getattr(K, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(K, name, spy)
    return counts


@pytest.fixture
def cpu_dispatch(monkeypatch: Any, calls: dict[str, int]) -> dict[str, int]:
    """The dispatch widened to CPU tensors: ``use_for`` = the switch and ``supported`` (the real
    predicate less its CUDA condition)."""
    monkeypatch.setattr(ops, "_KERNEL_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(K, "use_for", lambda H, *others: K.enabled() and K.supported(H, *others))
    K.set_enabled(None)
    yield calls
    K.set_enabled(None)


def _case(family: str, rows: int, w: int, lead: tuple[int, ...], dtype: Any, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    d = w if family == "hc" else rows * w
    init = hcref.init_hc(rows, d, 1, norm="rmsnorm") if family == "hc" else hcref.init_fc(rows, d, norm="rmsnorm")
    params = {key: torch.tensor(value + 0.3 * rng.normal(size=value.shape), dtype=dtype) for key, value in init.items()}
    H = torch.tensor(rng.normal(size=(*lead, rows, w)), dtype=dtype)
    y = torch.tensor(rng.normal(size=(*lead, d)), dtype=dtype)
    return {"H": H, "params": params, "y": y}


def _site(family: str, case: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """One site through the public contract ops, with gradients of H, y and every parameter."""
    H = case["H"].clone().requires_grad_(True)
    y = case["y"].clone().requires_grad_(True)
    params = {k: p.clone().requires_grad_(True) for k, p in case["params"].items()}
    alpha, beta = getattr(hcref_torch, f"{family}_coeffs")(H, params, norm="rmsnorm")
    h0, H_res = getattr(hcref_torch, f"{family}_width")(H, alpha)
    H_out = getattr(hcref_torch, f"{family}_depth")(y * h0, H_res, beta)
    g = torch.autograd.grad((H_out * torch.linspace(-1, 1, H_out.numel()).reshape(H_out.shape)).sum(),
                            [H, y, *params.values()])
    return (alpha, beta, h0, H_res, H_out, *g)


@pytest.mark.parametrize("family", ["hc", "fc"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ops_dispatch_to_the_kernels_and_agree_with_the_generic_path(
    cpu_dispatch: dict[str, int], family: str, dtype: Any
) -> None:
    case = _case(family, 3, 5, (2,), dtype, seed=1)
    K.set_enabled(False)  # the documented switch: the generic path
    generic = _site(family, case)
    assert not any(cpu_dispatch.values())
    K.set_enabled(True)
    launches = sum(_interpreted_launch.LAUNCHES.values())
    fused = _site(family, case)
    assert sum(_interpreted_launch.LAUNCHES.values()) > launches  # the kernels really ran
    assert {name: cpu_dispatch[name] for name in KERNEL_OPS if name.startswith(family)} == {
        f"{family}_coeffs": 1, f"{family}_width": 1, f"{family}_depth": 1
    }
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for got, want in zip(fused, generic, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_unsupported_calls_fall_back_to_the_generic_path(cpu_dispatch: dict[str, int]) -> None:
    """A call the kernels refuse (17 streams; they take up to 16) runs the generic path with the
    reference's results; bad input raises the reference's error."""
    case = _case("hc", 17, 4, (2,), torch.float64, seed=2)
    alpha, beta = hcref_torch.hc_coeffs(case["H"], case["params"], norm="rmsnorm")
    ref = hcref.hc_coeffs(case["H"].numpy(), {k: p.numpy() for k, p in case["params"].items()}, norm="rmsnorm")
    np.testing.assert_allclose(alpha.numpy(), ref[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(beta.numpy(), ref[1], rtol=1e-12, atol=1e-12)
    assert not any(cpu_dispatch.values())
    with pytest.raises(ValueError, match=r"^alpha: "):  # bad input: the reference's message, on either path
        hcref_torch.hc_width(torch.zeros(2, 3, 4), torch.zeros(2, 3, 3))


@pytest.mark.parametrize("family", ["hc", "fc"])
def test_modules_use_the_fused_site(cpu_dispatch: dict[str, int], family: str) -> None:
    """Training: the fused width writes H_res (a SiteState) and depth is the plain write kernel;
    without gradients: a FusedState and the fused mix-and-write depth. Both equal the generic module."""
    torch.manual_seed(3)
    module = HyperConnections(3, 8, 1, norm="rmsnorm") if family == "hc" else FracConnections(2, 8)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    H = torch.randn(2, 3, 8) if family == "hc" else torch.randn(2, 2, 4)
    branch = torch.nn.Linear(8, 8)

    def run() -> tuple[torch.Tensor, ...]:
        Hg = H.clone().requires_grad_(True)
        h0, state = module.width(Hg)
        assert isinstance(state, hcref_torch.SiteState)
        out = module.depth(branch(h0), state)
        return (out, *torch.autograd.grad(out.square().sum(), [Hg, *module.parameters()]))

    K.set_enabled(False)
    generic = run()
    with torch.no_grad():
        generic_eval = module(H, branch)
    assert not any(cpu_dispatch.values())
    K.set_enabled(True)
    fused = run()
    assert cpu_dispatch[f"{family}_site_width"] == 1 and cpu_dispatch[f"{family}_depth"] == 1
    with torch.no_grad():
        h0, state = module.width(H)
        assert isinstance(state, K.FusedState) and state.H_res is None
        fused_eval = module.depth(branch(h0), state)
        with pytest.raises(ValueError, match=r"\.depth: expected the branch output y of shape \(2, 8\)"):
            module.depth(torch.zeros(3, 8), state)
    assert cpu_dispatch["site_depth"] == 1
    for got, want in zip((*fused, fused_eval), (*generic, generic_eval), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cpu_tensors_take_the_generic_path_by_default(calls: dict[str, int]) -> None:
    """Without the widening (the shipped dispatch), CPU tensors never reach the kernels, even with
    the switch on and the interpreter set."""
    K.set_enabled(True)
    try:
        _site("hc", _case("hc", 2, 4, (3,), torch.float32, seed=4))
        _site("fc", _case("fc", 2, 4, (3,), torch.float32, seed=4))
        HyperConnections(2, 4, 0)(torch.randn(3, 2, 4), torch.tanh)
    finally:
        K.set_enabled(None)
    assert not any(calls.values())


def test_import_and_cpu_use_load_neither_the_kernels_nor_triton() -> None:
    code = (
        "import sys, torch, hcref_torch\n"
        "H = hcref_torch.expand(torch.randn(3, 8), 2)\n"
        "H = hcref_torch.HyperConnections(2, 8, 0)(H, torch.tanh)\n"
        "H = hcref_torch.FracConnections(2, 8)(hcref_torch.frac_split(hcref_torch.reduce(H), 2), torch.tanh)\n"
        "print(sorted(m for m in ('triton', 'hcref_torch.kernels') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_torch_compile_through_the_dispatch(cpu_dispatch: dict[str, int]) -> None:
    """The dispatched ops and the fused module path trace into one graph (fullgraph=True) and
    match eager, forward and backward."""
    torch.manual_seed(5)
    hc = HyperConnections(2, 8, 0, norm="rmsnorm")
    with torch.no_grad():
        for p in hc.parameters():
            p.add_(0.2 * torch.randn_like(p))

    def net(H: torch.Tensor) -> torch.Tensor:
        return hc(H, torch.tanh)

    K.set_enabled(True)
    H = torch.randn(3, 2, 8, requires_grad=True)
    eager = net(H)
    (g_eager,) = torch.autograd.grad(eager.sum(), [H])
    launches = sum(_interpreted_launch.LAUNCHES.values())
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")(H)
    (g_compiled,) = torch.autograd.grad(compiled.sum(), [H])
    assert sum(_interpreted_launch.LAUNCHES.values()) > launches
    assert cpu_dispatch["hc_site_width"] >= 2
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-5)


MHC_KERNEL_OPS = ("sinkhorn", "mhc_coeffs", "mhc_pre", "mhc_post")


def test_mhc_ops_dispatch_to_the_kernels(cpu_dispatch: dict[str, int], monkeypatch: Any) -> None:
    """hcref_torch's mHC ops (``hcref_torch.mhc``) take the kernels' mHC ops when the dispatch
    takes the call (spied), with the generic path's values and gradients; the switch off, or a
    CPU tensor with the real (CUDA-only) device list, keeps the generic path."""
    from hcref_torch import mhc

    counts = dict.fromkeys(MHC_KERNEL_OPS, 0)
    for name in MHC_KERNEL_OPS:
        original = getattr(K, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(K, name, spy)
    monkeypatch.setattr(K, "use_for", lambda H, *others, op=None: K.enabled() and K.supported(H, *others, op=op))
    rng = np.random.default_rng(3)
    n, d = 3, 20
    init = hcref.init_mhc(n, d, 1)
    params = {k: torch.tensor(v + 0.3 * rng.normal(size=v.shape)) for k, v in init.items()}
    H = torch.tensor(rng.normal(size=(2, n, d)))
    y = torch.tensor(rng.normal(size=(2, d)))

    def site() -> tuple[torch.Tensor, ...]:
        H_ = H.clone().requires_grad_(True)
        ps = {k: p.clone().requires_grad_(True) for k, p in params.items()}
        h_pre, h_post, h_res = mhc.mhc_coeffs(H_, ps, iters=5)
        out = mhc.mhc_post(y * mhc.mhc_pre(H_, h_pre), H_, h_post, h_res) + mhc.sinkhorn(h_res, iters=2).sum()
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        return (out, *torch.autograd.grad((out * weights).sum(), [H_, *ps.values()]))

    fused = site()
    assert all(counts[name] >= 1 for name in MHC_KERNEL_OPS), counts
    K.set_enabled(False)
    before = dict(counts)
    generic = site()
    assert counts == before
    for a, b in zip(fused, generic):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    K.set_enabled(None)
    monkeypatch.setattr(ops, "_KERNEL_DEVICES", ("cuda",))
    site()
    assert counts == before
