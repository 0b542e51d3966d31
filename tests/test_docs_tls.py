"""docs/tls.md: its Python runs as written (a real HTTPS server with client certificates)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "tls.md"


def test_tls_doc_python_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    for i, block in enumerate(blocks):
        namespace: dict[str, Any] = {"__name__": "docs_tls"}
        exec(compile(block, f"docs/tls.md block {i}", "exec"), namespace)
    assert namespace["answer"]["principal"] == "spiffe://demo.aduib/admin"
