"""What a user gets from the package: the sdist and wheel build and pass ``twine check``, the
wheel holds every package and installs alone into a clean virtualenv (numpy from the index),
the extras resolve to the right frameworks on each platform with no exact pin outside ``dev``,
there is one version, and a backend whose framework is missing says which extra to install."""

from __future__ import annotations

import email
import json
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import hcref_conformance
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

import hcref

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hcref", "hcref_numpy", "hcref_torch", "hcref_jax", "hcref_mlx", "hcref_conformance")
FRAMEWORK_OF = {"hcref_torch": "torch", "hcref_jax": "jax", "hcref_mlx": "mlx"}
USER_EXTRAS = ("torch", "jax", "mlx", "conformance", "viz", "checkpoint", "docs")

# marker environments of the platforms the extras distinguish (what pip evaluates markers against)
PLATFORMS = {
    "linux-x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
    "windows-amd64": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64"},
}


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel built the way a release builds them (isolated, the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("hcref-*.whl")
    return wheel


def _metadata(dist: Path) -> email.message.Message:
    with zipfile.ZipFile(_wheel(dist)) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(z.read(name))


def _requirements(dist: Path, extra: str, platform: str) -> dict[str, Requirement]:
    """The requirements pip installs for ``hcref[extra]`` on ``platform``, by name."""
    env = {**default_environment(), **PLATFORMS[platform], "extra": extra}
    reqs = [Requirement(r) for r in _metadata(dist).get_all("Requires-Dist", [])]
    return {r.name: r for r in reqs if "extra ==" in str(r.marker) and r.marker.evaluate(env)}  # type: ignore[union-attr]


def test_sdist_and_wheel_pass_twine_check(dist: Path) -> None:
    files = sorted(dist.iterdir(), key=lambda f: f.suffix)
    assert [f.suffix for f in files] == [".gz", ".whl"], files
    done = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)])
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_wheel_contents(dist: Path) -> None:
    with zipfile.ZipFile(_wheel(dist)) as z:
        names = z.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == set(PACKAGES), f"top-level entries of the wheel: {sorted(tops)}"
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names
    for package in ("hcref", "hcref_conformance"):
        assert f"{package}/py.typed" in names
    assert any(re.fullmatch(r"hcref-[^/]+\.dist-info/licenses/LICENSE", n) for n in names), names
    meta = _metadata(dist)
    assert meta["Version"] == hcref.__version__ == hcref_conformance.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta["Author"] == "hcref developers" or "hcref developers" in (meta["Author-email"] or "")
    assert "## Quick start" in meta.get_payload()  # the README is the long description


def test_one_version_source() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hcref.__version__"}
    literal = re.compile(r"""^__version__\s*=\s*["']""", re.M)
    holders = [p for p in ROOT.glob("*/**/__init__.py") if ".venv" not in p.parts and literal.search(p.read_text())]
    assert holders == [ROOT / "hcref" / "__init__.py"], holders


@pytest.mark.parametrize("platform", PLATFORMS)
def test_extras_per_platform(dist: Path, platform: str) -> None:
    mlx = _requirements(dist, "mlx", platform)
    expected_mlx = {"linux-x86_64": {"mlx": {"cpu"}}, "macos-arm64": {"mlx": set()}, "windows-amd64": {}}[platform]
    assert {name: set(r.extras) for name, r in mlx.items()} == expected_mlx
    assert set(_requirements(dist, "torch", platform)) == {"torch"}
    assert set(_requirements(dist, "jax", platform)) == {"jax", "flax", "optax"}
    assert set(_requirements(dist, "conformance", platform)) == {"pytest", "hypothesis", "tqdm"}
    assert set(_requirements(dist, "viz", platform)) == {"matplotlib"}
    assert set(_requirements(dist, "checkpoint", platform)) == {"safetensors"}
    assert {"mkdocs-material", "mkdocstrings"} <= set(_requirements(dist, "docs", platform))
    for extra in USER_EXTRAS:  # an exact pin would fight the user's own install (torch: a CUDA download)
        for r in _requirements(dist, extra, platform).values():
            assert not any(s.operator in ("==", "===") for s in r.specifier), f"[{extra}] pins {r}"
    dev = _requirements(dist, "dev", platform)
    assert str(dev["torch"].specifier) == "==2.13.0"  # CI's CPU wheel; only here
    for extra in USER_EXTRAS:  # CI installs (and so tests) what users get
        missing = set(_requirements(dist, extra, platform)) - set(dev)
        assert not missing, f"dev lacks {sorted(missing)} of [{extra}] on {platform}"
    if platform == "linux-x86_64":
        assert dev["mlx"].extras == {"cpu"}


def test_wheel_installs_and_imports_in_a_clean_venv(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(_wheel(dist))])
    probe = textwrap.dedent(
        """
        import importlib, json, sys
        import numpy as np
        import hcref, hcref_numpy, hcref_conformance
        H = hcref.expand(np.linspace(-1.0, 1.0, 2 * 8).reshape(2, 8), 4)
        alpha, beta = hcref.hc_coeffs(H, hcref.init_hc(4, 8, layer_index=1))
        errors = {}
        for name in ("hcref_torch", "hcref_jax", "hcref_mlx"):
            try:
                importlib.import_module(name)
            except ImportError as exc:
                errors[name] = [type(exc).__name__, str(exc)]
        print(json.dumps({"file": hcref.__file__, "shapes": [alpha.shape, beta.shape],
                          "version": hcref_conformance.__version__, "errors": errors}))
        """
    )
    out = json.loads(_run([str(python), "-c", probe], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert Path(out["file"]).is_relative_to(venv), out["file"]  # the wheel, not the source tree
    assert out["shapes"] == [[2, 4, 5], [2, 4]]
    assert out["version"] == hcref.__version__
    assert set(out["errors"]) == set(FRAMEWORK_OF), out["errors"]
    for name, (kind, message) in out["errors"].items():
        assert kind == "ModuleNotFoundError" and f'pip install "hcref[{FRAMEWORK_OF[name]}]"' in message, message


@pytest.mark.parametrize(
    ("package", "hidden"),
    [("hcref_torch", "torch"), ("hcref_jax", "jax"), ("hcref_jax", "flax"), ("hcref_mlx", "mlx")],
)
def test_missing_framework_names_the_extra(package: str, hidden: str) -> None:
    code = f"import sys; sys.modules[{hidden!r}] = None; import {package}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: ") and f'pip install "hcref[{FRAMEWORK_OF[package]}]"' in last, last
    assert hidden in last


def test_a_broken_framework_is_not_reported_as_missing() -> None:
    """Only the framework's own absence gets the install hint; an error inside it stays as it is."""
    code = "import sys; sys.modules['torch._C'] = None; import hcref_torch"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "hcref[torch]" not in done.stderr and "torch._C" in done.stderr, done.stderr[-2000:]
