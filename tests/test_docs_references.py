"""Every reference that a docstring, comment or string of the shipped packages makes to the
specification (``math.md 5.3``, ``math.md A1``, ``decision D12``, ``spec README section 3``,
``docs/<page>.md#anchor``) resolves to a page and anchor of ``docs/``; a bare "section N" that
names no document is an error too. The grammar lives in ``docs/hooks/hcref_docs.py`` (the site
uses it to link the references in the API pages)."""

from __future__ import annotations

import importlib.util
import io
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("hcref", "backends", "conformance")

_spec = importlib.util.spec_from_file_location("hcref_docs_hooks", ROOT / "docs" / "hooks" / "hcref_docs.py")
assert _spec is not None and _spec.loader is not None
refs = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = refs
_spec.loader.exec_module(refs)


def _texts(path: Path) -> list[tuple[int, str]]:
    """(first line, text) of every comment block and string literal of a Python file."""
    out: list[tuple[int, str]] = []
    comment: list[str] = []
    start = 0
    last_line = -2
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.COMMENT:
            if tok.start[0] != last_line + 1 and comment:
                out.append((start, "\n".join(comment)))
                comment = []
            if not comment:
                start = tok.start[0]
            comment.append(tok.string.lstrip("#"))
            last_line = tok.start[0]
        elif tok.type in (tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", -1)):
            out.append((tok.start[0], tok.string))
    if comment:
        out.append((start, "\n".join(comment)))
    return out


def _sources() -> list[Path]:
    return sorted(p for top in SCANNED for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def _references() -> list[tuple[str, object]]:
    found = []
    for path in _sources():
        for line, text in _texts(path):
            for ref in refs.find_references(text):
                found.append((f"{path.relative_to(ROOT)}:{line + text[:ref.start].count(chr(10))}", ref))
    return found


def test_every_spec_reference_resolves() -> None:
    found = _references()
    unresolved = [f"{where}: {why}" for where, ref in found if (why := refs.resolve(ref)) is not None]
    assert not unresolved, f"{len(unresolved)} of {len(found)} references do not resolve:\n" + "\n".join(unresolved)


def test_the_packages_do_cite_the_spec() -> None:
    """The scan sees the references the code is known to make (a scanner that finds nothing passes vacuously)."""
    kinds = {ref.kind for _, ref in _references()}  # type: ignore[attr-defined]
    assert {"section", "row", "decision"} <= kinds, kinds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("VJP of hc_width (math.md 5.3).", [("section", "spec/math.md", "s5.3")]),
        ("Hyper-Connections (math.md section 2).", [("section", "spec/math.md", "s2")]),
        ("claims (math.md 2.5, 2.7,\n    and 8)", [("section", "spec/math.md", f"s{n}") for n in ("2.5", "2.7", "8")]),
        ("parameter counts assume RMSNorm (math.md A1).", [("row", "spec/math.md", "A1")]),
        ("(decisions D1 and D4)", [("decision", "spec/decisions.md", "D1"), ("decision", "spec/decisions.md", "D4")]),
        ("the accumulation dtype of D12: float32", [("decision", "spec/decisions.md", "D12")]),
        ("see ambiguity A14", [("row", "spec/math.md", "A14")]),
        ("(spec README section 3)", [("section", "spec/index.md", "s3")]),
        ("see docs/spec/math.md#s4.3", [("page", "spec/math.md", "s4.3")]),
        ("HC paper Eq. 14 and section 2.3; HC section 3; FC paper section 3.1", []),
        ("an NVIDIA A100, Table A1, a 2D grid, shape (D, n)", []),
        ("as in section 4", [("unclear", None, None)]),
    ],
)
def test_grammar(text: str, expected: list[tuple[str, str | None, str | None]]) -> None:
    assert [(r.kind, r.page, r.anchor) for r in refs.find_references(text)] == expected


def test_unresolved_references_are_reported() -> None:
    (missing_section,) = refs.find_references("math.md 99.1")
    assert "no anchor #s99.1" in refs.resolve(missing_section)
    (missing_decision,) = refs.find_references("decision D99")
    assert "no anchor #D99" in refs.resolve(missing_decision)
    (unclear,) = refs.find_references("see section 4")
    assert "names no document" in refs.resolve(unclear)
