"""Every Python code block in the README and the docs pages runs without error."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def code_blocks():
    for page in PAGES:
        if not page.exists():
            continue
        for number, match in enumerate(BLOCK.finditer(page.read_text()), start=1):
            yield pytest.param(match.group(1), id=f"{page.relative_to(ROOT)}-block{number}")


@pytest.mark.parametrize("source", list(code_blocks()))
def test_code_block_runs(source):
    exec(compile(source, "<docs>", "exec"), {"__name__": "__docs__"})
