"""The docs site's mkdocs hooks, and the grammar of the references that hcref's docstrings make.

Docstrings and comments cite the specification as ``math.md 5.3`` / ``math.md section 2`` (the
sections of ``docs/spec/math.md``), ``math.md A1`` (its ambiguity rows), ``decision D12`` or a
bare ``D12`` (``docs/spec/decisions.md``), ``spec README section 3`` (``docs/spec/index.md``) and
``docs/<page>.md#anchor``. :func:`find_references` finds them; :func:`resolve` says where each one
points in ``docs/`` and whether the target exists there. ``tests/test_docs_references.py`` runs
both over every docstring and comment of the packages; the hooks below use them to turn the
references in the rendered API pages into links.

Hooks (wired in ``mkdocs.yml``):

- ``on_page_markdown``: a line ``<!-- api-modules PACKAGE [skip=GLOB,...] -->`` becomes one
  ``::: PACKAGE.module`` block per public module (no leading underscore) present in the source
  tree at build time, in a fixed order for the known ones and alphabetically after them, so that
  modules added later (``hcref.mhc``, kernels, checkpoints) appear without editing the page.
- ``on_page_content``: reST roles left in docstrings (``:func:`name```) become optional
  cross-references, a paragraph ending in reST's ``::`` ends in ``:``, and on the API pages the
  spec references above become links.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

SPEC_FILES = {"math": "spec/math.md", "perf": "spec/perf.md", "conventions": "spec/conventions.md"}
"""Files of the specification cited as ``NAME.md N``, and the docs page that carries each."""
DECISIONS = "spec/decisions.md"
SPEC_INDEX = "spec/index.md"

_NUM = r"\d+(?:\.\d+)*"
_ITEM = rf"(?:A[1-9]\d?|{_NUM})\b"
_SEP = r"(?:\s*(?:,|/|-|–|\band\b|\bor\b)\s*)+"
_ITEMS = rf"(?P<items>{_ITEM}(?:{_SEP}{_ITEM})*)"
_SECTION_WORD = r"(?:[Ss]ections?|§|[Ss]ec\.)"

_FILE_REF = re.compile(rf"\b(?P<file>[A-Za-z_]+)\.md\b(?:\s*,?\s*{_SECTION_WORD})?\s*{_ITEMS}?")
_SPEC_README_REF = re.compile(rf"\bspec(?:/|\s+)README(?:\.md)?\s*,?\s*{_SECTION_WORD}\s*{_ITEMS}")
_DOCS_PATH_REF = re.compile(r"\bdocs/(?P<path>[\w./-]+\.md)(?:#(?P<anchor>[\w.:-]+))?")
# citations of the papers' own sections, appendices and equations: outside this repository
_PAPER_REF = re.compile(
    rf"\b(?:(?:HC|FC|mHC|VWN|GHC|V4)(?:\s+paper)?(?:'s)?|paper(?:'s)?)\s+{_SECTION_WORD}\s*{_NUM}(?:{_SEP}{_NUM})*"
)
_DECISION = re.compile(r"(?<![\w.])D(?P<n>[1-9]\d?)\b")
_ROW = re.compile(r"(?<![\w.])(?<!Table )(?<!Tables )(?<!Eq\. )(?<!Fig\. )(?<!App\. )(?<!NVIDIA )A(?P<n>[1-9]\d?)\b")
_BARE_SECTION = re.compile(rf"(?<![\w.]){_SECTION_WORD}\s*(?P<items>{_NUM})\b")
_PAPER_NEAR = re.compile(r"\b(?:HC|FC|mHC|VWN)\s+paper\b|\bpaper\b")
"""A bare "section N" within this reach after a paper's name cites that paper ("HC paper Eq. 14 and section 2.3")."""
_PAPER_REACH = 60
_ITEM_RE = re.compile(_ITEM)


@dataclass(frozen=True)
class Reference:
    """One reference found in a text: ``kind`` is ``section`` (of ``page``), ``row`` (an ambiguity
    row of math.md), ``decision``, ``page`` (a docs page, optionally an anchor) or ``unclear`` (a
    bare "section N" that names no document). ``start``/``end`` delimit the item in the text."""

    kind: str
    text: str
    page: str | None
    anchor: str | None
    start: int
    end: int


def _items(match: re.Match[str], page: str, kinds: tuple[str, str] = ("section", "row")) -> list[Reference]:
    items = match.group("items")
    if items is None:
        return []
    base = match.start("items")
    refs = []
    for item in _ITEM_RE.finditer(items):
        text = item.group(0)
        row = text.startswith("A")
        refs.append(
            Reference(kinds[1] if row else kinds[0], text, page, text if row else f"s{text}",
                      base + item.start(), base + item.end())
        )
    return refs


def find_references(text: str) -> list[Reference]:
    """Every reference to the specification in ``text``, in order of position."""
    refs: list[Reference] = []
    taken: list[tuple[int, int]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= a or start >= b for a, b in taken)

    for match in _SPEC_README_REF.finditer(text):
        refs += _items(match, SPEC_INDEX)
        taken.append(match.span())
    for match in _DOCS_PATH_REF.finditer(text):
        if free(*match.span()):
            refs.append(Reference("page", match.group(0), match.group("path"), match.group("anchor"), *match.span()))
            taken.append(match.span())
    for match in _FILE_REF.finditer(text):
        name = match.group("file")
        if name not in SPEC_FILES or not free(*match.span()):
            continue
        page = SPEC_FILES[name]
        refs += _items(match, page) or [Reference("page", match.group(0), page, None, *match.span())]
        taken.append(match.span())
    for match in _PAPER_REF.finditer(text):
        taken.append(match.span())
    for match in _DECISION.finditer(text):
        if free(*match.span()):
            refs.append(Reference("decision", match.group(0), DECISIONS, match.group(0), *match.span()))
    for match in _ROW.finditer(text):
        if free(*match.span()):
            refs.append(Reference("row", match.group(0), SPEC_FILES["math"], match.group(0), *match.span()))
    for match in _BARE_SECTION.finditer(text):
        if free(*match.span()) and not _PAPER_NEAR.search(text, max(0, match.start() - _PAPER_REACH), match.start()):
            refs.append(Reference("unclear", match.group(0), None, None, *match.span("items")))
    return sorted(refs, key=lambda r: r.start)


