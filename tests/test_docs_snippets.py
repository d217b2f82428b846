"""Every ```python block of README.md and docs/**/*.md (subfolders included) runs as written (blocks
of one file share a namespace, in order), so the documented usage cannot rot. Pages that include a
README section (``--8<-- "README.md:torch"``) are covered by README.md's run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text()) if path.exists() else []


@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(path: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    for i, block in enumerate(_blocks(path)):
        try:
            exec(compile(block, f"{path.name}[block {i}]", "exec"), namespace)
        except Exception as exc:
            exc.add_note(f"in python block {i} of {path.relative_to(ROOT)}")
            raise
