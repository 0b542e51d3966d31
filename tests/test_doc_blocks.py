"""Every ```python block of README.md and docs/*.md runs as written, standalone.

Illustrative fragments carry another info string (```text, ```toml, ```sh) and
are not collected. Each block is executed in a fresh namespace (``__name__`` is
not ``"__main__"``, so a guarded ``uvicorn.run`` does not serve), and ruff checks
it for undefined names, also inside function bodies that the run never enters.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def collect() -> list[Any]:
    """(file, line, source) of every ```python block, as pytest params."""
    blocks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for m in _FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 2
            where = f"{path.relative_to(ROOT)}:{line}"
            blocks.append(pytest.param(where, m.group(1), id=where))
    return blocks


BLOCKS = collect()


def test_the_collector_finds_the_blocks() -> None:
    files = {str(p.values[0]).split(":")[0] for p in BLOCKS}
    assert "README.md" in files and len(files) >= 8
    assert len(BLOCKS) >= 13


@pytest.mark.parametrize(("where", "source"), BLOCKS)
def test_block_runs_as_written(where: str, source: str) -> None:
    namespace: dict[str, Any] = {"__name__": "__doc_block__"}
    exec(compile(source, where, "exec"), namespace)


def test_blocks_name_nothing_undefined(tmp_path: Path) -> None:
    files = []
    for i, param in enumerate(BLOCKS):
        where, source = param.values
        f = tmp_path / f"block_{i:02d}.py"
        f.write_text(f"# {where}\n{source}")
        files.append(f)
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated",
         "--select", "F821,F822,F823", *map(str, files)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
