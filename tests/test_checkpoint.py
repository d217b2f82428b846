"""hcref checkpoints (hcref.checkpoint): the format round-trips exactly, bad files and mappings raise
ValueError naming what is wrong, safetensors is needed only to read and write, and the mean
coefficients a Recorder accumulates are the reference's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hcref
from hcref import checkpoint as ck

pytest.importorskip("safetensors")
import safetensors.numpy as stn


def _sites(dtype: type = np.float64) -> list[ck.Site]:
    rng = np.random.default_rng(0)

    def perturbed(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(dtype) for k, v in params.items()}

    n, m, d = 3, 2, 8
    cols = 2 * n + n * n
    return [
        ck.Site("layers.0.hc", "hc", perturbed(hcref.init_hc(n, d, 0)), layer_index=0),
        ck.Site(
            "layers.1.hc",
            "hc",
            perturbed(hcref.init_hc(n, d, 1, norm="rmsnorm")),
            layer_index=1,
            options={"norm": "rmsnorm", "use_tanh": False},
        ),
        ck.Site("static", "hc", perturbed(hcref.init_hc(n, d, 5, dynamic=False)), d=d, layer_index=5),
        ck.Site("fc.0", "fc", perturbed(hcref.init_fc(m, d, norm="none")), options={"norm": "none"}),
        ck.Site("fc.static", "fc", perturbed(hcref.init_fc(m, d, dynamic=False)), d=d),
        # mHC layout of decision D9 (the reference lands later; the format holds it already)
        ck.Site(
            "mhc.0",
            "mhc",
            {
                "phi": rng.standard_normal((n * d, cols)).astype(dtype),
                "b": rng.standard_normal(cols).astype(dtype),
                "gates": np.full(3, 0.01, dtype),
            },
            layer_index=0,
            options={"iters": 7, "eps": 1e-6},
        ),
        ck.Site("mhc.static", "mhc", {"b": rng.standard_normal(cols).astype(dtype)}, d=d, layer_index=1),
        ck.Site(
            "head",
            "mhc_head",
            {
                "phi": rng.standard_normal((n * d, n)).astype(dtype),
                "b": rng.standard_normal(n).astype(dtype),
                "gate": np.asarray(0.5, dtype),
            },
        ),
    ]


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_round_trip_is_exact(tmp_path: Path, dtype: type) -> None:
    sites = _sites(dtype)
    ck.save(tmp_path / "a.safetensors", sites, metadata={"note": "hello"})
    loaded = ck.load(tmp_path / "a.safetensors")
    assert [s.name for s in loaded] == [s.name for s in sites]
    for a, b in zip(sites, loaded):
        assert (a.family, a.rate, a.d, a.layer_index, a.options, a.dynamic) == (
            b.family,
            b.rate,
            b.d,
            b.layer_index,
            b.options,
            b.dynamic,
        )
        assert list(a.params) == list(b.params)
        for key in a.params:
            assert b.params[key].dtype == dtype and b.params[key].shape == a.params[key].shape
            assert np.array_equal(a.params[key], b.params[key])
    assert ck.user_metadata(tmp_path / "a.safetensors") == {"note": "hello"}
    ck.save(tmp_path / "b.safetensors", loaded, metadata={"note": "hello"})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), "np") as a, safe_open(str(tmp_path / "b.safetensors"), "np") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            x, y = a.get_tensor(key), b.get_tensor(key)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def test_file_layout_is_the_documented_one(tmp_path: Path) -> None:
    site = ck.Site("connections.0", "hc", hcref.init_hc(2, 4, 1), layer_index=1)
    ck.save(tmp_path / "a.safetensors", [site])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), framework="np") as f:
        header = f.metadata()
        keys = sorted(f.keys())
    assert keys == sorted(f"connections.0.{k}" for k in hcref.init_hc(2, 4, 1))
    assert header["format"] == "hcref-checkpoint" and header["format_version"] == "1"
    assert header["hcref_version"] == hcref.__version__
    assert json.loads(header["sites"]) == [
        {
            "name": "connections.0",
            "family": "hc",
            "n": 2,
            "d": 4,
            "layer_index": 1,
            "dynamic": True,
            "options": {"norm": "layernorm", "use_tanh": True, "use_norm": True, "use_scale": True},
            "stats_tokens": 0,
        }
    ]


def test_site_checks_keys_shapes_and_options() -> None:
    params = hcref.init_hc(3, 8, 0)
    with pytest.raises(ValueError, match=r"site 'x': params: expected keys .*missing \['W_beta'\], extra \[\]"):
        ck.Site("x", "hc", {k: v for k, v in params.items() if k != "W_beta"})
    with pytest.raises(ValueError, match=r"site 'x': params\['A_r'\]: expected shape \(3, 3\), got shape \(2, 2\)"):
        ck.Site("x", "hc", {**params, "A_r": np.eye(2)})
    with pytest.raises(ValueError, match=r"params\['B'\]: expected a floating-point numpy array, got dtype int64"):
        ck.Site("x", "hc", {**params, "B": np.ones(3, np.int64)})
    with pytest.raises(ValueError, match=r"site 'x': d: a static site's parameters do not determine d"):
        ck.Site("x", "hc", hcref.init_hc(3, 8, 0, dynamic=False))
    with pytest.raises(ValueError, match=r"site 'x': options: norm: expected one of"):
        ck.Site("x", "hc", params, options={"norm": "batchnorm"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['iters'\] for family 'hc'"):
        ck.Site("x", "hc", params, options={"iters": 3})
    with pytest.raises(ValueError, match=r"family: expected one of"):
        ck.Site("x", "dense", params)
    with pytest.raises(ValueError, match=r"site 'x': n: given 4, but the parameters have 3"):
        ck.Site("x", "hc", params, rate=4)
    with pytest.raises(ValueError, match=r"params\['b'\]: expected length 2n\+n\^2"):
        ck.Site("x", "mhc", {"b": np.zeros(7)}, d=4)
    with pytest.raises(ValueError, match=r"iters: expected an int >= 1, got 0"):
        ck.Site("x", "mhc", {"b": np.zeros(8)}, d=4, options={"iters": 0})
    with pytest.raises(ValueError, match=r"eps: expected a finite real number >= 0, got -1"):
        ck.Site("x", "mhc", {"b": np.zeros(8)}, d=4, options={"eps": -1})
    with pytest.raises(ValueError, match=r"stats: expected keys \['mean_alpha', 'mean_beta'\]"):
        ck.Site("x", "hc", params, stats={"mean_alpha": np.zeros((3, 4))}, stats_tokens=1)
    with pytest.raises(ValueError, match=r"duplicated \['x'\]"):
        ck.save("unused.safetensors", [ck.Site("x", "hc", params), ck.Site("x", "hc", params)])


def _raw(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> Path:
    stn.save_file(tensors, str(path), metadata=metadata)
    return path


def _good(tmp_path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    path = tmp_path / "good.safetensors"
    ck.save(path, [ck.Site("s", "hc", hcref.init_hc(3, 4, 0), layer_index=0)])
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def test_bad_files_raise_value_errors_naming_the_problem(tmp_path: Path) -> None:
    tensors, header = _good(tmp_path)
    sites = json.loads(header["sites"])

    def fails(name: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None, match: str) -> None:
        path = _raw(tmp_path / f"{name}.safetensors", tensors, metadata)
        with pytest.raises(ValueError, match=match):
            ck.load(path)

    with pytest.raises(ValueError, match=r"no such file"):
        ck.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00nope!")
    with pytest.raises(ValueError, match=r"not a readable safetensors file"):
        ck.load(tmp_path / "junk.safetensors")
    fails("nometa", tensors, None, r"metadata 'format': expected 'hcref-checkpoint', got None")
    fails("version", tensors, {**header, "format_version": "9"}, r"this hcref reads version 1, got '9'")
    fails("json", tensors, {**header, "sites": "[{"}, r"metadata 'sites': not valid JSON")
    fails("missing", {k: v for k, v in tensors.items() if k != "s.A_r"}, header, r"missing \['A_r'\]")
    fails("extra", {**tensors, "s.W_gamma": np.zeros(3)}, header, r"extra \['W_gamma'\]")
    fails(
        "orphan",
        {**tensors, "other.A_m": np.zeros(3)},
        header,
        r"tensors of sites the metadata does not list: \['other'\]",
    )
    fails(
        "shape",
        {**tensors, "s.A_r": np.eye(2)},
        header,
        r"site 's': params\['A_r'\]: expected shape \(3, 3\), got shape \(2, 2\)",
    )
    fails("dtype", {**tensors, "s.B": np.ones(3, np.int32)}, header, r"params\['B'\]: expected a floating-point")
    fails(
        "n", tensors, {**header, "sites": json.dumps([{**sites[0], "n": 4}])}, r"n: given 4, but the parameters have 3"
    )
    fails(
        "d",
        tensors,
        {**header, "sites": json.dumps([{**sites[0], "d": 5}])},
        r"params\['W_alpha'\]: expected shape \(5, 4\)",
    )
    fails(
        "family", tensors, {**header, "sites": json.dumps([{**sites[0], "family": "xc"}])}, r"family: expected one of"
    )
    fails(
        "dynamic",
        tensors,
        {**header, "sites": json.dumps([{**sites[0], "dynamic": False}])},
        r"metadata says dynamic=False, the tensors say True",
    )
    fails(
        "norm",
        tensors,
        {**header, "sites": json.dumps([{**sites[0], "options": {"norm": "rmsnorm"}}])},
        r"extra \['norm_bias'\]",
    )
    fails("name", {"A_m": np.zeros(3)}, header, r"tensor 'A_m': expected a name '<site>.<key>'")


def test_missing_safetensors_is_a_friendly_import_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    site = ck.Site("s", "hc", hcref.init_hc(2, 4, 0))
    with pytest.raises(ImportError, match=r'pip install "hcref\[checkpoint\]"'):
        ck.save(tmp_path / "a.safetensors", [site])
    with pytest.raises(ImportError, match=r"hcref\[checkpoint\]"):
        ck.load(tmp_path / "a.safetensors")


def test_reference_modules_import_neither_frameworks_nor_optional_libraries() -> None:
    code = (
        "import json, sys; import hcref, hcref.checkpoint, hcref.lucidrains, hcref.viz; "
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert not loaded & {"torch", "jax", "flax", "mlx", "safetensors", "matplotlib"}, loaded


def test_recorder_means_are_the_reference_coefficients() -> None:
    rng = np.random.default_rng(1)
    sites = _sites()[:5]
    recorder = ck.Recorder(sites)
    samples = {}
    for site in sites:
        w = site.d if site.family == "hc" else site.d // site.rate
        samples[site.name] = [rng.standard_normal((2, 3, site.rate, w)), rng.standard_normal((4, site.rate, w))]
        for H in samples[site.name]:
            recorder.add(site.name, H.astype(np.float32))
    with pytest.raises(ValueError, match=r"name: expected one of the recorder's sites"):
        recorder.add("nope", samples["fc.0"][0])
    for site, got in zip(sites, recorder.sites()):
        assert got.stats_tokens == 10
        coeffs = hcref.hc_coeffs if site.family == "hc" else hcref.fc_coeffs
        params = {k: v.astype(np.float64) for k, v in site.params.items()}
        alphas, betas = zip(
            *(coeffs(H.astype(np.float32).astype(np.float64), params, **site.options) for H in samples[site.name])
        )
        expected_alpha = np.concatenate([a.reshape(-1, *a.shape[-2:]) for a in alphas]).mean(axis=0)
        expected_beta = np.concatenate([b.reshape(-1, b.shape[-1]) for b in betas]).mean(axis=0)
        np.testing.assert_allclose(got.stats["mean_alpha"], expected_alpha, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got.stats["mean_beta"], expected_beta, rtol=1e-12, atol=1e-14)
        if not site.dynamic:  # the mean of static coefficients is the static matrix
            static = site.params["A_m"] if site.family == "hc" else site.params["Y"]
            np.testing.assert_allclose(
                got.stats["mean_alpha"][:, : static.reshape(site.rate, -1).shape[1]],
                static.reshape(site.rate, -1),
                rtol=1e-15,
            )


def test_recorded_means_round_trip(tmp_path: Path) -> None:
    sites = _sites()[:2]
    recorder = ck.Recorder(sites)
    recorder.add(sites[0].name, np.random.default_rng(2).standard_normal((5, 3, 8)))
    ck.save(tmp_path / "a.safetensors", ck.with_stats(sites, recorder))
    loaded = ck.load(tmp_path / "a.safetensors")
    assert loaded[0].stats_tokens == 5 and loaded[1].stats == {} and loaded[1].stats_tokens == 0
    assert np.array_equal(loaded[0].stats["mean_alpha"], recorder.sites()[0].stats["mean_alpha"])


def test_natural_order_of_site_names() -> None:
    names = [f"connections.{k}" for k in (10, 2, 1, 0)] + ["a.b", "a"]
    assert sorted(names, key=ck.natural_key) == ["a", "a.b"] + [f"connections.{k}" for k in (0, 1, 2, 10)]