_ANCHOR = re.compile(r"\{[^}\n]*?#(?P<attr>[A-Za-z][\w.:-]*)[^}\n]*\}|\bid=\"(?P<html>[^\"]+)\"")


def anchors(page: str) -> set[str]:
    """The explicit anchors (``{ #id }`` attributes and HTML ``id="..."``) of a docs page."""
    path = DOCS / page
    return _anchors(path, path.stat().st_mtime_ns) if path.is_file() else set()


@functools.lru_cache(maxsize=64)
def _anchors(path: Path, mtime_ns: int) -> set[str]:
    return {m.group("attr") or m.group("html") for m in _ANCHOR.finditer(path.read_text())}


def resolve(ref: Reference) -> str | None:
    """Why ``ref`` does not resolve, or None when its target exists in ``docs/``."""
    if ref.kind == "unclear":
        number = ref.text.split()[-1].lstrip("§")
        return (f"{ref.text!r} names no document: write 'math.md {number}', 'spec README section {number}' "
                f"or '<paper> paper section {number}'")
    assert ref.page is not None
    if not (DOCS / ref.page).is_file():
        return f"{ref.text!r}: docs/{ref.page} does not exist"
    if ref.anchor is not None and ref.anchor not in anchors(ref.page):
        return f"{ref.text!r}: docs/{ref.page} has no anchor #{ref.anchor}"
    return None


# ---------------------------------------------------------------------------------------------
# mkdocs hooks

_ORDER = {
    "hcref": ["ends", "hyper", "frac", "sinkhorn", "sinkhorn_knopp", "mhc", "site", "init", "norms", "network",
              "checks", "tolerances", "interface", "optable", "validation"],
    "*": ["ops", "modules"],
}
_API_MARKER = re.compile(r"^<!-- api-modules (?P<package>\w+)(?: skip=(?P<skip>\S+))? -->$", re.M)


def _package_dir(package: str) -> Path:
    for parent in (ROOT, ROOT / "backends", ROOT / "conformance"):
        if (parent / package / "__init__.py").is_file():
            return parent / package
    raise FileNotFoundError(f"api-modules: no package {package!r} in the source tree")


def public_modules(package: str, skip: tuple[str, ...] = ()) -> list[str]:
    """The public modules and subpackages of ``package`` present in the source tree, in page order
    (dotted below ``package``; a public subpackage is followed by its own public modules)."""
    return _public_modules(_package_dir(package), _ORDER.get(package, _ORDER["*"]), skip)


def _public_modules(folder: Path, order: list[str], skip: tuple[str, ...]) -> list[str]:
    names = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"]
    names += [p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    names = [n for n in names if not n.startswith("_") and not any(fnmatch.fnmatch(n, s) for s in skip)]
    out = []
    for name in sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n)):
        out.append(name)
        if (folder / name).is_dir():
            out += [f"{name}.{sub}" for sub in _public_modules(folder / name, _ORDER["*"], skip)]
    return out


def _expand_api(match: re.Match[str]) -> str:
    package = match.group("package")
    skip = tuple(filter(None, (match.group("skip") or "").split(",")))
    return "\n\n".join(f"::: {package}.{name}" for name in public_modules(package, skip))


def on_page_markdown(markdown: str, **_: Any) -> str:
    return _API_MARKER.sub(_expand_api, markdown)


_ROLE = re.compile(r":(?:func|mod|class|meth|attr|data|obj|exc|const):<code>~?(?P<name>[\w.]+)</code>")
_SKIP_TAGS = ("code", "pre", "a", "script", "style", "h1", "h2", "h3", "h4", "h5", "h6")
_TOKEN = re.compile(r"(<[^>]+>)")


def _linked(text: str, page_url: str, urls: dict[str, str]) -> str:
    from mkdocs.utils import get_relative_url

    out, pos = [], 0
    for ref in find_references(text):
        if ref.page not in urls or resolve(ref) is not None:
            continue
        href = get_relative_url(urls[ref.page], page_url) + (f"#{ref.anchor}" if ref.anchor else "")
        out += [text[pos:ref.start], f'<a href="{href}" title="{ref.page}">', text[ref.start:ref.end], "</a>"]
        pos = ref.end
    return "".join(out) + text[pos:]


def on_page_content(html: str, page: Any, files: Any, **_: Any) -> str:
    html = _ROLE.sub(r'<autoref identifier="\g<name>" optional><code>\g<name></code></autoref>', html)
    html = re.sub(r"::(</p>)", r":\1", html)
    if not page.file.src_uri.startswith("reference/"):
        return html
    urls = {f.src_uri: f.url for f in files if f.src_uri in (*SPEC_FILES.values(), DECISIONS, SPEC_INDEX)}
    parts, depth = _TOKEN.split(html), 0
    for i, part in enumerate(parts):
        if part.startswith("<"):
            tag = re.match(r"</?([a-zA-Z0-9]+)", part)
            if tag and tag.group(1).lower() in _SKIP_TAGS and not part.endswith("/>"):
                depth += -1 if part.startswith("</") else 1
        elif depth == 0 and part.strip():
            parts[i] = _linked(part, page.url, urls)
    return "".join(parts)
