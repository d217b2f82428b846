"""A checkpoint written from one framework's modules loads into every other framework's modules
(and into the reference's mappings) bit for bit, and the loaded stacks compute the same outputs.

Each framework trains a small stack (3 sites, HC n=3 or FC m=2, d=8) for a few SGD steps on its
connection parameters (the sublayers are fixed, the same NumPy weights in every framework), saves
it, and every framework loads it with ``load`` (modules built from the file) and ``load_into``
(existing modules): parameters must be equal bit for bit, outputs equal to float32 accuracy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hcref
from hcref import checkpoint as ck
from hcref import network

pytest.importorskip("safetensors")

D, HIDDEN, SITES, STEPS, LR = 8, 16, 3, 4, 0.01
RNG = np.random.default_rng(0)
W1 = [RNG.standard_normal((D, HIDDEN)).astype(np.float32) * 0.5 for _ in range(SITES)]
W2 = [RNG.standard_normal((HIDDEN, D)).astype(np.float32) * 0.5 for _ in range(SITES)]
X = RNG.standard_normal((2, 5, D)).astype(np.float32)
TARGET = RNG.standard_normal((2, 5, D)).astype(np.float32)
FAMILY_RATE = {"hc": 3, "fc": 2, "mhc": 2}


def _family(module: Any) -> str:
    return module.plan.family if hasattr(module, "plan") else module.family


def _reference_stack(sites: list[ck.Site], x: np.ndarray) -> np.ndarray:
    """The stack in float64 with the reference and the loaded NumPy mappings (HC/FC:
    hcref.network.stack; mHC: hcref.site per site, then the mHC head)."""
    family = sites[0].family
    sublayers = [lambda h, w1=w1, w2=w2: np.tanh(h @ w1) @ w2 for w1, w2 in zip(W1, W2)]
    params = [{k: v.astype(np.float64) for k, v in s.params.items()} for s in sites]
    if family != "mhc":
        return network.stack(
            x.astype(np.float64), sublayers, mode=family, connections=params, rate=sites[0].rate, **sites[0].options
        )
    H = hcref.expand(x.astype(np.float64), sites[0].rate)
    for site, p, sublayer in zip(sites[:-1], params, sublayers):
        H = hcref.site("mhc", H, p, sublayer, **site.options)
    return hcref.mhc_head(H, params[-1], **sites[-1].options)


class Framework:
    """What each framework's adapter shares: the stack's layout around the connection modules."""

    mod: Any

    def build(self, family: str) -> list[Any]:
        k = FAMILY_RATE[family]
        if family == "hc":
            return [self.mod.HyperConnections(k, D, i, norm="rmsnorm") for i in range(SITES)]
        if family == "fc":
            return [self.mod.FracConnections(k, D) for _ in range(SITES)]
        mhc = importlib.import_module(f"{self.mod.__name__}.mhc_modules")
        sites = [mhc.ManifoldHyperConnections(k, D, i, iters=5) for i in range(SITES)]
        return [*sites, mhc.MHCHead(k, D)]

    def stack(self, sites: list[Any], x: Any, sublayer: Any) -> Any:
        family = _family(sites[0])
        if family == "fc":
            H = self.mod.FracSplit(sites[0].m)(x)
            for site, w1, w2 in zip(sites, W1, W2):
                H = site(H, sublayer(w1, w2))
            return self.mod.FracMerge()(H)
        H = self.mod.Expand(sites[0].n)(x)
        body = sites[:-1] if family == "mhc" else sites
        for site, w1, w2 in zip(body, W1, W2):
            H = site(H, sublayer(w1, w2))
        return sites[-1](H) if family == "mhc" else self.mod.Reduce()(H)


class Torch(Framework):
    name = "torch"

    def __init__(self) -> None:
        self.torch = pytest.importorskip("torch")
        import hcref_torch
        import hcref_torch.checkpoint

        self.mod, self.ckpt = hcref_torch, hcref_torch.checkpoint

    def forward(self, sites: list[Any], x: np.ndarray) -> Any:
        t = self.torch
        return self.stack(sites, t.tensor(x), lambda w1, w2: lambda h: t.tanh(h @ t.tensor(w1)) @ t.tensor(w2))

    def train(self, sites: list[Any]) -> None:
        params = [p for s in sites for p in s.parameters()]
        opt = self.torch.optim.SGD(params, lr=LR)
        for _ in range(STEPS):
            loss = ((self.forward(sites, X) - self.torch.tensor(TARGET)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def output(self, sites: list[Any]) -> np.ndarray:
        return self.forward(sites, X).detach().numpy()


class Jax(Framework):
    name = "jax"

    def __init__(self) -> None:
        self.jax = pytest.importorskip("jax")
        pytest.importorskip("flax.nnx")
        import hcref_jax
        import hcref_jax.checkpoint
        import jax.numpy as jnp
        from flax import nnx

        self.mod, self.ckpt, self.jnp, self.nnx = hcref_jax, hcref_jax.checkpoint, jnp, nnx

    def forward(self, sites: list[Any], x: Any) -> Any:
        jnp = self.jnp
        return self.stack(sites, x, lambda w1, w2: lambda h: jnp.tanh(h @ w1) @ w2)

    def train(self, sites: list[Any]) -> None:
        nnx, jax = self.nnx, self.jax

        holder = nnx.List(sites)

        def loss(holder: Any) -> Any:
            return ((self.forward(list(holder), self.jnp.asarray(X)) - TARGET) ** 2).mean()

        grad = nnx.jit(nnx.grad(loss))
        for _ in range(STEPS):
            grads = grad(holder)
            state = nnx.state(holder, nnx.Param)
            nnx.update(holder, jax.tree_util.tree_map(lambda p, g: p - LR * g, state, grads))

    _forward_jit: Any = None  # one jitted forward for every instance: same structure, one compile

    def output(self, sites: list[Any]) -> np.ndarray:
        if Jax._forward_jit is None:
            Jax._forward_jit = self.nnx.jit(Jax.forward, static_argnums=0)
        return np.asarray(Jax._forward_jit(self, sites, self.jnp.asarray(X)))


class Mlx(Framework):
    name = "mlx"

    def __init__(self) -> None:
        self.mx = pytest.importorskip("mlx.core")
        import hcref_mlx
        import hcref_mlx.checkpoint
        import mlx.nn as nn
        import mlx.optimizers as optim

        self.mod, self.ckpt, self.nn, self.optim = hcref_mlx, hcref_mlx.checkpoint, nn, optim

    def forward(self, sites: list[Any], x: Any) -> Any:
        mx = self.mx
        return self.stack(sites, x, lambda w1, w2: lambda h: mx.tanh(h @ mx.array(w1)) @ mx.array(w2))

    def train(self, sites: list[Any]) -> None:
        mx, nn = self.mx, self.nn
        holder = nn.Module()
        holder.sites = sites

        def loss(holder: Any) -> Any:
            return ((self.forward(holder.sites, mx.array(X)) - mx.array(TARGET)) ** 2).mean()

        opt = self.optim.SGD(learning_rate=LR)
        step = nn.value_and_grad(holder, loss)
        for _ in range(STEPS):
            _, grads = step(holder)
            opt.update(holder, grads)
            mx.eval(holder.parameters())

    def output(self, sites: list[Any]) -> np.ndarray:
        return np.array(self.forward(sites, self.mx.array(X)))


FRAMEWORKS: dict[str, Callable[[], Any]] = {"torch": Torch, "jax": Jax, "mlx": Mlx}


@pytest.mark.parametrize("family", ["hc", "fc", "mhc"])
@pytest.mark.parametrize("source", ["torch", "jax", "mlx"])
def test_trained_in_one_framework_loads_everywhere(source: str, family: str, tmp_path: Path) -> None:
    src = FRAMEWORKS[source]()
    sites = src.build(family)
    loss_before = ((src.output(sites) - TARGET) ** 2).mean()
    src.train(sites)
    expected = src.output(sites)
    assert np.isfinite(expected).all() and ((expected - TARGET) ** 2).mean() < 0.9 * loss_before
    path = tmp_path / f"{source}-{family}.safetensors"
    src.ckpt.save(path, sites)

    saved = ck.load(path)
    families = [family] * SITES + (["mhc_head"] if family == "mhc" else [])
    assert [(s.name, s.family) for s in saved] == [(str(i), f) for i, f in enumerate(families)]
    if family == "mhc":
        assert saved[0].options == {"iters": 5, "eps": 0.0}
        assert not np.array_equal(saved[0].params["phi"], hcref.init_mhc(2, D, 0)["phi"]), "training changed nothing"
    else:
        init = hcref.init_hc(3, D, 0, norm="rmsnorm") if family == "hc" else hcref.init_fc(2, D)
        assert not np.array_equal(saved[0].params["W_alpha"], init["W_alpha"]), "training changed nothing"
    reference = _reference_stack(saved, X)
    np.testing.assert_allclose(expected, reference, rtol=2e-5, atol=2e-5)

    for target_name, make in FRAMEWORKS.items():
        target = make()
        built = list(target.ckpt.load(path).values())
        existing = target.build(family)
        target.ckpt.load_into(existing, path)
        for modules in (built, existing):
            assert len(modules) == len(saved)
            for site, module in zip(saved, modules):
                for key, value in site.params.items():
                    got = np.asarray(target.ckpt.to_numpy(module.params()[key]))
                    assert got.dtype == np.float32 and np.array_equal(got, value), (target_name, key)
            out = target.output(modules)
            np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5, err_msg=f"{source} -> {target_name}")
            np.testing.assert_allclose(out, reference, rtol=2e-5, atol=2e-5)
        # and the file written back from the target framework holds the same tensors
        again = tmp_path / f"again-{target_name}.safetensors"
        target.ckpt.save(again, existing)
        for a, b in zip(saved, ck.load(again)):
            assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_load_into_names_what_does_not_match(tmp_path: Path) -> None:
    t = Torch()
    sites = t.build("hc")
    path = tmp_path / "hc.safetensors"
    t.ckpt.save(path, sites)
    with pytest.raises(ValueError, match=r"module '1': n is 2 but checkpoint site '1' has 3"):
        t.ckpt.load_into(
            [
                t.mod.HyperConnections(3, D, 0, norm="rmsnorm"),
                t.mod.HyperConnections(2, D, 1),
                t.mod.HyperConnections(3, D, 2, norm="rmsnorm"),
            ],
            path,
        )
    with pytest.raises(
        ValueError, match=r"module '0': options is .*'layernorm'.* but checkpoint site '0' has .*'rmsnorm'"
    ):
        t.ckpt.load_into([t.mod.HyperConnections(3, D, i) for i in range(3)], path)
    with pytest.raises(ValueError, match=r"module '0': family is 'fc' but checkpoint site '0' has 'hc'"):
        t.ckpt.load_into([t.mod.FracConnections(3, 9) for _ in range(3)], path)
    with pytest.raises(ValueError, match=r"not in the checkpoint \['3'\], not among the modules \[\]"):
        t.ckpt.load_into(t.build("hc") + [t.mod.HyperConnections(3, D, 3, norm="rmsnorm")], path)
    with pytest.raises(ValueError, match=r"not in the checkpoint \[\], not among the modules \['2'\]"):
        t.ckpt.load_into(t.build("hc")[:2], path)
    with pytest.raises(TypeError, match=r"modules\['0'\]: expected an hcref_torch connection module, got Linear"):
        t.ckpt.save(path, [t.torch.nn.Linear(2, 2)])


def test_model_paths_name_the_sites_in_natural_order(tmp_path: Path) -> None:
    t = Torch()
    model = t.torch.nn.Module()
    model.blocks = t.torch.nn.ModuleList(t.mod.HyperConnections(2, 4, k) for k in range(11))
    model.head = t.torch.nn.Linear(4, 4)
    path = tmp_path / "m.safetensors"
    t.ckpt.save(path, model)
    names = [s.name for s in ck.load(path)]
    assert names == [f"blocks.{k}" for k in range(11)]
    assert [s.layer_index for s in ck.load(path)] == list(range(11))
    loaded = t.ckpt.load(path)
    assert [m.layer_index for m in loaded.values()] == list(range(11))


@pytest.mark.parametrize("family", ["hc", "mhc"])
@pytest.mark.parametrize("source", ["torch", "jax", "mlx"])
def test_record_taps_every_site_and_restores_the_modules(source: str, family: str) -> None:
    fw = FRAMEWORKS[source]()
    sites = fw.build(family)
    before = fw.output(sites)
    recorder = fw.ckpt.record(sites, lambda: fw.output(sites))
    assert all("width" not in vars(s) for s in sites), "record must remove its wrappers"
    np.testing.assert_array_equal(fw.output(sites), before)
    got = recorder.sites()
    # at init (zero dynamic weights) the mean coefficients are the static ones
    for s in got[:SITES]:
        assert s.stats_tokens == 10
        if family == "hc":
            np.testing.assert_allclose(s.stats["mean_alpha"][:, 0], s.params["A_m"], atol=1e-7)
            np.testing.assert_allclose(s.stats["mean_beta"], s.params["B"], atol=1e-7)
        else:
            static = hcref.mhc_coeffs(np.ones((2, D)), {"b": s.params["b"].astype(np.float64)}, **s.options)
            for key, value in zip(("mean_h_pre", "mean_h_post", "mean_h_res"), static):
                np.testing.assert_allclose(s.stats[key], value, atol=1e-6)
    if family == "mhc":
        assert got[-1].family == "mhc_head" and got[-1].stats_tokens == 0  # a reduce, not a site
