"""The documentation site builds with ``mkdocs build --strict`` (any warning fails: a broken link
or anchor, a missing snippet, an unresolved cross-reference), renders the API of every public
module present in the source tree, and links the docstrings' spec references."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "index.html",
    "install/index.html",
    "spec/index.html",
    "spec/math/index.html",
    "spec/decisions/index.html",
    "spec/public-implementations/index.html",
    "frameworks/pytorch/index.html",
    "frameworks/jax/index.html",
    "frameworks/mlx/index.html",
    "conformance/index.html",
    "conformance-of-public-implementations/index.html",
    "benchmarks/index.html",
    "reference/index.html",
]
PACKAGES = ["hcref", "hcref_numpy", "hcref_torch", "hcref_jax", "hcref_mlx", "hcref_conformance"]

_spec = importlib.util.spec_from_file_location("hcref_docs_hooks_site", ROOT / "docs" / "hooks" / "hcref_docs.py")
assert _spec is not None and _spec.loader is not None
hooks = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = hooks
_spec.loader.exec_module(hooks)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    return out


def test_every_page_is_built(site: Path) -> None:
    missing = [page for page in PAGES if not (site / page).is_file()]
    assert not missing, missing


@pytest.mark.parametrize("package", PACKAGES)
def test_api_reference_renders_every_public_module(site: Path, package: str) -> None:
    html = (site / "reference" / package / "index.html").read_text()
    assert f'id="{package}"' in html
    if package in ("hcref", "hcref_torch", "hcref_jax", "hcref_mlx"):
        modules = hooks.public_modules(package)
        assert modules, package
        absent = [m for m in modules if f'id="{package}.{m}"' not in html]
        assert not absent, f"reference/{package}: no section for {absent}"


def test_docstring_references_become_links(site: Path) -> None:
    html = (site / "reference" / "hcref" / "index.html").read_text()
    assert 'href="../../spec/math/#s5.3"' in html and 'href="../../spec/decisions/#D12"' in html
    assert ":func:" not in html  # reST roles were turned into cross-references


def test_equations_are_marked_for_mathjax(site: Path) -> None:
    html = (site / "spec" / "math" / "index.html").read_text()
    assert html.count('class="arithmatex"') > 100 and "\\tag{5.5}" in html
